//! The server's side of the control socket (`<queue.dir>/submitd.sock`): bind it under the pid
//! file's lock, check each peer's credentials, answer one request line. The protocol, its
//! bounds and the client are in [`crate::control_socket`].

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control_socket::{
    MAX_CLIENTS, MAX_LINE, READ_TIMEOUT, Request, SOCKET_FILE, one_line, parse,
};
use crate::delivery::tlsrpt::Reporter;
use crate::pidfile::PidFile;
use crate::queue::scheduler::QueueHandle;
use crate::reload::Reload;

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
        reloader: impl Reload,
        queue: QueueHandle,
        tls_report: Option<Arc<Reporter>>,
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
                let tls_report = tls_report.clone();
                tokio::spawn(async move {
                    handle(stream, &reloader, &queue, tls_report).await;
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

async fn handle(
    mut stream: tokio::net::UnixStream,
    reloader: &impl Reload,
    queue: &QueueHandle,
    tls_report: Option<Arc<Reporter>>,
) {
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
                match request {
                    Request::TlsReport => report_now(tls_report).await,
                    _ => answer(request, reloader, queue).await,
                }
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

/// Send the TLS-RPT reports now; the reply waits at most [`REPORT_WAIT`] (the sending goes
/// on past it).
async fn report_now(reporter: Option<Arc<Reporter>>) -> String {
    let Some(reporter) = reporter else {
        return "ERR TLS reporting is off (it needs relay.mode = \"mx\" and relay.mta_sts = true)"
            .to_string();
    };
    info!("TLS reports requested");
    let mut task = tokio::spawn(async move { reporter.send().await });
    match tokio::time::timeout(REPORT_WAIT, &mut task).await {
        Ok(Ok(s)) => format!(
            "OK tls reports: domains={} mailed={} posted={} failed={}",
            s.domains, s.mailed, s.posted, s.failed
        ),
        Ok(Err(e)) => format!("ERR TLS reports failed: {e}"),
        Err(_) => "OK tls reports still being sent".to_string(),
    }
}

/// How long `tls-report` waits for the reports before it answers.
const REPORT_WAIT: Duration = Duration::from_secs(45);

async fn answer(request: Request, reloader: &impl Reload, queue: &QueueHandle) -> String {
    match request {
        Request::TlsReport => report_now(None).await,
        Request::Flush => {
            info!("queue flush requested");
            queue.flush();
            "OK flush started".to_string()
        }
        Request::Rescan => {
            info!("queue rescan requested");
            queue.rescan();
            "OK rescan started".to_string()
        }
        Request::Throttled => {
            let list: Vec<crate::control_socket::Throttled> = queue
                .throttled()
                .into_iter()
                .map(|d| crate::control_socket::Throttled {
                    destination: d.destination,
                    until: d.held_until,
                    concurrency: d.limit,
                })
                .collect();
            format!("OK {}", crate::control_socket::encode_throttled(&list))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
