//! Webhooks (`[[webhook]]`, issue 16) end to end: real deliveries to an SMTP sink make events,
//! which are queued on disk per endpoint and POSTed to a Python receiver that verifies the
//! Standard Webhooks signature with the reference library (`tests/webhook_receiver.py`, needs
//! `pip install standardwebhooks`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::Binary;
use common::dovecot::free_port;
use common::run::run_submitd;
use common::sink::{Sink, SinkOptions};
use common::*;

/// The Python receiver, killed when dropped.
struct Receiver {
    child: Child,
    out: PathBuf,
}

impl Receiver {
    /// Start it on `port` with the secret in `secret`, writing to `out`; returns once the port
    /// answers.
    fn start(port: u16, secret: &Path, out: &Path) -> Receiver {
        Receiver::start_tls(port, secret, out, None)
    }

    /// The same, serving HTTPS with `tls` = (certificate file, key file) when given.
    fn start_tls(port: u16, secret: &Path, out: &Path, tls: Option<(&Path, &Path)>) -> Receiver {
        Receiver::start_with(port, secret, out, tls, &[])
    }

    /// The same, with `env` for the receiver (`RECEIVER_REFUSE`, `RECEIVER_UNDELIMITED`).
    fn start_with(
        port: u16,
        secret: &Path,
        out: &Path,
        tls: Option<(&Path, &Path)>,
        env: &[(&str, &str)],
    ) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_receiver.py");
        let mut command = Command::new("python3");
        command
            .arg(script)
            .arg(port.to_string())
            .arg(secret)
            .arg(out);
        if let Some((cert, key)) = tls {
            command.arg(cert).arg(key);
        }
        command.envs(env.iter().copied());
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        let r = Receiver {
            child,
            out: out.to_path_buf(),
        };
        let deadline = Instant::now() + IO_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the receiver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// Every request recorded so far (one JSON object each).
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The verified requests to `path` that it accepted.
    fn valid(&self, path: &str) -> Vec<serde_json::Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["path"] == path && r["valid"] == true && r["refused"] != true)
            .collect()
    }

    /// The requests it refused (500) under `RECEIVER_REFUSE`.
    fn refused(&self) -> Vec<serde_json::Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["refused"] == true)
            .collect()
    }

    /// Wait until `path` got verified requests for `n` distinct event ids.
    async fn wait_ids(&self, path: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let got = self.valid(path);
            let ids: BTreeSet<String> = got.iter().map(|r| r["id"].to_string()).collect();
            if ids.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {} event id(s), wanted {n}: {:#?}",
                ids.len(),
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh `whsec_` secret written to `dir/NAME`.
fn secret_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, submitd::webhook::generate_secret()).unwrap();
    path
}

/// The event ids waiting for endpoint `name`, oldest first (files `<hex time>_<id>.json`).
fn backlog(queue: &Path, name: &str) -> Vec<String> {
    let dir = queue.join("webhooks").join(name);
    let mut ids: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
                .filter(|n| n.contains("_msg_"))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.into_iter()
        .map(|n| n.split_once('_').unwrap().1.to_string())
        .collect()
}

/// Wait until endpoint `name` has `n` events waiting.
async fn wait_backlog(queue: &Path, name: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let ids = backlog(queue, name);
        if ids.len() == n {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: backlog {ids:?}, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submit one message from alice to `rcpts` over implicit TLS at `addr`; its queue ID.
async fn submit_to(addr: std::net::SocketAddr, rcpts: &[&str]) -> String {
    let mut c = login_as(addr, ALICE, ALICE_PASSWORD, "235").await;
    let r = send_message(&mut c, ALICE, rcpts).await;
    r.trim_start_matches("250 2.0.0 Ok: queued as ")
        .trim_end()
        .to_string()
}

/// A TCP listener that accepts and never answers (an endpoint that hangs), for the test's life.
fn black_hole() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: at most 100 connections are held.
        for stream in listener.incoming().take(100) {
            held.push(stream);
        }
    });
    port
}

/// (type, message id, recipient) of a verified request.
fn key_of(r: &serde_json::Value) -> (String, String, String) {
    let e = &r["event"];
    (
        e["type"].as_str().unwrap().to_string(),
        e["data"]["message_id"].as_str().unwrap().to_string(),
        e["data"]["recipient"].as_str().unwrap().to_string(),
    )
}

/// The receiver is down while mail is delivered (a hanging endpoint too): delivery is not
/// delayed, the events wait on disk, survive a SIGKILL and restart of submitd, and reach the
/// receiver once it is up: every event, each under one stable id, every signature verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with the standardwebhooks package (test.sh installs it)"]
async fn events_wait_for_a_dead_receiver_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default()).await;
    let port = free_port();
    let hole = black_hole();
    let secret = secret_file(dir.path(), "app.secret");
    let config = write_config_full(
        dir.path(),
        "",
        "",
        &smarthost(&sink),
        "127.0.0.1:0",
        "127.0.0.1:0",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[webhook]]\nname = \"app\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         secret_file = \"{}\"\nretry_min = \"100ms\"\nretry_max = \"300ms\"\ntimeout = \"2s\"\n\
         \n[[webhook]]\nname = \"hole\"\nurl = \"http://127.0.0.1:{hole}/\"\n\
         secret_file = \"{}\"\ntimeout = \"60s\"\n",
        secret.display(),
        secret.display()
    ));
    std::fs::write(&config, text).unwrap();
    let queue = dir.path().join("queue");

    let mut server = Binary::start(&config);
    let started = Instant::now();
    let first = submit_to(server.tls, &["ok1@example.net", "reject1@example.net"]).await;
    let second = submit_to(server.tls, &["ok2@example.net", "reject2@example.net"]).await;
    // Neither the refused connections nor the hanging endpoint hold delivery up (two
    // messages and the two bounce notices to alice).
    sink.wait_for(4, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "delivery took {:?}",
        started.elapsed()
    );

    // Two delivered and two bounced events wait for each endpoint, and the deliveries of the
    // two bounce notices (the endpoints are not scoped to keys).
    let waiting = wait_backlog(&queue, "app", 6).await;
    wait_backlog(&queue, "hole", 6).await;
    let cfg = config.to_str().unwrap();
    let out = run_submitd(None, &["webhook", "list", "--config", cfg], None);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let app = out.stdout.lines().find(|l| l.starts_with("app\t")).unwrap();
    assert!(app.contains("backlog=6"), "{}", out.stdout);
    assert!(app.contains("failing"), "{}", out.stdout);
    let json = run_submitd(None, &["webhook", "list", "--json", "--config", cfg], None);
    let list: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(list[0]["name"], "app");
    assert_eq!(list[0]["backlog"], 6);
    assert_eq!(list[1]["name"], "hole");
    assert_eq!(list[1]["backlog"], 6);

    // A crash and a restart: the backlog is still there.
    server.kill();
    assert_eq!(backlog(&queue, "app"), waiting);
    let mut server = Binary::start(&config);

    let receiver = Receiver::start(port, &secret, &dir.path().join("received.jsonl"));
    let got = receiver.wait_ids("/hook", 6).await;
    wait_backlog(&queue, "app", 0).await;

    // Every request verified; one id per event; the ids are the ones on disk before the crash.
    assert!(
        receiver.requests().iter().all(|r| r["valid"] == true),
        "{:#?}",
        receiver.requests()
    );
    let mut by_id: BTreeMap<String, BTreeSet<(String, String, String)>> = BTreeMap::new();
    for r in &got {
        by_id
            .entry(r["id"].as_str().unwrap().to_string())
            .or_default()
            .insert(key_of(r));
    }
    assert!(by_id.values().all(|events| events.len() == 1), "{by_id:#?}");
    let mut waiting = waiting;
    waiting.sort();
    assert_eq!(by_id.keys().cloned().collect::<Vec<_>>(), waiting);
    let (notices, events): (BTreeSet<_>, BTreeSet<_>) = got
        .iter()
        .map(key_of)
        .partition(|(_, _, rcpt)| rcpt == ALICE);
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices.iter().all(|(t, _, _)| t == "message.delivered"));
    let expected: BTreeSet<_> = [
        ("message.delivered", &first, "ok1@example.net"),
        ("message.bounced", &first, "reject1@example.net"),
        ("message.delivered", &second, "ok2@example.net"),
        ("message.bounced", &second, "reject2@example.net"),
    ]
    .into_iter()
    .map(|(t, id, r)| (t.to_string(), id.to_string(), r.to_string()))
    .collect();
    assert_eq!(events, expected);
    let bounce = got
        .iter()
        .find(|r| r["event"]["type"] == "message.bounced")
        .unwrap();
    let data = &bounce["event"]["data"];
    assert!(data["reply"].as_str().unwrap().contains("550"), "{data}");
    assert_eq!(data["status"], "5.1.1");
    assert_eq!(data["attempt"], 1);
    assert_eq!(data["user"], ALICE);

    let out = run_submitd(None, &["webhook", "list", "--config", cfg], None);
    let app = out.stdout.lines().find(|l| l.starts_with("app\t")).unwrap();
    assert!(app.contains("backlog=0"), "{}", out.stdout);
    server.kill();
}

/// `events` and `keys` pick what each endpoint gets; a receiver that refuses the signature
/// (wrong secret) keeps its event waiting; the metrics show backlogs and results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with the standardwebhooks package (test.sh installs it)"]
async fn events_and_keys_filter_and_metrics_count() {
    let secrets = tempfile::tempdir().unwrap();
    let good = secret_file(secrets.path(), "good.secret");
    let wrong = secret_file(secrets.path(), "wrong.secret");
    let port = free_port();
    let receiver = Receiver::start(port, &good, &secrets.path().join("received.jsonl"));
    let sink = Sink::start(SinkOptions::default()).await;
    let hook = |name: &str, secret: &Path, extra: &str| {
        format!(
            "[[webhook]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{port}/{name}\"\n\
             secret_file = \"{}\"\nretry_min = \"100ms\"\nretry_max = \"200ms\"\n{extra}\n",
            secret.display()
        )
    };
    let extra = [
        "[metrics]\nlisten = \"127.0.0.1:0\"\n".to_string(),
        hook("bounces", &good, "events = [\"bounced\"]"),
        hook("bob", &good, &format!("keys = [\"{BOB}\"]")),
        hook(
            "alice",
            &good,
            &format!("keys = [\"{ALICE}\"]\nevents = [\"delivered\"]"),
        ),
        hook(
            "wrong",
            &wrong,
            &format!("keys = [\"{ALICE}\"]\nevents = [\"delivered\"]"),
        ),
    ]
    .concat();
    let server = TestServer::start_full("", "", &smarthost(&sink), &extra).await;
    // With a DSN envelope id (RFC 3461 ENVID, xtext): it comes back decoded in every event.
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}> ENVID=order+2D42"), "250")
        .await;
    for r in ["ok@example.net", "reject@example.net"] {
        c.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    let r = c.expect("250 2.0.0 Ok: queued as ").await;
    let id = r
        .trim_start_matches("250 2.0.0 Ok: queued as ")
        .trim_end()
        .to_string();
    sink.wait_for(1, IO_TIMEOUT).await;

    let bounces = receiver.wait_ids("/bounces", 1).await;
    let alice = receiver.wait_ids("/alice", 1).await;
    let queue = server.queue_dir();
    wait_backlog(&queue, "bounces", 0).await;
    wait_backlog(&queue, "alice", 0).await;
    assert_eq!(bounces.len(), 1, "{bounces:#?}");
    assert_eq!(
        key_of(&bounces[0]),
        (
            "message.bounced".into(),
            id.clone(),
            "reject@example.net".into()
        )
    );
    let data = &bounces[0]["event"]["data"];
    assert_eq!(data["envid"], "order-42", "{data}");
    assert_eq!(data["metadata"], serde_json::json!({}));
    assert_eq!(data["user"], ALICE);
    assert_eq!(data["tenant"], ALICE);
    assert_eq!(alice.len(), 1, "{alice:#?}");
    assert_eq!(
        key_of(&alice[0]),
        ("message.delivered".into(), id, "ok@example.net".into())
    );
    // Bob sent nothing: his endpoint never had an event.
    assert!(backlog(&queue, "bob").is_empty());
    assert!(receiver.valid("/bob").is_empty());

    // The receiver refuses the signature made with another secret: the event stays queued
    // under the same id and is retried.
    let deadline = Instant::now() + IO_TIMEOUT;
    let refused = loop {
        let refused: Vec<_> = receiver
            .requests()
            .into_iter()
            .filter(|r| r["path"] == "/wrong")
            .collect();
        if refused.len() >= 2 {
            break refused;
        }
        assert!(Instant::now() < deadline, "no retries: {refused:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.iter().all(|r| r["valid"] == false), "{refused:#?}");
    assert!(refused.iter().all(|r| r["id"] == refused[0]["id"]));
    // The retries came over the connection of the first try (HTTP/1.1 keep-alive): no new
    // TCP connection per attempt.
    assert!(
        refused.iter().all(|r| r["peer"] == refused[0]["peer"]),
        "{refused:#?}"
    );
    let waiting = backlog(&queue, "wrong");
    assert_eq!(waiting.len(), 1);
    assert_eq!(refused[0]["id"], waiting[0].as_str());

    let text = http_get(server.metrics.unwrap(), "/metrics").await;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(value("submitd_webhook_backlog{endpoint=\"wrong\"}"), 1.0);
    assert_eq!(value("submitd_webhook_backlog{endpoint=\"bounces\"}"), 0.0);
    assert_eq!(
        value("submitd_webhook_deliveries_total{endpoint=\"bounces\",result=\"success\"}"),
        1.0
    );
    assert!(
        value("submitd_webhook_deliveries_total{endpoint=\"wrong\",result=\"failure\"}") >= 2.0
    );
    assert_eq!(
        value("submitd_webhook_dropped_total{endpoint=\"wrong\",reason=\"backlog_full\"}"),
        0.0
    );
}

/// Over `max_backlog`, new events are dropped (not stored) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_drops_new_events_and_counts_them() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secret_file(secrets.path(), "s");
    let sink = Sink::start(SinkOptions::default()).await;
    // Nothing listens on the endpoint's port.
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[[webhook]]\nname = \"small\"\n\
         url = \"http://127.0.0.1:{}/\"\nsecret_file = \"{}\"\nmax_backlog = 2\n",
        free_port(),
        secret.display()
    );
    let server = TestServer::start_full("", "", &smarthost(&sink), &extra).await;
    server
        .submit(
            &["a@example.net", "b@example.net", "c@example.net"],
            &message_from(ALICE),
        )
        .await;
    sink.wait_for(1, IO_TIMEOUT).await;
    let queue = server.queue_dir();
    wait_backlog(&queue, "small", 2).await;
    let addr = server.metrics.unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let text = http_get(addr, "/metrics").await;
        if text
            .contains("submitd_webhook_dropped_total{endpoint=\"small\",reason=\"backlog_full\"} 1")
        {
            assert!(
                text.contains("submitd_webhook_backlog{endpoint=\"small\"} 2"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still two after a while: nothing else was stored.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backlog(&queue, "small").len(), 2);
}

/// `webhook secret` prints a fresh `whsec_` secret; `check-config` reads every secret file
/// and names the key of a bad one.
#[test]
fn secret_command_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_submitd(None, &["webhook", "secret"], None);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let secret = out.stdout.trim().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(submitd::webhook::Secret::parse(&secret).is_ok());
    let again = run_submitd(None, &["webhook", "secret"], None);
    assert_ne!(again.stdout.trim(), secret);

    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    std::fs::write(dir.path().join("good.whsec"), format!("{secret}\n")).unwrap();
    std::fs::write(dir.path().join("bad.whsec"), "not a secret\n").unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[webhook]]\nname = \"good\"\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"good.whsec\"\n\
         [[webhook]]\nname = \"bad\"\nurl = \"https://hooks.example.test/\"\nsecret_file = \"bad.whsec\"\n",
    );
    std::fs::write(&config, &text).unwrap();
    let cfg = config.to_str().unwrap();
    let out = run_submitd(None, &["check-config", "--config", cfg], None);
    assert_eq!(out.code, Some(2), "{}", out.stdout);
    assert!(
        out.stderr.contains("webhook[1].secret_file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("whsec_"), "{}", out.stderr);
    assert!(!out.stderr.contains("webhook[0]"), "{}", out.stderr);

    // Fixed: the config is fine, and `webhook list` shows both endpoints with nothing waiting.
    std::fs::write(dir.path().join("bad.whsec"), &secret).unwrap();
    let out = run_submitd(None, &["check-config", "--config", cfg], None);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = run_submitd(None, &["webhook", "list", "--config", cfg], None);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("good\thttp://127.0.0.1:9/\tbacklog=0\toldest=-\tok"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("bad\thttps://hooks.example.test:443/\tbacklog=0"),
        "{}",
        out.stdout
    );
}

/// An event the endpoint never took within `max_age` is dropped from the disk and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_max_age_are_dropped() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secret_file(secrets.path(), "s");
    let sink = Sink::start(SinkOptions::default()).await;
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[[webhook]]\nname = \"brief\"\n\
         url = \"http://127.0.0.1:{}/\"\nsecret_file = \"{}\"\nmax_age = \"1s\"\n\
         retry_min = \"100ms\"\nretry_max = \"200ms\"\nkeys = [\"{ALICE}\"]\n",
        free_port(),
        secret.display()
    );
    let server = TestServer::start_full("", "", &smarthost(&sink), &extra).await;
    server
        .submit(&["a@example.net", "b@example.net"], &message_from(ALICE))
        .await;
    sink.wait_for(1, IO_TIMEOUT).await;
    let queue = server.queue_dir();
    wait_backlog(&queue, "brief", 2).await;
    // Within about two seconds (ages are counted in whole seconds) both are gone.
    wait_backlog(&queue, "brief", 0).await;
    let text = http_get(server.metrics.unwrap(), "/metrics").await;
    assert!(
        text.contains("submitd_webhook_dropped_total{endpoint=\"brief\",reason=\"max_age\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("submitd_webhook_deliveries_total{endpoint=\"brief\",result=\"success\"} 0"),
        "{text}"
    );
}

/// An `https` endpoint: the receiver's certificate checked against `ca_file` (delivered), and
/// refused without it (the event waits, the error is shown by `webhook list`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with the standardwebhooks package (test.sh installs it)"]
async fn https_endpoint_checks_the_certificate() {
    let files = tempfile::tempdir().unwrap();
    let secret = secret_file(files.path(), "s");
    let (cert, key) = submitd::tls::self_signed("localhost").unwrap();
    let (cert_file, key_file) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let port = free_port();
    let receiver = Receiver::start_tls(
        port,
        &secret,
        &files.path().join("received.jsonl"),
        Some((&cert_file, &key_file)),
    );
    let sink = Sink::start(SinkOptions::default()).await;
    let hook = |name: &str, ca: &str| {
        format!(
            "[[webhook]]\nname = \"{name}\"\nurl = \"https://127.0.0.1:{port}/{name}\"\n\
             secret_file = \"{}\"\nkeys = [\"{ALICE}\"]\nevents = [\"delivered\"]\n\
             retry_min = \"100ms\"\nretry_max = \"200ms\"\n{ca}\n",
            secret.display()
        )
    };
    let extra = [
        hook("trusted", &format!("ca_file = \"{}\"", cert_file.display())),
        hook("untrusted", ""),
    ]
    .concat();
    let server = TestServer::start_full("", "", &smarthost(&sink), &extra).await;
    let id = server
        .submit(&["ok@example.net"], &message_from(ALICE))
        .await;
    let got = receiver.wait_ids("/trusted", 1).await;
    assert_eq!(
        key_of(&got[0]),
        ("message.delivered".into(), id, "ok@example.net".into())
    );
    let queue = server.queue_dir();
    wait_backlog(&queue, "trusted", 0).await;
    assert_eq!(backlog(&queue, "untrusted").len(), 1);
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r["path"] != "/untrusted")
    );
    let config = server.dir.path().join("submitd.toml");
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let out = run_submitd(
            None,
            &["webhook", "list", "--config", config.to_str().unwrap()],
            None,
        );
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("untrusted\t"))
            .unwrap_or_default()
            .to_string();
        if line.contains("failing") {
            assert!(line.contains("backlog=1"), "{line}");
            assert!(line.to_ascii_lowercase().contains("certificate"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "{}", out.stdout);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server whose one `[[webhook]]`, `app` (plus the lines `more`), posts to a receiver on
/// `/hook` (refusing, when given, the events of recipients that contain `refuse`). Fields drop
/// in order: the server before the receiver, the sink and the directory.
struct App {
    server: TestServer,
    receiver: Receiver,
    sink: Sink,
    _dir: tempfile::TempDir,
}

async fn app(more: &str, env: &[(&str, &str)]) -> App {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default()).await;
    let port = free_port();
    let secret = secret_file(dir.path(), "app.secret");
    let extra = format!(
        "[[webhook]]\nname = \"app\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         secret_file = \"{}\"\n{more}",
        secret.display()
    );
    let out = dir.path().join("received.jsonl");
    let receiver = Receiver::start_with(port, &secret, &out, None, env);
    let server = TestServer::start_full("", "", &smarthost(&sink), &extra).await;
    App {
        server,
        receiver,
        sink,
        _dir: dir,
    }
}

/// An event the receiver keeps refusing (500) waits on its own backoff while the events behind
/// it are delivered; it is retried meanwhile and stays on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with the standardwebhooks package (test.sh installs it)"]
async fn a_refused_event_does_not_hold_up_the_others() {
    let app = app(
        &format!(
            "events = [\"delivered\"]\nretry_min = \"200ms\"\nretry_max = \"1s\"\nkeys = [\"{ALICE}\"]\n"
        ),
        &[("RECEIVER_REFUSE", "poison")],
    )
    .await;
    app.server
        .submit(&["poison@example.net"], &message_from(ALICE))
        .await;
    // The poisoned event is at the head of the backlog and has been refused.
    let deadline = Instant::now() + IO_TIMEOUT;
    while app.receiver.refused().is_empty() {
        assert!(Instant::now() < deadline, "{:#?}", app.receiver.requests());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Three more messages: their events arrive although the first one is still refused.
    for n in 1..=3 {
        app.server
            .submit(&[&format!("ok{n}@example.net")], &message_from(ALICE))
            .await;
    }
    let got = app.receiver.wait_ids("/hook", 3).await;
    let mut recipients: Vec<String> = got.iter().map(|r| key_of(r).2).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["ok1@example.net", "ok2@example.net", "ok3@example.net"]
    );
    // Meanwhile the refused one was tried again, and it is the only one waiting.
    let deadline = Instant::now() + IO_TIMEOUT;
    while app.receiver.refused().len() < 2 {
        assert!(Instant::now() < deadline, "{:#?}", app.receiver.requests());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused: BTreeSet<String> = app
        .receiver
        .refused()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let waiting = wait_backlog(&app.server.queue_dir(), "app", 1).await;
    assert_eq!(waiting, refused.into_iter().collect::<Vec<_>>());
}

/// A recipient refused at SMTP RCPT as suppressed is reported: one `message.suppressed` event
/// per refusal, with no message id (there is no message), each under its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with the standardwebhooks package (test.sh installs it)"]
async fn a_suppressed_rcpt_over_smtp_is_reported() {
    let app = app(
        "events = [\"suppressed\"]\nretry_min = \"100ms\"\nretry_max = \"300ms\"\n",
        &[],
    )
    .await;
    let cfg = app.server.dir.path().join("submitd.toml");
    for gone in ["gone@example.net", "left@example.net"] {
        let out = run_submitd(
            None,
            &[
                "--config",
                cfg.to_str().unwrap(),
                "suppression",
                "add",
                ALICE,
                gone,
                "--reason",
                "550 5.1.1 gone",
            ],
            None,
        );
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    // The running server takes the entries up within about a second; then three refusals, two
    // of the same recipient.
    let mut c = login_as(app.server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut refusals = 0;
    while refusals < 3 {
        let rcpt = ["gone", "Gone", "left"][refusals];
        c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
        c.send(format!("RCPT TO:<{rcpt}@example.net>\r\n").as_bytes())
            .await;
        let reply = c.reply().await;
        c.cmd("RSET", "250").await;
        if reply.starts_with("550 5.1.1 Recipient suppressed") {
            refusals += 1;
        } else {
            assert!(reply.starts_with("250"), "{reply}");
            assert!(Instant::now() < deadline, "never refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // One event per recipient: naming it again within the hour makes no new one, so a client
    // repeating RCPT cannot flood the endpoints.
    let got = app.receiver.wait_ids("/hook", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = app.receiver.valid("/hook");
    let later_ids: BTreeSet<String> = later.iter().map(|r| r["id"].to_string()).collect();
    assert_eq!(later_ids.len(), 2, "{later:#?}");
    let ids: BTreeSet<&str> = got.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{got:#?}");
    let rcpts: BTreeSet<&str> = got
        .iter()
        .map(|r| r["event"]["data"]["recipient"].as_str().unwrap())
        .collect();
    assert_eq!(
        rcpts,
        BTreeSet::from(["gone@example.net", "left@example.net"])
    );
    for r in &got {
        let e = &r["event"];
        assert_eq!(e["type"], "message.suppressed", "{e}");
        let data = &e["data"];
        assert_eq!(data["message_id"], "", "{data}");
        assert_eq!(data["reply"], "550 5.1.1 gone", "{data}");
        assert_eq!(data["user"], ALICE, "{data}");
        assert_eq!(data["tenant"], ALICE, "{data}");
    }
    // Nothing was queued, so nothing else was reported.
    assert!(app.sink.received().is_empty());
}

/// A receiver that answers `200` with a body of no stated length on a connection it keeps open
/// (the body never ends): the status counts, the event is not sent again, and the connection
/// is given up instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with the standardwebhooks package (test.sh installs it)"]
async fn an_answer_whose_body_never_ends_still_counts() {
    let app = app(
        &format!(
            "events = [\"delivered\"]\ntimeout = \"3s\"\nretry_min = \"100ms\"\n\
             retry_max = \"300ms\"\nkeys = [\"{ALICE}\"]\n"
        ),
        &[("RECEIVER_UNDELIMITED", "1")],
    )
    .await;
    app.server
        .submit(&["first@example.net"], &message_from(ALICE))
        .await;
    app.receiver.wait_ids("/hook", 1).await;
    app.server
        .submit(&["second@example.net"], &message_from(ALICE))
        .await;
    app.receiver.wait_ids("/hook", 2).await;
    // Past the 3 s timeout and a retry or two: each event arrived once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = app.receiver.valid("/hook");
    assert_eq!(got.len(), 2, "{got:#?}");
    let queue = app.server.queue_dir();
    assert!(backlog(&queue, "app").is_empty());
}
