//! `submitd dkim keygen`.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Subcommand;

use super::{Failure, usage};

#[derive(Debug, Subcommand)]
pub(crate) enum DkimCommand {
    /// Write a new private key (DIR/DOMAIN.SELECTOR.key, mode 0600) and print its DNS TXT
    /// record and the [[dkim]] config entry.
    Keygen {
        domain: String,
        selector: String,
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: KeyAlgorithm,
        /// RSA key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// Output directory (created mode 0700 when missing).
        #[arg(long, value_name = "DIR", default_value = "dkim")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

pub(crate) fn dkim(cmd: DkimCommand) -> Result<(), Failure> {
    match cmd {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            bits,
            out,
        } => keygen(&domain, &selector, algorithm, bits, &out),
    }
}

/// `submitd dkim keygen`: the key file, then on stdout the zone line and the config entry.
fn keygen(
    domain: &str,
    selector: &str,
    algorithm: KeyAlgorithm,
    bits: usize,
    out: &Path,
) -> Result<(), Failure> {
    use submitd::dkim::{self, Algorithm};
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    let selector = selector.to_ascii_lowercase();
    submitd::config::check_hostname(&domain).map_err(|e| usage(format!("DOMAIN: {e}")))?;
    submitd::config::check_selector(&selector).map_err(|e| usage(format!("SELECTOR: {e}")))?;
    let algorithm = match algorithm {
        KeyAlgorithm::Rsa => Algorithm::Rsa,
        KeyAlgorithm::Ed25519 => Algorithm::Ed25519,
    };
    if algorithm == Algorithm::Rsa && !dkim::RSA_BITS.contains(&bits) {
        return Err(usage(format!("--bits {bits}: use 2048, 3072 or 4096")));
    }
    let key = dkim::generate(algorithm, bits).map_err(|e| Failure::Runtime(anyhow!(e)))?;
    let path = dkim::write_key(out, &domain, &selector, &key.pem)
        .map_err(|e| Failure::Runtime(e.into()))?;
    let shown = std::path::absolute(&path).unwrap_or(path);
    eprintln!("wrote {}", shown.display());
    println!("; DNS record (publish it before the key signs mail):");
    println!("{}", dkim::zone_line(&domain, &selector, &key.record));
    println!();
    println!("# submitd.toml:");
    println!("[[dkim]]");
    println!("domain = {}", toml_string(&domain));
    println!("selector = {}", toml_string(&selector));
    println!("key = {}", toml_string(&shown.display().to_string()));
    Ok(())
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
