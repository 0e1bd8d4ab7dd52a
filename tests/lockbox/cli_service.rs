//! The systemd user service: `service install` writes a unit that
//! `systemd-analyze verify` accepts and refuses to clobber a different one
//! (unless `--force`); the agent it runs reports `READY=1` on
//! `NOTIFY_SOCKET` only once it answers, `STOPPING=1` when stopped, is
//! unlocked by `lockbox unlock`, and logs to the journal with priorities.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::fs;
use crate::harness::*;
use crate::{require, require_fuse};

/// A `lockbox daemon --foreground` child, killed (and reaped) on drop if
/// it is still running; the envoy's own drop stops it cleanly first when
/// the test got that far.
struct Foreground(Child);

impl Drop for Foreground {
    fn drop(&mut self) {
        wait_exit(&mut self.0, Duration::from_secs(15));
    }
}

fn has_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn service_install_writes_a_unit_systemd_accepts_and_never_clobbers() {
    require!(has_systemd_analyze(), "systemd-analyze is not installed");
    let e = Envoy::new();
    let unit = e.home.join(".config/systemd/user/lockbox.service");
    let out = e.ok(&["service", "install"]);
    assert!(
        out.contains(&unit.display().to_string())
            && out.contains(
                "systemctl --user daemon-reload && systemctl --user enable --now lockbox.service"
            ),
        "{out}"
    );
    let text = fs::read_to_string(&unit).unwrap();
    let exec = format!("\nExecStart={} daemon --foreground\n", bin().display());
    assert!(text.contains(&exec), "{text}");
    assert!(text.contains("\nType=notify\n"), "{text}");
    assert_eq!(fs::metadata(&unit).unwrap().mode() & 0o7777, 0o644);
    // systemd's own check: warnings (an unknown value is only one) fail too.
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {verify:?}"
    );
    // The same unit again: nothing to do.
    let again = e.ok(&["service", "install"]);
    assert!(again.contains("already installed"), "{again}");
    // A unit of the user's own is not replaced without --force.
    let mine = text.replace("RestartSec=5s", "RestartSec=30s");
    fs::write(&unit, &mine).unwrap();
    let err = e.fails(1, &["service", "install"]);
    assert!(
        err.contains(&unit.display().to_string()) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&unit).unwrap(), mine, "left as it was");
    e.ok(&["service", "install", "--force"]);
    assert_eq!(fs::read_to_string(&unit).unwrap(), text);
    // Uninstall refuses while enabled, then removes it; twice is fine.
    let wants = unit.parent().unwrap().join("default.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(&unit, wants.join("lockbox.service")).unwrap();
    let err = e.fails(1, &["service", "uninstall"]);
    assert!(err.contains("systemctl --user disable"), "{err}");
    assert!(unit.exists());
    fs::remove_file(wants.join("lockbox.service")).unwrap();
    e.ok(&["service", "uninstall"]);
    assert!(!unit.exists());
    let out = e.ok(&["service", "uninstall"]);
    assert!(out.contains("not installed"), "{out}");
}

#[test]
fn the_agent_is_ready_for_systemd_only_once_it_answers() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let e = Envoy::new().with_env("NOTIFY_SOCKET", &notify);
    e.init("alpha");
    let log = fs::File::create(dir.path().join("stderr")).unwrap();
    let agent = Foreground(
        e.cmd(&["daemon", "--foreground"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("no READY=1 within 30 s");
    // At READY=1 the mount is up and the socket answers, right away.
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(
        mount_type(&e.home.join("lockbox")).as_deref(),
        Some("fuse"),
        "READY=1 before the mount"
    );
    let status = e.ok(&["status"]);
    assert!(status.contains("session: locked"), "{status}");
    // The service runs locked; `unlock` unlocks that agent, no other.
    e.unlock();
    assert_eq!(e.agent_pid(), Some(agent.0.id()));
    let status = e.ok(&["status"]);
    assert!(status.contains("session: unlocked"), "{status}");
    assert_eq!(e.ok(&["stop"]).trim(), "agent stopped");
    let n = rx.recv(&mut buf).expect("no STOPPING=1 within 30 s");
    assert_eq!(&buf[..n], b"STOPPING=1");
    rx.set_nonblocking(true).unwrap();
    assert!(rx.recv(&mut buf).is_err(), "nothing after STOPPING=1");
}

#[test]
fn under_systemd_log_lines_carry_priorities_and_no_time() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let stderr = fs::File::create(&path).unwrap();
    let meta = stderr.metadata().unwrap();
    // JOURNAL_STREAM names the agent's stderr, as systemd sets it.
    let e = Envoy::new().with_env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    e.init("alpha");
    let agent = Foreground(
        e.cmd(&["daemon", "--foreground"])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    // `lock` says "locked" (not "already locked") once the agent answers.
    wait_until(Duration::from_secs(30), || {
        let out = e.run(&["lock"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "locked"
    })
    .expect("the agent never answered");
    assert_eq!(e.ok(&["stop"]).trim(), "agent stopped");
    drop(agent);
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let body = line
            .strip_prefix("<3>")
            .or_else(|| line.strip_prefix("<4>"))
            .or_else(|| line.strip_prefix("<6>"))
            .or_else(|| line.strip_prefix("<7>"));
        let body = body.unwrap_or_else(|| panic!("no priority: {line:?}\n{text}"));
        // No time (journald adds its own) and no level word.
        assert!(
            !body.starts_with(|c: char| c.is_ascii_digit())
                && !body.trim_start().starts_with("INFO")
                && !body.trim_start().starts_with("WARN"),
            "{line:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("mounted")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("the mesh is off")),
        "{text}"
    );
}
