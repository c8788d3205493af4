//! The sql backend against a real PostgreSQL 15 (tests/common/postgres.rs): first through the
//! backend's own API, then end to end through submitd (AUTH over 465, sender ownership, an
//! outage and a paused server, and swaks delivering into the sink).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use submitd::auth::backend::sql::Sql;
use submitd::auth::backend::{AuthRequest, BackendError, Identity, Mechanism};
use submitd::config::{SqlSettings, SqlUrl};

use common::postgres::{Postgres, ROLE_PASSWORD};

/// Every user's password.
const PW: &str = "Tr0ub4dor&3";
/// Made with `doveadm pw -s <SCHEME> -p 'Tr0ub4dor&3'` (the same vectors as scheme.rs).
const BLF: &str = "{BLF-CRYPT}$2y$05$xkK/Yuqf3zlE3SBtPlrcwu8aMTmTj/RHJaQgjr13Stn0hRDwgwi9C";
const BLF_BARE: &str = "$2y$05$hBkH.RWTAdfN9FYT.UkDQ.u.PYAxFsquC6H/sFzPygjYY5WrTrDwS";
const SHA512: &str = "{SHA512-CRYPT}$6$Mpj6EdgLvrNX/I60$gdw3T7EUIkHtM/.iQ8ZqqiMwQ07MLKHvGoi7m0iVbkf.8zPN7953fcG6wC5FV0xs6nwxeCs/kaeiB0AHsZvkj/";
const SHA512_BARE: &str = "$6$rounds=10000$mtnWuDszrs8v/Fp6$4..s2djinn/P3FCRWluaNuz4huPP0C6tOSYB1aMjUDzAzGMDeUthCf2ap95HFndY1tsxIPEhUy7taKhgTS9Zg.";
const ARGON2ID: &str = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$0KCiwgN/C7qogsW1D5ULIQ$5urBiW7KKWd/wyF7JBD2KpNg2rambpV9PwwLNj7LcZQ";

/// Users whose password verifies, by scheme.
const GOOD: &[&str] = &[
    "bcrypt@example.test",
    "bcrypt-bare@example.test",
    "sha512@example.test",
    "sha512-bare@example.test",
    "argon2@example.test",
    "argon2-bare@example.test",
];

const PASSWORD_QUERY: &str = "SELECT password FROM users WHERE login = $1";
const SENDERS_QUERY: &str = "SELECT address FROM senders WHERE login = $1";

/// The tables (Dovecot-style: login, password with or without `{SCHEME}`) and their rows.
fn load(pg: &Postgres) {
    let argon2_bare = submitd::auth::verify::hash_password(PW).unwrap();
    pg.psql(&format!(
        "CREATE TABLE users (login text NOT NULL, password text); \
         CREATE TABLE senders (login text NOT NULL, address text); \
         CREATE TABLE numbers (login text NOT NULL, n integer); \
         GRANT SELECT ON users, senders, numbers TO submitd; \
         INSERT INTO users VALUES \
           ('bcrypt@example.test', '{BLF}'), ('bcrypt-bare@example.test', '{BLF_BARE}'), \
           ('sha512@example.test', '{SHA512}'), ('sha512-bare@example.test', '{SHA512_BARE}'), \
           ('argon2@example.test', '{ARGON2ID}'), ('argon2-bare@example.test', '{argon2_bare}'), \
           ('plain@example.test', '{{PLAIN}}{PW}'), ('null@example.test', NULL), \
           ('twice@example.test', '{BLF}'), ('twice@example.test', '{BLF}'); \
         INSERT INTO senders VALUES \
           ('bcrypt@example.test', 'bcrypt@example.test'), \
           ('bcrypt@example.test', '@bcrypt.example.test'), \
           ('bcrypt@example.test', NULL); \
         INSERT INTO numbers VALUES ('bcrypt@example.test', 1);"
    ));
}

fn settings(url: SqlUrl) -> SqlSettings {
    SqlSettings {
        url,
        password_query: PASSWORD_QUERY.into(),
        senders_query: Some(SENDERS_QUERY.into()),
        ca_file: None,
        pool_size: 2,
        keys_table: None,
    }
}

fn backend(url: &str, timeout: Duration) -> Sql {
    Sql::new(&settings(SqlUrl::Inline(url.into())), timeout).unwrap()
}

/// A PostgreSQL with the test tables (started off the runtime: it blocks).
async fn server() -> Postgres {
    tokio::task::spawn_blocking(|| {
        let pg = Postgres::start();
        load(&pg);
        pg
    })
    .await
    .unwrap()
}

fn req<'a>(login: &'a str, password: &'a str) -> AuthRequest<'a> {
    AuthRequest {
        login,
        password,
        mechanism: Mechanism::Plain,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        local_port: 465,
        secured: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn every_scheme_right_and_wrong() {
    let pg = server().await;
    let sql = backend(&pg.url(), Duration::from_secs(5));
    sql.check().await.unwrap();
    for login in GOOD {
        let got = sql.authenticate(&req(login, PW)).await;
        assert!(matches!(got, Ok(Some(_))), "{login}: {got:?}");
        let got = sql.authenticate(&req(login, "Tr0ub4dor&4")).await;
        assert_eq!(got, Ok(None), "{login} with a wrong password");
    }
    // The senders rows, NULL skipped; a user with none gets none (default_senders applies).
    let got = sql.authenticate(&req("bcrypt@example.test", PW)).await;
    assert_eq!(
        got,
        Ok(Some(Identity {
            senders: vec!["bcrypt@example.test".into(), "@bcrypt.example.test".into()]
        }))
    );
    let got = sql.authenticate(&req("sha512@example.test", PW)).await;
    assert_eq!(got, Ok(Some(Identity { senders: vec![] })));
    // The URL form of the connection string works the same.
    let sql = backend(&pg.url_form(), Duration::from_secs(5));
    assert!(matches!(
        sql.authenticate(&req("argon2@example.test", PW)).await,
        Ok(Some(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn unknown_null_ambiguous_plaintext_and_injection_are_refused() {
    let pg = server().await;
    let sql = backend(&pg.url(), Duration::from_secs(5));
    for (login, password) in [
        ("nobody@example.test", PW),
        ("null@example.test", PW),
        ("null@example.test", ""),
        ("twice@example.test", PW),
        // The right password of a {PLAIN} row: refused all the same.
        ("plain@example.test", PW),
        ("' OR '1'='1", PW),
        ("' OR '1'='1' --", "' OR '1'='1"),
        ("x'; DROP TABLE users; --", PW),
        ("bcrypt@example.test\0", PW),
    ] {
        let got = sql.authenticate(&req(login, password)).await;
        assert_eq!(got, Ok(None), "{login:?}");
    }
    // The table survived.
    assert!(matches!(
        sql.authenticate(&req("bcrypt@example.test", PW)).await,
        Ok(Some(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn an_unknown_login_costs_about_what_a_wrong_password_costs() {
    let pg = server().await;
    let sql = backend(&pg.url(), Duration::from_secs(5));
    let time = |login: &'static str| {
        let sql = &sql;
        async move {
            let start = Instant::now();
            assert_eq!(sql.authenticate(&req(login, "wrong")).await, Ok(None));
            start.elapsed()
        }
    };
    // Warm the pool first.
    time("nobody@example.test").await;
    let unknown = time("nobody@example.test").await;
    let wrong = time("argon2-bare@example.test").await;
    // Both run one argon2id with submitd's parameters: within a factor of a few, not an
    // order of magnitude apart.
    assert!(
        unknown * 4 > wrong && wrong * 4 > unknown,
        "unknown {unknown:?} vs wrong {wrong:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn an_outage_is_an_error_and_the_pool_recovers() {
    let mut pg = server().await;
    let sql = backend(&pg.url(), Duration::from_secs(5));
    let alice = req("sha512@example.test", PW);
    assert!(matches!(sql.authenticate(&alice).await, Ok(Some(_))));
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let got = sql.authenticate(&alice).await;
    assert!(
        matches!(
            &got,
            Err(BackendError::Unreachable {
                key: "auth.sql.url",
                ..
            })
        ),
        "{got:?}"
    );
    assert!(sql.check().await.is_err());
    let wrong = sql.authenticate(&req("sha512@example.test", "wrong")).await;
    assert!(
        wrong.is_err(),
        "an outage is never a wrong password: {wrong:?}"
    );
    let _pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    assert!(matches!(sql.authenticate(&alice).await, Ok(Some(_))));
    sql.check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn a_restart_between_logins_is_invisible() {
    let mut pg = server().await;
    let sql = backend(&pg.url(), Duration::from_secs(5));
    let alice = req("bcrypt@example.test", PW);
    assert!(matches!(sql.authenticate(&alice).await, Ok(Some(_))));
    // The pooled connection dies with the server; the next login replaces it.
    let _pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg.restart();
        pg
    })
    .await
    .unwrap();
    let got = sql.authenticate(&alice).await;
    assert!(matches!(got, Ok(Some(_))), "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn a_paused_server_times_out_within_the_limit() {
    let pg = server().await;
    let limit = Duration::from_secs(1);
    let warm = backend(&pg.url(), limit);
    let alice = req("sha512@example.test", PW);
    assert!(matches!(warm.authenticate(&alice).await, Ok(Some(_))));
    pg.pause();
    // A pooled connection (the query hangs) and a new one (the login hangs).
    let cold = backend(&pg.url(), limit);
    for sql in [&warm, &cold] {
        let start = Instant::now();
        let got = sql.authenticate(&alice).await;
        let took = start.elapsed();
        assert!(matches!(got, Err(BackendError::Timeout { .. })), "{got:?}");
        assert!(took < limit + Duration::from_millis(500), "took {took:?}");
    }
    let start = Instant::now();
    let got = cold.check().await;
    assert!(matches!(got, Err(BackendError::Timeout { .. })), "{got:?}");
    assert!(start.elapsed() < limit + Duration::from_millis(500));
    pg.resume();
    let got = warm.authenticate(&alice).await;
    assert!(matches!(got, Ok(Some(_))), "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn check_names_the_key_to_fix() {
    let pg = server().await;
    let t = Duration::from_secs(5);
    let with = |password_query: &str, senders_query: Option<&str>| SqlSettings {
        password_query: password_query.into(),
        senders_query: senders_query.map(Into::into),
        ..settings(SqlUrl::Inline(pg.url()))
    };
    let check = |s: SqlSettings| async move { Sql::new(&s, t).unwrap().check().await };

    check(with(PASSWORD_QUERY, None)).await.unwrap();
    let e = check(with("SELECT nosuch FROM users WHERE login = $1", None))
        .await
        .unwrap_err();
    assert_eq!(e.key(), "auth.sql.password_query", "{e}");
    assert!(
        e.to_string().contains("nosuch"),
        "the server's message: {e}"
    );
    let e = check(with(
        PASSWORD_QUERY,
        Some("SELECT address FROM nosuch WHERE login = $1"),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.key(), "auth.sql.senders_query", "{e}");
    assert!(e.to_string().contains("nosuch"), "{e}");
    // Not text: the first column, or the parameter.
    let e = check(with("SELECT n FROM numbers WHERE login = $1", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::Query {
                key: "auth.sql.password_query",
                ..
            }
        ),
        "{e}"
    );
    let e = check(with("SELECT login FROM numbers WHERE n = $1", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::Query {
                key: "auth.sql.password_query",
                ..
            }
        ),
        "{e}"
    );

    // A wrong password in the URL: refused, and the message does not show it.
    let url = pg.url().replace(ROLE_PASSWORD, "not-the-pw-XYZ");
    let e = check(settings(SqlUrl::Inline(url))).await.unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::Refused {
                key: "auth.sql.url",
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.to_string().contains("not-the-pw-XYZ"), "{e}");
    // An unknown database is refused too; nothing listening is unreachable.
    let url = pg.url().replace("dbname=mail", "dbname=nosuch");
    let e = check(settings(SqlUrl::Inline(url))).await.unwrap_err();
    assert!(matches!(e, BackendError::Refused { .. }), "{e}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = pg
        .url()
        .replace(&format!("port={}", pg.port), &format!("port={port}"));
    let e = check(settings(SqlUrl::Inline(url))).await.unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::Unreachable {
                key: "auth.sql.url",
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.to_string().contains(ROLE_PASSWORD), "{e}");

    // url_file: read at new(), trailing newline ignored; errors name url_file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg-url");
    std::fs::write(&file, format!("{}\n", pg.url())).unwrap();
    check(settings(SqlUrl::File(file.clone()))).await.unwrap();
    std::fs::write(
        &file,
        format!("{}\n", pg.url().replace(ROLE_PASSWORD, "nope")),
    )
    .unwrap();
    let e = check(settings(SqlUrl::File(file))).await.unwrap_err();
    assert_eq!(e.key(), "auth.sql.url_file", "{e}");
    let e = Sql::new(&settings(SqlUrl::File(dir.path().join("missing"))), t).unwrap_err();
    assert_eq!(e.key(), "auth.sql.url_file", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn tls_verifies_the_server_certificate() {
    let mut pg = server().await;
    let (pg, cert) = tokio::task::spawn_blocking(move || {
        let cert = pg.enable_tls();
        (pg, cert)
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert).unwrap();
    let t = Duration::from_secs(5);
    let url = format!("{} sslmode=verify-full", pg.url());
    let trusted = SqlSettings {
        ca_file: Some(ca.clone()),
        ..settings(SqlUrl::Inline(url.clone()))
    };
    let sql = Sql::new(&trusted, t).unwrap();
    sql.check().await.unwrap();
    assert!(matches!(
        sql.authenticate(&req("bcrypt@example.test", PW)).await,
        Ok(Some(_))
    ));
    // Without ca_file the self-signed certificate is not trusted.
    let e = Sql::new(&settings(SqlUrl::Inline(url)), t)
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::Unreachable {
                key: "auth.sql.url",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // A name the certificate does not carry.
    let url = pg
        .url()
        .replace("host=127.0.0.1", "host=127.0.0.2 hostaddr=127.0.0.1");
    let wrong_name = SqlSettings {
        ca_file: Some(ca),
        ..settings(SqlUrl::Inline(format!("{url} sslmode=require")))
    };
    let e = Sql::new(&wrong_name, t).unwrap().check().await.unwrap_err();
    assert!(matches!(e, BackendError::Unreachable { .. }), "{e}");
}

// ---- End to end: submitd with auth.backend = "sql" ----

fn auth_toml(pg: &Postgres, timeout: &str) -> String {
    format!(
        "backend = \"sql\"\nbackend_timeout = \"{timeout}\"\ncache_ttl = \"0s\"\n\n[auth.sql]\n\
         url = \"{}\"\npassword_query = \"{PASSWORD_QUERY}\"\nsenders_query = \"{SENDERS_QUERY}\"\n",
        pg.url()
    )
}

const NO_RELAY: &str =
    "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn e2e_auth_and_sender_ownership() {
    let pg = server().await;
    let s = common::TestServer::start_auth(&auth_toml(&pg, "5s"), NO_RELAY).await;
    let mut c = common::login_as(s.submissions, "bcrypt@example.test", PW, "235").await;
    // Owned: the login and the @domain row; foreign: anything else.
    c.cmd("MAIL FROM:<x@bcrypt.example.test>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<someone@example.org>", "553").await;
    c.cmd("MAIL FROM:<bcrypt@example.test>", "250").await;
    common::login_as(s.submissions, "bcrypt@example.test", "wrong", "535").await;
    common::login_as(s.submissions, "nobody@example.test", PW, "535").await;
    common::login_as(s.submissions, "plain@example.test", PW, "535").await;
    // No senders rows: default_senders ({login}) applies.
    let mut c = common::login_as(s.submissions, "sha512@example.test", PW, "235").await;
    c.cmd("MAIL FROM:<sha512@example.test>", "250").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn e2e_outage_is_454_then_recovers() {
    let mut pg = server().await;
    let s = common::TestServer::start_auth(&auth_toml(&pg, "5s"), NO_RELAY).await;
    common::login_as(s.submissions, "argon2@example.test", PW, "235").await;
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    common::login_as(s.submissions, "argon2@example.test", PW, "454 4.7.0").await;
    let _pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    common::login_as(s.submissions, "argon2@example.test", PW, "235").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15: ./test.sh runs it"]
async fn e2e_paused_database_is_454_within_the_timeout() {
    let pg = server().await;
    let s = common::TestServer::start_auth(&auth_toml(&pg, "1s"), NO_RELAY).await;
    pg.pause();
    let start = Instant::now();
    common::login_as(s.submissions, "sha512@example.test", PW, "454 4.7.0").await;
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
    pg.resume();
    common::login_as(s.submissions, "sha512@example.test", PW, "235").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgresql-15 and swaks: ./test.sh runs it"]
async fn e2e_swaks_delivers_through_the_sink() {
    use common::sink::{Sink, SinkOptions};
    let pg = server().await;
    let sink = Sink::start(SinkOptions::default()).await;
    let s = common::TestServer::start_auth(&auth_toml(&pg, "5s"), &common::smarthost(&sink)).await;
    let port = s.submissions.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &port, "--tls-on-connect"])
            .args(["--auth", "PLAIN", "--auth-user", "bcrypt@example.test"])
            .args(["--auth-password", PW])
            .args(["--from", "bcrypt@example.test", "--to", "rcpt@example.net"])
            .args([
                "--header",
                "Subject: sql backend",
                "--body",
                "via the sql backend",
            ])
            .args(["--timeout", "15"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    assert!(transcript.contains("235 "), "{transcript}");
    let got = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].from, "bcrypt@example.test");
    assert_eq!(got[0].rcpts, vec!["rcpt@example.net"]);
    assert!(String::from_utf8_lossy(&got[0].data).contains("via the sql backend"));
}
