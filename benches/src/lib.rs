//! Shared fixtures for vaultfleet's benchmarks: log entries, and a throw-away
//! SoftHSM2 token for the PKCS#11 cases.

use raft::prelude::Entry;
use vaultfleet::state_machine::{CaptureError, RestoreError};
use vaultfleet::StateMachine;

/// A state machine that keeps no data: `apply` counts and answers nothing. It is
/// what openraft's benchmark replicates ("a state machine with no data"), so the
/// two measure the same thing: consensus, sessions, log and transport. The
/// `KvStore` runs measure a real map on top.
#[derive(Debug, Default, Clone, Copy)]
pub struct Noop {
    applied: u64,
}

impl StateMachine for Noop {
    fn apply(&mut self, _index: u64, _command: &[u8]) -> Vec<u8> {
        self.applied += 1;
        Vec::new()
    }
    fn query(&self, _query: &[u8]) -> Vec<u8> {
        self.applied.to_be_bytes().to_vec()
    }
    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        Ok(self.applied.to_be_bytes().to_vec())
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let bytes: [u8; 8] = snapshot.try_into().map_err(|_| RestoreError::Malformed {
            what: "a noop snapshot is not 8 bytes",
        })?;
        self.applied = u64::from_be_bytes(bytes);
        Ok(())
    }
}

/// `count` entries from `first`, each carrying `payload` bytes.
pub fn entries(first: u64, count: usize, term: u64, payload: usize) -> Vec<Entry> {
    (0..count as u64)
        .map(|i| {
            let mut e = Entry::default();
            e.index = first + i;
            e.term = term;
            e.data = vec![(i % 251) as u8; payload].into();
            e
        })
        .collect()
}

/// A throw-away SoftHSM2 token in a temporary directory.
#[cfg(feature = "pkcs11")]
pub mod softhsm2 {
    use vaultfleet::hsm::{softhsm2_throwaway_token, Pkcs11Hsm};

    /// Creates and opens a token in a new temporary directory (see
    /// [`softhsm2_throwaway_token`]); returns why it could not, when it could not.
    pub fn throwaway() -> Result<(Pkcs11Hsm, tempfile::TempDir), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let hsm = softhsm2_throwaway_token(dir.path(), "vaultfleet-bench", "1234")
            .map_err(|e| e.to_string())?;
        Ok((hsm, dir))
    }
}
