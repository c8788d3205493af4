//! `submitd reload`.

use std::path::Path;

use submitd::config::Settings;
use submitd::control_socket::{self, Request};

use super::Failure;

/// Ask the running server, through its control socket, to re-read its files.
pub(crate) fn reload(config: &Path) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    let reply = control_socket::request(
        &settings.queue.dir,
        Request::Reload,
        control_socket::CLIENT_TIMEOUT,
    )
    .map_err(|e| Failure::Runtime(e.into()))?;
    println!("{reply}");
    Ok(())
}
