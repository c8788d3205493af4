//! Accept and admission: binds the submission (587, STARTTLS), submissions (465, implicit TLS)
//! `[metrics] listen` and `[api] listen` sockets, enforces `max_connections` and `max_connections_per_ip`
//! (and, with `listen.proxy_protocol`, the trusted proxies), and spawns one session per
//! connection. What a connection is served with comes from [`crate::server`], which swaps it on
//! reload.
//!
//! Everything here that touches a socket: [`proxy_header`] reads the PROXY header (the parser
//! is the sans-IO [`crate::proxy`]), [`http`] serves an axum router over HTTP/1.1 (plain or
//! TLS, bounded) for [`metrics_http`] (`GET /metrics`) and the HTTP API ([`crate::api`]),
//! [`control`] is the server's side of the control socket.

pub mod control;
pub mod http;
pub mod metrics_http;
pub mod proxy_header;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Limits, Settings};
use crate::metrics::{self, Metrics};
use crate::session::driver::{self, Context};
use crate::session::reply;

/// Which kind of listener a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 587: plaintext, STARTTLS required before AUTH.
    Submission,
    /// 465: implicit TLS (RFC 8314).
    Submissions,
}

/// What new connections are served with: replaced whole by a reload, taken as a snapshot by
/// each connection at accept.
pub(crate) struct Live {
    /// The settings in effect (keys that need a restart keep their startup values).
    pub(crate) settings: Arc<Settings>,
    pub(crate) ctx: Arc<Context>,
}

/// Where the accept loops find, at each accept, what a new connection is served with.
pub(crate) trait Current: Send + Sync + 'static {
    /// The settings and context a new connection gets now.
    fn current(&self) -> Arc<Live>;
}

/// What every accept loop of a server shares: the connection counts and the PROXY counters.
pub(crate) struct Admission {
    limits: Arc<ConnectionLimits>,
    pub(crate) proxy_stats: Arc<ProxyStats>,
}

impl Admission {
    /// Counting from zero under `limits`.
    pub(crate) fn new(limits: &Limits) -> Admission {
        Admission {
            limits: Arc::new(ConnectionLimits::new(
                limits.max_connections,
                limits.max_connections_per_ip,
                limits.ipv6_prefix,
            )),
            proxy_stats: Arc::default(),
        }
    }

    /// New maxima (a reload); connections already admitted stay admitted.
    pub(crate) fn set_limits(&self, limits: &Limits) {
        self.limits.set_max(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.ipv6_prefix,
        );
    }
}

/// Every socket of a server, bound.
pub(crate) struct Sockets {
    smtp: Vec<(Kind, TcpListener)>,
    submission: Vec<SocketAddr>,
    submissions: Vec<SocketAddr>,
    /// `[metrics] listen`, bound.
    metrics: Option<(TcpListener, SocketAddr)>,
    /// `[api] listen`, bound.
    api: Option<(TcpListener, SocketAddr)>,
}

impl Sockets {
    /// Bind `[metrics] listen` and every listen address.
    pub(crate) async fn bind(settings: &Settings) -> anyhow::Result<Sockets> {
        let mut sockets = Sockets {
            smtp: Vec::new(),
            submission: Vec::new(),
            submissions: Vec::new(),
            metrics: None,
            api: None,
        };
        if let Some(addr) = settings.api.listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (api.listen)"))?;
            let local = listener.local_addr()?;
            sockets.api = Some((listener, local));
        }
        if let Some(addr) = settings.metrics.listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?;
            let local = listener.local_addr()?;
            sockets.metrics = Some((listener, local));
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
                    Kind::Submission => sockets.submission.push(local),
                    Kind::Submissions => sockets.submissions.push(local),
                }
                sockets.smtp.push((kind, listener));
            }
        }
        Ok(sockets)
    }

    /// The bound plaintext (STARTTLS) addresses.
    pub(crate) fn submission_addrs(&self) -> &[SocketAddr] {
        &self.submission
    }

    /// The bound implicit-TLS addresses.
    pub(crate) fn submissions_addrs(&self) -> &[SocketAddr] {
        &self.submissions
    }

    /// The bound `[metrics] listen` address, when metrics are on.
    pub(crate) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, a)| *a)
    }

    /// The bound `[api] listen` address, when the API is on.
    pub(crate) fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|(_, a)| *a)
    }

    /// Serve the HTTP API with `router` on `[api] listen` (TLS when `tls` is given) until
    /// `shutdown`; `None` when the API is off.
    pub(crate) fn serve_api(
        &mut self,
        router: axum::Router,
        tls: Option<Arc<rustls::ServerConfig>>,
        limits: http::HttpLimits,
        shutdown: &CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let (listener, _) = self.api.take()?;
        let tls = tls.map(|config| {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        Some(tokio::spawn(http::serve(
            listener,
            tls,
            router,
            limits,
            shutdown.clone(),
        )))
    }

    /// Serve scrapes and accept connections until `shutdown`, sessions spawned on `tracker`;
    /// the tasks end once they stopped accepting.
    pub(crate) fn serve(
        self,
        current: Arc<impl Current>,
        admission: Arc<Admission>,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<JoinHandle<()>> = self
            .metrics
            .map(|(listener, _)| {
                tokio::spawn(metrics_http::serve(listener, metrics, shutdown.clone()))
            })
            .into_iter()
            .collect();
        let next_id = Arc::new(AtomicU64::new(1));
        for (kind, listener) in self.smtp {
            tasks.push(tokio::spawn(accept_loop(
                listener,
                kind,
                current.clone(),
                admission.clone(),
                next_id.clone(),
                tracker.clone(),
                shutdown.clone(),
            )));
        }
        tasks
    }
}

/// Accept on one socket until `shutdown`.
async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    current: Arc<impl Current>,
    admission: Arc<Admission>,
    next_id: Arc<AtomicU64>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                admit(tcp, peer, id, kind, current.current(), &admission, &tracker);
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
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

/// Counters of connections closed by the PROXY protocol checks.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections from peers not in `listen.trusted_proxies`.
    pub untrusted: AtomicU64,
    /// Connections whose header was malformed, too long, late or missing.
    pub bad_header: AtomicU64,
}

/// Apply the connection limits and spawn the session. With `listen.proxy_protocol`, a peer
/// that is not a trusted proxy is closed at once; the total limit applies at accept, the
/// per-IP limit once the header has told the client's address.
fn admit(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    kind: Kind,
    live: Arc<Live>,
    admission: &Arc<Admission>,
    tracker: &TaskTracker,
) {
    let _ = tcp.set_nodelay(true);
    let proxied = live.settings.listen.proxy_protocol;
    let open = live.ctx.metrics.connection(match kind {
        Kind::Submission => metrics::Port::Submission,
        Kind::Submissions => metrics::Port::Submissions,
    });
    if proxied && !crate::proxy::is_trusted(&live.settings.listen.trusted_proxies, peer.ip()) {
        admission
            .proxy_stats
            .untrusted
            .fetch_add(1, Ordering::Relaxed);
        live.ctx.metrics.refused(metrics::Refused::UntrustedProxy);
        warn!(conn = id, peer = %peer, "connection closed: peer is not in listen.trusted_proxies");
        return;
    }
    let slot = match admission.limits.admit() {
        Ok(slot) => slot,
        Err(refusal) => return refuse(&tcp, id, peer, kind, &live.ctx, refusal),
    };
    let ip_slot = if proxied {
        None
    } else {
        match admission.limits.admit_ip(peer.ip()) {
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
    let admission = admission.clone();
    tracker.spawn(
        async move {
            let mut tcp = tcp;
            let ctx = live.ctx.clone();
            let (client, _ip_slot) = match ip_slot {
                Some(s) => (peer, s),
                None => {
                    let wait = ctx.command_timeout.min(crate::proxy::MAX_HEADER_WAIT);
                    let header = tokio::select! {
                        h = proxy_header::read_header(&mut tcp, wait) => h,
                        _ = ctx.shutdown.cancelled() => return,
                    };
                    let client = match header {
                        Ok(header) => header.client(peer),
                        Err(e) => {
                            admission
                                .proxy_stats
                                .bad_header
                                .fetch_add(1, Ordering::Relaxed);
                            ctx.metrics.refused(metrics::Refused::ProxyHeader);
                            warn!(error = %crate::logsafe::Escaped(&e), "connection closed: no valid PROXY header");
                            return;
                        }
                    };
                    tracing::Span::current().record("peer", tracing::field::display(client));
                    match admission.limits.admit_ip(client.ip()) {
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
