//! Time per AUTH check through the `Verifier`: cold (argon2 every time, `cache_ttl = "0s"`)
//! against warm (a repeat login answered by the verified-credentials cache). Prints one JSON
//! line per case.
//!
//! ```sh
//! cargo run --release --example auth_cache_bench -- [COLD_RUNS] [WARM_RUNS]
//! ```
//!
//! Defaults: 50 cold runs, 20000 warm runs. No network.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use submitd::auth::cache::Clock;
use submitd::auth::senders::SenderPattern;
use submitd::auth::users::{User, UserStore};
use submitd::auth::verify::{Verdict, Verifier, VerifierLimits, hash_password};

fn verifier(cache_ttl: Duration) -> Verifier {
    let user = User {
        login: "alice@example.test".into(),
        password: hash_password("correct horse battery staple").unwrap(),
        senders: vec![SenderPattern::parse("alice@example.test").unwrap()],
        senders_given: true,
        limits: Default::default(),
        owner: None,
    };
    Verifier::with_limits(
        UserStore::from_users(vec![user]),
        VerifierLimits {
            parallel: 1,
            queue: 8,
            throttle: None,
            suspensions: None,
            cache_ttl,
            clock: Clock::system(),
        },
    )
}

async fn run(v: &Verifier, runs: usize) -> Vec<Duration> {
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let verdict = v
            .authenticate(ip, "alice@example.test", "correct horse battery staple")
            .await;
        times.push(started.elapsed());
        assert!(matches!(verdict, Verdict::Checked(Some(_))), "{verdict:?}");
    }
    times.sort();
    times
}

fn report(case: &str, times: &[Duration], argon2: u64, hits: u64) {
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{{\"case\":\"{case}\",\"runs\":{},\"mean_us\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"argon2_runs\":{argon2},\"cache_hits\":{hits}}}",
        times.len(),
        mean.as_secs_f64() * 1e6,
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let cold_runs = args.first().copied().unwrap_or(50).max(1);
    let warm_runs = args.get(1).copied().unwrap_or(20_000).max(1);

    let cold = verifier(Duration::ZERO);
    let times = run(&cold, cold_runs).await;
    report("cold", &times, cold.verifications(), cold.cache_hits());

    let warm = verifier(Duration::from_secs(600));
    run(&warm, 1).await; // the one argon2 run that fills the cache
    let times = run(&warm, warm_runs).await;
    report("warm", &times, warm.verifications(), warm.cache_hits());
}
