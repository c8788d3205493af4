//! Binds the submission (587, STARTTLS) and submissions (465, implicit TLS) sockets, enforces
//! `max_connections` and `max_connections_per_ip`, and spawns one session per connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::auth::quota::Quota;
use crate::auth::users::UserStore;
use crate::auth::verify::Verifier;
use crate::config::Settings;
use crate::delivery::Delivery;
use crate::intake::Intake;
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

/// Counts connections in total and per client address (IPv6: per network of
/// `limits.ipv6_prefix` bits, see [`crate::ipkey`]). The maxima and the prefix change on
/// reload; a connection already admitted stays admitted and is released under the key it was
/// counted under.
struct ConnectionLimits {
    counts: Mutex<Counts>,
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    ipv6_prefix: AtomicU8,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's place under `max_connections`; released on drop.
struct Slot {
    limits: Arc<ConnectionLimits>,
}

/// A connection's place under `max_connections_per_ip`; released on drop.
struct IpSlot {
    ip: IpAddr,
    limits: Arc<ConnectionLimits>,
}

/// Why a connection was turned away.
enum Refusal {
    Total,
    PerIp,
}

impl ConnectionLimits {
    fn new(max_total: usize, max_per_ip: usize, ipv6_prefix: u8) -> ConnectionLimits {
        ConnectionLimits {
            counts: Mutex::new(Counts::default()),
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            ipv6_prefix: AtomicU8::new(ipv6_prefix),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let mut counts = self.counts();
        if counts.total >= self.max_total.load(Ordering::Relaxed) {
            return Err(Refusal::Total);
        }
        counts.total += 1;
        Ok(Slot {
            limits: self.clone(),
        })
    }

    fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, Refusal> {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: one client, one count;
        // one IPv6 host commonly holds a whole /64: one network, one count.
        let ip = crate::ipkey::limit_key(ip, self.ipv6_prefix.load(Ordering::Relaxed));
        let mut counts = self.counts();
        let count = counts.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip.load(Ordering::Relaxed) {
            if *count == 0 {
                counts.per_ip.remove(&ip);
            }
            return Err(Refusal::PerIp);
        }
        *count += 1;
        Ok(IpSlot {
            ip,
            limits: self.clone(),
        })
    }

    fn set_max(&self, total: usize, per_ip: usize, ipv6_prefix: u8) {
        self.max_total.store(total, Ordering::Relaxed);
        self.max_per_ip.store(per_ip, Ordering::Relaxed);
        self.ipv6_prefix.store(ipv6_prefix, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts();
        counts.total = counts.total.saturating_sub(1);
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts();
        if let Some(count) = counts.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// What new connections are served with: replaced whole by a reload, taken as a snapshot by
/// each connection at accept.
pub(crate) struct Live {
    /// The settings in effect (keys that need a restart keep their startup values).
    pub(crate) settings: Arc<Settings>,
    pub(crate) ctx: Arc<Context>,
}

/// Counters of connections closed by the PROXY protocol checks.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections from peers not in `listen.trusted_proxies`.
    pub untrusted: AtomicU64,
    /// Connections whose header was malformed, too long, late or missing.
    pub bad_header: AtomicU64,
}

/// The part of a server that accept loops and reloads share.
pub(crate) struct Shared {
    live: RwLock<Arc<Live>>,
    limits: Arc<ConnectionLimits>,
    pub(crate) proxy_stats: Arc<ProxyStats>,
}

impl Shared {
    /// The settings and context a new connection gets now.
    pub(crate) fn snapshot(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serve new connections with `settings` and `tls` from now on. The verifier, throttles,
    /// spool and queue stay the same objects; open sessions keep their own snapshot.
    pub(crate) fn apply(&self, settings: Settings, tls: Arc<rustls::ServerConfig>) {
        let old = self.snapshot();
        let mut ctx = Context::clone(&old.ctx);
        let limits = &settings.limits;
        ctx.config = session_config(&settings, old.ctx.config.quota.clone());
        ctx.command_timeout = limits.command_timeout;
        ctx.greet_pause = limits.greet_pause;
        ctx.max_session_time = limits.max_session_time;
        ctx.intake.received_client_ip = settings.submission.received_client_ip;
        ctx.tls = TlsAcceptor::from(tls);
        self.limits.set_max(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.ipv6_prefix,
        );
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
fn session_config(settings: &Settings, quota: Option<Arc<Quota>>) -> Arc<SessionConfig> {
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
    })
}

/// A bound server, ready to run.
pub struct Server {
    listeners: Vec<(Kind, TcpListener)>,
    submission: Vec<SocketAddr>,
    submissions: Vec<SocketAddr>,
    shared: Arc<Shared>,
    /// The verifier every session shares (also inside `shared`; kept here to lend it out).
    verifier: Verifier,
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
        let delivery = Arc::new(Delivery::new(&settings)?);
        let metrics = Arc::new(Metrics::new());
        let (queue, scheduler) =
            Scheduler::new(&settings, spool.clone(), delivery, metrics.clone());
        let limits = &settings.limits;
        let ctx_verifier = verifier.clone();
        let ctx = Arc::new(Context {
            config: session_config(&settings, Some(quota.clone())),
            command_timeout: limits.command_timeout,
            greet_pause: limits.greet_pause,
            max_session_time: limits.max_session_time,
            tls: TlsAcceptor::from(tls),
            verifier,
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
        });
        let mut server = Server {
            listeners: Vec::new(),
            submission: Vec::new(),
            submissions: Vec::new(),
            shared: Arc::new(Shared {
                live: RwLock::new(Arc::new(Live {
                    settings: settings.clone(),
                    ctx,
                })),
                limits: Arc::new(ConnectionLimits::new(
                    limits.max_connections,
                    limits.max_connections_per_ip,
                    limits.ipv6_prefix,
                )),
                proxy_stats: Arc::default(),
            }),
            verifier: ctx_verifier,
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
        &self.verifier
    }

    /// Reloads the config, certificate, users and limits of this server while it runs.
    pub fn reloader(&self) -> crate::reload::Reloader {
        crate::reload::Reloader::new(self.shared.clone())
    }

    /// The handle that announces messages to the queue scheduler and flushes it.
    pub fn queue(&self) -> crate::queue::scheduler::QueueHandle {
        self.shared.snapshot().ctx.intake.queue.clone()
    }

    /// Connections closed by the PROXY protocol checks so far.
    pub fn proxy_stats(&self) -> Arc<ProxyStats> {
        self.shared.proxy_stats.clone()
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
                self.shared.snapshot().ctx.metrics.clone(),
                shutdown.clone(),
            ))
        });
        let next_id = Arc::new(AtomicU64::new(1));
        let mut accept_loops = Vec::new();
        for (kind, listener) in self.listeners {
            let shared = self.shared.clone();
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
                            admit(tcp, peer, id, kind, &shared, &tracker);
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
        // Every context a reload made shares this token.
        self.shared.snapshot().ctx.shutdown.cancel();
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

/// Apply the connection limits and spawn the session. With `listen.proxy_protocol`, a peer
/// that is not a trusted proxy is closed at once; the total limit applies at accept, the
/// per-IP limit once the header has told the client's address.
fn admit(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    kind: Kind,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
) {
    let _ = tcp.set_nodelay(true);
    let live = shared.snapshot();
    let proxied = live.settings.listen.proxy_protocol;
    let open = live.ctx.metrics.connection(match kind {
        Kind::Submission => metrics::Port::Submission,
        Kind::Submissions => metrics::Port::Submissions,
    });
    if proxied && !crate::proxy::is_trusted(&live.settings.listen.trusted_proxies, peer.ip()) {
        shared.proxy_stats.untrusted.fetch_add(1, Ordering::Relaxed);
        live.ctx.metrics.refused(metrics::Refused::UntrustedProxy);
        warn!(conn = id, peer = %peer, "connection closed: peer is not in listen.trusted_proxies");
        return;
    }
    let slot = match shared.limits.admit() {
        Ok(slot) => slot,
        Err(refusal) => return refuse(&tcp, id, peer, kind, &live.ctx, refusal),
    };
    let ip_slot = if proxied {
        None
    } else {
        match shared.limits.admit_ip(peer.ip()) {
            Ok(s) => Some(s),
            Err(refusal) => return refuse(&tcp, id, peer, kind, &live.ctx, refusal),
        }
    };
    let port = match kind {
        Kind::Submission => "submission",
        Kind::Submissions => "submissions",
    };
    let span = if proxied {
        info_span!("session", conn = id, peer = tracing::field::Empty, proxy = %peer, port)
    } else {
        info_span!("session", conn = id, peer = %peer, port)
    };
    let shared = shared.clone();
    tracker.spawn(
        async move {
            let mut tcp = tcp;
            let ctx = live.ctx.clone();
            let (client, _ip_slot) = match ip_slot {
                Some(s) => (peer, s),
                None => {
                    let wait = ctx.command_timeout.min(crate::proxy::MAX_HEADER_WAIT);
                    let header = tokio::select! {
                        h = crate::proxy::read_header(&mut tcp, wait) => h,
                        _ = ctx.shutdown.cancelled() => return,
                    };
                    let client = match header {
                        Ok(header) => header.client(peer),
                        Err(e) => {
                            shared
                                .proxy_stats
                                .bad_header
                                .fetch_add(1, Ordering::Relaxed);
                            ctx.metrics.refused(metrics::Refused::ProxyHeader);
                            warn!(error = %crate::logsafe::Escaped(&e), "connection closed: no valid PROXY header");
                            return;
                        }
                    };
                    tracing::Span::current().record("peer", tracing::field::display(client));
                    match shared.limits.admit_ip(client.ip()) {
                        Ok(s) => (client, s),
                        Err(refusal) => return refuse(&tcp, id, client, kind, &ctx, refusal),
                    }
                }
            };
            info!("connect");
            match kind {
                Kind::Submission => driver::serve_submission(tcp, ctx, client).await,
                Kind::Submissions => driver::serve_submissions(tcp, ctx, client).await,
            }
            info!("disconnect");
            drop(slot);
            drop(open);
        }
        .instrument(span),
    );
}

/// Turn a connection away: on 587 say why; on 465 there is no TLS yet, so just close
/// (DESIGN.md). The socket's send buffer is empty, so a non-blocking write does not need to wait.
fn refuse(
    tcp: &TcpStream,
    id: u64,
    client: SocketAddr,
    kind: Kind,
    ctx: &Context,
    refusal: Refusal,
) {
    let hostname = &ctx.config.hostname;
    let reply = match refusal {
        Refusal::Total => reply::too_many_connections(hostname),
        Refusal::PerIp => reply::too_many_connections_from_ip(hostname),
    };
    ctx.metrics.refused(match refusal {
        Refusal::Total => metrics::Refused::Total,
        Refusal::PerIp => metrics::Refused::PerIp,
    });
    info!(conn = id, peer = %client, "connection refused: {reply}");
    if kind == Kind::Submission {
        let _ = tcp.try_write(reply.to_wire().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_slots_count_ipv6_per_prefix_and_mapped_ipv4_as_ipv4() {
        let limits = Arc::new(ConnectionLimits::new(100, 1, 64));
        let a = limits
            .admit_ip(ip("2001:db8::1"))
            .ok()
            .expect("first of its /64");
        assert!(
            limits.admit_ip(ip("2001:db8::2")).is_err(),
            "same /64, same slot"
        );
        let other = limits.admit_ip(ip("2001:db8:0:1::1")).ok();
        assert!(other.is_some(), "another /64");
        let v4 = limits
            .admit_ip(ip("192.0.2.1"))
            .ok()
            .expect("an IPv4 client");
        assert!(
            limits.admit_ip(ip("::ffff:192.0.2.1")).is_err(),
            "mapped = the same IPv4"
        );
        drop(a);
        let again = limits.admit_ip(ip("2001:db8::ffff")).ok();
        assert!(again.is_some(), "released under the /64 key");

        // /128 counts each address; a reload changes the prefix for new connections, and a
        // slot taken under the old prefix is released under its own key.
        limits.set_max(100, 1, 128);
        let one = limits.admit_ip(ip("2001:db8::1")).ok();
        assert!(one.is_some(), "/128: another address, another slot");
        drop((again, one, other, v4));
        assert!(limits.counts().per_ip.is_empty());
    }
}
