//! The queue file loader never panics on any bytes: finding the current record of an `ID.q`
//! (`queue::qfile::find_record`, what start-up, every scan and every attempt run) and parsing
//! it (`queue::Envelope::from_bytes`). What it accepts survives a write/read round trip, and a
//! record appended to any file that has one becomes the current one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd::queue::{Envelope, qfile, spool::FORMAT_VERSION};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_bytes(data) {
        assert_eq!(envelope.version, FORMAT_VERSION);
        let bytes = envelope.to_bytes();
        let again = Envelope::from_bytes(&bytes).expect("a written envelope reads back");
        assert_eq!(again, envelope);
        assert_eq!(again.to_bytes(), bytes, "serialisation is stable");
    }
    // The same bytes as a whole file, and as a file's tail after a valid header.
    let _ = qfile::find_record(data, data.len() as u64);
    let mut file = qfile::header().to_vec();
    file.extend_from_slice(data);
    let found = qfile::find_record(&file[..], file.len() as u64);
    if found.is_ok() {
        let at = file.len() as u64;
        file.extend_from_slice(&qfile::record(at, b"{\"new\":1}"));
        let (_, json) = qfile::find_record(&file[..], file.len() as u64).expect("appended");
        assert_eq!(json, b"{\"new\":1}");
    }
});
