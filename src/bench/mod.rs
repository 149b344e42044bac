//! `meshgate bench`: load scenarios against a running gateway.

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The scenario to run.
    pub scenario: String,
}

/// Runs a scenario; the error is one line for the terminal.
pub fn run(args: BenchArgs) -> Result<(), String> {
    let _ = args;
    Err("load scenarios are not available in this build".into())
}
