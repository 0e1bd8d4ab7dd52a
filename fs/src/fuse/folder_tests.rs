//! Folders on a real mount (`docs/folders.md`, "The mount"): the adapter
//! over a store that lists folders, mounted with FUSE in this process, is
//! driven like ext4 by the same calls as a plain folder beside it, and the
//! answers and the trees must agree. The lockbox crate's tests cover the
//! agent's mount; these need a store with folders, which the agent does
//! not turn on until the mesh carries them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use super::*;
use crate::mount::Mount;
use crate::test_keys::TestKeys;

/// A mount of a store with folders, unmounted when dropped.
struct Mounted {
    mount: Option<Mount>,
    at: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
    }
}

/// Mount a fresh store with folders, or `None` (said loudly) where FUSE
/// cannot mount and `CI` is not set; under `CI=true` it must mount.
fn mounted() -> Option<Mounted> {
    mounted_in(tempfile::tempdir().unwrap())
}

/// [`mounted`], with the state and the mount point in `dir` (a store
/// there is opened again).
fn mounted_in(dir: tempfile::TempDir) -> Option<Mounted> {
    let store = Store::open(&dir.path().join("state"))
        .unwrap()
        .with_grouped_syncs(Duration::from_millis(100))
        .with_folders();
    let config = FsConfig {
        max_file_size: 1 << 30,
        cache_bytes: 16 << 20,
    };
    let fs = LockboxFs::new(store, TestKeys::unlocked(), config).unwrap();
    let at = dir.path().join("mnt");
    match Mount::start(Arc::new(fs), &at, 2) {
        Ok(m) => Some(Mounted {
            mount: Some(m),
            at,
            _dir: dir,
        }),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: cannot mount FUSE here ({e}); CI=true makes this a failure");
            None
        }
        Err(e) => panic!("cannot mount FUSE under CI=true: {e}"),
    }
}

/// One call, on a root given to it.
type Step = Box<dyn Fn(&Path) -> io::Result<()>>;

/// The errno of a result (`None`: success).
fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// Every entry below `root`: its kind and, for a file, its bytes.
fn tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
                out.insert(rel, None);
            } else {
                out.insert(rel, Some(fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

/// The mode bits of everything below `root`.
fn modes(root: &Path) -> BTreeMap<String, u32> {
    tree(root)
        .into_keys()
        .map(|rel| {
            let mode = fs::symlink_metadata(root.join(&rel)).unwrap().mode() & 0o7777;
            (rel, mode)
        })
        .collect()
}

/// mkdir, rmdir, rename, unlink, create and open of folders and files in
/// them answer what ext4 answers, and leave the same tree.
#[test]
fn folder_calls_on_the_mount_answer_as_on_ext4() {
    let Some(m) = mounted() else { return };
    let plain = m._dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let long = "n".repeat(256);
    let mkdir = |p: &'static str| -> Step { Box::new(move |r: &Path| fs::create_dir(r.join(p))) };
    let rmdir = |p: &'static str| -> Step { Box::new(move |r: &Path| fs::remove_dir(r.join(p))) };
    let unlink = |p: &'static str| -> Step { Box::new(move |r: &Path| fs::remove_file(r.join(p))) };
    let write = |p: &'static str, b: &'static [u8]| -> Step {
        Box::new(move |r: &Path| fs::write(r.join(p), b))
    };
    let mv = |a: &'static str, b: &'static str| -> Step {
        Box::new(move |r: &Path| fs::rename(r.join(a), r.join(b)))
    };
    let steps: Vec<(&str, Step)> = vec![
        ("mkdir a", mkdir("a")),
        ("mkdir a again", mkdir("a")),
        ("mkdir a/b", mkdir("a/b")),
        ("mkdir in a missing folder", mkdir("x/y")),
        ("write a/f", write("a/f", b"in a")),
        ("write a/b/g", write("a/b/g", b"in b")),
        ("mkdir under a file", mkdir("a/f/z")),
        ("mkdir over a file", mkdir("a/f")),
        ("write over a folder", write("a/b", b"no")),
        ("rmdir a, not empty", rmdir("a")),
        ("rmdir a file", rmdir("a/f")),
        ("rmdir a missing folder", rmdir("nope")),
        ("unlink a folder", unlink("a/b")),
        ("rename a into itself", mv("a", "a/b/c")),
        ("rename a file over a folder", mv("a/f", "a/b")),
        ("write top", write("top", b"top")),
        ("rename a folder over a file", mv("a", "top")),
        ("mkdir e", mkdir("e")),
        ("mkdir full", mkdir("full")),
        ("write full/x", write("full/x", b"x")),
        ("rename a folder over a full one", mv("a", "full")),
        ("rename a folder over an empty one", mv("a", "e")),
        ("rename a file across folders", mv("e/f", "top2")),
        ("rename a file into a folder", mv("top", "e/b/top")),
        ("rename a folder within", mv("e/b", "e/b2")),
        ("rename a folder up", mv("e/b2", "b3")),
        ("rmdir the old name", rmdir("e/b2")),
        ("a name too long", mkdir_long(&long)),
        ("mkdir a folder in a renamed one", mkdir("b3/new")),
        ("write in it", write("b3/new/deep", b"deep")),
        ("rmdir an empty folder", rmdir("e")),
    ];
    for (what, step) in &steps {
        let want = errno(step(&plain));
        let got = errno(step(&m.at));
        assert_eq!(got, want, "{what}: lockbox answered {got:?}, ext4 {want:?}");
    }
    assert_eq!(tree(&m.at), tree(&plain));
    // Opening a folder for writing, and a file as a folder.
    let w = fs::OpenOptions::new().write(true).open(m.at.join("b3"));
    assert_eq!(errno(w), Some(libc::EISDIR));
    assert_eq!(errno(fs::read_dir(m.at.join("top2"))), Some(libc::ENOTDIR));
}

fn mkdir_long(long: &str) -> Step {
    let long = long.to_owned();
    Box::new(move |r: &Path| fs::create_dir(r.join("a").join(&long)))
}

/// A folder shows as ext4 shows one: 0700, ours, 2 links plus one per
/// folder in it, `.` and `..` listed, a time that moves with its names
/// and stays as `utimensat` sets it; the store holds it as a 0700 folder
/// of 0600 ciphertext.
#[test]
fn folders_show_modes_links_and_times_as_ext4_does() {
    let Some(m) = mounted() else { return };
    let a = m.at.join("a");
    fs::create_dir_all(a.join("b/c")).unwrap();
    fs::create_dir(a.join("d")).unwrap();
    fs::write(a.join("f"), b"secret").unwrap();
    let meta = fs::metadata(&a).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.nlink(), 4, "2 + two folders");
    assert_eq!(fs::metadata(m.at.join("a/b/c")).unwrap().nlink(), 2);
    let listed = Command::new("ls").arg("-a").arg(&a).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(
        listed.split_whitespace().collect::<Vec<_>>(),
        [".", "..", "b", "d", "f"]
    );
    // The time is set exactly, and moves when a name in it changes.
    let then = UNIX_EPOCH + Duration::from_secs(1_577_836_800);
    fs::File::open(&a).unwrap().set_modified(then).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().modified().unwrap(), then);
    fs::write(a.join("b/inner"), b"x").unwrap();
    assert_eq!(
        fs::metadata(&a).unwrap().modified().unwrap(),
        then,
        "a name below b"
    );
    fs::write(a.join("g"), b"x").unwrap();
    assert!(fs::metadata(&a).unwrap().modified().unwrap() > then);
    // The store: the same tree, private, ciphertext only.
    let store = m._dir.path().join("state/store");
    m.mount.as_ref().unwrap().fs().store.sync_now().unwrap();
    let s = fs::metadata(store.join("a/b")).unwrap();
    assert!(s.is_dir() && s.mode() & 0o777 == 0o700);
    let f = store.join("a/f");
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    assert!(fs::read(&f)
        .unwrap()
        .starts_with(b"age-encryption.org/v1\n"));
    // cd works (search permission), and a file still is not executable.
    let pwd = Command::new("sh")
        .arg("-c")
        .arg("cd a/b && pwd")
        .current_dir(&m.at)
        .output()
        .unwrap();
    assert!(
        pwd.status.success(),
        "{}",
        String::from_utf8_lossy(&pwd.stderr)
    );
}

/// Ordinary tools on trees: `cp -r`, `rsync -a` twice (the second run
/// changes nothing), `tar x`, `find`, `du`, `mv` and `rm -r`.
#[test]
fn ordinary_tools_work_on_trees() {
    let Some(m) = mounted() else { return };
    let src = m._dir.path().join("src/ssh");
    fs::create_dir_all(src.join("keys/old")).unwrap();
    fs::create_dir_all(src.join("empty")).unwrap();
    for (p, body) in [
        ("config", &b"Host *\n"[..]),
        ("keys/id_ed25519", b"-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        ("keys/old/id_rsa", &[7u8; 300_000][..]),
        ("bin/connect", b"#!/bin/sh\nexec ssh \"$@\"\n"),
    ] {
        fs::create_dir_all(src.join(p).parent().unwrap()).unwrap();
        fs::write(src.join(p), body).unwrap();
    }
    // Owner-only, as lockbox keeps them (`docs/folders.md`, "What users get": modes).
    let run = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&m.at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&format!(
        "chmod +x {s}/bin/connect && chmod -R u=rwX,go= {s} && touch -d 2020-01-01 {s}/config \
         && cp -rp {s} cp",
        s = src.display()
    ));
    assert_eq!(tree(&m.at.join("cp")), tree(&src));
    assert_eq!(modes(&m.at.join("cp")), modes(&src));
    assert_eq!(modes(&src)["bin/connect"], 0o700, "a script stays runnable");
    assert_eq!(
        fs::metadata(m.at.join("cp/config"))
            .unwrap()
            .modified()
            .unwrap(),
        fs::metadata(src.join("config"))
            .unwrap()
            .modified()
            .unwrap()
    );
    // rsync -a, twice: the second run has nothing to change.
    run(&format!("rsync -a {}/ rs/", src.display()));
    assert_eq!(tree(&m.at.join("rs")), tree(&src));
    assert_eq!(modes(&m.at.join("rs")), modes(&src));
    let again = run(&format!(
        "rsync -a --itemize-changes {}/ rs/",
        src.display()
    ));
    assert_eq!(again, "", "the second rsync changed something");
    // tar x of an archive holding folders; find and du see the tree.
    run(&format!(
        "tar -C {} -cf {}/t.tar ssh",
        src.parent().unwrap().display(),
        m._dir.path().display()
    ));
    run(&format!(
        "mkdir untar && tar -C untar -xf {}/t.tar",
        m._dir.path().display()
    ));
    assert_eq!(tree(&m.at.join("untar/ssh")), tree(&src));
    let found = run("find untar -type f | sort");
    assert_eq!(
        found.lines().collect::<Vec<_>>(),
        [
            "untar/ssh/bin/connect",
            "untar/ssh/config",
            "untar/ssh/keys/id_ed25519",
            "untar/ssh/keys/old/id_rsa"
        ]
    );
    let du: u64 = run("du -sb untar | cut -f1").trim().parse().unwrap();
    assert!(du >= 300_000, "du saw {du} bytes");
    // mv of a folder, then rm -r.
    run("mv untar/ssh moved && rm -r untar cp");
    assert_eq!(tree(&m.at.join("moved")), tree(&src));
    run("rm -r moved rs");
    assert_eq!(run("ls -A"), "");
}

/// git works in a folder of the mount: init, add, commit, log, gc.
#[test]
fn git_works_in_a_folder() {
    let Some(m) = mounted() else { return };
    if Command::new("git").arg("--version").output().is_err() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "git is missing under CI=true"
        );
        eprintln!("SKIPPED: git is not installed");
        return;
    }
    let repo = m.at.join("work/repo");
    fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    git(&["init", "-q"]);
    fs::create_dir(repo.join("sub")).unwrap();
    fs::write(repo.join("sub/notes.txt"), b"first\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    fs::write(repo.join("sub/notes.txt"), b"second\n").unwrap();
    git(&["commit", "-q", "-am", "second"]);
    let log = git(&["log", "--format=%s"]);
    assert_eq!(log.lines().collect::<Vec<_>>(), ["second", "first"]);
    git(&["gc", "-q"]);
    git(&["fsck", "--strict"]);
    assert_eq!(git(&["show", "HEAD~1:sub/notes.txt"]), "first\n");
}

/// A folder's time set with `utimensat` is kept across a restart of the
/// file system (on the store folder), not only in the mount's memory.
#[test]
fn a_folders_time_survives_a_restart() {
    let Some(mut m) = mounted() else { return };
    fs::create_dir(m.at.join("kept")).unwrap();
    fs::write(m.at.join("kept/f"), b"x").unwrap();
    m.mount.as_ref().unwrap().fs().store.sync_now().unwrap();
    let then = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::open(m.at.join("kept"))
        .unwrap()
        .set_modified(then)
        .unwrap();
    m.mount.take().unwrap().unmount().unwrap();
    let dir = std::mem::replace(&mut m._dir, tempfile::tempdir().unwrap());
    drop(m);
    let m = mounted_in(dir).expect("mounted again");
    assert_eq!(
        fs::metadata(m.at.join("kept")).unwrap().modified().unwrap(),
        then
    );
}

/// The owner's execute bit (`docs/folders.md`, "What users get": modes): asked for at
/// create or by `chmod`, it is kept (0700) and the group and other bits
/// are cleared; `stat`, `access(2)` and exec agree with it; a seal keeps
/// it, and so does the store file, across a rename and a restart.
#[test]
fn the_owners_execute_bit_is_kept_and_the_other_bits_cleared() {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let Some(mut m) = mounted() else { return };
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    let store = m._dir.path().join("state/store");
    let run = |p: &Path| Command::new(p).output();
    fs::create_dir(m.at.join("bin")).unwrap();
    // Created executable (what cp and install do with a script).
    let script = m.at.join("bin/hello");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&script)
        .unwrap();
    f.write_all(b"#!/bin/sh\necho ran\n").unwrap();
    drop(f);
    assert_eq!(mode(&script), 0o700);
    let out = run(&script).unwrap();
    assert_eq!(out.stdout, b"ran\n", "{out:?}");
    assert!(rustix::fs::access(&script, rustix::fs::Access::EXEC_OK).is_ok());
    // chmod: group and other bits cleared, the owner's x kept or dropped.
    let chmod = |p: &Path, bits: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(bits)).unwrap();
    };
    chmod(&script, 0o644);
    assert_eq!(mode(&script), 0o600);
    assert_eq!(run(&script).unwrap_err().raw_os_error(), Some(libc::EACCES));
    assert!(rustix::fs::access(&script, rustix::fs::Access::EXEC_OK).is_err());
    chmod(&script, 0o4775);
    assert_eq!(mode(&script), 0o700);
    // A plain file made executable while open for writing, with a write
    // still to be sealed: the seal at close takes the bit.
    let tool = m.at.join("bin/tool");
    let mut f = fs::File::create(&tool).unwrap();
    f.write_all(b"#!/bin/sh\necho tool\n").unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o700))
        .unwrap();
    assert_eq!(mode(&tool), 0o700, "shown at once");
    drop(f);
    assert_eq!(run(&tool).unwrap().stdout, b"tool\n");
    // A new version keeps the bit; a rename keeps it.
    fs::write(&tool, b"#!/bin/sh\necho tool 2\n").unwrap();
    assert_eq!(mode(&tool), 0o700);
    fs::rename(&tool, m.at.join("bin/tool2")).unwrap();
    let tool = m.at.join("bin/tool2");
    assert_eq!(run(&tool).unwrap().stdout, b"tool 2\n");
    // A file made executable and back is plain again; folders stay 0700.
    let plain = m.at.join("bin/plain");
    fs::write(&plain, b"data").unwrap();
    chmod(&plain, 0o700);
    chmod(&plain, 0o600);
    assert_eq!(mode(&plain), 0o600);
    chmod(&m.at.join("bin"), 0o755);
    assert_eq!(mode(&m.at.join("bin")), 0o700);
    // The store files carry it, and nothing else.
    m.mount.as_ref().unwrap().fs().store.sync_now().unwrap();
    assert_eq!(mode(&store.join("bin/hello")), 0o700);
    assert_eq!(mode(&store.join("bin/tool2")), 0o700);
    assert_eq!(mode(&store.join("bin/plain")), 0o600);
    // Across a restart.
    m.mount.take().unwrap().unmount().unwrap();
    let dir = std::mem::replace(&mut m._dir, tempfile::tempdir().unwrap());
    drop(m);
    let m = mounted_in(dir).expect("mounted again");
    assert_eq!(mode(&m.at.join("bin/hello")), 0o700);
    assert_eq!(mode(&m.at.join("bin/plain")), 0o600);
    // (Not run: this mount has a new test key, which cannot open it.)
    let hello = m.at.join("bin/hello");
    assert!(rustix::fs::access(&hello, rustix::fs::Access::EXEC_OK).is_ok());
}

/// A folder's time set right after the files in it were closed (what
/// `rsync -a` does), before the round that puts their seals in place, is
/// the time the store folder keeps; so is the time of a folder whose
/// files only get new versions. A name made in it later moves it.
#[test]
fn a_folders_time_set_before_its_seals_land_is_kept_on_disk() {
    let Some(m) = mounted() else { return };
    let store_dir = m._dir.path().join("state/store");
    let on_disk = |f: &str| fs::metadata(store_dir.join(f)).unwrap().modified().unwrap();
    let store = &m.mount.as_ref().unwrap().fs().store;
    let then = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    fs::create_dir(m.at.join("d")).unwrap();
    fs::write(m.at.join("d/new"), b"made").unwrap();
    fs::File::open(m.at.join("d"))
        .unwrap()
        .set_modified(then)
        .unwrap();
    store.sync_now().unwrap();
    assert_eq!(
        on_disk("d"),
        then,
        "the create's seal landed after the time"
    );
    // A new version of a file in it leaves the folder's time.
    fs::write(m.at.join("d/new"), b"changed").unwrap();
    store.sync_now().unwrap();
    assert_eq!(on_disk("d"), then, "a new version moved the folder's time");
    assert_eq!(
        fs::metadata(m.at.join("d")).unwrap().modified().unwrap(),
        then
    );
    // A name made in it moves it, on the mount and on disk.
    fs::write(m.at.join("d/another"), b"x").unwrap();
    store.sync_now().unwrap();
    assert!(on_disk("d") > then);
    assert!(fs::metadata(m.at.join("d")).unwrap().modified().unwrap() > then);
}
