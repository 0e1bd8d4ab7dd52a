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

use crate::harness::writer::{Open, Writer};
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

/// An editor's save (write a temp file, close it, rename it over the
/// target) whose target changed on bravo while the temp file was being
/// written: the save could not have seen bravo's version, so the rename
/// does not supersede it; both are kept, as for a write in place. A save
/// whose target did not change meanwhile replaces it as before.
#[test]
fn a_rename_over_a_name_that_changed_during_the_write_keeps_both() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    let user = alpha.user();
    let base = content("base", 1000);
    fs::write(alpha.at("doc"), &base).expect("write the base");
    c.wait_content(&ALL, "doc", &base);

    // No change meanwhile: the save replaces doc everywhere.
    let saved = content("saved", 1100);
    fs::write(alpha.at(".doc.swp"), &saved).expect("write the temp file");
    fs::rename(alpha.at(".doc.swp"), alpha.at("doc")).expect("rename over doc");
    c.wait_content(&ALL, "doc", &saved);
    assert_eq!(c.wait_same_listing(&ALL, 1), ["doc"]);

    // bravo's version arrives while the temp file is open for writing.
    let ours = content("alpha-save", 1200);
    let theirs = content("bravo", 1300);
    // Held open by a child process: a descriptor of the test process
    // would be flushed (so sealed) by every child it spawns.
    let mut writer = Writer::start();
    writer
        .open("swp", Open::Trunc, &alpha.at(".doc.swp"))
        .and_then(|()| writer.write("swp", &ours))
        .expect("write the temp file");
    fs::write(bravo.at("doc"), &theirs).expect("write on bravo");
    c.wait(
        "bravo's version of doc on alpha, while alpha writes its temp file",
        CONVERGE,
        || author_on(alpha, &user, "doc") == "bravo",
    );
    writer.close("swp").expect("close the temp file");
    fs::rename(alpha.at(".doc.swp"), alpha.at("doc")).expect("rename over doc");
    let listing = c.wait_same_listing(&ALL, 2);
    assert_eq!(listing[0], "doc", "{listing:?}");
    let copy = &listing[1];
    assert!(copy.starts_with("doc.conflict-"), "{listing:?}");
    let kept = fs::read(alpha.at("doc")).expect("read");
    let aside = fs::read(alpha.at(copy)).expect("read the copy");
    let mut both = [kept.clone(), aside.clone()];
    both.sort();
    let mut want = [ours.clone(), theirs.clone()];
    want.sort();
    assert_eq!(both, want, "the save and bravo's write are both kept");
    c.wait_content(&ALL, "doc", &kept);
    c.wait_content(&ALL, copy, &aside);
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

/// A rename on alpha over a name whose version arrived from bravo, where
/// alpha's user had the chance to see that version: the rename replaces
/// it, with no conflict copy — (a) the renamed file was closed before
/// bravo's version arrived; (b) it was being written when bravo's version
/// arrived, but alpha then wrote the name itself, starting from it; (c) it
/// was being written when bravo's version arrived, then renamed once, and
/// only that renamed file is renamed over the name (the writer's opening
/// served its first rename). (Each used to take bravo's version for one
/// the rename could not have seen and keep both, the rename's sometimes
/// under the conflict copy; a delete of the name then left the copy's
/// version to come back.)
#[test]
fn a_rename_over_a_version_its_envoy_had_seen_replaces_it() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    let user = alpha.user();
    let mut writer = Writer::start();
    let arrives = |name: &str, seed: &str| {
        fs::write(bravo.at(name), content(seed, 1000)).expect("write on bravo");
        c.wait(
            &format!("bravo's version of {name} on alpha"),
            CONVERGE,
            || author_on(alpha, &user, name) == "bravo",
        );
    };
    // Opened and written on alpha by the writer (a child process), closed
    // only when told.
    let open_on_alpha = |writer: &mut Writer, name: &str, data: &[u8]| {
        writer
            .open(name, Open::Trunc, &alpha.at(name))
            .and_then(|()| writer.write(name, data))
            .unwrap_or_else(|e| panic!("write {name} on alpha: {e}"));
    };

    // (a) Closed, then bravo's doc arrives, then renamed over it.
    let a = content("closed-before", 900);
    fs::write(alpha.at("a"), &a).expect("write a");
    arrives("doc", "bravo-a");
    fs::rename(alpha.at("a"), alpha.at("doc")).expect("mv a doc");
    c.wait_content(&ALL, "doc", &a);

    // (b) Open while bravo's doc arrives; alpha writes doc itself; the
    // draft is closed and renamed over doc.
    let b = content("draft", 800);
    open_on_alpha(&mut writer, "b", &b);
    arrives("doc", "bravo-b");
    fs::write(alpha.at("doc"), content("alpha-own", 700)).expect("write doc on alpha");
    writer.close("b").expect("close b");
    fs::rename(alpha.at("b"), alpha.at("doc")).expect("mv b doc");
    c.wait_content(&ALL, "doc", &b);

    // (c) Open while bravo's doc arrives, closed, renamed to y, and y
    // renamed over doc.
    let x = content("moved-twice", 600);
    open_on_alpha(&mut writer, "x", &x);
    arrives("doc", "bravo-c");
    writer.close("x").expect("close x");
    fs::rename(alpha.at("x"), alpha.at("y")).expect("mv x y");
    fs::rename(alpha.at("y"), alpha.at("doc")).expect("mv y doc");
    c.wait_content(&ALL, "doc", &x);

    c.wait_settled(&ALL, "alpha", "settled");
    for n in ALL {
        assert_eq!(
            c.node(n).listing(),
            ["doc", "settled"],
            "{n} lists a conflict copy no write asked for"
        );
    }
}

/// Two concurrent versions of a name meet on charlie, which keeps its own
/// under the name and alpha's as its conflict copy, while alpha is
/// stopped and so never sees charlie's. Charlie then deletes `one`, and
/// `two` together with its copy. When alpha starts again (and catches up
/// with what it missed: nothing is pushed to it meanwhile), neither name
/// comes back with alpha's version: `one`'s copy holds it on every
/// envoy, `two` and its copy stay deleted, and every table agrees. (Both
/// names used to come back on every envoy: alpha's version was not
/// covered by the delete of the name, and took it back.)
#[test]
fn a_version_kept_as_a_conflict_copy_does_not_bring_a_deleted_name_back() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    c.wait_formed(&ALL);
    let (alpha, charlie) = (c.node("alpha"), c.node("charlie"));
    let user = alpha.user();
    let names = ["one", "two"];
    // charlie opens both names for writing before alpha's versions exist
    // (held by a child process: see `harness::writer`).
    let mut writer = Writer::start();
    for n in names {
        writer
            .open(n, Open::Trunc, &charlie.at(n))
            .and_then(|()| writer.write(n, format!("{n}, charlie's").as_bytes()))
            .unwrap_or_else(|e| panic!("write {n} on charlie: {e}"));
    }
    for n in names {
        fs::write(alpha.at(n), format!("{n}, alpha's")).expect("write on alpha");
    }
    c.wait("alpha's versions on charlie", CONVERGE, || {
        names
            .iter()
            .all(|n| author_on(charlie, &user, n) == "alpha")
    });
    // alpha stops, and nobody pushes to it any more: it learns what it
    // missed only by its catch-up when it is back.
    take_away(&c, "alpha");
    // charlie's versions are concurrent with alpha's and win (a later or
    // equal seal time, a greater envoy name): alpha's become the copies.
    for n in names {
        writer
            .close(n)
            .unwrap_or_else(|e| panic!("close {n} on charlie: {e}"));
    }
    let listing = charlie.listing();
    let copy_of = |n: &str| {
        listing
            .iter()
            .find(|l| l.starts_with(&format!("{n}.conflict-alpha-")))
            .unwrap_or_else(|| panic!("no conflict copy of {n} on charlie: {listing:?}"))
            .clone()
    };
    let (one_copy, two_copy) = (copy_of("one"), copy_of("two"));
    fs::remove_file(charlie.at("one")).expect("rm one");
    fs::remove_file(charlie.at("two")).expect("rm two");
    fs::remove_file(charlie.at(&two_copy)).expect("rm two's copy");
    c.wait_gone(&["bravo", "charlie"], "one");
    c.wait_gone(&["bravo", "charlie"], &two_copy);

    alpha.m.e.unlock();
    c.wait_formed(&ALL);
    c.wait_settled(&ALL, "charlie", "settled");
    for n in ALL {
        assert_eq!(
            c.node(n).listing(),
            [one_copy.clone(), "settled".to_string()],
            "{n}: a deleted name is back, or a copy is missing"
        );
        assert_eq!(
            fs::read(c.node(n).at(&one_copy)).expect("read the copy"),
            b"one, alpha's",
            "{n}"
        );
    }
}
