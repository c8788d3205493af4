//! The policy cache on disk: one small JSON file per policy domain in `queue.dir/mta-sts/`,
//! written atomically (temporary file, fsync, rename, directory fsync) and read back at
//! start, so that a restart keeps every policy until its `max_age` (RFC 8461 section 5.1).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::policy::{MAX_POLICY_BYTES, Policy, parse_policy};

/// The directory under `queue.dir`.
pub const DIR: &str = "mta-sts";
/// At most this many domains are cached (memory and disk); beyond, new policies are used
/// but not kept.
pub const MAX_DOMAINS: usize = 10_000;

/// A fetched policy with what identifies and dates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The TXT record's `id` when it was fetched.
    pub id: String,
    /// Unix seconds of the fetch.
    pub fetched: u64,
    pub policy: Policy,
    /// The body as served (kept for the file and for TLS-RPT's `policy-string`).
    pub text: String,
}

impl Cached {
    /// Still usable at `now` (unix seconds): within `max_age` of the fetch.
    pub fn fresh(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.policy.max_age)
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    id: String,
    fetched: u64,
    policy: String,
}

/// A domain as a file name: lower-case letters, digits, `-` and `.`, not starting with `.`.
pub fn file_name(domain: &str) -> Option<String> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    ok.then(|| domain.to_string())
}

/// Write `entry` for `domain` into `dir` atomically.
pub fn store(dir: &Path, domain: &str, entry: &Cached) -> std::io::Result<()> {
    let Some(name) = file_name(domain) else {
        return Err(std::io::Error::other("domain not usable as a file name"));
    };
    fs::create_dir_all(dir)?;
    let json = serde_json::to_vec(&OnDisk {
        id: entry.id.clone(),
        fetched: entry.fetched,
        policy: entry.text.clone(),
    })
    .map_err(std::io::Error::other)?;
    // Temp file, fsync, rename, directory fsync; a unique temp name, so two stores for one
    // domain never share it.
    crate::fsown::write_atomic(&dir.join(&name), &json)
}

/// Every cached policy in `dir` that is still fresh at `now`; unreadable, malformed and
/// expired files are removed. At most [`MAX_DOMAINS`].
pub fn load(dir: &Path, now: u64) -> Vec<(String, Cached)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if out.len() >= MAX_DOMAINS {
            break;
        }
        let path: PathBuf = entry.path();
        // A temp file `fsown::write_atomic` left behind by a crash.
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp."))
        {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(domain) = entry.file_name().to_str().and_then(file_name) else {
            continue;
        };
        if domain.ends_with(".tmp") {
            let _ = fs::remove_file(&path);
            continue;
        }
        match read_one(&path) {
            Some(c) if c.fresh(now) => out.push((domain, c)),
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    out
}

fn read_one(path: &Path) -> Option<Cached> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 2 * MAX_POLICY_BYTES as u64 + 4096 {
        return None;
    }
    let on: OnDisk = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    let policy = parse_policy(on.policy.as_bytes()).ok()?;
    Some(Cached {
        id: on.id,
        fetched: on.fetched,
        policy,
        text: on.policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_policies_load_back_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(DIR);
        let text = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 100\n";
        let c = Cached {
            id: "abc".into(),
            fetched: 1000,
            policy: parse_policy(text.as_bytes()).unwrap(),
            text: text.into(),
        };
        store(&d, "example.test", &c).unwrap();
        assert!(store(&d, "../evil", &c).is_err());
        fs::write(d.join("junk.test"), b"{not json").unwrap();
        assert_eq!(load(&d, 1050), vec![("example.test".to_string(), c)]);
        assert!(!d.join("junk.test").exists(), "malformed file removed");
        assert_eq!(load(&d, 1100), vec![]);
        assert!(!d.join("example.test").exists(), "expired file removed");
    }
}
