//! `~/.lockbox/recipients.txt` is an age recipients file: the reference
//! `age -R` seals to it, and lockbox decrypts what it sealed; a file in
//! the form earlier releases wrote is still read.

use std::process::Command;

use lockbox_crypto::recipients::{encode, RecipientEntry};
use lockbox_crypto::ExposeSecret;

use crate::harness::age::*;
use crate::harness::fs;
use crate::harness::*;
use crate::{require, require_fuse};

/// `age -R recipients -o out in`, required to succeed.
#[track_caller]
fn age_seal_to_file(recipients: &std::path::Path, out: &std::path::Path, input: &std::path::Path) {
    let res = Command::new("age")
        .arg("-R")
        .arg(recipients)
        .arg("-o")
        .arg(out)
        .arg(input)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "age -R {}: {}\n{}",
        recipients.display(),
        String::from_utf8_lossy(&res.stderr),
        fs::read_to_string(recipients).unwrap_or_default()
    );
}

#[test]
fn age_seals_to_an_envoys_recipients_file_and_lockbox_decrypts() {
    require_fuse!();
    require!(
        have_age(),
        "the reference age CLI is not installed (apt-get install age)"
    );
    let e = Envoy::new();
    e.init("alpha");
    let plain = e.plain_file("from-age", b"sealed by age -R to the recipients file\n");
    age_seal_to_file(
        &e.state().join("recipients.txt"),
        &e.store().join("from-age"),
        &plain,
    );
    e.unlock();
    let out = e.cmd(&["decrypt", "from-age"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"sealed by age -R to the recipients file\n");
}

#[test]
fn age_reads_a_file_of_several_envoys_with_awkward_names() {
    require!(
        have_age(),
        "the reference age CLI is not installed (apt-get install age)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<_> = (0..3)
        .map(|_| lockbox_crypto::identity::generate())
        .collect();
    let names = ["laptop", "Zoë's desk # 2", "x\ny  # age1fake"];
    let entries: Vec<_> = ids
        .iter()
        .zip(names)
        .map(|(id, n)| RecipientEntry {
            recipient: id.to_public().to_string(),
            envoy: n.into(),
        })
        .collect();
    let recipients = dir.path().join("recipients.txt");
    fs::write(&recipients, encode(&entries)).unwrap();
    let plain = dir.path().join("plain");
    fs::write(&plain, b"to all three").unwrap();
    let sealed = dir.path().join("sealed.age");
    age_seal_to_file(&recipients, &sealed, &plain);
    for (id, n) in ids.iter().zip(names) {
        let got = age_plaintext(id.to_string().expose_secret(), &sealed, n);
        assert_eq!(got, b"to all three", "{n}");
    }
}

#[test]
fn a_recipients_file_in_the_earlier_form_still_works() {
    require_fuse!();
    let e = Envoy::new();
    e.init("alpha");
    let path = e.state().join("recipients.txt");
    let text = fs::read_to_string(&path).unwrap();
    let recipient = text
        .lines()
        .find(|l| l.starts_with("age1"))
        .unwrap()
        .to_owned();
    // What the releases before wrote: the name after the recipient.
    fs::write(
        &path,
        format!("# lockbox recipients: one envoy per line\n{recipient}  # alpha\n"),
    )
    .unwrap();
    assert_eq!(e.status_json()["recipients"], serde_json::json!(["alpha"]));
    let src = e.plain_file("note", b"sealed to an old-form file");
    e.ok(&["encrypt", &src.to_string_lossy()]);
    e.unlock();
    let out = e.cmd(&["decrypt", "note"]).output().unwrap();
    assert_eq!(out.stdout, b"sealed to an old-form file", "{out:?}");
    assert_eq!(e.status_json()["recipients"], serde_json::json!(["alpha"]));
}
