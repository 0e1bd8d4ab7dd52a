//! One envoy in a temporary HOME, driven through the CLI: the `Envoy`
//! fixture, the test configs, and the process and mount helpers every other
//! fixture builds on (`alive`, `wait_until`, `mount_type`, `detach_mount`,
//! `wait_exit`). It starts and stops agents; it must not assert anything
//! about lockbox's behaviour beyond a command's exit status.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The lockbox binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lockbox"))
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The `kdf:` line of every test config, as a literal for `concat!`.
macro_rules! test_kdf {
    () => {
        "kdf: {memory_kib: 64, iterations: 1, parallelism: 1}\n"
    };
}

/// A fast Argon2id for the identity (the real default costs ~0.5 s per
/// unlock; the circle key keeps its fixed cost). The one place the tests'
/// KDF config is written. It is below the floor `init` accepts, so every
/// command of an [`Envoy`] runs with [`ALLOW_WEAK_KDF`] set.
pub const KDF: &str = test_kdf!();

/// The test-only switch that lets `init` wrap with a KDF below the floor,
/// as `NAME=VALUE`.
pub const ALLOW_WEAK_KDF: (&str, &str) = ("LOCKBOX_TEST_ALLOW_WEAK_KDF", "1");

/// The config of a lone test envoy: no multicast, no peer port, fast KDF.
pub const TEST_CONFIG: &str = concat!(
    "multicast: off\npeer_port: 0\nlisten: 127.0.0.1\n",
    test_kdf!()
);

/// The uid/gid the unprivileged tests run as.
pub const NOBODY: u32 = 65534;

/// One envoy in its own temporary HOME.
pub struct Envoy {
    _dir: tempfile::TempDir,
    /// Its HOME.
    pub home: PathBuf,
    /// A file holding the passphrase.
    pub pass: PathBuf,
    /// Run commands as this uid (via setpriv) instead of ours.
    pub as_uid: Option<u32>,
    /// The binary to run (a copy the other uid can execute, when `as_uid`).
    exe: PathBuf,
    /// Run commands inside this network namespace (`nsenter --net=PATH`,
    /// e.g. `NetLab::ns_path`); the agent they start inherits it.
    pub netns: Option<PathBuf>,
    /// Run commands with this umask (set by `sh` before it execs them);
    /// the agent they start inherits it. `None`: the test's own.
    umask: Option<u32>,
    /// Variables set for every command (and so the agents they start),
    /// after the ones a test must not inherit are removed.
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl Envoy {
    /// A fresh envoy with the test config.
    pub fn new() -> Envoy {
        Envoy::with_config(TEST_CONFIG)
    }

    /// A fresh envoy with this config.yaml.
    pub fn with_config(config: &str) -> Envoy {
        Envoy::build(config, None)
    }

    /// A fresh envoy whose commands run as `uid` (requires root).
    pub fn as_user(uid: u32) -> Envoy {
        Envoy::build(TEST_CONFIG, Some(uid))
    }

    /// A fresh envoy with the test config whose HOME is `len` bytes long.
    pub fn with_home_len(len: usize) -> Envoy {
        Envoy::build_at(TEST_CONFIG, None, Some(len))
    }

    fn build(config: &str, as_uid: Option<u32>) -> Envoy {
        Envoy::build_at(config, as_uid, None)
    }

    fn build_at(config: &str, as_uid: Option<u32>, home_len: Option<usize>) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix("lockbox-test-")
            .tempdir()
            .expect("tempdir");
        let base = dir.path().as_os_str().len() + 1;
        let name = match home_len {
            Some(len) => {
                assert!(len > base + 4, "a HOME of {len} bytes is too short here");
                format!("home{}", "h".repeat(len - base - 4))
            }
            None => "home".into(),
        };
        let home = dir.path().join(name);
        fs::create_dir_all(home.join(".lockbox")).expect("mkdir");
        fs::write(home.join(".lockbox/config.yaml"), config).expect("config");
        let pass = dir.path().join("pass");
        fs::write(&pass, "correct horse battery staple\n").expect("pass");
        let mut exe = bin();
        if let Some(uid) = as_uid {
            // The other uid must reach the binary, the passphrase and HOME.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
            let copy = dir.path().join("lockbox");
            fs::copy(&exe, &copy).expect("copy binary");
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
            exe = copy;
            for p in [
                &home,
                &home.join(".lockbox"),
                &home.join(".lockbox/config.yaml"),
                &pass,
            ] {
                std::os::unix::fs::chown(p, Some(uid), Some(uid)).expect("chown");
            }
        }
        Envoy {
            _dir: dir,
            home,
            pass,
            as_uid,
            exe,
            netns: None,
            umask: None,
            env: Vec::new(),
        }
    }

    /// This envoy, its commands (and the agent they start) run with
    /// `name=value` in their environment.
    pub fn with_env(
        mut self,
        name: impl Into<std::ffi::OsString>,
        value: impl Into<std::ffi::OsString>,
    ) -> Envoy {
        self.env.push((name.into(), value.into()));
        self
    }

    /// This envoy, its commands (and the agent they start) run with
    /// `umask`.
    pub fn with_umask(mut self, umask: u32) -> Envoy {
        self.umask = Some(umask);
        self
    }

    /// The state folder.
    pub fn state(&self) -> PathBuf {
        self.home.join(".lockbox")
    }

    /// The store folder.
    pub fn store(&self) -> PathBuf {
        self.state().join("store")
    }

    /// Wait until the agent has put every seal that waits for its grouped
    /// sync into the store folder (`~/.lockbox/tmp` is empty): durability may
    /// trail `close(2)` by the sync window, and a test that looks at the
    /// store folder itself must wait for it. Returns at once
    /// when no agent runs (a killed one leaves its temp files to the next
    /// start). At most 30 s.
    #[track_caller]
    pub fn settle(&self) {
        let tmp = self.state().join("tmp");
        wait_until(Duration::from_secs(30), || {
            fs::read_dir(&tmp).map_or(true, |mut rd| rd.next().is_none())
                || self.agent_pid().is_none()
        })
        .unwrap_or_else(|e| panic!("{} never emptied: {e}", tmp.display()));
    }

    /// A command for `lockbox ARGS` in this envoy.
    pub fn cmd(&self, args: &[&str]) -> Command {
        // [setpriv … --] [sh -c 'umask …; exec "$0" "$@"'] lockbox ARGS
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(uid) = self.as_uid {
            argv.extend(
                [
                    "setpriv".into(),
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                    "--".into(),
                ]
                .map(Into::into),
            );
        }
        if let Some(mask) = self.umask {
            argv.extend(
                [
                    "sh".into(),
                    "-c".into(),
                    format!("umask {mask:03o} && exec \"$0\" \"$@\""),
                ]
                .map(Into::into),
            );
        }
        argv.push(self.exe.clone().into());
        let mut c = self.program(&argv[0]);
        c.args(&argv[1..]);
        c.args(args)
            .env("HOME", &self.home)
            .env(ALLOW_WEAK_KDF.0, ALLOW_WEAK_KDF.1)
            .env_remove("RUST_LOG")
            // Where the socket is, and how the agent logs and reports
            // readiness, is each test's own choice (`with_env`).
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("LOCKBOX_LOG_CAP_BYTES")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    /// Run `lockbox ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run lockbox")
    }

    /// Run and require exit 0; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lockbox {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run and require exit `code`; returns stderr.
    #[track_caller]
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "lockbox {args:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// `init` with the test passphrase.
    pub fn init(&self, name: &str) {
        let pass = self.pass.to_string_lossy().into_owned();
        self.ok(&["init", "--passphrase-file", &pass, "--envoy", name]);
    }

    /// `daemon` (detached; returns when ready).
    pub fn start(&self) {
        self.ok(&["daemon"]);
    }

    /// `unlock` with the test passphrase.
    pub fn unlock(&self) {
        let pass = self.pass.to_string_lossy().into_owned();
        self.ok(&["unlock", "--passphrase-file", &pass]);
    }

    /// The running agent's pid, from its lock file.
    pub fn agent_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.state().join("agent.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    /// Write a plaintext file in this envoy's temp dir and return its path.
    pub fn plain_file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.home.parent().expect("parent").join(name);
        fs::write(&p, content).expect("write plain file");
        if let Some(uid) = self.as_uid {
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).expect("chown");
        }
        p
    }

    /// `status --json` parsed.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status json")
    }
}

impl Drop for Envoy {
    /// Stop the agent with a deadline (`stop` gets 10 s, the agent 5 s more
    /// to exit, then SIGKILL), then detach whatever is still mounted at
    /// `~/lockbox`, so that neither an agent nor a mount outlives its test.
    fn drop(&mut self) {
        let pid = self.agent_pid();
        let stop = self
            .cmd(&["stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut stop) = stop {
            wait_exit(&mut stop, Duration::from_secs(10));
        }
        if let Some(pid) = pid {
            // If stop did not work, do not leave the process behind.
            if wait_until(Duration::from_secs(5), || !alive(pid)).is_err() {
                super::mount::kill9(pid);
            }
        }
        detach_mount(&self.home.join("lockbox"));
    }
}

/// Whether `pid` is a running process (a zombie awaiting its reaper counts
/// as exited: detached agents are reparented, and the reaper may be slow).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the ")" that closes the command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Poll `cond` until it holds or `limit` passes. For conditions the system
/// reaches on its own (a timer firing); never a substitute for a readiness
/// signal we can wait on.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    while start.elapsed() < limit {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    if cond() {
        Ok(())
    } else {
        Err(format!("condition not reached within {limit:?}"))
    }
}

/// Mode bits of a path.
pub fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// The file system type mounted exactly at `p` (e.g. `fuse.lockbox`), read
/// from `/proc/self/mountinfo`; `None` when nothing is mounted there. Works on
/// a dead FUSE mount too, which `stat` cannot reach.
pub fn mount_type(p: &Path) -> Option<String> {
    // Resolve the parent only: a dead mount point itself cannot be resolved.
    let parent = fs::canonicalize(p.parent()?).ok()?;
    let want = parent.join(p.file_name()?);
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        // mountinfo escapes space, tab, newline and backslash as octal.
        let point = point
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\");
        (Path::new(&point) == want).then(|| right.split(' ').next().unwrap_or("").to_owned())
    })
}

/// Detach whatever is mounted at `p`, lazily, so that a dead or leaked FUSE
/// mount cannot hang later tests. Does nothing when nothing is mounted.
pub fn detach_mount(p: &Path) {
    while mount_type(p).is_some() {
        let quiet = |c: &mut Command| {
            c.arg(p)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let done = quiet(Command::new("fusermount3").arg("-uz"))
            || quiet(Command::new("umount").arg("-l"));
        if !done {
            eprintln!("could not detach the mount at {}", p.display());
            return;
        }
    }
}

/// Wait up to `limit` for `child` to exit; kill it if it does not.
/// Returns its exit status, or `None` if it had to be killed.
pub fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let mut status = None;
    let _ = wait_until(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// A raw control-socket frame (4-byte big-endian length, kind byte,
/// payload), for tests that speak to the agent without the CLI.
pub fn control_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(kind);
    frame.extend_from_slice(payload);
    frame
}

impl Envoy {
    /// A command for `program`, run inside `self.netns` when set: only the
    /// network namespace is entered, so mounts stay visible to the test, and
    /// nsenter execs `program` (same pid, no fork).
    fn program(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut net = std::ffi::OsString::from("--net=");
                net.push(ns);
                let mut c = Command::new("nsenter");
                c.arg(net).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

pub(crate) fn raw_request(sock: &Path, json: &str) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    let frame = control_frame(b'J', json.as_bytes());
    s.write_all(&frame).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The pids of live processes whose `HOME` lies under `dir` (from
/// `/proc/PID/environ`): the agents of envoys whose HOMEs are there.
pub fn processes_with_home_under(dir: &Path) -> Vec<u32> {
    // A failed listing must not read as "nothing runs".
    let procs = fs::read_dir("/proc").expect("list /proc");
    let dir = dir.as_os_str().as_encoded_bytes();
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && alive(pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|&b| b == 0).any(|var| {
                    var.strip_prefix(b"HOME=")
                        .is_some_and(|home| home.starts_with(dir))
                })
            })
        })
        .collect()
}

/// The mount points under `dir`, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    // A failed read must not read as "nothing is mounted".
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}
