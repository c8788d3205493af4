//! TLS session resumption against the real server: a client that comes back with the same
//! rustls `ClientConfig` resumes instead of doing a full handshake, over TLS 1.3 and TLS 1.2,
//! on 465 and through STARTTLS on 587.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::HandshakeKind;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use common::{HOSTNAME, IO_TIMEOUT, TestServer, cert_and_key};

/// A client config that trusts the test certificate and speaks only `version`.
fn client(version: &'static rustls::SupportedProtocolVersion) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert_and_key().0.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Read one complete reply (through its last line) and return it.
async fn reply<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut byte))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(n == 1, "EOF after {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
        if buf.ends_with(b"\r\n") {
            let text = String::from_utf8(buf.clone()).unwrap();
            let last = text.trim_end().rsplit("\r\n").next().unwrap();
            if last.as_bytes().get(3) == Some(&b' ') {
                return text;
            }
        }
    }
}

async fn cmd<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, line: &str, code: &str) -> String {
    s.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    let r = reply(s).await;
    assert!(r.starts_with(code), "{line}: {r}");
    r
}

async fn handshake(tls: &TlsConnector, tcp: TcpStream) -> TlsStream<TcpStream> {
    let name = rustls_pki_types::ServerName::try_from(HOSTNAME).unwrap();
    tokio::time::timeout(IO_TIMEOUT, tls.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// One implicit-TLS session on 465: greeting, EHLO, QUIT. How the handshake went.
async fn visit_465(addr: SocketAddr, tls: &TlsConnector) -> HandshakeKind {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = handshake(tls, tcp).await;
    assert_eq!(
        reply(&mut s).await,
        format!("220 {HOSTNAME} ESMTP submitd\r\n")
    );
    let ehlo = cmd(&mut s, "EHLO client.test", "250").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    cmd(&mut s, "QUIT", "221").await;
    s.get_ref().1.handshake_kind().unwrap()
}

/// One STARTTLS session on 587: greeting, EHLO, STARTTLS, EHLO, QUIT.
async fn visit_587(addr: SocketAddr, tls: &TlsConnector) -> HandshakeKind {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert!(reply(&mut tcp).await.starts_with("220 "));
    cmd(&mut tcp, "EHLO client.test", "250").await;
    cmd(&mut tcp, "STARTTLS", "220").await;
    let mut s = handshake(tls, tcp).await;
    let ehlo = cmd(&mut s, "EHLO client.test", "250").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    cmd(&mut s, "QUIT", "221").await;
    s.get_ref().1.handshake_kind().unwrap()
}

#[tokio::test]
async fn returning_client_resumes_tls13_on_465() {
    let server = TestServer::start().await;
    let tls = client(&rustls::version::TLS13);
    assert_eq!(
        visit_465(server.submissions, &tls).await,
        HandshakeKind::Full
    );
    for _ in 0..3 {
        assert_eq!(
            visit_465(server.submissions, &tls).await,
            HandshakeKind::Resumed
        );
    }
}

#[tokio::test]
async fn returning_client_resumes_tls12_on_465() {
    let server = TestServer::start().await;
    let tls = client(&rustls::version::TLS12);
    assert_eq!(
        visit_465(server.submissions, &tls).await,
        HandshakeKind::Full
    );
    for _ in 0..3 {
        assert_eq!(
            visit_465(server.submissions, &tls).await,
            HandshakeKind::Resumed
        );
    }
}

#[tokio::test]
async fn returning_client_resumes_through_starttls_on_587() {
    let server = TestServer::start().await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let tls = client(version);
        assert_eq!(
            visit_587(server.submission, &tls).await,
            HandshakeKind::Full
        );
        assert_eq!(
            visit_587(server.submission, &tls).await,
            HandshakeKind::Resumed,
            "{version:?}"
        );
    }
}

/// The session-ID cache serves TLS 1.2 clients that do not take tickets.
#[tokio::test]
async fn tls12_client_without_tickets_resumes_by_session_id() {
    let server = TestServer::start().await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert_and_key().0.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = config
        .resumption
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    let tls = TlsConnector::from(Arc::new(config));
    assert_eq!(
        visit_465(server.submissions, &tls).await,
        HandshakeKind::Full
    );
    assert_eq!(
        visit_465(server.submissions, &tls).await,
        HandshakeKind::Resumed
    );
}

/// The greeting on 465 comes with the handshake (no greet_pause): a client that pipelines
/// EHLO right behind its Finished, as soon as it can send, is served, not refused.
#[tokio::test]
async fn ehlo_right_after_the_handshake_is_served_on_465() {
    let server = TestServer::start().await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let tls = client(version);
        let tcp = TcpStream::connect(server.submissions).await.unwrap();
        let mut s = handshake(&tls, tcp).await;
        s.write_all(b"EHLO client.test\r\n").await.unwrap();
        assert_eq!(
            reply(&mut s).await,
            format!("220 {HOSTNAME} ESMTP submitd\r\n")
        );
        assert!(reply(&mut s).await.starts_with("250-"), "{version:?}");
        cmd(&mut s, "QUIT", "221").await;
    }
}
