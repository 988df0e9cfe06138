//! The `tunscope` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tunscope_engine::capdiff::DiffOutcome;
use tunscope_engine::observe::ObserveOptions;

#[derive(Parser)]
#[command(
    name = "tunscope",
    version,
    about = "Packet-flow observatory and OpenVPN-compatible VPN engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The observatory's options, shared by client and server.
#[derive(Args, Clone, Debug, Default)]
struct Observe {
    /// Write stage taps (one interface per stage) to this pcapng file.
    #[arg(long, value_name = "FILE.pcapng")]
    capture: Option<PathBuf>,
    /// Keep one data packet in N in the capture (`1/N` or `N`; chosen by packet-id, so both
    /// ends keep the same packets). Control packets are always kept.
    #[arg(long, value_name = "1/N", default_value = "1", value_parser = parse_sample)]
    capture_sample: u32,
    /// Stop writing the capture after this many MiB (0 = no limit).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    capture_max_mb: u64,
    /// Host name in the capture's interface names (default: client / server).
    #[arg(long, value_name = "NAME")]
    capture_name: Option<String>,
    /// Serve live statistics on this Unix socket (read with `tunscope stats PATH`).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, value_name = "ADDR")]
    prometheus: Option<SocketAddr>,
}

/// Normalization and tolerance options of `diff` and `normalize`.
#[derive(Args, Clone, Debug, Default)]
struct Compare {
    /// Also mask this field (repeatable), e.g. `size`, `ip.ttl`, `dns.msg`.
    #[arg(long, value_name = "FIELD")]
    mask: Vec<String>,
    /// Compare a field masked by default (repeatable), e.g. `ip.id`, `tcp.seq`, `ovpn.pid`.
    #[arg(long, value_name = "FIELD")]
    unmask: Vec<String>,
    /// Treat this port as a service port, not ephemeral (repeatable).
    #[arg(long, value_name = "PORT")]
    service_port: Vec<u16>,
    /// Every packet is an event (no bulk counting) and counts must match exactly.
    #[arg(long)]
    exact: bool,
    /// Timing: report a packet whose delay after the previous packet of its flow changed by
    /// more than MS (default 1000)…
    #[arg(long, value_name = "MS")]
    time_tolerance: Option<f64>,
    /// …and by more than this factor (default 10; 1 = the tolerance alone).
    #[arg(long, value_name = "FACTOR")]
    time_factor: Option<f64>,
    /// Also compare bulk volume (data packets, ACKs): largest difference of a direction's
    /// bytes relative to the flow's (e.g. 0.5). Off by default: ACK counts vary between runs.
    #[arg(long, value_name = "FRACTION")]
    count_tolerance: Option<f64>,
    /// Go on when records of a capture could not be read (they are reported all the same).
    #[arg(long)]
    allow_partial: bool,
    /// Decode this port's UDP/TCP payload as OpenVPN (repeatable; 1194 always is, and
    /// OpenVPN on other ports is recognised by its handshake).
    #[arg(long, value_name = "PORT")]
    openvpn_port: Vec<u16>,
    /// tshark's form of --openvpn-port: `udp.port==1195,openvpn` (repeatable).
    #[arg(long, value_name = "LAYER==PORT,openvpn", value_parser = parse_decode_as)]
    decode_as: Vec<u16>,
}

/// `udp.port==N,openvpn` / `tcp.port==N,openvpn` → N.
fn parse_decode_as(s: &str) -> Result<u16, String> {
    let err = || format!("'{s}' is not udp.port==N,openvpn or tcp.port==N,openvpn");
    let (sel, proto) = s.split_once(',').ok_or_else(err)?;
    if proto.trim() != "openvpn" {
        return Err(format!("{s}: only openvpn can be decoded as"));
    }
    let port = sel
        .trim()
        .strip_prefix("udp.port==")
        .or_else(|| sel.trim().strip_prefix("tcp.port=="))
        .ok_or_else(err)?;
    port.trim().parse().map_err(|_| err())
}

impl From<Compare> for tunscope_engine::capdiff::CompareOptions {
    fn from(c: Compare) -> Self {
        tunscope_engine::capdiff::CompareOptions {
            mask: c.mask,
            unmask: c.unmask,
            service_ports: c.service_port,
            exact: c.exact,
            time_tolerance_ms: c.time_tolerance,
            time_factor: c.time_factor,
            count_tolerance: c.count_tolerance,
            allow_partial: c.allow_partial,
            openvpn_ports: c.openvpn_port.into_iter().chain(c.decode_as).collect(),
        }
    }
}

fn parse_sample(s: &str) -> Result<u32, String> {
    let n = s.strip_prefix("1/").unwrap_or(s);
    match n.parse::<u32>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("'{s}' is not 1/N with N ≥ 1")),
    }
}

impl From<Observe> for ObserveOptions {
    fn from(o: Observe) -> ObserveOptions {
        ObserveOptions {
            capture: o.capture,
            capture_sample: o.capture_sample,
            capture_max_mb: o.capture_max_mb,
            capture_name: o.capture_name,
            control: o.control,
            prometheus: o.prometheus,
            ethernet: false,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Connect to an OpenVPN 2.6 server using an OpenVPN client config file and/or OpenVPN
    /// options after `--` (`tunscope client --config c.conf -- --remote vpn.example 1194`).
    Client {
        /// The config file (OpenVPN syntax).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not use tun TSO/GRO offload.
        #[arg(long)]
        no_offload: bool,
        /// Send threads: the tun device gets as many queues, the kernel spreads flows over
        /// them and each thread seals its own (several flows on several cores); 0 = one
        /// per core.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Receive threads over UDP: they share the one socket, decrypt batches side by
        /// side and deliver them in arrival order (for machines with cores to spare: on
        /// two cores shared with the load it was no faster); 0 = one per core. A TCP
        /// link keeps one.
        #[arg(long, default_value_t = 1)]
        rx_threads: usize,
        /// How pushed DNS is applied: none, resolv-conf (rewrite /etc/resolv.conf), stub
        /// (split-DNS forwarder on 127.0.0.1:53), resolved (systemd-resolved over D-Bus:
        /// the tunnel's link gets the pushed servers and domains), or dnsmasq (a dnsmasq on
        /// 127.0.0.1:53 with per-domain servers, as NetworkManager's dns=dnsmasq).
        #[arg(long, value_name = "BACKEND", default_value = "none")]
        dns_backend: tunscope_engine::netconfig::DnsBackend,
        /// While the tunnel is up, drop everything that would leave another interface than
        /// the tunnel, except the tunnel's own packets to the server and DHCP (nftables;
        /// against routes the tunnel does not control: rogue DHCP option 121, LocalNet).
        #[arg(long)]
        kill_switch: bool,
        /// Record applied routes/DNS here so a crashed run is undone at the next start.
        #[arg(long, value_name = "FILE")]
        state_file: Option<PathBuf>,
        #[command(flatten)]
        observe: Observe,
        /// OpenVPN options on top of the file, as stock openvpn takes them (after `--`).
        #[arg(last = true, value_name = "OPENVPN-OPTIONS")]
        options: Vec<String>,
    },
    /// Serve OpenVPN 2.6 clients using an OpenVPN server config file and/or OpenVPN options
    /// after `--`.
    Server {
        /// The config file (OpenVPN syntax).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not use tun TSO/GRO offload.
        #[arg(long)]
        no_offload: bool,
        /// Receive threads over UDP: one socket each on the same port (SO_REUSEPORT), the
        /// kernel spreading clients over them by address; 0 = one per core.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[command(flatten)]
        observe: Observe,
        /// OpenVPN options on top of the file, as stock openvpn takes them (after `--`).
        #[arg(last = true, value_name = "OPENVPN-OPTIONS")]
        options: Vec<String>,
    },
    /// Show the live statistics of a running engine (its `--control` socket).
    Stats {
        /// The control socket.
        path: PathBuf,
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
        /// Print Prometheus text.
        #[arg(long, conflicts_with = "json")]
        prometheus: bool,
    },
    /// Print packet journeys and the per-stage latency breakdown from stage captures.
    Trace {
        /// pcapng files written with `--capture` (one per host, or merged).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// How many journeys to print in detail.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Print all journeys as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The kill switch as OpenVPN's `up`/`down` script (for stock `openvpn`): `up` lets only
    /// the tunnel device and the server's address carry traffic, `down` removes it.
    KillSwitch {
        /// Arguments OpenVPN appends (device, MTU, …); ignored, the environment has it all.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        openvpn_args: Vec<String>,
    },
    /// Apply pushed DNS as OpenVPN's `up`/`down` script (for stock `openvpn`):
    /// `up "tunscope dns --backend stub --state-file F"` and the same as `down`.
    Dns {
        /// resolv-conf, stub, resolved or dnsmasq.
        #[arg(long, value_name = "BACKEND")]
        backend: tunscope_engine::netconfig::DnsBackend,
        /// Records what was changed, for `down` and crash recovery.
        #[arg(long, value_name = "FILE")]
        state_file: PathBuf,
        /// Internal: run the stub daemon.
        #[arg(long, hide = true)]
        serve: bool,
        /// Arguments OpenVPN appends (device, MTU, …); ignored, the environment has it all.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        openvpn_args: Vec<String>,
    },
    /// Compare two captures semantically (flow by flow, packets aligned). Exit status 0 when
    /// equivalent, 1 when different, 2 on error.
    Diff {
        /// First capture (pcap or pcapng).
        a: PathBuf,
        /// Second capture.
        b: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Write the differing packets of both captures, with comments, to this pcapng.
        #[arg(long, value_name = "OUT.pcapng")]
        write_pcapng: Option<PathBuf>,
        #[command(flatten)]
        compare: Compare,
    },
    /// Print a capture's normalized events (what `diff` compares).
    Normalize {
        /// The capture (pcap or pcapng).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print the flow summary instead (what golden snapshots hold).
        #[arg(long)]
        summary: bool,
        #[command(flatten)]
        compare: Compare,
    },
    /// Generate a key file, as `openvpn --genkey`: `secret`/`tls-auth`/`tls-crypt` (static
    /// key), `tls-crypt-v2-server`, `tls-crypt-v2-client` (needs --server-key).
    Genkey {
        /// Key type.
        #[arg(value_parser = ["secret", "tls-auth", "tls-crypt", "tls-crypt-v2-server", "tls-crypt-v2-client"])]
        kind: String,
        /// Output file (refused if it exists).
        file: PathBuf,
        /// The tls-crypt-v2 server key that wraps a client key.
        #[arg(long, value_name = "FILE")]
        server_key: Option<PathBuf>,
        /// tls-crypt-v2 client metadata (bytes, stored as user metadata; default: the time).
        #[arg(long, value_name = "TEXT")]
        metadata: Option<String>,
    },
    /// Parse a client or server config and report errors (file:line) and ignored options.
    CheckConfig {
        /// The config file.
        config: Option<PathBuf>,
        /// OpenVPN options on top of the file (after `--`).
        #[arg(last = true, value_name = "OPENVPN-OPTIONS")]
        options: Vec<String>,
        /// Show the effective options after defaults and what the engine will do with them.
        #[arg(long)]
        explain: bool,
        /// The same as JSON (also for errors: `{"accepted": false, "error": {…}}`).
        #[arg(long)]
        json: bool,
    },
}

/// Checks a config as a server config when it reads like one (`server`, `mode server`,
/// `tls-server` alone), else as a client; `--explain`/`--json` show how it is read.
fn check_config(
    path: Option<&std::path::Path>,
    options: &[String],
    explain: bool,
    json: bool,
) -> anyhow::Result<()> {
    use tunscope_engine::explain;
    use tunscope_proto::options::Role;
    use tunscope_proto::options::client::ClientConfig;
    use tunscope_proto::options::server::ServerConfig;
    let sources = tunscope_engine::setup::config_sources(path, options)?;
    let all: Vec<_> = sources
        .iter()
        .flat_map(|s| s.directives.iter().cloned())
        .collect();
    let file = path.map_or("command line".to_owned(), |p| p.display().to_string());
    let parsed = match Role::detect(&all) {
        Role::Server => ServerConfig::from_sources(&sources).map(|c| explain::server(&c)),
        Role::Client => ClientConfig::from_sources(&sources).map(|c| explain::client(&c)),
    };
    let e = match parsed {
        Ok(e) => e,
        Err(err) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "file": file,
                        "accepted": false,
                        "error": {"line": err.line, "message": err.message},
                    })
                );
            }
            return Err(err.into());
        }
    };
    if json {
        println!("{:#}", e.json(&file));
    } else if explain {
        print!("{}", e.text(&file));
    } else {
        for w in &e.warnings {
            eprintln!("{file}:{}: warning: {}", w.line, w.message);
        }
        println!("{file}: OK ({}, {} warning(s))", e.role, e.warnings.len());
    }
    Ok(())
}

/// `tunscope genkey`: the same key files `openvpn --genkey` writes.
fn genkey(
    kind: &str,
    file: &std::path::Path,
    server_key: Option<&std::path::Path>,
    metadata: Option<&str>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use tunscope_proto::tls_crypt_v2::{ClientKey, ServerKey};
    let text = match kind {
        "tls-crypt-v2-server" => ServerKey::generate().to_pem(),
        "tls-crypt-v2-client" => {
            let path = server_key.context("tls-crypt-v2-client needs --server-key FILE")?;
            let server = ServerKey::parse(&std::fs::read_to_string(path)?)
                .with_context(|| format!("{}", path.display()))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            ClientKey::generate(&server, metadata.map(str::as_bytes), now)?.to_pem()
        }
        _ => tunscope_proto::static_key::Key2(tunscope_proto::control::random_bytes()).to_pem(),
    };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create {}", file.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// `openvpn ARGS…`: OpenVPN's own command line, the role decided as OpenVPN does.
fn as_openvpn(args: Vec<String>) -> anyhow::Result<()> {
    use tunscope_proto::options::Role;
    if args.iter().any(|a| a == "--version") {
        println!(
            "OpenVPN 2.6.0 (tunscope {}) x86_64-pc-linux-gnu [SSL (rustls)] [LZO] [LZ4] [AEAD]",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(());
    }
    let sources = tunscope_engine::setup::config_sources(None, &args)?;
    let all: Vec<_> = sources
        .iter()
        .flat_map(|s| s.directives.iter().cloned())
        .collect();
    match Role::detect(&all) {
        Role::Server => tunscope_engine::server::run(&tunscope_engine::server::ServerOptions {
            config: PathBuf::new(),
            options: args,
            no_offload: false,
            threads: 1,
            observe: ObserveOptions::default(),
        }),
        Role::Client => tunscope_engine::client::run(&tunscope_engine::client::ClientOptions {
            config: PathBuf::new(),
            options: args,
            no_offload: false,
            observe: ObserveOptions::default(),
            dns: Default::default(),
            state_file: None,
            kill_switch: false,
            threads: 1,
            rx_threads: 1,
        }),
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUNSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    // Installed (or linked) as `openvpn`, tunscope takes OpenVPN's command line as is, so a
    // front-end that starts openvpn (NetworkManager, scripts) starts tunscope instead.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "openvpn")
    {
        return match as_openvpn(std::env::args().skip(1).collect()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tunscope (as openvpn): error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    // Commands that only print end quietly when their reader goes away (`| head`), like
    // other command-line tools; the VPN commands keep Rust's default (SIGPIPE ignored), as
    // a peer closing a TCP socket must not kill them.
    if matches!(
        cli.command,
        Command::CheckConfig { .. }
            | Command::Diff { .. }
            | Command::Normalize { .. }
            | Command::Trace { .. }
            | Command::Stats { .. }
    ) {
        // SAFETY: setting a signal disposition to its default at start, before any thread.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Diff {
            a,
            b,
            json,
            write_pcapng,
            compare,
        } => {
            return match tunscope_engine::capdiff::run_diff(
                &a,
                &b,
                &compare.into(),
                json,
                write_pcapng.as_ref(),
            ) {
                Ok(DiffOutcome::Equivalent) => ExitCode::SUCCESS,
                Ok(DiffOutcome::Different) => ExitCode::from(1),
                Ok(DiffOutcome::NoVerdict) => ExitCode::from(2),
                Err(e) => {
                    eprintln!("tunscope diff: error: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Normalize {
            file,
            json,
            summary,
            compare,
        } => tunscope_engine::capdiff::run_normalize(&file, &compare.into(), json, summary),
        Command::Client {
            config,
            no_offload,
            threads,
            rx_threads,
            dns_backend,
            kill_switch,
            state_file,
            observe,
            options,
        } => tunscope_engine::client::run(&tunscope_engine::client::ClientOptions {
            config: config.unwrap_or_default(),
            options,
            no_offload,
            observe: observe.into(),
            dns: dns_backend,
            state_file,
            kill_switch,
            threads,
            rx_threads,
        }),
        Command::KillSwitch { openvpn_args: _ } => tunscope_engine::killswitch::run_hook(),
        Command::Dns {
            backend,
            state_file,
            serve,
            openvpn_args: _,
        } => tunscope_engine::dns_script::run(&tunscope_engine::dns_script::DnsScriptOptions {
            backend,
            state_file,
            serve,
        }),
        Command::Server {
            config,
            no_offload,
            threads,
            observe,
            options,
        } => tunscope_engine::server::run(&tunscope_engine::server::ServerOptions {
            config: config.unwrap_or_default(),
            options,
            no_offload,
            threads,
            observe: observe.into(),
        }),
        Command::Stats {
            path,
            json,
            prometheus,
        } => tunscope_engine::control_socket::query(&path).and_then(|r| {
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if prometheus {
                print!("{}", r.prometheus());
            } else {
                print!("{}", r.table());
            }
            Ok(())
        }),
        Command::Trace { files, limit, json } => tunscope_engine::trace::run(&files, limit, json),
        Command::CheckConfig {
            config,
            options,
            explain,
            json,
        } => check_config(config.as_deref(), &options, explain, json),
        Command::Genkey {
            kind,
            file,
            server_key,
            metadata,
        } => genkey(&kind, &file, server_key.as_deref(), metadata.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
