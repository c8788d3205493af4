//! PEM files to a rustls server config (TLS 1.2 and 1.3 only), and self-signed certificates for
//! development (`submitd cert self-signed`).

use std::path::Path;
use std::sync::Arc;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Other(String),
}

/// Load a PEM chain and a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) into a server config
/// that speaks TLS 1.2 and 1.3 only.
pub fn load_server_config(_cert: &Path, _key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    todo!("tls helper")
}

/// A self-signed certificate and its PKCS#8 key, both PEM, with `hostname` in the SAN.
pub fn self_signed(_hostname: &str) -> Result<(String, String), TlsError> {
    todo!("tls helper")
}

/// Write `cert.pem` and `key.pem` (mode 0600) for `hostname` into `dir`, creating `dir`.
pub fn write_self_signed(_hostname: &str, _dir: &Path) -> Result<(), TlsError> {
    todo!("tls helper")
}
