//! Queue IDs: 20 uppercase hex digits, the first 14 the microseconds since the Unix epoch
//! (so IDs sort by arrival), the last 6 random. Safe as file names and in logs.

use std::time::{SystemTime, UNIX_EPOCH};

/// A message's queue ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// A fresh ID for a message arriving now.
    pub fn generate() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let random: u32 = rand::random::<u32>() & 0x00ff_ffff;
        QueueId(format!(
            "{:014X}{:06X}",
            micros & 0x00ff_ffff_ffff_ffff,
            random
        ))
    }

    /// Parse an ID given on the command line or found in the queue directory.
    pub fn parse(s: &str) -> Option<QueueId> {
        let ok = s.len() == 20
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        ok.then(|| QueueId(s.to_string()))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert_ne!(a, b);
        assert_eq!(QueueId::parse(a.as_str()), Some(a.clone()));
        assert!(a <= b || a.as_str()[..14] == b.as_str()[..14]);
    }

    #[test]
    fn rejects_paths_and_bad_lengths() {
        assert_eq!(QueueId::parse("../etc/passwd"), None);
        assert_eq!(QueueId::parse("0123456789abcdef0123"), None);
        assert_eq!(QueueId::parse("0123"), None);
    }
}
