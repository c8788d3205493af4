//! `auth.backend = "dovecot"`: the client side of Dovecot's auth-client protocol, major
//! version 1 (what Postfix's `smtpd_sasl_type = dovecot` speaks), over a unix socket or TCP.
//!
//! No maintained Rust crate speaks this protocol, so it is written here from Dovecot's
//! protocol description. One connection is shared by every login: requests carry ids and
//! Dovecot answers them in any order, which matters because Dovecot holds each failed login
//! back (`auth_failure_delay`, 2 s by default) and a connection per request would let a few
//! wrong passwords stall everyone else.
//!
//! The conversation: we send `VERSION 1 2` and `CPID`, Dovecot sends `VERSION`, one `MECH`
//! line per mechanism, `SPID`, `CUID`, `COOKIE` and `DONE`. Each login is one `AUTH` line
//! with PLAIN and an initial response; Dovecot answers `OK`, `FAIL` or `CONT` with the id.
//! A reader task owns the receiving half and hands each answer to the waiting request; when
//! the socket closes (Dovecot restarted) every waiting request gets `Err` at once and the next
//! login connects again.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;

use super::{Answer, AuthRequest, BackendError, Identity};
use crate::config::{DovecotSettings, DovecotSocket};
use crate::logsafe::Escaped;

/// The key every connection and protocol error names: where submitd looks for Dovecot.
const KEY: &str = "auth.dovecot.socket";
/// Dovecot's own limit on a line in either direction (`AUTH_CLIENT_MAX_LINE_LENGTH`).
const MAX_LINE: usize = 16 * 1024;
/// A handshake is a handful of lines plus one per mechanism; more is not Dovecot.
const MAX_HANDSHAKE_LINES: usize = 64;
/// The longest `reason=` text carried into an error message.
const MAX_REASON: usize = 200;

type Reader = BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The dovecot backend: settings and the shared connection (made on first use).
#[derive(Debug)]
pub struct Dovecot {
    socket: DovecotSocket,
    service: String,
    timeout: Duration,
    conn: Mutex<Option<Arc<Conn>>>,
}

impl Dovecot {
    /// From `[auth.dovecot]`; connects to nothing yet.
    pub fn new(settings: &DovecotSettings, timeout: Duration) -> Result<Dovecot, BackendError> {
        Ok(Dovecot {
            socket: settings.socket.clone(),
            service: settings.service.clone(),
            timeout,
            conn: Mutex::new(None),
        })
    }

    /// Ask Dovecot whether `req`'s password is right, within the timeout.
    pub async fn authenticate(&self, req: &AuthRequest<'_>) -> Answer {
        // A NUL would shift PLAIN's fields (authzid \0 login \0 password) and let a client
        // choose which part Dovecot reads as the login; such a login is simply wrong.
        if req.login.is_empty() || req.login.contains('\0') || req.password.contains('\0') {
            return Ok(None);
        }
        let resp = plain_response(req.login, req.password);
        if resp.len() + 512 > MAX_LINE {
            return Ok(None);
        }
        match tokio::time::timeout(self.timeout, self.ask(req, &resp)).await {
            Ok(answer) => answer,
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Connect, read the handshake, and check that Dovecot offers PLAIN.
    pub async fn check(&self) -> Result<(), BackendError> {
        match tokio::time::timeout(self.timeout, Conn::open(&self.socket)).await {
            Ok(conn) => conn.map(drop),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> BackendError {
        BackendError::Timeout {
            key: KEY,
            limit: self.timeout,
        }
    }

    /// The shared connection, opened again when the last one closed.
    async fn connection(&self) -> Result<Arc<Conn>, BackendError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.is_closed()
        {
            return Ok(Arc::clone(conn));
        }
        *slot = None;
        let conn = Arc::new(Conn::open(&self.socket).await?);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn ask(&self, req: &AuthRequest<'_>, resp: &str) -> Answer {
        // A connection found dead while sending (Dovecot restarted since its last use) is
        // replaced once: the request never reached Dovecot. A request Dovecot received whose
        // answer is lost is an outage for that login, not a retry.
        let mut retried = false;
        loop {
            let conn = self.connection().await?;
            let Some(waiting) = conn.register() else {
                if retried {
                    return Err(closed());
                }
                retried = true;
                continue;
            };
            let line = auth_line(waiting.id, &self.service, req, resp);
            if let Err(e) = conn.send(line.as_bytes()).await {
                if retried {
                    return Err(unreachable(&self.socket, &e));
                }
                retried = true;
                continue;
            }
            return self.answer(&conn, waiting).await;
        }
    }

    async fn answer(&self, conn: &Conn, mut waiting: Waiting<'_>) -> Answer {
        let id = waiting.id;
        let reply = (&mut waiting.rx).await.map_err(|_| closed())?;
        match reply {
            Reply::Ok(fields) => Ok(verified(&fields)),
            Reply::Fail(fields) => failed(&fields),
            Reply::Cont => {
                // PLAIN went with its initial response: a challenge means the peer is not the
                // Dovecot we think. Withdraw the request so it does not linger there.
                let _ = conn.send(format!("CANCEL\t{id}\n").as_bytes()).await;
                Err(BackendError::Protocol {
                    key: KEY,
                    detail: "Dovecot asked for more (CONT) after a complete PLAIN response".into(),
                })
            }
        }
    }
}

/// One connection to Dovecot's auth socket after a good handshake.
struct Conn {
    writer: Mutex<Writer>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    reader: JoinHandle<()>,
}

/// What the reader task and the requesters both touch.
#[derive(Default)]
struct Shared {
    closed: AtomicBool,
    waiting: StdMutex<HashMap<u32, oneshot::Sender<Reply>>>,
}

impl Shared {
    /// No more answers will come: every waiting request's receiver errs now.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Reply>>> {
        // A panic while holding this lock leaves a plain map behind, still consistent.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The reader task holds the receiving half; ending it closes the socket.
        self.reader.abort();
    }
}

/// A registered request: its id and where its answer arrives. Dropping it (answered, timed
/// out, cancelled) forgets the id, so a late answer is ignored.
struct Waiting<'a> {
    id: u32,
    rx: oneshot::Receiver<Reply>,
    shared: &'a Shared,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.lock().remove(&self.id);
    }
}

impl Conn {
    /// Connect and do the handshake (the caller bounds the time).
    async fn open(socket: &DovecotSocket) -> Result<Conn, BackendError> {
        let (read, mut writer): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, Writer) =
            match socket {
                DovecotSocket::Unix(path) => {
                    let s = UnixStream::connect(path)
                        .await
                        .map_err(|e| unreachable(socket, &e))?;
                    let (r, w) = s.into_split();
                    (Box::new(r), Box::new(w))
                }
                DovecotSocket::Tcp { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|e| unreachable(socket, &e))?;
                    let _ = s.set_nodelay(true);
                    let (r, w) = s.into_split();
                    (Box::new(r), Box::new(w))
                }
            };
        let hello = format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id());
        writer
            .write_all(hello.as_bytes())
            .await
            .map_err(|e| unreachable(socket, &e))?;
        let mut reader = BufReader::new(read);
        handshake(&mut reader, socket).await?;
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_replies(reader, Arc::clone(&shared)));
        Ok(Conn {
            writer: Mutex::new(writer),
            shared,
            next_id: AtomicU32::new(1),
            reader,
        })
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// A fresh id with a place for its answer; `None` once the connection is closed.
    fn register(&self) -> Option<Waiting<'_>> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.shared.lock();
        // Checked under the lock `close` takes, so no request registers after the drain.
        if self.is_closed() {
            return None;
        }
        let id = loop {
            // Dovecot refuses id 0 and an id still in use on the connection.
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 && !waiting.contains_key(&id) {
                break id;
            }
        };
        waiting.insert(id, tx);
        Some(Waiting {
            id,
            rx,
            shared: &self.shared,
        })
    }

    /// Write one whole line. A write cut short (the caller's timeout) would leave half a
    /// line that glues onto the next request's: the connection is then closed for good.
    async fn send(&self, line: &[u8]) -> io::Result<()> {
        struct CutShort<'a>(&'a Shared, bool);
        impl Drop for CutShort<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.close();
                }
            }
        }
        let mut guard = CutShort(&self.shared, false);
        let mut writer = self.writer.lock().await;
        let result = async {
            writer.write_all(line).await?;
            writer.flush().await
        }
        .await;
        guard.1 = result.is_ok();
        result
    }
}

/// Read Dovecot's handshake up to `DONE`: major version 1, PLAIN among the mechanisms.
async fn handshake(reader: &mut Reader, socket: &DovecotSocket) -> Result<(), BackendError> {
    let mut state = Handshake::default();
    let mut buf = Vec::new();
    for _ in 0..MAX_HANDSHAKE_LINES {
        let line = match read_line(reader, &mut buf).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(BackendError::Unreachable {
                    key: KEY,
                    detail: format!(
                        "{} closed the connection during the handshake",
                        Where(socket)
                    ),
                });
            }
            Err(e) => return Err(protocol(format!("handshake: {e}"))),
        };
        if state.line(&line)? {
            return Ok(());
        }
    }
    Err(protocol(format!(
        "no DONE within {MAX_HANDSHAKE_LINES} handshake lines: is this Dovecot's auth-client socket?"
    )))
}

/// What the handshake has said so far.
#[derive(Debug, Default)]
struct Handshake {
    version: bool,
    plain: bool,
}

impl Handshake {
    /// Take one line; `Ok(true)` at a good `DONE`.
    fn line(&mut self, line: &str) -> Result<bool, BackendError> {
        let mut fields = line.split('\t');
        let command = fields.next().unwrap_or("");
        if !self.version {
            if command != "VERSION" {
                return Err(protocol(format!(
                    "expected VERSION first, got {:?}: is this Dovecot's auth-client socket?",
                    Escaped(truncate(line, 40))
                )));
            }
            let major = fields.next().and_then(|m| m.parse::<u32>().ok());
            if major != Some(1) {
                return Err(protocol(format!(
                    "Dovecot speaks auth protocol version {}; submitd speaks 1",
                    Escaped(truncate(line.get(8..).unwrap_or(""), 20))
                )));
            }
            self.version = true;
            return Ok(false);
        }
        match command {
            "MECH" => self.plain |= fields.next() == Some("PLAIN"),
            "DONE" if !self.plain => {
                return Err(BackendError::Refused {
                    key: KEY,
                    detail: "Dovecot does not offer PLAIN: add plain to auth_mechanisms".into(),
                });
            }
            "DONE" => return Ok(true),
            // SPID, CUID, COOKIE, and what later minor versions add: nothing submitd needs.
            _ => {}
        }
        Ok(false)
    }
}

/// The reader task: hand each answer to its request until the connection ends.
async fn read_replies(mut reader: Reader, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    while let Ok(Some(line)) = read_line(&mut reader, &mut buf).await {
        let Some((id, reply)) = parse_reply(&line) else {
            tracing::warn!(line = %Escaped(truncate(&line, 80)), "dovecot: unexpected line from the auth socket; reconnecting");
            break;
        };
        // No entry: the request gave up (timeout) and this answer came late.
        if let Some(tx) = shared.lock().remove(&id) {
            let _ = tx.send(reply);
        }
    }
    shared.close();
}

/// One answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// `OK`, with its fields after the id (still tab-escaped).
    Ok(Vec<String>),
    /// `FAIL`, likewise.
    Fail(Vec<String>),
    /// `CONT`: Dovecot wants another round.
    Cont,
}

/// `OK|FAIL|CONT <id> ...`; `None` for anything else.
fn parse_reply(line: &str) -> Option<(u32, Reply)> {
    let mut fields = line.split('\t');
    let command = fields.next()?;
    let id = fields.next()?.parse::<u32>().ok().filter(|id| *id != 0)?;
    let rest = || fields.clone().map(str::to_owned).collect();
    let reply = match command {
        "OK" => Reply::Ok(rest()),
        "FAIL" => Reply::Fail(rest()),
        "CONT" => Reply::Cont,
        _ => return None,
    };
    Some((id, reply))
}

/// An `OK`: verified, unless the passdb said this user may not log in here.
fn verified(fields: &[String]) -> Option<Identity> {
    // `nologin` is Dovecot's "right password, but refuse the login" (with a reason to show);
    // `proxy` means the login belongs to another server, which may not even have checked the
    // password here (`nopassword`). Neither is a login submitd may accept.
    let refused = fields
        .iter()
        .any(|f| matches!(key_of(f), "nologin" | "proxy"));
    if refused {
        let user = field(fields, "user").unwrap_or_default();
        tracing::warn!(user = %Escaped(&user), "dovecot: passdb answered OK with nologin or proxy; login refused");
        return None;
    }
    Some(Identity::default())
}

/// A `FAIL`: a wrong password or unknown user, unless Dovecot could not check (`temp`).
fn failed(fields: &[String]) -> Answer {
    let temporary = fields.iter().any(|f| f == "temp" || f == "code=temp_fail");
    if !temporary {
        return Ok(None);
    }
    let reason = field(fields, "reason").unwrap_or_else(|| "no reason given".into());
    Err(BackendError::Query {
        key: KEY,
        detail: format!(
            "Dovecot could not check the password (temporary failure: {}); see Dovecot's log",
            Escaped(truncate(&reason, MAX_REASON))
        ),
    })
}

/// The name of a `key=value` or flag field.
fn key_of(field: &str) -> &str {
    field.split_once('=').map_or(field, |(k, _)| k)
}

/// The unescaped value of the first `key=` field.
fn field(fields: &[String], key: &str) -> Option<String> {
    fields.iter().find_map(|f| {
        let (k, v) = f.split_once('=')?;
        (k == key).then(|| tab_unescape(v))
    })
}

/// SASL PLAIN's initial response: empty authorization identity, login, password; base64.
fn plain_response(login: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(login.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(login.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    let encoded = base64::engine::general_purpose::STANDARD.encode(&raw);
    // The copy holding the password is not left for the allocator to hand out.
    raw.fill(0);
    encoded
}

/// The `AUTH` line for one login. The login and password travel only inside the base64
/// response, so no byte of theirs can start a field or a line; the other values are
/// tab-escaped all the same.
fn auth_line(id: u32, service: &str, req: &AuthRequest<'_>, resp: &str) -> String {
    let mut line = format!("AUTH\t{id}\tPLAIN\tservice=");
    tab_escape(&mut line, service);
    // TLS is what lets Dovecot accept a plaintext mechanism (`disable_plaintext_auth`).
    if req.secured {
        line.push_str("\tsecured=tls");
    }
    // submitd throttles failed logins itself; Dovecot's own penalty would hold every login
    // from a client's address (right passwords too) for up to 15 s, past backend_timeout, and
    // turn them into 454s.
    line.push_str("\tno-penalty");
    let ip = match req.client_ip {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    };
    line.push_str(&format!("\trip={ip}\tlport={}\tresp=", req.local_port));
    tab_escape(&mut line, resp);
    line.push('\n');
    line
}

/// Dovecot's tab-escaping: `\x01` starts an escape, so `\x01`, TAB, CR and LF become
/// `\x011`, `\x01t`, `\x01r`, `\x01n`.
fn tab_escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
}

/// The inverse of [`tab_escape`]; an unknown escape keeps the character after `\x01`.
fn tab_unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('1') => out.push('\x01'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// One line without its `\n`; `None` at a clean end of stream. Longer than [`MAX_LINE`] is
/// an error before more is read.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<String>> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a line",
            ));
        }
        let (taken, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if buf.len() + taken > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a line longer than {MAX_LINE} bytes"),
            ));
        }
        buf.extend_from_slice(&available[..taken]);
        reader.consume(taken + usize::from(done));
        if done {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(String::from_utf8_lossy(buf).into_owned()));
        }
    }
}

/// Display for the socket in messages.
struct Where<'a>(&'a DovecotSocket);

impl std::fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            DovecotSocket::Unix(path) => write!(f, "{}", path.display()),
            DovecotSocket::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

fn unreachable(socket: &DovecotSocket, e: &io::Error) -> BackendError {
    let hint = match e.kind() {
        io::ErrorKind::PermissionDenied => {
            " (the socket's mode or owner in Dovecot's unix_listener must let submitd's user in)"
        }
        io::ErrorKind::NotFound => " (no such socket: is Dovecot running, is the path right?)",
        _ => "",
    };
    BackendError::Unreachable {
        key: KEY,
        detail: format!("{}: {e}{hint}", Where(socket)),
    }
}

fn closed() -> BackendError {
    BackendError::Unreachable {
        key: KEY,
        detail: "the connection to Dovecot closed before it answered".into(),
    }
}

fn protocol(detail: String) -> BackendError {
    BackendError::Protocol { key: KEY, detail }
}

/// Everything that reads what Dovecot sends, over a whole transcript and without IO: lines as
/// the connection reads them (bounded), the handshake up to `DONE`, then replies with their
/// `OK`/`FAIL` fields. For the `dovecot_reply` fuzz target and the proptest: it must never
/// panic. Returns the number of replies parsed.
#[doc(hidden)]
pub fn parse_transcript(input: &[u8]) -> usize {
    use futures_util::FutureExt as _;
    let mut reader: &[u8] = input;
    let mut buf = Vec::new();
    let mut handshake = Handshake::default();
    let mut greeted = false;
    let mut replies = 0;
    // A slice never blocks, so each read completes at once; the count bounds the loop.
    for _ in 0..input.len() + 1 {
        let Some(Ok(Some(line))) = read_line(&mut reader, &mut buf).now_or_never() else {
            break;
        };
        if !greeted {
            match handshake.line(&line) {
                Ok(true) => greeted = true,
                Ok(false) => {}
                Err(_) => break,
            }
            continue;
        }
        let Some((_, reply)) = parse_reply(&line) else {
            break;
        };
        match reply {
            Reply::Ok(fields) => drop(verified(&fields)),
            Reply::Fail(fields) => drop(failed(&fields)),
            Reply::Cont => {}
        }
        replies += 1;
    }
    replies
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transcript_is_parsed_through_the_handshake_to_the_replies() {
        let t = b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t2\nDONE\n\
                  OK\t1\tuser=a@x\nFAIL\t2\tuser=b@x\ttemp\nCONT\t3\t\n";
        assert_eq!(parse_transcript(t), 3);
        // No PLAIN: the handshake refuses, nothing after it is read.
        assert_eq!(parse_transcript(b"VERSION\t1\t2\nDONE\nOK\t1\n"), 0);
        assert_eq!(parse_transcript(b""), 0);
    }

    proptest::proptest! {
        #[test]
        fn parsing_what_dovecot_sends_never_panics(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            cut in 0usize..200,
        ) {
            parse_transcript(&input);
            // And a valid transcript with arbitrary bytes spliced in.
            let mut t = b"VERSION\t1\t2\nMECH\tPLAIN\nDONE\nOK\t1\tuser=a\\tb\tnologin\n".to_vec();
            let at = cut.min(t.len());
            t.splice(at..at, input.iter().copied().take(64));
            parse_transcript(&t);
        }
    }
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;

    const HELLO: &str = "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n\
                         SPID\t1\nCUID\t1\nCOOKIE\tab\nDONE\n";

    fn req<'a>(login: &'a str, password: &'a str) -> AuthRequest<'a> {
        AuthRequest {
            login,
            password,
            mechanism: super::super::Mechanism::Plain,
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            local_port: 465,
            secured: true,
        }
    }

    #[test]
    fn auth_line_keeps_login_and_password_inside_base64() {
        let r = req("a\tb\nAUTH\t9\tPLAIN", "p\tq\r\nx");
        let line = auth_line(3, "smtp", &r, &plain_response(r.login, r.password));
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let fields: Vec<&str> = line.trim_end().split('\t').collect();
        assert_eq!(
            &fields[..7],
            &[
                "AUTH",
                "3",
                "PLAIN",
                "service=smtp",
                "secured=tls",
                "no-penalty",
                "rip=192.0.2.7"
            ]
        );
        assert_eq!(fields[7], "lport=465");
        let resp = fields[8].strip_prefix("resp=").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(resp)
            .unwrap();
        assert_eq!(raw, b"\0a\tb\nAUTH\t9\tPLAIN\0p\tq\r\nx");
        assert_eq!(fields.len(), 9);
    }

    #[test]
    fn auth_line_plain_connection_and_mapped_ipv6() {
        let mut r = req("u", "p");
        r.secured = false;
        r.client_ip = "::ffff:198.51.100.1".parse().unwrap();
        let line = auth_line(1, "smtp", &r, "AHUAcA==");
        assert!(!line.contains("secured"));
        assert!(line.contains("\trip=198.51.100.1\t"), "{line}");
    }

    #[test]
    fn tab_escaping_round_trips() {
        let mut out = String::new();
        tab_escape(&mut out, "a\tb\nc\rd\x01e");
        assert_eq!(out, "a\x01tb\x01nc\x01rd\x011e");
        assert!(!out.contains(['\t', '\n', '\r']));
        assert_eq!(tab_unescape(&out), "a\tb\nc\rd\x01e");
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply("OK\t7\tuser=a@b"),
            Some((7, Reply::Ok(vec!["user=a@b".into()])))
        );
        assert_eq!(
            parse_reply("FAIL\t2\tuser=x\tcode=temp_fail"),
            Some((
                2,
                Reply::Fail(vec!["user=x".into(), "code=temp_fail".into()])
            ))
        );
        assert_eq!(parse_reply("CONT\t4\t"), Some((4, Reply::Cont)));
        assert_eq!(parse_reply("OK\t0"), None);
        assert_eq!(parse_reply("OK\tx"), None);
        assert_eq!(parse_reply("OK"), None);
        assert_eq!(parse_reply("BOGUS\t1"), None);
    }

    #[test]
    fn fail_temp_is_an_outage_and_others_are_wrong_passwords() {
        let f = |s: &str| s.split('\t').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(failed(&f("user=a")), Ok(None));
        assert_eq!(failed(&f("user=a\tcode=user_disabled")), Ok(None));
        assert_eq!(failed(&f("user=a\tcode=pass_expired")), Ok(None));
        let e = failed(&f("user=a\tcode=temp_fail\treason=db\x01ndown")).unwrap_err();
        assert_eq!(e.label(), "query");
        assert_eq!(e.key(), KEY);
        assert!(e.to_string().contains("db\\ndown"), "{e}");
        assert_eq!(failed(&f("temp")).unwrap_err().label(), "query");
    }

    #[test]
    fn ok_with_nologin_or_proxy_is_not_a_login() {
        let f = |s: &str| s.split('\t').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(verified(&f("user=a")), Some(Identity::default()));
        assert_eq!(verified(&f("user=a\tnologin\treason=moved")), None);
        assert_eq!(verified(&f("user=a\tproxy\thost=10.0.0.1")), None);
        assert_eq!(verified(&f("user=a\tproxy=y")), None);
    }

    #[test]
    fn handshake_rules() {
        let run = |text: &str| {
            let mut h = Handshake::default();
            for line in text.lines() {
                if h.line(line)? {
                    return Ok(true);
                }
            }
            Ok::<bool, BackendError>(false)
        };
        assert_eq!(run(HELLO), Ok(true));
        assert_eq!(
            run("VERSION\t2\t0\nMECH\tPLAIN\nDONE").unwrap_err().label(),
            "protocol"
        );
        assert_eq!(run("MECH\tPLAIN\nDONE").unwrap_err().label(), "protocol");
        assert_eq!(run("+OK dovecot ready").unwrap_err().label(), "protocol");
        let e = run("VERSION\t1\t3\nMECH\tCRAM-MD5\nMECH\tPLAINX\nDONE").unwrap_err();
        assert_eq!(e.label(), "refused");
        assert!(e.to_string().contains("auth_mechanisms"));
        assert_eq!(
            run("VERSION\t1\t9\nNEWTHING\tx\nMECH\tPLAIN\nDONE"),
            Ok(true)
        );
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut buf = Vec::new();
        let mut ok: &[u8] = b"one\r\ntwo\nthree";
        assert_eq!(read_line(&mut ok, &mut buf).await.unwrap().unwrap(), "one");
        assert_eq!(read_line(&mut ok, &mut buf).await.unwrap().unwrap(), "two");
        assert!(read_line(&mut ok, &mut buf).await.is_err());
        let exact = format!("{}\n", "x".repeat(MAX_LINE));
        assert!(
            read_line(&mut exact.as_bytes(), &mut buf)
                .await
                .unwrap()
                .is_some()
        );
        let long = format!("{}\n", "x".repeat(MAX_LINE + 1));
        let e = read_line(&mut long.as_bytes(), &mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut empty: &[u8] = b"";
        assert!(read_line(&mut empty, &mut buf).await.unwrap().is_none());
    }

    /// A peer on 127.0.0.1 that greets with `hello`, then answers each line it reads with
    /// `answer(line)`; what it read is returned when the connection ends.
    async fn peer(
        hello: String,
        answer: fn(&str) -> Option<String>,
    ) -> (Dovecot, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(hello.as_bytes()).await.unwrap();
            let mut r = BufReader::new(r);
            let mut seen = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                let l = line.trim_end().to_owned();
                line.clear();
                if let Some(a) = answer(&l) {
                    if a == "CLOSE" {
                        seen.push(l);
                        break;
                    }
                    w.write_all(a.as_bytes()).await.unwrap();
                }
                seen.push(l);
            }
            seen
        });
        let settings = DovecotSettings {
            socket: DovecotSocket::Tcp {
                host: "127.0.0.1".into(),
                port,
            },
            service: "smtp".into(),
        };
        (
            Dovecot::new(&settings, Duration::from_secs(2)).unwrap(),
            task,
        )
    }

    fn id_of(line: &str) -> &str {
        line.split('\t').nth(1).unwrap_or("")
    }

    #[tokio::test]
    async fn cont_is_a_protocol_error_and_the_request_is_cancelled() {
        let (d, task) = peer(HELLO.into(), |l| {
            l.starts_with("AUTH")
                .then(|| format!("CONT\t{}\t\n", id_of(l)))
        })
        .await;
        let e = d.authenticate(&req("u", "p")).await.unwrap_err();
        assert_eq!(e.label(), "protocol");
        drop(d);
        let seen = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen[0], "VERSION\t1\t2");
        assert!(seen[1].starts_with("CPID\t"));
        assert!(seen[2].starts_with("AUTH\t1\tPLAIN\t"));
        assert_eq!(seen[3], "CANCEL\t1");
    }

    #[tokio::test]
    async fn temp_fail_is_err_and_unknown_ids_are_ignored() {
        let (d, _task) = peer(HELLO.into(), |l| {
            l.starts_with("AUTH").then(|| {
                format!(
                    "OK\t999\tuser=x\nFAIL\t{}\tuser=u\tcode=temp_fail\n",
                    id_of(l)
                )
            })
        })
        .await;
        let e = d.authenticate(&req("u", "p")).await.unwrap_err();
        assert_eq!(e.label(), "query");
    }

    #[tokio::test]
    async fn connection_lost_mid_request_is_unreachable_at_once() {
        let (d, _task) = peer(HELLO.into(), |l| {
            l.starts_with("AUTH").then(|| "CLOSE".into())
        })
        .await;
        let started = std::time::Instant::now();
        let e = d.authenticate(&req("u", "p")).await.unwrap_err();
        assert_eq!(e.label(), "unreachable");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn garbage_and_oversized_replies_close_the_connection() {
        let (d, _task) = peer(HELLO.into(), |l| {
            l.starts_with("AUTH")
                .then(|| format!("{}\n", "x".repeat(MAX_LINE + 10)))
        })
        .await;
        assert_eq!(
            d.authenticate(&req("u", "p")).await.unwrap_err().label(),
            "unreachable"
        );
        let (d, _task) = peer(HELLO.into(), |l| {
            l.starts_with("AUTH").then(|| "250 OK\n".into())
        })
        .await;
        assert_eq!(
            d.authenticate(&req("u", "p")).await.unwrap_err().label(),
            "unreachable"
        );
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (d, _task) = peer(HELLO.into(), |_| None).await;
        let started = std::time::Instant::now();
        let e = d.authenticate(&req("u", "p")).await.unwrap_err();
        assert_eq!(e.label(), "timeout");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The abandoned id is forgotten.
        let conn = d.conn.lock().await.clone().unwrap();
        assert!(conn.shared.lock().is_empty());
    }

    #[tokio::test]
    async fn endless_handshake_is_refused() {
        let (d, _task) = peer(
            format!(
                "VERSION\t1\t2\n{}",
                "COOKIE\tx\n".repeat(MAX_HANDSHAKE_LINES)
            ),
            |_| None,
        )
        .await;
        assert_eq!(d.check().await.unwrap_err().label(), "protocol");
    }

    #[tokio::test]
    async fn nul_in_login_or_password_is_refused_without_asking() {
        // No peer listens on port 1: asking would be an Err, not Ok(None).
        let settings = DovecotSettings {
            socket: DovecotSocket::Tcp {
                host: "127.0.0.1".into(),
                port: 1,
            },
            service: "smtp".into(),
        };
        let d = Dovecot::new(&settings, Duration::from_secs(2)).unwrap();
        assert_eq!(d.authenticate(&req("a\0b", "p")).await, Ok(None));
        assert_eq!(d.authenticate(&req("a", "p\0q")).await, Ok(None));
        assert_eq!(d.authenticate(&req("", "p")).await, Ok(None));
        assert_eq!(
            d.authenticate(&req("a", &"x".repeat(MAX_LINE))).await,
            Ok(None)
        );
        assert_eq!(
            d.authenticate(&req("a", "p")).await.unwrap_err().label(),
            "unreachable"
        );
    }
}
