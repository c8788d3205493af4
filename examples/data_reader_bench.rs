//! Throughput of the DATA and BDAT readers on a 5 MB body, the streaming ones against the
//! whole-message readers they replaced (kept as the test model, `src/session/data_model.rs`),
//! same process, same input: a text-like body of 76-octet lines with a dot-stuffed line now
//! and then, fed in 64 KiB reads as the driver does.
//!
//! ```sh
//! cargo run --release --example data_reader_bench -- [MB] [ROUNDS]
//! ```

#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use submitd::session::data::{BdatAccumulator, BodyLimits, DataReader};
// The model refers to `super::BodyError`.
use submitd::session::data::BodyError;

#[path = "../src/session/data_model.rs"]
mod model;

/// What the driver reads at a time.
const READ: usize = 64 * 1024;

fn body(mb: usize) -> Vec<u8> {
    let mut wire = b"From: alice@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    let mut n = 0u32;
    while wire.len() < mb * 1_000_000 {
        n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        if n.is_multiple_of(97) {
            wire.push(b'.');
        }
        // Base64-like text, as an attachment is.
        wire.extend((0..76).map(|i| b'A' + ((n >> (i % 24)) as u8 % 26)));
        wire.extend_from_slice(b"\r\n");
    }
    wire
}

/// The best of `rounds` runs of `f`, in MB/s of wire octets.
fn best(rounds: usize, octets: usize, mut f: impl FnMut()) -> f64 {
    let mut fastest = Duration::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        f();
        fastest = fastest.min(start.elapsed());
    }
    octets as f64 / 1e6 / fastest.as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mb: usize = args.next().map_or(5, |a| a.parse().expect("MB"));
    let rounds: usize = args.next().map_or(20, |a| a.parse().expect("ROUNDS"));
    let mut data = body(mb);
    let bdat = data.clone();
    data.extend_from_slice(b".\r\n");
    let max = u64::MAX;
    let limits = BodyLimits::new(max, 256 * 1024);

    let old_data = best(rounds, data.len(), || {
        let mut reader = model::DataReader::new(max);
        for read in data.chunks(READ) {
            black_box(reader.feed(read));
        }
    });
    let new_data = best(rounds, data.len(), || {
        let mut reader = DataReader::new(limits);
        let mut piece = Vec::new();
        let mut spooled = 0usize;
        for mut read in data.chunks(READ) {
            while !read.is_empty() {
                let (n, done) = reader.feed(read, &mut piece);
                read = &read[n..];
                // What the driver does with a full piece: write it out, reuse the buffer.
                if n == 0 || done.is_some() || piece.len() >= limits.piece_size {
                    spooled += black_box(&piece).len();
                    piece.clear();
                }
                if done.is_some() {
                    break;
                }
            }
        }
        black_box(spooled);
    });
    let old_bdat = best(rounds, bdat.len(), || {
        let mut acc = model::BdatAccumulator::new(max);
        for read in bdat.chunks(READ) {
            acc.push(read);
        }
        black_box(acc.finish().map(|m| m.len()).ok());
    });
    let new_bdat = best(rounds, bdat.len(), || {
        let mut acc = BdatAccumulator::new(limits);
        let mut piece = Vec::new();
        for mut read in bdat.chunks(READ) {
            while !read.is_empty() {
                let n = acc.push(read, &mut piece);
                read = &read[n..];
                if piece.len() >= limits.piece_size {
                    black_box(&piece);
                    piece.clear();
                }
            }
        }
        black_box(acc.finish(&mut piece).is_ok());
    });
    println!(
        "{} MB body, best of {rounds} rounds, MB/s of wire octets",
        data.len() / 1_000_000
    );
    println!("reader | whole message (before) | streaming (after)");
    println!("DATA   | {old_data:>22.0} | {new_data:>17.0}");
    println!("BDAT   | {old_bdat:>22.0} | {new_bdat:>17.0}");
}
