//! Binds the submission (587, STARTTLS) and submissions (465, implicit TLS) sockets, enforces
//! `max_connections` and `max_connections_per_ip`, and spawns one session per connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::auth::users::UserStore;
use crate::auth::verify::Verifier;
use crate::config::Settings;
use crate::delivery::Delivery;
use crate::metrics::{self, Metrics};
use crate::queue::Spool;
use crate::queue::fsio::{RealIo, SpoolIo};
use crate::queue::scheduler::Scheduler;
use crate::session::driver::{self, Context};
use crate::session::reply;
use crate::session::state::SessionConfig;

/// How long shutdown waits for running sessions before giving up on them.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Which kind of listener a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 587: plaintext, STARTTLS required before AUTH.
    Submission,
    /// 465: implicit TLS (RFC 8314).
    Submissions,
}

/// Counts connections in total and per client address.
struct ConnectionLimits {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// A connection's place under the limits; released on drop.
struct Admission {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    limits: Arc<ConnectionLimits>,
}

/// Why a connection was turned away.
enum Refusal {
    Total,
    PerIp,
}

impl ConnectionLimits {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *count += 1;
        Ok(Admission {
            _total: total,
            ip,
            limits: self.clone(),
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A bound server, ready to run.
pub struct Server {
    listeners: Vec<(Kind, TcpListener)>,
    submission: Vec<SocketAddr>,
    submissions: Vec<SocketAddr>,
    ctx: Arc<Context>,
    limits: Arc<ConnectionLimits>,
    scheduler: Scheduler,
    /// `[metrics] listen`, bound.
    metrics: Option<(TcpListener, SocketAddr)>,
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
        let tls = crate::tls::load_server_config(&settings.tls.cert, &settings.tls.key)?;
        let users = UserStore::open(&settings.auth.users)?;
        let spool = Spool::open_with_io(&settings.queue.dir, io)?;
        let (verifier, quota) = crate::auth::defences(users, &settings);
        let delivery = Delivery::new(&settings)?;
        let metrics = Arc::new(Metrics::new());
        let (queue, scheduler) =
            Scheduler::new(&settings, spool.clone(), delivery, metrics.clone());
        let limits = &settings.limits;
        let ctx = Arc::new(Context {
            config: Arc::new(SessionConfig {
                hostname: settings.hostname.clone(),
                max_message_size: limits.max_message_size,
                max_recipients: limits.max_recipients,
                max_auth_failures: limits.max_auth_failures,
                quota: Some(quota),
                max_bad_commands: limits.max_bad_commands,
                max_header_size: limits.max_header_size,
            }),
            command_timeout: limits.command_timeout,
            greet_pause: limits.greet_pause,
            max_session_time: limits.max_session_time,
            received_client_ip: settings.submission.received_client_ip,
            tls: TlsAcceptor::from(tls),
            verifier,
            spool,
            queue,
            shutdown: CancellationToken::new(),
            metrics,
        });
        let mut server = Server {
            listeners: Vec::new(),
            submission: Vec::new(),
            submissions: Vec::new(),
            ctx,
            limits: Arc::new(ConnectionLimits {
                total: Arc::new(Semaphore::new(limits.max_connections)),
                per_ip: Mutex::new(HashMap::new()),
                max_per_ip: limits.max_connections_per_ip,
            }),
            scheduler,
            metrics: None,
        };
        if let Some(addr) = settings.metrics.listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?;
            let local = listener.local_addr()?;
            server.metrics = Some((listener, local));
        }
        for (kind, addrs) in [
            (Kind::Submission, &settings.listen.submission),
            (Kind::Submissions, &settings.listen.submissions),
        ] {
            for addr in addrs {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                let local = listener.local_addr()?;
                match kind {
                    Kind::Submission => server.submission.push(local),
                    Kind::Submissions => server.submissions.push(local),
                }
                server.listeners.push((kind, listener));
            }
        }
        Ok(server)
    }

    /// The bound plaintext (STARTTLS) addresses.
    pub fn submission_addrs(&self) -> &[SocketAddr] {
        &self.submission
    }

    /// The bound `[metrics] listen` address, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, a)| *a)
    }

    /// The credential verifier every session shares (its counters are read by tests).
    pub fn verifier(&self) -> &Verifier {
        &self.ctx.verifier
    }

    /// The bound implicit-TLS addresses.
    pub fn submissions_addrs(&self) -> &[SocketAddr] {
        &self.submissions
    }

    /// Serve until `shutdown` is cancelled, then drain sessions: they get `421 4.3.2` at their
    /// next command; after [`DRAIN_DEADLINE`] the rest are abandoned.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let queue_stop = CancellationToken::new();
        let queue = tokio::spawn(self.scheduler.run(queue_stop.clone()));
        let scrapes = self.metrics.map(|(listener, _)| {
            tokio::spawn(metrics::serve(
                listener,
                self.ctx.metrics.clone(),
                shutdown.clone(),
            ))
        });
        let next_id = Arc::new(AtomicU64::new(1));
        let mut accept_loops = Vec::new();
        for (kind, listener) in self.listeners {
            let ctx = self.ctx.clone();
            let limits = self.limits.clone();
            let tracker = tracker.clone();
            let next_id = next_id.clone();
            let shutdown = shutdown.clone();
            accept_loops.push(tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = shutdown.cancelled() => break,
                    };
                    match accepted {
                        Ok((tcp, peer)) => {
                            let id = next_id.fetch_add(1, Ordering::Relaxed);
                            admit(tcp, peer, id, kind, &ctx, &limits, &tracker);
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        shutdown.cancelled().await;
        self.ctx.shutdown.cancel();
        // The queue stops taking new work now and finishes what runs, beside the sessions.
        queue_stop.cancel();
        for l in accept_loops.into_iter().chain(scrapes) {
            let _ = l.await;
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
        info!("stopped");
        Ok(())
    }
}

/// Apply the connection limits and spawn the session.
fn admit(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    kind: Kind,
    ctx: &Arc<Context>,
    limits: &Arc<ConnectionLimits>,
    tracker: &TaskTracker,
) {
    let _ = tcp.set_nodelay(true);
    let open = ctx.metrics.connection(match kind {
        Kind::Submission => metrics::Port::Submission,
        Kind::Submissions => metrics::Port::Submissions,
    });
    let admission = match limits.admit(peer.ip()) {
        Ok(a) => a,
        Err(refusal) => {
            ctx.metrics.refused(match refusal {
                Refusal::Total => metrics::Refused::Total,
                Refusal::PerIp => metrics::Refused::PerIp,
            });
            let hostname = &ctx.config.hostname;
            let reply = match refusal {
                Refusal::Total => reply::too_many_connections(hostname),
                Refusal::PerIp => reply::too_many_connections_from_ip(hostname),
            };
            info!(conn = id, peer = %peer, "connection refused: {reply}");
            // On 587 say why; on 465 there is no TLS yet, so just close (DESIGN.md). A fresh
            // socket's send buffer is empty, so a non-blocking write does not need a task.
            if kind == Kind::Submission {
                let _ = tcp.try_write(reply.to_wire().as_bytes());
            }
            return;
        }
    };
    let ctx = ctx.clone();
    let port = match kind {
        Kind::Submission => "submission",
        Kind::Submissions => "submissions",
    };
    let span = info_span!("session", conn = id, peer = %peer, port);
    tracker.spawn(
        async move {
            info!("connect");
            match kind {
                Kind::Submission => driver::serve_submission(tcp, ctx, peer).await,
                Kind::Submissions => driver::serve_submissions(tcp, ctx, peer).await,
            }
            info!("disconnect");
            drop(admission);
            drop(open);
        }
        .instrument(span),
    );
}
