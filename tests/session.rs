//! Raw-socket tests of the SMTP session against the real server: the bytes on the wire and
//! what ends up in the spool.

mod common;

use std::time::Duration;

use common::*;

const EHLO_TLS: &str = "250-mail.example.test\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n\
                        250-AUTH PLAIN LOGIN\r\n250-DSN\r\n250-REQUIRETLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n\
                        250-SMTPUTF8\r\n250 CHUNKING\r\n";

#[tokio::test]
async fn ehlo_before_and_after_tls() {
    let server = TestServer::start().await;
    let mut c = server.plain().await;
    let before = c.cmd("EHLO client.test", "250").await;
    assert!(before.contains("250-STARTTLS\r\n") || before.ends_with("250 STARTTLS\r\n"));
    assert!(!before.contains("AUTH"), "{before}");
    assert!(
        !before.contains("DSN") && !before.contains("REQUIRETLS"),
        "{before}"
    );
    c.starttls().await;
    let after = c.cmd("EHLO client.test", "250").await;
    assert_eq!(after, EHLO_TLS);
    let mut t = server.tls().await;
    assert_eq!(t.cmd("EHLO client.test", "250").await, EHLO_TLS);
}

#[tokio::test]
async fn before_starttls_only_the_safe_commands_work() {
    let server = TestServer::start().await;
    let mut c = server.plain().await;
    let must = "530 5.7.0 Must issue a STARTTLS command first\r\n";
    assert_eq!(
        c.cmd(
            &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
            "530"
        )
        .await,
        must
    );
    c.cmd("EHLO client.test", "250").await;
    assert_eq!(
        c.cmd(
            &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
            "530"
        )
        .await,
        must
    );
    assert_eq!(c.cmd("AUTH LOGIN", "530").await, must);
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>", "530").await, must);
    assert_eq!(c.cmd("RCPT TO:<bob@example.net>", "530").await, must);
    assert_eq!(c.cmd("DATA", "530").await, must);
    assert_eq!(c.cmd("HELP", "530").await, must);
    assert_eq!(c.cmd("VRFY alice", "530").await, must);
    c.cmd("NOOP", "250 2.0.0").await;
    c.cmd("RSET", "250 2.0.0").await;
    c.cmd("HELO client.test", "250").await;
    c.cmd("QUIT", "221 2.0.0").await;
    c.expect_closed().await;
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn bytes_pipelined_after_starttls_are_discarded() {
    let server = TestServer::start().await;
    let mut c = server.plain().await;
    c.cmd("EHLO client.test", "250").await;
    // The classic STARTTLS injection (CVE-2011-0411): commands in the same packet.
    c.send(b"STARTTLS\r\nMAIL FROM:<alice@example.test>\r\nNOOP\r\n")
        .await;
    c.expect("220 2.0.0").await;
    c.upgrade().await.unwrap();
    // If the injected commands had survived, their replies would come first.
    c.cmd("NOOP", "250 2.0.0 Ok\r\n").await;
    // The session started over: EHLO first, and no earlier state.
    c.cmd("MAIL FROM:<alice@example.test>", "503 5.5.1 EHLO first")
        .await;
    c.cmd("EHLO client.test", "250-").await;
    c.cmd(
        "MAIL FROM:<alice@example.test>",
        "530 5.7.0 Authentication required",
    )
    .await;
    c.cmd("STARTTLS", "503 5.5.1").await;
}

#[tokio::test]
async fn starttls_on_implicit_tls_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.tls().await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("STARTTLS", "503 5.5.1").await;
}

#[tokio::test]
async fn plaintext_on_465_never_gets_a_greeting() {
    let server = TestServer::start().await;
    let mut c = Client::connect_raw(server.submissions).await;
    c.send(b"EHLO client.test\r\n").await;
    // The server waits for a ClientHello; garbage ends the connection with at most a TLS alert.
    let mut buf = Vec::new();
    let r = tokio::time::timeout(IO_TIMEOUT, async {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect(server.submissions)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"EHLO client.test\r\n")
            .await
            .unwrap();
        s.read_to_end(&mut buf).await
    })
    .await
    .unwrap();
    let _ = r;
    assert!(!String::from_utf8_lossy(&buf).contains("220"), "{buf:?}");
}

#[tokio::test]
async fn auth_plain_with_and_without_initial_response_and_login() {
    let server = TestServer::start().await;
    let mut c = server.tls().await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("AUTH PLAIN", "334 \r\n").await;
    c.cmd(
        &plain(ALICE, ALICE_PASSWORD),
        "235 2.7.0 Authentication successful\r\n",
    )
    .await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
        "503 5.5.1",
    )
    .await;

    let mut c = server.tls().await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6\r\n").await;
    c.cmd(&b64(BOB.as_bytes()), "334 UGFzc3dvcmQ6\r\n").await;
    c.cmd(&b64(BOB_PASSWORD.as_bytes()), "235 2.7.0").await;
    c.cmd(&format!("MAIL FROM:<{BOB}>"), "250 2.1.0").await;
}

#[tokio::test]
async fn auth_errors() {
    let server = TestServer::start_with("max_auth_failures = 10").await;
    let mut c = server.tls().await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("AUTH CRAM-MD5", "504 5.5.4").await;
    c.cmd("AUTH PLAIN", "334").await;
    c.cmd("*", "501").await;
    c.cmd("AUTH LOGIN", "334").await;
    c.cmd("*", "501").await;
    c.cmd("AUTH PLAIN !!!notbase64", "501").await;
    c.cmd("AUTH PLAIN", "334").await;
    c.cmd("%%%", "501").await;
    // authzid bob, authcid alice with alice's password: acting as someone else is refused.
    let other = b64(format!("{BOB}\0{ALICE}\0{ALICE_PASSWORD}").as_bytes());
    c.cmd(&format!("AUTH PLAIN {other}"), "535 5.7.8").await;
    // Same authzid as authcid is fine.
    let same = b64(format!("{ALICE}\0{ALICE}\0{ALICE_PASSWORD}").as_bytes());
    c.cmd(&format!("AUTH PLAIN {same}"), "235").await;
}

#[tokio::test]
async fn auth_failures_end_the_connection() {
    let server = TestServer::start().await;
    let mut c = server.tls().await;
    c.cmd("EHLO client.test", "250").await;
    let wrong = format!("AUTH PLAIN {}", plain(ALICE, "nope"));
    c.cmd(&wrong, "535 5.7.8 Authentication credentials invalid\r\n")
        .await;
    let unknown = format!("AUTH PLAIN {}", plain("nobody@example.test", "nope"));
    c.cmd(&unknown, "535 5.7.8 Authentication credentials invalid\r\n")
        .await;
    c.cmd(&wrong, "421 4.7.0 Too many authentication failures\r\n")
        .await;
    c.expect_closed().await;
}

#[tokio::test]
async fn mail_requires_auth_and_ehlo() {
    let server = TestServer::start().await;
    let mut c = server.tls().await;
    c.cmd("MAIL FROM:<alice@example.test>", "503 5.5.1 EHLO first")
        .await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd(
        "MAIL FROM:<alice@example.test>",
        "530 5.7.0 Authentication required\r\n",
    )
    .await;
    c.cmd(
        "RCPT TO:<bob@example.net>",
        "530 5.7.0 Authentication required\r\n",
    )
    .await;
}

#[tokio::test]
async fn sender_binding_envelope() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    let refused = "553 5.7.1 Sender address rejected: not owned by user alice@example.test\r\n";
    assert_eq!(c.cmd("MAIL FROM:<bob@example.test>", "553").await, refused);
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.test.evil>", "553").await,
        refused
    );
    assert_eq!(
        c.cmd("MAIL FROM:<alice@sub.alice.example.test>", "553")
            .await,
        refused
    );
    assert_eq!(
        c.cmd("MAIL FROM:<\"alice@example.test\"@evil.test>", "553")
            .await,
        refused
    );
    c.cmd("MAIL FROM:<>", "553 5.7.1").await;
    c.cmd("MAIL FROM:<Alice@EXAMPLE.test>", "250 2.1.0").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<anything@alice.example.test>", "250 2.1.0")
        .await;
    c.cmd("MAIL FROM:<alice@example.test>", "503 5.5.1").await;
}

/// Send a whole transaction and return the final reply.
async fn submit(c: &mut Client, from: &str, rcpts: &[&str], body: &str) -> String {
    c.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
    for r in rcpts {
        c.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    c.cmd("DATA", "354").await;
    c.send(body.as_bytes()).await;
    c.send(b"\r\n.\r\n").await;
    c.reply().await
}

#[tokio::test]
async fn sender_binding_header_from() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    let r = submit(
        &mut c,
        ALICE,
        &["x@example.net"],
        "From: bob@example.test\r\n\r\nhi",
    )
    .await;
    assert_eq!(
        r,
        "553 5.7.1 Sender address rejected: not owned by user alice@example.test\r\n"
    );
    let r = submit(&mut c, ALICE, &["x@example.net"], "Subject: none\r\n\r\nhi").await;
    assert_eq!(r, "550 5.6.0 Message has no From header\r\n");
    let body = "From: alice@example.test\r\nSender: mallory@evil.test\r\n\r\nhi";
    assert!(
        submit(&mut c, ALICE, &["x@example.net"], body)
            .await
            .starts_with("553 5.7.1")
    );
    let body = "From: alice@example.test, \"x\" <carol@alice.example.test>\r\n\r\nhi";
    assert!(
        submit(&mut c, ALICE, &["x@example.net"], body)
            .await
            .starts_with("250 2.0.0")
    );
    assert_eq!(server.queued().len(), 1);
}

#[tokio::test]
async fn a_queued_message_is_on_disk_at_the_250() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    let r = submit(&mut c, ALICE, &["x@example.net"], &message_from(ALICE)).await;
    let id = r
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap()
        .trim_end()
        .to_string();
    // One file: `ID.q`, committed (header, content, envelope record) before the 250.
    let file = server.queue_dir().join(format!("{id}.q"));
    let raw = std::fs::read(&file).unwrap();
    assert!(raw.starts_with(b"SUBMITDQ"), "{raw:?}");
    let spool = submitd::queue::Spool::attach(&server.queue_dir());
    let qid = submitd::queue::QueueId::parse(&id).unwrap();
    assert_eq!(spool.load_envelope(&qid).unwrap().recipients.len(), 1);
    let body = String::from_utf8(spool.load_message(&qid).unwrap()).unwrap();
    // `submit` ends the data with CRLF.CRLF after a body that already ends in CRLF.
    assert!(body.ends_with(&format!("{}\r\n", message_from(ALICE))));
    assert!(
        body.starts_with(
            "Received: from client.test by mail.example.test (submitd) with ESMTPSA id "
        )
    );
}

#[tokio::test]
async fn dot_stuffing_is_undone() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    let body = "From: alice@example.test\r\n\r\n..leading dot\r\n.\r\n";
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(body.as_bytes()).await;
    c.expect("250 2.0.0 Ok: queued as").await;
    let (_, msg) = &server.queued()[0];
    assert!(String::from_utf8_lossy(msg).ends_with("\r\n\r\n.leading dot\r\n"));
}

/// Every smuggling variant of the public scanners: a fake end of data followed by a second,
/// smuggled transaction. The server must not end DATA there, must refuse the whole thing
/// with 550 5.6.0, and must never run the smuggled commands.
#[tokio::test]
async fn smuggling_variants_in_data() {
    let server = TestServer::start().await;
    let variants: &[&[u8]] = &[
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r",
        b"\r\n.\r",
        b"\r\n.\n",
        b"\n.\r",
        b"\r.\n",
        b"\r.\r\n",
        b"\r\n.\r\r\n",
        b"\r\r\n.\r\r\n",
    ];
    for variant in variants {
        let mut c = server.alice().await;
        c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
        c.cmd("RCPT TO:<x@example.net>", "250").await;
        c.cmd("DATA", "354").await;
        let mut data = b"From: alice@example.test\r\n\r\nfirst".to_vec();
        data.extend_from_slice(variant);
        data.extend_from_slice(
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n\
              From: alice@example.test\r\n\r\nsmuggled\r\n.\r\n",
        );
        c.send(&data).await;
        let r = c.reply().await;
        assert_eq!(
            r, "550 5.6.0 Bare CR or LF in message\r\n",
            "variant {variant:?}"
        );
        // Nothing else was answered: the next reply is the NOOP's.
        c.cmd("NOOP", "250 2.0.0 Ok\r\n").await;
    }
    assert!(server.queued().is_empty());
}

/// `<CRLF>NUL.<CRLF>` is not the end of DATA; the message ends at the real terminator and is
/// refused, because NUL is not allowed in message content.
#[tokio::test]
async fn nul_before_the_dot_does_not_end_data() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"From: alice@example.test\r\n\r\nfirst\r\n\x00.\r\nNOOP\r\n")
        .await;
    c.send(b".\r\n").await;
    c.expect("550 5.6.0 NUL character in message\r\n").await;
    c.cmd("NOOP", "250 2.0.0 Ok\r\n").await;
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn smuggling_variants_in_bdat() {
    let server = TestServer::start().await;
    for variant in [&b"\n.\n"[..], b"\r\n.\r", b"\r.\r", b"\n.\r\n", b"\r\n.\n"] {
        let mut c = server.alice().await;
        c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
        c.cmd("RCPT TO:<x@example.net>", "250").await;
        let mut chunk = b"From: alice@example.test\r\n\r\nfirst".to_vec();
        chunk.extend_from_slice(variant);
        chunk.extend_from_slice(b"more\r\n");
        c.send(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes())
            .await;
        c.send(&chunk).await;
        c.expect("550 5.6.0 Bare CR or LF in message\r\n").await;
        c.cmd("NOOP", "250 2.0.0 Ok\r\n").await;
    }
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    let part1 = "From: alice@example.test\r\n\r\nline one\r";
    let part2 = "\n.line two, no stuffing in BDAT\r\n";
    c.send(format!("BDAT {}\r\n{part1}", part1.len()).as_bytes())
        .await;
    c.expect(&format!("250 2.0.0 Ok: {} octets received", part1.len()))
        .await;
    c.send(format!("BDAT {} LAST\r\n{part2}", part2.len()).as_bytes())
        .await;
    c.expect("250 2.0.0 Ok: queued as").await;
    c.cmd("DATA", "503").await;
    let (_, msg) = &server.queued()[0];
    assert!(msg.ends_with(format!("{part1}{part2}").as_bytes()));
}

#[tokio::test]
async fn bdat_refused_chunk_is_consumed_not_run() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    // No MAIL yet: the chunk is read and discarded, its content never runs as commands.
    let chunk = "QUIT\r\n";
    c.send(format!("BDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes())
        .await;
    c.expect("503 5.5.1").await;
    c.cmd("NOOP", "250").await;
    // An unreadable size cannot be skipped: the connection ends.
    c.cmd("BDAT -5", "501 5.5.4").await;
    c.expect_closed().await;
}

#[tokio::test]
async fn data_after_bdat_and_order_errors() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    c.cmd("RCPT TO:<x@example.net>", "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    c.send(b"BDAT 3\r\nabc").await;
    c.expect("250 2.0.0 Ok: 3 octets received").await;
    c.cmd("DATA", "503 5.5.1 DATA not allowed after BDAT").await;
}

/// RFC 2920 section 3.1: EHLO and AUTH end a group; MAIL and RCPT may be pipelined, DATA ends
/// the group; the message may start a group and RSET may follow it.
#[tokio::test]
async fn pipelined_transaction() {
    let server = TestServer::start().await;
    let mut c = server.tls().await;
    c.cmd("EHLO client.test", "250-").await;
    let auth = plain(ALICE, ALICE_PASSWORD);
    c.cmd(&format!("AUTH PLAIN {auth}"), "235").await;
    let batch = format!(
        "MAIL FROM:<{ALICE}>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    );
    c.send(batch.as_bytes()).await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send(
        format!(
            "{}.\r\nRSET\r\nMAIL FROM:<{ALICE}>\r\nQUIT\r\n",
            message_from(ALICE)
        )
        .as_bytes(),
    )
    .await;
    c.expect("250 2.0.0 Ok: queued as").await;
    c.expect("250 2.0.0 Ok").await;
    c.expect("250 2.1.0 Ok").await;
    c.expect("221 2.0.0").await;
    c.expect_closed().await;
    let (env, _) = &server.queued()[0];
    assert_eq!(env["recipients"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn rset_clears_the_envelope() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    c.cmd("RSET", "250 2.0.0 Ok\r\n").await;
    c.cmd("DATA", "503 5.5.1").await;
    // Still authenticated after RSET.
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
}

#[tokio::test]
async fn other_commands() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    c.cmd("VRFY bob", "252").await;
    c.cmd("EXPN list", "502").await;
    c.cmd("HELP", "214").await;
    c.cmd("NOOP", "250 2.0.0 Ok\r\n").await;
    c.cmd("FOO bar", "500 5.5.1").await;
    c.cmd("MAIL FROM:alice@example.test", "501 5.5.4").await;
    c.cmd("NO\0OP", "50").await;
    c.cmd("QUIT", "221 2.0.0 Bye\r\n").await;
    c.expect_closed().await;
}

#[tokio::test]
async fn long_lines_get_one_error_and_the_session_survives() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    c.send(long.as_bytes()).await;
    c.expect("500 5.5.2 Line too long\r\n").await;
    // A line of 100 KB without a line ending for a while: one error, memory bounded.
    c.send(&vec![b'y'; 100_000]).await;
    c.send(b"\r\nNOOP\r\n").await;
    c.expect("500 5.5.2 Line too long\r\n").await;
    c.expect("250 2.0.0 Ok\r\n").await;
    // 512 octets including CRLF is fine.
    let exact = format!("NOOP {}\r\n", "z".repeat(512 - 7));
    assert_eq!(exact.len(), 512);
    c.send(exact.as_bytes()).await;
    c.expect("250").await;
}

#[tokio::test]
async fn size_limits() {
    let server = TestServer::start_with("max_message_size = 1000").await;
    let mut c = server.alice().await;
    assert!(
        c.cmd("EHLO client.test", "250")
            .await
            .contains("250-SIZE 1000\r\n")
    );
    c.cmd(
        &format!("MAIL FROM:<{ALICE}> SIZE=1001"),
        "552 5.3.4 Message size exceeds fixed limit\r\n",
    )
    .await;
    c.cmd(&format!("MAIL FROM:<{ALICE}> SIZE=1000"), "250")
        .await;
    c.cmd("RSET", "250").await;
    let big = format!("{}{}\r\n", message_from(ALICE), "x".repeat(1000));
    let r = submit(&mut c, ALICE, &["x@example.net"], &big).await;
    assert_eq!(r, "552 5.3.4 Message size exceeds fixed limit\r\n");
    // Exactly at the limit (the added headers do not count).
    let head = message_from(ALICE);
    let exact = format!("{head}{}\r\n", "y".repeat(1000 - head.len() - 2));
    assert_eq!(exact.len(), 1000);
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{exact}.\r\n").as_bytes()).await;
    c.expect("250 2.0.0 Ok: queued").await;
    // BDAT larger than the limit.
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    c.cmd("BDAT 1001 LAST", "552 5.3.4").await;
    assert_eq!(server.queued().len(), 1);
}

#[tokio::test]
async fn recipient_limit() {
    let server = TestServer::start_with("max_recipients = 2").await;
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<a@example.net>", "250").await;
    c.cmd("RCPT TO:<b@example.net>", "250").await;
    c.cmd(
        "RCPT TO:<c@example.net>",
        "452 4.5.3 Too many recipients\r\n",
    )
    .await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    c.expect("250 2.0.0 Ok: queued").await;
    let (env, _) = &server.queued()[0];
    assert_eq!(env["recipients"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn idle_connection_times_out() {
    let server = TestServer::start_with("command_timeout = \"1s\"").await;
    let mut c = server.plain().await;
    let started = std::time::Instant::now();
    c.expect("421 4.4.2").await;
    c.expect_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The same in the middle of DATA.
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"From: alice@example.test\r\n\r\npartial").await;
    c.expect("421 4.4.2").await;
    c.expect_closed().await;
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn per_ip_connection_limit() {
    let server = TestServer::start_with("max_connections_per_ip = 2").await;
    let _a = server.plain().await;
    let _b = server.tls().await;
    let mut c = Client::connect_raw(server.submission).await;
    c.expect("421 4.7.0").await;
    c.expect_closed().await;
    // On 465 the extra connection is closed before the handshake.
    let mut d = Client::connect_raw(server.submissions).await;
    assert!(d.upgrade().await.is_err());
    // Closing one makes room again.
    drop(_a);
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let mut e = Client::connect_raw(server.submission).await;
        if e.reply().await.starts_with("220") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn total_connection_limit() {
    let server = TestServer::start_with("max_connections = 1").await;
    let _a = server.plain().await;
    let mut c = Client::connect_raw(server.submission).await;
    c.expect("421 4.7.0").await;
    c.expect_closed().await;
}

#[tokio::test]
async fn auth_line_may_be_longer_than_a_command_line() {
    let server = TestServer::start().await;
    let mut c = server.tls().await;
    c.cmd("EHLO my_pc.local", "250").await;
    // RFC 4954: an AUTH command with its initial response may exceed 512 octets.
    let long = format!("AUTH PLAIN {}", plain(ALICE, &"p".repeat(3000)));
    assert!(long.len() > 512);
    c.cmd(&long, "535 5.7.8").await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
        "235",
    )
    .await;
    let r = submit(&mut c, ALICE, &["x@example.net"], &message_from(ALICE)).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as"));
    let (_, msg) = &server.queued()[0];
    assert!(msg.starts_with(b"Received: from my_pc.local by "));
}

#[tokio::test]
async fn ehlo_argument_is_validated() {
    let server = TestServer::start().await;
    let mut c = server.tls().await;
    c.cmd("EHLO", "501 5.5.4").await;
    c.cmd("EHLO bad;name", "501 5.5.4").await;
    c.cmd("EHLO (comment)", "501 5.5.4").await;
    c.cmd("EHLO [300.1.1.1]", "501 5.5.4").await;
    c.cmd("EHLO [127.0.0.1]", "250").await;
}
