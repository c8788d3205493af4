//! `submitd check-config`.

use std::path::Path;

use submitd::auth::backend::BackendError;
use submitd::config::{ConfigError, ConfigErrors, Settings};

use super::Failure;

/// Every problem of the config, the certificate and key, and the users file; then, with a
/// directory backend, a connection to it (bind, queries); or "config OK".
pub(crate) fn check_config(config: &Path) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    submitd::artefacts::check_files(&settings).map_err(Failure::Config)?;
    check_backend(&settings)?;
    check_state(&settings)?;
    println!("config OK: {}", config.display());
    Ok(())
}

/// With `[state] backend = "redis"`: one round trip to the store.
fn check_state(settings: &Settings) -> Result<(), Failure> {
    let key = match &settings.state.backend {
        submitd::config::StateBackend::Redis {
            url: submitd::config::StateUrl::File(_),
            ..
        } => "state.url_file",
        _ => "state.url",
    };
    let fail = |e: submitd::state::StoreError| {
        Failure::Config(ConfigErrors(vec![ConfigError {
            file: settings.config_path.clone(),
            key: key.to_owned(),
            message: e.to_string(),
        }]))
    };
    let Some(shared) = submitd::state::from_settings(&settings.state, None).map_err(fail)? else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(shared.store().ping()).map_err(fail)?;
    println!("state.backend \"redis\": reachable");
    Ok(())
}

/// Connect to the directory backend and do what a login does short of checking a password.
fn check_backend(settings: &Settings) -> Result<(), Failure> {
    let fail = |e: BackendError| {
        Failure::Config(ConfigErrors(vec![ConfigError {
            file: settings.config_path.clone(),
            key: e.key().to_owned(),
            message: e
                .to_string()
                .trim_start_matches(&format!("{}: ", e.key()))
                .to_owned(),
        }]))
    };
    let Some(directory) = submitd::auth::directory(settings, None).map_err(fail)? else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(directory.check()).map_err(fail)?;
    println!(
        "auth.backend {:?}: reachable, settings accepted",
        directory.name()
    );
    let home = submitd::auth::keyhome::KeyHome::from_settings(settings).map_err(fail)?;
    if !matches!(home, submitd::auth::keyhome::KeyHome::File { .. }) {
        submitd::auth::keyhome::check_left_behind(settings, &home)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!(e)))?;
        match runtime.block_on(home.list()) {
            Ok((keys, problems)) => {
                for p in problems {
                    println!("API key left out (the server cannot use it): {p}");
                }
                println!("API keys: {} in {}", keys.len(), home.describe());
            }
            Err(submitd::auth::keys::KeysError::Backend(e)) => return Err(fail(e)),
            Err(e) => return Err(Failure::Runtime(e.into())),
        }
    }
    Ok(())
}
