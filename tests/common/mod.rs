//! Shared helpers for the end-to-end tests: a real submitd server on 127.0.0.1:0 in a private
//! temp directory, a raw SMTP client (plaintext, STARTTLS, implicit TLS) and spool readers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use submitd::config::Settings;
use submitd::server::Server;

/// The server name in test certificates and greetings.
pub const HOSTNAME: &str = "mail.example.test";
pub const ALICE: &str = "alice@example.test";
pub const ALICE_PASSWORD: &str = "alice-secret-pw";
pub const BOB: &str = "bob@example.test";
pub const BOB_PASSWORD: &str = "bob-secret-pw";
/// Every wait in a test is bounded by this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// The users file every test server starts with (hashed once per test binary).
pub fn users_toml() -> &'static str {
    static USERS: OnceLock<String> = OnceLock::new();
    USERS.get_or_init(|| {
        let alice = submitd::auth::verify::hash_password(ALICE_PASSWORD).unwrap();
        let bob = submitd::auth::verify::hash_password(BOB_PASSWORD).unwrap();
        format!(
            "[[user]]\nlogin = \"{ALICE}\"\npassword = \"{alice}\"\n\
             senders = [\"{ALICE}\", \"@alice.example.test\"]\n\n\
             [[user]]\nlogin = \"{BOB}\"\npassword = \"{bob}\"\n"
        )
    })
}

/// A test certificate and key for [`HOSTNAME`] (made once per test binary).
pub fn cert_and_key() -> &'static (String, String) {
    static CERT: OnceLock<(String, String)> = OnceLock::new();
    CERT.get_or_init(|| submitd::tls::self_signed(HOSTNAME).unwrap())
}

/// Write a config and its files into `dir`; `limits` are extra lines for `[limits]`.
/// Delivery goes to a smarthost on 127.0.0.1:1, where nothing listens: every attempt is
/// deferred, so mail never leaves loopback.
pub fn write_config(dir: &Path, limits: &str, submission: &str, submissions: &str) -> PathBuf {
    let relay = "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";
    write_config_full(dir, limits, "", relay, submission, submissions)
}

/// Write a config with extra `[limits]`, `[queue]` and `[relay]` lines.
pub fn write_config_full(
    dir: &Path,
    limits: &str,
    queue: &str,
    relay: &str,
    submission: &str,
    submissions: &str,
) -> PathBuf {
    let (cert, key) = cert_and_key();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("users.toml"), users_toml()).unwrap();
    let config = format!(
        "hostname = \"{HOSTNAME}\"\n\n[listen]\nsubmission = [\"{submission}\"]\n\
         submissions = [\"{submissions}\"]\n\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n\
         [auth]\nusers = \"users.toml\"\n\n[limits]\n{limits}\n\n[queue]\ndir = \"queue\"\n{queue}\n\n\
         [relay]\n{relay}\n"
    );
    let path = dir.join("submitd.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Write a config whose `[auth]` table is `auth` (keys first, then any `[auth.X]` subtable),
/// placed last in the file; the users file is written too (use it with `users = "users.toml"`).
/// Delivery as `relay` lines.
pub fn write_config_auth(dir: &Path, auth: &str, relay: &str) -> PathBuf {
    let (cert, key) = cert_and_key();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("users.toml"), users_toml()).unwrap();
    let config = format!(
        "hostname = \"{HOSTNAME}\"\n\n[listen]\nsubmission = [\"127.0.0.1:0\"]\n\
         submissions = [\"127.0.0.1:0\"]\n\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n\
         [queue]\ndir = \"queue\"\n\n[relay]\n{relay}\n\n[auth]\n{auth}\n"
    );
    let path = dir.join("submitd.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// `GET path` over plain HTTP (the metrics listener): the response body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// A running server in its own temp directory; stopped when dropped.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub submission: SocketAddr,
    pub submissions: SocketAddr,
    /// The bound `[metrics] listen` address, when the config turns metrics on.
    pub metrics: Option<SocketAddr>,
    /// The bound `[api] listen` address, when the config turns the HTTP API on.
    pub api: Option<SocketAddr>,
    shutdown: CancellationToken,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with("").await
    }

    /// Start with extra `[limits]` lines, e.g. `max_recipients = 2`.
    pub async fn start_with(limits: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), limits, "127.0.0.1:0", "127.0.0.1:0");
        TestServer::start_at(dir, path).await
    }

    /// Start with extra `[queue]` and `[relay]` lines.
    pub async fn start_relay(queue: &str, relay: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config_full(dir.path(), "", queue, relay, "127.0.0.1:0", "127.0.0.1:0");
        TestServer::start_at(dir, path).await
    }

    /// Start with extra `[limits]`, `[queue]` and `[relay]` lines and `extra` appended to the
    /// config (whole sections, e.g. `[metrics]\nlisten = "127.0.0.1:0"`).
    pub async fn start_full(limits: &str, queue: &str, relay: &str, extra: &str) -> TestServer {
        TestServer::start_full_with(limits, queue, relay, extra, |s| s).await
    }

    /// [`TestServer::start_full`], with `tweak` applied to the bound server before it runs
    /// (e.g. `Server::with_api_events`).
    pub async fn start_full_with(
        limits: &str,
        queue: &str,
        relay: &str,
        extra: &str,
        tweak: impl FnOnce(Server) -> Server,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config_full(
            dir.path(),
            limits,
            queue,
            relay,
            "127.0.0.1:0",
            "127.0.0.1:0",
        );
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!("\n{extra}\n"));
        std::fs::write(&path, text).unwrap();
        TestServer::start_tweaked(dir, path, tweak).await
    }

    /// Start with `auth` as the whole `[auth]` table ([`write_config_auth`]) and `relay` lines.
    pub async fn start_auth(auth: &str, relay: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config_auth(dir.path(), auth, relay);
        TestServer::start_at(dir, path).await
    }

    async fn start_at(dir: tempfile::TempDir, path: PathBuf) -> TestServer {
        TestServer::start_tweaked(dir, path, |s| s).await
    }

    async fn start_tweaked(
        dir: tempfile::TempDir,
        path: PathBuf,
        tweak: impl FnOnce(Server) -> Server,
    ) -> TestServer {
        let text = std::fs::read_to_string(&path).unwrap();
        let settings = Settings::from_toml(&text, &path).unwrap();
        let server = tweak(Server::bind(Arc::new(settings)).await.unwrap());
        let submission = server.submission_addrs()[0];
        let submissions = server.submissions_addrs()[0];
        let metrics = server.metrics_addr();
        let api = server.api_addr();
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            dir,
            submission,
            submissions,
            metrics,
            api,
            shutdown,
        }
    }

    /// Stop the server and start it again on the same config and queue (new ports).
    pub async fn restart(self) -> TestServer {
        self.shutdown.cancel();
        // The old server lets go of its listeners and queue within a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let path = self.dir.path().join("submitd.toml");
        let mut this = self;
        let dir = std::mem::replace(&mut this.dir, tempfile::tempdir().unwrap());
        TestServer::start_at(dir, path).await
    }

    /// Stop the server (its sessions get 421; the queue drains its running deliveries).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.dir.path().join("queue")
    }

    /// Every committed message: (envelope JSON, message bytes), oldest first.
    pub fn queued(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        queued_in(&self.queue_dir())
    }

    /// A plaintext connection to 587, greeting read.
    pub async fn plain(&self) -> Client {
        Client::plain(self.submission).await
    }

    /// An implicit-TLS connection to 465, greeting read.
    pub async fn tls(&self) -> Client {
        Client::implicit_tls(self.submissions).await
    }

    /// 465, EHLO, AUTH PLAIN as alice.
    pub async fn alice(&self) -> Client {
        let mut c = self.tls().await;
        c.cmd("EHLO client.test", "250").await;
        c.cmd(
            &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
            "235",
        )
        .await;
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Every committed message in a queue directory: (envelope JSON, message bytes as relayed).
/// A message removed while this reads (delivered meanwhile) is left out.
pub fn queued_in(dir: &Path) -> Vec<(serde_json::Value, Vec<u8>)> {
    if !dir.is_dir() {
        return Vec::new();
    }
    let spool = submitd::queue::Spool::attach(dir);
    spool
        .list()
        .unwrap_or_default()
        .iter()
        .filter_map(|id| {
            let env = spool.load_envelope(id).ok()?;
            let msg = spool.load_message(id).ok()?;
            Some((serde_json::to_value(env).unwrap(), msg))
        })
        .collect()
}

/// Base64 of a SASL PLAIN response.
pub fn plain(login: &str, password: &str) -> String {
    b64(format!("\0{login}\0{password}").as_bytes())
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A rustls client config that trusts the test certificate.
pub fn client_tls() -> TlsConnector {
    let (cert, _) = cert_and_key();
    let config = submitd::tls::client_config_trusting(cert.as_bytes()).unwrap();
    TlsConnector::from(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

/// A raw SMTP client: bytes out, whole replies in.
pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
}

impl Client {
    /// Connect without reading anything.
    pub async fn connect_raw(addr: SocketAddr) -> Client {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
        }
    }

    pub async fn plain(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr).await;
        let greeting = c.reply().await;
        assert_eq!(greeting, format!("220 {HOSTNAME} ESMTP submitd\r\n"));
        c
    }

    pub async fn implicit_tls(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr).await;
        c.upgrade().await.expect("TLS handshake");
        let greeting = c.reply().await;
        assert_eq!(greeting, format!("220 {HOSTNAME} ESMTP submitd\r\n"));
        c
    }

    /// Do a TLS handshake on the current TCP stream.
    pub async fn upgrade(&mut self) -> std::io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            panic!("already TLS");
        };
        let name = rustls_pki_types::ServerName::try_from(HOSTNAME).unwrap();
        let tls = tokio::time::timeout(IO_TIMEOUT, client_tls().connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake"))??;
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// STARTTLS and the handshake.
    pub async fn starttls(&mut self) {
        self.cmd("STARTTLS", "220 2.0.0").await;
        assert!(self.buf.is_empty(), "bytes after the STARTTLS reply");
        self.upgrade().await.unwrap();
    }

    fn io(&mut self) -> &mut dyn Io {
        match &mut self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.as_mut(),
            Stream::Gone => panic!("no stream"),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let io = self.io();
        tokio::time::timeout(IO_TIMEOUT, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .expect("write timed out")
        .expect("write failed");
    }

    /// Read one whole reply (all its lines), as text with CRLFs.
    pub async fn reply(&mut self) -> String {
        self.try_reply()
            .await
            .expect("connection closed before a reply")
    }

    /// One whole reply, or `None` at EOF.
    pub async fn try_reply(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
        loop {
            // A reply ends at a line whose 4th byte is a space.
            let mut start = 0;
            while let Some(pos) = self.buf[start..].windows(2).position(|w| w == b"\r\n") {
                let end = start + pos + 2;
                let line = &self.buf[start..end];
                if line.len() < 6 || line[3] == b' ' {
                    let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end);
                    return Some(text);
                }
                start = end;
            }
            let mut chunk = [0u8; 4096];
            let io = self.io();
            let n = tokio::time::timeout_at(deadline, io.read(&mut chunk))
                .await
                .expect("timed out waiting for a reply")
                .unwrap_or(0);
            if n == 0 {
                assert!(self.buf.is_empty(), "partial reply at EOF: {:?}", self.buf);
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Read a reply and check it starts with `prefix` (e.g. "250" or "553 5.7.1").
    pub async fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply().await;
        assert!(r.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        r
    }

    /// Send a command line and check the reply.
    pub async fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.expect(prefix).await
    }

    /// Expect the server to close the connection (EOF, or a reset) with no further reply.
    pub async fn expect_closed(&mut self) {
        if let Some(r) = self.try_reply().await {
            panic!("expected close, got {r:?}");
        }
    }
}

/// A small valid message from alice.
pub fn message_from(from: &str) -> String {
    format!("From: {from}\r\nTo: rcpt@example.net\r\nSubject: test\r\n\r\nHello.\r\n")
}
pub mod binary;
pub mod dns;
pub mod dovecot;
pub mod keys;
pub mod postgres;
pub mod redis;
pub mod run;
pub mod sink;
pub mod slapd;
pub mod stored;
pub mod sts;

/// Start like [`TestServer::start_with`], after `prepare` may change the files in the server's
/// directory (e.g. append to `users.toml`); also returns the server's verifier, whose
/// `verifications()` counter tells whether argon2 ran.
pub async fn start_prepared(
    limits: &str,
    prepare: impl FnOnce(&Path),
) -> (TestServer, submitd::auth::verify::Verifier) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), limits, "127.0.0.1:0", "127.0.0.1:0");
    prepare(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let settings = Settings::from_toml(&text, &path).unwrap();
    let server = Server::bind(Arc::new(settings)).await.unwrap();
    let verifier = server.verifier().clone();
    let submission = server.submission_addrs()[0];
    let submissions = server.submissions_addrs()[0];
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));
    let server = TestServer {
        dir,
        submission,
        submissions,
        metrics: None,
        api: None,
        shutdown,
    };
    (server, verifier)
}

/// A second server on an existing config file (as after a restart): its implicit-TLS address
/// and the token that stops it.
pub async fn start_again(config: &Path) -> (SocketAddr, CancellationToken) {
    let settings = Settings::load(config).unwrap();
    let server = Server::bind(Arc::new(settings)).await.unwrap();
    let submissions = server.submissions_addrs()[0];
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));
    (submissions, shutdown)
}

/// 465, EHLO, AUTH PLAIN with these credentials, expecting `prefix`.
pub async fn login_as(addr: SocketAddr, login: &str, password: &str, prefix: &str) -> Client {
    let mut c = Client::implicit_tls(addr).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(&format!("AUTH PLAIN {}", plain(login, password)), prefix)
        .await;
    c
}

/// MAIL, RCPTs, DATA with a small message from `from`; returns the reply to the final dot.
pub async fn send_message(c: &mut Client, from: &str, rcpts: &[&str]) -> String {
    c.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
    for r in rcpts {
        c.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(from)).as_bytes())
        .await;
    c.reply().await
}

impl TestServer {
    /// Start in `dir` (whose `queue/` may already hold messages) with extra `[queue]` and
    /// `[relay]` lines, the spool writing through `io`.
    pub async fn start_in_with_io(
        dir: tempfile::TempDir,
        queue: &str,
        relay: &str,
        io: Arc<dyn submitd::queue::fsio::SpoolIo>,
    ) -> TestServer {
        let path = write_config_full(dir.path(), "", queue, relay, "127.0.0.1:0", "127.0.0.1:0");
        let text = std::fs::read_to_string(&path).unwrap();
        let settings = Settings::from_toml(&text, &path).unwrap();
        let server = Server::bind_with_spool_io(Arc::new(settings), io)
            .await
            .unwrap();
        let submission = server.submission_addrs()[0];
        let submissions = server.submissions_addrs()[0];
        let metrics = server.metrics_addr();
        let api = server.api_addr();
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            dir,
            submission,
            submissions,
            metrics,
            api,
            shutdown,
        }
    }
}

/// `[relay]` lines for a smarthost in clear on the sink.
pub fn smarthost(sink: &sink::Sink) -> String {
    format!(
        "mode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\ntimeout = \"10s\"\n",
        sink.addr
    )
}

impl TestServer {
    /// Submit one message (`body`, without the final dot) as alice; returns its queue ID.
    pub async fn submit(&self, rcpts: &[&str], body: &str) -> String {
        let mut c = self.alice().await;
        c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
        for r in rcpts {
            c.cmd(&format!("RCPT TO:<{r}>"), "250").await;
        }
        c.cmd("DATA", "354").await;
        c.send(format!("{body}.\r\n").as_bytes()).await;
        let r = c.expect("250 2.0.0 Ok: queued as ").await;
        r.trim_start_matches("250 2.0.0 Ok: queued as ")
            .trim_end()
            .to_string()
    }

    /// Wait until the queue directory holds no message.
    pub async fn wait_empty(&self) {
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        while !self.queued().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "queue never emptied: {:?}",
                self.queued()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
