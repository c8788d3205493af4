//! PROXY protocol v1/v2 in front of 587 and 465: the header's client address reaches the
//! Received header and the per-IP limit; untrusted peers, bad, late and missing headers are
//! closed; nothing after the header is swallowed.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use submitd::config::Settings;
use submitd::proxy::v2_header;
use submitd::server::Server;
use tokio_util::sync::CancellationToken;

struct ProxyServer {
    dir: tempfile::TempDir,
    plain: SocketAddr,
    tls: SocketAddr,
    stats: Arc<submitd::listener::ProxyStats>,
    _stop: StopOnDrop,
}

struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A server with `proxy_protocol = true`, these trusted proxies and extra `[limits]` lines;
/// the client IP goes into Received.
async fn start(trusted: &str, limits: &str) -> ProxyServer {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), limits, "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "\n[tls]",
        &format!("proxy_protocol = true\ntrusted_proxies = [{trusted}]\n\n[tls]"),
    ) + "\n[submission]\nreceived_client_ip = true\n";
    std::fs::write(&path, &text).unwrap();
    let settings = Settings::from_toml(&text, &path).unwrap();
    let server = Server::bind(Arc::new(settings)).await.unwrap();
    let plain = server.submission_addrs()[0];
    let tls = server.submissions_addrs()[0];
    let stats = server.proxy_stats();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    ProxyServer {
        dir,
        plain,
        tls,
        stats,
        _stop: StopOnDrop(stop),
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Connect to 587, send `header`, read the greeting.
async fn plain_via(addr: SocketAddr, header: &[u8]) -> Client {
    let mut c = Client::connect_raw(addr).await;
    c.send(header).await;
    c.expect(&format!("220 {HOSTNAME} ESMTP submitd")).await;
    c
}

/// STARTTLS, AUTH as alice and one message; the spooled message's Received line.
async fn submit_on_plain(mut c: Client, dir: &Path) -> String {
    c.cmd("EHLO client.test", "250").await;
    c.starttls().await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
        "235",
    )
    .await;
    assert!(
        send_message(&mut c, ALICE, &["bob@example.net"])
            .await
            .starts_with("250 ")
    );
    received_line(dir)
}

/// The first Received line of the one message queued in `dir/queue`.
fn received_line(dir: &Path) -> String {
    let queued = queued_in(&dir.join("queue"));
    assert_eq!(queued.len(), 1);
    String::from_utf8_lossy(&queued[0].1)
        .lines()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn v1_tcp4_on_587_puts_the_client_in_received() {
    let s = start("\"127.0.0.1\"", "").await;
    let c = plain_via(s.plain, b"PROXY TCP4 203.0.113.9 192.0.2.1 40001 587\r\n").await;
    let received = submit_on_plain(c, s.dir.path()).await;
    assert!(received.contains("([203.0.113.9])"), "{received}");
    assert!(!received.contains("127.0.0.1"), "{received}");
}

#[tokio::test]
async fn v1_tcp6_on_587_and_a_cidr_of_trusted_proxies() {
    let s = start("\"10.0.0.0/8\", \"127.0.0.0/8\"", "").await;
    let c = plain_via(s.plain, b"PROXY TCP6 2001:db8::9 2001:db8::1 40001 587\r\n").await;
    let received = submit_on_plain(c, s.dir.path()).await;
    assert!(received.contains("2001:db8::9"), "{received}");
}

#[tokio::test]
async fn v2_ipv4_on_587() {
    let s = start("\"127.0.0.1\"", "").await;
    let header = v2_header(Some((sa("198.51.100.20:5555"), sa("192.0.2.1:587"))));
    let c = plain_via(s.plain, &header).await;
    let received = submit_on_plain(c, s.dir.path()).await;
    assert!(received.contains("([198.51.100.20])"), "{received}");
}

#[tokio::test]
async fn bytes_after_the_header_stay_in_the_socket_on_587() {
    // EHLO in the same write as the header: had the reader swallowed it, the server would
    // greet and wait; it sees a client that talked before the greeting instead.
    let s = start("\"127.0.0.1\"", "").await;
    let mut c = Client::connect_raw(s.plain).await;
    c.send(b"PROXY TCP4 203.0.113.9 192.0.2.1 40001 587\r\nEHLO client.test\r\n")
        .await;
    c.expect("554 5.5.0").await;
}

/// Blocking TLS client on 465 whose PROXY header and ClientHello leave in one write.
struct TlsWithHeader {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    buf: Vec<u8>,
}

impl TlsWithHeader {
    fn connect(addr: SocketAddr, header: &[u8]) -> TlsWithHeader {
        let (cert, _) = cert_and_key();
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(HOSTNAME).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut first = header.to_vec();
        conn.write_tls(&mut first).unwrap();
        assert!(first.len() > header.len(), "no ClientHello");
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.write_all(&first).unwrap();
        TlsWithHeader {
            stream: rustls::StreamOwned::new(conn, tcp),
            buf: Vec::new(),
        }
    }

    fn reply(&mut self) -> String {
        loop {
            let mut start = 0;
            while let Some(pos) = self.buf[start..].windows(2).position(|w| w == b"\r\n") {
                let end = start + pos + 2;
                if end - start < 6 || self.buf[start + 3] == b' ' {
                    let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end);
                    return text;
                }
                start = end;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "closed before a reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        let r = self.reply();
        assert!(
            r.starts_with(prefix),
            "{line}: expected {prefix}, got {r:?}"
        );
        r
    }
}

/// On 465: header and ClientHello in one write, then a whole submission.
fn submit_on_465(addr: SocketAddr, header: Vec<u8>) {
    let mut c = TlsWithHeader::connect(addr, &header);
    let greeting = c.reply();
    assert!(greeting.starts_with("220 "), "{greeting}");
    c.cmd("EHLO client.test", "250");
    c.cmd(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
        "235",
    );
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250");
    c.cmd("RCPT TO:<bob@example.net>", "250");
    c.cmd("DATA", "354");
    c.cmd(&format!("{}.", message_from(ALICE)), "250 2.0.0");
    c.cmd("QUIT", "221");
}

#[tokio::test]
async fn v2_ipv4_on_465_with_the_client_hello_in_the_same_write() {
    let s = start("\"127.0.0.1\"", "").await;
    let header = v2_header(Some((sa("203.0.113.44:1234"), sa("192.0.2.1:465"))));
    let addr = s.tls;
    tokio::task::spawn_blocking(move || submit_on_465(addr, header))
        .await
        .unwrap();
    let received = received_line(s.dir.path());
    assert!(received.contains("([203.0.113.44])"), "{received}");
}

#[tokio::test]
async fn v2_ipv6_and_v1_on_465_with_the_client_hello_in_the_same_write() {
    let s = start("\"127.0.0.1\"", "").await;
    let header = v2_header(Some((sa("[2001:db8::44]:1234"), sa("[2001:db8::1]:465"))));
    let addr = s.tls;
    tokio::task::spawn_blocking(move || submit_on_465(addr, header))
        .await
        .unwrap();
    let received = received_line(s.dir.path());
    assert!(received.contains("([IPv6:2001:db8::44])"), "{received}");

    // v1 in front of TLS as well (a second server, so one message per queue).
    let s = start("\"127.0.0.1\"", "").await;
    let addr = s.tls;
    tokio::task::spawn_blocking(move || {
        submit_on_465(
            addr,
            b"PROXY TCP4 203.0.113.45 192.0.2.1 1 465\r\n".to_vec(),
        )
    })
    .await
    .unwrap();
    let received = received_line(s.dir.path());
    assert!(received.contains("([203.0.113.45])"), "{received}");
}

#[tokio::test]
async fn per_ip_limit_counts_the_header_address() {
    let s = start("\"127.0.0.1\"", "max_connections_per_ip = 1").await;
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 192.0.2.1 1000 587\r\n");
    // Two clients behind the same proxy connection source: limited separately.
    let _a = plain_via(s.plain, v1("203.0.113.1").as_bytes()).await;
    let _b = plain_via(s.plain, v1("203.0.113.2").as_bytes()).await;
    // The same client again: over its limit.
    let mut c = Client::connect_raw(s.plain).await;
    c.send(v1("203.0.113.1").as_bytes()).await;
    c.expect("421 4.7.0").await;
    c.expect_closed().await;
    // On 465 the refusal is a close before the handshake.
    let mut c = Client::connect_raw(s.tls).await;
    c.send(v2_header(Some((sa("203.0.113.2:9"), sa("192.0.2.1:465")))).as_slice())
        .await;
    c.expect_closed().await;
    // A LOCAL health check counts against the proxy itself, not the clients.
    let _local = plain_via(s.plain, &v2_header(None)).await;
}

#[tokio::test]
async fn local_and_unknown_use_the_proxy_address_and_get_the_greeting() {
    let s = start("\"127.0.0.1\"", "").await;
    let mut c = plain_via(s.plain, &v2_header(None)).await;
    c.cmd("QUIT", "221").await;
    let mut c = plain_via(s.plain, b"PROXY UNKNOWN\r\n").await;
    c.cmd("QUIT", "221").await;
    // LOCAL on 465: the handshake follows in the same write.
    let addr = s.tls;
    tokio::task::spawn_blocking(move || {
        let mut c = TlsWithHeader::connect(addr, &v2_header(None));
        assert!(c.reply().starts_with("220 "));
        c.cmd("QUIT", "221");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn untrusted_peer_is_closed_at_once() {
    let s = start("\"10.0.0.1\", \"2001:db8::/32\"", "").await;
    let mut c = Client::connect_raw(s.plain).await;
    c.send(b"PROXY TCP4 203.0.113.1 192.0.2.1 1 587\r\n").await;
    c.expect_closed().await;
    let mut c = Client::connect_raw(s.tls).await;
    c.expect_closed().await;
    assert_eq!(
        s.stats.untrusted.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn bad_headers_are_closed() {
    let s = start("\"127.0.0.1\"", "command_timeout = \"1s\"").await;
    let cases: Vec<Vec<u8>> = vec![
        b"PROXY TCP4 203.0.113.1 192.0.2.1 1\r\n".to_vec(),
        b"PROXY TCP4 203.0.113.1 192.0.2.1 1 2\n".to_vec(),
        format!("PROXY UNKNOWN {}", "x".repeat(200)).into_bytes(),
        b"EHLO client.test\r\n".to_vec(),
        {
            let mut h = v2_header(Some((sa("203.0.113.1:1"), sa("192.0.2.1:2"))));
            h[12] = 0x22;
            h
        },
        {
            // v2 claiming 60 KiB of TLVs: refused from the length field alone.
            let mut h = v2_header(None);
            h[14..16].copy_from_slice(&60_000u16.to_be_bytes());
            h
        },
    ];
    for bytes in &cases {
        let mut c = Client::connect_raw(s.plain).await;
        c.send(bytes).await;
        c.expect_closed().await;
    }
    // On 465, a ClientHello with no header: not a PROXY header.
    let mut c = Client::connect_raw(s.tls).await;
    c.send(b"\x16\x03\x01\x00\x05hello").await;
    c.expect_closed().await;
    assert_eq!(
        s.stats
            .bad_header
            .load(std::sync::atomic::Ordering::Relaxed),
        cases.len() as u64 + 1
    );
}

#[tokio::test]
async fn slow_or_missing_header_is_closed_after_the_header_timeout() {
    let s = start("\"127.0.0.1\"", "command_timeout = \"1s\"").await;
    let started = std::time::Instant::now();
    // Nothing at all.
    let mut silent = Client::connect_raw(s.plain).await;
    // Half a header, then nothing.
    let mut slow = Client::connect_raw(s.tls).await;
    slow.send(b"PROXY TCP4 203.0.113.1").await;
    silent.expect_closed().await;
    slow.expect_closed().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
}
