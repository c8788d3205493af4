//! TLS toward the next hop: the rustls client configs, built once, and which certificates
//! each accepts. The one place where verification is chosen (DANE and MTA-STS verifiers
//! belong here too):
//!
//! - the smarthost ([`smarthost`]): verified against the system roots (honouring
//!   `SSL_CERT_FILE` and `SSL_CERT_DIR`) plus `relay.ca_file`, for the smarthost's name;
//! - MX hosts ([`unverified`]): any certificate (RFC 7435 opportunistic security: nothing
//!   tells us which certificate an MX should have), the handshake signatures still checked;
//!   the MX name goes out as SNI only ([`mx_server_name`]);
//! - MX hosts with `relay.tls = "verify"` ([`verify_mx`]): the smarthost's roots, for the MX
//!   host name;
//! - DANE hosts: [`super::dane::client_config`], the certificate matched against the host's
//!   authenticated TLSA records.
//! - HTTPS for MTA-STS and TLS-RPT, and MX hosts under an MTA-STS policy ([`WebPki`]):
//!   WebPKI with the same roots as the smarthost, the verdict recorded for TLS-RPT.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::mx::Target;

/// A config that verifies the next hop's certificate for `name`.
#[derive(Clone)]
pub struct Verified {
    pub config: Arc<ClientConfig>,
    /// The name the certificate must be valid for (and the SNI).
    pub name: ServerName<'static>,
}

/// Verified TLS toward the smarthost `host`: the system roots plus `ca_file`'s
/// certificates. Built once: loading the system roots is slow. `Err` names what is wrong.
pub fn smarthost(host: &str, ca_file: Option<&Path>) -> Result<Verified, String> {
    let roots = roots(ca_file)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("relay.smarthost {host}: not a name TLS can verify: {e}"))?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for relay.smarthost {host}: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Verified {
        config: Arc::new(config),
        name,
    })
}

/// `relay.tls = "verify"`: one config for every MX host, verifying against the system roots
/// plus `ca_file`; the name checked is the MX host's ([`mx_server_name`]), set per target.
pub fn verify_mx(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let roots = roots(ca_file)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for relay.tls = \"verify\": {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The system roots (rustls-native-certs honours SSL_CERT_FILE and SSL_CERT_DIR) plus
/// `ca_file`'s certificates. Unreadable system roots are not fatal: ca_file may be all that
/// is needed.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let bad = |e: &dyn std::fmt::Display| format!("relay.ca_file: {}: {e}", path.display());
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no PEM certificate in it"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(&e))?;
        }
    }
    Ok(roots)
}

/// WebPKI verification (system roots plus `relay.ca_file`), loaded once: for MTA-STS policy
/// fetches, TLS-RPT uploads, and MX hosts under an MTA-STS policy (RFC 8461 section 4.2).
#[derive(Clone)]
pub struct WebPki {
    verifier: Arc<WebPkiServerVerifier>,
    config: Arc<ClientConfig>,
}

impl WebPki {
    /// Load the roots. `Err` names what is wrong.
    pub fn new(ca_file: Option<&Path>) -> Result<WebPki, String> {
        let roots = Arc::new(roots(ca_file)?);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| format!("WebPKI verifier: {e}"))?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("WebPKI client: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Ok(WebPki {
            verifier,
            config: Arc::new(config),
        })
    }

    /// A config that refuses any certificate WebPKI does not accept (HTTPS).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// A config for one delivery attempt under an MTA-STS policy: every handshake's WebPKI
    /// verdict is written to the returned [`Judge`]; with `enforce` a bad certificate fails
    /// the handshake, without (`testing`) it is only recorded. A fresh config per attempt:
    /// no session resumption skips the verdict.
    pub fn judged(&self, enforce: bool) -> Result<(Arc<ClientConfig>, Judge), String> {
        let judge = Judge::default();
        let verifier = Judging {
            inner: self.verifier.clone(),
            enforce,
            judge: judge.clone(),
        };
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("WebPKI client: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok((Arc::new(config), judge))
    }
}

/// Why WebPKI refused a certificate, in RFC 8460 section 4.3 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertProblem {
    /// `certificate-host-mismatch`
    HostMismatch,
    /// `certificate-expired`
    Expired,
    /// `certificate-not-trusted`
    NotTrusted,
    /// `validation-failure`
    Other,
}

impl CertProblem {
    fn of(e: &rustls::Error) -> CertProblem {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::NotValidForName | C::NotValidForNameContext { .. } => CertProblem::HostMismatch,
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet => CertProblem::Expired,
                C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => {
                    CertProblem::NotTrusted
                }
                _ => CertProblem::Other,
            },
            _ => CertProblem::Other,
        }
    }
}

/// Most verdicts one [`Judge`] keeps (one per handshake; an attempt tries a few hosts).
const MAX_VERDICTS: usize = 16;

/// One handshake's verdict: the server name, and the refusal if any.
pub type Verdict = (String, Option<CertProblem>);

/// The WebPKI verdicts of one delivery attempt.
#[derive(Clone, Default, Debug)]
pub struct Judge(Arc<Mutex<Vec<Verdict>>>);

impl Judge {
    /// Every verdict so far, in handshake order.
    pub fn verdicts(&self) -> Vec<Verdict> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn record(&self, name: String, problem: Option<CertProblem>) {
        if let Ok(mut v) = self.0.lock()
            && v.len() < MAX_VERDICTS
        {
            v.push((name, problem));
        }
    }
}

/// WebPKI with its verdict recorded ([`WebPki::judged`]).
#[derive(Debug)]
struct Judging {
    inner: Arc<WebPkiServerVerifier>,
    enforce: bool,
    judge: Judge,
}

impl ServerCertVerifier for Judging {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let name = server_name.to_str().into_owned();
        self.judge
            .record(name, verdict.as_ref().err().map(CertProblem::of));
        match verdict {
            Err(e) if self.enforce => Err(e),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// TLS toward MX hosts: any certificate is accepted, the handshake signatures are checked
/// (see the module doc). One config for every MX, so sessions resume per host name.
pub fn unverified() -> Arc<ClientConfig> {
    Arc::new(crate::tls::any_certificate_client_config())
}

/// The SNI for an MX target: its name, or its address for an address literal (`[192.0.2.1]`)
/// or a name rustls cannot send.
pub fn mx_server_name(target: &Target) -> ServerName<'static> {
    let ip = ServerName::IpAddress(target.addr.ip().into());
    if target.name.starts_with('[') || target.name.parse::<IpAddr>().is_ok() {
        return ip;
    }
    let name = target.name.trim_end_matches('.');
    ServerName::try_from(name.to_string()).unwrap_or(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> Target {
        Target {
            name: name.into(),
            addr: "192.0.2.7:25".parse().unwrap(),
        }
    }

    #[test]
    fn mx_names() {
        let dns = |s: &str| ServerName::try_from(s.to_string()).unwrap();
        let ip = ServerName::IpAddress("192.0.2.7".parse::<IpAddr>().unwrap().into());
        assert_eq!(
            mx_server_name(&target("mx.example.test")),
            dns("mx.example.test")
        );
        assert_eq!(
            mx_server_name(&target("mx.example.test.")),
            dns("mx.example.test")
        );
        assert_eq!(mx_server_name(&target("[192.0.2.7]")), ip);
        assert_eq!(mx_server_name(&target("bad name!")), ip);
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = smarthost("smtp.example.test", Some(&empty)).err().unwrap();
        assert!(
            e.contains("relay.ca_file") && e.contains("empty.pem"),
            "{e}"
        );
        let missing = dir.path().join("missing.pem");
        let e = smarthost("smtp.example.test", Some(&missing))
            .err()
            .unwrap();
        assert!(e.contains("missing.pem"), "{e}");
        let (cert, _) = crate::tls::self_signed("smtp.example.test").unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, cert).unwrap();
        let v = smarthost("smtp.example.test", Some(&good)).unwrap();
        assert_eq!(v.name, ServerName::try_from("smtp.example.test").unwrap());
    }
}
