//! Integration tests: the real `lockbox` binary, real agents, real sockets.
//! Each test gets its own HOME; every agent is stopped when its test ends,
//! pass or fail (see `util::Envoy`'s `Drop`).
#![allow(clippy::unwrap_used)]

mod agent;
mod cli;
mod crash;
mod interop;
mod mount;
mod unprivileged;
mod util;
