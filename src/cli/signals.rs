//! The signals `serve` answers: SIGTERM and SIGINT stop the server, SIGHUP reloads it, SIGUSR1
//! flushes the queue. All are installed together, before the "listening" lines and the control
//! socket: whoever waits for those may signal at once, and the default action of each of these
//! signals ends the process.

use anyhow::Context;
use submitd::queue::scheduler::QueueHandle;
use submitd::server::Reloader;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The installed handlers; SIGHUP and SIGUSR1 are served by tasks until `shutdown`.
pub(crate) struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Install every handler; the reload and flush tasks end when `shutdown` is cancelled.
    pub(crate) fn install(
        reloader: Reloader,
        queue: QueueHandle,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Signals> {
        let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        tokio::spawn(reload_on_sighup(hup, reloader, shutdown.clone()));
        let usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
        tokio::spawn(flush_on_sigusr1(usr1, queue, shutdown.clone()));
        Ok(Signals { term, int })
    }

    /// Wait for SIGTERM or SIGINT; the signal's name.
    pub(crate) async fn stop_requested(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Reload on every SIGHUP until `shutdown`.
async fn reload_on_sighup(mut hup: Signal, reloader: Reloader, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            got = hup.recv() => {
                if got.is_none() {
                    break;
                }
                info!(signal = "SIGHUP", "reloading");
                // Errors are logged by reload itself.
                let _ = reloader.reload().await;
            }
        }
    }
}

/// Flush the queue on every SIGUSR1 until `shutdown` (ops signal the server directly, e.g.
/// through systemd).
async fn flush_on_sigusr1(mut usr1: Signal, queue: QueueHandle, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            Some(()) = usr1.recv() => {
                info!(signal = "SIGUSR1", "queue flush requested");
                queue.flush();
            }
            _ = shutdown.cancelled() => break,
        }
    }
}
