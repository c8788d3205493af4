//! Relay throughput of one large queued message to a local SMTP sink (issue 17):
//! `cargo run --release --example relay_bench -- SIZE_MB...`.
//!
//! For each size, the message (CRLF lines of 76 octets) is stored in a temp spool and relayed
//! through `Delivery` (smarthost, no TLS) to a sink on 127.0.0.1 that reads the data in bulk
//! and discards it; the best of five attempts is reported. "streamed" is submitd's own DATA
//! writer (pieces dot-stuffed without a copy, `delivery::dotstuff`; before `bf9b5e1`, lettre's
//! `message_iter`). For comparison, the way main did it before streaming (`3531b14`): the whole
//! message read into memory, then lettre's `message` (its per-octet encoder) on a plain
//! connection to the same sink; and the floor, the bytes written as they are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use submitd::config::Settings;
use submitd::delivery::outbound::Guarded;
use submitd::delivery::{Delivery, Job, Outcome};
use submitd::queue::spool::{Envelope, StoredMessage};
use submitd::queue::{QueueId, Spool};

/// A sink that answers SMTP and reads DATA in 256 KiB reads until `CRLF.CRLF`.
async fn sink(listener: TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 << 10];
            let _ = tcp.write_all(b"220 sink\r\n").await;
            let mut line = Vec::new();
            loop {
                let n = match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                line.extend_from_slice(&buf[..n]);
                while let Some(i) = line.iter().position(|&b| b == b'\n') {
                    let cmd: Vec<u8> = line.drain(..=i).collect();
                    let cmd = String::from_utf8_lossy(&cmd).to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("DATA") {
                        let _ = tcp.write_all(b"354 go\r\n").await;
                        let mut tail = std::mem::take(&mut line);
                        while !tail.ends_with(b"\r\n.\r\n") {
                            let n = match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let keep = tail.len().min(4);
                            tail.drain(..tail.len() - keep);
                            tail.extend_from_slice(&buf[..n]);
                        }
                        b"250 ok\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = tcp.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if tcp.write_all(reply).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn content(size: usize) -> Vec<u8> {
    let mut m = b"From: a@example.net\r\nSubject: bench\r\n\r\n".to_vec();
    let mut i = 0u8;
    while m.len() < size {
        m.extend(std::iter::repeat_n(b'a' + i % 26, 76));
        m.extend_from_slice(b"\r\n");
        i = i.wrapping_add(1);
    }
    m
}

fn stored(dir: &std::path::Path, bytes: &[u8]) -> Arc<StoredMessage> {
    let spool = Spool::open(dir).unwrap();
    let id = QueueId::generate();
    let env = Envelope::new(&id, "a", "a@example.net", &[], "h", 0);
    spool.store_blocking(&env, bytes).unwrap();
    Arc::new(spool.open_message(&id).unwrap().1)
}

/// The old path: read whole, lettre's `message` on a plain connection.
async fn whole(port: u16, message: &StoredMessage) -> Duration {
    let started = Instant::now();
    let bytes = message.read_all().unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let hello = ClientId::Domain("bench.test".into());
    let _ = tcp.set_nodelay(true);
    let guarded = Box::new(Guarded::new(tcp, Duration::from_secs(30)));
    let mut c = AsyncSmtpConnection::connect_with_transport(guarded, &hello)
        .await
        .unwrap();
    c.command("MAIL FROM:<a@example.net>\r\n").await.unwrap();
    c.command("RCPT TO:<b@example.org>\r\n").await.unwrap();
    c.command("DATA\r\n").await.unwrap();
    let body = bytes.strip_suffix(b"\r\n").unwrap_or(&bytes);
    c.message(body).await.unwrap();
    let took = started.elapsed();
    let _ = c.quit().await;
    took
}

/// The floor: the same bytes written to the socket as they are (this content needs no
/// stuffing), commands and replies by hand; no lettre encoding.
async fn raw(port: u16, message: &StoredMessage) -> Duration {
    let started = Instant::now();
    let bytes = message.read_all().unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = tcp.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let mut expect = async |tcp: &mut TcpStream, n: usize| {
        let mut got = 0;
        while got < n {
            let r = tcp.read(&mut buf).await.unwrap();
            assert!(r > 0);
            got += buf[..r].iter().filter(|&&b| b == b'\n').count();
        }
    };
    expect(&mut tcp, 1).await;
    tcp.write_all(b"EHLO bench.test\r\n").await.unwrap();
    expect(&mut tcp, 3).await;
    tcp.write_all(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await
        .unwrap();
    expect(&mut tcp, 3).await;
    tcp.write_all(&bytes).await.unwrap();
    tcp.write_all(b".\r\n").await.unwrap();
    expect(&mut tcp, 1).await;
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(sink(listener));
    let dir = tempfile::tempdir().unwrap();
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:{port}\"\nsmarthost_tls = \"none\"\n\
         timeout = \"30s\"\n"
    );
    let path = submitd_config(dir.path(), &relay);
    let text = std::fs::read_to_string(&path).unwrap();
    let delivery = Delivery::new(&Settings::from_toml(&text, &path).unwrap()).unwrap();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() { vec![5, 25] } else { sizes };
    for mb in sizes {
        let spool_dir = tempfile::tempdir().unwrap();
        let message = stored(spool_dir.path(), &content(mb << 20));
        let len = message.len() as f64;
        let rcpts = vec!["b@example.org".to_string()];
        let mut best = Duration::MAX;
        let mut best_old = Duration::MAX;
        let mut best_raw = Duration::MAX;
        for _ in 0..5 {
            let job = Job {
                queue_id: "BENCH",
                sender: "a@example.net",
                recipients: &rcpts,
                domain: "example.org",
                message: message.clone(),
                smtputf8: false,
                eight_bit: false,
                envelope: None,
                dsn: Default::default(),
                requiretls: false,
                tls_optional: false,
            };
            let started = Instant::now();
            let out = delivery.attempt(&job).await;
            assert!(matches!(out[0].1, Outcome::Delivered { .. }), "{out:?}");
            best = best.min(started.elapsed());
            best_old = best_old.min(whole(port, &message).await);
            best_raw = best_raw.min(raw(port, &message).await);
        }
        let rate = |d: Duration| len / d.as_secs_f64() / 1e6;
        println!(
            "{mb} MB: streamed {:.0} MB/s ({best:?}); whole + lettre message {:.0} MB/s \
             ({best_old:?}); raw write, no encoding {:.0} MB/s ({best_raw:?})",
            rate(best),
            rate(best_old),
            rate(best_raw)
        );
    }
    delivery.close_idle().await;
}

/// A config file in `dir` with these `[relay]` lines.
fn submitd_config(dir: &std::path::Path, relay: &str) -> std::path::PathBuf {
    let (cert, key) = submitd::tls::self_signed("bench.test").unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("users.toml"), "").unwrap();
    let path = dir.join("submitd.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"bench.test\"\n[listen]\nsubmission = [\"127.0.0.1:0\"]\n\
             submissions = []\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
             [auth]\nusers = \"users.toml\"\n[queue]\ndir = \"queue\"\n[relay]\n{relay}"
        ),
    )
    .unwrap();
    path
}
