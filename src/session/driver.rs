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

use crate::auth::verify::{Verdict, Verifier};
use crate::intake::Intake;
use crate::metrics::{Handshake, Metrics, Port};

use super::input::InputBuffer;
use super::pump::{self, Progress};
use super::reply::{self, Reply};
use super::state::{Session, SessionConfig, Step, Want};

/// Bytes read from the socket at a time. The buffer lives on the thread's stack only while the
/// read is polled, never in the session's future: an idle connection does not pay for it.
const READ_CHUNK: usize = 16 * 1024;
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
    // Two phases, so that the plaintext one's room in this future is reused by the TLS one.
    let Some(tcp) = serve_plaintext(tcp, &ctx, peer, deadline).await else {
        return;
    };
    let accept = ctx.tls.accept_with(tcp, |tls| {
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
    });
    // Boxed: the handshake's state is needed once, not for the whole session.
    let Some(tls) = Box::pin(handshake(&ctx, accept, Port::Submission)).await else {
        return;
    };
    let mut conn = Conn::new(tls, deadline);
    drive(
        &mut conn,
        Session::new(ctx.config.clone(), true),
        &ctx,
        peer,
    )
    .await;
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
    peer: SocketAddr,
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
    peer: SocketAddr,
) -> End {
    let limit = ctx.command_timeout;
    loop {
        let step = match pump::advance(&mut session, &mut conn.input) {
            Progress::Step(step) => Some(step),
            Progress::NeedInput => None,
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
        match carry_out(step, conn, &mut session, ctx, peer).await {
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
    ctx: &Context,
    peer: SocketAddr,
) -> Option<End> {
    loop {
        step = match step {
            Step::Nothing => return None,
            Step::Reply(r) => {
                if let Some(outcome) = r.outcome() {
                    ctx.metrics.outcome(outcome);
                }
                conn.push(&r);
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
                let verdict = Box::pin(ctx.verifier.authenticate(
                    peer.ip(),
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
                }
            }
            Step::Queue(accepted) => {
                // Boxed: a rare step should not make every session's future larger.
                let id = Box::pin(ctx.intake.accept(*accepted, peer.ip())).await;
                session.queued(id.as_ref().map(|id| id.as_str()).map_err(|e| e.refusal()))
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
