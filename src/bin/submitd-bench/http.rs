//! HTTP mode (`--http`): the same load over submitd's HTTP API (`POST /v1/messages`), one
//! HTTP/1.1 keep-alive connection per session, so that a figure compares with SMTP's on the
//! same number of connections. The body is the same message as SMTP's DATA (`message/rfc822`)
//! or, with `--http-body json`, a JSON message of the same text that the server builds into
//! MIME. A message counts when the server answers `202`.

use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::{Shared, Tally, TlsMode, handshake, timed};

/// Largest response body read (the API answers a small JSON document).
const MAX_RESPONSE: usize = 64 * 1024;

/// What the HTTP mode sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpBody {
    /// The message as it is (`message/rfc822`); the envelope comes from its headers.
    Rfc822,
    /// `application/json`: from, to, subject and the same text.
    Json,
}

/// Everything one request needs, built once.
pub struct HttpLoad {
    /// `Bearer ...`.
    pub authorization: String,
    pub content_type: &'static str,
    pub body: Bytes,
    /// `host:port` for the Host header.
    pub host: String,
    /// `X-Envelope-From` and `X-Envelope-To` of a `message/rfc822` body (every recipient,
    /// as SMTP's RCPT TO lines).
    pub envelope: Option<(String, String)>,
}

impl HttpLoad {
    /// The request body of `kind` for a message from `from` to `to` whose SMTP form (headers,
    /// text, final dot) is `message`.
    pub fn new(
        kind: HttpBody,
        key: &str,
        host: String,
        from: &str,
        to: &[String],
        message: &[u8],
    ) -> HttpLoad {
        let raw = message.strip_suffix(b".\r\n").unwrap_or(message);
        let (content_type, body) = match kind {
            HttpBody::Rfc822 => ("message/rfc822", Bytes::copy_from_slice(raw)),
            HttpBody::Json => {
                let text = raw
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|p| &raw[p + 4..])
                    .unwrap_or_default();
                let doc = json!({
                    "from": from,
                    "to": to,
                    "subject": "submitd-bench",
                    "text": String::from_utf8_lossy(text),
                });
                ("application/json", Bytes::from(doc.to_string()))
            }
        };
        HttpLoad {
            authorization: format!("Bearer {key}"),
            content_type,
            body,
            host,
            envelope: (kind == HttpBody::Rfc822).then(|| (from.to_string(), to.join(", "))),
        }
    }
}

/// One connection: connect (TLS when asked), then POST messages on it (the first already
/// claimed) until the session's share or the run is used up.
pub async fn session(shared: &Shared, http: &HttpLoad, tally: &mut Tally) -> anyhow::Result<()> {
    let mut start = Instant::now();
    let tcp = timed(shared.timeout, "connect", TcpStream::connect(shared.addr)).await?;
    let _ = tcp.set_nodelay(true);
    let stream = match shared.tls {
        TlsMode::Implicit => Either::Right(handshake(shared, tcp).await?),
        TlsMode::None => Either::Left(tcp),
        TlsMode::Starttls => bail!("--http takes --tls implicit (https) or none (http)"),
    };
    let (mut sender, conn) = timed(
        shared.timeout,
        "HTTP handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut in_session = 0u64;
    let result = loop {
        if let Err(e) = post(shared, http, &mut sender).await {
            break Err(e);
        }
        tally.sent += 1;
        tally
            .latency
            .saturating_record((start.elapsed().as_micros() as u64).max(1));
        in_session += 1;
        if in_session >= shared.per_session || !shared.claim() {
            break Ok(());
        }
        start = Instant::now();
    };
    drop(sender);
    driver.abort();
    result
}

/// One `POST /v1/messages`, answered `202`.
async fn post(
    shared: &Shared,
    http: &HttpLoad,
    sender: &mut SendRequest<Full<Bytes>>,
) -> anyhow::Result<()> {
    timed(shared.timeout, "HTTP connection ready", sender.ready()).await?;
    let mut request = Request::builder();
    if let Some((from, to)) = &http.envelope {
        request = request
            .header("x-envelope-from", from)
            .header("x-envelope-to", to);
    }
    let request = request
        .method(Method::POST)
        .uri("/v1/messages")
        .header(hyper::header::HOST, &http.host)
        .header(hyper::header::AUTHORIZATION, &http.authorization)
        .header(hyper::header::CONTENT_TYPE, http.content_type)
        .body(Full::new(http.body.clone()))
        .context("building the request")?;
    let response = timed(
        shared.timeout,
        "POST /v1/messages",
        sender.send_request(request),
    )
    .await?;
    let status = response.status();
    let body = tokio::time::timeout(
        shared.timeout,
        Limited::new(response.into_body(), MAX_RESPONSE).collect(),
    )
    .await
    .map_err(|_| anyhow!("response body: timed out after {:?}", shared.timeout))?
    .map_err(|e| anyhow!("response body: {e}"))?
    .to_bytes();
    if status != StatusCode::ACCEPTED {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        bail!("POST /v1/messages: {status}: {text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"From: <a@example.test>\r\nTo: <b@example.test>\r\n\r\nhello\r\n.\r\n";

    #[test]
    fn rfc822_bodies_are_the_message_without_the_dot_and_carry_the_envelope() {
        let to = vec!["b1@example.test".to_string(), "b2@example.test".to_string()];
        let load = HttpLoad::new(
            HttpBody::Rfc822,
            "sk_k_x",
            "127.0.0.1:1".into(),
            "a@example.test",
            &to,
            MESSAGE,
        );
        assert_eq!(load.content_type, "message/rfc822");
        assert_eq!(&load.body[..], &MESSAGE[..MESSAGE.len() - 3]);
        assert_eq!(load.authorization, "Bearer sk_k_x");
        let (from, to) = load.envelope.unwrap();
        assert_eq!(
            (from.as_str(), to.as_str()),
            ("a@example.test", "b1@example.test, b2@example.test")
        );
    }

    #[test]
    fn json_bodies_carry_the_text_and_every_recipient() {
        let to = vec!["b@example.test".to_string()];
        let load = HttpLoad::new(
            HttpBody::Json,
            "sk_k_x",
            "h:1".into(),
            "a@example.test",
            &to,
            MESSAGE,
        );
        assert_eq!(load.content_type, "application/json");
        let doc: serde_json::Value = serde_json::from_slice(&load.body).unwrap();
        assert_eq!(doc["from"], "a@example.test");
        assert_eq!(doc["to"][0], "b@example.test");
        assert_eq!(doc["text"], "hello\r\n");
        assert!(load.envelope.is_none());
    }
}
