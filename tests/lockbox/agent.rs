//! The agent's lifecycle and its control socket: single instance, stale
//! sockets, SIGTERM, idle timeout, and requests a CLI would never send.

use crate::harness::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use crate::harness::*;
use crate::require_fuse;

#[test]
fn daemon_is_single_instance_and_stop_removes_the_socket() {
    let e = Envoy::new();
    e.init("alpha");
    e.start();
    let pid = e.agent_pid().expect("agent pid");
    assert_eq!(mode(&e.state().join("agent.sock")), 0o600);
    let err = e.fails(1, &["daemon"]);
    assert!(err.contains("already running"), "{err}");
    // Foreground too: the lock refuses a second agent — before it touches
    // the store, so the first agent's in-flight temp files survive.
    let inflight = e.state().join("tmp/0123456789abcdef.partial");
    fs::write(&inflight, b"ciphertext being written").unwrap();
    let err = e.fails(1, &["daemon", "--foreground"]);
    assert!(err.contains("already running"), "{err}");
    assert!(
        inflight.exists(),
        "a refused second agent removed a live temp file"
    );
    fs::remove_file(&inflight).unwrap();
    e.ok(&["stop"]);
    // stop returns only once the agent is gone.
    assert!(!alive(pid), "agent still running after stop");
    assert!(!e.state().join("agent.sock").exists());
    let out = e.ok(&["lock"]);
    assert!(out.contains("already locked"), "{out}");
}

#[test]
fn sigterm_stops_cleanly_and_a_stale_socket_is_replaced() {
    let e = Envoy::new();
    e.init("alpha");
    e.start();
    let pid = e.agent_pid().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    wait_until(Duration::from_secs(10), || !alive(pid)).unwrap();
    assert!(!e.state().join("agent.sock").exists());
    assert!(fs::read_to_string(e.state().join("agent.log"))
        .unwrap()
        .contains("SIGTERM"));

    // A dead agent's socket (nobody listening) reads as "not running"…
    drop(UnixListener::bind(e.state().join("agent.sock")).unwrap());
    let err = e.fails(1, &["decrypt", "x", "-o", "-"]);
    assert!(err.contains("agent not running"), "{err}");
    // …and the next agent replaces it.
    e.start();
    e.ok(&["status"]);
}

#[test]
fn idle_timeout_locks_the_session() {
    let e = Envoy::with_config(&format!("{TEST_CONFIG}idle_timeout_minutes: 1s\n"));
    e.init("alpha");
    e.unlock();
    // The agent's own timer locks it; we only observe.
    wait_until(Duration::from_secs(20), || {
        let log = fs::read_to_string(e.state().join("agent.log")).unwrap_or_default();
        log.contains("idle timeout: session locked")
    })
    .expect("the session locks after the idle timeout");
    let err = e.fails(1, &["decrypt", "x", "-o", "-"]);
    assert!(err.contains("locked: run lockbox unlock"), "{err}");
    assert_eq!(e.status_json()["unlocked"], false);
}

/// Poll `status` (as a status-bar widget would) every `every` until the
/// session reads locked or `limit` passes, doing `between` before each
/// poll; returns how long it stayed unlocked.
fn poll_until_locked(
    e: &Envoy,
    every: Duration,
    limit: Duration,
    mut between: impl FnMut(),
) -> Option<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        between();
        if e.status_json()["unlocked"] == false {
            return Some(start.elapsed());
        }
        std::thread::sleep(every);
    }
    None
}

#[test]
fn status_polling_does_not_keep_the_session_unlocked() {
    let e = Envoy::with_config(&format!("{TEST_CONFIG}idle_timeout_minutes: 2s\n"));
    e.init("alpha");
    e.unlock();
    // `status` every half second, four times per timeout: it only looks.
    let took = poll_until_locked(
        &e,
        Duration::from_millis(500),
        Duration::from_secs(20),
        || {},
    )
    .expect("status polled every 500 ms kept the session unlocked for 20 s");
    assert!(took >= Duration::from_secs(1), "locked after {took:?}");
    let log = fs::read_to_string(e.state().join("agent.log")).unwrap();
    assert!(log.contains("idle timeout: session locked"), "{log}");
    // `list` does not count either.
    e.unlock();
    let took = poll_until_locked(
        &e,
        Duration::from_millis(500),
        Duration::from_secs(20),
        || {
            e.ok(&["list"]);
        },
    );
    assert!(took.is_some(), "list kept the session unlocked");
}

#[test]
fn reads_and_writes_through_the_mount_keep_the_session_unlocked() {
    require_fuse!();
    let e = Envoy::with_config(&format!("{TEST_CONFIG}idle_timeout_minutes: 2s\n"));
    e.init("alpha");
    e.unlock();
    let file = e.home.join("lockbox/kept");
    fs::write(&file, b"read me").unwrap();
    // Reads through the mount, one every 400 ms for 5 s (2.5 timeouts).
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(fs::read(&file).unwrap(), b"read me", "locked despite reads");
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(e.status_json()["unlocked"], true);
    // Writes (which need no key) count too.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        fs::write(e.home.join("lockbox/written"), b"new").unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(e.status_json()["unlocked"], true, "locked despite writes");
    // Once the mount is idle, it locks (while status keeps looking).
    poll_until_locked(
        &e,
        Duration::from_millis(250),
        Duration::from_secs(20),
        || {},
    )
    .expect("the idle mount never locked");
    let err = fs::read(&file).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
}

#[test]
fn an_idle_mount_locks_while_a_peer_pushes_to_it() {
    require_fuse!();
    let c = Circle::loopback_locked_with(&["alpha", "bravo"], |name| {
        if name == "bravo" {
            "idle_timeout_minutes: 3s\n".into()
        } else {
            String::new()
        }
    });
    for n in &c.nodes {
        n.m.e.unlock();
        n.m.assert_mounted();
    }
    c.wait_formed(&["alpha", "bravo"]);
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    // Its timer starts now; nobody uses bravo's mount from here on.
    bravo.m.e.unlock();
    let mut i = 0;
    let mut push = || {
        fs::write(alpha.at(&format!("pushed-{i}")), format!("version {i}")).unwrap();
        i += 1;
    };
    push();
    let received = bravo.m.e.store().join("pushed-0");
    c.wait("bravo to receive pushed-0", CONVERGE, || received.exists());
    // A new file from alpha every 300 ms (bravo receives and records each);
    // bravo's status is only looked at.
    let start = std::time::Instant::now();
    let mut locked = false;
    while start.elapsed() < Duration::from_secs(30) {
        push();
        if bravo.m.e.status_json()["unlocked"] == false {
            locked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(locked, "pushes from a peer kept bravo unlocked for 30 s");
    // `status` reads the session as locked once its deadline passed; the
    // idle timer's task logs its lock when it next runs (later on a
    // loaded machine).
    let log = || fs::read_to_string(bravo.m.e.state().join("agent.log")).unwrap();
    if wait_until(Duration::from_secs(10), || {
        log().contains("idle timeout: session locked")
    })
    .is_err()
    {
        panic!(
            "the idle timer never said it locked the session:\n{}",
            log()
        );
    }
}

#[test]
fn control_socket_rejects_bad_requests_and_changes_nothing() {
    let e = Envoy::new();
    e.init("alpha");
    e.start();
    let sock = e.state().join("agent.sock");
    // A NUL byte in a name (argv cannot carry one, the socket can).
    let reply = raw_request(&sock, r#"{"Delete":{"name":[97,0,98]}}"#);
    assert!(
        String::from_utf8_lossy(&reply).contains("NUL"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let reply = raw_request(&sock, r#"{"Decrypt":{"name":[46,46,47,120]}}"#);
    assert!(String::from_utf8_lossy(&reply).contains("bad file name"));
    // Garbage and oversize frames.
    let reply = raw_request(&sock, "not json");
    assert!(String::from_utf8_lossy(&reply).contains("malformed"));
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, b'J']).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).contains("malformed"));
    // The agent still serves.
    assert_eq!(e.status_json()["agent_running"], true);
    assert_eq!(fs::read_dir(e.store()).unwrap().count(), 0);
}

#[test]
fn an_interrupted_encrypt_changes_nothing() {
    let e = Envoy::new();
    e.init("alpha");
    let src = e.plain_file("keep", b"version one");
    e.ok(&["encrypt", &src.to_string_lossy()]);
    let before = fs::read(e.store().join("keep")).unwrap();
    e.start();
    // Start an encrypt of "keep", send some data, then vanish.
    let mut s = UnixStream::connect(e.state().join("agent.sock")).unwrap();
    let req = r#"{"Encrypt":{"name":[107,101,101,112]}}"#;
    let frame = control_frame(b'J', req.as_bytes());
    s.write_all(&frame).unwrap();
    let mut ok = [0u8; 64];
    let n = s.read(&mut ok).unwrap();
    assert!(String::from_utf8_lossy(&ok[..n]).contains("Ok"));
    let data = b"half of version two";
    let frame = control_frame(b'D', data);
    s.write_all(&frame).unwrap();
    drop(s);
    // The agent notices the sender vanished and says so; the old version stays.
    wait_until(Duration::from_secs(10), || {
        let log = fs::read_to_string(e.state().join("agent.log")).unwrap_or_default();
        log.contains("encrypt of keep failed")
    })
    .unwrap();
    assert_eq!(
        fs::read_dir(e.state().join("tmp")).unwrap().count(),
        0,
        "temp file removed"
    );
    assert_eq!(fs::read(e.store().join("keep")).unwrap(), before);
    e.unlock();
    let out = e.cmd(&["decrypt", "keep", "-o", "-"]).output().unwrap();
    assert_eq!(out.stdout, b"version one");
}
