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
//! cargo run --release --example backend_bench -- [MESSAGES] [SESSIONS] [ROUNDS]
//! ```
//!
//! Defaults: 600 messages, 16 sessions at once, 3 rounds (each configuration once per round;
//! the table shows the median round). One login for all sessions, as an application's
//! connection pool has. Needs the packages `./test.sh` installs
//! (dovecot-core, slapd, postgresql) and, as root, drops PostgreSQL to `nobody` as the tests do.

// The tests' server harnesses (tests/common), without the rest of the tests' helpers; not
// every harness method is used here.
#![allow(dead_code)]
#[path = "../tests/common/dovecot.rs"]
mod dovecot;
#[path = "../tests/common/postgres.rs"]
mod postgres;
#[path = "../tests/common/slapd.rs"]
mod slapd;

#[path = "support/bench.rs"]
mod support;

use tokio_util::sync::CancellationToken;

use support::{FILE_PASSWORD, FILE_USER, Figures, Load, bench, start};

/// One backend set up for a run: the `[auth]` table (without `cache_ttl`) and a login.
struct Setup {
    name: &'static str,
    scheme: &'static str,
    auth: String,
    login: String,
    password: String,
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args.next().map_or(600, |a| a.parse().expect("MESSAGES"));
    let sessions: u64 = args.next().map_or(16, |a| a.parse().expect("SESSIONS"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));

    let dovecot = dovecot::Dovecot::start();
    let slapd = slapd::Slapd::start();
    let postgres = postgres::Postgres::start();
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
            login: FILE_USER.into(),
            password: FILE_PASSWORD.into(),
        },
        Setup {
            name: "dovecot",
            scheme: "{ARGON2ID} (doveadm default)",
            auth: format!(
                "backend = \"dovecot\"\n[auth.dovecot]\nsocket = \"{}\"\n",
                dovecot.unix_setting()
            ),
            login: dovecot::ARGON_USER.into(),
            password: dovecot::ARGON_PASSWORD.into(),
        },
        Setup {
            name: "ldap",
            scheme: "{SSHA} bind, search mode over ldaps",
            auth: format!("backend = \"ldap\"\n{}", slapd.auth_toml()),
            login: slapd::ALICE.0.into(),
            password: slapd::ALICE.1.into(),
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
    // Every configuration once per round, in the same order; the median round is reported.
    let mut runs: Vec<(&str, &str, &str, Vec<Figures>)> = Vec::new();
    for _ in 0..rounds {
        for mode in ["0s", "10m"] {
            for s in &setups {
                // `cache_ttl` first: the backend's own table may follow in `auth`.
                let auth = format!("cache_ttl = \"{mode}\"\n{}", s.auth);
                let dir = tempfile::tempdir().unwrap();
                let stop = CancellationToken::new();
                let port = start(dir.path(), &auth, stop.clone()).await;
                let (login, password) = (s.login.clone(), s.password.clone());
                let figures = tokio::task::spawn_blocking(move || {
                    bench(
                        port,
                        &login,
                        &password,
                        Load {
                            messages,
                            sessions,
                            per_session: 1,
                            size: 1024,
                        },
                    )
                })
                .await
                .unwrap();
                stop.cancel();
                match runs.iter_mut().find(|r| r.0 == mode && r.1 == s.name) {
                    Some(r) => r.3.push(figures),
                    None => runs.push((mode, s.name, s.scheme, vec![figures])),
                }
            }
        }
    }
    let rows: Vec<(&str, &str, &str, Figures)> = runs
        .into_iter()
        .map(|(mode, name, scheme, mut all)| {
            all.sort_by(|a, b| a.msgs_per_sec.total_cmp(&b.msgs_per_sec));
            (mode, name, scheme, all[all.len() / 2])
        })
        .collect();
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
