//! Asking the user on the terminal, as OpenVPN does for `auth-user-pass` without a file:
//! "Enter Auth Username:" and "Enter Auth Password:" (not echoed) on `/dev/tty`.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, Result, bail};
use nix::sys::termios::{self, LocalFlags, SetArg};

/// Reads one line from the terminal after `prompt`; without echo when `secret`.
pub fn ask(prompt: &str, secret: bool) -> Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask on (give auth-user-pass a file, or an inline block)")?;
    let mut out = tty.try_clone()?;
    write!(out, "{prompt}")?;
    out.flush()?;
    // Echo off for secrets, restored afterwards whatever happens.
    let saved = if secret {
        let old = termios::tcgetattr(&tty).context("terminal attributes")?;
        let mut quiet = old.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        termios::tcsetattr(&tty, SetArg::TCSANOW, &quiet).context("terminal echo off")?;
        Some(old)
    } else {
        None
    };
    let mut line = String::new();
    let read = BufReader::new(&tty).read_line(&mut line);
    if let Some(old) = saved {
        let _ = termios::tcsetattr(&tty, SetArg::TCSANOW, &old);
        let _ = writeln!(out);
    }
    read.context("reading from the terminal")?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.len() >= tunscope_proto::consts::USER_PASS_LEN {
        bail!("input is longer than OpenVPN's 127-byte limit");
    }
    Ok(line)
}

/// Username and password for `auth-user-pass` without a file.
pub fn credentials() -> Result<(String, String)> {
    let user = ask("Enter Auth Username: ", false)?;
    if user.is_empty() {
        bail!("auth-user-pass: empty username");
    }
    let pass = ask("Enter Auth Password: ", true)?;
    Ok((user, pass))
}
