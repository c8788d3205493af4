//! `submitd health`: is the server answering? For container health checks, Kubernetes probes
//! and monitoring scripts.
//!
//! Connects to the first listen address — the first `listen.submission` address, or the first
//! `listen.submissions` one when there is none — reads the greeting, sends `QUIT`. A wildcard
//! address is checked on loopback (`0.0.0.0` → `127.0.0.1`, `::` → `::1`). On 465 the TLS
//! handshake comes first; the certificate is not verified (it is the server's own; expiry and
//! names are `check-config`'s business). With `listen.proxy_protocol` a PROXY v2 `LOCAL`
//! header goes first, as a load balancer's own health check would send. The whole check is
//! bounded by one deadline. Blocking std IO: a one-shot command needs no runtime.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::config::Listen;

/// The whole check's deadline.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Longest greeting line read, and most greeting lines (a multi-line 220).
const MAX_LINE: usize = 512;
const MAX_LINES: usize = 16;

/// Why the check failed, in one line.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("no listen address configured")]
    NoAddress,
    #[error("{addr}: {step}: {source}")]
    Io {
        addr: SocketAddr,
        step: &'static str,
        source: io::Error,
    },
    #[error("{addr}: {step}: no answer within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        step: &'static str,
        timeout: Duration,
    },
    #[error("{addr}: unexpected greeting {line:?}")]
    Greeting { addr: SocketAddr, line: String },
}

/// The address the check connects to and whether it speaks implicit TLS.
pub fn target(listen: &Listen) -> Option<(SocketAddr, bool)> {
    let (addr, tls) = match (listen.submission.first(), listen.submissions.first()) {
        (Some(a), _) => (*a, false),
        (None, Some(a)) => (*a, true),
        (None, None) => return None,
    };
    Some((loopback_form(addr), tls))
}

/// `0.0.0.0` → `127.0.0.1`, `::` → `::1`; other addresses unchanged.
pub fn loopback_form(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Run the check within `timeout`; on success, what answered (`ADDR: 220 ...`).
pub fn check(listen: &Listen, timeout: Duration) -> Result<String, HealthError> {
    let (addr, tls) = target(listen).ok_or(HealthError::NoAddress)?;
    let deadline = Instant::now() + timeout;
    let io_err = |step| io_error(addr, step, timeout);
    let mut tcp = TcpStream::connect_timeout(&addr, timeout).map_err(io_err("connect"))?;
    set_deadline(&tcp, deadline).map_err(io_err("connect"))?;
    if listen.proxy_protocol {
        tcp.write_all(&crate::proxy::v2_header(None))
            .map_err(io_err("PROXY header"))?;
    }
    let greeting = if tls {
        let config = Arc::new(crate::tls::any_certificate_client_config());
        let name = ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| io_err("TLS")(io::Error::other(e)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            set_deadline(&stream.sock, deadline).map_err(io_err("TLS handshake"))?;
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(io_err("TLS handshake"))?;
        }
        converse(&mut stream, addr, timeout, deadline)?
    } else {
        converse(&mut tcp, addr, timeout, deadline)?
    };
    Ok(format!("{addr}: {greeting}"))
}

/// Read the greeting (every line must be 220), send QUIT, read its reply (best effort).
fn converse<S: Read + Write + Deadline>(
    stream: &mut S,
    addr: SocketAddr,
    timeout: Duration,
    deadline: Instant,
) -> Result<String, HealthError> {
    let io_err = |step| io_error(addr, step, timeout);
    let mut last = String::new();
    for _ in 0..MAX_LINES {
        stream.deadline(deadline).map_err(io_err("greeting"))?;
        let line = read_line(stream).map_err(io_err("greeting"))?;
        if !line.starts_with("220") || !matches!(line.as_bytes().get(3), Some(b' ' | b'-') | None) {
            return Err(HealthError::Greeting { addr, line });
        }
        let done = line.as_bytes().get(3) != Some(&b'-');
        last = line;
        if done {
            let _ = stream.write_all(b"QUIT\r\n").and_then(|()| stream.flush());
            let _ = stream.deadline(deadline).and_then(|()| read_line(stream));
            return Ok(last);
        }
    }
    Err(HealthError::Greeting { addr, line: last })
}

/// An IO error of `step`; a socket timeout is reported as the check's timeout.
fn io_error(
    addr: SocketAddr,
    step: &'static str,
    timeout: Duration,
) -> impl FnOnce(io::Error) -> HealthError {
    move |source| {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            HealthError::Timeout {
                addr,
                step,
                timeout,
            }
        } else {
            HealthError::Io { addr, step, source }
        }
    }
}

/// One CRLF-terminated line (without it), at most [`MAX_LINE`] octets, read byte by byte: a
/// greeting is short, and no bytes past it may be swallowed.
fn read_line<S: Read>(stream: &mut S) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if byte[0] == b'\n' {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() >= MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        line.push(byte[0]);
    }
}

/// Read and write timeouts from what is left until `deadline`.
fn set_deadline(tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    tcp.set_read_timeout(Some(left))?;
    tcp.set_write_timeout(Some(left))
}

/// A stream whose socket timeouts can follow a deadline.
trait Deadline {
    fn deadline(&mut self, deadline: Instant) -> io::Result<()>;
}

impl Deadline for TcpStream {
    fn deadline(&mut self, deadline: Instant) -> io::Result<()> {
        set_deadline(self, deadline)
    }
}

impl Deadline for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn deadline(&mut self, deadline: Instant) -> io::Result<()> {
        set_deadline(&self.sock, deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through the config parser, so this keeps up with new `[listen]` keys.
    fn listen(submission: &[&str], submissions: &[&str]) -> Listen {
        let list = |a: &[&str]| {
            let quoted: Vec<String> = a.iter().map(|a| format!("{a:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let text = format!(
            "hostname = \"h.test\"\n[listen]\nsubmission = {}\nsubmissions = {}\n\
             [tls]\ncert = \"c\"\nkey = \"k\"\n[auth]\nusers = \"u\"\n",
            list(submission),
            list(submissions)
        );
        let path = std::path::Path::new("/x/submitd.toml");
        match crate::config::Settings::from_toml(&text, path) {
            Ok(settings) => settings.listen,
            // No address at all is a config error; model it directly.
            Err(_) => {
                let mut l = listen(&["127.0.0.1:1"], &[]);
                l.submission.clear();
                l
            }
        }
    }

    #[test]
    fn target_prefers_submission_and_maps_wildcards() {
        let t = target(&listen(&["0.0.0.0:587"], &["0.0.0.0:465"])).unwrap();
        assert_eq!(t, ("127.0.0.1:587".parse().unwrap(), false));
        let t = target(&listen(&[], &["[::]:465"])).unwrap();
        assert_eq!(t, ("[::1]:465".parse().unwrap(), true));
        let t = target(&listen(&["192.0.2.1:2587"], &[])).unwrap();
        assert_eq!(t, ("192.0.2.1:2587".parse().unwrap(), false));
        assert_eq!(target(&listen(&[], &[])), None);
    }

    #[test]
    fn greeting_lines() {
        let mut input: &[u8] = b"220-first\r\n220 mail ESMTP\r\n";
        assert_eq!(read_line(&mut input).unwrap(), "220-first");
        assert_eq!(read_line(&mut input).unwrap(), "220 mail ESMTP");
        assert!(read_line(&mut input).is_err());
        let long = vec![b'x'; 600];
        assert!(read_line(&mut &long[..]).is_err());
    }
}
