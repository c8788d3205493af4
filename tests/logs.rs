//! The server's log, from the real binary: with `[log] format = "json"` every stderr line is a
//! JSON object, and the lines carrying a message's queue ID tell its story (accepted, delivery
//! attempt, removed), as `grep ID` does on the text format.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::*;

/// A `serve` child whose stderr and stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(config: &Path) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_submitd"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Read lines until one satisfies `found` (bounded by [`IO_TIMEOUT`]).
    fn wait_for(&mut self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no log line {what} within {IO_TIMEOUT:?}:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            if found(&line) {
                return line;
            }
        }
    }

    /// SIGTERM, wait for exit 0 (bounded), and return every line it wrote.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + IO_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF; collect what is left.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        assert!(status.success(), "{status:?}:\n{}", self.seen.join("\n"));
        self.seen
    }
}

/// A config in `dir` delivering to `sink`, with `log_format`.
fn config(dir: &Path, sink: &Sink, log_format: &str) -> std::path::PathBuf {
    let path = write_config_full(dir, "", "", &smarthost(sink), "127.0.0.1:0", "127.0.0.1:0");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("\n[log]\nformat = \"{log_format}\"\n"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Submit one message as alice over 465 and return its queue ID.
async fn submit(submissions: SocketAddr) -> String {
    let mut c = login_as(submissions, ALICE, ALICE_PASSWORD, "235").await;
    let reply = send_message(&mut c, ALICE, &["bob@example.net"]).await;
    c.cmd("QUIT", "221").await;
    reply
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("{reply}"))
        .trim_end()
        .to_string()
}

fn json(line: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    assert!(v.is_object(), "{line}");
    v
}

#[tokio::test]
async fn json_log_lines_tell_a_message_story_by_queue_id() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Running::start(&config(dir.path(), &sink, "json"));
    let line = server.wait_for("listening on submissions", |l| {
        l.contains("\"submissions\"") && l.contains("listening")
    });
    let addr: SocketAddr = json(&line)["addr"].as_str().unwrap().parse().unwrap();

    let id = submit(addr).await;
    sink.wait_for(1, IO_TIMEOUT).await;
    server.wait_for("removed", |l| l.contains(&id) && l.contains("\"removed\""));
    let lines = server.stop();

    let events: Vec<serde_json::Value> = lines.iter().map(|l| json(l)).collect();
    for e in &events {
        for key in ["timestamp", "level", "message"] {
            assert!(e.get(key).is_some(), "no {key} in {e}");
        }
    }
    let story: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["queue_id"] == id.as_str())
        .collect();
    let messages: Vec<&str> = story
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["queued", "delivery", "removed"], "{story:#?}");
    let queued = story[0];
    assert_eq!(queued["user"], ALICE);
    assert_eq!(queued["from"], ALICE);
    assert_eq!(queued["rcpts"], 1);
    assert!(queued["size"].as_u64().unwrap() > 0);
    // The session's fields come along under "span".
    assert_eq!(queued["span"]["port"], "submissions");
    let delivery = story[1];
    assert_eq!(delivery["status"], "sent");
    assert_eq!(delivery["to"], "bob@example.net");
    let relay = delivery["relay"].as_str().unwrap();
    assert!(
        relay.ends_with(&format!(":{}", sink.addr.port())),
        "{relay}"
    );
    assert_eq!(delivery["attempts"], 1);
    assert!(delivery["reply"].as_str().unwrap().starts_with("250"));
}

#[tokio::test]
async fn text_log_lines_carry_the_same_queue_id_field() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Running::start(&config(dir.path(), &sink, "text"));
    let line = server.wait_for("listening on submissions", |l| {
        l.contains("kind=\"submissions\"") || l.contains("kind=submissions")
    });
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap();
    let id = submit(addr).await;
    sink.wait_for(1, IO_TIMEOUT).await;
    let field = format!("queue_id={id}");
    server.wait_for("removed", |l| l.contains(&field) && l.contains("removed"));
    let lines = server.stop();
    let story: Vec<&String> = lines.iter().filter(|l| l.contains(&id)).collect();
    assert!(
        story.iter().all(|l| l.contains(&field)),
        "the ID always as queue_id=: {story:#?}"
    );
    let has = |words: &[&str]| story.iter().any(|l| words.iter().all(|w| l.contains(w)));
    assert!(has(&[" queued", "user=alice@example.test"]), "{story:#?}");
    assert!(
        has(&[" delivery", "sent", "to=bob@example.net"]),
        "{story:#?}"
    );
    assert!(has(&[" removed"]), "{story:#?}");
}

/// What a forged line would start with: a timestamp in the formatter's shape, years ahead.
const FORGED: &str = "2030-01-01T00:00:00.000000Z  WARN authentication failed peer=6.6.6.6";

/// Every text log line starts with the timestamp the formatter writes (`2026-05-04T...`): a
/// line that does not, or that is the forged one, was injected.
fn assert_no_injected_line(lines: &[String]) {
    for l in lines {
        assert!(!l.contains('\x1b'), "raw ESC in the log: {l:?}");
        assert!(!l.contains('\r'), "raw CR in the log: {l:?}");
        assert!(!l.starts_with("2030-"), "forged line in the log: {l:?}");
        let b = l.as_bytes();
        let stamped =
            b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T';
        assert!(
            stamped,
            "a log line without the timestamp: {l:?}\n{lines:#?}"
        );
    }
}

fn text_addr(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_login_with_crlf_and_esc_cannot_forge_a_text_log_line() {
    let sink = Sink::start(SinkOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Running::start(&config(dir.path(), &sink, "text"));
    let line = server.wait_for("listening on submissions", |l| {
        l.contains("kind=\"submissions\"") || l.contains("kind=submissions")
    });
    let addr = text_addr(&line);

    let login = format!("mallory\r\n{FORGED}\x1b[2J\u{85}\u{2028}");
    let mut c = Client::implicit_tls(addr).await;
    c.cmd("EHLO x", "250").await;
    c.cmd(&format!("AUTH PLAIN {}", plain(&login, "guess")), "535")
        .await;
    c.cmd("QUIT", "221").await;
    server.wait_for("the failed AUTH", |l| l.contains("authentication failed"));
    let lines = server.stop();
    assert_no_injected_line(&lines);
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("authentication failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(
        failed[0].contains(&format!(
            "login=mallory\\r\\n{FORGED}\\x1b[2J\\u{{85}}\\u{{2028}}"
        )),
        "the login, escaped: {failed:#?}"
    );
}

#[tokio::test]
async fn a_next_hop_reply_with_a_bare_lf_cannot_forge_a_text_log_line() {
    let sink = Sink::start(SinkOptions {
        data_reply: (250, format!("2.0.0 Ok\n{FORGED}\x1b[2J")),
        ..SinkOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Running::start(&config(dir.path(), &sink, "text"));
    let line = server.wait_for("listening on submissions", |l| {
        l.contains("kind=\"submissions\"") || l.contains("kind=submissions")
    });
    let id = submit(text_addr(&line)).await;
    sink.wait_for(1, IO_TIMEOUT).await;
    let field = format!("queue_id={id}");
    server.wait_for("removed", |l| l.contains(&field) && l.contains("removed"));
    let lines = server.stop();
    assert_no_injected_line(&lines);
    let delivery: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&field) && l.contains(" delivery"))
        .collect();
    assert_eq!(delivery.len(), 1, "{lines:#?}");
    assert!(
        delivery[0].contains(&format!("\\n{FORGED}\\x1b[2J")),
        "the reply, escaped: {delivery:#?}"
    );
}

/// The dev bootstrap's one-time password banner follows `log.format`: with JSON logs it is one
/// JSON log line (login, password, where it is saved), and every line on stdout and stderr of
/// a first dev run parses as JSON.
#[test]
fn dev_bootstrap_banner_is_a_json_log_line_with_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dev.toml");
    std::fs::write(
        &config,
        "hostname = \"localhost\"\n\
         [listen]\nsubmission = [\"127.0.0.1:0\"]\nsubmissions = [\"127.0.0.1:0\"]\n\
         [tls]\ncert = \"var/cert.pem\"\nkey = \"var/key.pem\"\n\
         [auth]\nusers = \"var/users.toml\"\n\
         [queue]\ndir = \"var/queue\"\n\
         [relay]\nmode = \"capture\"\ncapture_dir = \"var/outbox\"\n\
         [log]\nformat = \"json\"\n\
         [dev]\nbootstrap = true\n",
    )
    .unwrap();
    let mut server = Running::start(&config);
    server.wait_for("listening on submissions", |l| {
        l.contains("\"submissions\"") && l.contains("listening")
    });
    // Fully started (the control socket comes last) before it is stopped.
    let socket = dir.path().join("var/queue/submitd.sock");
    let deadline = Instant::now() + IO_TIMEOUT;
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = server.stop();
    let events: Vec<serde_json::Value> = lines.iter().map(|l| json(l)).collect();
    let banner = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("dev bootstrap")
        })
        .unwrap_or_else(|| panic!("no dev bootstrap line in {events:#?}"));
    let saved = std::fs::read_to_string(dir.path().join("var/dev-password")).unwrap();
    assert_eq!(banner["password"], saved.trim_end());
    assert_eq!(banner["login"], "dev@localhost");
    assert!(
        banner["submit"].as_str().unwrap().starts_with("curl "),
        "{banner}"
    );
}
