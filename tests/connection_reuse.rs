//! Connection reuse toward the next hop: several messages per connection, a connection the next
//! hop dropped between messages costs nothing, one message's 4xx does not spill onto the next.
//! Against the receiving SMTP server in tests/common/sink.rs, through `Delivery` directly and
//! through the whole server.

mod common;

use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::*;
use submitd::config::Settings;
use submitd::delivery::{Delivery, Job, Outcome};

const MESSAGE: &[u8] = b"From: alice@example.test\r\nSubject: reuse\r\n\r\nHello.\r\n.dot\r\n";

fn delivery(dir: &tempfile::TempDir, sink: &Sink) -> Delivery {
    let path = write_config_full(
        dir.path(),
        "",
        "",
        &smarthost(sink),
        "127.0.0.1:0",
        "127.0.0.1:0",
    );
    let text = std::fs::read_to_string(&path).unwrap();
    Delivery::new(&Settings::from_toml(&text, &path).unwrap()).unwrap()
}

/// One attempt of `MESSAGE` to `rcpt`, bounded; its outcome.
async fn send(delivery: &Delivery, rcpt: &str) -> Outcome {
    let rcpts = vec![rcpt.to_string()];
    let job = Job {
        sender: ALICE,
        ..common::stored::job(&rcpts, "example.net", common::stored::stored(MESSAGE))
    };
    let mut out = tokio::time::timeout(Duration::from_secs(60), delivery.attempt(&job))
        .await
        .expect("delivery attempt hung");
    assert_eq!(out.len(), 1);
    out.remove(0).1
}

fn assert_delivered(outcome: &Outcome) {
    assert!(
        matches!(outcome, Outcome::Delivered { reply, .. } if reply.starts_with("250")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn messages_share_one_connection_with_and_without_pipelining() {
    for pipelining in [true, false] {
        let sink = Sink::start(SinkOptions {
            pipelining,
            ..SinkOptions::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let delivery = delivery(&dir, &sink);
        for i in 0..5 {
            assert_delivered(&send(&delivery, &format!("bob{i}@example.net")).await);
        }
        let got = sink.wait_for(5, IO_TIMEOUT).await;
        assert_eq!(sink.connections(), 1, "pipelining {pipelining}");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.rcpts, [format!("bob{i}@example.net")]);
            assert_eq!(r.from, ALICE);
            assert_eq!(r.data, MESSAGE, "message changed in transit");
        }
    }
}

#[tokio::test]
async fn a_connection_carries_at_most_100_messages() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = delivery(&dir, &sink);
    for i in 0..101 {
        assert_delivered(&send(&delivery, &format!("bob{i}@example.net")).await);
    }
    assert_eq!(sink.wait_for(101, IO_TIMEOUT).await.len(), 101);
    assert_eq!(sink.connections(), 2);
}

/// The next hop closes after each message: the next message goes over a new connection in
/// the same attempt, delivered, not deferred.
#[tokio::test]
async fn connection_dropped_between_messages_is_replaced_at_once() {
    for pipelining in [true, false] {
        let sink = Sink::start(SinkOptions {
            close_after: Some(1),
            pipelining,
            ..SinkOptions::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let delivery = delivery(&dir, &sink);
        assert_delivered(&send(&delivery, "bob1@example.net").await);
        // Let the close reach us, so that the cached connection is surely dead.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        assert_delivered(&send(&delivery, "bob2@example.net").await);
        assert!(started.elapsed() < Duration::from_secs(5));
        // And without the pause: the close may race with the next MAIL FROM.
        assert_delivered(&send(&delivery, "bob3@example.net").await);
        let got = sink.wait_for(3, IO_TIMEOUT).await;
        let rcpts: Vec<_> = got.iter().map(|r| r.rcpts[0].as_str()).collect();
        assert_eq!(
            rcpts,
            ["bob1@example.net", "bob2@example.net", "bob3@example.net"]
        );
        assert_eq!(sink.connections(), 3, "pipelining {pipelining}");
    }
}

/// A 4xx for one message's recipient defers that message only; the connection carries on.
#[tokio::test]
async fn a_4xx_in_a_reused_connection_defers_only_that_message() {
    for pipelining in [true, false] {
        let sink = Sink::start(SinkOptions {
            pipelining,
            ..SinkOptions::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let delivery = delivery(&dir, &sink);
        assert_delivered(&send(&delivery, "bob1@example.net").await);
        match send(&delivery, "defer@example.net").await {
            Outcome::Deferred { reply, .. } => assert!(reply.contains("451"), "{reply}"),
            other => panic!("expected Deferred, got {other:?}"),
        }
        match send(&delivery, "reject@example.net").await {
            Outcome::Failed { status, .. } => assert_eq!(status, "5.1.1"),
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_delivered(&send(&delivery, "bob2@example.net").await);
        let got = sink.wait_for(2, IO_TIMEOUT).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].rcpts, ["bob1@example.net"]);
        assert_eq!(got[1].rcpts, ["bob2@example.net"]);
        assert_eq!(got[1].data, MESSAGE);
        assert_eq!(sink.connections(), 1, "pipelining {pipelining}");
    }
}

/// Submit one message as alice to `rcpt`.
async fn submit(server: &TestServer, rcpt: &str, subject: &str) {
    let body = format!("From: {ALICE}\r\nSubject: {subject}\r\n\r\nbody {subject}\r\n");
    server.submit(&[rcpt], &body).await;
}

/// Through the whole server: N messages to the smarthost arrive intact over fewer than N
/// connections.
#[tokio::test]
async fn queued_messages_reuse_connections_end_to_end() {
    const N: usize = 20;
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("concurrency = 2", &smarthost(&sink)).await;
    for i in 0..N {
        submit(&server, &format!("bob{i}@example.net"), &format!("m{i}")).await;
    }
    let got = sink.wait_for(N, IO_TIMEOUT).await;
    server.wait_empty().await;
    let mut rcpts: Vec<String> = got.iter().map(|r| r.rcpts.join(",")).collect();
    rcpts.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("bob{i}@example.net")).collect();
    want.sort();
    assert_eq!(rcpts, want);
    for r in &got {
        let data = String::from_utf8_lossy(&r.data);
        let i = r.rcpts[0]
            .trim_start_matches("bob")
            .trim_end_matches("@example.net");
        assert!(data.ends_with(&format!("body m{i}\r\n")), "{data}");
    }
    assert!(
        sink.connections() < N,
        "{} connections for {N} messages",
        sink.connections()
    );
}

/// Through the whole server, a next hop that closes after every message: every message is
/// delivered on the first attempt (the retry interval is an hour), none deferred.
#[tokio::test]
async fn dropped_connections_cost_no_retry_end_to_end() {
    const N: usize = 6;
    let sink = Sink::start(SinkOptions {
        close_after: Some(1),
        ..SinkOptions::default()
    })
    .await;
    let server = TestServer::start_relay("retry = [\"1h\"]", &smarthost(&sink)).await;
    for i in 0..N {
        submit(&server, &format!("bob{i}@example.net"), &format!("m{i}")).await;
    }
    assert_eq!(sink.wait_for(N, IO_TIMEOUT).await.len(), N);
    server.wait_empty().await;
}
