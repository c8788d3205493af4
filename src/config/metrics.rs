//! `[metrics]`: the Prometheus scrape endpoint.

use std::net::SocketAddr;

use serde::Deserialize;

use super::Problems;

/// `[metrics]`: the Prometheus scrape endpoint.
#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    /// Where to serve `GET /metrics` over plain HTTP; `None` (`listen = ""`) turns it off.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    #[serde(default)]
    listen: String,
}

/// Validate `[metrics]`.
pub(super) fn parse(raw: &RawMetrics, p: &mut Problems<'_>) -> Option<MetricsSettings> {
    let listen = match raw.listen.trim() {
        "" => None,
        v => match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                p.push(
                    "metrics.listen",
                    format!(
                        "{v:?} is not an address:port (e.g. \"127.0.0.1:9587\"); \"\" turns metrics off"
                    ),
                );
                return None;
            }
        },
    };
    Some(MetricsSettings { listen })
}
