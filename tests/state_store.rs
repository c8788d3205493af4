//! The shared state store (`state::redis::Store`) against a real redis-server
//! (tests/common/redis.rs): replicas sharing one limit, windows expiring on the server's clock,
//! all-or-nothing adds, suspensions, an outage, a paused server, a password and TLS.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use submitd::state::redis::Store;
use submitd::state::{Count, Counter, Stamp, StoreError, StoredSuspension, Window};

use common::redis::{Options, Redis};

const PREFIX: &str = "submitd";
const TIMEOUT: Duration = Duration::from_secs(2);
const HOUR: Window = Window {
    len: Duration::from_secs(3600),
    buckets: 60,
};
/// 2 s in steps of 1 s.
const SHORT: Window = Window {
    len: Duration::from_secs(2),
    buckets: 2,
};

fn store(redis: &Redis) -> Store {
    Store::new(&redis.url(), PREFIX, TIMEOUT).unwrap()
}

fn count(key: &str, window: Window, amount: u64, limit: u64) -> Count<'_> {
    Count {
        key,
        window,
        amount,
        limit,
    }
}

async fn total(store: &Store, key: &str, window: Window) -> u64 {
    store.totals(&[Counter { key, window }]).await.unwrap()[0]
}

/// A plain connection for looking at (and damaging) what the store wrote.
async fn raw(redis: &Redis) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .unwrap()
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sleep until the wall clock reads `ms` (the server runs on this machine's clock).
async fn sleep_until_ms(ms: u64) {
    let wait = ms.saturating_sub(now_ms());
    assert!(wait <= 3000, "an unbounded wait: {wait} ms");
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn three_replicas_share_one_limit() {
    let redis = Redis::start();
    let replicas: Vec<Arc<Store>> = (0..3).map(|_| Arc::new(store(&redis))).collect();
    let key = "quota:alice@x:messages_hour";
    let mut tasks = Vec::new();
    for r in &replicas {
        for _ in 0..20 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                r.add_within(&[count(key, HOUR, 1, 10)]).await.unwrap()
            }));
        }
    }
    let mut passed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => passed += 1,
            Err(i) => assert_eq!(i, 0),
        }
    }
    assert_eq!(passed, 10);
    for r in &replicas {
        assert_eq!(total(r, key, HOUR).await, 10);
    }
    // Readable keys: the prefix, the window marker and the caller's text.
    let mut c = raw(&redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(keys, vec![format!("{PREFIX}:w:t:{key}")]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 3_600_000 && ttl <= 3_661_001, "{ttl}");
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn counts_leave_the_window_on_time() {
    let redis = Redis::start();
    let s = store(&redis);
    let key = "throttle:ip:203.0.113.0/24";
    let (Stamp(at), totals) = s.add(&[count(key, SHORT, 1, 0)]).await.unwrap();
    assert_eq!(totals, vec![1]);
    // Step of 1 s: a count made in second b leaves when second b + 2 begins.
    let leaves = (at / 1000 + 2) * 1000;
    sleep_until_ms(leaves - 150).await;
    assert_eq!(total(&s, key, SHORT).await, 1, "left early");
    sleep_until_ms(leaves + 150).await;
    assert_eq!(total(&s, key, SHORT).await, 0, "still there");
    // The swept hash is gone, not kept empty.
    let mut c = raw(&redis).await;
    let n: u64 = redis::cmd("EXISTS")
        .arg(format!("{PREFIX}:w:t:{key}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn take_back_hits_its_own_step_and_never_goes_negative() {
    let redis = Redis::start();
    let s = store(&redis);
    let key = "throttle:login:alice@x";
    let hash = format!("{PREFIX}:w:t:{key}");
    let (Stamp(first), _) = s.add(&[count(key, SHORT, 3, 0)]).await.unwrap();
    sleep_until_ms((first / 1000 + 1) * 1000 + 20).await;
    let (Stamp(second), totals) = s.add(&[count(key, SHORT, 5, 0)]).await.unwrap();
    assert_eq!(totals, vec![8]);
    assert_eq!(second / 1000, first / 1000 + 1, "not the next step");
    let mut c = raw(&redis).await;
    let field = |ms: u64| (ms / 1000).to_string();

    s.take_back(&[count(key, SHORT, 2, 0)], Stamp(first))
        .await
        .unwrap();
    let fields: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(&hash)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(fields.get(&field(first)), Some(&1), "{fields:?}");
    assert_eq!(fields.get(&field(second)), Some(&5), "{fields:?}");

    s.take_back(&[count(key, SHORT, 100, 0)], Stamp(first))
        .await
        .unwrap();
    assert_eq!(total(&s, key, SHORT).await, 5);
    s.take_back(&[count(key, SHORT, 10, 0)], Stamp(second))
        .await
        .unwrap();
    assert_eq!(total(&s, key, SHORT).await, 0);
    s.take_back(&[count(key, SHORT, 10, 0)], Stamp(second))
        .await
        .unwrap();
    assert_eq!(total(&s, key, SHORT).await, 0);

    // A stamp whose step has left the window takes nothing from the live steps.
    sleep_until_ms((first / 1000 + 2) * 1000 + 50).await;
    s.add(&[count(key, SHORT, 4, 0)]).await.unwrap();
    s.take_back(&[count(key, SHORT, 4, 0)], Stamp(first))
        .await
        .unwrap();
    assert_eq!(total(&s, key, SHORT).await, 4);
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn add_within_is_all_or_nothing() {
    let redis = Redis::start();
    let s = store(&redis);
    let (m, r) = (
        "quota:alice@x:messages_hour",
        "quota:alice@x:recipients_hour",
    );
    let both = |rcpts| [count(m, HOUR, 1, 100), count(r, HOUR, rcpts, 5)];
    assert!(s.add_within(&both(3)).await.unwrap().is_ok());
    assert_eq!(s.add_within(&both(3)).await.unwrap(), Err(1));
    let counters = [
        Counter {
            key: m,
            window: HOUR,
        },
        Counter {
            key: r,
            window: HOUR,
        },
    ];
    assert_eq!(s.totals(&counters).await.unwrap(), vec![1, 3]);
    let first_over = [count(m, HOUR, 1, 1), count(r, HOUR, 1, 5)];
    assert_eq!(s.add_within(&first_over).await.unwrap(), Err(0));
    assert_eq!(s.totals(&counters).await.unwrap(), vec![1, 3]);
    assert!(s.add_within(&both(2)).await.unwrap().is_ok());
    assert_eq!(s.totals(&counters).await.unwrap(), vec![2, 5]);
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn counts_are_clamped_and_damage_is_swept() {
    let redis = Redis::start();
    let s = store(&redis);
    let key = "quota:bob@x:bytes_day";
    let day = Window {
        len: Duration::from_secs(86_400),
        buckets: 24,
    };
    let cap = 1u64 << 50;
    let (stamp, totals) = s.add(&[count(key, day, u64::MAX, 0)]).await.unwrap();
    assert_eq!(totals, vec![cap]);
    let (_, totals) = s.add(&[count(key, day, u64::MAX, 0)]).await.unwrap();
    assert_eq!(totals, vec![cap]);
    assert_eq!(
        s.add_within(&[count(key, day, 1, u64::MAX)]).await.unwrap(),
        Err(0)
    );
    s.take_back(&[count(key, day, u64::MAX, 0)], stamp)
        .await
        .unwrap();
    assert_eq!(total(&s, key, day).await, 0);

    let mut c = raw(&redis).await;
    let hash = format!("{PREFIX}:w:t:{key}");
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg(&[
            "junk",
            "5",
            "-3",
            "7",
            "99999999999999999999",
            "1",
            "1",
            "1e3",
            "2",
            "-4",
        ])
        .query_async(&mut c)
        .await
        .unwrap();
    s.add(&[count(key, day, 2, 0)]).await.unwrap();
    assert_eq!(total(&s, key, day).await, 2);
    let left: u64 = redis::cmd("HLEN")
        .arg(&hash)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 1, "damaged fields not swept");

    // Keys a client chose are hashed: bounded, no control characters.
    let odd = format!("throttle:login:{}\r\nFLUSHALL", "x".repeat(5000));
    s.add(&[count(&odd, day, 1, 0)]).await.unwrap();
    assert_eq!(total(&s, &odd, day).await, 1);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:w:h:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].len(), PREFIX.len() + ":w:h:".len() + 64);
    s.clear(&[key, &odd]).await.unwrap();
    let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn suspensions_round_trip() {
    let redis = Redis::start();
    let s = store(&redis);
    let spam = StoredSuspension {
        since: 1_700_000_000,
        reason: "spam run".into(),
    };
    assert!(s.suspend("alice@x", &spam).await.unwrap());
    assert!(!s.suspend("alice@x", &spam).await.unwrap());
    let odd = "m\u{e9}lanie\r\n@x";
    assert!(s.suspend(odd, &spam).await.unwrap());
    let mut c = raw(&redis).await;
    let _: () = redis::cmd("HSET")
        .arg(format!("{PREFIX}:suspended"))
        .arg(&["broken@x", "{not json", "empty@x", ""])
        .query_async(&mut c)
        .await
        .unwrap();
    let all = s.suspensions().await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all["alice@x"], spam);
    assert_eq!(all[odd], spam);
    assert!(s.unsuspend("alice@x").await.unwrap());
    assert!(!s.unsuspend("alice@x").await.unwrap());
    assert_eq!(s.suspensions().await.unwrap().len(), 1);
    s.ping().await.unwrap();
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn suspensions_read_in_pages() {
    let redis = Redis::start();
    let s = store(&redis);
    let mut c = raw(&redis).await;
    let json = r#"{"since":1,"reason":"bulk"}"#;
    let mut cmd = redis::cmd("HSET");
    cmd.arg(format!("{PREFIX}:suspended"));
    for i in 0..5000 {
        cmd.arg(format!("user{i}@x")).arg(json);
    }
    let _: () = cmd.query_async(&mut c).await.unwrap();
    assert_eq!(s.suspensions().await.unwrap().len(), 5000);
}

fn fast(e: &StoreError, took: Duration) -> bool {
    matches!(e, StoreError::Unreachable(_)) && took < Duration::from_millis(500)
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn an_outage_then_a_restart() {
    let mut redis = Redis::start();
    let s = store(&redis);
    s.ping().await.unwrap();
    redis.stop();
    for _ in 0..3 {
        let t = Instant::now();
        let e = s.ping().await.unwrap_err();
        assert!(fast(&e, t.elapsed()), "{e} after {:?}", t.elapsed());
    }
    redis.restart();
    s.ping().await.unwrap();

    // Restarted under a live connection: at most one call fails.
    redis.stop();
    redis.restart();
    let mut failures = 0;
    for _ in 0..3 {
        if s.add(&[count("k", HOUR, 1, 0)]).await.is_err() {
            failures += 1;
        }
    }
    assert!(failures <= 1, "{failures} failed calls after a restart");
    assert!(total(&s, "k", HOUR).await >= 2);
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn a_paused_server_times_out() {
    let redis = Redis::start();
    let timeout = Duration::from_millis(300);
    let s = Store::new(&redis.url(), PREFIX, timeout).unwrap();
    s.ping().await.unwrap();
    let fresh = Store::new(&redis.url(), PREFIX, timeout).unwrap();
    redis.pause();
    for store in [&s, &fresh, &s] {
        let t = Instant::now();
        let e = store.add(&[count("k", HOUR, 1, 0)]).await.unwrap_err();
        let took = t.elapsed();
        assert_eq!(e, StoreError::Timeout(timeout));
        assert!(took < timeout + Duration::from_millis(200), "{took:?}");
    }
    redis.resume();
    s.ping().await.unwrap();
    fresh.ping().await.unwrap();
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn a_password() {
    let pw = "s3cret-Pw";
    let redis = Redis::start_with(Options {
        password: Some(pw.into()),
        tls: false,
    });
    let s = store(&redis);
    s.ping().await.unwrap();
    assert!(
        s.add_within(&[count("k", HOUR, 1, 1)])
            .await
            .unwrap()
            .is_ok()
    );
    let wrong = "wr0ng-Pw";
    for url in [
        format!("redis://:{wrong}@127.0.0.1:{}/0", redis.port),
        format!("redis://127.0.0.1:{}/0", redis.port),
    ] {
        let s = Store::new(&url, PREFIX, TIMEOUT).unwrap();
        let e = s.ping().await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, StoreError::Unreachable(_)), "{e}");
        assert!(!text.contains(wrong) && !text.contains(pw), "{text}");
        assert!(!format!("{e:?}").contains(wrong), "{e:?}");
    }
}

#[tokio::test]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn tls_with_a_private_ca() {
    let redis = Redis::start_with(Options {
        password: None,
        tls: true,
    });
    let port = redis.tls_port.unwrap();
    let ca = redis.ca_file();
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("rediss://{host}:{port}/0?ca_file={}", ca.display());
        let s = Store::new(&url, PREFIX, TIMEOUT).unwrap();
        s.ping().await.unwrap();
        assert!(
            s.add_within(&[count("k", HOUR, 1, 0)])
                .await
                .unwrap()
                .is_ok()
        );
    }
    // The system roots do not know the private CA.
    let s = Store::new(&format!("rediss://127.0.0.1:{port}/0"), PREFIX, TIMEOUT).unwrap();
    let e = s.ping().await.unwrap_err();
    assert!(matches!(e, StoreError::Unreachable(_)), "{e}");
    // Nor does another CA.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("other.pem");
    std::fs::write(&other_ca, submitd::tls::self_signed("localhost").unwrap().0).unwrap();
    let url = format!("rediss://127.0.0.1:{port}/0?ca_file={}", other_ca.display());
    let e = Store::new(&url, PREFIX, TIMEOUT)
        .unwrap()
        .ping()
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unreachable(_)), "{e}");
    // TLS spoken to the plain port fails, and does not hang.
    let url = format!(
        "rediss://127.0.0.1:{}/0?ca_file={}",
        redis.port,
        ca.display()
    );
    let t = Instant::now();
    assert!(
        Store::new(&url, PREFIX, TIMEOUT)
            .unwrap()
            .ping()
            .await
            .is_err()
    );
    assert!(t.elapsed() <= TIMEOUT + Duration::from_millis(200));
}

/// Round-trip time of `add_within` on loopback (printed; run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn add_within_round_trip_time() {
    let redis = Redis::start();
    let s = Arc::new(store(&redis));
    let counts = |i: usize| {
        [
            count(["a@x:m", "b@x:m"][i % 2], HOUR, 1, 0),
            count(["a@x:r", "b@x:r"][i % 2], HOUR, 3, 0),
        ]
    };
    s.ping().await.unwrap();
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        s.add_within(&counts(i)).await.unwrap().unwrap();
    }
    let seq = t.elapsed();
    let (tasks, each) = (16, 500);
    let t = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    s.add_within(&counts(k + i)).await.unwrap().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let conc = t.elapsed();
    let total = (tasks * each) as f64;
    println!(
        "add_within (2 counters): sequential {n} calls in {seq:?} = {:.0} us/call; \
         {tasks} tasks x {each} in {conc:?} = {:.0} calls/s ({:.0} us/call per task)",
        seq.as_micros() as f64 / n as f64,
        total / conc.as_secs_f64(),
        conc.as_micros() as f64 / each as f64,
    );
    // How much of it is the script's own time on the server.
    let mut c = raw(&redis).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    for line in info.lines().filter(|l| l.starts_with("cmdstat_evalsha")) {
        println!("server: {line}");
    }
}
