//! The `submitd` binary (DESIGN.md "Command line"): parse the command line, load the config,
//! and either run the server until SIGTERM/SIGINT or do one admin task and exit. Each command
//! lives in its own file under `cli/`.
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage or config error (clap exits 2 on its own).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit_code(),
    }
}
