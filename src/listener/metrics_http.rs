//! The `[metrics] listen` endpoint: a minimal HTTP/1.1 responder for `GET /metrics`, one
//! request per connection, then close. Enough for Prometheus and curl.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// The largest HTTP request head read; a longer one gets 431 and the connection closes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time for a scraper to send its request, and again to read the response.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; further connections are closed at once.
const MAX_SCRAPES: usize = 8;

/// An HTTP response before it is written.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn error(status: &'static str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{status}\n"),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status.starts_with("405") {
            out.push_str("Allow: GET\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// The response to a complete request head (request line and headers, up to the empty line).
/// Only `GET /metrics` and `GET /health` (any query string) succeed; headers are ignored.
fn respond(head: &[u8], metrics: &Metrics) -> Response {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Response::error("400 Bad Request");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::error("400 Bad Request");
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Response::error("400 Bad Request");
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match (method, path) {
        ("GET", "/metrics") => Response {
            status: "200 OK",
            content_type: prometheus_text::CONTENT_TYPE,
            body: metrics.encode(),
        },
        ("GET", "/health") => Response {
            status: "200 OK",
            content_type: "application/json",
            body: metrics.health_json(),
        },
        (_, "/metrics" | "/health") => Response::error("405 Method Not Allowed"),
        _ => Response::error("404 Not Found"),
    }
}

/// Serve `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // More scrapers than slots: close; Prometheus retries at the next interval.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            scrape(tcp, peer, &metrics).await;
            drop(slot);
        });
    }
}

/// One connection: read the request head (bounded in size and time), answer, close.
async fn scrape(mut tcp: TcpStream, peer: SocketAddr, metrics: &Metrics) {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(HTTP_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok::<bool, std::io::Error>(true);
            }
            if head.len() >= MAX_REQUEST {
                return Ok(false);
            }
            let room = (MAX_REQUEST - head.len()).min(buf.len());
            let n = tcp.read(&mut buf[..room]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let response = match read {
        Ok(Ok(true)) => respond(&head, metrics),
        Ok(Ok(false)) => Response::error("431 Request Header Fields Too Large"),
        Ok(Err(e)) => {
            debug!(peer = %peer, error = %crate::logsafe::Escaped(&e), "metrics: request not read");
            return;
        }
        Err(_) => Response::error("408 Request Timeout"),
    };
    let bytes = response.to_bytes();
    let _ = tokio::time::timeout(HTTP_TIMEOUT, async {
        tcp.write_all(&bytes).await?;
        tcp.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_requests() {
        let m = Metrics::new();
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &m);
        assert_eq!(ok.status, "200 OK");
        assert_eq!(ok.content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(ok.body.contains("submitd_messages_accepted_total 0\n"));
        assert_eq!(
            respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", &m).status,
            "200 OK"
        );
        for (head, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "404 Not Found"),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", "404 Not Found"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
            (b"GET /metrics\r\n\r\n", "400 Bad Request"),
            (b"GET /metrics HTTP/1.1 x\r\n\r\n", "400 Bad Request"),
            (b"GET metrics HTTP/1.1\r\n\r\n", "400 Bad Request"),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", "400 Bad Request"),
            (b"GET /metrics SMTP/1.1\r\n\r\n", "400 Bad Request"),
        ] {
            assert_eq!(respond(head, &m).status, status, "{head:?}");
        }
        let wire = Response::error("405 Method Not Allowed").to_bytes();
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(wire.contains("\r\nAllow: GET\r\n"));
        assert!(wire.contains("\r\nConnection: close\r\n"));
    }
}
