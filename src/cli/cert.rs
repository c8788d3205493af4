//! `submitd cert self-signed`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{Failure, usage};

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Write a self-signed certificate and PKCS#8 key (cert.pem, key.pem).
    SelfSigned {
        /// The name to put in the certificate's SAN.
        #[arg(long)]
        hostname: String,
        /// Output directory (created when missing).
        #[arg(long, value_name = "DIR", default_value = "certs")]
        out: PathBuf,
    },
}

pub(crate) fn cert(cmd: CertCommand) -> Result<(), Failure> {
    let CertCommand::SelfSigned { hostname, out } = cmd;
    submitd::config::check_hostname(&hostname).map_err(|e| usage(format!("--hostname: {e}")))?;
    submitd::tls::write_self_signed(&hostname, &out).map_err(|e| Failure::Runtime(e.into()))?;
    println!(
        "wrote {} and {}",
        out.join("cert.pem").display(),
        out.join("key.pem").display()
    );
    Ok(())
}
