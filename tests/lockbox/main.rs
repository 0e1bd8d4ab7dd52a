//! Integration tests: the real `lockbox` binary, real agents, real sockets.
//! Each test gets its own HOME; every agent is stopped when its test ends,
//! pass or fail (see `harness::Envoy`'s `Drop`). The fixtures live in
//! [`harness`]; every other module holds tests only, one theme each.
#![allow(clippy::unwrap_used)]

mod harness;

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
