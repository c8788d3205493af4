//! The HTTP API (issue 16) end to end: a real server with `[api] listen` on 127.0.0.1:0, keys
//! made with the real `submitd key` binary, requests from reqwest and curl, and what the sink
//! behind the smarthost received.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_parser::MimeHeaders;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::keys::{create, key_cli};
use common::sink::{Sink, SinkOptions};
use common::{ALICE, BOB, IO_TIMEOUT, TestServer, login_as, smarthost};

const API: &str = "[api]\nlisten = \"127.0.0.1:0\"\n";

/// A server with the API on, delivering to `sink`; `limits` are extra `[limits]` lines.
async fn api_server(sink: &Sink, limits: &str) -> TestServer {
    TestServer::start_full(limits, "", &smarthost(sink), API).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(IO_TIMEOUT)
        .build()
        .unwrap()
}

fn messages(server: &TestServer) -> String {
    format!("http://{}/v1/messages", server.api.expect("api on"))
}

/// POST a JSON message with `secret`: status, headers and JSON body.
async fn post_json(
    server: &TestServer,
    secret: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = http().post(messages(server)).bearer_auth(secret).json(body);
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, headers, json)
}

fn simple(from: &str) -> Value {
    json!({"from": from, "to": "carol@example.net", "subject": "hi", "text": "hello\n"})
}

/// A refusal: RFC 9457 problem+json with `status` and a `type` ending in `kind`.
fn assert_problem(got: &(StatusCode, reqwest::header::HeaderMap, Value), status: u16, kind: &str) {
    let (s, headers, body) = got;
    assert_eq!(s.as_u16(), status, "{body}");
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{headers:?}"
    );
    assert_eq!(body["status"], status, "{body}");
    let t = body["type"].as_str().unwrap();
    assert!(t.ends_with(&format!("/{kind}")), "{body}");
}

#[tokio::test]
async fn json_with_attachments_is_delivered_byte_correct() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = api_server(&sink, "").await;
    let secret = create(&server, "shop", &["--owner", ALICE, "--sender", ALICE]);
    let blob: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let body = json!({
        "from": "Shop <alice@example.test>",
        "to": ["carol@example.net"],
        "cc": "dave@example.net",
        "bcc": ["erin@example.net"],
        "reply_to": "help@example.test",
        "subject": "Your receipt",
        "text": "Thanks for your order.\n",
        "html": "<p>Thanks for your order.</p>",
        "headers": {"X-Order": "42"},
        "attachments": [
            {"filename": "receipt.bin", "content_type": "application/octet-stream",
             "content": STANDARD.encode(&blob)},
            {"filename": "note.txt", "content_type": "text/plain", "content": STANDARD.encode("a note\n")},
        ],
        "envid": "order-42",
        "metadata": {"order": "42"},
    });
    let (status, _, got) = post_json(&server, &secret, &body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{got}");
    let id = got["id"].as_str().unwrap();
    assert_eq!(id.len(), 20, "{got}");
    assert_eq!(
        got["recipients"],
        json!([
            {"address": "carol@example.net", "state": "queued"},
            {"address": "dave@example.net", "state": "queued"},
            {"address": "erin@example.net", "state": "queued"},
        ])
    );

    let received = sink.wait_for(1, IO_TIMEOUT).await;
    let m = &received[0];
    assert_eq!(m.from, ALICE);
    assert_eq!(
        m.rcpts,
        ["carol@example.net", "dave@example.net", "erin@example.net"]
    );
    let text = String::from_utf8_lossy(&m.data).to_string();
    let head = text.split("\r\n\r\n").next().unwrap();
    assert!(
        head.starts_with(
            "Received: from api by mail.example.test (submitd) via HTTP with HTTPSA id "
        ),
        "{head}"
    );
    assert!(head.contains(id), "{head}");
    assert!(!head.to_ascii_lowercase().contains("\nbcc:"), "{head}");
    assert!(head.contains("\r\nX-Order: 42\r\n"), "{head}");
    let parsed = mail_parser::MessageParser::default()
        .parse(&m.data)
        .unwrap();
    assert_eq!(parsed.subject(), Some("Your receipt"));
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some(ALICE));
    assert_eq!(from.name(), Some("Shop"));
    assert_eq!(
        parsed.reply_to().unwrap().first().unwrap().address(),
        Some("help@example.test")
    );
    assert_eq!(
        parsed.body_text(0).as_deref(),
        // Text lines end in CRLF on the wire (RFC 5322 section 2.3).
        Some("Thanks for your order.\r\n")
    );
    assert_eq!(
        parsed.body_html(0).as_deref(),
        Some("<p>Thanks for your order.</p>")
    );
    let a = parsed.attachment(0).unwrap();
    assert_eq!(a.attachment_name(), Some("receipt.bin"));
    assert_eq!(a.contents(), &blob[..]);
    let ct = a.content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("application", Some("octet-stream"))
    );
    let n = parsed.attachment(1).unwrap();
    assert_eq!(n.attachment_name(), Some("note.txt"));
    assert_eq!(n.contents(), b"a note\n");
    // DSN ENVID reached the next hop (RFC 3461) when it offers DSN; the envelope kept it.
    server.wait_empty().await;
}

#[tokio::test]
async fn raw_mime_through_curl_arrives_unchanged_after_the_trace_headers() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = api_server(&sink, "").await;
    let secret = create(&server, "raw", &["--sender", ALICE]);
    let message = format!(
        "From: Alice <{ALICE}>\r\nTo: carol@example.net\r\nBcc: hidden@example.net\r\n\
         Subject: raw\r\nMessage-ID: <raw-1@example.test>\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nline one\r\nline two\r\n"
    );
    let file = server.dir.path().join("message.eml");
    std::fs::write(&file, &message).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {secret}")])
        .args(["-H", "Content-Type: message/rfc822"])
        .args(["--data-binary", &format!("@{}", file.display())])
        .arg(messages(&server))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(
        code,
        "202",
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body["recipients"],
        json!([
            {"address": "carol@example.net", "state": "queued"},
            {"address": "hidden@example.net", "state": "queued"},
        ])
    );
    let received = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(received[0].from, ALICE);
    assert_eq!(
        received[0].rcpts,
        ["carol@example.net", "hidden@example.net"]
    );
    let data = String::from_utf8(received[0].data.clone()).unwrap();
    let without_bcc = message.replace("Bcc: hidden@example.net\r\n", "");
    let (trace, rest) = data.split_once("From: Alice").unwrap();
    assert!(trace.starts_with("Received: from api by "), "{data}");
    assert_eq!(format!("From: Alice{rest}"), without_bcc);

    // The envelope from the X-Envelope headers instead.
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "15",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", &format!("Authorization: Bearer {secret}")])
        .args(["-H", "Content-Type: message/rfc822"])
        .args(["-H", "X-Envelope-To: zed@example.net"])
        .args(["--data-binary", &format!("@{}", file.display())])
        .arg(messages(&server))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "202");
    let received = sink.wait_for(2, IO_TIMEOUT).await;
    assert_eq!(received[1].rcpts, ["zed@example.net"]);
}

#[tokio::test]
async fn forged_senders_get_403_and_bad_fields_400_naming_the_field() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = api_server(&sink, "").await;
    let secret = create(&server, "shop", &["--owner", ALICE, "--sender", ALICE]);
    let got = post_json(&server, &secret, &simple(BOB), &[]).await;
    assert_problem(&got, 403, "sender-not-owned");
    // The key is narrower than its owner: alice's domain is not the key's.
    let got = post_json(&server, &secret, &simple("news@alice.example.test"), &[]).await;
    assert_problem(&got, 403, "sender-not-owned");
    // A raw message whose From is not the key's, with an owned envelope sender.
    let response = http()
        .post(messages(&server))
        .bearer_auth(&secret)
        .header("content-type", "message/rfc822")
        .header("x-envelope-from", ALICE)
        .body(format!(
            "From: {BOB}\r\nTo: carol@example.net\r\n\r\nhi\r\n"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let mut bad = simple(ALICE);
    bad["to"] = json!(["carol@example.net", "not an address"]);
    let got = post_json(&server, &secret, &bad, &[]).await;
    assert_problem(&got, 400, "invalid-field");
    assert_eq!(got.2["field"], "to[1]");
    let response = http()
        .post(messages(&server))
        .bearer_auth(&secret)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(server.queued().is_empty());
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn keys_are_checked_scope_address_expiry_revocation() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = api_server(&sink, "").await;
    // No key, an unknown key and a wrong secret for a real key: the same 401 body.
    let none = http()
        .post(messages(&server))
        .json(&simple(ALICE))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let none: Value = none.json().await.unwrap();
    let real = create(&server, "app", &["--sender", ALICE]);
    let unknown = format!("sk_ghost_{}", &real[7..]);
    let wrong = format!("{}A", &real[..real.len() - 1]);
    let wrong = if wrong == real {
        format!("{}B", &real[..real.len() - 1])
    } else {
        wrong
    };
    for secret in [unknown.as_str(), wrong.as_str(), "sk_app_short"] {
        let got = post_json(&server, secret, &simple(ALICE), &[]).await;
        assert_problem(&got, 401, "unauthorized");
        assert_eq!(got.2, none, "{secret}");
    }

    let lan = create(
        &server,
        "lan",
        &["--sender", ALICE, "--from-ip", "10.0.0.0/8"],
    );
    let got = post_json(&server, &lan, &simple(ALICE), &[]).await;
    assert_problem(&got, 403, "key-source-address");
    let smtp_only = create(&server, "smtponly", &["--sender", ALICE, "--scope", "smtp"]);
    let got = post_json(&server, &smtp_only, &simple(ALICE), &[]).await;
    assert_problem(&got, 403, "key-scope");

    let brief = create(&server, "brief", &["--sender", ALICE, "--expires", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let got = post_json(&server, &brief, &simple(ALICE), &[]).await;
    assert_problem(&got, 401, "key-expired");

    let got = post_json(&server, &real, &simple(ALICE), &[]).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.2);
    login_as(server.submissions, "app", &real, "235").await;
    let out = key_cli(&server, &["revoke", "app"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let got = post_json(&server, &real, &simple(ALICE), &[]).await;
    assert_problem(&got, 401, "key-revoked");
    login_as(server.submissions, "app", &real, "535 5.7.8").await;
    assert_eq!(sink.wait_for(1, IO_TIMEOUT).await.len(), 1);
}

#[tokio::test]
async fn an_idempotent_retry_across_a_restart_queues_nothing_new() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = api_server(&sink, "").await;
    let secret = create(&server, "app", &["--sender", ALICE]);
    let idem = [("Idempotency-Key", "order-42-confirmation")];
    let first = post_json(&server, &secret, &simple(ALICE), &idem).await;
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.2);
    sink.wait_for(1, IO_TIMEOUT).await;

    let server = server.restart().await;
    let again = post_json(&server, &secret, &simple(ALICE), &idem).await;
    assert_eq!(again.0, StatusCode::ACCEPTED, "{}", again.2);
    assert_eq!(again.2, first.2);
    assert_eq!(again.1["idempotent-replayed"], "true");

    let mut other = simple(ALICE);
    other["subject"] = json!("another");
    let got = post_json(&server, &secret, &other, &idem).await;
    assert_problem(&got, 422, "idempotency-key-reused");

    // The same raw message to another envelope is another request.
    let raw = |to: &str| {
        http()
            .post(messages(&server))
            .bearer_auth(&secret)
            .header("content-type", "message/rfc822")
            .header("idempotency-key", "raw-1")
            .header("x-envelope-to", to)
            .body(format!("From: {ALICE}\r\nSubject: r\r\n\r\nhi\r\n"))
            .send()
    };
    assert_eq!(
        raw("p@example.net").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let r = raw("q@example.net").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Another key may use the same Idempotency-Key for its own message.
    let second = create(&server, "app2", &["--sender", ALICE]);
    let got = post_json(&server, &second, &simple(ALICE), &idem).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.2);
    assert_ne!(got.2["id"], first.2["id"]);
    sink.wait_for(3, IO_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received().len(), 3, "the retries sent nothing");
}

#[tokio::test]
async fn too_large_gets_413_and_over_the_rate_429_with_retry_after() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = api_server(&sink, "max_message_size = 20000").await;
    let secret = create(
        &server,
        "capped",
        &["--sender", ALICE, "--messages-per-hour", "1"],
    );
    let mut big = simple(ALICE);
    big["text"] = json!("x".repeat(25_000));
    let got = post_json(&server, &secret, &big, &[]).await;
    assert_problem(&got, 413, "too-large");
    // A body past the limit plus base64 overhead is cut off before it is read whole.
    let response = http()
        .post(messages(&server))
        .bearer_auth(&secret)
        .header("content-type", "message/rfc822")
        .body(vec![b'a'; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let got = post_json(&server, &secret, &simple(ALICE), &[]).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.2);
    let got = post_json(&server, &secret, &simple(ALICE), &[]).await;
    assert_problem(&got, 429, "rate-limited");
    let retry: u64 = got.1["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0);
    sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn status_is_readable_by_the_sending_key_and_admin_only() {
    // Delivery is deferred (nothing listens at the smarthost): the message stays queued.
    let server = TestServer::start_full(
        "",
        "",
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n",
        API,
    )
    .await;
    let secret = create(&server, "app", &["--owner", ALICE, "--sender", ALICE]);
    let sibling = create(&server, "app2", &["--owner", ALICE, "--sender", ALICE]);
    let admin = create(&server, "ops", &["--sender", ALICE, "--scope", "api,admin"]);
    let got = post_json(&server, &secret, &simple(ALICE), &[]).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.2);
    let url = format!("{}/{}", messages(&server), got.2["id"].as_str().unwrap());
    for key in [&secret, &admin] {
        let r = http().get(&url).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let status: Value = r.json().await.unwrap();
        assert_eq!(status["id"], got.2["id"]);
        let rcpt = &status["recipients"][0];
        assert_eq!(rcpt["address"], "carol@example.net");
        assert!(
            ["queued", "deferred"].contains(&rcpt["state"].as_str().unwrap()),
            "{status}"
        );
    }
    let r = http().get(&url).bearer_auth(&sibling).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http()
        .get(format!("{}/NOSUCHMESSAGE", messages(&server)))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_api_serves_https_with_the_tls_certificate() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_full(
        "",
        "",
        &smarthost(&sink),
        "[api]\nlisten = \"127.0.0.1:0\"\ntls = true\n",
    )
    .await;
    let secret = create(&server, "app", &["--sender", ALICE]);
    let addr = server.api.unwrap();
    let cert = reqwest::Certificate::from_pem(common::cert_and_key().0.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .timeout(IO_TIMEOUT)
        .add_root_certificate(cert)
        .resolve(common::HOSTNAME, addr)
        .build()
        .unwrap();
    let url = format!("https://{}:{}/v1/messages", common::HOSTNAME, addr.port());
    let r = client
        .post(&url)
        .bearer_auth(&secret)
        .json(&simple(ALICE))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    sink.wait_for(1, IO_TIMEOUT).await;
    // Plain HTTP on the TLS port gets nowhere.
    let plain = http()
        .post(format!("http://{addr}/v1/messages"))
        .bearer_auth(&secret)
        .json(&simple(ALICE))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != StatusCode::ACCEPTED);
}

/// Every event the API sent, in order.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<submitd::events::DeliveryEvent>>);

impl submitd::events::EventSink for Recorded {
    fn record_blocking(&self, events: &[submitd::events::DeliveryEvent]) {
        self.0.lock().unwrap().extend_from_slice(events);
    }
}

#[tokio::test]
async fn suppressed_recipients_are_not_queued_and_are_reported() {
    use std::sync::Arc;
    let sink = Sink::start(SinkOptions::default()).await;
    let list = Arc::new(submitd::suppression::Suppressions::in_memory(
        Duration::from_secs(3600),
    ));
    let now = submitd::clock::unix_now();
    // Alice's tenant suppressed carol; another tenant's entry for dave does not apply.
    list.add(ALICE, "Carol@Example.net", "550 5.1.1 no such user", now)
        .unwrap();
    list.add("someone-else", "dave@example.net", "550 5.1.1 gone", now)
        .unwrap();
    let recorded = Arc::new(Recorded::default());
    let events = submitd::events::Events::default().with(recorded.clone());
    let (l, e) = (list.clone(), events.clone());
    let server = TestServer::start_full_with("", "", &smarthost(&sink), API, move |s| {
        s.with_suppressions(Some(l)).with_api_events(e)
    })
    .await;
    let secret = create(&server, "shop", &["--owner", ALICE, "--sender", ALICE]);
    let mut body = simple(ALICE);
    body["to"] = json!(["carol@example.net", "dave@example.net"]);
    body["metadata"] = json!({"order": "7"});
    let (status, _, got) = post_json(&server, &secret, &body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{got}");
    assert_eq!(
        got["recipients"],
        json!([
            {"address": "dave@example.net", "state": "queued"},
            {"address": "carol@example.net", "state": "suppressed"},
        ])
    );
    let received = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(received[0].rcpts, ["dave@example.net"]);
    let seen = recorded.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].kind, submitd::events::EventKind::Suppressed);
    assert_eq!(seen[0].recipient, "carol@example.net");
    assert_eq!(seen[0].queue_id, got["id"].as_str().unwrap());
    assert_eq!(seen[0].tenant, ALICE);
    assert_eq!(seen[0].metadata.get("order").map(String::as_str), Some("7"));

    // Only suppressed recipients: nothing queued, 422 naming them.
    let mut body = simple(ALICE);
    body["to"] = json!("carol@example.net");
    let got = post_json(&server, &secret, &body, &[]).await;
    assert_problem(&got, 422, "all-suppressed");
    assert_eq!(got.2["recipients"], json!(["carol@example.net"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn http_mail_is_dkim_signed_like_smtp_mail() {
    let keys = tempfile::tempdir().unwrap();
    let out = common::run::run_submitd(
        Some(keys.path()),
        &["dkim", "keygen", "example.test", "api2026", "--out", "dkim"],
        None,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let entry = &out.stdout[out.stdout.find("[[dkim]]").expect("config entry")..];
    let absolute = keys.path().join("dkim").display().to_string();
    let entry = entry.replace("\"dkim/", &format!("\"{absolute}/"));
    let sink = Sink::start(SinkOptions::default()).await;
    let server =
        TestServer::start_full("", "", &smarthost(&sink), &format!("{API}\n{entry}")).await;
    let secret = create(&server, "app", &["--sender", ALICE]);
    let (status, _, got) = post_json(&server, &secret, &simple(ALICE), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{got}");
    let received = sink.wait_for(1, IO_TIMEOUT).await;
    let text = String::from_utf8_lossy(&received[0].data).to_string();
    let head = text.split("\r\n\r\n").next().unwrap();
    let signature = head
        .split("\r\n")
        .find(|l| l.starts_with("DKIM-Signature:"))
        .unwrap_or_else(|| panic!("not signed:\n{head}"));
    assert!(signature.contains("d=example.test"), "{signature}");
}

#[tokio::test]
async fn hostile_requests_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_full(
        "max_hops = 5",
        "",
        &smarthost(&sink),
        "[api]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"1s\"\nmax_headers = 20\n",
    )
    .await;
    let addr = server.api.unwrap();
    let secret = create(&server, "app", &["--sender", ALICE]);

    // A request head that never ends: closed within the request timeout, not held open.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(IO_TIMEOUT, tcp.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "still open after {IO_TIMEOUT:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Too many header fields: 431.
    let mut request = http().post(messages(&server)).bearer_auth(&secret);
    for i in 0..40 {
        request = request.header(format!("x-filler-{i}"), "a");
    }
    let r = request.json(&simple(ALICE)).send().await;
    assert!(
        r.as_ref().map_or(true, |r| r.status()
            == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        "{r:?}"
    );

    // A mail loop (more Received fields than max_hops): 400 naming the headers.
    let mut message = String::new();
    for i in 0..8 {
        message.push_str(&format!(
            "Received: from hop{i} by hop{i}; Fri, 4 Dec 2026 10:00:00 +0000\r\n"
        ));
    }
    message.push_str(&format!(
        "From: {ALICE}\r\nTo: carol@example.net\r\n\r\nloop\r\n"
    ));
    let r = http()
        .post(messages(&server))
        .bearer_auth(&secret)
        .header("content-type", "message/rfc822")
        .body(message)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "headers", "{body}");
    // Not JSON at all, and JSON too deep: 400, never a crash; the server still serves.
    for junk in [
        "{",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ] {
        let r = http()
            .post(messages(&server))
            .bearer_auth(&secret)
            .header("content-type", "application/json")
            .body(junk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    let (status, _, got) = post_json(&server, &secret, &simple(ALICE), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{got}");
    assert_eq!(sink.wait_for(1, IO_TIMEOUT).await.len(), 1);
}

#[tokio::test]
async fn connections_are_bounded_and_a_silent_one_is_dropped() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_full(
        "",
        "",
        &smarthost(&sink),
        "[api]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1\nrequest_timeout = \"1s\"\n",
    )
    .await;
    let secret = create(&server, "app", &["--sender", ALICE]);
    // One silent connection takes the only slot...
    let silent = tokio::net::TcpStream::connect(server.api.unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    // ...so this request waits until the silent one is dropped by the request timeout.
    let (status, _, got) = post_json(&server, &secret, &simple(ALICE), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{got}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn status_after_delivery_comes_from_the_status_record() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = api_server(&sink, "").await;
    let secret = create(&server, "app", &["--sender", ALICE]);
    let (status, _, got) = post_json(&server, &secret, &simple(ALICE), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{got}");
    sink.wait_for(1, IO_TIMEOUT).await;
    server.wait_empty().await;
    let url = format!("{}/{}", messages(&server), got["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let r = http().get(&url).bearer_auth(&secret).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        if body["state"] == "sent" {
            assert_eq!(body["recipients"][0]["address"], "carol@example.net");
            assert_eq!(body["recipients"][0]["state"], "sent");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
