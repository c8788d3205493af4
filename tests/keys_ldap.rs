//! API keys kept in LDAP (`auth.ldap.keys_base`), against a real OpenLDAP (`slapd`, started
//! per test on loopback with submitd's schema from `contrib/ldap`): the real `submitd key`
//! binary writes the entries, a running server follows them (re-read every 2 s) and accepts
//! the secrets over SMTP AUTH and the HTTP API.

mod common;

use std::time::{Duration, Instant};

use common::keys::{config, create, key_cli, smtp_auth as auth};
use common::run::run_submitd;
use common::slapd::{KEYS_BASE, Slapd};
use common::{ALICE, TestServer};

/// A `key create`, `revoke` or `rotate` reaches the server within this (it re-reads every
/// 2 s; the rest is slack for a loaded machine).
const PICKUP: Duration = Duration::from_secs(10);

fn auth_toml(s: &Slapd, writer: bool) -> String {
    format!(
        "backend = \"ldap\"\nbackend_timeout = \"3s\"\ncache_ttl = \"0s\"\n{}",
        s.keys_auth_toml(writer)
    )
}

const RELAY: &str = "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";

async fn server(s: &Slapd) -> TestServer {
    TestServer::start_auth(&auth_toml(s, true), RELAY).await
}

/// AUTH until the reply starts with `want` (the server has caught up with the directory), at
/// most [`PICKUP`]: the last reply.
async fn auth_until(server: &TestServer, login: &str, secret: &str, want: &str) -> String {
    common::keys::auth_until(server, login, secret, want, PICKUP).await
}

async fn assert_auth(server: &TestServer, login: &str, secret: &str, want: &str) {
    let (_, reply) = auth(server, login, secret).await;
    assert!(reply.starts_with(want), "AUTH {login}: {reply}");
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn a_key_written_to_ldap_logs_in_and_revoking_it_refuses_it() {
    let s = Slapd::start_with_keys();
    let server = server(&s).await;
    let secret = create(&server, "app", &["--sender", ALICE, "--scope", "smtp"]);

    // The entry is in the directory, with the hash and never the secret.
    let ldif = s.ldapsearch(&format!("cn=app,{KEYS_BASE}"), "base");
    assert!(ldif.contains("objectClass: submitdApiKey"), "{ldif}");
    assert!(ldif.contains("submitdKeyHash: hmac-sha256$"), "{ldif}");
    assert!(
        ldif.contains(&format!("submitdKeySender: {ALICE}")),
        "{ldif}"
    );
    assert!(ldif.contains("submitdKeyScope: smtp"), "{ldif}");
    assert!(!ldif.contains(&secret[3..]), "{ldif}");
    assert!(!server.dir.path().join("keys.toml").exists());

    let list = key_cli(&server, &["list"]);
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(list.stdout.starts_with("app\t"), "{list:?}");
    assert!(list.stdout.contains("active"), "{list:?}");

    let reply = auth_until(&server, "app", &secret, "235").await;
    assert!(reply.starts_with("235"), "{reply}\n{}", s.log());
    let (mut c, _) = auth(&server, "app", &secret).await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<bob@example.test>", "553 5.7.1").await;
    assert_auth(&server, "app", "sk_app_wrong", "535 5.7.8").await;

    let out = key_cli(&server, &["revoke", "app"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let reply = auth_until(&server, "app", &secret, "535").await;
    assert!(reply.starts_with("535 5.7.8"), "{reply}");
    assert!(key_cli(&server, &["list"]).stdout.contains("revoked"));
    let ldif = s.ldapsearch(&format!("cn=app,{KEYS_BASE}"), "base");
    assert!(ldif.contains("submitdKeyRevoked: "), "{ldif}");
    // Revoking again changes nothing and is no error; a revoked key is not rotated.
    assert_eq!(key_cli(&server, &["revoke", "app"]).code, Some(0));
    let out = key_cli(&server, &["rotate", "app"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("revoked"), "{out:?}");
    // Unknown names.
    for cmd in ["revoke", "rotate"] {
        let out = key_cli(&server, &[cmd, "nosuch"]);
        assert_ne!(out.code, Some(0), "{out:?}");
        assert!(out.stderr.contains("no such key"), "{out:?}");
    }
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn rotate_keeps_the_old_secret_for_the_grace() {
    let s = Slapd::start_with_keys();
    let server = server(&s).await;
    let old = create(&server, "app", &["--sender", ALICE]);
    let reply = auth_until(&server, "app", &old, "235").await;
    assert!(reply.starts_with("235"), "{reply}");

    let out = key_cli(&server, &["rotate", "app", "--grace", "1h"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let new = out.stdout.trim().to_owned();
    assert!(new.starts_with("sk_app_") && new != old, "{out:?}");
    let reply = auth_until(&server, "app", &new, "235").await;
    assert!(reply.starts_with("235"), "{reply}");
    assert_auth(&server, "app", &old, "235").await;
    let ldif = s.ldapsearch(&format!("cn=app,{KEYS_BASE}"), "base");
    assert!(
        ldif.contains("submitdKeyPreviousHash: hmac-sha256$"),
        "{ldif}"
    );
    assert!(ldif.contains("submitdKeyPreviousUntil: "), "{ldif}");

    // No grace: the old secret stops at once (once the server has re-read).
    let out = key_cli(&server, &["rotate", "app", "--grace", "0s"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let newer = out.stdout.trim().to_owned();
    let reply = auth_until(&server, "app", &newer, "235").await;
    assert!(reply.starts_with("235"), "{reply}");
    assert_auth(&server, "app", &new, "535 5.7.8").await;
    assert_auth(&server, "app", &old, "535 5.7.8").await;
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn a_taken_name_and_a_writer_without_access_are_clear_errors() {
    let s = Slapd::start_with_keys();
    let server = server(&s).await;
    create(&server, "app", &["--sender", ALICE]);
    let out = key_cli(&server, &["create", "app", "--sender", ALICE]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("already exists"), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "no secret for a key not made: {out:?}"
    );

    // Without keys_bind_dn, `submitd key` writes as the service account, which only reads.
    let text = std::fs::read_to_string(config(&server)).unwrap();
    let readonly: String = text
        .lines()
        .filter(|l| !l.starts_with("keys_bind_"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(readonly, text);
    let path = server.dir.path().join("readonly.toml");
    std::fs::write(&path, readonly).unwrap();
    let c = path.to_str().unwrap();
    let out = run_submitd(
        None,
        &["key", "create", "other", "--sender", ALICE, "--config", c],
        None,
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("auth.ldap.keys_bind_dn"), "{out:?}");
    assert!(out.stderr.contains("no write access"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // Reading needs no writer.
    let out = run_submitd(None, &["key", "list", "--config", c], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("app\t"), "{out:?}");
    let ldif = s.ldapsearch(KEYS_BASE, "one");
    assert!(!ldif.contains("cn=other"), "{ldif}");
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn a_bad_entry_is_left_out_and_a_missing_base_holds_no_keys() {
    let s = Slapd::start_with_keys();
    let server = server(&s).await;
    // An entry the schema allows but submitd cannot use (its name is no key name), added by
    // hand beside a good one: left out, the good one still works.
    let bad = format!(
        "dn: cn=bad name,{KEYS_BASE}\nobjectClass: submitdApiKey\ncn: bad name\n\
         submitdKeyHash: hmac-sha256$x$y\nsubmitdKeyCreated: 1\n"
    );
    let ldif_path = s.dir.path().join("bad.ldif");
    std::fs::write(&ldif_path, bad).unwrap();
    let out = std::process::Command::new("ldapadd")
        .env("LDAPTLS_CACERT", &s.ca_file)
        .args(["-x", "-H", &s.ldaps_url(), "-D", common::slapd::WRITER_DN])
        .args(["-w", common::slapd::WRITER_PASSWORD, "-f"])
        .arg(&ldif_path)
        .output()
        .expect("ldapadd (package ldap-utils)");
    assert!(out.status.success(), "ldapadd: {out:?}");
    let secret = create(&server, "good", &["--sender", ALICE]);
    let reply = auth_until(&server, "good", &secret, "235").await;
    assert!(reply.starts_with("235"), "{reply}");
    let list = key_cli(&server, &["list"]);
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(list.stdout.starts_with("good\t"), "{list:?}");
    assert!(!list.stdout.contains("bad"), "{list:?}");

    // A keys_base that does not exist: no keys to list, and create says what is missing.
    let text = std::fs::read_to_string(config(&server)).unwrap();
    let path = server.dir.path().join("nobase.toml");
    std::fs::write(
        &path,
        text.replace(KEYS_BASE, "ou=nokeys,dc=example,dc=test"),
    )
    .unwrap();
    let c = path.to_str().unwrap();
    let out = run_submitd(None, &["key", "list", "--config", c], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.trim().is_empty(), "{out:?}");
    let out = run_submitd(
        None,
        &["key", "create", "x", "--sender", ALICE, "--config", c],
        None,
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("auth.ldap.keys_base"), "{out:?}");
    assert!(out.stderr.contains("does not exist"), "{out:?}");
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn the_server_keeps_its_keys_while_the_directory_is_down() {
    let mut s = Slapd::start_with_keys();
    let server = server(&s).await;
    let secret = create(&server, "app", &["--sender", ALICE]);
    let reply = auth_until(&server, "app", &secret, "235").await;
    assert!(reply.starts_with("235"), "{reply}");
    s.stop();
    // Past a re-read or two: the kept keys still log in.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_auth(&server, "app", &secret, "235").await;
    s.start_again();
    // The reading connection died with the directory; a revoke after the restart arrives.
    let out = key_cli(&server, &["revoke", "app"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let reply = auth_until(&server, "app", &secret, "535").await;
    assert!(reply.starts_with("535 5.7.8"), "{reply}");
}

/// POST /v1/messages with `secret` until the status is `want` (at most [`PICKUP`]): the last
/// status.
async fn post_until(server: &TestServer, secret: &str, want: u16) -> u16 {
    let url = format!("http://{}/v1/messages", server.api.expect("api on"));
    let http = reqwest::Client::builder()
        .timeout(common::IO_TIMEOUT)
        .build()
        .unwrap();
    let body = serde_json::json!({
        "from": ALICE, "to": "carol@example.net", "subject": "hi", "text": "hello\n"
    });
    let deadline = Instant::now() + PICKUP;
    loop {
        let status = http
            .post(&url)
            .bearer_auth(secret)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == want || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn the_http_api_takes_a_key_from_ldap_until_it_is_revoked() {
    let s = Slapd::start_with_keys();
    // `[api]` after the `[auth.ldap]` table the auth lines end with.
    let auth = format!("{}\n[api]\nlisten = \"127.0.0.1:0\"\n", auth_toml(&s, true));
    let server = TestServer::start_auth(&auth, RELAY).await;
    let secret = create(&server, "shop", &["--sender", ALICE, "--scope", "api"]);
    assert_eq!(post_until(&server, &secret, 202).await, 202);
    assert_eq!(key_cli(&server, &["revoke", "shop"]).code, Some(0));
    assert_eq!(post_until(&server, &secret, 401).await, 401);
}

#[test]
fn the_two_schema_files_define_the_same() {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let schema = include_str!("../contrib/ldap/submitd.schema");
    let ldif = include_str!("../contrib/ldap/submitd.ldif");
    // Each definition: the text from "( " to the matching ")", whitespace folded.
    let defs = |text: &str, starts: &[&str]| -> Vec<String> {
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let mut out = Vec::new();
        let mut rest = body.as_str();
        while let Some(i) = starts.iter().filter_map(|s| rest.find(s)).min() {
            let from = i + rest[i..].find('(').unwrap();
            let mut depth = 0;
            let mut end = from;
            for (j, ch) in rest[from..].char_indices() {
                match ch {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = from + j + 1;
                    break;
                }
            }
            out.push(norm(&rest[from..end]));
            rest = &rest[end..];
        }
        out
    };
    let a = defs(schema, &["attributetype", "objectclass"]);
    let b = defs(ldif, &["olcAttributeTypes:", "olcObjectClasses:"]);
    assert_eq!(a.len(), 12, "{a:#?}");
    assert_eq!(a, b);
    assert!(a.iter().all(|d| d.starts_with("( 2.25.")), "{a:#?}");
}
