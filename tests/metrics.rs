//! `[metrics] listen`: the real server counts what happens to it and a raw HTTP scrape shows it
//! in the Prometheus text format; bad or oversized requests get 4xx or are cut off.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METRICS_ON: &str = "[metrics]\nlisten = \"127.0.0.1:0\"";

/// Send `request` as is, read the whole response until the server closes (bounded). A reset
/// counts as the end.
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    // The server may stop reading (and close) before the request is all written.
    let _ = tokio::time::timeout(IO_TIMEOUT, tcp.write_all(request)).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!("response not finished within {IO_TIMEOUT:?}: {out:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        assert!(out.len() < 1 << 20, "response too long");
    }
    String::from_utf8(out).unwrap()
}

/// `GET /metrics`: the body, after checking the status line and content type.
async fn scrape(addr: SocketAddr) -> String {
    let response = http(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (head, body) = response.split_once("\r\n\r\n").expect("no header end");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
        "{head}"
    );
    body.to_string()
}

/// The value of one series (name with labels, exactly as exposed).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Scrape until `series` has `want` (the queue updates after the sink got the message).
async fn scrape_until(addr: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let text = scrape(addr).await;
        if value(&text, series) == want {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} never {want}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_submission_and_its_delivery_show_in_the_counters() {
    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_full(
        "max_connections_per_ip = 2",
        "",
        &smarthost(&sink),
        METRICS_ON,
    )
    .await;
    let addr = server.metrics.expect("metrics address");
    let before = scrape(addr).await;
    assert_eq!(value(&before, "submitd_messages_accepted_total"), 0.0);
    assert_eq!(value(&before, "submitd_queue_messages"), 0.0);

    // A failed AUTH on 465 (connection kept), then alice on a second connection.
    let _failed = login_as(server.submissions, ALICE, "wrong password", "535 5.7.8").await;
    let mut c = server.alice().await;
    // A third connection from 127.0.0.1, on 587: refused by the per-IP limit.
    let mut refused = Client::connect_raw(server.submission).await;
    refused.expect("421 4.7.0").await;
    refused.expect_closed().await;

    // A message with a bare LF is refused; the next one is queued and delivered.
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("From: {ALICE}\r\nSubject: x\r\n\r\nbare\nLF\r\n.\r\n").as_bytes())
        .await;
    c.expect("550 5.6.0").await;
    let reply = send_message(&mut c, ALICE, &["bob@example.net"]).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let got = sink.wait_for(1, IO_TIMEOUT).await;

    let text = scrape_until(addr, "submitd_deliveries_total{status=\"sent\"}", 1.0).await;
    let text = if value(&text, "submitd_queue_messages") == 0.0 {
        text
    } else {
        scrape_until(addr, "submitd_queue_messages", 0.0).await
    };
    for (series, want) in [
        ("submitd_connections_total{port=\"submissions\"}", 2.0),
        ("submitd_connections_total{port=\"submission\"}", 1.0),
        ("submitd_connections_open{port=\"submissions\"}", 2.0),
        ("submitd_connections_open{port=\"submission\"}", 0.0),
        (
            "submitd_connections_refused_total{reason=\"max_connections_per_ip\"}",
            1.0,
        ),
        (
            "submitd_connections_refused_total{reason=\"max_connections\"}",
            0.0,
        ),
        (
            "submitd_tls_handshakes_total{port=\"submissions\",result=\"ok\"}",
            2.0,
        ),
        (
            "submitd_tls_handshakes_total{port=\"submissions\",result=\"failed\"}",
            0.0,
        ),
        ("submitd_auth_total{result=\"success\"}", 1.0),
        ("submitd_auth_total{result=\"bad_credentials\"}", 1.0),
        ("submitd_messages_accepted_total", 1.0),
        // What was queued is what the sink received: the message with submitd's headers.
        ("submitd_accepted_bytes_total", got[0].data.len() as f64),
        (
            "submitd_messages_rejected_total{reason=\"bare_line_ending\"}",
            1.0,
        ),
        ("submitd_messages_rejected_total{reason=\"sender\"}", 0.0),
        ("submitd_deliveries_total{status=\"sent\"}", 1.0),
        ("submitd_deliveries_total{status=\"deferred\"}", 0.0),
        ("submitd_deliveries_total{status=\"bounced\"}", 0.0),
        ("submitd_delivery_delay_seconds_count", 1.0),
        ("submitd_delivery_attempt_duration_seconds_count", 1.0),
        ("submitd_queue_messages", 0.0),
        ("submitd_queue_recipients", 0.0),
        ("submitd_queue_oldest_message_age_seconds", 0.0),
    ] {
        assert_eq!(value(&text, series), want, "{series} in\n{text}");
    }
    // Never a label per user, address or domain.
    assert!(!text.contains(ALICE) && !text.contains("example.net") && !text.contains("127.0.0.1"));
}

#[tokio::test]
async fn a_deferred_message_shows_in_the_queue_gauges() {
    // Nothing listens on the smarthost: every attempt is deferred.
    let server = TestServer::start_full(
        "",
        "retry = [\"1h\"]",
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n",
        METRICS_ON,
    )
    .await;
    let addr = server.metrics.unwrap();
    let mut c = server.alice().await;
    let reply = send_message(&mut c, ALICE, &["a@example.net", "b@example.org"]).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let text = scrape_until(addr, "submitd_deliveries_total{status=\"deferred\"}", 2.0).await;
    let text = if value(&text, "submitd_queue_recipients") == 2.0 {
        text
    } else {
        scrape_until(addr, "submitd_queue_recipients", 2.0).await
    };
    assert_eq!(value(&text, "submitd_queue_messages"), 1.0);
    assert_eq!(
        value(&text, "submitd_deliveries_total{status=\"sent\"}"),
        0.0
    );
    assert_eq!(value(&text, "submitd_delivery_delay_seconds_count"), 0.0);
    let age = value(&text, "submitd_queue_oldest_message_age_seconds");
    assert!((0.0..60.0).contains(&age), "{age}");
}

#[tokio::test]
async fn bad_requests_get_4xx_and_huge_ones_are_cut_off() {
    let server = TestServer::start_full("", "", "", METRICS_ON).await;
    let addr = server.metrics.unwrap();
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "404 Not Found"),
        (b"GET /metrics/x HTTP/1.1\r\n\r\n", "404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
        (b"hello\r\n\r\n", "400 Bad Request"),
        (b"EHLO client.test\r\nQUIT\r\n\r\n", "400 Bad Request"),
    ] {
        let response = http(addr, request).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{request:?}: {response}"
        );
    }
    // 1 MiB of header without an end: the server stops reading at 8 KiB, answers 431 (or the
    // client sees the reset first) and closes; it never waits for the rest.
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while huge.len() < 1 << 20 {
        huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let started = Instant::now();
    let response = http(addr, &huge).await;
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 431 "),
        "{response}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // And the endpoint still serves.
    let text = scrape(addr).await;
    assert_eq!(value(&text, "submitd_messages_accepted_total"), 0.0);
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let server = TestServer::start().await;
    assert_eq!(server.metrics, None);
}
