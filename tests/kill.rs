//! Durability: a message answered 250 survives SIGKILL of the server process and a restart.

mod common;

use common::binary::Binary;
use common::*;

#[tokio::test]
async fn queued_message_survives_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let queue = dir.path().join("queue");

    let mut server = Binary::start(&config);
    let tls = server.tls;
    let mut c = Client::implicit_tls(tls).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
        "235",
    )
    .await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    let r = c.expect("250 2.0.0 Ok: queued as ").await;
    let id = r
        .trim_start_matches("250 2.0.0 Ok: queued as ")
        .trim_end()
        .to_string();

    // SIGKILL right after the 250: no chance to flush anything.
    server.kill();

    let mut server = Binary::start(&config);
    let tls = server.tls;
    let queued = queued_in(&queue);
    assert_eq!(queued.len(), 1, "the message is still queued after restart");
    assert_eq!(queued[0].0["id"], id.as_str());
    assert!(String::from_utf8_lossy(&queued[0].1).ends_with(&message_from(ALICE)));
    // And the restarted server takes mail again.
    let mut c = Client::implicit_tls(tls).await;
    c.cmd("EHLO client.test", "250").await;
    server.kill();
}

/// Submit one message over an open, authenticated connection; returns the queue ID.
async fn submit_on(c: &mut Client, n: usize) -> String {
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd(&format!("RCPT TO:<user{n}@example.net>"), "250")
        .await;
    c.cmd("DATA", "354").await;
    let body = format!("From: {ALICE}\r\nSubject: message {n}\r\n\r\nbody {n}\r\n.\r\n");
    c.send(body.as_bytes()).await;
    let r = c.expect("250 2.0.0 Ok: queued as ").await;
    r.trim_start_matches("250 2.0.0 Ok: queued as ")
        .trim_end()
        .to_string()
}

#[tokio::test]
async fn twenty_queued_messages_all_deliver_after_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    // First life: the relay refuses connections, so everything stays queued (deferred).
    let dead_relay =
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";
    let config = write_config_full(
        dir.path(),
        "",
        "retry = [\"1s\"]",
        dead_relay,
        "127.0.0.1:0",
        "127.0.0.1:0",
    );
    let mut server = Binary::start(&config);
    let tls = server.tls;
    let mut c = Client::implicit_tls(tls).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
        "235",
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(submit_on(&mut c, n).await);
    }
    server.kill();
    assert_eq!(queued_in(&dir.path().join("queue")).len(), 20);

    // Second life: a working relay. Every message is delivered, exactly the 20 submitted.
    let sink = sink::Sink::start(sink::SinkOptions::default()).await;
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\n",
        sink.addr
    );
    let config = write_config_full(
        dir.path(),
        "",
        "retry = [\"1s\"]",
        &relay,
        "127.0.0.1:0",
        "127.0.0.1:0",
    );
    let mut server = Binary::start(&config);
    let got = sink.wait_for(20, IO_TIMEOUT).await;
    let mut delivered: Vec<String> = got
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.data);
            let at = text.find(" id ").unwrap() + 4;
            text[at..at + 20].to_string()
        })
        .collect();
    delivered.sort();
    delivered.dedup();
    ids.sort();
    assert_eq!(delivered, ids);
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !queued_in(&dir.path().join("queue")).is_empty() {
        assert!(std::time::Instant::now() < deadline, "queue not emptied");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.kill();
}

/// The queue commands work beside the running server and the server honours them.
#[tokio::test]
async fn queue_commands_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let dead_relay =
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";
    let config = write_config_full(
        dir.path(),
        "",
        "retry = [\"1h\"]",
        dead_relay,
        "127.0.0.1:0",
        "127.0.0.1:0",
    );
    let mut server = Binary::start(&config);
    let tls = server.tls;
    let mut c = Client::implicit_tls(tls).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
        "235",
    )
    .await;
    let keep = submit_on(&mut c, 1).await;
    let gone = submit_on(&mut c, 2).await;

    let queue = |args: &[&str]| {
        let mut full = vec!["queue"];
        full.extend(args);
        full.extend(["--config", config.to_str().unwrap()]);
        let out = run::run_submitd(None, &full, None);
        (out.code, out.stdout)
    };
    // Wait for the first (refused) attempt to be recorded.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let (code, out) = queue(&["list"]);
        assert_eq!(code, Some(0));
        if out.lines().count() == 2 && out.matches("deferred").count() == 2 {
            assert!(out.lines().any(|l| l.starts_with(&keep)), "{out}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never deferred: {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, _) = queue(&["delete", &gone]);
    assert_eq!(code, Some(0));
    let (code, _) = queue(&["delete", &gone]);
    assert_eq!(code, Some(1), "unknown ID");
    let (code, _) = queue(&["retry", &keep]);
    assert_eq!(code, Some(0));
    // The retry is picked up by the running scheduler: a second attempt is recorded.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let q = queued_in(&dir.path().join("queue"));
        assert_eq!(q.len(), 1, "deleted message stays deleted");
        if q[0].0["recipients"][0]["attempts"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "retry not picked up");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.kill();
}

/// SIGTERM: the server stops accepting, closes idle sessions with 421 4.3.2, lets the queue
/// finish and exits 0, leaving the queue intact.
#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let mut server = Binary::start(&config);
    let (plain_addr, tls) = (server.plain, server.tls);
    let mut c = Client::implicit_tls(tls).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
        "235",
    )
    .await;
    let id = submit_on(&mut c, 7).await;
    let mut idle = Client::plain(plain_addr).await;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    idle.expect("421 4.3.2").await;
    c.cmd("NOOP", "421 4.3.2").await;
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "server did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let q = queued_in(&dir.path().join("queue"));
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0["id"], id.as_str());
    assert!(
        std::net::TcpStream::connect(plain_addr).is_err(),
        "listener closed"
    );
}
