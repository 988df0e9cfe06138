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
    /// Parse a client config and report errors (file:line) and ignored options.
    CheckConfig {
        /// The config file.
        config: PathBuf,
    },
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
        Command::CheckConfig { config } => tunscope_engine::client::load_config(&config).map(|c| {
            println!(
                "{}: OK ({} remote(s), {} warning(s))",
                config.display(),
                c.remotes.len(),
                c.warnings.len()
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
