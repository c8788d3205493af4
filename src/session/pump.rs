//! One step of a session over buffered input, sans-IO: the loop body the driver runs between
//! reads, shared with the `session` fuzz target so that what is fuzzed is what runs.

use super::input::InputBuffer;
use super::state::{Session, Step, Want};

/// What [`advance`] found.
#[derive(Debug)]
pub enum Progress {
    /// Carry out this step (input it used is consumed).
    Step(Step),
    /// Nothing to do until more input arrives.
    NeedInput,
    /// A full piece of message content waits in [`Session::take_piece`]: take it (write it to
    /// the spool), then advance again. No input is taken until then, which bounds the memory
    /// a message costs.
    Drain,
    /// The session waits for the outcome of a [`Step::Verify`] or [`Step::Queue`]; feeding it
    /// input now would be a bug in the caller.
    AwaitingOutcome,
}

/// Take what the session wants from `input`: a line, DATA bytes or BDAT chunk bytes. A line is
/// handed over with whether more input follows it (RFC 2920 group ends, see
/// [`Session::on_input_line`]).
pub fn advance(session: &mut Session, input: &mut InputBuffer) -> Progress {
    let step = match session.wants() {
        Want::Line(max) => input.next_line(max).map(|line| {
            let more = !input.is_empty();
            session.on_input_line(line, more)
        }),
        Want::Data if !input.is_empty() => {
            let (n, step) = session.on_data(input.bytes());
            input.consume(n);
            step
        }
        Want::Chunk(remaining) if remaining == 0 || !input.is_empty() => {
            let (n, step) = session.on_chunk(input.bytes());
            input.consume(n);
            step
        }
        Want::Data | Want::Chunk(_) => None,
        Want::Drain => return Progress::Drain,
        Want::Outcome => return Progress::AwaitingOutcome,
    };
    match step {
        Some(step) => Progress::Step(step),
        None if session.wants() == Want::Drain => Progress::Drain,
        None => Progress::NeedInput,
    }
}
