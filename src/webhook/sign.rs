//! Standard Webhooks signing (<https://www.standardwebhooks.com>, "Signature scheme"): the
//! secret is `whsec_` + base64 of the key; the signature is
//! `v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")).

use aws_lc_rs::{hmac, rand};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};

/// The secret's prefix.
pub const PREFIX: &str = "whsec_";
/// The shortest key accepted (the spec asks for 24 to 64 random bytes).
pub const MIN_KEY_BYTES: usize = 24;
/// The longest key accepted.
pub const MAX_KEY_BYTES: usize = 64;

/// Padding optional, as the reference libraries accept.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signing key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Parse `whsec_BASE64` (surrounding white space ignored).
    pub fn parse(text: &str) -> Result<Secret, String> {
        let text = text.trim();
        let Some(encoded) = text.strip_prefix(PREFIX) else {
            return Err(format!(
                "not a webhook secret: it must start with {PREFIX:?} (make one with `submitd webhook secret`)"
            ));
        };
        let key = LENIENT
            .decode(encoded)
            .map_err(|e| format!("the part after {PREFIX:?} is not base64: {e}"))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; it must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes",
                key.len()
            ));
        }
        Ok(Secret(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    /// Read and parse a secret file.
    pub fn load(path: &std::path::Path) -> Result<Secret, String> {
        use std::io::Read as _;
        // A secret is under 100 bytes; a larger file is not one (and is not read whole).
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(4096).read_to_string(&mut text))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Secret::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The `webhook-signature` value for one request.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

/// A fresh secret: `whsec_` + base64 of 32 random bytes.
pub fn generate() -> String {
    let mut key = [0u8; 32];
    rand::fill(&mut key).expect("the system random source");
    format!("{PREFIX}{}", STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer vector of the Standard Webhooks reference libraries' tests (checked
    /// with the Python `standardwebhooks` 1.1.0 package).
    #[test]
    fn known_answer() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // Any change to id, timestamp or body changes the signature.
        let base = secret.sign("msg_1", 1, b"{}");
        assert_ne!(base, secret.sign("msg_2", 1, b"{}"));
        assert_ne!(base, secret.sign("msg_1", 2, b"{}"));
        assert_ne!(base, secret.sign("msg_1", 1, b"{ }"));
    }

    #[test]
    fn secret_format() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_!!!").is_err());
        // 12 bytes: too short.
        assert!(
            Secret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 12])))
                .unwrap_err()
                .contains("12 bytes")
        );
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 65]))).is_err());
        // Padding optional, white space around ignored.
        let unpadded = STANDARD.encode([7u8; 25]).trim_end_matches('=').to_string();
        assert!(Secret::parse(&format!("  whsec_{unpadded}\n")).is_ok());
        let fresh = generate();
        assert!(fresh.starts_with("whsec_"));
        assert!(Secret::parse(&fresh).is_ok());
        assert_ne!(fresh, generate());
        assert_eq!(
            format!("{:?}", Secret::parse(&fresh).unwrap()),
            "Secret(..)"
        );
    }
}
