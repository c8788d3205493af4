//! Polite delivery through the whole server, in MX mode against sinks on loopback found
//! through the tests' own DNS server: per-destination concurrency (one big domain does not
//! hold up another), per-destination rate, and the backoff after a throttling reply (`421
//! 4.7.28`), seen by the receiving server, `submitd queue list` and the metrics.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::{DnsServer, Rr};
use common::run::{Output, finish, spawn_submitd};
use common::sink::{MailRule, Sink, SinkOptions};
use common::*;
use submitd::config::Settings;
use tokio_util::sync::CancellationToken;

/// A server with its control socket (like `submitd serve`), so that the command line can ask
/// it about throttled destinations; stopped when dropped.
struct Polite {
    dir: tempfile::TempDir,
    submissions: SocketAddr,
    metrics: SocketAddr,
    shutdown: CancellationToken,
    _pid: submitd::pidfile::PidFile,
}

impl Drop for Polite {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Polite {
    async fn start(queue: &str, relay: &str) -> Polite {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config_full(dir.path(), "", queue, relay, "127.0.0.1:0", "127.0.0.1:0");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
        std::fs::write(&path, &text).unwrap();
        let settings = Settings::from_toml(&text, &path).unwrap();
        let queue_dir = settings.queue.dir.clone();
        let server = submitd::server::Server::bind(Arc::new(settings))
            .await
            .unwrap();
        let submissions = server.submissions_addrs()[0];
        let metrics = server.metrics_addr().unwrap();
        let shutdown = CancellationToken::new();
        let pid = submitd::pidfile::PidFile::acquire(&queue_dir).unwrap();
        submitd::listener::control::ControlSocket::bind(&queue_dir, &pid)
            .unwrap()
            .serve(server.reloader(), server.queue(), None, shutdown.clone())
            .unwrap();
        tokio::spawn(server.run(shutdown.clone()));
        Polite {
            dir,
            submissions,
            metrics,
            shutdown,
            _pid: pid,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("submitd.toml")
    }

    /// Submit one message per recipient, all in one session.
    async fn submit_each(&self, rcpts: &[String]) {
        let mut c = login_as(self.submissions, ALICE, ALICE_PASSWORD, "235").await;
        for r in rcpts {
            let reply = send_message(&mut c, ALICE, &[r.as_str()]).await;
            assert!(reply.starts_with("250"), "{reply}");
        }
    }
}

/// `submitd queue list` against the running server.
async fn queue_list(config: &Path) -> Output {
    let config = config.to_str().unwrap().to_string();
    tokio::task::spawn_blocking(move || {
        finish(spawn_submitd(
            None,
            &["queue", "list", "--config", &config],
            None,
        ))
    })
    .await
    .unwrap()
}

/// MX-mode relay lines: deliver on `port`, ask `dns`, no TLS (the sinks offer none).
fn mx_relay(port: u16, dns: &DnsServer, extra: &str) -> String {
    format!(
        "mode = \"mx\"\nport = {port}\nresolver = [\"{}\"]\ntimeout = \"5s\"\ntls = \"none\"\n{extra}\n",
        dns.addr
    )
}

fn rcpts(domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user{i}@{domain}")).collect()
}

/// Every recipient the sink got, each exactly once.
fn delivered_once(sink: &Sink) -> BTreeSet<String> {
    let got: Vec<String> = sink.received().into_iter().flat_map(|r| r.rcpts).collect();
    let set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(
        set.len(),
        got.len(),
        "a message was delivered twice: {got:?}"
    );
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_destination_gets_at_most_its_concurrency_and_others_still_go() {
    // The big domain answers slowly; the other domain's host listens on 127.0.0.2, same port.
    let big = Sink::start(SinkOptions {
        data_delay: Some(Duration::from_millis(400)),
        ..SinkOptions::default()
    })
    .await;
    let port = big.addr.port();
    let other = Sink::start(SinkOptions {
        bind: Some(SocketAddr::from(([127, 0, 0, 2], port))),
        ..SinkOptions::default()
    })
    .await;
    let dns = DnsServer::start(vec![
        ("big.test.", Rr::A(Ipv4Addr::LOCALHOST)),
        ("other.test.", Rr::A(Ipv4Addr::new(127, 0, 0, 2))),
    ])
    .await;
    let server = Polite::start(
        "concurrency = 20",
        &mx_relay(port, &dns, "destination_concurrency = 3"),
    )
    .await;
    let many = rcpts("big.test", 12);
    server.submit_each(&many).await;
    server.submit_each(&rcpts("other.test", 1)).await;

    // The other domain does not wait behind the big one.
    other.wait_for(1, IO_TIMEOUT).await;
    let big_done = big.received().len();
    assert!(
        big_done < many.len(),
        "other.test was delivered only after big.test ({big_done} of {})",
        many.len()
    );
    big.wait_for(many.len(), IO_TIMEOUT).await;
    assert_eq!(delivered_once(&big), many.iter().cloned().collect());
    assert!(
        big.peak_sessions() <= 3,
        "{} simultaneous sessions with destination_concurrency = 3",
        big.peak_sessions()
    );
    assert!(big.peak_transactions() <= 3);
    assert!(
        big.peak_transactions() >= 2,
        "the limit is a limit, not serial delivery: peak {}",
        big.peak_transactions()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_destination_is_slowed_held_listed_and_gets_everything_once() {
    const N: usize = 8;
    // Gmail answers 421 4.7.28 after the data: the first attempts overlap.
    let data_rule: MailRule = Arc::new(|nth| {
        (nth <= 3).then(|| {
            (
                421,
                "4.7.28 Our system has detected an unusual rate of mail, try later".to_string(),
            )
        })
    });
    let sink = Sink::start(SinkOptions {
        data_delay: Some(Duration::from_millis(300)),
        data_rule: Some(data_rule),
        ..SinkOptions::default()
    })
    .await;
    let dns = DnsServer::start(vec![("gmail.test.", Rr::A(Ipv4Addr::LOCALHOST))]).await;
    let server = Polite::start(
        "concurrency = 20\nretry = [\"1s\"]",
        &mx_relay(
            sink.addr.port(),
            &dns,
            "destination_concurrency = 4\nthrottle_backoff = \"3s\"\nthrottle_backoff_max = \"6s\"",
        ),
    )
    .await;
    let all = rcpts("gmail.test", N);
    server.submit_each(&all).await;

    // The throttle: the first refusal seen by the sink.
    let deadline = Instant::now() + IO_TIMEOUT;
    while sink.dots() < 1 {
        assert!(Instant::now() < deadline, "the sink never throttled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let throttled_at = Instant::now();
    // Attempts that had started before the throttle end (one MAIL at most each).
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.reset_peaks();
    let before = sink.received().len();
    let mails = sink.mails();

    // Listed by `queue list` (held, or recovering) and in the metrics.
    let out = queue_list(&server.config()).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("throttled destinations:\n  gmail.test "),
        "{out:?}"
    );
    assert!(out.stdout.contains("(concurrency "), "{out:?}");
    let metrics = http_get(server.metrics, "/metrics").await;
    // One event when the first attempts overlapped (the usual case); more if a slow machine
    // let them start one by one, each after the last hold.
    let events = metrics
        .lines()
        .find_map(|l| l.strip_prefix("submitd_destination_throttle_events_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no throttle counter: {metrics}"));
    assert!((1..=3).contains(&events), "{events} throttle events");
    assert!(
        metrics.contains("submitd_destination_throttled{destination=\"gmail.test\"} 1\n"),
        "{metrics}"
    );
    let limit = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("submitd_destination_concurrency_limit{destination=\"gmail.test\"} ")
        })
        .unwrap_or_else(|| panic!("no limit for gmail.test: {metrics}"));
    let limit: usize = limit.trim().parse().unwrap();
    assert!((1..=2).contains(&limit), "limit {limit} after halving 4");

    // Nothing is attempted while the destination is held (3 s; the retries are due after 1 s
    // and wait for the end of the hold).
    while throttled_at.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(sink.mails(), mails, "an attempt during the hold");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // After the hold: half the concurrency (4 -> 2), until two more messages got through
    // (the limit grows by one after as many successes as the limit). Read at the sink when
    // each message was accepted, before its reply.
    sink.wait_for(before + 2, IO_TIMEOUT).await;
    let peaks = sink.peaks_at_receipts();
    assert!(
        peaks[before + 1] <= 2,
        "peak {} after the throttle, with the limit halved to at most 2 ({peaks:?})",
        peaks[before + 1]
    );
    sink.wait_for(N, Duration::from_secs(60)).await;
    assert_eq!(delivered_once(&sink), all.iter().cloned().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rate_spaces_the_attempts() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dns = DnsServer::start(vec![("slow.test.", Rr::A(Ipv4Addr::LOCALHOST))]).await;
    let server = Polite::start(
        "concurrency = 20",
        &mx_relay(sink.addr.port(), &dns, "destination_rate = 60"),
    )
    .await;
    let all = rcpts("slow.test", 4);
    server.submit_each(&all).await;
    let first = {
        sink.wait_for(1, IO_TIMEOUT).await;
        Instant::now()
    };
    sink.wait_for(4, Duration::from_secs(60)).await;
    // One a second: the last three at least ~3 s after the first (generous bound).
    assert!(
        first.elapsed() >= Duration::from_secs(2),
        "4 messages within {:?} at 60 per minute",
        first.elapsed()
    );
    assert_eq!(delivered_once(&sink), all.iter().cloned().collect());
}

#[test]
fn check_config_rejects_bad_polite_values() {
    for (relay, key) in [
        (
            "destination_concurrency = 0",
            "relay.destination_concurrency",
        ),
        ("destination_rate = -1", "relay.destination_rate"),
        ("throttle_backoff = \"0s\"", "relay.throttle_backoff"),
        (
            "throttle_backoff = \"10m\"\nthrottle_backoff_max = \"1m\"",
            "relay.throttle_backoff_max",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config_full(
            dir.path(),
            "",
            "",
            &format!("mode = \"mx\"\n{relay}"),
            "127.0.0.1:0",
            "127.0.0.1:0",
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let err = Settings::from_toml(&text, &path).unwrap_err().to_string();
        assert!(err.contains(key), "{relay}: {err}");
        let out = common::run::run_submitd(
            None,
            &["check-config", "--config", path.to_str().unwrap()],
            None,
        );
        assert_ne!(out.code, Some(0), "{out:?}");
        assert!(out.stderr.contains(key), "{out:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_config_full(
        dir.path(),
        "",
        "",
        "mode = \"mx\"",
        "127.0.0.1:0",
        "127.0.0.1:0",
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let polite = Settings::from_toml(&text, &path).unwrap().relay.polite;
    assert_eq!(polite.concurrency, 20);
    assert_eq!(polite.rate_per_minute, 0);
    assert_eq!(polite.backoff, Duration::from_secs(60));
}
