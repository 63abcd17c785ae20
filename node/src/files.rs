//! Opening the node's input files and writing its small state files safely.
//!
//! Every input (the config, the evidence, the witness log, the PIN, the
//! identity and epoch files) is opened once without blocking (a FIFO planted
//! at its path would otherwise hang the open, and with it a reload on the
//! signal loop) and checked on the open file: it must be a regular file. The
//! config additionally must belong to this process's user or root and sit in
//! a folder that group and others cannot write (sshd's StrictModes): whoever
//! can write it chooses the pins. Small state files are written to a fresh
//! temporary (never following a planted symlink), synced and renamed.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Why a file was refused before it was read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileRefusal {
    /// It could not be opened or inspected.
    #[error("cannot open it")]
    Io(#[source] std::io::Error),
    /// It is not a regular file (a FIFO, a device, a directory).
    #[error("it is not a regular file")]
    NotRegular,
    /// It belongs to another user than this process's (or root).
    #[error("it belongs to user {owner}, not to this process's user {user} or root: chown it")]
    Owner {
        /// The file's owner.
        owner: u32,
        /// This process's effective user.
        user: u32,
    },
    /// Its folder can be written by group or others, who could swap it.
    #[error("its folder is writable by group or others (mode {mode:o}): chmod go-w the folder")]
    FolderWritable {
        /// The folder's mode.
        mode: u32,
    },
}

/// Opens `path` without blocking and checks that it is a regular file.
pub fn open_regular(path: &Path) -> Result<File, FileRefusal> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(FileRefusal::Io)?;
    let meta = file.metadata().map_err(FileRefusal::Io)?;
    if !meta.is_file() {
        return Err(FileRefusal::NotRegular);
    }
    Ok(file)
}

/// Checks that the open `file` (at `path`) belongs to this process's user
/// or root, and that its folder is not writable by group or others.
pub fn check_owner_and_folder(file: &File, path: &Path) -> Result<(), FileRefusal> {
    let owner = file.metadata().map_err(FileRefusal::Io)?.uid();
    let user = nix::unistd::geteuid().as_raw();
    if owner != user && owner != 0 {
        return Err(FileRefusal::Owner { owner, user });
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mode = std::fs::metadata(folder)
        .map_err(FileRefusal::Io)?
        .permissions()
        .mode()
        & 0o7777;
    // A sticky folder (like /tmp) lets others create but not replace files.
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(FileRefusal::FolderWritable { mode });
    }
    Ok(())
}

/// Writes `bytes` to `path` through `path.tmp`: any old temporary (or a
/// symlink planted there) is removed first, the new one is created exclusively
/// with mode 0600 (an exclusive create never follows a symlink), synced and
/// renamed over `path`; then the folder is synced.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(folder).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// R3-M2 (re-review of the daemon): a FIFO at an input's path is refused
    /// at once, not waited on.
    #[test]
    fn r3_m2_a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("evidence.bin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(open_regular(&fifo), Err(FileRefusal::NotRegular)));
    }

    /// R3-L2: a symlink planted at the temporary's path is replaced, never
    /// followed; the file written is 0600.
    #[test]
    fn r3_l2_a_symlink_at_the_temporary_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let path = d.path().join("accepted-epoch");
        std::os::unix::fs::symlink(&victim, d.path().join("accepted-epoch.tmp")).unwrap();
        write_replacing(&path, b"vaultfleet accepted epoch 3\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"vaultfleet accepted epoch 3\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// R3-M3: a config in a folder others can write is refused (they could
    /// swap it); a sticky folder is fine.
    #[test]
    fn r3_m3_a_file_in_a_folder_writable_by_others_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("node.toml");
        std::fs::write(&path, b"x").unwrap();
        let file = open_regular(&path).unwrap();
        check_owner_and_folder(&file, &path).expect("a private folder");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_owner_and_folder(&file, &path),
            Err(FileRefusal::FolderWritable { .. })
        ));
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_owner_and_folder(&file, &path).expect("a sticky folder");
    }
}
