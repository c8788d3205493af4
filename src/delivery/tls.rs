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

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

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
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("relay.smarthost {host}: not a name TLS can verify: {e}"))?;
    let config = webpki(ca_file).map_err(|e| format!("TLS for relay.smarthost {host}: {e}"))?;
    Ok(Verified { config, name })
}

/// `relay.tls = "verify"`: one config for every MX host, verifying against the system roots
/// plus `ca_file`; the name checked is the MX host's ([`mx_server_name`]), set per target.
pub fn verify_mx(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    webpki(ca_file).map_err(|e| format!("TLS for relay.tls = \"verify\": {e}"))
}

/// A WebPKI-verifying config: the system roots (rustls-native-certs honours SSL_CERT_FILE and
/// SSL_CERT_DIR) plus `ca_file`'s certificates.
fn webpki(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system roots are not fatal: ca_file may be all that is needed.
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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
