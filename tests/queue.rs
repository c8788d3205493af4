//! The relay queue end to end: submit through the real server, deliver to a real SMTP server
//! on loopback (tests/common/sink.rs), retry, bounce, survive SIGKILL.

mod common;

use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::*;
use mail_parser::{MessageParser, MimeHeaders};

#[tokio::test]
async fn delivers_through_the_smarthost_and_empties_the_queue() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("", &smarthost(&sink)).await;
    let body = message_from(ALICE);
    let id = server
        .submit(&["bob@example.net", "carol@example.org"], &body)
        .await;
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got[0].from, ALICE);
    assert_eq!(got[0].rcpts, ["bob@example.net", "carol@example.org"]);
    assert_eq!(got[0].helo, HOSTNAME);
    let data = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(
        data.starts_with("Received: from client.test by mail.example.test"),
        "{data}"
    );
    assert!(data.contains(&format!("id {id};")));
    assert!(
        data.ends_with(&format!("{body}\r\n")) || data.ends_with(&body),
        "{data:?}"
    );
    server.wait_empty().await;
    assert_eq!(sink.connections(), 1, "one connection for both recipients");
}

#[tokio::test]
async fn temporary_failure_is_retried_then_delivered() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("retry = [\"1s\"]", &smarthost(&sink)).await;
    server
        .submit(
            &["flaky@example.net", "ok@example.net"],
            &message_from(ALICE),
        )
        .await;
    let got = sink.wait_for(2, IO_TIMEOUT).await;
    // First attempt: ok delivered, flaky deferred. Second: only flaky.
    assert_eq!(got[0].rcpts, ["ok@example.net"]);
    assert_eq!(got[1].rcpts, ["flaky@example.net"]);
    server.wait_empty().await;
}

#[tokio::test]
async fn deferred_state_is_saved_with_the_reply_and_next_attempt() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("retry = [\"1h\"]", &smarthost(&sink)).await;
    let id = server
        .submit(&["defer@example.net"], &message_from(ALICE))
        .await;
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let q = server.queued();
        let r = &q[0].0["recipients"][0];
        if r["state"] == "deferred" {
            assert_eq!(q[0].0["id"], id.as_str());
            assert_eq!(r["attempts"], 1);
            assert!(r["last_reply"].as_str().unwrap().contains("451"), "{r}");
            let next = r["next_attempt"].as_u64().unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(next >= now + 3500 && next <= now + 3700, "{next} vs {now}");
            // It waits in `deferred/XY/` (the last two digits of its ID), out of the top
            // directory where new mail comes and goes (bounded wait: the move follows the
            // save).
            let file = server
                .queue_dir()
                .join("deferred")
                .join(&id[id.len() - 2..])
                .join(format!("{id}.q"));
            while !file.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(file.exists(), "not moved to {}", file.display());
            assert!(!server.queue_dir().join(format!("{id}.q")).exists());
            break;
        }
        assert!(Instant::now() < deadline, "never deferred");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The DSN the sink received for alice: (delivery-status text, whole message).
fn dsn_for_alice(sink: &Sink) -> Option<(String, String)> {
    let dsn = sink.received().into_iter().find(|r| r.from.is_empty())?;
    assert_eq!(dsn.rcpts, [ALICE]);
    let text = String::from_utf8(dsn.data.clone()).unwrap();
    let parsed = MessageParser::default().parse(&dsn.data).unwrap();
    let ct = parsed.content_type().unwrap();
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let status = parsed
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("delivery-status"))
        })
        .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
        .expect("a message/delivery-status part");
    Some((status, text))
}

#[tokio::test]
async fn mixed_recipients_deliver_and_bounce_once() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("", &smarthost(&sink)).await;
    let body = "From: alice@example.test\r\nSubject: mixed\r\n\r\nhi\r\n";
    server
        .submit(&["ok@example.net", "reject@example.net"], body)
        .await;
    let deadline = Instant::now() + IO_TIMEOUT;
    let (status, text) = loop {
        if let Some(found) = dsn_for_alice(&sink) {
            break found;
        }
        assert!(Instant::now() < deadline, "no DSN");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.contains("Final-Recipient: rfc822; reject@example.net"),
        "{status}"
    );
    assert!(status.contains("Action: failed"));
    assert!(status.contains("Status: 5.1.1"), "{status}");
    assert!(status.contains("Diagnostic-Code: smtp; 550"), "{status}");
    assert!(!status.contains("ok@example.net"));
    assert!(text.contains("Subject: mixed"), "original headers attached");
    let delivered: Vec<_> = sink
        .received()
        .into_iter()
        .filter(|r| !r.from.is_empty())
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].rcpts, ["ok@example.net"]);
    server.wait_empty().await;
    assert_eq!(
        sink.received().iter().filter(|r| r.from.is_empty()).count(),
        1,
        "one DSN"
    );
}

#[tokio::test]
async fn expired_message_bounces_with_4_4_7() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server =
        TestServer::start_relay("retry = [\"1s\"]\nmax_age = \"2s\"", &smarthost(&sink)).await;
    server
        .submit(&["defer@example.net"], &message_from(ALICE))
        .await;
    let deadline = Instant::now() + IO_TIMEOUT;
    let (status, _) = loop {
        if let Some(found) = dsn_for_alice(&sink) {
            break found;
        }
        assert!(Instant::now() < deadline, "no expiry DSN");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.contains("Final-Recipient: rfc822; defer@example.net"),
        "{status}"
    );
    assert!(status.contains("Action: failed"));
    assert!(status.contains("Status: 4.4.7"), "{status}");
    server.wait_empty().await;
}

#[tokio::test]
async fn a_bounce_is_never_bounced() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("", &smarthost(&sink)).await;
    // Alice's own address is rejected by the sink, so her DSN fails too: it must be dropped.
    let body = message_from(ALICE);
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<reject-me@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{body}.\r\n").as_bytes()).await;
    c.expect("250").await;
    // Reject everything, DSN included.
    server.wait_empty().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.queued().is_empty());
    // The DSN to alice was accepted by the sink (alice@ is not rejected); now a DSN whose
    // recipient is rejected: make one by hand in the spool.
    let spool = submitd::queue::Spool::attach(&server.queue_dir());
    let id = submitd::queue::QueueId::generate();
    let env = submitd::queue::Envelope {
        version: 1,
        id: id.to_string(),
        user: "MAILER-DAEMON".into(),
        sender: String::new(),
        recipients: vec![submitd::queue::Recipient::pending(
            "reject-bounce@example.net",
        )],
        received_at: 0,
        helo: HOSTNAME.into(),
        smtputf8: false,
        eight_bit: false,
        size: 10,
        prefix: String::new(),
        content_len: 10,
        held: false,
        ret: None,
        envid: None,
        requiretls: false,
        tls_optional: false,
        origin: None,
    };
    let before = sink.received().len();
    // A running server takes new messages only from its sessions (a directory scan could see
    // one whose commit then failed): stop it, store the DSN, and start it again on the queue.
    server.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    spool
        .store_blocking(&env, b"From: x\r\n\r\nbounce\r\n")
        .unwrap();
    let (_, restarted) = start_again(&server.dir.path().join("submitd.toml")).await;
    server.wait_empty().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(server.queued().is_empty(), "no DSN of the DSN was queued");
    assert_eq!(sink.received().len(), before, "nothing more was sent");
    restarted.cancel();
}

/// MX mode through the whole server: MX lookup on a loopback DNS server, delivery to the MX,
/// and a null-MX recipient bounced with 5.1.10 — the DSN itself routed by MX back to alice.
#[tokio::test]
async fn mx_mode_delivers_and_bounces_null_mx() {
    use common::dns::{DnsServer, Rr};
    use std::net::Ipv4Addr;
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![
        ("dest.test.", Rr::Mx(10, "mx.dest.test.")),
        ("mx.dest.test.", Rr::A(Ipv4Addr::LOCALHOST)),
        ("example.test.", Rr::A(Ipv4Addr::LOCALHOST)),
        ("nullmx.test.", Rr::Mx(0, ".")),
    ])
    .await;
    let relay = format!(
        "mode = \"mx\"\nport = {}\nresolver = [\"{}\"]\ntimeout = \"10s\"\ntls = \"opportunistic\"\n",
        sink.addr.port(),
        dns.addr
    );
    let server = TestServer::start_relay("", &relay).await;
    server
        .submit(&["bob@dest.test", "x@nullmx.test"], &message_from(ALICE))
        .await;
    let deadline = Instant::now() + IO_TIMEOUT;
    let (status, _) = loop {
        if let Some(found) = dsn_for_alice(&sink) {
            break found;
        }
        assert!(Instant::now() < deadline, "no DSN");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.contains("Final-Recipient: rfc822; x@nullmx.test"),
        "{status}"
    );
    assert!(status.contains("Status: 5.1.10"), "{status}");
    let delivered: Vec<_> = sink
        .received()
        .into_iter()
        .filter(|r| !r.from.is_empty())
        .collect();
    assert_eq!(delivered.len(), 1, "{:?}", server.queued());
    assert_eq!(delivered[0].rcpts, ["bob@dest.test"]);
    server.wait_empty().await;
}
