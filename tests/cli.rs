//! The `submitd` binary end to end: exit codes, messages naming file and key, user management,
//! certificates. Each test works in its own temporary directory; every child process is killed
//! if it runs past a deadline.

mod common;

use std::path::{Path, PathBuf};

use common::run::{Output, run_submitd};

/// Run `submitd args...` in `dir`, feeding `stdin` (then EOF).
fn submitd(dir: &Path, args: &[&str], stdin: &str) -> Output {
    run_submitd(Some(dir), args, Some(stdin))
}

/// A directory with a valid config (`submitd.toml`) whose cert, key and users file do not exist
/// yet: `certs/cert.pem`, `certs/key.pem`, `users.toml`, queue `queue/`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_config("")
    }

    /// The base config plus `extra` appended (a new `[section]` or keys of `[relay]`).
    fn with_config(extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"hostname = "mail.example.test"
[listen]
submission = ["127.0.0.1:0"]
submissions = ["127.0.0.1:0"]
[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
[auth]
users = "users.toml"
[queue]
dir = "queue"
[relay]
mode = "mx"
{extra}
"#
        );
        std::fs::write(dir.path().join("submitd.toml"), text).unwrap();
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> String {
        self.path("submitd.toml").display().to_string()
    }

    fn run(&self, args: &[&str], stdin: &str) -> Output {
        submitd(self.dir.path(), args, stdin)
    }

    fn cert(&self) {
        let out = self.run(
            &[
                "cert",
                "self-signed",
                "--hostname",
                "mail.example.test",
                "--out",
                "certs",
            ],
            "",
        );
        assert_eq!(out.code, Some(0), "{out:?}");
    }

    fn add_user(&self, login: &str, password: &str) -> Output {
        self.run(
            &[
                "user",
                "add",
                login,
                "--password-stdin",
                "--config",
                &self.config(),
            ],
            &format!("{password}\n"),
        )
    }
}

fn assert_config_error(out: &Output, file: &str, key: &str, needle: &str) {
    assert_eq!(out.code, Some(2), "{out:?}");
    let want = format!("{file}: {key}: ");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(&want) && l.contains(needle)),
        "expected a line with {want:?} and {needle:?}\n{out:?}"
    );
}

// --- Config errors: no auth module needed -----------------------------------------------------

#[test]
fn unknown_key_names_file_and_key() {
    let s = Setup::with_config("[limits]\nmax_conections = 10");
    let out = s.run(&["check-config", "--config", &s.config()], "");
    assert_config_error(&out, &s.config(), "limits.max_conections", "unknown key");
}

#[test]
fn bad_duration_names_file_and_key() {
    let s = Setup::with_config("[limits]\ncommand_timeout = \"five minutes\"");
    let out = s.run(&["check-config", "--config", &s.config()], "");
    assert_config_error(
        &out,
        &s.config(),
        "limits.command_timeout",
        "not a duration",
    );
}

#[test]
fn every_config_error_is_reported() {
    let s = Setup::with_config("bogus = 1\n[limits]\nmax_recipients = 0\n[queue2]\nx = 1");
    let out = s.run(&["check-config", "--config", &s.config()], "");
    assert_config_error(&out, &s.config(), "relay.bogus", "unknown key");
    assert_config_error(&out, &s.config(), "limits.max_recipients", "positive");
    assert_config_error(&out, &s.config(), "queue2", "unknown key");
}

#[test]
fn config_is_accepted_before_and_after_the_subcommand() {
    let s = Setup::with_config("[limits]\nmax_conections = 10");
    let cfg = s.config();
    for args in [
        vec!["--config", cfg.as_str(), "check-config"],
        vec!["check-config", "--config", cfg.as_str()],
        vec!["user", "--config", cfg.as_str(), "list"],
        vec!["user", "list", "--config", cfg.as_str()],
        vec![
            "--config",
            cfg.as_str(),
            "user",
            "del",
            "someone@example.test",
        ],
        vec!["serve", "--config", cfg.as_str()],
    ] {
        let out = s.run(&args, "");
        assert_config_error(&out, &cfg, "limits.max_conections", "unknown key");
    }
}

#[test]
fn default_config_path_and_unreadable_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = submitd(dir.path(), &["check-config"], "");
    assert_config_error(&out, "config/submitd.toml", "-", "cannot read");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["frobnicate"][..],
        &["cert", "self-signed"],
        &["user", "add"],
        &["check-config", "--bogus"],
    ] {
        let out = submitd(dir.path(), args, "");
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
    }
    let out = submitd(dir.path(), &["--help"], "");
    assert_eq!(out.code, Some(0), "{out:?}");
    // An empty password is refused before anything is hashed.
    let out = submitd(dir.path(), &["hash-password"], "\r\n");
    assert_eq!(out.code, Some(2), "{out:?}");
    let out = submitd(
        dir.path(),
        &["cert", "self-signed", "--hostname", "not a host"],
        "",
    );
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn cert_self_signed_writes_a_loadable_pkcs8_pair() {
    let s = Setup::new();
    s.cert();
    let cert = s.path("certs/cert.pem");
    let key = s.path("certs/key.pem");
    let key_pem = std::fs::read_to_string(&key).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{key_pem}"
    );
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    assert!(cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    submitd::tls::load_server_config(&cert, &key).unwrap();
    // The hostname is in the SAN (as an IA5String inside the DER).
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    assert!(der.as_ref().windows(17).any(|w| w == b"mail.example.test"));

    // Default --out is ./certs.
    let dir = tempfile::tempdir().unwrap();
    let out = submitd(
        dir.path(),
        &["cert", "self-signed", "--hostname", "localhost"],
        "",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        dir.path().join("certs/cert.pem").is_file() && dir.path().join("certs/key.pem").is_file()
    );
}

// --- These go through the auth module (users file, argon2) ------------------------------------

#[test]
fn check_config_ok() {
    let s = Setup::new();
    s.cert();
    let out = s.add_user("alice@example.test", "correct horse");
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = s.run(&["check-config", "--config", &s.config()], "");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), format!("config OK: {}", s.config()));
}

#[test]
fn missing_cert_file_names_key_and_path() {
    let s = Setup::new();
    s.cert();
    assert_eq!(s.add_user("alice@example.test", "pw").code, Some(0));
    std::fs::remove_file(s.path("certs/cert.pem")).unwrap();
    let out = s.run(&["check-config", "--config", &s.config()], "");
    assert_config_error(&out, &s.config(), "tls.cert", "cert.pem");
}

#[test]
fn garbage_key_file_names_key_and_path() {
    let s = Setup::new();
    s.cert();
    assert_eq!(s.add_user("alice@example.test", "pw").code, Some(0));
    std::fs::write(s.path("certs/key.pem"), "garbage\n").unwrap();
    let out = s.run(&["check-config", "--config", &s.config()], "");
    assert_config_error(&out, &s.config(), "tls.key", "key.pem");
}

#[test]
fn plaintext_password_in_users_file_is_a_config_error() {
    let s = Setup::new();
    s.cert();
    std::fs::write(
        s.path("users.toml"),
        "[[user]]\nlogin = \"alice@example.test\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let out = s.run(&["check-config", "--config", &s.config()], "");
    assert_config_error(&out, &s.config(), "auth.users", "users.toml");
    // And `serve` refuses to start on it.
    let out = s.run(&["serve", "--config", &s.config()], "");
    assert_config_error(&out, &s.config(), "auth.users", "users.toml");
}

#[test]
fn hash_password_prints_only_the_phc_string() {
    let dir = tempfile::tempdir().unwrap();
    let out = submitd(dir.path(), &["hash-password"], "secret\r\n");
    assert_eq!(out.code, Some(0), "{out:?}");
    let phc = out.stdout.strip_suffix('\n').expect("one line");
    assert!(!phc.contains('\n'), "{out:?}");
    assert!(
        phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{out:?}"
    );
}

#[test]
fn user_add_list_del() {
    let s = Setup::new();
    let cfg = s.config();
    let out = s.add_user("alice@example.test", "pw1");
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = s.add_user("alice@example.test", "pw2");
    assert_eq!(out.code, Some(1), "adding an existing login: {out:?}");

    let out = s.run(
        &[
            "user",
            "add",
            "bob@example.test",
            "--sender",
            "@bob.example.test",
            "--sender",
            "bob@example.test",
            "--password-stdin",
            "--config",
            &cfg,
        ],
        "pw\n",
    );
    assert_eq!(out.code, Some(0), "{out:?}");

    let out = s.run(&["user", "list", "--config", &cfg], "");
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("alice@example.test") && l.contains("alice@example.test"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("bob@example.test") && l.contains("@bob.example.test"))
    );

    let out = s.run(
        &[
            "user",
            "passwd",
            "alice@example.test",
            "--password-stdin",
            "--config",
            &cfg,
        ],
        "new\n",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = s.run(
        &[
            "user",
            "passwd",
            "nobody@example.test",
            "--password-stdin",
            "--config",
            &cfg,
        ],
        "new\n",
    );
    assert_eq!(out.code, Some(1), "{out:?}");

    let out = s.run(&["user", "del", "alice@example.test", "--config", &cfg], "");
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = s.run(&["user", "del", "alice@example.test", "--config", &cfg], "");
    assert_eq!(out.code, Some(1), "deleting an unknown login: {out:?}");
    let out = s.run(&["user", "list", "--config", &cfg], "");
    assert!(!out.stdout.contains("alice@"), "{out:?}");
    assert!(out.stdout.contains("bob@example.test"), "{out:?}");
}

#[test]
fn user_add_rejects_bad_sender_and_empty_password() {
    let s = Setup::new();
    let cfg = s.config();
    let out = s.run(
        &[
            "user",
            "add",
            "a@example.test",
            "--sender",
            "not an address",
            "--password-stdin",
            "--config",
            &cfg,
        ],
        "pw\n",
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    let out = s.run(
        &[
            "user",
            "add",
            "a@example.test",
            "--password-stdin",
            "--config",
            &cfg,
        ],
        "\n",
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(!s.path("users.toml").exists());
}

#[test]
fn user_list_json() {
    let s = Setup::new();
    let cfg = s.config();
    assert_eq!(s.add_user("alice@example.test", "pw1").code, Some(0));
    let out = s.run(
        &[
            "user",
            "add",
            "bob@example.test",
            "--sender",
            "@bob.example.test",
            "--password-stdin",
            "--config",
            &cfg,
        ],
        "pw\n",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = s.run(
        &[
            "user",
            "suspend",
            "bob@example.test",
            "--reason",
            "spam run",
            "--config",
            &cfg,
        ],
        "",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = s.run(&["user", "list", "--json", "--config", &cfg], "");
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    let users = v.as_array().unwrap();
    assert_eq!(users.len(), 2, "{out:?}");
    let alice = users
        .iter()
        .find(|u| u["login"] == "alice@example.test")
        .unwrap();
    assert_eq!(alice["senders"], serde_json::json!(["alice@example.test"]));
    assert_eq!(alice["suspended"], serde_json::Value::Null);
    assert_eq!(alice["limits"], serde_json::json!({}));
    let bob = users
        .iter()
        .find(|u| u["login"] == "bob@example.test")
        .unwrap();
    assert_eq!(bob["senders"], serde_json::json!(["@bob.example.test"]));
    assert_eq!(bob["suspended"]["reason"], "spam run");
    assert!(bob["suspended"]["since"].as_u64().unwrap() > 1_600_000_000);
    assert!(!out.stdout.contains("argon2"), "never the hash: {out:?}");
}

// --- submitd health ----------------------------------------------------------------------------

/// A config whose listen addresses are given; cert, key and users need not exist for `health`.
fn health_config(dir: &Path, submission: &str, submissions: &str, extra: &str) -> String {
    let text = format!(
        "hostname = \"mail.example.test\"\n[listen]\nsubmission = [{submission}]\n\
         submissions = [{submissions}]\n{extra}\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
         [auth]\nusers = \"users.toml\"\n[queue]\ndir = \"queue\"\n"
    );
    let path = dir.join("health.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn health(config: String) -> (Output, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        run_submitd(None, &["health", "--config", &config], None)
    })
    .await
    .unwrap();
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ok_on_587_and_465() {
    let server = common::TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Only 587 (the first listen address is the submission one).
    let cfg = health_config(dir.path(), &format!("\"{}\"", server.submission), "", "");
    let (out, _) = health(cfg).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.starts_with(&format!(
            "healthy: {}: 220 mail.example.test",
            server.submission
        )),
        "{out:?}"
    );
    // Only 465: TLS handshake against the self-signed certificate, then the greeting.
    let cfg = health_config(dir.path(), "", &format!("\"{}\"", server.submissions), "");
    let (out, _) = health(cfg).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(": 220 mail.example.test"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_when_nothing_answers() {
    let dir = tempfile::tempdir().unwrap();
    // A port where nothing listens: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = health_config(dir.path(), &format!("\"127.0.0.1:{port}\""), "", "");
    let (out, elapsed) = health(cfg).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.starts_with("submitd: unhealthy: "), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one-line reason: {out:?}");
    assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");

    // A listener that accepts but never greets: the 5 s deadline, not a hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let cfg = health_config(dir.path(), &format!("\"{addr}\""), "", "");
    let (out, elapsed) = health(cfg).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no answer within 5s"), "{out:?}");
    assert!(
        elapsed >= std::time::Duration::from_secs(4)
            && elapsed < std::time::Duration::from_secs(15),
        "{elapsed:?}"
    );
    drop(silent);

    // A wrong greeting (a busy server's 554) is unhealthy too.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut c, _) = busy.accept().unwrap();
        c.write_all(b"554 5.3.2 busy\r\n").unwrap();
    });
    let cfg = health_config(dir.path(), &format!("\"{addr}\""), "", "");
    let (out, _) = health(cfg).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("unexpected greeting \"554 5.3.2 busy\""),
        "{out:?}"
    );
    server.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_sends_proxy_v2_local_first() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A fake server behind a PROXY-speaking balancer: header first, then greeting, then QUIT.
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut header = [0u8; 16];
        c.read_exact(&mut header).unwrap();
        c.write_all(b"220 fake ESMTP\r\n").unwrap();
        let mut quit = [0u8; 6];
        c.read_exact(&mut quit).unwrap();
        c.write_all(b"221 bye\r\n").unwrap();
        (header, quit)
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = health_config(
        dir.path(),
        &format!("\"{addr}\""),
        "",
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
    );
    let (out, _) = health(cfg).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let (header, quit) = server.join().unwrap();
    assert_eq!(
        header, *b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
        "PROXY v2 LOCAL, no addresses"
    );
    assert_eq!(&quit, b"QUIT\r\n");
}

/// `queue.dir` with missing parents (DESIGN.md: "created (mode 0700, missing parents too)"):
/// check-config accepts it, `serve` creates the parents with the default mode, the queue
/// directory itself 0700, and runs.
#[test]
fn queue_dir_with_missing_parents_is_created_and_the_server_starts() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("dir = \"queue\"", "dir = \"a/b/queue\""),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = run_submitd(None, &["check-config", "--config", cfg], None);
    assert_eq!(out.code, Some(0), "{out:?}");

    let mut server = common::run::spawn_submitd(None, &["serve", "--config", cfg], None);
    let queue = dir.path().join("a/b/queue");
    let socket = queue.join("submitd.sock");
    let deadline = Instant::now() + common::IO_TIMEOUT;
    while !socket.exists() {
        if Instant::now() > deadline || server.try_wait().unwrap().is_some() {
            let _ = server.kill();
            panic!("server did not start: {:?}", common::run::finish(server));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&queue), 0o700);
    // The umask the server inherited (read without changing it: tests run in parallel).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
        .unwrap();
    let default = 0o777 & !umask;
    assert_eq!(mode(&dir.path().join("a")), default);
    assert_eq!(mode(&dir.path().join("a/b")), default);

    // A file where a parent should be: a clear config error naming the key.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(dir.path().join("f"), "").unwrap();
    std::fs::write(&config, text.replace("a/b/queue", "f/queue")).unwrap();
    let out = run_submitd(None, &["check-config", "--config", cfg], None);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("queue.dir") && out.stderr.contains("is not a directory"),
        "{out:?}"
    );
}
