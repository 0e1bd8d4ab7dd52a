//! `lockbox`: keeps a user's secrets in `~/lockbox/` on every machine they
//! use, sealed with age to every envoy of the user. This binary is wiring:
//! the CLI, the agent, the control socket and config; the rules live in the
//! `lockbox-crypto`, `lockbox-fs` and `lockbox-net` crates.

mod agent;
mod cli;
mod client;
mod cmd;
mod config;
mod control;
mod envoy;
mod host;
mod passphrase;
mod paths;
mod session;
mod status;
mod sys;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what to do.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("lockbox: {msg}");
            ExitCode::from(1)
        }
    }
}
