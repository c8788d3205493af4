//! The HTTP server side shared by the metrics endpoint and the HTTP API: an accept loop that
//! serves an axum [`Router`] over HTTP/1.1 (plain or TLS) through hyper, with every bound in
//! place (connections at once, request head size and field count, head read time, whole
//! request time) and a graceful stop on the server's cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{debug, warn};

/// How one HTTP listener is bounded.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Octets of request head read before `431` (hyper's read buffer; at least 8192).
    pub max_header_size: usize,
    /// Header fields in a request before `431`.
    pub max_headers: usize,
    /// From accepting a connection to its request head (and the TLS handshake), and from a
    /// request's head to its response.
    pub request_timeout: Duration,
    /// Serve several requests per connection (the API) or one and close (metrics scrapes).
    pub keep_alive: bool,
}

/// How long a stopping server lets open requests finish.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Serve `router` on `listener` (through `tls` when given) until `shutdown`, then let open
/// requests finish for a bounded time. Handlers see the client as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let limits = Arc::new(limits);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s,
            _ = shutdown.cancelled() => return,
        };
        let Ok(slot) = slot else { return };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (router, limits, tls, shutdown) = (
            router.clone(),
            limits.clone(),
            tls.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            match tls {
                None => connection(TokioIo::new(tcp), peer, router, &limits, &shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.request_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            connection(TokioIo::new(stream), peer, router, &limits, &shutdown).await
                        }
                        Ok(Err(e)) => {
                            debug!(peer = %peer, error = %e, "http: TLS handshake failed")
                        }
                        Err(_) => debug!(peer = %peer, "http: TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// One connection: HTTP/1.1 with hyper, each request bounded by `request_timeout`.
async fn connection<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    router: Router,
    limits: &HttpLimits,
    shutdown: &CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move {
            let call = router.call(request.map(axum::body::Body::new));
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(response)) => Ok::<_, std::convert::Infallible>(response),
                Ok(Err(never)) => match never {},
                Err(_) => Ok(timed_out()),
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        // `Content-Type`, not `content-type`: what the hand-written responder sent, and what
        // scrapers and scripts that match header text byte for byte still expect.
        .title_case_headers(true)
        .max_buf_size(limits.max_header_size.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(limits.keep_alive);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r { debug!(peer = %peer, error = %e, "http: connection ended"); }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(STOP_GRACE, conn).await;
        }
    }
}

/// `408 Request Timeout`, the connection closed after it.
fn timed_out() -> Response<axum::body::Body> {
    let mut response = Response::new(axum::body::Body::from("request timed out\n"));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}
