//! The mesh fixtures: `Fleet` (a fleet CA), `Node` (one envoy of a circle,
//! with its mount and peer port) and `Circle` (envoys that share a CA and a
//! passphrase), loopback configs, and `curl` against a peer port (or, for
//! an upload answered before it ends, a raw HTTP/2 client: `upload`).
//! Dropping a `Circle` stops every agent and detaches every mount, pass or
//! fail. Waits poll for the state they need with a deadline; a timeout
//! prints each envoy's status and the tail of its agent log. It must not
//! hold tests.

use super::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::envoy::{bin, mode, wait_until, Envoy, KDF};
use super::mount::{MountedEnvoy, AGE_MAGIC};
use super::peer::{PeerClient, Uploaded};
use super::ports::free_ports;
use super::skip::on_path;

/// The announcement interval of the test meshes.
pub(crate) const INTERVAL: Duration = Duration::from_millis(300);

/// How long a test waits for the mesh to converge on one change: generous,
/// since CI machines are slow and tests run in parallel; the figures
/// themselves are measured by the mesh benchmark.
pub(crate) const CONVERGE: Duration = Duration::from_secs(30);

/// The config of an envoy on loopback that contacts `peers` directly.
pub(crate) fn loopback_config(port: u16, peers: &[u16]) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "multicast: off\nlisten: 127.0.0.1\npeer_port: {port}\ncross_subnet_peers: [{}]\n\
         announce_interval: {}ms\nstale_after: 3s\n{KDF}",
        peers.join(", "),
        INTERVAL.as_millis()
    )
}

pub(crate) fn text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A fleet CA in a folder of its own.
pub(crate) struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    pub(crate) fn new() -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("lockbox-fleet-")
            .tempdir()
            .expect("tempdir");
        let out = Command::new(bin())
            .args(["fleet", "init", "--out"])
            .arg(dir.path().join("ca"))
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run lockbox fleet init");
        assert!(out.status.success(), "fleet init: {out:?}");
        Fleet { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Issue `name`'s certificate into `e`'s `~/.lockbox/tls`.
    pub(crate) fn issue(&self, e: &Envoy, name: &str, hosts: &[&str]) {
        let (ca, tls) = (text(&self.ca()), text(&e.state().join("tls")));
        let mut args = vec![
            "fleet", "issue", "--ca", &ca, "--envoy", name, "--out", &tls,
        ];
        for h in hosts {
            args.extend(["--host", h]);
        }
        e.ok(&args);
    }
}

/// One envoy of a circle: its mount fixture, name and peer port.
pub(crate) struct Node {
    pub m: MountedEnvoy,
    pub name: String,
    pub port: u16,
}

impl Node {
    /// `~/lockbox/NAME`.
    pub fn at(&self, name: &str) -> PathBuf {
        self.m.at(name)
    }

    /// `~/.lockbox/store/NAME`.
    /// NAME's file in this envoy's store folder, once no seal waits.
    pub(crate) fn stored(&self, name: &str) -> PathBuf {
        self.m.e.settle();
        self.m.e.state().join("store").join(name)
    }

    pub(crate) fn tls(&self, file: &str) -> String {
        text(&self.m.e.state().join("tls").join(file))
    }

    /// The user, as this envoy's status reports it.
    pub(crate) fn user(&self) -> String {
        self.m.e.status_json()["user"]
            .as_str()
            .expect("user")
            .to_string()
    }

    /// `curl` to the peer port `port` (another envoy's, or its own) with
    /// this envoy's fleet certificate.
    pub(crate) fn curl_as(&self, port: u16, path: &str, extra: &[&str]) -> Output {
        let (ca, cert, key) = (
            self.tls("ca.pem"),
            self.tls("cert.pem"),
            self.tls("key.pem"),
        );
        curl(port, path, Some((&ca, &cert, &key)), extra)
    }

    /// The envoy names in `status --json`'s `recipients`.
    pub(crate) fn recipients(&self) -> Vec<String> {
        names_of(&self.m.e.status_json()["recipients"])
    }

    /// `status --json`'s peers as `(envoy, state, detail)`.
    pub(crate) fn peers(&self) -> Vec<(String, String, String)> {
        let s = self.m.e.status_json();
        s["peers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        let f = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                        (f("envoy"), f("state"), f("detail"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The names listed through the mount, sorted.
    pub(crate) fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.m.mnt)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every store file is an age file with mode 0600, and nothing is left
    /// in the store's temp folder.
    #[track_caller]
    pub(crate) fn assert_store_sealed(&self) {
        for entry in fs::read_dir(self.m.e.state().join("store")).expect("store") {
            let p = entry.expect("entry").path();
            let mut head = vec![0u8; AGE_MAGIC.len()];
            let n = fs::open(&p)
                .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                .expect("read a store file");
            assert_eq!(&head[..n], AGE_MAGIC, "{} is not an age file", p.display());
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        // A transfer still in flight (a peer's late push of a version this
        // envoy already has) may hold a temp file for a moment; one that
        // stays is a leak.
        let temps = || -> Vec<_> {
            fs::read_dir(self.m.tmp())
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        if wait_until(Duration::from_secs(10), || temps().is_empty()).is_err() {
            panic!("left in {}: {:?}", self.name, temps());
        }
    }

    /// The last lines of the agent's log.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.m.e.state().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

fn names_of(v: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Envoys that share a fleet CA (and, unless a test says otherwise, a
/// passphrase), each unlocked with its mount answering.
pub(crate) struct Circle {
    /// Dropped first: every agent stops and every mount is detached.
    pub nodes: Vec<Node>,
    /// The CA the nodes' certificates come from (its folder lives as long).
    pub _fleet: Fleet,
}

impl Circle {
    /// `names` on loopback, each with the others as `cross_subnet_peers`,
    /// unlocked, and agreed on one circle of all of them.
    pub fn loopback(names: &[&str]) -> Circle {
        let circle = Circle::loopback_locked(names);
        for n in &circle.nodes {
            n.m.e.unlock();
            n.m.assert_mounted();
        }
        circle.wait_formed(names);
        circle
    }

    /// `members` on loopback, unlocked and formed into one circle, and
    /// `outsider`, with a certificate of the same fleet but another
    /// passphrase (a host of the fleet that is not a member), unlocked too;
    /// each has all the others as `cross_subnet_peers`.
    pub fn loopback_with_outsider(members: &[&str], outsider: &str) -> Circle {
        let names: Vec<&str> = members.iter().copied().chain([outsider]).collect();
        let c = Circle::loopback_prepared(
            &names,
            |_| String::new(),
            |name, e| {
                if name == outsider {
                    fs::write(&e.pass, "not the user's passphrase\n").expect("pass");
                }
            },
        );
        for n in &c.nodes {
            n.m.e.unlock();
        }
        c.wait_formed(members);
        c
    }

    /// As [`Circle::loopback`], but initialised only: no agent runs.
    pub fn loopback_locked(names: &[&str]) -> Circle {
        Circle::loopback_locked_with(names, |_| String::new())
    }

    /// As [`Circle::loopback_locked`], with `extra(name)` appended to each
    /// envoy's config.yaml.
    pub fn loopback_locked_with(names: &[&str], extra: impl Fn(&str) -> String) -> Circle {
        Circle::loopback_prepared(names, extra, |_, _| {})
    }

    /// As [`Circle::loopback_locked_with`], with `prepare(name, envoy)` run
    /// on each envoy before it is initialised (to give it another
    /// passphrase, say).
    fn loopback_prepared(
        names: &[&str],
        extra: impl Fn(&str) -> String,
        prepare: impl Fn(&str, &Envoy),
    ) -> Circle {
        let fleet = Fleet::new();
        let ports = free_ports(names.len());
        let nodes = names
            .iter()
            .zip(&ports)
            .map(|(name, &port)| {
                let others: Vec<u16> = ports.iter().copied().filter(|&p| p != port).collect();
                let config = loopback_config(port, &others) + &extra(name);
                let e = Envoy::with_config(&config);
                prepare(name, &e);
                fleet.issue(&e, name, &["127.0.0.1"]);
                Node {
                    m: MountedEnvoy::named(e, name),
                    name: name.to_string(),
                    port,
                }
            })
            .collect();
        Circle {
            nodes,
            _fleet: fleet,
        }
    }

    /// [`ALL`] in the hosts of `lab` (one each, in order), announcing every
    /// `interval` and stale after 3 s, unlocked and formed into one
    /// circle: for partitions (`lab.cut`, `lab.heal`).
    pub fn in_lab(lab: &super::netlab::NetLab, interval: Duration) -> Circle {
        let config = format!(
            "listen: 0.0.0.0\nannounce_interval: {}ms\nstale_after: 3s\n{}",
            interval.as_millis(),
            KDF
        );
        let fleet = Fleet::new();
        let nodes: Vec<Node> = ALL
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut e = Envoy::with_config(&config);
                e.netns = Some(lab.ns_path(i));
                fleet.issue(&e, name, &[&lab.addr(i).to_string()]);
                Node {
                    m: MountedEnvoy::named(e, name),
                    name: name.to_string(),
                    port: 1531,
                }
            })
            .collect();
        let c = Circle {
            nodes,
            _fleet: fleet,
        };
        for n in &c.nodes {
            n.m.e.unlock();
            n.m.assert_mounted();
        }
        c.wait_formed(&ALL);
        c
    }

    /// Wait until `name` is stale on every envoy of `on` (cut off).
    #[track_caller]
    pub(crate) fn wait_stale(&self, on: &[&str], name: &str) {
        self.wait(&format!("{name} stale on {on:?}"), CONVERGE, || {
            on.iter().all(|n| {
                self.node(n)
                    .peers()
                    .iter()
                    .any(|(e, s, _)| e == name && s == "stale")
            })
        });
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no envoy {name}"))
    }

    /// Every running envoy's status and log tail, for a failure message.
    pub(crate) fn dump(&self) -> String {
        let mut o = String::new();
        for n in &self.nodes {
            let status = n.m.e.run(&["status"]);
            o.push_str(&format!(
                "==== {} status:\n{}\n==== {} agent.log (tail):\n{}\n",
                n.name,
                String::from_utf8_lossy(&status.stdout),
                n.name,
                n.log_tail()
            ));
        }
        o
    }

    /// Wait for `what` to hold, or fail with every envoy's state.
    #[track_caller]
    pub(crate) fn wait(&self, what: &str, limit: Duration, cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        if wait_until(limit, cond).is_err() {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                self.dump()
            );
        }
        start.elapsed()
    }

    /// Wait until each of `members` lists exactly `members` as recipients
    /// and sees the others live.
    #[track_caller]
    pub(crate) fn wait_formed(&self, members: &[&str]) {
        let mut want: Vec<String> = members.iter().map(|s| s.to_string()).collect();
        want.sort();
        self.wait("the envoys to form one circle", CONVERGE, || {
            members.iter().all(|m| {
                let n = self.node(m);
                n.recipients() == want
                    && n.peers()
                        .iter()
                        .filter(|(e, state, _)| state == "live" && want.contains(e))
                        .count()
                        == members.len() - 1
            })
        });
    }

    /// Wait until `name` reads back as `content` through the mount of every
    /// envoy in `on`.
    #[track_caller]
    pub(crate) fn wait_content(&self, on: &[&str], name: &str, content: &[u8]) -> Duration {
        // The size first, from a stat: a large file is read whole only once
        // it is the right length, not at every poll while it arrives.
        self.wait(&format!("{name} on {on:?}"), CONVERGE, || {
            on.iter().all(|n| {
                let at = self.node(n).at(name);
                fs::metadata(&at).is_ok_and(|m| m.len() == content.len() as u64)
                    && fs::read(&at).is_ok_and(|c| c == content)
            })
        })
    }

    /// Wait until `name` is gone from the mount of every envoy in `on`.
    #[track_caller]
    pub(crate) fn wait_gone(&self, on: &[&str], name: &str) {
        self.wait(&format!("{name} gone on {on:?}"), CONVERGE, || {
            on.iter().all(|n| !fs::present(self.node(n).at(name)))
        });
    }

    /// Write a file `marker` on `from` now, and wait until it reads back
    /// on every envoy in `on`: each has exchanged with `from` since.
    #[track_caller]
    pub(crate) fn wait_marker(&self, on: &[&str], from: &str, marker: &str) {
        let stamp = format!(
            "{marker}, written on {from} at {:?}",
            std::time::SystemTime::now()
        );
        fs::write(self.node(from).at(marker), &stamp).expect("write the marker");
        self.wait_content(on, marker, stamp.as_bytes());
    }

    /// Wait for a positive sign that every envoy in `on` has had the chance
    /// to act on everything that happened so far: a file `marker` written
    /// now on `from` reads back on every one of them, and every table
    /// (files, tombstones, resurrects, leaves) agrees on all of them. Checks
    /// that something did *not* happen come after this, never after a
    /// fixed sleep.
    #[track_caller]
    pub(crate) fn wait_settled(&self, on: &[&str], from: &str, marker: &str) {
        self.wait_marker(on, from, marker);
        self.wait("every table to agree", CONVERGE, || {
            on.iter().all(|n| {
                ["files", "tombstones", "resurrects", "leaves"]
                    .iter()
                    .all(|t| table(self.node(n), t).1.is_empty())
            })
        });
    }

    /// Wait until every envoy in `on` lists the same names through its mount
    /// (and return them).
    #[track_caller]
    pub(crate) fn wait_same_listing(&self, on: &[&str], count: usize) -> Vec<String> {
        self.wait(&format!("{count} files alike on {on:?}"), CONVERGE, || {
            let first = self.node(on[0]).listing();
            first.len() == count && on.iter().all(|n| self.node(n).listing() == first)
        });
        self.node(on[0]).listing()
    }
}

/// `len` bytes that differ per `seed`.
pub(crate) fn content(seed: &str, len: usize) -> Vec<u8> {
    let line = format!("{seed}: the quick brown fox jumps over the lazy dog\n");
    line.bytes().cycle().take(len).collect()
}

pub(crate) const ALL: [&str; 3] = ["alpha", "bravo", "charlie"];

/// `curl` against a peer port with `tls` (ca, cert, key), or no client
/// certificate. Returns curl's output (`-w '%{http_code}'` on stdout).
pub(crate) fn curl(
    port: u16,
    path: &str,
    tls: Option<(&str, &str, &str)>,
    extra: &[&str],
) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "--max-time", "20", "-w", "%{http_code}"]);
    match tls {
        Some((ca, cert, key)) => {
            cmd.args(["--cacert", ca, "--cert", cert, "--key", key]);
        }
        None => {
            cmd.arg("-k");
        }
    }
    cmd.args(extra)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("run curl")
}

/// POST to peer port `port` at `path`, as `from` on a connection it
/// proved (see [`PeerClient::upload`]).
pub(crate) fn upload(
    from: &Node,
    port: u16,
    path: &str,
    headers: &[(&str, String)],
    len: u64,
    limit: Duration,
) -> Uploaded {
    PeerClient::proven(from, port).upload(path, headers, len, limit)
}

pub(crate) fn have_curl() -> bool {
    on_path("curl")
}

/// `(record, body file)` of a version `node` serves for `name`, fetched
/// on a connection `node` proved; the record header is what a push
/// carries. The answer's headers are written beside the body, as
/// `NAME.h` (one `name: value` line each).
pub(crate) fn fetch_version(node: &Node, user: &str, name: &str, dir: &Path) -> (String, PathBuf) {
    let body = dir.join(format!("{name}.b"));
    // A file just closed through the mount is recorded (and so served) a
    // moment after close(2) returns: wait for it to be served.
    let path = format!("/lockbox/files/{user}/{name}");
    let mut client = PeerClient::proven(node, node.port);
    let mut got = client.get(&path);
    let start = Instant::now();
    while got.status == 404 && start.elapsed() < CONVERGE {
        std::thread::sleep(Duration::from_millis(50));
        got = client.get(&path);
    }
    assert_eq!(got.status, 200, "{}", got.text());
    fs::write(&body, &got.body).expect("write the body");
    let headers: String = got
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    fs::write(dir.join(format!("{name}.h")), headers).expect("write the headers");
    let record = got
        .headers
        .get("lockbox-record")
        .and_then(|v| v.to_str().ok())
        .expect("a version record")
        .to_string();
    (record, body)
}

/// POST a version (`record`, `body`) to `to`'s push endpoint for `path_name`
/// as `from`, on a connection it proved; returns the HTTP status and the
/// answer.
pub(crate) fn push_version(
    from: &Node,
    to: &Node,
    user: &str,
    path_name: &str,
    record: &str,
    body: &Path,
) -> (String, String) {
    let got = PeerClient::proven(from, to.port).post(
        &format!("/lockbox/push/{user}/{path_name}"),
        &[("lockbox-record", record.to_string())],
        fs::read(body).expect("the body"),
    );
    (got.status.to_string(), got.text())
}

/// `status --json`'s table line for `table`: (records, differs_on).
pub(crate) fn table(n: &Node, table: &str) -> (u64, Vec<String>) {
    let s = n.m.e.status_json();
    let t = s["tables"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["table"] == table).cloned())
        .unwrap_or_else(|| panic!("no {table} line in {s}"));
    let differs = t["differs_on"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (t["records"].as_u64().unwrap_or(0), differs)
}

/// Stop `away`'s agent and wait until every other envoy sees it stale, so
/// nothing is pushed to it any more: it is a lagging envoy from then on,
/// and learns what it missed only by its own catch-up when it is back.
pub(crate) fn take_away(c: &Circle, away: &str) {
    c.node(away).m.e.ok(&["stop"]);
    c.wait(&format!("{away} stale everywhere"), CONVERGE, || {
        c.nodes
            .iter()
            .filter(|n| n.name != away)
            .all(|n| n.peers().iter().any(|(e, s, _)| e == away && s == "stale"))
    });
}

/// The longest table body a peer accepts (by its declared length; it is
/// read as a stream, never held whole).
pub(crate) const TABLE_CAP: u64 = lockbox_net::mesh::MAX_TABLE_BODY as u64;

/// The peer server's HTTP/2 connection window (`net/src/mesh/server.rs`):
/// the most a client can send that the server has not read.
pub(crate) const CONNECTION_WINDOW: u64 = 16 << 20;

/// What an envoy holds, as far as a peer could change it: the names in
/// its mount, its store folder and its tables.
pub(crate) fn holdings(n: &Node) -> (Vec<String>, Vec<String>, Vec<u64>) {
    let mut stored: Vec<String> = fs::read_dir(n.m.e.state().join("store"))
        .expect("store folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    stored.sort();
    let tables = ["tombstones", "resurrects", "leaves", "files"]
        .map(|t| table(n, t).0)
        .to_vec();
    (n.listing(), stored, tables)
}

/// An agent's resident memory, in KiB (`VmRSS` of `/proc/PID/status`).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
