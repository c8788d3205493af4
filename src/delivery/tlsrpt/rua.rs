//! The `_smtp._tls` TXT record (RFC 8460 section 3), parsed without IO: where reports go.
//! Strict and bounded; fuzzed (`fuzz/fuzz_targets/mta_sts.rs`).

/// At most this many report destinations are used.
pub const MAX_RUA: usize = 4;
const MAX_RECORD: usize = 2048;

/// One report destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:local@domain`: a report message through our queue.
    Mailto(String),
    /// `https://host[:port]/path`: a POST.
    Https {
        host: String,
        port: u16,
        path: String,
    },
}

/// The one `v=TLSRPTv1` record among `records` (each the concatenation of its strings) and
/// its destinations; `None` when there is none, more than one, or it is malformed, or it
/// names no destination we can use.
pub fn parse_record(records: &[Vec<u8>]) -> Option<Vec<Rua>> {
    let mut found = records.iter().filter(|r| r.starts_with(b"v=TLSRPTv1"));
    let record = found.next()?;
    if found.next().is_some() || record.len() > MAX_RECORD {
        return None;
    }
    let text = std::str::from_utf8(record).ok()?;
    let mut fields = text.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next()? != "v=TLSRPTv1" {
        return None;
    }
    let mut rua = None;
    for field in fields {
        if field.is_empty() {
            continue; // a trailing ';'
        }
        let (name, value) = field.split_once('=')?;
        let name = name.trim_matches([' ', '\t']);
        if name == "rua" {
            if rua.is_some() {
                return None;
            }
            let uris: Option<Vec<Rua>> = value
                .split(',')
                .map(|u| parse_uri(u.trim_matches([' ', '\t'])))
                .collect();
            rua = Some(uris?);
        } else if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
    }
    let mut rua = rua?;
    rua.truncate(MAX_RUA);
    (!rua.is_empty()).then_some(rua)
}

/// `mailto:addr` or `https://host[:port]/path`; anything else refused.
fn parse_uri(uri: &str) -> Option<Rua> {
    if let Some(addr) = uri.strip_prefix("mailto:") {
        let (local, domain) = addr.rsplit_once('@')?;
        let ok_local = !local.is_empty()
            && local.len() <= 64
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&'*+-/=^_`{|}~.".contains(&b));
        return (ok_local && is_host(domain)).then(|| Rua::Mailto(format!("{local}@{domain}")));
    }
    let rest = uri.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => (authority, 443),
    };
    let ok_path = path.len() <= 512 && path.bytes().all(|b| (0x21..=0x7e).contains(&b));
    (is_host(host) && ok_path).then(|| Rua::Https {
        host: host.to_ascii_lowercase(),
        port,
        path: path.to_string(),
    })
}

fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Option<Vec<Rua>> {
        let records: Vec<Vec<u8>> = list.iter().map(|r| r.as_bytes().to_vec()).collect();
        parse_record(&records)
    }

    #[test]
    fn records() {
        assert_eq!(
            parse(&["v=TLSRPTv1; rua=mailto:reports@example.test"]),
            Some(vec![Rua::Mailto("reports@example.test".into())])
        );
        assert_eq!(
            parse(&[
                "other",
                "v=TLSRPTv1;rua=mailto:a@b.test, https://rpt.b.test:8443/v1/tlsrpt;"
            ]),
            Some(vec![
                Rua::Mailto("a@b.test".into()),
                Rua::Https {
                    host: "rpt.b.test".into(),
                    port: 8443,
                    path: "/v1/tlsrpt".into()
                }
            ])
        );
        for bad in [
            "v=TLSRPTv1;",
            "v=TLSRPTv1; rua=",
            "v=TLSRPTv1; rua=http://x.test/",
            "v=TLSRPTv1; rua=mailto:@x.test",
            "v=TLSRPTv1; rua=mailto:a@b.test; rua=mailto:c@d.test",
            "v=TLSRPTv1; rua=https://x.test:0/",
            "v=TLSRPTv1; rua=mailto:a b@c.test",
            "v=TLSRPTv10; rua=mailto:a@b.test",
        ] {
            assert_eq!(parse(&[bad]), None, "{bad}");
        }
        assert_eq!(
            parse(&[
                "v=TLSRPTv1; rua=mailto:a@b.test",
                "v=TLSRPTv1; rua=mailto:c@d.test"
            ]),
            None,
            "two records: none"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut record = b"v=TLSRPTv1;".to_vec();
            record.extend_from_slice(&bytes);
            let _ = parse_record(&[record, bytes]);
        }
    }
}
