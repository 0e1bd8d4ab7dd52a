//! A network-namespace lab for multi-envoy tests (`docs/operations.md`,
//! "Testing"): hosts in their own network namespaces, joined by a bridge, with
//! real multicast between them and partitions by link down. This is the fixture
//! (`NetLab`, the probe `available`, the sweep of orphaned namespaces); the
//! lab's own tests live in `netlab.rs` next to the other test files. It must
//! not touch the root network namespace.
//!
//! Layout of a lab named `lbx-<pid>-<k>` (`k` counts labs in this process):
//!
//! ```text
//!  netns lbx-<pid>-<k>-hub:  br0 ── h0, h1, … h<n-1>    (bridge-side veth ends)
//!  netns lbx-<pid>-<k>-<i>:  lo, eth0 = 10.<x>.<y>.<i+1>/24, route 224.0.0.0/4 dev eth0
//! ```
//!
//! Every link lives inside the lab's own namespaces, so the root namespace is
//! never touched and interface names (`br0`, `h<i>`, `eth0`) are fixed and
//! short whatever the namespace names are; parallel labs cannot collide. The
//! subnet still differs per lab, which keeps logs from different labs apart.
//!
//! Only the network namespace is entered (`nsenter --net=…`), so FUSE mounts
//! made inside a host stay visible to the test. Create the lab *before* the
//! envoys that run in it: locals drop in reverse order, so the envoys stop
//! their agents (through the still-existing namespace) before the lab kills
//! whatever is left and deletes the namespaces.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::envoy::{alive, is_root, wait_exit, wait_until};

/// Every namespace this harness creates is named `lbx-<pid>-…`, `<pid>` being
/// the test process that owns it (see [`sweep_orphans`]).
pub(crate) const PREFIX: &str = "lbx-";

/// Labs (and probes) created by this process so far.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// N hosts, each in its own network namespace, joined by one bridge, with
/// real multicast between them.
pub struct NetLab {
    /// `lbx-<pid>-<k>`; namespaces are `<name>-hub` and `<name>-<i>`.
    pub(crate) name: String,
    /// Number of hosts.
    n: usize,
    /// The lab's subnet is `10.<net[0]>.<net[1]>.0/24`.
    net: [u8; 2],
    /// Namespaces created so far, in creation order (the hub first); `Drop`
    /// deletes exactly these.
    pub(crate) created: Vec<String>,
}

impl NetLab {
    /// Create `n` host namespaces (`lbx-<pid>-<k>-<i>`) and a hub namespace
    /// (`lbx-<pid>-<k>-hub`) holding a bridge `br0` with IGMP snooping off
    /// (so 224.0.0.44 is flooded to every port) and STP off (ports forward at
    /// once). Each host gets a veth pair (`eth0` inside the host, `h<i>` on
    /// the bridge), the address `10.<x>.<y>.<i+1>/24` on a subnet unique per
    /// lab, `lo` up, and a route `224.0.0.0/4 dev eth0`: a fresh namespace has
    /// no default route, and without it multicast sends (and joins on
    /// `INADDR_ANY`) fail with `ENETUNREACH`.
    ///
    /// Namespaces left behind by test processes that no longer exist (killed
    /// before their `Drop` ran) are deleted first. On error, whatever was
    /// already created is deleted again.
    pub fn new(n: usize) -> io::Result<NetLab> {
        if !(1..=250).contains(&n) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a lab has 1 to 250 hosts, not {n}"),
            ));
        }
        sweep_orphans();
        let pid = std::process::id();
        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut lab = NetLab {
            name: format!("{PREFIX}{pid}-{k}"),
            n,
            net: [(pid % 256) as u8, (k % 256) as u8],
            created: Vec::new(),
        };
        // On any error below, `lab` drops and deletes what exists so far.
        let hub = lab.hub();
        lab.add_ns(&hub)?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &hub,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let host = lab.host(i);
            let port = format!("h{i}");
            let addr = format!("{}/24", lab.addr(i));
            lab.add_ns(&host)?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &host,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &port, "up"])?;
            ip(&["-n", &host, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lab)
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.n
    }

    /// The host's IPv4 address, `10.<x>.<y>.<i+1>`. Panics when `i` is not a
    /// host of this lab.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.n, "host {i} of a {}-host lab", self.n);
        Ipv4Addr::new(10, self.net[0], self.net[1], (i + 1) as u8)
    }

    /// Path of host `i`'s namespace, for `nsenter --net=PATH`
    /// (`/run/netns/NAME`). Panics when `i` is not a host of this lab.
    pub fn ns_path(&self, i: usize) -> PathBuf {
        assert!(i < self.n, "host {i} of a {}-host lab", self.n);
        ns_path(&self.host(i))
    }

    /// A `Command` that runs `program` inside host `i`'s network namespace
    /// only (`nsenter --net=PATH -- program`): mounts, pids and users stay
    /// the test's, so FUSE mounts made there stay visible to the test.
    /// `nsenter` execs `program` (no fork), so the child's pid is the
    /// program's and anything it starts (a detached agent) inherits the
    /// namespace. Panics when `i` is not a host of this lab.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(net_arg(&self.ns_path(i))).arg("--").arg(program);
        c
    }

    /// Cut host `i` off: its veth end on the bridge goes down, so nothing
    /// crosses between it and the other hosts (its own `eth0` loses carrier
    /// but keeps its address). Takes effect at once.
    pub fn cut(&self, i: usize) -> io::Result<()> {
        self.port_state(i, "down")
    }

    /// Undo [`NetLab::cut`]: the bridge-side veth end comes back up and
    /// forwards at once (STP is off). Peers re-resolve ARP as needed.
    pub fn heal(&self, i: usize) -> io::Result<()> {
        self.port_state(i, "up")
    }

    fn port_state(&self, i: usize, state: &str) -> io::Result<()> {
        if i >= self.n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("host {i} of a {}-host lab", self.n),
            ));
        }
        ip(&["-n", &self.hub(), "link", "set", &format!("h{i}"), state])
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.name)
    }

    pub(crate) fn host(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }

    fn add_ns(&mut self, name: &str) -> io::Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }
}

impl Drop for NetLab {
    /// Kill every process still inside the lab's namespaces (an agent the
    /// test did not stop, a helper), then delete the namespaces; deleting the
    /// hub takes the bridge and every veth pair with it. Never panics.
    fn drop(&mut self) {
        remove_namespaces(&self.created);
    }
}

/// Whether this machine can build a lab (root, `ip` and `nsenter` present,
/// network namespaces, bridges and veth pairs work), with a reason when not.
/// Probed once per process.
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    if !is_root() {
        return Err("network namespaces need root".into());
    }
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !runs("ip", "-V") {
        return Err("`ip` not found (Debian package iproute2)".into());
    }
    if !runs("nsenter", "--version") {
        return Err("`nsenter` not found (Debian package util-linux)".into());
    }
    let ns = format!(
        "{PREFIX}{}-probe{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    ip(&["netns", "add", &ns]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let works = ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])
        .and_then(|()| {
            ip(&[
                "-n", &ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
            ])
        })
        .map_err(|e| format!("cannot create a bridge and a veth pair: {e}"));
    remove_namespaces(&[ns]);
    works
}

/// `/run/netns/NAME`, where `ip netns add` binds a namespace.
pub(crate) fn ns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// `--net=PATH` for nsenter.
fn net_arg(path: &std::path::Path) -> OsString {
    let mut arg = OsString::from("--net=");
    arg.push(path);
    arg
}

/// Run `ip ARGS`; an error carries its stderr.
pub(crate) fn ip(args: &[&str]) -> io::Result<()> {
    let out = ip_output(args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

pub(crate) fn ip_output(args: &[&str]) -> io::Result<Output> {
    Command::new("ip").args(args).stdin(Stdio::null()).output()
}

/// The pids inside namespace `name` (`ip netns pids`).
pub(crate) fn pids_in(name: &str) -> Vec<u32> {
    ip_output(&["netns", "pids", name])
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kill everything inside these namespaces, wait (bounded) for it to die,
/// then delete them. Best effort, never panics; failures are reported on
/// stderr.
fn remove_namespaces(names: &[String]) {
    // A dying process may still fork; a few rounds catch its children.
    for _ in 0..5 {
        let pids: Vec<u32> = names.iter().flat_map(|n| pids_in(n)).collect();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = wait_until(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p)));
    }
    for name in names.iter().rev() {
        if let Err(e) = ip(&["netns", "del", name]) {
            if ns_path(name).exists() {
                eprintln!("netlab: could not delete namespace {name}: {e}");
            }
        }
    }
}

/// Delete the namespaces of labs whose test process is gone (it was killed
/// before `Drop` ran): names `lbx-<pid>-…` whose `<pid>` is not alive.
fn sweep_orphans() {
    let Ok(out) = ip_output(&["netns", "list"]) else {
        return;
    };
    let orphans: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !alive(pid))
        })
        .map(str::to_owned)
        .collect();
    if !orphans.is_empty() {
        eprintln!("netlab: deleting namespaces left by dead test processes: {orphans:?}");
        remove_namespaces(&orphans);
    }
}

/// A helper process, killed and reaped when dropped.
pub(crate) struct Helper {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Helper {
    /// Start `python3 -c SCRIPT ARGS` in host `i` with stdout piped.
    fn python(lab: &NetLab, i: usize, script: &str, args: &[&str]) -> Helper {
        let mut child = lab
            .command(i, "python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Helper { child, out }
    }

    /// The next line it prints (blocks; every script bounds its own
    /// waits, and EOF gives an empty line).
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read helper output");
        line.trim_end().to_owned()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints the port it listens on (ready), then accepts forever.
pub(crate) const LISTENER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"#;

/// Exits 0 when a TCP connection opens within the timeout.
pub(crate) const CONNECT: &str = r#"
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError as e:
    print("connect:", e, file=sys.stderr)
    sys.exit(1)
"#;

/// Joins the group on the interface the routing table picks (as an
/// agent binding INADDR_ANY does), prints "ready", then prints the
/// source of the first datagram carrying the expected payload, or
/// "timeout".
pub(crate) const RECEIVER: &str = r#"
import socket, struct, sys, time
group, port, want, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0")))
print("ready", flush=True)
deadline = time.monotonic() + wait
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        print("timeout", flush=True)
        sys.exit(3)
    s.settimeout(left)
    try:
        data, src = s.recvfrom(2048)
    except socket.timeout:
        continue
    if data == want:
        print(src[0], flush=True)
        sys.exit(0)
"#;

/// Sends the payload to the group every 50 ms (until killed, at most a
/// minute): retransmission until every receiver has reported, since a
/// datagram may in principle be lost.
pub(crate) const SENDER: &str = r#"
import socket, sys, time
group, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    s.sendto(payload, (group, port))
    time.sleep(0.05)
"#;

/// The discovery group (`docs/protocol.md`, "2. Announcement datagram");
/// each lab is isolated, so the real
/// port is free in every host.
pub(crate) const GROUP: &str = "224.0.0.44";

pub(crate) const PORT: &str = "1533";

pub(crate) fn python_available() -> Result<(), String> {
    let ok = Command::new("python3")
        .args(["-c", "import socket, struct"])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err("python3 not found (the netlab tests drive sockets with it)".into())
    }
}

/// A TCP listener on host `i`, listening once this returns.
pub(crate) fn listen(lab: &NetLab, i: usize) -> (Helper, u16) {
    let mut h = Helper::python(lab, i, LISTENER, &[&lab.addr(i).to_string()]);
    let line = h.line();
    let port = line
        .parse()
        .unwrap_or_else(|_| panic!("listener on host {i} did not start: {line:?}"));
    (h, port)
}

/// Whether host `from` opens a TCP connection to `port` on host `to`
/// within `timeout_s` seconds.
pub(crate) fn reaches(lab: &NetLab, from: usize, to: usize, port: u16, timeout_s: f64) -> bool {
    let mut child = lab
        .command(from, "python3")
        .arg("-c")
        .arg(CONNECT)
        .args([
            lab.addr(to).to_string(),
            port.to_string(),
            timeout_s.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3");
    let limit = Duration::from_secs_f64(timeout_s + 10.0);
    wait_exit(&mut child, limit).is_some_and(|s| s.success())
}

/// Multicast `payload` from host `from`; returns, for each host in
/// `to`, the source address it saw or "timeout" after `wait_s`.
pub(crate) fn multicast(lab: &NetLab, from: usize, to: &[usize], wait_s: f64) -> Vec<String> {
    let payload = format!("netlab {} {from}->{to:?}", lab.name);
    let mut receivers: Vec<Helper> = to
        .iter()
        .map(|&i| {
            Helper::python(
                lab,
                i,
                RECEIVER,
                &[GROUP, PORT, &payload, &wait_s.to_string()],
            )
        })
        .collect();
    for (r, i) in receivers.iter_mut().zip(to) {
        assert_eq!(r.line(), "ready", "receiver on host {i} did not start");
    }
    let _sender = Helper::python(lab, from, SENDER, &[GROUP, PORT, &payload]);
    receivers.iter_mut().map(Helper::line).collect()
}

/// Names of the links in the root namespace.
pub(crate) fn root_links() -> BTreeSet<String> {
    let out = ip_output(&["-o", "link", "show"]).expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// Wait until `pid` has entered host `i`'s namespace (`spawn` returns
/// once nsenter runs, before its `setns`).
pub(crate) fn wait_inside(lab: &NetLab, i: usize, pid: u32) {
    wait_until(Duration::from_secs(10), || {
        pids_in(&lab.host(i)).contains(&pid)
    })
    .unwrap_or_else(|e| panic!("pid {pid} never entered host {i}: {e}"));
}

/// Every namespace of `lab` (hosts and hub) with its inode.
pub(crate) fn namespaces(lab: &NetLab) -> Vec<(String, u64)> {
    lab.created
        .iter()
        .map(|n| {
            let ino = std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(ns_path(n)).expect("stat netns"),
            );
            (n.clone(), ino)
        })
        .collect()
}

/// The namespaces are unlisted, unbound, and no process holds them (as
/// its namespace or an open descriptor), so the kernel frees them with
/// their bridge and veths.
pub(crate) fn assert_gone(spaces: &[(String, u64)]) {
    assert!(!spaces.is_empty());
    let listed =
        String::from_utf8_lossy(&ip_output(&["netns", "list"]).expect("ip").stdout).into_owned();
    for (name, ino) in spaces {
        assert!(
            !listed.split_whitespace().any(|n| n == name),
            "{name} still listed"
        );
        assert!(!ns_path(name).exists(), "{name} still bound");
        let tag = format!("net:[{ino}]");
        for proc in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let p = proc.path();
            let holds = |link: PathBuf| {
                std::fs::read_link(link).is_ok_and(|t| t.as_os_str() == tag.as_str())
            };
            if holds(p.join("ns/net")) {
                panic!("{} is still inside {name}", p.display());
            }
            if let Ok(fds) = std::fs::read_dir(p.join("fd")) {
                for fd in fds.flatten() {
                    assert!(!holds(fd.path()), "{} holds {name}", fd.path().display());
                }
            }
        }
    }
}
