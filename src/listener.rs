//! Binds the submission (587, STARTTLS) and submissions (465, implicit TLS) sockets, enforces
//! `max_connections` and `max_connections_per_ip`, and spawns one session per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// A bound server, ready to run.
pub struct Server {
    submission: Vec<SocketAddr>,
    submissions: Vec<SocketAddr>,
}

impl Server {
    /// Load TLS and users, open the spool and bind every listen address.
    pub async fn bind(_settings: Arc<Settings>) -> anyhow::Result<Server> {
        todo!("listener")
    }

    /// The bound plaintext (STARTTLS) addresses.
    pub fn submission_addrs(&self) -> &[SocketAddr] {
        &self.submission
    }

    /// The bound implicit-TLS addresses.
    pub fn submissions_addrs(&self) -> &[SocketAddr] {
        &self.submissions
    }

    /// Serve until `shutdown` is cancelled, then drain sessions (they get `421 4.3.2`).
    pub async fn run(self, _shutdown: CancellationToken) -> anyhow::Result<()> {
        todo!("listener")
    }
}
