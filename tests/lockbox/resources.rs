//! Bounded resources on the peer port: many huge bodies at once, sent to a
//! real agent over real mutual TLS by a peer with a fleet certificate. The
//! agent's memory stays bounded, its mount keeps working and the mesh
//! keeps syncing meanwhile, and what it holds is unchanged afterwards. And
//! the connections one address may hold are capped, and freed as they end.
//!
//! The flood client (`Flood`) takes any client TLS config and proves an
//! envoy's membership on each connection only when asked to, so the same
//! flood can be sent as a member (here) or as a host that is not one.

use crate::harness::fs;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use lockbox_crypto::sign::{Signed, SigningKey};
use lockbox_net::proof::{Side, EXPORTER_LABEL};
use lockbox_net::records::{FileVersion, Tombstone};
use lockbox_net::replica::MAX_TABLE_ENTRIES;
use lockbox_net::{VersionVector, WireName};

use crate::harness::*;
use crate::require_fuse;

/// The length of each body offered.
const BODY: u64 = 250 << 20;

/// Bodies sent at once to each POST endpoint.
const PARALLEL: usize = 6;

/// Connections the flood is spread over (the agent takes 16 requests in
/// flight on one, and 4 connections from one address; the real peer on
/// loopback uses one more).
const CONNECTIONS: usize = 2;

/// The most the agent may have resident at any time (`VmHWM`), in KiB.
const PEAK_LIMIT_KIB: u64 = 150 << 10;

/// The peer server's HTTP/2 stream window (`net/src/mesh/server.rs`): the
/// most of one body a client can send that the server has not read.
const STREAM_WINDOW: u64 = 4 << 20;

/// A bound on a hang, not a wait: the flood ends when its last answer is in.
const FLOOD_LIMIT: Duration = Duration::from_secs(120);

/// What a flooding body holds; each is made as it is sent, from one
/// pattern of about 1 MiB sent again and again.
#[derive(Clone)]
pub(crate) enum Fill {
    /// A list header announcing 2^32 - 1 records, then zeros.
    HugeCount,
    /// Pseudo-random bytes (also a push's "ciphertext").
    Random,
    /// A list of the most records a table takes, each this well-formed
    /// record (signed, but not by a member).
    Records(Vec<u8>),
}

impl Fill {
    /// The bytes sent first, once, and the pattern repeated after them.
    fn pattern(&self) -> (Bytes, Bytes) {
        const MIB: usize = 1 << 20;
        match self {
            Fill::HugeCount => (Bytes::from_static(&[0xff; 4]), Bytes::from(vec![0u8; MIB])),
            Fill::Random => {
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                let bytes = (0..MIB / 8)
                    .flat_map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x.to_le_bytes()
                    })
                    .collect::<Vec<u8>>();
                (Bytes::new(), Bytes::from(bytes))
            }
            Fill::Records(rec) => {
                let mut item = (rec.len() as u32).to_be_bytes().to_vec();
                item.extend_from_slice(rec);
                let items = item.repeat(MIB / item.len() + 1);
                let count = (MAX_TABLE_ENTRIES as u32).to_be_bytes();
                (Bytes::copy_from_slice(&count), Bytes::from(items))
            }
        }
    }
}

/// One request of a flood: a POST to `path` with `headers` and a body of
/// `len` bytes of `fill`.
pub(crate) struct Flooding {
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub fill: Fill,
    pub len: u64,
}

/// A raw HTTP/2 client of a peer port over mutual TLS, with whatever
/// client certificate its TLS config holds and, when it speaks as an
/// envoy, a hello proving that envoy's membership on each connection
/// first (without one, every request but a hello is refused unread): it
/// sends many requests at once over a few connections, each body made as
/// it is sent (never held whole), sent as fast as the agent's flow control
/// lets it, and counts the bytes handed to the connections.
pub(crate) struct Flood {
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    /// The envoy it says hello as on each connection, if any.
    envoy: Option<AsEnvoy>,
    /// Body bytes handed to the connections so far.
    pub sent: Arc<AtomicU64>,
}

impl Flood {
    /// A flood to `port` as `from`: its fleet certificate, and a hello
    /// proving its membership on each connection.
    pub(crate) fn as_envoy(from: &Node, port: u16) -> Flood {
        let mut f = Flood::with_tls(client_tls(&from.m.e.state().join("tls")), port);
        f.envoy = Some(AsEnvoy {
            state: from.m.e.state(),
            name: from.name.clone(),
            must_pass: true,
        });
        f
    }

    /// A flood to `port` as `from`, which is not a member there: its fleet
    /// certificate, and a hello on each connection that is refused.
    pub(crate) fn as_outsider(from: &Node, port: u16) -> Flood {
        let mut f = Flood::as_envoy(from, port);
        if let Some(e) = &mut f.envoy {
            e.must_pass = false;
        }
        f
    }

    /// A flood to `port` with the client config `tls` and no hello.
    pub(crate) fn with_tls(tls: Arc<rustls::ClientConfig>, port: u16) -> Flood {
        Flood {
            tls,
            port,
            envoy: None,
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Send every request at once over `connections` connections; each
    /// answer's status (or why there was none within `limit`), in order.
    pub(crate) fn run(
        &self,
        requests: Vec<Flooding>,
        connections: usize,
        limit: Duration,
    ) -> Vec<Result<u16, String>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let (tls, port, sent) = (self.tls.clone(), self.port, self.sent.clone());
        let envoy = self.envoy.clone();
        rt.block_on(async move {
            let mut sends = Vec::new();
            for _ in 0..connections {
                match connect(tls.clone(), port, envoy.as_ref()).await {
                    Ok(s) => sends.push(s),
                    Err(e) => return requests.iter().map(|_| Err(e.clone())).collect(),
                }
            }
            let mut tasks = Vec::new();
            for (i, r) in requests.into_iter().enumerate() {
                let send = sends[i % sends.len()].clone();
                let sent = sent.clone();
                tasks.push(tokio::spawn(async move {
                    tokio::time::timeout(limit, post(send, port, r, sent))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
            }
            out
        })
    }
}

/// Who a flood says hello as: an envoy's state folder (its endorsement
/// and signing key) and name, and whether the hello must be answered 200.
#[derive(Clone)]
pub(crate) struct AsEnvoy {
    state: PathBuf,
    name: String,
    must_pass: bool,
}

type Send = hyper::client::conn::http2::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, Infallible>,
>;

/// A connection to `port`; when `envoy` is given, after a hello as that
/// envoy (an error unless it is answered 200, if it must pass).
async fn connect(
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    envoy: Option<&AsEnvoy>,
) -> Result<Send, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let exporter = tls
        .get_ref()
        .1
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    if let Some(e) = envoy {
        let (user, ask) = hello_ask(&e.state, &e.name, Side::Asker, exporter);
        let req = http::Request::post(format!("https://127.0.0.1:{port}/lockbox/hello/{user}"))
            .body(http_body_util::Full::new(Bytes::from(ask)).boxed())
            .map_err(|e| e.to_string())?;
        send.ready().await.map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if e.must_pass && resp.status() != 200 {
            return Err(format!("hello as {}: {}", e.name, resp.status()));
        }
    }
    Ok(send)
}

/// POST one flooding request; its answer's status. The body ends after
/// `len` bytes, or when the agent stops reading it (its answer came).
async fn post(mut send: Send, port: u16, r: Flooding, sent: Arc<AtomicU64>) -> Result<u16, String> {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(2);
    let mut req = http::Request::post(format!("https://127.0.0.1:{port}{}", r.path));
    for (k, v) in &r.headers {
        req = req.header(*k, v);
    }
    let req = req.body(body.boxed()).map_err(|e| e.to_string())?;
    let (head, pattern) = r.fill.pattern();
    let len = r.len;
    let feeder = tokio::spawn(async move {
        let mut at = head.len() as u64;
        if !head.is_empty() && tx.send_data(head).await.is_err() {
            return;
        }
        while at < len {
            let n = (pattern.len() as u64).min(len - at) as usize;
            if tx.send_data(pattern.slice(..n)).await.is_err() {
                return;
            }
            at += n as u64;
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    send.ready().await.map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await;
    feeder.abort();
    resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

/// `VmRSS` and `VmHWM` (the peak so far) of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    // std's, not the harness's: /proc never blocks, and this runs often.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The flood: `PARALLEL` pushes of `rec`'s file under new names, signed by
/// `key`, each with a 250 MiB random body that matches no record; and
/// `PARALLEL` bodies to each table endpoint, a third each announcing
/// 2^32 - 1 records, of random bytes, and of the most records a table
/// takes, each well-formed but signed by no member.
fn flood_requests(user: &str, rec: &Signed<FileVersion>, key: &SigningKey) -> Vec<Flooding> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut requests = Vec::new();
    for i in 0..PARALLEL {
        let name = format!("flood-{i}");
        let mut vv = VersionVector::new();
        vv.bump(&WireName::new("alpha").expect("name"))
            .expect("bump");
        let flood = FileVersion {
            name: lockbox_fs::Name::new(name.clone()).expect("a name"),
            vv,
            sealed_unix: now,
            plaintext_len: BODY - 1000,
            ciphertext_len: BODY,
            hash: lockbox_crypto::digest::Sha256([i as u8; 32]),
            ..rec.body().clone()
        };
        requests.push(Flooding {
            path: format!("/lockbox/push/{user}/{name}"),
            headers: vec![
                (
                    "lockbox-record",
                    hex::encode(Signed::sign(flood, key).to_bytes()),
                ),
                ("content-length", BODY.to_string()),
            ],
            fill: Fill::Random,
            len: BODY,
        });
    }
    let stranger = Signed::sign(
        Tombstone {
            user: rec.body().user.clone(),
            name: rec.body().name.clone(),
            vv: rec.body().vv.clone(),
            author: WireName::new("alpha").expect("name"),
            deleted_unix: now,
        },
        &SigningKey::generate(),
    )
    .to_bytes();
    for table in ["tombstones", "resurrects", "leaves"] {
        for i in 0..PARALLEL {
            let fill = match i % 3 {
                0 => Fill::HugeCount,
                1 => Fill::Random,
                _ => Fill::Records(stranger.clone()),
            };
            requests.push(Flooding {
                path: format!("/lockbox/{table}/{user}"),
                headers: Vec::new(),
                fill,
                len: BODY,
            });
        }
    }
    requests
}

/// Samples an agent's `VmRSS` every 10 ms until stopped.
struct Sampler {
    pid: u32,
    on: Arc<AtomicBool>,
    thread: thread::JoinHandle<u64>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let on = Arc::new(AtomicBool::new(true));
        let running = on.clone();
        let thread = thread::spawn(move || {
            let mut peak = 0;
            while running.load(Ordering::Relaxed) {
                peak = peak.max(memory_kib(pid).0);
                thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        Sampler { pid, on, thread }
    }

    /// The highest `VmRSS` sampled and the process's `VmHWM`, in KiB.
    fn stop(self) -> (u64, u64) {
        self.on.store(false, Ordering::Relaxed);
        let peak = self.thread.join().expect("sampler");
        (peak, memory_kib(self.pid).1)
    }
}

/// Six parallel 250 MiB bodies to every POST endpoint at once, as a
/// member: pushes of signed records whose bodies do not match them, and
/// tables that announce 2^32 - 1 records, that are random bytes, or that
/// are a million well-formed records no member signed. The agent's
/// resident memory never reaches 150 MiB (before the bodies were read as
/// streams and requests in flight bounded, it reached 1.3 GiB), its mount
/// reads and writes meanwhile, a file written on the other envoy still
/// arrives, and afterwards it holds what it held (and the two new files).
#[test]
fn parallel_huge_bodies_from_a_member_leave_memory_bounded() {
    require_fuse!();
    let c = Circle::loopback(&["alpha", "bravo"]);
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    let user = alpha.user();
    let doc = content("doc", 5000);
    fs::write(alpha.at("doc"), &doc).expect("write");
    c.wait_content(&["alpha", "bravo"], "doc", &doc);
    let dir = tempfile::tempdir().expect("tempdir");
    let (record, _) = fetch_version(alpha, &user, "doc", dir.path());
    let rec =
        Signed::<FileVersion>::from_bytes(&hex::decode(&record).expect("hex")).expect("a record");
    let before = holdings(bravo);
    let pid = bravo.m.e.agent_pid().expect("bravo's agent runs");

    // The requests: pushes signed by alpha (a member), so each is
    // admitted and its body read to the end; and the tables.
    let key = fs::read_to_string(alpha.m.e.state().join("signing.key")).expect("signing.key");
    let key = SigningKey::parse_file(&key).expect("alpha's signing key");
    let requests = flood_requests(&user, &rec, &key);
    let what: Vec<String> = requests.iter().map(|r| r.path.clone()).collect();

    let sampler = Sampler::start(pid);
    let start = Instant::now();
    let flood = Flood::as_envoy(alpha, bravo.port);
    let sent = flood.sent.clone();
    let done = Arc::new(AtomicBool::new(false));
    let flood = {
        let done = done.clone();
        thread::spawn(move || {
            let answers = flood.run(requests, CONNECTIONS, FLOOD_LIMIT);
            done.store(true, Ordering::Relaxed);
            answers
        })
    };

    // Meanwhile (once the flood is under way) the mount reads and writes,
    // and a file written on alpha reaches bravo.
    wait_until(Duration::from_secs(30), || {
        sent.load(Ordering::Relaxed) >= 64 << 20 || done.load(Ordering::Relaxed)
    })
    .expect("the flood got under way");
    let local = content("local", 100 * 1024);
    fs::write(bravo.at("local"), &local).expect("write on bravo during the flood");
    assert_eq!(fs::read(bravo.at("local")).expect("read back"), local);
    assert_eq!(fs::read(bravo.at("doc")).expect("read doc"), doc);
    let mount_during = !done.load(Ordering::Relaxed);
    c.wait_marker(&["alpha", "bravo"], "alpha", "marker");
    let marker_during = !done.load(Ordering::Relaxed);

    let answers = flood.join().expect("the flood");
    let took = start.elapsed();
    let (peak_rss, hwm) = sampler.stop();
    eprintln!(
        "flood: {} MiB sent in {took:?}; bravo's agent: peak VmRSS {peak_rss} KiB sampled, \
         VmHWM {hwm} KiB; mount used during the flood: {mount_during}, marker arrived \
         during it: {marker_during}",
        sent.load(Ordering::Relaxed) >> 20
    );
    for (path, answer) in what.iter().zip(&answers) {
        assert!(
            matches!(answer, Ok(400..=499)),
            "{path}: refused, not {answer:?}"
        );
    }
    assert!(
        hwm < PEAK_LIMIT_KIB,
        "bravo's agent peaked at {hwm} KiB resident (limit {PEAK_LIMIT_KIB} KiB)"
    );
    assert!(mount_during, "the flood was over before the mount was used");

    // Afterwards: the tables are as they were, and the only new files are
    // the two written here (no flood file, no temp file left).
    let after = holdings(bravo);
    assert_grew_by(&before, &after, &["local", "marker"]);
    assert_eq!(after.2[3], before.2[3] + 2, "files");
}

/// One address may hold four connections to the peer port; more are
/// closed at once (before the TLS handshake), those held keep working,
/// the real peer's connection is not disturbed, and a place is free again
/// once a connection ends.
#[test]
fn connections_from_one_address_are_capped_and_freed() {
    require_fuse!();
    let c = Circle::loopback(&["alpha", "bravo"]);
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    // alpha's own connection to bravo is up: a file reached bravo.
    c.wait_marker(&["alpha", "bravo"], "alpha", "first");
    let tls = client_tls(&alpha.m.e.state().join("tls"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let port = bravo.port;
    let held: Vec<Result<Send, String>> = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(connect(tls.clone(), port, None).await);
        }
        held
    });
    let taken = held.iter().filter(|h| h.is_ok()).count();
    // alpha's mesh connection (one, two while it replaces one) counts too.
    assert!(
        (2..=3).contains(&taken),
        "{taken} of 6 more connections taken: {:?}",
        held.iter().map(|h| h.as_ref().err()).collect::<Vec<_>>()
    );
    assert!(
        held[0].is_ok() && held[1].is_ok(),
        "the first ones are taken"
    );
    // The real peer still gets through.
    c.wait_marker(&["alpha", "bravo"], "alpha", "second");
    // Once the held ones end, a new one is taken again.
    drop(held);
    let again = wait_until(Duration::from_secs(10), || {
        rt.block_on(async {
            let mut all = Vec::new();
            for _ in 0..3 {
                all.push(connect(tls.clone(), port, None).await);
            }
            all.iter().all(|c| c.is_ok())
        })
    });
    assert!(again.is_ok(), "no place freed: {again:?}");
}

/// alpha and bravo, members of one circle, and mallory, with a
/// certificate of the same fleet but another passphrase: a host of the
/// fleet that is not a member.
fn circle_with_an_outsider() -> Circle {
    Circle::loopback_with_outsider(&["alpha", "bravo"], "mallory")
}

/// The same flood from a host of the fleet that is not a member (its hello
/// on the connection is refused): every request is refused (`403`) with
/// its body unread, so what it sends is bounded by flow control, not by
/// the bodies; the agent's memory stays bounded and the members sync on.
#[test]
fn parallel_huge_bodies_from_a_non_member_are_refused_unread() {
    require_fuse!();
    let c = circle_with_an_outsider();
    let (alpha, bravo, mallory) = (c.node("alpha"), c.node("bravo"), c.node("mallory"));
    let user = alpha.user();
    let doc = content("doc", 5000);
    fs::write(alpha.at("doc"), &doc).expect("write");
    c.wait_content(&["alpha", "bravo"], "doc", &doc);
    let dir = tempfile::tempdir().expect("tempdir");
    let (record, _) = fetch_version(alpha, &user, "doc", dir.path());
    let rec =
        Signed::<FileVersion>::from_bytes(&hex::decode(&record).expect("hex")).expect("a record");
    let key = fs::read_to_string(mallory.m.e.state().join("signing.key")).expect("signing.key");
    let key = SigningKey::parse_file(&key).expect("mallory's signing key");
    let requests = flood_requests(&user, &rec, &key);
    let count = requests.len() as u64;
    let before = holdings(bravo);
    let pid = bravo.m.e.agent_pid().expect("bravo's agent runs");

    let sampler = Sampler::start(pid);
    // One connection: mallory's agent and alpha connect from this address
    // too, and four is the most one address may hold.
    let flood = Flood::as_outsider(mallory, bravo.port);
    let answers = flood.run(requests, 1, FLOOD_LIMIT);
    let (peak_rss, hwm) = sampler.stop();
    let sent = flood.sent.load(Ordering::Relaxed);
    eprintln!(
        "outsider flood: {} MiB handed to the connection; bravo's agent: peak VmRSS \
         {peak_rss} KiB sampled, VmHWM {hwm} KiB",
        sent >> 20
    );
    for a in &answers {
        assert_eq!(a, &Ok(403), "{answers:?}");
    }
    // Unread: of each body at most its stream's flow-control window
    // reached the agent (and two chunks were queued this side), not its
    // 250 MiB.
    assert!(
        sent < count * (STREAM_WINDOW + (3 << 20)),
        "{sent} bytes sent for {count} refused requests"
    );
    assert!(
        hwm < PEAK_LIMIT_KIB,
        "bravo's agent peaked at {hwm} KiB resident (limit {PEAK_LIMIT_KIB} KiB)"
    );
    c.wait_marker(&["alpha", "bravo"], "alpha", "marker");
    let after = holdings(bravo);
    assert_grew_by(&before, &after, &["marker"]);
}

/// `after` holds what `before` held plus the files `added` (listing and
/// store folder), and the same tombstones, resurrects and leaves.
fn assert_grew_by(
    before: &(Vec<String>, Vec<String>, Vec<u64>),
    after: &(Vec<String>, Vec<String>, Vec<u64>),
    added: &[&str],
) {
    let plus = |v: &[String]| {
        let mut v = v.to_vec();
        v.extend(added.iter().map(|a| a.to_string()));
        v.sort();
        v
    };
    assert_eq!(after.0, plus(&before.0), "listing");
    assert_eq!(after.1, plus(&before.1), "store folder");
    assert_eq!(
        after.2[..3],
        before.2[..3],
        "tombstones, resurrects, leaves"
    );
}
