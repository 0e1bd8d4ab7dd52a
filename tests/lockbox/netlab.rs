//! The network-namespace lab itself (the fixture is `harness::netlab`):
//! partitions, multicast between hosts, and that nothing outlives a lab.

use std::process::Command;
use std::time::Duration;

use crate::harness::netlab::*;
use crate::harness::*;
use crate::require;

#[test]
fn partition_cuts_one_host_off_and_heal_restores_it() {
    require!(available().is_ok(), available().unwrap_err());
    require!(python_available().is_ok(), python_available().unwrap_err());
    let lab = NetLab::new(3).expect("lab");
    assert_eq!(lab.len(), 3);
    let (_l1, p1) = listen(&lab, 1);
    let (_l2, p2) = listen(&lab, 2);

    assert!(reaches(&lab, 0, 1, p1, 5.0), "0 -> 1 before the cut");
    assert!(reaches(&lab, 0, 2, p2, 5.0), "0 -> 2 before the cut");
    assert!(reaches(&lab, 1, 2, p2, 5.0), "1 -> 2 before the cut");

    lab.cut(1).expect("cut");
    assert!(!reaches(&lab, 0, 1, p1, 1.0), "0 -> 1 after the cut");
    assert!(!reaches(&lab, 1, 2, p2, 1.0), "1 -> 2 after the cut");
    assert!(reaches(&lab, 0, 2, p2, 5.0), "0 -> 2 after the cut");

    lab.heal(1).expect("heal");
    // ARP towards host 1 may have failed during the cut; connects retry.
    wait_until(Duration::from_secs(20), || reaches(&lab, 0, 1, p1, 2.0))
        .expect("0 -> 1 after the heal");
    assert!(reaches(&lab, 1, 2, p2, 5.0), "1 -> 2 after the heal");
}

#[test]
fn multicast_to_the_discovery_group_reaches_every_connected_host() {
    require!(available().is_ok(), available().unwrap_err());
    require!(python_available().is_ok(), python_available().unwrap_err());
    let lab = NetLab::new(3).expect("lab");
    let from = lab.addr(0).to_string();

    assert_eq!(
        multicast(&lab, 0, &[1, 2], 20.0),
        [from.as_str(), from.as_str()]
    );

    // A cut host hears nothing; the others still do.
    lab.cut(2).expect("cut");
    assert_eq!(multicast(&lab, 0, &[1, 2], 2.0), [from.as_str(), "timeout"]);
    lab.heal(2).expect("heal");
    assert_eq!(
        multicast(&lab, 0, &[1, 2], 20.0),
        [from.as_str(), from.as_str()]
    );
}

#[test]
fn drop_kills_what_runs_inside_and_deletes_every_namespace() {
    require!(available().is_ok(), available().unwrap_err());
    let before = root_links();
    let lab = NetLab::new(2).expect("lab");
    assert_eq!(root_links(), before, "the lab touched the root namespace");
    let spaces = namespaces(&lab);
    assert_eq!(spaces.len(), 3, "hub and two hosts");
    let mut sleeper = lab.command(1, "sleep").arg("600").spawn().expect("sleep");
    wait_inside(&lab, 1, sleeper.id());

    drop(lab);

    let status = wait_exit(&mut sleeper, Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the process inside was not killed"
    );
    assert_gone(&spaces);
    assert_eq!(root_links(), before, "links left in the root namespace");
}

#[test]
fn a_panicking_test_leaves_no_namespace_behind() {
    require!(available().is_ok(), available().unwrap_err());
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let lab = NetLab::new(2).expect("lab");
        let sleeper = lab.command(0, "sleep").arg("600").spawn().expect("sleep");
        wait_inside(&lab, 0, sleeper.id());
        tx.send((namespaces(&lab), sleeper)).expect("send");
        panic!("deliberate panic with a live lab (expected by this test)");
    });
    assert!(test.join().is_err(), "the thread should have panicked");
    let (spaces, mut sleeper) = rx.recv().expect("the lab was built");
    assert!(
        wait_exit(&mut sleeper, Duration::from_secs(5)).is_some(),
        "the process inside outlived the lab"
    );
    assert_gone(&spaces);
}

#[test]
fn namespaces_of_dead_test_processes_are_swept() {
    require!(available().is_ok(), available().unwrap_err());
    // A pid that just exited stands for a test process killed before
    // its labs dropped.
    let mut gone = Command::new("true").spawn().expect("true");
    gone.wait().expect("wait");
    let stale = format!("{PREFIX}{}-0-hub", gone.id());
    ip(&["netns", "add", &stale]).expect("netns add");
    let ino =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(ns_path(&stale)).expect("stat"));

    let lab = NetLab::new(1).expect("lab");

    assert_gone(&[(stale, ino)]);
    assert!(lab.ns_path(0).exists());
}

#[test]
fn an_envoy_in_a_host_runs_its_agent_there() {
    require!(available().is_ok(), available().unwrap_err());
    // The lab first: locals drop in reverse, so the envoy stops its agent
    // through the namespace before the lab deletes it.
    let lab = NetLab::new(1).expect("lab");
    let mut e = crate::harness::Envoy::new();
    e.netns = Some(lab.ns_path(0));
    e.init("alpha");
    e.start();
    let pid = e.agent_pid().expect("agent pid");
    assert!(
        pids_in(&lab.host(0)).contains(&pid),
        "the detached agent is not in the host's namespace"
    );
    e.ok(&["stop"]);
    assert!(!alive(pid), "agent still running after stop");
}
