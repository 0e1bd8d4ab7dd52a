//! The mesh (SPEC §6): the peer server and client over HTTP/2 on mutual
//! TLS, discovery, fan-out and anti-entropy, around one [`Replica`].
//!
//! - **Peers** are addresses (`ip:port` of a peer server), learnt from
//!   multicast announcements, from `cross_subnet_peers`, and from peers that
//!   say hello to us. A peer is *live* while it was heard from within
//!   `stale_after`; only live peers that proved membership get pushes.
//! - **Hello** (`GET /lockbox/hello/<user>`) is the membership exchange: the
//!   client sends its endorsement in a header, the server answers with its
//!   own, every member it knows, its free disk and its table digests. Each
//!   side verifies endorsements under its own circle key, so a host without
//!   the passphrase is never a member, and a different circle is reported.
//! - **Fan-out**: every new local version and tombstone is pushed at once to
//!   every live member peer, at most `push_concurrency` transfers at a
//!   time, over one reused HTTP/2 connection per peer, retried with backoff.
//! - **Anti-entropy**: when a peer's digests differ from ours (in an
//!   announcement or a hello), we pull those of its tables (leaves,
//!   tombstones, resurrects) and its manifest, merge, and fetch every
//!   version we lack. This is also how an envoy that was away
//!   catches up.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lockbox_crypto::sign::Signed;
use lockbox_fs::Name;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::announce::{AgeRecipient, Announcement, Digests};
use crate::discovery::Discovery;
use crate::records::{self, FileVersion, Leave, Resurrect, Tombstone};
use crate::replica::{self, Admission, Outgoing, Refusal, Replica, Table};

/// The protocol version spoken on the peer port.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest ciphertext of a 1 GiB file: the plaintext, 16 bytes of tag per
/// 64 KiB chunk, and the header (capped at 64 KiB).
pub const MAX_CIPHERTEXT: u64 = (1 << 30) + ((1 << 30) / 65536 + 1) * 16 + 65536;

/// Largest table body (manifest, tombstones) accepted from a peer.
const MAX_TABLE_BODY: usize = 256 << 20;

/// How often expired deletes are forgotten (also at every start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Largest hello body.
const MAX_HELLO_BODY: usize = 1 << 20;

type Body = BoxBody<Bytes, std::io::Error>;

const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

const H_RECORD: &str = "lockbox-record";
const H_ENDORSEMENT: &str = "lockbox-endorsement";
const H_PORT: &str = "lockbox-port";
const H_INSTANCE: &str = "lockbox-instance";

/// Settings of the mesh (from `config.yaml`, SPEC §8).
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Address the peer server binds (port 0 = ephemeral).
    pub listen: SocketAddr,
    /// Multicast group, or None when `multicast: off`.
    pub multicast: Option<SocketAddrV4>,
    /// How often to announce and contact static peers.
    pub announce_interval: Duration,
    /// Silence after which a peer gets no pushes.
    pub stale_after: Duration,
    /// `cross_subnet_peers`: `host` or `host:port`.
    pub static_peers: Vec<String>,
    /// Parallel transfers.
    pub push_concurrency: usize,
    /// Skip peers with this much free disk or less (percent).
    pub disk_pressure_percent: u8,
    /// Largest file accepted.
    pub max_file_size: u64,
    /// This envoy's age recipient (announced).
    pub recipient: String,
    /// Default peer port for `cross_subnet_peers` given without one.
    pub default_port: u16,
    /// How long deletes are remembered; an envoy away longer pushes
    /// nothing until it has caught up.
    pub tombstone_retention: Duration,
}

/// What a hello answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version.
    pub protocol: u32,
    /// The user.
    pub user: String,
    /// The answering envoy.
    pub envoy: String,
    /// Its instance id (new at every start).
    pub instance: u64,
    /// Its endorsement (hex of the signed record).
    pub endorsement: String,
    /// Every member it knows (hex of each endorsement).
    pub members: Vec<String>,
    /// Free disk of its store, percent.
    pub free_percent: u8,
    /// Whether that is at or below its own `disk_pressure_percent`: it
    /// refuses pushes (507) and should not be sent any.
    #[serde(default)]
    pub disk_short: bool,
    /// Digest of its file table (hex).
    pub files: String,
    /// Digest of its tombstone table (hex).
    pub tombstones: String,
    /// Digest of its resurrect table (hex).
    #[serde(default)]
    pub resurrects: String,
    /// Digest of its leave table (hex).
    #[serde(default)]
    pub leaves: String,
}

impl Hello {
    /// Its table digests (an unreadable one counts as all zeros, so it
    /// differs and is pulled).
    fn digests(&self) -> Digests {
        let d = |s: &str| parse_digest(s).unwrap_or_default();
        Digests {
            files: d(&self.files),
            tombstones: d(&self.tombstones),
            leaves: d(&self.leaves),
            resurrects: d(&self.resurrects),
        }
    }
}

/// The hello headers that carry the client's digests.
const H_DIGESTS: [&str; 4] = [
    "lockbox-files",
    "lockbox-tombstones",
    "lockbox-leaves",
    "lockbox-resurrects",
];

fn digest_list(d: &Digests) -> [[u8; 16]; 4] {
    [d.files, d.tombstones, d.leaves, d.resurrects]
}

/// How a peer looks from here (for `status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its address.
    pub addr: String,
    /// Its envoy name, once known.
    pub envoy: Option<String>,
    /// Heard from within `stale_after`.
    pub live: bool,
    /// Seconds since it was last heard from.
    pub last_seen_secs: Option<u64>,
    /// Why it is not a member, if it is not (e.g. another circle).
    pub refused: Option<String>,
    /// Its free disk, percent, from its last hello.
    pub free_percent: Option<u8>,
    /// It said its disk is short (hello or a 507): it gets no pushes.
    #[serde(default)]
    pub disk_short: bool,
    /// Why the last contact failed (unreachable, refused in the TLS
    /// handshake, …), until it next answers.
    #[serde(default)]
    pub error: Option<String>,
    /// Its table digests as last heard.
    #[serde(skip)]
    pub digests: Option<Digests>,
}

#[derive(Debug, Default)]
struct Peer {
    envoy: Option<String>,
    instance: Option<u64>,
    last_seen: Option<Instant>,
    member: bool,
    refused: Option<String>,
    free_percent: Option<u8>,
    disk_short: bool,
    digests: Option<Digests>,
    error: Option<String>,
}

/// The running mesh of one agent.
pub struct Mesh {
    replica: Arc<Replica>,
    cfg: MeshConfig,
    client_tls: Arc<rustls::ClientConfig>,
    instance: u64,
    port: u16,
    peers: Mutex<HashMap<SocketAddr, Peer>>,
    conns: tokio::sync::Mutex<HashMap<SocketAddr, hyper::client::conn::http2::SendRequest<Body>>>,
    syncing: Mutex<HashSet<SocketAddr>>,
    transfers: Semaphore,
    last_catchup: Mutex<Option<SystemTime>>,
    /// Set at start when the last catch-up is older than the retention:
    /// until one completes, nothing is pushed or served.
    absence: Mutex<Absence>,
}

/// The long-absence state (SPEC §6.6).
#[derive(Debug, Clone, Copy, Default)]
struct Absence {
    /// The last catch-up before this start, when it is older than the
    /// retention.
    away_since: Option<i64>,
    /// When this run caught up again.
    back_at: Option<i64>,
}

impl Absence {
    fn holding_back(&self) -> bool {
        self.away_since.is_some() && self.back_at.is_none()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn respond(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

fn refuse(r: &Refusal) -> Response<Body> {
    respond(r.status(), r.to_string())
}

fn now_instant() -> Instant {
    Instant::now()
}

impl Mesh {
    /// Bind the peer server, join discovery and start every task on the
    /// current tokio runtime.
    pub async fn start(
        replica: Arc<Replica>,
        cfg: MeshConfig,
        server_tls: Arc<rustls::ServerConfig>,
        client_tls: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Arc<Mesh>> {
        let listener = TcpListener::bind(cfg.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on the peer port {}: {e} (another agent uses it? set \
                     peer_port in ~/.lockbox/config.yaml)",
                    cfg.listen
                ),
            )
        })?;
        let port = listener.local_addr()?.port();
        let discovery = match cfg.multicast {
            Some(group) => match Discovery::bind(group) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    tracing::warn!("multicast discovery is off: {e}");
                    None
                }
            },
            None => None,
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        replica.set_outgoing(tx);
        let retention = cfg.tombstone_retention.as_secs() as i64;
        let away_since = replica
            .last_contact()
            .filter(|t| unix_now().saturating_sub(*t) > retention);
        if let Some(t) = away_since {
            tracing::warn!(
                "long absence: last in touch with the circle on {}, longer ago than the \
                 tombstone retention; nothing is pushed until the tables are pulled from a peer",
                crate::version::utc_date(t)
            );
        }
        replica.prune(retention, unix_now());
        let mesh = Arc::new(Mesh {
            transfers: Semaphore::new(cfg.push_concurrency.max(1)),
            replica,
            cfg,
            client_tls,
            instance: rand::random(),
            port,
            peers: Mutex::new(HashMap::new()),
            conns: tokio::sync::Mutex::new(HashMap::new()),
            syncing: Mutex::new(HashSet::new()),
            last_catchup: Mutex::new(None),
            absence: Mutex::new(Absence {
                away_since,
                back_at: None,
            }),
        });
        tokio::spawn(serve(mesh.clone(), listener, server_tls));
        tokio::spawn(fan_out(mesh.clone(), rx));
        if let Some(d) = &discovery {
            tokio::spawn(listen_announcements(mesh.clone(), d.clone()));
        }
        tokio::spawn(ticker(mesh.clone(), discovery));
        tracing::info!("peer server listening on port {port}");
        Ok(mesh)
    }

    /// The bound peer port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// This run's instance id.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Whether pushes wait for a catch-up after a long absence.
    fn holding_back(&self) -> bool {
        self.absence.lock().is_ok_and(|a| a.holding_back())
    }

    /// The long-absence line for `status`, when it applies.
    pub fn long_absence(&self) -> Option<String> {
        let a = *self.absence.lock().ok()?;
        let since = a.away_since?;
        let days = unix_now().saturating_sub(since) / 86_400;
        Some(match a.back_at {
            None => format!(
                "last in touch with the circle on {} ({days} days ago, longer than the \
                 tombstone retention): nothing is pushed until the tables are pulled from a peer",
                crate::version::utc_date(since)
            ),
            Some(t) => format!(
                "back after {days} days away; caught up on {}",
                crate::version::utc_date(t)
            ),
        })
    }

    /// When this envoy last completed a catch-up with a peer.
    pub fn last_catchup(&self) -> Option<SystemTime> {
        self.last_catchup.lock().ok().and_then(|l| *l)
    }

    /// Every known peer.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let now = now_instant();
        let Ok(peers) = self.peers.lock() else {
            return Vec::new();
        };
        let mut out: Vec<PeerStatus> = peers
            .iter()
            .map(|(addr, p)| PeerStatus {
                addr: addr.to_string(),
                envoy: p.envoy.clone(),
                live: p
                    .last_seen
                    .is_some_and(|t| now.duration_since(t) < self.cfg.stale_after),
                last_seen_secs: p.last_seen.map(|t| now.duration_since(t).as_secs()),
                refused: p.refused.clone(),
                free_percent: p.free_percent,
                disk_short: p.disk_short,
                error: p.error.clone(),
                digests: p.digests,
            })
            .collect();
        out.sort_by(|a, b| a.envoy.cmp(&b.envoy).then(a.addr.cmp(&b.addr)));
        out
    }

    /// This envoy's table digests.
    pub fn digests(&self) -> Digests {
        Digests {
            files: self.replica.files_digest(),
            tombstones: self.replica.table_digest(Table::Tombstones),
            leaves: self.replica.table_digest(Table::Leaves),
            resurrects: self.replica.table_digest(Table::Resurrects),
        }
    }

    fn hello(&self) -> Hello {
        let d = self.digests();
        let free = self.replica.store().free_percent().unwrap_or(100);
        Hello {
            protocol: PROTOCOL_VERSION,
            user: self.replica.user().to_string(),
            envoy: self.replica.envoy().to_string(),
            instance: self.instance,
            endorsement: hex::encode(self.replica.own_endorsement().unwrap_or_default()),
            members: self
                .replica
                .members()
                .endorsements()
                .iter()
                .map(hex::encode)
                .collect(),
            free_percent: free,
            disk_short: free <= self.cfg.disk_pressure_percent,
            files: hex::encode(d.files),
            tombstones: hex::encode(d.tombstones),
            resurrects: hex::encode(d.resurrects),
            leaves: hex::encode(d.leaves),
        }
    }

    /// Member peers heard from within `stale_after` with room on disk.
    fn push_targets(&self) -> Vec<SocketAddr> {
        let now = now_instant();
        let members = self.replica.members().names();
        let Ok(peers) = self.peers.lock() else {
            return Vec::new();
        };
        peers
            .iter()
            .filter(|(_, p)| {
                p.member
                    && p.envoy.as_ref().is_some_and(|e| members.contains(e))
                    && p.last_seen
                        .is_some_and(|t| now.duration_since(t) < self.cfg.stale_after)
                    && !p.disk_short
                    && p.free_percent
                        .is_none_or(|f| f > self.cfg.disk_pressure_percent)
            })
            .map(|(a, _)| *a)
            .collect()
    }

    fn seen(&self, addr: SocketAddr, update: impl FnOnce(&mut Peer)) {
        if let Ok(mut peers) = self.peers.lock() {
            let p = peers.entry(addr).or_default();
            p.last_seen = Some(now_instant());
            p.error = None;
            update(p);
        }
    }

    // ---- client side ---------------------------------------------------

    async fn connection(
        &self,
        addr: SocketAddr,
    ) -> Result<hyper::client::conn::http2::SendRequest<Body>, String> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&addr) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let connector = tokio_rustls::TlsConnector::from(self.client_tls.clone());
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .max_frame_size(1 << 20)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP/2 with {addr} failed: {e}"))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("connection to {addr} ended: {e}");
                }
            });
            Ok::<_, String>(send)
        };
        let send = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))??;
        conns.insert(addr, send.clone());
        Ok(send)
    }

    async fn request(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, String> {
        let mut send = self.connection(addr).await?;
        send.ready()
            .await
            .map_err(|e| format!("connection to {addr} failed: {e}"))?;
        match send.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.conns.lock().await.remove(&addr);
                Err(format!("request to {addr} failed: {e}"))
            }
        }
    }

    fn uri(&self, addr: SocketAddr, path: &str) -> String {
        format!("https://{addr}{path}")
    }

    fn user_path(&self, kind: &str) -> String {
        format!(
            "/lockbox/{kind}/{}",
            utf8_percent_encode(self.replica.user().as_str(), PATH_SET)
        )
    }

    fn name_path(&self, kind: &str, name: &Name) -> String {
        format!(
            "{}/{}",
            self.user_path(kind),
            percent_encoding::percent_encode(name.as_bytes(), PATH_SET)
        )
    }

    /// Say hello to `addr`; learn its members; mark it; then catch up if
    /// its digests differ from ours.
    async fn contact(self: &Arc<Self>, addr: SocketAddr) {
        {
            let Ok(mut s) = self.syncing.lock() else {
                return;
            };
            if !s.insert(addr) {
                return;
            }
        }
        let result = self.contact_inner(addr).await;
        if let Ok(mut s) = self.syncing.lock() {
            s.remove(&addr);
        }
        if let Err(e) = result {
            // Logged when it changes, not at every attempt.
            let Ok(mut peers) = self.peers.lock() else {
                return;
            };
            let p = peers.entry(addr).or_default();
            if p.error.as_deref() != Some(e.as_str()) {
                tracing::info!("peer {addr}: {e}");
            }
            p.error = Some(e);
        }
    }

    async fn contact_inner(self: &Arc<Self>, addr: SocketAddr) -> Result<(), String> {
        let mine = digest_list(&self.digests());
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(self.uri(addr, &self.user_path("hello")))
            .header(
                H_ENDORSEMENT,
                hex::encode(self.replica.own_endorsement().unwrap_or_default()),
            )
            .header(H_PORT, self.port.to_string())
            .header(H_INSTANCE, self.instance.to_string());
        for (h, d) in H_DIGESTS.iter().zip(mine) {
            req = req.header(*h, hex::encode(d));
        }
        let req = req.body(full(Bytes::new())).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.request(addr, req))
            .await
            .map_err(|_| "hello timed out".to_string())??;
        let status = resp.status();
        let body = read_capped(resp.into_body(), MAX_HELLO_BODY).await?;
        if !status.is_success() {
            return Err(format!(
                "hello refused ({status}): {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let hello: Hello = serde_json::from_slice(&body).map_err(|e| format!("bad hello: {e}"))?;
        if hello.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "envoy {:?} speaks lockbox protocol {}, this agent speaks {PROTOCOL_VERSION}: \
                 run the same lockbox version on both",
                hello.envoy, hello.protocol
            ));
        }
        if hello.instance == self.instance {
            // Ourselves, listed as a static peer.
            if let Ok(mut peers) = self.peers.lock() {
                peers.remove(&addr);
            }
            return Ok(());
        }
        let own = hex::decode(&hello.endorsement).unwrap_or_default();
        let members: Vec<Vec<u8>> = hello
            .members
            .iter()
            .take(crate::version::MAX_ENTRIES)
            .filter_map(|m| hex::decode(m).ok())
            .collect();
        let (_, refused_own) = self.replica.learn_members(std::slice::from_ref(&own));
        let is_member =
            refused_own.is_empty() && self.replica.members().names().contains(&hello.envoy);
        let refused = if is_member {
            self.replica.learn_members(&members);
            None
        } else {
            let why = refused_own.into_iter().next().unwrap_or_else(|| {
                format!("envoy {:?} is not a member of this circle", hello.envoy)
            });
            Some(why)
        };
        let peer_digests = hello.digests();
        let mut changed = false;
        self.seen(addr, |p| {
            changed = p.refused != refused;
            p.envoy = Some(hello.envoy.clone());
            p.instance = Some(hello.instance);
            p.member = is_member;
            p.refused = refused.clone();
            p.free_percent = Some(hello.free_percent);
            p.disk_short = hello.disk_short;
            p.digests = Some(peer_digests);
        });
        if let Some(why) = refused {
            // Logged when it changes, not at every hello.
            if changed {
                tracing::warn!("peer {addr} ({}) refused: {why}", hello.envoy);
            }
            return Ok(());
        }
        self.catch_up(addr, peer_digests).await
    }

    /// Pull the tables whose digests differ from ours, and merge them in
    /// the order of [`Table::ALL`] (leaves, resurrects, tombstones), then
    /// the manifest.
    async fn catch_up(self: &Arc<Self>, addr: SocketAddr, theirs: Digests) -> Result<(), String> {
        for table in Table::ALL {
            let their = match table {
                Table::Tombstones => theirs.tombstones,
                Table::Resurrects => theirs.resurrects,
                Table::Leaves => theirs.leaves,
            };
            if their != self.replica.table_digest(table) {
                self.pull_table(addr, table).await?;
            }
        }
        let now = unix_now();
        if let Ok(mut a) = self.absence.lock() {
            if a.holding_back() {
                a.back_at = Some(now);
                tracing::info!("caught up after a long absence: pushing again");
            }
        }
        // An envoy that left the circle keeps its tables (so it knows) but
        // takes no more files.
        if theirs.files != self.replica.files_digest() && self.replica.departed().is_none() {
            self.pull_files(addr).await?;
        }
        if let Ok(mut l) = self.last_catchup.lock() {
            // Persisted at most once a minute (it only matters in days).
            let stored = self.replica.last_contact().unwrap_or(0);
            if now.saturating_sub(stored) >= 60 {
                self.replica.set_last_contact(now);
            }
            *l = Some(SystemTime::now());
        }
        Ok(())
    }

    async fn get(&self, addr: SocketAddr, path: &str) -> Result<Response<Incoming>, String> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(self.uri(addr, path))
            .body(full(Bytes::new()))
            .map_err(|e| e.to_string())?;
        self.request(addr, req).await
    }

    async fn pull_table(&self, addr: SocketAddr, table: Table) -> Result<(), String> {
        let resp = self.get(addr, &self.user_path(table.path())).await?;
        if !resp.status().is_success() {
            return Err(format!("{}: {}", table.path(), resp.status()));
        }
        let body = read_capped(resp.into_body(), MAX_TABLE_BODY).await?;
        let replica = self.replica.clone();
        let applied = tokio::task::spawn_blocking(move || apply_table(&replica, table, &body))
            .await
            .map_err(|e| e.to_string())?;
        // What was valid is applied; one refused entry must not stop the
        // catch-up of the rest.
        if let Err(e) = applied {
            tracing::debug!("{} from {addr}: {e}", table.path());
        }
        Ok(())
    }

    async fn pull_files(self: &Arc<Self>, addr: SocketAddr) -> Result<(), String> {
        let free = self.replica.store().free_percent().unwrap_or(100);
        if free <= self.cfg.disk_pressure_percent {
            return Err(format!(
                "not fetching files: only {free}% of this envoy's disk is free \
                 (disk_pressure_percent: {})",
                self.cfg.disk_pressure_percent
            ));
        }
        let resp = self.get(addr, &self.user_path("files")).await?;
        if !resp.status().is_success() {
            return Err(format!("manifest: {}", resp.status()));
        }
        let body = read_capped(resp.into_body(), MAX_TABLE_BODY).await?;
        let manifest = replica::decode_manifest(&body)?;
        let mut wanted = Vec::new();
        for (name, rec) in manifest {
            if let Err(e) = self.size_allowed(&name, rec.body()) {
                tracing::debug!("peer {addr}: not taking {name}: {e}");
                continue;
            }
            match self.replica.admit(&name, &rec) {
                Ok(Admission::Store(_)) => wanted.push(name),
                Ok(Admission::Same) => {}
                Err(Refusal::Newer(_) | Refusal::Tombstoned) => {}
                Err(e) => tracing::debug!("peer {addr}: not taking {name}: {e}"),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for name in wanted {
            let me = self.clone();
            tasks.spawn(async move {
                let _permit = me.transfers.acquire().await;
                if let Err(e) = me.fetch(addr, &name).await {
                    tracing::warn!("could not fetch {name} from {addr}: {e}");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Fetch one version from `addr` and install it.
    async fn fetch(&self, addr: SocketAddr, name: &Name) -> Result<(), String> {
        let resp = self.get(addr, &self.name_path("files", name)).await?;
        if !resp.status().is_success() {
            return Err(format!("{}", resp.status()));
        }
        let rec = record_header(resp.headers())?;
        let name = name.clone();
        self.size_allowed(&name, rec.body())
            .map_err(|e| e.to_string())?;
        match self.replica.admit(&name, &rec) {
            Ok(Admission::Same) | Err(Refusal::Newer(_) | Refusal::Tombstoned) => return Ok(()),
            Ok(Admission::Store(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        let replica = self.replica.clone();
        match receive_body(replica, name, rec, resp.into_body()).await {
            // Overtaken while it streamed (a newer version or a delete came
            // in meanwhile): nothing to fetch any more.
            Ok(_) | Err(Refusal::Newer(_) | Refusal::Tombstoned) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Push the current version of `name` to `addr`, with retries.
    async fn push(&self, addr: SocketAddr, name: &Name) {
        let mut delay = Duration::from_millis(200);
        const ATTEMPTS: u32 = 4;
        for attempt in 1..=ATTEMPTS {
            match self.push_once(addr, name).await {
                Ok(()) => return,
                Err(PushError::Final(e)) => {
                    tracing::debug!("push of {name} to {addr}: {e}");
                    return;
                }
                Err(PushError::Retry(e)) => {
                    tracing::debug!("push of {name} to {addr} failed (attempt {attempt}): {e}");
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 3;
            }
        }
        tracing::info!("could not push {name} to {addr}; anti-entropy will deliver it");
    }

    async fn push_once(&self, addr: SocketAddr, name: &Name) -> Result<(), PushError> {
        // The version held now (a newer one may have replaced the one that
        // triggered this push; then that one is pushed).
        let rec = match self.replica.record(name) {
            Ok(Some(r)) => r,
            _ => return Err(PushError::Final("no longer held".into())),
        };
        let file = self
            .replica
            .store()
            .open_file(name)
            .map_err(|e| PushError::Final(e.to_string()))?;
        let body = file_body(file);
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.uri(addr, &self.name_path("push", name)))
            .header(H_RECORD, hex::encode(rec.to_bytes()))
            .header(http::header::CONTENT_LENGTH, rec.body().ciphertext_len)
            .body(body)
            .map_err(|e| PushError::Final(e.to_string()))?;
        let resp = self.request(addr, req).await.map_err(PushError::Retry)?;
        let status = resp.status();
        let text = read_capped(resp.into_body(), 4096)
            .await
            .unwrap_or_default();
        match status.as_u16() {
            200..=299 => Ok(()),
            409 | 410 | 400 | 403 | 413 => Err(PushError::Final(format!(
                "{status}: {}",
                String::from_utf8_lossy(&text)
            ))),
            507 => {
                self.seen(addr, |p| p.disk_short = true);
                Err(PushError::Final("peer disk full".into()))
            }
            _ => Err(PushError::Retry(format!("{status}"))),
        }
    }

    /// POST one signed record to `addr`'s `table`, with a few retries.
    /// Returns whether the peer took it.
    async fn push_record(&self, addr: SocketAddr, table: Table, record: &[u8]) -> bool {
        let body = records::encode_list([record]);
        for _ in 0..3 {
            let req = match Request::builder()
                .method(Method::POST)
                .uri(self.uri(addr, &self.user_path(table.path())))
                .body(full(body.clone()))
            {
                Ok(r) => r,
                Err(_) => return false,
            };
            match self.request(addr, req).await {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => {
                    tracing::debug!("{} to {addr}: {}", table.path(), r.status());
                    return false;
                }
                Err(e) => tracing::debug!("{} to {addr}: {e}", table.path()),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    }

    /// Push a signed table record to every live member now and wait (at most
    /// `within`) for the answers: `(took it, asked)`. For a leave, which
    /// must reach someone before the envoy scrubs itself.
    pub async fn deliver(
        self: &Arc<Self>,
        table: Table,
        record: Vec<u8>,
        within: Duration,
    ) -> (usize, usize) {
        let targets = self.push_targets();
        let asked = targets.len();
        let mut tasks = tokio::task::JoinSet::new();
        for addr in targets {
            let me = self.clone();
            let record = record.clone();
            tasks.spawn(async move { me.push_record(addr, table, &record).await });
        }
        let mut took = 0;
        let _ = tokio::time::timeout(within, async {
            while let Some(r) = tasks.join_next().await {
                took += usize::from(r.unwrap_or(false));
            }
        })
        .await;
        (took, asked)
    }

    // ---- server side ---------------------------------------------------

    async fn handle(self: Arc<Self>, remote: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (kind, user, rest) = match parts.as_slice() {
            ["lockbox", kind, user] => (*kind, *user, None),
            ["lockbox", kind, user, name] => (*kind, *user, Some(*name)),
            _ => return respond(404, "no such endpoint"),
        };
        let user_ok = percent_decode_str(user)
            .decode_utf8()
            .is_ok_and(|u| u == self.replica.user().as_str());
        if !user_ok {
            return after_small_body(req, refuse(&Refusal::Dormant)).await;
        }
        let name = match rest.map(|r| Name::new(percent_decode_str(r).collect::<Vec<u8>>())) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(e)) => {
                return after_small_body(req, refuse(&Refusal::Bad(e.to_string()))).await
            }
        };
        match (req.method().clone(), kind, name) {
            (Method::GET, "hello", None) => self.serve_hello(remote, &req),
            (Method::GET, "files", _) if self.holding_back() => respond(
                503,
                "catching up after a long absence: ask again after its next catch-up",
            ),
            (Method::GET, "files", None) => {
                let replica = self.replica.clone();
                match tokio::task::spawn_blocking(move || replica.manifest_bytes()).await {
                    Ok(b) => respond(200, b),
                    Err(e) => respond(500, e.to_string()),
                }
            }
            (Method::GET, "files", Some(name)) => self.serve_file(&name),
            (Method::POST, "push", Some(name)) => self.serve_push(name, req).await,
            (method, path, None) if table_of(path).is_some() && method == Method::GET => {
                let Some(table) = table_of(path) else {
                    return respond(404, "no such endpoint");
                };
                let all = self.replica.table_records(table);
                respond(200, records::encode_list(all.iter().map(|v| v.as_slice())))
            }
            (Method::POST, path, None) if table_of(path).is_some() => {
                let Some(table) = table_of(path) else {
                    return respond(404, "no such endpoint");
                };
                match read_capped(req.into_body(), MAX_TABLE_BODY).await {
                    Ok(body) => {
                        let replica = self.replica.clone();
                        match tokio::task::spawn_blocking(move || {
                            apply_table(&replica, table, &body)
                        })
                        .await
                        {
                            Ok(Ok(())) => respond(200, "ok"),
                            Ok(Err(e)) => refuse(&e),
                            Err(e) => respond(500, e.to_string()),
                        }
                    }
                    Err(e) => respond(413, e),
                }
            }
            _ => respond(404, "no such endpoint"),
        }
    }

    fn serve_hello(
        self: &Arc<Self>,
        remote: SocketAddr,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let h = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok());
        // The client's endorsement: learn it; if it is a member and says
        // where its server is, it becomes a peer we push to and sync with.
        if let Some(e) = h(H_ENDORSEMENT).and_then(|e| hex::decode(e).ok()) {
            let (_, refused) = self.replica.learn_members(std::slice::from_ref(&e));
            let envoy = Signed::<lockbox_crypto::circle::Endorsement>::from_bytes(&e)
                .ok()
                .map(|s| s.body().envoy.clone());
            let port = h(H_PORT)
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0);
            let instance = h(H_INSTANCE).and_then(|p| p.parse::<u64>().ok());
            if let (Some(port), true) = (port, instance != Some(self.instance)) {
                let addr = SocketAddr::new(remote.ip(), port);
                let member = refused.is_empty();
                let differs = H_DIGESTS
                    .iter()
                    .zip(digest_list(&self.digests()))
                    .any(|(k, d)| h(k) != Some(hex::encode(d).as_str()));
                let fresh = self
                    .peers
                    .lock()
                    .map(|p| p.get(&addr).is_none_or(|p| !p.member))
                    .unwrap_or(false);
                let theirs = H_DIGESTS.map(|k| h(k).and_then(parse_digest).unwrap_or_default());
                self.seen(addr, |p| {
                    p.envoy = envoy;
                    p.instance = instance;
                    p.digests = Some(Digests {
                        files: theirs[0],
                        tombstones: theirs[1],
                        leaves: theirs[2],
                        resurrects: theirs[3],
                    });
                    if member {
                        p.member = true;
                        p.refused = None;
                    } else {
                        p.member = false;
                        p.refused = refused.into_iter().next();
                    }
                });
                if member && (differs || fresh) {
                    let me = self.clone();
                    tokio::spawn(async move { me.contact(addr).await });
                }
            }
        }
        match serde_json::to_vec(&self.hello()) {
            Ok(b) => respond(200, b),
            Err(e) => respond(500, e.to_string()),
        }
    }

    fn serve_file(&self, name: &Name) -> Response<Body> {
        let rec = match self.replica.record(name) {
            Ok(Some(r)) => r,
            Ok(None) => return respond(404, "no such file"),
            Err(e) => return respond(500, e),
        };
        match self.replica.store().open_file(name) {
            Ok(f) => {
                let mut r = Response::new(file_body(f));
                if let Ok(v) = http::HeaderValue::from_str(&hex::encode(rec.to_bytes())) {
                    r.headers_mut().insert(H_RECORD, v);
                }
                r
            }
            Err(_) => respond(404, "no such file"),
        }
    }

    /// Whether a version is small enough for this envoy (`max_file_size`,
    /// and the largest ciphertext of a 1 GiB file); checked for pushes and
    /// pulls alike, before any body is read.
    fn size_allowed(&self, name: &Name, v: &FileVersion) -> Result<(), Refusal> {
        if v.ciphertext_len > MAX_CIPHERTEXT || v.plaintext_len > self.cfg.max_file_size {
            return Err(Refusal::TooLarge(format!(
                "{name} is {} bytes; this envoy takes files up to {} bytes (max_file_size)",
                v.plaintext_len, self.cfg.max_file_size
            )));
        }
        Ok(())
    }

    async fn serve_push(&self, name: Name, req: Request<Incoming>) -> Response<Body> {
        // Everything is decided from the record before the body is read.
        let rec = match record_header(req.headers()) {
            Ok(r) => r,
            Err(e) => return after_small_body(req, refuse(&Refusal::Bad(e))).await,
        };
        let free = self.replica.store().free_percent().unwrap_or(100);
        let early = if let Err(r) = self.size_allowed(&name, rec.body()) {
            Some(refuse(&r))
        } else if free <= self.cfg.disk_pressure_percent {
            Some(refuse(&Refusal::DiskFull(free)))
        } else {
            match self.replica.admit(&name, &rec) {
                Ok(Admission::Same) => Some(respond(200, "already held")),
                Ok(Admission::Store(_)) => None,
                Err(r) => Some(refuse(&r)),
            }
        };
        if let Some(resp) = early {
            return after_small_body(req, resp).await;
        }
        match receive_body(self.replica.clone(), name, rec, req.into_body()).await {
            Ok(Admission::Same) => respond(200, "already held"),
            Ok(Admission::Store(n)) => respond(201, format!("stored as {n}")),
            Err(r) => refuse(&r),
        }
    }
}

enum PushError {
    Retry(String),
    Final(String),
}

fn parse_digest(s: &str) -> Option<[u8; 16]> {
    hex::decode(s).ok()?.try_into().ok()
}

fn record_header(h: &http::HeaderMap) -> Result<Signed<FileVersion>, String> {
    let v = h
        .get(H_RECORD)
        .ok_or("the version record header is missing")?
        .to_str()
        .map_err(|_| "the version record header is not text")?;
    if v.len() > 2 * lockbox_crypto::sign::MAX_RECORD_BYTES {
        return Err("the version record is too large".into());
    }
    let bytes = hex::decode(v).map_err(|e| format!("the version record is not hex: {e}"))?;
    Signed::<FileVersion>::from_bytes(&bytes).map_err(|e| format!("bad version record: {e}"))
}

/// The table an endpoint path segment names.
fn table_of(path: &str) -> Option<Table> {
    Table::ALL.into_iter().find(|t| t.path() == path)
}

/// Apply a list of signed records of `table` (a pull or a POST). Every valid
/// one is applied; the first refusal is returned, so a POST answers with its
/// status (403 for a non-member's record, 400 for garbage).
fn apply_table(replica: &Replica, table: Table, body: &[u8]) -> Result<(), Refusal> {
    let items = records::decode_list(body, replica::MAX_TABLE_ENTRIES)
        .map_err(|e| Refusal::Bad(format!("bad {} list: {e}", table.path())))?;
    let bad =
        |e: lockbox_crypto::Error| Refusal::Bad(format!("bad record in {}: {e}", table.path()));
    let mut first_err = None;
    for item in items {
        let r = match table {
            Table::Tombstones => Signed::<Tombstone>::from_bytes(item)
                .map_err(bad)
                .and_then(|t| replica.apply_tombstone(&t)),
            Table::Resurrects => Signed::<Resurrect>::from_bytes(item)
                .map_err(bad)
                .and_then(|r| replica.apply_resurrect(&r)),
            Table::Leaves => Signed::<Leave>::from_bytes(item)
                .map_err(bad)
                .and_then(|l| replica.apply_leave(&l)),
        };
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Answer `resp` to a request whose body is not wanted, after reading that
/// body if it is small (≤ 1 MiB by its `content-length`): the stream then
/// ends cleanly, which some HTTP/2 clients (curl) need to see the answer.
/// A larger body is not read: the stream is reset after the answer.
async fn after_small_body(req: Request<Incoming>, resp: Response<Body>) -> Response<Body> {
    const SMALL: u64 = 1 << 20;
    let small = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= SMALL);
    if small {
        let _ = read_capped(req.into_body(), SMALL as usize).await;
    }
    resp
}

/// Read a whole body, refusing more than `cap` bytes.
async fn read_capped(mut body: Incoming, cap: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body failed: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > cap {
                return Err(format!("body larger than {cap} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// A streamed body that reads `file` on a blocking thread.
fn file_body(mut file: std::fs::File) -> Body {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(async move {
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let n = file.read(&mut buf);
                (file, buf, n)
            })
            .await;
            let Ok((f, mut buf, n)) = read else { return };
            file = f;
            match n {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send_data(Bytes::from(buf)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tx.abort(e);
                    return;
                }
            }
        }
    });
    body.boxed()
}

/// A blocking reader over body chunks sent from the async side.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Result<Bytes, String>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.cur = b,
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Stream `body` into a staged file (checked against `rec`) and install it.
async fn receive_body(
    replica: Arc<Replica>,
    name: Name,
    rec: Signed<FileVersion>,
    mut body: Incoming,
) -> Result<Admission, Refusal> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Bytes, String>>(16);
    let worker = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        let staged = replica.stage_body(rec.body(), &mut reader)?;
        replica.install(&name, &rec, staged)
    });
    let limit = MAX_CIPHERTEXT;
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let chunk = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => Ok(d),
                Err(_) => continue,
            },
            Err(e) => Err(format!("the transfer broke off: {e}")),
        };
        let failed = chunk.is_err();
        if let Ok(d) = &chunk {
            total += d.len() as u64;
            if total > limit {
                let _ = tx.send(Err("body over the size limit".into()));
                break;
            }
        }
        // The worker may have stopped early (a bad body); then stop too.
        let tx2 = tx.clone();
        let sent = tokio::task::spawn_blocking(move || tx2.send(chunk).is_ok())
            .await
            .unwrap_or(false);
        if !sent || failed {
            break;
        }
    }
    drop(tx);
    worker.await.map_err(|e| Refusal::Internal(e.to_string()))?
}

async fn serve(mesh: Arc<Mesh>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("peer port accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let mesh = mesh.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!("refused a peer connection from {remote}: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper::service::service_fn(move |req| {
                let mesh = mesh.clone();
                async move { Ok::<_, std::convert::Infallible>(mesh.handle(remote, req).await) }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .max_frame_size(1 << 20)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!("peer connection from {remote} ended: {e}");
            }
        });
    }
}

async fn fan_out(mesh: Arc<Mesh>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(out) = rx.recv().await {
        if mesh.holding_back() || mesh.replica.departed().is_some() {
            // Kept in the tables; anti-entropy carries it once caught up (a
            // departed envoy's are refused anyway).
            continue;
        }
        for addr in mesh.push_targets() {
            let mesh = mesh.clone();
            let out = out.clone();
            tokio::spawn(async move {
                let _permit = mesh.transfers.acquire().await;
                match &out {
                    Outgoing::Version(name) => mesh.push(addr, name).await,
                    Outgoing::Tombstone(t) => {
                        mesh.push_record(addr, Table::Tombstones, &t.to_bytes())
                            .await;
                    }
                    Outgoing::Resurrect(r) => {
                        mesh.push_record(addr, Table::Resurrects, &r.to_bytes())
                            .await;
                    }
                }
            });
        }
    }
}

async fn listen_announcements(mesh: Arc<Mesh>, d: Arc<Discovery>) {
    loop {
        let (a, from) = match d.recv().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("discovery receive failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if a.is_own(mesh.instance) || a.user != *mesh.replica.user() {
            continue;
        }
        let addr = SocketAddr::new(from.ip(), a.peer_port.get());
        let digests = a.digests;
        let mut need = false;
        mesh.seen(addr, |p| {
            need = !p.member || p.instance != Some(a.instance_id) || p.digests != Some(digests);
            if p.envoy.is_none() {
                p.envoy = Some(a.envoy.to_string());
            }
        });
        let mine = mesh.digests();
        if need || digests != mine {
            let m = mesh.clone();
            tokio::spawn(async move { m.contact(addr).await });
        }
    }
}

async fn ticker(mesh: Arc<Mesh>, discovery: Option<Arc<Discovery>>) {
    let mut interval = tokio::time::interval(mesh.cfg.announce_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned = Instant::now();
    loop {
        interval.tick().await;
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            let (replica, retention) = (
                mesh.replica.clone(),
                mesh.cfg.tombstone_retention.as_secs() as i64,
            );
            let _ = tokio::task::spawn_blocking(move || replica.prune(retention, unix_now())).await;
        }
        if let Some(d) = &discovery {
            if let Some(a) = mesh.announcement() {
                if let Err(e) = d.announce(&a).await {
                    tracing::debug!("announce failed: {e}");
                }
            }
        }
        for spec in mesh.cfg.static_peers.clone() {
            let m = mesh.clone();
            tokio::spawn(async move {
                match resolve_peer(&spec, m.cfg.default_port).await {
                    Some(addr) => m.contact(addr).await,
                    None => tracing::debug!("cannot resolve peer {spec}"),
                }
            });
        }
    }
}

impl Mesh {
    fn announcement(&self) -> Option<Announcement> {
        let digests = self.digests();
        Some(Announcement {
            user: self.replica.user().clone(),
            envoy: self.replica.envoy().clone(),
            recipient: AgeRecipient::new(self.cfg.recipient.clone()).ok()?,
            signing_key: self.replica.signing_public().0,
            peer_port: NonZeroU16::new(self.port)?,
            instance_id: self.instance,
            digests,
        })
    }
}

async fn resolve_peer(spec: &str, default_port: u16) -> Option<SocketAddr> {
    let spec = spec.to_string();
    tokio::task::spawn_blocking(move || {
        let with_port = if spec.parse::<SocketAddr>().is_ok()
            || spec
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            spec
        } else {
            format!("{spec}:{default_port}")
        };
        with_port.to_socket_addrs().ok()?.next()
    })
    .await
    .ok()
    .flatten()
}
