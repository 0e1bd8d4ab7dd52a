//! Fixtures of the fleet-command tests: an envoy with a fleet CA, and
//! `fleet issue` into it. It must not hold tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Envoy;

pub(crate) const DAY: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// An envoy with a fleet CA in `HOME/fleet-ca`.
pub(crate) fn with_ca() -> (Envoy, PathBuf) {
    let e = Envoy::new();
    let ca = e.home.join("fleet-ca");
    let out = e.ok(&["fleet", "init", "--out", &path(&ca)]);
    assert!(out.contains("lockbox fleet issue --ca"), "next step: {out}");
    (e, ca)
}

/// `fleet issue` for `envoy` into this envoy's `~/.lockbox/tls`.
pub(crate) fn issue(e: &Envoy, ca: &Path, envoy: &str, extra: &[&str]) -> String {
    let tls = path(&e.state().join("tls"));
    let mut args = vec!["fleet", "issue", "--ca", ca.to_str().unwrap()];
    args.extend(["--envoy", envoy, "--out", &tls]);
    args.extend(extra);
    e.ok(&args)
}
