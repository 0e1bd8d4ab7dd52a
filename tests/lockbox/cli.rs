//! The command line on one envoy: init, encrypt/decrypt/delete/list/status,
//! exit codes and one-line errors, and every piece of bad input the issue
//! names.

use crate::harness::fs;

use crate::harness::*;
use crate::require_fuse;

#[test]
fn init_creates_private_state_and_refuses_a_second_time() {
    let e = Envoy::new();
    e.init("alpha");
    let s = e.state();
    for f in [
        "identity.age",
        "signing.key",
        "recipients.txt",
        "config.yaml",
        "circle.pub",
    ] {
        assert_eq!(mode(&s.join(f)), 0o600, "{f}");
    }
    for d in ["", "store", "tls", "members"] {
        assert_eq!(mode(&s.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&e.home.join("lockbox")), 0o700);
    let recipients = fs::read_to_string(s.join("recipients.txt")).unwrap();
    let lines: Vec<&str> = recipients
        .lines()
        .filter(|l| l.starts_with("age1"))
        .collect();
    assert_eq!(lines.len(), 1, "{recipients}");
    assert!(
        recipients.contains(&format!("# envoy: alpha\n{}\n", lines[0])),
        "{recipients}"
    );
    // The config kept the test's settings and gained envoy and user.
    let config = fs::read_to_string(s.join("config.yaml")).unwrap();
    assert!(
        config.contains("envoy: \"alpha\"") && config.contains("multicast: \"off\""),
        "{config}"
    );
    let before = fs::read(s.join("identity.age")).unwrap();
    let err = e.fails(1, &["init", "--passphrase-file", &e.pass.to_string_lossy()]);
    assert!(err.contains("already initialised"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    assert_eq!(
        fs::read(s.join("identity.age")).unwrap(),
        before,
        "second init changed nothing"
    );
}

#[test]
fn seal_decrypt_round_trip_through_the_agent() {
    let e = Envoy::new();
    e.init("alpha");
    // encrypt works without an agent and while locked.
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = e.plain_file("id_ed25519", &content);
    e.ok(&["encrypt", &src.to_string_lossy()]);
    let stored = e.store().join("id_ed25519");
    assert_eq!(mode(&stored), 0o600);
    let raw = fs::read(&stored).unwrap();
    assert!(raw.starts_with(b"age-encryption.org/v1\n"));
    assert!(!raw
        .windows(64)
        .any(|w| content.windows(64).next() == Some(w)));

    let err = e.fails(1, &["decrypt", "id_ed25519", "-o", "-"]);
    assert_eq!(err.trim(), "lockbox: agent not running: run lockbox unlock");

    e.start();
    let err = e.fails(1, &["decrypt", "id_ed25519", "-o", "-"]);
    assert_eq!(err.trim(), "lockbox: locked: run lockbox unlock");

    e.unlock();
    let out = e
        .cmd(&["decrypt", "id_ed25519", "-o", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, content);

    let dest = e.home.join("out.bin");
    e.ok(&["decrypt", "id_ed25519", "-o", &dest.to_string_lossy()]);
    assert_eq!(fs::read(&dest).unwrap(), content);
    assert_eq!(mode(&dest), 0o600);

    // encrypt through the running agent, with --name.
    let src2 = e.plain_file("tmp.txt", b"licence key 1234");
    e.ok(&["encrypt", &src2.to_string_lossy(), "--name", "licence.txt"]);
    let out = e
        .cmd(&["decrypt", "licence.txt", "-o", "-"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"licence key 1234");

    e.ok(&["lock"]);
    e.fails(1, &["decrypt", "licence.txt", "-o", "-"]);

    e.ok(&["delete", "licence.txt"]);
    assert!(!e.store().join("licence.txt").exists());
    let err = e.fails(1, &["decrypt", "licence.txt", "-o", "-"]);
    assert!(
        err.contains("locked") || err.contains("no file named"),
        "{err}"
    );
}

#[test]
fn list_and_status_report_states_and_counts() {
    let e = Envoy::new();
    e.init("alpha");
    let src = e.plain_file("a", b"aaaa");
    e.ok(&["encrypt", &src.to_string_lossy()]);
    fs::write(
        e.store().join("dropped.txt"),
        b"plaintext copied in by hand",
    )
    .unwrap();
    // Named like a failed seal, but a name says nothing: the user's file.
    fs::write(e.store().join("old.tar.gz.1714380000.failed"), b"x").unwrap();
    fs::write(
        e.home.join("lockbox/bare.txt"),
        b"plaintext in the unmounted folder",
    )
    .unwrap();

    let list: serde_json::Value = serde_json::from_str(&e.ok(&["list", "--json"])).unwrap();
    let rows = list.as_array().unwrap();
    let find = |n: &str| {
        rows.iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("{n} in {list}"))
    };
    assert_eq!(find("a")["state"], "ciphertext");
    assert_eq!(find("a")["size"], 4, "list shows the plaintext size");
    assert_eq!(find("dropped.txt")["state"], "plaintext");
    assert_eq!(find("old.tar.gz.1714380000.failed")["state"], "plaintext");
    let text = e.ok(&["list"]);
    assert!(
        text.starts_with("NAME") && text.contains("dropped.txt"),
        "{text}"
    );

    let st = e.status_json();
    assert_eq!(st["envoy"], "alpha");
    assert_eq!(st["agent_running"], false);
    assert_eq!(st["files"]["total"], 3);
    assert_eq!(st["files"]["plaintext"], 2);
    assert_eq!(st["files"]["failed"], 0);
    let text = e.ok(&["status"]);
    assert!(
        text.contains("  plaintext: 2 (run 'lockbox unlock' to encrypt and sync)"),
        "{text}"
    );

    // Starting the agent sweeps: the store's plaintext and the bare folder's
    // file are sealed (and the folder becomes the mount).
    e.unlock();
    let sealed = fs::read(e.store().join("bare.txt")).unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
    let sealed = fs::read(e.store().join("dropped.txt")).unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
    let st = e.status_json();
    assert_eq!(st["agent_running"], true);
    assert_eq!(st["unlocked"], true);
    assert!(st["idle_left_secs"].as_u64().unwrap() > 3000);
    assert_eq!(st["files"]["total"], 4);
    assert_eq!(st["files"]["ciphertext"], 4);
    assert_eq!(st["files"]["plaintext"], 0);
    assert_eq!(st["files"]["failed"], 0);
    assert_eq!(st["recipients"], serde_json::json!(["alpha"]));
    assert_eq!(st["hardening"]["dumpable"], false);
    assert_eq!(st["hardening"]["core_limit"], 0);
    let out = e.cmd(&["decrypt", "bare.txt", "-o", "-"]).output().unwrap();
    assert_eq!(out.stdout, b"plaintext in the unmounted folder");
    let out = e
        .cmd(&["decrypt", "dropped.txt", "-o", "-"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"plaintext copied in by hand");
}

#[test]
fn wrong_passphrase_and_damaged_identity() {
    let e = Envoy::new();
    e.init("alpha");
    let wrong = e.plain_file("wrong", b"not the passphrase\n");
    let err = e.fails(
        1,
        &["unlock", "--passphrase-file", &wrong.to_string_lossy()],
    );
    assert_eq!(err.trim(), "lockbox: wrong passphrase");
    let err = e.fails(
        1,
        &[
            "export-identity",
            "--passphrase-file",
            &wrong.to_string_lossy(),
        ],
    );
    assert!(err.contains("wrong passphrase"), "{err}");
    // The agent that unlock started was stopped again.
    assert_eq!(e.agent_pid(), None);

    let id_path = e.state().join("identity.age");
    let good = fs::read(&id_path).unwrap();
    // One flipped byte in the middle: reported as corrupt, not as a wrong passphrase.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(&id_path, &bad).unwrap();
    let err = e.fails(
        1,
        &["unlock", "--passphrase-file", &e.pass.to_string_lossy()],
    );
    assert!(err.contains("corrupt"), "{err}");
    assert!(!err.contains("wrong passphrase"), "{err}");
    // Truncated.
    fs::write(&id_path, &good[..good.len() - 10]).unwrap();
    let err = e.fails(
        1,
        &["unlock", "--passphrase-file", &e.pass.to_string_lossy()],
    );
    assert!(err.contains("corrupt"), "{err}");
    fs::write(&id_path, b"").unwrap();
    let err = e.fails(
        1,
        &[
            "export-identity",
            "--passphrase-file",
            &e.pass.to_string_lossy(),
        ],
    );
    assert!(err.contains("corrupt"), "{err}");
    // Restored, it works again.
    fs::write(&id_path, &good).unwrap();
    e.unlock();
}

#[test]
fn tampered_or_truncated_store_file_leaves_no_output() {
    let e = Envoy::new();
    e.init("alpha");
    let content = vec![0x5au8; 200_000];
    let src = e.plain_file("big", &content);
    e.ok(&["encrypt", &src.to_string_lossy()]);
    e.unlock();
    let stored = e.store().join("big");
    let good = fs::read(&stored).unwrap();
    let outdir = e.home.join("outdir");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("big.out");

    let mut tampered = good.clone();
    let at = good.len() - 1000; // inside the last chunk
    tampered[at] ^= 1;
    for (label, bytes) in [
        ("tampered", tampered),
        ("truncated", good[..good.len() - 70_000].to_vec()),
    ] {
        fs::write(&stored, &bytes).unwrap();
        let err = e.fails(1, &["decrypt", "big", "-o", &out.to_string_lossy()]);
        assert!(
            err.contains("damaged") || err.contains("tampered") || err.contains("corrupt"),
            "{label}: {err}"
        );
        assert_eq!(
            fs::read_dir(&outdir).unwrap().count(),
            0,
            "{label}: no partial output"
        );
        let log = fs::read_to_string(e.state().join("agent.log")).unwrap();
        assert!(
            log.contains("WARN") && log.contains("big"),
            "{label}: a WARN names the file"
        );
    }
    fs::write(&stored, &good).unwrap();
    e.ok(&["decrypt", "big", "-o", &out.to_string_lossy()]);
    assert_eq!(fs::read(&out).unwrap(), content);
}

#[test]
fn bad_names_are_refused() {
    let e = Envoy::new();
    e.init("alpha");
    let src = e.plain_file("f", b"x");
    let long = "n".repeat(256);
    // A path is a name (folders); these are not.
    for bad in [
        "a//b",
        "/abs",
        "a/",
        "a/../b",
        "..",
        ".",
        "../escape",
        long.as_str(),
    ] {
        let err = e.fails(1, &["encrypt", &src.to_string_lossy(), "--name", bad]);
        assert!(err.contains("bad file name"), "{bad}: {err}");
        e.fails(1, &["decrypt", bad, "-o", "-"]);
        e.fails(1, &["delete", bad]);
    }
    assert_eq!(fs::read_dir(e.store()).unwrap().count(), 0);
    assert!(!e.home.join("escape").exists() && !e.state().join("escape").exists());
    // 255 bytes is fine.
    e.ok(&[
        "encrypt",
        &src.to_string_lossy(),
        "--name",
        &"n".repeat(255),
    ]);
}

#[test]
fn missing_names_unknown_config_and_usage_errors() {
    let e = Envoy::new();
    e.init("alpha");
    let err = e.fails(1, &["delete", "nope"]);
    assert!(err.contains("no file named 'nope'"), "{err}");
    e.start();
    e.unlock();
    let err = e.fails(1, &["decrypt", "nope", "-o", "-"]);
    assert!(err.contains("no file named 'nope'"), "{err}");
    e.ok(&["stop"]);

    // Usage errors exit 2; --help exits 0 for every command.
    e.fails(2, &["decrypt"]);
    e.fails(2, &["frobnicate"]);
    e.fails(2, &["status", "--bogus"]);
    for c in [
        "init",
        "daemon",
        "unlock",
        "lock",
        "stop",
        "encrypt",
        "decrypt",
        "delete",
        "list",
        "status",
        "export-identity",
        "doctor",
        "demo",
        "reencrypt",
        "resurrect",
        "leave",
        "evict",
        "purge",
        "fleet",
        "renew-cert",
    ] {
        e.ok(&[c, "--help"]);
    }

    let cfg = e.state().join("config.yaml");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, format!("{text}frobnicate: 3\n")).unwrap();
    let err = e.fails(1, &["status"]);
    assert!(err.contains("frobnicate"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let err = e.fails(
        1,
        &["unlock", "--passphrase-file", &e.pass.to_string_lossy()],
    );
    assert!(err.contains("frobnicate"), "{err}");
}

#[test]
fn commands_before_init_say_to_init() {
    let e = Envoy::new();
    for args in [&["status"][..], &["list"], &["daemon"], &["delete", "x"]] {
        let err = e.fails(1, args);
        assert!(err.contains("run lockbox init"), "{args:?}: {err}");
    }
    let err = e.fails(1, &["decrypt", "x", "-o", "-"]);
    assert_eq!(err.trim(), "lockbox: agent not running: run lockbox unlock");
}

#[test]
fn passphrase_never_from_argv_or_env() {
    let e = Envoy::new();
    // No terminal and no file: a clear error, not a hang.
    let out = e
        .cmd(&["init", "--envoy", "x"])
        .env("LOCKBOX_PASSPHRASE", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--passphrase-file"), "{err}");
    assert!(!e.state().join("identity.age").exists());
}

#[test]
fn export_identity_prints_the_age_key_with_a_warning() {
    let e = Envoy::new();
    e.init("alpha");
    let out = e
        .cmd(&[
            "export-identity",
            "--passphrase-file",
            &e.pass.to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert!(key.trim().starts_with("AGE-SECRET-KEY-1"), "{key}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
}

#[test]
fn doctor_reports_checks() {
    let e = Envoy::new();
    e.init("alpha");
    let out = e.run(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["config", "FUSE", "peer port", "certificates", "clock"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert!(
        text.lines()
            .all(|l| l.starts_with("ok") || l.starts_with("warn") || l.starts_with("FAIL")),
        "{text}"
    );
    // The exit status says whether a check failed: 0 without a FAIL line,
    // 1 (and a summary on stderr) with one.
    let failed = text.lines().filter(|l| l.starts_with("FAIL")).count();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if failed == 0 {
        assert!(
            out.status.success(),
            "doctor: {}\n{text}\n{stderr}",
            out.status
        );
    } else {
        assert_eq!(out.status.code(), Some(1), "{text}\n{stderr}");
        assert!(
            stderr.contains(&format!("{failed} check(s) failed")),
            "{stderr}"
        );
    }
    // Where this machine can mount FUSE (and a fresh envoy has no
    // certificates to fail on), nothing fails.
    let fuse = std::path::Path::new("/dev/fuse").exists() && (is_root() || on_path("fusermount3"));
    if fuse {
        assert_eq!(failed, 0, "{text}");
    }
}

/// A name any member can create, written to look like a coloured word and a
/// line of output of its own.
const EVIL: &str = "a\x1b[31mred\nfake line";
/// The same, escaped as lockbox prints it.
const EVIL_SHOWN: &str = "a\\x1b[31mred\\nfake line";

#[test]
fn names_with_control_characters_are_printed_escaped() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    fs::write(m.at(EVIL), b"not a terminal escape").unwrap();
    m.settle();
    // One more left in the bare folder while no agent runs (sealed, and
    // logged by name, at the next start).
    m.e.ok(&["stop"]);
    let bare = "b\x1b]0;title\x07\nforged line";
    fs::write(m.mnt.join(bare), b"typed while stopped").unwrap();
    m.e.unlock();
    m.assert_mounted();

    let list = m.e.ok(&["list"]);
    let status = m.e.ok(&["status"]);
    // (status names files only when they failed to seal: its rendering of
    // them is checked in `status::tests::names_print_escaped`.)
    for (what, text) in [("list", &list), ("status", &status)] {
        assert!(
            !text.contains('\x1b') && !text.contains('\x07'),
            "{what} printed a raw control character: {text:?}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("fake line")),
            "{what}: {text}"
        );
    }
    assert!(list.contains(EVIL_SHOWN), "{list}");
    assert!(list.contains("b\\x1b]0;title\\x07\\nforged line"), "{list}");
    // JSON carries the name itself (JSON escapes it).
    let rows: serde_json::Value = serde_json::from_str(&m.e.ok(&["list", "--json"])).unwrap();
    assert!(
        rows.as_array().unwrap().iter().any(|r| r["name"] == EVIL),
        "{rows}"
    );
    // The agent logged the bare folder's file by name, escaped, and no
    // raw escape byte anywhere.
    let log = fs::read(m.e.state().join("agent.log")).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(
        !text.lines().any(|l| l.starts_with("forged line")),
        "a name forged a log line: {text}"
    );
    assert!(
        text.contains("sealed b\\x1b]0;title\\x07\\nforged line from the unmounted folder"),
        "{text}"
    );
    assert!(!log.contains(&0x1b), "raw ESC in the agent log: {text:?}");
}

#[test]
fn the_mount_point_is_private_whatever_the_umask() {
    require_fuse!();
    let e = Envoy::new().with_umask(0o022);
    e.init("alpha");
    let mnt = e.home.join("lockbox");
    assert_eq!(mode(&mnt), 0o700, "init under umask 022");
    // Removed while no agent runs (as `rmdir ~/lockbox` would): the agent
    // makes it again, 0700, before it mounts; it stays so once unmounted.
    fs::remove_dir(&mnt).unwrap();
    e.unlock();
    e.ok(&["stop"]);
    assert_eq!(mode(&mnt), 0o700, "re-made by the agent under umask 022");
    // Widened by hand: tightened at the next start, and logged.
    fs::set_permissions(&mnt, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    e.start();
    e.ok(&["stop"]);
    assert_eq!(mode(&mnt), 0o700, "tightened by the agent");
    let log = fs::read_to_string(e.state().join("agent.log")).unwrap();
    assert!(log.contains("had mode 0755: tightened to 0700"), "{log}");
}

#[test]
fn init_refuses_a_kdf_below_the_floor_unless_tests_allow_it() {
    // The test config's KDF (64 KiB, one pass) is far below the floor.
    let e = Envoy::new();
    let pass = e.pass.to_string_lossy().into_owned();
    let config = fs::read(e.state().join("config.yaml")).unwrap();
    let init = |switch: Option<&str>| {
        let mut c = e.cmd(&["init", "--passphrase-file", &pass, "--envoy", "alpha"]);
        c.env_remove(ALLOW_WEAK_KDF.0);
        if let Some(v) = switch {
            c.env(ALLOW_WEAK_KDF.0, v);
        }
        c.output().unwrap()
    };
    for switch in [None, Some("0"), Some("yes"), Some("")] {
        let out = init(switch);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{switch:?}: {err}");
        assert!(
            err.contains("below the floor")
                && err.contains("memory_kib at least 65536")
                && err.contains("iterations at least 2"),
            "{switch:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        // Nothing was written.
        assert!(!e.state().join("identity.age").exists());
        assert_eq!(fs::read(e.state().join("config.yaml")).unwrap(), config);
        assert!(!e.home.join("lockbox").exists());
    }
    // The switch lets it through, and says so.
    let out = init(Some("1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("LOCKBOX_TEST_ALLOW_WEAK_KDF=1") && err.contains("for tests only"),
        "{err}"
    );
    e.unlock();

    // At the floor, no switch is needed (and no warning given).
    let e = Envoy::with_config(
        "multicast: off\npeer_port: 0\nlisten: 127.0.0.1\n\
         kdf: {memory_kib: 65536, iterations: 2, parallelism: 1}\n",
    );
    let pass = e.pass.to_string_lossy().into_owned();
    let out = e
        .cmd(&["init", "--passphrase-file", &pass, "--envoy", "alpha"])
        .env_remove(ALLOW_WEAK_KDF.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");
}
