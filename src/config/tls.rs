//! `[tls]`: the server's certificate and key files (loaded by `artefacts` and `tls`, not here).

use std::path::PathBuf;

use serde::Deserialize;

use super::value::required;
use super::{Context, Problems};

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `tls.cert` and `tls.key` are required: no default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

/// Validate `[tls]`: both paths given, resolved against the config file's directory.
pub(super) fn parse(raw: &RawTls, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<TlsFiles> {
    let cert = required(p, cx.bad, "tls.cert", &raw.cert).map(|v| cx.resolve(v));
    let key = required(p, cx.bad, "tls.key", &raw.key).map(|v| cx.resolve(v));
    Some(TlsFiles {
        cert: cert?,
        key: key?,
    })
}
