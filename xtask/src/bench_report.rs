//! What `cargo xtask bench tunnel` leaves behind besides its terminal table: `bench.json` (the
//! whole run: machine, parameters, every repetition), `bench.csv` (one line per repetition,
//! for trend tracking across commits) and `bench.html` (throughput bars with every repetition
//! visible and the median marked, CPU per side, per-stage time shares, scaling over cores).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use tunscope_harness::html::{self, BarRow, esc, table, td, td_num};
use tunscope_proto::stage::Stage;

/// The data-path stages in order, as the shares are listed.
fn stage_name(k: usize) -> &'static str {
    Stage::DATA_PATH.get(k).map_or("?", |s| s.name())
}

/// One repetition of one path.
#[derive(Clone, Debug, Serialize)]
pub struct Rep {
    /// Throughput, Gbit/s (clients summed).
    pub gbps: f64,
    /// TCP retransmissions iperf3 counted.
    pub retransmits: u64,
    /// User and system CPU (% of one core): client(s), server.
    pub cpu: [(f64, f64); 2],
    /// Our engines' busy time per stage over the run (ns): client, server; none for stock.
    pub stages: [Option<[u64; 6]>; 2],
    /// Idle ping round trip (ms).
    pub rtt_ms: f64,
    /// Ping round trip with the path's processes and ping on one core, 2 ms apart (ms).
    pub rtt_one_core_ms: f64,
}

/// One path measured at one core count.
#[derive(Clone, Debug, Serialize)]
pub struct PathResult {
    /// Short key (`veth`, `stock`, `client`, `server`, `both`).
    pub key: String,
    /// What it is (`tunscope client ↔ openvpn server`).
    pub label: String,
    /// CPUs the whole measurement was confined to.
    pub cores: usize,
    /// Our server's receive threads.
    pub threads: usize,
    /// Our clients' receive threads (`--rx-threads`).
    pub client_rx_threads: usize,
    /// Every repetition.
    pub reps: Vec<Rep>,
}

impl PathResult {
    /// Median of a figure over the repetitions.
    pub fn median(&self, f: impl Fn(&Rep) -> f64) -> f64 {
        let mut v: Vec<f64> = self.reps.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The repetition at the median throughput.
    pub fn median_rep(&self) -> Option<&Rep> {
        let mut order: Vec<&Rep> = self.reps.iter().collect();
        order.sort_by(|a, b| a.gbps.total_cmp(&b.gbps));
        order.get(order.len() / 2).copied()
    }
}

/// The machine a run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// `openvpn --version`, first line.
    pub openvpn: String,
    /// `iperf3 --version`, first line.
    pub iperf3: String,
    /// The commit measured (`git describe --always --dirty`).
    pub commit: String,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

impl Machine {
    /// This machine, read from /proc and the tools' own version lines.
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            openvpn: first_line("openvpn", &["--version"]),
            iperf3: first_line("iperf3", &["--version"]),
            commit: first_line("git", &["describe", "--always", "--dirty"]),
        }
    }
}

/// One path's scaling over the core counts measured.
#[derive(Clone, Debug)]
pub struct ScalingRow {
    /// The path.
    pub label: String,
    /// Median Gbit/s at each core count, ascending.
    pub gbps: Vec<f64>,
    /// Amdahl's serial fraction and the speedup predicted on 16 cores.
    pub fit: Option<(f64, f64)>,
}

/// A whole `bench tunnel` run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRun {
    /// Seconds since the epoch at the start.
    pub started_unix: u64,
    /// The machine.
    pub machine: Machine,
    /// `UDP`/`TCP` tunnel transport.
    pub proto: String,
    /// Data cipher.
    pub cipher: String,
    /// Seconds per repetition.
    pub seconds: u64,
    /// iperf3 streams per client.
    pub streams: u32,
    /// Clients at once.
    pub clients: usize,
    /// `upload` (clients → server, the default) or `download` (`--reverse`: iperf3 -R,
    /// the server's send side at work).
    pub direction: String,
    /// Every path at every core count, in the order measured.
    pub paths: Vec<PathResult>,
}

/// Amdahl's law fitted to a speedup `s` on `n` cores: the serial fraction, and from it the
/// speedup predicted on `target` cores. `None` when there is nothing to fit (one core, or a
/// speedup outside (1, n]).
pub fn amdahl(n: usize, s: f64, target: usize) -> Option<(f64, f64)> {
    if n < 2 || !(s > 1.0 && s <= n as f64 + 1e-9) {
        return None;
    }
    let n = n as f64;
    let serial = ((n / s) - 1.0) / (n - 1.0);
    let predicted = 1.0 / (serial + (1.0 - serial) / target as f64);
    Some((serial, predicted))
}

impl BenchRun {
    fn find(&self, key: &str, cores: usize) -> Option<&PathResult> {
        self.paths.iter().find(|p| p.key == key && p.cores == cores)
    }

    /// The core counts measured, ascending.
    pub fn core_counts(&self) -> Vec<usize> {
        let mut c: Vec<usize> = self.paths.iter().map(|p| p.cores).collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    /// Scaling rows: per path, median Gbit/s at each core count, the speedup at the most
    /// cores over one, and Amdahl's prediction for 16 cores.
    pub fn scaling(&self) -> Vec<ScalingRow> {
        let cores = self.core_counts();
        let (Some(&lo), Some(&hi)) = (cores.first(), cores.last()) else {
            return vec![];
        };
        if lo != 1 || hi == 1 {
            return vec![];
        }
        let mut keys: Vec<&str> = vec![];
        for p in &self.paths {
            if !keys.contains(&p.key.as_str()) {
                keys.push(&p.key);
            }
        }
        keys.iter()
            .filter_map(|k| {
                let figures: Vec<f64> = cores
                    .iter()
                    .map(|c| self.find(k, *c).map_or(f64::NAN, |p| p.median(|r| r.gbps)))
                    .collect();
                let label = self.find(k, lo)?.label.clone();
                let fit = amdahl(hi, figures.last()? / figures.first()?, 16);
                Some(ScalingRow {
                    label,
                    gbps: figures,
                    fit,
                })
            })
            .collect()
    }

    /// `bench.csv`: one line per repetition.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "started_unix,commit,proto,cipher,streams,clients,path,cores,threads,rep,gbps,retransmits,client_cpu_user,client_cpu_sys,server_cpu_user,server_cpu_sys,rtt_ms,rtt_one_core_ms",
        );
        for side in ["client", "server"] {
            for st in Stage::DATA_PATH.map(|s| s.name()) {
                let _ = write!(s, ",{side}_{st}_busy_ns");
            }
        }
        s.push('\n');
        for p in &self.paths {
            for (i, r) in p.reps.iter().enumerate() {
                let _ = write!(
                    s,
                    "{},{},{},{},{},{},{},{},{},{},{:.4},{},{:.1},{:.1},{:.1},{:.1},{:.4},{:.4}",
                    self.started_unix,
                    self.machine.commit,
                    self.proto,
                    self.cipher,
                    self.streams,
                    self.clients,
                    p.key,
                    p.cores,
                    p.threads,
                    i + 1,
                    r.gbps,
                    r.retransmits,
                    r.cpu[0].0,
                    r.cpu[0].1,
                    r.cpu[1].0,
                    r.cpu[1].1,
                    r.rtt_ms,
                    r.rtt_one_core_ms
                );
                for side in &r.stages {
                    for k in 0..6 {
                        let _ = write!(s, ",{}", side.map_or(String::new(), |b| b[k].to_string()));
                    }
                }
                s.push('\n');
            }
        }
        s
    }

    /// `bench.html`.
    pub fn html(&self) -> String {
        let m = &self.machine;
        let mut b = format!(
            "<h1>tunscope bench: TCP through the tunnel</h1>\
             <p class=\"machine\">{} · {} CPUs · {:.1} GiB · Linux {} · {} · {} · commit {}</p>\
             <p>{} tunnel, {}, {} client(s) × iperf3 {} stream(s) ({}), {} s per repetition; bars at the median, a dot per repetition, the tick at the median.</p>",
            esc(&m.cpu),
            m.cpus,
            m.memory_gib,
            esc(&m.kernel),
            esc(&m.openvpn),
            esc(&m.iperf3),
            esc(&m.commit),
            esc(&self.proto),
            esc(&self.cipher),
            self.clients,
            self.streams,
            esc(&self.direction),
            self.seconds
        );
        let many_cores = self.core_counts().len() > 1;
        let name = |p: &PathResult| {
            if many_cores {
                format!("{} · {} core(s)", p.label, p.cores)
            } else {
                p.label.clone()
            }
        };
        b.push_str("<h2>Throughput</h2>");
        let rows: Vec<BarRow> = self
            .paths
            .iter()
            .map(|p| BarRow {
                label: name(p),
                values: p.reps.iter().map(|r| r.gbps).collect(),
                bar: p.median(|r| r.gbps),
            })
            .collect();
        b.push_str(&html::bar_chart("throughput", &rows, "Gbit/s"));
        let reference = |key: &str, cores: usize| {
            self.find(key, cores)
                .map_or(f64::NAN, |p| p.median(|r| r.gbps))
        };
        let rows: Vec<Vec<String>> = self
            .paths
            .iter()
            .map(|p| {
                let g = p.median(|r| r.gbps);
                let tunnel = p.key != "veth";
                let cpu = |i: usize| {
                    if tunnel {
                        format!(
                            "{:.0} / {:.0}",
                            p.median(|r| r.cpu[i].0),
                            p.median(|r| r.cpu[i].1)
                        )
                    } else {
                        "n/a".into()
                    }
                };
                let reps: Vec<String> = p.reps.iter().map(|r| format!("{:.3}", r.gbps)).collect();
                vec![
                    td(&name(p)),
                    td_num(&format!("{g:.3}")),
                    td(&reps.join(", ")),
                    td_num(&format!("{:.2}×", g / reference("stock", p.cores))),
                    td_num(&format!("{:.3}", g / reference("veth", p.cores))),
                    td_num(&cpu(0)),
                    td_num(&cpu(1)),
                    td_num(&format!("{:.3}", p.median(|r| r.rtt_ms))),
                    td_num(&format!("{:.3}", p.median(|r| r.rtt_one_core_ms))),
                    td_num(
                        &p.reps
                            .iter()
                            .map(|r| r.retransmits)
                            .sum::<u64>()
                            .to_string(),
                    ),
                ]
            })
            .collect();
        b.push_str(&table(
            "paths",
            &[
                "path",
                "median Gbit/s",
                "every repetition",
                "vs stock↔stock",
                "of plain veth",
                "client CPU user / sys (% core)",
                "server CPU user / sys",
                "ping RTT ms idle",
                "ping RTT ms on one core",
                "retransmits",
            ],
            &rows,
        ));
        b.push_str("<p class=\"muted\">Ping RTT idle: 20 echo requests 200 ms apart, each thread where the scheduler puts it (on a small virtual machine mostly the cost of waking threads across cores). On one core: the path's processes and ping confined to one CPU, 500 requests 2 ms apart (ping yields rather than sleeps, the core never idles): the tunnel's own work per round trip.</p>");
        b.push_str("<h2>Where the time goes</h2><p class=\"muted\">Each of our engines' data-path time split over its stages (its own probes, the median repetition). Stock openvpn has no probes.</p>");
        b.push_str(&self.shares());
        let scaling = self.scaling();
        if !scaling.is_empty() {
            let cores = self.core_counts();
            let mut head = vec!["path".to_owned()];
            head.extend(cores.iter().map(|c| format!("{c} core(s) Gbit/s")));
            head.extend([
                "speedup".to_owned(),
                "serial fraction (Amdahl)".to_owned(),
                "predicted on 16 cores".to_owned(),
            ]);
            let rows: Vec<Vec<String>> = scaling
                .iter()
                .map(
                    |ScalingRow {
                         label,
                         gbps: figs,
                         fit,
                     }| {
                        let mut r = vec![td(label)];
                        r.extend(figs.iter().map(|g| td_num(&format!("{g:.3}"))));
                        let speedup = figs.last().copied().unwrap_or(f64::NAN)
                            / figs.first().copied().unwrap_or(f64::NAN);
                        r.push(td_num(&format!("{speedup:.2}×")));
                        match fit {
                            Some((serial, pred)) => {
                                r.push(td_num(&format!("{serial:.2}")));
                                r.push(td_num(&format!(
                                    "{:.3} Gbit/s ({pred:.2}×)",
                                    figs.first().copied().unwrap_or(f64::NAN) * pred
                                )));
                            }
                            None => {
                                r.push(td("no fit (no speedup)"));
                                r.push(td("—"));
                            }
                        }
                        r
                    },
                )
                .collect();
            let head: Vec<&str> = head.iter().map(String::as_str).collect();
            b.push_str("<h2>Scaling over cores</h2><p class=\"muted\">The whole measurement (engines, openvpn, iperf3) confined to the first N CPUs; our server with N receive threads. The prediction fits Amdahl's law to the speedup at the most cores measured: a two-point fit, to be checked on a bigger machine.</p>");
            b.push_str(&table("scaling", &head, &rows));
        }
        b.push_str("<p class=\"muted\">The same figures: bench.json (everything), bench.csv (a line per repetition).</p>");
        html::page("tunscope bench", &b)
    }

    /// Stacked bars of stage shares, one per engine side with probes.
    fn shares(&self) -> String {
        const W: f64 = 600.0;
        const LABEL_W: f64 = 330.0;
        const ROW_H: f64 = 24.0;
        const COLOURS: [&str; 6] = [
            "#3b7dd8", "#7fb0ea", "#2f9e6e", "#87d0ac", "#e0832b", "#f0bd85",
        ];
        let many_cores = self.core_counts().len() > 1;
        let mut rows = vec![];
        for p in &self.paths {
            let Some(rep) = p.median_rep() else { continue };
            for (i, side) in ["client", "server"].iter().enumerate() {
                if let Some(busy) = rep.stages[i] {
                    let label = if many_cores {
                        format!("{} · {side} · {} core(s)", p.label, p.cores)
                    } else {
                        format!("{} · {side}", p.label)
                    };
                    rows.push((label, busy, p.cores));
                }
            }
        }
        if rows.is_empty() {
            return "<p class=\"na\">No engine of ours in this run.</p>".into();
        }
        let h = ROW_H * rows.len() as f64 + 30.0;
        let mut s = format!(
            "<svg class=\"shares\" width=\"{}\" height=\"{h}\" viewBox=\"0 0 {} {h}\" role=\"img\">",
            LABEL_W + W + 10.0,
            LABEL_W + W + 10.0
        );
        for (i, (label, busy, _)) in rows.iter().enumerate() {
            let y = i as f64 * ROW_H + 2.0;
            let total: u64 = busy.iter().sum();
            let _ = write!(
                s,
                "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"12\">{}</text>",
                LABEL_W - 8.0,
                y + ROW_H * 0.6,
                esc(label)
            );
            let mut x = LABEL_W;
            for (k, b) in busy.iter().enumerate() {
                let share = if total == 0 {
                    0.0
                } else {
                    *b as f64 / total as f64
                };
                let w = share * W;
                let _ = write!(
                    s,
                    "<rect class=\"share\" data-stage=\"{}\" data-share=\"{share:.3}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"{}\"><title>{} {:.0}%</title></rect>",
                    stage_name(k),
                    ROW_H - 6.0,
                    COLOURS[k],
                    stage_name(k),
                    share * 100.0
                );
                if share >= 0.07 {
                    let _ = write!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#fff\">{:.0}%</text>",
                        x + 3.0,
                        y + ROW_H * 0.55,
                        share * 100.0
                    );
                }
                x += w;
            }
        }
        let y = rows.len() as f64 * ROW_H + 18.0;
        let mut x = LABEL_W;
        for (k, st) in Stage::DATA_PATH.map(|s| s.name()).iter().enumerate() {
            let _ = write!(
                s,
                "<rect x=\"{x:.0}\" y=\"{:.0}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.0}\" y=\"{y:.0}\" font-size=\"11\">{st}</text>",
                y - 9.0,
                COLOURS[k],
                x + 13.0
            );
            x += 95.0;
        }
        s.push_str("</svg>");
        s
    }

    /// Writes `bench.json`, `bench.csv` and `bench.html` into `dir`; the page's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let w = |name: &str, text: String| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
            Ok(p)
        };
        w("bench.json", serde_json::to_string_pretty(self)?)?;
        w("bench.csv", self.csv())?;
        w("bench.html", self.html())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunscope_harness::html::browser::{count, dump_dom, screenshot};

    fn path(key: &str, label: &str, cores: usize, gbps: &[f64], probes: bool) -> PathResult {
        PathResult {
            key: key.into(),
            label: label.into(),
            cores,
            threads: cores,
            client_rx_threads: 1,
            reps: gbps
                .iter()
                .map(|g| Rep {
                    gbps: *g,
                    retransmits: 2,
                    cpu: [(60.0, 30.0), (50.0, 40.0)],
                    stages: [
                        probes.then_some([10, 40, 30, 5, 10, 5]),
                        probes.then_some([5, 10, 5, 30, 40, 10]),
                    ],
                    rtt_ms: 0.2,
                    rtt_one_core_ms: 0.05,
                })
                .collect(),
        }
    }

    #[test]
    fn amdahl_fits_and_predicts() {
        // Perfect scaling: no serial part, 16× on 16 cores.
        let (s, p) = amdahl(2, 2.0, 16).expect("fits");
        assert!(s.abs() < 1e-9 && (p - 16.0).abs() < 1e-9);
        // 1.5× on 2 cores: a third serial, at most 3× ever.
        let (s, p) = amdahl(2, 1.5, 16).expect("fits");
        assert!((s - 1.0 / 3.0).abs() < 1e-9, "{s}");
        assert!(p < 3.0 && p > 2.5, "{p}");
        assert!(amdahl(2, 0.9, 16).is_none());
        assert!(amdahl(1, 1.0, 16).is_none());
    }

    /// The page, opened in headless Chromium: a bar per path with a dot per repetition and
    /// the median tick, the machine description, stage shares per engine side, the scaling
    /// table; the CSV has a line per repetition.
    #[test]
    fn the_bench_page_shows_every_repetition_and_where_the_time_goes() {
        let run = BenchRun {
            started_unix: 1,
            machine: Machine::this(),
            proto: "Udp".into(),
            cipher: "AES-256-GCM".into(),
            seconds: 10,
            streams: 1,
            clients: 1,
            direction: "upload".into(),
            paths: vec![
                path("veth", "veth (no tunnel)", 1, &[20.0, 21.0, 19.0], false),
                path("stock", "openvpn ↔ openvpn", 1, &[0.3, 0.31, 0.29], false),
                path("both", "tunscope ↔ tunscope", 1, &[1.0, 1.1, 0.9], true),
                path("veth", "veth (no tunnel)", 2, &[30.0, 31.0, 29.0], false),
                path("stock", "openvpn ↔ openvpn", 2, &[0.3, 0.3, 0.3], false),
                path("both", "tunscope ↔ tunscope", 2, &[1.5, 1.6, 1.4], true),
            ],
        };
        assert_eq!(run.csv().lines().count(), 1 + 18);
        assert!(
            run.csv()
                .lines()
                .nth(4)
                .is_some_and(|l| l.contains(",stock,1,1,"))
        );
        let dir = std::env::temp_dir().join(format!("tunscope-bench-page-{}", std::process::id()));
        let page = run.write(&dir).expect("written");
        let dom = dump_dom(&page).expect("chromium reads the page");
        assert_eq!(count(&dom, "rect", &["class=\"bar\""]), 6);
        assert_eq!(count(&dom, "circle", &["class=\"rep\""]), 18);
        assert_eq!(count(&dom, "line", &["class=\"median\""]), 6);
        assert!(
            dom.contains("data-label=\"tunscope ↔ tunscope · 2 core(s)\" data-value=\"1.5000\"")
        );
        // Two sides of ours at two core counts, six stages each.
        assert_eq!(count(&dom, "rect", &["class=\"share\""]), 24);
        assert!(dom.contains("data-stage=\"encrypt\" data-share=\"0.400\""));
        assert!(dom.contains(&esc(&run.machine.kernel)));
        assert!(dom.contains("Scaling over cores"));
        // 1.0 → 1.5 Gbit/s: 1.50×, a third serial.
        assert!(
            dom.contains("1.50×") && dom.contains(">0.33<"),
            "scaling row"
        );
        let bytes = screenshot(&page, &dir.join("bench.png"), 1400).expect("screenshot");
        assert!(bytes > 20_000, "{bytes}-byte screenshot");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
