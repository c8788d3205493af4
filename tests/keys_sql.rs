//! API keys kept with the sql identity backend (issue 16: "stored ... with the identity backend
//! when one is configured"): the real `submitd key` binary writes a real PostgreSQL's
//! `submitd_keys` table, and a running submitd with `auth.backend = "sql"` follows it: a new
//! key works over SMTP AUTH and the HTTP API, a rotation and a revocation reach it within
//! seconds, the keys it read survive a database outage, and a read-only role reads keys an
//! operator inserted by hand but cannot write any.

mod common;

use std::time::{Duration, Instant};

use common::keys::{post_message, smtp_auth};
use common::postgres::Postgres;
use common::sink::{Sink, SinkOptions};
use common::{IO_TIMEOUT, TestServer};
use serde_json::json;

const PASSWORD_QUERY: &str = "SELECT password FROM users WHERE login = $1";
const SENDERS_QUERY: &str = "SELECT address FROM senders WHERE login = $1";
/// The user keys are made for (its password is never used here).
const OWNER: &str = "shop@example.test";
/// Within the owner's `@shop.example.test`.
const NEWS: &str = "news@shop.example.test";
/// How long a change in the table may take to reach the server (it looks every second).
const PROPAGATION: Duration = Duration::from_secs(10);

/// The users and senders tables, readable by submitd's role; `writer`: the role may also
/// create the keys table (as `submitd key` does on first use).
fn load(pg: &Postgres, writer: bool) {
    pg.psql(&format!(
        "CREATE TABLE users (login text NOT NULL, password text); \
         CREATE TABLE senders (login text NOT NULL, address text); \
         GRANT SELECT ON users, senders TO submitd; \
         INSERT INTO users VALUES ('{OWNER}', '{{PLAIN}}unused'); \
         INSERT INTO senders VALUES ('{OWNER}', '{OWNER}'), ('{OWNER}', '@shop.example.test');"
    ));
    if writer {
        pg.psql("GRANT CREATE ON SCHEMA public TO submitd");
    }
}

async fn database(writer: bool) -> Postgres {
    tokio::task::spawn_blocking(move || {
        let pg = Postgres::start();
        load(&pg, writer);
        pg
    })
    .await
    .unwrap()
}

/// submitd on the sql backend with the HTTP API on, relaying to `sink`.
async fn submitd(pg: &Postgres, sink: &Sink) -> TestServer {
    let auth = format!(
        "backend = \"sql\"\ncache_ttl = \"0s\"\n\n[auth.sql]\nurl = \"{}\"\n\
         password_query = \"{PASSWORD_QUERY}\"\nsenders_query = \"{SENDERS_QUERY}\"\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\n",
        pg.url()
    );
    TestServer::start_auth(&auth, &common::smarthost(sink)).await
}

/// `submitd key ARGS` off the runtime (the CLI talks to PostgreSQL and blocks).
async fn cli(server: &TestServer, args: &[&str]) -> common::run::Output {
    let config = common::keys::config(server);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut full = vec!["key".to_owned()];
        full.extend(args);
        full.extend(["--config".to_owned(), config.display().to_string()]);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        common::run::run_submitd(None, &full, None)
    })
    .await
    .unwrap()
}

/// `key create NAME ARGS`: the secret it printed, off the runtime.
async fn create_key(server: &TestServer, name: &str, args: &[&str]) -> String {
    let out = cli(server, &[&["create", name], args].concat()).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout.trim().to_owned()
}

/// POST /v1/messages from `from` with `secret`: the status code.
async fn post(server: &TestServer, secret: &str, from: &str) -> u16 {
    let body =
        json!({"from": from, "to": "carol@example.net", "subject": "receipt", "text": "thanks\n"});
    post_message(server, secret, &body).await.0
}

/// Wait (bounded by [`PROPAGATION`]) until AUTH as `login` with `secret` starts with `want`.
async fn until_auth(server: &TestServer, login: &str, secret: &str, want: &str) {
    let reply = common::keys::auth_until(server, login, secret, want, PROPAGATION).await;
    assert!(
        reply.starts_with(want),
        "AUTH {login} still {reply} after {PROPAGATION:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn keys_live_in_the_table_and_each_change_reaches_the_server() {
    let pg = database(true).await;
    let sink = Sink::start(SinkOptions::default()).await;
    let server = submitd(&pg, &sink).await;
    let secret = create_key(&server, "shop-app", &["--owner", OWNER, "--sender", NEWS]).await;
    assert!(secret.starts_with("sk_shop-app_"), "{secret}");

    // Stored in the table, as a salted keyed hash; no keys file.
    assert!(!server.dir.path().join("keys.toml").exists());
    let row = pg.psql_out("SELECT name, owner, senders, scopes, hash FROM submitd_keys");
    assert!(
        row.starts_with(&format!(
            "shop-app|{OWNER}|{{{NEWS}}}|{{smtp,api}}|hmac-sha256$"
        )),
        "{row}"
    );
    assert!(!row.contains(&secret[12..]), "{row}");
    let list = cli(&server, &["list"]).await;
    assert!(list.stdout.starts_with("shop-app\t"), "{list:?}");

    // The running server has it within a second or so: SMTP (only its sender) and HTTP.
    until_auth(&server, "shop-app", &secret, "235").await;
    let (mut c, _) = smtp_auth(&server, "shop-app", &secret).await;
    c.cmd(&format!("MAIL FROM:<{OWNER}>"), "553 5.7.1").await;
    c.cmd(&format!("MAIL FROM:<{NEWS}>"), "250").await;
    c.cmd("QUIT", "221").await;
    assert_eq!(post(&server, &secret, NEWS).await, 202);
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got[0].from, NEWS);

    // Rotation: the new secret arrives; the old one works through the grace.
    let out = cli(&server, &["rotate", "shop-app", "--grace", "1h"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let rotated = out.stdout.trim().to_owned();
    until_auth(&server, "shop-app", &rotated, "235").await;
    until_auth(&server, "shop-app", &secret, "235").await;

    // Revocation: refused over both, within seconds.
    let out = cli(&server, &["revoke", "shop-app"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    until_auth(&server, "shop-app", &rotated, "535 5.7.8").await;
    assert_eq!(post(&server, &rotated, NEWS).await, 401);
    let row = pg.psql_out("SELECT revoked IS NOT NULL, previous_hash IS NULL FROM submitd_keys");
    assert_eq!(row.trim(), "t|t");

    // The name stays taken; the owner bounds a key by the directory's senders.
    let again = cli(&server, &["create", "shop-app", "--sender", NEWS]).await;
    assert_eq!(again.code, Some(2), "{again:?}");
    assert!(again.stderr.contains("already exists"), "{again:?}");
    let wide = cli(
        &server,
        &[
            "create",
            "wide",
            "--owner",
            OWNER,
            "--sender",
            "x@example.org",
        ],
    )
    .await;
    assert_eq!(wide.code, Some(2), "{wide:?}");
    assert!(wide.stderr.contains("not within the senders"), "{wide:?}");
    let nobody = cli(
        &server,
        &["create", "stray", "--owner", "nobody@example.test"],
    )
    .await;
    assert_eq!(nobody.code, Some(2), "{nobody:?}");
    assert!(
        nobody.stderr.contains("no such user in the directory"),
        "{nobody:?}"
    );
    // Without --sender: the owner's senders as the directory gives them.
    let all = create_key(&server, "shop-all", &["--owner", OWNER]).await;
    until_auth(&server, "shop-all", &all, "235").await;
    let (mut c, _) = smtp_auth(&server, "shop-all", &all).await;
    c.cmd("MAIL FROM:<orders@shop.example.test>", "250").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn the_server_keeps_the_keys_it_read_while_the_database_is_down() {
    let mut pg = database(true).await;
    let sink = Sink::start(SinkOptions::default()).await;
    let server = submitd(&pg, &sink).await;
    let secret = create_key(&server, "app", &["--sender", NEWS]).await;
    until_auth(&server, "app", &secret, "235").await;
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    // Past a refresh or two that failed: the key still works, and the CLI says why it cannot
    // change anything.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, reply) = smtp_auth(&server, "app", &secret).await;
    assert!(reply.starts_with("235"), "{reply}");
    let out = cli(&server, &["revoke", "app"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("auth.sql.url"), "{out:?}");
    // Nor is a name made that might shadow a user the database cannot be asked about, or a
    // user added that might be shadowed by a key that cannot be read.
    let out = cli(&server, &["create", "late", "--sender", NEWS]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot ask the directory whether \"late\""),
        "{out:?}"
    );
    let config = common::keys::config(&server).display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        common::run::run_submitd(
            None,
            &[
                "user",
                "add",
                "late",
                "--password-stdin",
                "--config",
                &config,
            ],
            Some("a long enough password\n"),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cannot read the API keys"), "{out:?}");
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    let out = cli(&server, &["revoke", "app"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    until_auth(&server, "app", &secret, "535 5.7.8").await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn a_read_only_role_reads_keys_but_cannot_write_them() {
    let pg = database(false).await;
    // The operator makes the table from the README's statement and grants only SELECT.
    let schema = submitd::auth::backend::sql_keys::SCHEMA.replace("{table}", "submitd_keys");
    pg.psql(&format!(
        "{schema}; GRANT SELECT ON submitd_keys TO submitd"
    ));
    let sink = Sink::start(SinkOptions::default()).await;
    let server = submitd(&pg, &sink).await;
    let out = cli(&server, &["create", "app", "--sender", NEWS]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("auth.sql.keys_table") && out.stderr.contains("permission denied"),
        "{out:?}"
    );
    // A key inserted by the operator's own tooling, `updated` set: the server follows.
    let secret = submitd::auth::keys::new_secret("ops");
    let hash = submitd::auth::keys::hash_secret(&secret);
    pg.psql(&format!(
        "INSERT INTO submitd_keys (name, hash, senders, scopes, created, updated) \
         VALUES ('ops', '{hash}', '{{{NEWS}}}', '{{api}}', 1, 1)"
    ));
    let deadline = Instant::now() + PROPAGATION;
    while post(&server, &secret, NEWS).await != 202 {
        assert!(Instant::now() < deadline, "the inserted key never worked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A row the server cannot use is left out, the others stay.
    pg.psql(
        "INSERT INTO submitd_keys (name, hash, scopes, created, updated) \
         VALUES ('bad', 'md5$x', '{api}', 1, 2)",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(post(&server, &secret, NEWS).await, 202);
    // `key list` reads with the same role.
    let list = cli(&server, &["list"]).await;
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(list.stdout.contains("ops\t"), "{list:?}");
    // The row the server left out is not listed as a key, but named on stderr.
    assert!(
        !list.stdout.contains("bad\t") && list.stderr.contains("key \"bad\": hash"),
        "{list:?}"
    );
    // A row that is not even a key (a NULL where a value must be) is named on stderr.
    pg.psql(
        "INSERT INTO submitd_keys (name, hash, created, updated, expires) \
         VALUES ('neg', 'x', 1, 3, -5)",
    );
    let list = cli(&server, &["list"]).await;
    assert!(
        list.stderr.contains("left out")
            && list.stderr.contains("\"neg\"")
            && !list.stdout.contains("neg"),
        "{list:?}"
    );
    assert_eq!(post(&server, &secret, NEWS).await, 202);
    // check-config reads the table too, and counts what it holds.
    let config = common::keys::config(&server);
    let out = tokio::task::spawn_blocking(move || {
        let config = config.display().to_string();
        common::run::run_submitd(None, &["check-config", "--config", &config], None)
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    // The row the server leaves out ('bad') is named, not counted.
    assert!(
        out.stdout
            .contains("API keys: 1 in table submitd_keys at submitd@127.0.0.1:")
            && out.stdout.contains("API key left out")
            && out.stdout.contains("\"bad\""),
        "{out:?}"
    );
}

/// `submitd ARGS...` to the end, off the runtime.
async fn submitd_cli(args: Vec<String>) -> common::run::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run::run_submitd(None, &args, None)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn keys_left_in_the_file_stop_the_start_until_imported() {
    let pg = database(true).await;
    let sink = Sink::start(SinkOptions::default()).await;
    let server = submitd(&pg, &sink).await;
    // Before the table held keys (`keys_table = ""`, as before an upgrade), a key went to the
    // keys file beside the config.
    let config = common::keys::config(&server);
    let old = config.with_file_name("old.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &old,
        text.replace("[auth.sql]\n", "[auth.sql]\nkeys_table = \"\"\n"),
    )
    .unwrap();
    let arg = |p: &std::path::Path| p.display().to_string();
    let out = submitd_cli(
        [
            "key",
            "create",
            "legacy",
            "--sender",
            NEWS,
            "--config",
            &arg(&old),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let secret = out.stdout.trim().to_owned();
    let file = config.with_file_name("keys.toml");
    assert!(file.exists());
    // With the table the default again, neither the server nor check-config goes on as if the
    // key did not exist: both stop, naming the way out.
    for cmd in ["serve", "check-config"] {
        let out = submitd_cli([cmd, "--config", &arg(&config)].map(String::from).to_vec()).await;
        assert_ne!(out.code, Some(0), "{cmd}: {out:?}");
        assert!(
            out.stderr.contains("holds 1 API key(s)")
                && out.stderr.contains("submitd key import")
                && out.stderr.contains("auth.sql.keys_table = \"\""),
            "{cmd}: {out:?}"
        );
    }
    let out = cli(&server, &["import"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("imported 1 key(s)"), "{out:?}");
    assert!(!file.exists());
    assert!(config.with_file_name("keys.toml.imported").exists());
    // The row holds the file's hash: the secret made before works, on the running server.
    until_auth(&server, "legacy", &secret, "235").await;
    let row = pg.psql_out("SELECT name, senders FROM submitd_keys");
    assert!(row.contains("legacy") && row.contains(NEWS), "{row}");
    let out = submitd_cli(
        ["check-config", "--config", &arg(&config)]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    // A second import finds no file.
    let out = cli(&server, &["import"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("imported 0 key(s)"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn a_revoke_below_the_latest_update_still_reaches_the_server() {
    let pg = database(true).await;
    let sink = Sink::start(SinkOptions::default()).await;
    let server = submitd(&pg, &sink).await;
    let secret = create_key(&server, "app", &["--sender", NEWS]).await;
    create_key(&server, "other", &["--sender", NEWS]).await;
    until_auth(&server, "app", &secret, "235").await;
    // A hand edit put another row's `updated` in the future (or a writer's clock ran ahead):
    // the revoke's own `updated` is then below the table's maximum.
    pg.psql("UPDATE submitd_keys SET updated = 9000000000000000000 WHERE name = 'other'");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = cli(&server, &["revoke", "app"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    // Within seconds, not at the full re-read a minute later.
    until_auth(&server, "app", &secret, "535 5.7.8").await;
}
