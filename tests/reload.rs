//! Live reload: a rotated certificate, new limits and new users reach new connections while
//! open sessions go on; a bad config is refused and the old one kept. In process through
//! `Reloader`, and with the real binary through `submitd reload` (the control socket).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::Binary;
use common::run::{finish, spawn_submitd};
use common::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use submitd::config::Settings;
use submitd::server::{Reloader, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const ROTATED: &str = "rotated.example.test";

struct Running {
    plain: SocketAddr,
    tls: SocketAddr,
    reloader: Reloader,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(config: &Path) -> Running {
    let settings = Settings::load(config).unwrap();
    let server = Server::bind(Arc::new(settings)).await.unwrap();
    let running = Running {
        plain: server.submission_addrs()[0],
        tls: server.submissions_addrs()[0],
        reloader: server.reloader(),
        stop: CancellationToken::new(),
    };
    tokio::spawn(server.run(running.stop.clone()));
    running
}

/// Write a new self-signed certificate for `name` over `cert.pem` / `key.pem`; its DER.
fn rotate_cert(dir: &Path, name: &str) -> Vec<u8> {
    let (cert, key) = submitd::tls::self_signed(name).unwrap();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    CertificateDer::from_pem_slice(cert.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// An implicit-TLS handshake trusting only `cert_der` for `name`; the certificate the server
/// showed, after reading its greeting.
async fn tls_peer_cert(addr: SocketAddr, cert_der: &[u8], name: &str) -> std::io::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert_der.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut tls = tokio::time::timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake timed out")?;
    let mut greeting = [0u8; 64];
    let n = tokio::time::timeout(IO_TIMEOUT, tls.read(&mut greeting))
        .await
        .expect("greeting timed out")?;
    assert!(greeting[..n].starts_with(b"220 "), "{:?}", &greeting[..n]);
    let _ = tls.write_all(b"QUIT\r\n").await;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec())
}

fn original_cert_der() -> Vec<u8> {
    CertificateDer::from_pem_slice(cert_and_key().0.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// An authenticated session on 465, in the middle of a transaction.
async fn open_session(addr: SocketAddr) -> Client {
    let mut c = login_as(addr, ALICE, ALICE_PASSWORD, "235").await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@example.net>", "250").await;
    c
}

/// Finish the transaction `open_session` started.
async fn finish_session(c: &mut Client) {
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    c.expect("250 2.0.0 Ok: queued as").await;
}

#[tokio::test]
async fn rotated_cert_reaches_new_connections_while_an_open_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let s = start(&config).await;
    let mut open = open_session(s.tls).await;

    let rotated = rotate_cert(dir.path(), ROTATED);
    let reloaded = s.reloader.reload().await.unwrap();
    assert!(reloaded.needs_restart.is_empty(), "{reloaded:?}");
    assert_eq!(reloaded.users, 2);

    let seen = tls_peer_cert(s.tls, &rotated, ROTATED).await.unwrap();
    assert_eq!(seen, rotated);
    // STARTTLS on 587 too.
    let mut c = Client::plain(s.plain).await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("STARTTLS", "220").await;
    // The old certificate is gone for new connections.
    assert!(
        tls_peer_cert(s.tls, &original_cert_der(), HOSTNAME)
            .await
            .is_err()
    );
    // The session opened before the reload still submits.
    finish_session(&mut open).await;
}

#[tokio::test]
async fn bad_config_is_refused_and_the_old_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let s = start(&config).await;
    let good_config = std::fs::read_to_string(&config).unwrap();
    let original = original_cert_der();

    // A certificate file that is not PEM.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").unwrap();
    let errs = s.reloader.reload().await.unwrap_err();
    assert_eq!(errs.0[0].key, "tls.cert", "{errs}");
    assert!(errs.to_string().contains("cert.pem"), "{errs}");
    std::fs::write(dir.path().join("cert.pem"), &cert_and_key().0).unwrap();

    // A key that belongs to another certificate.
    let (_, other_key) = submitd::tls::self_signed(ROTATED).unwrap();
    std::fs::write(dir.path().join("key.pem"), other_key).unwrap();
    let errs = s.reloader.reload().await.unwrap_err();
    assert!(errs.to_string().contains("does not match"), "{errs}");
    std::fs::write(dir.path().join("key.pem"), &cert_and_key().1).unwrap();

    // A syntax error, and an unknown key.
    std::fs::write(&config, format!("{good_config}\n[limits\n")).unwrap();
    let errs = s.reloader.reload().await.unwrap_err();
    assert!(errs.to_string().contains("TOML syntax error"), "{errs}");
    std::fs::write(
        &config,
        good_config.replace("[limits]\n", "[limits]\nmax_mesage_size = 5\n"),
    )
    .unwrap();
    let errs = s.reloader.reload().await.unwrap_err();
    assert!(
        errs.to_string()
            .contains("limits.max_mesage_size: unknown key"),
        "{errs}"
    );
    std::fs::write(&config, &good_config).unwrap();

    // A users file that does not parse (with a plaintext password): refused, users kept.
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        "[[user]]\nlogin = \"x@example.test\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let errs = s.reloader.reload().await.unwrap_err();
    assert_eq!(errs.0[0].key, "auth.users", "{errs}");
    assert!(errs.to_string().contains("users.toml"), "{errs}");
    std::fs::write(&users, users_toml()).unwrap();

    // Through all of it the server served with what it had.
    assert_eq!(
        tls_peer_cert(s.tls, &original, HOSTNAME).await.unwrap(),
        original
    );
    let mut c = open_session(s.tls).await;
    finish_session(&mut c).await;
    // And the good config reloads.
    s.reloader.reload().await.unwrap();
}

#[tokio::test]
async fn new_limits_apply_to_new_sessions_and_restart_keys_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let s = start(&config).await;
    let mut before = Client::plain(s.plain).await;
    let ehlo = before.cmd("EHLO client.test", "250").await;
    assert!(ehlo.contains("250-SIZE 26214400\r\n"), "{ehlo}");

    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(
            "[limits]\n",
            "[limits]\nmax_message_size = 1000\nmax_connections_per_ip = 2\n",
        )
        .replace(HOSTNAME, "renamed.example.test")
        .replace("dir = \"queue\"", "dir = \"queue2\"")
        .replace("[auth]\n", "[auth]\nkeys = \"other-keys.toml\"\n");
    let text = format!("{text}\n[api]\nlisten = \"127.0.0.1:0\"\n[suppression]\nttl = \"1d\"\n");
    std::fs::write(&config, text).unwrap();
    let reloaded = s.reloader.reload().await.unwrap();
    assert_eq!(
        reloaded.needs_restart,
        vec!["hostname", "queue", "suppression", "api", "auth.keys"]
    );

    // A new session: the new size (the hostname stays: Client::tls checks the greeting).
    let mut after = Client::implicit_tls(s.tls).await;
    let ehlo = after.cmd("EHLO client.test", "250").await;
    assert!(ehlo.contains("250-SIZE 1000\r\n"), "{ehlo}");
    after
        .cmd(
            &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
            "235",
        )
        .await;
    after.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    after.cmd("RCPT TO:<bob@example.net>", "250").await;
    after.cmd("DATA", "354").await;
    let big = format!(
        "From: {ALICE}\r\nSubject: big\r\n\r\n{}\r\n.\r\n",
        "x".repeat(2000)
    );
    after.send(big.as_bytes()).await;
    after.expect("552 5.3.4").await;
    // The old session keeps its limits.
    let ehlo = before.cmd("EHLO client.test", "250").await;
    assert!(ehlo.contains("250-SIZE 26214400\r\n"), "{ehlo}");
    // Two connections from 127.0.0.1 are open: a third is over the new per-IP limit.
    let mut third = Client::connect_raw(s.plain).await;
    third.expect("421 4.7.0").await;
    // The queue directory did not move.
    assert!(!dir.path().join("queue2").exists());
}

#[tokio::test]
async fn reload_reads_the_users_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let s = start(&config).await;
    // A login right now makes the store look at the file (and not again within a second).
    login_as(s.tls, BOB, BOB_PASSWORD, "235").await;
    let phc = submitd::auth::verify::hash_password("carol-pw").unwrap();
    submitd::auth::users::add_user(
        &dir.path().join("users.toml"),
        "carol@example.test",
        &phc,
        &[],
    )
    .unwrap();
    assert_eq!(s.reloader.reload().await.unwrap().users, 3);
    login_as(s.tls, "carol@example.test", "carol-pw", "235").await;
}

// ---------------------------------------------------------------------------------------------
// The real binary: `submitd reload`, the control socket, the pid file.
// ---------------------------------------------------------------------------------------------

fn reload_cmd(config: &Path) -> common::run::Output {
    let config = config.to_str().unwrap();
    finish(spawn_submitd(None, &["reload", "--config", config], None))
}

#[tokio::test]
async fn submitd_reload_rotates_the_cert_of_a_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let server = Binary::start(&config);
    let mut open = open_session(server.tls).await;

    // A second server on the same queue directory is refused.
    let second = finish(spawn_submitd(
        None,
        &["serve", "--config", config.to_str().unwrap()],
        None,
    ));
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(second.stderr.contains("another submitd"), "{second:?}");

    let rotated = rotate_cert(dir.path(), ROTATED);
    let out = reload_cmd(&config);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("reloaded: users=2"), "{out:?}");
    server.wait_for(|l| l.contains("reloaded: new connections"));
    assert_eq!(
        tls_peer_cert(server.tls, &rotated, ROTATED).await.unwrap(),
        rotated
    );
    finish_session(&mut open).await;

    // A broken key: refused, logged with the file and the reason, the rotated cert stays.
    std::fs::write(dir.path().join("key.pem"), "garbage\n").unwrap();
    let out = reload_cmd(&config);
    // The control socket answers with the outcome: the refusal and its reason, exit 1.
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("reload refused") && out.stderr.contains("tls.key"),
        "{out:?}"
    );
    let line = server.wait_for(|l| l.contains("reload refused"));
    assert!(line.contains("ERROR") && line.contains("key.pem"), "{line}");
    assert!(
        line.contains("submitd.toml") && line.contains("tls.key"),
        "{line}"
    );
    assert_eq!(
        tls_peer_cert(server.tls, &rotated, ROTATED).await.unwrap(),
        rotated
    );
    assert_eq!(server.count(|l| l.contains("reloaded: new connections")), 1);
}

#[tokio::test]
async fn users_added_by_the_cli_log_in_without_restart_and_reload_without_a_server_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let mut server = Binary::start(&config);
    let cfg = config.to_str().unwrap();

    // `user add` while the server runs: seen at the next login (the store checks the file's
    // metadata at most once a second).
    let added = finish(spawn_submitd(
        None,
        &[
            "user",
            "add",
            "carol@example.test",
            "--password-stdin",
            "--config",
            cfg,
        ],
        Some("carol-pw\n"),
    ));
    assert_eq!(added.code, Some(0), "{added:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    login_as(server.tls, "carol@example.test", "carol-pw", "235").await;

    // `user passwd` then `submitd reload`: the reload reads the file at once.
    let changed = finish(spawn_submitd(
        None,
        &[
            "user",
            "passwd",
            "carol@example.test",
            "--password-stdin",
            "--config",
            cfg,
        ],
        Some("carol-new-pw\n"),
    ));
    assert_eq!(changed.code, Some(0), "{changed:?}");
    assert_eq!(reload_cmd(&config).code, Some(0));
    server.wait_for(|l| l.contains("reloaded: new connections") && l.contains("users=3"));
    login_as(server.tls, "carol@example.test", "carol-new-pw", "235").await;

    // SIGTERM: a clean exit removes the pid file; then there is nothing to reload.
    // SAFETY: kill with a child's pid and SIGTERM.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + IO_TIMEOUT;
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!dir.path().join("queue/submitd.pid").exists());
    assert!(!dir.path().join("queue/submitd.sock").exists());
    let out = reload_cmd(&config);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("no submitd server is running"),
        "{out:?}"
    );
}

/// `submitd queue retry` beside a running server flushes it in memory (control socket), like
/// `postqueue -f`: a message deferred for an hour is delivered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_retry_flushes_a_running_server() {
    use common::sink::{Sink, SinkOptions};
    use submitd::queue::{Envelope, QueueId, Recipient, RecipientState, Spool, spool};
    let sink = Sink::start(SinkOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\n",
        sink.addr
    );
    let config = write_config_full(dir.path(), "", "", &relay, "127.0.0.1:0", "127.0.0.1:0");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let message = b"From: alice@example.test\r\nSubject: flush\r\n\r\nbody\r\n";
    let id = QueueId::generate();
    let mut rcpt = Recipient::pending("bob@example.net");
    rcpt.state = RecipientState::Deferred;
    rcpt.attempts = 1;
    rcpt.next_attempt = Some(now + 3_600);
    let envelope = Envelope {
        version: spool::FORMAT_VERSION,
        id: id.to_string(),
        user: "alice@example.test".into(),
        sender: "alice@example.test".into(),
        recipients: vec![rcpt],
        received_at: now - 60,
        helo: "client.test".into(),
        smtputf8: false,
        eight_bit: false,
        size: message.len() as u64,
        prefix: String::new(),
        content_len: message.len() as u64,
        held: false,
        ret: None,
        envid: None,
        requiretls: false,
        tls_optional: false,
        origin: None,
    };
    let queue_dir = dir.path().join("queue");
    std::fs::create_dir_all(&queue_dir).unwrap();
    Spool::open(&queue_dir)
        .unwrap()
        .store_blocking(&envelope, message)
        .unwrap();

    let server = Binary::start(&config);
    // Several scans: deferred for an hour, so nothing goes out by itself.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(sink.received().is_empty(), "delivered before its time");

    let cfg = config.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        finish(spawn_submitd(
            None,
            &["queue", "retry", "--config", &cfg],
            None,
        ))
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("asked the running server"), "{out:?}");
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got.len(), 1, "not flushed; log:\n{}", server.log());
    assert_eq!(got[0].data, message);
    server.wait_for(|l| l.contains("queue flush requested"));

    // `queue hold` (and release, retry ID, delete) asks the running server to scan the queue
    // at once, rather than at its next periodic scan (rare on a big queue).
    let id = QueueId::generate();
    let mut envelope = envelope.clone();
    envelope.id = id.to_string();
    Spool::open(&queue_dir)
        .unwrap()
        .store_blocking(&envelope, message)
        .unwrap();
    let cfg = config.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        finish(spawn_submitd(
            None,
            &["queue", "hold", id.as_str(), "--config", &cfg],
            None,
        ))
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stderr, "", "the server took the request");
    server.wait_for(|l| l.contains("queue rescan requested"));
}

/// The pid file is written by the service account: `submitd reload` and `queue retry` (run as
/// root) must never signal the pid it names. An unrelated process's pid in a locked-looking
/// place, no server running: the process lives on and both commands say no server runs.
#[test]
fn reload_and_retry_never_signal_the_pid_in_the_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let queue = dir.path().join("queue");
    std::fs::create_dir_all(&queue).unwrap();
    let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(queue.join("submitd.pid"), format!("{}\n", victim.id())).unwrap();
    // Even while something holds the pid file's lock (as a live server would).
    let held = std::fs::File::open(queue.join("submitd.pid")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let cfg = config.to_str().unwrap();

    let out = reload_cmd(&config);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("no submitd server is running"),
        "{out:?}"
    );
    let out = finish(spawn_submitd(
        None,
        &["queue", "retry", "--config", cfg],
        None,
    ));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("no submitd server is running"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("0 recipient(s) of 0 message(s)"),
        "{out:?}"
    );

    // Signals are delivered before kill() returns; a short pause covers the scheduler anyway.
    std::thread::sleep(Duration::from_millis(200));
    let alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(alive, "the process named in submitd.pid was signalled");
}

/// The control socket serves only root and the server's own user (SO_PEERCRED), even when the
/// file permissions would let someone else connect. Needs root (to run a client as nobody).
#[test]
fn control_socket_refuses_a_client_that_is_neither_root_nor_the_server_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client as another user (euid is not 0)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let server = Binary::start(&config);
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Open everything up: only the peer check stands between nobody and the server.
    chmod(dir.path(), 0o755);
    chmod(&config, 0o644);
    chmod(&dir.path().join("queue"), 0o755);
    chmod(&dir.path().join("queue/submitd.sock"), 0o666);
    let out = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["reload", "--config"])
        .arg(&config)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: cannot run the binary as nobody: {e}");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    server.wait_for(|l| l.contains("refused a client") && l.contains("uid=65534"));
    assert_eq!(server.count(|l| l.contains("reloaded: new connections")), 0);
    // Root still gets through.
    let out = reload_cmd(&config);
    assert_eq!(out.code, Some(0), "{out:?}");
}
