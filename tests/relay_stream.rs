//! Relaying a queued message in pieces: the bytes a real receiving SMTP server (`common::sink`)
//! stores are exactly the message (prefix and content), dot-stuffing right at every piece
//! boundary, for multi-megabyte messages; and a queue file that cannot be read to its end
//! never turns into a message cut short and ended with the final dot.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::dns::{DnsServer, Rr};
use common::sink::{Sink, SinkOptions};
use common::stored::{Stored, stored_with_prefix};
use common::{HOSTNAME, IO_TIMEOUT};
use submitd::config::Settings;
use submitd::delivery::stored::PIECE;
use submitd::delivery::{Delivery, Outcome};

const PREFIX: &str = "Received: from client.test by mail.example.test\r\n";

fn delivery(dir: &tempfile::TempDir, port: u16, dns: &DnsServer, tls: &str) -> Delivery {
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"{HOSTNAME}:{port}\"\nsmarthost_tls = \"{tls}\"\n\
         resolver = [\"{}\"]\ntimeout = \"5s\"\nca_file = \"cert.pem\"\n",
        dns.addr
    );
    let path = common::write_config_full(dir.path(), "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap();
    Delivery::new(&Settings::from_toml(&text, &path).unwrap()).unwrap()
}

async fn dns() -> DnsServer {
    DnsServer::start(vec![(
        "mail.example.test.",
        Rr::A(Ipv4Addr::new(127, 0, 0, 1)),
    )])
    .await
}

fn sink_options(tls: &str) -> SinkOptions {
    SinkOptions {
        starttls: tls == "starttls",
        implicit_tls: tls == "implicit",
        ..SinkOptions::default()
    }
}

/// One attempt of `stored` to one recipient; its outcome.
async fn relay(delivery: &Delivery, stored: &Stored) -> Outcome {
    let rcpts = vec!["bob@example.org".to_string()];
    let job = common::stored::job(&rcpts, "example.org", stored.message.clone());
    let mut out = tokio::time::timeout(Duration::from_secs(120), delivery.attempt(&job))
        .await
        .expect("delivery attempt hung");
    assert_eq!(out.len(), 1);
    out.remove(0).1
}

/// Content of about `size` octets that, behind [`PREFIX`], puts every awkward case of
/// dot-stuffing on a piece boundary (one case per boundary, in turn): a line starting with a
/// dot right after a CRLF that ends a piece, CR and LF split by the boundary with the dot
/// after them, a dot ending one piece and another starting the next, a lone `.` line across
/// the boundary and one right at it (which would end the message if not stuffed). Lines stay
/// short (the sink reads lines up to 16 KiB); `ending` is appended last.
fn awkward_content(size: usize, ending: &[u8]) -> Vec<u8> {
    let at = PREFIX.len();
    let mut m = b"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: big\r\n\r\n".to_vec();
    m.extend_from_slice(b".first body line\r\n..\r\n");
    let mut case = 0;
    while at + m.len() < size {
        // The next piece boundary, in content offsets.
        let boundary = (at + m.len()).div_ceil(PIECE) * PIECE - at;
        // Filler lines up to a little before it.
        while boundary - m.len() > 200 {
            let n = (boundary - m.len() - 150).min(78);
            m.extend(std::iter::repeat_n(b'x', n));
            m.extend_from_slice(b"\r\n");
        }
        // One line ending exactly `lead` octets before the boundary.
        let lead = [0, 0, 1, 1, 0][case % 5];
        let n = boundary - lead - m.len() - 2;
        m.extend(std::iter::repeat_n(b'y', n));
        m.extend_from_slice(b"\r\n");
        match case % 5 {
            0 => m.extend_from_slice(b".dot at the boundary\r\n"),
            1 => {
                // Undo the CRLF and split it: CR ends this piece, LF starts the next.
                m.truncate(m.len() - 2);
                m.extend_from_slice(b"y\r\n.after split CRLF\r\n");
            }
            2 => m.extend_from_slice(b"..two dots across\r\n"),
            3 => m.extend_from_slice(b".\r\n"),
            _ => m.extend_from_slice(b".\r\nnot the end\r\n"),
        }
        case += 1;
    }
    m.extend_from_slice(b"last line\r\n");
    m.extend_from_slice(ending);
    m
}

/// Relay a message of about `size` octets over `tls` and compare what the sink stored.
async fn relayed_exactly(size: usize, ending: &[u8], tls: &str) {
    let sink = Sink::start(sink_options(tls)).await;
    let dns = dns().await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = delivery(&dir, sink.addr.port(), &dns, tls);
    let content = awkward_content(size, ending);
    let stored = stored_with_prefix(PREFIX, &content);
    let outcome = relay(&delivery, &stored).await;
    assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    let mut expected = PREFIX.as_bytes().to_vec();
    expected.extend_from_slice(&content);
    if !expected.ends_with(b"\r\n") {
        // SMTP data ends with a line end: the client supplies the missing one.
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(got[0].data.len(), expected.len(), "length differs");
    let first_diff = got[0].data.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "bytes differ");
    assert_eq!(got[0].tls, tls != "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabytes_relayed_exactly_multi_thread() {
    relayed_exactly(5 << 20, b"", "none").await;
}

#[tokio::test(flavor = "current_thread")]
async fn five_megabytes_without_final_crlf_current_thread() {
    relayed_exactly((5 << 20) + 1234, b"no line end", "none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_exactly_over_starttls() {
    relayed_exactly(3 << 20, b"", "starttls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_exactly_over_implicit_tls() {
    relayed_exactly(1 << 20, b"tail", "implicit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_starting_with_a_dot_line_is_stuffed() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = dns().await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = delivery(&dir, sink.addr.port(), &dns, "none");
    // No prefix: the very first octet is a dot on a line of its own.
    let stored = stored_with_prefix("", b".\r\nSubject: x\r\n\r\n.\r\n");
    let outcome = relay(&delivery, &stored).await;
    assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got[0].data, b".\r\nSubject: x\r\n\r\n.\r\n");
}

/// The queue file is cut short after it was opened (`size` octets of content, `keep` left):
/// the attempt is deferred and the sink stores nothing, over `tls`.
async fn truncated_file_never_ends_with_the_dot(tls: &str) {
    let sink = Sink::start(sink_options(tls)).await;
    let dns = dns().await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = delivery(&dir, sink.addr.port(), &dns, tls);
    let content = awkward_content(2 << 20, b"");
    let stored = stored_with_prefix(PREFIX, &content);
    // Past the first piece: some data has gone out when the read fails.
    let keep = 16 + (PIECE as u64) + 1000;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stored.path)
        .unwrap()
        .set_len(keep)
        .unwrap();
    let outcome = relay(&delivery, &stored).await;
    match &outcome {
        Outcome::Deferred { reply, .. } => {
            assert!(reply.contains("queued message"), "{reply}")
        }
        other => panic!("expected a deferral, got {other:?}"),
    }
    // Give a wrongly completed message time to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.received().is_empty(), "the sink got a message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_file_plain() {
    truncated_file_never_ends_with_the_dot("none").await;
}

#[tokio::test(flavor = "current_thread")]
async fn truncated_file_starttls() {
    truncated_file_never_ends_with_the_dot("starttls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_file_implicit_tls() {
    truncated_file_never_ends_with_the_dot("implicit").await;
}
