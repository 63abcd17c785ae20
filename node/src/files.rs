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
    /// A folder on the way to it belongs to another user, who could swap it.
    #[error(
        "a folder on its path belongs to user {owner}, not to this process's user {user} or root"
    )]
    FolderOwner {
        /// The folder's owner.
        owner: u32,
        /// This process's effective user.
        user: u32,
    },
    /// A folder on the way to it can be written by group or others, who
    /// could swap it.
    #[error("its folder is writable by group or others (mode {mode:o}): chmod go-w the folder")]
    FolderWritable {
        /// The folder's mode.
        mode: u32,
    },
}

/// Opens `path` without blocking (and never as a controlling terminal) and
/// checks that it is a regular file; the file is then switched back to
/// blocking reads (a network or FUSE file system may honour the flag).
pub fn open_regular(path: &Path) -> Result<File, FileRefusal> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(FileRefusal::Io)?;
    let meta = file.metadata().map_err(FileRefusal::Io)?;
    if !meta.is_file() {
        return Err(FileRefusal::NotRegular);
    }
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(|e| FileRefusal::Io(e.into()))?;
    Ok(file)
}

/// Reads `path` whole if it is a regular file of at most `max` bytes: opened
/// once with [`open_regular`], checked on the open file, read through a
/// reader capped at `max + 1` bytes (a file that grows meanwhile is caught).
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let too_big =
        || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("over {max} bytes"));
    let file = open_regular(path).map_err(|e| match e {
        FileRefusal::Io(e) => e,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
    })?;
    if file.metadata()?.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Checks that the open `file` (at `path`) belongs to this process's user
/// or root, and that no folder on the way to it (the link's target's, up to
/// `/`) lets anyone else replace it: each belongs to this user or root and
/// is not writable by group or others, unless it is sticky and root's (like
/// `/tmp`), as sshd's StrictModes checks.
pub fn check_owner_and_folder(file: &File, path: &Path) -> Result<(), FileRefusal> {
    let owner = file.metadata().map_err(FileRefusal::Io)?.uid();
    let user = nix::unistd::geteuid().as_raw();
    if owner != user && owner != 0 {
        return Err(FileRefusal::Owner { owner, user });
    }
    let real = std::fs::canonicalize(path).map_err(FileRefusal::Io)?;
    for folder in real.ancestors().skip(1) {
        let meta = std::fs::metadata(folder).map_err(FileRefusal::Io)?;
        let mode = meta.permissions().mode() & 0o7777;
        let sticky_root = mode & 0o1000 != 0 && meta.uid() == 0;
        if meta.uid() != user && meta.uid() != 0 {
            return Err(FileRefusal::FolderOwner {
                owner: meta.uid(),
                user,
            });
        }
        if mode & 0o022 != 0 && !sticky_root {
            return Err(FileRefusal::FolderWritable { mode });
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary of its own (`path.PID.N.tmp`),
/// created exclusively with mode 0600 (an exclusive create never follows a
/// symlink planted there: it fails), synced and renamed over `path`; then the
/// folder is synced.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A temporary of this write's own: two writers of one file (the health
    // check runs on two threads) never take each other's.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut f = create_private(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_folder_of(path)
}

/// Writes `bytes` to a new file `path` (mode 0600), synced, then the folder
/// synced: an existing file (or a symlink planted there) is never
/// overwritten or followed, the create fails with `AlreadyExists`. A file it
/// created and could not fill and sync is removed: a failed write leaves no
/// partial file behind.
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = create_private(path)?;
    let filled = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = filled {
        // Ours (created above): removed; a failed removal leaves it for the
        // operator, the write's error is the one reported.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    sync_folder_of(path)
}

/// Creates `path` exclusively for writing, mode 0600, never following a
/// symlink at it (the create fails with `AlreadyExists` on anything there).
fn create_private(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Syncs the folder holding `path` (the current folder for a bare name), so
/// that a file created or renamed in it survives a crash.
fn sync_folder_of(path: &Path) -> std::io::Result<()> {
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
        // Symlinks at every temporary name the next writes could take: an
        // exclusive create fails on them rather than follow one.
        let pid = std::process::id();
        for n in 0..1024 {
            let link = d.path().join(format!("accepted-epoch.{pid}.{n}.tmp"));
            std::os::unix::fs::symlink(&victim, link).unwrap();
        }
        let mut written = false;
        for _ in 0..1500 {
            if write_replacing(&path, b"vaultfleet accepted epoch 3\n").is_ok() {
                written = true;
                break;
            }
        }
        assert!(written, "a temporary name without a symlink was found");
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
        // A sticky folder of root's on the way (like /tmp, where tempdir
        // makes its folder) passed above.
    }

    /// `write_new` creates a private file, and never overwrites an existing
    /// file nor follows a symlink planted at the path: `AlreadyExists`, the
    /// file (or the link's target) untouched.
    #[test]
    fn write_new_never_overwrites_or_follows() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("fork-evidence.note");
        write_new(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = write_new(&path, b"second").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");

        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let link = d.path().join("planted.note");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = write_new(&link, b"evil").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    /// R4-1 (review of the fixes): two writers of one file at once (the
    /// health check's two threads) never fail on each other's temporary.
    #[test]
    fn r4_1_two_writers_of_one_file_never_collide() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("health-check");
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..200 {
                        write_replacing(&path, b"vaultfleet disk health check\n").expect("a write");
                    }
                });
            }
        });
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temporary left behind: {left:?}");
    }
}
