//! A small, bounded HTTPS client for MTA-STS policy fetches (RFC 8461 section 3.3),
//! TLS-RPT uploads (RFC 8460 section 3) and webhooks ([`post_to`], also plain HTTP): hyper's
//! HTTP/1.1 over our own TCP and rustls.
//!
//! Bounds: the whole exchange within [`FETCH_TIMEOUT`], response headers within
//! [`MAX_HEADER_BYTES`] and [`MAX_HEADERS`], the body within the caller's limit. Redirects
//! are never followed (RFC 8461 section 3.3): any status but the expected one fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The whole fetch or upload: connect, handshake, request, response, body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Response header bytes hyper may buffer (its minimum is 8 KiB).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Response header fields.
const MAX_HEADERS: usize = 64;
/// At most this many addresses of the host are tried.
const MAX_ADDRESSES: usize = 4;

/// Why a fetch failed. `Certificate` is what TLS-RPT calls `sts-webpki-invalid`; the rest is
/// `sts-policy-fetch-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("certificate of {host} refused: {reason}")]
    Certificate { host: String, reason: String },
    #[error("{0}")]
    Failed(String),
}

/// One request: the host (certificate name and `Host:`), its addresses, the path.
pub struct Request1<'a> {
    pub host: &'a str,
    pub addrs: &'a [SocketAddr],
    pub path: &'a str,
    pub tls: Arc<ClientConfig>,
}

/// `GET` a `200` `text/plain` body of at most `limit` bytes.
pub async fn get_text(req: &Request1<'_>, limit: usize) -> Result<Vec<u8>, FetchError> {
    let exchange = async {
        let request = Request::builder()
            .method(Method::GET)
            .uri(req.path)
            .header("host", req.host)
            .header("user-agent", "submitd")
            .header("connection", "close")
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Failed(format!("request: {e}")))?;
        let response = send(req, request).await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Failed(format!(
                "https://{}{}: status {} (only 200 is accepted; redirects are not followed)",
                req.host,
                req.path,
                response.status().as_u16()
            )));
        }
        let text_plain = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/plain"));
        if !text_plain {
            return Err(FetchError::Failed(format!(
                "https://{}{}: not text/plain",
                req.host, req.path
            )));
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| FetchError::Failed(format!("body: {e} (limit {limit} bytes)")))?;
        Ok(body.to_bytes().to_vec())
    };
    within(exchange).await
}

/// `POST` `body` as `content_type`; any `2xx` is success (RFC 8460 section 5.4).
pub async fn post(req: &Request1<'_>, content_type: &str, body: Vec<u8>) -> Result<(), FetchError> {
    let exchange = async {
        let request = Request::builder()
            .method(Method::POST)
            .uri(req.path)
            .header("host", req.host)
            .header("user-agent", "submitd")
            .header("connection", "close")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Failed(format!("request: {e}")))?;
        let response = send(req, request).await?;
        if !response.status().is_success() {
            return Err(FetchError::Failed(format!(
                "POST https://{}{}: status {}",
                req.host,
                req.path,
                response.status().as_u16()
            )));
        }
        Ok(())
    };
    within(exchange).await
}

async fn within<T>(exchange: impl Future<Output = Result<T, FetchError>>) -> Result<T, FetchError> {
    match tokio::time::timeout(FETCH_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Failed(format!(
            "HTTPS exchange timed out after {FETCH_TIMEOUT:?}"
        ))),
    }
}

/// Connect (first address that answers), TLS with the certificate checked for `host`, then
/// one HTTP/1.1 exchange; returns the response with its body still to read.
async fn send(
    req: &Request1<'_>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
    let name = ServerName::try_from(req.host.to_string())
        .map_err(|e| FetchError::Failed(format!("{}: {e}", req.host)))?;
    let tcp = connect_first(req.host, req.addrs.iter().copied()).await?;
    let tls = TlsConnector::from(req.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_error(req.host, e))?;
    http1(tls, req.host, request, FETCH_TIMEOUT).await
}

/// A TCP connection to the first of `addrs` (at most [`MAX_ADDRESSES`]) that answers.
async fn connect_first(
    host: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> Result<TcpStream, FetchError> {
    let mut last = format!("{host} has no address");
    for addr in addrs.into_iter().take(MAX_ADDRESSES) {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect to {host}[{addr}]: {e}"),
        }
    }
    Err(FetchError::Failed(last))
}

/// The HTTP/1.1 client handshake over `io`, with the response header bounds: the sender and
/// the connection, which the caller drives.
async fn client<IO>(
    io: IO,
    host: &str,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        hyper::client::conn::http1::Connection<TokioIo<IO>, Full<Bytes>>,
    ),
    FetchError,
>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| FetchError::Failed(format!("HTTP with {host}: {e}")))
}

/// One HTTP/1.1 exchange over `io` (bounded response headers); the connection task ends with
/// the exchange, when the sender and the body are dropped, and at the latest after `limit`.
async fn http1<IO>(
    io: IO,
    host: &str,
    request: Request<Full<Bytes>>,
    limit: Duration,
) -> Result<hyper::Response<hyper::body::Incoming>, FetchError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = client(io, host).await?;
    tokio::spawn(async move {
        let _ = tokio::time::timeout(limit, conn).await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| FetchError::Failed(format!("HTTP with {host}: {e}")))
}

/// A `POST` to an `http:` or `https:` URL with extra header fields (webhooks).
pub struct Post<'a> {
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: &'a str,
    pub port: u16,
    /// Path and query.
    pub path: &'a str,
    /// `None`: plain HTTP; else TLS with the certificate checked for `host`.
    pub tls: Option<Arc<ClientConfig>>,
    pub content_type: &'a str,
    pub headers: &'a [(&'static str, String)],
    pub body: Bytes,
    /// The whole exchange: resolve, connect, handshake, request, response headers.
    pub timeout: Duration,
}

/// An HTTP/1.1 connection to one webhook endpoint, kept open between posts while the
/// endpoint keeps it open (no TCP and TLS handshake per event).
pub struct Kept {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The task driving the connection; aborted when the connection is dropped.
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Response body bytes read (and dropped) so that the connection can carry the next post; a
/// longer body closes the connection instead.
const MAX_DRAIN: usize = 64 * 1024;
/// And at most this long (the answer is in by then).
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Send `post` on `kept` when it is open, else on a new connection left in `kept` when the
/// endpoint allows it; the response's status code, or why there is none. A kept connection
/// that fails before an answer (closed while idle) is replaced once, within the same
/// `post.timeout`; a post may so reach the endpoint twice, which webhook receivers expect (they
/// deduplicate on `webhook-id`).
pub async fn post_to(post: &Post<'_>, kept: &mut Option<Kept>) -> Result<u16, FetchError> {
    let timed_out = || FetchError::Failed(format!("no response within {:?}", post.timeout));
    let deadline = tokio::time::Instant::now() + post.timeout;
    if let Some(k) = kept.as_mut().filter(|k| !k.sender.is_closed()) {
        match tokio::time::timeout_at(deadline, exchange(&mut k.sender, post)).await {
            Ok(Ok((status, body))) => {
                if !drain(body).await {
                    *kept = None;
                }
                return Ok(status);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "kept connection failed; a new one"),
            Err(_) => {
                *kept = None;
                return Err(timed_out());
            }
        }
    }
    *kept = None;
    let fresh = async {
        let mut k = connect(post).await?;
        let (status, body) = exchange(&mut k.sender, post).await?;
        Ok::<_, FetchError>((status, body, k))
    };
    let (status, body, k) = tokio::time::timeout_at(deadline, fresh)
        .await
        .map_err(|_| timed_out())??;
    *kept = drain(body).await.then_some(k);
    Ok(status)
}

/// Read a response body to its end, so that the connection can carry the next request:
/// whether that worked within [`MAX_DRAIN`] bytes and [`DRAIN_TIME`]. The status is already
/// known by then, so a body that never ends (no length, connection left open) costs the
/// connection, not the answer. `None` (the response closes the connection): false.
async fn drain(body: Option<hyper::body::Incoming>) -> bool {
    let Some(body) = body else {
        return false;
    };
    let read = Limited::new(body, MAX_DRAIN).collect();
    matches!(tokio::time::timeout(DRAIN_TIME, read).await, Ok(Ok(_)))
}

/// Resolve, connect (first address that answers), TLS when asked, the HTTP/1.1 handshake.
async fn connect(post: &Post<'_>) -> Result<Kept, FetchError> {
    let host = post.host;
    let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, post.port)],
        Err(_) => tokio::net::lookup_host((host, post.port))
            .await
            .map_err(|e| FetchError::Failed(format!("resolve {host}: {e}")))?
            .collect(),
    };
    let tcp = connect_first(host, addrs).await?;
    match &post.tls {
        Some(tls) => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| FetchError::Failed(format!("{host}: {e}")))?;
            let tls = TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| handshake_error(host, e))?;
            handshake(tls, host).await
        }
        None => handshake(tcp, host).await,
    }
}

/// The HTTP/1.1 handshake over `io`; a task drives the connection for as long as the [`Kept`] lives.
async fn handshake<IO>(io: IO, host: &str) -> Result<Kept, FetchError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = client(io, host).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Kept { sender, driver })
}

/// One request and its response on `sender`: the status, and the body to [`drain`] when the
/// connection may carry another (HTTP/1.1 without `Connection: close`).
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    post: &Post<'_>,
) -> Result<(u16, Option<hyper::body::Incoming>), FetchError> {
    let host = post.host;
    let default_port = if post.tls.is_some() { 443 } else { 80 };
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let authority = if post.port == default_port {
        bracketed
    } else {
        format!("{bracketed}:{}", post.port)
    };
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(post.path)
        .header("host", authority)
        .header("user-agent", "submitd")
        .header("content-type", post.content_type);
    for (name, value) in post.headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(post.body.clone()))
        .map_err(|e| FetchError::Failed(format!("request: {e}")))?;
    let failed = |e: hyper::Error| FetchError::Failed(format!("HTTP with {host}: {e}"));
    sender.ready().await.map_err(failed)?;
    let response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status().as_u16();
    let closes = response.version() != hyper::Version::HTTP_11
        || response
            .headers()
            .get(hyper::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    Ok((status, (!closes).then(|| response.into_body())))
}

/// A refused certificate is told apart from other handshake failures (TLS-RPT).
fn handshake_error(host: &str, e: std::io::Error) -> FetchError {
    let refused = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    if refused {
        FetchError::Certificate {
            host: host.to_string(),
            reason: e.to_string(),
        }
    } else {
        FetchError::Failed(format!("TLS with {host}: {e}"))
    }
}
