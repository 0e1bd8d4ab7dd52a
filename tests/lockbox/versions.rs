//! What a version says it saw (`docs/design.md`, "Version vectors of local
//! versions") on real agents: a version written while a peer's version of
//! the same name arrived is kept beside it as a conflict copy, on every
//! envoy alike; and a version whose record was pushed just before its
//! agent was SIGKILLed keeps that record after the restart, so the tables
//! of the envoys agree again.

use crate::harness::fs;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::require_fuse;

/// Attempts at catching the kill between the push and the grouped sync.
const ATTEMPTS: usize = 20;

/// Write `name` on alpha and SIGKILL alpha's agent once bravo holds the
/// version (its record was pushed) while alpha's seal still waits for its
/// grouped sync. Returns whether the kill came in that gap (else alpha
/// still runs and nothing was killed).
fn write_push_then_kill(c: &Circle, name: &str) -> bool {
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    let pid = alpha.m.e.agent_pid().expect("alpha's agent");
    let on_bravo = bravo.m.e.store().join(name);
    let tmp = alpha.m.tmp();
    fs::write(alpha.at(name), format!("{name}, written on alpha")).expect("write on alpha");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(200) {
        let waiting = names(&tmp).len();
        if waiting == 0 {
            return false; // the grouped sync ran first: no recovery to test
        }
        if on_bravo.exists() {
            kill9(pid);
            // Only now is it sure the seal was still waiting at the kill.
            return names(&tmp).len() == waiting;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Kill -9 right after a close whose record was already pushed: at the next
/// start alpha puts the waiting seal in place and keeps the very record its
/// peers hold (it used to sign the version again, with a later seal time,
/// and the file tables then differed forever).
#[test]
fn a_version_pushed_before_a_sigkill_keeps_its_record() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    c.wait_formed(&ALL);
    let mut tries = 0;
    let name = loop {
        tries += 1;
        let name = format!("closed-{tries}");
        if write_push_then_kill(&c, &name) {
            break name;
        }
        assert!(
            tries < ATTEMPTS,
            "in {ATTEMPTS} attempts the kill never came between the push of a version \
             and its grouped sync: recovery was never exercised"
        );
        c.wait_settled(&ALL, "alpha", "between-attempts");
    };
    eprintln!("killed after the push, before the sync, at attempt {tries}");
    let dir = tempfile::tempdir().expect("tempdir");
    let user = c.node("bravo").user();
    let pushed = fetch_version(c.node("bravo"), &user, &name, dir.path()).0;
    let alpha = c.node("alpha");
    detach_mount(&alpha.m.mnt);
    alpha.m.e.unlock();
    let log = alpha.m.log();
    assert!(
        log.contains("put in place 1 file(s) sealed just before the agent stopped"),
        "the restart did not recover the waiting seal:\n{log}"
    );
    assert!(
        !log.contains(&format!("recording {name} as a new local version")),
        "the recovered version was signed again:\n{log}"
    );
    c.wait_settled(&ALL, "bravo", "after-restart");
    let want = format!("{name}, written on alpha");
    c.wait_content(&ALL, &name, want.as_bytes());
    for n in ALL {
        let held = fetch_version(c.node(n), &user, &name, dir.path()).0;
        assert_eq!(held, pushed, "{n}'s record of {name} is not the one pushed");
    }
}
