//! The verified-credentials cache (`[auth] cache_ttl`) against the real server over SMTP: a
//! repeat login runs no argon2, a password changed with `submitd user passwd` beside the
//! running server takes effect as soon as the users file is re-read (the old one fails on its
//! first try, the cache adds no delay), a wrong password against a cached login is a normal
//! failure, a suspended user is not let through by the cache, and `cache_ttl = "0s"` is off.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const SUSPENDED: &str = "550 5.7.1 Account suspended, contact the administrator";

/// How long the running server may take to see a changed users or suspension file (it looks
/// at most once a second), with a margin.
const RELOAD: Duration = Duration::from_millis(1300);

/// Run the binary with the config in `dir`, `stdin` as standard input; asserts exit 0.
fn submitd(dir: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(args)
        .arg("--config")
        .arg(dir.join("submitd.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "submitd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One connection: AUTH PLAIN expecting `prefix`, then QUIT.
async fn login(addr: std::net::SocketAddr, password: &str, prefix: &str) {
    let mut c = login_as(addr, ALICE, password, prefix).await;
    c.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn a_repeat_login_runs_no_argon2_and_a_new_password_takes_over() {
    let (server, verifier) = start_prepared("", |_| {}).await;
    let dir = server.dir.path();

    login(server.submissions, ALICE_PASSWORD, "235 2.7.0").await;
    assert_eq!(verifier.verifications(), 1);
    // The second login, on a new connection, is answered from the cache; and it can send.
    let mut c = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235 2.7.0").await;
    assert_eq!(
        verifier.verifications(),
        1,
        "no argon2 for the repeat login"
    );
    assert_eq!(verifier.cache_hits(), 1);
    let reply = send_message(&mut c, ALICE, &["rcpt@example.net"]).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    c.cmd("QUIT", "221").await;

    // A wrong password for the cached login: argon2 runs and it is refused as always.
    login(server.submissions, "not-the-password", "535 5.7.8").await;
    assert_eq!(verifier.verifications(), 2);

    submitd(
        dir,
        &["user", "passwd", ALICE, "--password-stdin"],
        "a-brand-new-password\n",
    );
    tokio::time::sleep(RELOAD).await;
    login(server.submissions, ALICE_PASSWORD, "535 5.7.8").await;
    assert_eq!(verifier.cache_hits(), 1, "the old password was not a hit");
    login(server.submissions, "a-brand-new-password", "235 2.7.0").await;
    login(server.submissions, "a-brand-new-password", "235 2.7.0").await;
    assert_eq!(verifier.verifications(), 4);
    assert_eq!(
        verifier.cache_hits(),
        2,
        "the new password is cached in turn"
    );

    // Deleted: refused at once, although the cache held the login.
    submitd(dir, &["user", "del", ALICE], "");
    tokio::time::sleep(RELOAD).await;
    login(server.submissions, "a-brand-new-password", "535 5.7.8").await;
    assert_eq!(verifier.cache_hits(), 2);
}

#[tokio::test]
async fn a_suspended_user_is_not_let_through_by_a_warm_cache() {
    let (server, verifier) = start_prepared("", |_| {}).await;
    login(server.submissions, ALICE_PASSWORD, "235 2.7.0").await;
    login(server.submissions, ALICE_PASSWORD, "235 2.7.0").await;
    assert_eq!(verifier.cache_hits(), 1);

    submitd(server.dir.path(), &["user", "suspend", ALICE], "");
    tokio::time::sleep(RELOAD).await;
    // As without a cache: AUTH is checked by argon2, and the account cannot send.
    let mut c = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235 2.7.0").await;
    c.cmd("MAIL FROM:<alice@example.test>", SUSPENDED).await;
    c.cmd("QUIT", "221").await;
    assert_eq!(verifier.cache_hits(), 1, "no hit while suspended");
    assert_eq!(verifier.verifications(), 2);
}

#[tokio::test]
async fn cache_ttl_zero_turns_the_cache_off() {
    let (server, verifier) = start_prepared("", |dir| {
        let path = dir.join("submitd.toml");
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "[auth]\nusers = \"users.toml\"\n",
            "[auth]\nusers = \"users.toml\"\ncache_ttl = \"0s\"\n",
        );
        assert!(text.contains("cache_ttl"));
        std::fs::write(&path, text).unwrap();
    })
    .await;
    for _ in 0..2 {
        login(server.submissions, ALICE_PASSWORD, "235 2.7.0").await;
    }
    assert_eq!(verifier.verifications(), 2);
    assert_eq!(verifier.cache_hits(), 0);
}
