//! `submitd queue list|show|retry|delete` through the real binary, against a queue filled with
//! `Spool::store_blocking`. Every child process is killed if it runs past a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::run::{DEADLINE, Output, finish, spawn_submitd};

use submitd::queue::spool::FORMAT_VERSION;
use submitd::queue::{Envelope, QueueId, Recipient, RecipientState, Spool};

const MESSAGE: &[u8] =
    b"From: alice@example.test\r\nTo: bob@example.net\r\nSubject: queued\r\n\r\nBody.\r\n";

fn spawn(config: &Path, args: &[&str]) -> Child {
    let mut full: Vec<&str> = args.to_vec();
    let config = config.to_str().unwrap();
    full.extend(["--config", config]);
    spawn_submitd(None, &full, None)
}

/// `queue list --json` output: JSON Lines, one object per line (a line that is not one
/// object fails the test).
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("one JSON value a line");
            assert!(v.is_object(), "{line}");
            v
        })
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rcpt(address: &str, state: RecipientState, next: Option<u64>, reply: Option<&str>) -> Recipient {
    Recipient {
        address: address.into(),
        state,
        attempts: if state == RecipientState::Pending {
            0
        } else {
            2
        },
        next_attempt: next,
        last_reply: reply.map(str::to_string),
        notify: None,
        orcpt: None,
        warned: false,
    }
}

/// A config in a temp dir and a queue in it.
struct Queue {
    dir: tempfile::TempDir,
    config: PathBuf,
    spool: Spool,
}

impl Queue {
    fn new() -> Queue {
        let dir = tempfile::tempdir().unwrap();
        let config = common::write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
        let spool = Spool::open(&dir.path().join("queue")).unwrap();
        Queue { dir, config, spool }
    }

    fn store(&self, sender: &str, age: u64, recipients: Vec<Recipient>) -> QueueId {
        let id = QueueId::generate();
        let envelope = Envelope {
            version: FORMAT_VERSION,
            id: id.to_string(),
            user: "alice@example.test".into(),
            sender: sender.into(),
            recipients,
            received_at: now() - age,
            helo: "client.test".into(),
            smtputf8: false,
            eight_bit: false,
            size: MESSAGE.len() as u64,
            prefix: String::new(),
            content_len: MESSAGE.len() as u64,
            held: false,
            ret: None,
            envid: None,
            requiretls: false,
            tls_optional: false,
            origin: None,
        };
        self.spool.store_blocking(&envelope, MESSAGE).unwrap();
        id
    }

    /// The usual mix: a deferred+pending message, a failed one from the null sender.
    fn mixed(&self) -> (QueueId, QueueId) {
        let a = self.store(
            "alice@example.test",
            180,
            vec![
                rcpt(
                    "bob@example.net",
                    RecipientState::Deferred,
                    Some(now() + 7_200),
                    Some("451 4.7.1 Greylisted, try later"),
                ),
                rcpt("carol@example.org", RecipientState::Pending, None, None),
            ],
        );
        let b = self.store(
            "",
            2 * 86_400,
            vec![rcpt(
                "dave@example.com",
                RecipientState::Failed,
                None,
                Some("550 5.1.1 No such user"),
            )],
        );
        (a, b)
    }

    fn run(&self, args: &[&str]) -> Output {
        finish(spawn(&self.config, args))
    }

    fn env_json(&self, id: &QueueId) -> serde_json::Value {
        serde_json::to_value(self.spool.load_envelope(id).unwrap()).unwrap()
    }
}

#[test]
fn list_prints_one_line_per_message() {
    let q = Queue::new();
    let (a, b) = q.mixed();
    let out = q.run(&["queue", "list"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines[0].starts_with(&format!("{a}  3m  alice@example.test  ")),
        "{out:?}"
    );
    assert!(lines[0].contains("bob@example.net(deferred) carol@example.org(pending)"));
    assert!(lines[0].contains("next=now"), "pending is due now: {out:?}");
    assert!(lines[0].ends_with("last=451 4.7.1 Greylisted, try later"));
    assert!(lines[1].starts_with(&format!("{b}  2d  <>  dave@example.com(failed)  next=-")));
}

#[test]
fn empty_queue_lists_nothing() {
    let q = Queue::new();
    let out = q.run(&["queue", "list"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "");
    let out = q.run(&["queue", "list", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "", "an empty stream, not an empty array");
}

#[test]
fn list_json_round_trips_fields() {
    let q = Queue::new();
    let (a, b) = q.mixed();
    let out = q.run(&[
        "--config",
        q.config.to_str().unwrap(),
        "queue",
        "list",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.ends_with('\n'), "{out:?}");
    let items = json_lines(&out.stdout);
    assert_eq!(items.len(), 2);
    let first = &items[0];
    assert_eq!(first["id"], a.as_str());
    assert_eq!(first["sender"], "alice@example.test");
    assert_eq!(first["user"], "alice@example.test");
    assert_eq!(first["size"], MESSAGE.len());
    let age = first["age_seconds"].as_u64().unwrap();
    assert!((180..200).contains(&age), "{age}");
    let env = q.env_json(&a);
    assert_eq!(first["recipients"], env["recipients"]);
    assert_eq!(first["recipients"][0]["state"], "deferred");
    assert_eq!(first["recipients"][0]["attempts"], 2);
    assert_eq!(
        first["recipients"][0]["last_reply"],
        "451 4.7.1 Greylisted, try later"
    );
    assert_eq!(items[1]["id"], b.as_str());
    assert_eq!(items[1]["sender"], "");
}

#[test]
fn show_prints_envelope_and_headers() {
    let q = Queue::new();
    let (a, _) = q.mixed();
    let out = q.run(&["queue", "show", a.as_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(&format!("id: {a}\n")), "{out:?}");
    assert!(out.stdout.contains("sender: alice@example.test\n"));
    assert!(
        out.stdout
            .contains("recipient: bob@example.net state=deferred attempts=2 next=in ")
    );
    assert!(
        out.stdout
            .ends_with("\nFrom: alice@example.test\nTo: bob@example.net\nSubject: queued\n")
    );
    assert!(!out.stdout.contains("Body."));
}

#[test]
fn retry_one_makes_deferred_due_now() {
    let q = Queue::new();
    let (a, b) = q.mixed();
    let before = now();
    let out = q.run(&["queue", "retry", a.as_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("1 recipient(s) due now"), "{out:?}");
    let env = q.env_json(&a);
    let next = env["recipients"][0]["next_attempt"].as_u64().unwrap();
    assert!(next >= before && next <= now(), "{next}");
    assert_eq!(env["recipients"][0]["state"], "deferred");
    assert_eq!(
        env["recipients"][1]["next_attempt"],
        serde_json::Value::Null
    );
    assert_eq!(env["recipients"][1]["state"], "pending");
    // Nothing deferred in b: left alone, still exit 0.
    let untouched = std::fs::read(q.spool.path(&b)).unwrap();
    let out = q.run(&["queue", "retry", b.as_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(q.spool.path(&b)).unwrap(), untouched);
}

#[test]
fn retry_all_touches_every_deferred() {
    let q = Queue::new();
    let (a, b) = q.mixed();
    let c = q.store(
        "alice@example.test",
        60,
        vec![
            rcpt(
                "e@example.net",
                RecipientState::Deferred,
                Some(now() + 900),
                Some("421 busy"),
            ),
            rcpt(
                "f@example.net",
                RecipientState::Delivered,
                None,
                Some("250 ok"),
            ),
        ],
    );
    let before = now();
    let out = q.run(&["queue", "retry"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("2 recipient(s) of 2 message(s)"),
        "{out:?}"
    );
    for id in [&a, &c] {
        let next = q.env_json(id)["recipients"][0]["next_attempt"]
            .as_u64()
            .unwrap();
        assert!(next >= before && next <= now());
    }
    assert_eq!(
        q.env_json(&b)["recipients"][0]["next_attempt"],
        serde_json::Value::Null
    );
    assert_eq!(q.env_json(&c)["recipients"][1]["state"], "delivered");
}

#[test]
fn delete_removes_the_queue_file() {
    let q = Queue::new();
    let (a, b) = q.mixed();
    let out = q.run(&["queue", "delete", a.as_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!q.spool.path(&a).exists());
    assert!(q.spool.path(&b).exists());
    let out = q.run(&["queue", "list"]);
    assert!(!out.stdout.contains(a.as_str()));
    // Gone now: a second delete is an unknown ID.
    let out = q.run(&["queue", "delete", a.as_str()]);
    assert_eq!(out.code, Some(1), "{out:?}");
}

#[test]
fn unknown_or_malformed_id_exits_1() {
    let q = Queue::new();
    q.mixed();
    let unknown = QueueId::generate();
    for args in [
        vec!["queue", "show", unknown.as_str()],
        vec!["queue", "retry", unknown.as_str()],
        vec!["queue", "delete", unknown.as_str()],
        vec!["queue", "show", "../../etc/passwd"],
        vec!["queue", "delete", "nope"],
    ] {
        let out = q.run(&args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(out.stderr.starts_with("submitd: "), "{out:?}");
    }
}

#[test]
fn config_error_exits_2() {
    let q = Queue::new();
    let bad = q.dir.path().join("bad.toml");
    std::fs::write(&bad, "hostname = \"x.test\"\nbogus = 1\n").unwrap();
    let out = finish(spawn(&bad, &["queue", "list"]));
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn garbage_envelope_does_not_break_list() {
    let q = Queue::new();
    let (a, _) = q.mixed();
    let bad = QueueId::generate();
    std::fs::write(q.spool.path(&bad), b"SUBMITDQ\x00garbage{").unwrap();
    let out = q.run(&["queue", "list"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
    assert!(
        out.stdout.contains(&format!("{bad}  invalid envelope: ")),
        "{out:?}"
    );
    let json = q.run(&["queue", "list", "--json"]);
    assert_eq!(json.code, Some(0), "{json:?}");
    let v = json_lines(&json.stdout);
    assert_eq!(v.len(), 3, "{json:?}");
    assert!(
        v.iter()
            .any(|e| e["id"] == bad.as_str() && e["error"].is_string())
    );
    // retry of all skips it; the garbage can be deleted.
    let out = q.run(&["queue", "retry"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        q.env_json(&a)["recipients"][0]["next_attempt"]
            .as_u64()
            .unwrap()
            <= now()
    );
    let out = q.run(&["queue", "delete", bad.as_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!q.spool.path(&bad).exists());
}

#[test]
fn delete_waits_for_the_message_lock() {
    let q = Queue::new();
    let (a, _) = q.mixed();
    let lock = q.spool.lock(&a).unwrap();
    let child = spawn(&q.config, &["queue", "delete", a.as_str()]);
    std::thread::sleep(Duration::from_millis(300));
    // Still held: the delete must not have happened.
    assert!(q.spool.path(&a).exists(), "delete ignored the lock");
    let released = Instant::now();
    drop(lock);
    let out = finish(child);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(released.elapsed() < DEADLINE);
    assert!(!q.spool.path(&a).exists());
}

/// `submitd ARGS --config CONFIG` off the async runtime.
async fn cli(config: &Path, args: &[&str]) -> Output {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        finish(spawn(&config, &args))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_keeps_a_message_from_a_running_scheduler_until_release() {
    use common::sink::{Sink, SinkOptions};
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\n",
        sink.addr
    );
    // Queued before the server starts (a running server takes new messages only from its
    // sessions): deferred for an hour, the scheduler knows it and leaves it alone until then.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("queue")).unwrap();
    let id = QueueId::generate();
    let envelope = Envelope {
        version: FORMAT_VERSION,
        id: id.to_string(),
        user: "alice@example.test".into(),
        sender: "alice@example.test".into(),
        recipients: vec![rcpt(
            "bob@example.net",
            RecipientState::Deferred,
            Some(now() + 3_600),
            Some("451 4.3.0 try later"),
        )],
        received_at: now() - 60,
        helo: "client.test".into(),
        smtputf8: false,
        eight_bit: false,
        size: MESSAGE.len() as u64,
        prefix: String::new(),
        content_len: MESSAGE.len() as u64,
        held: false,
        ret: None,
        envid: None,
        requiretls: false,
        tls_optional: false,
        origin: None,
    };
    spool.store_blocking(&envelope, MESSAGE).unwrap();
    let server = common::TestServer::start_in_with_io(
        dir,
        "",
        &relay,
        std::sync::Arc::new(submitd::queue::fsio::RealIo),
    )
    .await;
    let config = server.dir.path().join("submitd.toml");

    let out = cli(&config, &["queue", "hold", id.as_str()]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("{id}: on hold\n"));
    let out = cli(&config, &["queue", "hold", id.as_str()]).await;
    assert_eq!(out.stdout, format!("{id}: already on hold\n"), "{out:?}");
    // Due now, but held: retry says so, and the scheduler must not touch it.
    let out = cli(&config, &["queue", "retry", id.as_str()]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("is on hold"), "{out:?}");

    let out = cli(&config, &["queue", "list"]).await;
    assert!(out.stdout.contains("  next=held"), "{out:?}");
    let out = cli(&config, &["queue", "list", "--json"]).await;
    let v = json_lines(&out.stdout);
    assert_eq!(v[0]["status"], "held", "{out:?}");
    assert_eq!(v[0]["held"], true);
    let out = cli(&config, &["queue", "show", id.as_str(), "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["held"], true, "{out:?}");

    // Several scheduler cycles (the scan runs every second).
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(sink.received().is_empty(), "a held message was delivered");
    let env = spool.load_envelope(&id).unwrap();
    assert!(env.held);
    assert_eq!(env.recipients[0].state, RecipientState::Deferred);
    assert_eq!(env.recipients[0].attempts, 2, "no attempt while held");

    let out = cli(&config, &["queue", "release", id.as_str()]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("{id}: released\n"));
    let got = sink.wait_for(1, common::IO_TIMEOUT).await;
    assert_eq!(got.len(), 1, "released message not delivered");
    assert_eq!(got[0].data, MESSAGE);
    assert_eq!(got[0].rcpts, ["bob@example.net"]);
    // Delivered: gone from the queue (bounded wait for the state save).
    let start = Instant::now();
    while spool.path(&id).exists() && start.elapsed() < common::IO_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!spool.path(&id).exists());
    let out = cli(&config, &["queue", "release", id.as_str()]).await;
    assert_eq!(out.code, Some(1), "unknown ID: {out:?}");
}

#[test]
fn show_json_has_the_fields() {
    let q = Queue::new();
    let (a, _) = q.mixed();
    let out = q.run(&["queue", "show", "--json", a.as_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    assert_eq!(v["id"], a.as_str());
    assert_eq!(v["status"], "queued");
    assert_eq!(v["held"], false);
    assert_eq!(v["sender"], "alice@example.test");
    assert_eq!(v["user"], "alice@example.test");
    assert_eq!(v["size"], MESSAGE.len());
    assert_eq!(v["helo"], "client.test");
    assert_eq!(v["smtputf8"], false);
    assert_eq!(v["eight_bit"], false);
    assert_eq!(v["next_due"], 0, "a pending recipient is due now");
    assert!((180..200).contains(&v["age_seconds"].as_u64().unwrap()));
    assert_eq!(v["recipients"], q.env_json(&a)["recipients"]);
    assert_eq!(
        v["headers"],
        "From: alice@example.test\r\nTo: bob@example.net\r\nSubject: queued\r\n"
    );
    // The list object is the same minus the show-only fields.
    let list = json_lines(&q.run(&["queue", "list", "--json"]).stdout);
    let mut shown = v.as_object().unwrap().clone();
    for key in ["helo", "smtputf8", "eight_bit", "headers"] {
        shown.remove(key);
    }
    let mut listed = list[0].as_object().unwrap().clone();
    // Ages are computed per run; compare everything else.
    shown.remove("age_seconds");
    listed.remove("age_seconds");
    assert_eq!(shown, listed);
}

#[test]
fn hold_and_release_unknown_id_exit_1() {
    let q = Queue::new();
    let unknown = QueueId::generate();
    for cmd in ["hold", "release"] {
        let out = q.run(&["queue", cmd, unknown.as_str()]);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("no such message"), "{out:?}");
        let out = q.run(&["queue", cmd, "nope"]);
        assert_eq!(out.code, Some(1), "{out:?}");
    }
}
