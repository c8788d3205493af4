//! Fresh-session throughput (a new TLS connection, EHLO, AUTH PLAIN and one 1 KB message per
//! session) against each authentication backend, each started for real on loopback as the
//! tests start it: the users file, Dovecot, OpenLDAP (slapd) and PostgreSQL. Each runs twice:
//! with the credentials cache cold (`cache_ttl = "0s"`: every login asks the backend, apart
//! from concurrent logins with the same credentials, which share one question) and warm (the
//! default `10m`: after the first login the cache answers). Prints one JSON line per run, then
//! a table with each figure as a ratio against the file backend in the same mode.
//!
//! ```sh
//! cargo build --release --bin submitd-bench
//! cargo run --release --example backend_bench -- [MESSAGES] [SESSIONS]
//! ```
//!
//! Defaults: 600 messages, 16 sessions at once. Needs the packages `./test.sh` installs
//! (dovecot-core, slapd, postgresql) and, as root, drops PostgreSQL to `nobody` as the tests do.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::sink::{Sink, SinkOptions};
use common::{ALICE, ALICE_PASSWORD, TestServer, smarthost};

/// One backend set up for a run: the `[auth]` table (without `cache_ttl`) and a login.
struct Setup {
    name: &'static str,
    scheme: &'static str,
    auth: String,
    login: String,
    password: String,
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    msgs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn bench(port: u16, login: &str, password: &str, messages: u64, sessions: u64) -> Figures {
    let bin = std::env::var("BENCH").unwrap_or_else(|_| "target/release/submitd-bench".into());
    let out = Command::new(&bin)
        .args(["--connect", &format!("127.0.0.1:{port}"), "--tls", "implicit"])
        .args(["--user", login, "--password", password, "--from", login])
        .args(["--to", "rcpt@example.net", "--size", "1024", "--per-session", "1"])
        .args(["--sessions", &sessions.to_string(), "--messages", &messages.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --release --bin submitd-bench)"));
    let line = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("submitd-bench printed {line:?} ({e}); stderr: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(json["errors"], 0, "{json}");
    println!("{json}");
    let f = |k: &str| json[k].as_f64().unwrap_or(f64::NAN);
    Figures {
        msgs_per_sec: f("msgs_per_sec"),
        p50_ms: f("p50_ms"),
        p99_ms: f("p99_ms"),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args.next().map_or(600, |a| a.parse().expect("MESSAGES"));
    let sessions: u64 = args.next().map_or(16, |a| a.parse().expect("SESSIONS"));

    let dovecot = common::dovecot::Dovecot::start();
    let slapd = common::slapd::Slapd::start();
    let postgres = common::postgres::Postgres::start();
    let sql_user = "sql@example.test";
    let sql_password = "sql-bench-password";
    let phc = submitd::auth::verify::hash_password(sql_password).unwrap();
    postgres.psql(&format!(
        "CREATE TABLE users (login text NOT NULL, password text); \
         GRANT SELECT ON users TO submitd; \
         INSERT INTO users VALUES ('{sql_user}', '{{ARGON2ID}}{phc}');"
    ));
    let setups = [
        Setup {
            name: "file",
            scheme: "argon2id (m=19456,t=2)",
            auth: "users = \"users.toml\"\n".into(),
            login: ALICE.into(),
            password: ALICE_PASSWORD.into(),
        },
        Setup {
            name: "dovecot",
            scheme: "{ARGON2ID} (doveadm default)",
            auth: format!(
                "backend = \"dovecot\"\n[auth.dovecot]\nsocket = \"{}\"\n",
                dovecot.unix_setting()
            ),
            login: common::dovecot::ARGON_USER.into(),
            password: common::dovecot::ARGON_PASSWORD.into(),
        },
        Setup {
            name: "ldap",
            scheme: "{SSHA} bind, search mode over ldaps",
            auth: format!("backend = \"ldap\"\n{}", slapd.auth_toml()),
            login: common::slapd::ALICE.0.into(),
            password: common::slapd::ALICE.1.into(),
        },
        Setup {
            name: "sql",
            scheme: "argon2id (m=19456,t=2)",
            auth: format!(
                "backend = \"sql\"\n[auth.sql]\nurl = \"{}\"\n\
                 password_query = \"SELECT password FROM users WHERE login = $1\"\n",
                postgres.url()
            ),
            login: sql_user.into(),
            password: sql_password.into(),
        },
    ];
    let sink = Sink::start(SinkOptions::default()).await;
    let mut rows = Vec::new();
    for mode in ["0s", "10m"] {
        for s in &setups {
            // `cache_ttl` first: the backend's own table may follow in `auth`.
            let auth = format!("cache_ttl = \"{mode}\"\n{}", s.auth);
            let server = TestServer::start_auth(&auth, &smarthost(&sink)).await;
            let port = server.submissions.port();
            let (login, password) = (s.login.clone(), s.password.clone());
            let figures = tokio::task::spawn_blocking(move || {
                bench(port, &login, &password, messages, sessions)
            })
            .await
            .unwrap();
            server.stop();
            rows.push((mode, s.name, s.scheme, figures));
        }
    }
    println!("\n| cache | backend | stored hash / method | msg/s | vs file | p50 ms | p99 ms |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for (mode, name, scheme, f) in &rows {
        let base = rows
            .iter()
            .find(|(m, n, ..)| m == mode && *n == "file")
            .map(|r| r.3.msgs_per_sec)
            .unwrap();
        let cache = if *mode == "0s" { "cold" } else { "warm" };
        println!(
            "| {cache} | {name} | {scheme} | {:.0} | {:.2}x | {:.1} | {:.1} |",
            f.msgs_per_sec,
            f.msgs_per_sec / base,
            f.p50_ms,
            f.p99_ms
        );
    }
}
