//! The command line tells the truth about the state it leaves: `lock` and
//! `stop` succeed when what they ask for already holds; `decrypt` writes to
//! stdout without `-o` (refusing a terminal unless forced); a failed `-o`
//! names the user's path; `encrypt` refuses an oversize file before reading
//! it.

use std::os::unix::net::UnixListener;

use crate::harness::fs;
use crate::harness::*;
use crate::require_fuse;

#[test]
fn lock_and_stop_with_no_agent_say_so_and_succeed() {
    require_fuse!();
    let e = Envoy::new();
    // Not even initialised: nothing runs, so both already hold.
    assert_eq!(
        e.ok(&["lock"]).trim(),
        "already locked: no agent is running"
    );
    assert_eq!(
        e.ok(&["stop"]).trim(),
        "already stopped: no agent is running"
    );
    e.init("alpha");
    e.unlock();
    assert_eq!(e.ok(&["lock"]).trim(), "locked");
    assert_eq!(e.ok(&["stop"]).trim(), "agent stopped");
    assert_eq!(e.agent_pid(), None);
    assert_eq!(
        e.ok(&["stop"]).trim(),
        "already stopped: no agent is running"
    );
    assert_eq!(
        e.ok(&["lock"]).trim(),
        "already locked: no agent is running"
    );
    // A dead agent's socket (nobody listening) is no agent either.
    drop(UnixListener::bind(e.state().join("agent.sock")).unwrap());
    assert_eq!(
        e.ok(&["stop"]).trim(),
        "already stopped: no agent is running"
    );
    assert_eq!(
        e.ok(&["lock"]).trim(),
        "already locked: no agent is running"
    );
    // A socket that is not this user's agent is still an error, not "stopped".
    fs::remove_file(e.state().join("agent.sock")).unwrap();
    fs::write(e.state().join("agent.sock"), b"not a socket").unwrap();
    let err = e.fails(1, &["stop"]);
    assert!(err.contains("not a socket"), "{err}");
    let err = e.fails(1, &["lock"]);
    assert!(err.contains("not a socket"), "{err}");
    fs::remove_file(e.state().join("agent.sock")).unwrap();
}

/// Bytes no terminal should be sent: NULs, escapes, not UTF-8.
fn binary_content() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 13 % 256) as u8).collect()
}

#[test]
fn decrypt_without_o_writes_to_stdout_byte_for_byte() {
    require_fuse!();
    let e = Envoy::new();
    e.init("alpha");
    let content = binary_content();
    let src = e.plain_file("key.bin", &content);
    e.ok(&["encrypt", &src.to_string_lossy()]);
    e.unlock();
    for args in [
        &["decrypt", "key.bin"][..],
        &["decrypt", "key.bin", "-o", "-"],
    ] {
        let out = e.cmd(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(out.stdout == content, "{args:?}: stdout differs");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
    }
    // A reader that stops early (`| head -c 10`) ends it quietly.
    let mut child = e
        .cmd(&["decrypt", "key.bin"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    assert_eq!(head, content[..10]);
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{out:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn decrypt_to_a_terminal_refuses_binary_unless_forced() {
    require_fuse!();
    crate::require!(
        on_path("tmux"),
        "tmux is not installed (apt-get install tmux)"
    );
    let e = Envoy::new();
    e.init("alpha");
    let bin_src = e.plain_file("key.bin", &binary_content());
    e.ok(&["encrypt", &bin_src.to_string_lossy()]);
    let text_src = e.plain_file("note.txt", "the wifi password is höhle42\n".as_bytes());
    e.ok(&["encrypt", &text_src.to_string_lossy()]);
    let esc_src = e.plain_file("esc.txt", b"looks like text \x1b]0;owned\x07\n");
    e.ok(&["encrypt", &esc_src.to_string_lossy()]);
    e.unlock();
    let home = [("HOME", e.home.as_path())];

    for name in ["key.bin", "esc.txt"] {
        let t = Tmux::start(&bin(), &["decrypt", name], &home);
        let screen = t.wait_for("EXIT=", 1);
        assert!(
            screen.contains("lockbox: refusing to write binary output to the terminal")
                && screen.contains("--force")
                && screen.contains("EXIT=1"),
            "{name}: {screen}"
        );
    }
    // Text is shown as it is.
    let t = Tmux::start(&bin(), &["decrypt", "note.txt"], &home);
    let screen = t.wait_for("EXIT=", 1);
    assert!(
        screen.contains("the wifi password is höhle42") && screen.contains("EXIT=0"),
        "{screen}"
    );
    // Forced, binary goes to the terminal too.
    let t = Tmux::start(&bin(), &["decrypt", "key.bin", "--force"], &home);
    let screen = t.wait_for("EXIT=0", 1);
    assert!(!screen.contains("refusing"), "{screen}");
}

#[test]
fn a_failed_output_path_is_named_and_nothing_is_left() {
    require_fuse!();
    let e = Envoy::new();
    e.init("alpha");
    let src = e.plain_file("f", b"secret");
    e.ok(&["encrypt", &src.to_string_lossy()]);
    e.unlock();
    let outdir = e.home.join("out");
    fs::create_dir(&outdir).unwrap();
    let a_file = outdir.join("a-file");
    fs::write(&a_file, b"x").unwrap();
    let missing = outdir.join("no-such-folder/f.out");
    let under_file = a_file.join("f.out");
    for (out, why) in [
        (&missing, "No such file or directory"),
        (&under_file, "Not a directory"),
    ] {
        let out_s = out.to_string_lossy().into_owned();
        let err = e.fails(1, &["decrypt", "f", "-o", &out_s]);
        assert_eq!(
            err.trim(),
            format!(
                "lockbox: cannot write {out_s}: {why} (os error {})",
                errno(why)
            ),
            "{err}"
        );
        assert!(!err.contains("lockbox-partial"), "{err}");
    }
    let err = e.fails(1, &["decrypt", "f", "-o", &outdir.to_string_lossy()]);
    assert!(
        err.contains(&*outdir.to_string_lossy()) && err.contains("folder"),
        "{err}"
    );
    let left: Vec<_> = fs::read_dir(&outdir)
        .unwrap()
        .flatten()
        .map(|d| d.file_name())
        .collect();
    assert_eq!(left, ["a-file"], "only the test's own file is there");
}

fn errno(why: &str) -> i32 {
    match why {
        "No such file or directory" => 2,
        "Not a directory" => 20,
        _ => unreachable!(),
    }
}

#[test]
fn encrypt_refuses_an_oversize_file_before_reading_it() {
    require_fuse!();
    let e = Envoy::with_config(&format!("{TEST_CONFIG}max_file_size: 1MiB\n"));
    e.init("alpha");
    // Sparse: 3 GiB that would take the agent seconds to stream.
    let big = e.plain_file("huge.img", b"");
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let just_over = e.plain_file("over.bin", &vec![7u8; (1 << 20) + 1]);
    let at_limit = e.plain_file("at.bin", &vec![7u8; 1 << 20]);
    for running in [false, true] {
        if running {
            e.start();
        }
        for (path, size) in [(&big, "3.0 GiB"), (&just_over, "1.0 MiB")] {
            let p = path.to_string_lossy().into_owned();
            let err = e.fails(1, &["encrypt", &p]);
            assert!(
                err.contains(&p)
                    && err.contains(size)
                    && err.contains("(1.0 MiB, max_file_size in"),
                "agent running: {running}: {err}"
            );
        }
        assert_eq!(fs::read_dir(e.store()).unwrap().count(), 0);
        e.ok(&["encrypt", &at_limit.to_string_lossy()]);
        e.ok(&["delete", "at.bin"]);
    }
    // The agent was never sent the refused files.
    let log = fs::read_to_string(e.state().join("agent.log")).unwrap();
    assert!(
        !log.contains("huge.img") && !log.contains("over.bin"),
        "{log}"
    );

    // From a pipe the size is not known ahead: the agent's own refusal is
    // shown, not a broken pipe.
    let mut child = e
        .cmd(&["encrypt", "/dev/stdin", "--name", "piped"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..64 {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("limit") && !err.contains("Broken pipe"),
        "{err}"
    );
}
