//! What the live view shows: a serializable report of an engine (totals, per-peer stages,
//! control plane, capture), rendered as JSON, a table, or Prometheus text.

use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::stats::{EngineStats, ScopeReport};

/// One peer in a report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerReport {
    /// Peer-id (server) or 0 (the client's server).
    pub id: u32,
    /// Common name, or the server's address for a client.
    pub name: String,
    /// Transport address.
    pub addr: String,
    /// Tunnel address.
    pub tunnel: Option<String>,
    /// Data cipher.
    pub cipher: Option<String>,
    /// This peer's stages (server side; a client's totals are its only peer's).
    pub stats: Option<ScopeReport>,
}

/// Capture status.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaptureReport {
    /// Output file.
    pub path: String,
    /// Records written.
    pub written: u64,
    /// Records lost because the writer fell behind.
    pub lost: u64,
}

/// A whole engine.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EngineReport {
    /// `client` or `server`.
    pub role: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Whether probes are compiled in.
    pub probes: bool,
    /// All traffic.
    pub totals: ScopeReport,
    /// Current peers.
    pub peers: Vec<PeerReport>,
    /// Capture, when `--capture` is on.
    pub capture: Option<CaptureReport>,
    /// Datagrams the kernel dropped at our UDP socket (receive buffer full): packets that
    /// left the peer's socket_tx but never reached our socket_rx.
    pub kernel_rx_drops: u64,
}

/// Something that can report its stage probes (engine totals, a server's peer).
pub trait ReportSource: Send + Sync {
    /// The probes now.
    fn scope_report(&self) -> ScopeReport;
}

impl ReportSource for EngineStats {
    fn scope_report(&self) -> ScopeReport {
        self.report()
    }
}

/// A peer's description and, when kept per peer, its probes.
pub type PeerEntry = (PeerReport, Option<Arc<dyn ReportSource>>);

/// Live information the control thread keeps up to date for reports.
pub struct Observer {
    role: &'static str,
    started: Instant,
    /// Engine totals.
    pub stats: Arc<EngineStats>,
    peers: RwLock<Vec<PeerEntry>>,
    // Weak: the capture writer ends when the data path's senders are gone; a report must
    // not keep it alive.
    capture: RwLock<Option<(String, std::sync::Weak<crate::capture::Tap>)>>,
    socket: RwLock<Option<std::os::fd::OwnedFd>>,
}

impl Observer {
    /// An observer for `role` with its totals.
    pub fn new(role: &'static str, stats: Arc<EngineStats>) -> Observer {
        Observer {
            role,
            started: Instant::now(),
            stats,
            peers: RwLock::new(Vec::new()),
            capture: RwLock::new(None),
            socket: RwLock::new(None),
        }
    }

    /// Replaces the peer list (peer description and its own stats, if kept per peer).
    pub fn set_peers(&self, peers: Vec<PeerEntry>) {
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    /// Registers the capture for status reports.
    pub fn set_capture(&self, path: String, tap: &Arc<crate::capture::Tap>) {
        *self.capture.write().unwrap_or_else(|e| e.into_inner()) =
            Some((path, Arc::downgrade(tap)));
    }

    /// The UDP socket whose kernel drop counter explains loss "on the wire" (a duplicate fd).
    pub fn set_socket(&self, fd: Option<std::os::fd::OwnedFd>) {
        *self.socket.write().unwrap_or_else(|e| e.into_inner()) = fd;
    }

    /// The current report.
    pub fn report(&self) -> EngineReport {
        let peers = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, s)| PeerReport {
                stats: s.as_ref().map(|s| s.scope_report()),
                ..p.clone()
            })
            .collect();
        let capture = self
            .capture
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|(path, tap)| {
                let tap = tap.upgrade()?;
                Some(CaptureReport {
                    path: path.clone(),
                    written: tap.written(),
                    lost: tap.lost(),
                })
            });
        let kernel_rx_drops = self
            .socket
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|fd| crate::link::socket_drops(std::os::fd::AsRawFd::as_raw_fd(fd)))
            .unwrap_or(0);
        EngineReport {
            role: self.role.to_owned(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            probes: crate::stats::PROBES,
            totals: self.stats.report(),
            peers,
            capture,
            kernel_rx_drops,
        }
    }
}

impl EngineReport {
    /// The table `tunscope stats` prints.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} up {:.0} s, {} peer(s)\n",
            self.role,
            self.uptime_s,
            self.peers.len()
        );
        s.push_str(&self.totals.table());
        let v = self.totals.conservation_violations();
        if v.is_empty() {
            s.push_str("conservation: in = out + drops at every stage\n");
        } else {
            let _ = writeln!(s, "CONSERVATION VIOLATED: {}", v.join("; "));
        }
        for p in &self.peers {
            let _ = write!(
                s,
                "peer {} '{}' {} {} {}",
                p.id,
                p.name,
                p.addr,
                p.tunnel.as_deref().unwrap_or("-"),
                p.cipher.as_deref().unwrap_or("")
            );
            if let Some(st) = &p.stats {
                let parts: Vec<String> = st
                    .stages
                    .iter()
                    .filter(|x| x.packets_in > 0)
                    .map(|x| format!("{} {}/{}", x.stage, x.packets_in, x.packets_out))
                    .collect();
                let _ = write!(s, ": {}", parts.join(", "));
            }
            s.push('\n');
        }
        if self.kernel_rx_drops > 0 {
            let _ = writeln!(
                s,
                "kernel dropped {} datagram(s) at the UDP socket before socket_rx",
                self.kernel_rx_drops
            );
        }
        if let Some(c) = &self.capture {
            let _ = writeln!(
                s,
                "capture {}: {} records written, {} lost",
                c.path, c.written, c.lost
            );
        }
        s
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let metric = |s: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let scopes: Vec<(String, &ScopeReport)> = std::iter::once((String::new(), &self.totals))
            .chain(self.peers.iter().filter_map(|p| {
                p.stats
                    .as_ref()
                    .map(|st| (format!(",peer=\"{}\"", p.id), st))
            }))
            .collect();
        for (name, help, get) in [
            (
                "tunscope_stage_packets_in_total",
                "Packets that entered a stage.",
                (|x: &crate::stats::StageReport| x.packets_in) as fn(&_) -> u64,
            ),
            (
                "tunscope_stage_packets_out_total",
                "Packets that left a stage.",
                |x| x.packets_out,
            ),
            (
                "tunscope_stage_bytes_in_total",
                "Bytes that entered a stage.",
                |x| x.bytes_in,
            ),
            (
                "tunscope_stage_batches_total",
                "Batches a stage processed.",
                |x| x.batches,
            ),
        ] {
            metric(&mut s, name, "counter", help);
            for (labels, sc) in &scopes {
                for st in &sc.stages {
                    let _ = writeln!(s, "{name}{{stage=\"{}\"{labels}}} {}", st.stage, get(st));
                }
            }
        }
        metric(
            &mut s,
            "tunscope_stage_drops_total",
            "counter",
            "Packets dropped at a stage, by reason.",
        );
        for (labels, sc) in &scopes {
            for st in &sc.stages {
                for (r, n) in &st.drops {
                    let _ = writeln!(
                        s,
                        "tunscope_stage_drops_total{{stage=\"{}\",reason=\"{r}\"{labels}}} {n}",
                        st.stage
                    );
                }
            }
        }
        metric(
            &mut s,
            "tunscope_stage_latency_ns",
            "summary",
            "Time a packet spends in a stage.",
        );
        for st in &self.totals.stages {
            for (q, v) in [
                ("0.5", st.latency_ns.p50),
                ("0.9", st.latency_ns.p90),
                ("0.99", st.latency_ns.p99),
            ] {
                let _ = writeln!(
                    s,
                    "tunscope_stage_latency_ns{{stage=\"{}\",quantile=\"{q}\"}} {v}",
                    st.stage
                );
            }
            let _ = writeln!(
                s,
                "tunscope_stage_latency_ns_count{{stage=\"{}\"}} {}",
                st.stage, st.latency_ns.count
            );
        }
        metric(
            &mut s,
            "tunscope_kernel_rx_drops_total",
            "counter",
            "Datagrams dropped by the kernel at the UDP socket.",
        );
        let _ = writeln!(s, "tunscope_kernel_rx_drops_total {}", self.kernel_rx_drops);
        metric(&mut s, "tunscope_peers", "gauge", "Connected peers.");
        let _ = writeln!(s, "tunscope_peers {}", self.peers.len());
        let c = &self.totals.control;
        metric(
            &mut s,
            "tunscope_handshakes_total",
            "counter",
            "Completed handshakes.",
        );
        let _ = writeln!(s, "tunscope_handshakes_total {}", c.handshakes);
        metric(
            &mut s,
            "tunscope_renegotiations_total",
            "counter",
            "Completed renegotiations.",
        );
        let _ = writeln!(s, "tunscope_renegotiations_total {}", c.renegotiations);
        metric(
            &mut s,
            "tunscope_key_failures_total",
            "counter",
            "Failed key negotiations.",
        );
        let _ = writeln!(s, "tunscope_key_failures_total {}", c.failures);
        s
    }
}
