//! The one way this crate keeps a state file: written whole to a temporary
//! beside it, fsynced, renamed over it, and the folder fsynced, so a crash
//! leaves either the old file or the new one; and an exclusive lock file held
//! while a state is open, so two processes never keep one state each.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` durably (temporary file, fsync, rename,
/// folder fsync).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// An exclusive lock file, removed when dropped.
#[derive(Debug)]
pub(crate) struct LockFile(PathBuf);

impl LockFile {
    /// Creates `path`, failing if it exists (another process holds the state,
    /// or one crashed holding it).
    pub(crate) fn acquire(path: PathBuf) -> std::io::Result<Self> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self(path))
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
