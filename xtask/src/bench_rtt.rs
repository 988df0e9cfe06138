//! The bench's round-trip figures. Two pings per path, because on a small virtual machine
//! the idle figure measures the machine more than the tunnel:
//!
//! * **idle**: 20 echo requests 200 ms apart, every process where the scheduler puts it, as
//!   a user's interactive traffic meets the tunnel. Every request crosses threads of the
//!   tunnel's processes (at least three wake-ups per round trip for a user-space tunnel,
//!   none for plain veth), and on the 2-vCPU machines this project measures on a wake-up
//!   across cores is dear: `perf bench sched pipe` takes 45.6 µs per round trip across
//!   cores, 5.2 µs with both ends on one core. Between requests the cores go idle too.
//! * **one core**: the tunnel's processes (every thread) and ping confined to one core, 500
//!   echo requests 2 ms apart. At that interval ping waits by yielding the CPU instead of
//!   sleeping (iputils does below ~5 ms), so the core never goes idle and no wake-up
//!   crosses cores: what is left over plain veth is the tunnel's own work per round trip
//!   (both engines, both directions: tun reads and writes, sealing and opening, the extra
//!   trips through the kernel's stack, the switches between them).

use anyhow::{Context, Result, bail};
use tunscope_harness::netns::Netns;

/// Average RTT (ms) from ping's summary line (`rtt min/avg/max/mdev = a/b/c/d ms`).
pub fn ping_avg(output: &str) -> Option<f64> {
    let (_, nums) = output.split_once(" = ")?;
    nums.split('/').nth(1)?.trim().parse().ok()
}

/// A process and its descendants up to `depth` generations (sshd serves a tunnel from a
/// grandchild of the listener).
pub fn process_tree(pid: u32, depth: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if depth > 0 {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            out.extend(process_tree(c, depth - 1));
        }
    }
    out
}

/// The threads of a process.
fn threads(pid: u32) -> Vec<libc::pid_t> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn get_affinity(tid: libc::pid_t) -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is the empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is valid for its size.
    let r =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (r == 0).then_some(set)
}

pub fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> bool {
    // SAFETY: the set is valid for its size; tid 0 is the calling thread.
    unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

/// The set of `cpus` (each below the machine's CPU count, inside CPU_SETSIZE).
pub fn cpu_set(cpus: impl IntoIterator<Item = usize>) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus {
        // SAFETY: cpu is a CPU of this machine, inside CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Threads confined to one CPU for a while; their own CPU sets come back when it is dropped
/// (also when the measurement fails), so the throughput run after it is not confined.
struct Pinned(Vec<(libc::pid_t, libc::cpu_set_t)>);

impl Pinned {
    /// Confines every thread of `pids` (and of this thread, tid 0) to `cpu`.
    fn new(pids: &[u32], cpu: usize) -> Result<Pinned> {
        let set = cpu_set([cpu]);
        let mut saved = Pinned(Vec::new());
        let tids = std::iter::once(0).chain(pids.iter().flat_map(|&p| threads(p)));
        for tid in tids {
            let Some(old) = get_affinity(tid) else {
                continue; // a thread that ended meanwhile
            };
            if set_affinity(tid, &set) {
                saved.0.push((tid, old));
            } else if tid == 0 {
                bail!(
                    "confining the bench to CPU {cpu}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(saved)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for (tid, set) in &self.0 {
            set_affinity(*tid, set);
        }
    }
}

/// The first CPU this thread may run on.
fn first_cpu() -> usize {
    get_affinity(0)
        .and_then(|set| {
            // SAFETY: reading bits of a valid set, cpu < CPU_SETSIZE.
            (0..libc::CPU_SETSIZE as usize).find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        })
        .unwrap_or(0)
}

/// Idle round trip (ms): 20 echo requests of 56 bytes, 200 ms apart, from `ns` to `target`.
pub fn idle(ns: &Netns, target: &str) -> Result<f64> {
    let ping = tunscope_harness::traffic::ping(ns, target, 20, 56, false)?;
    ping_avg(&ping.output).with_context(|| format!("no ping summary: {}", ping.output))
}

/// Round trip (ms) on one core: `tunnel` (the tunnel's processes; none for plain veth) and
/// ping confined to the first CPU this bench may use, 500 echo requests of 56 bytes 2 ms
/// apart from `ns` to `target`.
pub fn one_core(ns: &Netns, target: &str, tunnel: &[u32]) -> Result<f64> {
    let pids: Vec<u32> = tunnel.iter().flat_map(|&p| process_tree(p, 3)).collect();
    let _pinned = Pinned::new(&pids, first_cpu())?;
    // ping inherits this thread's CPU set; 2 ms apart needs root (the bench runs as root).
    let out = ns
        .command("ping")
        .args([
            "-n", "-q", "-c", "500", "-i", "0.002", "-W", "2", "-s", "56", target,
        ])
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ping_avg(&text).with_context(|| format!("no ping summary: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_average_from_pings_summary() {
        let out = "--- 198.19.0.1 ping statistics ---\n500 packets transmitted, 500 received, 0% packet loss, time 1040ms\nrtt min/avg/max/mdev = 0.041/0.078/0.188/0.012 ms\n";
        assert_eq!(ping_avg(out), Some(0.078));
        assert_eq!(ping_avg("100% packet loss"), None);
    }

    fn cpus(tid: libc::pid_t) -> Vec<usize> {
        let set = get_affinity(tid).expect("affinity");
        // SAFETY: reading bits of a valid set.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    }

    #[test]
    fn pins_every_thread_of_a_process_tree_and_gives_their_cpus_back() {
        // A shell with a child: the tree walk must reach the grandchild-free leaf too.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("sh");
        let pid = sh.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let tree = loop {
            let t = process_tree(pid, 3);
            if t.len() == 2 || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(tree.len(), 2, "sh and its sleep: {tree:?}");
        let before: Vec<Vec<usize>> = tree.iter().map(|&p| cpus(p as libc::pid_t)).collect();
        let own_before = cpus(0);
        let cpu = first_cpu();
        {
            let _pinned = Pinned::new(&tree, cpu).expect("pin");
            for &p in &tree {
                assert_eq!(cpus(p as libc::pid_t), vec![cpu], "process {p} confined");
            }
            assert_eq!(cpus(0), vec![cpu], "and the bench's own thread");
        }
        let after: Vec<Vec<usize>> = tree.iter().map(|&p| cpus(p as libc::pid_t)).collect();
        assert_eq!(after, before, "CPU sets restored");
        assert_eq!(cpus(0), own_before);
        for &p in tree.iter().rev() {
            // SAFETY: plain kill of processes this test started.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
        let _ = sh.wait();
    }
}
