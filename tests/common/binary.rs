//! `submitd serve` as a child process on ephemeral ports, its stderr lines collected.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;

/// The real binary, running until killed (at the latest when dropped).
pub struct Binary {
    pub child: Child,
    /// The first submission (587, STARTTLS) address it listens on.
    pub plain: SocketAddr,
    /// The first submissions (465, implicit TLS) address it listens on.
    pub tls: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    /// Start `serve --config CONFIG` and wait until both listeners and the control socket are up.
    pub fn start(config: &Path) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_submitd"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut b = Binary {
            child,
            plain: "0.0.0.0:0".parse().unwrap(),
            tls: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let plain = b.wait_for(|l| l.contains("listening") && l.contains("kind=\"submission\""));
        let tls = b.wait_for(|l| l.contains("listening") && l.contains("kind=\"submissions\""));
        b.plain = log_addr(&plain).unwrap();
        b.tls = log_addr(&tls).unwrap();
        // The control socket is created after the listeners and the pid file.
        let socket = config.parent().unwrap().join("queue/submitd.sock");
        let deadline = Instant::now() + IO_TIMEOUT;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "no control socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    /// The first log line (from the start) that matches, waiting for it.
    pub fn wait_for(&self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| matches(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "log line not seen; log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many log lines so far match.
    pub fn count(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| matches(l))
            .count()
    }

    /// Every log line so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr=` field of a text log line.
pub fn log_addr(line: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .map(|a| a.trim_matches('"').parse::<SocketAddr>().unwrap())
}
