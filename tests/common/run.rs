//! Running the real `submitd` binary from tests: output collected, every child killed if it
//! runs past a deadline.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: argon2id in a debug build is slow on a loaded CI machine.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// What a finished `submitd` run printed and how it exited.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Start `submitd args...` (in `dir` when given), feeding `stdin` then EOF (none: /dev/null).
pub fn spawn_submitd(dir: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_submitd"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().expect("spawn submitd");
    if let Some(text) = stdin {
        let mut input = child.stdin.take().unwrap();
        let text = text.to_string();
        // The child may exit without reading: a broken pipe is fine.
        std::thread::spawn(move || {
            let _ = input.write_all(text.as_bytes());
        });
    }
    child
}

/// Wait for a child within [`DEADLINE`] (killing it after) and collect its output.
pub fn finish(mut child: Child) -> Output {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for submitd") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("submitd did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        code: status.code(),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// Run `submitd args...` to the end.
pub fn run_submitd(dir: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Output {
    finish(spawn_submitd(dir, args, stdin))
}
