//! Server memory per idle connection: open N connections to a running submitd, EHLO on each
//! (over implicit TLS on 465, or STARTTLS on 587), hold them, and report how much the server's
//! PSS and RSS grew. Only loopback is meant.
//!
//! ```sh
//! ulimit -n 20000
//! cargo run --release --example idle_conns -- ADDR N tls|starttls CERT.pem SERVER_PID
//! ```
//!
//! The server's certificate must name `localhost`. Prints one JSON line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// PSS and RSS of `pid` in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let field = |path: String, key: &str| -> u64 {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (
        field(format!("/proc/{pid}/smaps_rollup"), "Pss:"),
        field(format!("/proc/{pid}/status"), "VmRSS:"),
    )
}

/// Read until a final reply line (`NNN ` at the start of a line) arrives.
async fn reply<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if text.ends_with("\r\n")
            && text
                .lines()
                .last()
                .is_some_and(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        {
            return Ok(text.into_owned());
        }
    }
}

async fn cmd<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, line: &str) -> std::io::Result<String> {
    s.write_all(format!("{line}\r\n").as_bytes()).await?;
    reply(s).await
}

type Held = Box<dyn std::any::Any + Send>;

async fn open(addr: SocketAddr, starttls: bool, tls: TlsConnector) -> std::io::Result<Held> {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tcp = TcpStream::connect(addr).await?;
    if starttls {
        reply(&mut tcp).await?;
        cmd(&mut tcp, "EHLO idle.test").await?;
        cmd(&mut tcp, "STARTTLS").await?;
    }
    let mut s = tls.connect(name, tcp).await?;
    if !starttls {
        reply(&mut s).await?;
    }
    cmd(&mut s, "EHLO idle.test").await?;
    Ok(Box::new(s))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: idle_conns ADDR N tls|starttls CERT.pem SERVER_PID");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR");
    let n: usize = args[2].parse().expect("N");
    let starttls = args[3] == "starttls";
    let pid: u32 = args[5].parse().expect("PID");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&args[4]).expect("CERT") {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config));

    let before = memory(pid);
    let started = Instant::now();
    let mut held: Vec<Held> = Vec::with_capacity(n);
    let mut failed = 0usize;
    // 64 handshakes in flight at a time: within the listen backlog, quick enough.
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < 64 {
            let tls = tls.clone();
            set.spawn(tokio::time::timeout(
                Duration::from_secs(30),
                open(addr, starttls, tls),
            ));
            next += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(Ok(s)))) => held.push(s),
            _ => failed += 1,
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = memory(pid);
    let per = |a: u64, b: u64| (b as f64 - a as f64) / held.len().max(1) as f64;
    println!(
        "{{\"mode\":\"{}\",\"open\":{},\"failed\":{failed},\"open_secs\":{open_secs:.2},\
         \"pss_before_kib\":{},\"pss_held_kib\":{},\"rss_before_kib\":{},\"rss_held_kib\":{},\
         \"pss_per_conn_kib\":{:.2},\"rss_per_conn_kib\":{:.2}}}",
        args[3],
        held.len(),
        before.0,
        during.0,
        before.1,
        during.1,
        per(before.0, during.0),
        per(before.1, during.1),
    );
    drop(held);
}
