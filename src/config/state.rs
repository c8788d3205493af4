//! `[state]`: where the abuse-control state lives (login throttles, per-user sending windows,
//! suspensions): in each process (`"local"`) or in a Redis/Valkey store shared by every
//! replica (`"redis"`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::value::duration;
use super::{Context, Problems};

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    pub backend: StateBackend,
    /// `timeout` (default 250ms): the longest one round trip to the store may take; past it
    /// the process falls back to its own counters for that check.
    pub timeout: Duration,
}

/// `state.backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateBackend {
    /// Per-process counters, suspensions in `<queue.dir>/suspended.json` (the default).
    Local,
    /// A Redis or Valkey server: `url` (`redis://`, `rediss://`) inline or in `url_file`.
    Redis { url: StateUrl, prefix: String },
}

/// Where the store's URL is: in the config, or in a file (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateUrl {
    Inline(String),
    File(PathBuf),
}

impl Default for StateSettings {
    fn default() -> StateSettings {
        StateSettings {
            backend: StateBackend::Local,
            timeout: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    backend: Option<String>,
    url: Option<String>,
    url_file: Option<String>,
    prefix: Option<String>,
    timeout: Option<String>,
}

/// Past this a check waits longer than a client's patience for a reply.
const MAX_TIMEOUT: Duration = Duration::from_secs(5);

/// Validate `[state]`.
pub(super) fn parse(
    raw: &RawState,
    p: &mut Problems<'_>,
    cx: &Context<'_>,
) -> Option<StateSettings> {
    let timeout_text = raw.timeout.as_deref().unwrap_or("250ms");
    let timeout = duration(p, "state.timeout", timeout_text).and_then(|d| {
        if d.is_zero() || d > MAX_TIMEOUT {
            p.push(
                "state.timeout",
                format!("{timeout_text:?} must be longer than 0 and at most 5s"),
            );
            return None;
        }
        Some(d)
    });
    let backend = match raw.backend.as_deref().unwrap_or("local") {
        "local" => Some(StateBackend::Local),
        "redis" => redis(raw, p, cx),
        other => {
            p.push(
                "state.backend",
                format!("{other:?} is not one of \"local\", \"redis\""),
            );
            None
        }
    };
    Some(StateSettings {
        backend: backend?,
        timeout: timeout?,
    })
}

fn redis(raw: &RawState, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<StateBackend> {
    let url = match (&raw.url, &raw.url_file) {
        (Some(u), None) => {
            let u = u.trim();
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("redis://") || lower.starts_with("rediss://")) {
                p.push(
                    "state.url",
                    format!("{:?} is not a redis:// or rediss:// url", redact(u)),
                );
                return None;
            }
            Some(StateUrl::Inline(u.to_owned()))
        }
        (None, Some(f)) if !f.trim().is_empty() => Some(StateUrl::File(cx.resolve(f.trim()))),
        (Some(_), Some(_)) => {
            p.push("state.url", "give url or url_file, not both");
            None
        }
        _ => {
            p.push(
                "state.url",
                "required with backend = \"redis\" (or url_file: a file holding the url)",
            );
            None
        }
    };
    let prefix = raw.prefix.as_deref().unwrap_or("submitd");
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !prefix_ok {
        p.push(
            "state.prefix",
            format!("{prefix:?}: 1 to 64 letters, digits, '-', '_', '.', ':'"),
        );
    }
    Some(StateBackend::Redis {
        url: url?,
        prefix: prefix_ok.then(|| prefix.to_owned())?,
    })
}

/// A URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{MINIMAL, assert_error, parse};

    fn with_state(lines: &str) -> String {
        format!("{MINIMAL}\n[state]\n{lines}\n")
    }

    #[test]
    fn local_by_default() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.state, StateSettings::default());
        assert_eq!(s.state.timeout, Duration::from_millis(250));
    }

    #[test]
    fn redis_needs_a_url() {
        let s = parse(&with_state(
            "backend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\ntimeout = \"100ms\"",
        ))
        .unwrap();
        assert_eq!(
            s.state.backend,
            StateBackend::Redis {
                url: StateUrl::Inline("redis://127.0.0.1:6379/0".into()),
                prefix: "submitd".into()
            }
        );
        assert_eq!(s.state.timeout, Duration::from_millis(100));
        let s = parse(&with_state("backend = \"redis\"\nurl_file = \"redis-url\"")).unwrap();
        assert!(matches!(
            s.state.backend,
            StateBackend::Redis {
                url: StateUrl::File(_),
                ..
            }
        ));
        assert_error(&with_state("backend = \"redis\""), "state.url", "required");
        assert_error(
            &with_state("backend = \"redis\"\nurl = \"http://u:secret@x\""),
            "state.url",
            "not a redis://",
        );
        assert_error(
            &with_state("backend = \"memcached\""),
            "state.backend",
            "not one of",
        );
        assert_error(
            &with_state("timeout = \"10s\""),
            "state.timeout",
            "at most 5s",
        );
        assert_error(
            &with_state("backend = \"redis\"\nurl = \"redis://h\"\nprefix = \"a b\""),
            "state.prefix",
            "letters",
        );
    }

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        assert_eq!(
            redact("rediss://:s3cret@cache:6380/0"),
            "rediss://***@cache:6380/0"
        );
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
        let errs = crate::config::testing::errors(&with_state(
            "backend = \"redis\"\nurl = \"http://user:s3cret@cache\"",
        ));
        assert!(errs.iter().all(|(_, m)| !m.contains("s3cret")), "{errs:?}");
    }
}
