//! Ownership of rewritten files: a file replaced through a temp file and a rename keeps the owner
//! and group of the file it replaces; [`write_atomic`] is that replacement.
//!
//! Why: the server runs as a service account, while the documented admin commands (`user add`,
//! `user del`, `user suspend`, `queue hold`, `queue release`) run as root. A temp file created
//! by root belongs to root; renamed over `users.toml` (`root:mail 0640`) or an envelope
//! (`submitd:submitd 0600`) it would lock the server out of its own state, silently.
//!
//! The rules, for the temp file before the rename:
//! - it replaces an existing file: give it that file's uid and gid (`fchown`). When the ids
//!   already match nothing is done, so an unprivileged owner rewriting its own file needs no
//!   privilege; when they differ and `fchown` fails (EPERM: not root and not allowed to take
//!   that group), the write is refused with an error naming the owner it would lose, rather
//!   than replacing the file with one the server may not read.
//! - it is a new file and we are root: give it the directory's uid and gid, so that a file the
//!   CLI creates in the queue or config directory belongs to whoever owns that directory (the
//!   service account). Unprivileged, a new file keeps the creator's ids, as usual.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Give `tmp` (a temp file about to be renamed onto `target`) the owner and group `target` has,
/// or for a new file (as root) those of `target`'s directory. See the module doc. Call it
/// before setting the mode: a `chown` may clear set-id bits.
pub fn keep_owner(tmp: &File, target: &Path) -> io::Result<()> {
    let want = match std::fs::metadata(target) {
        Ok(m) => (m.uid(), m.gid()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !is_root() {
                return Ok(());
            }
            let m = std::fs::metadata(parent_dir(target))?;
            (m.uid(), m.gid())
        }
        Err(e) => return Err(e),
    };
    let have = tmp.metadata()?;
    if (have.uid(), have.gid()) == want {
        return Ok(());
    }
    std::os::unix::fs::fchown(tmp, Some(want.0), Some(want.1)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot give the new {} the owner {}:{} of the file it replaces (we are {}:{}): \
                 {e}; run this as that user or as root",
                target.display(),
                want.0,
                want.1,
                have.uid(),
                have.gid()
            ),
        )
    })
}

/// Replace `path` with `contents`: temp file in the same directory, fsync, rename, fsync the
/// directory, so a crash leaves either the old or the new file, never a torn one. An existing
/// file keeps its mode; a new one gets [`new_file_mode`]. (The users file's and the suspension
/// state's writer.)
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(path);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    // Password hashes are secrets: new files are 0600; an existing file keeps its mode, owner
    // and group (see the module doc).
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_file_mode(dir),
        Err(e) => return Err(e),
    };
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // Owner and group first (a chown may clear set-id bits), then the exact mode: `mode()`
        // above is filtered by the umask.
        keep_owner(&file, path)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The mode of a file [`write_atomic`] creates: 0600, except as root in a directory shared
/// with a service group (group `r-x`, not group root, e.g. `/etc/submitd` as `root:submitd
/// 0750`): 0640, so that the server, which reads through that group, can read the users file
/// root's first `user add` creates. The file takes the directory's group ([`keep_owner`]).
fn new_file_mode(dir: &Path) -> u32 {
    match std::fs::metadata(dir) {
        Ok(m) if is_root() && m.gid() != 0 && m.mode() & 0o050 == 0o050 => 0o640,
        _ => 0o600,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_owner_is_a_no_op_and_a_new_file_unprivileged_keeps_its_ids() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        std::fs::write(&target, "x").unwrap();
        let tmp = File::create(dir.path().join("f.tmp")).unwrap();
        keep_owner(&tmp, &target).unwrap();
        keep_owner(&tmp, &dir.path().join("new")).unwrap();
    }

    #[test]
    fn root_gives_the_target_its_owner_and_a_new_file_the_directory_owner() {
        if !is_root() {
            eprintln!("skipped: needs root (chown to another uid)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        std::fs::write(&target, "x").unwrap();
        std::os::unix::fs::chown(&target, Some(65534), Some(4321)).unwrap();
        let tmp = File::create(dir.path().join("f.tmp")).unwrap();
        keep_owner(&tmp, &target).unwrap();
        let m = tmp.metadata().unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 4321));

        std::os::unix::fs::chown(dir.path(), Some(65533), Some(4322)).unwrap();
        let tmp = File::create(dir.path().join("g.tmp")).unwrap();
        keep_owner(&tmp, &dir.path().join("g")).unwrap();
        let m = tmp.metadata().unwrap();
        assert_eq!((m.uid(), m.gid()), (65533, 4322));
    }

    /// Root's first `user add` in `/etc/submitd` (`root:GROUP 0750`) makes a file the service
    /// group can read: `root:GROUP 0640`. In a private directory it stays 0600.
    #[test]
    fn a_new_file_in_a_group_shared_directory_is_group_readable() {
        if !is_root() {
            eprintln!("skipped: needs root to give a directory another group");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("etc");
        std::fs::create_dir(&shared).unwrap();
        std::os::unix::fs::chown(&shared, Some(0), Some(65534)).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();
        let users = shared.join("users.toml");
        write_atomic(&users, b"x").unwrap();
        let m = std::fs::metadata(&users).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, 65534, 0o640));

        let private = dir.path().join("queue");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let state = private.join("suspended.json");
        write_atomic(&state, b"{}").unwrap();
        assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o600);
    }
}
