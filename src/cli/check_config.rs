//! `submitd check-config`.

use std::path::Path;

use submitd::config::Settings;

use super::Failure;

/// Every problem of the config, the certificate and key, and the users file, or "config OK".
pub(crate) fn check_config(config: &Path) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    submitd::artefacts::check_files(&settings).map_err(Failure::Config)?;
    println!("config OK: {}", config.display());
    Ok(())
}
