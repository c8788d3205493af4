//! The DSN extension (RFC 3461), delay warnings and REQUIRETLS (RFC 8689) end to end: submit
//! through the real server with the parameters, deliver to sinks on loopback that offer or
//! omit DSN, STARTTLS and REQUIRETLS, and look at what they received (the parameters on the
//! wire, the reports sent back to the sender) and at the log of the real binary.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::Binary;
use common::dns::{DnsServer, Rr};
use common::sink::{Received, Sink, SinkOptions};
use common::*;
use mail_parser::{MessageParser, MimeHeaders};

/// A body line that only the message's body has: a report that returns headers only must not
/// contain it.
const BODY_LINE: &str = "The secret body line 7f3a9c.";

fn body() -> String {
    format!("From: {ALICE}\r\nTo: bob@example.net\r\nSubject: dsn test\r\n\r\n{BODY_LINE}\r\n")
}

/// Submit as alice on `c` (authenticated) with MAIL parameters and per-recipient RCPT
/// parameters; the queue ID.
async fn submit_on(c: &mut Client, mail_params: &str, rcpts: &[(&str, &str)]) -> String {
    c.cmd(&format!("MAIL FROM:<{ALICE}>{mail_params}"), "250")
        .await;
    for (to, params) in rcpts {
        c.cmd(&format!("RCPT TO:<{to}>{params}"), "250").await;
    }
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", body()).as_bytes()).await;
    let r = c.expect("250 2.0.0 Ok: queued as ").await;
    r.trim_start_matches("250 2.0.0 Ok: queued as ")
        .trim_end()
        .to_string()
}

async fn submit(server: &TestServer, mail_params: &str, rcpts: &[(&str, &str)]) -> String {
    let mut c = server.alice().await;
    submit_on(&mut c, mail_params, rcpts).await
}

/// The reports (messages from `<>`) the sink received so far.
fn reports(sink: &Sink) -> Vec<Received> {
    sink.received()
        .into_iter()
        .filter(|r| r.from.is_empty())
        .collect()
}

/// A report's parts: (content type, text) of each.
fn parts(report: &Received) -> Vec<(String, String)> {
    let parsed = MessageParser::default().parse(&report.data).unwrap();
    let ct = parsed.content_type().unwrap();
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    parsed
        .parts
        .iter()
        .skip(1)
        .map(|p| {
            let ct = p.content_type().unwrap();
            let t = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""));
            (t, String::from_utf8_lossy(p.contents()).into_owned())
        })
        .collect()
}

/// The delivery-status part's text.
fn status_of(report: &Received) -> String {
    parts(report)
        .into_iter()
        .find(|(t, _)| t == "message/delivery-status")
        .map(|(_, text)| text)
        .expect("a message/delivery-status part")
}

/// Wait until the sink holds `n` reports; they.
async fn wait_reports(sink: &Sink, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let got = reports(sink);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} report(s), wanted {n}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `[relay]` lines for a smarthost in clear on the sink, short retries.
fn clear_smarthost(sink: &Sink) -> String {
    smarthost(sink)
}

/// `[relay]` lines for a verified STARTTLS smarthost `mail.example.test:PORT` (the test
/// certificate trusted through `ca_file`), resolved through `dns`.
fn verified_smarthost(sink: &Sink, dns: &DnsServer) -> String {
    format!(
        "mode = \"smarthost\"\nsmarthost = \"{HOSTNAME}:{}\"\nsmarthost_tls = \"starttls\"\n\
         resolver = [\"{}\"]\ntimeout = \"10s\"\nca_file = \"cert.pem\"\n",
        sink.addr.port(),
        dns.addr
    )
}

async fn smarthost_dns() -> DnsServer {
    DnsServer::start(vec![("mail.example.test.", Rr::A(Ipv4Addr::LOCALHOST))]).await
}

#[tokio::test]
async fn parameters_are_checked_and_stored_in_the_envelope() {
    let server = TestServer::start_relay(
        "retry = [\"1h\"]",
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n",
    )
    .await;
    let mut c = server.alice().await;
    let long_envid = "e".repeat(101);
    for (line, want) in [
        (format!("MAIL FROM:<{ALICE}> RET=BOGUS"), "501 5.5.4"),
        (
            format!("MAIL FROM:<{ALICE}> RET=FULL RET=HDRS"),
            "501 5.5.4",
        ),
        (
            format!("MAIL FROM:<{ALICE}> ENVID={long_envid}"),
            "501 5.5.4",
        ),
        (format!("MAIL FROM:<{ALICE}> ENVID=a+0Db"), "501 5.5.4"),
        (format!("MAIL FROM:<{ALICE}> REQUIRETLS=yes"), "501 5.5.4"),
    ] {
        c.cmd(&line, want).await;
    }
    c.cmd(
        &format!("MAIL FROM:<{ALICE}> RET=HDRS ENVID=QQ+2B314159"),
        "250",
    )
    .await;
    for (line, want) in [
        (
            "RCPT TO:<bob@example.net> NOTIFY=NEVER,SUCCESS",
            "501 5.5.4",
        ),
        (
            "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,SUCCESS",
            "501 5.5.4",
        ),
        ("RCPT TO:<bob@example.net> NOTIFY=SOMETIMES", "501 5.5.4"),
        (
            "RCPT TO:<bob@example.net> ORCPT=bob@example.net",
            "501 5.5.4",
        ),
        (
            "RCPT TO:<bob@example.net> NOTIFY=NEVER NOTIFY=NEVER",
            "501 5.5.4",
        ),
        ("RCPT TO:<bob@example.net> X-UNKNOWN=1", "555 5.5.4"),
    ] {
        c.cmd(line, want).await;
    }
    c.cmd(
        "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+2Bx@example.net",
        "250",
    )
    .await;
    c.cmd("RCPT TO:<carol@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", body()).as_bytes()).await;
    c.expect("250 2.0.0 Ok: queued as ").await;
    let queued = server.queued();
    let (env, _) = &queued[0];
    assert_eq!(env["ret"], "hdrs");
    assert_eq!(env["envid"], "QQ+2B314159");
    assert!(
        env.get("requiretls").is_none(),
        "left out when false: {env}"
    );
    let bob = &env["recipients"][0];
    assert_eq!(bob["notify"]["success"], true);
    assert_eq!(bob["notify"]["delay"], true);
    assert_eq!(bob["notify"]["failure"], false);
    assert_eq!(bob["orcpt"], "rfc822;bob+2Bx@example.net");
    let carol = &env["recipients"][1];
    assert!(
        carol.get("notify").is_none() && carol.get("orcpt").is_none(),
        "{carol}"
    );
}

#[tokio::test]
async fn notify_success_to_a_next_hop_without_dsn_gets_a_relayed_report() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("", &clear_smarthost(&sink)).await;
    submit(
        &server,
        " ENVID=track-1",
        &[
            (
                "bob@example.net",
                " NOTIFY=SUCCESS ORCPT=rfc822;bob@example.net",
            ),
            ("carol@example.net", ""),
        ],
    )
    .await;
    let got = wait_reports(&sink, 1).await;
    assert_eq!(got[0].rcpts, [ALICE]);
    let status = status_of(&got[0]);
    assert!(
        status.contains("Original-Envelope-Id: track-1\r\n"),
        "{status}"
    );
    assert!(
        status.contains("Original-Recipient: rfc822;bob@example.net\r\n"),
        "{status}"
    );
    assert!(
        status.contains("Final-Recipient: rfc822; bob@example.net\r\n"),
        "{status}"
    );
    assert!(status.contains("Action: relayed\r\n"), "{status}");
    assert!(status.contains("Status: 2.0.0\r\n"), "{status}");
    assert!(
        !status.contains("carol"),
        "carol asked for nothing: {status}"
    );
    // The sink offers no DSN: nothing was passed on.
    let original = sink
        .received()
        .into_iter()
        .find(|r| !r.from.is_empty())
        .unwrap();
    assert!(original.mail_params.iter().all(|p| !p.starts_with("ENVID")));
    assert!(original.rcpt_params.iter().all(Vec::is_empty));
    server.wait_empty().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reports(&sink).len(), 1, "one report");
}

#[tokio::test]
async fn a_next_hop_with_dsn_gets_the_parameters_verbatim_and_we_send_no_report() {
    let sink = Sink::start(SinkOptions {
        dsn: true,
        ..SinkOptions::default()
    })
    .await;
    let server = TestServer::start_relay("", &clear_smarthost(&sink)).await;
    submit(
        &server,
        " RET=HDRS ENVID=QQ+2B314159",
        &[
            (
                "bob@example.net",
                " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Bx@example.net",
            ),
            ("carol@example.net", ""),
            ("dave@example.net", " NOTIFY=NEVER"),
        ],
    )
    .await;
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    let m = &got[0];
    assert!(
        m.mail_params.contains(&"RET=HDRS".to_string()),
        "{:?}",
        m.mail_params
    );
    assert!(
        m.mail_params.contains(&"ENVID=QQ+2B314159".to_string()),
        "{:?}",
        m.mail_params
    );
    assert_eq!(
        m.rcpts,
        ["bob@example.net", "carol@example.net", "dave@example.net"]
    );
    assert_eq!(
        m.rcpt_params,
        [
            vec![
                "NOTIFY=SUCCESS,FAILURE".to_string(),
                "ORCPT=rfc822;bob+2Bx@example.net".to_string()
            ],
            // No ORCPT is made up for a recipient that came without one.
            vec![],
            vec!["NOTIFY=NEVER".to_string()],
        ]
    );
    server.wait_empty().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        reports(&sink).is_empty(),
        "the next hop reports from now on"
    );
}

#[tokio::test]
async fn notify_never_gets_no_report_of_a_failure() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("", &clear_smarthost(&sink)).await;
    submit(
        &server,
        "",
        &[
            ("reject-a@example.net", " NOTIFY=NEVER"),
            ("reject-b@example.net", " NOTIFY=SUCCESS"),
            ("ok@example.net", ""),
        ],
    )
    .await;
    sink.wait_for(1, IO_TIMEOUT).await;
    server.wait_empty().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        reports(&sink).is_empty(),
        "NOTIFY without FAILURE: no report; ok@ asked for none"
    );
}

#[tokio::test]
async fn ret_hdrs_returns_headers_only_with_envid_and_orcpt() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("", &clear_smarthost(&sink)).await;
    submit(
        &server,
        " RET=HDRS ENVID=env+2B42",
        &[(
            "reject-me@example.net",
            " NOTIFY=FAILURE ORCPT=rfc822;original+2Btag@example.net",
        )],
    )
    .await;
    let got = wait_reports(&sink, 1).await;
    let status = status_of(&got[0]);
    assert!(
        status.contains("Original-Envelope-Id: env+42\r\n"),
        "{status}"
    );
    assert!(
        status.contains("Original-Recipient: rfc822;original+tag@example.net\r\n"),
        "{status}"
    );
    assert!(status.contains("Action: failed\r\n"), "{status}");
    assert!(status.contains("Status: 5.1.1\r\n"), "{status}");
    let parts = parts(&got[0]);
    assert_eq!(parts[2].0, "text/rfc822-headers");
    assert!(parts[2].1.contains("Subject: dsn test"), "{:?}", parts[2]);
    let whole = String::from_utf8_lossy(&got[0].data);
    assert!(!whole.contains(BODY_LINE), "headers only: {whole}");
}

#[tokio::test]
async fn ret_full_returns_the_whole_message() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("", &clear_smarthost(&sink)).await;
    submit(&server, " RET=FULL", &[("reject-me@example.net", "")]).await;
    let got = wait_reports(&sink, 1).await;
    let parts = parts(&got[0]);
    assert_eq!(parts[2].0, "message/rfc822");
    let whole = String::from_utf8_lossy(&got[0].data);
    assert!(whole.contains(BODY_LINE), "{whole}");
    assert!(whole.contains("Subject: dsn test"), "{whole}");
}

/// Attempts 1 to 4 of `slow@` are deferred (451), the fifth is accepted; everyone else 250.
fn slow_sink() -> SinkOptions {
    SinkOptions {
        rcpt_rule: Arc::new(|rcpt: &str, attempt: u32| {
            if rcpt.starts_with("slow") && attempt <= 4 {
                (451, "4.2.1 Mailbox busy, try later".to_string())
            } else {
                (250, "2.1.5 Ok".to_string())
            }
        }),
        ..SinkOptions::default()
    }
}

fn delayed_reports(sink: &Sink) -> Vec<Received> {
    reports(sink)
        .into_iter()
        .filter(|r| status_of(r).contains("Action: delayed"))
        .collect()
}

#[tokio::test]
async fn a_delay_warning_is_sent_once_even_across_a_restart() {
    let sink = Sink::start(slow_sink()).await;
    let server = TestServer::start_relay(
        "retry = [\"1s\"]\ndelay_warning = \"1s\"",
        &clear_smarthost(&sink),
    )
    .await;
    submit(
        &server,
        " RET=FULL",
        &[
            ("slow@example.net", ""),
            ("slow-never@example.net", " NOTIFY=FAILURE"),
        ],
    )
    .await;
    let got = wait_reports(&sink, 1).await;
    let status = status_of(&got[0]);
    assert!(
        status.contains("Final-Recipient: rfc822; slow@example.net\r\n"),
        "{status}"
    );
    assert!(status.contains("Action: delayed\r\n"), "{status}");
    assert!(status.contains("Status: 4.2.1\r\n"), "{status}");
    assert!(
        status.contains("Diagnostic-Code: smtp; 451 4.2.1 Mailbox busy"),
        "{status}"
    );
    assert!(
        !status.contains("slow-never"),
        "NOTIFY without DELAY: {status}"
    );
    let parts = parts(&got[0]);
    assert_eq!(
        parts[2].0, "text/rfc822-headers",
        "delay reports: headers only"
    );
    // The warning is recorded on disk, so a restart does not send it again.
    let deadline = Instant::now() + IO_TIMEOUT;
    while !server
        .queued()
        .first()
        .is_some_and(|(env, _)| env["recipients"][0]["warned"] == true)
    {
        assert!(Instant::now() < deadline, "warned never saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, restarted) = start_again(&server.dir.path().join("submitd.toml")).await;
    // Delivered in the end, to both.
    let deadline = Instant::now() + IO_TIMEOUT;
    while sink
        .received()
        .iter()
        .filter(|r| !r.from.is_empty())
        .flat_map(|r| r.rcpts.clone())
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.wait_empty().await;
    assert_eq!(delayed_reports(&sink).len(), 1, "exactly one delay warning");
    restarted.cancel();
}

#[tokio::test]
async fn delay_warning_0s_sends_none() {
    let sink = Sink::start(slow_sink()).await;
    let server = TestServer::start_relay(
        "retry = [\"1s\"]\ndelay_warning = \"0s\"",
        &clear_smarthost(&sink),
    )
    .await;
    submit(&server, "", &[("slow@example.net", "")]).await;
    sink.wait_for(1, Duration::from_secs(30)).await;
    server.wait_empty().await;
    assert!(reports(&sink).is_empty());
}

/// The real binary on `relay`, its `[queue]` lines `queue`.
fn binary(dir: &tempfile::TempDir, queue: &str, relay: &str) -> Binary {
    let config = write_config_full(dir.path(), "", queue, relay, "127.0.0.1:0", "127.0.0.1:0");
    Binary::start(&config)
}

async fn submit_to(addr: SocketAddr, mail_params: &str, rcpts: &[(&str, &str)]) -> String {
    let mut c = login_as(addr, ALICE, ALICE_PASSWORD, "235").await;
    submit_on(&mut c, mail_params, rcpts).await
}

// The binary's log is waited for by blocking: the sink and the DNS server need threads of
// their own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_to_a_verified_next_hop_without_requiretls_bounces_with_5_7_10() {
    let sink = Sink::start(SinkOptions {
        starttls: true,
        dsn: true,
        ..SinkOptions::default()
    })
    .await;
    let dns = smarthost_dns().await;
    let dir = tempfile::tempdir().unwrap();
    let server = binary(&dir, "", &verified_smarthost(&sink, &dns));
    let id = submit_to(
        server.tls,
        " REQUIRETLS RET=FULL",
        &[("bob@example.net", "")],
    )
    .await;
    let line = server.wait_for(|l| l.contains(&id) && l.contains("bounced"));
    assert!(line.contains("5.7.10"), "{line}");
    assert!(line.contains("does not offer REQUIRETLS"), "{line}");
    // The report travels under REQUIRETLS too (RFC 8689 section 5): this next hop cannot take
    // it either, and a report is never reported on.
    server.wait_for(|l| l.contains("bounce undeliverable"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.received().is_empty(), "nothing without REQUIRETLS");
}

// The binary's log is waited for by blocking: the sink and the DNS server need threads of
// their own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_over_an_unverified_mx_route_bounces_with_5_7_10() {
    let sink = Sink::start(SinkOptions {
        starttls: true,
        requiretls: true,
        ..SinkOptions::default()
    })
    .await;
    let dns = DnsServer::start(vec![
        ("dest.test.", Rr::Mx(10, "mx.dest.test.")),
        ("mx.dest.test.", Rr::A(Ipv4Addr::LOCALHOST)),
        ("example.test.", Rr::A(Ipv4Addr::LOCALHOST)),
    ])
    .await;
    let relay = format!(
        "mode = \"mx\"\nport = {}\nresolver = [\"{}\"]\ntimeout = \"10s\"\ntls = \"required\"\n",
        sink.addr.port(),
        dns.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let server = binary(&dir, "", &relay);
    let id = submit_to(server.tls, " REQUIRETLS", &[("bob@dest.test", "")]).await;
    let line = server.wait_for(|l| l.contains(&id) && l.contains("bounced"));
    assert!(line.contains("5.7.10"), "{line}");
    server.wait_for(|l| l.contains("bounce undeliverable"));
    // Without REQUIRETLS the same route delivers (over unverified TLS).
    submit_to(server.tls, "", &[("bob@dest.test", "")]).await;
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert!(!got[0].mail_params.contains(&"REQUIRETLS".to_string()));
}

#[tokio::test]
async fn requiretls_to_a_verified_next_hop_with_requiretls_is_delivered_with_the_parameter() {
    let sink = Sink::start(SinkOptions {
        starttls: true,
        requiretls: true,
        ..SinkOptions::default()
    })
    .await;
    let dns = smarthost_dns().await;
    let server = TestServer::start_relay("", &verified_smarthost(&sink, &dns)).await;
    submit(
        &server,
        " REQUIRETLS RET=FULL",
        &[("bob@example.net", ""), ("reject-me@example.net", "")],
    )
    .await;
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    let m = got.iter().find(|r| !r.from.is_empty()).unwrap();
    assert!(m.tls);
    assert!(
        m.mail_params.contains(&"REQUIRETLS".to_string()),
        "{:?}",
        m.mail_params
    );
    assert_eq!(m.rcpts, ["bob@example.net"]);
    // The failure report is sent with REQUIRETLS too, and returns the headers only although
    // RET=FULL was asked (RFC 8689 section 5).
    let report = wait_reports(&sink, 1).await.remove(0);
    assert!(report.tls);
    assert!(
        report.mail_params.contains(&"REQUIRETLS".to_string()),
        "{:?}",
        report.mail_params
    );
    let parts = parts(&report);
    assert_eq!(parts[2].0, "text/rfc822-headers");
    let whole = String::from_utf8_lossy(&report.data);
    assert!(!whole.contains(BODY_LINE), "{whole}");
    assert!(whole.contains("REQUIRETLS"), "the report says why: {whole}");
}

#[tokio::test]
async fn tls_required_no_lets_a_message_through_without_starttls_under_required() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![
        ("dest.test.", Rr::Mx(10, "mx.dest.test.")),
        ("mx.dest.test.", Rr::A(Ipv4Addr::LOCALHOST)),
    ])
    .await;
    let relay = format!(
        "mode = \"mx\"\nport = {}\nresolver = [\"{}\"]\ntimeout = \"10s\"\ntls = \"required\"\n",
        sink.addr.port(),
        dns.addr
    );
    let server = TestServer::start_relay("retry = [\"1h\"]", &relay).await;
    let mut c = server.alice().await;
    for (i, header) in ["TLS-Required: No\r\n", ""].iter().enumerate() {
        c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
        c.cmd(&format!("RCPT TO:<bob{i}@dest.test>"), "250").await;
        c.cmd("DATA", "354").await;
        let msg = format!("From: {ALICE}\r\n{header}Subject: t{i}\r\n\r\nhi\r\n.\r\n");
        c.send(msg.as_bytes()).await;
        c.expect("250").await;
    }
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got[0].rcpts, ["bob0@dest.test"]);
    assert!(!got[0].tls);
    // The other one waits for TLS the sink never offers.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(sink.received().len(), 1);
    assert_eq!(server.queued().len(), 1);
}

#[tokio::test]
async fn ehlo_offers_dsn_and_requiretls_only_after_tls() {
    let server = TestServer::start().await;
    let mut c = server.plain().await;
    let before = c.cmd("EHLO client.test", "250").await;
    assert!(
        !before.contains("DSN") && !before.contains("REQUIRETLS"),
        "{before}"
    );
    c.starttls().await;
    let after = c.cmd("EHLO client.test", "250").await;
    assert!(
        after.contains("250-DSN\r\n") && after.contains("250-REQUIRETLS\r\n"),
        "{after}"
    );
    let mut t = server.tls().await;
    let implicit = t.cmd("EHLO client.test", "250").await;
    assert!(implicit.contains("250-DSN\r\n") && implicit.contains("250-REQUIRETLS\r\n"));
}

#[tokio::test]
async fn the_requiretls_parameter_wins_over_tls_required_no() {
    // A verified smarthost that is not there: both messages wait in the queue.
    let relay = "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"starttls\"\n\
                 ca_file = \"cert.pem\"\ntimeout = \"2s\"\n";
    let server = TestServer::start_relay("retry = [\"1h\"]", relay).await;
    let mut c = server.alice().await;
    let mut ids = Vec::new();
    for params in ["", " REQUIRETLS"] {
        c.cmd(&format!("MAIL FROM:<{ALICE}>{params}"), "250").await;
        c.cmd("RCPT TO:<bob@example.net>", "250").await;
        c.cmd("DATA", "354").await;
        let msg = format!("From: {ALICE}\r\nTLS-Required: No\r\nSubject: t\r\n\r\nhi\r\n.\r\n");
        c.send(msg.as_bytes()).await;
        let r = c.expect("250 2.0.0 Ok: queued as ").await;
        ids.push(r.trim().rsplit(' ').next().unwrap().to_string());
    }
    let queued = server.queued();
    let env = |id: &str| {
        queued
            .iter()
            .find(|(e, _)| e["id"] == id)
            .map(|(e, _)| e.clone())
            .unwrap()
    };
    let header_only = env(&ids[0]);
    assert_eq!(header_only["tls_optional"], true, "{header_only}");
    assert!(header_only.get("requiretls").is_none());
    let both = env(&ids[1]);
    assert_eq!(both["requiretls"], true, "{both}");
    assert!(
        both.get("tls_optional").is_none(),
        "the parameter wins: {both}"
    );
}
