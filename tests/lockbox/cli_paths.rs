//! Where the control socket is: under `$XDG_RUNTIME_DIR/lockbox/` when that
//! is set (refused when others can enter it), in `~/.lockbox/` otherwise,
//! and reached however long HOME is.

use std::os::unix::fs::PermissionsExt;

use crate::harness::fs;
use crate::harness::*;
use crate::require_fuse;

/// A runtime folder (what `XDG_RUNTIME_DIR` names) of mode `mode`.
fn runtime_dir(mode: u32) -> tempfile::TempDir {
    let rt = tempfile::Builder::new()
        .prefix("lockbox-test-rt-")
        .tempdir()
        .unwrap();
    fs::set_permissions(rt.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    rt
}

/// The sockets in `dir`.
fn sockets_in(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn unlock_status_and_stop_work_with_a_120_byte_home() {
    require_fuse!();
    let e = Envoy::with_home_len(120);
    assert_eq!(e.home.as_os_str().len(), 120);
    e.init("alpha");
    e.unlock();
    let sock = e.state().join("agent.sock");
    assert!(
        sock.as_os_str().len() > 107,
        "the socket path must be longer than sun_path takes"
    );
    assert_eq!(mode(&sock), 0o600, "the socket is where it always was");
    let status = e.ok(&["status"]);
    assert!(status.contains("session: unlocked"), "{status}");
    assert_eq!(e.ok(&["lock"]).trim(), "locked");
    assert_eq!(e.ok(&["stop"]).trim(), "agent stopped");
    assert_eq!(e.agent_pid(), None);
    assert!(!sock.exists(), "the agent removes its socket when it stops");
}

#[test]
fn the_socket_is_found_under_xdg_runtime_dir() {
    require_fuse!();
    let rt = runtime_dir(0o700);
    let e = Envoy::new().with_env("XDG_RUNTIME_DIR", rt.path());
    e.init("alpha");
    e.unlock();
    let dir = rt.path().join("lockbox");
    assert_eq!(mode(&dir), 0o700, "the socket folder is made 0700");
    let socks = sockets_in(&dir);
    assert_eq!(socks.len(), 1, "{socks:?}");
    assert!(
        socks[0].starts_with("agent-") && socks[0].ends_with(".sock"),
        "{socks:?}"
    );
    assert_eq!(mode(&dir.join(&socks[0])), 0o600);
    assert!(
        !e.state().join("agent.sock").exists(),
        "no socket in ~/.lockbox while XDG_RUNTIME_DIR is set"
    );
    let status = e.ok(&["status"]);
    assert!(status.contains("session: unlocked"), "{status}");
    // Without XDG_RUNTIME_DIR the CLI looks in ~/.lockbox: no agent there.
    let plain = e
        .cmd(&["status"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(!text.contains("session: unlocked"), "{text}");
    assert_eq!(e.ok(&["stop"]).trim(), "agent stopped");
    assert_eq!(e.agent_pid(), None);
    assert!(sockets_in(&dir).is_empty(), "the agent removes its socket");
}

#[test]
fn a_runtime_dir_open_to_others_is_refused_by_name() {
    require_fuse!();
    let rt = runtime_dir(0o777);
    let e = Envoy::new().with_env("XDG_RUNTIME_DIR", rt.path());
    e.init("alpha");
    let pass = e.pass.to_string_lossy().into_owned();
    let shown = rt.path().display().to_string();
    for args in [
        &["unlock", "--passphrase-file", &pass][..],
        &["daemon"],
        &["status"],
    ] {
        let err = e.fails(1, args);
        assert!(
            err.contains(&shown) && err.contains("mode 0777") && err.contains("chmod 700"),
            "{args:?}: {err}"
        );
        assert_eq!(e.agent_pid(), None, "{args:?} left an agent");
    }
    assert!(!rt.path().join("lockbox").exists(), "nothing made in it");
    assert_eq!(mount_type(&e.home.join("lockbox")), None);
    // Its lockbox/ folder open to others is refused the same way.
    fs::set_permissions(rt.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = rt.path().join("lockbox");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = e.fails(1, &["unlock", "--passphrase-file", &pass]);
    assert!(
        err.contains(&dir.display().to_string()) && err.contains("mode 0755"),
        "{err}"
    );
    assert_eq!(e.agent_pid(), None);
}
