//! A terminal for tests: a tmux server of its own running one program in
//! a pane, read with `capture-pane` and typed into with `send-keys`. It
//! must not assert anything about lockbox beyond what the pane shows.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::envoy::{wait_until, ALLOW_WEAK_KDF};

/// A tmux server of its own (socket in a temp dir), killed on drop.
pub struct Tmux {
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Tmux {
    /// A detached session running `program ARGS` in a pane; the pane stays
    /// after the program exits, and then shows `EXIT=<status>`.
    pub fn start(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock");
        let t = Tmux { _dir: dir, socket };
        let mut argv: Vec<String> = vec!["env".into(), "-u".into(), "RUST_LOG".into()];
        argv.extend(env.iter().map(|(k, v)| format!("{k}={}", v.display())));
        argv.push(format!("{}={}", ALLOW_WEAK_KDF.0, ALLOW_WEAK_KDF.1));
        argv.extend(
            [
                "sh",
                "-c",
                r#""$0" "$@"; echo "EXIT=$?"; exec env -u HOME sleep 600"#,
            ]
            .map(String::from),
        );
        argv.push(program.display().to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        let ok = t
            .tmux()
            .args(["new-session", "-d", "-x", "160", "-y", "40", "--"])
            .args(&argv)
            .status()
            .unwrap();
        assert!(ok.success(), "tmux new-session");
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).env_remove("TMUX");
        c
    }

    /// What the pane shows.
    pub fn screen(&self) -> String {
        let out = self.tmux().args(["capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait (at most 30 s) until the pane shows `needle` `times` times.
    #[track_caller]
    pub fn wait_for(&self, needle: &str, times: usize) -> String {
        let mut screen = String::new();
        let shown = wait_until(Duration::from_secs(30), || {
            screen = self.screen();
            screen.matches(needle).count() >= times
        });
        assert!(shown.is_ok(), "{needle:?} ×{times} never shown:\n{screen}");
        screen
    }

    /// Type `text` and Enter.
    pub fn type_line(&self, text: &str) {
        let ok = self
            .tmux()
            .args(["send-keys", "-l", text])
            .status()
            .unwrap();
        assert!(ok.success());
        let ok = self.tmux().args(["send-keys", "Enter"]).status().unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}
