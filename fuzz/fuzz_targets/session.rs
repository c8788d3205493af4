//! A whole SMTP session from arbitrary client bytes, through the same step function the driver
//! runs (`session::pump::advance`), with the IO stubbed: AUTH succeeds when the password is
//! "pw", the spool collects the pieces of content the session hands out and always answers
//! "ID", STARTTLS restarts the session as TLS. The first input byte chooses the limits, the
//! second how the rest is split into reads and the piece size.
//!
//! Invariants: every reply is 2xx-5xx and one clean line per text line; a message is only
//! queued over TLS, after AUTH, from a sender the user owns (envelope and header From), with
//! 1..=max recipients, within the size and header limits, without bare CR/LF or NUL; the loop
//! ends within a bound proportional to the input.
#![no_main]

mod common;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use submitd::auth::senders::{SenderPattern, owns};
use submitd::auth::users::User;
use submitd::session::input::InputBuffer;
use submitd::session::pump::{self, Progress};
use submitd::session::reply::Reply;
use submitd::session::state::{Session, SessionConfig, Step};
use submitd::submission;

fn alice() -> Arc<User> {
    Arc::new(User {
        login: "alice@example.test".into(),
        password: String::new(),
        senders: vec![
            SenderPattern::parse("alice@example.test").unwrap(),
            SenderPattern::parse("@alice.example.test").unwrap(),
        ],
        senders_given: true,
        limits: Default::default(),
        owner: None,
    })
}

fn check_reply(r: &Reply) {
    assert!((200..=599).contains(&r.code()), "{r}");
    assert!(!r.text().contains('\r'), "{r}");
}

fuzz_target!(|data: &[u8]| {
    let Some((limits, seed, input)) = common::header(data) else {
        return;
    };
    let config = Arc::new(SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 64 + u64::from(limits & 0x0f) * 64,
        max_recipients: 1 + usize::from((limits >> 4) & 0x03),
        max_auth_failures: 3,
        max_bad_commands: 5 + u32::from(limits >> 6) * 5,
        max_header_size: 48 + u64::from(limits & 0x30) * 4,
        max_hops: 1 + usize::from(limits & 0x03),
        suppressions: None,
        quota: None,
    });
    let user = alice();
    let piece_size = 1 + usize::from(seed % 61);
    let mut session = Session::new(config.clone(), false).with_piece_size(piece_size);
    // What the driver would have written to the draft of the message being received.
    let mut spooled: Vec<u8> = Vec::new();
    let mut buffer = InputBuffer::new();
    let mut steps = 0usize;
    let bound = 3 * input.len() + 16;
    // Odd seed: every line arrives alone, as from a client that waits for each reply (gets past
    // the RFC 2920 group-end checks); even seed: splits anywhere, like a pipelining client.
    let pieces: Vec<&[u8]> = if seed & 1 == 1 {
        input.split_inclusive(|&b| b == b'\n').collect()
    } else {
        common::pieces(input, seed)
    };
    'pieces: for piece in pieces {
        buffer.extend(piece);
        loop {
            steps += 1;
            assert!(steps <= bound, "more steps than the input allows");
            let mut step = match pump::advance(&mut session, &mut buffer) {
                Progress::Step(step) => step,
                Progress::NeedInput => break,
                Progress::Drain => {
                    let piece = session.take_piece().expect("Drain without a piece");
                    assert!(piece.len() >= piece_size && piece.len() <= piece_size + 2);
                    spooled.extend_from_slice(&piece);
                    session.recycle(piece);
                    continue;
                }
                Progress::AwaitingOutcome => panic!("outcome owed but not asked for"),
            };
            // Carry out steps that produce further steps, like the driver's `carry_out`.
            loop {
                step = match step {
                    Step::Nothing => break,
                    Step::Reply(r) => {
                        check_reply(&r);
                        break;
                    }
                    Step::Close(r) => {
                        check_reply(&r);
                        break 'pieces;
                    }
                    Step::StartTls => {
                        assert!(!session.is_tls());
                        session = Session::new(config.clone(), true).with_piece_size(piece_size);
                        buffer.clear();
                        break;
                    }
                    Step::Verify(creds) => {
                        assert!(session.is_tls(), "AUTH before TLS");
                        let ok = creds.password == "pw";
                        session.auth_result(ok.then(|| user.clone()))
                    }
                    Step::Queue(accepted) => {
                        assert!(session.is_tls(), "queued before TLS");
                        assert_eq!(session.login(), Some("alice@example.test"));
                        let senders = &accepted.user.senders;
                        assert!(owns(senders, &accepted.sender), "{}", accepted.sender);
                        let n = accepted.recipients.len();
                        assert!(n >= 1 && n <= config.max_recipients);
                        while let Some(piece) = session.take_piece() {
                            spooled.extend_from_slice(&piece);
                        }
                        let m = &std::mem::take(&mut spooled);
                        assert_eq!(accepted.headers, submission::header_section(m));
                        assert!(m.len() as u64 <= config.max_message_size);
                        assert!(!common::has_bare_line_ending(m));
                        assert!(!m.contains(&0));
                        let headers = submission::header_section(m).len() as u64;
                        assert!(headers <= config.max_header_size);
                        assert!(submission::hop_count(submission::header_section(m)) <= config.max_hops);
                        let checked = submission::check_from(m, senders).expect("From checked");
                        assert_eq!(checked.domain, accepted.from_domain);
                        session.queued(Ok("ID"))
                    }
                };
            }
            if !session.receiving() {
                spooled.clear();
            }
        }
    }
});
