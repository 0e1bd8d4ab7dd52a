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
mod log;
mod notify;
mod passphrase;
mod paths;
mod session;
mod status;
mod sys;
mod web;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what to do, with no control character
            // (a name in it may hold any): `lockbox_fs::escape`.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("lockbox: {}", lockbox_fs::escape::controls(&msg));
            ExitCode::from(1)
        }
    }
}
