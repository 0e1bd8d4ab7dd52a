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
    let made = tree(&a.m.mnt);
    assert_eq!(made.len(), 7, "{made:?}");
    wait_tree(
        &c,
        &["bravo", "charlie"],
        &made,
        "the tree on bravo and charlie",
    );
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
    let out = a.m.e.ok(&["encrypt", "-r", &src.to_string_lossy()]);
    assert!(
        out.contains("sealed 2 file(s) in 4 folder(s) under aws"),
        "{out}"
    );
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
    // A file where a folder is, or a name that is not a path: refused.
    let err = a.m.e.fails(1, &["decrypt", "aws/../x"]);
    assert!(err.contains("bad file name"), "{err}");
}
