//! Stored password hashes as mail databases keep them (Dovecot's `passdb`, Postfix/Roundcube
//! admin tools), with or without Dovecot's `{SCHEME}` prefix: argon2 (PHC strings), bcrypt
//! (`{BLF-CRYPT}`), SHA-crypt (`{SHA512-CRYPT}`, `{SHA256-CRYPT}`).
//!
//! Everything else is refused at login, on purpose: plaintext (`{PLAIN}`, `{CLEARTEXT}`) would
//! make the table a list of passwords; unsalted or fast hashes (`{PLAIN-MD5}`, `{SHA}`,
//! `{SSHA512}`, MD5-crypt `$1$`, DES `{CRYPT}`, NTLM…) fall to a GPU in hours once the table
//! leaks. Refusing them shows the operator which rows to re-hash instead of silently keeping
//! them working. Cost parameters beyond what any sane deployment uses are refused too: a
//! single row with bcrypt cost 31 would otherwise hold a CPU for days per login.
//!
//! [`parse`] and [`verify`] are pure; [`verify`] is CPU-heavy and belongs on the blocking pool.

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;

use argon2::password_hash::PasswordHash;
use argon2::{Argon2, PasswordVerifier};

/// bcrypt above this (2^15 rounds, about 2 s on one core) is refused.
pub const MAX_BCRYPT_COST: u32 = 15;
/// SHA-crypt above this many rounds (about 0.5 s for SHA-512) is refused; passlib's default
/// (656,000) stays under it.
pub const MAX_SHA_CRYPT_ROUNDS: u32 = 1_000_000;
/// argon2 memory above this (KiB; 256 MiB) is refused: a few parallel logins would exhaust RAM.
pub const MAX_ARGON2_M_KIB: u32 = 256 * 1024;
/// argon2 memory × passes above this (KiB × t) is refused (64 MiB × 16, 256 MiB × 4).
pub const MAX_ARGON2_WORK: u64 = 1024 * 1024;
/// argon2 lanes above this are refused.
pub const MAX_ARGON2_LANES: u32 = 16;
/// Longer stored values are not a hash of any scheme here.
const MAX_STORED_LEN: usize = 512;

/// A stored value, classified. Holds the hash (never logged: [`fmt::Debug`] hides it).
#[derive(Clone, PartialEq, Eq)]
pub enum Stored {
    /// A PHC string `$argon2id$…`, `$argon2i$…` or `$argon2d$…`.
    Argon2(String),
    /// `$2a$`, `$2b$` or `$2y$` with its cost.
    Bcrypt { hash: String, cost: u32 },
    /// `$5$` or `$6$` with its rounds (5000 when the string names none).
    ShaCrypt { hash: String, rounds: u32 },
    /// A scheme that stores the password itself (`PLAIN`, `CLEARTEXT`, …).
    Plaintext(&'static str),
    /// A scheme known and refused as too weak (see the module doc).
    Weak(&'static str),
    /// A scheme Dovecot knows that submitd does not verify (`PBKDF2`, `SCRAM-SHA-256`, …).
    Unsupported(&'static str),
    /// Not recognisable, or a known scheme whose body is malformed.
    Unknown,
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stored::Argon2(_) => f.write_str("Argon2(..)"),
            Stored::Bcrypt { cost, .. } => write!(f, "Bcrypt {{ cost: {cost} }}"),
            Stored::ShaCrypt { hash, rounds } => {
                write!(f, "ShaCrypt {{ ${}$, rounds: {rounds} }}", &hash[1..2])
            }
            Stored::Plaintext(s) => write!(f, "Plaintext({s})"),
            Stored::Weak(s) => write!(f, "Weak({s})"),
            Stored::Unsupported(s) => write!(f, "Unsupported({s})"),
            Stored::Unknown => f.write_str("Unknown"),
        }
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Yes,
    No,
    /// Not checked: the stored value is one submitd will not use (the login fails).
    Refused(Refusal),
}

/// Why a stored value was not checked. Carries only fixed scheme names, never stored text,
/// so it is safe to log and a once-per-kind log needs bounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Plaintext(&'static str),
    Weak(&'static str),
    Unsupported(&'static str),
    /// The cost parameters exceed the bounds above.
    TooCostly(&'static str),
    Unknown,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Plaintext(s) => write!(
                f,
                "scheme {s} stores the password itself; re-hash with argon2id, BLF-CRYPT or SHA512-CRYPT"
            ),
            Refusal::Weak(s) => write!(
                f,
                "scheme {s} is an unsalted or fast hash; re-hash with argon2id, BLF-CRYPT or SHA512-CRYPT"
            ),
            Refusal::Unsupported(s) => write!(
                f,
                "scheme {s} is not supported; use argon2id, BLF-CRYPT or SHA512-CRYPT"
            ),
            Refusal::TooCostly(s) => write!(
                f,
                "{s} hash with cost parameters above submitd's bounds (bcrypt cost {MAX_BCRYPT_COST}, \
                 {MAX_SHA_CRYPT_ROUNDS} SHA-crypt rounds, argon2 {MAX_ARGON2_M_KIB} KiB)"
            ),
            Refusal::Unknown => f.write_str("stored value is not a hash of a known scheme"),
        }
    }
}

/// What a `{SCHEME}` prefix announces.
enum Prefix {
    Argon2,
    Bcrypt,
    Sha(u8),
    /// `{CRYPT}`: whatever libc's crypt() makes of the body.
    Crypt,
    Plaintext(&'static str),
    Weak(&'static str),
    Unsupported(&'static str),
}

/// Dovecot's scheme names (`doveadm pw -l`), upper case.
const PREFIXES: &[(&str, Prefix)] = &[
    ("ARGON2ID", Prefix::Argon2),
    ("ARGON2I", Prefix::Argon2),
    ("BLF-CRYPT", Prefix::Bcrypt),
    ("SHA512-CRYPT", Prefix::Sha(b'6')),
    ("SHA256-CRYPT", Prefix::Sha(b'5')),
    ("CRYPT", Prefix::Crypt),
    ("PLAIN", Prefix::Plaintext("PLAIN")),
    ("CLEAR", Prefix::Plaintext("CLEAR")),
    ("CLEARTEXT", Prefix::Plaintext("CLEARTEXT")),
    ("PLAIN-TRUNC", Prefix::Plaintext("PLAIN-TRUNC")),
    ("DES-CRYPT", Prefix::Weak("DES-CRYPT")),
    ("MD5-CRYPT", Prefix::Weak("MD5-CRYPT")),
    ("MD5", Prefix::Weak("MD5")),
    ("PLAIN-MD4", Prefix::Weak("PLAIN-MD4")),
    ("PLAIN-MD5", Prefix::Weak("PLAIN-MD5")),
    ("LDAP-MD5", Prefix::Weak("LDAP-MD5")),
    ("SMD5", Prefix::Weak("SMD5")),
    ("SHA", Prefix::Weak("SHA")),
    ("SHA1", Prefix::Weak("SHA1")),
    ("SSHA", Prefix::Weak("SSHA")),
    ("SHA256", Prefix::Weak("SHA256")),
    ("SSHA256", Prefix::Weak("SSHA256")),
    ("SHA512", Prefix::Weak("SHA512")),
    ("SSHA512", Prefix::Weak("SSHA512")),
    ("CRAM-MD5", Prefix::Weak("CRAM-MD5")),
    ("HMAC-MD5", Prefix::Weak("HMAC-MD5")),
    ("DIGEST-MD5", Prefix::Weak("DIGEST-MD5")),
    ("NTLM", Prefix::Weak("NTLM")),
    ("LANMAN", Prefix::Weak("LANMAN")),
    ("RPA", Prefix::Weak("RPA")),
    ("OTP", Prefix::Unsupported("OTP")),
    ("SKEY", Prefix::Unsupported("SKEY")),
    ("PBKDF2", Prefix::Unsupported("PBKDF2")),
    ("SCRAM-SHA-1", Prefix::Unsupported("SCRAM-SHA-1")),
    ("SCRAM-SHA-256", Prefix::Unsupported("SCRAM-SHA-256")),
];

/// Classify a stored value. Never panics, whatever the database holds.
pub fn parse(stored: &str) -> Stored {
    if stored.len() > MAX_STORED_LEN {
        return Stored::Unknown;
    }
    let Some(rest) = stored.strip_prefix('{') else {
        return parse_crypt(stored);
    };
    let Some((name, body)) = rest.split_once('}') else {
        return Stored::Unknown;
    };
    let Some((_, prefix)) = PREFIXES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
        return Stored::Unknown;
    };
    match prefix {
        Prefix::Plaintext(s) => Stored::Plaintext(s),
        Prefix::Weak(s) => Stored::Weak(s),
        Prefix::Unsupported(s) => Stored::Unsupported(s),
        Prefix::Crypt => match parse_crypt(body) {
            Stored::Unknown => Stored::Weak("CRYPT"),
            known => known,
        },
        Prefix::Argon2 => only(parse_crypt(body), |s| matches!(s, Stored::Argon2(_))),
        Prefix::Bcrypt => only(parse_crypt(body), |s| matches!(s, Stored::Bcrypt { .. })),
        Prefix::Sha(id) => only(
            parse_crypt(body),
            |s| matches!(s, Stored::ShaCrypt { hash, .. } if hash.as_bytes()[1] == *id),
        ),
    }
}

/// `parsed` when the prefix announced that kind, else [`Stored::Unknown`].
fn only(parsed: Stored, announced: impl Fn(&Stored) -> bool) -> Stored {
    if announced(&parsed) {
        parsed
    } else {
        Stored::Unknown
    }
}

/// A modular-crypt string (`$id$…`) without a prefix.
fn parse_crypt(s: &str) -> Stored {
    if s.starts_with("$argon2") {
        return match PasswordHash::new(s) {
            Ok(h)
                if ["argon2id", "argon2i", "argon2d"].contains(&h.algorithm.as_str())
                    && h.salt.is_some()
                    && h.hash.is_some() =>
            {
                Stored::Argon2(s.to_owned())
            }
            _ => Stored::Unknown,
        };
    }
    if let Some(rest) = s
        .strip_prefix("$2a$")
        .or_else(|| s.strip_prefix("$2b$"))
        .or_else(|| s.strip_prefix("$2y$"))
    {
        // "$2y$" cost(2 digits) "$" salt+hash (53 characters of bcrypt's base64).
        let cost = rest.get(..2).and_then(|c| c.parse::<u32>().ok());
        let tail_ok = rest.len() == 2 + 1 + 53
            && rest.as_bytes()[2] == b'$'
            && rest[3..].bytes().all(is_crypt64);
        return match cost {
            Some(cost) if tail_ok && rest.as_bytes()[..2].iter().all(u8::is_ascii_digit) => {
                Stored::Bcrypt {
                    hash: s.to_owned(),
                    cost,
                }
            }
            _ => Stored::Unknown,
        };
    }
    if s.starts_with("$5$") || s.starts_with("$6$") {
        return parse_sha_crypt(s);
    }
    if s.starts_with("$1$") {
        return Stored::Weak("MD5-CRYPT");
    }
    Stored::Unknown
}

/// `$5$[rounds=N$]salt$hash` / `$6$…`.
fn parse_sha_crypt(s: &str) -> Stored {
    let mut fields = s[3..].split('$');
    let (mut first, mut rounds) = (fields.next().unwrap_or(""), 5000);
    if let Some(n) = first.strip_prefix("rounds=") {
        match n.parse::<u32>() {
            // glibc writes the clamped value, so a stored string is always in range.
            // "rounds=010000" or "+10000" parse as numbers but glibc never writes them.
            Ok(v) if v >= 1000 && v.to_string() == n => rounds = v,
            _ => return Stored::Unknown,
        }
        first = fields.next().unwrap_or("");
    }
    let salt = first;
    let hash = fields.next().unwrap_or("");
    let want = if s.as_bytes()[1] == b'6' { 86 } else { 43 };
    let ok = !salt.is_empty()
        && salt.len() <= 16
        && salt.bytes().all(is_crypt64)
        && hash.len() == want
        && hash.bytes().all(is_crypt64)
        && fields.next().is_none();
    if ok {
        Stored::ShaCrypt {
            hash: s.to_owned(),
            rounds,
        }
    } else {
        Stored::Unknown
    }
}

/// The `./0-9A-Za-z` alphabet of crypt's base64.
fn is_crypt64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'/'
}

/// Check `password` against `stored`. CPU-heavy (up to the cost bounds): call it from
/// `spawn_blocking`. Constant-time comparison is the underlying crates' (they compare digests
/// with `subtle`-style equality).
pub fn verify(stored: &Stored, password: &str) -> Verified {
    match stored {
        Stored::Argon2(phc) => verify_argon2(phc, password),
        Stored::Bcrypt { hash, cost } => {
            if *cost > MAX_BCRYPT_COST {
                return Verified::Refused(Refusal::TooCostly("bcrypt"));
            }
            // Truncating verify: bcrypt has always ignored bytes past 72, and the stored
            // hashes were made that way.
            match bcrypt::verify(password, hash) {
                Ok(true) => Verified::Yes,
                Ok(false) => Verified::No,
                Err(_) => Verified::Refused(Refusal::Unknown),
            }
        }
        Stored::ShaCrypt { hash, rounds } => {
            if *rounds > MAX_SHA_CRYPT_ROUNDS {
                return Verified::Refused(Refusal::TooCostly("SHA-crypt"));
            }
            use sha_crypt::{PasswordVerifier as _, ShaCrypt};
            let v = if hash.as_bytes()[1] == b'6' {
                ShaCrypt::SHA512
            } else {
                ShaCrypt::SHA256
            };
            match v.verify_password(password.as_bytes(), hash.as_str()) {
                Ok(()) => Verified::Yes,
                Err(sha_crypt::password_hash::Error::PasswordInvalid) => Verified::No,
                Err(_) => Verified::Refused(Refusal::Unknown),
            }
        }
        Stored::Plaintext(s) => Verified::Refused(Refusal::Plaintext(s)),
        Stored::Weak(s) => Verified::Refused(Refusal::Weak(s)),
        Stored::Unsupported(s) => Verified::Refused(Refusal::Unsupported(s)),
        Stored::Unknown => Verified::Refused(Refusal::Unknown),
    }
}

fn verify_argon2(phc: &str, password: &str) -> Verified {
    let Ok(hash) = PasswordHash::new(phc) else {
        return Verified::Refused(Refusal::Unknown);
    };
    let Ok(params) = argon2::Params::try_from(&hash) else {
        return Verified::Refused(Refusal::Unknown);
    };
    let work = u64::from(params.m_cost()) * u64::from(params.t_cost());
    if params.m_cost() > MAX_ARGON2_M_KIB
        || work > MAX_ARGON2_WORK
        || params.p_cost() > MAX_ARGON2_LANES
    {
        return Verified::Refused(Refusal::TooCostly("argon2"));
    }
    match Argon2::default().verify_password(password.as_bytes(), &hash) {
        Ok(()) => Verified::Yes,
        Err(argon2::password_hash::Error::Password) => Verified::No,
        Err(_) => Verified::Refused(Refusal::Unknown),
    }
}

/// Log `refusal` as a warning the first time this process meets it (per scheme and kind),
/// so a table full of `{PLAIN}` rows is one line, not one per login. Returns whether it
/// logged.
pub fn warn_once(refusal: Refusal) -> bool {
    static SEEN: Mutex<Option<HashSet<Refusal>>> = Mutex::new(None);
    let first = {
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        seen.get_or_insert_with(HashSet::new).insert(refusal)
    };
    if first {
        tracing::warn!(
            "login refused: {refusal} (logged once per process; other rows like it fail too)"
        );
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The password of every vector below.
    const PW: &str = "Tr0ub4dor&3";
    // Made with `doveadm pw -s <SCHEME> -p 'Tr0ub4dor&3'` (Dovecot 2.3, Debian).
    const BLF: &str = "{BLF-CRYPT}$2y$05$xkK/Yuqf3zlE3SBtPlrcwu8aMTmTj/RHJaQgjr13Stn0hRDwgwi9C";
    const CRYPT_BLF: &str = "{CRYPT}$2y$05$/8YvCNgy42Mc4s.ZVHiMVeN1jCBTcd8pBFN0oiAMcx8T6Q..D180e";
    const SHA512: &str = "{SHA512-CRYPT}$6$Mpj6EdgLvrNX/I60$gdw3T7EUIkHtM/.iQ8ZqqiMwQ07MLKHvGoi7m0iVbkf.8zPN7953fcG6wC5FV0xs6nwxeCs/kaeiB0AHsZvkj/";
    const SHA512_ROUNDS: &str = "{SHA512-CRYPT}$6$rounds=10000$mtnWuDszrs8v/Fp6$4..s2djinn/P3FCRWluaNuz4huPP0C6tOSYB1aMjUDzAzGMDeUthCf2ap95HFndY1tsxIPEhUy7taKhgTS9Zg.";
    const SHA256: &str =
        "{SHA256-CRYPT}$5$FYKUZGs/UpK.duDH$Ep/80yXmFSHJeZv5zniQfQSGwwjQrwKaoiK35cHPAi9";
    const SHA256_ROUNDS: &str = "{SHA256-CRYPT}$5$rounds=20000$zka9kFSwE60nGlyL$9hAoMN7466pJlzsY40kIFlOzkXhP/srdz5K6/EdTd71";
    const ARGON2ID: &str = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$0KCiwgN/C7qogsW1D5ULIQ$5urBiW7KKWd/wyF7JBD2KpNg2rambpV9PwwLNj7LcZQ";
    const ARGON2I: &str = "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$jKuJUFjnqQXaJB7aMm9U4g$tERF09o8H/Yyuzl5WZRljUgpNLlrUjW4HBsaPGphnyY";

    fn bare(s: &str) -> &str {
        &s[s.find('}').unwrap() + 1..]
    }

    #[test]
    fn known_answers_with_and_without_prefix() {
        for v in [
            BLF,
            CRYPT_BLF,
            SHA512,
            SHA512_ROUNDS,
            SHA256,
            SHA256_ROUNDS,
            ARGON2ID,
            ARGON2I,
        ] {
            for s in [v, bare(v)] {
                let stored = parse(s);
                assert_eq!(verify(&stored, PW), Verified::Yes, "{s}");
                assert_eq!(verify(&stored, "Tr0ub4dor&4"), Verified::No, "{s}");
                assert_eq!(verify(&stored, ""), Verified::No, "{s}");
            }
        }
    }

    #[test]
    fn bcrypt_versions_2a_2b_2y_agree_and_scheme_names_ignore_case() {
        let tail = &bare(BLF)[3..];
        for v in ["$2a", "$2b", "$2y"] {
            let s = format!("{v}{tail}");
            assert_eq!(verify(&parse(&s), PW), Verified::Yes, "{s}");
        }
        let lower = BLF.replace("BLF-CRYPT", "blf-crypt");
        assert_eq!(verify(&parse(&lower), PW), Verified::Yes);
        // $2x$ marks hashes made by a buggy implementation: not accepted.
        assert_eq!(parse(&format!("$2x{tail}")), Stored::Unknown);
    }

    #[test]
    fn parsed_costs() {
        assert!(matches!(parse(BLF), Stored::Bcrypt { cost: 5, .. }));
        assert!(matches!(
            parse(SHA512),
            Stored::ShaCrypt { rounds: 5000, .. }
        ));
        assert!(matches!(
            parse(SHA256_ROUNDS),
            Stored::ShaCrypt { rounds: 20000, .. }
        ));
    }

    #[test]
    fn refused_schemes() {
        let cases = [
            ("{PLAIN}Tr0ub4dor&3", Refusal::Plaintext("PLAIN")),
            ("{CLEARTEXT}Tr0ub4dor&3", Refusal::Plaintext("CLEARTEXT")),
            ("{plain}Tr0ub4dor&3", Refusal::Plaintext("PLAIN")),
            (
                "{PLAIN-MD5}5f4dcc3b5aa765d61d8327deb882cf99",
                Refusal::Weak("PLAIN-MD5"),
            ),
            (
                "{MD5-CRYPT}$1$HJ.aHN3f$BlT.me/OOZxXJyG3CykMj/",
                Refusal::Weak("MD5-CRYPT"),
            ),
            (
                "$1$HJ.aHN3f$BlT.me/OOZxXJyG3CykMj/",
                Refusal::Weak("MD5-CRYPT"),
            ),
            ("{CRYPT}u9tSJMSmnEdw.", Refusal::Weak("CRYPT")),
            ("{DES-CRYPT}u9tSJMSmnEdw.", Refusal::Weak("DES-CRYPT")),
            (
                "{SSHA512}35nrity9mO02hMl7It2fSVGK",
                Refusal::Weak("SSHA512"),
            ),
            ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", Refusal::Weak("SHA")),
            ("{PBKDF2}$1$abc$1000$def", Refusal::Unsupported("PBKDF2")),
            ("Tr0ub4dor&3", Refusal::Unknown),
            ("{NOSUCH}x", Refusal::Unknown),
            ("", Refusal::Unknown),
        ];
        for (s, want) in cases {
            assert_eq!(verify(&parse(s), PW), Verified::Refused(want), "{s}");
        }
    }

    #[test]
    fn a_prefix_must_match_its_body() {
        assert_eq!(
            parse(&format!("{{SHA256-CRYPT}}{}", bare(SHA512))),
            Stored::Unknown
        );
        assert_eq!(
            parse(&format!("{{BLF-CRYPT}}{}", bare(SHA512))),
            Stored::Unknown
        );
        assert_eq!(
            parse(&format!("{{ARGON2ID}}{}", bare(BLF))),
            Stored::Unknown
        );
        // {CRYPT} is libc crypt(): any of the modern bodies.
        assert_eq!(
            verify(&parse(&format!("{{CRYPT}}{}", bare(SHA512))), PW),
            Verified::Yes
        );
    }

    #[test]
    fn absurd_costs_are_refused_before_any_work() {
        let tail = &bare(BLF)[6..];
        let s = format!("$2y$31{tail}");
        assert!(matches!(parse(&s), Stored::Bcrypt { cost: 31, .. }));
        assert_eq!(
            verify(&parse(&s), PW),
            Verified::Refused(Refusal::TooCostly("bcrypt"))
        );
        let s = bare(SHA512_ROUNDS).replace("rounds=10000", "rounds=999999999");
        assert_eq!(
            verify(&parse(&s), PW),
            Verified::Refused(Refusal::TooCostly("SHA-crypt"))
        );
        // Below glibc's minimum, or written in a form glibc never writes.
        for r in ["rounds=999", "rounds=010000", "rounds=+10000", "rounds="] {
            let s = bare(SHA512_ROUNDS).replace("rounds=10000", r);
            assert_eq!(parse(&s), Stored::Unknown, "{r}");
        }
        for params in ["m=4194304,t=1,p=1", "m=262144,t=8,p=1", "m=65536,t=3,p=64"] {
            let s = bare(ARGON2ID).replace("m=65536,t=3,p=1", params);
            assert_eq!(
                verify(&parse(&s), PW),
                Verified::Refused(Refusal::TooCostly("argon2")),
                "{params}"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_unknown() {
        for s in [
            "$6$",
            "$6$salt",
            "$6$salt$short",
            "$6$saltsaltsaltsalt1$gdw3T7EUIkHtM/.iQ8ZqqiMwQ07MLKHvGoi7m0iVbkf.8zPN7953fcG6wC5FV0xs6nwxeCs/kaeiB0AHsZvkj/",
            "$2y$5$xkK/Yuqf3zlE3SBtPlrcwu8aMTmTj/RHJaQgjr13Stn0hRDwgwi9C",
            "$2y$05$xkK/Yuqf3zlE3SBtPlrcwu8aMTmTj/RHJaQgjr13Stn0hRDwgwi9",
            "$argon2id$v=19$m=65536",
            "$argon2x$v=19$m=65536,t=3,p=1$0KCiwgN/C7qogsW1D5ULIQ$5urBiW7KKWd/wyF7JBD2KpNg2rambpV9PwwLNj7LcZQ",
            "{SHA512-CRYPT",
        ] {
            assert_eq!(parse(s), Stored::Unknown, "{s}");
        }
    }

    #[test]
    fn debug_never_shows_the_hash() {
        for s in [BLF, SHA512, ARGON2ID] {
            let shown = format!("{:?}", parse(s));
            assert!(!shown.contains(&bare(s)[8..20]), "{shown}");
        }
    }

    #[test]
    fn warn_once_is_once_per_scheme() {
        assert!(warn_once(Refusal::Unsupported("SKEY")));
        assert!(!warn_once(Refusal::Unsupported("SKEY")));
        assert!(warn_once(Refusal::Unsupported("OTP")));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_near_real_hashes(
            base in prop::sample::select(vec![BLF, SHA512, SHA512_ROUNDS, SHA256, ARGON2ID]),
            cut in 0usize..200,
            junk in "[$={}a-z0-9,./]{0,12}",
        ) {
            let mut s: String = base.chars().take(cut).collect();
            s.push_str(&junk);
            let stored = parse(&s);
            // Cheap kinds only: verifying the argon2 ones would make this slow.
            if !matches!(stored, Stored::Argon2(_)) {
                let _ = verify(&stored, "x");
            }
        }
    }
}
