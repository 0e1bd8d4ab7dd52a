//! Interop with the reference age CLI (Debian's `age`): lockbox's store
//! files decrypt with `age -d` and the exported key; files made with
//! `age -r <recipient>` decrypt with `lockbox decrypt`.

use crate::harness::fs;
use std::process::Command;

use crate::harness::age::*;
use crate::harness::*;
use crate::require;

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
    let plain = age_plaintext(&key, &e.store().join("blob"), "the store file");
    assert_eq!(plain, content);
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

/// A file whose key is wrapped with a share computed ahead of the seal
/// (`lockbox_crypto::share`, what the agent's seals use) decrypts with the
/// reference CLI, for the recipient with the share and for the one wrapped
/// inline in the same header.
#[test]
fn reference_age_decrypts_a_seal_with_precomputed_shares() {
    use lockbox_crypto::ExposeSecret;
    use std::io::Write;
    require!(
        have_age(),
        "the reference age CLI is not installed (apt-get install age)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        lockbox_crypto::identity::generate(),
        lockbox_crypto::identity::generate(),
    );
    let pool = lockbox_crypto::share::SharePool::empty();
    // Ask for a's shares only, then compute them.
    assert!(pool.take(&a.to_public()).is_none());
    while pool.refill_one() {}
    let ready = pool.ready(&a.to_public());
    assert!(ready > 0);
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut sealed = Vec::new();
    let mut s = lockbox_crypto::seal::Sealer::with_shares(
        &[a.to_public(), b.to_public()],
        Some(&pool),
        &mut sealed,
    )
    .unwrap();
    s.write_all(&content).unwrap();
    s.finish().unwrap();
    assert_eq!(pool.ready(&a.to_public()), ready - 1, "a's share was used");
    let file = dir.path().join("sealed.age");
    fs::write(&file, &sealed).unwrap();
    for (who, id) in [("a (share)", &a), ("b (inline)", &b)] {
        let plain = age_plaintext(id.to_string().expose_secret(), &file, who);
        assert_eq!(plain, content, "{who}");
    }
}
