//! The agent's lifecycle and its control socket: single instance, stale
//! sockets, SIGTERM, idle timeout, and requests a CLI would never send.

use crate::harness::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use crate::harness::*;

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
    e.fails(1, &["lock"]);
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
    let err = e.fails(1, &["lock"]);
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

#[test]
fn status_resets_the_idle_timer() {
    let e = Envoy::with_config(&format!("{TEST_CONFIG}idle_timeout_minutes: 3s\n"));
    e.init("alpha");
    e.unlock();
    // Keep the session alive with status calls for longer than the timeout.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(e.status_json()["unlocked"], true, "locked despite activity");
        std::thread::sleep(Duration::from_millis(500));
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
