//! OpenVPN's management interface, the subset front-ends such as NetworkManager-openvpn use:
//! `--management PATH unix` or `--management IP PORT`, one client at a time.
//!
//! * Commands: `state [on|off]`, `bytecount N`, `hold release`, `signal SIGTERM|SIGINT|SIGUSR1|SIGHUP`,
//!   `status`, `username "Auth" U`, `password "Auth" P`, `help`, `version`, `pid`, `exit`/`quit`.
//! * Notifications: `>INFO:` on connect, `>STATE:` (with `state on`), `>BYTECOUNT:` (with
//!   `bytecount N`), `>HOLD:` (with `--management-hold`), `>PASSWORD:Need 'Auth'
//!   username/password` (with `--management-query-passwords`), `>PASSWORD:Verification Failed`.
//!
//! Hostile input: lines are capped at 4 KiB (longer ones close the connection), one client at a
//! time, passwords are never logged or echoed.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where the interface listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(std::net::SocketAddr),
}

/// The tunnel's state as OpenVPN names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Connecting to a remote.
    Connecting,
    /// Waiting for the server's first answer.
    Wait,
    /// TLS and authentication.
    Auth,
    /// Waiting for PUSH_REPLY.
    GetConfig,
    /// Configuring the tun device.
    AssignIp,
    /// Adding routes.
    AddRoutes,
    /// Up.
    Connected,
    /// Restarting.
    Reconnecting,
    /// Leaving.
    Exiting,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Connecting => "CONNECTING",
            State::Wait => "WAIT",
            State::Auth => "AUTH",
            State::GetConfig => "GET_CONFIG",
            State::AssignIp => "ASSIGN_IP",
            State::AddRoutes => "ADD_ROUTES",
            State::Connected => "CONNECTED",
            State::Reconnecting => "RECONNECTING",
            State::Exiting => "EXITING",
        }
    }
}

/// What the engine asks of and tells the interface.
pub struct Management {
    inner: Mutex<Inner>,
    cond: Condvar,
    /// Set by `signal SIGTERM`/`SIGINT` (the engine's own stop flag).
    term: Arc<AtomicBool>,
    /// Set by `signal SIGUSR1`/`SIGHUP`: restart the connection.
    pub restart: AtomicBool,
    /// Bytes in/out for `>BYTECOUNT:`, read when due.
    bytes: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
    /// The password a client must give first (pw-file), if any.
    password: Option<String>,
}

/// The management password: the first line of `path` (OpenVPN's pw-file).
pub fn read_password_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "management: cannot read the password file {}",
            path.display()
        )
    })?;
    let pw = text
        .lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('\r')
        .to_owned();
    if pw.is_empty() {
        anyhow::bail!(
            "management: the password file {} has an empty first line",
            path.display()
        );
    }
    Ok(pw)
}

/// Compares without returning early at the first difference (no timing hint).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

struct Inner {
    /// Writer of the connected client.
    out: Option<Box<dyn Write + Send>>,
    state_on: bool,
    last_state: Option<String>,
    bytecount: Option<Duration>,
    next_bytecount: Instant,
    hold: bool,
    user: Option<String>,
    pass: Option<String>,
    /// A password query is pending: re-sent to a client that connects later.
    pending_query: Option<String>,
}

/// Longest command line accepted.
const MAX_LINE: usize = 4096;

impl Management {
    /// Starts listening; `hold` makes the engine wait for `hold release`; with `password`,
    /// a client must send it first (OpenVPN's pw-file).
    pub fn start(
        endpoint: &Endpoint,
        password: Option<String>,
        hold: bool,
        term: Arc<AtomicBool>,
        bytes: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
    ) -> Result<Arc<Management>> {
        let m = Arc::new(Management {
            inner: Mutex::new(Inner {
                out: None,
                state_on: false,
                last_state: None,
                bytecount: None,
                next_bytecount: Instant::now(),
                hold,
                user: None,
                pass: None,
                pending_query: None,
            }),
            password,
            cond: Condvar::new(),
            term,
            restart: AtomicBool::new(false),
            bytes,
        });
        match endpoint {
            Endpoint::Unix(path) => {
                let _ = std::fs::remove_file(path);
                let l = UnixListener::bind(path)
                    .with_context(|| format!("management: cannot listen on {}", path.display()))?;
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .with_context(|| format!("management: cannot restrict {}", path.display()))?;
                Self::spawn_acceptor(
                    Arc::clone(&m),
                    l,
                    |l| l.accept().map(|(s, _)| s),
                    std::os::unix::net::UnixStream::try_clone,
                )?;
            }
            Endpoint::Tcp(addr) => {
                let l = TcpListener::bind(addr)
                    .with_context(|| format!("management: cannot listen on {addr}"))?;
                Self::spawn_acceptor(
                    Arc::clone(&m),
                    l,
                    |l| l.accept().map(|(s, _)| s),
                    std::net::TcpStream::try_clone,
                )?;
            }
        }
        let m2 = Arc::clone(&m);
        std::thread::Builder::new()
            .name("management-ticks".into())
            .spawn(move || m2.ticks())?;
        Ok(m)
    }

    /// A thread that accepts management clients on `listener` and serves them one at a time.
    fn spawn_acceptor<L, S>(
        m: Arc<Management>,
        listener: L,
        accept: fn(&L) -> std::io::Result<S>,
        split: fn(&S) -> std::io::Result<S>,
    ) -> Result<()>
    where
        L: Send + 'static,
        S: std::io::Read + Write + Send + 'static,
    {
        std::thread::Builder::new()
            .name("management".into())
            .spawn(move || {
                loop {
                    match accept(&listener).and_then(|s| Ok((split(&s)?, s))) {
                        Ok((w, r)) => m.serve(Box::new(w), BufReader::new(r)),
                        // Out of descriptors and the like: do not spin.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a line to the connected client (dropped when none).
    fn send(inner: &mut Inner, line: &str) {
        if let Some(out) = inner.out.as_mut()
            && out.write_all(format!("{line}\r\n").as_bytes()).is_err()
        {
            inner.out = None;
        }
    }

    /// Asks a new client for the password (3 tries, a second's pause after each wrong
    /// one, as the acceptor serves one client at a time this paces guessing); true when it
    /// gave it.
    fn authenticate(&self, writer: &mut (dyn Write + Send), reader: &mut impl BufRead) -> bool {
        let Some(want) = &self.password else {
            return true;
        };
        for _ in 0..3 {
            if writer.write_all(b"ENTER PASSWORD:").is_err() {
                return false;
            }
            let mut line = Vec::new();
            let mut limited = std::io::Read::take(&mut *reader, MAX_LINE as u64 + 1);
            match limited.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            let got = String::from_utf8_lossy(&line);
            let got = got.trim_end_matches(['\r', '\n']);
            if constant_time_eq(got.as_bytes(), want.as_bytes()) {
                return writer
                    .write_all(b"SUCCESS: password is correct\r\n")
                    .is_ok();
            }
            tracing::warn!("management: a client gave a wrong password");
            std::thread::sleep(Duration::from_secs(1));
            if writer.write_all(b"ERROR: bad password\r\n").is_err() {
                return false;
            }
        }
        false
    }

    /// Serves one management client until it leaves.
    fn serve(&self, mut writer: Box<dyn Write + Send>, mut reader: impl BufRead) {
        if !self.authenticate(writer.as_mut(), &mut reader) {
            return;
        }
        {
            let mut i = self.lock();
            i.out = Some(writer);
            Self::send(
                &mut i,
                ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info",
            );
            if i.hold {
                Self::send(&mut i, ">HOLD:Waiting for hold release:0");
            }
            if let Some(q) = i.pending_query.clone() {
                Self::send(&mut i, &q);
            }
        }
        let mut line = Vec::new();
        loop {
            line.clear();
            let mut limited = std::io::Read::take(&mut reader, MAX_LINE as u64 + 1);
            match limited.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.len() > MAX_LINE => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if !self.command(text) {
                break;
            }
        }
        self.lock().out = None;
    }

    /// Handles one command; false to close the connection.
    fn command(&self, line: &str) -> bool {
        let words = tunscope_proto::options::lexer::split_line(line).unwrap_or_default();
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let mut i = self.lock();
        match w.as_slice() {
            [] => {}
            ["exit"] | ["quit"] => return false,
            ["help"] => {
                for l in [
                    "Management Interface for tunscope (OpenVPN subset)",
                    "bytecount n, hold release, password type p, pid, signal s, state [on|off],",
                    "status, username type u, version, exit",
                    "END",
                ] {
                    Self::send(&mut i, l);
                }
            }
            ["version"] => {
                Self::send(
                    &mut i,
                    &format!(
                        "OpenVPN Version: tunscope {} (OpenVPN 2.6 compatible)",
                        env!("CARGO_PKG_VERSION")
                    ),
                );
                Self::send(&mut i, "Management Version: 5");
                Self::send(&mut i, "END");
            }
            ["pid"] => Self::send(&mut i, &format!("SUCCESS: pid={}", std::process::id())),
            ["state"] => {
                if let Some(s) = i.last_state.clone() {
                    Self::send(&mut i, &s);
                }
                Self::send(&mut i, "END");
            }
            ["state", "on"] => {
                i.state_on = true;
                Self::send(&mut i, "SUCCESS: real-time state notification set to ON");
            }
            ["state", "off"] => {
                i.state_on = false;
                Self::send(&mut i, "SUCCESS: real-time state notification set to OFF");
            }
            ["state", "on", "all"] => {
                i.state_on = true;
                if let Some(s) = i.last_state.clone() {
                    Self::send(&mut i, &s);
                }
                Self::send(&mut i, "END");
            }
            ["bytecount", n] => match n.parse::<u64>() {
                Ok(0) => {
                    i.bytecount = None;
                    Self::send(&mut i, "SUCCESS: bytecount interval changed");
                }
                Ok(s) => {
                    i.bytecount = Some(Duration::from_secs(s));
                    i.next_bytecount = Instant::now();
                    Self::send(&mut i, "SUCCESS: bytecount interval changed");
                }
                Err(_) => Self::send(&mut i, "ERROR: bytecount parameter must be a number"),
            },
            ["hold", "release"] => {
                i.hold = false;
                self.cond.notify_all();
                Self::send(&mut i, "SUCCESS: hold release succeeded");
            }
            ["hold"] => {
                let h = u8::from(i.hold);
                Self::send(&mut i, &format!("SUCCESS: hold={h}"));
            }
            ["signal", sig] => match *sig {
                "SIGTERM" | "SIGINT" => {
                    self.term.store(true, Ordering::Relaxed);
                    self.cond.notify_all();
                    Self::send(&mut i, &format!("SUCCESS: signal {sig} thrown"));
                }
                "SIGUSR1" | "SIGHUP" => {
                    self.restart.store(true, Ordering::Relaxed);
                    Self::send(&mut i, &format!("SUCCESS: signal {sig} thrown"));
                }
                _ => Self::send(&mut i, "ERROR: signal not supported"),
            },
            ["status"] | ["status", _] => {
                let (rx, tx) = (self.bytes)();
                for l in [
                    "OpenVPN STATISTICS".to_owned(),
                    format!(
                        "Updated,{}",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                    ),
                    format!("TCP/UDP read bytes,{rx}"),
                    format!("TCP/UDP write bytes,{tx}"),
                    "END".to_owned(),
                ] {
                    Self::send(&mut i, &l);
                }
            }
            ["username", _, u] => {
                i.user = Some((*u).to_owned());
                self.cond.notify_all();
                Self::send(
                    &mut i,
                    "SUCCESS: 'Auth' username entered, but not yet verified",
                );
            }
            ["password", _, p] => {
                i.pass = Some((*p).to_owned());
                self.cond.notify_all();
                Self::send(
                    &mut i,
                    "SUCCESS: 'Auth' password entered, but not yet verified",
                );
            }
            [cmd, ..] => Self::send(
                &mut i,
                &format!("ERROR: unknown command [{cmd}], enter 'help' for more options"),
            ),
        }
        true
    }

    /// Sends `>BYTECOUNT:` when due (a thread of its own).
    fn ticks(&self) {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let mut i = self.lock();
            if let Some(every) = i.bytecount
                && Instant::now() >= i.next_bytecount
            {
                i.next_bytecount = Instant::now() + every;
                let (rx, tx) = (self.bytes)();
                Self::send(&mut i, &format!(">BYTECOUNT:{rx},{tx}"));
            }
        }
    }

    /// Reports a state change (`>STATE:time,NAME,detail,local ip,remote ip,remote port,,`).
    pub fn state(&self, s: State, detail: &str, local: &str, remote: Option<std::net::SocketAddr>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (rip, rport) = remote.map_or((String::new(), String::new()), |a| {
            (a.ip().to_string(), a.port().to_string())
        });
        let line = format!(">STATE:{now},{},{detail},{local},{rip},{rport},,", s.name());
        let mut i = self.lock();
        i.last_state = Some(line.trim_start_matches(">STATE:").to_owned());
        if i.state_on {
            Self::send(&mut i, &line);
        }
    }

    /// Waits for `hold release` (with `--management-hold`), or a stop.
    pub fn wait_hold(&self) -> Result<()> {
        let mut i = self.lock();
        while i.hold {
            if self.term.load(Ordering::Relaxed) {
                bail!("stopped while holding");
            }
            i = self
                .cond
                .wait_timeout(i, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        Ok(())
    }

    /// Asks the management client for the 'Auth' username and password and waits for both.
    /// `failed` says the previous ones were refused (`auth-retry interact`).
    pub fn ask_credentials(&self, failed: bool) -> Result<(String, String)> {
        let mut i = self.lock();
        i.user = None;
        i.pass = None;
        if failed {
            Self::send(&mut i, ">PASSWORD:Verification Failed: 'Auth'");
        }
        let q = ">PASSWORD:Need 'Auth' username/password".to_owned();
        Self::send(&mut i, &q);
        i.pending_query = Some(q);
        loop {
            if let (Some(u), Some(p)) = (i.user.clone(), i.pass.clone()) {
                i.pending_query = None;
                return Ok((u, p));
            }
            if self.term.load(Ordering::Relaxed) {
                bail!("stopped while waiting for credentials from the management interface");
            }
            i = self
                .cond
                .wait_timeout(i, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}
