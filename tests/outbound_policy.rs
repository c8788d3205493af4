//! How the outbound TLS policies combine (issue 15): DANE per MX host before MTA-STS (RFC 8461
//! section 2), REQUIRETLS (RFC 8689 section 4.2.1) over DANE-verified and opportunistic MX
//! hosts, and `TLS-Required: No` (RFC 8689 section 5) on a DANE mismatch. `Delivery::attempt`
//! in MX mode against the tests' DNSSEC-signed zone, an MTA-STS policy server and receiving
//! SMTP servers on loopback; the REQUIRETLS bounce through the real binary.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::IO_TIMEOUT;
use common::dns::{DnsServer, Rr, Signing};
use common::sink::{Sink, SinkOptions};
use common::sts::{HttpsServer, TestCa, ok_text, policy};
use submitd::config::Settings;
use submitd::delivery::{Delivery, Job, Outcome};

const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const MESSAGE: &[u8] =
    b"From: alice@example.net\r\nTo: bob@dest.test\r\nSubject: hi\r\n\r\nHello.\r\n";

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// SHA-256 of the SubjectPublicKeyInfo of the first certificate in `pem` (a DANE-EE 3 1 1
/// record's data).
fn spki_sha256(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        cert.tbs_certificate.subject_pki.raw,
    )
    .as_ref()
    .to_vec()
}

/// A DANE-EE record matching the sinks' default certificate (`common::cert_and_key()`).
fn matching_tlsa() -> Rr {
    Rr::Tlsa(3, 1, 1, spki_sha256(&common::cert_and_key().0))
}

/// A DANE-EE record matching no certificate.
fn wrong_tlsa() -> Rr {
    let mut hash = spki_sha256(&common::cert_and_key().0);
    hash[0] ^= 0xff;
    Rr::Tlsa(3, 1, 1, hash)
}

/// `domain` with one MX host `mx.DOMAIN` on loopback and `tlsa` at `_PORT._tcp.mx.DOMAIN`.
fn mx_zone(domain: &str, port: u16, tlsa: Vec<Rr>) -> Vec<(&'static str, Rr)> {
    let mx = leak(format!("mx.{domain}."));
    let mut records = vec![
        (leak(format!("{domain}.")), Rr::Mx(10, mx)),
        (mx, Rr::A(LOCALHOST)),
    ];
    let at = leak(format!("_{port}._tcp.mx.{domain}."));
    records.extend(tlsa.into_iter().map(|r| (at, r)));
    records
}

/// The MTA-STS records of `domain`: the policy host on loopback and `_mta-sts` TXT.
fn sts_records(domain: &str) -> Vec<(&'static str, Rr)> {
    vec![
        (leak(format!("mta-sts.{domain}.")), Rr::A(LOCALHOST)),
        (
            leak(format!("_mta-sts.{domain}.")),
            Rr::Txt("v=STSv1; id=1;".into()),
        ),
    ]
}

/// MX mode toward `port`, DNS from `dns`, `relay.tls` default (`dane`) with the anchor in
/// `dir/anchor.key`; `extra` lines appended.
fn settings(dir: &Path, port: u16, dns: &DnsServer, extra: &str) -> Settings {
    let relay = format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\n\
         dnssec_trust_anchor = \"anchor.key\"\n{extra}",
        dns.addr
    );
    let path = common::write_config_full(dir, "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap();
    Settings::from_toml(&text, &path).unwrap()
}

/// What a job carries besides its recipient.
#[derive(Clone, Copy, Default)]
struct Flags {
    requiretls: bool,
    tls_optional: bool,
}

/// One attempt for `bob@DOMAIN`, bounded.
async fn attempt(delivery: &Delivery, domain: &str, flags: Flags) -> Outcome {
    let to = vec![format!("bob@{domain}")];
    let job = Job {
        requiretls: flags.requiretls,
        tls_optional: flags.tls_optional,
        ..common::stored::job(&to, domain, common::stored::stored(MESSAGE))
    };
    let out = tokio::time::timeout(Duration::from_secs(90), delivery.attempt(&job))
        .await
        .expect("delivery attempt hung");
    out[0].1.clone()
}

#[track_caller]
fn assert_delivered(outcome: &Outcome) {
    assert!(
        matches!(outcome, Outcome::Delivered { .. }),
        "not delivered: {outcome:?}"
    );
}

#[track_caller]
fn assert_deferred(outcome: &Outcome, reply_has: &str) {
    match outcome {
        Outcome::Deferred { reply, .. } => assert!(reply.contains(reply_has), "{reply}"),
        other => panic!("not deferred: {other:?}"),
    }
}

#[track_caller]
fn assert_failed_5_7_10(outcome: &Outcome) {
    match outcome {
        Outcome::Failed { status, reply, .. } => {
            assert_eq!(status, "5.7.10", "{reply}");
            assert!(reply.contains("REQUIRETLS"), "{reply}");
        }
        other => panic!("not failed: {other:?}"),
    }
}

fn starttls_sink(requiretls: bool) -> SinkOptions {
    SinkOptions {
        starttls: true,
        requiretls,
        ..SinkOptions::default()
    }
}

/// Give a sink time to record anything a finished attempt might still have sent.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

// ---- 1. DANE before MTA-STS ----

/// `dest.test`, signed, with TLSA `tlsa` on its MX and an MTA-STS `enforce` policy listing
/// `mx_patterns`; one attempt toward a STARTTLS sink with the default (self-signed, not
/// WebPKI-valid) certificate. The outcome, what the sink got, and the policy fetches.
async fn dane_and_sts(tlsa: Vec<Rr>, mx_patterns: &[&str]) -> (Outcome, Sink, usize) {
    dane_and_sts_with(tlsa, mx_patterns, Flags::default()).await
}

/// [`dane_and_sts`] for a job with `flags`.
async fn dane_and_sts_with(
    tlsa: Vec<Rr>,
    mx_patterns: &[&str],
    flags: Flags,
) -> (Outcome, Sink, usize) {
    let sink = Sink::start(starttls_sink(false)).await;
    let port = sink.addr.port();
    let ca = TestCa::new();
    let body = ok_text(&policy("enforce", mx_patterns, 86400));
    let https = HttpsServer::start(
        &ca.issue(&["mta-sts.dest.test"]),
        Arc::new(move |_| body.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut records = mx_zone("dest.test", port, tlsa);
    records.extend(sts_records("dest.test"));
    let dns =
        DnsServer::start_signed(records, Signing::default(), &dir.path().join("anchor.key")).await;
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let extra = format!(
        "ca_file = \"ca.pem\"\nmta_sts_port = {}\n",
        https.addr.port()
    );
    let delivery = Delivery::new(&settings(dir.path(), port, &dns, &extra)).unwrap();
    let outcome = attempt(&delivery, "dest.test", flags).await;
    settle().await;
    (outcome, sink, https.requests().len())
}

#[tokio::test]
async fn dane_wins_over_an_sts_policy_that_does_not_list_the_mx() {
    let (outcome, sink, fetches) = dane_and_sts(vec![matching_tlsa()], &["*.elsewhere.test"]).await;
    assert_eq!(fetches, 1, "the policy was fetched");
    assert_delivered(&outcome);
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "delivered without TLS");
    assert_eq!(got[0].rcpts, ["bob@dest.test"]);
}

#[tokio::test]
async fn dane_wins_over_an_sts_policy_whose_webpki_check_would_fail() {
    // The policy lists the MX, but the sink's certificate is self-signed for another name:
    // MTA-STS alone would refuse it; DANE-EE matches its key.
    let (outcome, sink, fetches) = dane_and_sts(vec![matching_tlsa()], &["mx.dest.test"]).await;
    assert_eq!(fetches, 1);
    assert_delivered(&outcome);
    assert!(sink.received()[0].tls);
}

#[tokio::test]
async fn without_tlsa_the_same_sts_policy_defers() {
    // Signed NODATA for the TLSA name: DANE does not apply, MTA-STS enforce does.
    let (outcome, sink, fetches) = dane_and_sts(Vec::new(), &["*.elsewhere.test"]).await;
    assert_eq!(fetches, 1);
    assert_deferred(&outcome, "no MX host matches");
    assert!(sink.received().is_empty());
    assert_eq!(
        sink.connections(),
        0,
        "a host outside the policy was contacted"
    );

    let (outcome, sink, _) = dane_and_sts(Vec::new(), &["mx.dest.test"]).await;
    assert_deferred(&outcome, "STARTTLS");
    assert!(
        sink.received().is_empty(),
        "sent despite a failed WebPKI check"
    );
}

// ---- 2. REQUIRETLS in MX mode ----

/// A signed `dest.test` with `tlsa` on its MX, and a Delivery with `relay.tls = "dane"`.
async fn dane_delivery(port: u16, records: Vec<(&'static str, Rr)>, signing: Signing) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start_signed(records, signing, &dir.path().join("anchor.key")).await;
    let delivery = Delivery::new(&settings(dir.path(), port, &dns, "")).unwrap();
    Fixture {
        _dir: dir,
        _dns: dns,
        delivery,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    _dns: DnsServer,
    delivery: Delivery,
}

const REQUIRETLS: Flags = Flags {
    requiretls: true,
    tls_optional: false,
};

#[tokio::test]
async fn requiretls_over_a_dane_mx_with_requiretls_is_delivered_with_the_parameter() {
    let sink = Sink::start(starttls_sink(true)).await;
    let port = sink.addr.port();
    let records = mx_zone("dest.test", port, vec![matching_tlsa()]);
    let f = dane_delivery(port, records, Signing::default()).await;
    assert_delivered(&attempt(&f.delivery, "dest.test", REQUIRETLS).await);
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert!(got[0].tls);
    assert!(
        got[0].mail_params.contains(&"REQUIRETLS".to_string()),
        "{:?}",
        got[0].mail_params
    );
}

#[tokio::test]
async fn requiretls_over_a_dane_mx_without_requiretls_fails_with_5_7_10() {
    let sink = Sink::start(starttls_sink(false)).await;
    let port = sink.addr.port();
    let records = mx_zone("dest.test", port, vec![matching_tlsa()]);
    let f = dane_delivery(port, records, Signing::default()).await;
    assert_failed_5_7_10(&attempt(&f.delivery, "dest.test", REQUIRETLS).await);
    settle().await;
    assert_eq!(sink.connections(), 1, "the DANE host was tried");
    assert_eq!(sink.dots(), 0, "message data sent");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn requiretls_to_an_insecure_domain_fails_with_5_7_10_before_any_mail_from() {
    // `plain.test.` is an unsigned child of the signed `test.`: opportunistic TLS only,
    // although its MX offers STARTTLS and REQUIRETLS.
    let sink = Sink::start(starttls_sink(true)).await;
    let port = sink.addr.port();
    let signing = Signing {
        insecure: vec![("plain.test.", mx_zone("plain.test", port, Vec::new()))],
        ..Signing::default()
    };
    let f = dane_delivery(port, Vec::new(), signing).await;
    assert_failed_5_7_10(&attempt(&f.delivery, "plain.test", REQUIRETLS).await);
    settle().await;
    assert_eq!(sink.mails(), 0, "MAIL FROM sent over opportunistic TLS");
    assert!(sink.received().is_empty());
    // The same route takes a message without REQUIRETLS.
    assert_delivered(&attempt(&f.delivery, "plain.test", Flags::default()).await);
}

/// The secret line of the bounced message's body: a REQUIRETLS report returns headers only.
const BODY_LINE: &str = "The secret body line 5e1d07.";

// The sink and the DNS server run beside the blocking log waits of the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_bounce_reaches_the_senders_dane_mx_headers_only() {
    use common::binary::Binary;
    use common::{ALICE, ALICE_PASSWORD};
    // One sink is the MX of both domains: the recipient's `plain.test` (insecure, so the
    // message is refused before any connection) and the sender's `example.test` (DANE-EE,
    // REQUIRETLS offered), where the report goes.
    let sink = Sink::start(SinkOptions {
        dsn: true,
        ..starttls_sink(true)
    })
    .await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchor.key");
    let signing = Signing {
        insecure: vec![("plain.test.", mx_zone("plain.test", port, Vec::new()))],
        ..Signing::default()
    };
    let records = mx_zone("example.test", port, vec![matching_tlsa()]);
    let dns = DnsServer::start_signed(records, signing, &anchor).await;
    let relay = format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"10s\"\n\
         dnssec_trust_anchor = \"{}\"\n",
        dns.addr,
        anchor.display()
    );
    let config =
        common::write_config_full(dir.path(), "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let server = Binary::start(&config);

    let mut c = common::login_as(server.tls, ALICE, ALICE_PASSWORD, "235").await;
    c.cmd(&format!("MAIL FROM:<{ALICE}> REQUIRETLS RET=FULL"), "250")
        .await;
    c.cmd("RCPT TO:<bob@plain.test>", "250").await;
    c.cmd("DATA", "354").await;
    let msg =
        format!("From: {ALICE}\r\nTo: bob@plain.test\r\nSubject: rt\r\n\r\n{BODY_LINE}\r\n.\r\n");
    c.send(msg.as_bytes()).await;
    let id = c.expect("250 2.0.0 Ok: queued as ").await;
    let id = id.trim().rsplit(' ').next().unwrap().to_string();

    let got = sink.wait_for(1, Duration::from_secs(30)).await;
    let report = &got[0];
    assert!(
        report.from.is_empty(),
        "not a report: from {:?}",
        report.from
    );
    assert_eq!(report.rcpts, [ALICE]);
    assert!(report.tls);
    assert!(
        report.mail_params.contains(&"REQUIRETLS".to_string()),
        "{:?}",
        report.mail_params
    );
    let text = String::from_utf8_lossy(&report.data);
    assert!(text.contains("Status: 5.7.10"), "{text}");
    assert!(text.contains("text/rfc822-headers"), "{text}");
    assert!(text.contains("Subject: rt"), "{text}");
    assert!(!text.contains(BODY_LINE), "the body came back: {text}");
    settle().await;
    assert_eq!(sink.mails(), 1, "only the report's MAIL FROM");
    assert_eq!(sink.received().len(), 1);
    let line = server.wait_for(|l| l.contains(&id) && l.contains("bounced"));
    assert!(line.contains("5.7.10"), "{line}");
}

// ---- 3. TLS-Required: No on a DANE mismatch ----

#[tokio::test]
async fn tls_required_no_delivers_despite_a_dane_mismatch_and_without_it_defers() {
    let sink = Sink::start(starttls_sink(false)).await;
    let port = sink.addr.port();
    let records = mx_zone("dest.test", port, vec![wrong_tlsa()]);
    let f = dane_delivery(port, records, Signing::default()).await;
    let without = attempt(&f.delivery, "dest.test", Flags::default()).await;
    assert_deferred(&without, "STARTTLS");
    settle().await;
    assert!(sink.received().is_empty(), "sent to a mismatched DANE host");

    let optional = Flags {
        requiretls: false,
        tls_optional: true,
    };
    assert_delivered(&attempt(&f.delivery, "dest.test", optional).await);
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "opportunistic TLS was offered and not used");
    assert_eq!(got[0].rcpts, ["bob@dest.test"]);
}

/// The same through the real binary: the `TLS-Required: No` header makes the message
/// `tls_optional`; the one without it stays queued, deferred.
#[tokio::test]
async fn server_delivers_only_the_tls_required_no_message_on_a_dane_mismatch() {
    use common::{ALICE, TestServer};
    let sink = Sink::start(starttls_sink(false)).await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchor.key");
    let records = mx_zone("dest.test", port, vec![wrong_tlsa()]);
    let dns = DnsServer::start_signed(records, Signing::default(), &anchor).await;
    let relay = format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\n\
         dnssec_trust_anchor = \"{}\"\n",
        dns.addr,
        anchor.display()
    );
    let server = TestServer::start_relay("retry = [\"1h\"]", &relay).await;
    let mut ids = Vec::new();
    for (i, header) in ["TLS-Required: No\r\n", ""].iter().enumerate() {
        let body =
            format!("From: {ALICE}\r\nTo: bob{i}@dest.test\r\n{header}Subject: t{i}\r\n\r\nhi\r\n");
        ids.push(server.submit(&[&format!("bob{i}@dest.test")], &body).await);
    }
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got[0].rcpts, ["bob0@dest.test"]);
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let q = server.queued();
        let r = &q
            .iter()
            .find(|(e, _)| e["id"] == ids[1].as_str())
            .unwrap()
            .0["recipients"][0];
        if q.len() == 1 && r["state"] == "deferred" {
            let reply = r["last_reply"].as_str().unwrap();
            assert!(reply.contains("STARTTLS"), "{reply}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never deferred: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sink.received().len(),
        1,
        "the message without the header was sent"
    );
}

#[tokio::test]
async fn a_connection_made_for_tls_required_no_is_not_reused_for_other_messages() {
    // The TLS-Required: No message opens a connection with unchecked TLS to a host whose
    // DANE records do not match; the next message to the same domain must not ride on it.
    let sink = Sink::start(starttls_sink(false)).await;
    let port = sink.addr.port();
    let records = mx_zone("dest.test", port, vec![wrong_tlsa()]);
    let f = dane_delivery(port, records, Signing::default()).await;
    let optional = Flags {
        requiretls: false,
        tls_optional: true,
    };
    assert_delivered(&attempt(&f.delivery, "dest.test", optional).await);
    sink.wait_for(1, IO_TIMEOUT).await;
    let without = attempt(&f.delivery, "dest.test", Flags::default()).await;
    assert_deferred(&without, "STARTTLS");
    settle().await;
    assert_eq!(
        sink.received().len(),
        1,
        "the second message went to the mismatched host"
    );
}

/// Two sinks offering STARTTLS and REQUIRETLS on the same port, on 127.0.0.1 and 127.0.0.2
/// (tried a bounded number of times: the port may be taken on 127.0.0.2).
async fn two_sinks_on_one_port() -> (Sink, Sink) {
    for _ in 0..20 {
        let first = Sink::start(starttls_sink(true)).await;
        let second = std::net::SocketAddr::from(([127, 0, 0, 2], first.addr.port()));
        if std::net::TcpListener::bind(second).is_ok() {
            let second = Sink::start(SinkOptions {
                bind: Some(second),
                ..starttls_sink(true)
            })
            .await;
            return (first, second);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[tokio::test]
async fn requiretls_does_not_fail_on_a_cached_unverified_connection() {
    // `mx1` (preferred, no TLSA: opportunistic) and `mx2` (DANE-EE). A plain message goes
    // to mx1 and its connection is kept; a REQUIRETLS message right after must go to mx2,
    // not fail with 5.7.10 on the cached mx1 connection.
    let (mx1, mx2) = two_sinks_on_one_port().await;
    let port = mx1.addr.port();
    let records = vec![
        ("dest.test.", Rr::Mx(10, "mx1.dest.test.")),
        ("dest.test.", Rr::Mx(20, "mx2.dest.test.")),
        ("mx1.dest.test.", Rr::A(LOCALHOST)),
        ("mx2.dest.test.", Rr::A(Ipv4Addr::new(127, 0, 0, 2))),
        (
            leak(format!("_{port}._tcp.mx2.dest.test.")),
            matching_tlsa(),
        ),
    ];
    let f = dane_delivery(port, records, Signing::default()).await;
    assert_delivered(&attempt(&f.delivery, "dest.test", Flags::default()).await);
    mx1.wait_for(1, IO_TIMEOUT).await;
    assert_delivered(&attempt(&f.delivery, "dest.test", REQUIRETLS).await);
    let got = mx2.wait_for(1, IO_TIMEOUT).await;
    assert!(
        got[0].mail_params.contains(&"REQUIRETLS".to_string()),
        "{:?}",
        got[0].mail_params
    );
    assert_eq!(mx1.received().len(), 1);
}

#[tokio::test]
async fn tls_required_no_ignores_an_sts_policy_that_does_not_list_the_mx() {
    // RFC 8689 section 5: with `TLS-Required: No` the recipient domain's MTA-STS policy is
    // ignored, its MX list included.
    let optional = Flags {
        requiretls: false,
        tls_optional: true,
    };
    let (outcome, sink, _) = dane_and_sts_with(Vec::new(), &["*.elsewhere.test"], optional).await;
    assert_delivered(&outcome);
    assert_eq!(sink.received()[0].rcpts, ["bob@dest.test"]);
    // And one that lists it, with a certificate WebPKI refuses.
    let (outcome, sink, _) = dane_and_sts_with(Vec::new(), &["mx.dest.test"], optional).await;
    assert_delivered(&outcome);
    assert!(sink.received()[0].tls);
}
