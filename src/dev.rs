//! Development conveniences, active only when `[dev] bootstrap = true` (config/dev.toml):
//! on first run create the self-signed certificate and a dev user when they are absent,
//! printing the generated password once.

use crate::config::Settings;

/// Create the missing cert/key and users file for a dev config; no-op unless `dev.bootstrap`.
pub fn bootstrap(_settings: &Settings) -> anyhow::Result<()> {
    todo!("config helper")
}
