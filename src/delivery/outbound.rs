//! One outbound SMTP attempt: lettre's `AsyncSmtpConnection` for commands and replies, over
//! a stream that submitd owns ([`Wire`]), TLS included, and the message data written by us.
//!
//! lettre's `send`/`send_raw` abort the whole transaction at the first rejected RCPT, so the
//! conversation is driven here command by command, giving one [`Outcome`] per recipient:
//!
//! 1. TCP connect (`relay.timeout`); for an implicit-TLS smarthost our TLS handshake; then the
//!    greeting and EHLO through lettre;
//! 2. STARTTLS per [`TlsPolicy`]: the command and its `220` through lettre, the handshake ours
//!    (tokio-rustls, configs from [`super::tls`]) on the same stream;
//! 3. a second EHLO whose reply is parsed here: lettre's `ServerInfo` does not keep `SIZE`, and
//!    it is lettre's from before STARTTLS (lettre does not see our upgrade);
//! 4. AUTH (PLAIN, then LOGIN, as that EHLO offers) when credentials are set, only over TLS;
//! 5. checks that need no round trip: SIZE, SMTPUTF8, 8BITMIME;
//! 6. `MAIL FROM`, one `RCPT TO` per recipient (each reply kept), `DATA` when any was accepted;
//!    with PIPELINING at the next hop (RFC 2920) `MAIL`, the `RCPT`s and `DATA` go out in one
//!    write and the replies are read one by one, in order. After the `354` the message goes
//!    out in pieces read from the queue file, dot-stuffed without a copy ([`DotStuffer`])
//!    and written straight to the stream; lettre then writes `CRLF.CRLF` and reads the reply.
//!
//! Steps 1 to 4 ([`Connection`] set-up) happen once per connection; step 6 ([`transaction`])
//! may then run several times on it, one message after the other (see [`super::pool`]). A
//! connection is offered for another message only when its last transaction is known to be
//! over: the reply after the final dot was read, or a `RSET` was answered 250.
//!
//! Which failures move on to the next host (Postfix's "soft errors" before the transaction):
//! connection refused/reset/timeout, a 4xx or 5xx greeting or EHLO, a STARTTLS failure (in
//! every policy: Postfix's `may` would retry in clear, we defer to the next host and finally the
//! queue, never downgrading an offered-but-broken TLS to clear text), TLS required but not
//! offered, a 4xx or network error on `MAIL FROM`. When every host fails, every recipient is
//! deferred with the last error. Once `MAIL FROM` is accepted the host's answers are final for
//! this attempt.
//!
//! Every command has its own `relay.timeout`; each host's whole session has an overall bound
//! ([`session_bound`]) so a peer trickling bytes cannot hold a delivery forever.
//!
//! # The stream is ours
//!
//! In every mode the stream is a TCP socket we connect, wrapped in a [`Guarded`] layer,
//! wrapped in TLS (ours, tokio-rustls) when it is negotiated, all inside one [`Wire`]. lettre
//! holds one clone of the wire and reads and writes through it; the [`Connection`] keeps
//! another for the TLS upgrade and the message data. The two never use it at the same time (a
//! step is either lettre's or ours); a wire found busy fails the operation rather than
//! waiting. lettre's `is_encrypted` does not see our TLS: [`Connection`] keeps its own flag.
//!
//! # A hostile next hop
//!
//! lettre reads replies through a `BufReader` and two things in it are unsafe against a
//! hostile (or man-in-the-middle) server, so the TCP stream under lettre, and under TLS, is a
//! [`Guarded`] one:
//!
//! - **STARTTLS response injection.** lettre reads the `220` to `STARTTLS` through its
//!   buffer, and whatever came in the same read would stay there, to be read as the first
//!   reply *after* the handshake, i.e. as if it came from inside TLS (`220 go\r\n250-SIZE
//!   10\r\n`, the client-side twin of CVE-2011-0411). The guard sees the `STARTTLS` command
//!   go out and fails the read that delivers anything after the end of its reply: the STARTTLS
//!   fails, the host is skipped, the recipients are deferred. Bytes arriving in a later read
//!   go to the TLS handshake, which rejects them.
//! - **Unbounded lines.** lettre's `read_line` collects a whole line before checking its
//!   length (1000) and a reply's size (100 000), so a peer sending megabytes without a line
//!   feed grows memory for as long as the step's timeout lets it. The guard fails any read
//!   past [`MAX_UNANSWERED`] bytes since our last write (for any one reply, or a TLS
//!   handshake flight).
//! - **Silence.** A read waiting more than `relay.timeout` for a byte fails, so every reply
//!   (the greeting and each after a command) has its own `relay.timeout`, inside lettre too.
//!
//! The guard also holds the connection's [`Fuse`]: when the queue file cannot be read to the
//! end of the message, no further byte is written, so the next hop sees a connection dropped in
//! the middle of the data, never a message cut short and ended with the final dot.

use crate::logsafe::Escaped;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Auth, Data, Ehlo, Rset, Starttls};
use lettre::transport::smtp::extension::{ClientId, Extension, ServerInfo};
use lettre::transport::smtp::response::Response;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::dotstuff::DotStuffer;
use super::mx::{Target, to_ascii_domain};
use super::stored::{self, Fuse, Pieces};
use super::tls::{self, Verified};
use super::{Job, Outcome};
use crate::queue::spool::StoredMessage;
use std::sync::Arc;

/// At most this many addresses are tried in one attempt (Postfix: `smtp_mx_address_limit`).
pub const MAX_ADDRESSES: usize = 10;
/// Data transfer is allowed at least this rate (bytes per second) on top of one timeout.
const MIN_DATA_RATE: u64 = 64 * 1024;
/// Most bytes the next hop may send between two of our writes: any reply (lettre allows
/// 100 000 octets of reply text), or a TLS handshake flight with a long certificate chain.
pub const MAX_UNANSWERED: usize = 256 * 1024;

/// Permanent status: message bigger than the next hop's SIZE (RFC 3463).
pub const STATUS_TOO_BIG: &str = "5.3.4";
/// Permanent status: non-ASCII envelope/headers but no SMTPUTF8 at the next hop (RFC 6531).
pub const STATUS_NO_SMTPUTF8: &str = "5.6.7";
/// Permanent status: 8-bit body but no 8BITMIME at the next hop (RFC 6152).
pub const STATUS_NO_8BITMIME: &str = "5.6.3";
/// Permanent status: REQUIRETLS cannot be honoured (RFC 8689 section 4.2.1; RFC 5248 "encryption
/// needed").
pub const STATUS_REQUIRETLS: &str = "5.7.10";

/// How TLS is negotiated with the next hop. Verified (what REQUIRETLS may use): only
/// `StartTlsVerified` (smarthost, and MX hosts with `relay.tls = "verify"`), `Implicit` and
/// `Dane`; `Required` is mandatory but unauthenticated (also DANE with only unusable TLSA
/// records).
#[derive(Clone)]
pub enum TlsPolicy {
    /// Never STARTTLS (`relay.tls = "none"`, `smarthost_tls = "none"`).
    None,
    /// STARTTLS when offered, certificate not verified ([`tls::unverified`]); clear text
    /// only when not offered.
    Opportunistic(Arc<ClientConfig>),
    /// STARTTLS must be offered and succeed; certificate not verified (MX mode `required`).
    Required(Arc<ClientConfig>),
    /// STARTTLS must be offered and succeed, verified ([`tls::smarthost`]).
    StartTlsVerified(Verified),
    /// TLS from the first byte, verified ([`tls::smarthost`]; smarthost `implicit`).
    Implicit(Verified),
    /// STARTTLS must be offered and succeed, the certificate verified by this config
    /// (WebPKI, [`tls::WebPki::judged`]) for each MX host's own name (MTA-STS `enforce`).
    StartTlsWebPki(Arc<ClientConfig>),
    /// DANE (RFC 7672): STARTTLS must be offered and succeed, the certificate matched against
    /// the host's authenticated TLSA records ([`super::dane::client_config`]); the MX name as
    /// SNI. Verified. Never clear text.
    Dane(Arc<ClientConfig>),
}

/// One place to try and how TLS goes there: the policy is decided per host (DANE is per MX
/// host, see `super::policy`).
#[derive(Clone)]
pub struct Hop {
    pub target: Target,
    pub tls: TlsPolicy,
}

impl TlsPolicy {
    /// Whether this policy makes TLS mandatory *and* verifies the next hop's certificate: the
    /// only policies a REQUIRETLS message may travel under (RFC 8689 section 4.2.1). DANE and
    /// MTA-STS `enforce` policies belong here too.
    pub fn verifies(&self) -> bool {
        match self {
            TlsPolicy::StartTlsVerified(_)
            | TlsPolicy::Implicit(_)
            | TlsPolicy::Dane(_)
            | TlsPolicy::StartTlsWebPki(_) => true,
            TlsPolicy::None | TlsPolicy::Opportunistic(_) | TlsPolicy::Required(_) => false,
        }
    }
}

/// What one session needs besides the job.
pub struct Session<'a> {
    /// EHLO name (`hostname`).
    pub hello: &'a ClientId,
    /// Smarthost AUTH (PLAIN, then LOGIN); never sent in clear.
    pub credentials: Option<&'a Credentials>,
    /// Each step: connect, greeting, each reply (`relay.timeout`).
    pub timeout: Duration,
}

/// The result of one host.
enum HostResult {
    /// The host's answers are final for this attempt: one outcome per recipient, and the
    /// connection when it can carry another transaction.
    Done(Vec<Outcome>, Option<Box<Connection>>),
    /// Nothing happened to the recipients; try the next host. The reply says why.
    NextHost(String),
}

/// Where a connection stands between transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// No transaction open: the next `MAIL FROM` may go out.
    Clean,
    /// The peer still talks but no new transaction should start (a 421, a transaction left
    /// open, replies out of step): only a polite QUIT.
    Dirty,
    /// No more bytes may be written (network error, timeout, a broken guard, an unfinished
    /// TLS upgrade): only dropped.
    Broken,
}

/// An SMTP connection set up for transactions: greeting, EHLO, STARTTLS and AUTH done, the
/// next hop's capabilities known. Several messages may go over it one after the other
/// (connection reuse, see [`super::pool`]).
pub struct Connection {
    conn: AsyncSmtpConnection,
    caps: Capabilities,
    /// `name[ip]:port` of the host, as recorded in outcomes.
    host: String,
    /// Each step's timeout (`relay.timeout`).
    timeout: Duration,
    /// Transactions started on it.
    transactions: u32,
    health: Health,
    /// The stream under lettre (another clone of it): for the TLS upgrade and the data.
    wire: Wire,
    /// TLS is up (implicit, or after STARTTLS). lettre's `is_encrypted` does not know.
    encrypted: bool,
    /// The [`Guarded`] stream's fuse: blown when the message cannot be read to its end, so
    /// that the final dot is never written.
    fuse: Arc<Fuse>,
    /// TLS is up and the policy it was negotiated under verifies the certificate
    /// ([`TlsPolicy::verifies`]): a REQUIRETLS message may use this connection.
    verified: bool,
    /// Opened in clear although the policy requires TLS, for a `TLS-Required: No` message
    /// ([`Job::tls_optional`]): never reused for another message.
    downgraded: bool,
}

impl Connection {
    /// `name[ip]:port` of the host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Transactions started on this connection.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// Whether another transaction may start on it.
    pub fn is_clean(&self) -> bool {
        self.health == Health::Clean && !self.downgraded
    }

    /// Whether STARTTLS can be sent: offered in the last EHLO lettre read (its first, the
    /// only one before TLS), and TLS not up yet.
    fn can_starttls(&self) -> bool {
        !self.encrypted
            && self
                .conn
                .server_info()
                .supports_feature(Extension::StartTls)
    }

    /// `STARTTLS`, its `220`, then our handshake on the same stream (one `relay.timeout`
    /// each). `Err` says what failed; the connection is then only dropped (no byte may follow
    /// a TLS upgrade gone wrong), or closed with a QUIT after a negative reply.
    async fn starttls(
        &mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<(), StepError> {
        let t = self.timeout;
        if let Err(e) = step(t, self.conn.command(Starttls)).await {
            self.health = match e {
                StepError::Reply { .. } => Health::Dirty,
                StepError::Io(_) => Health::Broken,
            };
            return Err(e);
        }
        // From here on the stream is not usable until the handshake is done.
        self.health = Health::Broken;
        self.wire
            .start_tls(config, name, t)
            .await
            .map_err(|e| StepError::Io(format!("TLS handshake: {e}")))?;
        self.encrypted = true;
        self.health = Health::Clean;
        Ok(())
    }

    /// Close: QUIT when the peer may still be talked to (its answer does not matter), then
    /// drop the socket.
    pub async fn close(mut self) {
        if self.health != Health::Broken {
            let quit = self.conn.quit();
            let _ = tokio::time::timeout(self.timeout.min(Duration::from_secs(5)), quit).await;
        }
    }
}

/// What one transaction on an open connection gave.
pub enum Transaction {
    /// The host's answers for this message are final: one outcome per recipient.
    Done(Vec<Outcome>),
    /// `MAIL FROM` was not accepted (or not answered): nothing happened to any recipient.
    /// `status` is the enhanced status of a 5xx reply.
    MailRefused {
        reply: String,
        status: Option<String>,
    },
}

/// Deliver `job` to the first of `hops` that takes responsibility; one outcome per
/// recipient, in order, and the connection when it can carry another message.
pub async fn deliver(
    hops: &[Hop],
    job: &Job<'_>,
    session: &Session<'_>,
) -> (Vec<Outcome>, Option<Connection>) {
    let mut last: Option<(String, String)> = None;
    let bound = session_bound(session.timeout, job);
    for hop in hops.iter().take(MAX_ADDRESSES) {
        let host = hop.target.label();
        tracing::debug!(queue_id = job.queue_id, host = %Escaped(&host), "trying");
        match tokio::time::timeout(bound, try_host(hop, &host, job, session)).await {
            Ok(HostResult::Done(outcomes, conn)) => return (outcomes, conn.map(|c| *c)),
            Ok(HostResult::NextHost(reply)) => {
                tracing::debug!(queue_id = job.queue_id, host = %Escaped(&host), reply = %Escaped(&reply), "next host");
                last = Some((host, reply));
            }
            Err(_) => {
                let reply = format!("session with {host} timed out after {bound:?}");
                last = Some((host, reply));
            }
        }
    }
    let (host, reply) = match last {
        Some((h, r)) => (Some(h), r),
        None => (None, "no host to deliver to".to_string()),
    };
    let deferred = Outcome::Deferred { host, reply };
    (vec![deferred; job.recipients.len()], None)
}

/// The overall bound on one host's session: every step's timeout plus time to send the data.
pub fn session_bound(step: Duration, job: &Job<'_>) -> Duration {
    // connect+greeting+EHLO, STARTTLS+EHLO, EHLO, AUTH, MAIL, DATA, final reply, RSET, QUIT:
    // 13 steps.
    let steps = 13 + job.recipients.len() as u32;
    step.saturating_mul(steps) + data_allowance(job.message.len())
}

/// Extra time for sending `len` bytes at [`MIN_DATA_RATE`].
fn data_allowance(len: u64) -> Duration {
    Duration::from_secs(len / MIN_DATA_RATE)
}

async fn try_host(hop: &Hop, host: &str, job: &Job<'_>, s: &Session<'_>) -> HostResult {
    let mut conn = match open(hop, host, job, s).await {
        Ok(c) => c,
        Err(result) => return result,
    };
    match transaction(&mut conn, job).await {
        Transaction::Done(outcomes) if conn.is_clean() => {
            HostResult::Done(outcomes, Some(Box::new(conn)))
        }
        Transaction::Done(outcomes) => {
            conn.close().await;
            HostResult::Done(outcomes, None)
        }
        Transaction::MailRefused { reply, status } => {
            conn.close().await;
            match status {
                Some(status) => {
                    let n = job.recipients.len();
                    HostResult::Done(all_failed(host, &reply, &status, n), None)
                }
                None => HostResult::NextHost(format!("MAIL FROM at {host}: {reply}")),
            }
        }
    }
}

/// Connect to `target` and set the session up: greeting, EHLO, STARTTLS per the policy, a
/// second EHLO whose reply is parsed here, AUTH. `Err` is what the attempt makes of a failure
/// (for each of the job's recipients).
async fn open(
    hop: &Hop,
    host: &str,
    job: &Job<'_>,
    s: &Session<'_>,
) -> Result<Connection, HostResult> {
    let n = job.recipients.len();
    let target = &hop.target;
    // Connect, (handshake,) greeting and EHLO get one step each.
    let connect = async {
        let tcp = match tokio::time::timeout(s.timeout, TcpStream::connect(target.addr)).await {
            Err(_) => return Err(StepError::Io("connection timed out".into())),
            Ok(Err(e)) => return Err(StepError::Io(e.to_string())),
            Ok(Ok(tcp)) => tcp,
        };
        // Commands and replies are small and lock-step (or one pipelined group): waiting for
        // more to fill a segment only adds latency.
        let _ = tcp.set_nodelay(true);
        let guarded = Guarded::new(tcp, s.timeout);
        let fuse = guarded.fuse();
        let wire = Wire::new(guarded, target.addr);
        let encrypted = match &hop.tls {
            TlsPolicy::Implicit(v) => {
                let handshake = wire.start_tls(v.config.clone(), v.name.clone(), s.timeout);
                handshake
                    .await
                    .map_err(|e| StepError::Io(format!("TLS handshake: {e}")))?;
                true
            }
            _ => false,
        };
        let conn = AsyncSmtpConnection::connect_with_transport(Box::new(wire.clone()), s.hello)
            .await
            .map_err(StepError::from)?;
        Ok((conn, wire, fuse, encrypted))
    };
    let (conn, wire, fuse, encrypted) =
        match tokio::time::timeout(s.timeout.saturating_mul(4), connect).await {
            Err(_) => {
                return Err(HostResult::NextHost(format!(
                    "connect, greeting or EHLO with {host} timed out"
                )));
            }
            Ok(Err(e)) => {
                return Err(HostResult::NextHost(format!(
                    "connection to {host} failed: {e}"
                )));
            }
            Ok(Ok(c)) => c,
        };
    let mut c = Connection {
        conn,
        caps: Capabilities::default(),
        host: host.to_string(),
        timeout: s.timeout,
        transactions: 0,
        health: Health::Clean,
        wire,
        encrypted,
        fuse,
        verified: false,
        downgraded: false,
    };
    match set_up(&mut c, hop, n, job.tls_optional, s).await {
        Ok(()) => {
            c.verified = c.encrypted && hop.tls.verifies();
            Ok(c)
        }
        Err(result) => {
            c.close().await;
            Err(result)
        }
    }
}

/// STARTTLS, the second EHLO and AUTH on a fresh connection. `tls_optional`: the message says
/// `TLS-Required: No` (RFC 8689 section 5), so MX `required` TLS not offered is no reason to
/// skip the host; such a connection is never reused.
async fn set_up(
    c: &mut Connection,
    hop: &Hop,
    n: usize,
    tls_optional: bool,
    s: &Session<'_>,
) -> Result<(), HostResult> {
    let t = s.timeout;
    let host = c.host.clone();

    // STARTTLS.
    let upgrade = match &hop.tls {
        TlsPolicy::None | TlsPolicy::Implicit(_) => None,
        TlsPolicy::Opportunistic(_) if !c.can_starttls() => None,
        TlsPolicy::Required(_) if tls_optional && !c.can_starttls() => {
            c.downgraded = true;
            None
        }
        _ if !c.can_starttls() => {
            return Err(HostResult::NextHost(format!(
                "TLS required but not offered by {host}"
            )));
        }
        TlsPolicy::StartTlsVerified(v) => Some((v.config.clone(), v.name.clone())),
        TlsPolicy::Opportunistic(config)
        | TlsPolicy::Required(config)
        | TlsPolicy::Dane(config)
        | TlsPolicy::StartTlsWebPki(config) => {
            Some((config.clone(), tls::mx_server_name(&hop.target)))
        }
    };
    if let Some((config, name)) = upgrade
        && let Err(e) = c.starttls(config, name).await
    {
        return Err(HostResult::NextHost(format!(
            "STARTTLS with {host} failed: {e}"
        )));
    }

    // A second EHLO whose reply we parse ourselves (SIZE, PIPELINING, AUTH after STARTTLS).
    let ehlo = match step(t, c.conn.command(Ehlo::new(s.hello.clone()))).await {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, StepError::Io(_)) {
                c.health = Health::Broken;
            }
            return Err(HostResult::NextHost(format!("EHLO to {host}: {e}")));
        }
    };
    c.caps = Capabilities::from_ehlo(&ehlo);

    // AUTH: only over TLS; a refusal is the operator's problem, not the users' (defer).
    if let Some(creds) = s.credentials {
        if !c.encrypted {
            return Err(HostResult::Done(
                all_deferred(
                    &host,
                    "refusing to send smarthost credentials in clear text",
                    n,
                ),
                None,
            ));
        }
        let auth = authenticate(&mut c.conn, &ehlo, creds);
        match tokio::time::timeout(t.saturating_mul(3), auth).await {
            Err(_) => {
                c.health = Health::Broken;
                return Err(HostResult::NextHost(format!("AUTH with {host} timed out")));
            }
            Ok(Err(e)) => {
                let reply = format!("authentication to {host} failed: {e}");
                return Err(HostResult::Done(all_deferred(&host, &reply, n), None));
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(())
}

/// AUTH with the first of PLAIN and LOGIN that `ehlo` offers, answering the server's
/// challenges (at most 10). lettre's own `auth` would pick from the EHLO it read itself, which
/// after our STARTTLS is the one from before TLS (where servers offer no AUTH).
async fn authenticate(
    conn: &mut AsyncSmtpConnection,
    ehlo: &Response,
    creds: &Credentials,
) -> Result<Response, StepError> {
    let info = ServerInfo::from_response(ehlo)?;
    let Some(mechanism) = info.get_auth_mechanism(&[Mechanism::Plain, Mechanism::Login]) else {
        return Err(StepError::Io(
            "no compatible authentication mechanism offered (PLAIN, LOGIN)".into(),
        ));
    };
    let mut reply = conn
        .command(Auth::new(mechanism, creds.clone(), None)?)
        .await?;
    for _ in 0..10 {
        if !reply.has_code(334) {
            break;
        }
        let answer = Auth::new_from_response(mechanism, creds.clone(), &reply)?;
        reply = conn.command(answer).await?;
    }
    if reply.has_code(334) {
        return Err(StepError::Io("too many authentication challenges".into()));
    }
    Ok(reply)
}

/// One mail transaction on an open, clean connection: `MAIL FROM`, one `RCPT TO` per
/// recipient (each reply kept), `DATA` and the message when any was accepted. With
/// PIPELINING at the next hop (RFC 2920) `MAIL`, the `RCPT`s and `DATA` go out in one write
/// and the replies are read in order. Afterwards the connection is clean again only when the
/// transaction is known to be over (the reply after the final dot, or a `RSET` answered 250).
pub async fn transaction(c: &mut Connection, job: &Job<'_>) -> Transaction {
    let n = job.recipients.len();
    let host = c.host.clone();

    // Checks that need no round trip.
    let content = match stored::blocking(&job.message, || Content::read(job, &c.caps)) {
        Ok(content) => content,
        Err(e) => {
            let reply = format!("reading the queued message: {e}");
            return Transaction::Done(all_deferred(&host, &reply, n));
        }
    };
    if job.requiretls && !(c.verified && c.caps.requiretls) {
        let reply = if c.verified {
            format!("{STATUS_REQUIRETLS} REQUIRETLS: {host} does not offer REQUIRETLS")
        } else {
            format!(
                "{STATUS_REQUIRETLS} REQUIRETLS: TLS with {host} is not both required and verified"
            )
        };
        return Transaction::Done(all_failed(&host, &reply, STATUS_REQUIRETLS, n));
    }
    let envelope = match plan(job, content, &c.caps, &host) {
        Ok(e) => e,
        Err((status, reply)) => return Transaction::Done(all_failed(&host, &reply, status, n)),
    };
    c.transactions += 1;
    c.health = Health::Dirty;
    let pipelined = c.caps.pipelining;

    if let Err(refused) = mail_from(c, &envelope, pipelined).await {
        return refused;
    }
    let Rcpts { outcomes, accepted } = match rcpt_to(c, envelope.rcpt_to, n, pipelined).await {
        Ok(rcpts) => rcpts,
        Err(done) => return done,
    };

    // DATA: its reply (already sent when pipelining).
    let t = c.timeout;
    let data = if pipelined {
        Some(step(t, c.conn.read_response()).await)
    } else if accepted.is_empty() {
        None
    } else {
        Some(step(t, c.conn.command(Data)).await)
    };
    if accepted.is_empty() {
        if let Some(Ok(_)) = data {
            // A 354 although no recipient was accepted: end the empty message at once
            // (RFC 2920 section 3.1); whatever the answer, nothing was delivered.
            let _ = step(t, c.conn.command(".\r\n")).await;
        }
        c.health = match data {
            Some(Err(StepError::Io(_))) => Health::Broken,
            _ => reset(&mut c.conn, t).await,
        };
        return Transaction::Done(defer_rest(outcomes, &host, "no recipient accepted"));
    }

    let final_reply = message_data(c, job, data).await;
    let outcome = final_outcome(final_reply, &host, c.caps.dsn);
    let mut outcomes = outcomes;
    for &i in &accepted {
        outcomes[i] = Some(outcome.clone());
    }
    Transaction::Done(defer_rest(outcomes, &host, "not attempted"))
}

/// What the `RCPT TO` replies decided: an outcome for each refused recipient, and the indexes
/// of the accepted ones (their outcome is the reply after the message).
struct Rcpts {
    outcomes: Vec<Option<Outcome>>,
    accepted: Vec<usize>,
}

/// `MAIL FROM`, with the `RCPT`s and `DATA` behind it in the same write when pipelining; its
/// reply. `Err` is the transaction's end when it was not accepted.
async fn mail_from(
    c: &mut Connection,
    envelope: &Envelope,
    pipelined: bool,
) -> Result<(), Transaction> {
    let t = c.timeout;
    let mail = if pipelined {
        let mut group = envelope.mail_from.clone();
        for rcpt in &envelope.rcpt_to {
            group.push_str(rcpt);
        }
        group.push_str("DATA\r\n");
        step(t, c.conn.command(group)).await
    } else {
        step(t, c.conn.command(&envelope.mail_from)).await
    };
    let Err(e) = mail else {
        return Ok(());
    };
    let status = match &e {
        StepError::Reply { code, text } if *code >= 500 => Some(enhanced_status(text, *code)),
        _ => None,
    };
    c.health = match e {
        StepError::Io(_) => Health::Broken,
        // Pipelined replies are now out of step: only QUIT.
        _ => Health::Dirty,
    };
    Err(Transaction::MailRefused {
        reply: e.to_string(),
        status,
    })
}

/// One `RCPT TO` per recipient (already sent when pipelining), one reply each. `Err` is the
/// transaction's end when the connection is lost or closing (421).
async fn rcpt_to(
    c: &mut Connection,
    rcpt_to: Vec<String>,
    n: usize,
    pipelined: bool,
) -> Result<Rcpts, Transaction> {
    let t = c.timeout;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut accepted = Vec::new();
    for (i, rcpt) in rcpt_to.into_iter().enumerate() {
        let reply = if pipelined {
            step(t, c.conn.read_response()).await
        } else {
            step(t, c.conn.command(rcpt)).await
        };
        match reply {
            Ok(_) => accepted.push(i),
            Err(StepError::Reply { code, text }) if code >= 500 => {
                outcomes[i] = Some(Outcome::Failed {
                    host: Some(c.host.clone()),
                    reply: format!("{code} {text}"),
                    status: enhanced_status(&text, code),
                });
            }
            // 421: the server is closing; nothing more happens on this connection.
            Err(e @ StepError::Reply { code: 421, .. }) | Err(e @ StepError::Io(_)) => {
                c.health = Health::Broken;
                let done = defer_rest(outcomes, &c.host, &e.to_string());
                return Err(Transaction::Done(done));
            }
            Err(e) => {
                outcomes[i] = Some(Outcome::Deferred {
                    host: Some(c.host.clone()),
                    reply: e.to_string(),
                });
            }
        }
    }
    Ok(Rcpts { outcomes, accepted })
}

/// After the `DATA` reply (`None`: DATA was not sent): the message and the reply after its
/// final dot, which decides every accepted recipient. Leaves the connection's health as the
/// replies left it.
async fn message_data(
    c: &mut Connection,
    job: &Job<'_>,
    data: Option<Result<Response, StepError>>,
) -> Result<Response, StepError> {
    let t = c.timeout;
    match data {
        Some(Ok(_)) => {
            let bound = t + data_allowance(job.message.len());
            let reply = send_message(c, &job.message, bound).await;
            c.health = match &reply {
                // No reply (timeout, reset, garbage): the conversation is out of step.
                Err(StepError::Io(_)) => Health::Broken,
                Err(StepError::Reply { code: 421, .. }) => Health::Dirty,
                // The reply after the dot ends the transaction, whatever its code.
                _ => Health::Clean,
            };
            reply
        }
        Some(Err(e)) => {
            // DATA refused: the transaction is still open on the server's side.
            c.health = match &e {
                StepError::Io(_) => Health::Broken,
                StepError::Reply { code: 421, .. } => Health::Dirty,
                _ => reset(&mut c.conn, t).await,
            };
            Err(e)
        }
        None => Err(StepError::Io("DATA not sent".into())),
    }
}

/// Send the message after a `354` and read the reply after its final dot, all within
/// `bound`. The message goes out in pieces read from the queue file, never whole, each
/// dot-stuffed without a copy ([`DotStuffer`]) and written straight to the wire (lettre's
/// `message_iter` would copy it octet by octet); then lettre writes `CRLF.CRLF` ([`Pieces`]
/// leaves out the message's own final CRLF) and reads the reply. A read that fails blows the
/// connection's fuse and returns before the dot: the next hop sees a connection dropped in the
/// middle of the data, never a message cut short.
async fn send_message(
    c: &mut Connection,
    message: &StoredMessage,
    bound: Duration,
) -> Result<Response, StepError> {
    let (wire, fuse) = (c.wire.clone(), c.fuse.clone());
    let conn = &mut c.conn;
    let send = async {
        write_data(&wire, message).await.map_err(|e| match e {
            DataError::Read(e) => {
                let why = e.to_string();
                fuse.blow(why.clone());
                StepError::Io(why)
            }
            DataError::Write(e) => StepError::Io(format!("sending the message: {e}")),
        })?;
        conn.message_iter(std::iter::empty::<&[u8]>())
            .await
            .map_err(StepError::from)
    };
    match tokio::time::timeout(bound, send).await {
        Ok(reply) => reply,
        Err(_) => Err(StepError::Io(format!(
            "timed out after {bound:?} sending the message or waiting for its reply"
        ))),
    }
}

/// Why the data could not be written whole.
enum DataError {
    /// Reading the queue file failed.
    Read(io::Error),
    /// Writing to the next hop failed.
    Write(io::Error),
}

/// Write the message's pieces, dot-stuffed, to `wire`, and flush; not the final dot.
async fn write_data(wire: &Wire, message: &StoredMessage) -> Result<(), DataError> {
    let mut layer = wire.layer.lock().await;
    let mut pieces = Pieces::new(message);
    let mut stuffer = DotStuffer::new();
    while let Some(piece) = pieces.next_piece().map_err(DataError::Read)? {
        for slice in stuffer.segments(piece) {
            layer.write_all(slice).await.map_err(DataError::Write)?;
        }
    }
    layer.flush().await.map_err(DataError::Write)
}

/// The outcome of every accepted recipient from the reply after the message; `dsn_passed`:
/// the next hop offers DSN, so it got the NOTIFY parameters.
fn final_outcome(reply: Result<Response, StepError>, host: &str, dsn_passed: bool) -> Outcome {
    match reply {
        Ok(r) => Outcome::Delivered {
            host: host.to_string(),
            reply: reply_text(&r),
            dsn_passed,
        },
        Err(StepError::Reply { code, text }) if code >= 500 => Outcome::Failed {
            host: Some(host.to_string()),
            reply: format!("{code} {text}"),
            status: enhanced_status(&text, code),
        },
        Err(e) => Outcome::Deferred {
            host: Some(host.to_string()),
            reply: e.to_string(),
        },
    }
}

/// `RSET` to end a transaction left open; the connection's health afterwards.
async fn reset(conn: &mut AsyncSmtpConnection, t: Duration) -> Health {
    match step(t, conn.command(Rset)).await {
        Ok(_) => Health::Clean,
        Err(StepError::Io(_)) => Health::Broken,
        Err(_) => Health::Dirty,
    }
}

/// Every undecided recipient deferred with `reply`.
fn defer_rest(outcomes: Vec<Option<Outcome>>, host: &str, reply: &str) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Outcome::Deferred {
                host: Some(host.to_string()),
                reply: reply.to_string(),
            })
        })
        .collect()
}

fn all_deferred(host: &str, reply: &str, n: usize) -> Vec<Outcome> {
    defer_rest(vec![None; n], host, reply)
}

fn all_failed(host: &str, reply: &str, status: &str, n: usize) -> Vec<Outcome> {
    let failed = Outcome::Failed {
        host: Some(host.to_string()),
        reply: reply.to_string(),
        status: status.to_string(),
    };
    vec![failed; n]
}

/// A failed step: the server's negative reply, or anything else (network, timeout, TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
enum StepError {
    Reply { code: u16, text: String },
    Io(String),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Reply { code, text } => write!(f, "{code} {text}"),
            StepError::Io(e) => f.write_str(e),
        }
    }
}

impl From<SmtpError> for StepError {
    fn from(e: SmtpError) -> StepError {
        match e.status() {
            Some(code) => {
                let code = code.to_string().parse().unwrap_or(500);
                // lettre keeps the reply's text (all lines joined) as the error's source.
                let text = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                StepError::Reply { code, text }
            }
            None => StepError::Io(e.to_string()),
        }
    }
}

/// One command with its own timeout.
async fn step(
    timeout: Duration,
    fut: impl Future<Output = Result<Response, SmtpError>>,
) -> Result<Response, StepError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(StepError::from),
        Err(_) => Err(StepError::Io(format!(
            "timed out after {timeout:?} waiting for a reply"
        ))),
    }
}

/// `250 2.0.0 Ok: queued as X` from a lettre response.
fn reply_text(r: &Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    format!("{} {}", r.code(), lines.join(" "))
}

/// The enhanced status code at the start of a reply's text (RFC 3463), when its class
/// matches the reply code; else `5.0.0` / `4.0.0`.
pub fn enhanced_status(text: &str, code: u16) -> String {
    let class = (code / 100).to_string();
    if let Some(first) = text.split_whitespace().next() {
        let parts: Vec<&str> = first.split('.').collect();
        let numeric = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if parts.len() == 3 && parts[0] == class && numeric(parts[1], 3) && numeric(parts[2], 3) {
            return first.to_string();
        }
    }
    format!("{class}.0.0")
}

/// What the next hop offered in its (last) EHLO reply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// `SIZE n` with n > 0 (RFC 1870); `SIZE` or `SIZE 0` means no fixed limit.
    pub size_limit: Option<u64>,
    pub size: bool,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// RFC 2920 command pipelining.
    pub pipelining: bool,
    /// RFC 3461 delivery status notifications: NOTIFY, ORCPT, RET and ENVID are passed on.
    pub dsn: bool,
    /// RFC 8689 REQUIRETLS.
    pub requiretls: bool,
}

impl Capabilities {
    fn from_ehlo(r: &Response) -> Capabilities {
        Capabilities::from_lines(r.message().skip(1))
    }

    /// From the EHLO reply's lines after the first (the greeting line).
    pub fn from_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in lines {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "SIZE" => {
                    caps.size = true;
                    caps.size_limit = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
                }
                "8BITMIME" => caps.eight_bit = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "PIPELINING" => caps.pipelining = true,
                "DSN" => caps.dsn = true,
                "REQUIRETLS" => caps.requiretls = true,
                _ => {}
            }
        }
        caps
    }
}

/// Whether the envelope or the message needs SMTPUTF8 at the next hop (RFC 6531).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Utf8Need {
    /// All ASCII.
    None,
    /// Only domains are non-ASCII: without SMTPUTF8 they go as A-labels.
    DomainsOnly,
    /// Non-ASCII local parts, or non-ASCII headers in an SMTPUTF8 submission.
    Required,
}

/// Decide [`Utf8Need`] for a job. Non-ASCII addresses always need it; non-ASCII headers
/// only when the message was submitted with SMTPUTF8 (otherwise they are legacy 8-bit bytes
/// passed on as they are). `headers_ascii`: the message's header fields are all ASCII.
pub fn smtputf8_need(job: &Job<'_>, headers_ascii: bool) -> Utf8Need {
    let mut need = Utf8Need::None;
    let addrs = std::iter::once(job.sender).chain(job.recipients.iter().map(String::as_str));
    for addr in addrs {
        if addr.is_ascii() {
            continue;
        }
        let (local, domain) = split_address(addr);
        if !local.is_ascii() {
            return Utf8Need::Required;
        }
        if !domain.is_ascii() {
            need = Utf8Need::DomainsOnly;
        }
    }
    if job.smtputf8 && !headers_ascii {
        return Utf8Need::Required;
    }
    need
}

/// What the checks before `MAIL FROM` need from the message's bytes. Each is read only when
/// it can change the outcome, since it is a pass over (part of) the queue file.
#[derive(Debug, Clone, Copy)]
struct Content {
    /// The header fields are ASCII (read for an SMTPUTF8 submission only).
    headers_ascii: bool,
    /// The whole message is ASCII (read only for BODY=8BITMIME to a next hop without it).
    body_ascii: bool,
}

impl Content {
    /// Read what `job` needs against `caps`. Blocks.
    fn read(job: &Job<'_>, caps: &Capabilities) -> io::Result<Content> {
        let headers_ascii = !job.smtputf8 || stored::header_fields_ascii(&job.message)?;
        let body_ascii = !job.eight_bit || caps.eight_bit || stored::is_ascii(&job.message)?;
        Ok(Content {
            headers_ascii,
            body_ascii,
        })
    }
}

/// `local@domain` split at the last `@`; no `@`: all local part.
fn split_address(addr: &str) -> (&str, &str) {
    addr.rsplit_once('@').unwrap_or((addr, ""))
}

/// `local@domain` with the domain as A-labels.
fn downgrade_address(addr: &str) -> Option<String> {
    let (local, domain) = split_address(addr);
    if domain.is_ascii() {
        return Some(addr.to_string());
    }
    Some(format!("{local}@{}", to_ascii_domain(domain)?))
}

/// The commands for one transaction, after the checks against the next hop's capabilities.
#[derive(Debug)]
struct Envelope {
    mail_from: String,
    rcpt_to: Vec<String>,
}

/// Build the MAIL and RCPT commands; `Err((status, reply))` when the next hop cannot take
/// the message at all.
fn plan(
    job: &Job<'_>,
    content: Content,
    caps: &Capabilities,
    host: &str,
) -> Result<Envelope, (&'static str, String)> {
    let len = job.message.len();
    if let Some(limit) = caps.size_limit
        && len > limit
    {
        return Err((
            STATUS_TOO_BIG,
            format!("message size {len} exceeds the limit of {limit} of {host}"),
        ));
    }
    if job.eight_bit && !content.body_ascii && !caps.eight_bit {
        return Err((
            STATUS_NO_8BITMIME,
            format!("{host} does not support 8BITMIME and the message has 8-bit content"),
        ));
    }
    let need = smtputf8_need(job, content.headers_ascii);
    let (smtputf8, downgrade) = match need {
        Utf8Need::None => (false, false),
        _ if caps.smtputf8 => (true, false),
        Utf8Need::DomainsOnly => (false, true),
        Utf8Need::Required => {
            return Err((
                STATUS_NO_SMTPUTF8,
                format!(
                    "{host} does not support SMTPUTF8 and the message needs it \
                     (non-ASCII address or header)"
                ),
            ));
        }
    };
    let address = |a: &str| -> Result<String, (&'static str, String)> {
        if downgrade {
            downgrade_address(a).ok_or_else(|| {
                (
                    STATUS_NO_SMTPUTF8,
                    format!("{a}: domain cannot be converted to A-labels for {host}"),
                )
            })
        } else {
            Ok(a.to_string())
        }
    };
    let mut params = String::new();
    if job.eight_bit && caps.eight_bit {
        params.push_str(" BODY=8BITMIME");
    }
    if smtputf8 {
        params.push_str(" SMTPUTF8");
    }
    if caps.size {
        params.push_str(&format!(" SIZE={len}"));
    }
    params.push_str(&mail_dsn_params(job, caps));
    let sender = if job.sender.is_empty() {
        String::new()
    } else {
        address(job.sender)?
    };
    let mail_from = format!("MAIL FROM:<{sender}>{params}\r\n");
    let rcpt_to = job
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let params = rcpt_dsn_params(job, caps, i);
            address(r).map(|a| format!("RCPT TO:<{a}>{params}\r\n"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Envelope { mail_from, rcpt_to })
}

/// MAIL FROM's `RET=` and `ENVID=` for a next hop offering DSN, as submitted (RFC 3461
/// section 5.2), and `REQUIRETLS` (the caller checked that the next hop offers it).
fn mail_dsn_params(job: &Job<'_>, caps: &Capabilities) -> String {
    let mut params = String::new();
    if caps.dsn {
        if let Some(ret) = job.dsn.ret {
            params.push_str(&format!(" RET={}", ret.as_str()));
        }
        if let Some(envid) = job.dsn.envid {
            params.push_str(&format!(" ENVID={envid}"));
        }
    }
    if job.requiretls {
        params.push_str(" REQUIRETLS");
    }
    params
}

/// RCPT TO's `NOTIFY=` and `ORCPT=` of recipient `i` for a next hop offering DSN, as
/// submitted; no ORCPT is made up when the submission gave none.
fn rcpt_dsn_params(job: &Job<'_>, caps: &Capabilities, i: usize) -> String {
    let mut params = String::new();
    let Some(p) = job.dsn.rcpts.get(i).filter(|_| caps.dsn) else {
        return params;
    };
    if let Some(notify) = p.notify {
        params.push_str(&format!(" NOTIFY={}", notify.to_value()));
    }
    // A raw UTF-8 ORCPT (RFC 6533 utf-8-xtext) only to a next hop that takes UTF-8.
    if let Some(orcpt) = p.orcpt.as_ref().filter(|o| o.is_ascii() || caps.smtputf8) {
        params.push_str(&format!(" ORCPT={orcpt}"));
    }
    params
}

/// The stream under lettre, shared with the [`Connection`] (see the module doc): lettre
/// holds one clone, the connection another for the TLS upgrade and the message data.
#[derive(Clone)]
pub struct Wire {
    layer: Arc<tokio::sync::Mutex<Layer>>,
    peer: std::net::SocketAddr,
}

/// What a [`Wire`] carries.
enum Layer {
    Plain(Guarded<TcpStream>),
    Tls(Box<TlsStream<Guarded<TcpStream>>>),
    /// Taken for a TLS handshake that did not complete: nothing more goes through.
    Gone,
}

impl Wire {
    fn new(guarded: Guarded<TcpStream>, peer: std::net::SocketAddr) -> Wire {
        Wire {
            layer: Arc::new(tokio::sync::Mutex::new(Layer::Plain(guarded))),
            peer,
        }
    }

    /// Run the TLS client handshake on the plain stream, within `timeout`, and carry TLS from
    /// now on. After a failure the wire is [`Layer::Gone`].
    async fn start_tls(
        &self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        timeout: Duration,
    ) -> io::Result<()> {
        let mut layer = self.layer.lock().await;
        let Layer::Plain(mut guarded) = std::mem::replace(&mut *layer, Layer::Gone) else {
            return Err(io::Error::other("TLS on a stream that is not plain TCP"));
        };
        guarded.tls_starts();
        let handshake = TlsConnector::from(config).connect(name, guarded);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(tls)) => {
                *layer = Layer::Tls(Box::new(tls));
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {timeout:?}"),
            )),
        }
    }

    /// The layer, when no one else is using it (lettre and the connection take turns, never
    /// overlap: a busy wire is a bug, reported as an error, never a wait or a panic).
    fn try_layer(&self) -> io::Result<tokio::sync::MutexGuard<'_, Layer>> {
        self.layer
            .try_lock()
            .map_err(|_| io::Error::other("outbound stream busy"))
    }
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").field("peer", &self.peer).finish()
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection unusable after a failed TLS handshake",
    )
}

impl AsyncRead for Layer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Layer::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Layer::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Layer::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Layer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Layer::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Layer::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Layer::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Layer::Plain(s) => Pin::new(s).poll_flush(cx),
            Layer::Tls(s) => Pin::new(s).poll_flush(cx),
            Layer::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Layer::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Layer::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Layer::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.try_layer() {
            Ok(mut layer) => Pin::new(&mut *layer).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.try_layer() {
            Ok(mut layer) => Pin::new(&mut *layer).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.try_layer() {
            Ok(mut layer) => Pin::new(&mut *layer).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.try_layer() {
            Ok(mut layer) => Pin::new(&mut *layer).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for Wire {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        Ok(self.peer)
    }
}

/// The TCP stream under lettre (and under TLS), with the guards lettre lacks (see the module
/// doc): no reply data pipelined behind the `220` to `STARTTLS`, at most [`MAX_UNANSWERED`]
/// bytes between two of our writes, no read waiting longer than the step timeout, and the
/// [`Fuse`].
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    /// Each read's limit (`relay.timeout`).
    timeout: Duration,
    /// Armed while a read waits for the peer; reset by progress and by our writes.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read since our last write.
    unanswered: usize,
    starttls: StartTlsWatch,
    /// Set by the first rule broken (or read timed out): SMTP is lock-step, so the
    /// conversation is over; every later read and write fails at once (lettre's `abort`
    /// would otherwise send QUIT and wait a whole timeout for its reply).
    broken: Option<String>,
    /// Blown when the message being sent cannot be read to its end: every later write fails,
    /// so the final dot never follows a message cut short.
    fuse: Arc<Fuse>,
}

/// Where the guard is with respect to `STARTTLS`.
#[derive(Debug)]
enum StartTlsWatch {
    /// Collecting the command line being written (at most 16 bytes kept).
    Writing(Vec<u8>),
    /// `STARTTLS` went out: collecting its reply's current line.
    Reply(Vec<u8>),
    /// After the reply: the bytes are TLS (or the connection is being dropped).
    Done,
}

impl<S> Guarded<S> {
    /// Guard `inner`; `timeout` bounds every read.
    pub fn new(inner: S, timeout: Duration) -> Guarded<S> {
        Guarded {
            inner,
            timeout,
            idle: None,
            unanswered: 0,
            starttls: StartTlsWatch::Writing(Vec::new()),
            broken: None,
            fuse: Fuse::new(),
        }
    }

    /// The fuse that, once blown, fails every write.
    pub fn fuse(&self) -> Arc<Fuse> {
        self.fuse.clone()
    }

    /// The bytes are TLS from now on: no `STARTTLS` line to look for in them (after an
    /// implicit-TLS connect; after `STARTTLS` the watch is already over).
    fn tls_starts(&mut self) {
        self.starttls = StartTlsWatch::Done;
    }

    /// Check bytes just read; an error when they break a rule.
    fn inspect(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.unanswered += bytes.len();
        if self.unanswered > MAX_UNANSWERED {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("next hop sent over {MAX_UNANSWERED} bytes without being asked"),
            ));
        }
        if let StartTlsWatch::Reply(line) = &mut self.starttls {
            for (i, &b) in bytes.iter().enumerate() {
                line.push(b);
                if b != b'\n' {
                    line.truncate(8);
                    continue;
                }
                // `NNN-` continues the reply; anything else ends it (RFC 5321 4.2.1).
                let more = line.len() >= 4 && line[3] == b'-';
                line.clear();
                if more {
                    continue;
                }
                self.starttls = StartTlsWatch::Done;
                if i + 1 < bytes.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "next hop sent data after its STARTTLS reply (response injection?)",
                    ));
                }
                break;
            }
        }
        Ok(())
    }

    /// Note bytes we wrote: a new command resets the byte budget and the read timer; the
    /// `STARTTLS` line arms the watch on its reply.
    fn wrote(&mut self, bytes: &[u8]) {
        self.unanswered = 0;
        self.idle = None;
        if let StartTlsWatch::Writing(line) = &mut self.starttls {
            // Line ends found with memchr: the message data goes through here too, so no
            // per-octet work beyond that scan.
            let mut rest = bytes;
            while let Some(i) = memchr::memchr(b'\n', rest) {
                let (end, after) = rest.split_at(i + 1);
                let starttls = line.len() + end.len() == 10 && {
                    line.extend_from_slice(end);
                    line.eq_ignore_ascii_case(b"STARTTLS\r\n")
                };
                line.clear();
                if starttls {
                    self.starttls = StartTlsWatch::Reply(Vec::new());
                    return;
                }
                rest = after;
            }
            // Not a line end yet: keep the tail bounded (a longer line is not STARTTLS anyway).
            line.extend_from_slice(&rest[rest.len().saturating_sub(16)..]);
            let excess = line.len().saturating_sub(16);
            line.drain(..excess);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(why) = &this.broken {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone())));
        }
        let before = buf.filled().len();
        let result = match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.idle = None;
                let new = buf.filled()[before..].to_vec();
                this.inspect(&new)
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => {
                let timeout = this.timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("timed out after {timeout:?} waiting for the next hop"),
                    )),
                    Poll::Pending => return Poll::Pending,
                }
            }
        };
        if let Err(e) = &result {
            this.broken = Some(format!("connection unusable: {e}"));
        }
        Poll::Ready(result)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.broken.is_none()
            && let Some(why) = this.fuse.blown()
        {
            this.broken = Some(why.to_string());
        }
        if let Some(why) = &this.broken {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone())));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.wrote(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for Guarded<TcpStream> {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::queue::{QueueId, Spool, spool::Envelope as Queued};

    /// `bytes` stored in a spool under a temp dir (kept alive by the job's holder).
    pub(crate) fn stored(bytes: &[u8]) -> Arc<StoredMessage> {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::generate();
        let env = Queued::new(
            &id,
            "u",
            "a@example.test",
            &["b@example.test".into()],
            "h",
            0,
        );
        spool.store_blocking(&env, bytes).unwrap();
        // The open file outlives the directory's removal.
        Arc::new(spool.open_message(&id).unwrap().1)
    }

    fn job<'a>(sender: &'a str, rcpts: &'a [String], message: &[u8], utf8: bool) -> Job<'a> {
        Job {
            queue_id: "Q",
            sender,
            recipients: rcpts,
            domain: "example.test",
            message: stored(message),
            smtputf8: utf8,
            eight_bit: false,
            envelope: None,
            dsn: Default::default(),
            requiretls: false,
            tls_optional: false,
        }
    }

    fn need(j: &Job<'_>) -> Utf8Need {
        let content = Content::read(j, &Capabilities::default()).unwrap();
        smtputf8_need(j, content.headers_ascii)
    }

    fn plan_of(j: &Job<'_>, caps: &Capabilities) -> Result<Envelope, (&'static str, String)> {
        plan(j, Content::read(j, caps).unwrap(), caps, "h")
    }

    /// A wire over a connected loopback pair, and the server's end.
    async fn wire_pair() -> (Wire, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (
            Wire::new(Guarded::new(client, Duration::from_secs(5)), addr),
            server,
        )
    }

    #[tokio::test]
    async fn a_busy_wire_fails_instead_of_waiting() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (wire, mut server) = wire_pair().await;
        let mut lettres = wire.clone();
        let mut buf = [0u8; 16];
        {
            let _ours = wire.layer.lock().await;
            let e = lettres.write_all(b"NOOP\r\n").await.unwrap_err();
            assert!(e.to_string().contains("busy"), "{e}");
            let e = lettres.read(&mut buf).await.unwrap_err();
            assert!(e.to_string().contains("busy"), "{e}");
        }
        lettres.write_all(b"NOOP\r\n").await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"NOOP\r\n");
        server.write_all(b"250 ok\r\n").await.unwrap();
        let n = lettres.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"250 ok\r\n");
    }

    #[tokio::test]
    async fn a_failed_handshake_leaves_a_wire_that_refuses_everything() {
        use tokio::io::AsyncWriteExt;
        let (wire, server) = wire_pair().await;
        // The peer goes away instead of answering the ClientHello.
        drop(server);
        let name = ServerName::try_from("mx.example.test").unwrap();
        assert!(
            wire.start_tls(tls::unverified(), name.clone(), Duration::from_secs(5))
                .await
                .is_err()
        );
        let mut lettres = wire.clone();
        let e = lettres.write_all(b"QUIT\r\n").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected, "{e}");
        assert!(
            wire.start_tls(tls::unverified(), name, Duration::from_secs(5))
                .await
                .is_err()
        );
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(enhanced_status("5.1.1 No such user", 550), "5.1.1");
        assert_eq!(enhanced_status("No such user", 550), "5.0.0");
        assert_eq!(enhanced_status("4.2.0 later", 451), "4.2.0");
        // Class must match the reply code.
        assert_eq!(enhanced_status("4.2.0 odd", 550), "5.0.0");
        assert_eq!(enhanced_status("5.7.1234 x", 550), "5.0.0");
        assert_eq!(enhanced_status("5.1.10 null MX", 556), "5.1.10");
        assert_eq!(enhanced_status("", 554), "5.0.0");
        assert_eq!(enhanced_status("5..1 x", 550), "5.0.0");
    }

    #[test]
    fn capabilities() {
        let c = Capabilities::from_lines(
            [
                "PIPELINING",
                "SIZE 1000",
                "8BITMIME",
                "smtputf8",
                "STARTTLS",
            ]
            .into_iter(),
        );
        assert_eq!(c.size_limit, Some(1000));
        assert!(c.size && c.eight_bit && c.smtputf8 && c.pipelining);
        let c = Capabilities::from_lines(["SIZE"].into_iter());
        assert!(c.size);
        assert_eq!(c.size_limit, None);
        let c = Capabilities::from_lines(["SIZE 0"].into_iter());
        assert_eq!(c.size_limit, None);
    }

    #[test]
    fn smtputf8_detection() {
        let ascii = vec!["bob@example.test".to_string()];
        let msg = b"Subject: hi\r\n\r\nBody \xc3\xa9\r\n";
        assert_eq!(
            need(&job("a@example.test", &ascii, msg, true)),
            Utf8Need::None
        );

        let idn = vec!["bob@b\u{fc}cher.example".to_string()];
        assert_eq!(
            need(&job("a@example.test", &idn, msg, true)),
            Utf8Need::DomainsOnly
        );

        let local = vec!["j\u{f6}rg@example.test".to_string()];
        assert_eq!(
            need(&job("a@example.test", &local, msg, true)),
            Utf8Need::Required
        );
        assert_eq!(
            need(&job("j\u{f6}rg@example.test", &ascii, msg, true)),
            Utf8Need::Required
        );

        let utf8_header = "Subject: caf\u{e9}\r\n\r\nx\r\n".as_bytes();
        assert_eq!(
            need(&job("a@example.test", &ascii, utf8_header, true)),
            Utf8Need::Required
        );
        // Not an SMTPUTF8 submission: legacy 8-bit header bytes pass as they are.
        assert_eq!(
            need(&job("a@example.test", &ascii, utf8_header, false)),
            Utf8Need::None
        );
        // An IDN domain plus UTF-8 headers: required.
        assert_eq!(
            need(&job("a@example.test", &idn, utf8_header, true)),
            Utf8Need::Required
        );
    }

    #[test]
    fn plan_downgrades_domains_only() {
        let idn = vec!["bob@B\u{fc}cher.example".to_string()];
        let j = job("a@example.test", &idn, b"Subject: x\r\n\r\nx\r\n", true);
        let env = plan_of(&j, &Capabilities::default()).unwrap();
        assert_eq!(env.mail_from, "MAIL FROM:<a@example.test>\r\n");
        assert_eq!(env.rcpt_to, ["RCPT TO:<bob@xn--bcher-kva.example>\r\n"]);

        let caps = Capabilities {
            smtputf8: true,
            eight_bit: true,
            size: true,
            size_limit: Some(100),
            pipelining: false,
            dsn: false,
            requiretls: false,
        };
        let env = plan_of(&j, &caps).unwrap();
        assert_eq!(
            env.mail_from,
            "MAIL FROM:<a@example.test> SMTPUTF8 SIZE=17\r\n"
        );
        assert_eq!(env.rcpt_to, ["RCPT TO:<bob@B\u{fc}cher.example>\r\n"]);
    }

    #[test]
    fn plan_passes_dsn_parameters_only_to_a_next_hop_with_dsn() {
        use crate::dsn::{Notify, RcptParams, Ret};
        use crate::queue::courier::JobDsn;
        let to = vec![
            "bob@example.test".to_string(),
            "carol@example.test".to_string(),
        ];
        let params = [
            RcptParams {
                notify: Some(Notify {
                    success: true,
                    failure: true,
                    delay: false,
                }),
                orcpt: Some("rfc822;bob+2Bx@example.test".into()),
            },
            RcptParams::default(),
        ];
        let mut j = job("a@example.test", &to, b"Subject: x\r\n\r\nhi\r\n", false);
        j.dsn = JobDsn {
            ret: Some(Ret::Hdrs),
            envid: Some("QQ+2B1"),
            rcpts: &params,
        };
        let mut caps = Capabilities {
            dsn: true,
            ..Capabilities::default()
        };
        let env = plan_of(&j, &caps).unwrap();
        assert_eq!(
            env.mail_from,
            "MAIL FROM:<a@example.test> RET=HDRS ENVID=QQ+2B1\r\n"
        );
        assert_eq!(
            env.rcpt_to,
            [
                "RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Bx@example.test\r\n",
                "RCPT TO:<carol@example.test>\r\n",
            ]
        );
        caps.dsn = false;
        j.requiretls = true;
        let env = plan_of(&j, &caps).unwrap();
        assert_eq!(env.mail_from, "MAIL FROM:<a@example.test> REQUIRETLS\r\n");
        assert_eq!(env.rcpt_to[0], "RCPT TO:<bob@example.test>\r\n");
        let caps = Capabilities::from_lines(["DSN", "requiretls", "SIZE 10"].into_iter());
        assert!(caps.dsn && caps.requiretls && caps.size);
    }

    #[test]
    fn only_verifying_policies_carry_requiretls() {
        assert!(!TlsPolicy::None.verifies());
        assert!(!TlsPolicy::Opportunistic(tls::unverified()).verifies());
        assert!(!TlsPolicy::Required(tls::unverified()).verifies());
    }

    #[test]
    fn plan_refusals() {
        let r = vec!["j\u{f6}rg@example.test".to_string()];
        let j = job("a@example.test", &r, b"x\r\n", true);
        assert_eq!(
            plan_of(&j, &Capabilities::default()).unwrap_err().0,
            "5.6.7"
        );

        let r = vec!["b@example.test".to_string()];
        let mut j = job("", &r, b"Subject: x\r\n\r\n\xff\r\n", false);
        j.eight_bit = true;
        assert_eq!(
            plan_of(&j, &Capabilities::default()).unwrap_err().0,
            "5.6.3"
        );
        let caps = Capabilities {
            eight_bit: true,
            size: true,
            size_limit: Some(5),
            ..Capabilities::default()
        };
        assert_eq!(plan_of(&j, &caps).unwrap_err().0, "5.3.4");
        let caps = Capabilities {
            eight_bit: true,
            ..Capabilities::default()
        };
        let env = plan_of(&j, &caps).unwrap();
        assert_eq!(env.mail_from, "MAIL FROM:<> BODY=8BITMIME\r\n");
    }

    #[test]
    fn header_fields_ascii_reads_the_fields_only() {
        use super::stored::{PIECE, header_fields_ascii};
        let ascii = |m: &[u8]| header_fields_ascii(&stored(m)).unwrap();
        assert!(ascii(b"A: b\r\n\r\nbody \xc3\xa9"));
        assert!(!ascii(b"A: \xc3\xa9\r\n\r\nbody"));
        assert!(ascii(b"\r\nA: \xc3\xa9\r\n"));
        assert!(!ascii(b"A: b\r\nC: \xff"));
        // The empty line at every place across the first piece boundary; the 8-bit octet
        // right after it is body (not a field) in every case.
        for shift in 0..6 {
            let mut m = b"X: ".to_vec();
            m.resize(PIECE + shift - 4, b'a');
            m.extend_from_slice(b"\r\n\r\n\xff tail\r\n");
            assert!(ascii(&m), "shift {shift}");
            // The same with an 8-bit octet on the last field line, just before the CRLF.
            let at = PIECE + shift - 5;
            m[at] = 0xff;
            assert!(!ascii(&m), "shift {shift}");
        }
    }
}
