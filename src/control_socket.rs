//! The control socket `<queue.dir>/submitd.sock`: how `submitd reload` and `submitd queue retry`
//! reach a running server.
//!
//! Why not signals to the pid in `submitd.pid`: that file is written by the service account,
//! and root's CLI would signal whatever pid it names (an unrelated root process got SIGUSR1).
//! Here the kernel vouches for both ends: the server asks the kernel who connected
//! (`SO_PEERCRED`) and serves only root and its own uid; the client only ever writes a line to
//! a socket, so the worst a tampered socket can do is lie in its reply. SIGHUP and SIGUSR1 still
//! work for whoever may signal the server (systemd's `ExecReload`, `kill`).
//!
//! The protocol is one request line, one reply line, then the server closes:
//!
//! ```text
//! reload\n  ->  OK reloaded: users=3\n  |  ERR reload refused: FILE: KEY: WHY\n
//! flush\n   ->  OK flush started\n
//! ```
//!
//! Bounds: a request line of at most [`MAX_LINE`] octets read within [`READ_TIMEOUT`]; at most
//! [`MAX_CLIENTS`] connections served at once (more are closed at once); the reply written
//! within [`READ_TIMEOUT`]. Reloads run one at a time (the [`Reloader`] serializes them).
//!
//! The socket is created (mode 0600, inside the 0700 queue directory) only while the server
//! holds the pid file's lock, so a socket file found at start-up is stale and replaced; it is
//! removed on a clean exit.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::queue::scheduler::QueueHandle;
use crate::reload::{PidFile, Reloader};

/// The socket's name inside `queue.dir`.
pub const SOCKET_FILE: &str = "submitd.sock";
/// Longest request line, newline included.
pub const MAX_LINE: usize = 64;
/// Time a client gets to send its line, and the server to write its reply.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 8;
/// How long the CLI waits for a reply (a reload loads certificates, keys and the users file).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest reply the CLI reads.
const MAX_REPLY: usize = 8192;

/// What a client may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Like SIGHUP: re-read config, certificate, users and DKIM keys.
    Reload,
    /// Like SIGUSR1: attempt every deferred message now.
    Flush,
}

impl Request {
    fn line(self) -> &'static str {
        match self {
            Request::Reload => "reload\n",
            Request::Flush => "flush\n",
        }
    }
}

/// Parse one request line (without its newline; a trailing CR is tolerated).
pub fn parse(line: &[u8]) -> Result<Request, &'static str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line {
        b"reload" => Ok(Request::Reload),
        b"flush" => Ok(Request::Flush),
        _ => Err("unknown command (reload, flush)"),
    }
}

/// The listening socket of a running server.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

fn with_path(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("control socket {}: {e}", path.display()))
}

impl ControlSocket {
    /// Create `<dir>/submitd.sock`. `_lock` is the proof that this process holds the pid file's
    /// lock: no other server runs on this queue, so a socket file already there is stale and
    /// removed. Anything else at that path is left alone and refused.
    pub fn bind(dir: &Path, _lock: &PidFile) -> io::Result<ControlSocket> {
        let path = dir.join(SOCKET_FILE);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(&path).map_err(with_path(&path))?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "control socket {}: exists and is not a socket; remove it",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(&path)(e)),
        }
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(with_path(&path))?;
        // The queue directory (0700) already keeps others out; the peer check is the real gate.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(with_path(&path))?;
        listener.set_nonblocking(true).map_err(with_path(&path))?;
        Ok(ControlSocket { path, listener })
    }

    /// Serve requests until `shutdown`, then remove the socket file. Needs a tokio runtime.
    pub fn serve(
        self,
        reloader: Reloader,
        queue: QueueHandle,
        shutdown: CancellationToken,
    ) -> io::Result<tokio::task::JoinHandle<()>> {
        let ControlSocket { path, listener } = self;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(with_path(&path))?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
        Ok(tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            warn!(error = %e, "control socket: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!("control socket: too many clients, connection closed");
                    continue;
                };
                let (reloader, queue) = (reloader.clone(), queue.clone());
                tokio::spawn(async move {
                    handle(stream, &reloader, &queue).await;
                    drop(permit);
                });
            }
            let _ = std::fs::remove_file(&path);
        }))
    }
}

/// Whether a peer with this uid may steer the server: root, or the server's own account.
fn allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

async fn handle(mut stream: tokio::net::UnixStream, reloader: &Reloader, queue: &QueueHandle) {
    // The line is read whoever the peer is: closing a Unix socket with unread data resets it,
    // and the client would not see the reply.
    let line = tokio::time::timeout(READ_TIMEOUT, read_line(&mut stream)).await;
    let reply = match (stream.peer_cred(), line) {
        (Err(e), _) => format!("ERR cannot read peer credentials: {e}"),
        (Ok(cred), _) if !allowed(cred.uid()) => {
            warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "control socket: refused a client that is neither root nor the server's user"
            );
            "ERR permission denied".to_string()
        }
        (Ok(cred), Ok(Ok(line))) => match parse(&line) {
            Ok(request) => {
                info!(uid = cred.uid(), pid = cred.pid(), request = ?request, "control socket request");
                answer(request, reloader, queue).await
            }
            Err(why) => format!("ERR {why}"),
        },
        (Ok(_), Ok(Err(why))) => format!("ERR {why}"),
        (Ok(_), Err(_)) => format!("ERR no request line within {READ_TIMEOUT:?}"),
    };
    let mut reply = one_line(&reply);
    reply.push('\n');
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(reply.as_bytes())).await;
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.shutdown()).await;
}

/// Read up to and without the first `\n`, at most [`MAX_LINE`] octets.
async fn read_line(stream: &mut tokio::net::UnixStream) -> Result<Vec<u8>, &'static str> {
    let mut line = Vec::with_capacity(MAX_LINE);
    let mut buf = [0u8; MAX_LINE];
    loop {
        let room = MAX_LINE - line.len();
        let n = stream
            .read(&mut buf[..room])
            .await
            .map_err(|_| "read error")?;
        if n == 0 {
            return Err("no request line (connection closed)");
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok(line);
        }
        if line.len() >= MAX_LINE {
            return Err("request line too long");
        }
    }
}

async fn answer(request: Request, reloader: &Reloader, queue: &QueueHandle) -> String {
    match request {
        Request::Flush => {
            info!("queue flush requested");
            queue.flush();
            "OK flush started".to_string()
        }
        Request::Reload => match reloader.reload().await {
            Ok(r) if r.needs_restart.is_empty() => format!("OK reloaded: users={}", r.users),
            Ok(r) => format!(
                "OK reloaded: users={}; changes that need a restart were kept out: {}",
                r.users,
                r.needs_restart.join(", ")
            ),
            Err(errors) => {
                let why: Vec<String> = errors
                    .0
                    .iter()
                    .map(|e| format!("{}: {}: {}", e.file.display(), e.key, e.message))
                    .collect();
                format!(
                    "ERR reload refused, the running config is kept: {}",
                    why.join("; ")
                )
            }
        },
    }
}

/// `text` on one line: control characters (newlines in an error) become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no submitd server is running (nothing listens on {path}: {cause})")]
    NotRunning { path: PathBuf, cause: io::Error },
    #[error("control socket {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("control socket {path}: unexpected reply {reply:?}")]
    BadReply { path: PathBuf, reply: String },
}

/// Send `request` to the server whose queue directory is `dir`; the text after `OK ` on success.
/// Blocking, bounded by `timeout` for each of the write and the read.
pub fn request(dir: &Path, request: Request, timeout: Duration) -> Result<String, ClientError> {
    let path = dir.join(SOCKET_FILE);
    let io_err = |cause| ClientError::Io {
        path: path.clone(),
        cause,
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning { path, cause: e });
        }
        Err(e) => return Err(io_err(e)),
    };
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    match stream.write_all(request.line().as_bytes()) {
        Ok(()) => {}
        // The server may answer and close before reading (a refused peer): read its reply.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut reply = Vec::new();
    (&mut stream)
        .take(MAX_REPLY as u64)
        .read_to_end(&mut reply)
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io_err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply within {timeout:?}"),
            )),
            _ => io_err(e),
        })?;
    let reply = String::from_utf8_lossy(&reply);
    let reply = reply.trim_end_matches(['\r', '\n']);
    if let Some(ok) = reply.strip_prefix("OK ") {
        Ok(one_line(ok))
    } else if let Some(err) = reply.strip_prefix("ERR ") {
        Err(ClientError::Refused(one_line(err)))
    } else {
        Err(ClientError::BadReply {
            path,
            reply: one_line(reply),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(parse(b"reload"), Ok(Request::Reload));
        assert_eq!(parse(b"flush\r"), Ok(Request::Flush));
        assert!(parse(b"kill 1").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"RELOAD").is_err());
    }

    #[test]
    fn no_socket_is_no_server() {
        let dir = tempfile::tempdir().unwrap();
        let err = request(dir.path(), Request::Flush, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
        assert!(err.to_string().contains("no submitd server is running"));
        // A stale socket file (its server gone): connection refused, same answer.
        drop(std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET_FILE)).unwrap());
        let err = request(dir.path(), Request::Flush, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    }

    #[test]
    fn bind_replaces_a_stale_socket_only_under_the_lock_and_refuses_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let lock = PidFile::acquire(dir.path()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET_FILE)).unwrap());
        let s = ControlSocket::bind(dir.path(), &lock).unwrap();
        let mode = std::fs::metadata(dir.path().join(SOCKET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(s);
        std::fs::remove_file(dir.path().join(SOCKET_FILE)).unwrap();
        std::fs::write(dir.path().join(SOCKET_FILE), "not a socket").unwrap();
        let err = ControlSocket::bind(dir.path(), &lock).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        lock.remove();
    }

    #[test]
    fn replies_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
    }
}
