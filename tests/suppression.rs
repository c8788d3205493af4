//! The suppression list (issue 16) end to end: a sink that answers 550 for a recipient, the
//! real server, the real `submitd suppression` binary, and SMTP clients.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::run::{Output, run_submitd};
use common::sink::{RcptRule, Sink, SinkOptions, default_rcpt_rule};
use common::{ALICE, BOB, BOB_PASSWORD, IO_TIMEOUT, TestServer, login_as, message_from, smarthost};

const SUPPRESSED: &str = "550 5.1.1 Recipient suppressed after a permanent failure";

fn config(server: &TestServer) -> PathBuf {
    server.dir.path().join("submitd.toml")
}

fn cli(config: &Path, args: &[&str]) -> Output {
    let mut full = vec!["--config", config.to_str().unwrap(), "suppression"];
    full.extend_from_slice(args);
    run_submitd(None, &full, None)
}

/// The reply to `RCPT TO:<rcpt>` in a fresh transaction of `c` (then RSET).
async fn rcpt_reply(c: &mut common::Client, from: &str, rcpt: &str) -> String {
    c.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
    c.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes()).await;
    let reply = c.reply().await;
    c.cmd("RSET", "250").await;
    reply.trim_end().to_owned()
}

/// Ask (bounded in time) until `rcpt` gets a reply starting with `want` from alice.
async fn wait_rcpt(addr: std::net::SocketAddr, rcpt: &str, want: &str) {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut c = login_as(addr, ALICE, common::ALICE_PASSWORD, "235").await;
    loop {
        let got = rcpt_reply(&mut c, ALICE, rcpt).await;
        if got.starts_with(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rcpt}: still {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A sink rule: `gone@remote.test` gets `550 5.1.1` while `gone` is set; the rest as usual.
fn switchable(gone: Arc<AtomicBool>) -> RcptRule {
    let usual = default_rcpt_rule();
    Arc::new(move |rcpt: &str, attempt: u32| {
        if rcpt.eq_ignore_ascii_case("gone@remote.test") && gone.load(Ordering::SeqCst) {
            (550, "5.1.1 No such user here".to_string())
        } else {
            usual(rcpt, attempt)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_suppresses_for_that_tenant_survives_restart_and_the_cli_lifts_it() {
    let gone = Arc::new(AtomicBool::new(true));
    let sink = Sink::start(SinkOptions {
        rcpt_rule: switchable(gone.clone()),
        ..SinkOptions::default()
    })
    .await;
    let server = TestServer::start_relay("", &smarthost(&sink)).await;
    let id = server
        .submit(
            &["gone@remote.test", "ok@remote.test"],
            &message_from(ALICE),
        )
        .await;
    server.wait_empty().await;

    // The CLI shows the entry with the reply that caused it.
    let out = cli(&config(&server), &["list"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    let fields: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(&fields[..2], [ALICE, "gone@remote.test"], "{out:?}");
    assert!(fields[4].contains("550 5.1.1 No such user here"), "{out:?}");
    let out = cli(&config(&server), &["list", "--tenant", BOB]);
    assert_eq!(out.stdout, "", "{out:?}");

    // The status record outlives the queue file.
    let spool = submitd::queue::Spool::attach(&server.queue_dir());
    let qid = submitd::queue::QueueId::parse(&id).unwrap();
    let status = submitd::status::lookup(&spool, &qid).expect("a status record");
    let states: Vec<(&str, &str)> = status
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.state))
        .collect();
    assert_eq!(
        states,
        [("gone@remote.test", "bounced"), ("ok@remote.test", "sent")]
    );

    // Alice's next RCPT is refused with the exact line, in any case; the other recipient of
    // the same transaction still goes, alone.
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    let r = c.cmd("RCPT TO:<Gone@Remote.TEST>", "550").await;
    assert_eq!(r.trim_end(), SUPPRESSED);
    c.cmd("RCPT TO:<other@remote.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    c.expect("250").await;
    server.wait_empty().await;
    let last = sink.received().last().unwrap().clone();
    assert_eq!(last.rcpts, ["other@remote.test"]);

    // Another tenant is not affected.
    let mut b = login_as(server.submissions, BOB, BOB_PASSWORD, "235").await;
    assert!(
        rcpt_reply(&mut b, BOB, "gone@remote.test")
            .await
            .starts_with("250")
    );

    // After a restart, still refused.
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (addr, stop) = common::start_again(&config(&server)).await;
    let mut c = login_as(addr, ALICE, common::ALICE_PASSWORD, "235").await;
    assert_eq!(
        rcpt_reply(&mut c, ALICE, "gone@remote.test").await,
        SUPPRESSED
    );

    // `suppression del` lifts it on the running server; the mailbox works again.
    gone.store(false, Ordering::SeqCst);
    let out = cli(&config(&server), &["del", ALICE, "gone@remote.test"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let again = cli(&config(&server), &["del", ALICE, "gone@remote.test"]);
    assert_eq!(again.code, Some(1), "{again:?}");
    wait_rcpt(addr, "gone@remote.test", "250").await;
    let before = sink.received().len();
    let mut c = login_as(addr, ALICE, common::ALICE_PASSWORD, "235").await;
    common::send_message(&mut c, ALICE, &["gone@remote.test"]).await;
    let got = sink.wait_for(before + 1, IO_TIMEOUT).await;
    assert_eq!(got.last().unwrap().rcpts, ["gone@remote.test"]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_add_reaches_the_running_server_and_entries_expire() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server =
        TestServer::start_full("", "", &smarthost(&sink), "[suppression]\nttl = \"3s\"\n").await;
    let out = cli(
        &config(&server),
        &[
            "add",
            ALICE,
            "Someone@Remote.test",
            "--reason",
            "asked to stop",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = cli(&config(&server), &["list", "--tenant", ALICE, "--json"]);
    let entry: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(entry["address"], "someone@remote.test");
    assert_eq!(entry["reply"], "asked to stop");
    wait_rcpt(server.submissions, "someone@remote.test", SUPPRESSED).await;
    // The TTL runs out: accepted again, and the CLI no longer lists it.
    wait_rcpt(server.submissions, "someone@remote.test", "250").await;
    let out = cli(&config(&server), &["list"]);
    assert_eq!(out.stdout, "", "{out:?}");
    // Bad input is a usage error, not a panic or an entry.
    let bad = cli(&config(&server), &["add", ALICE, "no-at-sign"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_expiry_bounces_do_not_suppress() {
    // The sink takes at most 4000 octets (5.3.4 here), and defers `defer...` forever (4.4.7
    // after max_age).
    let sink = Sink::start(SinkOptions {
        size: Some(4000),
        ..SinkOptions::default()
    })
    .await;
    let server =
        TestServer::start_relay("retry = [\"1s\"]\nmax_age = \"2s\"", &smarthost(&sink)).await;
    let big = format!("{}{}\r\n", message_from(ALICE), "x".repeat(8000));
    server.submit(&["big@remote.test"], &big).await;
    server
        .submit(&["defer-me@remote.test"], &message_from(ALICE))
        .await;
    server.wait_empty().await;
    let dsns: Vec<String> = sink
        .received()
        .iter()
        .filter(|r| r.from.is_empty())
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    assert_eq!(dsns.len(), 2, "both bounced");
    for status in ["Status: 5.3.4", "Status: 4.4.7"] {
        assert!(
            dsns.iter().any(|d| d.contains(status)),
            "{status}: {dsns:?}"
        );
    }
    let out = cli(&config(&server), &["list"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    let mut c = server.alice().await;
    assert!(
        rcpt_reply(&mut c, ALICE, "big@remote.test")
            .await
            .starts_with("250")
    );
    assert!(
        rcpt_reply(&mut c, ALICE, "defer-me@remote.test")
            .await
            .starts_with("250")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_neither_adds_nor_refuses() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_full(
        "",
        "",
        &smarthost(&sink),
        "[suppression]\nenabled = false\n",
    )
    .await;
    server
        .submit(&["reject-me@remote.test"], &message_from(ALICE))
        .await;
    server.wait_empty().await;
    let out = cli(&config(&server), &["list"]);
    assert_eq!(out.stdout, "", "{out:?}");
    let out = cli(&config(&server), &["add", ALICE, "x@remote.test"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut c = server.alice().await;
    assert!(
        rcpt_reply(&mut c, ALICE, "x@remote.test")
            .await
            .starts_with("250")
    );
}

/// POST a small JSON message to `rcpts` with the key `secret`: the status and the JSON body.
async fn post(server: &TestServer, secret: &str, rcpts: &[&str]) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "from": ALICE, "to": rcpts, "subject": "order", "text": "thanks\n",
    });
    common::keys::post_message(server, secret, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_over_smtp_is_refused_over_http_too_until_the_cli_lifts_it() {
    let gone = Arc::new(AtomicBool::new(true));
    let sink = Sink::start(SinkOptions {
        rcpt_rule: switchable(gone.clone()),
        ..SinkOptions::default()
    })
    .await;
    let api = "[api]\nlisten = \"127.0.0.1:0\"\n";
    let server = TestServer::start_full("", "", &smarthost(&sink), api).await;
    // An application key of alice's: its tenant is alice, so alice's bounces apply to it.
    let secret = common::keys::create(&server, "shop", &["--owner", ALICE, "--sender", ALICE]);

    // The permanent failure comes from the next hop, over SMTP submission.
    server
        .submit(&["gone@remote.test"], &message_from(ALICE))
        .await;
    server.wait_empty().await;
    wait_rcpt(server.submissions, "gone@remote.test", SUPPRESSED).await;

    // Over HTTP: alone, 422 naming it; beside another recipient, reported and not queued.
    let (status, got) = post(&server, &secret, &["gone@remote.test"]).await;
    assert_eq!(status, 422, "{got}");
    assert_eq!(got["recipients"], serde_json::json!(["gone@remote.test"]));
    let before = sink.received().len();
    let (status, got) = post(&server, &secret, &["Gone@Remote.test", "ok@remote.test"]).await;
    assert_eq!(status, 202, "{got}");
    let states: Vec<(String, String)> = got["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_ascii_lowercase();
            (s("address"), s("state"))
        })
        .collect();
    assert!(
        states.contains(&("gone@remote.test".into(), "suppressed".into()))
            && states.contains(&("ok@remote.test".into(), "queued".into())),
        "{got}"
    );
    let received = sink.wait_for(before + 1, IO_TIMEOUT).await;
    assert_eq!(received.last().unwrap().rcpts, ["ok@remote.test"]);

    // The CLI lifts it: the next HTTP message to it is queued and delivered.
    gone.store(false, Ordering::SeqCst);
    let out = cli(&config(&server), &["del", ALICE, "gone@remote.test"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    wait_rcpt(server.submissions, "gone@remote.test", "250").await;
    let before = sink.received().len();
    let (status, got) = post(&server, &secret, &["gone@remote.test"]).await;
    assert_eq!(status, 202, "{got}");
    let received = sink.wait_for(before + 1, IO_TIMEOUT).await;
    assert_eq!(received.last().unwrap().rcpts, ["gone@remote.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_entry_without_a_tenant_applies_to_every_tenant() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("", &smarthost(&sink)).await;
    let out = cli(&config(&server), &["add", "Abuse@Remote.test"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("for every tenant"), "{out:?}");
    let listed = cli(&config(&server), &["list"]);
    assert!(
        listed.stdout.starts_with("*\tabuse@remote.test\t"),
        "{listed:?}"
    );

    // Alice and bob alike are refused.
    wait_rcpt(server.submissions, "abuse@remote.test", SUPPRESSED).await;
    let mut b = login_as(server.submissions, BOB, BOB_PASSWORD, "235").await;
    assert_eq!(
        rcpt_reply(&mut b, BOB, "abuse@remote.test").await,
        SUPPRESSED
    );

    // `del ADDRESS` lifts it for every tenant that has it; a second time there is none.
    let out = cli(&config(&server), &["del", "abuse@remote.test"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let again = cli(&config(&server), &["del", "abuse@remote.test"]);
    assert_eq!(again.code, Some(1), "{again:?}");
    wait_rcpt(server.submissions, "abuse@remote.test", "250").await;
    assert!(
        rcpt_reply(&mut b, BOB, "abuse@remote.test")
            .await
            .starts_with("250")
    );
}

/// `DELETE /v1/suppressions/{address}` (with `?tenant=` when given): the status and body.
async fn delete(
    server: &TestServer,
    secret: &str,
    address: &str,
    tenant: Option<&str>,
) -> (u16, String) {
    let mut url = format!(
        "http://{}/v1/suppressions/{address}",
        server.api.expect("api on")
    );
    if let Some(t) = tenant {
        url.push_str(&format!("?tenant={t}"));
    }
    let response = reqwest::Client::builder()
        .timeout(IO_TIMEOUT)
        .build()
        .unwrap()
        .delete(url)
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_key_cannot_lift_an_operator_entry_an_admin_key_can() {
    let sink = Sink::start(SinkOptions::default()).await;
    let api = "[api]\nlisten = \"127.0.0.1:0\"\n";
    let server = TestServer::start_full("", "", &smarthost(&sink), api).await;
    let shop = common::keys::create(&server, "shop", &["--owner", ALICE, "--sender", ALICE]);
    let ops = common::keys::create(&server, "ops", &["--sender", ALICE, "--scope", "api,admin"]);
    let out = cli(&config(&server), &["add", "abuse@remote.test"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    wait_rcpt(server.submissions, "abuse@remote.test", SUPPRESSED).await;

    // Alice's key sees the entry but may not lift it: 403 saying who can, not a 404.
    let (status, body) = delete(&server, &shop, "abuse@remote.test", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("operator-entry") && body.contains("tenant=*"),
        "{body}"
    );
    let (status, _) = post(&server, &shop, &["abuse@remote.test"]).await;
    assert_eq!(status, 422);
    // An address nobody suppressed is still a 404.
    let (status, _) = delete(&server, &shop, "fine@remote.test", None).await;
    assert_eq!(status, 404);

    // The admin key lifts it for every tenant.
    let (status, body) = delete(&server, &ops, "abuse@remote.test", Some("*")).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = post(&server, &shop, &["abuse@remote.test"]).await;
    assert_eq!(status, 202);
}
