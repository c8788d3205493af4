//! What the benchmark examples share: a submitd in-process on loopback with one users-file
//! user, and one run of `submitd-bench` against it.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub const FILE_USER: &str = "file@example.test";
pub const FILE_PASSWORD: &str = "file-bench-password";

/// A submitd on 127.0.0.1:0 in `dir` with `auth` as its `[auth]` table, delivering into
/// `dir/outbox` (capture mode: the same small cost for every backend); its 465 port.
pub async fn start(dir: &Path, auth: &str, stop: CancellationToken) -> u16 {
    let (cert, key) = submitd::tls::self_signed("mail.example.test").unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let phc = submitd::auth::verify::hash_password(FILE_PASSWORD).unwrap();
    std::fs::write(
        dir.join("users.toml"),
        format!("[[user]]\nlogin = \"{FILE_USER}\"\npassword = \"{phc}\"\n"),
    )
    .unwrap();
    let text = format!(
        "hostname = \"mail.example.test\"\n[listen]\nsubmission = [\"127.0.0.1:0\"]\n\
         submissions = [\"127.0.0.1:0\"]\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [queue]\ndir = \"queue\"\n[relay]\nmode = \"capture\"\ncapture_dir = \"outbox\"\n\
         [limits]\nuser_messages_per_hour = 0\nuser_messages_per_day = 0\n\
         user_recipients_per_hour = 0\nuser_recipients_per_day = 0\n[auth]\n{auth}\n"
    );
    let path = dir.join("submitd.toml");
    std::fs::write(&path, &text).unwrap();
    let settings = submitd::config::Settings::from_toml(&text, &path).unwrap();
    let server = submitd::server::Server::bind(Arc::new(settings))
        .await
        .unwrap();
    let port = server.submissions_addrs()[0].port();
    tokio::spawn(server.run(stop));
    port
}

/// One run's load: `messages` in all, `sessions` at once, `per_session` on each connection,
/// `size` bytes each.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub messages: u64,
    pub sessions: u64,
    pub per_session: u64,
    pub size: u64,
}

/// What `submitd-bench` measured.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub msgs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub fn bench(port: u16, login: &str, password: &str, load: Load) -> Figures {
    let bin = std::env::var("BENCH").unwrap_or_else(|_| "target/release/submitd-bench".into());
    let out = Command::new(&bin)
        .args([
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--tls",
            "implicit",
        ])
        .args(["--user", login, "--password", password, "--from", login])
        .args(["--to", "rcpt@example.net", "--size", &load.size.to_string()])
        .args(["--per-session", &load.per_session.to_string()])
        .args(["--sessions", &load.sessions.to_string()])
        .args(["--messages", &load.messages.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --release --bin submitd-bench)"));
    let line = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
        panic!(
            "submitd-bench printed {line:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        json["errors"],
        0,
        "{json}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{json}");
    let f = |k: &str| json[k].as_f64().unwrap_or(f64::NAN);
    Figures {
        msgs_per_sec: f("msgs_per_sec"),
        p50_ms: f("p50_ms"),
        p99_ms: f("p99_ms"),
    }
}
