use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn window(len_ms: u64, buckets: u32) -> Window {
    Window {
        len: Duration::from_millis(len_ms),
        buckets,
    }
}

/// The scripts' `idiv` in doubles, as Lua 5.1 computes it.
fn lua_idiv(a: f64, b: f64) -> f64 {
    let mut q = (a / b).floor();
    if q * b > a {
        q -= 1.0;
    } else if (q + 1.0) * b <= a {
        q += 1.0;
    }
    q
}

/// The scripts' `bucket` in doubles.
fn lua_bucket(t: u64, len: u64, n: u32) -> f64 {
    let (t, len, n) = (t as f64, len as f64, f64::from(n));
    let q = lua_idiv(t, len);
    q * n + lua_idiv((t - q * len) * n, len)
}

/// The first time at which a count made in step `b` no longer counts.
fn leaves_at(b: u64, w: Window) -> u64 {
    let (len, n) = (w.len.as_millis() as u64, u64::from(w.buckets));
    // Smallest t with floor(t * n / len) >= b + n.
    ((b + n) * len).div_ceil(n)
}

/// Up to the year 3200 in ms: far past any clock this runs under.
const FAR: u64 = 40_000_000_000_000;

proptest! {
    #[test]
    fn the_scripts_arithmetic_is_the_exact_rule(
        now in 0..=FAR,
        len in MIN_WINDOW_MS..=MAX_WINDOW_MS,
        n in 1..=MAX_BUCKETS,
    ) {
        let lua = lua_bucket(now, len, n);
        prop_assert!(lua < 9_007_199_254_740_992.0, "past 2^53: {lua}");
        prop_assert_eq!(lua as u64, bucket_of(now, window(len, n)));
    }

    #[test]
    fn a_count_leaves_when_its_step_does(
        t in 0..=FAR,
        len in MIN_WINDOW_MS..=MAX_WINDOW_MS,
        n in 1..=MAX_BUCKETS,
    ) {
        let w = window(len, n);
        let b = bucket_of(t, w);
        let leave = leaves_at(b, w);
        prop_assert!(live_range(t, w).contains(&b));
        prop_assert!(live_range(leave - 1, w).contains(&b));
        prop_assert!(!live_range(leave, w).contains(&b));
        // Counted for the window less at most one step, never past the key's PEXPIRE.
        let step = len.div_ceil(u64::from(n));
        prop_assert!(leave - t > len - step, "{} <= {len} - {step}", leave - t);
        prop_assert!(leave - t <= len + step + 1);
    }

    #[test]
    fn counts_stay_between_zero_and_the_cap(
        ops in proptest::collection::vec((any::<bool>(), any::<u64>()), 1..200),
    ) {
        // The scripts' `put` and `take_back` on one field, with the arguments `script` sends.
        let mut field = 0u64;
        for (add, amount) in ops {
            let amount = amount.min(MAX_COUNT) as f64;
            let cur = field as f64;
            let next = if add { (cur + amount).min(MAX_COUNT as f64) } else { (cur - amount).max(0.0) };
            prop_assert!(next >= 0.0 && next <= MAX_COUNT as f64 && next.fract() == 0.0);
            field = next as u64;
        }
        prop_assert!(field <= MAX_COUNT);
    }
}

#[test]
fn hour_boundaries() {
    let hour = 3_600_000u64;
    // 2024-12-31 23:59:59.999 UTC and the hours around it.
    let t = 1_735_689_600_000 - 1;
    let by_minute = window(hour, 60);
    let b = bucket_of(t, by_minute);
    assert_eq!(leaves_at(b, by_minute), t + 1 + 59 * 60_000);
    assert!(live_range(t + 59 * 60_000, by_minute).contains(&b));
    assert!(!live_range(t + 1 + 59 * 60_000, by_minute).contains(&b));
    // One bucket: the count is gone the moment the hour turns... and an hour's worth later.
    let whole = window(hour, 1);
    let b = bucket_of(t, whole);
    assert!(live_range(t, whole).contains(&b));
    assert!(!live_range(t + 1, whole).contains(&b));
    // A day by the hour, across the day boundary.
    let day = window(24 * hour, 24);
    let b = bucket_of(t, day);
    assert!(live_range(t + 23 * hour, day).contains(&b));
    assert!(!live_range(t + 1 + 23 * hour, day).contains(&b));
}

#[test]
fn windows_outside_the_range_are_refused() {
    assert!(window_args(window(999, 1)).is_err());
    assert!(window_args(window(1000, 0)).is_err());
    assert!(window_args(window(1000, 3601)).is_err());
    assert!(window_args(window(MAX_WINDOW_MS + 1, 60)).is_err());
    assert_eq!(window_args(window(3_600_000, 60)).unwrap(), (3_600_000, 60));
    let huge = Window {
        len: Duration::MAX,
        buckets: 1,
    };
    assert!(window_args(huge).is_err());
}

#[test]
fn keys_are_bounded_and_distinct() {
    assert_eq!(
        encode_key("throttle:ip:203.0.113.0/24"),
        "t:throttle:ip:203.0.113.0/24"
    );
    assert_eq!(
        encode_key("quota:alice@x:messages_hour"),
        "t:quota:alice@x:messages_hour"
    );
    let odd = [
        "throttle:login:al ice",
        "a\r\nDEL x",
        "é",
        &"a".repeat(201),
        "",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for k in odd {
        let e = encode_key(k);
        if !k.is_empty() {
            assert!(e.starts_with("h:") && e.len() == 66, "{k:?} -> {e}");
        }
        assert!(seen.insert(e));
    }
    // A text key cannot pose as a hashed one.
    assert!(encode_key("h:00").starts_with("t:h:"));
    assert!(encode_key(&"a".repeat(200)).starts_with("t:"));
}

#[test]
fn passwords_are_found_and_scrubbed() {
    assert_eq!(password_of("redis://:pw@127.0.0.1:1/0"), vec!["pw"]);
    assert_eq!(
        password_of("rediss://user:p%40ss@h:1"),
        vec!["p%40ss", "p@ss"]
    );
    assert!(password_of("redis://h:6379/0").is_empty());
    assert!(password_of("redis://user@h").is_empty());
    let mut text = "auth p@ss failed".to_string();
    scrub(&mut text, &password_of("rediss://user:p%40ss@h:1"));
    assert_eq!(text, "auth *** failed");
}

#[test]
fn a_ca_file_comes_out_of_the_url() {
    assert_eq!(
        split_ca_file("rediss://h:1/0?ca_file=/etc/ca%20x.pem&protocol=resp2").unwrap(),
        (
            "rediss://h:1/0?protocol=resp2".into(),
            Some("/etc/ca x.pem".into())
        )
    );
    assert_eq!(
        split_ca_file("rediss://h:1").unwrap(),
        ("rediss://h:1".into(), None)
    );
    assert!(split_ca_file("rediss://h?ca_file=a&ca_file=b").is_err());
    let err = Store::new(
        "redis://:hunter2@h:1?ca_file=/nonexistent",
        "p",
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = Store::new(
        "rediss://:hunter2@h:1?ca_file=/nonexistent",
        "p",
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unreachable(t) if t.contains("/nonexistent") && !t.contains("hunter2")),
        "{err}"
    );
}

#[test]
fn new_does_not_connect_and_does_not_show_the_password() {
    // Nothing listens on port 1: `new` succeeds because it does not try.
    let store = Store::new(
        "redis://:hunter2@127.0.0.1:1/0",
        "submitd",
        Duration::from_secs(1),
    )
    .unwrap();
    let shown = format!("{store:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("127.0.0.1:1"),
        "{shown}"
    );
    assert!(Store::new("redis://h", "a b", Duration::from_secs(1)).is_err());
    assert!(Store::new("http://h", "p", Duration::from_secs(1)).is_err());
}

#[test]
fn damaged_suspensions_are_skipped() {
    let good = br#"{"since":1,"reason":"spam"}"#;
    assert_eq!(
        parse_suspension(b"alice@x", good),
        Some((
            "alice@x".into(),
            StoredSuspension {
                since: 1,
                reason: "spam".into()
            }
        ))
    );
    assert_eq!(parse_suspension(b"alice@x", b"{not json"), None);
    assert_eq!(parse_suspension(b"\xff", good), None);
    assert_eq!(parse_suspension(&[b'a'; 2000], good), None);
}
