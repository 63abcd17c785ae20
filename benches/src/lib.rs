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
    use std::path::PathBuf;
    use std::process::Command;

    use vaultfleet::hsm::{Pkcs11Config, Pkcs11Hsm};

    const MODULES: &[&str] = &[
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ];

    /// The SoftHSM2 module, from `VAULTFLEET_PKCS11_MODULE` or the usual paths.
    pub fn module() -> Option<PathBuf> {
        if let Ok(p) = std::env::var("VAULTFLEET_PKCS11_MODULE") {
            return Some(PathBuf::from(p));
        }
        MODULES.iter().map(PathBuf::from).find(|p| p.exists())
    }

    /// Creates a token in a new temporary directory (pointing this process's
    /// `SOFTHSM2_CONF` at it) and opens it. Call once per process, before any
    /// other thread uses PKCS#11. Returns why it could not, when it could not.
    pub fn throwaway() -> Result<(Pkcs11Hsm, tempfile::TempDir), String> {
        let module = module().ok_or("SoftHSM2 is not installed (apt-get install -y softhsm2)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).map_err(|e| e.to_string())?;
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                "vaultfleet-bench",
                "--so-pin",
                "0000",
                "--pin",
                "1234",
            ])
            .output()
            .map_err(|e| format!("softhsm2-util: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let hsm = Pkcs11Hsm::open(&Pkcs11Config {
            module,
            token_label: "vaultfleet-bench".into(),
            user_pin: zeroize::Zeroizing::new("1234".into()),
        })
        .map_err(|e| e.to_string())?;
        Ok((hsm, dir))
    }
}
