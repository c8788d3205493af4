//! PEM files to a rustls server config (TLS 1.2 and 1.3 only), and self-signed certificates for
//! development (`submitd cert self-signed`).
//!
//! PEM goes through rustls-pki-types's [`PemObject`] (rustls-pemfile is archived,
//! RUSTSEC-2025-0134); it accepts PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// TLS 1.2 sessions remembered by ID for clients without ticket support (about 100 bytes each).
const SESSION_CACHE_SIZE: usize = 1024;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl TlsError {
    fn file(path: &Path, message: impl Into<String>) -> TlsError {
        TlsError::File {
            path: path.display().to_string(),
            message: message.into(),
        }
    }

    /// The file this error is about, when it is about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            TlsError::File { path, .. } => Some(path),
            TlsError::Other(_) => None,
        }
    }
}

/// The crypto provider every TLS config of submitd uses (aws-lc-rs), chosen explicitly so
/// that a second provider in the dependency tree cannot make the process-wide default ambiguous.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The provider of the server config: [`provider`] with the SHA-256 cipher suites ahead of the
/// SHA-384 ones, chosen over the client's order. AES-128-GCM is as safe a choice, and SHA-256
/// has CPU instructions (SHA-NI, ARMv8) where SHA-512/384 mostly does not: with SHA-384 the
/// handshake's transcript hash and key schedule cost about a tenth of a full handshake's
/// server CPU, as much as the X25519 key exchange.
fn server_provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites
        .sort_by_key(|s| format!("{:?}", s.suite()).ends_with("_SHA384"));
    Arc::new(p)
}

fn pem_problem(path: &Path, what: &str, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(io) => TlsError::file(path, format!("cannot read {what}: {io}")),
        pem::Error::NoItemsFound => TlsError::file(path, format!("no {what} found in PEM file")),
        other => TlsError::file(path, format!("bad PEM ({what}): {other}")),
    }
}

/// Read a PEM certificate chain (end-entity first). An empty chain is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_problem(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::file(
            path,
            "no certificate found in PEM file (empty chain)",
        ));
    }
    Ok(certs)
}

/// Read a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) and check that the crypto provider
/// can sign with it.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::file(
            path,
            "no private key found in PEM file (expected PKCS#8, PKCS#1 RSA or SEC1 EC)",
        ),
        other => pem_problem(path, "private key", other),
    })?;
    provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::file(path, format!("unusable private key: {e}")))?;
    Ok(key)
}

/// Load a PEM chain and a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) into a server config
/// that speaks TLS 1.2 and 1.3 only.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Other(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::file(
                    key,
                    format!(
                        "private key does not match the certificate in {}",
                        cert.display()
                    ),
                )
            }
            rustls::Error::InvalidCertificate(e) => {
                TlsError::file(cert, format!("invalid certificate: {e}"))
            }
            other => TlsError::file(key, format!("cannot use certificate and key: {other}")),
        })?;
    config.ignore_client_order = true;
    // SMTP has no ALPN protocol id; offering none means we ignore whatever a client sends.
    config.alpn_protocols = Vec::new();
    // Resumption skips the certificate signature and, for TLS 1.2, the key exchange: it helps
    // clients that reconnect per message (phones, scripts). Stateless tickets (keys rotated
    // by the ticketer) serve TLS 1.3 and TLS 1.2 clients that support them; a bounded
    // session-ID cache serves the other TLS 1.2 clients.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| TlsError::Other(format!("TLS session ticketer: {e}")))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    // One TLS 1.3 ticket per connection: a client that reconnects once per message uses one
    // and gets the next with the new connection. rustls's default of 2 costs a second ticket's
    // encryption and bytes on every handshake for clients that mostly never use it.
    config.send_tls13_tickets = 1;
    // On 465 the greeting goes out with the server's handshake flight (see
    // `session::driver::serve_submissions`). Nothing is sent before the client's Finished that
    // a client without a certificate would not get anyway; clients are not authenticated by
    // TLS here.
    config.send_half_rtt_data = true;
    Ok(Arc::new(config))
}

/// Whether `hostname` names this machine's loopback, so the dev certificate should also cover
/// `localhost`, `127.0.0.1` and `::1`.
fn is_localhost(hostname: &str) -> bool {
    let h = hostname.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost") || h == "127.0.0.1" || h == "::1"
}

/// A self-signed certificate and its PKCS#8 key, both PEM, with `hostname` in the SAN.
///
/// ECDSA P-256, valid from yesterday for ten years (a dev certificate that silently expired
/// would be a confusing failure).
pub fn self_signed(hostname: &str) -> Result<(String, String), TlsError> {
    let mut names = vec![hostname.to_string()];
    if is_localhost(hostname) {
        for extra in ["localhost", "127.0.0.1", "::1"] {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(extra)) {
                names.push(extra.to_string());
            }
        }
    }
    let bad =
        |e: rcgen::Error| TlsError::Other(format!("self-signed certificate for {hostname}: {e}"));
    let mut params = rcgen::CertificateParams::new(names).map_err(bad)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, hostname);
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Write `contents` to `path` with `mode`: a temp file beside it, then a rename, so a reader
/// never sees half a key and the key is never briefly world-readable.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` above is filtered by the umask and ignored for an existing file: set it exactly.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TlsError::file(path, format!("cannot write: {e}"))
    })
}

/// Write a self-signed certificate (mode 0644) and its key (mode 0600) for `hostname` to exactly
/// these paths, creating their parent directories.
pub fn write_self_signed_to(hostname: &str, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let (cert_pem, key_pem) = self_signed(hostname)?;
    for p in [cert, key] {
        if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| TlsError::file(parent, format!("cannot create directory: {e}")))?;
        }
    }
    write_file(key, &key_pem, 0o600)?;
    write_file(cert, &cert_pem, 0o644)
}

/// Write `cert.pem` and `key.pem` (mode 0600) for `hostname` into `dir`, creating `dir`.
/// Existing files are replaced.
pub fn write_self_signed(hostname: &str, dir: &Path) -> Result<(), TlsError> {
    write_self_signed_to(hostname, &dir.join("cert.pem"), &dir.join("key.pem"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("certs/testdata")
            .join(name)
    }

    fn san_dns_names(cert_pem: &str) -> Vec<String> {
        // Cheap SAN check without an X.509 parser: the DNS names appear verbatim in the DER.
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        ["localhost", "mail.example.test"]
            .iter()
            .filter(|n| der.as_ref().windows(n.len()).any(|w| w == n.as_bytes()))
            .map(|n| n.to_string())
            .collect()
    }

    #[test]
    fn generated_pair_loads_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sub/certs");
        write_self_signed("mail.example.test", &out).unwrap();
        let cert = out.join("cert.pem");
        let key = out.join("key.pem");
        let key_text = std::fs::read_to_string(&key).unwrap();
        assert!(
            key_text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8 expected"
        );
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let config = load_server_config(&cert, &key).unwrap();
        assert!(config.alpn_protocols.is_empty());
        assert_eq!(
            san_dns_names(&std::fs::read_to_string(&cert).unwrap()),
            vec!["mail.example.test"]
        );
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    }

    #[test]
    fn localhost_cert_covers_loopback() {
        let (cert, _) = self_signed("localhost").unwrap();
        assert_eq!(san_dns_names(&cert), vec!["localhost"]);
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert!(
            der.as_ref().windows(4).any(|w| w == [127, 0, 0, 1]),
            "127.0.0.1 SAN expected"
        );
    }

    #[test]
    fn rsa_pkcs1_and_ec_sec1_keys_load() {
        load_server_config(&testdata("rsa.cert.pem"), &testdata("rsa-pkcs1.key.pem")).unwrap();
        load_server_config(&testdata("ec.cert.pem"), &testdata("ec-sec1.key.pem")).unwrap();
    }

    #[test]
    fn mismatched_key_names_key_file() {
        let err = load_server_config(&testdata("rsa.cert.pem"), &testdata("ec-sec1.key.pem"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ec-sec1.key.pem") && msg.contains("does not match"),
            "{msg}"
        );
    }

    #[test]
    fn missing_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = load_server_config(&missing, &testdata("ec-sec1.key.pem")).unwrap_err();
        assert_eq!(err.path(), Some(missing.display().to_string().as_str()));
        assert!(err.to_string().contains("cannot read"), "{err}");
        let err = load_server_config(&testdata("ec.cert.pem"), &missing).unwrap_err();
        assert_eq!(err.path(), Some(missing.display().to_string().as_str()));
    }

    #[test]
    fn garbage_and_swapped_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "this is not PEM\n").unwrap();
        let err = load_server_config(&garbage, &testdata("ec-sec1.key.pem")).unwrap_err();
        assert!(
            err.to_string().contains("garbage.pem") && err.to_string().contains("empty chain"),
            "{err}"
        );
        let err = load_server_config(&testdata("ec.cert.pem"), &garbage).unwrap_err();
        assert!(
            err.to_string().contains("garbage.pem") && err.to_string().contains("no private key"),
            "{err}"
        );
        // A certificate where the key should be: no key in it.
        let err = load_key(&testdata("ec.cert.pem")).unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
        // A key where the chain should be: empty chain.
        let err = load_certs(&testdata("ec-sec1.key.pem")).unwrap_err();
        assert!(err.to_string().contains("empty chain"), "{err}");
        // Valid PEM armour around bytes that are not a key.
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = load_key(&broken).unwrap_err();
        assert!(err.to_string().contains("broken.pem"), "{err}");
    }
}

/// A client config that trusts exactly the certificates in `pem_certs` (tests that talk to a
/// server started with a self-signed certificate).
pub fn client_config_trusting(pem_certs: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem_certs) {
        let cert = cert.map_err(|e| TlsError::Other(format!("bad PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Other(format!("unusable certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client config that accepts any server certificate but still checks the handshake
/// signatures, so the handshake does the work a real client's does. For talking to our own
/// server (`submitd health`, the `submitd-bench` load generator on loopback) and for
/// opportunistic STARTTLS to MX hosts (`delivery::tls::unverified`, RFC 7435).
pub fn any_certificate_client_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth()
}

/// See [`any_certificate_client_config`].
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
