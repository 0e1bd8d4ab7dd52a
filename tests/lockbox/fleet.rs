//! `lockbox fleet init|issue` and `lockbox renew-cert`: the files they write,
//! what they refuse, and that what they write loads as mTLS material. The
//! handshakes themselves are tested in `lockbox_net::tls`.

use crate::harness::fs;
use lockbox_net::tls::TlsMaterial;
use std::time::SystemTime;

use crate::harness::fleet::*;
use crate::harness::*;

#[test]
fn init_and_issue_write_private_files_that_load() {
    let (e, ca) = with_ca();
    assert_eq!(mode(&ca), 0o700);
    for f in ["ca.pem", "ca.key"] {
        assert_eq!(mode(&ca.join(f)), 0o600, "{f}");
    }

    let before = SystemTime::now();
    let out = issue(
        &e,
        &ca,
        "alpha",
        &["--host", "192.0.2.7", "--host", "alpha.example"],
    );
    assert!(out.contains("alpha"), "{out}");
    let tls = e.state().join("tls");
    assert_eq!(mode(&tls), 0o700);
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert_eq!(mode(&tls.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        fs::read(tls.join("ca.pem")).unwrap(),
        fs::read(ca.join("ca.pem")).unwrap()
    );

    let m = TlsMaterial::load(&tls).unwrap();
    assert_eq!(m.envoy(), "alpha");
    assert_eq!(
        m.hosts(),
        [
            "192.0.2.7",
            "alpha.example",
            "alpha",
            "localhost",
            "127.0.0.1",
            "::1"
        ]
    );
    // The default validity is 825 days.
    let left = m.not_after().duration_since(before).unwrap();
    assert!(left > 824 * DAY && left <= 825 * DAY, "{left:?}");
    // What the envoy loads makes TLS configurations.
    m.server_config().unwrap();
    m.client_config().unwrap();
}

#[test]
fn a_second_init_into_the_same_folder_refuses_and_keeps_the_key() {
    let (e, ca) = with_ca();
    let key = fs::read(ca.join("ca.key")).unwrap();
    let err = e.fails(1, &["fleet", "init", "--out", &path(&ca)]);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("ca.key already exists"), "{err}");
    assert_eq!(fs::read(ca.join("ca.key")).unwrap(), key);
}

#[test]
fn issue_refuses_bad_input_with_one_line() {
    let (e, ca) = with_ca();
    let out = path(&e.home.join("out"));
    let ca = path(&ca);
    for (args, want) in [
        (
            vec!["--ca", &ca, "--envoy", "a/b", "--out", &out],
            "bad envoy name \"a/b\"",
        ),
        (
            vec!["--ca", &ca, "--envoy", "", "--out", &out],
            "bad envoy name \"\"",
        ),
        (
            vec![
                "--ca",
                &ca,
                "--envoy",
                "alpha",
                "--host",
                "not a host",
                "--out",
                &out,
            ],
            "bad host \"not a host\"",
        ),
        (
            vec!["--ca", &out, "--envoy", "alpha", "--out", &out],
            "lockbox fleet init",
        ),
    ] {
        let mut full = vec!["fleet", "issue"];
        full.extend(args);
        let err = e.fails(1, &full);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("lockbox: ") && err.contains(want), "{err}");
    }
    assert!(!e.home.join("out/key.pem").exists(), "nothing was issued");

    // Usage errors are clap's: exit 2.
    e.fails(2, &["fleet", "issue", "--ca", &ca, "--out", &out]);
    e.fails(
        2,
        &[
            "fleet", "issue", "--ca", &ca, "--envoy", "a", "--out", &out, "--days", "0",
        ],
    );
}

#[test]
fn renew_cert_extends_the_certificate_and_keeps_name_and_hosts() {
    let (e, ca) = with_ca();
    issue(&e, &ca, "alpha", &["--host", "192.0.2.7", "--days", "10"]);
    let tls = e.state().join("tls");
    let old = TlsMaterial::load(&tls).unwrap();
    let old_key = fs::read(tls.join("key.pem")).unwrap();

    // Ten days left: doctor warns (whatever else it finds on this machine).
    let doctor = String::from_utf8(e.run(&["doctor"]).stdout).unwrap();
    assert!(
        doctor
            .lines()
            .any(|l| l.starts_with("warn") && l.contains("expires on") && l.contains("renew-cert")),
        "{doctor}"
    );

    let out = e.ok(&["renew-cert", "--ca", &path(&ca)]);
    assert!(out.contains("lockbox stop; lockbox unlock"), "{out}");
    let new = TlsMaterial::load(&tls).unwrap();
    assert_eq!(new.envoy(), old.envoy());
    assert_eq!(new.hosts(), old.hosts());
    assert!(
        new.not_after() > old.not_after() + 800 * DAY,
        "{:?} -> {:?}",
        old.not_after(),
        new.not_after()
    );
    assert_ne!(fs::read(tls.join("key.pem")).unwrap(), old_key, "a new key");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert_eq!(mode(&tls.join(f)), 0o600, "{f}");
    }
    let doctor = String::from_utf8(e.run(&["doctor"]).stdout).unwrap();
    assert!(
        doctor
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("envoy alpha, valid until")),
        "{doctor}"
    );

    // `--days` sets the new validity.
    e.ok(&["renew-cert", "--ca", &path(&ca), "--days", "40"]);
    let left = TlsMaterial::load(&tls)
        .unwrap()
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > 39 * DAY && left <= 40 * DAY, "{left:?}");
}

#[test]
fn renew_cert_refuses_another_fleets_ca() {
    let (e, ca) = with_ca();
    issue(&e, &ca, "alpha", &[]);
    let cert = fs::read(e.state().join("tls/cert.pem")).unwrap();
    let other = e.home.join("other-ca");
    e.ok(&["fleet", "init", "--out", &path(&other)]);
    let err = e.fails(1, &["renew-cert", "--ca", &path(&other)]);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("is not the CA that issued"), "{err}");
    assert_eq!(fs::read(e.state().join("tls/cert.pem")).unwrap(), cert);
}

#[test]
fn renew_cert_without_a_certificate_says_what_to_run() {
    let (e, ca) = with_ca();
    let err = e.fails(1, &["renew-cert", "--ca", &path(&ca)]);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no mTLS certificate in") && err.contains("lockbox fleet issue --ca"),
        "{err}"
    );
    // doctor says the same, as a warning.
    let doctor = String::from_utf8(e.run(&["doctor"]).stdout).unwrap();
    assert!(
        doctor
            .lines()
            .any(|l| l.starts_with("warn") && l.contains("lockbox fleet issue")),
        "{doctor}"
    );
}

#[test]
fn every_fleet_command_has_help() {
    let e = Envoy::new();
    for args in [
        &["fleet", "--help"][..],
        &["fleet", "init", "--help"],
        &["fleet", "issue", "--help"],
        &["renew-cert", "--help"],
    ] {
        let out = e.ok(args);
        assert!(out.contains("Usage: lockbox"), "{args:?}: {out}");
    }
    let top = e.ok(&["--help"]);
    assert!(top.contains("fleet") && top.contains("renew-cert"), "{top}");
}
