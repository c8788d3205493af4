//! `[dev]`: development conveniences, never on in `config/submitd.toml`.

use serde::Deserialize;

use super::Problems;

/// `[dev]`: development conveniences, never on in `config/submitd.toml`.
#[derive(Debug, Clone, Default)]
pub struct DevSettings {
    /// Create a self-signed cert and a dev user on first run when they are absent.
    pub bootstrap: bool,
    /// The login of the dev user created by `bootstrap`.
    pub user: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDev {
    #[serde(default)]
    bootstrap: bool,
    #[serde(default = "default_dev_user")]
    user: String,
}

fn default_dev_user() -> String {
    "dev@localhost".into()
}

impl Default for RawDev {
    fn default() -> Self {
        RawDev {
            bootstrap: false,
            user: default_dev_user(),
        }
    }
}

/// Validate `[dev]`.
pub(super) fn parse(raw: &RawDev, p: &mut Problems<'_>) -> DevSettings {
    if raw.user.trim().is_empty() {
        p.push("dev.user", "must not be empty");
    }
    DevSettings {
        bootstrap: raw.bootstrap,
        user: raw.user.trim().to_string(),
    }
}
