//! `status` says what holds and what to do about it: a mount its agent
//! left behind (killed) is called stale, with the command that clears it;
//! a certificate issued while the agent runs is noticed, with the restart
//! it needs; the mount and the mesh are structured fields of `status
//! --json`, not only prose.

use crate::harness::fleet::{issue, path};
use crate::harness::*;
use crate::require_fuse;

/// The warnings of a `status --json`.
fn warnings(st: &serde_json::Value) -> Vec<String> {
    st["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// After the agent is killed its mount is left behind, dead ("Transport
/// endpoint is not connected"): `status` calls it stale and says that
/// `lockbox unlock` clears it, which it does. (It used to say "not
/// mounted" while `ls ~/lockbox` failed.)
#[test]
fn status_names_a_stale_mount_and_what_clears_it() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let st = m.e.status_json();
    assert_eq!(st["mount_state"], "mounted", "{st}");
    assert_eq!(st["mount_point"], s(&m.mnt), "{st}");
    kill9(m.agent_pid().expect("agent pid"));
    let gone = std::fs::read_dir(&m.mnt).map(drop).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::ENOTCONN), "{gone}");
    let st = m.e.status_json();
    assert_eq!(st["agent_running"], false, "{st}");
    assert_eq!(st["mount_state"], "stale", "{st}");
    let text = m.e.ok(&["status"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("mount: "))
        .unwrap_or_else(|| panic!("no mount line:\n{text}"));
    assert!(
        line.starts_with("mount: stale") && line.contains("run lockbox unlock"),
        "{line}"
    );
    m.e.unlock();
    m.assert_mounted();
    assert_eq!(m.e.status_json()["mount_state"], "mounted");
}

/// `fleet issue` while the agent runs without a certificate: the agent
/// reads it only at start, so `status` says to restart it; after the
/// restart the mesh runs, and `status --json` gives its port.
#[test]
fn status_notices_a_certificate_issued_while_the_agent_runs() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let st = m.e.status_json();
    assert_eq!(st["mesh_on"], false, "{st}");
    assert!(st["mesh_port"].is_null(), "{st}");
    let restart = |st: &serde_json::Value| {
        warnings(st)
            .iter()
            .any(|w| w.contains("a certificate was issued") && w.contains("lockbox stop"))
    };
    assert!(!restart(&st), "{st}");
    let ca = m.e.home.join("fleet-ca");
    m.e.ok(&["fleet", "init", "--out", &path(&ca)]);
    let envoy = st["envoy"].as_str().expect("envoy name").to_string();
    issue(&m.e, &ca, &envoy, &[]);
    let st = m.e.status_json();
    assert!(restart(&st), "no word of the new certificate: {st}");
    assert!(
        m.e.ok(&["status"])
            .contains("warning: a certificate was issued"),
        "the text says it too"
    );
    m.e.ok(&["stop"]);
    m.e.unlock();
    let st = m.e.status_json();
    assert_eq!(st["mesh_on"], true, "{st}");
    assert!(st["mesh_port"].as_u64().is_some_and(|p| p > 0), "{st}");
    assert!(!restart(&st), "{st}");
}
