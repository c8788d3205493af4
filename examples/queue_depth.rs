//! Start-up with a deep queue: N deferred messages in the spool, then the real `submitd serve`
//! started on it. Prints one JSON line: the time from spawn to the first accepted connection's
//! 220 banner, how long the background load of the queue took (from the server's log), and the
//! server's memory (VmRSS, VmHWM) once the load is done and after the first rescans; then, for
//! comparison, what `Spool::open` alone takes on that queue.
//!
//! ```sh
//! cargo build --release && cargo run --release --example queue_depth -- [MESSAGES] [FILLERS]
//! ```
//!
//! Defaults: 10000 messages, 2 filling threads. The messages are stored through
//! `Spool::store_blocking` over a [`SpoolIo`] that skips the fsyncs (filling is not what is
//! measured). Every recipient is deferred for a day, so nothing is delivered. Only loopback is
//! used. The binary is `SUBMITD_BIN`, else `submitd` beside this example's directory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use submitd::queue::fsio::{RealIo, SpoolIo};
use submitd::queue::{Envelope, QueueId, RecipientState, Spool};

/// The file system without fsyncs.
#[derive(Debug)]
struct NoSync;

impl SpoolIo for NoSync {
    fn create(&self, path: &Path) -> io::Result<File> {
        RealIo.create(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<File> {
        RealIo.open_append(path)
    }
    fn write_all(&self, path: &Path, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        RealIo.write_all(path, file, bytes)
    }
    fn sync(&self, _: &Path, _: &File) -> io::Result<()> {
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealIo.rename(from, to)
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        RealIo.remove(path)
    }
}

/// A deferred message, due again a day after `now`.
fn deferred(n: usize, now: u64, body_len: usize) -> Envelope {
    let mut env = Envelope::new(
        &QueueId::generate(),
        "bench@bench.test",
        "bench@bench.test",
        &[format!("rcpt{n}@example.test")],
        "bench",
        now,
    );
    for r in &mut env.recipients {
        r.state = RecipientState::Deferred;
        r.attempts = 1;
        r.next_attempt = Some(now + 86_400);
        r.last_reply = Some("451 4.7.1 try later".into());
    }
    env.size = body_len as u64;
    env
}

/// Fill `spool` with `messages` deferred messages from `threads` threads.
fn fill(spool: &Spool, messages: usize, threads: usize) -> anyhow::Result<()> {
    let body = b"From: bench@bench.test\r\nSubject: deep queue\r\n\r\nwaiting\r\n";
    let now = submitd::clock::unix_now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= messages {
                            return Ok(());
                        }
                        spool.store_blocking(&deferred(n, now, body.len()), body)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("filler panicked"))??;
        }
        Ok(())
    })
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Connect until the server accepts and greets; the time it took from `since`.
fn first_banner(port: u16, since: Instant) -> anyhow::Result<Duration> {
    while since.elapsed() < Duration::from_secs(120) {
        if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) {
            tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut banner = [0u8; 3];
            tcp.read_exact(&mut banner).context("reading the banner")?;
            anyhow::ensure!(&banner == b"220", "greeted with {banner:?}");
            let took = since.elapsed();
            let _ = tcp.write_all(b"QUIT\r\n");
            return Ok(took);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    anyhow::bail!("no listener within 120 s")
}

fn submitd_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SUBMITD_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("submitd"))
        .context("no target directory")?;
    anyhow::ensure!(bin.exists(), "{} missing: cargo build first", bin.display());
    Ok(bin)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let messages = args.first().copied().unwrap_or(10_000);
    let fillers = args.get(1).copied().unwrap_or(2);
    let bin = submitd_bin()?;

    let dir = tempfile::tempdir()?;
    let (cert, key) = submitd::tls::self_signed("bench.test")?;
    std::fs::write(dir.path().join("cert.pem"), cert)?;
    std::fs::write(dir.path().join("key.pem"), key)?;
    std::fs::write(dir.path().join("users.toml"), "")?;
    // A free port, given back for the server (a race with another process is possible).
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = format!(
        "hostname = \"bench.test\"\n[listen]\nsubmission = [\"127.0.0.1:{port}\"]\n\
         submissions = []\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [auth]\nusers = \"users.toml\"\n[queue]\ndir = \"queue\"\n\
         [relay]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:9\"\nsmarthost_tls = \"none\"\n"
    );
    let config_path = dir.path().join("submitd.toml");
    std::fs::write(&config_path, &config)?;

    let filling = Instant::now();
    let spool = Spool::open_with_io(&dir.path().join("queue"), Arc::new(NoSync))?;
    fill(&spool, messages, fillers)?;
    let fill_s = filling.elapsed().as_secs_f64();
    eprintln!("filled {messages} messages in {fill_s:.1} s");

    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&config_path)
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let pid = child.id();
    // The log, read on a thread: the line that says the load is over, and its `took_ms`.
    let stderr = child.stderr.take().context("stderr")?;
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("queue: existing messages loaded") {
                let took = line
                    .split("took_ms=")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next())
                    .and_then(|t| t.parse::<u64>().ok());
                let _ = loaded_tx.send((took, Instant::now()));
            }
        }
    });
    let result = (|| -> anyhow::Result<String> {
        let banner = first_banner(port, started)?;
        let (took_ms, loaded_at) = loaded_rx
            .recv_timeout(Duration::from_secs(1800))
            .context("the load never finished")?;
        let (rss_loaded, _) = memory(pid);
        // Two rescans of the whole queue after the load (each at least a second apart).
        let scans = Duration::from_secs(3).max(loaded_at.duration_since(started) / 2);
        std::thread::sleep(scans);
        let (rss, hwm) = memory(pid);
        Ok(format!(
            "{{\"bench\":\"queue_depth\",\"messages\":{messages},\"fill_s\":{fill_s:.1},\
             \"first_banner_ms\":{:.1},\"load_ms\":{},\"loaded_after_spawn_ms\":{},\
             \"rss_loaded_mb\":{:.1},\"rss_after_scans_mb\":{:.1},\"hwm_mb\":{:.1}}}",
            banner.as_secs_f64() * 1e3,
            took_ms.map_or("null".into(), |t| t.to_string()),
            loaded_at.duration_since(started).as_millis(),
            rss_loaded as f64 / 1024.0,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
        ))
    })();
    let _ = child.kill();
    let _ = child.wait();
    // What opening the spool costs on its own (the server's start-up does it before binding).
    let opening = Instant::now();
    Spool::open(&dir.path().join("queue"))?;
    let open_ms = opening.elapsed().as_secs_f64() * 1e3;
    let line = result?;
    println!(
        "{},\"spool_open_ms\":{open_ms:.1}}}",
        line.trim_end_matches('}')
    );
    Ok(())
}
