//! Queue IDs: 20 uppercase hex digits, the first 14 the microseconds since the Unix epoch
//! (so IDs sort by arrival), the last 6 random. Safe as file names and in logs.

/// A message's queue ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// A fresh ID for a message arriving now.
    pub fn generate() -> QueueId {
        let micros = crate::clock::unix_micros();
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

    /// The ID as a number (its 20 hex digits are 80 bits), ordered like the text: a compact,
    /// copyable key for tables holding every queued message.
    pub fn to_bits(&self) -> u128 {
        // `parse` and `generate` admit only 20 hex digits, which always fit.
        u128::from_str_radix(&self.0, 16).unwrap_or(0)
    }

    /// The ID whose [`QueueId::to_bits`] is `bits` (bits above the 80th are dropped).
    pub fn from_bits(bits: u128) -> QueueId {
        QueueId(format!("{:020X}", bits & ((1u128 << 80) - 1)))
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
    fn bits_round_trip_and_keep_the_order() {
        let a = QueueId::parse("0000000000000100000F").unwrap();
        let b = QueueId::parse("FFFFFFFFFFFFFFFFFFFF").unwrap();
        let c = QueueId::generate();
        for id in [&a, &b, &c] {
            assert_eq!(QueueId::from_bits(id.to_bits()), *id);
        }
        assert!(a.to_bits() < b.to_bits());
        assert_eq!(a.to_bits(), 0x100000F);
    }

    #[test]
    fn rejects_paths_and_bad_lengths() {
        assert_eq!(QueueId::parse("../etc/passwd"), None);
        assert_eq!(QueueId::parse("0123456789abcdef0123"), None);
        assert_eq!(QueueId::parse("0123"), None);
    }
}
