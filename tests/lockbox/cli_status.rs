//! `status` says what holds and what to do about it: a mount its agent
//! left behind (killed) is called stale, with the command that clears it;
//! a certificate issued while the agent runs is noticed, with the restart
//! it needs; the mount and the mesh are structured fields of `status
//! --json`, not only prose. `doctor` checks what it claims: who holds the
//! peer port, whether the config file is there.

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

/// The line of `doctor`'s output that contains `needle`.
fn doctor_line(e: &Envoy, needle: &str) -> String {
    let out = String::from_utf8(e.run(&["doctor"]).stdout).unwrap();
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} line in:\n{out}"))
        .to_string()
}

/// `doctor` checks what it claims: a peer port another program holds is
/// not "ok" (it used to be, whenever an agent ran), the one this envoy's
/// agent serves its mesh on is; a config file that is not there is not
/// "valid".
#[test]
fn doctor_tells_who_holds_the_peer_port_and_whether_the_config_exists() {
    require_fuse!();
    let c = Circle::loopback(&["a", "b"]);
    let a = &c.node("a").m.e;
    let ours = doctor_line(a, "peer port");
    assert!(
        ours.starts_with("ok") && ours.contains("held by this envoy's agent"),
        "{ours}"
    );

    // Another program on the port an envoy is configured with.
    // Bound to a port the kernel picks: a port found free first could be
    // taken by a parallel test before this binds it.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = squatter.local_addr().unwrap().port();
    let e = Envoy::with_config(&loopback_config(port, &[]));
    e.init("lone");
    let line = doctor_line(&e, "peer port");
    assert!(
        line.starts_with("warn") && line.contains("held by another program"),
        "{line}"
    );
    // Its agent runs (with no certificate it serves no peers): still not ok.
    e.unlock();
    let line = doctor_line(&e, "peer port");
    assert!(
        line.starts_with("FAIL") && line.contains("not by this envoy's agent"),
        "{line}"
    );
    drop(squatter);
    let line = doctor_line(&e, "peer port");
    assert!(line.starts_with("ok") && line.contains("is free"), "{line}");

    std::fs::remove_file(e.state().join("config.yaml")).unwrap();
    let line = doctor_line(&e, "config");
    assert!(
        line.starts_with("warn") && line.contains("does not exist"),
        "{line}"
    );
}
