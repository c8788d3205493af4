//! The narrow interface every spool write goes through ([`SpoolIo`]): create a temp file,
//! write it, fsync it, rename it into place, fsync the directory, remove a file.
//!
//! [`RealIo`] is the file system. [`FaultyIo`] wraps it and fails one chosen step, on the Nth
//! matching call, with a chosen errno: the storage-fault tests run the real server over it to
//! prove that a failed write is never acknowledged and never leaves half a queue entry behind.
//! Reads do not go through here: a failed read is retried at the next scan and never loses
//! an acknowledged message.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The file operations the spool writes with. Every method blocks.
pub trait SpoolIo: Send + Sync + std::fmt::Debug {
    /// Create (or truncate) `path` with mode 0600, for writing and reading back.
    fn create(&self, path: &Path) -> io::Result<File>;
    /// Open the existing `path` for appending.
    fn open_append(&self, path: &Path) -> io::Result<File>;
    /// Write all of `bytes` to `file`, which was created for `path`.
    fn write_all(&self, path: &Path, file: &mut File, bytes: &[u8]) -> io::Result<()>;
    /// fsync `file`, which was created for `path`.
    fn sync(&self, path: &Path, file: &File) -> io::Result<()>;
    /// Rename `from` to `to` (atomic within one file system).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// fsync a directory, so that the renames into it survive a crash.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Remove a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Give the file at `from` the second name `to` (a hard link).
    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
}

/// The file system, as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealIo;

impl SpoolIo for RealIo {
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().append(true).open(path)
    }

    fn write_all(&self, _path: &Path, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }

    fn sync(&self, _path: &Path, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// One step of a spool write, for [`FaultyIo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    /// Opening a queue file to append a record.
    Open,
    Write,
    Sync,
    Rename,
    SyncDir,
    Remove,
}

/// Which file a fault applies to, by the kind of queue file involved (the temp file's name,
/// or a rename's destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `ID.q` (and `ID.q.tmp`).
    Queue,
    /// A version 1 `ID.msg` (migration).
    Msg,
    /// A version 1 `ID.env` (migration).
    Env,
    /// Any path (the only sensible target of [`Op::SyncDir`]).
    Any,
}

impl Target {
    fn matches(self, path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let name = name.strip_suffix(".tmp").unwrap_or(name);
        match self {
            Target::Queue => name.ends_with(".q"),
            Target::Msg => name.ends_with(".msg"),
            Target::Env => name.ends_with(".env"),
            Target::Any => true,
        }
    }
}

/// "Fail `op` on `target` at the `nth` matching call (1 = the next one) with `errno`."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub op: Op,
    pub target: Target,
    pub nth: u32,
    pub errno: i32,
}

#[derive(Debug, Default)]
struct FaultState {
    fault: Option<Fault>,
    /// Matching calls seen since the fault was armed.
    seen: u32,
    /// Faults injected so far.
    injected: usize,
}

/// [`RealIo`] with one injectable fault; clones share the setting, so a test keeps one clone
/// and hands another to the server. The fault fires once, then disarms itself.
#[derive(Debug, Clone, Default)]
pub struct FaultyIo {
    state: Arc<Mutex<FaultState>>,
}

impl FaultyIo {
    /// No fault armed.
    pub fn new() -> FaultyIo {
        FaultyIo::default()
    }

    /// Arm a fault (replacing any armed one).
    pub fn fail(&self, fault: Fault) {
        let mut s = self.lock();
        s.fault = Some(fault);
        s.seen = 0;
    }

    /// Disarm.
    pub fn clear(&self) {
        self.lock().fault = None;
    }

    /// How many faults were injected since this was made.
    pub fn injected(&self) -> usize {
        self.lock().injected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The injected error when this call is the chosen one.
    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let Some(fault) = s.fault else { return Ok(()) };
        if fault.op != op || !fault.target.matches(path) {
            return Ok(());
        }
        s.seen += 1;
        if s.seen < fault.nth.max(1) {
            return Ok(());
        }
        s.fault = None;
        s.injected += 1;
        tracing::debug!(?op, path = %path.display(), errno = fault.errno, "injected spool fault");
        Err(io::Error::from_raw_os_error(fault.errno))
    }
}

impl SpoolIo for FaultyIo {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Create, path)?;
        RealIo.create(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Open, path)?;
        RealIo.open_append(path)
    }

    fn write_all(&self, path: &Path, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.check(Op::Write, path) {
            // Like a real short write: part of the bytes reached the file.
            let _ = file.write_all(&bytes[..bytes.len() / 2]);
            return Err(e);
        }
        RealIo.write_all(path, file, bytes)
    }

    fn sync(&self, path: &Path, file: &File) -> io::Result<()> {
        self.check(Op::Sync, path)?;
        RealIo.sync(path, file)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, to)?;
        RealIo.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::SyncDir, dir)?;
        RealIo.sync_dir(dir)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove, path)?;
        RealIo.remove(path)
    }
}

/// [`RealIo`] that kills the process (`abort`, as a power cut would stop it) at its Nth write
/// operation of any kind, before it (a write: after half of its bytes): the crash tests run
/// a child process over it for every N.
#[derive(Debug)]
pub struct CrashingIo {
    at: u32,
    seen: std::sync::atomic::AtomicU32,
}

impl CrashingIo {
    /// Crash before operation `at` (1 = the first); 0 never crashes.
    pub fn new(at: u32) -> CrashingIo {
        CrashingIo {
            at,
            seen: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Write operations done so far.
    pub fn operations(&self) -> u32 {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn step(&self) {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.at {
            std::process::abort();
        }
    }
}

impl SpoolIo for CrashingIo {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.step();
        RealIo.create(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<File> {
        self.step();
        RealIo.open_append(path)
    }

    fn write_all(&self, path: &Path, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        let n = self.seen.load(std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.at {
            // A torn write: half of it reaches the file (and the disk), then the crash.
            let _ = file.write_all(&bytes[..bytes.len() / 2]);
            let _ = file.sync_all();
        }
        self.step();
        RealIo.write_all(path, file, bytes)
    }

    fn sync(&self, path: &Path, file: &File) -> io::Result<()> {
        self.step();
        RealIo.sync(path, file)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step();
        RealIo.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step();
        RealIo.sync_dir(dir)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.step();
        RealIo.remove(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_fires_on_the_nth_matching_call_once() {
        let dir = tempfile::tempdir().unwrap();
        let io = FaultyIo::new();
        io.fail(Fault {
            op: Op::Create,
            target: Target::Env,
            nth: 2,
            errno: libc::ENOSPC,
        });
        let p = |n: &str| dir.path().join(n);
        assert!(io.create(&p("A.msg.tmp")).is_ok(), "not the target");
        assert!(io.create(&p("A.env.tmp")).is_ok(), "first match passes");
        let e = io.create(&p("B.env.tmp")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(io.create(&p("C.env.tmp")).is_ok(), "fires once");
        assert_eq!(io.injected(), 1);
    }
}
