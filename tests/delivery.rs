//! Delivery end to end: `submitd::delivery::Delivery` against a real DNS server (hickory-server,
//! zone `test.`) and real receiving SMTP servers (`common::sink`) on loopback.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::dns::{DnsServer, Rr};
use common::sink::{Sink, SinkOptions};
use common::{HOSTNAME, IO_TIMEOUT};
use submitd::config::Settings;
use submitd::delivery::{Delivery, Job, Outcome};

const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const MESSAGE: &[u8] = b"From: alice@example.net\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\n\
    Hello.\r\n.leading dot\r\n..two dots\r\n\r\nBye.\r\n";

/// Settings for a temp dir, with `relay` lines for the `[relay]` section.
fn settings(dir: &tempfile::TempDir, relay: &str) -> Settings {
    let path = common::write_config_full(dir.path(), "", "", relay, "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap();
    Settings::from_toml(&text, &path).unwrap()
}

/// MX-mode relay lines: deliver on `port`, ask `dns`.
fn mx_relay(port: u16, dns: &DnsServer, tls: &str) -> String {
    format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\ntls = \"{tls}\"\n",
        dns.addr
    )
}

fn job<'a>(recipients: &'a [String], domain: &'a str) -> Job<'a> {
    common::stored::job(recipients, domain, common::stored::stored(MESSAGE))
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Run one attempt, bounded.
async fn attempt(delivery: &Delivery, job: &Job<'_>) -> Vec<(String, Outcome)> {
    tokio::time::timeout(Duration::from_secs(60), delivery.attempt(job))
        .await
        .expect("delivery attempt hung")
}

fn assert_delivered(outcome: &Outcome, host_prefix: &str) {
    match outcome {
        Outcome::Delivered { host, reply, .. } => {
            assert!(
                host.starts_with(host_prefix),
                "host {host:?}, wanted {host_prefix:?}"
            );
            assert!(reply.starts_with("250"), "reply {reply:?}");
        }
        other => panic!("expected Delivered via {host_prefix}, got {other:?}"),
    }
}

fn assert_failed(outcome: &Outcome, want_status: &str) {
    match outcome {
        Outcome::Failed { status, .. } => assert_eq!(status, want_status, "{outcome:?}"),
        other => panic!("expected Failed {want_status}, got {other:?}"),
    }
}

fn assert_deferred(outcome: &Outcome, reply_contains: &str) {
    match outcome {
        Outcome::Deferred { reply, .. } => {
            assert!(
                reply.contains(reply_contains),
                "reply {reply:?} lacks {reply_contains:?}"
            )
        }
        other => panic!("expected Deferred, got {other:?}"),
    }
}

#[tokio::test]
async fn mx_delivery_bytes_arrive_exactly() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![
        ("example.test.", Rr::Mx(10, "mx1.example.test.")),
        ("mx1.example.test.", Rr::A(LOCALHOST)),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let delivery =
        Delivery::new(&settings(&dir, &mx_relay(sink.addr.port(), &dns, "none"))).unwrap();
    let to = rcpts(&["bob@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "bob@example.test");
    assert_delivered(
        &out[0].1,
        &format!("mx1.example.test[127.0.0.1]:{}", sink.addr.port()),
    );

    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, MESSAGE, "message bytes changed in transit");
    assert_eq!(got[0].helo, HOSTNAME);
    assert_eq!(got[0].from, "alice@example.net");
    assert_eq!(got[0].rcpts, ["bob@example.test"]);
    assert!(!got[0].tls);
}

#[tokio::test]
async fn mx_preference_first_host_refuses() {
    let sink = Sink::start(SinkOptions::default()).await;
    let port = sink.addr.port();
    // Nothing listens on 127.0.0.2 at the sink's port: connection refused.
    let dns = DnsServer::start(vec![
        ("example.test.", Rr::Mx(20, "mx2.example.test.")),
        ("example.test.", Rr::Mx(10, "mx1.example.test.")),
        ("mx1.example.test.", Rr::A(Ipv4Addr::new(127, 0, 0, 2))),
        ("mx2.example.test.", Rr::A(LOCALHOST)),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(&dir, &mx_relay(port, &dns, "opportunistic"))).unwrap();
    let to = rcpts(&["bob@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_delivered(&out[0].1, &format!("mx2.example.test[127.0.0.1]:{port}"));
    assert_eq!(sink.wait_for(1, IO_TIMEOUT).await.len(), 1);
}

#[tokio::test]
async fn mx_all_hosts_refuse_defers_with_last_error() {
    let dns = DnsServer::start(vec![
        ("example.test.", Rr::Mx(10, "mx1.example.test.")),
        ("mx1.example.test.", Rr::A(Ipv4Addr::new(127, 0, 0, 2))),
    ])
    .await;
    // A port nobody listens on: bind, learn, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(&dir, &mx_relay(port, &dns, "opportunistic"))).unwrap();
    let to = rcpts(&["bob@example.test", "carol@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_eq!(out.len(), 2);
    for (_, o) in &out {
        match o {
            Outcome::Deferred { host, reply } => {
                assert_eq!(
                    host.as_deref(),
                    Some(&*format!("mx1.example.test[127.0.0.2]:{port}"))
                );
                assert!(reply.contains("connection"), "{reply:?}");
            }
            other => panic!("expected Deferred, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn implicit_mx_uses_the_domain_address() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery =
        Delivery::new(&settings(&dir, &mx_relay(sink.addr.port(), &dns, "none"))).unwrap();
    let to = rcpts(&["bob@Example.TEST"]);
    let out = attempt(&delivery, &job(&to, "Example.TEST")).await;
    assert_delivered(
        &out[0].1,
        &format!("example.test[127.0.0.1]:{}", sink.addr.port()),
    );
    assert_eq!(
        sink.wait_for(1, IO_TIMEOUT).await[0].rcpts,
        ["bob@Example.TEST"]
    );
}

#[tokio::test]
async fn null_mx_fails_5_1_10() {
    let dns = DnsServer::start(vec![
        ("example.test.", Rr::Mx(0, ".")),
        ("example.test.", Rr::A(LOCALHOST)),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(&dir, &mx_relay(25, &dns, "none"))).unwrap();
    let to = rcpts(&["bob@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_failed(&out[0].1, "5.1.10");
}

#[tokio::test]
async fn nxdomain_fails_5_1_2() {
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(&dir, &mx_relay(25, &dns, "none"))).unwrap();
    let to = rcpts(&["bob@nowhere.test", "carol@nowhere.test"]);
    let out = attempt(&delivery, &job(&to, "nowhere.test")).await;
    assert_eq!(out.len(), 2);
    assert_failed(&out[0].1, "5.1.2");
    assert_failed(&out[1].1, "5.1.2");
}

#[tokio::test]
async fn servfail_defers() {
    let dns = DnsServer::start(vec![("broken.test.", Rr::A(LOCALHOST))]).await;
    dns.servfail("broken.test.");
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(&dir, &mx_relay(25, &dns, "none"))).unwrap();
    let to = rcpts(&["bob@broken.test"]);
    let out = attempt(&delivery, &job(&to, "broken.test")).await;
    assert_deferred(&out[0].1, "");
}

#[tokio::test]
async fn per_recipient_outcomes_in_one_connection() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery =
        Delivery::new(&settings(&dir, &mx_relay(sink.addr.port(), &dns, "none"))).unwrap();
    let to = rcpts(&[
        "reject1@example.test",
        "ok@example.test",
        "defer1@example.test",
    ]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_eq!(
        out.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        [
            "reject1@example.test",
            "ok@example.test",
            "defer1@example.test"
        ]
    );
    match &out[0].1 {
        Outcome::Failed {
            status,
            reply,
            host,
        } => {
            assert_eq!(status, "5.1.1");
            assert!(reply.starts_with("550 5.1.1"), "{reply:?}");
            assert!(host.is_some());
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_delivered(&out[1].1, "example.test[127.0.0.1]");
    assert_deferred(&out[2].1, "451 4.2.0");
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got[0].rcpts, ["ok@example.test"]);
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn flaky_recipient_deferred_then_delivered() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery =
        Delivery::new(&settings(&dir, &mx_relay(sink.addr.port(), &dns, "none"))).unwrap();
    let to = rcpts(&["flaky@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_deferred(&out[0].1, "451 4.3.0");
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_delivered(&out[0].1, "example.test[127.0.0.1]");
}

#[tokio::test]
async fn data_rejection_fails_accepted_recipients() {
    let sink = Sink::start(SinkOptions {
        data_reply: (554, "5.6.0 Content rejected".into()),
        ..SinkOptions::default()
    })
    .await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery =
        Delivery::new(&settings(&dir, &mx_relay(sink.addr.port(), &dns, "none"))).unwrap();
    let to = rcpts(&["a@example.test", "defer@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_failed(&out[0].1, "5.6.0");
    assert_deferred(&out[1].1, "451");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn size_limit_fails_5_3_4() {
    let sink = Sink::start(SinkOptions {
        size: Some(10),
        ..SinkOptions::default()
    })
    .await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery =
        Delivery::new(&settings(&dir, &mx_relay(sink.addr.port(), &dns, "none"))).unwrap();
    let to = rcpts(&["bob@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_failed(&out[0].1, "5.3.4");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn smtputf8_and_8bitmime_passed_on() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery =
        Delivery::new(&settings(&dir, &mx_relay(sink.addr.port(), &dns, "none"))).unwrap();
    let to = rcpts(&["j\u{f6}rg@example.test"]);
    let message = "From: alice@example.net\r\nSubject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes();
    let j = Job {
        message: common::stored::stored(message),
        smtputf8: true,
        eight_bit: true,
        ..job(&to, "example.test")
    };
    let out = attempt(&delivery, &j).await;
    assert_delivered(&out[0].1, "example.test");
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got[0].data, message);
    assert!(
        got[0].mail_params.contains(&"SMTPUTF8".to_string()),
        "{:?}",
        got[0].mail_params
    );
    assert!(got[0].mail_params.contains(&"BODY=8BITMIME".to_string()));
    assert_eq!(got[0].rcpts, ["j\u{f6}rg@example.test"]);
}

#[tokio::test]
async fn no_smtputf8_downgrades_idn_or_fails_5_6_7() {
    let sink = Sink::start(SinkOptions {
        smtputf8: false,
        eight_bit: false,
        ..SinkOptions::default()
    })
    .await;
    let dns = DnsServer::start(vec![("xn--bcher-kva.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery =
        Delivery::new(&settings(&dir, &mx_relay(sink.addr.port(), &dns, "none"))).unwrap();

    // Only the domain is non-ASCII: sent as A-labels.
    let to = rcpts(&["bob@b\u{fc}cher.test"]);
    let j = Job {
        smtputf8: true,
        ..job(&to, "b\u{fc}cher.test")
    };
    let out = attempt(&delivery, &j).await;
    assert_delivered(&out[0].1, "xn--bcher-kva.test");
    assert_eq!(
        sink.wait_for(1, IO_TIMEOUT).await[0].rcpts,
        ["bob@xn--bcher-kva.test"]
    );

    // A non-ASCII local part cannot be downgraded.
    let to = rcpts(&["j\u{f6}rg@b\u{fc}cher.test"]);
    let j = Job {
        smtputf8: true,
        ..job(&to, "b\u{fc}cher.test")
    };
    let out = attempt(&delivery, &j).await;
    assert_failed(&out[0].1, "5.6.7");

    // An 8-bit body announced as 8BITMIME, to a server without it.
    let to = rcpts(&["bob@b\u{fc}cher.test"]);
    let j = Job {
        eight_bit: true,
        message: common::stored::stored(b"Subject: x\r\n\r\n\xc3\xa9\r\n"),
        ..job(&to, "b\u{fc}cher.test")
    };
    let out = attempt(&delivery, &j).await;
    assert_failed(&out[0].1, "5.6.3");
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn opportunistic_tls_when_offered() {
    let sink = Sink::start(SinkOptions {
        starttls: true,
        ..SinkOptions::default()
    })
    .await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(
        &dir,
        &mx_relay(sink.addr.port(), &dns, "opportunistic"),
    ))
    .unwrap();
    let to = rcpts(&["bob@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_delivered(&out[0].1, "example.test");
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    // Self-signed and for another name: opportunistic TLS does not verify.
    assert!(got[0].tls);
    assert_eq!(got[0].helo, HOSTNAME);
}

#[tokio::test]
async fn opportunistic_clear_when_not_offered() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(
        &dir,
        &mx_relay(sink.addr.port(), &dns, "opportunistic"),
    ))
    .unwrap();
    let to = rcpts(&["bob@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_delivered(&out[0].1, "example.test");
    assert!(!sink.wait_for(1, IO_TIMEOUT).await[0].tls);
}

#[tokio::test]
async fn required_tls_not_offered_defers() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(
        &dir,
        &mx_relay(sink.addr.port(), &dns, "required"),
    ))
    .unwrap();
    let to = rcpts(&["bob@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_deferred(
        &out[0].1,
        "TLS required but not offered by example.test[127.0.0.1]",
    );
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn required_tls_offered_delivers_encrypted() {
    let sink = Sink::start(SinkOptions {
        starttls: true,
        ..SinkOptions::default()
    })
    .await;
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(
        &dir,
        &mx_relay(sink.addr.port(), &dns, "required"),
    ))
    .unwrap();
    let to = rcpts(&["bob@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_delivered(&out[0].1, "example.test");
    assert!(sink.wait_for(1, IO_TIMEOUT).await[0].tls);
}

/// Smarthost lines: `mail.example.test:PORT` resolved through `dns`, the test cert trusted.
fn smarthost_relay(port: u16, dns: &DnsServer, tls: &str, user: &str, password: &str) -> String {
    let mut s = format!(
        "mode = \"smarthost\"\nsmarthost = \"{HOSTNAME}:{port}\"\nsmarthost_tls = \"{tls}\"\n\
         resolver = [\"{}\"]\ntimeout = \"5s\"\nca_file = \"cert.pem\"\n",
        dns.addr
    );
    if !user.is_empty() {
        s.push_str(&format!(
            "smarthost_user = \"{user}\"\nsmarthost_password = \"{password}\"\n"
        ));
    }
    s
}

async fn smarthost_dns() -> DnsServer {
    DnsServer::start(vec![("mail.example.test.", Rr::A(LOCALHOST))]).await
}

fn auth_sink(starttls: bool, implicit: bool) -> SinkOptions {
    SinkOptions {
        starttls,
        implicit_tls: implicit,
        auth: Some(("relay-user".into(), "relay-pw".into())),
        ..SinkOptions::default()
    }
}

#[tokio::test]
async fn smarthost_auth_over_starttls() {
    let sink = Sink::start(auth_sink(true, false)).await;
    let dns = smarthost_dns().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = smarthost_relay(sink.addr.port(), &dns, "starttls", "relay-user", "relay-pw");
    let delivery = Delivery::new(&settings(&dir, &relay)).unwrap();
    // Recipients of several domains all go to the smarthost.
    let to = rcpts(&["bob@example.org", "carol@example.net", "reject@example.org"]);
    let out = attempt(&delivery, &job(&to, "example.org")).await;
    let host = format!("{HOSTNAME}[127.0.0.1]:{}", sink.addr.port());
    assert_delivered(&out[0].1, &host);
    assert_delivered(&out[1].1, &host);
    assert_failed(&out[2].1, "5.1.1");
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert!(got[0].tls);
    assert_eq!(got[0].auth_user.as_deref(), Some("relay-user"));
    assert_eq!(got[0].rcpts, ["bob@example.org", "carol@example.net"]);
    assert_eq!(got[0].data, MESSAGE);
}

#[tokio::test]
async fn smarthost_implicit_tls() {
    let sink = Sink::start(auth_sink(false, true)).await;
    let dns = smarthost_dns().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = smarthost_relay(sink.addr.port(), &dns, "implicit", "relay-user", "relay-pw");
    let delivery = Delivery::new(&settings(&dir, &relay)).unwrap();
    let to = rcpts(&["bob@example.org"]);
    let out = attempt(&delivery, &job(&to, "example.org")).await;
    assert_delivered(&out[0].1, HOSTNAME);
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert!(got[0].tls);
    assert_eq!(got[0].auth_user.as_deref(), Some("relay-user"));
}

#[tokio::test]
async fn smarthost_wrong_password_defers() {
    let sink = Sink::start(auth_sink(true, false)).await;
    let dns = smarthost_dns().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = smarthost_relay(sink.addr.port(), &dns, "starttls", "relay-user", "wrong");
    let delivery = Delivery::new(&settings(&dir, &relay)).unwrap();
    let to = rcpts(&["bob@example.org", "carol@example.org"]);
    let out = attempt(&delivery, &job(&to, "example.org")).await;
    assert_deferred(&out[0].1, "535 5.7.8");
    assert_deferred(&out[1].1, "535 5.7.8");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn smarthost_untrusted_certificate_defers() {
    let sink = Sink::start(auth_sink(true, false)).await;
    let dns = smarthost_dns().await;
    let dir = tempfile::tempdir().unwrap();
    // No ca_file: the self-signed test certificate is not trusted.
    let relay = smarthost_relay(sink.addr.port(), &dns, "starttls", "relay-user", "relay-pw")
        .replace("ca_file = \"cert.pem\"\n", "");
    let delivery = Delivery::new(&settings(&dir, &relay)).unwrap();
    let to = rcpts(&["bob@example.org"]);
    let out = attempt(&delivery, &job(&to, "example.org")).await;
    assert_deferred(&out[0].1, "STARTTLS");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn smarthost_plain_without_auth() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:{}\"\nsmarthost_tls = \"none\"\ntimeout = \"5s\"\n",
        sink.addr.port()
    );
    let delivery = Delivery::new(&settings(&dir, &relay)).unwrap();
    let to = rcpts(&["bob@example.org"]);
    let out = attempt(&delivery, &job(&to, "example.org")).await;
    assert_delivered(
        &out[0].1,
        &format!("127.0.0.1[127.0.0.1]:{}", sink.addr.port()),
    );
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert!(!got[0].tls);
    assert_eq!(got[0].auth_user, None);
}

#[tokio::test]
async fn custom_rcpt_rule_and_domain_literal() {
    let sink = Sink::start(SinkOptions {
        rcpt_rule: Arc::new(|rcpt: &str, _| {
            if rcpt.starts_with("full") {
                (552, "5.2.2 Mailbox full".into())
            } else {
                (250, "2.1.5 Ok".into())
            }
        }),
        ..SinkOptions::default()
    })
    .await;
    let dns = DnsServer::start(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery =
        Delivery::new(&settings(&dir, &mx_relay(sink.addr.port(), &dns, "none"))).unwrap();
    let to = rcpts(&["full@[127.0.0.1]", "ok@[127.0.0.1]"]);
    let out = attempt(&delivery, &job(&to, "[127.0.0.1]")).await;
    assert_failed(&out[0].1, "5.2.2");
    assert_delivered(
        &out[1].1,
        &format!("[127.0.0.1][127.0.0.1]:{}", sink.addr.port()),
    );
}

/// A fake MX at `addr`: greets with `greeting` (or never, when empty) and keeps the
/// connection open until the test ends.
async fn fake_mx(
    addr: std::net::SocketAddr,
    greeting: &'static str,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut tcp, _)) = listener.accept().await {
            if !greeting.is_empty() {
                let _ = tcp.write_all(greeting.as_bytes()).await;
            }
            held.push(tcp);
        }
    })
}

#[tokio::test]
async fn greeting_554_tries_next_host() {
    let sink = Sink::start(SinkOptions::default()).await;
    let port = sink.addr.port();
    let rejector = fake_mx(
        ([127, 0, 0, 2], port).into(),
        "554 5.7.1 mx1.example.test no service\r\n",
    )
    .await;
    let dns = DnsServer::start(vec![
        ("example.test.", Rr::Mx(10, "mx1.example.test.")),
        ("example.test.", Rr::Mx(20, "mx2.example.test.")),
        ("mx1.example.test.", Rr::A(Ipv4Addr::new(127, 0, 0, 2))),
        ("mx2.example.test.", Rr::A(LOCALHOST)),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = Delivery::new(&settings(&dir, &mx_relay(port, &dns, "none"))).unwrap();
    let to = rcpts(&["bob@example.test"]);
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_delivered(&out[0].1, &format!("mx2.example.test[127.0.0.1]:{port}"));
    rejector.abort();
}

#[tokio::test]
async fn silent_server_defers_within_the_timeouts() {
    let dns = DnsServer::start(vec![("example.test.", Rr::A(LOCALHOST))]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let silent = fake_mx(([127, 0, 0, 1], port).into(), "").await;
    let dir = tempfile::tempdir().unwrap();
    let relay = mx_relay(port, &dns, "none").replace("timeout = \"5s\"", "timeout = \"1s\"");
    let delivery = Delivery::new(&settings(&dir, &relay)).unwrap();
    let to = rcpts(&["bob@example.test"]);
    let started = std::time::Instant::now();
    let out = attempt(&delivery, &job(&to, "example.test")).await;
    assert_deferred(&out[0].1, "timed out");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    silent.abort();
}

#[test]
fn delivery_can_be_built_outside_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let relay = "mode = \"mx\"\nresolver = [\"127.0.0.1:53\"]\n";
    assert!(Delivery::new(&settings(&dir, relay)).is_ok());
}
