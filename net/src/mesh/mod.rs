//! The mesh (see `docs/design.md`, "The mesh"): the peer server and client
//! over HTTP/2 on mutual TLS, discovery, fan-out and anti-entropy, around one
//! [`Replica`].
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
//!
//! This module owns the [`Mesh`] type, its settings and start-up, and the
//! table of peers (what `status` shows). The work is in its parts:
//!
//! - [`route`] — the endpoints as a type: parsing a request's method and
//!   path, and building a client's path (pure);
//! - `server` — the accept loop and `handle`, answering each request by
//!   its route;
//! - `client` — one HTTP/2 connection per peer and requests on it;
//! - `body` — bodies both ways: capped reads, streaming files in and out;
//! - `hello` — the membership exchange, both sides ([`Hello`]);
//! - `catchup` — anti-entropy: pulling and merging tables and files;
//! - `fanout` — pushing new versions and records to live peers;
//! - `discover` — the periodic rounds: announcements heard and sent,
//!   static peers contacted, expired deletes forgotten;
//! - `tests` (tests only) — hostile peers: a real mesh against a fake peer
//!   of the fleet that answers oversized, malformed or stalled bodies.
//!
//! It must not hold the replication rules themselves: what is admitted,
//! stored or deleted is decided by [`Replica`].

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lockbox_crypto::sign::Signed;
use lockbox_fs::Name;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::announce::Digests;
use crate::discovery::Discovery;
use crate::records::FileVersion;
use crate::replica::{ManifestError, Refusal, Replica, Table, MAX_TABLE_ENTRIES};

pub mod batch;
mod body;
mod catchup;
mod client;
mod discover;
mod fanout;
mod hello;
mod join;
mod presence;
mod record_queue;
pub mod route;
mod server;
#[cfg(test)]
mod tests;

pub use body::BodyError;
pub use hello::{open_membership, seal_membership, Hello, HelloAsk, HelloError};
pub use join::{
    CredentialSource, JoinCredentials, RefusedJoin, SecretOpener, FAILED_JOINS_PER_HOUR,
};
pub use presence::{Held, Holdings, Presence};

/// The protocol version spoken on the peer port.
/// Protocol 2 proves membership on every connection (a hello carrying a
/// session proof, both ways) and answers protocol 1's hello with `426`.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest ciphertext of a 1 GiB file: the plaintext, 16 bytes of tag per
/// 64 KiB chunk, and the header (capped at 64 KiB).
pub const MAX_CIPHERTEXT: u64 = (1 << 30) + ((1 << 30) / 65536 + 1) * 16 + 65536;

/// Largest table body (manifest, tombstones, …) accepted from a peer: the
/// most records a table takes, each as long as a record can be. It is
/// never held whole: a table is read as a stream, one record at a time
/// (`body::ListBody`); this only refuses a declared length no table can
/// have, unread.
pub const MAX_TABLE_BODY: usize =
    4 + MAX_TABLE_ENTRIES * (4 + lockbox_crypto::sign::MAX_RECORD_BYTES);

/// Most table bodies (POSTed to us, or pulled by us) applied at once,
/// across all peers; a request that cannot get a permit waits with its
/// body unread, so flow control stops its sender.
const TABLE_PERMITS: usize = 4;

/// Most records of a table body applied in one blocking task.
const TABLE_BATCH_RECORDS: usize = 256;

/// Most bytes of records of a table body applied in one blocking task.
const TABLE_BATCH_BYTES: usize = 1 << 20;

/// A table body that sends nothing for this long is given up.
const TABLE_BODY_IDLE: Duration = Duration::from_secs(30);

/// Most requests in flight on one connection to the peer port (HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS`).
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// Most connections to the peer port from one IP address; more are closed
/// after accept.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 4;

/// Most connections to the peer port in all.
const MAX_CONNECTIONS: usize = 256;

/// How often expired deletes are forgotten (also at every start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Largest hello body. A hello carries every member's endorsement in hex
/// (at most 339 bytes each, so about 680 characters): a circle of 256
/// envoys with the longest names sends about 175 KiB, a usual one a few.
const MAX_HELLO_BODY: usize = 256 << 10;

/// Largest hello ask (the asker's side: one endorsement, its session proof
/// and four digests, well under 2 KiB): what the server reads of a hello
/// before anyone on the connection proved membership.
const MAX_HELLO_ASK_BODY: usize = 64 << 10;

const H_RECORD: &str = "lockbox-record";

/// Why talking to a peer failed: connecting, a request, or what it
/// answered. The text is what `status` shows for the peer until it next
/// answers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (a certificate of another fleet, …).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 with {addr} failed: {source}")]
    Http2 {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
    /// Connecting took longer than 5 seconds.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout {
        /// The peer.
        addr: SocketAddr,
    },
    /// The connection broke before a request could be sent.
    #[error("connection to {addr} failed: {source}")]
    Connection {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
    /// A request failed.
    #[error("request to {addr} failed: {source}")]
    Request {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
    /// A request could not be built (a bug).
    #[error(transparent)]
    BuildRequest(#[from] http::Error),
    /// The hello's answer, its body included, did not come within 10
    /// seconds.
    #[error("hello timed out")]
    HelloTimeout,
    /// The peer refused the hello.
    #[error("hello refused ({status}): {text}")]
    HelloRefused {
        /// Its status.
        status: http::StatusCode,
        /// Its explanation.
        text: String,
    },
    /// The peer did not prove that it is a member of this circle: its
    /// endorsement is of another circle, its session proof fails, or it
    /// left. It gets nothing and is sent nothing.
    #[error("not a member of this circle: {0}")]
    NotAMember(String),
    /// The peer is of another circle (set up apart, or with another
    /// passphrase); a join finds out which.
    #[error("another circle: {0}")]
    AnotherCircle(String),
    /// A join showed that the two envoys' passphrases differ.
    #[error("a join showed that the passphrases differ")]
    JoinRefused,
    /// A join needs both envoys unlocked; one is locked.
    #[error("a join needs both envoys unlocked")]
    JoinLocked,
    /// A join failed otherwise.
    #[error("the join failed: {0}")]
    JoinFailed(String),
    /// The address is this agent's own peer port (a static peer that
    /// names ourselves).
    #[error("that is this envoy itself")]
    Ourselves,
    /// The peer's circle succeeded ours in a merge and handed this envoy
    /// over: it now follows that circle, and says hello again.
    #[error("followed the peer into the circle that succeeded ours")]
    Followed,
    /// The hello answer is not a hello.
    #[error("bad hello: {0}")]
    BadHello(#[from] HelloError),
    /// The peer speaks another protocol version.
    #[error(
        "envoy {envoy:?} speaks lockbox protocol {protocol}, this agent speaks \
         {PROTOCOL_VERSION}: run the same lockbox version on both"
    )]
    Protocol {
        /// The peer's envoy.
        envoy: String,
        /// Its protocol version.
        protocol: u32,
    },
    /// A body could not be read.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A table or the manifest was not served.
    #[error("{what}: {status}")]
    NotServed {
        /// What was asked for (`manifest`, `tombstones`, …).
        what: &'static str,
        /// The status answered.
        status: http::StatusCode,
    },
    /// A file was not served.
    #[error("{0}")]
    FileNotServed(http::StatusCode),
    /// This envoy's disk is too full to take files.
    #[error(
        "not fetching files: only {free}% of this envoy's disk is free \
         (disk_pressure_percent: {limit})"
    )]
    DiskPressure {
        /// Free disk, percent.
        free: u8,
        /// The configured limit.
        limit: u8,
    },
    /// The peer's manifest does not decode.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The version record header does not decode.
    #[error(transparent)]
    RecordHeader(#[from] RecordHeaderError),
    /// A version from the peer was refused here.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A blocking task failed (a bug).
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// Why the `lockbox-record` header of a push or a file does not hold a
/// version record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordHeaderError {
    /// There is none.
    #[error("the version record header is missing")]
    Missing,
    /// It is not visible ASCII.
    #[error("the version record header is not text")]
    NotText,
    /// It is longer than any record.
    #[error("the version record is too large")]
    TooLarge,
    /// It is not hex.
    #[error("the version record is not hex: {0}")]
    NotHex(#[from] hex::FromHexError),
    /// It is not a valid signed version record.
    #[error("bad version record: {0}")]
    Bad(#[from] lockbox_crypto::Error),
}

/// Settings of the mesh (from `config.yaml`; see `docs/operations.md`,
/// "Configuration").
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
    /// Whether its user's session is unlocked, from its last hello answer
    /// (none: an envoy that does not say).
    #[serde(default)]
    pub unlocked: Option<bool>,
    /// The protocol it speaks, from its last hello answer.
    #[serde(default)]
    pub protocol: Option<u32>,
    /// Pushes it refused for want of disk (507) since this agent started.
    #[serde(default)]
    pub disk_refusals: u64,
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
    unlocked: Option<bool>,
    protocol: Option<u32>,
    disk_refusals: u64,
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
    /// Every peer known, by the address of its peer server.
    peers: Mutex<HashMap<SocketAddr, Peer>>,
    /// The open HTTP/2 connection to each peer, reused for every request.
    /// Only connections whose peer proved membership in a hello are kept.
    connections: tokio::sync::Mutex<HashMap<SocketAddr, client::PeerConn>>,
    /// Peers being contacted now (hello and catch-up), so that one peer is
    /// contacted once at a time.
    contacting: Mutex<HashSet<SocketAddr>>,
    /// Permits for transfers (`push_concurrency` of them).
    transfers: Semaphore,
    /// Permits for table bodies being applied ([`TABLE_PERMITS`]).
    table_permits: Semaphore,
    /// When a refused hello from each address was last logged.
    refused_log: Mutex<HashMap<std::net::IpAddr, Instant>>,
    /// Where the credentials for joins come from (the unlock session).
    join_source: Mutex<Option<join::CredentialSource>>,
    /// Whether the user's session is unlocked here (told to members in
    /// the hello answer); unknown until the agent sets it.
    unlocked_source: Mutex<Option<hello::UnlockedSource>>,
    /// Held while a join settles (one merge at a time).
    join_lock: tokio::sync::Mutex<()>,
    /// Failed joins per address (answering side).
    join_attempts: Mutex<join::JoinAttempts>,
    /// When each peer was last asked to join, and how long to wait then.
    join_tried: Mutex<HashMap<SocketAddr, (Instant, Duration)>>,
    /// This envoy's circle merged with another envoy's since start.
    merged: std::sync::atomic::AtomicBool,
    last_catchup: Mutex<Option<SystemTime>>,
    /// The versions waiting to be pushed to each peer (see [`batch`]).
    queues: Mutex<HashMap<SocketAddr, batch::Queue>>,
    /// Per peer and table, the signed records waiting for a push
    /// (`record_queue`).
    record_queues: Mutex<record_queue::RecordQueues>,
    /// Pushes this envoy refused for want of disk since it started.
    disk_refusals: std::sync::atomic::AtomicU64,
    /// Moves each time `holdings` learns something ([`Mesh::holdings_learnt`]).
    learnt: std::sync::atomic::AtomicU64,
    /// What each member envoy holds, as learnt (see [`presence`]).
    holdings: Mutex<HashMap<String, presence::PeerFiles>>,
    /// Set at start when the last catch-up is older than the retention:
    /// until one completes, nothing is pushed or served.
    absence: Mutex<Absence>,
}

/// The long-absence state (see `docs/design.md`, "Deletion, re-adds and
/// departures").
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
            table_permits: Semaphore::new(TABLE_PERMITS),
            replica,
            cfg,
            client_tls,
            instance: rand::random(),
            port,
            peers: Mutex::new(HashMap::new()),
            connections: tokio::sync::Mutex::new(HashMap::new()),
            refused_log: Mutex::new(HashMap::new()),
            join_source: Mutex::new(None),
            unlocked_source: Mutex::new(None),
            join_lock: tokio::sync::Mutex::new(()),
            join_attempts: Mutex::new(HashMap::new()),
            join_tried: Mutex::new(HashMap::new()),
            merged: std::sync::atomic::AtomicBool::new(false),
            contacting: Mutex::new(HashSet::new()),
            last_catchup: Mutex::new(None),
            holdings: Mutex::new(HashMap::new()),
            disk_refusals: std::sync::atomic::AtomicU64::new(0),
            learnt: std::sync::atomic::AtomicU64::new(0),
            queues: Mutex::new(HashMap::new()),
            record_queues: Mutex::default(),
            absence: Mutex::new(Absence {
                away_since,
                back_at: None,
            }),
        });
        tokio::spawn(server::serve(mesh.clone(), listener, server_tls));
        tokio::spawn(fanout::fan_out(mesh.clone(), rx));
        if let Some(d) = &discovery {
            tokio::spawn(discover::listen_announcements(mesh.clone(), d.clone()));
        }
        tokio::spawn(discover::ticker(mesh.clone(), discovery));
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
                unlocked: p.unlocked,
                protocol: p.protocol,
                disk_refusals: p.disk_refusals,
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

    /// The peer at `addr` refused a push for want of disk (507): it gets
    /// no pushes until it says otherwise.
    fn disk_refused_by(&self, addr: SocketAddr) {
        self.seen(addr, |p| {
            p.disk_short = true;
            p.disk_refusals += 1;
        });
    }

    /// This envoy refused a push for want of disk.
    fn refusing_for_disk(&self) {
        self.disk_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Pushes this envoy refused for want of disk since it started.
    pub fn disk_refusals(&self) -> u64 {
        self.disk_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn seen(&self, addr: SocketAddr, update: impl FnOnce(&mut Peer)) {
        if let Ok(mut peers) = self.peers.lock() {
            let p = peers.entry(addr).or_default();
            p.last_seen = Some(now_instant());
            p.error = None;
            update(p);
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
}

/// The version record in the `lockbox-record` header.
fn record_header(h: &http::HeaderMap) -> Result<Signed<FileVersion>, RecordHeaderError> {
    let v = h
        .get(H_RECORD)
        .ok_or(RecordHeaderError::Missing)?
        .to_str()
        .map_err(|_| RecordHeaderError::NotText)?;
    if v.len() > 2 * lockbox_crypto::sign::MAX_RECORD_BYTES {
        return Err(RecordHeaderError::TooLarge);
    }
    let bytes = hex::decode(v)?;
    Ok(Signed::<FileVersion>::from_bytes(&bytes)?)
}
