//! Issue 13: three `submitd serve` processes sharing one real redis-server act as one server:
//! one sending limit, one login throttle, one suspension set, and a fail-safe fallback when
//! the store dies.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::binary::{Binary, log_addr};
use common::redis::Redis;
use common::run::run_submitd;
use common::{
    ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD, Client, IO_TIMEOUT, http_get, login_as, message_from,
    plain,
};

/// One replica: its directory (config, users, queue, outbox), the process, its metrics address.
struct Replica {
    dir: tempfile::TempDir,
    config: PathBuf,
    server: Binary,
    metrics: std::net::SocketAddr,
}

fn write_replica(dir: &Path, redis_url: &str, limits: &str) -> PathBuf {
    let (cert, key) = common::cert_and_key();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("users.toml"), common::users_toml()).unwrap();
    let config = format!(
        "hostname = \"{}\"\n[listen]\nsubmission = [\"127.0.0.1:0\"]\nsubmissions = [\"127.0.0.1:0\"]\n\
         [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[auth]\nusers = \"users.toml\"\n\
         [limits]\n{limits}\n[queue]\ndir = \"queue\"\n\
         [relay]\nmode = \"capture\"\ncapture_dir = \"outbox\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
         [state]\nbackend = \"redis\"\nurl = \"{redis_url}\"\ntimeout = \"250ms\"\n",
        common::HOSTNAME
    );
    let path = dir.join("submitd.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn replicas(redis: &Redis, limits: &str) -> Vec<Replica> {
    (0..3)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let config = write_replica(dir.path(), &redis.url(), limits);
            let server = Binary::start(&config);
            let line =
                server.wait_for(|l| l.contains("listening") && l.contains("kind=\"metrics\""));
            let metrics = log_addr(&line).unwrap();
            Replica {
                dir,
                config,
                server,
                metrics,
            }
        })
        .collect()
}

/// MAIL, RCPT, DATA on a logged-in client, each step accepting a 4xx/5xx refusal: the first
/// reply that is not a success, or the final `250`.
async fn try_send(c: &mut Client, from: &str) -> String {
    c.send(format!("MAIL FROM:<{from}>\r\n").as_bytes()).await;
    let r = c.reply().await;
    if !r.starts_with("250") {
        return r;
    }
    c.send(b"RCPT TO:<rcpt@example.net>\r\n").await;
    let r = c.reply().await;
    if !r.starts_with("250") {
        return r;
    }
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(from)).as_bytes())
        .await;
    c.reply().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn a_user_limit_of_10_an_hour_holds_across_three_replicas() {
    let redis = Redis::start();
    let rs = replicas(&redis, "user_messages_per_hour = 10");
    let mut accepted = 0;
    let mut refused = Vec::new();
    for i in 0..30 {
        let r = &rs[i % 3];
        let mut c = login_as(r.server.tls, ALICE, ALICE_PASSWORD, "235").await;
        let reply = try_send(&mut c, ALICE).await;
        if reply.starts_with("250") {
            accepted += 1;
        } else {
            refused.push(reply);
        }
    }
    assert_eq!(accepted, 10, "refused: {refused:?}");
    assert_eq!(refused.len(), 20);
    for r in &refused {
        assert!(
            r.starts_with("450 4.7.1 Message rate limit exceeded"),
            "{r}"
        );
    }
    // Another user is not affected.
    let mut c = login_as(rs[1].server.tls, BOB, BOB_PASSWORD, "235").await;
    assert!(try_send(&mut c, BOB).await.starts_with("250"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn wrong_passwords_spread_over_replicas_trip_one_per_login_throttle() {
    let redis = Redis::start();
    let rs = replicas(
        &redis,
        "auth_failures_per_login = 7\nauth_failures_per_ip = 1000\nmax_auth_failures = 100",
    );
    let mut wrong = 0;
    let mut throttled = 0;
    for i in 0..30 {
        let r = &rs[i % 3];
        let mut c = Client::implicit_tls(r.server.tls).await;
        c.cmd("EHLO client.test", "250").await;
        c.send(format!("AUTH PLAIN {}\r\n", plain(ALICE, "guess")).as_bytes())
            .await;
        let reply = c.reply().await;
        if reply.starts_with("535") {
            wrong += 1;
        } else if reply.starts_with("454 4.7.0 Too many failed") {
            throttled += 1;
        } else {
            panic!("unexpected {reply}");
        }
    }
    assert_eq!(wrong, 7, "counted across the replicas, not per replica");
    assert_eq!(throttled, 23);
    // Now even the right password waits out the window, on every replica.
    for r in &rs {
        login_as(r.server.tls, ALICE, ALICE_PASSWORD, "454").await;
    }
    // Other logins are unaffected.
    login_as(rs[0].server.tls, BOB, BOB_PASSWORD, "235").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn a_suspension_through_one_config_reaches_every_replica_within_a_second() {
    let redis = Redis::start();
    let rs = replicas(&redis, "");
    let cfg = rs[0].config.display().to_string();
    let out = run_submitd(
        Some(rs[0].dir.path()),
        &[
            "user", "suspend", ALICE, "--reason", "phished", "--config", &cfg,
        ],
        None,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let suspended_at = Instant::now();
    for r in &rs[1..] {
        loop {
            let mut c = login_as(r.server.tls, ALICE, ALICE_PASSWORD, "235").await;
            c.send(format!("MAIL FROM:<{ALICE}>\r\n").as_bytes()).await;
            let reply = c.reply().await;
            if reply.starts_with("550") {
                break;
            }
            assert!(reply.starts_with("250"), "{reply}");
            assert!(
                suspended_at.elapsed() < Duration::from_secs(1),
                "still not suspended after {:?}",
                suspended_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Listed from any replica's config.
    let cfg2 = rs[2].config.display().to_string();
    let out = run_submitd(
        Some(rs[2].dir.path()),
        &["user", "list", "--config", &cfg2],
        None,
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(ALICE) && l.contains("phished")),
        "{out:?}"
    );
    let out = run_submitd(
        Some(rs[2].dir.path()),
        &["user", "unsuspend", ALICE, "--config", &cfg2],
        None,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let lifted_at = Instant::now();
    for r in &rs {
        loop {
            let mut c = login_as(r.server.tls, ALICE, ALICE_PASSWORD, "235").await;
            if try_send(&mut c, ALICE).await.starts_with("250") {
                break;
            }
            assert!(
                lifted_at.elapsed() < Duration::from_secs(1),
                "still suspended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn with_the_store_down_mail_still_flows_and_health_says_so_then_it_converges() {
    let mut redis = Redis::start();
    let rs = replicas(&redis, "user_messages_per_hour = 100");
    let r = &rs[0];
    assert!(
        http_get(r.metrics, "/health")
            .await
            .contains("\"state\":\"up\"")
    );
    redis.stop();
    // A user well under the limit still sends, each check bounded by state.timeout.
    for _ in 0..3 {
        let started = Instant::now();
        let mut c = login_as(r.server.tls, ALICE, ALICE_PASSWORD, "235").await;
        let reply = try_send(&mut c, ALICE).await;
        assert!(reply.starts_with("250"), "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    let health = http_get(r.metrics, "/health").await;
    assert!(health.contains("\"state\":\"down\""), "{health}");
    let metrics = http_get(r.metrics, "/metrics").await;
    assert!(
        metrics.contains("\nsubmitd_state_backend_up 0\n"),
        "{metrics}"
    );
    assert_eq!(
        r.server.count(|l| l.contains("state store unavailable")),
        1,
        "logged once per burst:\n{}",
        r.server.log()
    );

    redis.restart();
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut c = login_as(r.server.tls, ALICE, ALICE_PASSWORD, "235").await;
        assert!(try_send(&mut c, ALICE).await.starts_with("250"));
        if http_get(r.metrics, "/health")
            .await
            .contains("\"state\":\"up\"")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never converged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = http_get(r.metrics, "/metrics").await;
    assert!(
        metrics.contains("\nsubmitd_state_backend_up 1\n"),
        "{metrics}"
    );
    assert!(r.server.count(|l| l.contains("state store answers again")) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn a_burst_of_one_account_logging_in_everywhere_at_once_is_not_throttled() {
    let redis = Redis::start();
    // Ten logins at once on each replica: each replica asks argon2 (and reserves in the
    // throttle) once for them all, so even a per-login limit of 5 is not reached.
    let rs = replicas(
        &redis,
        "auth_failures_per_login = 5\nauth_failures_per_ip = 5",
    );
    let mut logins = Vec::new();
    for i in 0..30 {
        let addr = rs[i % 3].server.tls;
        logins.push(tokio::spawn(async move {
            let mut c = Client::implicit_tls(addr).await;
            c.cmd("EHLO client.test", "250").await;
            c.send(format!("AUTH PLAIN {}\r\n", plain(ALICE, ALICE_PASSWORD)).as_bytes())
                .await;
            c.reply().await
        }));
    }
    for l in logins {
        let reply = l.await.unwrap();
        assert!(reply.starts_with("235"), "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server: ./test.sh runs it"]
async fn wrong_api_secrets_spread_over_replicas_trip_one_throttle() {
    let redis = Redis::start();
    let rs = replicas(
        &redis,
        "auth_failures_per_login = 5\nauth_failures_per_ip = 1000\nmax_auth_failures = 100",
    );
    // One key on every replica: made through the first config, the file copied to the others.
    let out = run_submitd(
        None,
        &[
            "key",
            "create",
            "shop",
            "--sender",
            ALICE,
            "--config",
            rs[0].config.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let secret = out.stdout.trim().to_owned();
    for r in &rs[1..] {
        std::fs::copy(
            rs[0].dir.path().join("keys.toml"),
            r.dir.path().join("keys.toml"),
        )
        .unwrap();
    }
    let apis: Vec<std::net::SocketAddr> = rs
        .iter()
        .map(|r| {
            let line = r
                .server
                .wait_for(|l| l.contains("listening") && l.contains("kind=\"api\""));
            log_addr(&line).unwrap()
        })
        .collect();
    let http = reqwest::Client::builder()
        .timeout(IO_TIMEOUT)
        .build()
        .unwrap();
    let post = |api: std::net::SocketAddr, token: String| {
        let http = http.clone();
        async move {
            http.post(format!("http://{api}/v1/messages"))
                .bearer_auth(token)
                .json(&serde_json::json!({"from": ALICE, "to": "rcpt@example.net", "text": "x"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // A wrong secret of the right shape names the key: its failures count once, everywhere.
    let wrong = format!("sk_shop_{}", "A".repeat(43));
    let mut codes = Vec::new();
    for i in 0..12 {
        codes.push(post(apis[i % 3], wrong.clone()).await);
    }
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 7, "{codes:?}");
    // The right secret now waits out the window on every replica.
    for api in &apis {
        assert_eq!(post(*api, secret.clone()).await, 429);
    }
}
