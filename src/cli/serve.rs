//! `submitd serve`: load the config, start logging, run the server, drain on SIGTERM/SIGINT.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use submitd::config::{LogFormat, Settings};
use tokio_util::sync::CancellationToken;

use super::Failure;
use super::signals::Signals;

/// How long sessions get to finish after SIGTERM before main gives up on them.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// `serve`: the config first (its errors go to stderr as plain lines, exit 2), then logging in
/// the configured `log.format`; from then on every error is a log event.
pub(crate) fn serve(config: &Path) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    init_logging(settings.log.format);
    let result = (|| {
        submitd::dev::bootstrap(&settings)?;
        submitd::artefacts::check_files(&settings).map_err(Failure::Config)?;
        raise_open_files_limit(settings.limits.max_connections);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        runtime.block_on(run_server(settings.clone()))?;
        Ok(())
    })();
    match result {
        Err(Failure::Runtime(e)) if settings.log.format == LogFormat::Json => {
            tracing::error!(error = format!("{e:#}"), "stopped on an error");
            Err(Failure::Logged(1))
        }
        Err(Failure::Config(errors)) if settings.log.format == LogFormat::Json => {
            for e in &errors.0 {
                tracing::error!(file = %e.file.display(), key = %e.key, error = %e.message, "config error");
            }
            Err(Failure::Logged(2))
        }
        other => other,
    }
}

/// Log to stderr: `text`, human-readable (ANSI colour only on a terminal), or `json`, one object
/// per line with the event's fields as top-level keys and the session's (`conn`, `peer`,
/// `port`) under `span`. `RUST_LOG` sets the filter; default `info`.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            // Colour only for a person at a terminal: journald, files and pipes get plain text.
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Raise the soft limit on open files to the hard limit: every connection is a descriptor, and
/// the usual soft default (1024) would refuse connections long before `limits.max_connections`.
fn raise_open_files_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open files limit");
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open files limit");
            lim.rlim_cur = before;
        }
    }
    // Listeners, the spool, outbound connections and logs need descriptors too.
    let needed = max_connections as u64 + 64;
    if lim.rlim_cur < needed {
        tracing::warn!(
            open_files = lim.rlim_cur,
            max_connections,
            "the open files limit is below limits.max_connections; raise the hard limit (LimitNOFILE=)"
        );
    } else {
        tracing::info!(open_files = lim.rlim_cur, was = before, "open files limit");
    }
}

async fn run_server(settings: Settings) -> anyhow::Result<()> {
    let queue_dir = settings.queue.dir.clone();
    let server = submitd::server::Server::bind(Arc::new(settings)).await?;
    let shutdown = CancellationToken::new();
    // Handlers first, so that a signal arriving while the server starts is not lost.
    let mut signals = Signals::install(server.reloader(), server.queue(), &shutdown)?;
    for a in server.submission_addrs() {
        tracing::info!(kind = "submission", addr = %a, "listening");
    }
    for a in server.submissions_addrs() {
        tracing::info!(kind = "submissions", addr = %a, "listening");
    }
    if let Some(a) = server.metrics_addr() {
        tracing::info!(kind = "metrics", addr = %a, "listening");
    }
    if let Some(a) = server.api_addr() {
        tracing::info!(kind = "api", addr = %a, "listening");
    }
    let pid_file = submitd::pidfile::PidFile::acquire(&queue_dir)?;
    // Bound only under the pid file's lock: a socket file already there is stale.
    let control = submitd::listener::control::ControlSocket::bind(&queue_dir, &pid_file)
        .context("creating the control socket")
        .and_then(|socket| {
            socket
                .serve(
                    server.reloader(),
                    server.queue(),
                    server.tls_reporter(),
                    shutdown.clone(),
                )
                .context("serving the control socket")
        });
    let control = match control {
        Ok(task) => task,
        Err(e) => {
            pid_file.remove();
            return Err(e);
        }
    };
    let result = serve_until_signal(server, shutdown.clone(), &mut signals).await;
    shutdown.cancel();
    // The task removes the socket file when it sees the cancellation.
    let _ = tokio::time::timeout(Duration::from_secs(5), control).await;
    pid_file.remove();
    result
}

/// Run until SIGTERM or SIGINT, then drain the sessions within [`SHUTDOWN_DEADLINE`].
async fn serve_until_signal(
    server: submitd::server::Server,
    shutdown: CancellationToken,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    let mut task = tokio::spawn(server.run(shutdown.clone()));
    tokio::select! {
        name = signals.stop_requested() => tracing::info!(signal = name, "shutting down"),
        result = &mut task => {
            // The server stopped without being asked: that is an error even if it says Ok.
            result.context("server task")??;
            return Err(anyhow!("server stopped unexpectedly"));
        }
    }
    shutdown.cancel();
    match tokio::time::timeout(SHUTDOWN_DEADLINE, task).await {
        Ok(result) => result.context("server task")?,
        Err(_) => Err(anyhow!(
            "sessions did not finish within {SHUTDOWN_DEADLINE:?} of shutdown"
        )),
    }
}
