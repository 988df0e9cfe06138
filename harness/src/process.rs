//! Processes started by the harness: logs to a file, stopped by pid when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A child process with its log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log_count(needle, 1, timeout)
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_for_log_count(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().matches(needle).count() >= count {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited ({status}) before logging {needle:?}; log:\n{}",
                    self.name,
                    tail(&self.log(), 40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {} s; log:\n{}",
                    self.name,
                    timeout.as_secs(),
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.pid().context("process already reaped")?;
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("signal to {}", self.name))
    }

    /// Waits for exit up to `timeout`; returns the exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("process already reaped")?;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st.code());
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {} s", self.name, timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the threads of process `pid` run as: (uid, effective capabilities) per thread.
pub fn thread_identities(pid: u32) -> Result<Vec<(u32, u64)>> {
    let mut out = vec![];
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(t?.path().join("status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
                .unwrap_or_default()
        };
        let uid = field("Uid:").parse().unwrap_or(u32::MAX);
        let cap = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(u64::MAX);
        out.push((uid, cap));
    }
    Ok(out)
}

/// From the stage table our engines log when they stop (`stage in out bytes … drops`): the
/// packets out of `stage`, or its drops for `reason` (0 when none was counted), with the line
/// it came from. `None` when the log has no such stage line (not our engine, or no table).
/// `reordering` is the table's line of packets accepted late (`reordering: N packet(s) …`,
/// printed only when there were some: 0 when the table is there without it).
pub fn stage_counter(log: &str, stage: &str, reason: Option<&str>) -> Option<(u64, String)> {
    if stage == "reordering" && reason.is_none() {
        return match log
            .lines()
            .rfind(|l| l.split_whitespace().next() == Some("reordering:"))
        {
            Some(l) => Some((
                l.split_whitespace().nth(1)?.parse().ok()?,
                l.trim().to_owned(),
            )),
            None => stage_counter(log, "decrypt", None).map(|(_, l)| (0, l)),
        };
    }
    let line = log
        .lines()
        .rfind(|l| l.split_whitespace().next() == Some(stage))?;
    let n = match reason {
        None => line.split_whitespace().nth(2)?.parse().ok()?,
        Some(r) => line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{r}=")))
            .map_or(Some(0), |v| v.parse().ok())?,
    };
    Some((n, line.trim().to_owned()))
}

/// CPU time (user + system clock ticks) of the threads of process `pid` named `name`
/// (`/proc/PID/task/*/comm`): which of an engine's threads did the work.
pub fn thread_cpu_ticks(pid: u32, name: &str) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        // After the parenthesised name come the fields from 3 (state) on: utime is field
        // 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += field(14) + field(15);
    }
    Ok(total)
}

/// Fails unless a finished command (`what`, e.g. `iperf3`) exited successfully; its
/// output is the error.
pub fn ensure_success(what: &str, out: &std::process::Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// CPU ticks of an engine's first two data threads of a kind — `tx` (send: `tx0`, `tx1`)
/// or `rx` (receive: `rx0`, `rx1`) — for [`ensure_both_threads_worked`].
pub fn thread_pair_ticks(pid: u32, kind: &str) -> Result<[u64; 2]> {
    Ok([
        thread_cpu_ticks(pid, &format!("{kind}0"))?,
        thread_cpu_ticks(pid, &format!("{kind}1"))?,
    ])
}

/// Fails unless both data threads of a kind (`tx`, `rx`) gained CPU time from `before` to
/// `after`.
pub fn ensure_both_threads_worked(kind: &str, before: [u64; 2], after: [u64; 2]) -> Result<()> {
    if after[0] > before[0] && after[1] > before[1] {
        return Ok(());
    }
    bail!(
        "both {kind} threads work: {kind}0 {}→{} ticks, {kind}1 {}→{}",
        before[0],
        after[0],
        before[1],
        after[1]
    )
}

#[cfg(test)]
mod tests {
    use super::stage_counter;

    const TABLE: &str = "\
INFO tunscope: stopped
stage              in        out        bytes  batch50    p50 ns    p99 ns  drops
socket_rx        1200       1200      1700000        4      2000      9000
decrypt          1200       1180      1690000        4      3000     12000  replay=20
write_tun        1180       1180      1600000        4      5000     20000
reordering: 37 packet(s) accepted late (behind a higher packet-id, inside the replay window)
";

    #[test]
    fn counters_come_from_the_exit_table() {
        assert_eq!(
            stage_counter(TABLE, "decrypt", None).map(|c| c.0),
            Some(1180)
        );
        assert_eq!(
            stage_counter(TABLE, "decrypt", Some("replay")).map(|c| c.0),
            Some(20)
        );
        assert_eq!(
            stage_counter(TABLE, "decrypt", Some("bad_tag")).map(|c| c.0),
            Some(0)
        );
        assert_eq!(
            stage_counter(TABLE, "reordering", None).map(|c| c.0),
            Some(37)
        );
        // No reordering line: none were late, as long as there is a table at all.
        let quiet: String = TABLE
            .lines()
            .filter(|l| !l.starts_with("reordering"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            stage_counter(&quiet, "reordering", None).map(|c| c.0),
            Some(0)
        );
        assert_eq!(
            stage_counter("openvpn says hello\n", "reordering", None),
            None
        );
        assert_eq!(stage_counter("openvpn says hello\n", "decrypt", None), None);
    }
}
