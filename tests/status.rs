//! Per-message status records (issue 16, what `GET /v1/messages/{id}` reads): per recipient
//! state, attempts and last reply, while queued and after the queue file is gone, across a
//! restart.

mod common;

use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::{ALICE, IO_TIMEOUT, TestServer, message_from, smarthost};
use submitd::queue::{QueueId, Spool};
use submitd::status::{MessageStatus, lookup};

fn states(s: &MessageStatus) -> Vec<(String, &'static str, u32, Option<String>)> {
    s.recipients
        .iter()
        .map(|r| (r.address.clone(), r.state, r.attempts, r.last_reply.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_while_queued_after_delivery_and_after_restart() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_relay("retry = [\"2s\"]", &smarthost(&sink)).await;
    let id = server
        .submit(
            &["flaky@remote.test", "ok@remote.test"],
            &message_from(ALICE),
        )
        .await;
    let qid = QueueId::parse(&id).unwrap();
    let spool = Spool::attach(&server.queue_dir());

    // First attempt: one sent, one deferred (the queue file is still there).
    let deadline = Instant::now() + IO_TIMEOUT;
    let first = loop {
        let s = lookup(&spool, &qid).expect("queued message has a status");
        if s.recipients.iter().all(|r| r.state != "queued") {
            break s;
        }
        assert!(Instant::now() < deadline, "never attempted: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.id, id);
    assert_eq!(first.tenant, ALICE);
    let got = states(&first);
    assert_eq!(got[0].0, "flaky@remote.test");
    assert_eq!((got[0].1, got[0].2), ("deferred", 1), "{got:?}");
    assert!(
        got[0].3.as_deref().unwrap().contains("451 4.3.0"),
        "{got:?}"
    );
    assert_eq!((got[1].1, got[1].2), ("sent", 1), "{got:?}");

    // Delivered: the queue file is gone, the record answers.
    server.wait_empty().await;
    let record = server
        .queue_dir()
        .join("status")
        .join(format!("{id}.jsonl"));
    assert!(record.is_file(), "{}", record.display());
    let done = lookup(&spool, &qid).expect("a status after delivery");
    let got = states(&done);
    assert_eq!((got[0].1, got[0].2), ("sent", 2), "{got:?}");
    assert_eq!((got[1].1, got[1].2), ("sent", 1), "{got:?}");
    assert_eq!(done.received_at, first.received_at);

    // A restart keeps it.
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, stop) = common::start_again(&server.dir.path().join("submitd.toml")).await;
    assert_eq!(lookup(&spool, &qid), Some(done));
    assert!(lookup(&spool, &QueueId::generate()).is_none());
    stop.cancel();
}
