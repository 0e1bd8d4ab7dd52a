//! Interop with the reference age CLI (Debian's `age`): lockbox's store
//! files decrypt with `age -d` and the exported key; files made with
//! `age -r <recipient>` decrypt with `lockbox decrypt`.

use std::fs;
use std::process::Command;

use crate::require;
use crate::util::Envoy;

fn have_age() -> bool {
    Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn reference_age_decrypts_our_store_files() {
    require!(
        have_age(),
        "the reference age CLI is not installed (apt-get install age)"
    );
    let e = Envoy::new();
    e.init("alpha");
    let content: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
    let src = e.plain_file("blob", &content);
    e.ok(&["encrypt", &src.to_string_lossy()]);
    let key = e.ok(&[
        "export-identity",
        "--passphrase-file",
        &e.pass.to_string_lossy(),
    ]);
    let keyfile = e.home.join("key.txt");
    fs::write(&keyfile, key).unwrap();
    let dec = Command::new("age")
        .args(["-d", "-i"])
        .arg(&keyfile)
        .arg(e.store().join("blob"))
        .output()
        .unwrap();
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    assert_eq!(dec.stdout, content);
}

#[test]
fn files_sealed_by_reference_age_decrypt_with_lockbox() {
    require!(
        have_age(),
        "the reference age CLI is not installed (apt-get install age)"
    );
    let e = Envoy::new();
    e.init("alpha");
    let recipients = fs::read_to_string(e.state().join("recipients.txt")).unwrap();
    let recipient = recipients
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .unwrap();
    let plain = e.plain_file("from-age", b"sealed by the Go reference implementation\n");
    let st = Command::new("age")
        .args(["-r", recipient, "-o"])
        .arg(e.store().join("from-age"))
        .arg(&plain)
        .status()
        .unwrap();
    assert!(st.success());
    e.unlock();
    let out = e.cmd(&["decrypt", "from-age", "-o", "-"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"sealed by the Go reference implementation\n");
    let list = e.ok(&["list", "--json"]);
    assert!(list.contains("\"ciphertext\""), "{list}");
}
