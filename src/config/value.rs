//! Checks shared by the sections: durations, counts, socket addresses, host names, enums.

use std::net::SocketAddr;
use std::time::Duration;

use super::Problems;

/// Whether `name` is a valid domain name for `hostname` (RFC 1035 labels: letters, digits,
/// hyphens; 1-63 octets each, no leading or trailing hyphen; at most 253 octets). A single label
/// (`localhost`) is allowed; an IP address is not.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    if trimmed.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{name:?} is an IP address; a domain name is required"
        ));
    }
    if trimmed.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    for label in trimmed.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a valid domain name (bad label {label:?})"
            ));
        }
    }
    if trimmed
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{name:?} is not a valid domain name (numeric top-level label)"
        ));
    }
    Ok(())
}

pub(super) fn duration(problems: &mut Problems<'_>, key: &str, value: &str) -> Option<Duration> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(
                key,
                format!(
                    "{value:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h\", \"5d\""
                ),
            );
            None
        }
    }
}

/// A duration of at least one second (timeouts: anything shorter cuts off working clients).
pub(super) fn at_least_1s(problems: &mut Problems<'_>, key: &str, value: &str) -> Option<Duration> {
    let d = duration(problems, key, value)?;
    if d < Duration::from_secs(1) {
        problems.push(key, format!("{value:?} is too short: at least 1s"));
        return None;
    }
    Some(d)
}

pub(super) fn positive(
    problems: &mut Problems<'_>,
    key: &str,
    value: i64,
    max: u64,
) -> Option<u64> {
    count_in(problems, key, value, 1, "must be positive", max)
}

/// A count where 0 has a meaning (off, unlimited, automatic).
pub(super) fn non_negative(
    problems: &mut Problems<'_>,
    key: &str,
    value: i64,
    max: u64,
) -> Option<u64> {
    count_in(problems, key, value, 0, "must be 0 or more", max)
}

/// `value` in `min..=max`, or a problem: `too_small` below `min`, "must be at most" above.
fn count_in(
    problems: &mut Problems<'_>,
    key: &str,
    value: i64,
    min: i64,
    too_small: &str,
    max: u64,
) -> Option<u64> {
    if value < min {
        problems.push(key, format!("{too_small}, got {value}"));
        None
    } else if value as u64 > max {
        problems.push(key, format!("must be at most {max}, got {value}"));
        None
    } else {
        Some(value as u64)
    }
}

pub(super) fn addresses(
    problems: &mut Problems<'_>,
    key: &str,
    values: &[String],
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for v in values {
        match v.trim().parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => problems.push(
                key,
                format!("{v:?} is not an address:port (e.g. \"0.0.0.0:587\", \"[::]:587\")"),
            ),
        }
    }
    out
}

pub(super) fn required<'a>(
    problems: &mut Problems<'_>,
    bad: &[String],
    key: &str,
    value: &'a Option<String>,
) -> Option<&'a str> {
    match value.as_deref() {
        Some(v) if !v.trim().is_empty() => Some(v),
        Some(_) => {
            problems.push(key, "must not be empty");
            None
        }
        None if bad.iter().any(|b| b == key) => None,
        None => {
            problems.push(key, "required key is missing");
            None
        }
    }
}

pub(super) fn one_of<T: Copy>(
    problems: &mut Problems<'_>,
    key: &str,
    value: &str,
    allowed: &[(&str, T)],
) -> Option<T> {
    let found = allowed
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v);
    if found.is_none() {
        let names: Vec<String> = allowed.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        problems.push(key, format!("{value:?} is not one of {}", names.join(", ")));
    }
    found
}

/// A duration that must be longer than zero.
pub(super) fn positive_duration(
    problems: &mut Problems<'_>,
    key: &str,
    value: &str,
) -> Option<Duration> {
    let d = duration(problems, key, value)?;
    if d.is_zero() {
        problems.push(key, format!("{value:?} must be longer than 0"));
        return None;
    }
    Some(d)
}
