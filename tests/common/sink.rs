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
    /// The certificate chain and key (PEM) presented on TLS; `None`: [`cert_and_key`].
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
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_acceptor(own: Option<&(String, String)>) -> TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = own.unwrap_or_else(|| cert_and_key());
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
                say!("250 2.1.0 Ok\r\n");
            }
            "RCPT" => {
                if c.from.is_none() {
                    say!("503 5.5.1 MAIL first\r\n");
                    continue;
                }
                let Some((addr, _)) = path_arg(arg, "TO:") else {
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
                let (code, text) = &opts.data_reply;
                if (200..300).contains(code) {
                    let (from, mail_params) = c.from.take().unwrap_or_default();
                    state.received.lock().unwrap().push(Received {
                        helo: c.helo.clone().unwrap_or_default(),
                        from,
                        mail_params,
                        rcpts: std::mem::take(&mut c.rcpts),
                        data,
                        tls,
                        auth_user: c.auth_user.clone(),
                    });
                }
                c.from = None;
                c.rcpts.clear();
                say!("{code} {text}\r\n");
                messages += 1;
                if opts.close_after.is_some_and(|n| messages >= n) {
                    return Flow::Close;
                }
            }
            "RSET" => {
                c.from = None;
                c.rcpts.clear();
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
