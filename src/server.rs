//! The composition root: [`Server::bind`] loads the certificate, users and DKIM keys, opens
//! the spool, builds the verifier, the quota and the queue scheduler and binds every socket;
//! [`Server::run`] serves until shutdown and drains. The state every accept loop and every
//! reload share lives here too: what new connections are served with, swapped whole by a
//! [`Reloader`] from what [`crate::reload`] prepared.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::keyhome::KeyHome;
use crate::auth::keys::KeyFeed;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::auth::quota::Quota;
use crate::auth::users::UserStore;
use crate::auth::verify::Verifier;
use crate::config::{AuthBackend, ConfigError, ConfigErrors, Settings};
use crate::delivery::Delivery;
use crate::delivery::tlsrpt::Reporter;
use crate::events::Events;
use crate::intake::Intake;
use crate::listener::{Admission, Current, Live, ProxyStats, Sockets};
use crate::metrics::Metrics;
use crate::queue::Spool;
use crate::queue::fsio::{RealIo, SpoolIo};
use crate::queue::scheduler::{QueueHandle, Scheduler};
use crate::reload::{Prepared, Reload, Reloaded};
use crate::session::driver::Context;
use crate::session::state::SessionConfig;
use crate::status::StatusSink;
use crate::suppression::{BounceSink, Suppressions};

/// How long shutdown waits for running sessions before giving up on them.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// The part of a server that accept loops and reloads share.
struct Shared {
    live: RwLock<Arc<Live>>,
    admission: Arc<Admission>,
}

impl Current for Shared {
    fn current(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Shared {
    /// Serve new connections with `settings` and `tls` from now on. The verifier, throttles,
    /// spool and queue stay the same objects; open sessions keep their own snapshot.
    fn apply(&self, settings: Settings, tls: Arc<rustls::ServerConfig>) {
        let old = self.current();
        let mut ctx = Context::clone(&old.ctx);
        let limits = &settings.limits;
        ctx.config = session_config(
            &settings,
            old.ctx.config.quota.clone(),
            old.ctx.config.suppressions.clone(),
        );
        ctx.command_timeout = limits.command_timeout;
        ctx.greet_pause = limits.greet_pause;
        ctx.max_session_time = limits.max_session_time;
        ctx.intake.received_client_ip = settings.submission.received_client_ip;
        ctx.tls = TlsAcceptor::from(tls);
        self.admission.set_limits(limits);
        if let Some(throttle) = ctx.verifier.throttle() {
            throttle.set_ipv6_prefix(limits.ipv6_prefix);
        }
        let live = Arc::new(Live {
            settings: Arc::new(settings),
            ctx: Arc::new(ctx),
        });
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = live;
    }
}

/// What each session is told of the settings; `quota` is the server's one sending ledger,
/// kept across reloads.
fn session_config(
    settings: &Settings,
    quota: Option<Arc<Quota>>,
    suppressions: Option<Arc<Suppressions>>,
) -> Arc<SessionConfig> {
    let limits = &settings.limits;
    Arc::new(SessionConfig {
        hostname: settings.hostname.clone(),
        max_message_size: limits.max_message_size,
        max_recipients: limits.max_recipients,
        max_auth_failures: limits.max_auth_failures,
        quota,
        max_bad_commands: limits.max_bad_commands,
        max_header_size: limits.max_header_size,
        max_hops: limits.max_hops,
        suppressions,
    })
}

/// A bound server, ready to run.
pub struct Server {
    sockets: Sockets,
    shared: Arc<Shared>,
    /// The verifier every session shares (also inside `shared`; kept here to lend it out).
    verifier: Verifier,
    scheduler: Scheduler,
    /// The shared state store and the suspensions that follow its set, when `[state]` has one.
    follow: Option<(
        Arc<crate::state::Shared>,
        Arc<crate::auth::suspend::Suspensions>,
    )>,
    /// TLS-RPT reports (MX mode with `relay.mta_sts`): daily, and on `tls-report`.
    tls_reporter: Option<Arc<Reporter>>,
    /// The certificate the HTTP API serves with `api.tls` (the `[tls]` one, at start).
    api_tls: Arc<rustls::ServerConfig>,
    /// Who hears of delivery events (webhooks, ...); the scheduler has the same sinks.
    events: crate::events::Events,
    /// `[[webhook]]` endpoints, whose dispatchers `run` starts.
    webhooks: Option<Arc<crate::webhook::Webhooks>>,
    /// The suppression list (`[suppression] enabled`), followed for the CLI's changes.
    suppressions: Option<Arc<Suppressions>>,
    /// `queue.dir` and `queue.status_retention`, for pruning the status records.
    status_prune: (std::path::PathBuf, Duration),
    /// A directory that keeps the API keys, and the feed of the verifier's copy of them.
    key_follow: Option<(Arc<KeyHome>, KeyFeed)>,
}

/// The API keys the server checks: the keys file, or a copy of a directory's keys read once
/// now (a directory that does not answer yet starts with none, and is read again every
/// second once serving) and the feed that keeps it fresh.
async fn open_keys(
    settings: &Settings,
) -> anyhow::Result<(crate::auth::keys::KeyStore, Option<(Arc<KeyHome>, KeyFeed)>)> {
    let home = KeyHome::from_settings(settings)?;
    let (store, feed) = home.store()?;
    let Some(feed) = feed else {
        return Ok((store, None));
    };
    match home.keys().await {
        Ok(keys) => {
            feed.replace(keys);
            tracing::info!(store = %home.describe(), keys = feed.len(), "API keys read");
        }
        Err(e) => tracing::error!(
            store = %home.describe(),
            error = %e,
            "API keys could not be read; none accepted until they can be"
        ),
    }
    Ok((store, Some((Arc::new(home), feed))))
}

/// Ask the directory backend once at start-up, so that a wrong setting shows in the log at
/// once rather than at the first login (the server serves either way: an outage is `454`).
async fn probe_directory(verifier: Verifier) {
    let Some(d) = verifier.directory() else {
        return;
    };
    match d.check().await {
        Ok(()) => tracing::info!(backend = d.name(), "authentication backend reachable"),
        Err(e) => {
            tracing::error!(backend = d.name(), key = e.key(), error = %crate::logsafe::Escaped(&e.to_string()),
            "authentication backend check failed; logins get 454 4.7.0 until it answers")
        }
    }
}

impl Server {
    /// Load TLS and users, open the spool and bind every listen address.
    pub async fn bind(settings: Arc<Settings>) -> anyhow::Result<Server> {
        Server::bind_with_spool_io(settings, Arc::new(RealIo)).await
    }

    /// [`Server::bind`] with the spool writing through `io` (storage-fault tests).
    pub async fn bind_with_spool_io(
        settings: Arc<Settings>,
        io: Arc<dyn SpoolIo>,
    ) -> anyhow::Result<Server> {
        // Before anything is opened: keys a directory would not read stop the start.
        crate::auth::keyhome::check_left_behind(&settings, &KeyHome::from_settings(&settings)?)
            .map_err(anyhow::Error::msg)?;
        let tls = crate::tls::load_server_config(&settings.tls.cert, &settings.tls.key)?;
        let api_tls = tls.clone();
        let users = match &settings.auth.users {
            Some(path) if settings.auth.backend == AuthBackend::File => UserStore::open(path)?,
            Some(path) => UserStore::open_overlay(path)?,
            None => UserStore::from_users(Vec::new()),
        };
        let spool = Spool::open_with_io(&settings.queue.dir, io)?;
        let metrics = Arc::new(Metrics::new());
        let state = crate::state::from_settings(&settings.state, Some(metrics.clone()))?;
        let (verifier, quota) = crate::auth::defences(users, &settings, state.clone());
        let follow = state.map(|s| (s, quota.suspensions().clone()));
        let (key_store, key_follow) = open_keys(&settings).await?;
        let mut verifier = verifier
            .with_default_senders(&settings.auth.default_senders)
            .with_keys(key_store);
        if let Some(directory) = crate::auth::directory(&settings, Some(metrics.clone()))? {
            verifier = verifier.with_directory(directory);
            tokio::spawn(probe_directory(verifier.clone()));
        }
        let delivery = Arc::new(Delivery::new(&settings)?);
        let reporting = delivery.tls_reporting();
        let suppressions = open_suppressions(&settings)?;
        let webhooks = crate::webhook::Webhooks::open(&settings, metrics.clone())?.map(Arc::new);
        // Status and suppression first: a webhook's receiver may ask for the status it announces.
        let mut events = supp_events(&spool, suppressions.as_ref());
        if let Some(w) = &webhooks {
            events = events.with(w.clone());
        }
        let (queue, scheduler) =
            Scheduler::new(&settings, spool.clone(), delivery, metrics.clone());
        let scheduler = scheduler.with_events(events.clone());
        let tls_reporter = reporting.map(|(recorder, resolver, webpki)| {
            Arc::new(Reporter {
                recorder,
                resolver,
                webpki,
                spool: spool.clone(),
                queue: queue.clone(),
                hostname: settings.hostname.clone(),
                from: settings
                    .tls
                    .reporting_from
                    .clone()
                    .unwrap_or_else(|| format!("postmaster@{}", settings.hostname)),
            })
        });
        let limits = &settings.limits;
        let ctx = Arc::new(Context {
            config: session_config(&settings, Some(quota.clone()), suppressions.clone()),
            command_timeout: limits.command_timeout,
            greet_pause: limits.greet_pause,
            max_session_time: limits.max_session_time,
            tls: TlsAcceptor::from(tls),
            verifier: verifier.clone(),
            intake: Intake {
                hostname: settings.hostname.clone(),
                received_client_ip: settings.submission.received_client_ip,
                spool,
                queue,
                dkim: crate::dkim::SharedSigner::new(crate::dkim::DkimSigner::load(
                    &settings.dkim,
                )?),
                quota: Some(quota),
                metrics: metrics.clone(),
            },
            shutdown: CancellationToken::new(),
            metrics,
            events: events.clone(),
        });
        let shared = Arc::new(Shared {
            live: RwLock::new(Arc::new(Live {
                settings: settings.clone(),
                ctx,
            })),
            admission: Arc::new(Admission::new(limits)),
        });
        Ok(Server {
            sockets: Sockets::bind(&settings).await?,
            shared,
            verifier,
            scheduler,
            follow,
            tls_reporter,
            api_tls,
            events,
            webhooks,
            suppressions,
            status_prune: (settings.queue.dir.clone(), settings.queue.status_retention),
            key_follow,
        })
    }

    /// Replace the suppression list (the HTTP API checks it per tenant and manages it through
    /// `/v1/suppressions`); for tests, an in-memory one.
    pub fn with_suppressions(
        mut self,
        list: Option<Arc<crate::suppression::Suppressions>>,
    ) -> Server {
        self.suppressions = list;
        self
    }

    /// Replace the event sinks the HTTP API reports its `suppressed` events to (the scheduler
    /// keeps the sinks it got at bind); for tests.
    pub fn with_api_events(mut self, events: crate::events::Events) -> Server {
        self.events = events;
        self
    }

    /// The bound `[api] listen` address, when the HTTP API is on.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.sockets.api_addr()
    }

    /// The bound plaintext (STARTTLS) addresses.
    pub fn submission_addrs(&self) -> &[SocketAddr] {
        self.sockets.submission_addrs()
    }

    /// The bound implicit-TLS addresses.
    pub fn submissions_addrs(&self) -> &[SocketAddr] {
        self.sockets.submissions_addrs()
    }

    /// The bound `[metrics] listen` address, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.sockets.metrics_addr()
    }

    /// The credential verifier every session shares (its counters are read by tests).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Reloads the config, certificate, users and limits of this server while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The handle that announces messages to the queue scheduler and flushes it.
    pub fn queue(&self) -> QueueHandle {
        self.shared.current().ctx.intake.queue.clone()
    }

    /// The suppression list, when `[suppression] enabled` (for the HTTP API).
    pub fn suppressions(&self) -> Option<Arc<Suppressions>> {
        self.suppressions.clone()
    }

    /// The TLS-RPT reporter, when MX mode with `relay.mta_sts` (for the control socket).
    pub fn tls_reporter(&self) -> Option<Arc<Reporter>> {
        self.tls_reporter.clone()
    }

    /// The delivery-event sinks (to record events from outside the scheduler, e.g. the API).
    pub fn events(&self) -> &crate::events::Events {
        &self.events
    }

    /// Connections closed by the PROXY protocol checks so far.
    pub fn proxy_stats(&self) -> Arc<ProxyStats> {
        self.shared.admission.proxy_stats.clone()
    }

    /// Serve until `shutdown` is cancelled, then drain sessions: they get `421 4.3.2` at their
    /// next command; after [`DRAIN_DEADLINE`] the rest are abandoned.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let queue_stop = CancellationToken::new();
        let queue = tokio::spawn(self.scheduler.run(queue_stop.clone()));
        if let Some((state, suspensions)) = self.follow.clone() {
            tokio::spawn(crate::auth::follow_shared_suspensions(
                state,
                suspensions,
                shutdown.clone(),
            ));
        }
        if let Some((home, feed)) = self.key_follow.clone() {
            tokio::spawn(crate::auth::keyhome::follow(home, feed, shutdown.clone()));
        }
        if let Some(store) = self.suppressions.clone() {
            tokio::spawn(crate::suppression::follow(store, shutdown.clone()));
        }
        let (queue_dir, retention) = self.status_prune.clone();
        tokio::spawn(crate::status::prune(queue_dir, retention, shutdown.clone()));
        if let Some(reporter) = self.tls_reporter.clone() {
            tokio::spawn(daily_tls_reports(reporter, shutdown.clone()));
        }
        if let Some(webhooks) = &self.webhooks {
            webhooks.spawn(&shutdown);
        }
        let metrics = self.shared.current().ctx.metrics.clone();
        let admission = self.shared.admission.clone();
        let mut sockets = self.sockets;
        let api = serve_api(
            &mut sockets,
            &self.shared,
            self.api_tls.clone(),
            self.suppressions.clone(),
            self.events.clone(),
            &shutdown,
        );
        let mut tasks = sockets.serve(self.shared.clone(), admission, metrics, &tracker, &shutdown);
        tasks.extend(api);
        shutdown.cancelled().await;
        // Every context a reload made shares this token.
        self.shared.current().ctx.shutdown.cancel();
        // The queue stops taking new work now and finishes what runs, beside the sessions.
        queue_stop.cancel();
        for task in tasks {
            let _ = task.await;
        }
        tracker.close();
        if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = tracker.len(),
                "shutdown deadline passed with sessions open"
            );
        }
        let _ = queue.await;
        if let Some(reporter) = &self.tls_reporter {
            reporter.recorder.flush().await;
        }
        info!("stopped");
        Ok(())
    }
}

/// Start the HTTP API on `[api] listen`, when it is on.
fn serve_api(
    sockets: &mut Sockets,
    shared: &Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    suppressions: Option<Arc<crate::suppression::Suppressions>>,
    events: crate::events::Events,
    shutdown: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let settings = shared.current().settings.clone();
    let api = &settings.api;
    let state =
        crate::api::ApiState::new(shared.clone(), suppressions, events, &settings.queue.dir);
    let limits = crate::listener::http::HttpLimits {
        max_connections: api.max_connections,
        max_header_size: api.max_header_size,
        max_headers: api.max_headers,
        request_timeout: api.request_timeout,
        keep_alive: true,
    };
    let tls = api.tls.then_some(tls);
    sockets.serve_api(crate::api::router(state), tls, limits, shutdown)
}

/// The event sinks of this part of issue 16: the suppression list's [`BounceSink`] (when
/// enabled) and the status records ([`StatusSink`]). The lead adds the webhooks' sink.
fn supp_events(spool: &Spool, suppressions: Option<&Arc<Suppressions>>) -> Events {
    let mut events = Events::default();
    if let Some(store) = suppressions {
        events = events.with(Arc::new(BounceSink {
            store: store.clone(),
        }));
    }
    events.with(Arc::new(StatusSink::new(spool.clone())))
}

/// The suppression list in `queue.dir/suppressions`, when `[suppression] enabled`.
fn open_suppressions(settings: &Settings) -> anyhow::Result<Option<Arc<Suppressions>>> {
    let s = &settings.suppression;
    if !s.enabled {
        return Ok(None);
    }
    let store = Suppressions::open_in_queue(&settings.queue.dir, s.ttl, s.max_entries)?;
    Ok(Some(Arc::new(store)))
}

/// Send the TLS-RPT reports at every UTC midnight (RFC 8460 section 4.1: a report covers a
/// UTC day), until `shutdown`.
async fn daily_tls_reports(reporter: Arc<Reporter>, shutdown: CancellationToken) {
    const DAY: u64 = 86_400;
    loop {
        let now = crate::clock::unix_now();
        let wait = std::time::Duration::from_secs((now / DAY + 1) * DAY - now);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        reporter.send().await;
    }
}

/// Reloads a running server. Cheap to clone; reloads run one at a time.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    /// Re-read the config file the server started with and apply it to new connections. On
    /// error nothing changes; the reasons are logged and returned.
    pub async fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let _one_at_a_time = self.running.lock().await;
        let current = self.shared.current();
        let old = current.settings.clone();
        let users = current.ctx.verifier.users().clone();
        let path = old.config_path.clone();
        let prepared =
            tokio::task::spawn_blocking(move || crate::reload::prepare(&old, &path, &users)).await;
        let result = match prepared {
            Ok(r) => r,
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: current.settings.config_path.clone(),
                key: "-".into(),
                message: format!("reload task failed: {e}"),
            }])),
        };
        match result {
            Ok(Prepared {
                settings,
                tls,
                dkim,
                users,
                needs_restart,
            }) => {
                // The users file is read now rather than at the next login's check.
                let users = current.ctx.verifier.users().install(users);
                // One signer is shared by every session: messages signed from now on use the
                // new keys.
                current.ctx.intake.dkim.replace(dkim);
                self.shared.apply(settings, tls);
                info!(
                    config = %current.settings.config_path.display(),
                    users,
                    "reloaded: new connections use the new settings"
                );
                Ok(Reloaded {
                    needs_restart,
                    users,
                })
            }
            Err(errors) => {
                for e in &errors.0 {
                    error!(
                        file = %e.file.display(),
                        key = %e.key,
                        "reload refused, keeping the running config: {}",
                        e.message
                    );
                }
                Err(errors)
            }
        }
    }
}

impl Reload for Reloader {
    fn reload(&self) -> impl std::future::Future<Output = Result<Reloaded, ConfigErrors>> + Send {
        Reloader::reload(self)
    }
}
