//! `[limits]`: the bounds on sessions, messages, logins and per-user sending.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;
use super::value::{at_least_1s, duration, non_negative, positive, positive_duration};

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// IPv6 clients are counted per network of this prefix length by `max_connections_per_ip`
    /// and the login throttle (`limits.ipv6_prefix`, default 64, 32..=128).
    pub ipv6_prefix: u8,
    pub command_timeout: Duration,
    pub max_auth_failures: u32,
    /// The sliding window failed AUTHs are counted in (`auth_window`, default 15m).
    pub auth_window: Duration,
    /// Failed AUTHs per client address (IPv6: per /64) in the window; 0 = off (default 20).
    pub auth_failures_per_ip: u32,
    /// Failed AUTHs per login in the window; 0 = off (default 10).
    pub auth_failures_per_login: u32,
    /// argon2 verifications at once; `None` (`auth_parallel = 0`, the default) = CPU cores.
    pub auth_parallel: Option<usize>,
    /// AUTHs that may wait for a verification slot; more get 454 (default 64).
    pub auth_queue: usize,
    /// Per-user sending limits (`user_*`) and `suspend_recipients_per_hour`; 0 = unlimited.
    pub user_limits: SendLimits,
    /// Wait this long before the greeting on 587 (after the handshake on 465); a client that
    /// talks before the greeting gets `554 5.5.0` and is closed (`limits.greet_pause`, default 0).
    pub greet_pause: Duration,
    /// The longest a whole session may last, whatever the client does
    /// (`limits.max_session_time`, default 1h).
    pub max_session_time: Duration,
    /// Protocol errors (5xx replies to bad or out-of-order commands) before `421 4.7.0` and
    /// close (`limits.max_bad_commands`, default 20, like Postfix's `smtpd_hard_error_limit`).
    pub max_bad_commands: u32,
    /// The largest header section (up to the first empty line) of a message
    /// (`limits.max_header_size`, default 262144).
    pub max_header_size: u64,
    /// More `Received:` fields than this and the message is refused with
    /// `554 5.4.6 Too many hops` (`limits.max_hops`, default 50, Postfix's `hopcount_limit`).
    pub max_hops: usize,
}

/// Sending limits; 0 means unlimited (for `suspend_recipients_per_hour`: never suspend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimits {
    pub messages_per_hour: u32,
    pub messages_per_day: u32,
    pub recipients_per_hour: u32,
    pub recipients_per_day: u32,
    pub suspend_recipients_per_hour: u32,
}

impl SendLimits {
    /// The documented `[limits]` defaults.
    pub const DEFAULT: SendLimits = SendLimits {
        messages_per_hour: 500,
        messages_per_day: 2000,
        recipients_per_hour: 2000,
        recipients_per_day: 10_000,
        suspend_recipients_per_hour: 0,
    };

    /// No limit at all.
    pub const UNLIMITED: SendLimits = SendLimits {
        messages_per_hour: 0,
        messages_per_day: 0,
        recipients_per_hour: 0,
        recipients_per_day: 0,
        suspend_recipients_per_hour: 0,
    };
}

/// `limits.ipv6_prefix` when not given.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// The prefix lengths `limits.ipv6_prefix` accepts: shorter than /32 would lump whole
/// providers together; /128 counts every address on its own.
pub const IPV6_PREFIX_RANGE: RangeInclusive<i64> = 32..=128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default = "default_max_message_size")]
    max_message_size: i64,
    #[serde(default = "default_max_recipients")]
    max_recipients: i64,
    #[serde(default = "default_max_connections")]
    max_connections: i64,
    #[serde(default = "default_max_connections_per_ip")]
    max_connections_per_ip: i64,
    #[serde(default = "default_ipv6_prefix")]
    ipv6_prefix: i64,
    #[serde(default = "default_command_timeout")]
    command_timeout: String,
    #[serde(default = "default_max_auth_failures")]
    max_auth_failures: i64,
    #[serde(default = "default_auth_window")]
    auth_window: String,
    #[serde(default = "default_auth_failures_per_ip")]
    auth_failures_per_ip: i64,
    #[serde(default = "default_auth_failures_per_login")]
    auth_failures_per_login: i64,
    #[serde(default)]
    auth_parallel: i64,
    #[serde(default = "default_auth_queue")]
    auth_queue: i64,
    #[serde(default = "default_user_messages_per_hour")]
    user_messages_per_hour: i64,
    #[serde(default = "default_user_messages_per_day")]
    user_messages_per_day: i64,
    #[serde(default = "default_user_recipients_per_hour")]
    user_recipients_per_hour: i64,
    #[serde(default = "default_user_recipients_per_day")]
    user_recipients_per_day: i64,
    #[serde(default)]
    suspend_recipients_per_hour: i64,
    #[serde(default = "default_greet_pause")]
    greet_pause: String,
    #[serde(default = "default_max_session_time")]
    max_session_time: String,
    #[serde(default = "default_max_bad_commands")]
    max_bad_commands: i64,
    #[serde(default = "default_max_header_size")]
    max_header_size: i64,
    #[serde(default = "default_max_hops")]
    max_hops: i64,
}

fn default_max_message_size() -> i64 {
    26_214_400
}
fn default_max_recipients() -> i64 {
    100
}
fn default_max_connections() -> i64 {
    1024
}
fn default_max_connections_per_ip() -> i64 {
    32
}
fn default_ipv6_prefix() -> i64 {
    i64::from(DEFAULT_IPV6_PREFIX)
}
fn default_command_timeout() -> String {
    "5m".into()
}
fn default_max_auth_failures() -> i64 {
    3
}
fn default_auth_window() -> String {
    "15m".into()
}
fn default_auth_failures_per_ip() -> i64 {
    20
}
fn default_auth_failures_per_login() -> i64 {
    10
}
fn default_auth_queue() -> i64 {
    64
}
fn default_user_messages_per_hour() -> i64 {
    SendLimits::DEFAULT.messages_per_hour as i64
}
fn default_user_messages_per_day() -> i64 {
    SendLimits::DEFAULT.messages_per_day as i64
}
fn default_user_recipients_per_hour() -> i64 {
    SendLimits::DEFAULT.recipients_per_hour as i64
}
fn default_user_recipients_per_day() -> i64 {
    SendLimits::DEFAULT.recipients_per_day as i64
}
fn default_greet_pause() -> String {
    "0s".into()
}
fn default_max_session_time() -> String {
    "1h".into()
}
fn default_max_bad_commands() -> i64 {
    20
}
fn default_max_header_size() -> i64 {
    262_144
}
fn default_max_hops() -> i64 {
    50
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            ipv6_prefix: default_ipv6_prefix(),
            command_timeout: default_command_timeout(),
            max_auth_failures: default_max_auth_failures(),
            auth_window: default_auth_window(),
            auth_failures_per_ip: default_auth_failures_per_ip(),
            auth_failures_per_login: default_auth_failures_per_login(),
            auth_parallel: 0,
            auth_queue: default_auth_queue(),
            user_messages_per_hour: default_user_messages_per_hour(),
            user_messages_per_day: default_user_messages_per_day(),
            user_recipients_per_hour: default_user_recipients_per_hour(),
            user_recipients_per_day: default_user_recipients_per_day(),
            suspend_recipients_per_hour: 0,
            greet_pause: default_greet_pause(),
            max_session_time: default_max_session_time(),
            max_bad_commands: default_max_bad_commands(),
            max_header_size: default_max_header_size(),
            max_hops: default_max_hops(),
        }
    }
}

/// Validate `[limits]`.
pub(super) fn parse(l: &RawLimits, p: &mut Problems<'_>) -> Option<Limits> {
    let max_message_size = positive(p, "limits.max_message_size", l.max_message_size, u64::MAX);
    let max_recipients = positive(
        p,
        "limits.max_recipients",
        l.max_recipients,
        usize::MAX as u64,
    );
    let max_connections = positive(
        p,
        "limits.max_connections",
        l.max_connections,
        usize::MAX as u64,
    );
    let max_connections_per_ip = positive(
        p,
        "limits.max_connections_per_ip",
        l.max_connections_per_ip,
        usize::MAX as u64,
    );
    let ipv6_prefix = ipv6_prefix(l.ipv6_prefix, p);
    let command_timeout = at_least_1s(p, "limits.command_timeout", &l.command_timeout);
    let max_auth_failures = positive(
        p,
        "limits.max_auth_failures",
        l.max_auth_failures,
        u32::MAX as u64,
    );
    // A pause longer than a minute would only hold connection slots; Postfix's postscreen
    // waits 6s.
    let greet_pause = duration(p, "limits.greet_pause", &l.greet_pause).filter(|d| {
        let ok = *d <= Duration::from_secs(60);
        if !ok {
            p.push(
                "limits.greet_pause",
                format!("{:?} is too long: at most 1m", l.greet_pause),
            );
        }
        ok
    });
    let max_session_time = at_least_1s(p, "limits.max_session_time", &l.max_session_time);
    let max_bad_commands = positive(
        p,
        "limits.max_bad_commands",
        l.max_bad_commands,
        u32::MAX as u64,
    );
    let max_header_size = positive(p, "limits.max_header_size", l.max_header_size, u64::MAX);
    let max_hops = positive(p, "limits.max_hops", l.max_hops, 10_000);

    let auth_window = positive_duration(p, "limits.auth_window", &l.auth_window);
    let mut count = |key: &str, value: i64| {
        non_negative(p, &format!("limits.{key}"), value, u32::MAX as u64).map(|v| v as u32)
    };
    let auth_failures_per_ip = count("auth_failures_per_ip", l.auth_failures_per_ip);
    let auth_failures_per_login = count("auth_failures_per_login", l.auth_failures_per_login);
    let auth_parallel = count("auth_parallel", l.auth_parallel);
    let auth_queue = count("auth_queue", l.auth_queue);
    let user_limits = (|| {
        Some(SendLimits {
            messages_per_hour: count("user_messages_per_hour", l.user_messages_per_hour)?,
            messages_per_day: count("user_messages_per_day", l.user_messages_per_day)?,
            recipients_per_hour: count("user_recipients_per_hour", l.user_recipients_per_hour)?,
            recipients_per_day: count("user_recipients_per_day", l.user_recipients_per_day)?,
            suspend_recipients_per_hour: count(
                "suspend_recipients_per_hour",
                l.suspend_recipients_per_hour,
            )?,
        })
    })();

    Some(Limits {
        max_message_size: max_message_size?,
        max_recipients: max_recipients? as usize,
        max_connections: max_connections? as usize,
        max_connections_per_ip: max_connections_per_ip? as usize,
        ipv6_prefix: ipv6_prefix?,
        command_timeout: command_timeout?,
        max_auth_failures: max_auth_failures? as u32,
        auth_window: auth_window?,
        auth_failures_per_ip: auth_failures_per_ip?,
        auth_failures_per_login: auth_failures_per_login?,
        auth_parallel: match auth_parallel? {
            0 => None,
            n => Some(n as usize),
        },
        auth_queue: auth_queue? as usize,
        user_limits: user_limits?,
        greet_pause: greet_pause?,
        max_session_time: max_session_time?,
        max_bad_commands: max_bad_commands? as u32,
        max_header_size: max_header_size?,
        max_hops: max_hops? as usize,
    })
}

/// `limits.ipv6_prefix`, within [`IPV6_PREFIX_RANGE`].
fn ipv6_prefix(value: i64, p: &mut Problems<'_>) -> Option<u8> {
    let range = IPV6_PREFIX_RANGE;
    if range.contains(&value) {
        return Some(value as u8);
    }
    p.push(
        "limits.ipv6_prefix",
        format!(
            "must be a prefix length from {} to {}, got {value}",
            range.start(),
            range.end(),
        ),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{MINIMAL, assert_error, parse, with};

    #[test]
    fn abuse_limits_can_be_set_and_zero_means_off() {
        let s = parse(&with(
            "[limits]\nauth_window = \"1h\"\nauth_failures_per_ip = 0\n\
             auth_failures_per_login = 3\nauth_parallel = 2\nauth_queue = 0\n\
             user_messages_per_hour = 0\nuser_messages_per_day = 7\n\
             user_recipients_per_hour = 8\nuser_recipients_per_day = 9\n\
             suspend_recipients_per_hour = 100",
        ))
        .unwrap();
        let l = &s.limits;
        assert_eq!(l.auth_window, Duration::from_secs(3600));
        assert_eq!((l.auth_failures_per_ip, l.auth_failures_per_login), (0, 3));
        assert_eq!((l.auth_parallel, l.auth_queue), (Some(2), 0));
        let u = l.user_limits;
        assert_eq!(
            (
                u.messages_per_hour,
                u.messages_per_day,
                u.recipients_per_hour
            ),
            (0, 7, 8)
        );
        assert_eq!(
            (u.recipients_per_day, u.suspend_recipients_per_hour),
            (9, 100)
        );
        for key in [
            "auth_failures_per_ip",
            "auth_queue",
            "user_messages_per_hour",
            "suspend_recipients_per_hour",
        ] {
            assert_error(
                &with(&format!("[limits]\n{key} = -1")),
                &format!("limits.{key}"),
                "0 or more",
            );
        }
        assert_error(
            &with("[limits]\nauth_window = \"0s\""),
            "limits.auth_window",
            "longer than 0",
        );
        assert_error(
            &with("[limits]\nauth_parallel = 5000000000"),
            "limits.auth_parallel",
            "at most",
        );
    }

    #[test]
    fn ipv6_prefix_defaults_to_64_and_is_range_checked() {
        assert_eq!(parse(MINIMAL).unwrap().limits.ipv6_prefix, 64);
        for ok in [32, 48, 128] {
            let s = parse(&with(&format!("[limits]\nipv6_prefix = {ok}"))).unwrap();
            assert_eq!(s.limits.ipv6_prefix, ok as u8);
        }
        for bad in [0, 31, 129, -64] {
            assert_error(
                &with(&format!("[limits]\nipv6_prefix = {bad}")),
                "limits.ipv6_prefix",
                "from 32 to 128",
            );
        }
    }

    #[test]
    fn limits_must_be_positive() {
        for key in [
            "max_message_size",
            "max_recipients",
            "max_connections",
            "max_connections_per_ip",
            "max_auth_failures",
            "max_bad_commands",
            "max_header_size",
            "max_hops",
        ] {
            assert_error(
                &with(&format!("[limits]\n{key} = 0")),
                &format!("limits.{key}"),
                "positive",
            );
            assert_error(
                &with(&format!("[limits]\n{key} = -3")),
                &format!("limits.{key}"),
                "positive",
            );
        }
        assert_error(
            &with("[limits]\nmax_auth_failures = 5000000000"),
            "limits.max_auth_failures",
            "at most",
        );
    }
}
