//! DANE for SMTP (RFC 7672): what a DNSSEC-authenticated TLSA RRset says about an MX host,
//! and the certificate check it implies.
//!
//! - [`Tlsa`]: one TLSA record as numbers and bytes; [`Tlsa::is_usable`] keeps DANE-TA(2) and
//!   DANE-EE(3) with selector 0 (full certificate) or 1 (SPKI) and matching type 0 (exact),
//!   1 (SHA-256) or 2 (SHA-512). PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (RFC 7672
//!   section 3.1.3), as are unknown values and digests of the wrong length.
//! - [`HostDane`]: the decision for one MX host from its TLSA lookup (see
//!   [`super::dnssec::Validator::tlsa`]).
//! - [`DaneVerifier`]: the rustls verifier. DANE-EE matches the leaf; its name and dates are
//!   not checked (RFC 7672 section 3.1.1). DANE-TA matches a certificate of the presented
//!   chain, which then becomes the only trust anchor of a WebPKI path validation (rustls's
//!   `WebPkiServerVerifier`) for the MX host name, dates included (section 3.1.2). The
//!   handshake signatures are always checked.
//! - [`RptResult`]: the RFC 8460 result type of a DANE outcome, for TLS reporting.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// TLSA certificate usages (RFC 6698 section 2.1.1) that SMTP uses.
pub const DANE_TA: u8 = 2;
pub const DANE_EE: u8 = 3;
/// At most this many TLSA records of one RRset are considered (a hostile zone could publish
/// thousands; each costs a hash per handshake).
pub const MAX_TLSA: usize = 32;

/// One TLSA record (RFC 6698 section 2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Usable for SMTP: DANE-TA or DANE-EE, a known selector and matching type, and data of
    /// the length the matching type implies.
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, DANE_TA | DANE_EE)
            && matches!(self.selector, 0 | 1)
            && match self.matching {
                0 => !self.data.is_empty(),
                1 => self.data.len() == 32,
                2 => self.data.len() == 64,
                _ => false,
            }
    }

    /// Whether `cert` (DER) is the certificate this record designates.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let Some(selected) = select(cert, self.selector) else {
            return false;
        };
        match self.matching {
            0 => selected.as_ref() == self.data.as_slice(),
            1 => digest(&aws_lc_rs::digest::SHA256, &selected) == self.data,
            2 => digest(&aws_lc_rs::digest::SHA512, &selected) == self.data,
            _ => false,
        }
    }

    /// The record in presentation form (`3 1 1 <hex>`), as a TLS-RPT `tlsa` policy string
    /// names it (RFC 8460 section 4.4).
    pub fn presentation(&self) -> String {
        format!(
            "{} {} {} {}",
            self.usage,
            self.selector,
            self.matching,
            data_encoding::HEXLOWER.encode(&self.data)
        )
    }
}

/// The part of `cert` a selector names: the whole certificate (0) or its
/// SubjectPublicKeyInfo (1). `None` when the certificate cannot be parsed.
fn select<'a>(cert: &'a CertificateDer<'_>, selector: u8) -> Option<Cow<'a, [u8]>> {
    match selector {
        0 => Some(Cow::Borrowed(cert.as_ref())),
        1 => {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
            Some(Cow::Owned(parsed.tbs_certificate.subject_pki.raw.to_vec()))
        }
        _ => None,
    }
}

fn digest(alg: &'static aws_lc_rs::digest::Algorithm, bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(alg, bytes).as_ref().to_vec()
}

/// What DANE decides for one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDane {
    /// No authenticated TLSA RRset (insecure, or proven absent): DANE does not apply; the
    /// next policy (MTA-STS, then `relay.tls`) decides. The text says why.
    NotApplicable(&'static str),
    /// Authenticated usable records: TLS mandatory, the certificate must match one of them.
    Usable(Vec<Tlsa>),
    /// An authenticated RRset with no usable record: TLS mandatory but unauthenticated
    /// (RFC 7672 section 2.2).
    Unusable,
    /// Bogus DNSSEC or a failed lookup: this host is not tried (never in clear text).
    Defer(String),
}

impl HostDane {
    /// From an authenticated TLSA RRset (at most [`MAX_TLSA`] records are kept).
    pub fn from_secure(records: Vec<Tlsa>) -> HostDane {
        let usable: Vec<Tlsa> = records
            .into_iter()
            .take(MAX_TLSA)
            .filter(Tlsa::is_usable)
            .collect();
        if usable.is_empty() {
            HostDane::Unusable
        } else {
            HostDane::Usable(usable)
        }
    }

    /// The RFC 8460 failure this decision already is, before any connection: an unusable
    /// TLSA RRset (`tlsa-invalid`) or bogus/failed DNSSEC (`dnssec-invalid`).
    pub fn failure(&self) -> Option<RptResult> {
        match self {
            HostDane::Unusable => Some(RptResult::TlsaInvalid),
            HostDane::Defer(_) => Some(RptResult::DnssecInvalid),
            HostDane::NotApplicable(_) | HostDane::Usable(_) => None,
        }
    }
}

/// The RFC 8460 (TLS-RPT) result type of a DANE outcome, section 4.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RptResult {
    /// TLS established and the certificate matched.
    Success,
    StarttlsNotSupported,
    CertificateExpired,
    /// Any other TLS failure (handshake, protocol).
    ValidationFailure,
    /// An authenticated TLSA RRset with no usable record.
    TlsaInvalid,
    /// Bogus DNSSEC or a failed lookup.
    DnssecInvalid,
    CertificateHostMismatch,
    /// No TLSA record matched the presented chain.
    CertificateNotTrusted,
}

impl RptResult {
    /// The result type as RFC 8460 spells it (`"success"` for a success).
    pub fn as_str(self) -> &'static str {
        match self {
            RptResult::Success => "success",
            RptResult::StarttlsNotSupported => "starttls-not-supported",
            RptResult::CertificateExpired => "certificate-expired",
            RptResult::ValidationFailure => "validation-failure",
            RptResult::TlsaInvalid => "tlsa-invalid",
            RptResult::DnssecInvalid => "dnssec-invalid",
            RptResult::CertificateHostMismatch => "certificate-host-mismatch",
            RptResult::CertificateNotTrusted => "certificate-not-trusted",
        }
    }

    /// The result type of a failed TLS handshake with a DANE host.
    pub fn from_tls_error(e: &Error) -> RptResult {
        match e {
            Error::InvalidCertificate(CertificateError::Expired)
            | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
                RptResult::CertificateExpired
            }
            Error::InvalidCertificate(CertificateError::NotValidForName)
            | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
                RptResult::CertificateHostMismatch
            }
            Error::InvalidCertificate(_) => RptResult::CertificateNotTrusted,
            _ => RptResult::ValidationFailure,
        }
    }
}

/// Most verdicts one [`Verdicts`] keeps (one per handshake; an attempt tries a few
/// addresses of a host).
const MAX_VERDICTS: usize = 16;

/// The certificate verdicts of the handshakes with one DANE host during one delivery
/// attempt, for TLS-RPT (the DANE counterpart of [`super::tls::Judge`]).
#[derive(Clone, Default, Debug)]
pub struct Verdicts(Arc<Mutex<Vec<RptResult>>>);

impl Verdicts {
    /// Every verdict so far, in handshake order.
    pub fn all(&self) -> Vec<RptResult> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn record(&self, verdict: RptResult) {
        if let Ok(mut v) = self.0.lock()
            && v.len() < MAX_VERDICTS
        {
            v.push(verdict);
        }
    }
}

/// The rustls verifier for a DANE host (see the module doc).
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
    verdicts: Verdicts,
}

impl DaneVerifier {
    /// A verifier for `records` (usable ones; others are ignored) that writes each verdict
    /// to `verdicts`.
    pub fn new(
        records: Vec<Tlsa>,
        provider: Arc<CryptoProvider>,
        verdicts: Verdicts,
    ) -> DaneVerifier {
        let records = records.into_iter().filter(Tlsa::is_usable).collect();
        DaneVerifier {
            records,
            provider,
            verdicts,
        }
    }

    /// The DANE check itself (EE first, then TA).
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let ee = self.records.iter().filter(|r| r.usage == DANE_EE);
        if ee.into_iter().any(|r| r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        match self.verify_ta(end_entity, intermediates, server_name, now) {
            Some(Ok(())) => Ok(ServerCertVerified::assertion()),
            Some(Err(e)) => Err(e),
            // Nothing in the chain matched any record.
            None => Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        }
    }

    /// DANE-TA: a presented certificate matching a usage-2 record, used as the only trust
    /// anchor for a path validation of the leaf for `name`.
    fn verify_ta(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> Option<Result<(), Error>> {
        let mut last = None;
        let tas = self.records.iter().filter(|r| r.usage == DANE_TA);
        for record in tas {
            for cert in intermediates.iter().chain(std::iter::once(end_entity)) {
                if !record.matches(cert) {
                    continue;
                }
                let mut roots = rustls::RootCertStore::empty();
                if roots.add(cert.clone()).is_err() {
                    continue;
                }
                let verifier = match WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                match verifier.verify_server_cert(end_entity, intermediates, name, &[], now) {
                    Ok(_) => return Some(Ok(())),
                    Err(e) => last = Some(Err(e)),
                }
            }
        }
        last
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verdict = self.verify(end_entity, intermediates, server_name, now);
        self.verdicts.record(match &verdict {
            Ok(_) => RptResult::Success,
            Err(e) => RptResult::from_tls_error(e),
        });
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config that accepts exactly what `records` allow (see [`DaneVerifier`]), each
/// verdict written to `verdicts`. Built per attempt: no session resumption skips a verdict.
pub fn client_config(records: Vec<Tlsa>, verdicts: Verdicts) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(DaneVerifier::new(records, provider.clone(), verdicts));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn spki(cert: &CertificateDer<'_>) -> Vec<u8> {
        select(cert, 1).unwrap().into_owned()
    }

    fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn matching_types_and_selectors() {
        let (pem, _) = crate::tls::self_signed("mx.example.test").unwrap();
        let cert = der(&pem);
        let (other_pem, _) = crate::tls::self_signed("mx.example.test").unwrap();
        let other = der(&other_pem);
        let key = spki(&cert);
        assert!(key.len() > 32 && key.len() < cert.as_ref().len());
        let sha256 = |b: &[u8]| digest(&aws_lc_rs::digest::SHA256, b);
        let sha512 = |b: &[u8]| digest(&aws_lc_rs::digest::SHA512, b);
        for r in [
            rec(3, 1, 1, sha256(&key)),
            rec(3, 1, 2, sha512(&key)),
            rec(3, 1, 0, key.clone()),
            rec(3, 0, 1, sha256(cert.as_ref())),
            rec(3, 0, 2, sha512(cert.as_ref())),
            rec(3, 0, 0, cert.as_ref().to_vec()),
        ] {
            assert!(r.is_usable(), "{r:?}");
            assert!(r.matches(&cert), "{r:?}");
            assert!(!r.matches(&other), "{r:?} matched another key");
        }
        // A flipped bit, a truncated digest, a wrong selector: no match.
        let mut bad = sha256(&key);
        bad[0] ^= 1;
        assert!(!rec(3, 1, 1, bad).matches(&cert));
        assert!(!rec(3, 0, 1, sha256(&key)).matches(&cert));
        assert!(!rec(3, 1, 1, sha256(&key)[..31].to_vec()).is_usable());
        // Garbage instead of a certificate never matches an SPKI record, never panics.
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(!rec(3, 1, 1, sha256(&key)).matches(&junk));
    }

    #[test]
    fn usability() {
        let d = vec![0u8; 32];
        assert!(rec(2, 0, 1, d.clone()).is_usable());
        assert!(rec(3, 1, 1, d.clone()).is_usable());
        for unusable in [
            rec(0, 1, 1, d.clone()),
            rec(1, 1, 1, d.clone()),
            rec(4, 1, 1, d.clone()),
            rec(3, 2, 1, d.clone()),
            rec(3, 1, 3, d.clone()),
            rec(3, 1, 2, d.clone()),
            rec(3, 1, 0, Vec::new()),
        ] {
            assert!(!unusable.is_usable(), "{unusable:?}");
        }
        assert_eq!(
            HostDane::from_secure(vec![rec(1, 1, 1, d.clone())]),
            HostDane::Unusable
        );
        assert_eq!(
            HostDane::from_secure(vec![rec(1, 1, 1, d.clone()), rec(3, 1, 1, d.clone())]),
            HostDane::Usable(vec![rec(3, 1, 1, d)])
        );
    }

    #[test]
    fn presentation_form_and_verdicts() {
        assert_eq!(
            rec(3, 1, 1, vec![0x0a, 0xff, 0x00]).presentation(),
            "3 1 1 0aff00"
        );
        assert_eq!(rec(2, 0, 0, Vec::new()).presentation(), "2 0 0 ");
        let (pem, _) = crate::tls::self_signed("mx.example.test").unwrap();
        let cert = der(&pem);
        let key = spki(&cert);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verdicts = Verdicts::default();
        let good = rec(3, 1, 1, digest(&aws_lc_rs::digest::SHA256, &key));
        let name = ServerName::try_from("mx.example.test").unwrap();
        let now = UnixTime::now();
        let v = DaneVerifier::new(vec![good], provider.clone(), verdicts.clone());
        assert!(v.verify_server_cert(&cert, &[], &name, &[], now).is_ok());
        let v = DaneVerifier::new(vec![rec(3, 1, 1, vec![0; 32])], provider, verdicts.clone());
        assert!(v.verify_server_cert(&cert, &[], &name, &[], now).is_err());
        assert_eq!(
            verdicts.all(),
            [RptResult::Success, RptResult::CertificateNotTrusted]
        );
        for _ in 0..MAX_VERDICTS + 3 {
            let _ = v.verify_server_cert(&cert, &[], &name, &[], now);
        }
        assert_eq!(verdicts.all().len(), MAX_VERDICTS);
    }

    #[test]
    fn rpt_result_names() {
        assert_eq!(RptResult::Success.as_str(), "success");
        assert_eq!(HostDane::Unusable.failure(), Some(RptResult::TlsaInvalid));
        assert_eq!(
            HostDane::Defer("bogus".into())
                .failure()
                .map(RptResult::as_str),
            Some("dnssec-invalid")
        );
        assert_eq!(HostDane::NotApplicable("insecure").failure(), None);
        assert_eq!(
            RptResult::from_tls_error(&Error::InvalidCertificate(CertificateError::Expired))
                .as_str(),
            "certificate-expired"
        );
        assert_eq!(
            RptResult::from_tls_error(&Error::InvalidCertificate(
                CertificateError::NotValidForName
            )),
            RptResult::CertificateHostMismatch
        );
        assert_eq!(
            RptResult::from_tls_error(&Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            RptResult::CertificateNotTrusted
        );
        assert_eq!(
            RptResult::from_tls_error(&Error::HandshakeNotComplete),
            RptResult::ValidationFailure
        );
    }

    proptest::proptest! {
        /// Any bytes as a "certificate" and any record: no panic.
        #[test]
        fn matching_never_panics(
            cert in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            usage in 0u8..5, selector in 0u8..3, matching in 0u8..4,
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..70),
        ) {
            let r = rec(usage, selector, matching, data);
            let _ = r.is_usable();
            let _ = r.matches(&CertificateDer::from(cert));
        }
    }
}
