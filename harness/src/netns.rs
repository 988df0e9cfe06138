//! Network namespaces owned by a run.
//!
//! Rules (DESIGN.md, harness principles):
//! * every namespace is named `ts-<owner pid>-<seq>-<role>` and removed when its [`Netns`]
//!   drops, also on panic;
//! * leftovers of a crashed run (owner pid dead) are removed by [`cleanup_stale`];
//! * code runs inside a namespace only on a dedicated thread that entered it with `setns`
//!   ([`Netns::run`]); the calling thread (and any async runtime) never changes namespace.
//!
//! Links, addresses and routes are configured with iproute2 (`ip -n NS …`), the same tool a
//! user would reach for to inspect them.

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Directory where iproute2 keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Per-namespace files that `ip netns exec` bind-mounts over `/etc` (its mount namespace).
/// Every namespace we create gets its own `resolv.conf` here, so a process inside it that
/// rewrites `/etc/resolv.conf` (a VPN client's DNS backend) changes only this file, never
/// the root namespace's.
const ETC_NETNS_DIR: &str = "/etc/netns";

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

/// Runs a command and fails with its stderr when it does not succeed.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails unless running as root (namespaces, tun and veth need it).
pub fn require_root() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("this needs root (network namespaces, veth, tun); run as root or via .ci/run");
    }
    Ok(())
}

/// A fresh run-unique prefix: `ts-<pid>-<seq>`.
pub fn run_prefix() -> String {
    format!(
        "ts-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl Netns {
    /// Creates `<prefix>-<role>` and brings its loopback up.
    pub fn create(prefix: &str, role: &str) -> Result<Netns> {
        let name = format!("{prefix}-{role}");
        sh("ip", &["netns", "add", &name])?;
        let ns = Netns { name, keep: false };
        let etc = ns.etc_dir();
        std::fs::create_dir_all(&etc)
            .with_context(|| format!("cannot create {}", etc.display()))?;
        ns.set_resolv_conf(&format!(
            "# namespace {}: no resolver configured\n",
            ns.name
        ))?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `/etc/netns/<name>`: files seen at `/etc` by processes started with [`Netns::command`].
    pub fn etc_dir(&self) -> std::path::PathBuf {
        std::path::Path::new(ETC_NETNS_DIR).join(&self.name)
    }

    /// The namespace's own resolv.conf (what `/etc/resolv.conf` is inside it).
    pub fn resolv_conf_path(&self) -> std::path::PathBuf {
        self.etc_dir().join("resolv.conf")
    }

    /// Replaces the namespace's resolv.conf.
    pub fn set_resolv_conf(&self, text: &str) -> Result<()> {
        let p = self.resolv_conf_path();
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    }

    /// Makes the namespace's resolv.conf a symbolic link to `target` (a file another program
    /// keeps up to date, as a desktop's /etc/resolv.conf links to systemd-resolved's).
    pub fn link_resolv_conf(&self, target: &std::path::Path) -> Result<()> {
        let p = self.resolv_conf_path();
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p)
            .with_context(|| format!("cannot link {} to {}", p.display(), target.display()))
    }

    /// The namespace's resolv.conf as it is now.
    pub fn resolv_conf(&self) -> String {
        std::fs::read_to_string(self.resolv_conf_path()).unwrap_or_default()
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward` style key).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        // /proc/sys/net resolves to the namespace of the thread that opens it.
        self.run(move || {
            std::fs::write(&path, value).with_context(|| format!("cannot write {path}"))
        })
    }

    /// Loads an nftables ruleset into the namespace (`nft -f -`).
    pub fn nft(&self, ruleset: &str) -> Result<()> {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot run nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in {} failed: {}\nruleset:\n{ruleset}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leaves the namespace in place when dropped (`--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Runs `ip -n <ns> <args…>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut a = vec!["netns", "exec", self.name.as_str(), program];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec`, which execs, so
    /// the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        self.spawn(f)?
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
    }

    /// Starts `f` on a new thread inside this namespace.
    pub fn spawn<T, F>(&self, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let path = format!("{NETNS_DIR}/{}", self.name);
        let fd = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("ns-{name}"))
            .spawn(move || {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {name}"))?;
                f()
            })
            .context("spawning namespace thread")
    }

    /// Pids of processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        sh("ip", &["netns", "pids", &self.name])
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        delete_namespace(&self.name);
    }
}

fn delete_namespace(name: &str) {
    // Processes we started in it are stopped by their owners first; anything left here was
    // started by this run (or a crashed earlier run of ours) inside our own namespace.
    for pid in sh("ip", &["netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    let _ = sh("ip", &["netns", "del", name]);
    let _ = std::fs::remove_dir_all(std::path::Path::new(ETC_NETNS_DIR).join(name));
}

/// Removes `ts-<pid>-…` namespaces whose owning process is gone. Returns their names.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = vec![];
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return removed;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("ts-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_namespace(&name);
        removed.push(name);
    }
    // /etc/netns entries whose namespace is gone (e.g. removed by hand).
    if let Ok(dir) = std::fs::read_dir(ETC_NETNS_DIR) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("ts-") && !std::path::Path::new(NETNS_DIR).join(&name).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    removed
}

/// Connects two namespaces with a veth pair (`a_if` in `a`, `b_if` in `b`), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    sh(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// The name of interface `index` in the calling thread's namespace (`if<index>` when it is
/// gone). Call it on a namespace thread.
pub fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{index}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
