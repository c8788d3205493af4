//! Durability: a message answered 250 survives SIGKILL of the server process and a restart.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::*;

/// The real binary, started on ephemeral ports; returns it with its two listen addresses.
fn start_binary(config: &Path) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening") {
                let kind = if line.contains("submissions") {
                    465
                } else {
                    587
                };
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .map(|a| a.trim_matches('"').parse::<SocketAddr>().unwrap());
                let _ = tx.send((kind, addr));
            }
        }
    });
    let (mut plain, mut tls) = (None, None);
    while plain.is_none() || tls.is_none() {
        let (kind, addr) = rx.recv_timeout(IO_TIMEOUT).expect("server did not start");
        if kind == 465 {
            tls = addr
        } else {
            plain = addr
        }
    }
    (child, plain.unwrap(), tls.unwrap())
}

#[tokio::test]
async fn queued_message_survives_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let queue = dir.path().join("queue");

    let (mut child, _, tls) = start_binary(&config);
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
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, _, tls) = start_binary(&config);
    let queued = queued_in(&queue);
    assert_eq!(queued.len(), 1, "the message is still queued after restart");
    assert_eq!(queued[0].0["id"], id.as_str());
    assert!(String::from_utf8_lossy(&queued[0].1).ends_with(&message_from(ALICE)));
    // And the restarted server takes mail again.
    let mut c = Client::implicit_tls(tls).await;
    c.cmd("EHLO client.test", "250").await;
    child.kill().unwrap();
    child.wait().unwrap();
}
