//! Issue 12's "one pipeline for all backends", shown with a real Dovecot (any directory
//! backend goes through the same `auth::verify` path): an outage never counts against the
//! throttle, a revoked account stops within `cache_ttl`, a burst of logins asks the directory
//! once, the per-backend metrics, and `check-config` connecting to the backend.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::dovecot::{Dovecot, SHA_PASSWORD, SHA_USER};
use common::run::run_submitd;
use common::{TestServer, http_get, login_as, write_config_auth};

fn auth_toml(d: &Dovecot, extra: &str) -> String {
    format!(
        "backend = \"dovecot\"\n{extra}\n[auth.dovecot]\nsocket = \"{}\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        d.unix_setting()
    )
}

async fn server(d: &Dovecot, extra: &str, limits: &str) -> TestServer {
    // `[limits]` lines go before `[auth]`, in the relay string's place at the end of [relay].
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n\n[limits]\n{limits}"
    );
    TestServer::start_auth(&auth_toml(d, extra), &relay).await
}

async fn scrape(addr: SocketAddr) -> String {
    http_get(addr, "/metrics").await
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn an_outage_never_counts_against_the_login_throttle() {
    let d = Dovecot::start();
    let server = server(
        &d,
        "cache_ttl = \"0s\"",
        "auth_failures_per_login = 2\nauth_failures_per_ip = 3\nmax_auth_failures = 10",
    )
    .await;
    d.stop();
    // Far more attempts than either throttle allows: each is an outage, none a failure.
    for _ in 0..8 {
        let mut c = login_as(server.submissions, SHA_USER, SHA_PASSWORD, "454").await;
        let _ = &mut c;
    }
    let mut c = login_as(server.submissions, SHA_USER, SHA_PASSWORD, "454").await;
    c.cmd(
        &format!("AUTH PLAIN {}", common::plain(SHA_USER, SHA_PASSWORD)),
        "454 4.7.0 Temporary authentication failure",
    )
    .await;
    d.start_again();
    login_as(server.submissions, SHA_USER, SHA_PASSWORD, "235").await;
    // A real wrong password still counts: two, then the per-login throttle answers.
    login_as(server.submissions, SHA_USER, "wrong", "535").await;
    login_as(server.submissions, SHA_USER, "wrong", "535").await;
    login_as(
        server.submissions,
        SHA_USER,
        SHA_PASSWORD,
        "454 4.7.0 Too many failed authentications",
    )
    .await;
}

#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn a_revoked_account_stops_within_cache_ttl() {
    let d = Dovecot::start();
    let server = server(&d, "cache_ttl = \"2s\"", "").await;
    login_as(server.submissions, SHA_USER, SHA_PASSWORD, "235").await;
    // Revoke: the account leaves Dovecot's passwd-file (Dovecot re-reads it when it changes).
    let passwd = d.dir.path().join("passwd");
    let kept: String = std::fs::read_to_string(&passwd)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(SHA_USER))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&passwd, kept).unwrap();
    let revoked = Instant::now();
    // Within the TTL the cache still says yes (the documented trade) ...
    login_as(server.submissions, SHA_USER, SHA_PASSWORD, "235").await;
    // ... and after it the directory decides.
    let wait = Duration::from_millis(2300).saturating_sub(revoked.elapsed());
    tokio::time::sleep(wait).await;
    login_as(server.submissions, SHA_USER, SHA_PASSWORD, "535").await;
}

#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn a_burst_of_the_same_login_asks_the_directory_once_and_metrics_count_per_backend() {
    let d = Dovecot::start();
    let server = server(&d, "cache_ttl = \"0s\"", "").await;
    let metrics = server.metrics.unwrap();
    let before = scrape(metrics).await;
    assert_eq!(
        value(
            &before,
            "submitd_auth_backend_requests_total{backend=\"dovecot\"}"
        ),
        0.0
    );
    // Held back by a frozen Dovecot, ten logins with the same credentials wait together.
    d.pause();
    let mut logins = Vec::new();
    for _ in 0..10 {
        let addr = server.submissions;
        logins.push(tokio::spawn(async move {
            login_as(addr, SHA_USER, SHA_PASSWORD, "235").await
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    d.resume();
    for l in logins {
        l.await.unwrap();
    }
    let text = scrape(metrics).await;
    assert_eq!(
        value(
            &text,
            "submitd_auth_backend_requests_total{backend=\"dovecot\"}"
        ),
        1.0,
        "one question for ten logins:\n{text}"
    );
    assert_eq!(value(&text, "submitd_auth_total{result=\"success\"}"), 10.0);
    assert!(
        value(
            &text,
            "submitd_auth_backend_duration_seconds_count{backend=\"dovecot\"}"
        ) == 1.0,
        "{text}"
    );

    d.stop();
    login_as(server.submissions, SHA_USER, SHA_PASSWORD, "454").await;
    let text = scrape(metrics).await;
    assert_eq!(
        value(
            &text,
            "submitd_auth_backend_failures_total{backend=\"dovecot\",reason=\"unreachable\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "submitd_auth_total{result=\"unavailable\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "submitd_auth_total{result=\"bad_credentials\"}"),
        0.0
    );
}

#[test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
fn check_config_connects_to_the_backend_and_names_the_key() {
    let d = Dovecot::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_auth(dir.path(), &auth_toml(&d, ""), "mode = \"mx\"");
    let cfg = config.display().to_string();
    let out = run_submitd(Some(dir.path()), &["check-config", "--config", &cfg], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("auth.backend \"dovecot\": reachable"),
        "{out:?}"
    );

    d.stop();
    let out = run_submitd(Some(dir.path()), &["check-config", "--config", &cfg], None);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("auth.dovecot.socket: unreachable"),
        "{out:?}"
    );
}
