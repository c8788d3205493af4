//! A real receiving SMTP server on loopback for delivery tests: speaks SMTP over TCP (plain,
//! STARTTLS, implicit TLS), optionally requires AUTH, answers RCPT by a rule and keeps every
//! accepted message in memory. Stopped when dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::{HOSTNAME, cert_and_key};

/// A whole session (all of its commands and data) must end within this.
const SESSION_LIMIT: Duration = Duration::from_secs(60);
/// Longest command line accepted (more than RFC 5321's 512: AUTH lines).
const MAX_LINE: usize = 16 * 1024;
/// Largest message kept.
const MAX_DATA: usize = 64 * 1024 * 1024;

/// How the rule answers `RCPT TO`: (recipient, attempt number for this recipient from 1) ->
/// (code, text after the code).
pub type RcptRule = Arc<dyn Fn(&str, u32) -> (u16, String) + Send + Sync>;

/// How the rule answers `MAIL FROM`, given the number of MAIL commands the sink has seen (all
/// sessions, from 1): `Some((code, text))` refuses with that reply (a `421` also closes the
/// connection), `None` accepts as usual.
pub type MailRule = Arc<dyn Fn(u32) -> Option<(u16, String)> + Send + Sync>;

/// What the sink offers and how it answers.
#[derive(Clone)]
pub struct SinkOptions {
    /// Offer STARTTLS (cert from `common::cert_and_key()`, hostname `common::HOSTNAME`).
    pub starttls: bool,
    /// TLS from the first byte.
    pub implicit_tls: bool,
    /// Require AUTH PLAIN/LOGIN with these credentials before MAIL.
    pub auth: Option<(String, String)>,
    /// Advertise SMTPUTF8 (default true).
    pub smtputf8: bool,
    /// Advertise 8BITMIME (default true).
    pub eight_bit: bool,
    /// Advertise SIZE (and refuse `SIZE=` over it).
    pub size: Option<u64>,
    pub rcpt_rule: RcptRule,
    /// The reply after the final dot (default `250 2.0.0 Ok`).
    pub data_reply: (u16, String),
    /// Default 127.0.0.1:0.
    pub bind: Option<SocketAddr>,
    /// Advertise PIPELINING (default true).
    pub pipelining: bool,
    /// Close the connection (no reply, no 421) right after answering this many messages on
    /// it, like a server whose idle timeout is short. Default: never.
    pub close_after: Option<usize>,
    /// Wait this long after the final dot before answering (transactions overlap, so that
    /// concurrency can be observed). Default: none.
    pub data_delay: Option<Duration>,
    /// Answers MAIL FROM (e.g. `421 4.7.28` for the first N, a throttling server). Default:
    /// none (accept).
    pub mail_rule: Option<MailRule>,
    /// Answers the final dot, given the number of messages the sink has seen to the end (all
    /// sessions, from 1): `Some((code, text))` replaces `data_reply` for that message (a `421`
    /// also closes the connection), `None` leaves it. Default: none.
    pub data_rule: Option<MailRule>,
    /// Advertise DSN (RFC 3461; default false). The parameters are recorded, not acted on.
    pub dsn: bool,
    /// Advertise REQUIRETLS (RFC 8689; default false), over TLS only.
    pub requiretls: bool,
    /// The certificate chain and key (PEM) TLS presents instead of `common::cert_and_key()`
    /// (DANE-TA and `relay.tls = "verify"` tests). Default: `None`.
    pub cert: Option<(String, String)>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            starttls: false,
            implicit_tls: false,
            auth: None,
            smtputf8: true,
            eight_bit: true,
            size: None,
            rcpt_rule: default_rcpt_rule(),
            data_reply: (250, "2.0.0 Ok".to_string()),
            bind: None,
            pipelining: true,
            close_after: None,
            data_delay: None,
            mail_rule: None,
            data_rule: None,
            dsn: false,
            requiretls: false,
            cert: None,
        }
    }
}

/// Local part starting with "reject" -> 550 5.1.1 No such user; "defer" -> 451 4.2.0 Try later
/// (always); "flaky" -> 451 4.3.0 on attempt 1, 250 after; anything else -> 250 2.1.5 Ok.
pub fn default_rcpt_rule() -> RcptRule {
    Arc::new(|rcpt: &str, attempt: u32| {
        let local = rcpt
            .rsplit_once('@')
            .map_or(rcpt, |(l, _)| l)
            .to_ascii_lowercase();
        if local.starts_with("reject") {
            (550, "5.1.1 No such user".to_string())
        } else if local.starts_with("defer") {
            (451, "4.2.0 Try later".to_string())
        } else if local.starts_with("flaky") && attempt == 1 {
            (451, "4.3.0 Try again".to_string())
        } else {
            (250, "2.1.5 Ok".to_string())
        }
    })
}

/// One accepted message (DATA answered 2xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The name in the last EHLO/HELO.
    pub helo: String,
    /// The MAIL FROM address, without brackets.
    pub from: String,
    /// MAIL FROM parameters as written (`BODY=8BITMIME`, `SIZE=123`, ...).
    pub mail_params: Vec<String>,
    /// The accepted recipients, without brackets.
    pub rcpts: Vec<String>,
    /// The RCPT TO parameters of each of `rcpts` as written (`NOTIFY=SUCCESS`, ...).
    pub rcpt_params: Vec<Vec<String>>,
    /// Dot-unstuffed, without the final `.CRLF`.
    pub data: Vec<u8>,
    pub tls: bool,
    pub auth_user: Option<String>,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    rcpt_attempts: Mutex<HashMap<String, u32>>,
    /// Sessions open now, and the most seen open at once (since the last `reset_peaks`).
    sessions_now: AtomicUsize,
    sessions_peak: AtomicUsize,
    /// Transactions open now (MAIL accepted, not ended yet), and the most at once.
    transactions_now: AtomicUsize,
    transactions_peak: AtomicUsize,
    /// MAIL commands seen.
    mails: AtomicUsize,
    /// Messages seen to their final dot.
    dots: AtomicUsize,
    /// For each accepted message, in order: the transactions peak (since the start or
    /// `reset_peaks`) when it was accepted, before the reply went out.
    peaks_at_receipt: Mutex<Vec<usize>>,
}

/// Counts one open session or transaction in `now`/`peak` until dropped.
struct Open<'a> {
    now: &'a AtomicUsize,
}

impl<'a> Open<'a> {
    fn new(now: &'a AtomicUsize, peak: &AtomicUsize) -> Open<'a> {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(n, Ordering::SeqCst);
        Open { now }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running sink; stops (listener and sessions) when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Sink {
    pub async fn start(opts: SinkOptions) -> Sink {
        let bind = opts
            .bind
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(bind).await.expect("sink bind");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let acceptor = tls_acceptor(opts.cert.as_ref());
        let opts = Arc::new(opts);
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                // Dropped with the task: aborts every session.
                let mut sessions = JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            state.connections.fetch_add(1, Ordering::SeqCst);
                            let (state, opts, acceptor) =
                                (state.clone(), opts.clone(), acceptor.clone());
                            sessions.spawn(async move {
                                let _open = Open::new(&state.sessions_now, &state.sessions_peak);
                                let session = run_session(tcp, &state, &opts, &acceptor);
                                let _ = tokio::time::timeout(SESSION_LIMIT, session).await;
                            });
                        }
                        Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                    }
                }
            }
        });
        Sink { addr, state, task }
    }

    /// Messages accepted so far (DATA answered 2xx).
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Wait until at least `n` messages were accepted; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "sink: {} message(s) after {timeout:?}, wanted {n}",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The most sessions (TCP connections) open at once since the start or `reset_peaks`.
    pub fn peak_sessions(&self) -> usize {
        self.state.sessions_peak.load(Ordering::SeqCst)
    }

    /// The most transactions (MAIL accepted until the reply after the data, RSET or the end
    /// of the session) open at once since the start or `reset_peaks`.
    pub fn peak_transactions(&self) -> usize {
        self.state.transactions_peak.load(Ordering::SeqCst)
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.state.sessions_now.load(Ordering::SeqCst)
    }

    /// MAIL commands seen so far (refused ones included).
    pub fn mails(&self) -> usize {
        self.state.mails.load(Ordering::SeqCst)
    }

    /// For each accepted message, in order of acceptance: the most transactions open at once
    /// (since the start or `reset_peaks`) when it was accepted, before the reply went out.
    pub fn peaks_at_receipts(&self) -> Vec<usize> {
        self.state.peaks_at_receipt.lock().unwrap().clone()
    }

    /// Messages seen to their final dot so far (refused ones included).
    pub fn dots(&self) -> usize {
        self.state.dots.load(Ordering::SeqCst)
    }

    /// Start measuring peaks again from what is open now.
    pub fn reset_peaks(&self) {
        let s = &self.state;
        s.sessions_peak
            .store(s.sessions_now.load(Ordering::SeqCst), Ordering::SeqCst);
        s.transactions_peak
            .store(s.transactions_now.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS acceptor for `cert` (chain PEM, key PEM), or the sink's own self-signed one.
pub fn tls_acceptor(cert: Option<&(String, String)>) -> TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = cert.unwrap_or_else(|| cert_and_key());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// What a dialogue ends with.
enum Flow {
    Close,
    StartTls,
}

/// Per-connection state that survives nothing across STARTTLS but the connection itself.
#[derive(Default)]
struct Conversation {
    helo: Option<String>,
    auth_user: Option<String>,
    from: Option<(String, Vec<String>)>,
    rcpts: Vec<String>,
    rcpt_params: Vec<Vec<String>>,
}

async fn run_session(tcp: TcpStream, state: &State, opts: &SinkOptions, acceptor: &TlsAcceptor) {
    if opts.implicit_tls {
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        let mut io = BufReader::new(tls);
        dialogue(&mut io, true, true, state, opts).await;
        return;
    }
    let mut io = BufReader::new(tcp);
    match dialogue(&mut io, false, true, state, opts).await {
        Flow::Close => {}
        Flow::StartTls => {
            // Bytes pipelined after STARTTLS are discarded with the buffer.
            let tcp = io.into_inner();
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut io = BufReader::new(tls);
            dialogue(&mut io, true, false, state, opts).await;
        }
    }
}

async fn reply<S: AsyncWrite + Unpin>(io: &mut S, text: &str) -> std::io::Result<()> {
    io.write_all(text.as_bytes()).await?;
    io.flush().await
}

/// One line with its CRLF; `None` at EOF, on an error or an over-long line.
async fn read_line<S: AsyncRead + Unpin>(io: &mut BufReader<S>, max: usize) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    let n = (&mut *io)
        .take(max as u64)
        .read_until(b'\n', &mut line)
        .await
        .ok()?;
    if n == 0 || !line.ends_with(b"\n") {
        return None;
    }
    Some(line)
}

async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    tls: bool,
    greet: bool,
    state: &State,
    opts: &SinkOptions,
) -> Flow {
    macro_rules! say {
        ($($arg:tt)*) => {
            if reply(io.get_mut(), &format!($($arg)*)).await.is_err() {
                return Flow::Close;
            }
        };
    }
    if greet {
        say!("220 {HOSTNAME} ESMTP sink\r\n");
    }
    let mut c = Conversation::default();
    let mut transaction: Option<Open<'_>> = None;
    let mut messages = 0;
    let offer_starttls = opts.starttls && !tls;
    // AUTH is offered over TLS, or in clear when the sink has no TLS at all.
    let offer_auth = opts.auth.is_some() && (tls || !opts.starttls);
    loop {
        let Some(raw) = read_line(io, MAX_LINE).await else {
            return Flow::Close;
        };
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                c = Conversation {
                    helo: Some(arg.trim().to_string()),
                    auth_user: c.auth_user,
                    ..Conversation::default()
                };
                let mut lines = vec![HOSTNAME.to_string()];
                if opts.pipelining {
                    lines.push("PIPELINING".into());
                }
                if let Some(size) = opts.size {
                    lines.push(format!("SIZE {size}"));
                }
                if opts.eight_bit {
                    lines.push("8BITMIME".into());
                }
                if opts.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                lines.push("ENHANCEDSTATUSCODES".into());
                if offer_starttls {
                    lines.push("STARTTLS".into());
                }
                if offer_auth {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                if opts.dsn {
                    lines.push("DSN".into());
                }
                if opts.requiretls && tls {
                    lines.push("REQUIRETLS".into());
                }
                let mut out = String::new();
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                    out.push_str(&format!("250{sep}{l}\r\n"));
                }
                say!("{out}");
            }
            "HELO" => {
                c.helo = Some(arg.trim().to_string());
                say!("250 {HOSTNAME}\r\n");
            }
            "STARTTLS" if offer_starttls => {
                say!("220 2.0.0 Ready to start TLS\r\n");
                return Flow::StartTls;
            }
            "AUTH" if offer_auth => {
                if c.auth_user.is_some() {
                    say!("503 5.5.1 Already authenticated\r\n");
                    continue;
                }
                let mut parts = arg.split_whitespace();
                let mech = parts.next().unwrap_or("").to_ascii_uppercase();
                let initial = parts.next().map(str::to_string);
                let creds = match mech.as_str() {
                    "PLAIN" => {
                        let resp = match initial {
                            Some(r) => r,
                            None => {
                                say!("334 \r\n");
                                match read_line(io, MAX_LINE).await {
                                    Some(l) => String::from_utf8_lossy(&l).trim().to_string(),
                                    None => return Flow::Close,
                                }
                            }
                        };
                        b64_decode(&resp).and_then(|d| {
                            let mut f = d.split(|&b| b == 0);
                            let _authz = f.next()?;
                            let user = String::from_utf8(f.next()?.to_vec()).ok()?;
                            let pass = String::from_utf8(f.next()?.to_vec()).ok()?;
                            Some((user, pass))
                        })
                    }
                    "LOGIN" => {
                        let user = match initial {
                            Some(r) => r,
                            None => {
                                say!("334 VXNlcm5hbWU6\r\n");
                                match read_line(io, MAX_LINE).await {
                                    Some(l) => String::from_utf8_lossy(&l).trim().to_string(),
                                    None => return Flow::Close,
                                }
                            }
                        };
                        say!("334 UGFzc3dvcmQ6\r\n");
                        let pass = match read_line(io, MAX_LINE).await {
                            Some(l) => String::from_utf8_lossy(&l).trim().to_string(),
                            None => return Flow::Close,
                        };
                        let user = b64_decode(&user).and_then(|u| String::from_utf8(u).ok());
                        let pass = b64_decode(&pass).and_then(|p| String::from_utf8(p).ok());
                        user.zip(pass)
                    }
                    _ => {
                        say!("504 5.5.4 Unrecognized authentication type\r\n");
                        continue;
                    }
                };
                match (creds, &opts.auth) {
                    (Some((u, p)), Some((eu, ep))) if &u == eu && &p == ep => {
                        c.auth_user = Some(u);
                        say!("235 2.7.0 Authentication successful\r\n");
                    }
                    _ => say!("535 5.7.8 Authentication credentials invalid\r\n"),
                }
            }
            "MAIL" => {
                if c.helo.is_none() {
                    say!("503 5.5.1 EHLO first\r\n");
                    continue;
                }
                if opts.auth.is_some() && c.auth_user.is_none() {
                    say!("530 5.7.0 Authentication required\r\n");
                    continue;
                }
                let Some((addr, params)) = path_arg(arg, "FROM:") else {
                    say!("501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
                    continue;
                };
                let nth = state.mails.fetch_add(1, Ordering::SeqCst) as u32 + 1;
                if let Some((code, text)) = opts.mail_rule.as_ref().and_then(|rule| rule(nth)) {
                    say!("{code} {text}\r\n");
                    if code == 421 {
                        return Flow::Close;
                    }
                    continue;
                }
                let declared = params.iter().find_map(|p| {
                    p.to_ascii_uppercase()
                        .strip_prefix("SIZE=")
                        .and_then(|n| n.parse::<u64>().ok())
                });
                if let (Some(limit), Some(n)) = (opts.size, declared)
                    && n > limit
                {
                    say!("552 5.3.4 Message size exceeds fixed limit\r\n");
                    continue;
                }
                c.from = Some((addr, params));
                c.rcpts.clear();
                drop(
                    transaction
                        .replace(Open::new(&state.transactions_now, &state.transactions_peak)),
                );
                c.rcpt_params.clear();
                say!("250 2.1.0 Ok\r\n");
            }
            "RCPT" => {
                if c.from.is_none() {
                    say!("503 5.5.1 MAIL first\r\n");
                    continue;
                }
                let Some((addr, rcpt_params)) = path_arg(arg, "TO:") else {
                    say!("501 5.5.4 Syntax: RCPT TO:<address>\r\n");
                    continue;
                };
                let attempt = {
                    let mut attempts = state.rcpt_attempts.lock().unwrap();
                    let n = attempts.entry(addr.to_ascii_lowercase()).or_insert(0);
                    *n += 1;
                    *n
                };
                let (code, text) = (opts.rcpt_rule)(&addr, attempt);
                if (200..300).contains(&code) {
                    c.rcpts.push(addr);
                    c.rcpt_params.push(rcpt_params);
                }
                say!("{code} {text}\r\n");
            }
            "DATA" => {
                if c.from.is_none() || c.rcpts.is_empty() {
                    say!("554 5.5.1 No valid recipients\r\n");
                    continue;
                }
                say!("354 End data with <CR><LF>.<CR><LF>\r\n");
                let mut data = Vec::new();
                loop {
                    let Some(l) = read_line(io, MAX_LINE).await else {
                        return Flow::Close;
                    };
                    if l == b".\r\n" {
                        break;
                    }
                    let l = l.strip_prefix(b".").unwrap_or(&l);
                    if data.len() + l.len() > MAX_DATA {
                        return Flow::Close;
                    }
                    data.extend_from_slice(l);
                }
                if let Some(delay) = opts.data_delay {
                    tokio::time::sleep(delay).await;
                }
                let nth = state.dots.fetch_add(1, Ordering::SeqCst) as u32 + 1;
                let ruled = opts.data_rule.as_ref().and_then(|rule| rule(nth));
                let (code, text) = ruled.as_ref().unwrap_or(&opts.data_reply);
                if (200..300).contains(code) {
                    let (from, mail_params) = c.from.take().unwrap_or_default();
                    let mut received = state.received.lock().unwrap();
                    state
                        .peaks_at_receipt
                        .lock()
                        .unwrap()
                        .push(state.transactions_peak.load(Ordering::SeqCst));
                    received.push(Received {
                        helo: c.helo.clone().unwrap_or_default(),
                        from,
                        mail_params,
                        rcpts: std::mem::take(&mut c.rcpts),
                        rcpt_params: std::mem::take(&mut c.rcpt_params),
                        data,
                        tls,
                        auth_user: c.auth_user.clone(),
                    });
                }
                c.from = None;
                c.rcpts.clear();
                c.rcpt_params.clear();
                say!("{code} {text}\r\n");
                drop(transaction.take());
                if *code == 421 {
                    return Flow::Close;
                }
                messages += 1;
                if opts.close_after.is_some_and(|n| messages >= n) {
                    return Flow::Close;
                }
            }
            "RSET" => {
                c.from = None;
                c.rcpts.clear();
                drop(transaction.take());
                c.rcpt_params.clear();
                say!("250 2.0.0 Ok\r\n");
            }
            "NOOP" => say!("250 2.0.0 Ok\r\n"),
            "QUIT" => {
                say!("221 2.0.0 Bye\r\n");
                return Flow::Close;
            }
            _ => say!("500 5.5.1 Command not recognized\r\n"),
        }
    }
}

/// `FROM:<addr> PARAM...` -> (addr, params); the keyword is case-insensitive.
fn path_arg(arg: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let rest = arg.get(..keyword.len())?;
    if !rest.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let (addr, params) = rest.split_once('>')?;
    let params = params.split_whitespace().map(str::to_string).collect();
    Some((addr.to_string(), params))
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}
