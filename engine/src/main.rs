//! The `tunscope` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

#[derive(Subcommand)]
enum Command {
    /// Connect to an OpenVPN 2.6 server using an OpenVPN client config file.
    Client {
        /// The config file (OpenVPN syntax).
        #[arg(long)]
        config: PathBuf,
        /// Do not use tun TSO/GRO offload.
        #[arg(long)]
        no_offload: bool,
    },
    /// Serve OpenVPN 2.6 clients using an OpenVPN server config file.
    Server {
        /// The config file (OpenVPN syntax).
        #[arg(long)]
        config: PathBuf,
        /// Do not use tun TSO/GRO offload.
        #[arg(long)]
        no_offload: bool,
    },
    /// Parse a client or server config and report errors (file:line) and ignored options.
    CheckConfig {
        /// The config file.
        config: PathBuf,
    },
}

/// Checks a config as a server config when it says `server`/`mode server`, else as a client.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let is_server = tunscope_proto::options::parse_directives(&text)
        .map(|ds| {
            ds.iter()
                .any(|d| d.name == "server" || (d.name == "mode" && d.arg(0) == Some("server")))
        })
        .unwrap_or(false);
    if is_server {
        let c = tunscope_engine::server::load_config(path)?;
        println!(
            "{}: OK (server, {} push option(s), {} warning(s))",
            path.display(),
            c.pushes.len(),
            c.warnings.len()
        );
    } else {
        let c = tunscope_engine::client::load_config(path)?;
        println!(
            "{}: OK (client, {} remote(s), {} warning(s))",
            path.display(),
            c.remotes.len(),
            c.warnings.len()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUNSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Client { config, no_offload } => {
            tunscope_engine::client::run(&tunscope_engine::client::ClientOptions {
                config,
                no_offload,
            })
        }
        Command::Server { config, no_offload } => {
            tunscope_engine::server::run(&tunscope_engine::server::ServerOptions {
                config,
                no_offload,
            })
        }
        Command::CheckConfig { config } => check_config(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
