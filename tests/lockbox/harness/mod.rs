//! The test harness: every fixture the integration tests share, and no
//! tests. It owns bringing envoys, mounts, circles and network labs up and
//! tearing them down (pass or fail); it must not assert anything about
//! lockbox's behaviour beyond "the fixture came up".
//!
//! - [`envoy`]: `Envoy`, one envoy in a temporary HOME driven through the
//!   CLI; the test configs (`TEST_CONFIG`, `KDF`); process and mount helpers
//!   (`alive`, `wait_until`, `mount_type`, `detach_mount`, `wait_exit`).
//! - [`skip`]: `require!` / `require_fuse!`, how a test whose machine lacks
//!   a prerequisite is skipped (outside CI) or failed (under `CI=true`).
//! - [`mount`]: `MountedEnvoy`, an envoy whose agent serves `~/lockbox`,
//!   and the helpers that look at a mount and its store.
//! - [`mesh`]: `Fleet`, `Node` and `Circle`, envoys that share a fleet CA on
//!   loopback; `curl` against a peer port; version fetch and push.
//! - [`peer`]: `PeerClient`, a raw HTTP/2 client of a peer port with an
//!   envoy's certificate, proven by a hello with its key or not at all.
//! - [`fs`]: `std::fs` with a deadline on every call that can block on a
//!   mount; tests import it as `fs`.
//! - [`ports`]: loopback ports for a mesh's agents.
//! - [`netlab`]: `NetLab`, hosts in network namespaces joined by a bridge,
//!   and the probes the lab's own tests use.
//! - [`age`]: the reference `age` CLI (whether it runs, what it decrypts).
//! - [`browser`]: `Browser`, a headless Chromium driven over the DevTools
//!   protocol on a pipe (the status page's tests).
//! - [`crash`]: feeding a big file through a mount with `dd`, and the
//!   on-disk checks after an agent is killed.
//! - [`fleet`]: an envoy with a fleet CA, for the fleet-command tests.
//! - [`tmux`]: `Tmux`, a program in a terminal pane (prompts, what a
//!   terminal is shown).
//! - [`writer`]: `Writer`, a child process that holds files of a mount open
//!   for a test (a descriptor of the test process would be flushed by any
//!   child spawned meanwhile).

pub mod age;
pub mod browser;
pub mod crash;
pub mod envoy;
pub mod fleet;
pub mod fs;
pub mod mesh;
pub mod mount;
pub mod netlab;
pub mod peer;
pub mod ports;
pub mod skip;
pub mod tmux;
pub mod writer;

pub use envoy::*;
pub(crate) use mesh::*;
pub(crate) use mount::*;
pub(crate) use peer::*;
pub(crate) use ports::*;
pub use skip::*;
pub use tmux::Tmux;
