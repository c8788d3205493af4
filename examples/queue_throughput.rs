//! Queue delivery throughput: N messages already in the spool, delivered through the smarthost
//! path to a minimal SMTP sink on loopback. Prints one JSON line.
//!
//! ```sh
//! cargo run --release --example queue_throughput -- [MESSAGES] [CONCURRENCY] [SIZE]
//! ```
//!
//! Defaults: 2000 messages, concurrency 16, 10240-byte messages. Only loopback is used.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use submitd::config::Settings;
use submitd::queue::{Envelope, QueueId, Recipient, Spool};
use submitd::server::Server;

/// A minimal SMTP sink: accepts everything, counts messages. Like a real server (Postfix's
/// smtpd) it writes its replies to pipelined commands together, once it has read every command
/// that came in: one small write per reply would meet the client's delayed ACK (Nagle).
async fn sink(listener: TcpListener, count: Arc<AtomicUsize>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let count = count.clone();
        tokio::spawn(async move {
            let (r, mut w) = tcp.into_split();
            let mut r = BufReader::new(r);
            let _ = w.write_all(b"220 sink ESMTP\r\n").await;
            let mut line = Vec::new();
            let mut out = Vec::new();
            let mut in_data = false;
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if in_data {
                    if line == b".\r\n" {
                        in_data = false;
                        count.fetch_add(1, Ordering::Relaxed);
                        out.extend_from_slice(b"250 2.0.0 Ok\r\n");
                    }
                } else {
                    let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
                    } else if upper.starts_with("DATA") {
                        in_data = true;
                        b"354 go\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 Ok\r\n"
                    };
                    out.extend_from_slice(reply);
                }
                if !out.is_empty() && r.buffer().is_empty() {
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            }
        });
    }
}

/// CPU time (user + system) used by this process so far: the server and the sink both run in
/// it. On a busy machine it is a steadier figure than the wall clock.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass; no other memory is touched.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let messages = args.first().copied().unwrap_or(2000);
    let concurrency = args.get(1).copied().unwrap_or(16);
    let size = args.get(2).copied().unwrap_or(10240);

    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = listener.local_addr()?;
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(sink(listener, count.clone()));

    let (cert, key) = submitd::tls::self_signed("bench.test")?;
    std::fs::write(dir.path().join("cert.pem"), cert)?;
    std::fs::write(dir.path().join("key.pem"), key)?;
    std::fs::write(dir.path().join("users.toml"), "")?;
    let config = format!(
        "hostname = \"bench.test\"\n[listen]\nsubmission = [\"127.0.0.1:0\"]\nsubmissions = []\n\
         [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[auth]\nusers = \"users.toml\"\n\
         [queue]\ndir = \"queue\"\nconcurrency = {concurrency}\n\
         [relay]\nmode = \"smarthost\"\nsmarthost = \"{sink_addr}\"\nsmarthost_tls = \"none\"\n"
    );
    let path = dir.path().join("submitd.toml");
    std::fs::write(&path, &config)?;
    let settings = Settings::from_toml(&config, &path)?;

    // Fill the spool before the server starts (not timed).
    let spool = Spool::open(&settings.queue.dir)?;
    let mut body = String::from("From: bench@bench.test\r\nSubject: bench\r\n\r\n");
    while body.len() < size {
        body.push_str("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuv\r\n");
    }
    for n in 0..messages {
        let id = QueueId::generate();
        let env = Envelope {
            version: submitd::queue::spool::FORMAT_VERSION,
            id: id.to_string(),
            user: "bench@bench.test".into(),
            sender: "bench@bench.test".into(),
            recipients: vec![Recipient::pending(format!("rcpt{n}@example.test"))],
            received_at: 0,
            helo: "bench".into(),
            smtputf8: false,
            eight_bit: false,
            size: body.len() as u64,
            prefix: String::new(),
            content_len: body.len() as u64,
            held: false,
            ret: None,
            envid: None,
            requiretls: false,
            tls_optional: false,
            origin: None,
        };
        // Not fsynced: filling is not what is measured, and fsync makes it slow.
        std::fs::write(
            spool.path(&id),
            submitd::queue::qfile::whole(body.as_bytes(), &env.to_bytes()),
        )?;
    }

    let cpu_before = cpu_time();
    let started = Instant::now();
    let server = Server::bind(Arc::new(settings)).await?;
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(server.run(shutdown.clone()));
    while count.load(Ordering::Relaxed) < messages {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("timed out with {} delivered", count.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered_at = started.elapsed();
    // Wait for the queue to be empty too (state saved, files removed).
    while std::fs::read_dir(dir.path().join("queue"))?
        .next()
        .is_some()
    {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("queue never emptied");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let emptied_at = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    shutdown.cancel();
    let _ = run.await;
    println!(
        "{{\"bench\":\"queue_throughput\",\"messages\":{messages},\"concurrency\":{concurrency},\
         \"size\":{size},\"delivered_s\":{:.3},\"queue_empty_s\":{:.3},\"msgs_per_s\":{:.1},\
         \"cpu_us_per_msg\":{:.0}}}",
        delivered_at.as_secs_f64(),
        emptied_at.as_secs_f64(),
        messages as f64 / emptied_at.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / messages as f64
    );
    Ok(())
}
