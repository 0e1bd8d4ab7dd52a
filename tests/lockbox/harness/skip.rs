//! Prerequisites: `require!` and `require_fuse!`, which skip a test whose
//! machine lacks something it needs (FUSE, curl, root, …), and the checks
//! of those prerequisites: outside CI a skip prints `SKIPPED`, under
//! `CI=true` it is a failure. It must not decide anything about lockbox
//! itself.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::envoy::is_root;

/// Whether we run in CI, where missing prerequisites are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skip (loudly) outside CI, fail in CI.
#[macro_export]
macro_rules! require {
    ($cond:expr, $why:expr) => {
        if !$cond {
            if $crate::harness::in_ci() {
                panic!("prerequisite missing in CI: {}", $why);
            }
            eprintln!("SKIPPED {}: {}", module_path!(), $why);
            return;
        }
    };
}

/// Skip (loudly) outside CI, fail in CI, when this machine cannot mount FUSE.
#[macro_export]
macro_rules! require_fuse {
    () => {
        $crate::require!(
            std::path::Path::new("/dev/fuse").exists(),
            "no /dev/fuse: this machine cannot mount FUSE"
        );
        $crate::require!(
            $crate::harness::is_root() || $crate::harness::on_path("fusermount3"),
            "not root and fusermount3 is not on PATH (apt-get install fuse3)"
        );
    };
}

/// Whether `program` is an executable on PATH.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
    })
}

/// Whether the tests can run the agent as `nobody` with a real mount:
/// root (to switch uid), setpriv, and a /dev/fuse that ordinary users may
/// open. Else what is missing.
pub(crate) fn nobody_can_mount() -> Result<(), &'static str> {
    if !is_root() {
        return Err("switching to an unprivileged uid needs root");
    }
    if !have_setpriv() {
        return Err("setpriv (util-linux) is not installed");
    }
    if !std::fs::metadata("/dev/fuse").is_ok_and(|m| m.mode() & 0o006 == 0o006) {
        return Err("/dev/fuse is not mode 0666, so ordinary users cannot mount (.ci/run sets it)");
    }
    Ok(())
}

pub(crate) fn have_setpriv() -> bool {
    std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
