//! The SMTP state machine, sans-IO. The driver feeds it lines and body bytes and carries out
//! the [`Step`] it returns: send a reply, close, start TLS, verify credentials, or spool a
//! message. Which commands are allowed when (RFC 5321, RFC 3207, RFC 4954, RFC 6409, RFC 3030)
//! is decided here and only here.

use std::sync::Arc;

use crate::auth::quota::{Quota, Refusal};
use crate::auth::sasl::{self, Credentials, Mechanism, SaslError};
use crate::auth::senders::owns;
use crate::auth::users::User;
use crate::events::DeliveryEvent;
use crate::intake::Accepted;
use crate::outcome;
use crate::submission::{self, FromProblem};

use super::command::{self, Body, Command, MailParams, ParseError, RcptParams, ReversePath};
use super::data::{BdatAccumulator, BodyError, BodyLimits, DataReader, DataResult, PIECE_SIZE};
use super::input::{LineEvent, MAX_AUTH_LINE, MAX_COMMAND_LINE};
use super::reply::{self, Reply};

/// The limits and names a session needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_auth_failures: u32,
    /// Per-user sending limits and suspensions, checked at MAIL and RCPT; `None` = none.
    pub quota: Option<Arc<Quota>>,
    /// Protocol errors before `421 4.7.0 Too many errors` (see [`Session::on_input_line`]).
    pub max_bad_commands: u32,
    /// The largest header section a message may have.
    pub max_header_size: u64,
    /// More `Received:` fields than this: `554 5.4.6 Too many hops`.
    pub max_hops: usize,
    /// The suppression list checked at RCPT (an in-memory lookup); `None` = off.
    pub suppressions: Option<Arc<crate::suppression::Suppressions>>,
}

/// What the session waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A line of at most this many octets (CRLF included).
    Line(usize),
    /// DATA body bytes.
    Data,
    /// Nothing until the driver took the full piece of content waiting in
    /// [`Session::take_piece`]: the body reader does not take more input meanwhile.
    Drain,
    /// This many more octets of the current BDAT chunk.
    Chunk(u64),
    /// Nothing until the driver reports the result of a [`Step::Verify`] or [`Step::Queue`].
    Outcome,
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Send this reply and go on.
    Reply(Reply),
    /// Send this reply and close the connection.
    Close(Reply),
    /// Send `220 2.0.0 Ready to start TLS`, discard buffered input, do the handshake, then
    /// start a new session over TLS (RFC 3207 section 4.2).
    StartTls,
    /// Verify these credentials off the reactor, then call [`Session::auth_result`].
    Verify(Credentials),
    /// Spool this message, whose content the driver took piece by piece with
    /// [`Session::take_piece`] (the last piece is waiting now), then call [`Session::queued`].
    Queue(Box<Accepted>),
    /// Nothing to send (part of a BDAT chunk consumed).
    Nothing,
}

/// The mail transaction. Recipients need a sender; a message needs recipients.
#[derive(Debug, Default)]
enum Transaction {
    #[default]
    None,
    Mail {
        from: String,
        params: MailParams,
    },
    Rcpt {
        from: String,
        params: MailParams,
        rcpts: Vec<String>,
        /// The DSN parameters of each of `rcpts`, in the same order.
        rcpt_params: Vec<RcptParams>,
        /// Chunks received so far when the message comes by BDAT.
        bdat: Option<BdatAccumulator>,
    },
}

/// What kind of input the session is in the middle of.
#[derive(Debug)]
enum Mode {
    Command,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword {
        login: String,
    },
    Verifying,
    Data(DataReader),
    /// Reading a BDAT chunk; `refusal` is the reply owed once a refused chunk is consumed.
    Chunk {
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    Queueing,
}

/// One SMTP session, from greeting (or from the TLS handshake after STARTTLS) to close.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    tls: bool,
    helo: Option<String>,
    esmtp: bool,
    user: Option<Arc<User>>,
    auth_failures: u32,
    /// Protocol errors so far (see [`is_protocol_error`]).
    bad_commands: u32,
    transaction: Transaction,
    mode: Mode,
    /// Message content on its way to the spool: the body readers append to it, the driver
    /// takes it once it holds `piece_size` octets, or the rest once the message ended.
    piece: Vec<u8>,
    piece_size: usize,
    /// The `suppressed` event of the recipient just refused as suppressed, for the driver to
    /// hand to the event sinks ([`Session::take_suppressed`]).
    suppressed: Option<DeliveryEvent>,
}

impl Session {
    /// A session on a connection that is already TLS (`tls`) or plaintext (587 before
    /// STARTTLS). After STARTTLS the driver makes a new session with `tls = true`.
    pub fn new(config: Arc<SessionConfig>, tls: bool) -> Session {
        Session {
            config,
            tls,
            helo: None,
            esmtp: false,
            user: None,
            auth_failures: 0,
            bad_commands: 0,
            transaction: Transaction::None,
            mode: Mode::Command,
            piece: Vec::new(),
            piece_size: PIECE_SIZE,
            suppressed: None,
        }
    }

    /// The `suppressed` event of the last RCPT, when it was refused as suppressed (once). It
    /// names no message: none exists yet, and there may never be one.
    pub fn take_suppressed(&mut self) -> Option<DeliveryEvent> {
        self.suppressed.take()
    }

    /// The same session handing out content in pieces of `piece_size` octets (at least 1)
    /// instead of [`PIECE_SIZE`] (tests and fuzzing: many pieces from small messages).
    pub fn with_piece_size(mut self, piece_size: usize) -> Session {
        self.piece_size = piece_size.max(1);
        self
    }

    /// Whether a message's content is being received: from the 354 (or the first BDAT chunk)
    /// until the message is refused or queued. While it is not, the driver holds no draft.
    pub fn receiving(&self) -> bool {
        matches!(self.mode, Mode::Data(_) | Mode::Queueing)
            || matches!(self.transaction, Transaction::Rcpt { bdat: Some(_), .. })
    }

    /// The next piece of content for the spool: a full piece while the body is read, or what
    /// is left once the message ended (with [`Step::Queue`]). The driver writes it, in order,
    /// and may hand the emptied buffer back with [`Session::recycle`].
    pub fn take_piece(&mut self) -> Option<Vec<u8>> {
        let ready = match self.mode {
            Mode::Queueing => !self.piece.is_empty(),
            _ => self.receiving() && self.piece.len() >= self.piece_size,
        };
        ready.then(|| std::mem::take(&mut self.piece))
    }

    /// The header section of the message being received, as soon as its end went by, and the
    /// user sending it: the driver decides from them, before the body is written, whether to
    /// hash the body for DKIM as it goes to the spool. `None` before that, after a refusal,
    /// and outside a message.
    pub fn header_section(&self) -> Option<(&[u8], &User)> {
        let user = self.user.as_deref()?;
        let section = match (&self.mode, &self.transaction) {
            (Mode::Data(reader), _) => reader.header_section(),
            (
                _,
                Transaction::Rcpt {
                    bdat: Some(acc), ..
                },
            ) => acc.header_section(),
            _ => None,
        }?;
        Some((section, user))
    }

    /// Give back a buffer [`Session::take_piece`] handed out, so the next piece reuses its
    /// allocation; dropped when no body is being read.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.piece.is_empty() && matches!(self.mode, Mode::Data(_) | Mode::Chunk { .. }) {
            buffer.clear();
            self.piece = buffer;
        }
    }

    fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            max_size: self.config.max_message_size,
            max_header_size: self.config.max_header_size,
            piece_size: self.piece_size,
        }
    }

    /// The greeting sent when the connection opens (not again after STARTTLS).
    pub fn greeting(&self) -> Reply {
        reply::greeting(&self.config.hostname)
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The authenticated login, if any.
    pub fn login(&self) -> Option<&str> {
        self.user.as_deref().map(|u| u.login.as_str())
    }

    /// What input the session needs next.
    pub fn wants(&self) -> Want {
        match &self.mode {
            // AUTH with an initial response may be as long as a continuation line (RFC 4954
            // section 4); every other command is held to 512 octets in `on_line`.
            Mode::Command
            | Mode::AuthPlain
            | Mode::AuthLoginUser
            | Mode::AuthLoginPassword { .. } => Want::Line(MAX_AUTH_LINE),
            Mode::Data(_) | Mode::Chunk { .. } if self.piece.len() >= self.piece_size => {
                Want::Drain
            }
            Mode::Data(_) => Want::Data,
            Mode::Chunk { remaining, .. } => Want::Chunk(*remaining),
            Mode::Verifying | Mode::Queueing => Want::Outcome,
        }
    }

    /// Handle one input line (a command, or an AUTH continuation) with nothing buffered after
    /// it.
    pub fn on_line(&mut self, event: LineEvent) -> Step {
        self.on_input_line(event, false)
    }

    /// Handle one input line; `more_buffered`: the client already sent more input after it.
    ///
    /// RFC 2920 section 3.1: EHLO, DATA, VRFY, EXPN, TURN, QUIT and NOOP may only end a
    /// pipelined group, and so may commands of extensions that do not say otherwise — AUTH
    /// (RFC 4954 does not), but not BDAT (RFC 3030 section 4.2 pipelines chunks). HELO too, as
    /// Postfix does. An AUTH continuation line must wait for its 334 challenge. Input after any
    /// of these is answered with `554 5.5.0` and the connection closes, before the command
    /// runs: a message body pipelined after a DATA that fails never runs as commands. Two
    /// exceptions: input after STARTTLS is discarded (RFC 3207 section 4.2, the driver does it)
    /// and input after QUIT is harmless (nothing runs after it; Postfix does not complain
    /// either). The group end is found by the verb, so a malformed `DATA x` counts too.
    ///
    /// Protocol errors (5xx replies to unknown, malformed or out-of-order commands, see
    /// [`is_protocol_error`]) are counted; the `max_bad_commands`th is answered with
    /// `421 4.7.0 Too many errors` instead, and the connection closes.
    pub fn on_input_line(&mut self, event: LineEvent, more_buffered: bool) -> Step {
        if more_buffered && self.ends_group(&event) {
            return Step::Close(reply::SYNC_ERROR);
        }
        let step = self.line_step(event);
        self.count_errors(step)
    }

    /// Whether this line must be the last of a pipelined group (see [`Session::on_input_line`]).
    fn ends_group(&self, event: &LineEvent) -> bool {
        match (&self.mode, event) {
            (Mode::Command, LineEvent::Line(line)) => ends_group(line),
            (
                Mode::AuthPlain | Mode::AuthLoginUser | Mode::AuthLoginPassword { .. },
                LineEvent::Line(_),
            ) => true,
            _ => false,
        }
    }

    /// Count a protocol error; past the limit the reply becomes `421 4.7.0` and close.
    fn count_errors(&mut self, step: Step) -> Step {
        match step {
            Step::Reply(r) if is_protocol_error(r.code()) => {
                self.bad_commands += 1;
                if self.bad_commands >= self.config.max_bad_commands {
                    Step::Close(reply::TOO_MANY_ERRORS)
                } else {
                    Step::Reply(r)
                }
            }
            step => step,
        }
    }

    fn line_step(&mut self, event: LineEvent) -> Step {
        match std::mem::replace(&mut self.mode, Mode::Command) {
            Mode::Command => match event {
                LineEvent::TooLong => Step::Reply(reply::LINE_TOO_LONG),
                LineEvent::Line(line) if line.len() + 2 > MAX_COMMAND_LINE && !is_auth(&line) => {
                    Step::Reply(reply::LINE_TOO_LONG)
                }
                LineEvent::Line(line) => match command::parse(&line) {
                    Ok(cmd) => self.on_command(cmd),
                    // A BDAT whose size we cannot read leaves us unable to find the next
                    // command: its chunk would be read as commands. Close instead.
                    Err(_) if is_bdat(&line) => Step::Close(reply::BAD_BDAT),
                    Err(e) => Step::Reply(parse_error_reply(&e)),
                },
            },
            Mode::AuthPlain => match event {
                LineEvent::TooLong => Step::Reply(reply::LINE_TOO_LONG),
                LineEvent::Line(line) => self.sasl_outcome(sasl::decode_plain(&line)),
            },
            Mode::AuthLoginUser => match event {
                LineEvent::TooLong => Step::Reply(reply::LINE_TOO_LONG),
                LineEvent::Line(line) => match sasl::decode_login_field(&line) {
                    Ok(login) => {
                        self.mode = Mode::AuthLoginPassword { login };
                        Step::Reply(reply::AUTH_LOGIN_PASSWORD)
                    }
                    Err(e) => self.sasl_outcome(Err(e)),
                },
            },
            Mode::AuthLoginPassword { login } => match event {
                LineEvent::TooLong => Step::Reply(reply::LINE_TOO_LONG),
                LineEvent::Line(line) => {
                    let creds = sasl::decode_login_field(&line)
                        .map(|password| Credentials { login, password });
                    self.sasl_outcome(creds)
                }
            },
            other => {
                // The driver only sends lines when `wants()` asks for one.
                self.mode = other;
                Step::Nothing
            }
        }
    }

    /// Feed DATA body bytes; returns how many were consumed and the step once the body ended.
    pub fn on_data(&mut self, input: &[u8]) -> (usize, Option<Step>) {
        let Mode::Data(reader) = &mut self.mode else {
            return (0, None);
        };
        let (consumed, done) = reader.feed(input, &mut self.piece);
        match done {
            None => (consumed, None),
            Some(result) => {
                self.mode = Mode::Command;
                (consumed, Some(self.finish_message(result)))
            }
        }
    }

    /// Feed BDAT chunk bytes; returns how many were consumed and the step once the chunk is
    /// complete. Call with an empty slice when `wants()` is `Chunk(0)`. Consumes less than
    /// it could when a piece of content is full (`wants()` is then `Drain`).
    pub fn on_chunk(&mut self, input: &[u8]) -> (usize, Option<Step>) {
        let Mode::Chunk {
            remaining,
            last,
            refusal,
        } = &mut self.mode
        else {
            return (0, None);
        };
        let mut take = (*remaining).min(input.len() as u64) as usize;
        if refusal.is_none()
            && let Transaction::Rcpt {
                bdat: Some(acc), ..
            } = &mut self.transaction
        {
            take = acc.push(&input[..take], &mut self.piece);
        }
        *remaining -= take as u64;
        if *remaining > 0 {
            return (take, None);
        }
        let last = *last;
        let refusal = refusal.take();
        self.mode = Mode::Command;
        if let Some(reply) = refusal {
            return (take, Some(self.count_errors(Step::Reply(reply))));
        }
        let Transaction::Rcpt {
            bdat: Some(acc), ..
        } = &mut self.transaction
        else {
            return (take, Some(Step::Reply(reply::NEED_RCPT)));
        };
        let received = acc.len();
        if last {
            let acc = std::mem::replace(acc, BdatAccumulator::new(BodyLimits::new(0, 0)));
            let result = acc.finish(&mut self.piece);
            (take, Some(self.finish_message(result)))
        } else {
            (take, Some(Step::Reply(reply::chunk_received(received))))
        }
    }

    /// The result of a [`Step::Verify`]: the user when the credentials were right.
    pub fn auth_result(&mut self, user: Option<Arc<User>>) -> Step {
        self.mode = Mode::Command;
        match user {
            Some(user) => {
                self.user = Some(user);
                self.auth_failures = 0;
                Step::Reply(reply::AUTH_OK)
            }
            None => self.auth_failed(),
        }
    }

    /// A [`Step::Verify`] refused without verifying (throttled, busy): `reply`, and it counts
    /// toward `max_auth_failures` so one connection cannot retry without end.
    pub fn auth_refused(&mut self, reply: Reply) -> Step {
        self.mode = Mode::Command;
        match self.auth_failed() {
            Step::Reply(_) => Step::Reply(reply),
            step => step,
        }
    }

    /// The result of a [`Step::Queue`]: the queue ID, or why the message was not accepted.
    pub fn queued(&mut self, id: Result<&str, outcome::Refusal>) -> Step {
        self.mode = Mode::Command;
        // Between messages a session holds no piece buffer.
        self.piece = Vec::new();
        let login = self.user.as_ref().map_or("", |u| u.login.as_str());
        match id {
            Ok(id) => Step::Reply(reply::queued(id)),
            Err(refusal) => Step::Reply(reply::refusal(refusal, login)),
        }
    }

    fn auth_failed(&mut self) -> Step {
        self.auth_failures += 1;
        if self.auth_failures >= self.config.max_auth_failures {
            Step::Close(reply::AUTH_TOO_MANY_FAILURES)
        } else {
            Step::Reply(reply::AUTH_FAILED)
        }
    }

    fn sasl_outcome(&mut self, decoded: Result<Credentials, SaslError>) -> Step {
        match decoded {
            Ok(creds) => {
                self.mode = Mode::Verifying;
                Step::Verify(creds)
            }
            Err(SaslError::Cancelled) => Step::Reply(reply::AUTH_CANCELLED),
            Err(SaslError::AuthzidMismatch) => self.auth_failed(),
            Err(e) => {
                let step = self.auth_failed();
                match step {
                    Step::Close(_) => step,
                    _ if e == SaslError::BadBase64 => Step::Reply(reply::AUTH_BAD_BASE64),
                    _ => Step::Reply(reply::AUTH_MALFORMED),
                }
            }
        }
    }

    /// Commands allowed on 587 before STARTTLS (RFC 3207 section 4; DESIGN.md).
    fn allowed_before_tls(cmd: &Command) -> bool {
        matches!(
            cmd,
            Command::Ehlo(_)
                | Command::Helo(_)
                | Command::StartTls
                | Command::Noop
                | Command::Rset
                | Command::Quit
        )
    }

    /// Commands allowed before EHLO/HELO (and after STARTTLS before the new EHLO).
    fn allowed_before_ehlo(cmd: &Command) -> bool {
        matches!(
            cmd,
            Command::Ehlo(_)
                | Command::Helo(_)
                | Command::StartTls
                | Command::Noop
                | Command::Rset
                | Command::Quit
                | Command::Help
        )
    }

    fn on_command(&mut self, cmd: Command) -> Step {
        if !self.tls && !Self::allowed_before_tls(&cmd) {
            return self.refuse(&cmd, reply::MUST_STARTTLS);
        }
        if self.helo.is_none() && !Self::allowed_before_ehlo(&cmd) {
            return self.refuse(&cmd, reply::EHLO_FIRST);
        }
        match cmd {
            Command::Ehlo(name) => {
                self.helo = Some(name);
                self.esmtp = true;
                self.transaction = Transaction::None;
                Step::Reply(reply::ehlo(
                    &self.config.hostname,
                    self.tls,
                    self.config.max_message_size,
                ))
            }
            Command::Helo(name) => {
                self.helo = Some(name);
                self.esmtp = false;
                self.transaction = Transaction::None;
                Step::Reply(reply::helo(&self.config.hostname))
            }
            Command::StartTls if self.tls => Step::Reply(reply::TLS_ALREADY_ACTIVE),
            Command::StartTls => Step::StartTls,
            Command::Auth { mechanism, initial } => self.on_auth(&mechanism, initial),
            Command::Mail { from, params } => self.on_mail(from, params),
            Command::Rcpt { to, params } => self.on_rcpt(to, params),
            Command::Data => self.on_data_command(),
            Command::Bdat { size, last } => self.on_bdat(size, last),
            Command::Rset => {
                self.transaction = Transaction::None;
                Step::Reply(reply::OK)
            }
            Command::Noop => Step::Reply(reply::OK),
            Command::Quit => Step::Close(reply::BYE),
            Command::Help => Step::Reply(reply::HELP),
            Command::Vrfy => Step::Reply(reply::VRFY),
            Command::Expn => Step::Reply(reply::EXPN),
        }
    }

    /// Refuse a command. A refused BDAT still owes its chunk: read and discard it, then reply
    /// (RFC 3030 section 2) — unless it is larger than any message we take, then close.
    fn refuse(&mut self, cmd: &Command, refusal: Reply) -> Step {
        match *cmd {
            Command::Bdat { size, last } => {
                if size > self.config.max_message_size {
                    return Step::Close(refusal);
                }
                self.mode = Mode::Chunk {
                    remaining: size,
                    last,
                    refusal: Some(refusal),
                };
                Step::Nothing
            }
            _ => Step::Reply(refusal),
        }
    }

    fn on_auth(&mut self, mechanism: &str, initial: Option<String>) -> Step {
        if self.user.is_some() {
            return Step::Reply(reply::ALREADY_AUTHENTICATED);
        }
        if !self.esmtp {
            return Step::Reply(reply::EHLO_FIRST);
        }
        if !matches!(self.transaction, Transaction::None) {
            return Step::Reply(reply::AUTH_IN_TRANSACTION);
        }
        match (Mechanism::parse(mechanism), initial) {
            (None, _) => Step::Reply(reply::AUTH_UNKNOWN_MECHANISM),
            (Some(Mechanism::Plain), None) => {
                self.mode = Mode::AuthPlain;
                Step::Reply(reply::AUTH_PLAIN_CHALLENGE)
            }
            (Some(Mechanism::Plain), Some(resp)) => {
                self.sasl_outcome(sasl::decode_plain(resp.as_bytes()))
            }
            (Some(Mechanism::Login), None) => {
                self.mode = Mode::AuthLoginUser;
                Step::Reply(reply::AUTH_LOGIN_USERNAME)
            }
            (Some(Mechanism::Login), Some(resp)) => {
                // RFC 4954 allows an initial response with LOGIN: it is the username.
                match sasl::decode_login_field(resp.as_bytes()) {
                    Ok(login) => {
                        self.mode = Mode::AuthLoginPassword { login };
                        Step::Reply(reply::AUTH_LOGIN_PASSWORD)
                    }
                    Err(e) => self.sasl_outcome(Err(e)),
                }
            }
        }
    }

    fn on_mail(&mut self, from: ReversePath, params: MailParams) -> Step {
        let Some(user) = self.user.clone() else {
            return Step::Reply(reply::AUTH_REQUIRED);
        };
        if !matches!(self.transaction, Transaction::None) {
            return Step::Reply(reply::NESTED_MAIL);
        }
        if params
            .size
            .is_some_and(|s| s > self.config.max_message_size)
        {
            return Step::Reply(reply::MESSAGE_TOO_BIG);
        }
        let from = match from {
            ReversePath::Null => return Step::Reply(reply::NULL_SENDER_REFUSED),
            ReversePath::Address(a) => a,
        };
        if !from.is_ascii() && !params.smtputf8 {
            return Step::Reply(reply::NEED_SMTPUTF8);
        }
        if !owns(&user.senders, &from) {
            return Step::Reply(reply::sender_not_owned(&user.login));
        }
        if let Some(Err(refusal)) = self.config.quota.as_ref().map(|q| q.check_mail(&user)) {
            return Step::Reply(match refusal {
                Refusal::Suspended => reply::ACCOUNT_SUSPENDED,
                _ => reply::message_rate_limited(&user.login),
            });
        }
        self.transaction = Transaction::Mail { from, params };
        Step::Reply(reply::MAIL_OK)
    }

    fn on_rcpt(&mut self, to: String, dsn: RcptParams) -> Step {
        if self.user.is_none() {
            return Step::Reply(reply::AUTH_REQUIRED);
        }
        let (from, params, mut rcpts, mut rcpt_params, bdat) =
            match std::mem::take(&mut self.transaction) {
                Transaction::None => return Step::Reply(reply::NEED_MAIL),
                Transaction::Mail { from, params } => (from, params, Vec::new(), Vec::new(), None),
                Transaction::Rcpt {
                    from,
                    params,
                    rcpts,
                    rcpt_params,
                    bdat,
                } => (from, params, rcpts, rcpt_params, bdat),
            };
        let step = if bdat.is_some() {
            Step::Reply(reply::RCPT_AFTER_BDAT)
        } else if !to.contains('@') {
            Step::Reply(reply::RCPT_WITHOUT_DOMAIN)
        } else if !to.is_ascii() && !params.smtputf8 {
            Step::Reply(reply::NEED_SMTPUTF8)
        } else if rcpts.iter().any(|r| r.eq_ignore_ascii_case(&to)) {
            Step::Reply(reply::RCPT_OK)
        } else if rcpts.len() >= self.config.max_recipients {
            Step::Reply(reply::TOO_MANY_RECIPIENTS)
        } else if let (Some(q), Some(user)) = (&self.config.quota, &self.user)
            && q.check_rcpt(user, rcpts.len()).is_err()
        {
            Step::Reply(reply::recipient_rate_limited(&user.login))
        } else if let Some(event) = self.suppressed_event(&to, &params) {
            self.suppressed = Some(event);
            Step::Reply(reply::RECIPIENT_SUPPRESSED)
        } else {
            rcpts.push(to);
            rcpt_params.push(dsn);
            Step::Reply(reply::RCPT_OK)
        };
        self.transaction = if rcpts.is_empty() {
            Transaction::Mail { from, params }
        } else {
            Transaction::Rcpt {
                from,
                params,
                rcpts,
                rcpt_params,
                bdat,
            }
        };
        step
    }

    /// When `to` is on the user's tenant's suppression list: the `suppressed` event to report.
    fn suppressed_event(&self, to: &str, params: &MailParams) -> Option<DeliveryEvent> {
        let (list, user) = (self.config.suppressions.as_ref()?, self.user.as_ref()?);
        let at = crate::clock::unix_now();
        let entry = list.check(user.tenant(), to, at)?;
        Some(DeliveryEvent::suppressed(
            &user.login,
            user.tenant(),
            to,
            entry.reply,
            at,
            params.envid.clone(),
            Default::default(),
        ))
    }

    fn on_data_command(&mut self) -> Step {
        if self.user.is_none() {
            return Step::Reply(reply::AUTH_REQUIRED);
        }
        match &self.transaction {
            Transaction::None => Step::Reply(reply::NEED_MAIL),
            Transaction::Mail { .. } => Step::Reply(reply::NEED_RCPT),
            Transaction::Rcpt { bdat: Some(_), .. } => Step::Reply(reply::DATA_AFTER_BDAT),
            Transaction::Rcpt { .. } => {
                self.piece.clear();
                self.mode = Mode::Data(DataReader::new(self.body_limits()));
                Step::Reply(reply::START_DATA)
            }
        }
    }

    fn on_bdat(&mut self, size: u64, last: bool) -> Step {
        let cmd = Command::Bdat { size, last };
        if self.user.is_none() {
            return self.refuse(&cmd, reply::AUTH_REQUIRED);
        }
        let max = self.config.max_message_size;
        let limits = self.body_limits();
        match &mut self.transaction {
            Transaction::None => self.refuse(&cmd, reply::NEED_MAIL),
            Transaction::Mail { .. } => self.refuse(&cmd, reply::NEED_RCPT),
            Transaction::Rcpt { bdat, .. } => {
                let acc = bdat.get_or_insert_with(|| {
                    // A new message: nothing of an earlier one may be left in the piece.
                    self.piece.clear();
                    BdatAccumulator::new(limits)
                });
                if acc.len().saturating_add(size) > max {
                    // Larger than we take: refuse without reading gigabytes (RFC 3030 lets
                    // the server close; the client learns the permanent reason first).
                    self.transaction = Transaction::None;
                    return Step::Close(reply::MESSAGE_TOO_BIG);
                }
                self.mode = Mode::Chunk {
                    remaining: size,
                    last,
                    refusal: None,
                };
                if size == 0 {
                    // Nothing to read: answer now.
                    return self.on_chunk(&[]).1.unwrap_or(Step::Nothing);
                }
                Step::Nothing
            }
        }
    }

    /// A DATA or BDAT body ended: check it and hand it to the spool, or refuse it (then the
    /// content still waiting for the spool is dropped, and the driver drops its draft).
    fn finish_message(&mut self, result: DataResult) -> Step {
        let step = self.check_message(result);
        if !matches!(step, Step::Queue(_)) {
            self.piece = Vec::new();
        }
        step
    }

    fn check_message(&mut self, result: DataResult) -> Step {
        let transaction = std::mem::take(&mut self.transaction);
        let Transaction::Rcpt {
            from,
            params,
            rcpts,
            rcpt_params,
            ..
        } = transaction
        else {
            return Step::Reply(reply::NEED_RCPT);
        };
        let body = match result {
            Ok(body) => body,
            Err(BodyError::BareLineEnding) => return Step::Reply(reply::BARE_LINE_ENDING),
            Err(BodyError::TooBig) => return Step::Reply(reply::MESSAGE_TOO_BIG),
        };
        if body.nul {
            return Step::Reply(reply::NUL_IN_MESSAGE);
        }
        // The reader kept no more than the limit, so the header parser never sees more.
        let Some(headers) = body.headers else {
            return Step::Reply(reply::HEADER_TOO_BIG);
        };
        // A loop: every relay on the way added one (RFC 5321 section 6.3).
        if submission::hop_count(&headers) > self.config.max_hops {
            return Step::Reply(reply::TOO_MANY_HOPS);
        }
        let Some(user) = self.user.clone() else {
            return Step::Reply(reply::AUTH_REQUIRED);
        };
        match submission::check_from(&headers, &user.senders) {
            Err(FromProblem::Missing) => Step::Reply(reply::NO_FROM),
            Err(FromProblem::NotOwned) => Step::Reply(reply::sender_not_owned(&user.login)),
            Err(FromProblem::Group) => Step::Reply(reply::FROM_GROUP),
            Ok(checked) => {
                self.mode = Mode::Queueing;
                // A key with an owner: its messages belong to the owner's tenant.
                let origin = user.owner.clone().map(|owner| {
                    Box::new(crate::queue::spool::Origin {
                        owner: Some(owner),
                        ..Default::default()
                    })
                });
                Step::Queue(Box::new(Accepted {
                    user,
                    helo: self.helo.clone().unwrap_or_default(),
                    sender: from,
                    recipients: rcpts,
                    rcpt_params,
                    smtputf8: params.smtputf8,
                    eight_bit: params.body == Some(Body::EightBitMime),
                    ret: params.ret,
                    envid: params.envid,
                    requiretls: params.requiretls,
                    headers,
                    from_domain: checked.domain,
                    origin,
                }))
            }
        }
    }
}

/// Whether a command line must end a pipelined group, by its verb (RFC 2920 section 3.1; see
/// [`Session::on_input_line`]).
fn ends_group(line: &[u8]) -> bool {
    const LAST: [&[u8]; 8] = [
        b"EHLO", b"HELO", b"DATA", b"VRFY", b"EXPN", b"TURN", b"NOOP", b"AUTH",
    ];
    let verb_end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let verb = &line[..verb_end];
    LAST.iter().any(|v| v.eq_ignore_ascii_case(verb))
}

/// Replies that mean the client misspoke: unknown command, syntax error, out of order, not
/// implemented, before STARTTLS/AUTH (500-504, 530, 555). Not counted: failed authentication
/// (535, it has its own limit) and policy or content refusals (452, 550, 552, 553), which a
/// correct but misconfigured client gets too.
pub fn is_protocol_error(code: u16) -> bool {
    matches!(code, 500..=504 | 530 | 555)
}

/// Whether a line is an AUTH command (by its verb).
fn is_auth(line: &[u8]) -> bool {
    line.len() > 5 && line[..5].eq_ignore_ascii_case(b"AUTH ")
}

/// Whether a line is a BDAT command (by its verb), whatever its arguments.
fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"BDAT")
        && line.get(4).is_none_or(|b| *b == b' ')
}

/// The reply for a command line the parser refused.
fn parse_error_reply(e: &ParseError) -> Reply {
    match e {
        ParseError::UnknownCommand => reply::UNKNOWN_COMMAND,
        ParseError::Syntax(detail) => reply::syntax(detail),
        ParseError::UnsupportedParameter => reply::UNSUPPORTED_PARAMETER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::senders::SenderPattern;

    fn config() -> Arc<SessionConfig> {
        Arc::new(SessionConfig {
            hostname: "mx.test".into(),
            max_message_size: 100,
            max_recipients: 2,
            max_auth_failures: 2,
            quota: None,
            max_bad_commands: 20,
            max_header_size: 60,
            max_hops: 3,
            suppressions: None,
        })
    }

    fn alice() -> Arc<User> {
        Arc::new(User {
            login: "alice@example.test".into(),
            password: String::new(),
            senders: vec![SenderPattern::parse("alice@example.test").unwrap()],
            senders_given: true,
            limits: Default::default(),
            owner: None,
        })
    }

    fn line(s: &str) -> LineEvent {
        LineEvent::Line(s.as_bytes().to_vec())
    }

    /// Feed a command line and describe the step: the reply's first line, or the action.
    fn cmd(session: &mut Session, s: &str) -> String {
        describe(session.on_line(line(s)))
    }

    fn describe(step: Step) -> String {
        match step {
            Step::Reply(r) => r.to_wire().lines().last().unwrap_or("").to_string(),
            Step::Close(r) => format!("close {}", r.to_wire().trim_end()),
            Step::StartTls => "starttls".into(),
            Step::Verify(c) => format!("verify {}", c.login),
            Step::Queue(a) => format!("queue {} -> {}", a.sender, a.recipients.join(",")),
            Step::Nothing => "nothing".into(),
        }
    }

    fn authenticated() -> Session {
        let mut s = Session::new(config(), true);
        cmd(&mut s, "EHLO c.test");
        let plain = "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABwdw==";
        assert_eq!(cmd(&mut s, plain), "verify alice@example.test");
        assert_eq!(s.wants(), Want::Outcome);
        assert_eq!(
            describe(s.auth_result(Some(alice()))),
            "235 2.7.0 Authentication successful"
        );
        s
    }

    #[test]
    fn a_suppressed_recipient_is_refused_for_its_tenant_only() {
        let list = Arc::new(crate::suppression::Suppressions::in_memory(
            std::time::Duration::from_secs(3600),
        ));
        let now = crate::clock::unix_now();
        list.add("alice@example.test", "gone@x.test", "550 5.1.1 no", now)
            .unwrap();
        list.add("carol@example.test", "other@x.test", "550 5.1.1 no", now)
            .unwrap();
        let mut config = SessionConfig::clone(&config());
        config.suppressions = Some(list);
        let config = Arc::new(config);
        // Alice herself, then a key she owns: the same tenant.
        let key = Arc::new(User {
            login: "shop".into(),
            owner: Some("alice@example.test".into()),
            ..User::clone(&alice())
        });
        for user in [alice(), key] {
            let mut s = Session::new(config.clone(), true);
            cmd(&mut s, "EHLO c.test");
            cmd(&mut s, "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABwdw==");
            s.auth_result(Some(user));
            assert_eq!(
                cmd(&mut s, "MAIL FROM:<alice@example.test>"),
                "250 2.1.0 Ok"
            );
            assert_eq!(
                cmd(&mut s, "RCPT TO:<GONE@x.test>"),
                "550 5.1.1 Recipient suppressed after a permanent failure"
            );
            // The refusal is reported once, for the tenant, with no message yet.
            let event = s.take_suppressed().expect("a suppressed event");
            assert_eq!(event.kind, crate::events::EventKind::Suppressed);
            assert_eq!(
                (event.queue_id.as_str(), event.recipient.as_str()),
                ("", "GONE@x.test")
            );
            assert_eq!(event.tenant, "alice@example.test");
            assert_eq!(event.reply, "550 5.1.1 no");
            assert!(s.take_suppressed().is_none());
            assert_eq!(cmd(&mut s, "RCPT TO:<other@x.test>"), "250 2.1.5 Ok");
            assert!(s.take_suppressed().is_none());
            assert_eq!(cmd(&mut s, "DATA"), "354 End data with <CR><LF>.<CR><LF>");
        }
    }

    #[test]
    fn plaintext_session_allows_only_the_starttls_set() {
        let mut s = Session::new(config(), false);
        for (input, expected) in [
            (
                "MAIL FROM:<alice@example.test>",
                "530 5.7.0 Must issue a STARTTLS command first",
            ),
            (
                "AUTH PLAIN",
                "530 5.7.0 Must issue a STARTTLS command first",
            ),
            ("BDAT 5", "nothing"),
        ] {
            assert_eq!(cmd(&mut s, input), expected, "{input}");
        }
        // The refused BDAT's chunk is consumed, then answered.
        assert_eq!(s.wants(), Want::Chunk(5));
        let (n, step) = s.on_chunk(b"QUIT\r\nNOOP\r\n");
        assert_eq!(n, 5);
        assert_eq!(
            describe(step.unwrap()),
            "530 5.7.0 Must issue a STARTTLS command first"
        );
        assert_eq!(cmd(&mut s, "NOOP"), "250 2.0.0 Ok");
        assert_eq!(cmd(&mut s, "EHLO c.test"), "250 CHUNKING");
        assert_eq!(cmd(&mut s, "STARTTLS"), "starttls");
    }

    #[test]
    fn tls_session_needs_ehlo_then_auth() {
        let mut s = Session::new(config(), true);
        assert_eq!(cmd(&mut s, "MAIL FROM:<a@b.test>"), "503 5.5.1 EHLO first");
        assert_eq!(cmd(&mut s, "EHLO c.test"), "250 CHUNKING");
        assert_eq!(cmd(&mut s, "STARTTLS"), "503 5.5.1 TLS already active");
        assert_eq!(
            cmd(&mut s, "MAIL FROM:<a@b.test>"),
            "530 5.7.0 Authentication required"
        );
        assert_eq!(
            cmd(&mut s, "AUTH XOAUTH2"),
            "504 5.5.4 Unrecognized authentication mechanism"
        );
    }

    #[test]
    fn auth_failures_close_at_the_limit() {
        let mut s = Session::new(config(), true);
        cmd(&mut s, "EHLO c.test");
        cmd(&mut s, "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABwdw==");
        assert_eq!(
            describe(s.auth_result(None)),
            "535 5.7.8 Authentication credentials invalid"
        );
        assert_eq!(cmd(&mut s, "AUTH LOGIN"), "334 VXNlcm5hbWU6");
        assert_eq!(cmd(&mut s, "*"), "501 5.7.0 Authentication cancelled");
        cmd(&mut s, "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABwdw==");
        assert_eq!(
            describe(s.auth_result(None)),
            "close 421 4.7.0 Too many authentication failures"
        );
    }

    #[test]
    fn transaction_order_and_limits() {
        let mut s = authenticated();
        for (input, expected) in [
            ("RCPT TO:<x@y.test>", "503 5.5.1 Need MAIL command"),
            ("DATA", "503 5.5.1 Need MAIL command"),
            (
                "MAIL FROM:<>",
                "553 5.7.1 Null sender not allowed for authenticated users",
            ),
            (
                "MAIL FROM:<bob@example.test>",
                "553 5.7.1 Sender address rejected: not owned by user alice@example.test",
            ),
            (
                "MAIL FROM:<alice@example.test> SIZE=101",
                "552 5.3.4 Message size exceeds fixed limit",
            ),
            ("MAIL FROM:<alice@example.test> SIZE=100", "250 2.1.0 Ok"),
            (
                "MAIL FROM:<alice@example.test>",
                "503 5.5.1 Nested MAIL command",
            ),
            ("DATA", "503 5.5.1 Need RCPT command"),
            (
                "RCPT TO:<jösé@y.test>",
                "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter",
            ),
            ("RCPT TO:<a@y.test>", "250 2.1.5 Ok"),
            ("RCPT TO:<b@y.test>", "250 2.1.5 Ok"),
            ("RCPT TO:<c@y.test>", "452 4.5.3 Too many recipients"),
            ("AUTH PLAIN", "503 5.5.1 Already authenticated"),
            ("DATA", "354 End data with <CR><LF>.<CR><LF>"),
        ] {
            assert_eq!(cmd(&mut s, input), expected, "{input}");
        }
        assert_eq!(s.wants(), Want::Data);
        let (n, step) = s.on_data(b"From: alice@example.test\r\n\r\nhi\r\n.\r\nNOOP\r\n");
        assert_eq!(n, 35);
        assert_eq!(
            describe(step.unwrap()),
            "queue alice@example.test -> a@y.test,b@y.test"
        );
        assert_eq!(describe(s.queued(Ok("ABC"))), "250 2.0.0 Ok: queued as ABC");
        assert_eq!(cmd(&mut s, "DATA"), "503 5.5.1 Need MAIL command");
    }

    #[test]
    fn message_checks() {
        let mut s = authenticated();
        let body_cases: [(&[u8], &str); 4] = [
            (
                b"From: alice@example.test\r\n\r\nhi\n.\r\n.\r\n",
                "550 5.6.0 Bare CR or LF in message",
            ),
            (
                b"Subject: x\r\n\r\nhi\r\n.\r\n",
                "550 5.6.0 Message has no From header",
            ),
            (
                b"From: eve@example.test\r\n\r\nhi\r\n.\r\n",
                "553 5.7.1 Sender address rejected: not owned by user alice@example.test",
            ),
            (&[b'x'; 200], "552 5.3.4 Message size exceeds fixed limit"),
        ];
        for (body, expected) in body_cases {
            cmd(&mut s, "MAIL FROM:<alice@example.test>");
            cmd(&mut s, "RCPT TO:<a@y.test>");
            assert_eq!(cmd(&mut s, "DATA"), "354 End data with <CR><LF>.<CR><LF>");
            let (_, mut step) = s.on_data(body);
            if step.is_none() {
                step = s.on_data(b"\r\n.\r\n").1;
            }
            assert_eq!(describe(step.unwrap()), expected);
            assert_eq!(
                cmd(&mut s, "DATA"),
                "503 5.5.1 Need MAIL command",
                "transaction reset"
            );
        }
    }

    #[test]
    fn group_ends_with_more_input_are_sync_errors() {
        let mut s = authenticated();
        let sync = "close 554 5.5.0 Protocol synchronization error";
        for input in [
            "NOOP",
            "noop x",
            "DATA",
            "DATA junk",
            "VRFY a",
            "EHLO c.test",
            "AUTH PLAIN",
        ] {
            assert_eq!(
                describe(s.on_input_line(line(input), true)),
                sync,
                "{input}"
            );
        }
        for input in [
            "RSET",
            "MAIL FROM:<alice@example.test>",
            "RCPT TO:<a@y.test>",
        ] {
            assert!(describe(s.on_input_line(line(input), true)).starts_with("250"));
        }
        assert_eq!(
            describe(s.on_input_line(line("QUIT"), true)),
            "close 221 2.0.0 Bye"
        );
        // A SASL response must wait for the challenge.
        let mut s = Session::new(config(), true);
        cmd(&mut s, "EHLO c.test");
        assert_eq!(cmd(&mut s, "AUTH LOGIN"), "334 VXNlcm5hbWU6");
        assert_eq!(describe(s.on_input_line(line("YQ=="), true)), sync);
    }

    #[test]
    fn protocol_errors_are_counted_policy_refusals_are_not() {
        let mut s = authenticated();
        for _ in 0..19 {
            assert!(cmd(&mut s, "FOO").starts_with("500"));
            assert!(cmd(&mut s, "MAIL FROM:<bob@example.test>").starts_with("553"));
        }
        assert_eq!(
            cmd(&mut s, "RCPT TO:<a@y.test>"),
            "close 421 4.7.0 Too many errors"
        );
    }

    #[test]
    fn nul_and_header_size() {
        let mut s = authenticated();
        let cases: [(&[u8], &str); 2] = [
            (
                b"From: alice@example.test\r\n\r\nh\x00i\r\n.\r\n",
                "550 5.6.0 NUL character in message",
            ),
            (
                b"From: alice@example.test\r\nX: 0123456789012345678901234567890123\r\n\r\n.\r\n",
                "552 5.3.4 Message header size exceeds limit",
            ),
        ];
        for (body, expected) in cases {
            cmd(&mut s, "MAIL FROM:<alice@example.test>");
            cmd(&mut s, "RCPT TO:<a@y.test>");
            cmd(&mut s, "DATA");
            assert_eq!(describe(s.on_data(body).1.unwrap()), expected);
        }
    }

    #[test]
    fn long_lines() {
        let mut s = authenticated();
        assert_eq!(s.wants(), Want::Line(MAX_AUTH_LINE));
        let long_noop = format!("NOOP {}", "x".repeat(506));
        assert_eq!(cmd(&mut s, &long_noop), "500 5.5.2 Line too long");
        let ok_noop = format!("NOOP {}", "x".repeat(505));
        assert_eq!(cmd(&mut s, &ok_noop), "250 2.0.0 Ok");
        assert_eq!(
            describe(s.on_line(LineEvent::TooLong)),
            "500 5.5.2 Line too long"
        );
    }

    #[test]
    fn bdat_flow() {
        let mut s = authenticated();
        cmd(&mut s, "MAIL FROM:<alice@example.test>");
        cmd(&mut s, "RCPT TO:<a@y.test>");
        assert_eq!(cmd(&mut s, "BDAT 0"), "250 2.0.0 Ok: 0 octets received");
        assert_eq!(cmd(&mut s, "BDAT 26"), "nothing");
        let (n, step) = s.on_chunk(b"From: alice@example.test\r\nEXTRA");
        assert_eq!(n, 26);
        assert_eq!(describe(step.unwrap()), "250 2.0.0 Ok: 26 octets received");
        assert_eq!(cmd(&mut s, "DATA"), "503 5.5.1 DATA not allowed after BDAT");
        assert_eq!(
            cmd(&mut s, "BDAT 101"),
            "close 552 5.3.4 Message size exceeds fixed limit"
        );
        let mut s = authenticated();
        cmd(&mut s, "MAIL FROM:<alice@example.test>");
        cmd(&mut s, "RCPT TO:<a@y.test>");
        assert_eq!(
            cmd(&mut s, "BDAT 0x10"),
            "close 501 5.5.4 Invalid BDAT size; closing connection"
        );
    }
}
