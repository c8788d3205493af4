//! `[auth]`: the users file and the verified-login cache.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::value::{duration, required};
use super::{Context, Problems};

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub users: PathBuf,
    /// How long a verified login is remembered (`cache_ttl`, default 10m); zero = no cache.
    pub cache_ttl: Duration,
}

/// `auth.users` is required: no default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    users: Option<String>,
    /// Default [`DEFAULT_CACHE_TTL`].
    cache_ttl: Option<String>,
}

/// `[auth] cache_ttl` when not given.
const DEFAULT_CACHE_TTL: &str = "10m";
/// Longer than this and a stolen session of memory would hold HMACs for days: refused.
const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Validate `[auth]`.
pub(super) fn parse(raw: &RawAuth, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<AuthSettings> {
    let users = required(p, cx.bad, "auth.users", &raw.users).map(|v| cx.resolve(v));
    let cache_ttl_text = raw.cache_ttl.as_deref().unwrap_or(DEFAULT_CACHE_TTL);
    let cache_ttl = duration(p, "auth.cache_ttl", cache_ttl_text).and_then(|d| {
        if d > MAX_CACHE_TTL {
            p.push(
                "auth.cache_ttl",
                format!("{cache_ttl_text:?} is too long: at most 24h (\"0s\" turns the cache off)"),
            );
            return None;
        }
        Some(d)
    });
    Some(AuthSettings {
        users: users?,
        cache_ttl: cache_ttl?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{MINIMAL, assert_error, parse};

    #[test]
    fn auth_cache_ttl() {
        assert_eq!(
            parse(MINIMAL).unwrap().auth.cache_ttl,
            Duration::from_secs(600)
        );
        let set = |v: &str| format!("{MINIMAL}cache_ttl = \"{v}\"\n");
        assert_eq!(parse(&set("0s")).unwrap().auth.cache_ttl, Duration::ZERO);
        assert_eq!(
            parse(&set("24h")).unwrap().auth.cache_ttl,
            Duration::from_secs(86400)
        );
        assert_error(&set("soon"), "auth.cache_ttl", "not a duration");
        assert_error(&set("25h"), "auth.cache_ttl", "too long: at most 24h");
    }
}
