//! Client commands for people at a terminal: `pub`, `sub`, `call`, `serve-echo`.

use clap::Args;

/// Flags every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The gateway's QUIC address.
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub server: std::net::SocketAddr,
    /// The realm to join.
    #[arg(long, default_value = "macula.default")]
    pub realm: String,
    /// The realm's token, if it has tokens.
    #[arg(long)]
    pub token: Option<String>,
    /// Accept any certificate (the gateway's default one is self-signed).
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    pub topic: String,
    pub payload: String,
}

#[derive(Args, Debug, Clone)]
pub struct SubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(required = true)]
    pub patterns: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    pub procedure: String,
    /// Arguments as JSON.
    #[arg(default_value = "null")]
    pub args: String,
}

#[derive(Args, Debug, Clone)]
pub struct ServeEchoArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    pub procedure: String,
}

/// Runs a client command; the error is one line for the terminal.
pub fn run(command: crate::cli::Command) -> Result<(), String> {
    let _ = command;
    Err("client commands are not available in this build".into())
}
