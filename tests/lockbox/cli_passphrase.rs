//! Where a passphrase comes from, through the real binary: standard input
//! (`--passphrase-file -`), a program (`--passphrase-command`, and
//! `passphrase_command:` in config.yaml), the terminal's three tries (in a
//! tmux pane), and that a wrong passphrase never leaves an agent running.

use std::io::Write;
use std::process::{Output, Stdio};

use crate::harness::fs;
use crate::harness::*;
use crate::{require, require_fuse};

/// `lockbox ARGS` with `input` on its standard input.
fn with_stdin(e: &Envoy, args: &[&str], input: &[u8]) -> Output {
    let mut child = e
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may stop reading early (or never start): a closed pipe is
    // not this test's failure.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

/// No agent of this envoy runs and nothing is mounted at its `~/lockbox`.
#[track_caller]
fn no_agent(e: &Envoy, what: &str) {
    assert_eq!(e.agent_pid(), None, "{what}: an agent is running");
    assert_eq!(
        processes_with_home_under(&e.home),
        Vec::<u32>::new(),
        "{what}: processes of this HOME are left"
    );
    assert_eq!(
        mount_type(&e.home.join("lockbox")),
        None,
        "{what}: ~/lockbox is still mounted"
    );
}

#[test]
fn stdin_passphrase_inits_unlocks_and_exports() {
    require_fuse!();
    let e = Envoy::new();
    let pass = b"correct horse battery staple\nnot this line\n";
    let out = with_stdin(
        &e,
        &["init", "--passphrase-file", "-", "--envoy", "alpha"],
        pass,
    );
    assert!(out.status.success(), "{out:?}");
    // The passphrase read from stdin is the test's one: the file opens it.
    e.unlock();
    e.ok(&["stop"]);

    let out = with_stdin(&e, &["unlock", "--passphrase-file", "-"], pass);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unlocked");
    assert_eq!(e.status_json()["unlocked"], true);
    e.ok(&["stop"]);

    let out = with_stdin(&e, &["export-identity", "--passphrase-file", "-"], pass);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("AGE-SECRET-KEY-1"));

    // Nothing (or an empty first line) on stdin: an error, and no agent.
    for input in [&b""[..], b"\nsecond line\n"] {
        let out = with_stdin(&e, &["unlock", "--passphrase-file", "-"], input);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("standard input") && err.contains("empty"),
            "{err}"
        );
        no_agent(&e, "empty stdin");
    }
}

#[test]
fn command_passphrase_from_the_option_and_from_config() {
    require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    // A path with a space, quoted as a user would quote it.
    let pw = dir.path().join("my pass");
    fs::write(&pw, "correct horse battery staple\n").unwrap();
    let cat = format!("cat '{}'", pw.display());

    // Config's passphrase_command, with no option and no terminal: init and
    // unlock read it, and init keeps the key in the config it writes.
    let config = format!("{TEST_CONFIG}passphrase_command: {}\n", yaml_quoted(&cat));
    let e = Envoy::with_config(&config);
    e.ok(&["init", "--envoy", "alpha"]);
    let written = fs::read_to_string(e.state().join("config.yaml")).unwrap();
    assert!(written.contains("passphrase_command: "), "{written}");
    assert_eq!(e.ok(&["unlock"]).trim(), "unlocked");
    e.ok(&["stop"]);
    // The test's passphrase file opens it too: the command's line was used.
    e.unlock();
    e.ok(&["stop"]);

    // The option wins over the config.
    let wrong = dir.path().join("wrong");
    fs::write(&wrong, "not it\n").unwrap();
    let err = e.fails(
        1,
        &[
            "unlock",
            "--passphrase-command",
            &format!("cat {}", wrong.display()),
        ],
    );
    assert_eq!(err.trim(), "lockbox: wrong passphrase");
    no_agent(&e, "wrong passphrase from a command");
    let out = e.ok(&["unlock", "--passphrase-command", &cat]);
    assert_eq!(out.trim(), "unlocked");
    e.ok(&["stop"]);

    // A command that fails, prints nothing or cannot run: an error naming
    // it, and no agent.
    for (cmd, needle) in [
        ("sh -c 'echo pw; exit 3'", "failed"),
        ("true", "printed no passphrase"),
        ("/nonexistent/askpass", "cannot run"),
        ("echo 'unclosed", "not closed"),
    ] {
        let err = e.fails(1, &["unlock", "--passphrase-command", cmd]);
        assert!(err.contains(cmd) && err.contains(needle), "{cmd}: {err}");
        no_agent(&e, cmd);
    }
    // export-identity and evict take it as well.
    let out = e.ok(&["export-identity", "--passphrase-command", &cat]);
    assert!(out.starts_with("AGE-SECRET-KEY-1"), "{out}");
    let err = e.fails(1, &["evict", "nobody", "--passphrase-command", &cat]);
    assert!(err.contains("not a member"), "{err}");
    // Both options at once: a usage error.
    e.fails(
        2,
        &[
            "unlock",
            "--passphrase-file",
            "-",
            "--passphrase-command",
            "true",
        ],
    );
}

/// `s` as a YAML double-quoted scalar.
fn yaml_quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[test]
fn a_wrong_passphrase_leaves_no_agent_behind() {
    require_fuse!();
    let e = Envoy::new();
    e.init("alpha");
    let wrong = e.plain_file("wrong", b"not the passphrase\n");
    let wrong = wrong.to_string_lossy().into_owned();
    // No agent ran before: the one unlock started is gone again, unmounted.
    let err = e.fails(1, &["unlock", "--passphrase-file", &wrong]);
    assert_eq!(err.trim(), "lockbox: wrong passphrase");
    no_agent(&e, "wrong passphrase");
    // An agent the user started stays, locked.
    e.start();
    let pid = e.agent_pid().unwrap();
    e.fails(1, &["unlock", "--passphrase-file", &wrong]);
    assert_eq!(e.agent_pid(), Some(pid), "the user's agent was stopped");
    assert_eq!(e.status_json()["unlocked"], false);
}

#[test]
fn the_terminal_prompt_gives_three_tries() {
    require_fuse!();
    require!(
        on_path("tmux"),
        "tmux is not installed (apt-get install tmux)"
    );
    let e = Envoy::new();
    e.init("alpha");
    const PROMPT: &str = "Lockbox passphrase:";

    // A wrong passphrase, then the right one.
    let t = Tmux::start(&bin(), &["unlock"], &[("HOME", &e.home)]);
    t.wait_for(PROMPT, 1);
    t.type_line("a wrong guess");
    let screen = t.wait_for(PROMPT, 2);
    assert!(
        screen.contains("wrong passphrase: try again (2 of 3 tries left)"),
        "{screen}"
    );
    // (The CLI itself still runs in the pane, waiting: only the agent and
    // the mount are looked for.)
    assert_eq!(e.agent_pid(), None, "an agent runs after a wrong try");
    assert_eq!(mount_type(&e.home.join("lockbox")), None);
    t.type_line("correct horse battery staple");
    let screen = t.wait_for("EXIT=", 1);
    assert!(
        screen.contains("unlocked") && screen.contains("EXIT=0"),
        "{screen}"
    );
    assert!(
        !screen.contains("wrong guess") && !screen.contains("horse"),
        "the passphrase was echoed:\n{screen}"
    );
    assert_eq!(e.status_json()["unlocked"], true);
    drop(t);
    e.ok(&["stop"]);

    // Three wrong ones: the command gives up, and no agent is left.
    let t = Tmux::start(&bin(), &["unlock"], &[("HOME", &e.home)]);
    for n in 1..=3 {
        t.wait_for(PROMPT, n);
        t.type_line(&format!("wrong {n}"));
    }
    let screen = t.wait_for("EXIT=", 1);
    assert!(
        screen.contains("lockbox: wrong passphrase") && screen.contains("EXIT=1"),
        "{screen}"
    );
    assert_eq!(screen.matches(PROMPT).count(), 3, "{screen}");
    no_agent(&e, "after three wrong tries");
}
