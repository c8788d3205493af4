//! Delivery to a hostile next hop: small SMTP servers scripted here on raw tokio sockets
//! (not the friendly `common::sink`) that inject replies around STARTTLS, hang, drop the
//! connection after the final dot, or send garbage. Every case must end `Deferred` — never
//! `Delivered` or `Failed` on the strength of bytes an attacker slipped in — within the
//! configured `relay.timeout`, with bounded memory.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use common::*;
use submitd::config::Settings;
use submitd::delivery::{Delivery, Job, Outcome};

/// `relay.timeout` in these tests.
const STEP: Duration = Duration::from_secs(2);
const MESSAGE: &[u8] = b"From: alice@example.test\r\nSubject: hi\r\n\r\nHello.\r\n";

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the hostile server saw, in order: commands (first word), `TLS`, `DATA-END`.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, event: impl Into<String>) {
        self.0.lock().unwrap().push(event.into());
    }
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| *e == event).count()
    }
}

type Script = Arc<dyn Fn(TcpStream, Log) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A server on 127.0.0.1:0 running `script` for every connection; stopped when dropped.
struct Hostile {
    addr: SocketAddr,
    log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl Hostile {
    async fn start(script: Script) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Log::default();
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                log2.push("CONNECT");
                tokio::spawn(script(tcp, log2.clone()));
            }
        });
        Hostile { addr, log, task }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the friendly part of a script answers the final dot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterDot {
    Accept,
    Hang,
    Drop,
}

/// An SMTP server that plays along: offers STARTTLS when `starttls_reply` is set (and sends
/// exactly those bytes, in one write, as the reply before the handshake).
async fn friendly(tcp: TcpStream, log: Log, starttls_reply: Option<&'static str>, dot: AfterDot) {
    let mut peer = BufReader::new(Box::new(tcp) as Box<dyn Io>);
    let _ = peer
        .get_mut()
        .write_all(b"220 mx.hostile.test ESMTP\r\n")
        .await;
    let mut tls = false;
    loop {
        let mut line = String::new();
        match peer.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        log.push(verb.clone());
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if !tls && starttls_reply.is_some() => {
                b"250-mx.hostile.test\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
            }
            "EHLO" => b"250-mx.hostile.test\r\n250 8BITMIME\r\n",
            "STARTTLS" => {
                let reply = starttls_reply.unwrap_or("454 4.7.0 no\r\n");
                if peer.get_mut().write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                // The client sends nothing before its ClientHello: the buffer is empty.
                let inner = peer.into_inner();
                let Ok(stream) = tls_acceptor().accept(inner).await else {
                    log.push("TLS-FAILED");
                    return;
                };
                log.push("TLS");
                tls = true;
                peer = BufReader::new(Box::new(stream) as Box<dyn Io>);
                continue;
            }
            "MAIL" | "RCPT" => b"250 2.1.0 Ok\r\n",
            "DATA" => {
                let _ = peer.get_mut().write_all(b"354 go\r\n").await;
                loop {
                    let mut data = String::new();
                    match peer.read_line(&mut data).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if data == ".\r\n" => break,
                        Ok(_) => {}
                    }
                }
                log.push("DATA-END");
                match dot {
                    AfterDot::Accept => b"250 2.0.0 Ok: queued\r\n",
                    AfterDot::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    AfterDot::Drop => return,
                }
            }
            "QUIT" => {
                let _ = peer.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            }
            _ => b"250 2.0.0 Ok\r\n",
        };
        if peer.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

fn tls_acceptor() -> TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = cert_and_key();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
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

fn script<F, Fut>(f: F) -> Script
where
    F: Fn(TcpStream, Log) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |tcp, log| Box::pin(f(tcp, log)))
}

/// A `Delivery` in MX mode toward `[127.0.0.1]` on the hostile server's port.
fn delivery(dir: &tempfile::TempDir, port: u16, tls: &str) -> Delivery {
    let relay = format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"127.0.0.1:9\"]\ntimeout = \"2s\"\n\
         tls = \"{tls}\"\n"
    );
    let path = write_config_full(dir.path(), "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap();
    Delivery::new(&Settings::from_toml(&text, &path).unwrap()).unwrap()
}

/// One attempt to `bob@[127.0.0.1]` at `server`; the outcome and how long it took.
async fn attempt_at(server: &Hostile, tls: &str) -> (Outcome, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let delivery = delivery(&dir, server.addr.port(), tls);
    let rcpts = vec!["bob@[127.0.0.1]".to_string()];
    let job = Job {
        sender: "alice@example.test",
        ..common::stored::job(&rcpts, "[127.0.0.1]", common::stored::stored(MESSAGE))
    };
    let started = Instant::now();
    let mut out = tokio::time::timeout(Duration::from_secs(120), delivery.attempt(&job))
        .await
        .expect("delivery attempt hung");
    assert_eq!(out.len(), 1);
    (out.remove(0).1, started.elapsed())
}

fn deferred_reply(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Deferred { reply, .. } => reply,
        other => panic!("expected Deferred, got {other:?}"),
    }
}

/// The control for the STARTTLS cases: this server does deliver over STARTTLS when it does
/// not inject, so a `Deferred` below is the guard's doing.
#[tokio::test]
async fn starttls_without_injection_delivers() {
    let server = Hostile::start(script(|tcp, log| {
        friendly(tcp, log, Some("220 2.0.0 go\r\n"), AfterDot::Accept)
    }))
    .await;
    let (outcome, _) = attempt_at(&server, "opportunistic").await;
    assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    assert!(server.log.events().contains(&"TLS".to_string()));
}

/// `220 go\r\n250-injected\r\n` in one write: the pipelined line must never be read as the
/// first reply after the handshake. lettre keeps it in its buffer across the upgrade; the
/// guard refuses the STARTTLS, so nothing is sent and the recipient is deferred.
#[tokio::test]
async fn starttls_injected_line_is_never_read_after_the_handshake() {
    for tls in ["opportunistic", "required"] {
        let server = Hostile::start(script(|tcp, log| {
            friendly(
                tcp,
                log,
                Some("220 go\r\n250-injected\r\n"),
                AfterDot::Accept,
            )
        }))
        .await;
        let (outcome, _) = attempt_at(&server, tls).await;
        let reply = deferred_reply(&outcome);
        assert!(reply.contains("STARTTLS"), "{tls}: {reply}");
        assert!(reply.contains("after its STARTTLS reply"), "{tls}: {reply}");
        let events = server.log.events();
        assert!(!events.contains(&"MAIL".to_string()), "{tls}: {events:?}");
        assert!(!events.contains(&"TLS".to_string()), "{tls}: {events:?}");
    }
}

/// The harm the injection would do: two forged replies, the first taken by lettre's own EHLO
/// after the handshake and the second (`SIZE 10`) by ours, as if they came from inside TLS,
/// would make the message bounce permanently (5.3.4). It must not.
#[tokio::test]
async fn starttls_injected_capability_is_never_believed() {
    let server = Hostile::start(script(|tcp, log| {
        friendly(
            tcp,
            log,
            Some("220 go\r\n250 mx.forged.test\r\n250-mx.forged.test\r\n250 SIZE 10\r\n"),
            AfterDot::Accept,
        )
    }))
    .await;
    let (outcome, _) = attempt_at(&server, "opportunistic").await;
    assert!(
        matches!(outcome, Outcome::Deferred { .. }),
        "an injected capability decided the outcome: {outcome:?}"
    );
}

/// Greets, then never answers: deferred after one `relay.timeout`, not after the several
/// that connection set-up is allowed in total.
#[tokio::test]
async fn hang_after_greeting_defers_within_the_timeout() {
    let server = Hostile::start(script(|mut tcp, _log| async move {
        let _ = tcp.write_all(b"220 mx.hostile.test ESMTP\r\n").await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(tcp);
    }))
    .await;
    let (outcome, took) = attempt_at(&server, "none").await;
    let reply = deferred_reply(&outcome);
    assert!(reply.contains("timed out"), "{reply}");
    assert!(took >= STEP, "{took:?}");
    assert!(
        took < STEP + Duration::from_millis(1500),
        "{took:?}: {reply}"
    );
}

/// Takes the whole message, then never answers the final dot: deferred within the timeout.
#[tokio::test]
async fn hang_after_the_final_dot_defers() {
    let server = Hostile::start(script(|tcp, log| friendly(tcp, log, None, AfterDot::Hang))).await;
    let (outcome, took) = attempt_at(&server, "none").await;
    deferred_reply(&outcome);
    assert_eq!(server.log.count("DATA-END"), 1);
    assert!(took < STEP + Duration::from_millis(1500), "{took:?}");
}

/// Takes the whole message and closes without a reply: not delivered (the remote may or may
/// not have it: at-least-once means trying again), deferred.
#[tokio::test]
async fn drop_after_the_final_dot_defers() {
    let server = Hostile::start(script(|tcp, log| friendly(tcp, log, None, AfterDot::Drop))).await;
    let (outcome, _) = attempt_at(&server, "none").await;
    deferred_reply(&outcome);
    assert_eq!(server.log.count("DATA-END"), 1);
}

/// Non-SMTP greetings and invalid reply codes: deferred, no panic.
#[tokio::test]
async fn garbage_and_invalid_codes_defer() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"\x00\xff\xfeSSH-2.0-OpenSSH_9.6\r\n", b""),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", b""),
        (b"999 what\r\n", b""),
        (b"220 ok\r\n", b"600 six hundred\r\n"),
        (b"220 ok\r\n", b"25 short\r\n"),
        (b"220 ok\r\n", b"250-a\r\n251x b\r\n"),
        (b"220 ok\r\n", b"2500 long code\r\n"),
        (b"220 ok\r\n", b"\xff\xff\xff\r\n"),
    ];
    for &(greeting, ehlo_reply) in cases {
        let server = Hostile::start(script(move |mut tcp, _log| async move {
            let _ = tcp.write_all(greeting).await;
            let mut buf = [0u8; 512];
            if !ehlo_reply.is_empty() {
                let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
                let _ = tcp.write_all(ehlo_reply).await;
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }))
        .await;
        let (outcome, took) = attempt_at(&server, "none").await;
        assert!(
            matches!(outcome, Outcome::Deferred { .. }),
            "{greeting:?} {ehlo_reply:?}: {outcome:?}"
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}

/// A line that never ends, at loopback speed: lettre would collect it in memory for as long
/// as the timeout allows (gigabytes). The guard cuts it off after a bounded number of bytes,
/// at once.
#[tokio::test]
async fn endless_line_is_cut_off_with_bounded_memory() {
    let sent = Arc::new(AtomicUsize::new(0));
    let sent2 = sent.clone();
    let server = Hostile::start(script(move |mut tcp, _log| {
        let sent = sent2.clone();
        async move {
            let chunk = vec![b'A'; 64 * 1024];
            let _ = tcp.write_all(b"220 ").await;
            while tcp.write_all(&chunk).await.is_ok() {
                sent.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        }
    }))
    .await;
    let (outcome, took) = attempt_at(&server, "none").await;
    let reply = deferred_reply(&outcome);
    assert!(reply.contains("without being asked"), "{reply}");
    assert!(took < STEP, "{took:?}");
    // What the client read is at most the guard's bound; the rest sat in socket buffers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let total = sent.load(Ordering::Relaxed);
    assert!(
        total < 64 * 1024 * 1024,
        "client kept reading: {total} bytes"
    );
}

/// One 1 MB line without CRLF after the EHLO, then silence: refused at once, not after the
/// timeout with a megabyte held.
#[tokio::test]
async fn one_megabyte_line_is_refused_at_once() {
    let server = Hostile::start(script(|mut tcp, _log| async move {
        let _ = tcp.write_all(b"220 mx.hostile.test ESMTP\r\n").await;
        let mut buf = [0u8; 512];
        let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
        let mut line = b"250-".to_vec();
        line.resize(1024 * 1024, b'x');
        let _ = tcp.write_all(&line).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }))
    .await;
    let (outcome, took) = attempt_at(&server, "none").await;
    let reply = deferred_reply(&outcome);
    assert!(reply.contains("without being asked"), "{reply}");
    assert!(took < STEP, "{took:?}");
}

/// Through the whole queue: a next hop that drops the connection after the final dot leaves
/// the message queued as deferred, and it is tried again (at-least-once, never zero).
#[tokio::test]
async fn dropped_after_dot_stays_queued_and_is_retried() {
    let server = Hostile::start(script(|tcp, log| friendly(tcp, log, None, AfterDot::Drop))).await;
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\ntimeout = \"2s\"\n",
        server.addr
    );
    let submitd = TestServer::start_relay("retry = [\"1s\"]", &relay).await;
    let mut c = submitd.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    c.expect("250 2.0.0 Ok: queued as ").await;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = submitd.queued();
        assert_eq!(q.len(), 1, "the message left the queue: {q:?}");
        let r = &q[0].0["recipients"][0];
        if server.log.count("DATA-END") >= 2 && r["attempts"].as_u64() >= Some(1) {
            assert_eq!(r["state"], "deferred", "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not retried: {:?} {r}",
            server.log.events()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An implicit-TLS smarthost (TLS from the first byte, certificate trusted through
/// `relay.ca_file`) that sends a line that never ends: the guard sits under TLS in this mode
/// too (submitd opens the socket and runs the handshake itself), so the attempt is cut off at
/// once, not after the timeout with the line collected in memory.
#[tokio::test]
async fn implicit_tls_endless_line_is_cut_off_too() {
    let sent = Arc::new(AtomicUsize::new(0));
    let sent2 = sent.clone();
    let server = Hostile::start(script(move |tcp, log| {
        let sent = sent2.clone();
        async move {
            let Ok(mut tls) = tls_acceptor().accept(tcp).await else {
                log.push("TLS-FAILED");
                return;
            };
            log.push("TLS");
            let chunk = vec![b'A'; 64 * 1024];
            let _ = tls.write_all(b"220 ").await;
            while tls.write_all(&chunk).await.is_ok() {
                sent.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        }
    }))
    .await;
    let dns = common::dns::DnsServer::start(vec![(
        "mail.example.test.",
        common::dns::Rr::A(std::net::Ipv4Addr::LOCALHOST),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"{HOSTNAME}:{}\"\nsmarthost_tls = \"implicit\"\n\
         resolver = [\"{}\"]\ntimeout = \"2s\"\nca_file = \"cert.pem\"\n",
        server.addr.port(),
        dns.addr
    );
    let path = write_config_full(dir.path(), "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap();
    let delivery = Delivery::new(&Settings::from_toml(&text, &path).unwrap()).unwrap();
    let rcpts = vec!["bob@example.org".to_string()];
    let job = Job {
        sender: "alice@example.test",
        ..common::stored::job(&rcpts, "example.org", common::stored::stored(MESSAGE))
    };
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(120), delivery.attempt(&job))
        .await
        .expect("delivery attempt hung");
    let took = started.elapsed();
    let reply = deferred_reply(&out[0].1);
    assert!(reply.contains("without being asked"), "{reply}");
    assert!(took < STEP, "{took:?}");
    assert_eq!(server.log.events(), ["CONNECT", "TLS"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let total = sent.load(Ordering::Relaxed);
    assert!(
        total < 64 * 1024 * 1024,
        "client kept reading: {total} bytes"
    );
}
