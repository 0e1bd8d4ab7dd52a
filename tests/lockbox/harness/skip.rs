//! Prerequisites: `require!` and `require_fuse!`, which skip a test whose
//! machine lacks something it needs (FUSE, curl, root, …), and the checks
//! of those prerequisites. A skip is never silent: under `CI=true` it is a
//! failure, by default the test fails with `SKIPPED: why`, and with
//! `LOCKBOX_ALLOW_SKIP=1` it passes, prints `SKIPPED test: why` where the
//! run's output shows it, and is listed in a file under `target/tmp/`. It must not decide anything about lockbox itself.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::envoy::is_root;

/// Whether we run in CI, where missing prerequisites are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether skipped tests may pass (`LOCKBOX_ALLOW_SKIP=1`, never in CI).
pub fn skips_allowed() -> bool {
    !in_ci() && std::env::var("LOCKBOX_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// The file this test process lists its skips in (one `test: reason` a
/// line): `target/tmp/lockbox-skips-<pid>.txt`.
pub fn skip_log() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lockbox-skips-{}.txt", std::process::id()))
}

/// A test cannot run here because `why`. Under `CI=true` that is a failure;
/// otherwise, unless `LOCKBOX_ALLOW_SKIP=1`, the test fails with
/// `SKIPPED: why`, so that libtest counts and shows it (a skip that passes
/// would read as `ok`). With `LOCKBOX_ALLOW_SKIP=1` the skip is listed in
/// [`skip_log`] and the test returns (the caller's `require!` does).
#[track_caller]
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    if in_ci() {
        panic!("prerequisite missing in CI: {why}");
    }
    if !skips_allowed() {
        panic!(
            "SKIPPED: {why} (set LOCKBOX_ALLOW_SKIP=1 to let skipped tests pass; \
             they are then listed in target/tmp/lockbox-skips-<pid>.txt)"
        );
    }
    let line = format!("{test}: {why}\n");
    let logged = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(skip_log())
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    if let Err(e) = logged {
        panic!(
            "SKIPPED: {why} (and could not list it in {}: {e})",
            skip_log().display()
        );
    }
    // Straight to the process's stderr, not through `eprintln!`, which
    // libtest captures and hides for a test that passes.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {test}: {why}\n").as_bytes(),
    );
}

/// Skip (visibly, see [`skip`]) when `cond` does not hold: a failure under
/// `CI=true`, a failure saying `SKIPPED` by default, a listed skip with
/// `LOCKBOX_ALLOW_SKIP=1`.
#[macro_export]
macro_rules! require {
    ($cond:expr, $why:expr) => {
        if !$cond {
            $crate::harness::skip(&$why.to_string());
            return;
        }
    };
}

/// [`require!`] that this machine can mount FUSE.
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
