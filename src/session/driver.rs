//! The session's IO: reads with a timeout per read, writes with a timeout, replies batched and
//! flushed before every read (RFC 2920), STARTTLS, and the two slow steps taken off the
//! reactor — argon2 verification and the spool write. Everything else is decided by the
//! sans-IO [`Session`].

use crate::logsafe::Escaped;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::verify::{Client, Verdict, Verifier};
use crate::intake::{AcceptError, Draft, Intake};
use crate::metrics::{Handshake, Metrics, Port};

use super::input::InputBuffer;
use super::pump::{self, Progress};
use super::reply::{self, Reply};
use super::state::{Session, SessionConfig, Step, Want};

/// Bytes read from the socket at a time: four TLS records, so that a message body arrives in
/// few reads. The buffer lives on the thread's stack only while the read is polled, never in
/// the session's future: an idle connection does not pay for it.
const READ_CHUNK: usize = 64 * 1024;
/// Replies are flushed once this many bytes are pending even if more input is buffered, so a
/// client that writes without reading blocks on its own socket instead of growing our buffer.
const MAX_PENDING_OUTPUT: usize = 16 * 1024;
/// The output buffer's capacity kept between commands; a larger one (after a long EHLO or many
/// pipelined replies) is released before the session waits for its next command.
const IDLE_OUTPUT_CAPACITY: usize = 512;
/// How much encrypted output rustls may hold for a client that does not read, on top of what
/// the kernel's socket buffer takes (rustls's default is 64 KiB).
const TLS_BUFFER_LIMIT: usize = MAX_PENDING_OUTPUT + 1024;

/// What every session of a server shares. A reload makes a new one (a clone with new limits and
/// certificate); a session keeps the one it started with.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<SessionConfig>,
    pub command_timeout: Duration,
    /// `limits.greet_pause`: wait before the greeting, then refuse clients that talked first.
    pub greet_pause: Duration,
    /// `limits.max_session_time`: the whole connection, from accept.
    pub max_session_time: Duration,
    pub tls: TlsAcceptor,
    pub verifier: Verifier,
    /// Message admission: headers, DKIM, spool, scheduler handoff.
    pub intake: Intake,
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// Who hears of a recipient refused as suppressed (the webhooks; the scheduler reports
    /// the delivery events to the same sinks).
    pub events: crate::events::Events,
}

/// Who is on the other end: the client's address (after PROXY protocol, the real client) and
/// the local port it connected to (a directory backend is told both).
#[derive(Debug, Clone, Copy)]
struct Peer {
    addr: SocketAddr,
    local_port: u16,
}

impl Peer {
    fn of(tcp: &TcpStream, addr: SocketAddr) -> Peer {
        Peer {
            addr,
            local_port: tcp.local_addr().map_or(0, |a| a.port()),
        }
    }

    fn ip(&self) -> std::net::IpAddr {
        self.addr.ip()
    }
}

/// The queue file of the message being received, opened when its first piece is written; or
/// why it could not be opened, told to the client once it has sent the whole message (the body
/// is read to its end either way). Boxed: most of a session's life has none.
type DraftSlot = Option<Box<Result<Draft, AcceptError>>>;

/// Write the pieces of content the session hands out to the message's draft, in order,
/// opening it at the first. Awaiting each write is the backpressure: the session takes no
/// input while its piece waits.
async fn drain(session: &mut Session, slot: &mut DraftSlot, intake: &Intake) {
    while let Some(piece) = session.take_piece() {
        let draft = match slot {
            Some(draft) => draft,
            None => slot.insert(Box::new(intake.begin().await)),
        };
        match draft.as_mut() {
            Ok(draft) => {
                if draft.wants_header_section()
                    && let Some((section, user)) = session.header_section()
                {
                    draft.hash_body(intake, section, user);
                }
                session.recycle(draft.write(piece).await)
            }
            // Read and dropped: the refusal comes at the end of the message.
            Err(_) => session.recycle(piece),
        }
    }
}

/// How a connection's conversation ended.
enum End {
    Closed,
    StartTls,
}

/// A stream with its input buffer and pending replies.
struct Conn<S> {
    stream: S,
    input: InputBuffer,
    output: Vec<u8>,
    /// When the session time (`limits.max_session_time`) runs out.
    deadline: Instant,
}

/// Why reading stopped.
enum ReadError {
    Eof,
    Timeout,
    /// `limits.max_session_time` ran out.
    SessionTime,
    Shutdown,
    Io(std::io::Error),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S, deadline: Instant) -> Conn<S> {
        Conn {
            stream,
            input: InputBuffer::new(),
            output: Vec::with_capacity(IDLE_OUTPUT_CAPACITY),
            deadline,
        }
    }

    fn push(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    async fn flush(&mut self, limit: Duration) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let result = tokio::time::timeout(limit, async {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await
        })
        .await;
        self.output.clear();
        match result {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timeout",
            )),
        }
    }

    /// Flush pending replies, then read more input. `interruptible`: give up when the server
    /// shuts down (only between commands, never in the middle of a message). The read waits at
    /// most `limit`, and never past the session deadline.
    async fn fill(
        &mut self,
        limit: Duration,
        shutdown: &CancellationToken,
        interruptible: bool,
    ) -> Result<(), ReadError> {
        self.flush(limit).await.map_err(ReadError::Io)?;
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::SessionTime);
        }
        let session_ends_first = left < limit;
        if interruptible {
            // Between commands: give back what a large message or reply batch made us hold.
            self.input.release_spare();
            if self.output.capacity() > IDLE_OUTPUT_CAPACITY {
                self.output = Vec::with_capacity(IDLE_OUTPUT_CAPACITY);
            }
        }
        let (stream, input) = (&mut self.stream, &mut self.input);
        let read = tokio::time::timeout(limit.min(left), read_into(stream, input));
        let n = tokio::select! {
            // Shutdown first: a command that arrives after the shutdown began gets 421 4.3.2,
            // whichever the task sees first when it wakes up.
            biased;
            _ = shutdown.cancelled(), if interruptible => return Err(ReadError::Shutdown),
            r = read => match r {
                Err(_) if session_ends_first => return Err(ReadError::SessionTime),
                Err(_) => return Err(ReadError::Timeout),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
                Ok(Ok(n)) => n,
            },
        };
        if n == 0 {
            return Err(ReadError::Eof);
        }
        Ok(())
    }

    /// Send a last reply and close, ignoring errors: the peer may be gone.
    async fn close_with(&mut self, reply: &Reply, limit: Duration) {
        self.push(reply);
        let _ = self.flush(limit).await;
        let _ = tokio::time::timeout(limit, self.stream.shutdown()).await;
    }
}

/// Read once from `stream` into `input`; the number of bytes read, 0 at EOF. The read buffer is
/// a local of `poll`, so a session waiting here holds no buffer in its future.
async fn read_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    input: &mut InputBuffer,
) -> std::io::Result<usize> {
    poll_fn(|cx| {
        // Uninitialised: zeroing 16 KiB on every poll was 5% of a connection's instructions.
        let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut buf);
        match Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                input.extend(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Serve a plaintext submission (587) connection: greeting, then STARTTLS into a new session.
pub async fn serve_submission(tcp: TcpStream, ctx: Arc<Context>, peer: SocketAddr) {
    let deadline = Instant::now() + ctx.max_session_time;
    let peer = Peer::of(&tcp, peer);
    // Two phases, so that the plaintext one's room in this future is reused by the TLS one.
    let Some(tcp) = serve_plaintext(tcp, &ctx, peer, deadline).await else {
        return;
    };
    serve_after_starttls(tcp, &ctx, peer, deadline).await;
}

/// The TLS handshake after STARTTLS, then a new session over it (RFC 3207 section 4.2).
/// Generic over the stream so that the session tests can run it over an in-memory pipe.
async fn serve_after_starttls<IO: AsyncRead + AsyncWrite + Unpin>(
    stream: IO,
    ctx: &Context,
    peer: Peer,
    deadline: Instant,
) {
    let accept = ctx.tls.accept_with(stream, |tls| {
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
    });
    // Boxed: the handshake's state is needed once, not for the whole session.
    let Some(tls) = Box::pin(handshake(ctx, accept, Port::Submission)).await else {
        return;
    };
    let mut conn = Conn::new(tls, deadline);
    drive(&mut conn, Session::new(ctx.config.clone(), true), ctx, peer).await;
}

/// Finish a TLS handshake within `command_timeout`, counting and logging how it ended. The
/// outcome is matched as a temporary: a named result would stay in the session future's state
/// for the whole session (see `session_futures_stay_small`).
async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Context,
    accept: tokio_rustls::Accept<IO>,
    port: Port,
) -> Option<tokio_rustls::server::TlsStream<IO>> {
    let what = match port {
        Port::Submission => "STARTTLS handshake",
        Port::Submissions => "TLS handshake",
    };
    match tokio::time::timeout(ctx.command_timeout, accept).await {
        Ok(Ok(tls)) => {
            ctx.metrics.tls_handshake(port, Handshake::Ok);
            Some(tls)
        }
        Ok(Err(e)) => {
            ctx.metrics.tls_handshake(port, Handshake::Failed);
            info!(error = %Escaped(&e), "{what} failed");
            None
        }
        Err(_) => {
            ctx.metrics.tls_handshake(port, Handshake::Timeout);
            info!("{what} timed out");
            None
        }
    }
}

/// The plaintext part of a 587 connection; the stream when the client asked for STARTTLS.
async fn serve_plaintext(
    tcp: TcpStream,
    ctx: &Context,
    peer: Peer,
    deadline: Instant,
) -> Option<TcpStream> {
    let mut conn = Conn::new(tcp, deadline);
    if !greet_pause(ctx).await {
        return None;
    }
    if peer_sent_bytes(&conn.stream) {
        info!("client talked before the greeting");
        conn.close_with(&reply::SYNC_ERROR, ctx.command_timeout)
            .await;
        return None;
    }
    let session = Session::new(ctx.config.clone(), false);
    conn.push(&session.greeting());
    match drive(&mut conn, session, ctx, peer).await {
        End::Closed => None,
        End::StartTls => Some(conn.stream),
    }
}

/// Serve an implicit-TLS submissions (465) connection: handshake first (RFC 8314), then SMTP.
pub async fn serve_submissions(tcp: TcpStream, ctx: Arc<Context>, peer: SocketAddr) {
    let deadline = Instant::now() + ctx.max_session_time;
    let peer = Peer::of(&tcp, peer);
    // Without a greet_pause the greeting rides in the handshake: TLS 1.3 sends it right after
    // the server's Finished (half-RTT data), TLS 1.2 with the server's last flight. The client
    // has it one round trip sooner, the server saves a write, and the client cannot have talked
    // before it, since it needs that flight to send anything.
    let greet_in_handshake = ctx.greet_pause.is_zero();
    let greeting = reply::greeting(&ctx.config.hostname);
    let accept = ctx.tls.accept_with(tcp, |tls| {
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        if greet_in_handshake {
            let mut wire = Vec::with_capacity(64);
            greeting.write_to(&mut wire);
            // Buffered by rustls until the keys exist; far below the buffer limit.
            let _ = std::io::Write::write_all(&mut tls.writer(), &wire);
        }
    });
    // Boxed: the handshake's state is needed once, not for the whole session.
    let Some(tls) = Box::pin(handshake(&ctx, accept, Port::Submissions)).await else {
        return;
    };
    let mut conn = Conn::new(tls, deadline);
    if !greet_in_handshake {
        if !greet_pause(&ctx).await {
            return;
        }
        // Application data that came with or after the handshake: either already decrypted by
        // rustls, or still in the socket.
        let (tcp, tls_state) = conn.stream.get_mut();
        let early = peer_sent_bytes(tcp)
            || tls_state
                .process_new_packets()
                .map_or(true, |io| io.plaintext_bytes_to_read() > 0);
        if early {
            info!("client talked before the greeting");
            conn.close_with(&reply::SYNC_ERROR, ctx.command_timeout)
                .await;
            return;
        }
        conn.push(&greeting);
    }
    drive(
        &mut conn,
        Session::new(ctx.config.clone(), true),
        &ctx,
        peer,
    )
    .await;
}

/// Wait `limits.greet_pause` before the greeting. `false` when the server shuts down meanwhile.
async fn greet_pause(ctx: &Context) -> bool {
    if ctx.greet_pause.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(ctx.greet_pause) => true,
        _ = ctx.shutdown.cancelled() => false,
    }
}

/// Whether the client has sent bytes that are waiting in the socket. Asks the kernel directly
/// (a non-blocking `MSG_PEEK`), because tokio's readiness may not have seen them yet; nothing is
/// consumed. An error or EOF is "no bytes": the greeting write or the next read finds out.
fn peer_sent_bytes(tcp: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`, which lives for the call; the descriptor
    // is owned by `tcp`, borrowed for the call.
    let n = unsafe {
        libc::recv(
            tcp.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Run one session over one stream until it closes or asks for TLS.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    mut session: Session,
    ctx: &Context,
    peer: Peer,
) -> End {
    let limit = ctx.command_timeout;
    // Dropped (and its file removed) when the message is refused or the connection ends.
    let mut draft: DraftSlot = None;
    loop {
        let step = match pump::advance(&mut session, &mut conn.input) {
            Progress::Step(step) => Some(step),
            Progress::NeedInput => None,
            Progress::Drain => {
                Box::pin(drain(&mut session, &mut draft, &ctx.intake)).await;
                continue;
            }
            Progress::AwaitingOutcome => {
                warn!("session waiting for an outcome nobody will deliver");
                return End::Closed;
            }
        };
        let Some(step) = step else {
            // Input is read only when the session needs more: while replies cannot be
            // written (the flush in `fill` blocks), nothing more is read either.
            let interruptible = matches!(session.wants(), Want::Line(_));
            match conn.fill(limit, &ctx.shutdown, interruptible).await {
                Ok(()) => continue,
                Err(ReadError::Eof) => return End::Closed,
                Err(ReadError::Io(e)) => {
                    info!(error = %Escaped(&e), "connection error");
                    return End::Closed;
                }
                Err(ReadError::SessionTime) => {
                    info!("session time limit");
                    conn.close_with(&reply::session_time_exceeded(&ctx.config.hostname), limit)
                        .await;
                    return End::Closed;
                }
                Err(ReadError::Timeout) => {
                    info!("idle timeout");
                    conn.close_with(&reply::timeout(&ctx.config.hostname), limit)
                        .await;
                    return End::Closed;
                }
                Err(ReadError::Shutdown) => {
                    conn.close_with(&reply::shutting_down(&ctx.config.hostname), limit)
                        .await;
                    return End::Closed;
                }
            }
        };
        let end = carry_out(step, conn, &mut session, &mut draft, ctx, peer).await;
        if !session.receiving() {
            draft = None;
        }
        match end {
            Some(end) => return end,
            None => {
                if conn.output.len() >= MAX_PENDING_OUTPUT && conn.flush(limit).await.is_err() {
                    return End::Closed;
                }
            }
        }
    }
}

/// Carry out a step (and the steps that follow from verification or spooling).
async fn carry_out<S: AsyncRead + AsyncWrite + Unpin>(
    mut step: Step,
    conn: &mut Conn<S>,
    session: &mut Session,
    draft: &mut DraftSlot,
    ctx: &Context,
    peer: Peer,
) -> Option<End> {
    loop {
        step = match step {
            Step::Nothing => return None,
            Step::Reply(r) => {
                if let Some(outcome) = r.outcome() {
                    ctx.metrics.outcome(outcome);
                }
                conn.push(&r);
                if let Some(event) = session.take_suppressed() {
                    // Boxed: rare, like the steps below.
                    Box::pin(report(&ctx.events, event)).await;
                }
                return None;
            }
            Step::Close(r) => {
                if let Some(outcome) = r.outcome() {
                    ctx.metrics.outcome(outcome);
                }
                conn.close_with(&r, ctx.command_timeout).await;
                return Some(End::Closed);
            }
            Step::StartTls => {
                conn.push(&reply::START_TLS);
                if conn.flush(ctx.command_timeout).await.is_err() {
                    return Some(End::Closed);
                }
                // RFC 3207 section 4.2: nothing the client sent before the handshake counts.
                conn.input.clear();
                return Some(End::StartTls);
            }
            Step::Verify(creds) => {
                // Boxed, like the spool write below: a rare step should not make every
                // session's future (held for the whole connection) larger.
                let client = Client {
                    ip: peer.ip(),
                    local_port: peer.local_port,
                };
                let verdict = Box::pin(ctx.verifier.authenticate_client(
                    client,
                    &creds.login,
                    &creds.password,
                ))
                .await;
                match verdict {
                    Verdict::Checked(user) => {
                        match &user {
                            Some(u) => info!(user = %Escaped(&u.login), "authenticated"),
                            None => warn!(login = %Escaped(&creds.login), "authentication failed"),
                        }
                        session.auth_result(user)
                    }
                    Verdict::Throttled(_) => session.auth_refused(reply::AUTH_THROTTLED),
                    Verdict::Busy => session.auth_refused(reply::AUTH_BUSY),
                    Verdict::Unavailable => session.auth_refused(reply::AUTH_UNAVAILABLE),
                }
            }
            Step::Queue(accepted) => {
                // Boxed: a rare step should not make every session's future larger.
                let id = Box::pin(async {
                    let opened = if draft.is_some() {
                        drain(session, draft, &ctx.intake).await;
                        draft.take().map(|opened| *opened)
                    } else {
                        None
                    };
                    let opened = match opened {
                        Some(opened) => opened,
                        // The whole message is one piece: written with the commit, in one
                        // blocking task rather than three.
                        None => Ok(ctx
                            .intake
                            .in_memory(session.take_piece().unwrap_or_default())),
                    };
                    ctx.intake.accept(*accepted, opened?, peer.ip()).await
                })
                .await;
                session.queued(id.as_ref().map(|id| id.as_str()).map_err(|e| e.refusal()))
            }
        };
    }
}

/// Hand one event to the sinks, off the reactor, unless the same refusal was reported lately
/// ([`crate::events::Events::fresh`]: a client repeating the RCPT costs a lookup, no IO).
/// Awaited, so the reply after a new event waits for its record (files written and fsynced).
async fn report(events: &crate::events::Events, event: crate::events::DeliveryEvent) {
    if events.is_empty() {
        return;
    }
    let fresh = events.fresh(vec![event]);
    if fresh.is_empty() {
        return;
    }
    let sinks = events.clone();
    let _ = tokio::task::spawn_blocking(move || sinks.record_blocking(&fresh)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::task::JoinHandle;

    use crate::config::Settings;

    const HOSTNAME: &str = "mail.example.test";
    /// Every wait in these tests is bounded by this.
    const WAIT: Duration = Duration::from_secs(10);

    /// A server context as `listener` builds it, from a minimal config in `dir`; nothing binds
    /// a socket, and the queue scheduler never runs.
    fn context(dir: &std::path::Path) -> Context {
        let (cert, key) = crate::tls::self_signed(HOSTNAME).unwrap();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        std::fs::write(dir.join("users.toml"), "").unwrap();
        let text = format!(
            "hostname = \"{HOSTNAME}\"\n[listen]\nsubmission = [\"127.0.0.1:0\"]\n\
             submissions = [\"127.0.0.1:0\"]\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
             [auth]\nusers = \"users.toml\"\n[queue]\ndir = \"queue\"\n\
             [relay]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n"
        );
        let settings = Settings::from_toml(&text, &dir.join("submitd.toml")).unwrap();
        let tls = crate::tls::load_server_config(&settings.tls.cert, &settings.tls.key).unwrap();
        let users =
            crate::auth::users::UserStore::open(settings.auth.users.as_deref().unwrap()).unwrap();
        let (verifier, quota) = crate::auth::defences(users, &settings, None);
        let spool = crate::queue::Spool::open(&settings.queue.dir).unwrap();
        let delivery = Arc::new(crate::delivery::Delivery::new(&settings).unwrap());
        let metrics = Arc::new(Metrics::new());
        let (queue, _scheduler) = crate::queue::scheduler::Scheduler::new(
            &settings,
            spool.clone(),
            delivery,
            metrics.clone(),
        );
        let limits = &settings.limits;
        Context {
            config: Arc::new(SessionConfig {
                hostname: settings.hostname.clone(),
                max_message_size: limits.max_message_size,
                max_recipients: limits.max_recipients,
                max_auth_failures: limits.max_auth_failures,
                quota: Some(quota.clone()),
                max_bad_commands: limits.max_bad_commands,
                max_header_size: limits.max_header_size,
                max_hops: limits.max_hops,
                suppressions: None,
            }),
            command_timeout: limits.command_timeout,
            greet_pause: Duration::ZERO,
            max_session_time: limits.max_session_time,
            tls: TlsAcceptor::from(tls),
            verifier,
            intake: Intake {
                hostname: settings.hostname.clone(),
                received_client_ip: settings.submission.received_client_ip,
                spool,
                queue,
                dkim: crate::dkim::SharedSigner::new(
                    crate::dkim::DkimSigner::load(&settings.dkim).unwrap(),
                ),
                quota: Some(quota),
                metrics: metrics.clone(),
            },
            shutdown: CancellationToken::new(),
            metrics,
            events: Default::default(),
        }
    }

    /// The server's end of the pipe, recording the size of every write that reached it.
    struct Recorded {
        inner: DuplexStream,
        writes: Arc<Mutex<Vec<usize>>>,
    }

    impl AsyncRead for Recorded {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorded {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = r {
                self.writes.lock().unwrap().push(n);
            }
            r
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// What `serve_submission` does after its TCP-only steps (greet_pause, the early-talker
    /// check): greeting, the plaintext session, then STARTTLS into a new one.
    async fn serve_plaintext_stream(stream: Recorded, ctx: Arc<Context>) {
        let peer = Peer {
            addr: "192.0.2.1:4000".parse().unwrap(),
            local_port: 587,
        };
        let deadline = Instant::now() + ctx.max_session_time;
        let mut conn = Conn::new(stream, deadline);
        let session = Session::new(ctx.config.clone(), false);
        conn.push(&session.greeting());
        if let End::StartTls = drive(&mut conn, session, &ctx, peer).await {
            serve_after_starttls(conn.stream, &ctx, peer, deadline).await;
        }
    }

    enum ClientStream {
        Plain(DuplexStream),
        Tls(Box<tokio_rustls::client::TlsStream<DuplexStream>>),
        Gone,
    }

    /// A session over an in-memory pipe, driven like a client: a line out, a reply in.
    struct TestSession {
        stream: ClientStream,
        buf: Vec<u8>,
        ctx: Arc<Context>,
        writes: Arc<Mutex<Vec<usize>>>,
        server: JoinHandle<()>,
        dir: tempfile::TempDir,
    }

    impl TestSession {
        /// A plaintext (587) session, its greeting read.
        async fn start() -> TestSession {
            let dir = tempfile::tempdir().unwrap();
            let ctx = Arc::new(context(dir.path()));
            let (client, server) = tokio::io::duplex(64 * 1024);
            let writes = Arc::new(Mutex::new(Vec::new()));
            let recorded = Recorded {
                inner: server,
                writes: writes.clone(),
            };
            let server = tokio::spawn(serve_plaintext_stream(recorded, ctx.clone()));
            let mut s = TestSession {
                stream: ClientStream::Plain(client),
                buf: Vec::new(),
                ctx,
                writes,
                server,
                dir,
            };
            let greeting = s.reply().await;
            assert_eq!(greeting, format!("220 {HOSTNAME} ESMTP submitd\r\n"));
            s
        }

        async fn send(&mut self, bytes: &[u8]) {
            let io: &mut (dyn AsyncWrite + Unpin + Send) = match &mut self.stream {
                ClientStream::Plain(s) => s,
                ClientStream::Tls(s) => s.as_mut(),
                ClientStream::Gone => unreachable!(),
            };
            io.write_all(bytes).await.unwrap();
            io.flush().await.unwrap();
        }

        /// Read once; 0 at EOF.
        async fn read_some(&mut self) -> usize {
            let mut chunk = [0u8; 4096];
            let read = async {
                match &mut self.stream {
                    ClientStream::Plain(s) => s.read(&mut chunk).await,
                    ClientStream::Tls(s) => s.read(&mut chunk).await,
                    ClientStream::Gone => unreachable!(),
                }
            };
            let n = tokio::time::timeout(WAIT, read)
                .await
                .expect("the server did not answer")
                .unwrap();
            self.buf.extend_from_slice(&chunk[..n]);
            n
        }

        /// One whole reply (all its lines).
        async fn reply(&mut self) -> String {
            loop {
                let mut start = 0;
                while let Some(end) = self.buf[start..].windows(2).position(|w| w == b"\r\n") {
                    let line = &self.buf[start..start + end];
                    start += end + 2;
                    if line.len() < 4 || line[3] == b' ' {
                        let reply: Vec<u8> = self.buf.drain(..start).collect();
                        return String::from_utf8(reply).unwrap();
                    }
                }
                assert!(self.read_some().await > 0, "EOF before a whole reply");
            }
        }

        /// Send a command, expect a reply starting with `expected`.
        async fn cmd(&mut self, line: &str, expected: &str) -> String {
            self.send(format!("{line}\r\n").as_bytes()).await;
            let reply = self.reply().await;
            assert!(
                reply.starts_with(expected),
                "{line}: {reply:?}, wanted {expected:?}"
            );
            reply
        }

        /// TLS over the pipe, trusting the server's certificate.
        async fn upgrade(&mut self) {
            let ClientStream::Plain(plain) =
                std::mem::replace(&mut self.stream, ClientStream::Gone)
            else {
                panic!("already TLS");
            };
            // Every context makes its own certificate: trust the one this server loaded.
            let pem = std::fs::read(self.dir.path().join("cert.pem")).unwrap();
            let config = crate::tls::client_config_trusting(&pem).unwrap();
            let name = rustls_pki_types::ServerName::try_from(HOSTNAME).unwrap();
            let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, plain);
            let tls = tokio::time::timeout(WAIT, connect).await.unwrap().unwrap();
            self.stream = ClientStream::Tls(Box::new(tls));
        }

        /// The sizes of the server's writes since the last call.
        fn take_writes(&self) -> Vec<usize> {
            std::mem::take(&mut *self.writes.lock().unwrap())
        }

        /// Expect EOF, and the server task to have ended.
        async fn expect_closed(mut self) {
            assert_eq!(self.read_some().await, 0, "more bytes: {:?}", self.buf);
            tokio::time::timeout(WAIT, self.server)
                .await
                .unwrap()
                .unwrap();
        }
    }

    /// RFC 3207 section 4.2, the STARTTLS injection (CVE-2011-0411): commands in the same
    /// packet as STARTTLS are dropped, and the session starts over after the handshake.
    #[tokio::test]
    async fn bytes_pipelined_after_starttls_are_discarded() {
        let mut s = TestSession::start().await;
        s.cmd("EHLO client.test", "250-").await;
        s.send(b"STARTTLS\r\nMAIL FROM:<alice@example.test>\r\nNOOP\r\n")
            .await;
        let reply = s.reply().await;
        assert!(reply.starts_with("220 2.0.0"), "{reply:?}");
        assert!(s.buf.is_empty(), "bytes after the STARTTLS reply");
        s.upgrade().await;
        // If the injected commands had survived, their replies would come first.
        s.cmd("NOOP", "250 2.0.0 Ok\r\n").await;
        s.cmd("MAIL FROM:<alice@example.test>", "503 5.5.1 EHLO first")
            .await;
        s.cmd("EHLO client.test", "250-").await;
        s.cmd("STARTTLS", "503 5.5.1").await;
    }

    /// RFC 2920: the replies to a pipelined group leave in one write, not one each.
    #[tokio::test]
    async fn pipelined_replies_are_batched() {
        let mut s = TestSession::start().await;
        s.cmd("EHLO client.test", "250-").await;
        s.take_writes();
        s.send(b"RSET\r\nRSET\r\nRSET\r\n").await;
        let mut total = 0;
        for _ in 0..3 {
            let reply = s.reply().await;
            assert!(reply.starts_with("250 2.0.0"), "{reply:?}");
            total += reply.len();
        }
        assert_eq!(s.take_writes(), vec![total]);
    }

    /// Replies are flushed before every read: an incomplete next command does not hold back
    /// the reply to the one before it.
    #[tokio::test]
    async fn a_read_does_not_wait_with_replies_pending() {
        let mut s = TestSession::start().await;
        s.cmd("EHLO client.test", "250-").await;
        s.send(b"RSET\r\nRSE").await;
        let reply = s.reply().await;
        assert!(reply.starts_with("250 "), "{reply:?}");
        s.cmd("T", "250 ").await;
    }

    /// Shutdown closes an idle session with 421 4.3.2.
    #[tokio::test]
    async fn shutdown_closes_an_idle_session_with_421() {
        let mut s = TestSession::start().await;
        s.cmd("EHLO client.test", "250-").await;
        s.ctx.shutdown.cancel();
        let reply = s.reply().await;
        assert_eq!(
            reply,
            format!("421 4.3.2 {HOSTNAME} Service shutting down\r\n")
        );
        s.expect_closed().await;
    }

    /// The size of the future an async fn of three arguments returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A session's future lives in its task's allocation for the whole connection, idle or
    /// not: a buffer or a rare step's state inlined into it costs every connection. (Both are
    /// about 2.8 KiB, 1.2 KiB of it rustls's `ServerConnection`; the read buffer alone was 16.)
    #[test]
    fn session_futures_stay_small() {
        const BUDGET: usize = 4096;
        let plain = future_size(serve_submission);
        let tls = future_size(serve_submissions);
        assert!(plain <= BUDGET, "serve_submission future: {plain} bytes");
        assert!(tls <= BUDGET, "serve_submissions future: {tls} bytes");
    }
}
