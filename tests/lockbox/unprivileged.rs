//! lockbox as an ordinary user (`docs/threat-model.md`, "Security rules"): the
//! whole one-envoy flow runs as uid 65534, the agent makes itself non-dumpable
//! (its /proc entries become root's), and the control socket refuses every
//! other uid — root included.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::harness::*;
use crate::require;

#[test]
fn full_flow_as_an_unprivileged_user_with_a_hardened_agent() {
    let ready = nobody_can_mount();
    require!(ready.is_ok(), ready.unwrap_err());
    let e = Envoy::as_user(NOBODY);
    e.init("nobody-envoy");
    let src = e.plain_file("secret.txt", b"unprivileged secret");
    e.ok(&["encrypt", &src.to_string_lossy()]);
    e.unlock();
    let pid = e.agent_pid().expect("agent runs");

    // The agent runs as nobody…
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(1) == Some("65534"),
        "{uid_line}"
    );
    // …and is non-dumpable: the kernel makes its /proc entries root's.
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/{pid}/status should be owned by root when non-dumpable"
    );
    let st = e.status_json();
    assert_eq!(st["hardening"]["dumpable"], false);
    assert_eq!(st["hardening"]["core_limit"], 0);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");

    let out = e
        .cmd(&["decrypt", "secret.txt", "-o", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"unprivileged secret");

    // The mount works for the ordinary user (through fusermount3): write and
    // read back through it as that user; the store holds ciphertext.
    let mnt = e.home.join("lockbox");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(mnt.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not mounted", mnt.display()));
    assert!(
        line.contains("fuse.lockbox") && line.contains("user_id=65534"),
        "{line}"
    );
    let script = format!(
        "printf 'written by nobody' > {m}/via-mount && cat {m}/via-mount",
        m = mnt.display()
    );
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"written by nobody");
    // Nobody else gets in, root included: the mount is its owner's alone
    // (no allow_other), whatever the modes it shows.
    for what in [
        std::fs::read_dir(&mnt).map(drop),
        std::fs::read(mnt.join("via-mount")).map(drop),
        std::fs::write(mnt.join("by-root"), b"x"),
    ] {
        let err = what.expect_err("root used nobody's mount");
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    }
    e.settle();
    let sealed = std::fs::read(e.store().join("via-mount")).unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
    for f in [
        "identity.age",
        "signing.key",
        "store/secret.txt",
        "agent.sock",
    ] {
        let m = std::fs::metadata(e.state().join(f)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (NOBODY, 0o600), "{f}");
    }

    // The socket refuses another uid even when it can reach it (root can).
    let mut s = UnixStream::connect(e.state().join("agent.sock")).unwrap();
    let req = br#"{"Status":null}"#;
    let frame = crate::harness::control_frame(b'J', req);
    let _ = s.write_all(&frame);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(reply.is_empty(), "root got a reply from nobody's agent");
    let log = std::fs::read_to_string(e.state().join("agent.log")).unwrap();
    assert!(
        log.contains("refused a control connection from uid 0"),
        "{log}"
    );

    // The root CLI refuses to talk to a socket it does not own.
    let out = std::process::Command::new(crate::harness::bin())
        .arg("status")
        .env("HOME", &e.home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to uid 65534"));
    e.ok(&["stop"]);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "still mounted after stop"
    );
}

#[test]
fn a_foreign_owned_socket_is_refused_before_anything_is_sent() {
    require!(is_root(), "chown to another uid needs root");
    let e = Envoy::new();
    e.init("alpha");
    let sock = e.state().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::os::unix::fs::chown(&sock, Some(NOBODY), Some(NOBODY)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let err = e.fails(
        1,
        &["unlock", "--passphrase-file", &e.pass.to_string_lossy()],
    );
    assert!(
        err.contains("belongs to uid 65534") && err.contains("refusing"),
        "{err}"
    );
    // Nothing connected, so no passphrase could have been sent.
    assert!(listener.accept().is_err());
}

/// `lockbox stop` returns, and the agent exits, while a program still has
/// its working folder in the mount. An ordinary user's unmount is lazy, and
/// the agent used to wait for the FUSE session to end, which it does only
/// once nothing uses the mount: `stop` hung as long as a shell sat in
/// ~/lockbox. The folder leaves the mount at once; the program's next
/// access through its old working folder fails.
#[test]
fn stop_returns_while_a_shell_sits_in_the_mount() {
    let ready = nobody_can_mount();
    require!(ready.is_ok(), ready.unwrap_err());
    let e = Envoy::as_user(NOBODY);
    e.init("nobody-envoy");
    e.unlock();
    let pid = e.agent_pid().expect("agent runs");
    let mnt = e.home.join("lockbox");
    // A "shell" in the mount, as the same user (only the mounting user may
    // enter a FUSE mount). It says when it is in.
    let mut sitter = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            "sh",
            "-c",
            "cd \"$1\" && echo in && exec sleep 600",
            "sh",
        ])
        .arg(&mnt)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut out = sitter.stdout.take().unwrap();
    let sitter = Kill(sitter);
    let mut line = [0u8; 3];
    out.read_exact(&mut line)
        .expect("the sitter entered the mount");
    assert_eq!(&line, b"in\n");

    let mut stop = e.cmd(&["stop"]).spawn().unwrap();
    let status = crate::harness::wait_exit(&mut stop, Duration::from_secs(60));
    let exited =
        crate::harness::wait_until(Duration::from_secs(10), || !crate::harness::alive(pid));
    if exited.is_err() {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "lockbox stop did not return ({status:?})"
    );
    exited.expect("the agent did not exit");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "still mounted after stop"
    );
    drop(sitter);
}
