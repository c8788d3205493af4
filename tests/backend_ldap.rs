//! The ldap backend against a real OpenLDAP (`slapd`, started per test on loopback): first
//! through the library API (`submitd::auth::backend::ldap::Ldap`), then end to end through
//! submitd with `auth.backend = "ldap"`.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::slapd::{self, ALICE, ALICE_ALTERNATES, BOB, CAROL, Slapd};
use common::{IO_TIMEOUT, TestServer, message_from, plain, smarthost};
use submitd::auth::backend::ldap::Ldap;
use submitd::auth::backend::{AuthRequest, BackendError, Mechanism};
use submitd::config::LdapSettings;

const TIMEOUT: Duration = Duration::from_secs(2);

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

fn backend(s: &LdapSettings) -> Ldap {
    Ldap::new(s, TIMEOUT).unwrap()
}

/// The senders of a verified login; panics on anything else.
async fn senders(l: &Ldap, login: &str, password: &str) -> Vec<String> {
    match l.authenticate(&req(login, password)).await {
        Ok(Some(id)) => id.senders,
        other => panic!("{login}: expected verified, got {other:?}"),
    }
}

async fn refused(l: &Ldap, login: &str, password: &str) {
    let got = l.authenticate(&req(login, password)).await;
    assert_eq!(got, Ok(None), "{login:?} should be refused");
}

fn alice_senders() -> Vec<String> {
    let mut v = vec![ALICE.0.to_owned()];
    v.extend(ALICE_ALTERNATES.iter().map(|s| s.to_string()));
    v
}

/// Right, wrong, unknown, empty password, and the injection attempts, on one backend.
async fn the_usual(l: &Ldap) {
    assert_eq!(senders(l, ALICE.0, ALICE.1).await, alice_senders());
    assert_eq!(senders(l, BOB.0, BOB.1).await, vec![BOB.0]);
    assert_eq!(senders(l, CAROL.0, CAROL.1).await, vec![CAROL.0]);
    refused(l, ALICE.0, BOB.1).await;
    refused(l, ALICE.0, "").await;
    refused(l, "nobody@example.test", ALICE.1).await;
    refused(l, "", ALICE.1).await;
    // Filter and DN injection with a real user's password: nobody matches.
    for login in [
        "*)(uid=*",
        "*",
        "*)(mail=*",
        "alice*",
        "alice,ou=people@x",
        "*@example.test",
    ] {
        refused(l, login, ALICE.1).await;
        refused(l, login, BOB.1).await;
    }
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn search_mode_over_ldaps() {
    let s = Slapd::start();
    let l = backend(&s.search_settings());
    let debug = format!("{l:?}");
    assert!(!debug.contains(slapd::SERVICE_PASSWORD), "{debug}");
    l.check().await.unwrap();
    the_usual(&l).await;
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn search_mode_over_starttls_and_anonymous() {
    let s = Slapd::start();
    let settings = LdapSettings {
        url: s.ldap_url(),
        starttls: true,
        bind_dn: None,
        bind_password_file: None,
        filter: "(&(objectClass=inetOrgPerson)(uid={user})(mail={login}))".into(),
        ..s.search_settings()
    };
    let l = backend(&settings);
    l.check().await.unwrap();
    the_usual(&l).await;
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn bind_mode_over_starttls_reads_own_entry() {
    let s = Slapd::start();
    let l = backend(&s.bind_settings());
    l.check().await.unwrap();
    the_usual(&l).await;
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn bind_mode_over_ldaps_with_service_account() {
    let s = Slapd::start();
    let settings = LdapSettings {
        url: s.ldaps_url(),
        starttls: false,
        ..s.search_settings()
    };
    let settings = LdapSettings {
        user_dn: Some(slapd::USER_DN.into()),
        ..settings
    };
    let l = backend(&settings);
    l.check().await.unwrap();
    the_usual(&l).await;
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn an_ambiguous_filter_verifies_nobody() {
    let s = Slapd::start();
    let settings = LdapSettings {
        filter: "(mail=*@{domain})".into(),
        ..s.search_settings()
    };
    let l = backend(&settings);
    refused(&l, ALICE.0, ALICE.1).await;
    refused(&l, BOB.0, BOB.1).await;
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn a_certificate_from_another_ca_is_refused() {
    let s = Slapd::start();
    let other = s.dir.path().join("other-ca.pem");
    std::fs::write(&other, slapd::make_ca_and_server_cert().0).unwrap();
    for settings in [
        LdapSettings {
            ca_file: Some(other.clone()),
            ..s.search_settings()
        },
        LdapSettings {
            ca_file: Some(other.clone()),
            ..s.bind_settings()
        },
        // The system roots alone do not know the test CA either.
        LdapSettings {
            ca_file: None,
            ..s.search_settings()
        },
    ] {
        let l = backend(&settings);
        let err = l.authenticate(&req(ALICE.0, ALICE.1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                BackendError::Unreachable {
                    key: "auth.ldap.ca_file",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(l.check().await.unwrap_err().key(), "auth.ldap.ca_file");
    }
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn check_names_the_key_to_fix() {
    let s = Slapd::start();
    let wrong_pw = s.dir.path().join("wrong.pw");
    std::fs::write(&wrong_pw, "not-the-password\n").unwrap();
    let l = backend(&LdapSettings {
        bind_password_file: Some(wrong_pw),
        ..s.search_settings()
    });
    let err = l.check().await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Refused {
                key: "auth.ldap.bind_dn",
                ..
            }
        ),
        "{err:?}"
    );
    // A refused service bind is an outage for every login, never a wrong password.
    let err = l.authenticate(&req(ALICE.0, ALICE.1)).await.unwrap_err();
    assert_eq!(err.key(), "auth.ldap.bind_dn");

    let l = backend(&LdapSettings {
        base: "ou=nowhere,dc=example,dc=test".into(),
        ..s.search_settings()
    });
    let err = l.check().await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Query {
                key: "auth.ldap.base",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        l.authenticate(&req(ALICE.0, ALICE.1))
            .await
            .unwrap_err()
            .key(),
        "auth.ldap.base"
    );

    // StartTLS against the ldaps port: no LDAP there before TLS.
    let l = backend(&LdapSettings {
        url: format!("ldap://127.0.0.1:{}", s.ldaps_port),
        starttls: true,
        ..s.search_settings()
    });
    assert!(l.check().await.is_err());

    let err = Ldap::new(
        &LdapSettings {
            ca_file: Some(s.dir.path().join("missing.pem")),
            ..s.search_settings()
        },
        TIMEOUT,
    )
    .unwrap_err();
    assert_eq!(err.key(), "auth.ldap.ca_file");
    let err = Ldap::new(
        &LdapSettings {
            bind_password_file: Some(s.dir.path().join("missing.pw")),
            ..s.search_settings()
        },
        TIMEOUT,
    )
    .unwrap_err();
    assert_eq!(err.key(), "auth.ldap.bind_password_file");
    let err = Ldap::new(
        &LdapSettings {
            filter: "(mail={login}".into(),
            ..s.search_settings()
        },
        TIMEOUT,
    )
    .unwrap_err();
    assert_eq!(err.key(), "auth.ldap.filter");
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn stopped_is_an_error_and_restart_recovers() {
    let mut s = Slapd::start();
    for settings in [s.search_settings(), s.bind_settings()] {
        let l = backend(&settings);
        // Fill the pool, so recovery has to notice dead pooled connections.
        assert_eq!(senders(&l, ALICE.0, ALICE.1).await, alice_senders());
        s.stop();
        let err = l.authenticate(&req(ALICE.0, ALICE.1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                BackendError::Unreachable {
                    key: "auth.ldap.url",
                    ..
                }
            ),
            "{err:?}"
        );
        // A wrong password is still an error while the directory is down, not a 535.
        assert!(l.authenticate(&req(ALICE.0, "wrong")).await.is_err());
        assert_eq!(l.check().await.unwrap_err().key(), "auth.ldap.url");
        s.start_again();
        assert_eq!(senders(&l, ALICE.0, ALICE.1).await, alice_senders());
        refused(&l, ALICE.0, "wrong").await;
        l.check().await.unwrap();
    }
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn restart_while_pooled_connections_are_idle() {
    let mut s = Slapd::start();
    let l = backend(&s.search_settings());
    assert_eq!(senders(&l, ALICE.0, ALICE.1).await, alice_senders());
    s.stop();
    s.start_again();
    // The pooled connection died with the old server; the login must not fail for that.
    assert_eq!(senders(&l, ALICE.0, ALICE.1).await, alice_senders());
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn a_frozen_server_times_out_within_the_limit() {
    let s = Slapd::start();
    for settings in [s.search_settings(), s.bind_settings()] {
        let l = Ldap::new(&settings, Duration::from_millis(800)).unwrap();
        assert_eq!(senders(&l, ALICE.0, ALICE.1).await, alice_senders());
        s.pause();
        for _ in 0..2 {
            let start = Instant::now();
            let err = l.authenticate(&req(ALICE.0, ALICE.1)).await.unwrap_err();
            let took = start.elapsed();
            assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
            assert!(took < Duration::from_millis(1500), "took {took:?}");
        }
        let start = Instant::now();
        assert!(matches!(
            l.check().await.unwrap_err(),
            BackendError::Timeout { .. }
        ));
        assert!(start.elapsed() < Duration::from_millis(1500));
        s.resume();
        assert_eq!(senders(&l, ALICE.0, ALICE.1).await, alice_senders());
    }
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn concurrent_logins_share_a_small_pool() {
    let s = Slapd::start();
    let l = std::sync::Arc::new(backend(&LdapSettings {
        pool_size: 2,
        keys_base: None,
        ..s.search_settings()
    }));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let l = l.clone();
        tasks.spawn(async move {
            let (user, pw) = match i % 3 {
                0 => (ALICE.0, ALICE.1),
                1 => (BOB.0, BOB.1),
                _ => (CAROL.0, "wrong"),
            };
            (i, l.authenticate(&req(user, pw)).await)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (i, answer) = r.unwrap();
        let answer = answer.unwrap();
        assert_eq!(answer.is_some(), i % 3 != 2, "{i}: {answer:?}");
    }
}

// ---- End to end, through submitd ----

fn auth_toml(s: &Slapd) -> String {
    format!(
        "backend = \"ldap\"\nbackend_timeout = \"1s\"\ncache_ttl = \"0s\"\n{}",
        s.auth_toml()
    )
}

async fn login(server: &TestServer, user: &str, password: &str, expect: &str) -> common::Client {
    let mut c = server.tls().await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(&format!("AUTH PLAIN {}", plain(user, password)), expect)
        .await;
    c
}

#[tokio::test]
#[ignore = "needs slapd: ./test.sh runs it"]
async fn e2e_logins_senders_outage_and_recovery() {
    let mut s = Slapd::start();
    let relay = "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";
    let server = TestServer::start_auth(&auth_toml(&s), relay).await;

    login(&server, ALICE.0, "wrong", "535").await;
    login(&server, "nobody@example.test", ALICE.1, "535").await;
    login(&server, "*)(uid=*", ALICE.1, "535").await;

    let mut c = login(&server, ALICE.0, ALICE.1, "235").await;
    c.cmd("MAIL FROM:<alias@example.test>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<any@alice.example.test>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd(&format!("MAIL FROM:<{}>", BOB.0), "553").await;
    let mut c = login(&server, BOB.0, BOB.1, "235").await;
    c.cmd("MAIL FROM:<alias@example.test>", "553").await;

    s.stop();
    login(&server, ALICE.0, ALICE.1, "454 4.7.0").await;
    s.start_again();
    login(&server, ALICE.0, ALICE.1, "235").await;

    s.pause();
    let start = Instant::now();
    login(&server, BOB.0, BOB.1, "454 4.7.0").await;
    let took = start.elapsed();
    s.resume();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    login(&server, BOB.0, BOB.1, "235").await;
}

#[tokio::test]
#[ignore = "needs slapd and swaks: ./test.sh runs it"]
async fn e2e_swaks_submits_through_ldap() {
    let s = Slapd::start();
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_auth(&auth_toml(&s), &smarthost(&sink)).await;
    let port = server.submissions.port().to_string();
    let body = message_from("alias@example.test");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &port, "--tls-on-connect"])
            .args([
                "--auth",
                "PLAIN",
                "--auth-user",
                ALICE.0,
                "--auth-password",
                ALICE.1,
            ])
            .args(["--from", "alias@example.test", "--to", "rcpt@example.net"])
            .args(["--data", &body, "--timeout", "15"])
            .output()
            .expect("swaks")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "swaks: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait_for(1, IO_TIMEOUT).await;
    assert_eq!(got[0].from, "alias@example.test");
    assert_eq!(got[0].rcpts, vec!["rcpt@example.net"]);
}
