//! Issue 12's shared rules that need no directory server: `auth.default_senders` for
//! users-file entries without `senders`, and the `user` commands beside a directory backend
//! (accounts live in the directory; suspension is submitdʼs own). The backends themselves are
//! tested against real servers in `backend_dovecot.rs`, `backend_ldap.rs` and `backend_sql.rs`.

mod common;

use std::path::Path;

use common::run::run_submitd;
use common::{ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD, TestServer, login_as, send_message};

#[tokio::test]
async fn default_senders_apply_to_entries_without_senders() {
    let relay = "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"";
    let auth = "users = \"users.toml\"\n\
                default_senders = [\"{login}\", \"@{login_domain}\", \"noreply@example.org\"]\n";
    let server = TestServer::start_auth(auth, relay).await;

    // bob's entry names no senders: the defaults, expanded for his login.
    for from in [BOB, "sales@example.test", "noreply@example.org"] {
        let mut c = login_as(server.submissions, BOB, BOB_PASSWORD, "235").await;
        let reply = send_message(&mut c, from, &["rcpt@example.net"]).await;
        assert!(reply.starts_with("250"), "bob as {from}: {reply}");
    }
    let mut c = login_as(server.submissions, BOB, BOB_PASSWORD, "235").await;
    c.cmd("MAIL FROM:<bob@example.org>", "553").await;

    // alice's entry names her senders: the defaults do not widen them.
    let mut c = login_as(server.submissions, ALICE, ALICE_PASSWORD, "235").await;
    c.cmd("MAIL FROM:<sales@example.test>", "553").await;
    c.cmd("MAIL FROM:<noreply@example.org>", "553").await;
    c.cmd("MAIL FROM:<x@alice.example.test>", "250").await;
}

#[tokio::test]
async fn without_default_senders_an_entry_sends_as_its_login_only() {
    let relay = "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"";
    let server = TestServer::start_auth("users = \"users.toml\"\n", relay).await;
    let mut c = login_as(server.submissions, BOB, BOB_PASSWORD, "235").await;
    c.cmd("MAIL FROM:<sales@example.test>", "553").await;
    c.cmd(&format!("MAIL FROM:<{BOB}>"), "250").await;
}

/// A config with a directory backend (nothing needs to listen: these commands never ask it).
fn directory_config(dir: &Path, users: bool) -> String {
    let users_line = if users {
        "users = \"users.toml\"\n"
    } else {
        ""
    };
    let text = format!(
        "hostname = \"mail.example.test\"\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [queue]\ndir = \"queue\"\n[auth]\nbackend = \"dovecot\"\n{users_line}\
         [auth.dovecot]\nsocket = \"/nonexistent/auth-client\"\n"
    );
    std::fs::write(
        dir.join("users.toml"),
        "[[user]]\nlogin = \"carol@example.test\"\nsenders = [\"@carol.example.test\"]\n\
         messages_per_hour = 5\n",
    )
    .unwrap();
    let path = dir.join("submitd.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn user_add_passwd_del_refuse_beside_a_directory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = directory_config(dir.path(), true);
    let before = std::fs::read(dir.path().join("users.toml")).unwrap();
    for args in [
        vec!["user", "add", "dave@example.test", "--password-stdin"],
        vec!["user", "passwd", "carol@example.test", "--password-stdin"],
        vec!["user", "del", "carol@example.test"],
    ] {
        let mut args = args.clone();
        args.extend(["--config", &cfg]);
        let out = run_submitd(Some(dir.path()), &args, Some("pw\n"));
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("auth.backend = \"dovecot\"")
                && out.stderr.contains("live in that directory"),
            "{args:?}: {out:?}"
        );
    }
    assert_eq!(
        std::fs::read(dir.path().join("users.toml")).unwrap(),
        before,
        "the users file is untouched"
    );
}

#[test]
fn user_list_and_suspend_work_beside_a_directory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = directory_config(dir.path(), true);
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", &cfg]);
        run_submitd(Some(dir.path()), &all, None)
    };
    // Any login the directory may know can be suspended, named in the users file or not.
    let out = run(&[
        "user",
        "suspend",
        "erin@example.test",
        "--reason",
        "phished",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = run(&["user", "suspend", "carol@example.test"]);
    assert_eq!(out.code, Some(0), "{out:?}");

    let out = run(&["user", "list"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines[0].starts_with("carol@example.test\t@carol.example.test\t(suspended since"),
        "{out:?}"
    );
    assert!(
        lines[1].starts_with("erin@example.test\t-\t(suspended since")
            && lines[1].ends_with("phished)"),
        "{out:?}"
    );

    let out = run(&["user", "list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json[0]["limits"]["messages_per_hour"], 5, "{json}");
    assert_eq!(json[1]["login"], "erin@example.test", "{json}");

    let out = run(&["user", "unsuspend", "erin@example.test"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = run(&["user", "list"]);
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");

    // Without a users file the list is the suspended logins alone.
    let bare = tempfile::tempdir().unwrap();
    let cfg = directory_config(bare.path(), false);
    let out = run_submitd(Some(bare.path()), &["user", "list", "--config", &cfg], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
}
