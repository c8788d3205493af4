//! `submitd hash-password`, and reading a password for `user add` and `user passwd`.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, anyhow};

use super::{Failure, usage};

/// Read a password on stdin, print its PHC string.
pub(crate) fn hash_password() -> Result<(), Failure> {
    let password = read_line_stdin()?;
    if password.is_empty() {
        return Err(usage("empty password"));
    }
    println!("{}", hash(&password)?);
    Ok(())
}

pub(crate) fn hash(password: &str) -> Result<String, Failure> {
    submitd::auth::verify::hash_password(password)
        .map_err(|e| Failure::Runtime(anyhow!("hashing the password: {e}")))
}

/// One line from stdin without its trailing CR/LF.
fn read_line_stdin() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading stdin")?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

/// `--password-stdin` or a non-TTY: one line from stdin. A TTY: prompt twice, both must match.
pub(crate) fn read_password(from_stdin: bool) -> Result<String, Failure> {
    let password = if !from_stdin && std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("reading the password")?;
        let again =
            rpassword::prompt_password("Password (again): ").context("reading the password")?;
        if first != again {
            return Err(usage("passwords do not match"));
        }
        first
    } else {
        read_line_stdin()?
    };
    if password.is_empty() {
        return Err(usage("empty password"));
    }
    Ok(password)
}
