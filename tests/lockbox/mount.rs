//! The FUSE mount (`docs/design.md`, "The mount") driven by the ordinary tools
//! a user would point at it — cp, cat, mv, rm, dd, vim, rsync, sqlite3, age,
//! ls, stat, df — with every result checked by content, never by exit status
//! alone. Also the locked mode, tampered ciphertext, the size limit, concurrent
//! readers and writers, and the sweep of a folder filled while the agent was
//! down.
//!
//! The fixture, `MountedEnvoy`, lives in `harness::mount`.

use crate::harness::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self};
use std::time::Duration;

use crate::harness::age::{age_plaintext, have_age};
use crate::harness::*;
use crate::{require, require_fuse};

#[test]
fn cp_in_and_cat_out_are_byte_identical() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let small = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0 alice@laptop\n".to_vec();
    // Not a multiple of the 64 KiB chunk, so the last chunk is partial.
    let big = pseudo_random(1, 3 * MIB + 12_345);
    for (name, content) in [("id_ed25519.pub", &small), ("blob.bin", &big)] {
        let src = m.plain_file(name, content);
        m.tool_ok(&["cp", s(&src), s(&m.at(name))]);
        assert_same(
            &format!("cat {name}"),
            &m.tool_ok(&["cat", s(&m.at(name))]),
            content,
        );
        let ls = String::from_utf8(m.tool_ok(&["ls", "-l", s(&m.at(name))])).unwrap();
        let fields: Vec<&str> = ls.split_whitespace().collect();
        assert!(fields[0].starts_with("-rw-------"), "ls -l: {ls}");
        assert_eq!(fields[4], content.len().to_string(), "ls -l size: {ls}");
        assert_eq!(
            stat(&m, "%s %a %u", &m.at(name)),
            format!("{} 600 {}", content.len(), my_uid()),
            "stat of {name}"
        );
        assert_sealed(&m, name, content);
        assert_same(&format!("decrypt {name}"), &m.decrypt(name), content);
    }
    assert_eq!(names(&m.mnt), ["blob.bin", "id_ed25519.pub"]);
    assert_no_temp_files(&m);
}

#[test]
fn mv_rm_and_dd_behave_like_a_plain_folder() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let alpha = m.plain_file("alpha", b"alpha content\n");
    let bravo = m.plain_file("bravo", b"bravo content, longer than alpha\n");
    m.tool_ok(&["cp", s(&alpha), s(&m.at("a"))]);
    m.tool_ok(&["cp", s(&bravo), s(&m.at("b"))]);

    // A plain rename.
    m.tool_ok(&["mv", s(&m.at("a")), s(&m.at("c"))]);
    assert_eq!(names(&m.mnt), ["b", "c"]);
    assert_eq!(fs::read(m.at("c")).unwrap(), b"alpha content\n");
    assert!(!m.store().join("a").exists(), "store/a survived the rename");
    assert_sealed(&m, "c", b"alpha content\n");

    // A rename over an existing file replaces it; the source name is gone.
    m.tool_ok(&["mv", s(&m.at("c")), s(&m.at("b"))]);
    assert_eq!(names(&m.mnt), ["b"]);
    assert_eq!(fs::read(m.at("b")).unwrap(), b"alpha content\n");
    assert_eq!(stat(&m, "%s", &m.at("b")), "14");
    assert!(!m.store().join("c").exists(), "store/c survived the rename");
    assert_eq!(m.decrypt("b"), b"alpha content\n");

    // rm: gone from the mount and from the store.
    m.tool_ok(&["rm", s(&m.at("b"))]);
    assert!(names(&m.mnt).is_empty());
    assert!(!m.store().join("b").exists(), "store/b survived rm");

    // dd with conv=fsync, then read back.
    let data = pseudo_random(2, 5 * MIB);
    let src = m.plain_file("dd.src", &data);
    m.tool_ok(&[
        "dd",
        &format!("if={}", s(&src)),
        &format!("of={}", s(&m.at("x"))),
        "bs=1M",
        "count=4",
        "conv=fsync",
        "status=none",
    ]);
    assert_same("dd x", &fs::read(m.at("x")).unwrap(), &data[..4 * MIB]);
    assert_sealed(&m, "x", &data[..4 * MIB]);

    // A partial overwrite in the middle (read-modify-write of chunks 1 and 2).
    let patch = pseudo_random(3, 3000);
    let patch_src = m.plain_file("patch", &patch);
    m.tool_ok(&[
        "dd",
        &format!("if={}", s(&patch_src)),
        &format!("of={}", s(&m.at("x"))),
        "bs=1000",
        "seek=130",
        "conv=notrunc,fsync",
        "status=none",
    ]);
    let mut want = data[..4 * MIB].to_vec();
    want[130_000..133_000].copy_from_slice(&patch);
    assert_same("patched x", &fs::read(m.at("x")).unwrap(), &want);
    assert_same("patched x, decrypted", &m.decrypt("x"), &want);
    assert_no_temp_files(&m);
}

#[test]
fn vim_edits_in_place_and_by_rename_without_leftovers() {
    require_fuse!();
    require!(on_path("vim"), "vim is not installed (apt-get install vim)");
    let m = MountedEnvoy::unlocked();
    let f = m.at("notes.txt");
    fs::write(&f, "foo line\nsecond foo\nbaz\n").unwrap();
    // backupcopy=yes overwrites the file in place; =no renames it to
    // notes.txt~ and writes a new file. Both keep a swap file while editing.
    // vim -es says nothing and exits 1 on any error: its messages go to a
    // log outside the mount, shown if it fails (one run in ten failed so,
    // 2026-12-07, with nothing to say why).
    let log = m.home.parent().expect("a parent").join("vim.log");
    for (backupcopy, from, to) in [("yes", "foo", "bar"), ("no", "bar", "qux")] {
        let verbose = format!("-V1{}", s(&log));
        let out = m.tool(&[
            "vim",
            "-es",
            &verbose,
            "-u",
            "NONE",
            "-i",
            "NONE",
            "-c",
            &format!("set nocompatible swapfile writebackup nobackup backupcopy={backupcopy}"),
            "-c",
            &format!("%s/{from}/{to}/g"),
            "-c",
            "wq",
            s(&f),
        ]);
        assert!(
            out.status.success(),
            "vim with backupcopy={backupcopy} failed ({}); the mount holds {:?}; vim said:\n{}",
            out.status,
            names(&m.mnt),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let want = format!("{to} line\nsecond {to}\nbaz\n");
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            want,
            "backupcopy={backupcopy}"
        );
        assert_eq!(m.decrypt("notes.txt"), want.as_bytes());
        // No swap file, backup or vim's "4913" probe is left.
        assert_eq!(names(&m.mnt), ["notes.txt"], "backupcopy={backupcopy}");
        m.settle();
        assert_eq!(names(&m.store()), ["notes.txt"], "backupcopy={backupcopy}");
        assert_eq!(mode(&f), 0o600);
    }
    assert_no_temp_files(&m);
}

#[test]
fn rsync_copies_a_tree_and_updates_it() {
    require_fuse!();
    require!(
        on_path("rsync"),
        "rsync is not installed (apt-get install rsync)"
    );
    let m = MountedEnvoy::unlocked();
    let src = m.home.parent().unwrap().join("rsync-src");
    fs::create_dir(&src).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        ("one".into(), b"1".to_vec()),
        ("chunk-1".into(), pseudo_random(41, CHUNK - 1)),
        ("chunk".into(), pseudo_random(42, CHUNK)),
        ("chunk+1".into(), pseudo_random(43, CHUNK + 1)),
        ("medium".into(), pseudo_random(44, 200_000)),
        ("large".into(), pseudo_random(45, 2 * MIB + 7)),
        ("with space.txt".into(), b"spaces are fine\n".to_vec()),
        ("ünïcødé.key".into(), b"utf-8 names are fine\n".to_vec()),
    ];
    for i in 0..12u64 {
        files.push((
            format!("k{i:02}"),
            pseudo_random(100 + i, 1 + 400 * i as usize),
        ));
    }
    // Folders: rsync sets a folder's time right after closing the files
    // in it, before their seals land in the store folder.
    for i in 0..6u64 {
        files.push((
            format!("sub/deeper/f{i}"),
            pseudo_random(200 + i, 10 + 100 * i as usize),
        ));
    }
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for (name, content) in &files {
        fs::write(src.join(name), content).unwrap();
    }
    let check = |files: &[(String, Vec<u8>)]| {
        let mut want: Vec<&str> = files
            .iter()
            .map(|(n, _)| n.split('/').next().unwrap())
            .collect();
        want.sort();
        want.dedup();
        assert_eq!(names(&m.mnt), want);
        for (name, content) in files {
            assert_same(
                &format!("rsynced {name}"),
                &fs::read(m.at(name)).unwrap(),
                content,
            );
        }
    };
    let from = format!("{}/", s(&src));
    let to = format!("{}/", s(&m.mnt));
    m.tool_ok(&["rsync", "-a", &from, &to]);
    check(&files);
    assert_store_is_ciphertext(&m);
    // Again: rsync finds every file's size and time as it left them, so it
    // sends nothing (a line starting with '>' is a file sent). Attribute
    // lines may remain: group and other bits are cleared on the mount, and
    // the mount's root keeps its own time.
    let again = |when: &str| {
        let out = m.tool_ok(&["rsync", "-a", "--itemize-changes", &from, &to]);
        let out = String::from_utf8_lossy(&out).into_owned();
        let sent: Vec<&str> = out.lines().filter(|l| l.starts_with('>')).collect();
        assert!(sent.is_empty(), "rsync sent files again {when}: {sent:?}");
        assert!(
            // YXcstpoguax: the 't' of a time that differs is the 5th.
            out.lines()
                .all(|l| !l.starts_with(".f") || l.as_bytes().get(4) != Some(&b't')),
            "a file's time did not stick {when}:\n{out}"
        );
        assert!(
            out.lines().all(|l| !l.starts_with(".d")
                || l.ends_with(" ./")
                || l.as_bytes().get(4) != Some(&b't')),
            "a folder's time did not stick {when}:\n{out}"
        );
    };
    again("right after the first run");
    m.ok(&["stop"]);
    m.unlock();
    again("after a restart");

    // Change one file, remove another, sync again with --delete.
    files[5].1 = pseudo_random(46, 150_001);
    fs::write(src.join("medium"), &files[5].1).unwrap();
    fs::remove_file(src.join("one")).unwrap();
    files.remove(1);
    m.tool_ok(&["rsync", "-a", "--delete", &from, &to]);
    check(&files);
    m.settle();
    assert!(!m.store().join("one").exists());
    assert_eq!(names(&m.store()), names(&m.mnt));
    assert_no_temp_files(&m);
}

#[test]
fn sqlite_database_survives_transactions_and_a_fresh_reader() {
    require_fuse!();
    require!(
        on_path("sqlite3"),
        "sqlite3 is not installed (apt-get install sqlite3)"
    );
    let m = MountedEnvoy::unlocked();
    let db = m.at("db.sqlite");
    let sql = |script: &str| {
        m.tool_ok(&[
            "sqlite3",
            "-bail",
            "-batch",
            "-init",
            "/dev/null",
            s(&db),
            script,
        ])
    };
    // 1010-character rows, so the database spans many 64 KiB chunks.
    let insert = |lo: u32, hi: u32| {
        format!(
            "BEGIN; WITH RECURSIVE c(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM c WHERE i < {hi}) \
             INSERT INTO t(id, v) SELECT i, printf('row-%05d-', i) || replace(hex(zeroblob(500)), '00', 'ab') FROM c; COMMIT;"
        )
    };
    sql(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL); {} {}",
        insert(1, 100),
        insert(101, 200)
    ));
    sql(&format!(
        "{} {} {} BEGIN; UPDATE t SET v = 'updated' WHERE id % 50 = 0; COMMIT;",
        insert(201, 300),
        insert(301, 400),
        insert(401, 500)
    ));
    let out = String::from_utf8(sql(
        "PRAGMA integrity_check; SELECT count(*), sum(id), sum(length(v)) FROM t; \
         SELECT v FROM t WHERE id = 250; SELECT substr(v, 1, 12) FROM t WHERE id = 377;",
    ))
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "ok",
            &format!("500|125250|{}", 490 * 1010 + 10 * 7),
            "updated",
            "row-00377-ab"
        ],
        "{out}"
    );
    // The rollback journal is gone; only the database is left.
    assert_eq!(names(&m.mnt), ["db.sqlite"]);
    m.settle();
    let raw = fs::read(m.store().join("db.sqlite")).unwrap();
    assert!(raw.starts_with(AGE_MAGIC));
    assert!(!contains(&raw, b"SQLite format 3") && !contains(&raw, b"row-00377-"));
    assert_eq!(m.decrypt("db.sqlite"), fs::read(&db).unwrap());
    assert_no_temp_files(&m);
}

#[test]
fn reference_age_decrypts_a_file_written_through_the_mount() {
    require_fuse!();
    require!(on_path("age"), "age is not installed (apt-get install age)");
    let m = MountedEnvoy::unlocked();
    let content = pseudo_random(6, 300_000);
    fs::write(m.at("for-age"), &content).unwrap();
    let out = m.run(&["export-identity", "--passphrase-file", s(&m.pass)]);
    assert!(out.status.success());
    let key = m.home.parent().unwrap().join("key.txt");
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .unwrap()
        .write_all(&out.stdout)
        .unwrap();
    m.settle();
    let plain = m.tool_ok(&["age", "-d", "-i", s(&key), s(&m.store().join("for-age"))]);
    assert_same("age -d", &plain, &content);
}

#[test]
fn only_regular_files_and_attributes_are_fixed() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let f = m.at("f");
    fs::write(&f, b"0123456789").unwrap();

    // Nothing but regular files and folders.
    let eperm = "Operation not permitted";
    m.tool_ok(&["mkdir", s(&m.at("d"))]);
    m.tool_ok(&["rmdir", s(&m.at("d"))]);
    m.tool_fails(&["ln", "-s", "f", s(&m.at("sym"))], eperm);
    m.tool_fails(&["ln", s(&f), s(&m.at("hard"))], eperm);
    m.tool_fails(&["mkfifo", s(&m.at("fifo"))], eperm);
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        errno(std::os::unix::fs::symlink("f", m.at("sym"))),
        Some(libc::EPERM)
    );
    assert_eq!(errno(fs::hard_link(&f, m.at("hard"))), Some(libc::EPERM));
    assert_eq!(names(&m.mnt), ["f"]);
    m.settle();
    assert_eq!(names(&m.store()), ["f"]);

    // chown is accepted and ignored; of chmod, only the owner's execute
    // bit is kept (group and other bits are cleared, as a umask would).
    m.tool_ok(&["chmod", "0644", s(&f)]);
    m.tool_ok(&["chown", &my_uid().to_string(), s(&f)]);
    assert_eq!(stat(&m, "%a %u", &f), format!("600 {}", my_uid()));
    fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(mode(&f), 0o700);
    m.settle();
    assert_eq!(mode(&m.store().join("f")), 0o700, "the store file keeps it");
    m.tool_ok(&["chmod", "a-x", s(&f)]);
    assert_eq!(mode(&f), 0o600);

    // The modes shown decide access(2) and exec (the mount has no
    // default_permissions): readable, writable, executable when the
    // owner's execute bit is set.
    m.tool_ok(&["test", "-r", s(&f)]);
    m.tool_ok(&["test", "-w", s(&f)]);
    m.tool_ok(&["test", "-x", s(&m.mnt)]);
    assert!(
        !m.tool(&["test", "-x", s(&f)]).status.success(),
        "test -x of a file"
    );
    let script = m.at("script");
    fs::write(&script, b"#!/bin/sh\necho ran\n").unwrap();
    let err = Command::new(&script).output().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "exec: {err}");
    m.tool_ok(&["chmod", "+x", s(&script)]);
    m.tool_ok(&["test", "-x", s(&script)]);
    let ran = Command::new(&script).output().unwrap();
    assert_eq!(ran.stdout, b"ran\n", "{ran:?}");
    fs::remove_file(&script).unwrap();
    let gone = fs::metadata(m.at("script")).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));

    // truncate shortens, extends with zeros, empties.
    m.tool_ok(&["truncate", "-s", "3", s(&f)]);
    assert_eq!(fs::read(&f).unwrap(), b"012");
    assert_eq!(m.decrypt("f"), b"012");
    m.tool_ok(&["truncate", "-s", "6", s(&f)]);
    assert_eq!(fs::read(&f).unwrap(), b"012\0\0\0");
    m.tool_ok(&["truncate", "-s", "0", s(&f)]);
    assert_eq!(fs::read(&f).unwrap(), b"");
    assert_eq!(stat(&m, "%s", &f), "0");

    // touch sets times, and creates an empty file.
    m.tool_ok(&["touch", "-d", "2020-01-01 00:00:00 UTC", s(&f)]);
    assert_eq!(stat(&m, "%Y", &f), "1577836800");
    m.tool_ok(&["touch", s(&m.at("new"))]);
    assert_eq!(fs::read(m.at("new")).unwrap(), b"");
    assert_sealed(&m, "new", b"");

    // Names up to 255 bytes; longer ones are refused.
    let long = "n".repeat(255);
    fs::write(m.at(&long), b"long name").unwrap();
    assert_eq!(fs::read(m.at(&long)).unwrap(), b"long name");
    let too_long = "n".repeat(256);
    let err = fs::write(m.at(&too_long), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    m.settle();
    assert_eq!(names(&m.store()), ["f", "new", long.as_str()]);

    // statfs works and reports the store's file system.
    let df = String::from_utf8(m.tool_ok(&["df", s(&m.mnt)])).unwrap();
    assert!(df.contains(s(&m.mnt)), "{df}");
    let fs_of = |p: &Path| {
        String::from_utf8(m.tool_ok(&["stat", "-f", "-c", "%b %S", s(p)]))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        fs_of(&m.mnt),
        fs_of(&m.store()),
        "total blocks and block size"
    );
}

/// What rsync -a, cp -p and tar do: write, close, then set the mtime. The
/// time set after close(2) must stick. The kernel sends RELEASE after
/// close(2) returns, so the time can arrive while the file is still staged
/// but already sealed; it used to be kept only for a seal that never came.
#[test]
fn mtime_set_right_after_close_is_kept() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let then = std::time::UNIX_EPOCH + Duration::from_secs(1_577_836_800);
    for i in 0..64 {
        let p = m.at(&format!("t{i:02}"));
        fs::write(&p, pseudo_random(i, 500)).unwrap();
        fs::open(&p)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(then))
            .unwrap();
    }
    // After a restart every handle is long released and sealed.
    m.ok(&["stop"]);
    m.unlock();
    let wrong: Vec<String> = (0..64)
        .map(|i| format!("t{i:02}"))
        .filter(|n| fs::metadata(m.at(n)).unwrap().mtime() != 1_577_836_800)
        .collect();
    assert!(wrong.is_empty(), "mtime lost on {wrong:?}");
}

/// The folder's time moves when a name comes, goes or moves, as a
/// directory's does, and not when a file's content changes or its seal is
/// put in place a grouped round after its close: `tar` of the folder right
/// after a write used to fail with "file changed as we read it" (its
/// readdir made the kernel ask the time again, and the round had moved it).
#[test]
fn the_folder_time_moves_with_its_names_only() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    // Asked of the agent each time: a readdir makes the kernel ask again.
    let folder_time = || {
        assert!(fs::read_dir(&m.mnt).unwrap().count() < 10);
        fs::metadata(&m.mnt).unwrap().modified().unwrap()
    };
    let t0 = folder_time();
    fs::write(m.at("a"), b"one").unwrap();
    let t1 = folder_time();
    assert!(t1 > t0, "a new name left the folder's time");
    m.e.settle();
    assert_eq!(
        folder_time(),
        t1,
        "the seal put in place moved the folder's time"
    );
    fs::write(m.at("a"), b"two, longer").unwrap();
    m.e.settle();
    assert_eq!(folder_time(), t1, "a new content moved the folder's time");
    fs::rename(m.at("a"), m.at("b")).unwrap();
    let t2 = folder_time();
    assert!(t2 > t1, "a rename left the folder's time");
    fs::remove_file(m.at("b")).unwrap();
    assert!(folder_time() > t2, "a delete left the folder's time");
}

/// A file shows the time of its last write, before and after its seal:
/// the seal at close gives the store file the time the open file showed,
/// which the kernel may keep showing (it caches attributes until told).
#[test]
fn a_file_keeps_the_time_of_its_last_write_through_its_seal() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    // Sealed whole at close, and sealed as it is written (past 8 MiB).
    let mut times = Vec::new();
    for (name, len) in [("small", 200_000), ("streamed", 9 << 20)] {
        let mut f = fs::File::create(m.at(name)).unwrap();
        f.write_all(&pseudo_random(7, len)).unwrap();
        let written = f.metadata().unwrap().modified().unwrap();
        f.write_all(b"the last write").unwrap();
        let last = f.metadata().unwrap().modified().unwrap();
        assert!(last >= written);
        drop(f);
        let after_close = fs::metadata(m.at(name)).unwrap().modified().unwrap();
        assert_eq!(after_close, last, "{name}: the time after close(2)");
        times.push((name, last));
    }
    // The agent's own view, with no kernel cache in between.
    m.e.settle();
    for (name, last) in &times {
        let store = fs::metadata(m.store().join(name))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(store, *last, "{name}: the store file's time");
    }
    m.ok(&["stop"]);
    m.unlock();
    for (name, last) in &times {
        let fresh = fs::metadata(m.at(name)).unwrap().modified().unwrap();
        assert_eq!(fresh, *last, "{name}: the time after a restart");
    }
    // Opened for writing, not written: still the time of the last write.
    let (name, last) = times[0];
    let f = fs::OpenOptions::new().write(true).open(m.at(name)).unwrap();
    assert_eq!(f.metadata().unwrap().modified().unwrap(), last);
    drop(f);
    assert_eq!(fs::metadata(m.at(name)).unwrap().modified().unwrap(), last);
    // Truncated by its open: modified now.
    drop(fs::File::create(m.at(name)).unwrap());
    assert!(fs::metadata(m.at(name)).unwrap().modified().unwrap() > last);
}

/// The kernel caches names and attributes for as long as the agent does
/// not say otherwise; the agent says so for every change it makes outside
/// the mount (here the CLI's encrypt and delete), so what the mount shows
/// right after one is already the change, with no wait.
#[test]
fn changes_outside_the_mount_show_through_it_at_once() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    fs::write(m.at("a"), b"one").unwrap();
    assert_eq!(fs::read(m.at("a")).unwrap(), b"one");
    let open = fs::open(m.at("a")).unwrap();
    // Cached by the kernel now: the name and its attributes (a read marks
    // the access time stale, so the stat comes last).
    assert_eq!(fs::metadata(m.at("a")).unwrap().len(), 3);
    let two = b"version two, longer than one";
    let src = m.e.plain_file("a-two", two);
    m.ok(&["encrypt", &src.to_string_lossy(), "--name", "a"]);
    assert_eq!(fs::metadata(m.at("a")).unwrap().len(), two.len() as u64);
    assert_eq!(fs::read(m.at("a")).unwrap(), two);
    assert_eq!(
        open.metadata().unwrap().len(),
        two.len() as u64,
        "fstat too"
    );
    drop(open);
    m.ok(&["delete", "a"]);
    let gone = fs::metadata(m.at("a")).unwrap_err();
    assert_eq!(gone.kind(), std::io::ErrorKind::NotFound);
    assert!(names(&m.mnt).is_empty(), "{:?}", names(&m.mnt));
}

/// Decrypted bytes are cached by file, and a file is not known by its
/// inode, size and times: once a store file is gone, ext4 hands its inode
/// to the next file it makes (with a journal, at once), and a new version
/// whose size and modification time match the old one's (`cp -p`, `rsync
/// -a` and `touch -d` set times; the sizes of two seals of equally long
/// plaintexts often match) looked like the old file, whose plaintext the
/// chunk cache then served. Here the store file is rewritten in place,
/// which gives the mount exactly that: the same inode, size and time, and
/// other bytes.
#[test]
fn a_new_file_with_an_old_files_inode_size_and_time_is_read_afresh() {
    require_fuse!();
    require!(on_path("age"), "age is not installed (apt-get install age)");
    let m = MountedEnvoy::unlocked();
    let recipients = fs::read_to_string(m.e.state().join("recipients.txt")).unwrap();
    let recipient = recipients
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .expect("a recipient in recipients.txt")
        .to_owned();
    // The reference age writes headers of one length for one recipient,
    // so equally long plaintexts give equally long files. One chunk each.
    let seal = |byte: u8| {
        let plain = m.e.plain_file(&format!("plain-{byte}"), &[byte; 10_000]);
        let out = m.e.home.join(format!("sealed-{byte}.age"));
        m.tool_ok(&["age", "-r", &recipient, "-o", s(&out), s(&plain)]);
        fs::read(&out).unwrap()
    };
    let (one, two) = (seal(b'A'), seal(b'B'));
    assert_eq!(one.len(), two.len(), "age header lengths differ");
    let file = m.store().join("reborn");
    fs::write(&file, &one).unwrap();
    let when = fs::metadata(&file).unwrap().modified().unwrap();

    // A small read of part of the chunk decrypts it into the cache.
    let f = open_random(&m.at("reborn"));
    assert_eq!(pread(&f, 1000, 100).unwrap(), [b'A'; 100]);
    drop(f);

    // Other bytes under the same inode, size and modification time.
    let ino = fs::metadata(&file).unwrap().ino();
    let mut w = fs::OpenOptions::new().write(true).open(&file).unwrap();
    w.write_all(&two).unwrap();
    w.set_modified(when).unwrap();
    drop(w);
    let md = fs::metadata(&file).unwrap();
    assert_eq!(
        (md.ino(), md.len(), md.modified().unwrap()),
        (ino, one.len() as u64, when)
    );

    let f = open_random(&m.at("reborn"));
    assert_eq!(
        pread(&f, 1000, 100).unwrap(),
        [b'B'; 100],
        "the mount served the earlier file's plaintext"
    );
    drop(f);
    assert_eq!(fs::read(m.at("reborn")).unwrap(), [b'B'; 10_000]);
    assert!(!m.warned_about("reborn"), "a warning: {}", m.log());
}

/// A file deleted or replaced through the mount leaves the cache of
/// decrypted chunks at once, not when newer reads push it out: a secret
/// the user removed should not stay in the agent's memory. Seen from a
/// reader that still has the old file open: its next read of the cached
/// chunk (a page the kernel does not hold yet) has to decrypt it again.
#[test]
fn a_deleted_or_replaced_files_plaintext_leaves_the_cache_at_once() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    // `first` and `then`: two reads (offset, length) of the same chunk,
    // on different pages; `change` deletes or replaces the file between.
    let read_twice = |name: &str,
                      size: usize,
                      first: (usize, usize),
                      then: (usize, usize),
                      change: &dyn Fn()| {
        let content = pseudo_random(name.len() as u64, size);
        fs::write(m.at(name), &content).unwrap();
        m.settle();
        let f = open_random(&m.at(name));
        let (at, len) = first;
        assert!(pread(&f, at as u64, len).unwrap() == content[at..at + len]);
        change();
        let before = agent_read_bytes(&m);
        let (at, len) = then;
        assert!(pread(&f, at as u64, len).unwrap() == content[at..at + len]);
        let again = agent_read_bytes(&m) - before;
        // The chunk's ciphertext (all of a file of one chunk).
        let chunk = size.min(CHUNK) as u64;
        assert!(
            again >= chunk,
            "{name}: the agent read {again} bytes: the chunk was still cached"
        );
    };
    // One chunk, sealed while unlocked: cached at its close. The first
    // read comes from the cache.
    let small = 60_000;
    read_twice("deleted", small, (1000, 100), (40_000, 100), &|| {
        fs::remove_file(m.at("deleted")).unwrap()
    });
    read_twice("replaced", small, (1000, 100), (40_000, 100), &|| {
        fs::write(m.at("newer"), b"newer").unwrap();
        fs::rename(m.at("newer"), m.at("replaced")).unwrap();
    });
    assert_eq!(fs::read(m.at("replaced")).unwrap(), b"newer");
    // A file of many more chunks than the cache holds, whose first read
    // (more than half a chunk, less than all of it) put one in the cache.
    read_twice("large", 20 * MIB, (4096, 40_000), (49_152, 100), &|| {
        fs::remove_file(m.at("large")).unwrap()
    });
}

/// A version's record names the envoys its file was sealed to, read in the
/// same snapshot as their keys. A seal that raced a member change (here: a
/// recipient that is no member, as a departed one would be) shows as drift,
/// so it is re-encrypted instead of keeping the old key able to read it.
#[test]
fn a_seal_records_the_envoys_it_was_sealed_to() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    fs::write(m.at("before"), b"one").unwrap();
    assert_eq!(m.e.status_json()["recipient_drift"], 0);
    let list = m.e.state().join("recipients.txt");
    let mut text = fs::read_to_string(&list).unwrap();
    // The example recipient of age's documentation, as an envoy "ghost".
    text.push_str("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p  # ghost\n");
    fs::write(&list, text).unwrap();
    fs::write(m.at("during"), b"two").unwrap();
    assert_eq!(m.e.status_json()["recipient_drift"], 1);
    assert_eq!(fs::read(m.at("during")).unwrap(), b"two");
}

#[test]
fn locked_mount_lists_moves_and_replaces_but_does_not_read() {
    require_fuse!();
    let m = MountedEnvoy::new(TEST_CONFIG);
    m.start();
    m.assert_mounted();
    let denied = "Permission denied";

    // Before the first unlock: creating works, reading does not.
    let src = m.plain_file("v1", b"secret v1\n");
    m.tool_ok(&["cp", s(&src), s(&m.at("f"))]);
    let out = m.tool_fails(&["cat", s(&m.at("f"))], denied);
    assert!(out.stdout.is_empty());
    let err = fs::read(m.at("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    m.unlock();
    assert_eq!(fs::read(m.at("f")).unwrap(), b"secret v1\n");
    // A reader that stays open across the lock: what the kernel cached
    // for it goes with the key, so its next read is refused too.
    let held = open_random(&m.at("f"));
    assert_eq!(pread(&held, 0, 100).unwrap(), b"secret v1\n");

    m.ok(&["lock"]);
    let log_before = m.log().len();
    let err = pread(&held, 0, 100).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    drop(held);
    // Names, sizes and times are not secret.
    assert_eq!(names(&m.mnt), ["f"]);
    assert_eq!(stat(&m, "%s %a", &m.at("f")), "10 600");
    // Anything that needs the plaintext is refused.
    let out = m.tool_fails(&["cat", s(&m.at("f"))], denied);
    assert!(out.stdout.is_empty());
    m.tool_fails(
        &["bash", "-c", "echo more >> \"$1\"", "bash", s(&m.at("f"))],
        denied,
    );
    let patch = m.plain_file("patch", b"XY");
    m.tool_fails(
        &[
            "dd",
            &format!("if={}", s(&patch)),
            &format!("of={}", s(&m.at("f"))),
            "bs=1",
            "seek=2",
            "conv=notrunc",
            "status=none",
        ],
        denied,
    );
    assert_eq!(stat(&m, "%s", &m.at("f")), "10", "refused writes changed f");

    // mv and a full replacement (O_TRUNC) work.
    m.tool_ok(&["mv", s(&m.at("f")), s(&m.at("g"))]);
    assert_eq!(names(&m.mnt), ["g"]);
    assert!(!m.store().join("f").exists());
    m.tool_ok(&["bash", "-c", "echo new > \"$1\"", "bash", s(&m.at("g"))]);
    assert_eq!(stat(&m, "%s", &m.at("g")), "4");
    // Creating works, and so does rm.
    m.tool_ok(&["bash", "-c", "echo fresh > \"$1\"", "bash", s(&m.at("h"))]);
    m.tool_ok(&["cp", s(&src), s(&m.at("i"))]);
    m.tool_ok(&["rm", s(&m.at("i"))]);
    assert_eq!(names(&m.mnt), ["g", "h"]);
    m.settle();
    assert_eq!(names(&m.store()), ["g", "h"]);
    assert_store_is_ciphertext(&m);
    let log = m.log();
    assert!(
        log[log_before..].contains("lockbox unlock"),
        "the log says what to do:\n{log}"
    );
    m.unlock();
    assert_eq!(fs::read(m.at("g")).unwrap(), b"new\n");
    assert_eq!(fs::read(m.at("h")).unwrap(), b"fresh\n");

    // Opening for reading and writing is opening for reading.
    m.ok(&["lock"]);
    let err = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.at("g"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "open O_RDWR: {err}");

    // Handles whose plaintext sits in the agent's memory across the lock
    // are refused too: a file open for reading and writing (its old content
    // loaded), and a reader of a file being written (it reads the writer's
    // buffer). The writer still seals what it wrote at its close.
    m.unlock();
    let rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.at("g"))
        .unwrap();
    assert_eq!(pread(&rw, 0, 100).unwrap(), b"new\n");
    let mut w = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.at("h"))
        .unwrap();
    w.write_all(b"being written\n").unwrap();
    let r = fs::open(m.at("h")).unwrap();
    assert_eq!(pread(&r, 0, 100).unwrap(), b"being written\n");
    m.ok(&["lock"]);
    for (what, f) in [("O_RDWR", &rw), ("a reader of a file being written", &r)] {
        let err = pread(f, 0, 100).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{what}: {err}");
    }
    drop((r, w, rw));
    m.unlock();
    assert_eq!(fs::read(m.at("h")).unwrap(), b"being written\n");
    assert_eq!(fs::read(m.at("g")).unwrap(), b"new\n");
}

#[test]
fn tampered_ciphertext_reads_as_eio_and_never_as_garbage() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let text = |tag: &str, lines: usize| -> Vec<u8> {
        (0..lines)
            .flat_map(|i| format!("{tag}-{i:06}\n").into_bytes())
            .collect()
    };
    let single = text("SECRETONE", 2_000); // 34 000 bytes: one chunk
    let multi = text("SECRETMANY", 20_000); // 360 000 bytes: six chunks
    fs::write(m.at("single-chunk"), &single).unwrap();
    fs::write(m.at("multi-chunk"), &multi).unwrap();
    // Restart, so that no cache of the agent or the kernel holds plaintext.
    m.ok(&["stop"]);
    tamper_middle(&m.store().join("single-chunk"));
    let damaged = tamper_middle(&m.store().join("multi-chunk"));
    assert!(
        damaged >= CHUNK,
        "the damage should not be in the first chunk"
    );
    m.unlock();
    m.assert_mounted();

    let out = m.tool_fails(&["cat", s(&m.at("single-chunk"))], "Input/output error");
    assert!(
        out.stdout.is_empty(),
        "cat printed {} bytes",
        out.stdout.len()
    );
    let err = fs::read(m.at("single-chunk")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    // Authentic bytes before the damaged 4 KiB block may be returned (the
    // whole chunks before it, and its chunk's blocks before it where a
    // read came by blocks); nothing else.
    let out = m.tool_fails(&["cat", s(&m.at("multi-chunk"))], "Input/output error");
    assert!(
        out.stdout.len() <= damaged / 4096 * 4096 && multi.starts_with(&out.stdout),
        "cat printed {} bytes; the damage is at byte {damaged}",
        out.stdout.len()
    );
    let log = m.log();
    for name in ["single-chunk", "multi-chunk"] {
        assert!(m.warned_about(name), "a WARN names {name}:\n{log}");
    }
    assert!(!log.contains("SECRETONE") && !log.contains("SECRETMANY"));
    // Nothing else is disturbed.
    fs::write(m.at("fine"), b"still fine").unwrap();
    assert_eq!(fs::read(m.at("fine")).unwrap(), b"still fine");
}

#[test]
fn small_reads_of_a_large_file_decrypt_blocks_and_fall_back_to_chunks() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    // 1 MiB of distinct lines (16 chunks, 256 blocks) and a one-chunk file.
    let big: Vec<u8> = (0..(MIB / 32))
        .flat_map(|i| format!("BLOCKSECRET-{i:019}\n").into_bytes())
        .collect();
    assert_eq!(big.len(), MIB);
    fs::write(m.at("big"), &big).unwrap();
    fs::write(m.at("small"), &big[..10_000]).unwrap();
    m.settle();
    let tags = m.e.state().join("tags");
    let index = fs::read(tags.join("big")).expect("a file sealed unlocked has block tags");
    assert_eq!(
        index.len(),
        64 + 16 * 256,
        "64-byte head and a tag per 4 KiB block"
    );
    assert_eq!(mode(&tags.join("big")), 0o600);
    assert_eq!(mode(&tags), 0o700);
    assert!(!contains(&index, b"BLOCKSECRET"));
    assert!(
        !tags.join("small").exists(),
        "a one-chunk file needs no tags"
    );

    // A fresh agent and mount: nothing cached. One 4 KiB read in each of
    // the 16 chunks, off its start, so that none is a whole chunk.
    m.ok(&["stop"]);
    m.unlock();
    m.assert_mounted();
    let offsets: Vec<u64> = (0..16)
        .map(|c| (c * CHUNK + 4096 * (1 + c % 14)) as u64)
        .collect();
    let f = open_random(&m.at("big"));
    let before = agent_read_bytes(&m);
    for &at in &offsets {
        let got = pread(&f, at, 4096).unwrap();
        assert!(got == big[at as usize..at as usize + 4096], "4 KiB at {at}");
    }
    let read = agent_read_bytes(&m) - before;
    // By blocks: 16 × 4 KiB, the 4 KiB index and the header and last chunk
    // (read once, at the first miss). By chunks it would be 16 × 64 KiB.
    assert!(
        read < 16 * 4096 + 4160 + 2 * CHUNK as u64 + 64 * 1024,
        "the agent read {read} bytes for 16 reads of 4 KiB: not by blocks"
    );
    // Reads across a block edge, at the file's end, and of a whole chunk.
    for (at, n) in [
        (4090u64, 20usize),
        (MIB as u64 - 100, 4096),
        (CHUNK as u64 * 3, CHUNK),
    ] {
        let got = pread(&f, at, n).unwrap();
        let end = (at as usize + n).min(MIB);
        assert!(got == big[at as usize..end], "{n} bytes at {at}");
    }
    drop(f);

    // A damaged index only costs speed: the chunk's own tag vouches.
    m.ok(&["stop"]);
    let mut bad = index.clone();
    bad[64 + 16 * 5] ^= 0x40; // block 5's tag
    fs::write(tags.join("big"), &bad).unwrap();
    m.unlock();
    let f = open_random(&m.at("big"));
    for at in [5 * 4096u64, 6 * 4096, 300_000] {
        assert!(pread(&f, at, 4096).unwrap() == big[at as usize..at as usize + 4096]);
    }
    drop(f);
    assert!(
        !m.warned_about("big"),
        "a damaged index is not a damaged file: no WARN"
    );

    // Damaged ciphertext is EIO by blocks as by chunks, whatever the index.
    m.ok(&["stop"]);
    fs::write(tags.join("big"), &index).unwrap();
    let bad_chunk = tamper_middle(&m.store().join("big")) / CHUNK;
    m.unlock();
    let f = open_random(&m.at("big"));
    let at = (bad_chunk * CHUNK) as u64;
    let mut eio = 0;
    for block in 0..16u64 {
        match pread(&f, at + block * 4096, 4096) {
            Ok(got) => assert!(
                got == big[(at + block * 4096) as usize..][..4096],
                "block {block} of the damaged chunk read as garbage"
            ),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                eio += 1;
            }
        }
    }
    assert!(eio >= 1, "the damaged block was read without an error");
    let other = ((bad_chunk + 1) % 16 * CHUNK) as u64 + 8192;
    assert!(pread(&f, other, 4096).unwrap() == big[other as usize..][..4096]);
    drop(f);
    assert!(m.warned_about("big"), "damaged ciphertext: no WARN");

    // A new version sealed while locked has no tags; the old version's
    // tags put back (a crash, or a version from a peer) are told apart.
    m.ok(&["lock"]);
    let v2: Vec<u8> = big.iter().map(|b| b.to_ascii_lowercase()).collect();
    fs::write(m.at("big"), &v2).unwrap();
    m.settle();
    assert!(
        !tags.join("big").exists(),
        "a seal while locked keeps no tags"
    );
    fs::write(tags.join("big"), &index).unwrap();
    m.unlock();
    let f = open_random(&m.at("big"));
    for &at in &offsets {
        assert!(
            pread(&f, at, 4096).unwrap() == v2[at as usize..][..4096],
            "v2 at {at}"
        );
    }
    drop(f);

    // Tags move with a rename and go with a remove.
    fs::write(m.at("big"), &big).unwrap();
    m.settle();
    assert!(tags.join("big").exists());
    fs::rename(m.at("big"), m.at("moved")).unwrap();
    m.settle();
    assert!(!tags.join("big").exists() && tags.join("moved").exists());
    let f = open_random(&m.at("moved"));
    assert!(pread(&f, 70_000, 4096).unwrap() == big[70_000..74_096]);
    drop(f);
    fs::remove_file(m.at("moved")).unwrap();
    m.settle();
    assert!(
        !tags.join("moved").exists(),
        "the tags of a removed file stay"
    );
}

#[test]
fn a_version_sealed_without_tags_is_tagged_at_its_first_small_read() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    // 2 MiB of distinct lines (32 chunks, 512 blocks), sealed while locked:
    // as a version from a peer, it has no block tags.
    let big: Vec<u8> = (0..(2 * MIB / 32))
        .flat_map(|i| format!("RETAGSECRET-{i:019}\n").into_bytes())
        .collect();
    assert_eq!(big.len(), 2 * MIB);
    m.ok(&["lock"]);
    fs::write(m.at("big"), &big).unwrap();
    m.settle();
    let index = m.e.state().join("tags").join("big");
    assert!(!index.exists(), "a seal while locked keeps no tags");

    // The first small read goes by chunk and asks for the tags, which a
    // background thread makes and keeps.
    m.unlock();
    let f = open_random(&m.at("big"));
    assert!(pread(&f, 100_000, 4096).unwrap() == big[100_000..104_096]);
    let want = (64 + 16 * 512) as u64;
    wait_until(Duration::from_secs(60), || {
        fs::metadata(&index).is_ok_and(|md| md.len() == want)
    })
    .expect("block tags made after the fact");
    let bytes = fs::read(&index).unwrap();
    assert!(!contains(&bytes, b"RETAGSECRET"), "plaintext in the index");
    assert_eq!(mode(&index), 0o600);

    // Small reads of chunks not read before now go by blocks, through the
    // tags the thread handed to the mount, then through those on disk.
    let by_blocks = |f: &fs::File, what: &str| {
        let before = agent_read_bytes(&m);
        for c in 2..18usize {
            let at = c * CHUNK + 4096 * (1 + c % 14);
            let got = pread(f, at as u64, 4096).unwrap();
            assert!(got == big[at..at + 4096], "{what}: 4 KiB at {at}");
        }
        let read = agent_read_bytes(&m) - before;
        // By chunks it would be 16 × 64 KiB.
        assert!(
            read < 4 * CHUNK as u64,
            "{what}: the agent read {read} bytes for 16 reads of 4 KiB: not by blocks"
        );
    };
    by_blocks(&f, "in memory");
    drop(f);
    m.ok(&["stop"]);
    let kept = fs::metadata(&index).unwrap().ino();
    m.unlock();
    let f = open_random(&m.at("big"));
    // The first read also opens the header and the last chunk.
    assert!(pread(&f, 8192, 100).unwrap() == big[8192..8292]);
    by_blocks(&f, "from disk");
    drop(f);
    m.settle();
    assert_eq!(
        fs::metadata(&index).unwrap().ino(),
        kept,
        "the tags on disk were made again, not used"
    );
    assert!(!m.warned_about("big"), "tagging after the fact warned");
}

#[test]
fn a_name_the_kernel_forgot_is_stated_again_without_reading_its_file() {
    require_fuse!();
    let dropped = drop_kernel_dentries();
    require!(dropped.is_ok(), dropped.unwrap_err());
    let m = MountedEnvoy::unlocked();
    let sizes: Vec<usize> = (0..40).map(|i| 1000 + 37 * i).collect();
    for (i, len) in sizes.iter().enumerate() {
        fs::write(m.at(&format!("f{i}")), vec![b'x'; *len]).unwrap();
    }
    // One more, renamed after its seal: its version keeps its size.
    fs::write(m.at("before"), vec![b'y'; 5555]).unwrap();
    fs::rename(m.at("before"), m.at("after")).unwrap();
    m.settle();
    drop_kernel_dentries().unwrap();
    let before = agent_read_bytes(&m);
    for (i, len) in sizes.iter().enumerate() {
        let md = fs::metadata(m.at(&format!("f{i}"))).unwrap();
        assert_eq!(md.len(), *len as u64, "size of f{i}");
    }
    assert_eq!(fs::metadata(m.at("after")).unwrap().len(), 5555);
    let read = agent_read_bytes(&m) - before;
    // Each name costs the agent one LOOKUP request (a 40-byte head and the
    // name) from /dev/fuse; reading a store file's header would add more
    // than 1000 bytes (the header and the start of the ciphertext).
    assert!(
        read >= 41 * 40,
        "the agent read {read} bytes: the kernel did not ask again, the test proves nothing"
    );
    assert!(
        read < 41 * 200,
        "the agent read {read} bytes to stat 41 files it had sealed: it read their headers"
    );
    // A version the agent never saw (sealed by another agent) is still
    // sized from its header.
    m.ok(&["stop"]);
    m.unlock();
    assert_eq!(fs::metadata(m.at("f3")).unwrap().len(), sizes[3] as u64);
}

#[test]
fn writes_past_max_file_size_fail_with_efbig_and_keep_the_old_version() {
    require_fuse!();
    let m = MountedEnvoy::unlocked_with(&format!("{TEST_CONFIG}max_file_size: 1MiB\n"));
    let v1 = pseudo_random(10, 100_000);
    fs::write(m.at("big"), &v1).unwrap();
    m.settle();
    let sealed = fs::read(m.store().join("big")).unwrap();

    // The 17th 64 KiB block crosses 1 MiB.
    m.tool_fails(
        &[
            "dd",
            "if=/dev/zero",
            &format!("of={}", s(&m.at("big"))),
            "bs=64k",
            "count=20",
            "status=none",
        ],
        "File too large",
    );
    assert_same("big after EFBIG", &fs::read(m.at("big")).unwrap(), &v1);
    assert_same("decrypted big after EFBIG", &m.decrypt("big"), &v1);
    m.settle();
    assert_eq!(
        fs::read(m.store().join("big")).unwrap(),
        sealed,
        "store/big changed"
    );

    // Exactly the limit is fine; one byte more is EFBIG on that write.
    m.tool_ok(&[
        "dd",
        "if=/dev/zero",
        &format!("of={}", s(&m.at("exact"))),
        "bs=64k",
        "count=16",
        "status=none",
    ]);
    assert_eq!(fs::metadata(m.at("exact")).unwrap().len(), MIB as u64);
    assert_eq!(m.decrypt("exact"), vec![0u8; MIB]);
    // A child process writes: a descriptor of this test process would be
    // closed (flushed, so the 1 MiB sealed before the byte too many) by
    // any child another test spawns meanwhile.
    let script = "import errno, os, sys\n\
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)\n\
        d = memoryview(b'\\x07' * (1 << 20))\n\
        while d:\n    d = d[os.write(fd, d):]\n\
        for step in (lambda: os.write(fd, b'!'), lambda: os.close(fd)):\n\
        \x20   try:\n        step()\n        print('ok')\n\
        \x20   except OSError as e:\n        print(errno.errorcode[e.errno])\n";
    let out = Command::new("python3")
        .args(["-c", script, s(&m.at("big"))])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The byte too many, and the close (which seals nothing): EFBIG.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "EFBIG\nEFBIG\n");
    assert_same(
        "big after a second EFBIG",
        &fs::read(m.at("big")).unwrap(),
        &v1,
    );
    assert_no_temp_files(&m);
}

#[test]
fn a_file_written_start_to_end_is_sealed_as_it_grows() {
    use std::os::unix::fs::FileExt;
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let big = pseudo_random(21, 12 * MIB);

    // While it is being written, the store's temp folder holds its
    // ciphertext (past the first 8 MiB): no plaintext, no 12 MiB buffer.
    // A child process writes it and holds it open: a descriptor of this
    // test process would be closed (flushed, so sealed) by any child
    // another test spawns meanwhile.
    let script = "import sys\n\
        f = open(sys.argv[1], 'wb', buffering=0)\n\
        d = sys.stdin.buffer.read(int(sys.argv[2]))\n\
        for i in range(0, len(d), 1 << 20):\n    f.write(d[i:i + (1 << 20)])\n\
        print('written', flush=True)\n\
        sys.stdin.buffer.read(1)\n\
        f.close()\n";
    let mut writer = Command::new("python3")
        .args(["-c", script, s(&m.at("stream")), &big.len().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = writer.stdin.take().unwrap();
    stdin.write_all(&big).unwrap();
    let mut line = [0u8; 8];
    writer.stdout.take().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"written\n");
    let temps = temp_files(&m);
    let (partial, len) = temps
        .iter()
        .max_by_key(|(_, len)| *len)
        .cloned()
        .expect("a temp file while writing");
    assert!(
        len >= 8 * MIB as u64,
        "the seal trails the writes: {temps:?}"
    );
    let raw = fs::read(&partial).unwrap();
    assert!(raw.starts_with(AGE_MAGIC), "the temp file is not age");
    for at in [0, 5 * MIB, 11 * MIB] {
        assert!(
            !contains(&raw, &big[at..at + 32]),
            "the temp file holds plaintext from byte {at}"
        );
    }
    stdin.write_all(b"x").unwrap();
    drop(stdin);
    assert!(writer.wait().unwrap().success(), "the writer failed");
    assert_same("stream", &fs::read(m.at("stream")).unwrap(), &big);
    assert_same("decrypted stream", &m.decrypt("stream"), &big);
    assert_sealed(&m, "stream", &big);

    // A write elsewhere than at the end, and a read through the writer,
    // turn it back into staged plaintext; appends go on after that.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.at("patched"))
        .unwrap();
    append_all(&mut f, &big);
    f.write_all_at(b"PATCH", 100).unwrap();
    let mut back = vec![0u8; 4096];
    f.read_exact_at(&mut back, 9 * MIB as u64).unwrap();
    assert_same(
        "read back through the writer",
        &back,
        &big[9 * MIB..9 * MIB + 4096],
    );
    f.write_all_at(b"tail", big.len() as u64).unwrap();
    drop(f);
    let mut want = big.clone();
    want[100..105].copy_from_slice(b"PATCH");
    want.extend_from_slice(b"tail");
    assert_same("patched", &fs::read(m.at("patched")).unwrap(), &want);

    // fsync puts the version in place; writing on after it keeps it.
    let mut f = fs::File::create(m.at("synced")).unwrap();
    append_all(&mut f, &big);
    f.sync_all().unwrap();
    assert_same("after fsync", &m.decrypt("synced"), &big);
    f.write_all(b"more").unwrap();
    drop(f);
    let mut want = big.clone();
    want.extend_from_slice(b"more");
    assert_same(
        "written on after fsync",
        &fs::read(m.at("synced")).unwrap(),
        &want,
    );

    // Truncation of a file being streamed: shorter, then to nothing.
    let mut f = fs::File::create(m.at("cut")).unwrap();
    append_all(&mut f, &big);
    f.set_len(10 * MIB as u64 + 3).unwrap();
    drop(f);
    assert_same("cut", &fs::read(m.at("cut")).unwrap(), &big[..10 * MIB + 3]);
    let mut f = fs::File::create(m.at("emptied")).unwrap();
    append_all(&mut f, &big);
    f.set_len(0).unwrap();
    f.write_all_at(b"small", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(m.at("emptied")).unwrap(), b"small");

    // A close of a duplicate descriptor (a spawned child closes its copy
    // at exec) seals what was streamed; writing on decrypts it back.
    let mut f = fs::File::create(m.at("forked")).unwrap();
    append_all(&mut f, &big);
    assert!(Command::new("true").status().unwrap().success());
    assert_same("sealed at the child's close", &m.decrypt("forked"), &big);
    f.write_all(b"on").unwrap();
    drop(f);
    let mut want = big.clone();
    want.extend_from_slice(b"on");
    assert_same("forked", &fs::read(m.at("forked")).unwrap(), &want);

    // So while locked, writing on after such a close (`lockbox lock`'s
    // own spawn makes one) is refused, and the version that close sealed
    // stays whole. (If another test's child closed a copy during the
    // appends, the file was decrypted back and staged, and the write
    // works: the content is then whole with it.)
    let mut f = fs::File::create(m.at("locked")).unwrap();
    append_all(&mut f, &big);
    m.ok(&["lock"]);
    let mut want = big.clone();
    match f.write_all_at(b"end", big.len() as u64) {
        Ok(()) => want.extend_from_slice(b"end"),
        Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}"),
    }
    drop(f);
    m.unlock();
    assert_same("locked", &fs::read(m.at("locked")).unwrap(), &want);
    assert_no_temp_files(&m);
}

#[test]
fn concurrent_readers_and_writers_see_whole_versions() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();

    // Two readers of one file read the same bytes.
    let shared = pseudo_random(11, 2 * MIB + 1);
    fs::write(m.at("shared"), &shared).unwrap();
    thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                for _ in 0..5 {
                    assert_same("parallel read", &fs::read(m.at("shared")).unwrap(), &shared);
                }
            });
        }
    });

    // One descriptor read by four threads at scattered offsets: each read
    // decrypts on its own thread (the handle keeps several decryptors).
    let scattered = pseudo_random(12, 5 * MIB + 333);
    fs::write(m.at("scattered"), &scattered).unwrap();
    let f = fs::open(m.at("scattered")).unwrap();
    thread::scope(|sc| {
        for t in 0..4u64 {
            let (f, scattered) = (&f, &scattered);
            sc.spawn(move || {
                use std::os::unix::fs::FileExt;
                for i in 0..40u64 {
                    let off = ((i * 7919 + t * 104_729) * 4099) % scattered.len() as u64;
                    let mut buf = vec![0u8; 70_000];
                    let n = f.read_at(&mut buf, off).unwrap();
                    let want =
                        &scattered[off as usize..(off as usize + 70_000).min(scattered.len())];
                    assert_eq!(n, want.len(), "short pread at {off}");
                    assert_same("scattered pread", &buf[..n], want);
                }
            });
        }
    });
    drop(f);

    // A reader never sees a mix while a writer replaces the file (a new
    // version is written beside it and renamed over it, as editors do).
    const SIZE: usize = MIB;
    fs::write(m.at("flip"), vec![1u8; SIZE]).unwrap();
    let done = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    thread::scope(|sc| {
        sc.spawn(|| {
            while !done.load(Ordering::SeqCst) || reads.load(Ordering::SeqCst) < 10 {
                let got = fs::read(m.at("flip")).unwrap();
                assert_eq!(got.len(), SIZE, "a reader saw a short version");
                let first = got[0];
                assert!(
                    (1..=8).contains(&first) && got.iter().all(|&b| b == first),
                    "a reader saw a mix of versions (first byte {first}, mixed at {:?})",
                    got.iter().position(|&b| b != first)
                );
                reads.fetch_add(1, Ordering::SeqCst);
            }
        });
        let written = (2..=8u8).try_for_each(|v| {
            fs::write(m.at(".flip.tmp"), vec![v; SIZE])?;
            fs::rename(m.at(".flip.tmp"), m.at("flip"))
        });
        // Set before any panic, or the reader would loop forever.
        done.store(true, Ordering::SeqCst);
        written.expect("replace flip");
    });
    assert_eq!(fs::read(m.at("flip")).unwrap(), vec![8u8; SIZE]);

    // 32 writers at once, each to its own file.
    let contents: Vec<Vec<u8>> = (0..32)
        .map(|i| pseudo_random(1000 + i, 50_000 + 7919 * i as usize))
        .collect();
    thread::scope(|sc| {
        for (i, content) in contents.iter().enumerate() {
            let m = &m;
            sc.spawn(move || fs::write(m.at(&format!("par{i:02}")), content).unwrap());
        }
    });
    for (i, content) in contents.iter().enumerate() {
        let name = format!("par{i:02}");
        assert_same(&name, &fs::read(m.at(&name)).unwrap(), content);
    }
    m.settle();
    assert_eq!(names(&m.store()).len(), 32 + 3);
    assert_store_is_ciphertext(&m);
    assert_no_temp_files(&m);
}

/// ftruncate(2) is a write: an fsync(2) after it seals the new length
/// before it returns, without waiting for the close (SQLite's
/// `journal_mode=TRUNCATE` relies on this). And an fsync through any
/// descriptor of a file makes what its writers wrote durable (`sync FILE`
/// opens it read-only). Shown by killing the agent after the fsyncs with
/// the descriptors still open: the truncation, and the other descriptor's
/// write, used to live only in the agent's memory until the last close.
#[test]
fn ftruncate_then_fsync_seals_the_new_length_before_the_close() {
    require_fuse!();
    require!(on_path("python3"), "python3 is not installed");
    let m = MountedEnvoy::unlocked();
    let content = pseudo_random(31, MIB);
    fs::write(m.at("journal"), &content).unwrap();
    fs::write(m.at("emptied"), b"about to be emptied").unwrap();
    fs::write(m.at("synced"), b"old").unwrap();
    // The descriptors live in a child process of their own, so that no
    // parallel test's fork+exec (which copies and then closes this
    // process's descriptors, a flush that seals) can seal them: here the
    // seals must come from the fsyncs.
    let mut holder = hold_after_fsync(&m.at("journal"), &m.at("emptied"), &m.at("synced"));

    kill9(m.agent_pid().expect("agent pid"));
    let _ = holder.kill();
    let _ = holder.wait();
    m.unlock();
    m.assert_mounted();
    assert_eq!(
        fs::read(m.at("synced")).unwrap(),
        b"written by one, synced by another"
    );
    assert_same(
        "journal",
        &fs::read(m.at("journal")).unwrap(),
        &content[..4096],
    );
    assert_eq!(fs::read(m.at("emptied")).unwrap(), b"");
    assert_no_temp_files(&m);
}

/// Files stay found while the kernel forgets and looks up their inodes
/// (memory pressure; here `drop_caches` in a loop). A lookup used to count
/// the kernel's reference after finding the node, so a FORGET of the
/// kernel's previous inode, answered meanwhile, could drop the node the
/// lookup was about to name: `chmod` and `stat` of an existing file then
/// failed with ENOENT (113 of this test's 207 776 operations).
#[test]
fn files_stay_found_while_the_kernel_forgets_their_inodes() {
    require_fuse!();
    let dropped = drop_kernel_dentries();
    require!(dropped.is_ok(), dropped.unwrap_err());
    let m = MountedEnvoy::unlocked();
    let names: Vec<PathBuf> = (0..8).map(|i| m.at(&format!("f{i}"))).collect();
    for p in &names {
        fs::write(p, b"x").unwrap();
    }
    let until = std::time::Instant::now() + Duration::from_secs(8);
    let done = AtomicBool::new(false);
    let ops = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    thread::scope(|sc| {
        for _ in 0..3 {
            sc.spawn(|| {
                while std::time::Instant::now() < until {
                    for p in &names {
                        let r = fs::set_permissions(p, fs::Permissions::from_mode(0o600))
                            .and_then(|()| fs::metadata(p).map(drop));
                        if let Err(e) = r {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{}: {e}", p.display()));
                        }
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.store(true, Ordering::SeqCst);
            });
        }
        sc.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                drop_kernel_dentries().unwrap();
            }
        });
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} operations failed: {:?}",
        failures.len(),
        ops.load(Ordering::Relaxed),
        &failures[..failures.len().min(3)]
    );
}

/// A HOME reached through a symbolic link (Fedora's atomic desktops link
/// /home to /var/home) mounts and unmounts: the kernel lists a mount point
/// by its resolved path, and the agent looked for it under the path it
/// was given, found nothing and gave up ("did not become a mount").
#[test]
fn a_home_reached_through_a_symbolic_link_mounts() {
    require_fuse!();
    let mut e = Envoy::with_config(TEST_CONFIG);
    let link = e.home.parent().unwrap().join("home-link");
    std::os::unix::fs::symlink(&e.home, &link).unwrap();
    let real_mnt = e.home.join("lockbox");
    e.home = link;
    let m = MountedEnvoy::named(e, "alpha");
    m.e.unlock();
    assert!(
        mount_type(&real_mnt).is_some_and(|k| k.starts_with("fuse")),
        "{} is not a FUSE mount",
        real_mnt.display()
    );
    fs::write(m.at("through-the-link"), b"sealed all the same").unwrap();
    assert_eq!(
        fs::read(m.at("through-the-link")).unwrap(),
        b"sealed all the same"
    );
    assert_sealed(&m, "through-the-link", b"sealed all the same");
    m.ok(&["stop"]);
    assert_eq!(mount_type(&real_mnt), None, "stop unmounts");
}

/// fstat(2) of a descriptor whose name went (unlinked, or renamed over)
/// describes the file it still reads, with no links left, as on any file
/// system; it used to fail with ENOENT (`tail -f`, editors and `less`
/// fstat the files they hold).
#[test]
fn fstat_of_an_open_file_whose_name_went_describes_it() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    fs::write(m.at("gone"), pseudo_random(41, 70_000)).unwrap();
    fs::write(m.at("replaced"), pseudo_random(42, 5_000)).unwrap();
    let gone = fs::open(m.at("gone")).unwrap();
    let replaced = fs::open(m.at("replaced")).unwrap();
    let mut writing = fs::File::create(m.at("written")).unwrap();
    writing.write_all(b"staged, not yet sealed").unwrap();

    fs::remove_file(m.at("gone")).unwrap();
    fs::write(m.at("new"), b"the new one").unwrap();
    fs::rename(m.at("new"), m.at("replaced")).unwrap();
    fs::remove_file(m.at("written")).unwrap();

    for (what, f, len) in [
        ("unlinked", &gone, 70_000),
        ("renamed over", &replaced, 5_000),
        ("unlinked while written", &writing, 22),
    ] {
        let st = f
            .metadata()
            .unwrap_or_else(|e| panic!("fstat of a file {what}: {e}"));
        assert_eq!((st.len(), st.nlink()), (len, 0), "fstat of a file {what}");
    }
    let mut back = Vec::new();
    (&gone).read_to_end(&mut back).unwrap();
    assert_same("gone", &back, &pseudo_random(41, 70_000));
    assert_eq!(fs::read(m.at("replaced")).unwrap(), b"the new one");
}

/// `mv a b` while a writer of `b` is closing it (its seal under way)
/// leaves `b` holding `a`'s content, as on any file system. (On this
/// kernel rename(2) waits for the target's close; the agent also holds the
/// target's buffer across the rename, so a seal that comes another way, a
/// last release without a flush, cannot land over the renamed file either.)
#[test]
fn a_rename_over_a_file_being_sealed_keeps_the_renamed_content() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let moved = pseudo_random(51, 10_000);
    let big = pseudo_random(52, 48 * MIB);
    // The rename must land while the seal is under way; a seal that starts
    // and ends between two looks at the temp folder gives no such window,
    // and the scenario is tried again (the test fails if it never does).
    let mut landed = false;
    for _ in 0..5 {
        fs::write(m.at("a"), &moved).unwrap();
        // Written out of order, so it is sealed at its close, not as it
        // grows: the close takes a while.
        let w = fs::File::create(m.at("b")).unwrap();
        {
            use std::os::unix::fs::FileExt;
            w.write_all_at(&big[MIB..], MIB as u64).unwrap();
            w.write_all_at(&big[..MIB], 0).unwrap();
        }
        m.settle();
        let before: Vec<PathBuf> = temp_files(&m).into_iter().map(|(p, _)| p).collect();
        landed = thread::scope(|sc| {
            let closing = sc.spawn(move || drop(w));
            // The seal has begun once its temp file shows (watched closely:
            // a seal of 48 MiB takes a fraction of a second).
            let seen = loop {
                if temp_files(&m).iter().any(|(p, _)| !before.contains(p)) {
                    break true;
                }
                if closing.is_finished() {
                    break false;
                }
                thread::sleep(Duration::from_micros(200));
            };
            if seen {
                fs::rename(m.at("a"), m.at("b")).unwrap();
            }
            closing.join().unwrap();
            seen
        });
        if landed {
            break;
        }
    }
    assert!(landed, "the seal of b was never seen under way in 5 tries");
    assert_same("b after the rename", &fs::read(m.at("b")).unwrap(), &moved);
    assert!(!fs::present(m.at("a")));
    m.settle();
    assert_sealed(&m, "b", &moved);
    assert_eq!(names(&m.store()), ["b"]);
}

/// truncate(2) of a path right after its writer closed it is never lost:
/// the release that follows the close (after close(2) returned) seals the
/// writer's buffer and takes it off the file, and a truncate arriving in
/// between used to shorten that buffer, which nothing sealed any more.
#[test]
fn a_truncate_right_after_a_close_is_kept() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let path = m.at("log");
    // truncate(2) by path (std has only ftruncate), in one process.
    let script = "import os, sys\n\
        p = sys.argv[1]\n\
        for r in range(400):\n\
        \x20   with open(p, 'w') as f:\n        f.write('round %d: some lines of a log' % r)\n\
        \x20   os.truncate(p, 0)\n\
        \x20   n = os.stat(p).st_size\n\
        \x20   if n:\n        sys.exit('round %d: the truncate was lost (%d bytes)' % (r, n))\n";
    let out = Command::new("python3")
        .args(["-c", script, s(&path)])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.settle();
    assert_eq!(fs::read(&path).unwrap(), b"");
}

/// Writers that replace one file at once never hang the mount. An open
/// that stages a new buffer used to take the mount's table and then wait
/// for the buffer another writer had just installed, while that writer,
/// sealing the buffer at its close, waited for the table: two writers in a
/// loop deadlocked the whole mount within a few hundred replacements.
#[test]
fn writers_replacing_one_file_at_once_never_hang_the_mount() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let path = m.at("replaced");
    let content = pseudo_random(21, 256 * 1024);
    fs::write(&path, &content).unwrap();
    const EACH: usize = 1000;
    let done = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                let replaced = (0..EACH).try_for_each(|_| {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&path)?;
                    f.write_all(&content)?;
                    drop(f);
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), std::io::Error>(())
                });
                finished.fetch_add(1, Ordering::SeqCst);
                replaced.expect("replace the file");
            });
        }
        // The watchdog: a hung mount makes no progress. (On a hang the
        // panic unwinds to `MountedEnvoy`'s drop, which kills the agent; that
        // fails the writers' system calls and lets their threads end.)
        let (mut seen, mut since) = (0, std::time::Instant::now());
        while finished.load(Ordering::SeqCst) < 2 {
            let now = done.load(Ordering::SeqCst);
            if now != seen {
                (seen, since) = (now, std::time::Instant::now());
            }
            if since.elapsed() > Duration::from_secs(30) {
                let pid = m.agent_pid().expect("agent pid");
                kill9(pid);
                panic!("the mount hung after {now} of {} replacements", 2 * EACH);
            }
            thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(done.load(Ordering::SeqCst), 2 * EACH);
    assert_same("replaced", &fs::read(&path).unwrap(), &content);
    m.settle();
    assert_store_is_ciphertext(&m);
    assert_no_temp_files(&m);
}

#[test]
fn plaintext_left_in_the_bare_folder_is_sealed_at_mount() {
    require_fuse!();
    let m = MountedEnvoy::new(TEST_CONFIG);
    let secret = b"dropped in while the agent was down\n";
    fs::write(m.at("dropped.txt"), secret).unwrap();
    m.start();
    m.assert_mounted();
    assert_sealed(&m, "dropped.txt", secret);
    assert_eq!(names(&m.mnt), ["dropped.txt"]);
    m.unlock();
    assert_eq!(fs::read(m.at("dropped.txt")).unwrap(), secret);
    // The plaintext is gone from under the mount point.
    m.ok(&["stop"]);
    assert_eq!(mount_type(&m.mnt), None, "stop unmounts");
    assert!(
        names(&m.mnt).is_empty(),
        "the bare folder still holds plaintext"
    );
    assert_eq!(mode(&m.mnt), 0o700);
}

/// Everything in the bare folder is the user's plaintext, an age file of
/// theirs too: it is sealed again (not taken in as ciphertext), listed as
/// an ordinary file, and reads back byte-identical through the mount.
#[test]
fn an_age_file_in_the_bare_folder_is_sealed_again() {
    require_fuse!();
    require!(
        have_age(),
        "the age CLI is not on PATH (apt-get install age)"
    );
    let m = MountedEnvoy::new(TEST_CONFIG);
    // Sealed to a key of the user's own, not the envoy's.
    let theirs = lockbox_crypto::identity::generate();
    let (_, age_file) = lockbox_crypto::seal::seal_stream(
        &[theirs.to_public()],
        std::io::Cursor::new(pseudo_random(7, 70_000)),
        Vec::new(),
    )
    .expect("seal");
    assert!(age_file.starts_with(AGE_MAGIC));
    fs::write(m.at("backup.age"), &age_file).unwrap();
    m.start();
    m.assert_mounted();
    m.unlock();
    assert_same(
        "backup.age through the mount",
        &fs::read(m.at("backup.age")).unwrap(),
        &age_file,
    );
    let list: serde_json::Value = serde_json::from_str(&m.ok(&["list", "--json"])).unwrap();
    let row = &list[0];
    assert_eq!(row["name"], "backup.age", "{list}");
    assert_eq!(row["state"], "ciphertext", "{list}");
    assert_eq!(row["size"], age_file.len() as u64, "{list}");
    // Its store file is sealed to the envoy: its identity opens it.
    let pass = m.pass.to_string_lossy().into_owned();
    let key = m.ok(&["export-identity", "--passphrase-file", &pass]);
    let stored = m.store().join("backup.age");
    assert_same(
        "the store file opened with the envoy's key",
        &age_plaintext(key.trim(), &stored, "backup.age"),
        &age_file,
    );
    m.ok(&["stop"]);
    assert!(names(&m.mnt).is_empty(), "the bare folder keeps a copy");
}

#[test]
fn stop_unmounts_and_a_restart_mounts_again() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    fs::write(m.at("kept"), b"across restarts").unwrap();
    let pid = m.agent_pid().unwrap();
    m.ok(&["stop"]);
    assert!(!alive(pid));
    assert_eq!(mount_type(&m.mnt), None, "stop unmounts");
    assert!(names(&m.mnt).is_empty());
    // SIGTERM unmounts too.
    m.start();
    m.assert_mounted();
    let pid = m.agent_pid().unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    wait_until(Duration::from_secs(20), || !alive(pid)).unwrap();
    assert_eq!(mount_type(&m.mnt), None, "SIGTERM unmounts");
    m.unlock();
    m.assert_mounted();
    assert_eq!(fs::read(m.at("kept")).unwrap(), b"across restarts");
    // Tools such as findmnt, df -t and mount -t know it by its type.
    // Through fusermount3 (ordinary users) the type is `fuse.lockbox`; root
    // mounts directly and fuser passes plain `fuse` (the subtype is dropped).
    let ty = mount_type(&m.mnt);
    assert!(
        matches!(ty.as_deref(), Some("fuse.lockbox") | Some("fuse")),
        "{ty:?}"
    );
}

/// fsync(2) returns only once the new version's rename is durable: the
/// agent groups the syncs of the store folder across closes, so the fsync
/// handler syncs the folder itself — after sealing, and also for a file
/// closed (sealed, its rename still pending) just before it was reopened;
/// an fsync of the folder after a rename syncs it too.
#[test]
fn fsync_waits_for_the_store_folder_sync() {
    require_fuse!();
    require!(
        on_path("strace"),
        "strace not found (apt-get install strace)"
    );
    let m = MountedEnvoy::unlocked();
    fs::write(m.at("warm"), b"warm").unwrap();
    let pid = m.agent_pid().expect("agent pid");
    let store = fs::canonicalize(m.e.state().join("store")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trace = FsyncTrace::attach(pid, dir.path().join("strace.log"));

    // Written and fsynced through one handle.
    let mut f = fs::File::create(m.at("one")).unwrap();
    f.write_all(b"first").unwrap();
    let t0 = unix_now();
    f.sync_all().unwrap();
    let t1 = unix_now();
    drop(f);
    // Written, closed (sealed; the folder sync is left to the window),
    // reopened at once and fsynced with nothing new to seal.
    fs::write(m.at("two"), b"second").unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.at("two"))
        .unwrap();
    let t2 = unix_now();
    f.sync_all().unwrap();
    let t3 = unix_now();
    drop(f);
    // A save by rename, then an fsync of the folder (what editors and
    // atomic-write libraries do): the rename must be durable when it returns.
    fs::rename(m.at("two"), m.at("three")).unwrap();
    let folder = fs::open(&m.mnt).unwrap();
    let t4 = unix_now();
    folder.sync_all().unwrap();
    let t5 = unix_now();

    let syncs = trace.syncs_of(&store);
    for (what, a, b) in [
        ("write + fsync", t0, t1),
        ("close, reopen, fsync", t2, t3),
        ("rename, fsync of the folder", t4, t5),
    ] {
        assert!(
            syncs.iter().any(|t| *t >= a && *t <= b),
            "{what}: no sync of {} while fsync(2) ran ({a:.6}..{b:.6}); syncs at {syncs:?}",
            store.display()
        );
    }
    assert_eq!(fs::read(m.at("one")).unwrap(), b"first");
    assert_eq!(fs::read(m.at("three")).unwrap(), b"second");
}
