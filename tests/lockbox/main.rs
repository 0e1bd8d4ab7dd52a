//! Integration tests: the real `lockbox` binary, real agents, real sockets.
//! Each test gets its own HOME; every agent is stopped when its test ends,
//! pass or fail (see `util::Envoy`'s `Drop`).
#![allow(clippy::unwrap_used)]

mod agent;
mod circle;
mod cli;
mod crash;
mod fleet;
mod interop;
mod mesh;
mod mount;
mod netlab;
mod unprivileged;
mod util;
