//! `submitd tls-report`.

use std::path::Path;

use submitd::config::Settings;
use submitd::control_socket::{self, Request};

use super::Failure;

/// Ask the running server, through its control socket, to send the TLS-RPT reports now.
pub(crate) fn tls_report(config: &Path) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    let reply = control_socket::request(
        &settings.queue.dir,
        Request::TlsReport,
        control_socket::CLIENT_TIMEOUT,
    )
    .map_err(|e| Failure::Runtime(e.into()))?;
    println!("{reply}");
    Ok(())
}
