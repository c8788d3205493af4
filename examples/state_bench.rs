//! The cost of sharing the abuse-control state: submission throughput with `[state] backend =
//! "redis"` (a real redis-server on loopback, started here as the tests start it) against
//! `"local"`, same run, same load: 465, 16 sessions of 50 messages each (1 KB), one login.
//! Each message costs one round trip to the store (its admission, at commit) and each AUTH
//! one (the throttle reservation). The configurations alternate for ROUNDS rounds; the table
//! shows the median round.
//!
//! ```sh
//! cargo build --release --bin submitd-bench
//! cargo run --release --example state_bench -- [MESSAGES] [ROUNDS]
//! ```
//!
//! Defaults: 4000 messages, 3 rounds. Needs `redis-server` (Debian package, `./test.sh`
//! installs it).

#![allow(dead_code)]
#[path = "../tests/common/redis.rs"]
mod redis;
#[path = "support/bench.rs"]
mod support;

use tokio_util::sync::CancellationToken;

use support::{FILE_PASSWORD, FILE_USER, Figures, Load, bench, start};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args.next().map_or(4000, |a| a.parse().expect("MESSAGES"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    let server = redis::Redis::start();
    let modes = [
        ("local", "users = \"users.toml\"\n".to_owned()),
        (
            "redis",
            format!(
                "users = \"users.toml\"\n[state]\nbackend = \"redis\"\nurl = \"{}\"\n",
                server.url()
            ),
        ),
    ];
    let load = Load {
        messages,
        sessions: 16,
        per_session: 50,
        size: 1024,
    };
    let mut runs: Vec<(&str, Vec<Figures>)> = modes.iter().map(|(m, _)| (*m, Vec::new())).collect();
    for _ in 0..rounds {
        for (i, (_, tail)) in modes.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let stop = CancellationToken::new();
            let port = start(dir.path(), tail, stop.clone()).await;
            let figures =
                tokio::task::spawn_blocking(move || bench(port, FILE_USER, FILE_PASSWORD, load))
                    .await
                    .unwrap();
            stop.cancel();
            runs[i].1.push(figures);
        }
    }
    let median = |all: &mut Vec<Figures>| {
        all.sort_by(|a, b| a.msgs_per_sec.total_cmp(&b.msgs_per_sec));
        all[all.len() / 2]
    };
    let local = median(&mut runs[0].1);
    println!("\n| state | msg/s | vs local | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for (mode, all) in &mut runs {
        let f = median(all);
        println!(
            "| {mode} | {:.0} | {:.2}x | {:.1} | {:.1} |",
            f.msgs_per_sec,
            f.msgs_per_sec / local.msgs_per_sec,
            f.p50_ms,
            f.p99_ms
        );
    }
}
