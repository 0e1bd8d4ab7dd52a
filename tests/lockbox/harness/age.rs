//! The reference `age` CLI: whether it runs here, and what it decrypts
//! with a given key. It must not decide what a test expects.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

/// Whether the reference age CLI runs here.
pub(crate) fn have_age() -> bool {
    Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The reference `age -d` of `file` with `key` (the text of an identity
/// file: an `AGE-SECRET-KEY-…` line).
pub(crate) fn age_decrypt(key: &str, file: &Path) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = dir.path().join("id");
    fs::write(&id, format!("{key}\n")).expect("identity file");
    Command::new("age")
        .args(["-d", "-i"])
        .arg(&id)
        .arg(file)
        .output()
        .expect("run age")
}

/// [`age_decrypt`], required to succeed: the plaintext.
#[track_caller]
pub(crate) fn age_plaintext(key: &str, file: &Path, what: &str) -> Vec<u8> {
    let out = age_decrypt(key, file);
    assert!(
        out.status.success(),
        "age -d of {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether the reference `age` CLI decrypts `file` with `key` (an
/// `AGE-SECRET-KEY-…` line).
pub(crate) fn age_opens(key: &str, file: &std::path::Path) -> bool {
    age_decrypt(key, file).status.success()
}
