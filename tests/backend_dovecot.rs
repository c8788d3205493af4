//! The dovecot backend against a real Dovecot auth service (tests/common/dovecot.rs), over
//! its unix socket and over TCP: first through the library (`Directory`), then end to end
//! through submitd (AUTH on 465, senders, outage and slowness as 454, swaks delivering).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::dovecot::{
    ARGON_PASSWORD, ARGON_USER, Dovecot, Options, SHA_PASSWORD, SHA_USER, TEMP_USER,
};
use common::sink::{Sink, SinkOptions};
use common::*;
use submitd::auth::backend::{AuthRequest, BackendError, Directory, Identity, Mechanism};
use submitd::config::{AuthBackend, DovecotSettings, DovecotSocket};

fn directory(socket: DovecotSocket, timeout: Duration) -> Directory {
    let settings = DovecotSettings {
        socket,
        service: "smtp".into(),
    };
    Directory::from_settings(&AuthBackend::Dovecot(settings), timeout)
        .unwrap()
        .unwrap()
}

fn unix(d: &Dovecot) -> DovecotSocket {
    DovecotSocket::Unix(d.socket.clone())
}

fn tcp(d: &Dovecot) -> DovecotSocket {
    DovecotSocket::Tcp {
        host: "127.0.0.1".into(),
        port: d.port,
    }
}

fn req<'a>(login: &'a str, password: &'a str) -> AuthRequest<'a> {
    AuthRequest {
        login,
        password,
        mechanism: Mechanism::Plain,
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        local_port: 465,
        secured: true,
    }
}

fn verified() -> Option<Identity> {
    Some(Identity { senders: vec![] })
}

#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn right_wrong_and_unknown_over_unix_socket_and_tcp() {
    let d = Dovecot::start();
    for socket in [unix(&d), tcp(&d)] {
        let dir = directory(socket.clone(), Duration::from_secs(5));
        dir.check().await.unwrap();
        let sha = dir.authenticate(&req(SHA_USER, SHA_PASSWORD)).await;
        assert_eq!(sha, Ok(verified()), "{socket:?}\n{}", d.log());
        let mut login = req(ARGON_USER, ARGON_PASSWORD);
        login.mechanism = Mechanism::Login;
        assert_eq!(dir.authenticate(&login).await, Ok(verified()), "{socket:?}");
        assert_eq!(
            dir.authenticate(&req(SHA_USER, ARGON_PASSWORD)).await,
            Ok(None)
        );
        assert_eq!(dir.authenticate(&req(ARGON_USER, "")).await, Ok(None));
        let unknown = dir
            .authenticate(&req("nobody@example.test", SHA_PASSWORD))
            .await;
        assert_eq!(unknown, Ok(None));
    }
}

/// A login whose bytes look like protocol (tab, newline, a second AUTH) is only a wrong
/// login, and the connection it went over still serves the next one.
#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn protocol_characters_in_a_login_are_just_a_wrong_login() {
    let d = Dovecot::start();
    let dir = directory(unix(&d), Duration::from_secs(5));
    let hostile = format!("{SHA_USER}\tresp=AGRhbmEAeA==\nAUTH\t1\tPLAIN\tservice=smtp");
    assert_eq!(
        dir.authenticate(&req(&hostile, SHA_PASSWORD)).await,
        Ok(None)
    );
    let nul = format!("x\0{SHA_USER}");
    assert_eq!(dir.authenticate(&req(&nul, SHA_PASSWORD)).await, Ok(None));
    assert_eq!(
        dir.authenticate(&req(SHA_USER, SHA_PASSWORD)).await,
        Ok(verified())
    );
}

/// Dovecot holds a failed login back (auth_failure_delay, 2 s): requests share one
/// connection and are answered by id, so a right password does not wait behind it.
#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn a_held_back_failure_does_not_delay_other_logins() {
    let d = Dovecot::start();
    let dir = directory(tcp(&d), Duration::from_secs(5));
    assert_eq!(
        dir.authenticate(&req(SHA_USER, SHA_PASSWORD)).await,
        Ok(verified())
    );
    let wrong_request = req(SHA_USER, "wrong");
    let wrong = dir.authenticate(&wrong_request);
    let right = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let answer = dir.authenticate(&req(ARGON_USER, ARGON_PASSWORD)).await;
        (answer, started.elapsed())
    };
    let (wrong, (right, right_took)) = tokio::join!(wrong, right);
    assert_eq!(wrong, Ok(None));
    assert_eq!(right, Ok(verified()));
    assert!(right_took < Duration::from_millis(1500), "{right_took:?}");
}

/// Dovecot's passdb could not check (checkpassword exit 111, `code=temp_fail`): an outage,
/// never a wrong password.
#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn temporary_failure_is_an_error() {
    let d = Dovecot::start();
    let dir = directory(unix(&d), Duration::from_secs(5));
    let e = dir.authenticate(&req(TEMP_USER, "x")).await.unwrap_err();
    assert!(matches!(e, BackendError::Query { .. }), "{e}");
    assert_eq!(e.key(), "auth.dovecot.socket");
}

#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn stopped_then_restarted() {
    let d = Dovecot::start();
    for socket in [unix(&d), tcp(&d)] {
        let dir = directory(socket.clone(), Duration::from_secs(5));
        assert_eq!(
            dir.authenticate(&req(SHA_USER, SHA_PASSWORD)).await,
            Ok(verified())
        );
        d.stop();
        let started = Instant::now();
        let e = dir
            .authenticate(&req(SHA_USER, SHA_PASSWORD))
            .await
            .unwrap_err();
        assert!(
            matches!(e, BackendError::Unreachable { .. }),
            "{socket:?}: {e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(dir.check().await.unwrap_err().label(), "unreachable");
        d.start_again();
        // The connection from before the restart is gone; the backend makes a new one.
        assert_eq!(
            dir.authenticate(&req(SHA_USER, SHA_PASSWORD)).await,
            Ok(verified()),
            "{socket:?}"
        );
        dir.check().await.unwrap();
    }
}

/// A Dovecot that accepts but does not answer (SIGSTOP): Err(Timeout) within the timeout,
/// on a connection made before the pause and on a new one; fine again after SIGCONT.
#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn slow_dovecot_times_out() {
    let d = Dovecot::start();
    let limit = Duration::from_secs(1);
    for socket in [unix(&d), tcp(&d)] {
        let dir = directory(socket.clone(), limit);
        assert_eq!(
            dir.authenticate(&req(SHA_USER, SHA_PASSWORD)).await,
            Ok(verified())
        );
        d.pause();
        let started = Instant::now();
        let e = dir
            .authenticate(&req(SHA_USER, SHA_PASSWORD))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            e,
            BackendError::Timeout {
                key: "auth.dovecot.socket",
                limit
            }
        );
        assert!(
            took >= limit && took < limit + Duration::from_millis(500),
            "{took:?}"
        );
        let fresh = directory(socket.clone(), limit);
        let started = Instant::now();
        assert_eq!(fresh.check().await.unwrap_err().label(), "timeout");
        assert!(started.elapsed() < limit + Duration::from_millis(500));
        d.resume();
        assert_eq!(
            dir.authenticate(&req(SHA_USER, SHA_PASSWORD)).await,
            Ok(verified()),
            "{socket:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn check_names_the_key_for_each_misconfiguration() {
    let t = Duration::from_secs(3);
    let no_socket = directory(DovecotSocket::Unix("/nonexistent/auth-client".into()), t);
    let e = no_socket.check().await.unwrap_err();
    assert_eq!(
        (e.label(), e.key()),
        ("unreachable", "auth.dovecot.socket"),
        "{e}"
    );
    // A port bound but not listening: refused, and no other test can take it meanwhile (a
    // port merely freed could be, by a test running in parallel).
    let holder = tokio::net::TcpSocket::new_v4().unwrap();
    holder.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed_port = DovecotSocket::Tcp {
        host: "127.0.0.1".into(),
        port: holder.local_addr().unwrap().port(),
    };
    let e = directory(closed_port, t).check().await.unwrap_err();
    drop(holder);
    assert_eq!(
        (e.label(), e.key()),
        ("unreachable", "auth.dovecot.socket"),
        "{e}"
    );
    // Something that is not Dovecot's auth-client socket (an SMTP greeting).
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut s, _)) = other.accept() {
            let _ = s.write_all(b"220 mail.example.test ESMTP\r\n");
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    let smtp = DovecotSocket::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    let e = directory(smtp, t).check().await.unwrap_err();
    assert_eq!(
        (e.label(), e.key()),
        ("protocol", "auth.dovecot.socket"),
        "{e}"
    );
    // A Dovecot without PLAIN.
    let d = Dovecot::start_with(Options {
        mechanisms: "login",
    });
    let dir = directory(unix(&d), t);
    let e = dir.check().await.unwrap_err();
    assert_eq!(
        (e.label(), e.key()),
        ("refused", "auth.dovecot.socket"),
        "{e}"
    );
    assert!(e.to_string().contains("auth_mechanisms"), "{e}");
    let e = dir
        .authenticate(&req(SHA_USER, SHA_PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(e.label(), "refused");
}

// ---- End to end through submitd (needs the verifier wiring, "Identity backends, step 2").

/// `[auth]` for a submitd that asks `d` over `socket`.
fn auth_toml(socket: &str, extra: &str) -> String {
    format!(
        "backend = \"dovecot\"\n{extra}\n[auth.dovecot]\nsocket = \"{socket}\"\nservice = \"smtp\"\n"
    )
}

async fn login(server: &TestServer, user: &str, password: &str, expect: &str) -> Client {
    let mut c = server.tls().await;
    c.cmd("EHLO client.example.test", "250").await;
    c.cmd(&format!("AUTH PLAIN {}", plain(user, password)), expect)
        .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn e2e_logins_and_senders() {
    let d = Dovecot::start();
    for socket in [d.unix_setting(), d.tcp_setting()] {
        let server = TestServer::start_auth(&auth_toml(&socket, ""), "").await;
        let mut c = login(&server, SHA_USER, SHA_PASSWORD, "235").await;
        c.cmd(&format!("MAIL FROM:<{SHA_USER}>"), "250").await;
        c.cmd("RSET", "250").await;
        c.cmd(&format!("MAIL FROM:<{ARGON_USER}>"), "553").await;
        login(&server, ARGON_USER, ARGON_PASSWORD, "235").await;
        login(&server, ARGON_USER, SHA_PASSWORD, "535").await;
        login(&server, "nobody@example.test", SHA_PASSWORD, "535").await;
        server.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn e2e_outage_is_454_then_recovers() {
    let d = Dovecot::start();
    // No cache: every login asks Dovecot.
    let toml = auth_toml(&d.unix_setting(), "cache_ttl = \"0s\"");
    let server = TestServer::start_auth(&toml, "").await;
    login(&server, SHA_USER, SHA_PASSWORD, "235").await;
    d.stop();
    login(&server, SHA_USER, SHA_PASSWORD, "454 4.7.0").await;
    d.start_again();
    login(&server, SHA_USER, SHA_PASSWORD, "235").await;
    // Dovecot's own temporary failure is an outage too, not a wrong password.
    login(&server, TEMP_USER, "x", "454 4.7.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dovecot-core: ./test.sh runs it"]
async fn e2e_slow_dovecot_is_454_within_backend_timeout() {
    let d = Dovecot::start();
    let toml = auth_toml(
        &d.tcp_setting(),
        "cache_ttl = \"0s\"\nbackend_timeout = \"1s\"",
    );
    let server = TestServer::start_auth(&toml, "").await;
    login(&server, SHA_USER, SHA_PASSWORD, "235").await;
    d.pause();
    let started = Instant::now();
    login(&server, SHA_USER, SHA_PASSWORD, "454 4.7.0").await;
    let took = started.elapsed();
    d.resume();
    // The TLS handshake and EHLO are inside `took` as well.
    assert!(took < Duration::from_millis(2500), "{took:?}");
    login(&server, SHA_USER, SHA_PASSWORD, "235").await;
}

/// swaks over 465 with AUTH PLAIN against Dovecot's ARGON2ID user; the message reaches the
/// next hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dovecot-core and swaks: ./test.sh runs it"]
async fn e2e_swaks_delivers() {
    let d = Dovecot::start();
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_auth(&auth_toml(&d.unix_setting(), ""), &smarthost(&sink)).await;
    let out = tokio::process::Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port"])
        .arg(server.submissions.port().to_string())
        .args([
            "--tls-on-connect",
            "--auth",
            "PLAIN",
            "--auth-user",
            ARGON_USER,
        ])
        .args(["--auth-password", ARGON_PASSWORD, "--from", ARGON_USER])
        .args([
            "--to",
            "rcpt@example.net",
            "--header",
            "Subject: via dovecot",
        ])
        .args(["--body", "Checked by Dovecot."])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("swaks finished within 60 s")
        .expect("swaks is installed");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{transcript}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(transcript.contains("235 "), "{transcript}");
    let got = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "{transcript}");
    assert_eq!(got[0].from, ARGON_USER);
    assert_eq!(got[0].rcpts, vec!["rcpt@example.net".to_string()]);
    assert!(String::from_utf8_lossy(&got[0].data).contains("Checked by Dovecot."));
}
