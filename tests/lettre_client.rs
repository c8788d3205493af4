//! End to end through lettre, a real SMTP client: implicit TLS on 465 and STARTTLS on 587,
//! PLAIN and LOGIN. The spooled file must be the submitted bytes with only submitd's headers
//! in front.

mod common;

use common::*;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

fn transport(
    port: u16,
    implicit: bool,
    mechanism: Mechanism,
    password: &str,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let (cert, _) = cert_and_key();
    let params = TlsParameters::builder(HOSTNAME.to_string())
        .add_root_certificate(Certificate::from_pem(cert.as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let tls = if implicit {
        Tls::Wrapper(params)
    } else {
        Tls::Required(params)
    };
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(tls)
        .credentials(Credentials::new(ALICE.to_string(), password.to_string()))
        .authentication(vec![mechanism])
        .timeout(Some(IO_TIMEOUT))
        .build()
}

/// The submitted message with a Date and Message-ID of its own, so only Received is added.
const RAW: &str = "From: Alice <alice@example.test>\r\nTo: bob@example.net\r\n\
                   Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.test>\r\n\
                   Subject: lettre\r\n\r\nLine one.\r\n.starts with a dot\r\n\r\nLast line.\r\n";

async fn submit_and_check(implicit: bool, mechanism: Mechanism) {
    let server = TestServer::start().await;
    let port = if implicit {
        server.submissions.port()
    } else {
        server.submission.port()
    };
    let t = transport(port, implicit, mechanism, ALICE_PASSWORD);
    let envelope = Envelope::new(
        Some(ALICE.parse().unwrap()),
        vec![
            "bob@example.net".parse().unwrap(),
            "carol@example.org".parse().unwrap(),
        ],
    )
    .unwrap();
    let response = t.send_raw(&envelope, RAW.as_bytes()).await.unwrap();
    assert_eq!(response.code().to_string(), "250");
    let text = response.message().collect::<Vec<_>>().join(" ");
    assert!(text.starts_with("2.0.0 Ok: queued as "), "{text}");
    let id = text.trim_start_matches("2.0.0 Ok: queued as ").to_string();

    let queued = server.queued();
    assert_eq!(queued.len(), 1);
    let (env, msg) = &queued[0];
    assert_eq!(env["id"], id.as_str());
    assert_eq!(env["version"], 2);
    assert_eq!(env["sender"], ALICE);
    assert_eq!(env["user"], ALICE);
    assert_eq!(env["helo"].as_str().map(|h| !h.is_empty()), Some(true));
    let rcpts: Vec<&str> = env["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(rcpts, ["bob@example.net", "carol@example.org"]);
    assert!(
        env["recipients"]
            .as_array()
            .unwrap()
            .iter()
            // The scheduler may already have tried the dead test relay (127.0.0.1:1).
            .all(|r| r["state"] == "pending" || r["state"] == "deferred"),
        "{env}"
    );

    let msg = String::from_utf8(msg.clone()).unwrap();
    let (received, rest) = msg.split_once("\r\n\t").unwrap();
    assert!(
        received.starts_with("Received: from ")
            && received.ends_with(&format!(" by {HOSTNAME} (submitd) with ESMTPSA id {id};")),
        "{received}"
    );
    let (_date, submitted) = rest.split_once("\r\n").unwrap();
    // lettre always ends DATA with CRLF.CRLF, so a message ending in CRLF arrives with one more.
    assert_eq!(
        submitted,
        format!("{RAW}\r\n"),
        "the submitted bytes are kept exactly"
    );
}

#[tokio::test]
async fn implicit_tls_plain() {
    submit_and_check(true, Mechanism::Plain).await;
}

#[tokio::test]
async fn implicit_tls_login() {
    submit_and_check(true, Mechanism::Login).await;
}

#[tokio::test]
async fn starttls_plain() {
    submit_and_check(false, Mechanism::Plain).await;
}

#[tokio::test]
async fn starttls_login() {
    submit_and_check(false, Mechanism::Login).await;
}

#[tokio::test]
async fn wrong_password_is_refused_and_nothing_queued() {
    let server = TestServer::start().await;
    let t = transport(server.submissions.port(), true, Mechanism::Plain, "wrong");
    let envelope = Envelope::new(
        Some(ALICE.parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();
    let err = t.send_raw(&envelope, RAW.as_bytes()).await.unwrap_err();
    assert!(err.to_string().contains("535"), "{err}");
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn lettre_builder_message_gets_date_and_message_id_only_when_missing() {
    let server = TestServer::start().await;
    let t = transport(
        server.submissions.port(),
        true,
        Mechanism::Plain,
        ALICE_PASSWORD,
    );
    let envelope = Envelope::new(
        Some(ALICE.parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();
    let raw = "From: alice@example.test\r\nSubject: no date\r\n\r\nbody\r\n";
    t.send_raw(&envelope, raw.as_bytes()).await.unwrap();
    let (env, msg) = &server.queued()[0];
    let msg = String::from_utf8(msg.clone()).unwrap();
    let id = env["id"].as_str().unwrap();
    assert!(
        msg.contains(&format!("\r\nMessage-ID: <{id}@{HOSTNAME}>\r\n")),
        "{msg}"
    );
    assert!(msg.contains("\r\nDate: "), "{msg}");
    assert!(msg.ends_with(&format!("{raw}\r\n")));
}
