//! MTA-STS and TLS-RPT test helpers: a private CA issuing certificates per test, and an HTTPS
//! server on loopback that answers every request with bytes the test chooses (a policy, a
//! redirect, an oversized body) and keeps what it was sent (TLS-RPT uploads).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A private CA; its certificate goes into `relay.ca_file`.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "submitd MTA-STS test CA");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` signed by this CA: (chain PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// One request as the HTTPS server read it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub head: String,
    pub body: Vec<u8>,
}

/// The whole response (status line, headers, body) a [`HttpsServer`] writes.
pub type Responder = Arc<dyn Fn(&HttpRequest) -> Vec<u8> + Send + Sync>;

/// `200 text/plain` with `body`.
pub fn ok_text(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A policy file.
pub fn policy(mode: &str, mx: &[&str], max_age: u64) -> String {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        text.push_str(&format!("mx: {m}\r\n"));
    }
    text.push_str(&format!("max_age: {max_age}\r\n"));
    text
}

/// An HTTPS/1.1 server on 127.0.0.1 (one request per connection); stopped when dropped.
pub struct HttpsServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
    task: JoinHandle<()>,
}

const MAX_REQUEST: usize = 1024 * 1024;

impl HttpsServer {
    pub async fn start(cert: &(String, String), respond: Responder) -> HttpsServer {
        HttpsServer::start_on("127.0.0.1:0".parse().unwrap(), cert, respond).await
    }

    /// On `addr` (a restarted server on the port of an earlier one).
    pub async fn start_on(
        addr: SocketAddr,
        cert: &(String, String),
        respond: Responder,
    ) -> HttpsServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = super::sink::tls_acceptor(Some(cert));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let requests = requests.clone();
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, requests, respond) =
                        (acceptor.clone(), requests.clone(), respond.clone());
                    tokio::spawn(async move {
                        let serve = async {
                            let mut tls = acceptor.accept(tcp).await.ok()?;
                            let req = read_request(&mut tls).await?;
                            let response = respond(&req);
                            requests.lock().unwrap().push(req);
                            tls.write_all(&response).await.ok()?;
                            tls.shutdown().await.ok()
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(20), serve).await;
                    });
                }
            }
        });
        HttpsServer {
            addr,
            requests,
            task,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Wait (bounded) for `n` requests.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<HttpRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "https: {} request(s) after {timeout:?}, wanted {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Head up to the blank line, then `Content-Length` bytes of body (bounded).
async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<HttpRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(MAX_REQUEST);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = (head_end + len).min(buf.len());
    Some(HttpRequest {
        head,
        body: buf[head_end..end].to_vec(),
    })
}
