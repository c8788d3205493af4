//! `submitd health`.

use std::path::Path;

use anyhow::anyhow;
use submitd::config::Settings;

use super::Failure;

/// One 220 greeting from the first listen address, or exit 1.
pub(crate) fn health(config: &Path) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    let report = submitd::health::check(&settings.listen, submitd::health::TIMEOUT)
        .map_err(|e| Failure::Runtime(anyhow!("unhealthy: {e}")))?;
    println!("healthy: {report}");
    Ok(())
}
