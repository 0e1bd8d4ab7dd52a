//! Folders through the real agent (`docs/folders.md`): trees made through
//! one envoy's mount appear on every envoy byte for byte, folder renames
//! and `rm -r` travel, and the CLI takes paths (`encrypt -r`, `decrypt`,
//! `list`, `delete`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::harness::mesh::{Circle, CONVERGE};
use crate::harness::*;
use crate::require_fuse;

/// Every entry below `root`: its kind and, for a file, its bytes.
fn tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
                out.insert(rel, None);
            } else {
                out.insert(rel, fs::read(e.path()).ok());
            }
        }
    }
    out
}

/// chmod `p` to `bits`.
fn set_mode(p: &Path, bits: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(bits)).unwrap();
}

/// The permission bits of `m`.
fn mode_of(m: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o7777
}

/// Wait until the mount of every envoy in `on` holds `want`.
fn wait_tree(c: &Circle, on: &[&str], want: &BTreeMap<String, Option<Vec<u8>>>, what: &str) {
    c.wait(what, CONVERGE, || {
        on.iter().all(|n| tree(&c.node(n).m.mnt) == *want)
    });
}

/// A tree made through one mount (empty folders too) appears on the
/// others byte for byte; a folder rename and an `rm -r` travel.
#[test]
fn a_tree_made_on_one_envoy_is_on_every_envoy() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    c.wait_formed(&ALL);
    let a = c.node("alpha");
    fs::create_dir_all(a.at("ssh/keys/old")).unwrap();
    fs::create_dir(a.at("ssh/empty")).unwrap();
    fs::write(a.at("ssh/config"), b"Host *\n").unwrap();
    fs::write(a.at("ssh/keys/id_ed25519"), content("key", 3000)).unwrap();
    fs::write(a.at("ssh/keys/old/id_rsa"), content("old", 200_000)).unwrap();
    fs::write(a.at("ssh/connect"), b"#!/bin/sh\nexec ssh \"$@\"\n").unwrap();
    set_mode(&a.at("ssh/connect"), 0o755);
    let made = tree(&a.m.mnt);
    assert_eq!(made.len(), 8, "{made:?}");
    wait_tree(
        &c,
        &["bravo", "charlie"],
        &made,
        "the tree on bravo and charlie",
    );
    // The owner's execute bit travels with the script, and a chmod of it
    // travels back; the other files stay 0600.
    let modes_are = |on: &[&str], want: u32| {
        on.iter()
            .all(|n| fs::metadata(c.node(n).at("ssh/connect")).is_ok_and(|m| mode_of(&m) == want))
    };
    c.wait(
        "the script executable on bravo and charlie",
        CONVERGE,
        || modes_are(&["bravo", "charlie"], 0o700),
    );
    assert_eq!(mode(&c.node("bravo").at("ssh/config")), 0o600);
    assert_eq!(mode(&c.node("charlie").stored("ssh/connect")), 0o700);
    set_mode(&c.node("bravo").at("ssh/connect"), 0o644);
    c.wait("the chmod -x on alpha and charlie", CONVERGE, || {
        modes_are(&["alpha", "charlie"], 0o600)
    });
    // The stores hold it as ciphertext in folders of their own.
    let stored = c.node("charlie").stored("ssh/keys/old/id_rsa");
    assert!(fs::read(&stored)
        .unwrap()
        .starts_with(b"age-encryption.org/v1\n"));
    // A folder renamed on bravo, with what is in it.
    fs::rename(
        c.node("bravo").at("ssh/keys"),
        c.node("bravo").at("ssh/moved"),
    )
    .unwrap();
    let renamed = tree(&c.node("bravo").m.mnt);
    assert!(renamed.contains_key("ssh/moved/old/id_rsa") && !renamed.contains_key("ssh/keys"));
    wait_tree(
        &c,
        &["alpha", "charlie"],
        &renamed,
        "the rename on alpha and charlie",
    );
    // rm -r on charlie.
    fs::remove_dir_all(c.node("charlie").at("ssh")).unwrap();
    wait_tree(
        &c,
        &["alpha", "bravo"],
        &BTreeMap::new(),
        "the rm -r on alpha and bravo",
    );
}

/// The CLI takes paths: `encrypt -r` adds a folder with everything in it
/// (through the agent), `list` shows paths, `decrypt` and `delete` take
/// them, and the tree is on the other envoy.
#[test]
fn the_cli_adds_and_reads_trees() {
    require_fuse!();
    let c = Circle::loopback(&["alpha", "bravo"]);
    c.wait_formed(&["alpha", "bravo"]);
    let a = c.node("alpha");
    let src = a.m.home.parent().unwrap().join("src/aws");
    fs::create_dir_all(src.join("sso/cache")).unwrap();
    fs::create_dir_all(src.join("empty")).unwrap();
    fs::write(src.join("credentials"), b"[default]\nkey = 1\n").unwrap();
    fs::write(src.join("sso/cache/token.json"), b"{}").unwrap();
    fs::write(src.join("sso/login"), b"#!/bin/sh\necho in\n").unwrap();
    set_mode(&src.join("sso/login"), 0o755);
    let out = a.m.e.ok(&["encrypt", "-r", &src.to_string_lossy()]);
    assert!(
        out.contains("sealed 3 file(s) in 4 folder(s) under aws"),
        "{out}"
    );
    // A script stays executable: in the mount, and decrypted to a file.
    assert_eq!(mode(&a.at("aws/sso/login")), 0o700);
    assert_eq!(mode(&a.at("aws/credentials")), 0o600);
    let out_dir = a.m.home.parent().unwrap().join("out");
    fs::create_dir(&out_dir).unwrap();
    for (name, want) in [("aws/sso/login", 0o700), ("aws/credentials", 0o600)] {
        let to = out_dir.join(name.rsplit('/').next().unwrap());
        a.m.e.ok(&["decrypt", name, "-o", &to.to_string_lossy()]);
        assert_eq!(mode(&to), want, "{name} decrypted");
    }
    let list = a.m.e.ok(&["list", "--json"]);
    assert!(list.contains("aws/sso/cache/token.json"), "{list}");
    assert_eq!(
        a.m.e.ok(&["decrypt", "aws/credentials"]),
        "[default]\nkey = 1\n"
    );
    let want = tree(&a.m.mnt);
    assert!(want.contains_key("aws/empty"), "{want:?}");
    wait_tree(&c, &["bravo"], &want, "the added tree on bravo");
    a.m.e.ok(&["delete", "aws/sso/cache/token.json"]);
    c.wait_gone(&["bravo"], "aws/sso/cache/token.json");
    // A folder is not deleted as a file, and a name that is not a path
    // is refused.
    let err = a.m.e.fails(1, &["delete", "aws/sso"]);
    assert!(err.contains("is a folder"), "{err}");
    assert!(a.at("aws/sso/cache").is_dir());
    let err = a.m.e.fails(1, &["decrypt", "aws/../x"]);
    assert!(err.contains("bad file name"), "{err}");
}

/// A `pass` store in a folder of the mount, with a throwaway GPG key:
/// `init`, `insert`, `show`, `mv`, `rm -r`, and the store on the other
/// envoy.
#[test]
fn a_pass_store_lives_in_the_lockbox() {
    require_fuse!();
    for tool in ["pass", "gpg"] {
        crate::require!(
            crate::harness::skip::on_path(tool),
            format!("{tool} not found (apt-get install pass gnupg)")
        );
    }
    let c = Circle::loopback(&["alpha", "bravo"]);
    c.wait_formed(&["alpha", "bravo"]);
    let a = c.node("alpha");
    let gnupg = tempfile::Builder::new()
        .prefix("gpg")
        .tempdir_in("/tmp")
        .unwrap();
    let store = a.at("pass");
    let run = |args: &[&str], input: Option<&str>| -> String {
        use std::io::Write;
        let mut cmd = std::process::Command::new(args[0]);
        cmd.args(&args[1..])
            .env("GNUPGHOME", gnupg.path())
            .env("PASSWORD_STORE_DIR", &store)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(i) = input {
            stdin.write_all(i.as_bytes()).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let key = "lockbox-test@example.org";
    run(
        &[
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            key,
            "default",
            "default",
            "never",
        ],
        None,
    );
    run(&["pass", "init", key], None);
    run(
        &["pass", "insert", "-m", "web/example.org"],
        Some("hunter2\nuser: me\n"),
    );
    assert_eq!(
        run(&["pass", "show", "web/example.org"], None),
        "hunter2\nuser: me\n"
    );
    // The entry is GPG ciphertext in a folder, and on bravo too.
    assert!(a.at("pass/web/example.org.gpg").is_file());
    let entry = fs::read(a.at("pass/web/example.org.gpg")).unwrap();
    c.wait_content(&["bravo"], "pass/web/example.org.gpg", &entry);
    c.wait_content(&["bravo"], "pass/.gpg-id", format!("{key}\n").as_bytes());
    run(
        &["pass", "mv", "web/example.org", "sites/example.org"],
        None,
    );
    assert_eq!(
        run(&["pass", "show", "sites/example.org"], None),
        "hunter2\nuser: me\n"
    );
    c.wait_content(&["bravo"], "pass/sites/example.org.gpg", &entry);
    run(&["pass", "rm", "-rf", "sites"], None);
    assert!(!a.at("pass/sites").exists());
    c.wait_gone(&["bravo"], "pass/sites/example.org.gpg");
    let _ = std::process::Command::new("gpgconf")
        .args(["--kill", "gpg-agent"])
        .env("GNUPGHOME", gnupg.path())
        .status();
}

/// Across a partition (network namespaces): charlie, cut off, writes into
/// a folder that alpha renames and makes a file where bravo makes a
/// folder; after the heal every envoy holds the same tree, the write kept
/// where it was written (its folder back with it), the renamed folder
/// whole, the folder at the contested path and the file as its conflict
/// copy.
#[test]
fn a_partition_heals_to_one_tree() {
    require_fuse!();
    crate::require!(
        crate::harness::netlab::available().is_ok(),
        crate::harness::netlab::available().unwrap_err()
    );
    let lab = crate::harness::netlab::NetLab::new(3).expect("network lab");
    let c = Circle::in_lab(&lab, std::time::Duration::from_secs(1));
    let a = c.node("alpha");
    fs::create_dir(a.at("d")).unwrap();
    fs::write(a.at("d/old"), b"old").unwrap();
    c.wait_content(&ALL, "d/old", b"old");

    lab.cut(2).expect("cut charlie off");
    c.wait_stale(&["alpha", "bravo"], "charlie");
    fs::rename(a.at("d"), a.at("e")).unwrap();
    fs::create_dir(c.node("bravo").at("x")).unwrap();
    fs::write(c.node("charlie").at("d/new"), b"written on charlie").unwrap();
    fs::write(c.node("charlie").at("x"), b"a file named x").unwrap();
    c.wait_content(&["bravo"], "e/old", b"old");

    lab.heal(2).expect("heal");
    c.wait_content(&ALL, "d/new", b"written on charlie");
    c.wait_content(&ALL, "e/old", b"old");
    let settled = |t: &BTreeMap<String, Option<Vec<u8>>>| {
        t.get("x") == Some(&None)
            && t.iter().any(|(k, v)| {
                k.starts_with("x.conflict-charlie-") && v.as_deref() == Some(&b"a file named x"[..])
            })
    };
    c.wait("one tree on every envoy, x a folder", CONVERGE, || {
        let t = tree(&c.node("charlie").m.mnt);
        settled(&t)
            && ["alpha", "bravo"]
                .iter()
                .all(|n| tree(&c.node(n).m.mnt) == t)
    });
    let want = tree(&c.node("alpha").m.mnt);
    assert!(!want.contains_key("d/old"), "{want:?}");
    // alpha, which renamed d, says where charlie's write is.
    let status = a.m.e.status_json();
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains("d/new was written on envoy charlie into the folder d"),
        "{warnings}"
    );
    drop(c);
    drop(lab);
}
