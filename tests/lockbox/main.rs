//! Integration tests: the real `lockbox` binary, real agents, real sockets.
//! Each test gets its own HOME; every agent is stopped when its test ends,
//! pass or fail (see `harness::Envoy`'s `Drop`). The fixtures live in
//! [`harness`]; every other module holds tests only, one theme each:
//!
//! - `agent`: the agent's lifecycle and its control socket.
//! - `circle`: deletion and membership across the mesh (re-adds,
//!   `resurrect`, replayed deletes, `leave`, `evict`, `purge`, partitions).
//! - `cli`: the command line on one envoy, its exit codes and errors.
//! - `cli_truthful`: commands that say what holds (idempotent `lock` and
//!   `stop`, `decrypt` to stdout, errors naming the user's paths, sizes).
//! - `cli_paths`: where the control socket is (`$XDG_RUNTIME_DIR`, a long
//!   HOME), and a runtime folder others can enter refused.
//! - `cli_recipients`: `recipients.txt` as an age recipients file.
//! - `cli_service`: the systemd user service (`service install`, the
//!   unit's check, readiness on `NOTIFY_SOCKET`, journal priorities) and
//!   `agent.log` (rotation, one line per event, no fuser chatter).
//! - `cli_shell`: shell completions and manual pages.
//! - `cli_passphrase`: where a passphrase comes from (stdin, a program,
//!   config, the terminal's tries); a wrong one leaves no agent.
//! - `crash`: SIGKILLed agents while a file is written or sealed.
//! - `fleet`: `lockbox fleet init|issue` and `renew-cert`.
//! - `interop`: the reference `age` CLI and lockbox's store files.
//! - `mesh`: envoys syncing over mTLS, pushes, intruders, the demo.
//! - `mount`: the FUSE mount driven by ordinary tools.
//! - `netlab`: the network-namespace lab itself.
//! - `resources`: the peer port's bounds under many huge bodies at once.
//! - `soak`: a seeded random run of writes, renames, deletes, kills and
//!   restarts on a three-envoy mesh, checked against a model at the end.
//! - `unprivileged`: lockbox as an ordinary user.
//! - `versions`: what a version says it saw: concurrent edits during a
//!   write, records kept across a SIGKILL.
#![allow(clippy::unwrap_used)]

mod harness;

mod agent;
mod circle;
mod cli;
mod cli_passphrase;
mod cli_paths;
mod cli_recipients;
mod cli_service;
mod cli_shell;
mod cli_status;
mod cli_truthful;
mod crash;
mod fleet;
mod folders;
mod impostor;
mod interop;
mod join;
mod mesh;
mod mount;
mod netlab;
mod resources;
mod soak;
mod unprivileged;
mod versions;
mod web;
