//! Fixtures of the crash tests: feeding a big file through the mount with
//! `dd`, and the checks of what is on disk after an agent is killed. It
//! must not hold tests.

use super::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::*;

/// The plaintext of the big file: this marker, repeated. It is generated in
/// memory and piped in, so any copy of it on disk came through lockbox.
pub(crate) const MARKER: &[u8; 16] = b"LOCKBOX-MARKER-7";

/// How much the big file holds.
pub(crate) const BIG: u64 = 200 * MIB as u64;

/// Start `dd` writing the marker pattern to `dest` through the mount, and a
/// thread feeding it up to `BIG` bytes through a pipe. `fed` counts the bytes
/// dd has taken from the pipe; dd has written all but its last block of them.
pub(crate) fn feed_dd(dest: &Path, extra: &[&str], fed: Arc<AtomicU64>) -> (Child, JoinHandle<()>) {
    feed_dd_held(dest, extra, fed, Arc::new(AtomicU64::new(BIG)))
}

/// [`feed_dd`], feeding no more than `limit` bytes until `limit` is raised
/// (dd then waits for input with its file open).
pub(crate) fn feed_dd_held(
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

/// The files under `dir` that contain the marker. Mounts under `dir` are
/// skipped; any other unreadable entry fails the test.
pub(crate) fn files_with_marker(dir: &Path) -> Vec<String> {
    files_containing(dir, MARKER)
}

/// The files under `dir` that contain `needle` (as [`files_with_marker`]).
pub(crate) fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    // A mount under `dir` (a dead one, after a kill) is not the disk and
    // cannot be read: it is left out. Any other error fails the scan, so
    // that "no marker found" means every file was read.
    let skip: Vec<std::path::PathBuf> = mounts_under(dir)
        .into_iter()
        .map(std::path::PathBuf::from)
        .collect();
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("the marker scan cannot list {}: {e}", d.display()));
        for entry in entries {
            let p = entry
                .unwrap_or_else(|e| panic!("the marker scan cannot list {}: {e}", d.display()))
                .path();
            if skip.contains(&p) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p)
                .unwrap_or_else(|e| panic!("the marker scan cannot stat {}: {e}", p.display()));
            if meta.is_dir() {
                todo.push(p);
            } else if meta.is_file() && file_has(&p, needle) {
                found.push(p.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

/// Whether the file at `p` contains `needle` (read in 1 MiB pieces that
/// overlap by the needle's length, so no occurrence is cut in two).
fn file_has(p: &Path, needle: &[u8]) -> bool {
    let mut f = std::fs::File::open(p)
        .unwrap_or_else(|e| panic!("the marker scan cannot open {}: {e}", p.display()));
    let mut buf = vec![0u8; MIB + needle.len()];
    let mut kept = 0;
    loop {
        let n = f
            .read(&mut buf[kept..])
            .unwrap_or_else(|e| panic!("the marker scan cannot read {}: {e}", p.display()));
        if n == 0 {
            return false;
        }
        let end = kept + n;
        if contains(&buf[..end], needle) {
            return true;
        }
        kept = (needle.len() - 1).min(end);
        buf.copy_within(end - kept..end, 0);
    }
}

/// Whether a `.partial` temp file exists in `dir`.
pub(crate) fn has_partial(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|d| d.file_name().to_string_lossy().ends_with(".partial"))
    })
}

/// Write the old version of "victim" (all of it sealed, nothing in the
/// temp folder); returns it and the agent's pid.
pub(crate) fn old_victim(m: &MountedEnvoy) -> (Vec<u8>, u32) {
    let v1 = pseudo_random(14, MIB + 333);
    fs::write(m.at("victim"), &v1).unwrap();
    assert_no_temp_files(m);
    (v1, m.agent_pid().expect("agent pid"))
}

/// `dd` has not ended (`when` says at which point of the test).
#[track_caller]
pub(crate) fn assert_running(dd: &mut Child, when: &str) {
    if let Some(status) = dd.try_wait().unwrap() {
        let mut err = String::new();
        dd.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        panic!("dd ended ({status}) {when}: {err}");
    }
}

/// The plaintext of `name` through the mount is `old`, or (if `new_allowed`)
/// the complete marker file: never anything in between.
#[track_caller]
pub(crate) fn assert_old_or_new(m: &MountedEnvoy, name: &str, old: &[u8], new_allowed: bool) {
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
    let mut file = fs::open(m.at(name)).unwrap();
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
pub(crate) fn assert_no_plaintext_on_disk(m: &MountedEnvoy, dir: &Path) {
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
pub(crate) fn restart_and_check(m: &MountedEnvoy, v1: &[u8], new_allowed: bool) {
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

/// The scenario of `files_closed_just_before_a_sigkill_are_kept` up to the
/// kill: files written and closed (new ones, an edit, saves by rename) just
/// before the agent is SIGKILLed. Returns how many seals waited in
/// `~/.lockbox/tmp` at the kill, the saved names and the new files.
#[allow(clippy::type_complexity)]
pub(crate) fn closed_files_then_kill(
    m: &MountedEnvoy,
) -> (usize, Vec<String>, Vec<(String, Vec<u8>)>) {
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
    (waiting, saved, files)
}
