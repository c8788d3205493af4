//! Header sender forgery and mail loops, through the real server (issue 10, items 1 and 2):
//! group syntax in From or Sender is refused with `553 5.7.1`, and a message with more
//! `Received:` fields than `limits.max_hops` with `554 5.4.6`.

mod common;

use common::*;

/// MAIL, RCPT, DATA with `message` as the content; the reply to the final dot.
async fn submit(c: &mut Client, message: &str) -> String {
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<rcpt@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{message}.\r\n").as_bytes()).await;
    c.reply().await
}

#[tokio::test]
async fn group_syntax_in_from_or_sender_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    // Each of the review's variants: the foreign mailbox sits where mail-parser 0.11 makes it
    // the group's name, and the group's member is alice.
    let forgeries = [
        "From: Mallory <mallory@evil.test>: alice@example.test;\r\n",
        "From: alice@example.test\r\nSender: Mallory <mallory@evil.test>: alice@example.test;\r\n",
        "From: mallory@evil.test: alice@example.test;\r\n",
        "From: alice@example.test\r\nFrom: Mallory <mallory@evil.test>:;\r\n",
        "From: Friends: alice@example.test;\r\n",
    ];
    for headers in forgeries {
        let message = format!("{headers}To: rcpt@example.net\r\nSubject: x\r\n\r\nHello.\r\n");
        let reply = submit(&mut c, &message).await;
        assert!(reply.starts_with("553 5.7.1"), "{headers:?}: {reply}");
    }
    assert!(server.queued().is_empty());
    // The plain form still goes through on the same session.
    let reply = submit(&mut c, &message_from("Alice <alice@example.test>")).await;
    assert!(reply.starts_with("250"), "{reply}");
}

fn with_received(count: usize) -> String {
    let mut message = String::new();
    for i in 0..count {
        message.push_str(&format!(
            "Received: from hop{i}.example.net by mx{i}.example.net; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
        ));
    }
    message.push_str(&message_from(ALICE));
    message
}

#[tokio::test]
async fn more_received_fields_than_max_hops_is_a_loop() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    let reply = submit(&mut c, &with_received(300)).await;
    assert!(reply.starts_with("554 5.4.6 Too many hops"), "{reply}");
    // The default limit is 50, as Postfix's hopcount_limit.
    let reply = submit(&mut c, &with_received(51)).await;
    assert!(reply.starts_with("554 5.4.6"), "{reply}");
    assert!(server.queued().is_empty());
    let reply = submit(&mut c, &with_received(50)).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(server.queued().len(), 1);
}

#[tokio::test]
async fn max_hops_is_configurable() {
    let server = TestServer::start_with("max_hops = 2\n").await;
    let mut c = server.alice().await;
    let reply = submit(&mut c, &with_received(3)).await;
    assert!(reply.starts_with("554 5.4.6"), "{reply}");
    let reply = submit(&mut c, &with_received(2)).await;
    assert!(reply.starts_with("250"), "{reply}");
}
