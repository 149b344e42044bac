//! The `meshgate` command: the gateway (`meshgate serve`). The client commands and the load
//! generator are `meshgate-cli` (`cli/`).

mod cli;
mod driver;
mod endpoint;
mod gateway;
mod health;
mod mailbox;
mod mesh;
mod net;
mod ratelog;
mod refuse;
mod tls;

use clap::error::ErrorKind;
use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version (stdout, status 0), and the help for a bare `meshgate`.
        Err(e)
            if !e.use_stderr()
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        // One line on stderr, as for every start-up error (clap's own rendering adds a
        // blank line, a tip and the usage).
        Err(e) => {
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            let line = first.join(" ");
            eprintln!(
                "meshgate: {}",
                line.strip_prefix("error: ").unwrap_or(&line)
            );
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        cli::Command::Serve(args) => gateway::serve(args),
    };
    if let Err(e) = result {
        eprintln!("meshgate: {e}");
        std::process::exit(e.exit_status());
    }
}
