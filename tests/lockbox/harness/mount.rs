//! The mounted-envoy fixture: `MountedEnvoy`, an initialised envoy whose
//! agent serves `~/lockbox`, and the helpers the mount, crash and mesh tests
//! share to look at a mount and its store (`kill9`, `names`,
//! `assert_store_is_ciphertext`, `pread`, …). Dropping the fixture stops the
//! agent and detaches any mount left behind, pass or fail. It must not hold
//! tests.

use super::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use super::envoy::{
    alive, detach_mount, mode, mount_type, wait_exit, wait_until, Envoy, TEST_CONFIG,
};

/// One mebibyte.
pub(crate) const MIB: usize = 1 << 20;

/// The magic line every store file starts with.
pub(crate) const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// The plaintext size of one age STREAM chunk.
pub(crate) const CHUNK: usize = 64 << 10;

/// An initialised envoy whose agent serves `~/lockbox`. Dropping it stops
/// the agent (killing it if `stop` hangs) and then detaches whatever is still
/// mounted there: a leaked FUSE mount can hang anything that walks /tmp.
pub(crate) struct MountedEnvoy {
    /// The envoy (its `Drop` runs after ours, on an unmounted HOME).
    pub e: Envoy,
    /// `~/lockbox`, the mount point.
    pub mnt: PathBuf,
}

impl MountedEnvoy {
    /// An initialised envoy with `config`; no agent runs yet.
    pub fn new(config: &str) -> MountedEnvoy {
        MountedEnvoy::named(Envoy::with_config(config), "alpha")
    }

    /// `e`, initialised as envoy `name`; no agent runs yet.
    pub fn named(e: Envoy, name: &str) -> MountedEnvoy {
        e.init(name);
        let mnt = e.home.join("lockbox");
        MountedEnvoy { e, mnt }
    }

    /// An envoy with `config`, unlocked, its mount answering.
    pub fn unlocked_with(config: &str) -> MountedEnvoy {
        let m = MountedEnvoy::new(config);
        m.e.unlock();
        m.assert_mounted();
        m
    }

    /// An envoy with the test config, unlocked, its mount answering.
    pub fn unlocked() -> MountedEnvoy {
        MountedEnvoy::unlocked_with(TEST_CONFIG)
    }

    /// `~/lockbox/NAME`.
    pub fn at(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// The temp folder of the store (`~/.lockbox/tmp/`).
    pub fn tmp(&self) -> PathBuf {
        self.e.state().join("tmp")
    }

    /// The mount is a live FUSE mount. (That its type is exactly
    /// `fuse.lockbox` is checked once, in `stop_unmounts_and_a_restart_mounts_again`.)
    #[track_caller]
    pub fn assert_mounted(&self) {
        let kind = mount_type(&self.mnt);
        assert!(
            kind.as_deref().is_some_and(|k| k.starts_with("fuse")),
            "{} is not a FUSE mount ({kind:?})",
            self.mnt.display()
        );
        fs::read_dir(&self.mnt).expect("the mount answers readdir");
    }

    /// Run `argv` (a program and its arguments) in this envoy's HOME with a
    /// time limit, so that a hung mount fails the test instead of the run.
    pub fn tool(&self, argv: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-k", "10", "300"])
            .args(argv)
            .env("HOME", &self.e.home)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .expect("run a tool")
    }

    /// Run `argv`, require success; returns stdout.
    #[track_caller]
    pub fn tool_ok(&self, argv: &[&str]) -> Vec<u8> {
        let out = self.tool(argv);
        assert!(
            out.status.success(),
            "{argv:?} failed ({}):\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Run `argv`, require failure with `needle` in stderr; returns the output.
    #[track_caller]
    pub fn tool_fails(&self, argv: &[&str], needle: &str) -> Output {
        let out = self.tool(argv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{argv:?}: expected a failure saying {needle:?}, got {}:\nstderr: {stderr}",
            out.status
        );
        out
    }

    /// NAME's plaintext as the agent decrypts it from the store
    /// (`lockbox decrypt`), independent of the mount.
    #[track_caller]
    pub fn decrypt(&self, name: &str) -> Vec<u8> {
        let out = self.e.run(&["decrypt", name, "-o", "-"]);
        assert!(
            out.status.success(),
            "lockbox decrypt {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.e.state().join("agent.log")).unwrap_or_default()
    }

    /// Whether the agent logged a WARN that names `name`.
    pub fn warned_about(&self, name: &str) -> bool {
        self.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains(name))
    }
}

impl std::ops::Deref for MountedEnvoy {
    type Target = Envoy;
    fn deref(&self) -> &Envoy {
        &self.e
    }
}

impl Drop for MountedEnvoy {
    fn drop(&mut self) {
        if let Some(pid) = self.e.agent_pid() {
            let stop = self
                .e
                .cmd(&["stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(mut stop) = stop {
                wait_exit(&mut stop, Duration::from_secs(60));
            }
            if wait_until(Duration::from_secs(5), || !alive(pid)).is_err() {
                kill9(pid);
            }
        }
        detach_mount(&self.mnt);
    }
}

/// SIGKILL `pid` and wait (bounded) until every one of its threads has
/// exited — only then are its files (the FUSE device, the agent lock)
/// closed; a zombie leader alone does not mean that. Whether it got there
/// is for the caller to check with [`exited`].
///
/// Sent with kill(2) from this process, not by running `kill`: a fork
/// copies this process's descriptors, and the exec that follows closes the
/// copies, which FUSE sees as a flush of every file the test holds open
/// (sealing, before the kill, what a test means to leave unsealed).
pub(crate) fn kill9(pid: u32) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    let _ = wait_until(Duration::from_secs(10), || exited(pid));
}

/// Whether `pid` and all its threads have exited (it may remain a zombie).
pub(crate) fn exited(pid: u32) -> bool {
    let threads = fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    !alive(pid) && threads <= 1
}

/// A path as a tool argument (test paths are UTF-8).
pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `len` pseudo-random bytes from `seed` (splitmix64): reproducible, and as
/// incompressible as real key material.
pub(crate) fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Whether `needle` occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Equal bytes, or a message with the sizes and the first difference
/// (instead of megabytes of debug output).
#[track_caller]
pub(crate) fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: got {} bytes, expected {}; first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
}

/// The names in a folder, sorted.
pub(crate) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every file in the store's tree is an age file with mode 0600, every
/// folder a folder with mode 0700.
#[track_caller]
pub(crate) fn assert_store_is_ciphertext(e: &Envoy) {
    e.settle();
    let mut todo = vec![String::new()];
    while let Some(folder) = todo.pop() {
        for name in names(&e.store().join(&folder)) {
            let rel = if folder.is_empty() {
                name
            } else {
                format!("{folder}/{name}")
            };
            let p = e.store().join(&rel);
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                assert_eq!(meta.mode() & 0o777, 0o700, "store/{rel} mode");
                todo.push(rel);
                continue;
            }
            assert!(meta.is_file(), "store/{rel} is not a regular file");
            // 0700 only for an executable file.
            let m = meta.mode() & 0o777;
            assert!(m == 0o600 || m == 0o700, "store/{rel} mode {m:o}");
            let mut head = vec![0u8; AGE_MAGIC.len()];
            let n = fs::open(&p).unwrap().read(&mut head).unwrap();
            assert_eq!(&head[..n], AGE_MAGIC, "store/{rel} is not an age file");
        }
    }
}

/// The store's temp folder holds nothing (no staged data on disk).
#[track_caller]
pub(crate) fn assert_no_temp_files(m: &MountedEnvoy) {
    m.settle();
    let left = names(&m.tmp());
    assert!(left.is_empty(), "left in ~/.lockbox/tmp: {left:?}");
}

/// `count` bytes at `at` of an open file, read by one pread.
pub(crate) fn pread(f: &fs::File, at: u64, count: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; count];
    let n = f.read_at(&mut buf, at)?;
    buf.truncate(n);
    Ok(buf)
}

/// A file of the mount opened for random reads: no read-ahead, so each
/// pread reaches the agent as one request of its own size.
pub(crate) fn open_random(p: &Path) -> fs::File {
    let f = fs::open(p).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Random).expect("posix_fadvise");
    f
}

/// NAME's store file is an age file, mode 0600, that does not hold
/// `plaintext` (nor, for a long one, any of three 32-byte samples of it).
#[track_caller]
pub(crate) fn assert_sealed(e: &Envoy, name: &str, plaintext: &[u8]) {
    e.settle();
    let p = e.store().join(name);
    let raw = fs::read(&p).unwrap_or_else(|err| panic!("store/{name}: {err}"));
    assert!(
        raw.starts_with(AGE_MAGIC),
        "store/{name} is not an age file"
    );
    assert_eq!(mode(&p), 0o600, "store/{name} mode");
    if plaintext.len() <= 32 {
        assert!(
            !contains(&raw, plaintext),
            "store/{name} holds the plaintext"
        );
    } else {
        let n = plaintext.len();
        for at in [0, (n - 32) / 2, n - 32] {
            assert!(
                !contains(&raw, &plaintext[at..at + 32]),
                "store/{name} holds plaintext from byte {at}"
            );
        }
    }
}

/// `stat -c FORMAT PATH`, trimmed.
pub(crate) fn stat(m: &MountedEnvoy, format: &str, p: &Path) -> String {
    String::from_utf8(m.tool_ok(&["stat", "-c", format, s(p)]))
        .unwrap()
        .trim()
        .to_owned()
}

/// Our uid, as tools print it.
pub(crate) fn my_uid() -> u32 {
    fs::metadata("/proc/self").unwrap().uid()
}

/// Flip one bit in the middle of an age file; returns the plaintext
/// offset of the byte it damaged.
pub(crate) fn tamper_middle(p: &Path) -> usize {
    let mut raw = fs::read(p).unwrap();
    let at = raw.len() / 2;
    raw[at] ^= 0x01;
    fs::write(p, &raw).unwrap();
    // The payload starts after the header's MAC line and a 16-byte nonce;
    // each chunk is followed by its 16-byte tag.
    let mac = raw.windows(5).position(|w| w == b"\n--- ").unwrap() + 1;
    let payload = mac + raw[mac..].iter().position(|&b| b == b'\n').unwrap() + 1 + 16;
    let (chunk, within) = ((at - payload) / (CHUNK + 16), (at - payload) % (CHUNK + 16));
    assert!(within < CHUNK, "the flipped byte is in a chunk's tag");
    chunk * CHUNK + within
}

/// Bytes the agent process has read so far (`rchar` of /proc/PID/io:
/// every read syscall, from the store and from /dev/fuse alike).
pub(crate) fn agent_read_bytes(m: &MountedEnvoy) -> u64 {
    let pid = m.e.agent_pid().expect("the agent runs");
    let io = fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io (as root)");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("an rchar line")
}

/// Make the kernel drop its unused dentries and inodes, the mount's
/// included: it sends the agent a `FORGET` for each, and asks again
/// (`LOOKUP`) at the next use of the name.
pub(crate) fn drop_kernel_dentries() -> Result<(), String> {
    fs::write("/proc/sys/vm/drop_caches", "2")
        .map_err(|e| format!("cannot write /proc/sys/vm/drop_caches: {e} (needs root)"))
}

/// The temp files of the store, with their sizes.
pub(crate) fn temp_files(m: &MountedEnvoy) -> Vec<(PathBuf, u64)> {
    fs::read_dir(m.tmp())
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.path(), e.metadata().map_or(0, |md| md.len())))
                .collect()
        })
        .unwrap_or_default()
}

/// Write `data` in 1 MiB pieces at the end of `f`.
pub(crate) fn append_all(f: &mut fs::File, data: &[u8]) {
    for piece in data.chunks(MIB) {
        f.write_all(piece).expect("append");
    }
}

/// `strace` attached to every thread of a process, logging its `fsync`s
/// with wall-clock times; detached when dropped, pass or fail.
///
/// Each thread is logged to its own file (`-ff`): in one shared log, a
/// sync that another thread's call interrupts is split into an
/// "unfinished" line and a "resumed" one, and a parser of whole lines
/// misses exactly the syncs that overlap — which, under load, is the
/// fsync handler's sync racing the syncer's.
pub(crate) struct FsyncTrace {
    child: std::process::Child,
    log: PathBuf,
}

impl FsyncTrace {
    /// Attach to `pid` and return once every thread of it is traced.
    pub(crate) fn attach(pid: u32, log: PathBuf) -> FsyncTrace {
        let mut child = Command::new("strace")
            .args(["-ff", "-ttt", "-y", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&log)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run strace");
        let stderr = child.stderr.take().expect("stderr");
        let trace = FsyncTrace { child, log };
        // strace says "Process N attached with K threads" once it traces
        // every thread.
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains("attached") => break,
                Ok(_) => {}
                Err(_) => panic!("strace did not attach to the agent within 30 s"),
            }
        }
        trace
    }

    /// Detach; the times of the syncs of `dir` that succeeded.
    pub(crate) fn syncs_of(mut self, dir: &Path) -> Vec<f64> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let needle = format!("<{}>)", dir.display());
        // One log per thread: `LOG.TID`.
        let prefix = format!("{}.", self.log.file_name().unwrap().to_string_lossy());
        let folder = self.log.parent().expect("the log's folder");
        let mut times: Vec<f64> = fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&prefix)
            })
            .flat_map(|p| {
                fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(&needle) && l.trim_end().ends_with("= 0"))
                    // "SECONDS.MICROS fsync(FD<PATH>) = 0"
                    .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times
    }
}

impl Drop for FsyncTrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// For `ftruncate_then_fsync_seals_the_new_length_before_the_close`: a
/// python3 child that, in the mount, truncates `journal` to 4096 bytes and
/// `emptied` to nothing, writes `synced` through one descriptor and fsyncs
/// it through another (read-only) one, fsyncing each, and then holds every
/// descriptor open until killed. Returns once all of that is done (within
/// the mount deadline).
pub(crate) fn hold_after_fsync(
    journal: &Path,
    emptied: &Path,
    synced: &Path,
) -> std::process::Child {
    const SCRIPT: &str = r#"
import os, sys
journal, emptied, synced = sys.argv[1:4]
shortened = os.open(journal, os.O_WRONLY)
os.ftruncate(shortened, 4096)
os.fsync(shortened)
e = os.open(emptied, os.O_RDWR)
os.ftruncate(e, 0)
os.fsync(e)
writer = os.open(synced, os.O_WRONLY | os.O_TRUNC)
data = b"written by one, synced by another"
while data:
    data = data[os.write(writer, data):]
other = os.open(synced, os.O_RDONLY)
os.fsync(other)
print("ready", flush=True)
sys.stdin.read()
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args([journal, emptied, synced])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let stdout = child.stdout.take().expect("stdout");
    let line = fs::within("fsync in a child", synced, move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        line
    });
    assert_eq!(line.trim(), "ready", "the fsync child failed");
    child
}
