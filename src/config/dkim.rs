//! `[[dkim]]`: signing keys, one entry per domain and selector (the keys are read by
//! `artefacts` and `dkim`, not here).

use std::path::PathBuf;

use serde::Deserialize;

use super::value::check_hostname;
use super::{Context, Problems};

/// The headers signed when an entry names none (RFC 6376 section 5.4.1's list, plus the
/// identity and MIME headers and the one-click unsubscribe pair of RFC 8058), lowercase.
pub const DEFAULT_HEADERS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
];

/// One `[[dkim]]` entry, validated here (domain and selector lowercase ASCII, `key`
/// resolved against the config file's directory, `headers` lowercase and holding `from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimConfig {
    pub domain: String,
    pub selector: String,
    /// PEM private key: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8).
    pub key: PathBuf,
    pub headers: Vec<String>,
}

/// One `[[dkim]]` entry: `domain`, `selector` and `key` are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDkim {
    domain: Option<String>,
    selector: Option<String>,
    key: Option<String>,
    /// Default [`DEFAULT_HEADERS`].
    headers: Option<Vec<String>>,
}

/// A DKIM selector (RFC 6376 section 3.1): dot-separated labels of letters, digits and hyphens.
pub fn check_selector(selector: &str) -> Result<(), String> {
    let ok = !selector.is_empty()
        && selector.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{selector:?} is not a valid selector (letters, digits, hyphens; dot-separated labels)"
        ))
    }
}

/// Validate the `[[dkim]]` entries (keys are read by `artefacts::check_files`). Entries are
/// named `dkim[N]`, counting from 0 in file order.
pub(super) fn parse(raw: &[RawDkim], p: &mut Problems<'_>, cx: &Context<'_>) -> Vec<DkimConfig> {
    let mut out: Vec<DkimConfig> = Vec::new();
    let mut seen: Vec<(String, String, usize)> = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        let key = |field: &str| format!("dkim[{i}].{field}");
        let mut ok = true;
        let mut field = |p: &mut Problems<'_>, name: &str, value: &Option<String>| match value
            .as_deref()
            .map(str::trim)
        {
            Some(v) if !v.is_empty() => Some(v.to_string()),
            Some(_) => {
                p.push(key(name), "must not be empty");
                ok = false;
                None
            }
            None => {
                p.push(key(name), "required key is missing");
                ok = false;
                None
            }
        };
        let domain = field(p, "domain", &d.domain)
            .map(|v| v.strip_suffix('.').unwrap_or(&v).to_ascii_lowercase());
        let selector = field(p, "selector", &d.selector).map(|v| v.to_ascii_lowercase());
        let key_path = field(p, "key", &d.key).map(|v| cx.resolve(&v));
        if let Some(domain) = &domain
            && let Err(e) = check_hostname(domain)
        {
            p.push(key("domain"), e);
            ok = false;
        }
        if let Some(selector) = &selector
            && let Err(e) = check_selector(selector)
        {
            p.push(key("selector"), e);
            ok = false;
        }
        if let (Some(domain), Some(selector)) = (&domain, &selector) {
            if let Some((_, _, first)) = seen.iter().find(|(d, s, _)| d == domain && s == selector)
            {
                p.push(
                    key("selector"),
                    format!(
                        "{selector}._domainkey.{domain} is already configured by dkim[{first}]"
                    ),
                );
                ok = false;
            } else {
                seen.push((domain.clone(), selector.clone(), i));
            }
        }
        let headers: Vec<String> = match &d.headers {
            None => DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
            Some(list) => list.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
        };
        // RFC 5322 field names: printable ASCII but the colon.
        if let Some(bad) = headers
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| (33..=126).contains(&b) && b != b':'))
        {
            p.push(
                key("headers"),
                format!("{bad:?} is not a header field name"),
            );
            ok = false;
        }
        if !headers.iter().any(|h| h == "from") {
            p.push(
                key("headers"),
                "must include \"from\" (RFC 6376 section 5.4: From is always signed)",
            );
            ok = false;
        }
        if headers.iter().any(|h| h == "dkim-signature") {
            p.push(key("headers"), "\"dkim-signature\" cannot be signed");
            ok = false;
        }
        if let (true, Some(domain), Some(selector), Some(key_path)) =
            (ok, domain, selector, key_path)
        {
            out.push(DkimConfig {
                domain,
                selector,
                key: key_path,
                headers,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigErrors, Settings};
    use std::path::Path;

    const MINIMAL: &str = "hostname = \"mail.example.test\"\n[tls]\ncert = \"c.pem\"\n\
                           key = \"k.pem\"\n[auth]\nusers = \"u.toml\"\n";

    fn parse(extra: &str) -> Result<Settings, ConfigErrors> {
        Settings::from_toml(
            &format!("{MINIMAL}{extra}"),
            Path::new("/etc/submitd/submitd.toml"),
        )
    }

    fn errors(extra: &str) -> Vec<(String, String)> {
        let e = parse(extra).expect_err("should be rejected");
        e.0.into_iter().map(|e| (e.key, e.message)).collect()
    }

    fn has(errs: &[(String, String)], key: &str, needle: &str) -> bool {
        errs.iter().any(|(k, m)| k == key && m.contains(needle))
    }

    #[test]
    fn entries_defaults_and_paths() {
        let s = parse("").unwrap();
        assert!(s.dkim.is_empty());
        let s = parse(
            "[[dkim]]\ndomain = \"Example.TEST\"\nselector = \"s2026\"\nkey = \"dkim/k.pem\"\n\
             [[dkim]]\ndomain = \"example.test\"\nselector = \"ed\"\nkey = \"/keys/ed.pem\"\n\
             headers = [\"From\", \"Subject\"]\n",
        )
        .unwrap();
        assert_eq!(s.dkim.len(), 2);
        assert_eq!(s.dkim[0].domain, "example.test");
        assert_eq!(s.dkim[0].key, Path::new("/etc/submitd/dkim/k.pem"));
        assert_eq!(s.dkim[0].headers.len(), DEFAULT_HEADERS.len());
        assert_eq!(s.dkim[1].key, Path::new("/keys/ed.pem"));
        assert_eq!(s.dkim[1].headers, ["from", "subject"]);
    }

    #[test]
    fn bad_entries_name_the_key() {
        let errs = errors("[[dkim]]\nselector = \"s\"\nkey = \"\"\n");
        assert!(
            has(&errs, "dkim[0].domain", "required key is missing"),
            "{errs:?}"
        );
        assert!(has(&errs, "dkim[0].key", "must not be empty"), "{errs:?}");
        let errs = errors(
            "[[dkim]]\ndomain = \"bad_domain\"\nselector = \"-s\"\nkey = \"k\"\n\
             headers = [\"subject\", \"x:y\"]\n",
        );
        assert!(
            has(&errs, "dkim[0].domain", "not a valid domain"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "dkim[0].selector", "not a valid selector"),
            "{errs:?}"
        );
        assert!(has(&errs, "dkim[0].headers", "\"x:y\""), "{errs:?}");
        assert!(
            has(&errs, "dkim[0].headers", "must include \"from\""),
            "{errs:?}"
        );
        let errs = errors(
            "[[dkim]]\ndomain = \"example.test\"\nselector = \"s\"\nkey = \"a\"\n\
             [[dkim]]\ndomain = \"EXAMPLE.test\"\nselector = \"S\"\nkey = \"b\"\n",
        );
        assert!(
            has(&errs, "dkim[1].selector", "already configured by dkim[0]"),
            "{errs:?}"
        );
        let errs = errors(
            "[[dkim]]\ndomain = \"example.test\"\nselector = \"s\"\nkey = \"a\"\nkeyfile = \"x\"\n",
        );
        assert!(has(&errs, "dkim[0].keyfile", "unknown key"), "{errs:?}");
    }
}
