//! DKIM end to end: keys made by the real `submitd dkim keygen`, their TXT records served by the
//! loopback test DNS server, a message submitted over TLS + AUTH, delivered to the sink by MX,
//! and the received bytes verified by mail-auth's verifier and (an ignored test that `.ci/run` runs
//! with `--ignored`) by Python's dkimpy — both asking
//! the same DNS server for the keys.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::dns::{DnsServer, Rr};
use common::run::run_submitd;
use common::sink::{Sink, SinkOptions};
use common::{ALICE, ALICE_PASSWORD, IO_TIMEOUT, login_as, start_again, write_config_full};
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters};
use tokio::io::AsyncWriteExt;

const PIP: &str = "python3 -m pip install dkimpy==1.1.8 dnspython==2.9.2 pynacl==1.6.2";

/// `submitd dkim keygen` in `dir`: the TXT record text and the printed `[[dkim]]` entry.
fn keygen(dir: &Path, selector: &str, algorithm: &str) -> (String, String) {
    let out = run_submitd(
        Some(dir),
        &[
            "dkim",
            "keygen",
            "example.test",
            selector,
            "--algorithm",
            algorithm,
            "--out",
            "dkim",
        ],
        None,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let zone = out
        .stdout
        .lines()
        .find(|l| l.contains(" IN TXT "))
        .unwrap_or_else(|| panic!("no TXT line: {out:?}"));
    assert!(
        zone.starts_with(&format!("{selector}._domainkey.example.test. IN TXT \"")),
        "{zone}"
    );
    let strings: Vec<&str> = zone.split('"').skip(1).step_by(2).collect();
    assert!(strings.iter().all(|s| s.len() <= 255), "{zone}");
    let entry = &out.stdout[out.stdout.find("[[dkim]]").expect("config entry")..];
    let key = dir.join(format!("dkim/example.test.{selector}.key"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    (strings.concat(), entry.to_string())
}

/// mail-auth's verdict on every DKIM-Signature, keys looked up in the test DNS server.
async fn mail_auth_verify(message: &[u8], dns: &DnsServer) -> Vec<DkimResult> {
    let mut server = NameServerConfig::udp_and_tcp(dns.addr.ip());
    for c in &mut server.connections {
        c.port = dns.addr.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    let authenticator = MessageAuthenticator::new(config, opts).unwrap();
    let parsed = AuthenticatedMessage::parse(message).expect("parsable message");
    authenticator
        .verify_dkim(Parameters::new(&parsed))
        .await
        .into_iter()
        .map(|o| o.result().clone())
        .collect()
}

/// dkimpy's verdict ("pass" / "fail", also for the checks it raises on) on every DKIM-Signature,
/// one per line, keys looked up in the test DNS server through dnspython.
const DKIMPY: &str = r#"
import re, sys
try:
    import dkim, dns.resolver, nacl
except ImportError as e:
    print("missing: %s" % e)
    sys.exit(3)
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])
resolver.lifetime = 10
def txt(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    for rr in resolver.resolve(name, "TXT"):
        return b"".join(rr.strings)
    return None
message = sys.stdin.buffer.read()
head = message.split(b"\r\n\r\n", 1)[0]
count = len(re.findall(rb"(?im)^dkim-signature:", head))
d = dkim.DKIM(message)
for i in range(count):
    try:
        print("pass" if d.verify(idx=i, dnsfunc=txt) else "fail")
    except dkim.ValidationError as e:
        print("fail", file=sys.stdout)
        print("signature %d: %s" % (i, e), file=sys.stderr)
"#;

async fn dkimpy_verify(message: &[u8], dns: &DnsServer) -> Vec<String> {
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(DKIMPY)
        .arg(dns.addr.port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("python3 is needed for this test ({e}); then: {PIP}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(message).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("dkimpy took over 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(3) {
        panic!("dkimpy is not installed ({}): run `{PIP}`", stdout.trim());
    }
    assert!(
        out.status.success(),
        "dkimpy failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// Submit one message from alice with this From over 465 + AUTH, expecting 250.
async fn submit(addr: std::net::SocketAddr, from: &str, body: &str) {
    let mut c = login_as(addr, ALICE, ALICE_PASSWORD, "235").await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@dest.test>", "250").await;
    c.cmd("DATA", "354").await;
    let message = format!(
        "From: Alice <{from}>\r\nTo: bob@dest.test\r\nSubject: signed   hello\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}.\r\n"
    );
    c.send(message.as_bytes()).await;
    c.expect("250").await;
    c.cmd("QUIT", "221").await;
}

/// Two messages through a server with an RSA and an Ed25519 key for example.test, delivered in
/// MX mode to a sink: the signed one's text, the unsigned one's bytes, and the DNS server that
/// publishes the keys (kept alive for the verifiers).
async fn signed_and_unsigned() -> (String, Vec<u8>, DnsServer) {
    let (_dir, addr, shutdown, sink, dns) = signing_server().await;
    submit(addr, ALICE, "Hello Bob,\r\n\r\nsigned twice.\r\n\r\n\r\n").await;
    // alice owns @alice.example.test, which has no key: sent unsigned.
    submit(addr, "alice@alice.example.test", "Unsigned.\r\n").await;
    let got = sink.wait_for(2, IO_TIMEOUT).await;
    shutdown.cancel();
    assert_eq!(got.len(), 2);
    let (signed, unsigned) = if got[0].data.windows(9).any(|w| w == b"Unsigned.") {
        (&got[1].data, &got[0].data)
    } else {
        (&got[0].data, &got[1].data)
    };
    let text = String::from_utf8(signed.clone()).unwrap();
    (text, unsigned.clone(), dns)
}

/// A server with an RSA and an Ed25519 key for example.test, delivering in MX mode to a sink,
/// and the DNS server that publishes the keys.
async fn signing_server() -> (
    tempfile::TempDir,
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    Sink,
    DnsServer,
) {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_record, rsa_entry) = keygen(dir.path(), "rsa2026", "rsa");
    let (ed_record, ed_entry) = keygen(dir.path(), "ed2026", "ed25519");
    assert!(
        rsa_record.starts_with("v=DKIM1; k=rsa; p=MII"),
        "{rsa_record}"
    );
    assert!(
        ed_record.starts_with("v=DKIM1; k=ed25519; p="),
        "{ed_record}"
    );

    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![
        ("rsa2026._domainkey.example.test.", Rr::Txt(rsa_record)),
        ("ed2026._domainkey.example.test.", Rr::Txt(ed_record)),
        ("dest.test.", Rr::Mx(10, "mx.dest.test.")),
        ("mx.dest.test.", Rr::A(Ipv4Addr::LOCALHOST)),
    ])
    .await;
    let relay = format!(
        "mode = \"mx\"\nport = {}\ntls = \"none\"\nresolver = [\"{}\"]\n",
        sink.addr.port(),
        dns.addr
    );
    let config = write_config_full(dir.path(), "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    // The entries exactly as keygen printed them.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n{rsa_entry}\n{ed_entry}\n"));
    std::fs::write(&config, text).unwrap();
    let check = run_submitd(
        None,
        &["check-config", "--config", config.to_str().unwrap()],
        None,
    );
    assert_eq!(check.code, Some(0), "{check:?}");

    let (addr, shutdown) = start_again(&config).await;
    (dir, addr, shutdown, sink, dns)
}

/// A body of about `len` octets that exercises the canonicalizations across the 256 KiB pieces
/// the server writes (and hashes) the content in: runs of spaces and tabs inside and at the
/// end of lines, whitespace-only lines, lines that start with a dot (stuffed on the wire), and
/// empty lines before the end.
fn large_body(len: usize) -> String {
    let mut body = String::with_capacity(len + 200);
    let mut i = 0u32;
    while body.len() < len {
        match i % 5 {
            0 => body.push_str(&format!(
                "line {i}  with   inner \t runs and a trailing run \t \r\n"
            )),
            1 => body.push_str(".a line that starts with a dot\r\n"),
            2 => body.push_str(" \t \r\n"),
            3 => body.push_str("\r\n"),
            _ => body.push_str(&("x".repeat(900 + (i as usize % 97)) + "\r\n")),
        }
        i += 1;
    }
    body.push_str("the end\r\n\r\n\r\n");
    body
}

/// Messages larger than one piece are hashed for DKIM while they are written to the queue
/// (one pass, no read-back): the signatures verify with mail-auth for a 1.2 MB message sent
/// with DATA and a 700 KB one sent with BDAT in two chunks, and a changed body octet fails.
#[tokio::test]
async fn large_messages_hashed_as_written_verify() {
    let (_dir, addr, shutdown, sink, dns) = signing_server().await;
    let data_body = large_body(1_200_000);
    submit(addr, ALICE, &data_body.replace("\r\n.", "\r\n..")).await;

    let bdat_body = large_body(700_000);
    let message = format!(
        "From: Alice <{ALICE}>\r\nTo: bob@dest.test\r\nSubject: chunked\r\n\r\n{bdat_body}"
    );
    let (first, second) = message.as_bytes().split_at(300_000);
    let mut c = login_as(addr, ALICE, ALICE_PASSWORD, "235").await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@dest.test>", "250").await;
    c.send(format!("BDAT {}\r\n", first.len()).as_bytes()).await;
    c.send(first).await;
    c.expect("250").await;
    c.send(format!("BDAT {} LAST\r\n", second.len()).as_bytes())
        .await;
    c.send(second).await;
    c.expect("250").await;
    c.cmd("QUIT", "221").await;

    let got = sink.wait_for(2, IO_TIMEOUT).await;
    shutdown.cancel();
    assert_eq!(got.len(), 2);
    for received in &got {
        let text = String::from_utf8(received.data.clone()).unwrap();
        let body = if text.contains("Subject: chunked") {
            &bdat_body
        } else {
            &data_body
        };
        assert!(text.ends_with(body.as_str()), "the body arrived as sent");
        assert_eq!(text.matches("DKIM-Signature: ").count(), 2);
        assert_eq!(
            mail_auth_verify(text.as_bytes(), &dns).await,
            vec![DkimResult::Pass, DkimResult::Pass],
        );
        let tampered = text.replacen("line 5  with", "line 5  wiTh", 1);
        assert_ne!(tampered, text);
        let results = mail_auth_verify(tampered.as_bytes(), &dns).await;
        assert!(
            results.iter().all(|r| *r != DkimResult::Pass),
            "{results:?}"
        );
    }
}

/// The same checks fail once a byte of the body or a signed header changes.
fn tampered(text: &str) -> [(&'static str, String); 3] {
    [
        ("body", text.replace("signed twice.", "signed twice!")),
        (
            "subject",
            text.replace("Subject: signed", "Subject: Signed"),
        ),
        (
            "added From",
            text.replacen("\r\nFrom: ", "\r\nFrom: mallory@evil.test\r\nFrom: ", 1),
        ),
    ]
}

#[tokio::test]
async fn signatures_verify_with_mail_auth_and_tampering_fails() {
    let (text, unsigned, dns) = signed_and_unsigned().await;
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert_eq!(text.matches("DKIM-Signature: ").count(), 2, "{text}");
    assert!(text.contains("a=rsa-sha256") && text.contains("a=ed25519-sha256"));
    assert!(!String::from_utf8_lossy(&unsigned).contains("DKIM-Signature"));
    // Signed after the submission fixes, which are in the message but not in h=.
    let received = text
        .find("\r\nReceived: from client.test")
        .expect("Received");
    assert!(text[..received].contains("s=rsa2026"), "{text}");
    let h: String = text[..received].split_whitespace().collect();
    assert!(!h.to_ascii_lowercase().contains("received:"), "{text}");

    let pass = vec![DkimResult::Pass, DkimResult::Pass];
    assert_eq!(
        mail_auth_verify(text.as_bytes(), &dns).await,
        pass,
        "{text}"
    );
    for (what, tampered) in tampered(&text) {
        let results = mail_auth_verify(tampered.as_bytes(), &dns).await;
        assert_eq!(results.len(), 2, "{what}");
        assert!(
            results.iter().all(|r| *r != DkimResult::Pass),
            "{what}: mail-auth still passes: {results:?}"
        );
    }
    // Relaxed canonicalization: whitespace in a header is not a change.
    let relaxed = text.replace("Subject: signed   hello", "Subject: signed hello");
    assert_eq!(mail_auth_verify(relaxed.as_bytes(), &dns).await, pass);
}

/// A second, independent verifier: Python's dkimpy. Ignored by default so that `cargo test`
/// passes on a machine with only the Rust toolchain; `.ci/run` installs dkimpy and runs it
/// with `cargo test --test dkim -- --ignored`.
#[tokio::test]
#[ignore = "needs Python's dkimpy: python3 -m pip install dkimpy==1.1.8 dnspython==2.9.2 pynacl==1.6.2"]
async fn signatures_verify_with_dkimpy_and_tampering_fails() {
    let (text, _, dns) = signed_and_unsigned().await;
    assert_eq!(
        dkimpy_verify(text.as_bytes(), &dns).await,
        ["pass", "pass"],
        "{text}"
    );
    for (what, tampered) in tampered(&text) {
        let py = dkimpy_verify(tampered.as_bytes(), &dns).await;
        assert_eq!(py, ["fail", "fail"], "{what}: dkimpy");
    }
    let relaxed = text.replace("Subject: signed   hello", "Subject: signed hello");
    assert_eq!(
        dkimpy_verify(relaxed.as_bytes(), &dns).await,
        ["pass", "pass"]
    );
}

#[test]
fn check_config_names_a_bad_dkim_key() {
    let dir = tempfile::tempdir().unwrap();
    let relay = "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";
    let config = write_config_full(dir.path(), "", "", relay, "127.0.0.1:0", "127.0.0.1:0");
    let mut text = std::fs::read_to_string(&config).unwrap();
    // key.pem is the TLS key, an EC key: no DKIM algorithm.
    text.push_str(
        "\n[[dkim]]\ndomain = \"example.test\"\nselector = \"s\"\nkey = \"missing.pem\"\n\
         [[dkim]]\ndomain = \"example.test\"\nselector = \"t\"\nkey = \"key.pem\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let out = run_submitd(
        None,
        &["check-config", "--config", config.to_str().unwrap()],
        None,
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("dkim[0].key: "), "{out:?}");
    assert!(out.stderr.contains("missing.pem: No such file"), "{out:?}");
    assert!(out.stderr.contains("dkim[1].key: "), "{out:?}");
    assert!(
        out.stderr.contains("not an RSA or Ed25519 private key"),
        "{out:?}"
    );
}
