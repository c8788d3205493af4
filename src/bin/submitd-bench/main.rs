//! `submitd-bench`: an SMTP submission load generator, in the spirit of Postfix's
//! `smtp-source`, with implicit TLS, STARTTLS and AUTH PLAIN.
//!
//! Two modes:
//! - **load** (default): `--sessions` connections at once send `--messages` messages in total,
//!   `--per-session` per connection, then print one JSON line: messages, errors, seconds,
//!   msgs_per_sec and latency percentiles. A message's latency runs from its first command
//!   (MAIL FROM) to the 250 after its data; for the first message of a connection it runs from
//!   the connect, so with `--per-session 1` it includes TCP connect, TLS handshake, EHLO and
//!   AUTH.
//! - **idle** (`--idle N`): open N connections, finish TLS and EHLO on each, print one JSON
//!   line when all are up, then hold them (for `--hold`, or until stdin closes), for measuring
//!   a server's memory per idle connection.
//!
//! - **http** (`--http`): the load mode over the HTTP API (`POST /v1/messages` with
//!   `--api-key`), one keep-alive HTTP/1.1 connection per session ([`http`]).
//!
//! - **fill-queue** (hidden, `--fill-queue DIR N`): write N deferred messages into a submitd
//!   queue directory offline, through the library's spool API, for the queue-depth benchmark.
//!
//! Every socket operation has a timeout; a failed message is counted, never a panic. It refuses
//! any target that is not a loopback address unless `--allow-remote` is given: it accepts any
//! server certificate, because it exists to load our own test servers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

mod http;

/// Longest reply line accepted from the server (RFC 5321 says 512; be generous).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply.
const MAX_REPLY_LINES: usize = 100;
/// How many distinct error texts are printed on stderr.
const MAX_ERRORS_SHOWN: usize = 5;
/// Most recipients per message (Postfix's `smtpd_recipient_limit` default).
const MAX_RCPTS: u64 = 1000;
/// Most messages `--fill-queue` writes.
const MAX_FILL: u64 = 10_000_000;
/// Failed stores after which `--fill-queue` stops.
const MAX_FILL_FAILURES: u64 = 100;
/// Descriptors kept free beside the connections when raising RLIMIT_NOFILE.
const SPARE_FILES: u64 = 64;

const LONG_ABOUT: &str = "\
SMTP submission load generator (like Postfix's smtp-source, plus TLS and AUTH PLAIN).

It ACCEPTS ANY SERVER CERTIFICATE: it is meant for our own servers on loopback with test
certificates, and refuses a target that is not a loopback address unless --allow-remote.

Load mode prints exactly one JSON line on stdout: messages, errors, seconds, msgs_per_sec,
mb_per_sec (message bytes, 2^20 per MB), rcpts, p50_ms, p90_ms, p99_ms, max_ms (latency per message from its MAIL FROM, or from the connect
for a connection's first message, to the 250 after its data). Idle mode (--idle N) prints one
JSON line when all N connections are up, then holds them. Exit status: 0 when no error, 1 when
any message or connection failed (the JSON line is printed either way), 2 for bad usage.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TlsMode {
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plaintext, then STARTTLS (port 587).
    Starttls,
    /// No TLS at all.
    None,
}

#[derive(Debug, Parser)]
#[command(name = "submitd-bench", version, about = "SMTP submission load generator (loopback test servers only: accepts any certificate)", long_about = LONG_ABOUT)]
struct Args {
    /// Server address.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "fill_queue")]
    connect: Option<String>,
    /// How TLS starts.
    #[arg(long, value_enum, default_value_t = TlsMode::Implicit)]
    tls: TlsMode,
    /// AUTH PLAIN login (no AUTH when absent).
    #[arg(long)]
    user: Option<String>,
    /// AUTH PLAIN password.
    #[arg(long, requires = "user")]
    password: Option<String>,
    /// Envelope sender and header From.
    #[arg(long, default_value = "bench@example.test")]
    from: String,
    /// Envelope recipient and header To.
    #[arg(long, default_value = "sink@example.test")]
    to: String,
    /// Recipients per message: with N > 1, --to's local part gets 1..=N appended
    /// (sink1@, sink2@, ...): distinct addresses, since Postfix drops repeated ones.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=MAX_RCPTS))]
    rcpts: u64,
    /// Connections at once (concurrency).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    sessions: u64,
    /// Messages in total [default: 1000, or unlimited with --duration].
    #[arg(long)]
    messages: Option<u64>,
    /// Messages per connection (0: as many as there are).
    #[arg(long, default_value_t = 1)]
    per_session: u64,
    /// Message size in bytes (headers included, before the final dot).
    #[arg(long, default_value_t = 10240, value_parser = clap::value_parser!(u64).range(64..=100_000_000))]
    size: u64,
    /// Send MAIL, RCPT and DATA as one write when the server offers PIPELINING.
    #[arg(long)]
    pipelining: bool,
    /// Start no new message after this long (seconds, or "30s", "2m").
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Timeout of every connect, handshake, read and write.
    #[arg(long, value_parser = parse_duration, default_value = "30")]
    timeout: Duration,
    /// Idle mode: open N connections (TLS and EHLO done), hold them, print when all are up.
    #[arg(long, value_name = "N")]
    idle: Option<u64>,
    /// Idle mode: hold the connections this long (default: until stdin closes).
    #[arg(long, value_parser = parse_duration, requires = "idle")]
    hold: Option<Duration>,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Disable TLS session resumption (on by default, as in real clients).
    #[arg(long)]
    no_resume: bool,
    /// EHLO name.
    #[arg(long, default_value = "bench.example.test")]
    ehlo: String,
    /// TLS server name (SNI) [default: the host of --connect].
    #[arg(long)]
    server_name: Option<String>,
    /// Runtime worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Load the HTTP API (`POST /v1/messages`) instead of SMTP: --tls implicit for https,
    /// none for http; --sessions keep-alive connections, --per-session requests each.
    #[arg(long, requires = "api_key", conflicts_with_all = ["idle", "user"])]
    http: bool,
    /// The API key (bearer token) for --http.
    #[arg(long, value_name = "SECRET")]
    api_key: Option<String>,
    /// What --http posts: the message itself (message/rfc822) or JSON built into MIME by the
    /// server.
    #[arg(long, value_enum, default_value_t = http::HttpBody::Rfc822)]
    http_body: http::HttpBody,
    /// Write N deferred messages (--size bytes, --rcpts recipients at --to, next attempt in 30
    /// days) into the submitd queue directory DIR, offline, then exit.
    #[arg(long, num_args = 2, value_names = ["DIR", "N"], hide = true)]
    fill_queue: Option<Vec<String>>,
}

/// Seconds ("10", "0.5") or a humantime duration ("10s", "2m").
fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(fill) = &args.fill_queue {
        return match fill_queue(&args, fill) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("submitd-bench: fill-queue: {e:#}");
                std::process::ExitCode::from(1)
            }
        };
    }
    raise_open_files(args.sessions.max(args.idle.unwrap_or(0)) + SPARE_FILES);
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("submitd-bench: runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(Usage(e)) => {
            eprintln!("submitd-bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A problem with the command line or the target: exit 2.
struct Usage(anyhow::Error);

/// Everything the workers share, built once.
struct Shared {
    addr: SocketAddr,
    tls: TlsMode,
    connector: TlsConnector,
    server_name: ServerName<'static>,
    timeout: Duration,
    ehlo: Vec<u8>,
    auth: Option<Vec<u8>>,
    mail: Vec<u8>,
    /// One `RCPT TO` line per recipient.
    rcpts: Vec<Vec<u8>>,
    /// The message, dot-stuffed, ending in CRLF.CRLF.
    message: Vec<u8>,
    pipelining: bool,
    per_session: u64,
    /// Messages not yet claimed by a worker.
    remaining: AtomicU64,
    deadline: Option<Instant>,
    errors_shown: Mutex<Vec<String>>,
    /// `--http`: the request every message is.
    http: Option<http::HttpLoad>,
}

impl Shared {
    /// Take one message to send; false when the count or the duration is used up.
    fn claim(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    fn note_error(&self, error: &anyhow::Error) {
        let text = format!("{error:#}");
        let mut shown = self.errors_shown.lock().unwrap_or_else(|e| e.into_inner());
        if shown.len() < MAX_ERRORS_SHOWN && !shown.contains(&text) {
            eprintln!("submitd-bench: error: {text}");
            shown.push(text);
        }
    }
}

async fn run(args: Args) -> Result<bool, Usage> {
    let connect = args.connect.as_deref().unwrap_or_default();
    let addr = target(connect, args.allow_remote).await.map_err(Usage)?;
    let host = connect
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(connect);
    let name = args.server_name.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|e| Usage(anyhow!("bad TLS server name {name:?}: {e}")))?;
    let auth = match (&args.user, &args.password) {
        (Some(user), password) => {
            let password = password.as_deref().unwrap_or("");
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            Some(format!("AUTH PLAIN {token}\r\n").into_bytes())
        }
        (None, _) => None,
    };
    let messages = match (args.messages, args.duration) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1000,
    };
    let shared = Arc::new(Shared {
        addr,
        tls: args.tls,
        connector: connector(!args.no_resume),
        server_name,
        timeout: args.timeout,
        ehlo: format!("EHLO {}\r\n", args.ehlo).into_bytes(),
        auth,
        mail: format!("MAIL FROM:<{}>\r\n", args.from).into_bytes(),
        rcpts: recipients(&args.to, args.rcpts)
            .iter()
            .map(|r| format!("RCPT TO:<{r}>\r\n").into_bytes())
            .collect(),
        http: args.http.then(|| {
            http::HttpLoad::new(
                args.http_body,
                args.api_key.as_deref().unwrap_or_default(),
                connect.to_string(),
                &args.from,
                &recipients(&args.to, args.rcpts),
                &message(&args.from, &args.to, args.size as usize),
            )
        }),
        message: message(&args.from, &args.to, args.size as usize),
        pipelining: args.pipelining,
        per_session: if args.per_session == 0 {
            u64::MAX
        } else {
            args.per_session
        },
        remaining: AtomicU64::new(messages),
        deadline: args.duration.map(|d| Instant::now() + d),
        errors_shown: Mutex::new(Vec::new()),
    });
    Ok(match args.idle {
        Some(n) => idle(shared, n, args.sessions, args.hold).await,
        None => load(shared, args.sessions).await,
    })
}

/// Resolve the target; refuse anything but loopback unless allowed.
async fn target(connect: &str, allow_remote: bool) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(connect)
        .await
        .with_context(|| format!("cannot resolve --connect {connect:?} (want HOST:PORT)"))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        bail!("--connect {connect:?} resolves to no address");
    };
    if !allow_remote && let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing non-loopback target {remote} (this tool accepts any certificate and is \
             for loopback test servers; pass --allow-remote to override)"
        );
    }
    Ok(first)
}

/// The recipient addresses: `to` itself for one, else `to` with 1..=n after its local part.
fn recipients(to: &str, n: u64) -> Vec<String> {
    if n <= 1 {
        return vec![to.to_string()];
    }
    let (local, domain) = to.rsplit_once('@').unwrap_or((to, ""));
    let at = if to.contains('@') { "@" } else { "" };
    (1..=n).map(|i| format!("{local}{i}{at}{domain}")).collect()
}

/// Raise the soft RLIMIT_NOFILE towards `needed` (never above the hard limit): 2048 sessions
/// need more than the usual soft 1024.
fn raise_open_files(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= needed {
        return;
    }
    let want = needed.min(lim.rlim_max);
    if want > lim.rlim_cur {
        lim.rlim_cur = want;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            eprintln!(
                "submitd-bench: cannot raise the open files limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if want < needed {
        eprintln!("submitd-bench: open files limit {want} is below the {needed} needed");
    }
}

/// Hidden mode: N deferred messages into a queue directory, through the public spool API,
/// from several threads (the file system merges their fsyncs).
fn fill_queue(args: &Args, fill: &[String]) -> anyhow::Result<()> {
    use submitd::queue::{Envelope, QueueId, RecipientState, Spool};
    let [dir, n] = fill else {
        bail!("want --fill-queue DIR N");
    };
    let n: u64 = n.parse().context("N is not a number")?;
    if n > MAX_FILL {
        bail!("at most {MAX_FILL} messages");
    }
    let spool = Spool::open(std::path::Path::new(dir)).context("opening the queue")?;
    let mut body = message(&args.from, &args.to, args.size as usize);
    body.truncate(body.len() - 3);
    let rcpts = recipients(&args.to, args.rcpts);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let later = now + 30 * 86_400;
    let todo = AtomicU64::new(n);
    let failed = AtomicU64::new(0);
    let stored = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..args.threads.max(1) {
            scope.spawn(|| {
                while todo
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
                    .is_ok()
                {
                    let id = QueueId::generate();
                    let mut env =
                        Envelope::new(&id, &args.from, &args.from, &rcpts, &args.ehlo, now);
                    env.size = body.len() as u64;
                    for r in &mut env.recipients {
                        r.state = RecipientState::Deferred;
                        r.attempts = 1;
                        r.next_attempt = Some(later);
                        r.last_reply = Some("451 4.4.1 submitd-bench: filled deferred".into());
                    }
                    // Where the server keeps messages that wait: `deferred/`.
                    let done = spool.create(&id).and_then(|mut w| {
                        w.write(&body)?;
                        w.commit_deferred(env)
                    });
                    match done {
                        Ok(_) => {
                            stored.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let before = failed.fetch_add(1, Ordering::Relaxed);
                            if before < MAX_ERRORS_SHOWN as u64 {
                                eprintln!("submitd-bench: store: {e}");
                            }
                            // A full disk fails every store: give up instead of trying N times.
                            if before >= MAX_FILL_FAILURES {
                                todo.store(0, Ordering::Relaxed);
                            }
                        }
                    }
                    let left = todo.load(Ordering::Relaxed);
                    if left.is_multiple_of(100_000) && left > 0 {
                        eprintln!("submitd-bench: {left} to fill");
                    }
                }
            });
        }
    });
    let failed = failed.into_inner();
    let stored = stored.into_inner();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "filled": stored, "errors": failed, "seconds": (seconds * 1000.0).round() / 1000.0 })
    );
    if failed > 0 {
        bail!("{failed} messages not stored");
    }
    Ok(())
}

/// The message: headers, then lines of printable text up to `size` bytes, then the final dot.
fn message(from: &str, to: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: submitd-bench\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut i = 0usize;
    while m.len() + 2 <= size {
        let remaining = size - m.len();
        let mut line = (remaining - 2).min(76);
        if remaining - line - 2 == 1 {
            // Never leave a single byte that no CRLF-ended line can fill.
            line -= 1;
        }
        for _ in 0..line {
            m.push(ALPHABET[i % ALPHABET.len()]);
            i += 1;
        }
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// One client config for every connection: resumption on unless disabled, any certificate.
fn connector(resume: bool) -> TlsConnector {
    let mut config = submitd::tls::any_certificate_client_config();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

/// What one worker counted.
struct Tally {
    sent: u64,
    errors: u64,
    /// Microseconds.
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 us to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

async fn load(shared: Arc<Shared>, sessions: u64) -> bool {
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let shared = shared.clone();
        workers.spawn(async move {
            let mut tally = Tally {
                sent: 0,
                errors: 0,
                latency: histogram(),
            };
            while shared.claim() {
                let done = match &shared.http {
                    Some(http) => http::session(&shared, http, &mut tally).await,
                    None => session(&shared, &mut tally).await,
                };
                if let Err(e) = done {
                    // The message in flight failed; the connection is dropped.
                    tally.errors += 1;
                    shared.note_error(&e);
                }
            }
            tally
        });
    }
    let mut total = Tally {
        sent: 0,
        errors: 0,
        latency: histogram(),
    };
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(t) => {
                total.sent += t.sent;
                total.errors += t.errors;
                // Same bounds on both sides: cannot fail.
                let _ = total.latency.add(&t.latency);
            }
            Err(e) => {
                eprintln!("submitd-bench: worker failed: {e}");
                total.errors += 1;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    let h = &total.latency;
    let bytes = total.sent as f64 * (shared.message.len() - 3) as f64;
    let line = json!({
        "messages": total.sent,
        "errors": total.errors,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "msgs_per_sec": if seconds > 0.0 { ((total.sent as f64 / seconds) * 10.0).round() / 10.0 } else { 0.0 },
        "mb_per_sec": if seconds > 0.0 { ((bytes / 1_048_576.0 / seconds) * 100.0).round() / 100.0 } else { 0.0 },
        "rcpts": shared.rcpts.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
        "sessions": sessions,
        "per_session": if shared.per_session == u64::MAX { 0 } else { shared.per_session },
        "size": shared.message.len() - 3,
        "tls": format!("{:?}", shared.tls).to_lowercase(),
        "pipelining": shared.pipelining,
        "http": shared.http.as_ref().map(|h| h.content_type),
    });
    println!("{line}");
    total.errors == 0
}

/// One connection: set up, send messages (the first already claimed), QUIT.
async fn session(shared: &Shared, tally: &mut Tally) -> anyhow::Result<()> {
    let mut start = Instant::now();
    let (mut conn, pipelining) = open(shared).await?;
    if let Some(auth) = &shared.auth {
        conn.command(auth, "AUTH", 235).await?;
    }
    let pipelining = pipelining && shared.pipelining;
    let mut in_session = 0u64;
    loop {
        if pipelining {
            conn.wbuf.extend_from_slice(&shared.mail);
            for rcpt in &shared.rcpts {
                conn.wbuf.extend_from_slice(rcpt);
            }
            conn.wbuf.extend_from_slice(b"DATA\r\n");
            conn.flush("MAIL/RCPT/DATA").await?;
            // Read every reply before judging any: the server answers each pipelined command.
            let mail = conn.reply("MAIL").await?;
            let mut rcpts = Vec::with_capacity(shared.rcpts.len());
            for _ in &shared.rcpts {
                rcpts.push(conn.reply("RCPT").await?);
            }
            let data = conn.reply("DATA").await?;
            mail.expect("MAIL", 250)?;
            for rcpt in rcpts {
                rcpt.expect("RCPT", 250)?;
            }
            data.expect("DATA", 354)?;
        } else {
            conn.command(&shared.mail, "MAIL", 250).await?;
            for rcpt in &shared.rcpts {
                conn.command(rcpt, "RCPT", 250).await?;
            }
            conn.command(b"DATA\r\n", "DATA", 354).await?;
        }
        // Straight from the shared copy: a 25 MB message is not copied per connection.
        conn.write_direct(&shared.message, "message data").await?;
        conn.reply("end of data")
            .await?
            .expect("end of data", 250)?;
        tally.sent += 1;
        tally
            .latency
            .saturating_record((start.elapsed().as_micros() as u64).max(1));
        in_session += 1;
        if in_session >= shared.per_session || !shared.claim() {
            break;
        }
        start = Instant::now();
    }
    // The messages are in; a failed QUIT is not a failed message.
    let _ = conn.command(b"QUIT\r\n", "QUIT", 221).await;
    Ok(())
}

/// Connect, greeting, EHLO (STARTTLS and EHLO again when asked); returns whether the last
/// EHLO offered PIPELINING.
async fn open(shared: &Shared) -> anyhow::Result<(Conn, bool)> {
    let tcp = timed(shared.timeout, "connect", TcpStream::connect(shared.addr)).await?;
    let _ = tcp.set_nodelay(true);
    let stream = match shared.tls {
        TlsMode::Implicit => Either::Right(handshake(shared, tcp).await?),
        TlsMode::Starttls | TlsMode::None => Either::Left(tcp),
    };
    let mut conn = Conn {
        stream,
        rbuf: Vec::with_capacity(MAX_REPLY_LINE),
        rpos: 0,
        wbuf: Vec::with_capacity(1024),
        timeout: shared.timeout,
    };
    conn.reply("greeting").await?.expect("greeting", 220)?;
    let mut ehlo = conn.command(&shared.ehlo, "EHLO", 250).await?;
    if shared.tls == TlsMode::Starttls {
        conn.command(b"STARTTLS\r\n", "STARTTLS", 220).await?;
        if conn.rpos < conn.rbuf.len() {
            bail!("server sent bytes after its STARTTLS reply");
        }
        let Either::Left(tcp) = conn.stream else {
            bail!("STARTTLS on a TLS connection");
        };
        conn.stream = Either::Right(handshake(shared, tcp).await?);
        ehlo = conn
            .command(&shared.ehlo, "EHLO after STARTTLS", 250)
            .await?;
    }
    let pipelining = ehlo.text.lines().any(|l| {
        l.get(4..)
            .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
    });
    Ok((conn, pipelining))
}

async fn handshake(shared: &Shared, tcp: TcpStream) -> anyhow::Result<TlsStream<TcpStream>> {
    timed(
        shared.timeout,
        "TLS handshake",
        shared.connector.connect(shared.server_name.clone(), tcp),
    )
    .await
}

async fn timed<T, E: std::error::Error + Send + Sync + 'static>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.with_context(|| what),
        Err(_) => Err(anyhow!("{what}: timed out after {limit:?}")),
    }
}

/// A server reply: its code and all its lines.
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn expect(self, what: &str, want: u16) -> anyhow::Result<Reply> {
        if self.code == want {
            Ok(self)
        } else {
            let first = self.text.lines().next().unwrap_or("");
            bail!("{what}: expected {want}, got {first:?}")
        }
    }
}

/// One connection with its read buffer and a single write buffer.
struct Conn {
    stream: Either<TcpStream, TlsStream<TcpStream>>,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// Send `line` (already CRLF-terminated) and check the reply code.
    async fn command(&mut self, line: &[u8], what: &str, want: u16) -> anyhow::Result<Reply> {
        self.wbuf.extend_from_slice(line);
        self.flush(what).await?;
        self.reply(what).await?.expect(what, want)
    }

    /// Write `bytes` without going through the write buffer (which must be empty).
    async fn write_direct(&mut self, bytes: &[u8], what: &str) -> anyhow::Result<()> {
        debug_assert!(self.wbuf.is_empty());
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow!("{what}: write: {e}")),
            Err(_) => Err(anyhow!("{what}: write timed out after {:?}", self.timeout)),
        }
    }

    async fn flush(&mut self, what: &str) -> anyhow::Result<()> {
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {
                self.wbuf.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(anyhow!("{what}: write: {e}")),
            Err(_) => Err(anyhow!("{what}: write timed out after {:?}", self.timeout)),
        }
    }

    /// Read one whole (possibly multi-line) reply.
    async fn reply(&mut self, what: &str) -> anyhow::Result<Reply> {
        let mut text = String::new();
        for _ in 0..MAX_REPLY_LINES {
            let line = self.line(what).await?;
            let code = line
                .get(..3)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|_| matches!(line.get(3), None | Some(b' ') | Some(b'-')));
            let Some(code) = code else {
                bail!(
                    "{what}: malformed reply {:?}",
                    String::from_utf8_lossy(&line)
                );
            };
            text.push_str(&String::from_utf8_lossy(&line));
            text.push('\n');
            if line.get(3) != Some(&b'-') {
                return Ok(Reply { code, text });
            }
        }
        bail!("{what}: reply longer than {MAX_REPLY_LINES} lines")
    }

    /// One reply line without its CRLF.
    async fn line(&mut self, what: &str) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(end) = self.rbuf[self.rpos..].windows(2).position(|w| w == b"\r\n") {
                let line = self.rbuf[self.rpos..self.rpos + end].to_vec();
                self.rpos += end + 2;
                if self.rpos == self.rbuf.len() {
                    self.rbuf.clear();
                    self.rpos = 0;
                }
                return Ok(line);
            }
            if self.rbuf.len() - self.rpos > MAX_REPLY_LINE {
                bail!("{what}: reply line longer than {MAX_REPLY_LINE} bytes");
            }
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            self.rbuf.reserve(MAX_REPLY_LINE);
            let read = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.rbuf));
            match read.await {
                Ok(Ok(0)) => bail!("{what}: connection closed by the server"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("{what}: read: {e}"),
                Err(_) => bail!("{what}: no reply within {:?}", self.timeout),
            }
        }
    }
}

/// Idle mode: open `n` connections, `parallel` at a time, print when all are up, hold them.
async fn idle(shared: Arc<Shared>, n: u64, parallel: u64, hold: Option<Duration>) -> bool {
    let started = Instant::now();
    let todo = Arc::new(AtomicU64::new(n));
    let mut openers = tokio::task::JoinSet::new();
    for _ in 0..parallel.min(n) {
        let shared = shared.clone();
        let todo = todo.clone();
        openers.spawn(async move {
            let mut conns = Vec::new();
            let mut errors = 0u64;
            while todo
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
                .is_ok()
            {
                match open(&shared).await {
                    Ok((conn, _)) => conns.push(conn),
                    Err(e) => {
                        errors += 1;
                        shared.note_error(&e);
                    }
                }
            }
            (conns, errors)
        });
    }
    let mut conns = Vec::new();
    let mut errors = 0;
    while let Some(done) = openers.join_next().await {
        match done {
            Ok((c, e)) => {
                conns.extend(c);
                errors += e;
            }
            Err(e) => {
                eprintln!("submitd-bench: opener failed: {e}");
                errors += 1;
            }
        }
    }
    let line = json!({
        "idle": n,
        "up": conns.len(),
        "errors": errors,
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "tls": format!("{:?}", shared.tls).to_lowercase(),
    });
    println!("{line}");
    match hold {
        Some(d) => tokio::time::sleep(d).await,
        None => {
            // Blocking stdin on its own thread: the runtime has no stdin support enabled.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let mut sink = [0u8; 1024];
                let mut stdin = std::io::stdin().lock();
                while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(k) if k > 0) {}
                let _ = tx.send(());
            });
            let _ = rx.await;
        }
    }
    eprintln!("submitd-bench: closing {} idle connections", conns.len());
    drop(conns);
    errors == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_the_asked_size_and_needs_no_dot_stuffing() {
        for size in [1000, 1001, 1002, 10239, 10240, 100_000, 26_214_400] {
            let m = message("a@example.test", "b@example.net", size);
            assert!(m.ends_with(b"\r\n.\r\n"), "size {size}");
            assert_eq!(m.len() - 3, size, "size {size}");
            let body = &m[..m.len() - 3];
            for line in body.split(|&b| b == b'\n') {
                assert!(!line.starts_with(b"."), "size {size}");
                assert!(line.len() <= 999, "size {size}");
            }
            // Only CRLF line ends: no bare CR or LF.
            let crs = body.iter().filter(|&&b| b == b'\r').count();
            let lfs = body.iter().filter(|&&b| b == b'\n').count();
            assert_eq!(crs, lfs);
            assert_eq!(body.windows(2).filter(|w| w == b"\r\n").count(), lfs);
        }
    }

    #[test]
    fn a_size_below_the_headers_gives_the_headers_alone() {
        let m = message("a@example.test", "b@example.net", 64);
        assert!(m.ends_with(b"\r\n\r\n.\r\n"));
    }

    #[test]
    fn recipients_are_distinct_beyond_one() {
        assert_eq!(recipients("sink@example.net", 1), ["sink@example.net"]);
        assert_eq!(
            recipients("sink@example.net", 3),
            [
                "sink1@example.net",
                "sink2@example.net",
                "sink3@example.net"
            ]
        );
        let many = recipients("sink@example.net", MAX_RCPTS);
        let distinct: std::collections::HashSet<_> = many.iter().collect();
        assert_eq!(distinct.len(), MAX_RCPTS as usize);
    }

    #[test]
    fn fill_queue_writes_every_message_into_the_deferred_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = dir.path().join("queue");
        let args = Args::try_parse_from([
            "submitd-bench",
            "--fill-queue",
            queue.to_str().expect("utf-8 path"),
            "50",
            "--size",
            "1024",
            "--threads",
            "4",
        ])
        .expect("arguments parse without --connect");
        let fill = args.fill_queue.clone().expect("fill mode");
        fill_queue(&args, &fill).expect("fill");
        // 50 messages, as the server's spool lists them, each waiting where the server keeps
        // deferred mail (`deferred/XY/ID.q`), none in the top directory.
        let spool = submitd::queue::Spool::attach(&queue);
        let ids = spool.list().expect("list");
        assert_eq!(ids.len(), 50);
        for id in &ids {
            let path = spool.path(id);
            assert!(
                path.parent().and_then(|p| p.parent()) == Some(&*queue.join("deferred")),
                "{}",
                path.display()
            );
            let env = spool.load_envelope(id).expect("envelope");
            assert!(env.next_due().is_some_and(|due| due > env.received_at));
        }
        let top = std::fs::read_dir(&queue)
            .expect("queue dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".q"))
            .count();
        assert_eq!(top, 0);
        let bad =
            Args::try_parse_from(["submitd-bench", "--fill-queue", "x", "lots"]).expect("parse");
        assert!(fill_queue(&bad, bad.fill_queue.as_deref().expect("fill")).is_err());
    }

    #[test]
    fn rcpts_and_sessions_are_bounded() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["submitd-bench", "--connect", "127.0.0.1:1"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
        };
        assert!(parse(&["--rcpts", "1000"]).is_ok());
        assert!(parse(&["--rcpts", "1001"]).is_err());
        assert!(parse(&["--rcpts", "0"]).is_err());
        assert!(parse(&["--sessions", "2048", "--size", "26214400"]).is_ok());
        assert!(Args::try_parse_from(["submitd-bench"]).is_err());
    }

    #[test]
    fn durations_in_seconds_or_humantime() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
