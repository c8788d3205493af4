//! What TLS-RPT counts between two reports (RFC 8460 section 4): per policy domain, the
//! policies in force (the MTA-STS one, and a `tlsa` one per DANE host), successful and failed
//! sessions under each, and failure details. Kept in `queue.dir/tlsrpt/state.json` (written
//! atomically after each change) so that a restart loses no count. Bounded: [`MAX_DOMAINS`]
//! domains, [`MAX_POLICIES`] policies each, [`MAX_DETAILS`] detail entries per policy
//! (further failures are counted, not detailed), every text cut to [`MAX_TEXT`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::ResultType;

/// The directory under `queue.dir`.
pub const DIR: &str = "tlsrpt";
const FILE: &str = "state.json";
/// Domains counted at once; new domains beyond are not counted until the next report.
pub const MAX_DOMAINS: usize = 1000;
/// Policies per domain (its MTA-STS policy and one `tlsa` policy per DANE MX host);
/// sessions under further policies are not counted until the next report.
pub const MAX_POLICIES: usize = 8;
/// Failure-detail entries per policy.
pub const MAX_DETAILS: usize = 32;
/// Longest stored text (reason, host name, policy line).
pub const MAX_TEXT: usize = 256;
/// Most policy lines kept.
const MAX_POLICY_LINES: usize = 80;
/// The state file is not read when larger than this.
const MAX_FILE: u64 = 16 << 20;

/// The policy a domain's sessions were counted under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `sts`, `tlsa` or `no-policy-found` (RFC 8460 section 4.4).
    pub policy_type: String,
    /// The policy as served, one line per entry (the TLSA records for `tlsa`; empty without
    /// a policy).
    pub policy_string: Vec<String>,
    /// The policy's `mx` patterns (the MX host for `tlsa`).
    pub mx_host: Vec<String>,
}

impl PolicyInfo {
    /// Whether sessions under `other` are counted with this policy's: one `tlsa` policy per
    /// MX host; one MTA-STS slot (`sts` or `no-policy-found`) per domain, the newest policy
    /// text replacing the older.
    fn same_slot(&self, other: &PolicyInfo) -> bool {
        match (self.policy_type == "tlsa", other.policy_type == "tlsa") {
            (true, true) => self.mx_host == other.mx_host,
            (false, false) => true,
            _ => false,
        }
    }
}

/// One failure-detail entry: what failed where, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    pub result_type: ResultType,
    pub receiving_mx_hostname: String,
    pub failure_reason_code: String,
    pub count: u64,
}

/// The counts under one policy of a domain since the last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStats {
    pub policy: PolicyInfo,
    pub success: u64,
    pub failure: u64,
    pub details: Vec<Detail>,
}

/// Everything counted since `since` (unix seconds): per domain, the counts under each of
/// its policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub since: u64,
    pub domains: BTreeMap<String, Vec<DomainStats>>,
}

/// The outcome of one session (or of the policy fetch before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `None`: a successful session.
    pub failure: Option<ResultType>,
    pub mx: String,
    pub reason: String,
}

/// The counts of this process, shared by every delivery.
pub struct Recorder {
    path: PathBuf,
    counts: Mutex<Counts>,
    /// Held while the file is written, so a later snapshot is never overwritten by an
    /// earlier one.
    writer: Mutex<()>,
    /// Counts changed since the last snapshot was taken for writing.
    dirty: AtomicBool,
    /// A background write is running (it writes again while `dirty`).
    writing: AtomicBool,
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Recorder {
    /// Load `queue_dir/tlsrpt/state.json` (blocking; at start). A missing or unreadable file
    /// starts empty.
    pub fn open(queue_dir: &Path, now: u64) -> Recorder {
        let path = queue_dir.join(DIR).join(FILE);
        let counts = fs::metadata(&path)
            .ok()
            .filter(|m| m.len() <= MAX_FILE)
            .and_then(|_| fs::read(&path).ok())
            .and_then(|b| serde_json::from_slice::<Counts>(&b).ok())
            .unwrap_or(Counts {
                since: now,
                domains: BTreeMap::new(),
            });
        Recorder {
            path,
            counts: Mutex::new(counts),
            writer: Mutex::new(()),
            dirty: AtomicBool::new(false),
            writing: AtomicBool::new(false),
        }
    }

    /// Count `sessions` for `domain` under `policy`; the file follows in the background
    /// ([`Recorder::schedule`]): a delivery never waits for it.
    pub async fn record(self: &Arc<Self>, domain: &str, policy: PolicyInfo, sessions: &[Session]) {
        if sessions.is_empty() {
            return;
        }
        {
            let Ok(mut counts) = self.counts.lock() else {
                return;
            };
            if counts.domains.len() >= MAX_DOMAINS && !counts.domains.contains_key(domain) {
                return;
            }
            let policies = counts.domains.entry(domain.to_string()).or_default();
            let slot = match policies.iter().position(|p| p.policy.same_slot(&policy)) {
                Some(i) => i,
                None if policies.len() < MAX_POLICIES => {
                    policies.push(DomainStats::default());
                    policies.len() - 1
                }
                None => return,
            };
            let stats = &mut policies[slot];
            stats.policy = PolicyInfo {
                policy_type: policy.policy_type,
                policy_string: policy
                    .policy_string
                    .iter()
                    .take(MAX_POLICY_LINES)
                    .map(|l| cut(l))
                    .collect(),
                mx_host: policy
                    .mx_host
                    .iter()
                    .take(MAX_POLICY_LINES)
                    .map(|l| cut(l))
                    .collect(),
            };
            for s in sessions {
                add(stats, s);
            }
        }
        self.schedule();
    }

    /// Write the counts soon, off the reactor, coalescing: while a write runs, any number of
    /// changes make one more write after it, not one each (the counts are statistics for a
    /// daily report; what a crash loses is the last moment's, and [`Recorder::flush`] at
    /// shutdown loses nothing).
    fn schedule(self: &Arc<Self>) {
        self.dirty.store(true, Ordering::Release);
        if self.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            loop {
                if me.dirty.swap(false, Ordering::AcqRel) {
                    me.write_now();
                    continue;
                }
                me.writing.store(false, Ordering::Release);
                // A change that came after the swap above but saw `writing` still set would
                // otherwise wait for the next one.
                if !me.dirty.load(Ordering::Acquire) || me.writing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    /// Write the counts now and wait for it, and for a background write still running
    /// (bounded: 10 s), so that nothing of this recorder writes after (shutdown).
    pub async fn flush(self: &Arc<Self>) {
        self.persist().await;
        for _ in 0..2000 {
            if !self.writing.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Everything counted so far, and start counting anew from `now`.
    pub async fn take(self: &Arc<Self>, now: u64) -> Counts {
        let taken = match self.counts.lock() {
            Ok(mut counts) => std::mem::replace(
                &mut *counts,
                Counts {
                    since: now,
                    domains: BTreeMap::new(),
                },
            ),
            Err(_) => Counts::default(),
        };
        self.persist().await;
        taken
    }

    /// Write the current counts atomically and wait for it.
    async fn persist(self: &Arc<Self>) {
        self.dirty.store(false, Ordering::Release);
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.write_now()).await;
    }

    /// Write the current counts atomically (tmp, fsync, rename, directory fsync). Blocks.
    fn write_now(&self) {
        let written = (|| {
            let _one = self
                .writer
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            let bytes = {
                let counts = self
                    .counts
                    .lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?;
                serde_json::to_vec(&*counts).map_err(std::io::Error::other)?
            };
            write_atomically(&self.path, &bytes)
        })();
        if let Err(e) = written {
            tracing::warn!(error = %e, file = %self.path.display(), "cannot store TLS-RPT counts");
        }
    }
}

fn add(stats: &mut DomainStats, s: &Session) {
    let Some(result_type) = s.failure else {
        stats.success = stats.success.saturating_add(1);
        return;
    };
    stats.failure = stats.failure.saturating_add(1);
    let (mx, reason) = (cut(&s.mx), cut(&s.reason));
    if let Some(d) = stats.details.iter_mut().find(|d| {
        d.result_type == result_type
            && d.receiving_mx_hostname == mx
            && d.failure_reason_code == reason
    }) {
        d.count = d.count.saturating_add(1);
    } else if stats.details.len() < MAX_DETAILS {
        stats.details.push(Detail {
            result_type,
            receiving_mx_hostname: mx,
            failure_reason_code: reason,
            count: 1,
        });
    }
}

/// `path` replaced atomically by `bytes` (`fsown::write_atomic`); its directory created when
/// missing.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no directory"))?;
    fs::create_dir_all(dir)?;
    crate::fsown::write_atomic(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(t: ResultType, mx: &str) -> Session {
        Session {
            failure: Some(t),
            mx: mx.into(),
            reason: "r".into(),
        }
    }

    #[tokio::test]
    async fn counts_survive_a_restart_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(Recorder::open(dir.path(), 100));
        let ok = Session {
            failure: None,
            mx: "mx".into(),
            reason: String::new(),
        };
        let info = PolicyInfo {
            policy_type: "sts".into(),
            ..PolicyInfo::default()
        };
        r.record(
            "a.test",
            info.clone(),
            &[ok.clone(), fail(ResultType::CertificateExpired, "mx")],
        )
        .await;
        r.record(
            "a.test",
            info.clone(),
            &[fail(ResultType::CertificateExpired, "mx")],
        )
        .await;
        r.flush().await;
        let again = Arc::new(Recorder::open(dir.path(), 200));
        let counts = again.take(300).await;
        assert_eq!(counts.since, 100);
        let a = &counts.domains["a.test"][0];
        assert_eq!((a.success, a.failure), (1, 2));
        assert_eq!(a.details.len(), 1);
        assert_eq!(a.details[0].count, 2);
        let third = Arc::new(Recorder::open(dir.path(), 400));
        assert!(third.take(500).await.domains.is_empty());

        let many: Vec<Session> = (0..MAX_DETAILS + 5)
            .map(|i| fail(ResultType::ValidationFailure, &format!("mx{i}")))
            .collect();
        r.record("b.test", info, &many).await;
        let b = &r.take(600).await.domains["b.test"][0];
        assert_eq!(b.failure as usize, MAX_DETAILS + 5);
        assert_eq!(b.details.len(), MAX_DETAILS);
    }

    #[tokio::test]
    async fn several_policies_per_domain_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(Recorder::open(dir.path(), 100));
        let tlsa = |mx: &str| PolicyInfo {
            policy_type: "tlsa".into(),
            policy_string: vec!["3 1 1 00".into()],
            mx_host: vec![mx.into()],
        };
        let sts = |line: &str| PolicyInfo {
            policy_type: "sts".into(),
            policy_string: vec![line.into()],
            mx_host: vec!["mx".into()],
        };
        let one = [fail(ResultType::ValidationFailure, "mx")];
        r.record("a.test", sts("mode: testing"), &one).await;
        r.record("a.test", tlsa("mx1"), &one).await;
        r.record("a.test", tlsa("mx1"), &one).await;
        r.record("a.test", sts("mode: enforce"), &one).await;
        for i in 0..MAX_POLICIES + 3 {
            r.record("a.test", tlsa(&format!("m{i}")), &one).await;
        }
        let a = &r.take(200).await.domains["a.test"];
        assert_eq!(a.len(), MAX_POLICIES);
        assert_eq!(a[0].policy, sts("mode: enforce"));
        assert_eq!(a[0].failure, 2);
        assert_eq!((a[1].policy.mx_host[0].as_str(), a[1].failure), ("mx1", 2));
    }
}
