//! Files only we may read or write: state files, captures (they hold PUSH_REPLY with its
//! auth-token), lock files. The engine runs as root, so a file another user planted where we
//! write (a symlink to /etc/shadow, a state file naming a command to run) must never be
//! followed or believed.
//!
//! Rules: files are created 0600 without following a symlink in the last component; a file
//! we read back (a state file after a crash) must be a regular file owned by our user and
//! writable by nobody else; directories we create for them are 0700.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates (or truncates) `path` as a 0600 file; a symlink in its place is an error
/// (`ELOOP`), not followed.
pub fn create(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // An existing file keeps its mode on open: make it ours alone.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Creates `path` new (never an existing file or link), 0600.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates `dir` (and its parents) if missing; the directories created are 0700.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Why a file we are about to trust is not trustworthy; `None` when it is: a regular file
/// (not a symlink), owned by our effective user or by root (a client that gave up root
/// still trusts the state file it made as root), writable by nobody else.
pub fn distrust(path: &Path) -> Option<String> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(e.to_string()),
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.file_type().is_symlink() {
        Some("it is a symbolic link".into())
    } else if !m.is_file() {
        Some("it is not a regular file".into())
    } else if m.uid() != me && m.uid() != 0 {
        Some(format!("it belongs to uid {}, not to us ({me})", m.uid()))
    } else if m.mode() & 0o022 != 0 {
        Some(format!("others may write it (mode {:o})", m.mode() & 0o777))
    } else {
        None
    }
}

/// An exclusive lock on a file, held while this value lives.
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock at `path` without waiting; `Err` with `WouldBlock` when another
    /// process holds it. The file records the holder's pid (for the error message).
    pub fn try_take(path: &Path) -> io::Result<Lock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::last_os_error());
        }
        file.set_len(0)?;
        std::io::Write::write_all(&mut &file, std::process::id().to_string().as_bytes())?;
        Ok(Lock {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// The pid recorded by whoever holds the lock at `path`.
    pub fn holder(path: &Path) -> Option<u32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tunscope-private-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        create_dir(&d).expect("dir");
        d
    }

    #[test]
    fn created_files_are_private_and_links_are_not_followed() {
        let d = scratch("create");
        let p = d.join("capture.pcapng");
        std::fs::write(&p, b"old").expect("w");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(create(&p).expect("create"));
        assert_eq!(std::fs::metadata(&p).expect("m").mode() & 0o777, 0o600);
        // A planted symlink to a file we must not touch.
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").expect("w");
        let link = d.join("state.tmp");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        assert!(create(&link).is_err());
        assert!(create_new(&link).is_err());
        assert_eq!(std::fs::read(&victim).expect("r"), b"precious");
        assert_eq!(
            std::fs::metadata(&d).expect("m").mode() & 0o777,
            0o700,
            "directories we make are ours alone"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_our_own_private_files_are_trusted() {
        let d = scratch("trust");
        let p = d.join("client.state");
        drop(create(&p).expect("create"));
        assert_eq!(distrust(&p), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(distrust(&p).is_some_and(|w| w.contains("others may write")));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let link = d.join("link.state");
        std::os::unix::fs::symlink(&p, &link).expect("symlink");
        assert!(distrust(&link).is_some_and(|w| w.contains("symbolic link")));
        // Somebody else's file (as root here we can hand it to nobody).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&p, Some(65534), None).expect("chown");
            assert!(distrust(&p).is_some_and(|w| w.contains("uid 65534")));
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lock_is_held_once() {
        let d = scratch("lock");
        let p = d.join("client.lock");
        let held = Lock::try_take(&p).expect("first");
        // flock locks belong to the open file description: a second open conflicts, also
        // within one process.
        let e = Lock::try_take(&p).err().expect("second must fail");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(Lock::holder(&p), Some(std::process::id()));
        drop(held);
        assert!(Lock::try_take(&p).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
