//! Crash safety of the mount (SPEC §5.2): the agent is SIGKILLed while a
//! 200 MiB file is being written through the mount, and while that file is
//! being sealed (a file sealed as it grows, killed before its close, and,
//! written while locked, a whole file sealed at `fsync`). After a restart each name holds its old or its new complete
//! version (never a torn or an accidental empty one), the store holds only
//! age files, no plaintext reached the disk, nothing is left in the temp
//! folder, and the mount works again.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::mount::{
    assert_no_temp_files, assert_same, assert_store_is_ciphertext, exited, kill9, names,
    pseudo_random, s, Mounted, MIB,
};
use crate::require_fuse;
use crate::util::{alive, mount_type, wait_exit, wait_until};

/// The plaintext of the big file: this marker, repeated. It is generated in
/// memory and piped in, so any copy of it on disk came through lockbox.
const MARKER: &[u8; 16] = b"LOCKBOX-MARKER-7";

/// How much the big file holds.
const BIG: u64 = 200 * MIB as u64;

/// Start `dd` writing the marker pattern to `dest` through the mount, and a
/// thread feeding it up to `BIG` bytes through a pipe. `fed` counts the bytes
/// dd has taken from the pipe; dd has written all but its last block of them.
fn feed_dd(dest: &Path, extra: &[&str], fed: Arc<AtomicU64>) -> (Child, JoinHandle<()>) {
    feed_dd_held(dest, extra, fed, Arc::new(AtomicU64::new(BIG)))
}

/// [`feed_dd`], feeding no more than `limit` bytes until `limit` is raised
/// (dd then waits for input with its file open).
fn feed_dd_held(
    dest: &Path,
    extra: &[&str],
    fed: Arc<AtomicU64>,
    limit: Arc<AtomicU64>,
) -> (Child, JoinHandle<()>) {
    let mut dd = Command::new("dd")
        .arg(format!("of={}", s(dest)))
        .args(["bs=1M", "iflag=fullblock", "status=none"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dd");
    let mut stdin = dd.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        let block = MARKER.repeat(MIB / MARKER.len());
        while fed.load(Ordering::SeqCst) < BIG {
            if fed.load(Ordering::SeqCst) >= limit.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            // Stops when dd is gone (EPIPE; Rust ignores SIGPIPE).
            if stdin.write_all(&block).is_err() {
                return;
            }
            fed.fetch_add(block.len() as u64, Ordering::SeqCst);
        }
        // Dropping stdin is dd's end of input.
    });
    (dd, feeder)
}

/// The files under `dir` that contain the marker. Unreadable entries (a dead
/// mount) are skipped, not errors.
fn files_with_marker(dir: &Path) -> Vec<String> {
    let out = Command::new("timeout")
        .args(["-k", "10", "300", "grep", "-r", "-a", "-l", "-s", "-F"])
        .arg(std::str::from_utf8(MARKER).unwrap())
        .arg(dir)
        .output()
        .expect("grep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether a `.partial` temp file exists in `dir`.
fn has_partial(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|d| d.file_name().to_string_lossy().ends_with(".partial"))
    })
}

/// Write the old version of "victim" (all of it sealed, nothing in the
/// temp folder); returns it and the agent's pid.
fn old_victim(m: &Mounted) -> (Vec<u8>, u32) {
    let v1 = pseudo_random(14, MIB + 333);
    fs::write(m.at("victim"), &v1).unwrap();
    assert_no_temp_files(m);
    (v1, m.agent_pid().expect("agent pid"))
}

/// `dd` has not ended (`when` says at which point of the test).
#[track_caller]
fn assert_running(dd: &mut Child, when: &str) {
    if let Some(status) = dd.try_wait().unwrap() {
        let mut err = String::new();
        dd.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        panic!("dd ended ({status}) {when}: {err}");
    }
}

/// The plaintext of `name` through the mount is `old`, or (if `new_allowed`)
/// the complete marker file: never anything in between.
#[track_caller]
fn assert_old_or_new(m: &Mounted, name: &str, old: &[u8], new_allowed: bool) {
    let len = fs::metadata(m.at(name)).unwrap().len();
    if len == old.len() as u64 || !new_allowed {
        assert_same(
            &format!("{name} after the crash"),
            &fs::read(m.at(name)).unwrap(),
            old,
        );
        assert_same(&format!("{name} decrypted"), &m.decrypt(name), old);
        return;
    }
    assert_eq!(len, BIG, "{name} is neither the old nor the new version");
    let mut file = fs::File::open(m.at(name)).unwrap();
    let mut block = vec![0u8; MIB];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut block).unwrap();
        if n == 0 {
            break;
        }
        // Reads of whole MiB at MiB offsets keep the marker aligned.
        assert!(
            block[..n]
                .chunks(MARKER.len())
                .all(|c| c == &MARKER[..c.len()]),
            "{name}: the new version is damaged near byte {total}"
        );
        total += n as u64;
    }
    assert_eq!(total, BIG, "{name}: the new version is short");
}

/// What must hold on disk after the kill, before and after the restart:
/// no marker under `dir`, and only age files in the store.
#[track_caller]
fn assert_no_plaintext_on_disk(m: &Mounted, dir: &Path) {
    let found = files_with_marker(dir);
    assert!(found.is_empty(), "plaintext on disk: {found:?}");
    assert_store_is_ciphertext(m);
}

/// After the kill: the disk holds no plaintext; a restart cleans up the
/// stale mount and the temp folder; "victim" is its old (or, if
/// `new_allowed`, its new) complete version; "newborn", never closed, does
/// not exist; the mount takes new files. Then stop, and check the whole HOME
/// again — the mount folder included, a plain folder once more.
#[track_caller]
fn restart_and_check(m: &Mounted, v1: &[u8], new_allowed: bool) {
    // First prove that the search finds the marker where it is (outside HOME).
    let probe = m.plain_file("marker-probe", MARKER);
    assert_eq!(
        files_with_marker(probe.parent().unwrap()),
        [s(&probe)],
        "the marker search does not work"
    );
    fs::remove_file(&probe).unwrap();
    // All of HOME: the dead mount cannot be read, and is skipped.
    assert_no_plaintext_on_disk(m, &m.home);
    m.unlock();
    m.assert_mounted();
    assert_no_temp_files(m);
    assert_old_or_new(m, "victim", v1, new_allowed);
    // dd closes a duplicate descriptor of the new file before writing, and
    // that close makes the new (empty) file exist, as on any file system.
    // What must never appear is any of the content written after it.
    if m.store().join("newborn").exists() {
        let raw = fs::read(m.store().join("newborn")).unwrap();
        assert!(
            raw.starts_with(b"age-encryption.org/v1\n"),
            "newborn is not an age file"
        );
        assert_eq!(
            fs::metadata(m.at("newborn")).unwrap().len(),
            0,
            "a file never fully written holds partial content"
        );
    }
    fs::write(m.at("after"), b"written after the crash").unwrap();
    assert_eq!(fs::read(m.at("after")).unwrap(), b"written after the crash");
    // Not through the live mount: it shows plaintext, as it should.
    assert_no_plaintext_on_disk(m, &m.state());
    m.ok(&["stop"]);
    assert_eq!(mount_type(&m.mnt), None, "stop unmounts");
    assert!(
        names(&m.mnt).is_empty(),
        "plain files under the mount point"
    );
    let found = files_with_marker(&m.home);
    assert!(found.is_empty(), "plaintext on disk: {found:?}");
}

#[test]
fn sigkill_while_writing_keeps_the_old_version_and_no_plaintext() {
    require_fuse!();
    let m = Mounted::unlocked();
    let v1 = pseudo_random(13, MIB + 333);
    fs::write(m.at("victim"), &v1).unwrap();
    let pid = m.agent_pid().expect("agent pid");

    // Two writers: one replacing "victim", one creating "newborn".
    let fed_victim = Arc::new(AtomicU64::new(0));
    let fed_newborn = Arc::new(AtomicU64::new(0));
    let (mut dd_victim, feed_victim) = feed_dd(&m.at("victim"), &[], fed_victim.clone());
    let (mut dd_newborn, feed_newborn) = feed_dd(&m.at("newborn"), &[], fed_newborn.clone());
    let enough = 24 * MIB as u64;
    wait_until(Duration::from_secs(300), || {
        (fed_victim.load(Ordering::SeqCst) >= enough
            && fed_newborn.load(Ordering::SeqCst) >= enough)
            || !alive(dd_victim.id())
            || !alive(dd_newborn.id())
    })
    .expect("dd writes 24 MiB through the mount");
    for dd in [&mut dd_victim, &mut dd_newborn] {
        assert_running(dd, "before the kill");
    }
    kill9(pid);
    assert!(exited(pid), "the agent survived SIGKILL");
    for dd in [&mut dd_victim, &mut dd_newborn] {
        let status =
            wait_exit(dd, Duration::from_secs(60)).expect("dd ends once the agent is gone");
        assert!(
            !status.success(),
            "dd succeeded although the agent was killed"
        );
    }
    feed_victim.join().unwrap();
    feed_newborn.join().unwrap();

    restart_and_check(&m, &v1, false);
}

/// A file written from start to end is sealed as it grows: SIGKILL when all
/// but its last MiB is sealed into the temp folder, dd waiting for input
/// with the file open. The version was never closed, so the old one stays.
#[test]
fn sigkill_while_sealing_as_written_keeps_the_old_version() {
    require_fuse!();
    let m = Mounted::unlocked();
    let (v1, pid) = old_victim(&m);

    let fed = Arc::new(AtomicU64::new(0));
    let limit = Arc::new(AtomicU64::new(BIG - MIB as u64));
    let (mut dd, feeder) = feed_dd_held(&m.at("victim"), &[], fed.clone(), limit.clone());
    let tmp = m.tmp();
    let sealed = || {
        fs::read_dir(&tmp)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.metadata().map_or(0, |md| md.len()))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(600), || {
        sealed() >= BIG - 4 * MIB as u64 || !alive(dd.id())
    })
    .expect("the agent seals the file as it is written");
    assert_running(&mut dd, "before the kill");
    kill9(pid);
    assert!(exited(pid), "the agent survived SIGKILL");
    // The rest of the input makes dd write again, into the dead mount.
    limit.store(BIG, Ordering::SeqCst);
    let status =
        wait_exit(&mut dd, Duration::from_secs(60)).expect("dd ends once the agent is gone");
    assert!(
        !status.success(),
        "dd succeeded although the agent was killed"
    );
    feeder.join().unwrap();

    restart_and_check(&m, &v1, false);
}

/// Written while locked, a file is staged whole (it could not be decrypted
/// back if it turned out not to be written from start to end), so
/// fsync(2) seals all 200 MiB at once: SIGKILL during that seal.
#[test]
fn sigkill_while_sealing_leaves_the_old_or_the_new_version() {
    require_fuse!();
    let m = Mounted::unlocked();
    let (v1, pid) = old_victim(&m);
    m.ok(&["lock"]);

    // dd writes all 200 MiB, then fsync(2) seals them (and close(2) would).
    let fed = Arc::new(AtomicU64::new(0));
    let (mut dd, feeder) = feed_dd(&m.at("victim"), &["conv=fsync"], fed.clone());
    let tmp = m.tmp();
    wait_until(Duration::from_secs(600), || {
        (fed.load(Ordering::SeqCst) >= BIG && has_partial(&tmp)) || !alive(dd.id())
    })
    .expect("the agent starts sealing the 200 MiB file");
    assert_running(&mut dd, "before the seal was seen in progress");
    kill9(pid);
    assert!(exited(pid), "the agent survived SIGKILL");
    wait_exit(&mut dd, Duration::from_secs(60)).expect("dd ends once the agent is gone");
    feeder.join().unwrap();

    restart_and_check(&m, &v1, true);
}

/// A stale mount left by a killed agent does not stop a new one.
#[test]
fn a_stale_mount_is_cleaned_up_by_the_next_agent() {
    require_fuse!();
    let m = Mounted::unlocked();
    fs::write(m.at("kept"), b"kept across a crash").unwrap();
    kill9(m.agent_pid().expect("agent pid"));
    // The old mount may linger, dead; daemon (locked) must replace it.
    m.start();
    m.assert_mounted();
    assert_eq!(names(&m.mnt), ["kept"]);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = mounts
        .lines()
        .filter(|l| l.contains(&format!(" {} ", s(&m.mnt))))
        .count();
    assert_eq!(here, 1, "one mount at the mount point:\n{mounts}");
    m.unlock();
    assert_eq!(fs::read(m.at("kept")).unwrap(), b"kept across a crash");
    assert!(mount_type(&m.mnt).is_some());
}

/// A `close(2)` that returned is kept when the agent is killed right after
/// it, before the grouped sync put the seal in place: the next start finds
/// the complete seal waiting in the temp folder (same boot, so its bytes
/// are whole) and puts it in place. The store then holds only complete age
/// files and every name its last closed content. So is a `rename(2)` that
/// returned of such a file over its target (how editors and rsync save),
/// whose seal waits under the target's name.
#[test]
fn files_closed_just_before_a_sigkill_are_kept() {
    require_fuse!();
    let m = Mounted::unlocked();
    fs::write(m.at("edited"), b"first version").unwrap();
    let saved: Vec<String> = (0..10).map(|i| format!("saved-{i}")).collect();
    for name in &saved {
        fs::write(m.at(name), format!("{name}, old")).unwrap();
    }
    m.settle();
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("closed-{i:02}"),
                format!("content {i}").into_bytes(),
            )
        })
        .collect();
    for (name, content) in &files {
        fs::write(m.at(name), content).unwrap();
    }
    fs::write(m.at("edited"), b"second version").unwrap();
    for name in &saved {
        let temp = format!(".{name}.tmp");
        fs::write(m.at(&temp), format!("{name}, new")).unwrap();
        fs::rename(m.at(&temp), m.at(name)).unwrap();
    }
    let waiting = names(&m.tmp()).len();
    kill9(m.agent_pid().expect("agent pid"));
    eprintln!("{waiting} seal(s) were waiting in ~/.lockbox/tmp just before the kill");
    m.start();
    m.unlock();
    m.assert_mounted();
    assert_no_temp_files(&m);
    assert_store_is_ciphertext(&m);
    for (name, content) in &files {
        assert_eq!(&fs::read(m.at(name)).unwrap(), content, "{name}");
    }
    assert_eq!(fs::read(m.at("edited")).unwrap(), b"second version");
    assert_eq!(m.decrypt("edited"), b"second version");
    for name in &saved {
        assert_eq!(
            fs::read(m.at(name)).unwrap(),
            format!("{name}, new").as_bytes()
        );
        assert_eq!(m.decrypt(name), format!("{name}, new").as_bytes());
    }
    let left: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temp names came back: {left:?}");
}
