//! `<queue.dir>/submitd.pid`: its lock keeps a second server off the same queue directory.
//! Nothing signals the pid written in that file: the service account writes it, and root's CLI
//! must not trust it (see [`crate::control_socket`]).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The pid file's name inside `queue.dir`.
pub const PID_FILE: &str = "submitd.pid";

/// Why the pid file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another submitd (pid {pid}) is running with this queue directory ({path} is locked)")]
    Running { pid: String, path: PathBuf },
}

/// `<queue.dir>/submitd.pid`, locked (flock) for as long as the server runs.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PidError + '_ {
    move |source| PidError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `flock` without waiting; `Ok(false)` when another process holds a conflicting lock.
fn try_flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor owned by `file`, borrowed for the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

impl PidFile {
    /// Take `<dir>/submitd.pid` and write our pid into it; refused while another live server
    /// holds it. A file left by a server that died is simply taken over (its lock died with it).
    pub fn acquire(dir: &Path) -> Result<PidFile, PidError> {
        let path = dir.join(PID_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        if !try_flock(&file, libc::LOCK_EX).map_err(io_err(&path))? {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(PidError::Running {
                pid: pid.trim().to_string(),
                path,
            });
        }
        file.set_len(0).map_err(io_err(&path))?;
        file.rewind().map_err(io_err(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        Ok(PidFile { path, file })
    }

    /// Remove the file (clean exit); the lock goes with the descriptor.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let pid = PidFile::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(PID_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock locks belong to the open file: a second open in this process conflicts too.
        let err = PidFile::acquire(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("another submitd") && err.to_string().contains("locked"),
            "{err}"
        );
        pid.remove();
        assert!(!dir.path().join(PID_FILE).exists());
        // A stale file (its server died without removing it) is simply taken over.
        std::fs::write(dir.path().join(PID_FILE), "12345\n").unwrap();
        let taken = PidFile::acquire(dir.path()).unwrap();
        taken.remove();
    }
}
