//! The `meshgate` command.

mod cli;
mod driver;
mod gateway;
mod health;
mod net;
mod ratelog;
mod refuse;
mod tls;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Serve(args) => gateway::serve(args),
    };
    if let Err(e) = result {
        eprintln!("meshgate: {e}");
        std::process::exit(1);
    }
}
