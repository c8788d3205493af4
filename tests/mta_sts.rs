//! MTA-STS (RFC 8461) end to end: `submitd::delivery::Delivery` against the tests' DNS server
//! (TXT `_mta-sts`, MX, A), an HTTPS policy server and receiving SMTP servers on loopback, all
//! with certificates from a private CA given as `relay.ca_file`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::dns::{DnsServer, Rr};
use common::sink::{Sink, SinkOptions};
use common::sts::{HttpsServer, Responder, TestCa, ok_text, policy};
use submitd::config::Settings;
use submitd::delivery::{Delivery, Outcome};

const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const DOMAIN: &str = "sts.test";
const MX: &str = "mx.sts.test";
const MESSAGE: &[u8] =
    b"From: alice@example.net\r\nTo: bob@sts.test\r\nSubject: hi\r\n\r\nHello.\r\n";

/// The zone of [`DOMAIN`]: one MX, the policy host, and the `_mta-sts` record with `id`.
async fn dns(id: &str) -> DnsServer {
    DnsServer::start(vec![
        ("sts.test.", Rr::Mx(10, "mx.sts.test.")),
        ("mx.sts.test.", Rr::A(LOCALHOST)),
        ("mta-sts.sts.test.", Rr::A(LOCALHOST)),
        ("_mta-sts.sts.test.", Rr::Txt(format!("v=STSv1; id={id};"))),
        ("_mta-sts.sts.test.", Rr::Txt("v=spf1 -all".into())),
    ])
    .await
}

/// Settings in `dir` (the queue in `dir/queue`), MX mode toward `sink_port`, policies from
/// `https_port`, the CA trusted through `relay.ca_file`.
fn settings(dir: &Path, ca: &TestCa, dns: &DnsServer, sink_port: u16, https_port: u16) -> Settings {
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let relay = format!(
        "mode = \"mx\"\nport = {sink_port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\n\
         tls = \"opportunistic\"\nca_file = \"ca.pem\"\nmta_sts_port = {https_port}\n",
        dns.addr
    );
    let path = common::write_config_full(dir, "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap();
    Settings::from_toml(&text, &path).unwrap()
}

fn responder(body: Vec<u8>) -> Responder {
    Arc::new(move |_| body.clone())
}

/// A policy server for `mta-sts.sts.test` answering `response` to every request.
async fn policy_server(ca: &TestCa, response: Vec<u8>) -> HttpsServer {
    HttpsServer::start(&ca.issue(&["mta-sts.sts.test"]), responder(response)).await
}

/// A receiving server with STARTTLS (when `cert` is given) presenting `cert`.
async fn mx_sink(cert: Option<(String, String)>) -> Sink {
    Sink::start(SinkOptions {
        starttls: cert.is_some(),
        cert,
        ..SinkOptions::default()
    })
    .await
}

async fn attempt(delivery: &Delivery) -> Outcome {
    let rcpts = vec!["bob@sts.test".to_string()];
    let job = common::stored::job(&rcpts, DOMAIN, common::stored::stored(MESSAGE));
    let mut out = tokio::time::timeout(Duration::from_secs(90), delivery.attempt(&job))
        .await
        .expect("delivery attempt hung");
    assert_eq!(out.len(), 1);
    out.remove(0).1
}

fn assert_deferred(outcome: &Outcome, needle: &str) {
    match outcome {
        Outcome::Deferred { reply, .. } => {
            assert!(reply.contains(needle), "reply {reply:?} lacks {needle:?}")
        }
        other => panic!("expected Deferred ({needle}), got {other:?}"),
    }
}

fn assert_delivered(outcome: &Outcome) {
    assert!(
        matches!(outcome, Outcome::Delivered { .. }),
        "expected Delivered, got {outcome:?}"
    );
}

/// One attempt toward a sink under a policy: the outcome and what the sink received.
async fn under_policy(
    mode: &str,
    mx: &[&str],
    sink_cert: Option<(String, String)>,
    ca: &TestCa,
) -> (Outcome, Vec<common::sink::Received>) {
    let dns = dns("1").await;
    let https = policy_server(ca, ok_text(&policy(mode, mx, 86400))).await;
    let sink = mx_sink(sink_cert).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(
        dir.path(),
        ca,
        &dns,
        sink.addr.port(),
        https.addr.port(),
    ))
    .unwrap();
    let outcome = attempt(&delivery).await;
    assert_eq!(https.requests().len(), 1, "one policy fetch");
    let head = &https.requests()[0].head;
    assert!(
        head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("host: mta-sts.sts.test"),
        "{head}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    (outcome, sink.received())
}

#[tokio::test]
async fn enforce_with_a_verified_certificate_delivers_over_tls() {
    let ca = TestCa::new();
    let (outcome, got) = under_policy("enforce", &[MX], Some(ca.issue(&[MX])), &ca).await;
    assert_delivered(&outcome);
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "delivered over TLS");
}

#[tokio::test]
async fn enforce_with_a_wrong_certificate_defers() {
    let ca = TestCa::new();
    let wrong = ca.issue(&["other.test"]);
    let (outcome, got) = under_policy("enforce", &[MX], Some(wrong), &ca).await;
    assert_deferred(&outcome, "STARTTLS");
    assert!(got.is_empty(), "nothing may be sent: {got:?}");
    // An untrusted issuer is refused as well.
    let (outcome, got) = under_policy(
        "enforce",
        &[MX],
        Some(submitd::tls::self_signed(MX).unwrap()),
        &ca,
    )
    .await;
    assert_deferred(&outcome, "STARTTLS");
    assert!(got.is_empty());
}

#[tokio::test]
async fn enforce_without_starttls_defers_never_clear_text() {
    let ca = TestCa::new();
    let (outcome, got) = under_policy("enforce", &[MX], None, &ca).await;
    assert_deferred(&outcome, "TLS required but not offered");
    assert!(got.is_empty(), "clear text sent: {got:?}");
}

#[tokio::test]
async fn enforce_with_no_matching_mx_defers() {
    let ca = TestCa::new();
    let (outcome, got) =
        under_policy("enforce", &["*.elsewhere.test"], Some(ca.issue(&[MX])), &ca).await;
    assert_deferred(&outcome, "no MX host matches");
    assert!(got.is_empty());
}

#[tokio::test]
async fn wildcard_pattern_matches_the_mx() {
    let ca = TestCa::new();
    let (outcome, got) = under_policy("enforce", &["*.sts.test"], Some(ca.issue(&[MX])), &ca).await;
    assert_delivered(&outcome);
    assert!(got[0].tls);
}

#[tokio::test]
async fn testing_mode_delivers_despite_a_wrong_certificate() {
    let ca = TestCa::new();
    let wrong = ca.issue(&["other.test"]);
    let (outcome, got) = under_policy("testing", &[MX], Some(wrong), &ca).await;
    assert_delivered(&outcome);
    assert_eq!(got.len(), 1);
    let (outcome, _) = under_policy("testing", &["*.elsewhere.test"], None, &ca).await;
    assert_delivered(&outcome);
}

#[tokio::test]
async fn mode_none_is_no_policy() {
    let ca = TestCa::new();
    let (outcome, got) = under_policy("none", &[], None, &ca).await;
    assert_delivered(&outcome);
    assert!(!got[0].tls);
}

/// A fetch that fails in a way the policy server controls: no policy is applied (the MX
/// without STARTTLS gets the message in clear, as with `relay.tls = "opportunistic"`), and
/// the failure is counted for TLS-RPT as `result_type`.
async fn failed_fetch_applies_no_policy(response: Vec<u8>, result_type: &str) {
    let ca = TestCa::new();
    let dns = dns("1").await;
    let https = policy_server(&ca, response).await;
    let sink = mx_sink(None).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), &ca, &dns, sink.addr.port(), https.addr.port());
    let delivery = Delivery::new(&s).unwrap();
    assert_delivered(&attempt(&delivery).await);
    assert_eq!(https.requests().len(), 1, "no redirect followed");
    assert!(
        !dir.path().join("queue/mta-sts/sts.test").exists(),
        "nothing cached"
    );
    assert_counted(dir.path(), result_type);
}

/// The TLS-RPT counts on disk hold one failure of `result_type` for sts.test (written in the
/// background after the attempt: waited for, bounded).
fn assert_counted(dir: &Path, result_type: &str) {
    let path = dir.join("queue/tlsrpt/state.json");
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    while !std::fs::read_to_string(&path).is_ok_and(|t| t.contains(result_type))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let counts: serde_json::Value = serde_json::from_str(&text).unwrap();
    // One entry per policy the domain was counted under; here only its MTA-STS one.
    let domain = &counts["domains"]["sts.test"][0];
    assert_eq!(domain["details"][0]["result_type"], result_type, "{text}");
    assert_eq!(domain["failure"], 1, "{text}");
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let redirect = b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://mta-sts.sts.test/other\r\nContent-Length: 0\r\n\r\n".to_vec();
    failed_fetch_applies_no_policy(redirect, "sts-policy-fetch-error").await;
}

#[tokio::test]
async fn an_oversized_policy_is_refused() {
    let mut body = policy("enforce", &[MX], 86400);
    body.push_str(&"x: y\r\n".repeat(64 * 1024 / 6 + 1));
    assert!(body.len() > 64 * 1024);
    failed_fetch_applies_no_policy(ok_text(&body), "sts-policy-fetch-error").await;
}

#[tokio::test]
async fn a_policy_not_served_as_text_plain_is_refused() {
    let body = policy("enforce", &[MX], 86400);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    failed_fetch_applies_no_policy(response.into_bytes(), "sts-policy-fetch-error").await;
}

#[tokio::test]
async fn oversized_response_headers_are_refused() {
    let body = policy("enforce", &[MX], 86400);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Junk: {}\r\nContent-Length: {}\r\n\r\n{body}",
        "j".repeat(64 * 1024),
        body.len()
    );
    failed_fetch_applies_no_policy(response.into_bytes(), "sts-policy-fetch-error").await;
}

#[tokio::test]
async fn mta_sts_off_fetches_nothing() {
    let ca = TestCa::new();
    let dns = dns("1").await;
    let https = policy_server(&ca, ok_text(&policy("enforce", &[MX], 86400))).await;
    let sink = mx_sink(None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), &ca, &dns, sink.addr.port(), https.addr.port());
    s.relay.mta_sts = false;
    let delivery = Delivery::new(&s).unwrap();
    assert_delivered(&attempt(&delivery).await);
    assert!(https.requests().is_empty());
}

#[tokio::test]
async fn an_invalid_policy_is_refused() {
    failed_fetch_applies_no_policy(
        ok_text("version: STSv1\r\nmode: enforce\r\n"),
        "sts-policy-invalid",
    )
    .await;
}

#[tokio::test]
async fn a_policy_server_with_an_untrusted_certificate_is_refused() {
    let ca = TestCa::new();
    let dns = dns("1").await;
    let other_ca = TestCa::new();
    let https = HttpsServer::start(
        &other_ca.issue(&["mta-sts.sts.test"]),
        responder(ok_text(&policy("enforce", &[MX], 86400))),
    )
    .await;
    let sink = mx_sink(None).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), &ca, &dns, sink.addr.port(), https.addr.port());
    let delivery = Delivery::new(&s).unwrap();
    assert_delivered(&attempt(&delivery).await);
    assert_eq!(sink.received().len(), 1);
    assert_counted(dir.path(), "sts-webpki-invalid");
}

/// The policy survives a restart (kept in `queue.dir`) and stays in force while the policy
/// server is down, even when the TXT id changed (RFC 8461 section 5.1).
#[tokio::test]
async fn cached_policy_survives_a_restart_and_a_failing_policy_server() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    {
        let dns = dns("1").await;
        let https = policy_server(&ca, ok_text(&policy("enforce", &[MX], 86400))).await;
        let sink = mx_sink(Some(ca.issue(&[MX]))).await;
        let s = settings(dir.path(), &ca, &dns, sink.addr.port(), https.addr.port());
        let delivery = Delivery::new(&s).unwrap();
        assert_delivered(&attempt(&delivery).await);
        // Same id: the cached policy, no second fetch.
        assert_delivered(&attempt(&delivery).await);
        assert_eq!(https.requests().len(), 1);
    }
    let stored = std::fs::read_to_string(dir.path().join("queue/mta-sts/sts.test")).unwrap();
    assert!(stored.contains("mode: enforce"), "{stored}");

    // "Restart": a new Delivery on the same queue.dir; a new id, the policy server gone
    // (nothing listens on its port), and an MX without STARTTLS.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dns = dns("2").await;
    let sink = mx_sink(None).await;
    let s = settings(dir.path(), &ca, &dns, sink.addr.port(), gone);
    let delivery = Delivery::new(&s).unwrap();
    assert_deferred(&attempt(&delivery).await, "TLS required but not offered");
    // And a redirect instead of a policy: still the cached policy.
    let https = HttpsServer::start(
        &ca.issue(&["mta-sts.sts.test"]),
        responder(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n".to_vec()),
    )
    .await;
    let s = settings(dir.path(), &ca, &dns, sink.addr.port(), https.addr.port());
    let delivery = Delivery::new(&s).unwrap();
    assert_deferred(&attempt(&delivery).await, "TLS required but not offered");
    assert_eq!(https.requests().len(), 1);
    assert!(
        sink.received().is_empty(),
        "clear text sent under a cached policy"
    );
}

// ---- TLS-RPT (RFC 8460) through the real binary and its control socket ----

/// The binary in MX mode in `dir`: DNS `dns`, MX on `mx_port`, policies from `https_port`.
fn binary_config(
    dir: &Path,
    ca: &TestCa,
    dns: &DnsServer,
    mx_port: u16,
    https_port: u16,
) -> std::path::PathBuf {
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let relay = format!(
        "mode = \"mx\"\nport = {mx_port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\n\
         tls = \"opportunistic\"\nca_file = \"ca.pem\"\nmta_sts_port = {https_port}\n",
        dns.addr
    );
    let path = common::write_config_full(dir, "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[tls.reporting]\nfrom = \"tlsrpt@mail.example.test\"\n");
    std::fs::write(&path, text).unwrap();
    path
}

/// Submit one message to bob@sts.test through the binary.
async fn submit(server: &common::binary::Binary) {
    let mut c = common::login_as(server.tls, common::ALICE, common::ALICE_PASSWORD, "235").await;
    let reply = common::send_message(&mut c, common::ALICE, &["bob@sts.test"]).await;
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT", "221").await;
}

/// Wait (bounded) until the TLS-RPT counts on disk mention `needle`.
async fn wait_counted(dir: &Path, needle: &str, server: &common::binary::Binary) {
    let path = dir.join("queue/tlsrpt/state.json");
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    loop {
        if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(needle)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle} never counted; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `submitd tls-report` (the control socket's `tls-report`): what it prints.
async fn tls_report(dir: &Path) -> String {
    let config = dir.join("submitd.toml");
    let out = tokio::task::spawn_blocking(move || {
        common::run::run_submitd(
            None,
            &["tls-report", "--config", config.to_str().unwrap()],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
}

fn gunzip_json(gz: &[u8]) -> serde_json::Value {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The gzipped attachment of a report message, decoded.
fn report_attachment(message: &[u8]) -> serde_json::Value {
    use base64::Engine;
    let text = String::from_utf8_lossy(message);
    let (_, part) = text
        .split_once("Content-Type: application/tlsrpt+gzip\r\n")
        .expect("no tlsrpt+gzip part");
    let (_, body) = part.split_once("\r\n\r\n").unwrap();
    let b64: String = body
        .split("\r\n--")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let gz = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    gunzip_json(&gz)
}

/// An MX sink on 127.0.0.1 presenting `cert`, and a plain report sink on 127.0.0.2 on the
/// same port (tried a bounded number of times: the port may be taken on 127.0.0.2).
async fn sinks_on_one_port(cert: Option<(String, String)>) -> (Sink, Sink) {
    for _ in 0..20 {
        let mx = mx_sink(cert.clone()).await;
        let second = SocketAddr::from(([127, 0, 0, 2], mx.addr.port()));
        if std::net::TcpListener::bind(second).is_ok() {
            let reports = Sink::start(SinkOptions {
                bind: Some(second),
                ..SinkOptions::default()
            })
            .await;
            return (mx, reports);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_failure_is_reported_by_mail_after_tls_report() {
    let ca = TestCa::new();
    // The policy domain's MX (wrong certificate) on 127.0.0.1, the report domain's MX on
    // 127.0.0.2, the same port (relay.port is one for all).
    let (mx, reports) = sinks_on_one_port(Some(ca.issue(&["other.test"]))).await;
    let port = mx.addr.port();
    let dns = DnsServer::start(vec![
        ("sts.test.", Rr::Mx(10, "mx.sts.test.")),
        ("mx.sts.test.", Rr::A(LOCALHOST)),
        ("mta-sts.sts.test.", Rr::A(LOCALHOST)),
        ("_mta-sts.sts.test.", Rr::Txt("v=STSv1; id=r1;".into())),
        (
            "_smtp._tls.sts.test.",
            Rr::Txt("v=TLSRPTv1; rua=mailto:tlsrpt@rpt.test".into()),
        ),
        ("rpt.test.", Rr::Mx(10, "mx.rpt.test.")),
        ("mx.rpt.test.", Rr::A(Ipv4Addr::new(127, 0, 0, 2))),
    ])
    .await;
    let https = policy_server(&ca, ok_text(&policy("enforce", &[MX], 86400))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), &ca, &dns, port, https.addr.port());
    let server = common::binary::Binary::start(&config);
    submit(&server).await;
    wait_counted(dir.path(), "certificate-host-mismatch", &server).await;
    assert!(mx.received().is_empty(), "delivered despite the policy");

    let reply = tls_report(dir.path()).await;
    assert!(reply.contains("domains=1 mailed=1"), "{reply}");
    let got = reports.wait_for(1, common::IO_TIMEOUT).await;
    assert_eq!(got[0].from, "tlsrpt@mail.example.test");
    assert_eq!(got[0].rcpts, ["tlsrpt@rpt.test"]);
    let text = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        text.contains("\r\nTLS-Report-Domain: sts.test\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nTLS-Report-Submitter: mail.example.test\r\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "\r\nSubject: Report Domain: sts.test Submitter: mail.example.test Report-ID: <"
        ),
        "{text}"
    );
    assert!(
        text.contains("multipart/report; report-type=\"tlsrpt\""),
        "{text}"
    );
    let report = report_attachment(&got[0].data);
    assert_eq!(report["organization-name"], "mail.example.test");
    assert_eq!(report["contact-info"], "tlsrpt@mail.example.test");
    let p = &report["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], "sts.test");
    assert_eq!(p["policy"]["mx-host"][0], MX);
    assert!(
        p["policy"]["policy-string"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("mode: enforce")),
        "{p}"
    );
    assert_eq!(p["summary"]["total-successful-session-count"], 0);
    assert!(
        p["summary"]["total-failure-session-count"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let d = &p["failure-details"][0];
    assert_eq!(d["result-type"], "certificate-host-mismatch", "{p}");
    assert_eq!(d["receiving-mx-hostname"], MX);

    // Counted once: a second report has nothing to say.
    let reply = tls_report(dir.path()).await;
    assert!(reply.contains("domains=0"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn testing_failure_is_delivered_and_posted_to_an_https_rua() {
    let ca = TestCa::new();
    let mx = mx_sink(Some(submitd::tls::self_signed(MX).unwrap())).await;
    let collector = HttpsServer::start(
        &ca.issue(&["rpt.sts.test"]),
        responder(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n".to_vec()),
    )
    .await;
    let rua = format!(
        "v=TLSRPTv1; rua=https://rpt.sts.test:{}/v1/tlsrpt",
        collector.addr.port()
    );
    let dns = DnsServer::start(vec![
        ("sts.test.", Rr::Mx(10, "mx.sts.test.")),
        ("mx.sts.test.", Rr::A(LOCALHOST)),
        ("mta-sts.sts.test.", Rr::A(LOCALHOST)),
        ("rpt.sts.test.", Rr::A(LOCALHOST)),
        ("_mta-sts.sts.test.", Rr::Txt("v=STSv1; id=t1;".into())),
        ("_smtp._tls.sts.test.", Rr::Txt(rua)),
    ])
    .await;
    let https = policy_server(&ca, ok_text(&policy("testing", &[MX], 86400))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), &ca, &dns, mx.addr.port(), https.addr.port());
    let server = common::binary::Binary::start(&config);
    submit(&server).await;
    let got = mx.wait_for(1, common::IO_TIMEOUT).await;
    assert!(got[0].tls, "testing mode still uses STARTTLS");
    wait_counted(dir.path(), "certificate-not-trusted", &server).await;

    let reply = tls_report(dir.path()).await;
    assert!(reply.contains("domains=1 mailed=0 posted=1"), "{reply}");
    let posts = collector.wait_for(1, common::IO_TIMEOUT).await;
    let head = posts[0].head.to_ascii_lowercase();
    assert!(head.starts_with("post /v1/tlsrpt http/1.1\r\n"), "{head}");
    assert!(
        head.contains("content-type: application/tlsrpt+gzip"),
        "{head}"
    );
    let report = gunzip_json(&posts[0].body);
    let p = &report["policies"][0];
    assert!(
        p["policy"]["policy-string"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("mode: testing")),
        "{p}"
    );
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{p}");
    assert_eq!(
        p["failure-details"][0]["result-type"],
        "certificate-not-trusted"
    );
}

/// A domain with a DANE MX host (its TLSA record matching no certificate) and an MTA-STS
/// `enforce` policy naming only its other MX: the DANE host fails, the other takes the
/// message under the policy, and TLS-RPT counts each under its own policy (RFC 8460 section
/// 4.4): `tlsa` for the DANE host, `sts` for the other (the DANE host outside the policy's
/// `mx` patterns is no MTA-STS failure).
#[tokio::test]
async fn dane_and_mta_sts_are_counted_under_their_own_policies() {
    use common::dns::Signing;
    use submitd::delivery::tlsrpt::report;
    let ca = TestCa::new();
    // The DANE host on 127.0.0.1, the MTA-STS one on 127.0.0.2 (an address is tried once per
    // attempt), the same port (relay.port is one for all).
    let cert = ca.issue(&["mx2.sts.test"]);
    let (_dane_mx, sink) = 'found: {
        for _ in 0..20 {
            let first = mx_sink(Some(cert.clone())).await;
            let second = SocketAddr::from(([127, 0, 0, 2], first.addr.port()));
            if std::net::TcpListener::bind(second).is_ok() {
                let sink = Sink::start(SinkOptions {
                    bind: Some(second),
                    starttls: true,
                    cert: Some(cert.clone()),
                    ..SinkOptions::default()
                })
                .await;
                break 'found (first, sink);
            }
        }
        panic!("no port free on both 127.0.0.1 and 127.0.0.2");
    };
    let port = sink.addr.port();
    let tlsa_at: &'static str = Box::leak(format!("_{port}._tcp.mx.sts.test.").into_boxed_str());
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchor.key");
    let dns = DnsServer::start_signed(
        vec![
            ("sts.test.", Rr::Mx(10, "mx.sts.test.")),
            ("sts.test.", Rr::Mx(20, "mx2.sts.test.")),
            ("mx.sts.test.", Rr::A(LOCALHOST)),
            ("mx2.sts.test.", Rr::A(Ipv4Addr::new(127, 0, 0, 2))),
            (tlsa_at, Rr::Tlsa(3, 1, 1, vec![1; 32])),
            ("mta-sts.sts.test.", Rr::A(LOCALHOST)),
            ("_mta-sts.sts.test.", Rr::Txt("v=STSv1; id=1;".into())),
        ],
        Signing::default(),
        &anchor,
    )
    .await;
    let https = policy_server(&ca, ok_text(&policy("enforce", &["mx2.sts.test"], 86400))).await;
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let relay = format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\ntls = \"dane\"\n\
         dnssec_trust_anchor = \"{}\"\nca_file = \"ca.pem\"\nmta_sts_port = {}\n",
        dns.addr,
        anchor.display(),
        https.addr.port()
    );
    let path = common::write_config_full(dir.path(), "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap();
    let delivery = Delivery::new(&Settings::from_toml(&text, &path).unwrap()).unwrap();
    match attempt(&delivery).await {
        Outcome::Delivered { host, .. } => assert!(host.starts_with("mx2.sts.test["), "{host}"),
        other => panic!("not delivered: {other:?}"),
    }
    assert_eq!(sink.wait_for(1, common::IO_TIMEOUT).await.len(), 1);
    let (recorder, _, _) = delivery.tls_reporting().unwrap();
    let counts = recorder.take(2_000_000_000).await;
    let meta = report::Meta {
        submitter: "mail.example.test",
        contact: "tlsrpt@mail.example.test",
        start: counts.since,
        end: 2_000_000_000,
        report_id: "r@mail.example.test",
    };
    let json = report::json(&meta, DOMAIN, &counts.domains[DOMAIN]);
    let policies = json["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2, "{json}");
    let of = |t: &str| {
        policies
            .iter()
            .find(|p| p["policy"]["policy-type"] == t)
            .unwrap_or_else(|| panic!("no {t} policy: {json}"))
    };
    let sts = of("sts");
    assert_eq!(sts["summary"]["total-successful-session-count"], 1, "{sts}");
    assert_eq!(sts["summary"]["total-failure-session-count"], 0, "{sts}");
    let tlsa = of("tlsa");
    assert_eq!(
        tlsa["policy"]["mx-host"],
        serde_json::json!(["mx.sts.test"])
    );
    assert_eq!(
        tlsa["policy"]["policy-string"],
        serde_json::json!([format!("3 1 1 {}", "01".repeat(32))])
    );
    assert_eq!(tlsa["summary"]["total-failure-session-count"], 1, "{tlsa}");
    assert_eq!(
        tlsa["failure-details"][0]["result-type"],
        "certificate-not-trusted"
    );
}
