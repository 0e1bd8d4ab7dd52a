//! The systemd user service: `service install` writes a unit that
//! `systemd-analyze verify` accepts and refuses to clobber a different one
//! (unless `--force`); the agent it runs reports `READY=1` on
//! `NOTIFY_SOCKET` only once it answers, `STOPPING=1` when stopped, is
//! unlocked by `lockbox unlock`, and logs to the journal with priorities.
//! Outside systemd, `agent.log` rotates past its cap, holds one whole line
//! per event and none of fuser's chatter after ordinary tools ran on the
//! mount, and a failed seal at close names its file and errno in words.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::fs;
use crate::harness::mount::{s, MountedEnvoy};
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

/// A datagram socket for the agent's `NOTIFY_SOCKET`, in a folder of its
/// own (kept alive by the returned `TempDir`).
fn notify_socket() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let rx = UnixDatagram::bind(&notify).unwrap();
    (dir, notify, rx)
}

#[test]
fn the_agent_is_ready_for_systemd_only_once_it_answers() {
    require_fuse!();
    let (dir, notify, rx) = notify_socket();
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

/// Every line of an `agent.log` is one whole log line: a time, a level,
/// a message.
#[track_caller]
fn assert_whole_lines(text: &str, what: &str) {
    for line in text.lines() {
        let level = line.split_whitespace().nth(1).unwrap_or("");
        assert!(
            line.starts_with("20")
                && line.as_bytes().get(10) == Some(&b'T')
                && ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "{what}: not a whole log line: {line:?}\n{text}"
        );
    }
}

#[test]
fn agent_log_rotates_past_its_cap() {
    require_fuse!();
    const CAP: u64 = 4000;
    let e = Envoy::new().with_env("LOCKBOX_LOG_CAP_BYTES", CAP.to_string());
    e.init("alpha");
    let log = e.state().join("agent.log");
    let old = e.state().join("agent.log.1");
    e.unlock();
    let mut rounds = 0;
    // Each lock and unlock logs a line or more: go until the log has
    // rotated twice (agent.log.1 replaced once), at most 200 rounds.
    let mut first_rotation = None;
    while rounds < 200 {
        e.ok(&["lock"]);
        e.unlock();
        rounds += 1;
        if let Ok(text) = fs::read_to_string(&old) {
            match &first_rotation {
                None => first_rotation = Some(text),
                Some(first) if *first != text => break,
                Some(_) => {}
            }
        }
    }
    assert!(
        rounds < 200,
        "agent.log never rotated twice past {CAP} bytes"
    );
    for p in [&log, &old] {
        let len = fs::metadata(p).unwrap().len();
        assert!(len > 0 && len <= CAP, "{}: {len} bytes", p.display());
        assert_eq!(mode(p), 0o600, "{}", p.display());
        assert_whole_lines(&fs::read_to_string(p).unwrap(), &p.display().to_string());
    }
    assert!(
        !e.state().join("agent.log.2").exists(),
        "only one old log is kept"
    );
    // The agent writes on into the new agent.log (its standard error moved
    // with it).
    e.ok(&["lock"]);
    let text = fs::read_to_string(&log).unwrap();
    let last = text.lines().rev().find(|l| l.contains("session"));
    assert!(
        last.is_some_and(|l| l.ends_with("session locked")),
        "the last lock is not in the newest agent.log:\n{text}"
    );
}

#[test]
fn ordinary_tools_leave_one_line_per_event_and_no_fuser_warning() {
    require_fuse!();
    for tool in ["vim", "rsync", "tar", "python3"] {
        require!(on_path(tool), format!("{tool} is not installed"));
    }
    let m = MountedEnvoy::unlocked();
    let outside = m.e.home.parent().unwrap().join("tools");
    fs::create_dir_all(outside.join("tree")).unwrap();
    for i in 0..3 {
        fs::write(
            outside.join(format!("tree/f{i}.txt")),
            format!("file {i}\n"),
        )
        .unwrap();
    }
    let (tree, mnt) = (outside.join("tree"), m.mnt.clone());
    let into = format!("{}/", mnt.display());
    // cp, keeping everything it can (xattrs, ACLs).
    m.tool_ok(&["cp", "-a", s(&tree.join("f0.txt")), s(&m.at("cp.txt"))]);
    // vim, with a swap file and a backup, in Ex mode.
    m.tool_ok(&[
        "vim",
        "-es",
        "-u",
        "NONE",
        "-i",
        "NONE",
        "-c",
        "set nocompatible swapfile writebackup nobackup backupcopy=no",
        "-c",
        "%s/file/edited/g",
        "-c",
        "wq",
        s(&m.at("cp.txt")),
    ]);
    // rsync -a (times, modes; ACLs and xattrs asked for too).
    m.tool_ok(&["rsync", "-aAX", &format!("{}/", tree.display()), &into]);
    // tar out of and back into the mount; with ACLs and xattrs too (the
    // mount has neither: tar warns and exits 2 then, which is tar's own
    // business).
    let archive = outside.join("a.tar");
    m.tool_ok(&["tar", "-cf", s(&archive), "-C", s(&mnt), "."]);
    m.tool_ok(&["tar", "-xf", s(&archive), "-C", s(&mnt)]);
    let acl = outside.join("acl.tar");
    m.tool(&[
        "tar",
        "--acls",
        "--xattrs",
        "-cf",
        s(&acl),
        "-C",
        s(&mnt),
        ".",
    ]);
    m.tool(&["tar", "--acls", "--xattrs", "-xf", s(&acl), "-C", s(&mnt)]);
    // A terminal check on a file of the mount (the TCGETS ioctl, 21505).
    m.tool(&[
        "python3",
        "-c",
        "import sys; print(open(sys.argv[1]).isatty())",
        s(&m.at("f1.txt")),
    ]);
    assert_eq!(fs::read_to_string(m.at("cp.txt")).unwrap(), "edited 0\n");
    let text = m.log();
    assert_whole_lines(&text, "agent.log");
    for fuser_said in [
        "[Not Implemented]",
        "ioctl",
        "posix_acl",
        "Mounting ",
        "Unmounting ",
    ] {
        assert!(
            !text.contains(fuser_said),
            "agent.log has fuser's {fuser_said:?}:\n{text}"
        );
    }
}

#[test]
fn a_seal_that_fails_at_close_is_logged_with_its_name_and_errno_in_words() {
    require_fuse!();
    let m = MountedEnvoy::unlocked_with(&format!("{TEST_CONFIG}max_file_size: 1MiB\n"));
    // The 17th 64 KiB block crosses 1 MiB: EFBIG, and the release that
    // follows cannot seal what was staged.
    m.tool_fails(
        &[
            "dd",
            "if=/dev/zero",
            &format!("of={}", s(&m.at("big.bin"))),
            "bs=64k",
            "count=20",
            "status=none",
        ],
        "File too large",
    );
    // The kernel sends the release after close(2) returned: wait for it.
    wait_until(Duration::from_secs(30), || {
        m.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("sealing big.bin at its last close failed"))
    })
    .unwrap_or_else(|e| panic!("no warning naming big.bin: {e}\n{}", m.log()));
    let text = m.log();
    let line = text
        .lines()
        .find(|l| l.contains("sealing big.bin at its last close failed"))
        .unwrap();
    assert!(line.contains("File too large"), "{line}");
    assert!(!text.contains("Errno("), "{text}");
    assert_whole_lines(&text, "agent.log");
}

#[test]
fn a_detached_agent_tells_no_systemd_unit_it_is_ready() {
    require_fuse!();
    let (_dir, notify, rx) = notify_socket();
    // A command run from inside some unit has its NOTIFY_SOCKET.
    let e = Envoy::new().with_env("NOTIFY_SOCKET", &notify);
    e.init("alpha");
    e.unlock();
    // Both messages it could have sent are behind us once stop returns.
    assert_eq!(e.ok(&["stop"]).trim(), "agent stopped");
    rx.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    match rx.recv(&mut buf) {
        Ok(n) => panic!(
            "the detached agent sent {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
}
