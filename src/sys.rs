//! The few system calls lockbox needs that std does not wrap: process
//! hardening (see `docs/threat-model.md`, "Security rules"), the current
//! user's name, and socket peer credentials.
//!
//! This is the only module in the binary allowed `unsafe`; every block is a
//! single libc call on values owned by the caller.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::time::Duration;

/// What the process reads back about its own hardening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hardening {
    /// `prctl(PR_GET_DUMPABLE)`: `false` means non-dumpable (hardened).
    pub dumpable: bool,
    /// Soft `RLIMIT_CORE` in bytes (0 = no core dumps).
    pub core_limit: u64,
}

/// Make this process non-dumpable and forbid core dumps. Called by the agent
/// before any key material is loaded.
pub fn harden_process() -> io::Result<Hardening> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    read_hardening()
}

/// Fix glibc's `mmap` threshold at 4 MiB. Buffers below it (staged pages,
/// 64 KiB decrypted chunks, 1 MiB FUSE reads) come from the heap and are
/// reused: an `mmap` each cost a page fault per page and a TLB shootdown per
/// `munmap` on every read and write. Bigger ones (Argon2's memory) are
/// mapped and so returned at free; a fixed value also stops glibc's dynamic
/// threshold from growing.
///
/// The trim threshold goes up to 8 MiB too: at glibc's 128 KiB, every free
/// of a seal's buffers (a few hundred KiB) at the top of a FUSE thread's
/// arena gave the pages back (`madvise`, a TLB shootdown) only to fault
/// them in again at the next close, a fifth of the cost of sealing a small
/// file. It stays small enough that an idle agent keeps at most a few MiB
/// per arena (at 64 MiB it kept 260 MiB after the benchmark's reads). Freed
/// staged pages go back to the system through [`trim_heap`], which
/// `lockbox_fs::pages` calls after a large release.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// Give free heap memory back to the system (after a large staged file is
/// freed, and when the agent goes idle; see [`return_freed_memory`] and
/// [`TrimWhenIdle`]).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CPU time this process has used so far, all threads together.
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec that we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// When the agent gives its free heap back ([`trim_heap`]): once after
/// each stretch of work, in the first period in which it used almost no
/// CPU. While it works, each thread's arena keeps what it frees (up to
/// the 8 MiB trim threshold at its top, and the holes below) for the next
/// seal or read to reuse; an agent that has gone idle need not hold it
/// (after the mount benchmark's rows it held 55 MiB).
#[derive(Debug, Default)]
pub struct TrimWhenIdle {
    /// The process's CPU time at the last look.
    last: Option<Duration>,
    /// Whether it worked since the last trim.
    worked: bool,
}

impl TrimWhenIdle {
    /// How often the agent looks.
    pub const PERIOD: Duration = Duration::from_secs(2);
    /// CPU time in a period under which the agent counts as idle (its
    /// timers and the mesh's announcements use far less).
    pub const IDLE: Duration = Duration::from_millis(5);

    /// Look once a period, given the process's CPU time now: whether to
    /// trim.
    pub fn tick(&mut self, cpu: Duration) -> bool {
        let used = self.last.map_or(Duration::ZERO, |l| cpu.saturating_sub(l));
        self.last = Some(cpu);
        if used > Self::IDLE {
            self.worked = true;
            return false;
        }
        std::mem::take(&mut self.worked)
    }

    /// The trim is done and the CPU time is `cpu` now: what the trim
    /// itself used does not count as work (it would make the next period
    /// look busy and trim again).
    pub fn trimmed(&mut self, cpu: Duration) {
        self.last = Some(cpu);
    }
}

/// Read back the dumpable flag and the core-size limit of this process.
pub fn read_hardening() -> io::Result<Hardening> {
    // SAFETY: prctl with PR_GET_DUMPABLE takes no pointers.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    if dumpable < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Hardening {
        dumpable: dumpable != 0,
        core_limit: lim.rlim_cur,
    })
}

/// Make `file` the process's standard error (`dup2` onto fd 2): what
/// anything writes there from now on (log lines, a panic's message) goes to
/// `file`.
pub fn redirect_stderr(file: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    // SAFETY: dup2 takes two descriptor numbers; `file`'s is open for the
    // duration of the call, and fd 2 is replaced atomically.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The real uid of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid cannot fail and takes no arguments.
    unsafe { libc::getuid() }
}

/// The login name of the real uid, from the password database; falls back to
/// the numeric uid when the uid has no entry (e.g. in a bare container).
pub fn user_name() -> String {
    let uid = uid();
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain old data; zeroed is a valid initial state.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory we own for the duration of the
    // call, and buf.len() is its true size.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: on success pw_name points to a NUL-terminated string in buf.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        if let Ok(s) = name.to_str() {
            return s.to_owned();
        }
    }
    uid.to_string()
}

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_uid(sock: &impl std::os::fd::AsRawFd) -> io::Result<u32> {
    // SAFETY: ucred is plain old data; zeroed is a valid initial state.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `sock`; cred and len are ours
    // and len holds cred's true size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_uid_of_a_socketpair_is_us() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert_eq!(peer_uid(&a).expect("SO_PEERCRED"), uid());
    }

    #[test]
    fn the_heap_is_trimmed_once_after_each_stretch_of_work() {
        let ms = Duration::from_millis;
        let mut t = TrimWhenIdle::default();
        let mut cpu = ms(0);
        let mut look = |t: &mut TrimWhenIdle, used: u64| {
            cpu += ms(used);
            t.tick(cpu)
        };
        assert!(!look(&mut t, 0), "the first look has nothing to compare");
        assert!(
            !look(&mut t, 1),
            "idle from the start: nothing to give back"
        );
        assert!(!look(&mut t, 300), "working");
        assert!(!look(&mut t, 40), "still working");
        assert!(look(&mut t, 2), "idle after work: trim");
        // The trim took 30 ms: the look after it must not count them.
        t.trimmed(ms(343 + 30));
        assert!(!look(&mut t, 31), "the trim's own CPU is no work");
        assert!(!look(&mut t, 0), "once per stretch");
        assert!(!look(&mut t, 6), "work again");
        assert!(look(&mut t, 5), "5 ms a period is idle");
        assert!(process_cpu_time() > Duration::ZERO);
    }

    #[test]
    fn user_name_is_not_empty() {
        assert!(!user_name().is_empty());
    }

    #[test]
    fn harden_process_makes_the_process_non_dumpable_without_core_dumps() {
        // Hardening cannot be undone, so it is done in a child: this test
        // binary again, running only the ignored test below.
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "sys::tests::harden_this_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the test binary as a child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the hardening child failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("hardened: dumpable=false core_limit=0"),
            "{stdout}"
        );
    }

    /// Run by the test above in a child process: hardens the process it
    /// runs in, for good.
    #[test]
    #[ignore = "hardens its process for good; run in a child by harden_process_makes_the_process_non_dumpable_without_core_dumps"]
    fn harden_this_process() {
        // Before: the test process is dumpable unless something hardened it.
        let before = read_hardening().expect("prctl");
        assert!(before.dumpable || before.core_limit == 0);
        let h = harden_process().expect("harden");
        let want = Hardening {
            dumpable: false,
            core_limit: 0,
        };
        assert_eq!(h, want, "what harden_process reports");
        assert_eq!(read_hardening().expect("prctl"), want, "read back");
        // SAFETY: getrlimit writes into a valid, owned rlimit struct.
        let mut core = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut core) }, 0);
        assert_eq!((core.rlim_cur, core.rlim_max), (0, 0), "RLIMIT_CORE");
        // SAFETY: prctl with PR_GET_DUMPABLE takes plain integer arguments.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        println!(
            "hardened: dumpable={} core_limit={}",
            h.dumpable, h.core_limit
        );
    }
}
