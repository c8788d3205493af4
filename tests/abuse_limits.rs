//! The defences across connections, against the real server over raw sockets: login
//! throttling per address and per login (454 without argon2), the bounded argon2 wait queue
//! under a burst, per-user sending limits at MAIL and RCPT, and automatic suspension with the
//! `submitd user list|unsuspend|suspend` commands beside the running server.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const THROTTLED: &str = "454 4.7.0 Too many failed authentications, try again later";
const BUSY: &str = "454 4.7.0 Temporary authentication failure";
const SUSPENDED: &str = "550 5.7.1 Account suspended, contact the administrator";

/// Run the binary with the server's config; (exit code, stdout, stderr).
fn submitd(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn per_ip_throttle_across_connections_answers_454_without_argon2() {
    let (server, verifier) = start_prepared(
        "auth_failures_per_ip = 3\nauth_failures_per_login = 0",
        |_| {},
    )
    .await;
    // Three failures from 127.0.0.1 on three connections, for three logins (one unknown).
    for login in [ALICE, BOB, "nobody@example.test"] {
        let mut c = login_as(server.submissions, login, "wrong", "535 5.7.8").await;
        c.cmd("QUIT", "221").await;
    }
    assert_eq!(verifier.verifications(), 3);

    // A fourth connection, with the right password: refused before argon2.
    let mut c = login_as(server.submissions, ALICE, ALICE_PASSWORD, THROTTLED).await;
    assert_eq!(
        verifier.verifications(),
        3,
        "no argon2 ran for the refused AUTH"
    );
    // AUTH LOGIN is throttled the same way; the session goes on.
    c.cmd("AUTH LOGIN", "334").await;
    c.cmd(&b64(ALICE.as_bytes()), "334").await;
    c.cmd(&b64(ALICE_PASSWORD.as_bytes()), THROTTLED).await;
    c.cmd("NOOP", "250").await;
    c.cmd("MAIL FROM:<alice@example.test>", "530").await;
    assert_eq!(verifier.verifications(), 3);
}

#[tokio::test]
async fn per_login_throttle_across_connections() {
    let (server, verifier) = start_prepared(
        "auth_failures_per_ip = 0\nauth_failures_per_login = 2",
        |_| {},
    )
    .await;
    let mut c = login_as(server.submissions, BOB, "guess1", "535").await;
    c.cmd(&format!("AUTH PLAIN {}", plain(BOB, "guess2")), "535")
        .await;
    drop(c);
    assert_eq!(verifier.verifications(), 2);

    // Bob is locked, whoever asks and with the right password; argon2 does not run.
    let _c = login_as(server.submissions, BOB, BOB_PASSWORD, THROTTLED).await;
    assert_eq!(verifier.verifications(), 2);
    // Other logins from the same address are not.
    let mut alice = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    alice.cmd("MAIL FROM:<alice@example.test>", "250").await;
    // Unknown logins are counted per login too.
    for _ in 0..2 {
        login_as(server.submissions, "ghost@example.test", "x", "535").await;
    }
    login_as(server.submissions, "ghost@example.test", "x", THROTTLED).await;
    assert_eq!(verifier.verifications(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_200_auths_is_bounded_and_other_sessions_stay_responsive() {
    let (server, verifier) = start_prepared(
        "auth_parallel = 1\nauth_queue = 4\nauth_failures_per_ip = 0\n\
         auth_failures_per_login = 0\nmax_connections_per_ip = 400",
        |_| {},
    )
    .await;
    let addr = server.submissions;
    let mut bystander = server.tls().await;
    bystander.cmd("EHLO bystander.test", "250").await;

    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut c = Client::implicit_tls(addr).await;
        c.cmd("EHLO burst.test", "250").await;
        clients.push(c);
    }
    let mut burst = tokio::task::JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        burst.spawn(async move {
            let started = Instant::now();
            // Distinct guesses: the same credentials would share one argon2 run.
            c.send(format!("AUTH PLAIN {}\r\n", plain(ALICE, &format!("wrong{i}"))).as_bytes())
                .await;
            // `reply` panics after IO_TIMEOUT: nobody may hang.
            let reply = c.reply().await;
            (reply, started.elapsed())
        });
    }

    // While the burst runs, another session is answered promptly.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        bystander.cmd("NOOP", "250").await;
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slowest < Duration::from_secs(1), "NOOP took {slowest:?}");

    let (mut busy, mut failed) = (0, 0);
    let mut slowest_busy = Duration::ZERO;
    while let Some(r) = burst.join_next().await {
        let (reply, took) = r.unwrap();
        if reply.starts_with(BUSY) {
            busy += 1;
            slowest_busy = slowest_busy.max(took);
        } else {
            assert!(reply.starts_with("535 5.7.8"), "{reply:?}");
            failed += 1;
        }
    }
    assert_eq!(busy + failed, 200);
    assert!(busy > 0, "the wait queue never filled: nothing got 454");
    assert!(failed > 0, "someone was verified");
    assert_eq!(verifier.verifications(), failed as u64, "454 ran no argon2");
    assert!(slowest_busy < Duration::from_secs(5), "{slowest_busy:?}");
    // And afterwards the server is fine.
    bystander
        .cmd(
            &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
            "235",
        )
        .await;
}

/// A connection pool opening 200 sessions for one account at once: the same credentials share
/// one argon2 run, so every session is in, even with one argon2 slot and a queue of 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_200_logins_for_one_account_all_succeed() {
    let (server, verifier) = start_prepared(
        "auth_parallel = 1\nauth_queue = 4\nmax_connections_per_ip = 400",
        |_| {},
    )
    .await;
    let addr = server.submissions;
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut c = Client::implicit_tls(addr).await;
        c.cmd("EHLO pool.test", "250").await;
        clients.push(c);
    }
    let mut burst = tokio::task::JoinSet::new();
    for mut c in clients {
        burst.spawn(async move {
            c.send(format!("AUTH PLAIN {}\r\n", plain(ALICE, ALICE_PASSWORD)).as_bytes())
                .await;
            // `reply` panics after IO_TIMEOUT: nobody may hang.
            c.reply().await
        });
    }
    let mut ok = 0;
    while let Some(r) = burst.join_next().await {
        let reply = r.unwrap();
        assert!(reply.starts_with("235"), "{reply:?}");
        ok += 1;
    }
    assert_eq!(ok, 200);
    let runs = verifier.verifications();
    assert!(runs <= 10, "{runs} argon2 runs for one credential");
}

#[tokio::test]
async fn message_rate_limit_at_mail_per_user_with_override() {
    let (server, _) = start_prepared("user_messages_per_hour = 2", |dir| {
        // bob is the last [[user]]: this line lands in his table.
        let users = dir.join("users.toml");
        let text = std::fs::read_to_string(&users).unwrap() + "messages_per_hour = 1\n";
        std::fs::write(users, text).unwrap();
    })
    .await;
    let mut alice = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    for _ in 0..2 {
        let r = send_message(&mut alice, ALICE, &["a@example.net"]).await;
        assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    }
    alice
        .cmd(
            "MAIL FROM:<alice@example.test>",
            "450 4.7.1 Message rate limit exceeded for user alice@example.test, try again later",
        )
        .await;
    // On a new connection too: the count is per user, not per session.
    let mut again = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    again
        .cmd("MAIL FROM:<alice@example.test>", "450 4.7.1")
        .await;

    // bob's own limit (1) from the users file.
    let mut bob = login_as(server.submissions, BOB, BOB_PASSWORD, "235").await;
    let r = send_message(&mut bob, BOB, &["b@example.net"]).await;
    assert!(r.starts_with("250"), "{r}");
    bob.cmd(
        "MAIL FROM:<bob@example.test>",
        "450 4.7.1 Message rate limit exceeded for user bob@example.test",
    )
    .await;
    assert_eq!(server.queued().len(), 3);
}

#[tokio::test]
async fn refused_messages_do_not_count() {
    let (server, _) = start_prepared("user_messages_per_hour = 1", |_| {}).await;
    let mut alice = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    // Abandoned transactions and refused messages are not sent mail.
    alice.cmd("MAIL FROM:<alice@example.test>", "250").await;
    alice.cmd("RCPT TO:<a@example.net>", "250").await;
    alice.cmd("RSET", "250").await;
    alice.cmd("MAIL FROM:<alice@example.test>", "250").await;
    alice.cmd("RCPT TO:<a@example.net>", "250").await;
    alice.cmd("DATA", "354").await;
    alice
        .send(b"Subject: no From header\r\n\r\nHi.\r\n.\r\n")
        .await;
    alice.expect("550 5.6.0").await;
    let r = send_message(&mut alice, ALICE, &["a@example.net"]).await;
    assert!(r.starts_with("250"), "{r}");
    alice
        .cmd("MAIL FROM:<alice@example.test>", "450 4.7.1")
        .await;
}

#[tokio::test]
async fn recipient_rate_limit_at_rcpt_keeps_earlier_recipients() {
    let (server, _) = start_prepared("user_recipients_per_hour = 3", |_| {}).await;
    let mut alice = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    let r = send_message(&mut alice, ALICE, &["a@example.net", "b@example.net"]).await;
    assert!(r.starts_with("250"), "{r}");

    alice.cmd("MAIL FROM:<alice@example.test>", "250").await;
    alice.cmd("RCPT TO:<c@example.net>", "250").await;
    alice
        .cmd(
            "RCPT TO:<d@example.net>",
            "450 4.7.1 Recipient rate limit exceeded for user alice@example.test, try again later",
        )
        .await;
    // The message still goes to the recipient accepted before the limit.
    alice.cmd("DATA", "354").await;
    alice
        .send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    alice.expect("250 2.0.0 Ok: queued").await;
    let queued = server.queued();
    assert_eq!(queued.len(), 2);
    let rcpts: Vec<usize> = queued
        .iter()
        .map(|(env, _)| env["recipients"].as_array().unwrap().len())
        .collect();
    let mut sorted = rcpts.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2]);

    // Used up: the next message cannot have any recipient, but MAIL itself is fine.
    alice.cmd("MAIL FROM:<alice@example.test>", "250").await;
    alice.cmd("RCPT TO:<e@example.net>", "450 4.7.1").await;
    alice.cmd("DATA", "503").await;
}

#[tokio::test]
async fn suspension_threshold_persists_and_the_cli_lifts_it_without_restart() {
    let (server, _) = start_prepared("suspend_recipients_per_hour = 3", |_| {}).await;
    let config = server.dir.path().join("submitd.toml");
    let state = server.queue_dir().join("suspended.json");

    let mut alice = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    let r = send_message(&mut alice, ALICE, &["a@example.net", "b@example.net"]).await;
    assert!(r.starts_with("250"), "{r}");
    assert!(!state.exists());
    // The message that reaches the threshold is queued; the account is then suspended.
    let r = send_message(&mut alice, ALICE, &["c@example.net"]).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    alice.cmd("MAIL FROM:<alice@example.test>", SUSPENDED).await;
    assert_eq!(server.queued().len(), 2);

    // Persisted, and visible to the CLI.
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains(ALICE), "{text}");
    let (code, out, err) = submitd(&config, &["user", "list"]);
    assert_eq!(code, 0, "{err}");
    let alice_line = out.lines().find(|l| l.starts_with(ALICE)).unwrap();
    assert!(alice_line.contains("(suspended since "), "{out}");
    assert!(
        alice_line.contains("3 recipients in the last hour"),
        "{out}"
    );
    let bob_line = out.lines().find(|l| l.starts_with(BOB)).unwrap();
    assert!(!bob_line.contains("suspended"), "{out}");

    // A suspended user still authenticates (the password is not the problem) and others send.
    let mut again = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    again.cmd("MAIL FROM:<alice@example.test>", SUSPENDED).await;
    let mut bob = login_as(server.submissions, BOB, BOB_PASSWORD, "235").await;
    bob.cmd("MAIL FROM:<bob@example.test>", "250").await;

    // A restart keeps the suspension.
    let (restarted, stop) = start_again(&config).await;
    let mut c = login_as(restarted, ALICE, ALICE_PASSWORD, "235").await;
    c.cmd("MAIL FROM:<alice@example.test>", SUSPENDED).await;
    stop.cancel();

    // Lifted by the CLI while the server runs: seen at the next login.
    let (code, _, err) = submitd(&config, &["user", "unsuspend", ALICE]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = submitd(&config, &["user", "unsuspend", ALICE]);
    assert_eq!(code, 1, "not suspended any more: {err}");
    assert!(err.contains("not suspended"), "{err}");
    let (_, out, _) = submitd(&config, &["user", "list"]);
    assert!(!out.contains("suspended"), "{out}");
    assert_eq!(
        mail_reply_eventually(&server, ALICE, ALICE_PASSWORD, "250").await,
        "250"
    );
    // The count toward suspension started over: one more recipient does not re-suspend.
    let mut alice = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    let r = send_message(&mut alice, ALICE, &["d@example.net"]).await;
    assert!(r.starts_with("250"), "{r}");
    alice.cmd("MAIL FROM:<alice@example.test>", "250").await;

    // The administrator can suspend too; unknown logins are refused.
    let (code, _, err) = submitd(&config, &["user", "suspend", BOB, "--reason", "phished"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = submitd(&config, &["user", "suspend", "nobody@example.test"]);
    assert_eq!(code, 1);
    assert_eq!(
        mail_reply_eventually(&server, BOB, BOB_PASSWORD, "550").await,
        "550"
    );
    let (_, out, _) = submitd(&config, &["user", "list"]);
    assert!(out.contains("phished"), "{out}");
}

/// Log in afresh until MAIL FROM answers with `want` (the server re-reads the suspension state
/// at most once a second); the last code seen.
async fn mail_reply_eventually(
    server: &TestServer,
    login: &str,
    password: &str,
    want: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = login_as(server.submissions, login, password, "235").await;
        let r = c.cmd(&format!("MAIL FROM:<{login}>"), "").await;
        let code = r[..3].to_string();
        if code == want || Instant::now() > deadline {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn check_config_reports_a_broken_suspension_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let (code, _, err) = submitd(&config, &["check-config"]);
    assert_eq!(code, 0, "{err}");
    std::fs::create_dir(dir.path().join("queue")).unwrap();
    std::fs::write(dir.path().join("queue/suspended.json"), "{oops").unwrap();
    let (code, _, err) = submitd(&config, &["check-config"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("queue.dir") && err.contains("suspended.json"),
        "{err}"
    );
    // The user commands refuse to overwrite it.
    let (code, _, err) = submitd(&config, &["user", "suspend", ALICE]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("queue/suspended.json")).unwrap(),
        "{oops"
    );
}
