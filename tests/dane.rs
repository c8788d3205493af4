//! DANE (RFC 7672) and `relay.tls = "verify"` end to end: `submitd::delivery::Delivery` in MX
//! mode against the tests' own DNSSEC-signed zone (`common::dns::DnsServer::start_signed`, its
//! trust anchor in `relay.dnssec_trust_anchor`) and receiving SMTP servers on loopback.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::IO_TIMEOUT;
use common::dns::{DnsServer, Rr, Signing};
use common::sink::{Sink, SinkOptions};
use submitd::config::Settings;
use submitd::delivery::{Delivery, Job, Outcome};

const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const MESSAGE: &[u8] =
    b"From: alice@example.net\r\nTo: bob@dane.test\r\nSubject: hi\r\n\r\nHello.\r\n";

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn settings(dir: &Path, relay: &str) -> Settings {
    let path = common::write_config_full(dir, "", "", relay, "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap();
    Settings::from_toml(&text, &path).unwrap()
}

/// MX-mode lines: deliver on `port`, ask `dns`, trust the anchor in `anchor.key`.
fn relay(port: u16, dns: &DnsServer, tls: &str) -> String {
    format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\ntls = \"{tls}\"\n\
         dnssec_trust_anchor = \"anchor.key\"\n",
        dns.addr
    )
}

fn job<'a>(recipients: &'a [String], domain: &'a str) -> Job<'a> {
    common::stored::job(recipients, domain, common::stored::stored(MESSAGE))
}

/// One attempt for `bob@DOMAIN`, bounded.
async fn attempt(delivery: &Delivery, domain: &str) -> Outcome {
    let to = vec![format!("bob@{domain}")];
    let out = tokio::time::timeout(Duration::from_secs(60), delivery.attempt(&job(&to, domain)))
        .await
        .expect("delivery attempt hung");
    out[0].1.clone()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// SHA-256 of the SubjectPublicKeyInfo of the first certificate in `pem`.
fn spki_sha256(pem: &str) -> Vec<u8> {
    let der = der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    sha256(cert.tbs_certificate.subject_pki.raw)
}

/// The records of a DANE domain `domain` whose one MX host `mx.DOMAIN` has `tlsa` at
/// `_PORT._tcp`.
fn dane_zone(domain: &str, port: u16, tlsa: Vec<Rr>) -> Vec<(&'static str, Rr)> {
    let mx = leak(format!("mx.{domain}."));
    let mut records = vec![
        (leak(format!("{domain}.")), Rr::Mx(10, mx)),
        (mx, Rr::A(LOCALHOST)),
    ];
    let at = leak(format!("_{port}._tcp.mx.{domain}."));
    records.extend(tlsa.into_iter().map(|r| (at, r)));
    records
}

/// A signed DNS server with `records` and `signing`, and a Delivery using it with `tls`.
async fn setup(
    dir: &Path,
    port: u16,
    records: Vec<(&'static str, Rr)>,
    signing: Signing,
    tls: &str,
) -> (DnsServer, Delivery) {
    let dns = DnsServer::start_signed(records, signing, &dir.join("anchor.key")).await;
    let delivery = Delivery::new(&settings(dir, &relay(port, &dns, tls))).unwrap();
    (dns, delivery)
}

fn starttls_sink() -> SinkOptions {
    SinkOptions {
        starttls: true,
        ..SinkOptions::default()
    }
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

/// A CA and a leaf for `name` issued by it: (leaf chain PEM = leaf + CA, leaf key PEM, CA PEM).
fn ca_and_leaf(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "submitd test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_pem = ca.pem();
    (
        format!("{}{}", leaf.pem(), ca_pem),
        leaf_key.serialize_pem(),
        ca_pem,
    )
}

#[tokio::test]
async fn dane_ee_match_is_delivered_over_tls() {
    let sink = Sink::start(starttls_sink()).await;
    let port = sink.addr.port();
    let hash = spki_sha256(&common::cert_and_key().0);
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("ee.test", port, vec![Rr::Tlsa(3, 1, 1, hash)]);
    let (_dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    assert_delivered(&attempt(&delivery, "ee.test").await);
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert!(got[0].tls, "delivered without TLS");
    assert_eq!(got[0].rcpts, ["bob@ee.test"]);
}

#[tokio::test]
async fn dane_ee_mismatch_is_deferred_and_nothing_sent() {
    let sink = Sink::start(starttls_sink()).await;
    let port = sink.addr.port();
    let mut hash = spki_sha256(&common::cert_and_key().0);
    hash[0] ^= 0xff;
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("mismatch.test", port, vec![Rr::Tlsa(3, 1, 1, hash)]);
    let (_dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    assert_deferred(&attempt(&delivery, "mismatch.test").await, "STARTTLS");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.received().is_empty(), "{:?}", sink.received().len());
}

#[tokio::test]
async fn bogus_tlsa_signature_is_deferred() {
    let sink = Sink::start(starttls_sink()).await;
    let port = sink.addr.port();
    let hash = spki_sha256(&common::cert_and_key().0);
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("bogus.test", port, vec![Rr::Tlsa(3, 1, 1, hash)]);
    let signing = Signing {
        corrupt: vec![leak(format!("_{port}._tcp.mx.bogus.test."))],
        ..Signing::default()
    };
    let (_dns, delivery) = setup(dir.path(), port, records, signing, "dane").await;
    assert_deferred(&attempt(&delivery, "bogus.test").await, "TLSA lookup");
    assert!(sink.received().is_empty());
    assert_eq!(
        sink.connections(),
        0,
        "a host with bogus TLSA was contacted"
    );
}

#[tokio::test]
async fn starttls_stripped_on_a_dane_host_is_deferred_never_clear() {
    // An attacker in the middle removed STARTTLS from the EHLO reply: this sink offers none.
    let sink = Sink::start(SinkOptions::default()).await;
    let port = sink.addr.port();
    let hash = spki_sha256(&common::cert_and_key().0);
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("stripped.test", port, vec![Rr::Tlsa(3, 1, 1, hash)]);
    let (_dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    assert_deferred(
        &attempt(&delivery, "stripped.test").await,
        "TLS required but not offered",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.received().is_empty(), "sent in clear text");
}

#[tokio::test]
async fn insecure_domain_is_delivered_opportunistically() {
    // `plain.test.` is an unsigned child of the signed `test.` (NS, no DS): provably
    // insecure. Its TLSA record (wrong, unsigned) must be ignored.
    let sink = Sink::start(SinkOptions::default()).await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let signing = Signing {
        insecure: vec![(
            "plain.test.",
            dane_zone("plain.test", port, vec![Rr::Tlsa(3, 1, 1, vec![7; 32])]),
        )],
        ..Signing::default()
    };
    let (_dns, delivery) = setup(dir.path(), port, Vec::new(), signing, "dane").await;
    assert_delivered(&attempt(&delivery, "plain.test").await);
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert!(!got[0].tls);
}

#[tokio::test]
async fn secure_domain_without_tlsa_falls_back_to_opportunistic() {
    let sink = Sink::start(SinkOptions::default()).await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("notlsa.test", port, Vec::new());
    let (_dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    assert_delivered(&attempt(&delivery, "notlsa.test").await);
}

#[tokio::test]
async fn dane_ta_match_is_delivered() {
    let (chain, key, ca) = ca_and_leaf("mx.ta.test");
    let sink = Sink::start(SinkOptions {
        starttls: true,
        cert: Some((chain, key)),
        ..SinkOptions::default()
    })
    .await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("ta.test", port, vec![Rr::Tlsa(2, 0, 1, sha256(&der(&ca)))]);
    let (_dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    assert_delivered(&attempt(&delivery, "ta.test").await);
    assert!(sink.wait_for(1, IO_TIMEOUT).await[0].tls);
}

#[tokio::test]
async fn dane_ta_spki_sha512_match_is_delivered() {
    let (chain, key, ca) = ca_and_leaf("mx.taspki.test");
    let sink = Sink::start(SinkOptions {
        starttls: true,
        cert: Some((chain, key)),
        ..SinkOptions::default()
    })
    .await;
    let port = sink.addr.port();
    let ca_der = der(&ca);
    let (_, parsed) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let spki512 = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA512,
        parsed.tbs_certificate.subject_pki.raw,
    )
    .as_ref()
    .to_vec();
    let dir = tempfile::tempdir().unwrap();
    // A wrong DANE-EE record beside the right DANE-TA one: one match is enough.
    let tlsa = vec![Rr::Tlsa(3, 1, 1, vec![5; 32]), Rr::Tlsa(2, 1, 2, spki512)];
    let records = dane_zone("taspki.test", port, tlsa);
    let (_dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    assert_delivered(&attempt(&delivery, "taspki.test").await);
    assert!(sink.wait_for(1, IO_TIMEOUT).await[0].tls);
}

#[tokio::test]
async fn dane_ta_with_a_leaf_for_another_name_is_deferred() {
    let (chain, key, ca) = ca_and_leaf("elsewhere.test");
    let sink = Sink::start(SinkOptions {
        starttls: true,
        cert: Some((chain, key)),
        ..SinkOptions::default()
    })
    .await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone(
        "taname.test",
        port,
        vec![Rr::Tlsa(2, 0, 1, sha256(&der(&ca)))],
    );
    let (_dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    assert_deferred(&attempt(&delivery, "taname.test").await, "STARTTLS");
    assert!(sink.received().is_empty());
}

/// `relay.tls = "verify"`: a sink whose certificate for `cert_name` comes from a CA given in
/// `relay.ca_file`, reached as `mx.verify.test`.
async fn verify_attempt(cert_name: &str) -> (Outcome, Sink) {
    let (chain, key, ca) = ca_and_leaf(cert_name);
    let sink = Sink::start(SinkOptions {
        starttls: true,
        cert: Some((chain, key)),
        ..SinkOptions::default()
    })
    .await;
    let port = sink.addr.port();
    let dns = DnsServer::start(vec![
        ("verify.test.", Rr::Mx(10, "mx.verify.test.")),
        ("mx.verify.test.", Rr::A(LOCALHOST)),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    let lines = format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\ntls = \"verify\"\n\
         ca_file = \"ca.pem\"\n",
        dns.addr
    );
    let delivery = Delivery::new(&settings(dir.path(), &lines)).unwrap();
    (attempt(&delivery, "verify.test").await, sink)
}

#[tokio::test]
async fn verify_with_the_right_name_is_delivered() {
    let (outcome, sink) = verify_attempt("mx.verify.test").await;
    assert_delivered(&outcome);
    assert!(sink.wait_for(1, IO_TIMEOUT).await[0].tls);
}

#[tokio::test]
async fn verify_with_a_wrong_name_is_deferred() {
    let (outcome, sink) = verify_attempt("other.test").await;
    assert_deferred(&outcome, "STARTTLS");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn verify_without_starttls_is_deferred() {
    let sink = Sink::start(SinkOptions::default()).await;
    let port = sink.addr.port();
    let dns = DnsServer::start(vec![("clear.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\ntls = \"verify\"\n",
        dns.addr
    );
    let delivery = Delivery::new(&settings(dir.path(), &lines)).unwrap();
    assert_deferred(
        &attempt(&delivery, "clear.test").await,
        "TLS required but not offered",
    );
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn only_unusable_tlsa_records_require_tls_without_authentication() {
    // PKIX-EE (usage 1) is unusable for SMTP: TLS is mandatory, the certificate unchecked.
    let sink = Sink::start(SinkOptions::default()).await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("pkix.test", port, vec![Rr::Tlsa(1, 1, 1, vec![9; 32])]);
    let (_dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    assert_deferred(
        &attempt(&delivery, "pkix.test").await,
        "TLS required but not offered",
    );
    assert!(sink.received().is_empty(), "sent in clear text");

    let sink = Sink::start(starttls_sink()).await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("pkix.test", port, vec![Rr::Tlsa(1, 1, 1, vec![9; 32])]);
    let (_dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    assert_delivered(&attempt(&delivery, "pkix.test").await);
    assert!(sink.wait_for(1, IO_TIMEOUT).await[0].tls);
}

#[tokio::test]
async fn bogus_mx_rrset_is_deferred() {
    let sink = Sink::start(starttls_sink()).await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("bogusmx.test", port, Vec::new());
    let signing = Signing {
        corrupt: vec!["bogusmx.test."],
        ..Signing::default()
    };
    let (_dns, delivery) = setup(dir.path(), port, records, signing, "dane").await;
    assert_deferred(&attempt(&delivery, "bogusmx.test").await, "MX RRset");
    assert_eq!(sink.connections(), 0);
}

/// The whole server: a message to a DANE domain whose MX presents a certificate that matches
/// no TLSA record stays queued (deferred, the reason recorded); the MX never receives it.
#[tokio::test]
async fn server_keeps_a_dane_mismatch_queued() {
    use common::{ALICE, TestServer, message_from};
    let sink = Sink::start(starttls_sink()).await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchor.key");
    let records = dane_zone("queued.test", port, vec![Rr::Tlsa(3, 1, 1, vec![1; 32])]);
    let dns = DnsServer::start_signed(records, Signing::default(), &anchor).await;
    let lines = format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\n\
         dnssec_trust_anchor = \"{}\"\n",
        dns.addr,
        anchor.display()
    );
    let server = TestServer::start_relay("retry = [\"1h\"]", &lines).await;
    let id = server
        .submit(&["bob@queued.test"], &message_from(ALICE))
        .await;
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let q = server.queued();
        assert_eq!(q.len(), 1, "the message left the queue");
        let r = &q[0].0["recipients"][0];
        if r["state"] == "deferred" {
            assert_eq!(q[0].0["id"], id.as_str());
            let reply = r["last_reply"].as_str().unwrap();
            assert!(reply.contains("STARTTLS"), "{reply}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never deferred");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sink.received().is_empty(), "the MX got the message");
}

#[tokio::test]
async fn servfail_on_the_tlsa_lookup_is_deferred_never_clear() {
    let sink = Sink::start(SinkOptions::default()).await;
    let port = sink.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let records = dane_zone("servfail.test", port, vec![Rr::Tlsa(3, 1, 1, vec![1; 32])]);
    let (dns, delivery) = setup(dir.path(), port, records, Signing::default(), "dane").await;
    dns.servfail(&format!("_{port}._tcp.mx.servfail.test."));
    assert_deferred(&attempt(&delivery, "servfail.test").await, "TLSA lookup");
    assert_eq!(
        sink.connections(),
        0,
        "a host without a TLSA answer was contacted"
    );
}

// ---- TLS-RPT (RFC 8460) for DANE: policy type `tlsa`, through the real binary ----

/// The gzipped JSON attachment of a TLS-RPT report message, decoded.
fn report_json(message: &[u8]) -> serde_json::Value {
    use base64::Engine;
    use std::io::Read;
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
    let mut json = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut json)
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

/// The `tlsa` entry of a report's `policies`.
fn tlsa_policy(report: &serde_json::Value) -> &serde_json::Value {
    report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"]["policy-type"] == "tlsa")
        .unwrap_or_else(|| panic!("no tlsa policy: {report}"))
}

/// A DANE-EE mismatch (`bad.test`, deferred) and a match (`good.test`, delivered), both
/// publishing `_smtp._tls` with a `mailto:` rua: after `submitd tls-report` each gets a report
/// whose `tlsa` policy names its TLSA record and MX host, with the failure (a DANE result type)
/// or the success counted.
#[tokio::test(flavor = "multi_thread")]
async fn dane_sessions_are_reported_under_a_tlsa_policy() {
    // The DANE MX hosts on 127.0.0.1 (STARTTLS, the tests' certificate); the report domain's
    // MX on 127.0.0.2, the same port (relay.port is one for all).
    let (mx, reports) = 'found: {
        for _ in 0..20 {
            let mx = Sink::start(starttls_sink()).await;
            let second = std::net::SocketAddr::from(([127, 0, 0, 2], mx.addr.port()));
            if std::net::TcpListener::bind(second).is_ok() {
                let reports = Sink::start(SinkOptions {
                    bind: Some(second),
                    ..SinkOptions::default()
                })
                .await;
                break 'found (mx, reports);
            }
        }
        panic!("no port free on both 127.0.0.1 and 127.0.0.2");
    };
    let port = mx.addr.port();
    let good = spki_sha256(&common::cert_and_key().0);
    let mut bad = good.clone();
    bad[0] ^= 0xff;
    let bad_string = format!("3 1 1 {}", hex(&bad));
    let good_string = format!("3 1 1 {}", hex(&good));
    let rua = || Rr::Txt("v=TLSRPTv1; rua=mailto:tlsrpt@rpt.test".into());
    let mut records = dane_zone("bad.test", port, vec![Rr::Tlsa(3, 1, 1, bad)]);
    records.extend(dane_zone("good.test", port, vec![Rr::Tlsa(3, 1, 1, good)]));
    records.extend([
        ("_smtp._tls.bad.test.", rua()),
        ("_smtp._tls.good.test.", rua()),
        ("rpt.test.", Rr::Mx(10, "mx.rpt.test.")),
        ("mx.rpt.test.", Rr::A(Ipv4Addr::new(127, 0, 0, 2))),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchor.key");
    let dns = DnsServer::start_signed(records, Signing::default(), &anchor).await;
    let relay = format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\ntls = \"dane\"\n\
         dnssec_trust_anchor = \"{}\"\n",
        dns.addr,
        anchor.display()
    );
    let config =
        common::write_config_full(dir.path(), "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[tls.reporting]\nfrom = \"tlsrpt@mail.example.test\"\n");
    std::fs::write(&config, text).unwrap();
    let server = common::binary::Binary::start(&config);
    let mut c = common::login_as(server.tls, common::ALICE, common::ALICE_PASSWORD, "235").await;
    for to in ["bob@bad.test", "bob@good.test"] {
        let reply = common::send_message(&mut c, common::ALICE, &[to]).await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    c.cmd("QUIT", "221").await;
    let got = mx.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got[0].rcpts, ["bob@good.test"]);
    assert!(got[0].tls);
    // Both counted (the state file names both TLSA records).
    let state = dir.path().join("queue/tlsrpt/state.json");
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !std::fs::read_to_string(&state)
        .is_ok_and(|t| t.contains(&bad_string) && t.contains(&good_string))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "DANE sessions never counted: {:?}; log:\n{}",
            std::fs::read_to_string(&state),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mx.received().len(), 1, "the mismatch was delivered");

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
    assert!(out.stdout.contains("domains=2 mailed=2"), "{}", out.stdout);
    let mail = reports.wait_for(2, IO_TIMEOUT).await;
    let report = |domain: &str| {
        let header = format!("\r\nTLS-Report-Domain: {domain}\r\n");
        let m = mail
            .iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(&header))
            .unwrap_or_else(|| panic!("no report for {domain}"));
        assert_eq!(m.rcpts, ["tlsrpt@rpt.test"]);
        report_json(&m.data)
    };

    let bad = report("bad.test");
    let p = tlsa_policy(&bad);
    assert_eq!(p["policy"]["policy-domain"], "bad.test");
    assert_eq!(
        p["policy"]["policy-string"],
        serde_json::json!([bad_string])
    );
    assert_eq!(p["policy"]["mx-host"], serde_json::json!(["mx.bad.test"]));
    assert_eq!(p["summary"]["total-successful-session-count"], 0, "{p}");
    let failures = p["summary"]["total-failure-session-count"]
        .as_u64()
        .unwrap();
    assert!(failures >= 1, "{p}");
    let d = &p["failure-details"][0];
    assert_eq!(d["result-type"], "certificate-not-trusted", "{p}");
    assert_eq!(d["receiving-mx-hostname"], "mx.bad.test");

    let good = report("good.test");
    let p = tlsa_policy(&good);
    assert_eq!(
        p["policy"]["policy-string"],
        serde_json::json!([good_string])
    );
    assert_eq!(p["policy"]["mx-host"], serde_json::json!(["mx.good.test"]));
    assert_eq!(p["summary"]["total-successful-session-count"], 1, "{p}");
    assert_eq!(p["summary"]["total-failure-session-count"], 0, "{p}");
    // No MTA-STS policy: DANE sessions are not counted as MTA-STS ones.
    assert_eq!(good["policies"].as_array().unwrap().len(), 1, "{good}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The library path: a DANE-EE match and a bogus TLSA RRset counted under `tlsa` policies.
#[tokio::test]
async fn dane_outcomes_are_counted_for_tls_rpt() {
    let sink = Sink::start(starttls_sink()).await;
    let port = sink.addr.port();
    let hash = spki_sha256(&common::cert_and_key().0);
    let dir = tempfile::tempdir().unwrap();
    let mut records = dane_zone("ok.test", port, vec![Rr::Tlsa(3, 1, 1, hash.clone())]);
    records.extend(dane_zone("bog.test", port, vec![Rr::Tlsa(3, 1, 1, hash)]));
    let signing = Signing {
        corrupt: vec![leak(format!("_{port}._tcp.mx.bog.test."))],
        ..Signing::default()
    };
    let (_dns, delivery) = setup(dir.path(), port, records, signing, "dane").await;
    assert_delivered(&attempt(&delivery, "ok.test").await);
    assert_deferred(&attempt(&delivery, "bog.test").await, "TLSA lookup");
    let (recorder, _, _) = delivery.tls_reporting().expect("TLS-RPT on by default");
    let counts = recorder.take(u64::MAX / 2).await;
    let ok = &counts.domains["ok.test"];
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0].policy.policy_type, "tlsa");
    assert_eq!(ok[0].policy.mx_host, ["mx.ok.test"]);
    assert_eq!((ok[0].success, ok[0].failure), (1, 0));
    let bog = &counts.domains["bog.test"][0];
    assert_eq!((bog.success, bog.failure), (0, 1));
    assert_eq!(bog.details[0].result_type.as_str(), "dnssec-invalid");
}
