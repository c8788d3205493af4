//! DKIM signing of submitted mail (RFC 6376), RSA-SHA256 and Ed25519-SHA256 (RFC 8463), through
//! the `mail-auth` crate on the aws-lc-rs crypto backend rustls already uses.
//!
//! Which key signs: every `[[dkim]]` entry whose `domain` equals the domain of the first address
//! in the message's From header (ASCII case-insensitive, IDNs in their `xn--` form). Exact
//! match only, like OpenDKIM's default (`SubDomains no`): mail from `sub.example.test` needs its
//! own entry. Two entries for one domain (an RSA and an Ed25519 selector) both sign, as RFC 8463
//! section 4 suggests. No matching entry: the message goes out unsigned.
//!
//! What is signed: relaxed/relaxed canonicalization, the whole body (no `l=`), and those of the
//! entry's `headers` the message has — every instance of each — plus From once more than it
//! appears, so that a From added later breaks the signature (RFC 6376 section 8.15,
//! "oversigning"). Headers the message lacks are left out, so a relay may add them (OpenDKIM's
//! behaviour). Received is never in the default list: it is added again at every hop.
//!
//! Streaming: the body is hashed chunk by chunk as it arrives ([`BodyHasher`], `body`), and the
//! signature is made later from the header section alone and those hashes
//! ([`SharedSigner::sign_header_section`]); the whole-message [`DkimSigner::sign`] is the same
//! path over one chunk.
//!
//! When signing fails (it cannot for a key that loaded, short of a library error) the message
//! is refused with `451 4.3.0` rather than sent unsigned: a domain with a published key and a
//! DMARC policy would see unsigned mail rejected or junked far away, where the user cannot see
//! why. This is OpenDKIM's `On-InternalError tempfail` default.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderStream, HeaderWriter, Writable, Writer};
use mail_auth::dkim::canonicalize::CanonicalHeaders;
use mail_auth::dkim::{Canonicalization, DkimSigner as MailAuthSigner, Signature};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::submission::header_section;

mod body;

use body::BodyLanes;
pub use body::{BodyHash, CanonicalHasher};

pub use crate::config::{DEFAULT_HEADERS, DkimConfig};

/// A key's algorithm, inferred from the key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `rsa-sha256` (RFC 6376 section 3.3.1).
    Rsa,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519,
}

impl Algorithm {
    /// The `k=` tag of the DNS record.
    pub fn dns_name(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// What went wrong loading a key or signing.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    BadKey { path: PathBuf, message: String },
    #[error("DKIM signing with {domain}/{selector} failed: {message}")]
    Sign {
        domain: String,
        selector: String,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error("DKIM signing task failed: {0}")]
    Task(String),
}

/// Every key that failed to load, with the index of its `[[dkim]]` entry.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<(usize, DkimError)>);

impl std::fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, (i, e)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "dkim[{i}].key: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// A loaded private key and the public half in its DNS form (`p=`).
pub struct LoadedKey {
    pub algorithm: Algorithm,
    key: DkimKey,
    /// RSA: the SubjectPublicKeyInfo DER; Ed25519: the 32 raw bytes (RFC 8463 section 4).
    pub public: Vec<u8>,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl LoadedKey {
    /// Read a PEM private key; the algorithm comes from the key itself.
    pub fn from_file(path: &Path) -> Result<LoadedKey, DkimError> {
        let pem = std::fs::read(path).map_err(|source| DkimError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        LoadedKey::from_pem(&pem).map_err(|message| DkimError::BadKey {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parse a PEM private key: RSA PKCS#1 (`RSA PRIVATE KEY`), RSA or Ed25519 PKCS#8
    /// (`PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<LoadedKey, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("no PEM private key found ({e})"))?;
        let rsa = |der: PrivateKeyDer<'_>, pair: aws_lc_rs::rsa::KeyPair| {
            let public = pair
                .public_key()
                .as_der()
                .map_err(|_| "cannot encode the RSA public key".to_string())?;
            let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| e.to_string())?;
            Ok(LoadedKey {
                algorithm: Algorithm::Rsa,
                key: DkimKey::Rsa(key),
                public: public.as_ref().to_vec(),
            })
        };
        match der {
            PrivateKeyDer::Pkcs1(ref pkcs1) => {
                let pair = aws_lc_rs::rsa::KeyPair::from_der(pkcs1.secret_pkcs1_der())
                    .map_err(|e| format!("bad RSA key ({e}); RSA keys of 2048 to 8192 bits"))?;
                rsa(der, pair)
            }
            PrivateKeyDer::Pkcs8(ref pkcs8) => {
                let bytes = pkcs8.secret_pkcs8_der();
                if let Ok(pair) = aws_lc_rs::rsa::KeyPair::from_pkcs8(bytes) {
                    return rsa(der, pair);
                }
                let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                    .map_err(|_| {
                        "not an RSA or Ed25519 private key (RSA: 2048 to 8192 bits; EC keys are no \
                         DKIM algorithm)"
                            .to_string()
                    })?;
                let public = pair.public_key().as_ref().to_vec();
                let key =
                    Ed25519Key::from_pkcs8_maybe_unchecked_der(bytes).map_err(|e| e.to_string())?;
                Ok(LoadedKey {
                    algorithm: Algorithm::Ed25519,
                    key: DkimKey::Ed25519(key),
                    public,
                })
            }
            PrivateKeyDer::Sec1(_) => Err(
                "an EC (SEC1) key: DKIM signs with RSA or Ed25519 only (RFC 6376, RFC 8463)"
                    .to_string(),
            ),
            _ => Err("unsupported private key format".to_string()),
        }
    }

    /// The DNS TXT record's text: `v=DKIM1; k=...; p=...`.
    pub fn dns_record(&self) -> String {
        dns_record(self.algorithm, &self.public)
    }
}

/// `v=DKIM1; k=ALG; p=BASE64` (RFC 6376 section 3.6.1).
pub fn dns_record(algorithm: Algorithm, public: &[u8]) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        algorithm.dns_name(),
        B64.encode(public)
    )
}

/// One `[[dkim]]` entry, loaded.
#[derive(Debug)]
struct Entry {
    domain: String,
    selector: String,
    key: LoadedKey,
    headers: Vec<String>,
    /// Header and body canonicalization; `[[dkim]]` has no setting: relaxed/relaxed.
    canonicalization: (Canonicalization, Canonicalization),
}

/// The keys a server signs with. Loaded once at start; [`DkimSigner::load`] again on reload.
#[derive(Debug, Default)]
pub struct DkimSigner {
    entries: Vec<Entry>,
}

/// Signs through a borrowed key: mail-auth's signer owns its key, ours stay loaded.
struct Borrowed<'a>(&'a DkimKey);

impl SigningKey for Borrowed<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}

impl DkimSigner {
    /// Load every entry's key. Errors come with the index of the entry in `configs`.
    pub fn load(configs: &[DkimConfig]) -> Result<DkimSigner, LoadErrors> {
        let mut entries = Vec::with_capacity(configs.len());
        let mut errors = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            match LoadedKey::from_file(&c.key) {
                Ok(key) => entries.push(Entry {
                    domain: c.domain.to_ascii_lowercase(),
                    selector: c.selector.clone(),
                    key,
                    headers: c.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    canonicalization: (Canonicalization::Relaxed, Canonicalization::Relaxed),
                }),
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            Ok(DkimSigner { entries })
        } else {
            Err(LoadErrors(errors))
        }
    }

    /// No keys: nothing is ever signed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The DKIM-Signature header fields for `message` (one per key of `domain`, the From
    /// domain the header check passed), ready to prepend; empty when no key matches. The
    /// domain is never read from the message again here: a second parse could pick another
    /// address than the one that was checked. Blocking: hashes the whole message.
    pub fn sign(&self, message: &[u8], domain: &str) -> Result<Vec<u8>, DkimError> {
        let Some(mut lanes) = self.body_lanes(domain) else {
            return Ok(Vec::new());
        };
        let headers = header_section(message);
        lanes.update(&message[headers.len()..]);
        self.sign_header_section(headers, domain, &lanes.finish())
    }

    /// The entries that sign mail from `domain`.
    fn entries_for<'a>(&'a self, domain: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.domain == domain)
    }

    /// A hasher per body canonicalization the keys of `domain` use; `None` without a key.
    fn body_lanes(&self, domain: &str) -> Option<BodyLanes> {
        let mut wanted = self
            .entries_for(domain)
            .map(|e| e.canonicalization.1)
            .peekable();
        wanted.peek()?;
        Some(BodyLanes::new(wanted))
    }

    /// The DKIM-Signature fields for a message of `domain` from its header section (with or
    /// without the empty line) and its body hashes. Blocking: RSA signing takes milliseconds.
    fn sign_header_section(
        &self,
        header_section: &[u8],
        domain: &str,
        body: &[(Canonicalization, BodyHash)],
    ) -> Result<Vec<u8>, DkimError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut out = Vec::new();
        for entry in self.entries_for(domain) {
            let failed = |message: String| DkimError::Sign {
                domain: entry.domain.clone(),
                selector: entry.selector.clone(),
                message,
            };
            let bh = body
                .iter()
                .find(|(c, _)| *c == entry.canonicalization.1)
                .map(|(_, hash)| hash)
                .ok_or_else(|| failed("no body hash for this key's canonicalization".into()))?;
            let signature = sign_entry(entry, header_section, bh, now).map_err(failed)?;
            out.extend_from_slice(signature.to_header().as_bytes());
        }
        Ok(out)
    }
}

/// One entry's signature: mail-auth picks and canonicalizes the header fields as it does for a
/// whole message (same `h=`, oversigned From included), with our body hash in `bh=`.
fn sign_entry(
    entry: &Entry,
    header_section: &[u8],
    bh: &BodyHash,
    now: u64,
) -> Result<Signature, String> {
    let (header_canon, body_canon) = entry.canonicalization;
    let signer = MailAuthSigner::from_key(Borrowed(&entry.key.key))
        .domain(entry.domain.clone())
        .selector(entry.selector.clone())
        .headers(headers_to_sign(header_section, &entry.headers))
        .header_canonicalization(header_canon)
        .body_canonicalization(body_canon);
    let (_, headers, signed, _) = signer.template.canonicalize(Fields(header_section));
    let mut signature = signer.template.clone();
    signature.bh = bh.to_vec();
    signature.t = now;
    signature.h = signed;
    signature.b = signer
        .key
        .sign(HeaderHashInput {
            headers,
            signature: &signature,
        })
        .map_err(|e| e.to_string())?;
    Ok(signature)
}

/// The header fields of a header section, split as mail-auth's canonicalization takes them:
/// the name before the first colon, the value after it with its folded lines and final CRLF.
/// A line without a colon is no field a key could list: skipped.
struct Fields<'a>(&'a [u8]);

impl<'a> HeaderStream<'a> for Fields<'a> {
    fn next_header(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        loop {
            if self.0.is_empty() || self.0.starts_with(b"\r\n") {
                return None;
            }
            // A field ends at the first CRLF not followed by WSP (RFC 5322 2.2.3).
            let mut end = 0;
            let end = loop {
                match memchr::memmem::find(&self.0[end..], b"\r\n") {
                    Some(i) if matches!(self.0.get(end + i + 2), Some(b' ' | b'\t')) => {
                        end += i + 2;
                    }
                    Some(i) => break end + i + 2,
                    None => break self.0.len(),
                }
            };
            let (field, rest) = self.0.split_at(end);
            self.0 = rest;
            if let Some(colon) = memchr::memchr(b':', field) {
                return Some((&field[..colon], &field[colon + 1..]));
            }
        }
    }

    fn body(&mut self) -> &'a [u8] {
        &[]
    }
}

/// What the header hash covers (RFC 6376 3.7): the signed fields, canonicalized, then the
/// DKIM-Signature field itself with an empty `b=` and no final CRLF.
struct HeaderHashInput<'a> {
    headers: CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for HeaderHashInput<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

/// Of the configured headers, those the message has, then `from` once more (oversigning).
fn headers_to_sign(message: &[u8], configured: &[String]) -> Vec<String> {
    // Field names start lines of the header section; continuation lines start with WSP.
    let present: Vec<&[u8]> = header_section(message)
        .split(|&b| b == b'\n')
        .filter(|line| !matches!(line.first(), Some(b' ' | b'\t')))
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some(line[..colon].trim_ascii_end())
        })
        .collect();
    let mut out: Vec<String> = Vec::new();
    for h in configured {
        let here = present.iter().any(|p| p.eq_ignore_ascii_case(h.as_bytes()));
        if here && !out.contains(h) {
            out.push(h.clone());
        }
    }
    // mail-auth signs every instance of a listed header; a name listed twice adds one more,
    // empty, entry to h=.
    out.push("from".to_string());
    out
}

/// The signer of a running server, replaceable as a whole when the config is reloaded.
#[derive(Debug, Clone, Default)]
pub struct SharedSigner(Arc<RwLock<Arc<DkimSigner>>>);

impl SharedSigner {
    pub fn new(signer: DkimSigner) -> SharedSigner {
        SharedSigner(Arc::new(RwLock::new(Arc::new(signer))))
    }

    /// The keys in use now.
    pub fn current(&self) -> Arc<DkimSigner> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sign with these keys from now on (messages being signed finish with the old ones).
    pub fn replace(&self, signer: DkimSigner) {
        let mut guard = match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(signer);
    }
}

impl SharedSigner {
    /// A hasher for the body of a message from `domain` (the From domain the header check
    /// passed), holding on to the keys in use now; `None` when no key is for that domain.
    pub fn body_hasher(&self, domain: Option<&str>) -> Option<BodyHasher> {
        let signer = self.current();
        let lanes = signer.body_lanes(domain?)?;
        Some(BodyHasher {
            domain: domain?.to_string(),
            signer,
            lanes,
        })
    }

    /// The DKIM-Signature fields to prepend to a message whose header section is
    /// `header_section` and whose body went through the hasher of `body`, off the reactor.
    /// Signs with the keys the hasher was made with, so a reload in between changes nothing.
    /// `Err`: the message must not be queued unsigned.
    pub async fn sign_header_section(
        &self,
        header_section: Vec<u8>,
        body: BodyHashes,
    ) -> Result<Vec<u8>, DkimError> {
        tokio::task::spawn_blocking(move || body.sign(&header_section))
            .await
            .map_err(|e| DkimError::Task(e.to_string()))?
    }
}

/// The body of one message hashed as it streams by, for every key of its From domain.
/// Memory is bounded (a small output buffer per canonicalization) whatever the body holds.
#[derive(Debug)]
pub struct BodyHasher {
    signer: Arc<DkimSigner>,
    domain: String,
    lanes: BodyLanes,
}

impl BodyHasher {
    /// The From domain it hashes for (the one its keys sign).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The next body bytes (after the header section's empty line), split anywhere. CPU
    /// only, at hashing speed: fine wherever the chunk is handled.
    pub fn update(&mut self, chunk: &[u8]) {
        self.lanes.update(chunk);
    }

    /// The body is complete.
    pub fn finish(self) -> BodyHashes {
        BodyHashes {
            signer: self.signer,
            domain: self.domain,
            hashes: self.lanes.finish(),
        }
    }
}

/// A message's finished body hashes, with the keys that will sign it.
#[derive(Debug)]
pub struct BodyHashes {
    signer: Arc<DkimSigner>,
    domain: String,
    hashes: Vec<(Canonicalization, BodyHash)>,
}

impl BodyHashes {
    /// The DKIM-Signature fields for the message with this header section (the empty line
    /// may be there or not). Blocking: RSA signing takes milliseconds.
    pub fn sign(&self, header_section: &[u8]) -> Result<Vec<u8>, DkimError> {
        self.signer
            .sign_header_section(header_section, &self.domain, &self.hashes)
    }
}

// ---------------------------------------------------------------------------------------------
// Key generation (`submitd dkim keygen`).
// ---------------------------------------------------------------------------------------------

/// RSA sizes `keygen` offers: at least 2048 (RFC 8301 section 3.2), DNS-friendly at most 4096.
pub const RSA_BITS: &[usize] = &[2048, 3072, 4096];

/// A new key: its PKCS#8 PEM and its DNS record text.
pub struct GeneratedKey {
    pub pem: String,
    pub record: String,
}

/// Make a key. `bits` applies to RSA only (one of [`RSA_BITS`]).
pub fn generate(algorithm: Algorithm, bits: usize) -> Result<GeneratedKey, String> {
    let (pkcs8, public) = match algorithm {
        Algorithm::Rsa => {
            use aws_lc_rs::rsa::{KeyPair, KeySize};
            let size = match bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                _ => return Err(format!("RSA key size {bits}: use 2048, 3072 or 4096")),
            };
            let pair = KeyPair::generate(size).map_err(|_| "RSA key generation failed")?;
            let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| "PKCS#8 encoding")?;
            let public: PublicKeyX509Der<'static> =
                pair.public_key().as_der().map_err(|_| "SPKI encoding")?;
            (pkcs8.as_ref().to_vec(), public.as_ref().to_vec())
        }
        Algorithm::Ed25519 => {
            use aws_lc_rs::signature::Ed25519KeyPair;
            let pair = Ed25519KeyPair::generate().map_err(|_| "Ed25519 key generation failed")?;
            // PKCS#8 v1, as `openssl genpkey -algorithm ed25519` writes it.
            let pkcs8 = pair.to_pkcs8v1().map_err(|_| "PKCS#8 encoding")?;
            (pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
        }
    };
    Ok(GeneratedKey {
        pem: pem("PRIVATE KEY", &pkcs8),
        record: dns_record(algorithm, &public),
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Write `DIR/DOMAIN.SELECTOR.key` (mode 0600; the directory is created mode 0700 when
/// missing). Refuses to overwrite an existing file.
pub fn write_key(
    dir: &Path,
    domain: &str,
    selector: &str,
    pem: &str,
) -> Result<PathBuf, DkimError> {
    let path = dir.join(format!("{domain}.{selector}.key"));
    let failed = |message: String| DkimError::Write {
        path: path.clone(),
        message,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| failed(format!("creating the directory: {e}")))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                failed("already exists; not overwritten (remove it first)".into())
            }
            _ => failed(e.to_string()),
        })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| failed(e.to_string()))?;
    Ok(path)
}

/// The zone-file line: `SELECTOR._domainkey.DOMAIN. IN TXT "..." "..."`, the text cut into
/// character-strings of at most 255 bytes (RFC 1035 section 3.3.14; RFC 6376 section 3.6.2.2
/// joins them).
pub fn zone_line(domain: &str, selector: &str, record: &str) -> String {
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT {}",
        strings.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, Txt};
    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::sync::Mutex;

    /// A TXT "cache" that answers for the records put in it: mail-auth's verifier then needs
    /// no DNS at all.
    #[derive(Default)]
    struct Records(Mutex<HashMap<Box<str>, Txt>>);

    impl Records {
        fn add(&self, name: &str, record: &str) {
            let key = DomainKey::parse(record.as_bytes()).unwrap();
            self.0
                .lock()
                .unwrap()
                .insert(name.into(), Txt::DomainKey(Arc::new(key)));
        }
    }

    impl mail_auth::ResolverCache<Box<str>, Txt> for Records {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().get(name).cloned()
        }
        fn remove<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().remove(name)
        }
        fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
    }

    const MESSAGE: &[u8] = b"Received: from client.test by mail.example.test;\r\n\tTue, 24 Nov 2026 13:31:00 +0000\r\n\
        From: Alice <alice@Example.TEST>\r\nTo: bob@example.net\r\nSubject: hello\r\n\
        Date: Tue, 24 Nov 2026 13:31:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n\
        Hello Bob.\r\n\r\n\r\n";

    fn key_file(dir: &Path, algorithm: Algorithm, name: &str) -> PathBuf {
        let generated = generate(algorithm, 2048).unwrap();
        write_key(dir, "example.test", name, &generated.pem).unwrap()
    }

    fn entry(dir: &Path, algorithm: Algorithm, selector: &str) -> DkimConfig {
        DkimConfig {
            domain: "example.test".into(),
            selector: selector.into(),
            key: key_file(dir, algorithm, selector),
            headers: DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
        }
    }

    /// Verify every DKIM-Signature of `message` against the keys' records.
    fn verify(message: &[u8], signer: &DkimSigner) -> Vec<DkimResult> {
        let records = Records::default();
        for e in &signer.entries {
            records.add(
                &format!("{}._domainkey.{}.", e.selector, e.domain),
                &e.key.dns_record(),
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let config = mail_auth::hickory_resolver::config::ResolverConfig::from_parts(
                None,
                vec![],
                vec![],
            );
            let authenticator =
                MessageAuthenticator::new(config, Default::default()).expect("authenticator");
            let parsed = AuthenticatedMessage::parse(message).unwrap();
            authenticator
                .verify_dkim(Parameters::new(&parsed).with_txt_cache(&records))
                .await
                .into_iter()
                .map(|o| o.result().clone())
                .collect()
        })
    }

    fn signed(signer: &DkimSigner, message: &[u8]) -> Vec<u8> {
        let mut out = signer.sign(message, "example.test").unwrap();
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn rsa_and_ed25519_round_trip_and_tampering_fails() {
        let dir = tempfile::tempdir().unwrap();
        for algorithm in [Algorithm::Rsa, Algorithm::Ed25519] {
            let signer =
                DkimSigner::load(&[entry(dir.path(), algorithm, algorithm.dns_name())]).unwrap();
            let message = signed(&signer, MESSAGE);
            let text = String::from_utf8(message.clone()).unwrap();
            let tag = match algorithm {
                Algorithm::Rsa => "a=rsa-sha256",
                Algorithm::Ed25519 => "a=ed25519-sha256",
            };
            assert!(text.starts_with("DKIM-Signature:"), "{text}");
            assert!(text.contains(tag), "{text}");
            assert!(text.contains("d=example.test"), "{text}");
            assert!(text.contains("c=relaxed/relaxed"), "{text}");
            assert_eq!(verify(&message, &signer), vec![DkimResult::Pass], "{text}");

            let body = text.replace("Hello Bob.", "Hello Eve.");
            // mail-auth reports a body hash mismatch as neutral, a bad signature as fail.
            assert!(matches!(
                verify(body.as_bytes(), &signer)[..],
                [DkimResult::Neutral(mail_auth::Error::Dkim(
                    mail_auth::dkim::DkimError::FailedBodyHashMatch
                ))]
            ));
            let subject = text.replace("Subject: hello", "Subject: hullo");
            assert!(matches!(
                verify(subject.as_bytes(), &signer)[..],
                [DkimResult::Fail(_)]
            ));
            // Oversigned From: a second From on top breaks the signature.
            let (sig, rest) = text.split_at(text.find("Received:").unwrap());
            let added = format!("{sig}From: mallory@evil.test\r\n{rest}");
            assert!(matches!(
                verify(added.as_bytes(), &signer)[..],
                [DkimResult::Fail(_)]
            ));
            // Relaxed canonicalization: whitespace changes in headers still verify.
            let relaxed = text.replace("Subject: hello", "Subject:   hello");
            assert_eq!(verify(relaxed.as_bytes(), &signer), vec![DkimResult::Pass]);
        }
    }

    #[test]
    fn header_list_has_present_headers_and_oversigned_from_but_not_received() {
        let dir = tempfile::tempdir().unwrap();
        let signer = DkimSigner::load(&[entry(dir.path(), Algorithm::Ed25519, "s1")]).unwrap();
        let header = String::from_utf8(signer.sign(MESSAGE, "example.test").unwrap()).unwrap();
        let unfolded: String = header.split_whitespace().collect();
        let h = unfolded
            .split(';')
            .find_map(|t| t.strip_prefix("h="))
            .unwrap()
            .to_ascii_lowercase();
        let mut names: Vec<&str> = h.split(':').collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["date", "from", "from", "message-id", "subject", "to"],
            "{header}"
        );
    }

    #[test]
    fn domain_selection_is_exact_and_signs_with_every_key_of_the_domain() {
        let dir = tempfile::tempdir().unwrap();
        let signer = DkimSigner::load(&[
            entry(dir.path(), Algorithm::Rsa, "r"),
            entry(dir.path(), Algorithm::Ed25519, "e"),
        ])
        .unwrap();
        let message = signed(&signer, MESSAGE);
        let text = String::from_utf8_lossy(&message);
        assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
        assert_eq!(
            verify(&message, &signer),
            vec![DkimResult::Pass, DkimResult::Pass]
        );
        let sub = b"From: alice@sub.example.test\r\nSubject: x\r\n\r\nx\r\n";
        assert!(signer.sign(sub, "sub.example.test").unwrap().is_empty());
        let other = b"From: alice@example.net\r\nSubject: x\r\n\r\nx\r\n";
        assert!(signer.sign(other, "example.net").unwrap().is_empty());
        assert!(
            DkimSigner::default()
                .sign(MESSAGE, "example.test")
                .unwrap()
                .is_empty()
        );
    }

    /// What the whole-message path signed with before streaming: mail-auth over the message.
    fn mail_auth_sign(signer: &DkimSigner, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &signer.entries {
            let (ch, cb) = entry.canonicalization;
            let signature = MailAuthSigner::from_key(Borrowed(&entry.key.key))
                .domain(entry.domain.clone())
                .selector(entry.selector.clone())
                .headers(headers_to_sign(message, &entry.headers))
                .header_canonicalization(ch)
                .body_canonicalization(cb)
                .sign(message)
                .unwrap();
            out.extend_from_slice(signature.to_header().as_bytes());
        }
        out
    }

    /// The message's header section, then its body in chunks of `size`, through the
    /// streaming entry points a session uses.
    fn stream_signed(shared: &SharedSigner, message: &[u8], size: usize) -> Vec<u8> {
        let header = header_section(message);
        let mut hasher = shared.body_hasher(Some("example.test")).unwrap();
        for chunk in message[header.len()..].chunks(size) {
            hasher.update(chunk);
        }
        let hashes = hasher.finish();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = runtime
            .block_on(shared.sign_header_section(header.to_vec(), hashes))
            .unwrap();
        out.extend_from_slice(message);
        out
    }

    fn tag(header: &str, name: &str) -> String {
        let unfolded: String = header.split_whitespace().collect();
        unfolded
            .split(';')
            .find_map(|t| t.strip_prefix(&format!("{name}=")).map(str::to_string))
            .unwrap()
    }

    const BIG_BODY_MESSAGE: &[u8] = b"From: alice@example.test\r\nTo: bob@example.net\r\n\
        Subject: report\r\n\r\nLine one  with\tspaces \r\n\r\n  indented\r\n";

    #[test]
    fn streamed_signatures_verify_for_every_algorithm_and_canonicalization() {
        let dir = tempfile::tempdir().unwrap();
        let canonicalizations = [
            (Canonicalization::Relaxed, Canonicalization::Relaxed),
            (Canonicalization::Simple, Canonicalization::Simple),
            (Canonicalization::Relaxed, Canonicalization::Simple),
        ];
        for algorithm in [Algorithm::Rsa, Algorithm::Ed25519] {
            for (ch, cb) in canonicalizations {
                let mut signer = DkimSigner::load(&[entry(
                    dir.path(),
                    algorithm,
                    &format!("{algorithm:?}-{ch:?}-{cb:?}").to_lowercase(),
                )])
                .unwrap();
                signer.entries[0].canonicalization = (ch, cb);
                let shared = SharedSigner::new(signer);
                let signer = shared.current();
                for size in [1, 7, 4096] {
                    let message = stream_signed(&shared, MESSAGE, size);
                    let text = String::from_utf8(message.clone()).unwrap();
                    let c = format!(
                        "c={}/{}",
                        format!("{ch:?}").to_lowercase(),
                        format!("{cb:?}").to_lowercase()
                    );
                    assert!(text.contains(&c), "{text}");
                    assert_eq!(verify(&message, &signer), vec![DkimResult::Pass], "{text}");
                    let body = text.replace("Hello Bob.", "Hello Eve.");
                    assert!(matches!(
                        verify(body.as_bytes(), &signer)[..],
                        [DkimResult::Neutral(mail_auth::Error::Dkim(
                            mail_auth::dkim::DkimError::FailedBodyHashMatch
                        ))]
                    ));
                    let subject = text.replace("Subject: hello", "Subject: hullo");
                    assert!(matches!(
                        verify(subject.as_bytes(), &signer)[..],
                        [DkimResult::Fail(_)]
                    ));
                    // Whitespace: relaxed ignores what simple signs.
                    let spaced = text.replace("Subject: hello", "Subject:  hello");
                    let want_pass = ch == Canonicalization::Relaxed;
                    let got = verify(spaced.as_bytes(), &signer);
                    assert_eq!(got == vec![DkimResult::Pass], want_pass, "{ch:?} {got:?}");
                    let trailing = text.replace("Hello Bob.\r\n", "Hello Bob. \r\n");
                    let got = verify(trailing.as_bytes(), &signer);
                    assert_eq!(
                        got == vec![DkimResult::Pass],
                        cb == Canonicalization::Relaxed,
                        "{cb:?} {got:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn streamed_and_whole_message_paths_sign_alike() {
        let dir = tempfile::tempdir().unwrap();
        let signer = DkimSigner::load(&[
            entry(dir.path(), Algorithm::Rsa, "r"),
            entry(dir.path(), Algorithm::Ed25519, "e"),
        ])
        .unwrap();
        let shared = SharedSigner::new(signer);
        let signer = shared.current();
        let empty_body = b"From: alice@example.test\r\nSubject: x\r\n\r\n";
        let no_body = b"From: alice@example.test\r\nSubject: x\r\n";
        for message in [MESSAGE, BIG_BODY_MESSAGE, &empty_body[..], &no_body[..]] {
            // RSA PKCS#1 v1.5 and Ed25519 are deterministic: with the same t= the fields are
            // the same bytes. Retried in case the clock ticks between the two.
            let same = (0..3).any(|_| {
                let old = mail_auth_sign(&signer, message);
                let whole = signer.sign(message, "example.test").unwrap();
                let streamed = stream_signed(&shared, message, 3);
                old == whole && streamed.starts_with(&old)
            });
            let old = String::from_utf8(mail_auth_sign(&signer, message)).unwrap();
            let new = String::from_utf8(signer.sign(message, "example.test").unwrap()).unwrap();
            assert!(same, "{old}\n{new}");
            for (o, n) in old
                .split("DKIM-Signature:")
                .zip(new.split("DKIM-Signature:"))
                .skip(1)
            {
                assert_eq!(tag(o, "bh"), tag(n, "bh"));
                assert_eq!(tag(o, "h"), tag(n, "h"));
            }
        }
        // The header section may come without its empty line.
        let hashes = {
            let mut h = shared.body_hasher(Some("example.test")).unwrap();
            h.update(b"Hello Bob.\r\n\r\n\r\n");
            h.finish()
        };
        let header = header_section(MESSAGE);
        for header in [header, &header[..header.len() - 2]] {
            let mut message = hashes.sign(header).unwrap();
            message.extend_from_slice(MESSAGE);
            assert_eq!(
                verify(&message, &signer),
                vec![DkimResult::Pass, DkimResult::Pass]
            );
        }
        // No key for the domain: no hasher, nothing to sign.
        assert!(shared.body_hasher(Some("example.net")).is_none());
        assert!(shared.body_hasher(None).is_none());
    }

    /// The RSAPrivateKey (PKCS#1) inside a PKCS#8 PrivateKeyInfo: the OCTET STRING after the
    /// version and the algorithm identifier.
    fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
        // (tag, header length, content length) of the DER element at `at`.
        fn element(der: &[u8], at: usize) -> (u8, usize, usize) {
            let first = der[at + 1];
            if first < 0x80 {
                return (der[at], 2, first as usize);
            }
            let n = (first & 0x7f) as usize;
            let len = der[at + 2..at + 2 + n]
                .iter()
                .fold(0usize, |acc, b| acc << 8 | *b as usize);
            (der[at], 2 + n, len)
        }
        let (_, outer, _) = element(pkcs8, 0);
        let mut at = outer;
        for expected in [0x02, 0x30] {
            let (tag, header, len) = element(pkcs8, at);
            assert_eq!(tag, expected);
            at += header + len;
        }
        let (tag, header, len) = element(pkcs8, at);
        assert_eq!(tag, 0x04);
        pkcs8[at + header..at + header + len].to_vec()
    }

    #[test]
    fn key_formats() {
        let generated = generate(Algorithm::Rsa, 2048).unwrap();
        let loaded = LoadedKey::from_pem(generated.pem.as_bytes()).unwrap();
        assert_eq!(loaded.algorithm, Algorithm::Rsa);
        assert_eq!(loaded.dns_record(), generated.record);
        // The same key as PKCS#1 (`BEGIN RSA PRIVATE KEY`, `openssl genrsa -traditional`).
        let der = PrivateKeyDer::from_pem_slice(generated.pem.as_bytes()).unwrap();
        let pkcs1 = pem("RSA PRIVATE KEY", &pkcs1_of(der.secret_der()));
        let loaded = LoadedKey::from_pem(pkcs1.as_bytes()).unwrap();
        assert_eq!(loaded.algorithm, Algorithm::Rsa);
        assert_eq!(loaded.dns_record(), generated.record);

        let ed = generate(Algorithm::Ed25519, 0).unwrap();
        let loaded = LoadedKey::from_pem(ed.pem.as_bytes()).unwrap();
        assert_eq!(loaded.algorithm, Algorithm::Ed25519);
        assert_eq!(loaded.dns_record(), ed.record);
        assert!(ed.record.starts_with("v=DKIM1; k=ed25519; p="));
        assert_eq!(ed.record.len(), "v=DKIM1; k=ed25519; p=".len() + 44);

        // An EC key (what `cert self-signed` writes) is refused by name.
        let (_, ec) = crate::tls::self_signed("mail.example.test").unwrap();
        let err = LoadedKey::from_pem(ec.as_bytes()).unwrap_err();
        assert!(err.contains("RSA or Ed25519"), "{err}");
        assert!(LoadedKey::from_pem(b"not a key").is_err());
    }

    #[test]
    fn keygen_file_and_zone_line() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate(Algorithm::Rsa, 2048).unwrap();
        let path = write_key(dir.path(), "example.test", "s", &generated.pem).unwrap();
        assert_eq!(path, dir.path().join("example.test.s.key"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = write_key(dir.path(), "example.test", "s", "x").unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), generated.pem);

        let line = zone_line("example.test", "s", &generated.record);
        assert!(line.starts_with("s._domainkey.example.test. IN TXT \"v=DKIM1; k=rsa; p="));
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(strings.len() >= 2, "{line}");
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert_eq!(strings.concat(), generated.record);
        assert!(generate(Algorithm::Rsa, 1024).is_err());
    }
}
