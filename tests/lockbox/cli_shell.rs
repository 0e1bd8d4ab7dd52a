//! The shell and the manual: `lockbox completions bash|zsh|fish` load in
//! their shells and complete lockbox's own commands and options, and
//! `lockbox manpages DIR` writes a page for lockbox and one per command
//! that `man -l` renders without a warning.

use std::collections::BTreeSet;
use std::process::Command;

use crate::harness::fs;
use crate::harness::*;
use crate::require;

/// The commands `lockbox --help` lists (without `help`).
fn commands() -> Vec<String> {
    let e = Envoy::new();
    let help = e.ok(&["--help"]);
    let list = help
        .split("Commands:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a Commands: section");
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(String::from)
        .collect();
    assert!(names.len() > 15, "{help}");
    names
}

/// `lockbox completions SHELL`, required to succeed.
fn script(shell: &str) -> String {
    let e = Envoy::new();
    e.ok(&["completions", shell])
}

/// Run `shell ARGS`; returns stdout, requiring success.
#[track_caller]
fn shell_ok(shell: &str, args: &[&str]) -> String {
    let out = Command::new(shell)
        .args(args)
        .env_remove("BASH_ENV")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{shell} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_completion_loads_and_completes_commands_and_options() {
    require!(on_path("bash"), "bash is not installed");
    let exe = bin();
    let exe = exe.to_string_lossy();
    let spec = shell_ok(
        "bash",
        &[
            "-c",
            r#"source <("$0" completions bash) && complete -p lockbox"#,
            &exe,
        ],
    );
    assert!(
        spec.contains("-F _lockbox") && spec.trim().ends_with(" lockbox"),
        "{spec}"
    );
    // What the function offers after `lockbox unl` and `lockbox unlock --pass`.
    let complete = |words: &str| {
        let cmd = format!(
            r#"source <("$0" completions bash) || exit 1
COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="{words}"; COMP_POINT=${{#COMP_LINE}}
_lockbox lockbox "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#
        );
        shell_ok("bash", &["-c", &cmd, &exe])
    };
    let got = complete("lockbox unl");
    assert_eq!(got.trim(), "unlock", "{got}");
    let got = complete("lockbox unlock --pass");
    let got: BTreeSet<&str> = got.lines().collect();
    assert_eq!(
        got,
        BTreeSet::from(["--passphrase-file", "--passphrase-command"])
    );
    let got = complete("lockbox fleet i");
    let got: BTreeSet<&str> = got.lines().collect();
    assert_eq!(got, BTreeSet::from(["init", "issue"]));
}

#[test]
fn fish_and_zsh_completions_load() {
    require!(
        on_path("fish"),
        "fish is not installed (apt-get install fish)"
    );
    require!(on_path("zsh"), "zsh is not installed (apt-get install zsh)");
    let dir = tempfile::tempdir().unwrap();
    let fish = dir.path().join("lockbox.fish");
    fs::write(&fish, script("fish")).unwrap();
    let fish_s = fish.to_string_lossy();
    let got = shell_ok(
        "fish",
        &[
            "--no-config",
            "-c",
            &format!(
                "source '{fish_s}'; complete -C 'lockbox dec'; complete -C 'lockbox decrypt --f'"
            ),
        ],
    );
    assert!(got.lines().any(|l| l.starts_with("decrypt\t")), "{got}");
    assert!(got.lines().any(|l| l.starts_with("--force\t")), "{got}");

    let zsh = dir.path().join("_lockbox");
    let text = script("zsh");
    assert!(text.starts_with("#compdef lockbox"), "{text}");
    fs::write(&zsh, &text).unwrap();
    let zsh_s = zsh.to_string_lossy();
    shell_ok("zsh", &["-n", &zsh_s]);
    let got = shell_ok(
        "zsh",
        &[
            "-fc",
            &format!(
                "autoload -U compinit && compinit -u -D && source '{zsh_s}' && whence -w _lockbox"
            ),
        ],
    );
    assert_eq!(got.trim(), "_lockbox: function");
    // Every command is offered.
    for c in commands() {
        assert!(text.contains(&format!("'{c}:")), "zsh misses {c}");
    }
}

#[test]
fn man_pages_for_lockbox_and_every_command_render() {
    require!(
        on_path("man"),
        "man is not installed (apt-get install man-db)"
    );
    let e = Envoy::new();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    e.ok(&["manpages", &out.to_string_lossy()]);
    let mut want: BTreeSet<String> = commands()
        .iter()
        .map(|c| format!("lockbox-{c}.1"))
        .collect();
    want.insert("lockbox.1".into());
    want.insert("lockbox-fleet-init.1".into());
    want.insert("lockbox-fleet-issue.1".into());
    want.insert("lockbox-service-install.1".into());
    want.insert("lockbox-service-uninstall.1".into());
    let have: BTreeSet<String> = fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(have, want);
    for page in &have {
        let rendered = Command::new("man")
            .args(["--warnings=all", "-l"])
            .arg(out.join(page))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&rendered.stdout);
        let warnings = String::from_utf8_lossy(&rendered.stderr);
        assert!(
            rendered.status.success() && warnings.is_empty(),
            "{page}: {warnings}"
        );
        let title = page.trim_end_matches(".1");
        // (Justified: spaces between words vary.)
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains(&format!("NAME {title} - ")),
            "{page}:\n{text}"
        );
    }
    // The pages say what --help says.
    let decrypt = Command::new("man")
        .arg("-l")
        .arg(out.join("lockbox-decrypt.1"))
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let decrypt = String::from_utf8_lossy(&decrypt.stdout);
    assert!(decrypt.contains("--force"), "{decrypt}");

    // A folder that cannot be made: an error naming it, exit 1.
    let file = dir.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let err = e.fails(1, &["manpages", &file.join("man1").to_string_lossy()]);
    assert!(err.contains(&*file.to_string_lossy()), "{err}");
    e.fails(2, &["completions", "tcsh"]);
}
