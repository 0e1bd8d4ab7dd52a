//! What a version says it saw (`docs/design.md`, "Version vectors of local
//! versions") on real agents: a version written while a peer's version of
//! the same name arrived is kept beside it as a conflict copy, on every
//! envoy alike; and a version whose record was pushed just before its
//! agent was SIGKILLed keeps that record after the restart, so the tables
//! of the envoys agree again.

use crate::harness::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use lockbox_crypto::sign::Signed;
use lockbox_net::records::FileVersion;

use crate::harness::*;
use crate::require_fuse;

/// The author of the version `node` holds as `name` (from its record).
fn author_on(node: &Node, user: &str, name: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let (record, _) = fetch_version(node, user, name, dir.path());
    let record = hex::decode(record).expect("hex");
    let record = Signed::<FileVersion>::from_bytes(&record).expect("a version record");
    record.body().author.to_string()
}

/// With `name` open for writing on alpha (`open`), bravo writes `theirs`
/// to it and alpha holds bravo's version before alpha's `ours` is closed.
/// Then every envoy must list `name` and one conflict copy of it, the same
/// names and bytes everywhere, and between them both versions.
fn write_during_a_write(
    c: &Circle,
    name: &str,
    open: impl FnOnce(&std::path::Path) -> std::fs::File,
    ours: &[u8],
    theirs: &[u8],
) {
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    let user = alpha.user();
    let mut f = open(&alpha.at(name));
    f.write_all(ours).expect("write on alpha");
    fs::write(bravo.at(name), theirs).expect("write on bravo");
    c.wait(
        &format!("bravo's version of {name} on alpha, while alpha writes it"),
        CONVERGE,
        || author_on(alpha, &user, name) == "bravo",
    );
    drop(f); // close(2): acknowledged
    let listing = c.wait_same_listing(&ALL, 2);
    assert_eq!(listing[0], name, "{listing:?}");
    let copy = &listing[1];
    assert!(
        copy.starts_with(&format!("{name}.conflict-")),
        "no conflict copy of {name}: {listing:?}"
    );
    let kept = fs::read(alpha.at(name)).expect("read");
    let aside = fs::read(alpha.at(copy)).expect("read the copy");
    let mut both = [kept.clone(), aside.clone()];
    both.sort();
    let mut want = [ours.to_vec(), theirs.to_vec()];
    want.sort();
    assert_eq!(both, want, "both writes are kept on alpha");
    c.wait_content(&ALL, name, &kept);
    c.wait_content(&ALL, copy, &aside);
}

/// A file opened with `O_TRUNC` on alpha, written, and closed after
/// bravo's version of it arrived: alpha's version never saw bravo's, so
/// both are kept (it used to claim bravo's in its vector and replace it).
#[test]
fn a_version_that_arrives_during_a_truncating_write_is_kept() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let base = content("base", 1000);
    fs::write(c.node("alpha").at("doc"), &base).expect("write the base");
    c.wait_content(&ALL, "doc", &base);
    let open = |p: &std::path::Path| {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(p)
            .expect("open with O_TRUNC")
    };
    write_during_a_write(
        &c,
        "doc",
        open,
        &content("alpha", 1200),
        &content("bravo", 1300),
    );
}

/// The same with a create over a name that existed (`O_CREAT|O_TRUNC`, as
/// a shell's `>` does), and over a name that did not exist when the
/// writer created it and was created on bravo meanwhile.
#[test]
fn a_version_that_arrives_during_a_create_is_kept() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let base = content("base", 1000);
    fs::write(c.node("alpha").at("over"), &base).expect("write the base");
    c.wait_content(&ALL, "over", &base);
    let create = |p: &std::path::Path| {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .expect("create")
    };
    write_during_a_write(
        &c,
        "over",
        create,
        &content("alpha", 1200),
        &content("bravo", 1300),
    );
    fs::remove_file(c.node("alpha").at("over")).expect("rm");
    let listing = c.wait_same_listing(&ALL, 1);
    fs::remove_file(c.node("alpha").at(&listing[0])).expect("rm the copy");
    c.wait_same_listing(&ALL, 0);
    write_during_a_write(
        &c,
        "fresh",
        create,
        &content("alpha", 900),
        &content("bravo", 800),
    );
}

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
