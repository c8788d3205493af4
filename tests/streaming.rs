//! A large message through the real server over implicit TLS (issue 17): the session streams
//! it to the spool instead of holding it, and the copy relayed to the next hop is the
//! submitted content, byte for byte, after the headers the server adds.

mod common;

use std::time::Duration;

use common::sink::{Sink, SinkOptions};
use common::{ALICE, TestServer, smarthost};

/// The message size: the figure.
const SIZE: usize = 25 * 1024 * 1024;

/// A text message of `SIZE` octets whose lines start with dots now and then (stuffed on the
/// wire) and carry a line number, so that a lost, doubled or moved piece shows.
fn message() -> Vec<u8> {
    let mut m =
        format!("From: <{ALICE}>\r\nTo: <bob@example.test>\r\nSubject: big\r\n\r\n").into_bytes();
    let mut n = 0u64;
    while m.len() < SIZE {
        let dot = if n.is_multiple_of(13) { "." } else { "" };
        m.extend_from_slice(format!("{dot}{n:010} ").as_bytes());
        m.extend(std::iter::repeat_n(b'a' + (n % 26) as u8, 64));
        m.extend_from_slice(b"\r\n");
        n += 1;
    }
    m
}

/// RFC 5321 4.5.2 transparency, with the terminator.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(message.len() + message.len() / 512 + 3);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

/// The process's peak resident set (VmHWM), in octets.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Submit `wire` (after DATA) as alice over 465, in 1 MiB writes; the final reply, and the
/// growth of the process's peak RSS from just before the DATA to just before the final dot
/// (the scheduler loads a committed message for delivery: that is not the session's memory).
async fn submit(server: &TestServer, wire: &[u8]) -> (String, u64) {
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@example.test>", "250").await;
    let before = peak_rss();
    c.cmd("DATA", "354").await;
    let (body, end) = wire.split_at(wire.len() - 3);
    for part in body.chunks(1 << 20) {
        c.send(part).await;
    }
    // Let the server read what the socket buffers still hold.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = peak_rss().saturating_sub(before);
    c.send(end).await;
    (c.reply().await, grown)
}

const LIMITS: &str = "max_message_size = 40000000\n";

/// One test, two phases, so that nothing else in this process allocates meanwhile: first the
/// memory bound (no next hop, so no relayed copy in this process), then the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25_mb_message_streams_through_and_is_relayed_byte_identical() {
    let message = message();
    let wire = dot_stuffed(&message);

    // The client's copies exist already: what the peak grows by is the server's.
    let unreachable =
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";
    let server = TestServer::start_full(LIMITS, "", unreachable, "").await;
    let (reply, grown) = submit(&server, &wire).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    println!(
        "peak RSS grew by {} KiB while receiving {} KiB",
        grown / 1024,
        SIZE / 1024
    );
    // Holding the message once would be 25 MiB; TLS and socket-side buffers are well under 1.
    assert!(
        grown < 8 * 1024 * 1024,
        "peak RSS grew by {} KiB while receiving {} KiB",
        grown / 1024,
        SIZE / 1024
    );
    drop(server);

    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_full(LIMITS, "", &smarthost(&sink), "").await;
    let (reply, _) = submit(&server, &wire).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let got = sink.wait_for(1, Duration::from_secs(60)).await;
    let data = &got[0].data;
    assert!(data.len() > message.len(), "{} octets relayed", data.len());
    let (added, content) = data.split_at(data.len() - message.len());
    assert!(content == &message[..], "the relayed content differs");
    // In front: only the trace fields the server adds, whole lines.
    let added = String::from_utf8(added.to_vec()).unwrap();
    assert!(added.starts_with("Received: from "), "{added}");
    assert!(added.ends_with("\r\n"), "{added}");
}

/// Names in the queue directory (no subdirectories): committed `ID.q` and in-flight
/// `ID.q.tmp` alike.
fn queue_files(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.queue_dir())
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".q") || n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait (bounded) until the queue directory holds no message file; its names if it still
/// does.
async fn wait_no_queue_files(server: &TestServer) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let files = queue_files(server);
        if files.is_empty() || std::time::Instant::now() > deadline {
            return files;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A next hop that refuses connections: what is queued stays queued.
const NOWHERE: &str =
    "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";

/// A few MiB of a message, enough for several pieces to reach the spool file.
fn partial_body() -> Vec<u8> {
    let mut m = format!("From: <{ALICE}>\r\nSubject: cut\r\n\r\n").into_bytes();
    while m.len() < 3 << 20 {
        m.extend_from_slice(&[b'x'; 78]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// A client that goes away in the middle of a large message leaves nothing in the queue: the
/// half-written file is removed, and nothing is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_message_leaves_nothing() {
    let server = TestServer::start_full(LIMITS, "", NOWHERE, "").await;
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(&partial_body()).await;
    // The pieces reach the spool file while the message is still open.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !queue_files(&server).iter().any(|n| n.ends_with(".tmp")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no spool file while receiving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    assert_eq!(wait_no_queue_files(&server).await, Vec::<String>::new());
    assert!(server.queued().is_empty());
}

/// A large message refused at its end (a bare LF in its body, a From the user does not own)
/// gets its refusal and leaves nothing in the queue; the connection then queues a good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_refused_message_leaves_nothing() {
    let server = TestServer::start_full(LIMITS, "", NOWHERE, "").await;
    let mut c = server.alice().await;
    let bare_lf = {
        let mut m = partial_body();
        m.extend_from_slice(b"a bare\nline feed\r\n");
        m
    };
    let not_owned = {
        let mut m = b"From: <mallory@example.org>\r\n".to_vec();
        m.extend_from_slice(&partial_body()[format!("From: <{ALICE}>\r\n").len()..]);
        m
    };
    for (message, code) in [(bare_lf, "550 5.6.0"), (not_owned, "553 5.7.1")] {
        c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
        c.cmd("RCPT TO:<bob@example.test>", "250").await;
        c.cmd("DATA", "354").await;
        c.send(&dot_stuffed(&message)).await;
        let reply = c.reply().await;
        assert!(reply.starts_with(code), "{reply}");
        assert_eq!(wait_no_queue_files(&server).await, Vec::<String>::new());
    }
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@example.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(&dot_stuffed(&partial_body())).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    assert_eq!(server.queued().len(), 1);
}
