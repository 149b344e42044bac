//! `meshgate-cli`: the client commands (`pub`, `sub`, `call`, `serve-echo`) and the load
//! generator (`bench`), apart from the gateway (`meshgate serve`), as the `nats` CLI is apart
//! from nats-server: they run the client library on Tokio and quinn, which the gateway does
//! not link.

mod args;
mod bench;
mod commands;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "meshgate-cli",
    version,
    about = "Client commands and load scenarios for a meshgate gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Client(commands::ClientCommand),
    /// Drives a gateway with a load scenario and reports rates and latencies.
    Bench(bench::BenchArgs),
    /// Measures this machine's QUIC ceiling, the benchmark report's baseline: a bare quiche
    /// echo server on one core, clients on another, round trips per second.
    QuicEcho(bench::quic_echo::QuicEchoArgs),
    /// Measures how long this machine keeps a busy thread on each core from running (other
    /// threads, the hypervisor's steal, interrupts): the benchmark report's measure of the
    /// machine's own stalls, beside its latencies.
    Stalls(bench::stalls::StallsArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version (stdout, status 0), and the help for a bare `meshgate-cli`.
        Err(e)
            if !e.use_stderr()
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        // One line on stderr, as for every other error (clap's own rendering adds a blank
        // line, a tip and the usage).
        Err(e) => {
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            let line = first.join(" ");
            eprintln!(
                "meshgate-cli: {}",
                line.strip_prefix("error: ").unwrap_or(&line)
            );
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Client(command) => commands::run(command),
        Command::Bench(args) => bench::run(args),
        Command::QuicEcho(args) => bench::quic_echo::run(&args),
        Command::Stalls(args) => bench::stalls::run(&args),
    };
    if let Err(e) = result {
        eprintln!("meshgate-cli: {e}");
        std::process::exit(1);
    }
}
