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

/// What the snapshot benches share: sizes with suffixes, user ids in a fixed
/// random order, and readings of this process and the machine.
pub mod sizing {
    /// A count with an optional `k` or `m` suffix ("1m", "10k"), at least 1.
    pub fn count(v: &str) -> Result<u64, String> {
        let (digits, scale) = match v.as_bytes().last() {
            Some(b'k' | b'K') => (&v[..v.len() - 1], 1_000),
            Some(b'm' | b'M') => (&v[..v.len() - 1], 1_000_000),
            _ => (v, 1),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{v:?} is not a count"))?;
        match n.checked_mul(scale) {
            Some(0) => Err("must be at least 1".into()),
            Some(n) => Ok(n),
            None => Err(format!("{v:?} is too large")),
        }
    }

    /// splitmix64: user ids in random order, the same every run.
    pub fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The id of bench user `i`.
    pub fn user_id(i: u64) -> String {
        format!("user-{:016x}", mix(i))
    }

    /// A field of /proc/self/status, in MiB.
    pub fn status_mib(field: &str) -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }

    /// The load averages, for the record beside a figure.
    pub fn load() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    }
}
