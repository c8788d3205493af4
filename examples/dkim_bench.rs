//! DKIM body hashing throughput: the streaming canonicalizer (`dkim::CanonicalHasher`,
//! relaxed and simple, fed 64 KiB chunks as a session would) against mail-auth 0.13's
//! one-shot canonicalization of the whole body (what signing used before), and whole-message
//! signing through `DkimSigner::sign` (Ed25519; the one-chunk streaming path) against
//! mail-auth's own signer. Prints MB/s, best of ROUNDS.
//!
//! ```sh
//! cargo run --release --example dkim_bench -- [SIZE_MB] [ROUNDS]
//! ```
//!
//! The body mixes base64 lines (an attachment: no whitespace) with prose (a space every few
//! bytes, some double spaces and trailing whitespace), about 9 to 1 by size.

use std::time::Instant;

use mail_auth::common::crypto::{Ed25519Key, HashContext as _, HashImpl as _, Sha256};
use mail_auth::common::headers::{HeaderWriter as _, Writable as _};
use mail_auth::dkim::{Canonicalization, DkimSigner as MailAuthSigner};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use submitd::dkim::{Algorithm, CanonicalHasher, DkimConfig, DkimSigner};

const CHUNK: usize = 64 * 1024;

fn body(size: usize) -> Vec<u8> {
    let prose: &[u8] = b"Dear Bob,  please find the report attached. \t\r\nRegards,\r\n  \r\n";
    let base64: &[u8] =
        b"TG9yZW0gaXBzdW0gZG9sb3Igc2l0IGFtZXQsIGNvbnNlY3RldHVyIGFkaXBpc2NpbmcgZWxpdA==\r\n";
    let mut out = Vec::with_capacity(size + 128);
    while out.len() < size {
        out.extend_from_slice(prose);
        for _ in 0..9 {
            out.extend_from_slice(base64);
        }
    }
    out
}

/// Best MB/s of `rounds` runs of `f` over `bytes` bytes.
fn best(bytes: usize, rounds: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            f();
            bytes as f64 / 1e6 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size_mb: usize = args.next().map_or(5, |a| a.parse().expect("SIZE_MB"));
    let rounds: usize = args.next().map_or(20, |a| a.parse().expect("ROUNDS"));
    let body = body(size_mb * 1_000_000);
    let headers = b"From: alice@example.test\r\nTo: bob@example.net\r\nSubject: report\r\n\
        Date: Tue, 24 Nov 2026 13:31:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n";
    let message = [&headers[..], &body].concat();
    println!("body {} bytes, {} rounds, best of", body.len(), rounds);

    for c in [Canonicalization::Relaxed, Canonicalization::Simple] {
        let streamed = best(body.len(), rounds, || {
            let mut hasher = CanonicalHasher::new(c);
            for chunk in body.chunks(CHUNK) {
                hasher.update(chunk);
            }
            std::hint::black_box(hasher.finish());
        });
        let one_shot = best(body.len(), rounds, || {
            let mut hasher = Sha256::hasher();
            c.canonical_body(&body, 0).write(&mut hasher);
            std::hint::black_box(hasher.complete());
        });
        println!(
            "body hash {c:?}: streamed {streamed:.0} MB/s, mail-auth one-shot {one_shot:.0} MB/s"
        );
    }
    let sha = best(body.len(), rounds, || {
        std::hint::black_box(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body));
    });
    println!("plain SHA-256 of the raw body: {sha:.0} MB/s");

    let dir = tempfile::tempdir().expect("temp dir");
    let key = submitd::dkim::generate(Algorithm::Ed25519, 0).expect("key");
    let path = submitd::dkim::write_key(dir.path(), "example.test", "s", &key.pem).expect("write");
    let signer = DkimSigner::load(&[DkimConfig {
        domain: "example.test".into(),
        selector: "s".into(),
        key: path,
        headers: submitd::dkim::DEFAULT_HEADERS
            .iter()
            .map(|h| h.to_string())
            .collect(),
    }])
    .expect("load");
    let ours = best(message.len(), rounds, || {
        std::hint::black_box(signer.sign(&message, "example.test").expect("sign"));
    });
    let der = PrivateKeyDer::from_pem_slice(key.pem.as_bytes()).expect("pem");
    let ed = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_der()).expect("key");
    let theirs = MailAuthSigner::from_key(ed)
        .domain("example.test")
        .selector("s")
        .headers(["from", "to", "subject", "date", "message-id", "from"]);
    let old = best(message.len(), rounds, || {
        let signature = theirs.sign(&message).expect("sign");
        std::hint::black_box(signature.to_header());
    });
    println!(
        "whole message, Ed25519 relaxed: DkimSigner::sign {ours:.0} MB/s, mail-auth {old:.0} MB/s"
    );
}
