//! Spool write throughput: WRITERS tasks store MESSAGES messages of SIZE bytes through
//! `Spool::store` (temp file, write, fsync, rename for `.msg` and `.env`, directory fsync), as
//! sessions do before answering 250. Prints one JSON line: messages/s, p50/p99 latency per
//! store, and the time spent in each file operation (summed over all writers).
//!
//! ```sh
//! cargo run --release --example spool_bench -- [MESSAGES] [WRITERS] [SIZE] [DIR]
//! ```
//!
//! Defaults: 2000 messages, 16 writers, 10240 bytes, a temp directory under the current
//! directory (so it is on the file system the queue would be on, not a tmpfs).
//!
//! Figures and the group-commit experiment they decided against: see `Spool::store_blocking`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use submitd::queue::fsio::{RealIo, SpoolIo};
use submitd::queue::{Envelope, QueueId, Recipient, Spool};

/// [`RealIo`], timing each operation.
#[derive(Debug, Default)]
struct TimingIo {
    /// Nanoseconds and calls per op: create, write, sync, rename, sync_dir, remove.
    nanos: [AtomicU64; 7],
    calls: [AtomicU64; 7],
}

const OPS: [&str; 7] = [
    "create",
    "write",
    "fsync",
    "rename",
    "fsync_dir",
    "remove",
    "open_append",
];

impl TimingIo {
    fn time<T>(&self, op: usize, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.nanos[op].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.calls[op].fetch_add(1, Ordering::Relaxed);
        out
    }
}

impl SpoolIo for TimingIo {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.time(0, || RealIo.create(path))
    }
    fn open_append(&self, path: &Path) -> io::Result<File> {
        self.time(6, || RealIo.open_append(path))
    }
    fn write_all(&self, path: &Path, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        self.time(1, || RealIo.write_all(path, file, bytes))
    }
    fn sync(&self, path: &Path, file: &File) -> io::Result<()> {
        self.time(2, || RealIo.sync(path, file))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.time(3, || RealIo.rename(from, to))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.time(4, || RealIo.sync_dir(dir))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.time(5, || RealIo.remove(path))
    }
}

fn envelope(id: &QueueId, size: usize) -> Envelope {
    Envelope {
        version: submitd::queue::spool::FORMAT_VERSION,
        id: id.to_string(),
        user: "alice@example.test".into(),
        sender: "alice@example.test".into(),
        recipients: vec![Recipient::pending("bob@example.net")],
        received_at: 1_700_000_000,
        helo: "client.test".into(),
        smtputf8: false,
        eight_bit: false,
        size: size as u64,
        held: false,
        prefix: String::new(),
        content_len: size as u64,
        ret: None,
        envid: None,
        requiretls: false,
        tls_optional: false,
        origin: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
            .max(1)
    };
    let messages = num(0, 2000);
    let writers = num(1, 16);
    let size = num(2, 10240);
    let base = args.get(3).map(PathBuf::from).unwrap_or_else(|| ".".into());
    let dir = tempfile::Builder::new()
        .prefix("spool-bench.")
        .tempdir_in(&base)?;

    let io = Arc::new(TimingIo::default());
    let spool = Spool::open_with_io(&dir.path().join("queue"), io.clone())?;
    let body = Arc::new(vec![b'x'; size]);
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(messages)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (spool, body, next, latencies) =
            (spool.clone(), body.clone(), next.clone(), latencies.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                let id = QueueId::generate();
                let t = Instant::now();
                let (spool, body) = (spool.clone(), body.clone());
                tokio::task::spawn_blocking(move || {
                    spool.store_blocking(&envelope(&id, body.len()), &body)
                })
                .await
                .expect("task")
                .expect("store");
                latencies.lock().unwrap().push(t.elapsed());
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    let elapsed = started.elapsed();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ops: Vec<String> = OPS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let calls = io.calls[i].load(Ordering::Relaxed);
            let nanos = io.nanos[i].load(Ordering::Relaxed);
            format!(
                "\"{name}\":{{\"calls\":{calls},\"mean_ms\":{:.3}}}",
                if calls == 0 {
                    0.0
                } else {
                    nanos as f64 / calls as f64 / 1e6
                }
            )
        })
        .collect();
    println!(
        "{{\"messages\":{},\"writers\":{writers},\"size\":{size},\"seconds\":{:.3},\"msgs_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"ops\":{{{}}}}}",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ops.join(",")
    );
    Ok(())
}
