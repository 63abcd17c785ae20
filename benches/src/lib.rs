//! Shared fixtures for vaultfleet's benchmarks: log entries, and a throw-away
//! SoftHSM2 token for the PKCS#11 cases.

use raft::prelude::Entry;

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
