//! The control socket `<queue.dir>/submitd.sock`: how `submitd reload` and `submitd queue retry`
//! reach a running server. This module holds the protocol and the CLI's (blocking) client; the
//! server's side is [`crate::listener::control`].
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
//! rescan\n  ->  OK rescan started\n
//! tls-report\n  ->  OK tls reports: domains=1 mailed=1 posted=0 failed=0\n  |  ERR ...\n
//! ```
//!
//! Bounds: a request line of at most [`MAX_LINE`] octets read within [`READ_TIMEOUT`]; at most
//! [`MAX_CLIENTS`] connections served at once (more are closed at once); the reply written
//! within [`READ_TIMEOUT`]. Reloads run one at a time (the server's reloader serializes them).
//!
//! The socket is created (mode 0600, inside the 0700 queue directory) only while the server
//! holds the pid file's lock, so a socket file found at start-up is stale and replaced; it is
//! removed on a clean exit.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// The queue on disk was changed (`submitd queue hold`, `release`, `retry ID`, `delete`):
    /// scan it now rather than at the next periodic scan.
    Rescan,
    /// The destinations polite delivery holds or slows now (`queue list`).
    Throttled,
    /// Send the TLS-RPT reports now (RFC 8460) rather than at the next UTC midnight.
    TlsReport,
}

impl Request {
    fn line(self) -> &'static str {
        match self {
            Request::Reload => "reload\n",
            Request::Flush => "flush\n",
            Request::Rescan => "rescan\n",
            Request::Throttled => "throttled\n",
            Request::TlsReport => "tls-report\n",
        }
    }
}

/// Parse one request line (without its newline; a trailing CR is tolerated).
pub fn parse(line: &[u8]) -> Result<Request, &'static str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line {
        b"reload" => Ok(Request::Reload),
        b"flush" => Ok(Request::Flush),
        b"rescan" => Ok(Request::Rescan),
        b"throttled" => Ok(Request::Throttled),
        b"tls-report" => Ok(Request::TlsReport),
        _ => Err("unknown command (reload, flush, rescan, throttled, tls-report)"),
    }
}

/// `text` on one line: control characters (newlines in an error) become spaces.
/// One throttled destination in the `throttled` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    pub destination: String,
    /// Held until this Unix second; `None`: not held, recovering its concurrency.
    pub until: Option<u64>,
    /// Simultaneous attempts allowed now.
    pub concurrency: usize,
}

/// The `throttled` reply's text (after `OK `): `none`, or entries `DEST UNTIL N` (UNTIL `-`
/// when not held) separated by `; `, cut to fit the reply bound with a last entry `+N` for
/// the ones left out. Characters that would break the format are replaced by `?`.
pub fn encode_throttled(list: &[Throttled]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    let mut out = String::new();
    for (i, t) in list.iter().enumerate() {
        let name: String = t
            .destination
            .chars()
            .take(255)
            .map(|c| {
                if c.is_whitespace() || c.is_control() || c == ';' {
                    '?'
                } else {
                    c
                }
            })
            .collect();
        let until = t.until.map_or("-".to_string(), |u| u.to_string());
        let entry = format!("{name} {until} {}", t.concurrency);
        if out.len() + entry.len() + 16 > MAX_REPLY - 64 {
            out.push_str(&format!("; +{}", list.len() - i));
            break;
        }
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&entry);
    }
    out
}

/// [`encode_throttled`]'s text back: the entries, and how many were left out.
pub fn decode_throttled(text: &str) -> (Vec<Throttled>, usize) {
    let mut list = Vec::new();
    let mut more = 0;
    if text.trim() == "none" {
        return (list, more);
    }
    for entry in text.split("; ") {
        if let Some(n) = entry.strip_prefix('+') {
            more = n.trim().parse().unwrap_or(0);
            continue;
        }
        let mut parts = entry.split(' ');
        let (Some(name), Some(until), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(concurrency) = n.parse() else {
            continue;
        };
        list.push(Throttled {
            destination: name.to_string(),
            until: until.parse().ok(),
            concurrency,
        });
    }
    (list, more)
}

pub(crate) fn one_line(text: &str) -> String {
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
        assert_eq!(parse(b"rescan"), Ok(Request::Rescan));
        assert_eq!(parse(b"throttled"), Ok(Request::Throttled));
        assert_eq!(parse(b"tls-report"), Ok(Request::TlsReport));
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
    fn throttled_round_trip() {
        assert_eq!(encode_throttled(&[]), "none");
        assert_eq!(decode_throttled("none"), (Vec::new(), 0));
        let list = vec![
            Throttled {
                destination: "gmail.test".into(),
                until: Some(1_800_000_000),
                concurrency: 3,
            },
            Throttled {
                destination: "bad; name\n".into(),
                until: None,
                concurrency: 1,
            },
        ];
        let text = encode_throttled(&list);
        assert_eq!(text, "gmail.test 1800000000 3; bad??name? - 1");
        let (back, more) = decode_throttled(&text);
        assert_eq!(more, 0);
        assert_eq!(back[0], list[0]);
        assert_eq!(back[1].destination, "bad??name?");
        assert_eq!(back[1].until, None);
        let many: Vec<Throttled> = (0..1000)
            .map(|i| Throttled {
                destination: format!("d{i}.example.test"),
                until: Some(1),
                concurrency: 1,
            })
            .collect();
        let text = encode_throttled(&many);
        assert!(text.len() < MAX_REPLY - 16);
        let (back, more) = decode_throttled(&text);
        assert_eq!(back.len() + more, 1000);
    }

    #[test]
    fn replies_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
    }
}
