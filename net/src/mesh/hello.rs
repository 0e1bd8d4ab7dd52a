//! The hello exchange (`POST /lockbox/hello/<user>`, protocol 2): the
//! asking envoy sends a [`HelloAsk`] with its endorsement and a session
//! proof for this connection; the answering envoy checks both and only
//! then answers a [`Hello`] with its own endorsement and proof, every member
//! it knows and its table digests. Each side checks the other's proof
//! against the TLS session's exporter (see [`crate::proof`]), so a replayed
//! endorsement proves nothing. This module owns both JSON bodies, serving a
//! hello (`serve_hello`, which marks the connection proven) and asking one
//! (`exchange_hello`, `contact`), learning the peer's members and digests
//! and then catching up if they differ. It must not apply tables or fetch
//! files itself (that is [`super::catchup`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use lockbox_crypto::circle::Endorsement;
use lockbox_crypto::hello::HelloKey;
use lockbox_crypto::sign::Signed;
use serde::{Deserialize, Serialize};

use super::body::{full, read_capped, respond, Body};
use super::client::PeerConn;
use super::route::Route;
use super::server::PeerSession;
use super::{Mesh, PeerError, MAX_HELLO_ASK_BODY, MAX_HELLO_BODY, PROTOCOL_VERSION};
use crate::announce::Digests;
use crate::proof::Side;

/// Why a hello answer was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// It is longer than any hello.
    #[error("the hello is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// It is not the JSON of a hello.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// What a hello answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Its session proof for this connection (hex of a signed
    /// [`crate::proof::SessionProof`], side "answerer").
    #[serde(default)]
    pub proof: String,
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
    /// Whether its user's session is unlocked (for the members' status
    /// pages); absent from envoys before it, and from one that does not
    /// know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlocked: Option<bool>,
}

/// Where the mesh learns whether the session is unlocked.
pub type UnlockedSource = Box<dyn Fn() -> bool + Send + Sync>;

impl Hello {
    /// The longest hello accepted, in bytes.
    pub const MAX_LEN: usize = MAX_HELLO_BODY;

    /// Parse a hello answer (JSON; unknown fields are ignored, missing
    /// digests of newer tables count as empty). What parses encodes back,
    /// with [`Hello::encode`], to JSON that parses to the same hello.
    ///
    /// # Errors
    ///
    /// [`HelloError::TooLarge`] over [`Hello::MAX_LEN`] bytes (not read),
    /// [`HelloError::Json`] when it is not a hello.
    pub fn parse(bytes: &[u8]) -> Result<Hello, HelloError> {
        parse_capped(bytes, Self::MAX_LEN)
    }

    /// The hello as JSON, as it is answered.
    ///
    /// # Errors
    ///
    /// [`HelloError::Json`] if it cannot be written (not for any hello
    /// this type can hold).
    pub fn encode(&self) -> Result<Vec<u8>, HelloError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Its table digests (an unreadable one counts as all zeros, so it
    /// differs and is pulled).
    fn digests(&self) -> Digests {
        digests_of(
            &self.files,
            &self.tombstones,
            &self.leaves,
            &self.resurrects,
        )
    }
}

/// What the asking envoy sends in a hello: who it is, its proof for this
/// connection, where its own peer server is, and its table digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAsk {
    /// Protocol version.
    pub protocol: u32,
    /// The user.
    pub user: String,
    /// The asking envoy.
    pub envoy: String,
    /// Its instance id (new at every start).
    pub instance: u64,
    /// The port of its own peer server (0: none to contact back).
    pub port: u16,
    /// Its endorsement (hex of the signed record), when the ask is not
    /// sealed (a circle made by protocol 1 has no hello key); else empty.
    #[serde(default)]
    pub endorsement: String,
    /// Its session proof for this connection (hex, side "asker"), when the
    /// ask is not sealed; else empty.
    #[serde(default)]
    pub proof: String,
    /// The endorsement and the proof sealed under the circle's hello key
    /// for this connection (hex; see [`seal_membership`]), so that only a
    /// member can read them; empty when the ask is not sealed.
    #[serde(default)]
    pub sealed: String,
    /// Digest of its file table (hex).
    pub files: String,
    /// Digest of its tombstone table (hex).
    pub tombstones: String,
    /// Digest of its resurrect table (hex).
    pub resurrects: String,
    /// Digest of its leave table (hex).
    pub leaves: String,
}

impl HelloAsk {
    /// The longest hello ask accepted, in bytes.
    pub const MAX_LEN: usize = MAX_HELLO_ASK_BODY;

    /// Parse a hello ask (JSON; unknown fields are ignored).
    ///
    /// # Errors
    ///
    /// [`HelloError::TooLarge`] over [`HelloAsk::MAX_LEN`] bytes (not
    /// read), [`HelloError::Json`] when it is not a hello ask.
    pub fn parse(bytes: &[u8]) -> Result<HelloAsk, HelloError> {
        parse_capped(bytes, Self::MAX_LEN)
    }

    /// The ask as JSON, as it is sent.
    ///
    /// # Errors
    ///
    /// [`HelloError::Json`] if it cannot be written (not for any ask this
    /// type can hold).
    pub fn encode(&self) -> Result<Vec<u8>, HelloError> {
        Ok(serde_json::to_vec(self)?)
    }

    fn digests(&self) -> Digests {
        digests_of(
            &self.files,
            &self.tombstones,
            &self.leaves,
            &self.resurrects,
        )
    }
}

/// Seals what proves membership — the signed `endorsement` and the session
/// `proof` — under the circle's hello `key` for the connection with
/// `exporter`, as hex. The plaintext is the endorsement's length (u16,
/// big-endian), the endorsement, then the proof.
pub fn seal_membership(
    key: &HelloKey,
    exporter: &[u8; 32],
    endorsement: &[u8],
    proof: &[u8],
) -> Result<String, String> {
    let len = u16::try_from(endorsement.len()).map_err(|_| "an endorsement too long".to_owned())?;
    let mut plain =
        zeroize::Zeroizing::new(Vec::with_capacity(2 + endorsement.len() + proof.len()));
    plain.extend_from_slice(&len.to_be_bytes());
    plain.extend_from_slice(endorsement);
    plain.extend_from_slice(proof);
    key.seal(exporter, &plain)
        .map(hex::encode)
        .map_err(|e| e.to_string())
}

/// Opens what [`seal_membership`] made: the endorsement and the proof.
/// `None` when it does not open with `key` on this connection or is not
/// what a sealed ask holds.
pub fn open_membership(
    key: &HelloKey,
    exporter: &[u8; 32],
    sealed: &str,
) -> Option<(Vec<u8>, Vec<u8>)> {
    if sealed.len() > 2 * lockbox_crypto::hello::MAX_SEALED {
        return None;
    }
    let bytes = hex::decode(sealed).ok()?;
    let plain = key.open(exporter, &bytes).ok()?;
    let (len, rest) = plain.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return None;
    }
    let (endorsement, proof) = rest.split_at(len);
    Some((endorsement.to_vec(), proof.to_vec()))
}

/// A hello or an ask from its JSON, refusing more than `max` bytes before
/// anything is parsed.
fn parse_capped<T: serde::de::DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, HelloError> {
    if bytes.len() > max {
        return Err(HelloError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(serde_json::from_slice(bytes)?)
}

/// Why a peer's hello was not taken as a member's.
struct PeerRefused {
    /// Said to the peer and shown in `status`.
    why: String,
    /// Its endorsement is of another circle (a join may merge the two).
    another_circle: bool,
    /// The peer proved it holds the key of an envoy that left: its signed
    /// leave, sent with the refusal so it learns it left.
    /// (Boxed: the refusal travels in a `Result`, and stays small.)
    leave: Option<Box<Signed<crate::records::Leave>>>,
    /// The peer proved it is a member of a circle that ours succeeded in a
    /// merge: the handover this envoy made for it (wire form), sent with
    /// the refusal so it follows.
    handover: Option<Vec<u8>>,
}

impl PeerRefused {
    fn new(why: impl ToString) -> Self {
        PeerRefused {
            why: why.to_string(),
            another_circle: false,
            leave: None,
            handover: None,
        }
    }
}

/// The header of a hello's refusal that carries the asker's own leave.
const H_LEAVE: &str = "lockbox-leave";
/// The header of a hello's refusal that carries the asker's handover into
/// the circle that succeeded its own (hex).
const H_HANDOVER: &str = "lockbox-handover";
/// The header of a hello's refusal that names the refusing envoy (as its
/// announcements do).
const H_ENVOY: &str = "lockbox-envoy";
/// The header of a hello's refusal that says the asker is of another
/// circle (value `another-circle`), so it may try a join.
const H_REFUSAL: &str = "lockbox-refusal";

/// Table digests from their hex (an unreadable one counts as all zeros, so
/// it differs and is pulled).
fn digests_of(files: &str, tombstones: &str, leaves: &str, resurrects: &str) -> Digests {
    let d = |s: &str| parse_digest(s).unwrap_or_default();
    Digests {
        files: d(files),
        tombstones: d(tombstones),
        leaves: d(leaves),
        resurrects: d(resurrects),
    }
}

pub(super) fn parse_digest(s: &str) -> Option<[u8; 16]> {
    hex::decode(s).ok()?.try_into().ok()
}

impl Mesh {
    /// This envoy's session proof for the connection with `exporter`, hex.
    fn proof_hex(&self, side: Side, exporter: &[u8; 32]) -> String {
        hex::encode(self.replica.session_proof(side, *exporter))
    }

    fn own_endorsement_hex(&self) -> String {
        hex::encode(self.replica.own_endorsement().unwrap_or_default())
    }

    /// The answer to a proven hello on the connection with `exporter`.
    pub(super) fn hello(&self, exporter: &[u8; 32]) -> Hello {
        let d = self.digests();
        let free = self.replica.store().free_percent().unwrap_or(100);
        Hello {
            protocol: PROTOCOL_VERSION,
            user: self.replica.user().to_string(),
            envoy: self.replica.envoy().to_string(),
            instance: self.instance,
            endorsement: self.own_endorsement_hex(),
            proof: self.proof_hex(Side::Answerer, exporter),
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
            unlocked: self.unlocked(),
        }
    }

    /// Sets where the mesh learns whether the session is unlocked (the
    /// agent's session), for its hello answers.
    pub fn set_unlocked_source(&self, source: UnlockedSource) {
        if let Ok(mut s) = self.unlocked_source.lock() {
            *s = Some(source);
        }
    }

    fn unlocked(&self) -> Option<bool> {
        self.unlocked_source.lock().ok()?.as_ref().map(|f| f())
    }

    /// The hello this envoy asks with on the connection with `exporter`:
    /// its endorsement and proof sealed under the circle's hello key, so
    /// that a server that is not a member learns neither; unsealed only
    /// for a circle that has no hello key (made by protocol 1).
    fn ask(&self, exporter: &[u8; 32]) -> Result<HelloAsk, PeerError> {
        let d = self.digests();
        let (endorsement, proof, sealed) = match self.replica.hello_key() {
            Some(key) => {
                let e = self.replica.own_endorsement().unwrap_or_default();
                let p = self.replica.session_proof(Side::Asker, *exporter);
                let sealed = seal_membership(&key, exporter, &e, &p).map_err(|why| {
                    PeerError::NotAMember(format!("cannot seal the hello: {why}"))
                })?;
                (String::new(), String::new(), sealed)
            }
            None => (
                self.own_endorsement_hex(),
                self.proof_hex(Side::Asker, exporter),
                String::new(),
            ),
        };
        Ok(HelloAsk {
            protocol: PROTOCOL_VERSION,
            user: self.replica.user().to_string(),
            envoy: self.replica.envoy().to_string(),
            instance: self.instance,
            port: self.port,
            endorsement,
            proof,
            sealed,
            files: hex::encode(d.files),
            tombstones: hex::encode(d.tombstones),
            resurrects: hex::encode(d.resurrects),
            leaves: hex::encode(d.leaves),
        })
    }

    /// What proves the asker's membership in `ask` on the connection with
    /// `exporter`: its endorsement and proof, opened with the circle's
    /// hello key if the ask is sealed. An ask this envoy cannot open was
    /// sealed for another circle (or is junk, which it cannot tell apart):
    /// refused as another circle's, so that a join may follow.
    fn membership_of(
        &self,
        ask: &HelloAsk,
        exporter: &[u8; 32],
    ) -> Result<(Vec<u8>, Vec<u8>), PeerRefused> {
        if ask.sealed.is_empty() {
            let endorsement =
                hex::decode(&ask.endorsement).map_err(|_| PeerRefused::new("no endorsement"))?;
            let proof =
                hex::decode(&ask.proof).map_err(|_| PeerRefused::new("no session proof"))?;
            return Ok((endorsement, proof));
        }
        // This circle's key, then those of circles it succeeded (whose
        // members may not have followed yet).
        self.replica
            .hello_key()
            .and_then(|key| open_membership(&key, exporter, &ask.sealed))
            .or_else(|| {
                self.replica
                    .predecessor_hello_keys()
                    .iter()
                    .find_map(|key| open_membership(key, exporter, &ask.sealed))
            })
            .ok_or_else(|| PeerRefused {
                why: format!(
                    "envoy {:?} sealed its hello for another circle (set up apart, or with \
                     another passphrase)",
                    ask.envoy
                ),
                another_circle: true,
                leave: None,
                handover: None,
            })
    }

    /// Whether the peer that showed `endorsement` and `proof`
    /// as `side` on the session with `exporter` is a member now: the proof
    /// is its endorsed key's, for this session and side; the endorsement is
    /// this circle's (it is learnt if new); and the envoy has not left.
    /// Returns its endorsement, or why not (said to the peer and shown in
    /// `status`) with, for an envoy that proved it holds the key of one
    /// that left, the signed leave — so a departed envoy learns why.
    fn verify_peer(
        &self,
        bytes: &[u8],
        proof: &[u8],
        side: Side,
        exporter: &[u8; 32],
    ) -> Result<Endorsement, PeerRefused> {
        if bytes.is_empty() {
            return Err(PeerRefused::new("no endorsement"));
        }
        let signed = Signed::<Endorsement>::from_bytes(bytes)
            .map_err(|e| PeerRefused::new(format!("its endorsement does not verify: {e}")))?;
        let e = signed.body();
        crate::proof::check(proof, e, side, exporter).map_err(PeerRefused::new)?;
        let circle = self.replica.circle();
        if lockbox_crypto::circle::verify_endorsement(&signed, &circle).is_err()
            || e.user != self.replica.user().as_str()
        {
            // A member of a circle this one succeeded, which proved it is
            // that member: the handover made for it, so it follows.
            let handover = (e.user == self.replica.user().as_str())
                .then(|| self.replica.handover_for(&signed.signer(), e))
                .flatten();
            return Err(PeerRefused {
                why: format!(
                    "envoy {:?} is of another circle (set up apart, or with another passphrase)",
                    e.envoy
                ),
                another_circle: true,
                leave: None,
                handover,
            });
        }
        let (_, refused) = self.replica.learn_members(&[bytes.to_vec()]);
        if let Some(why) = refused.into_iter().next() {
            return Err(PeerRefused {
                why,
                another_circle: false,
                leave: self.replica.left(&e.signing_key).map(Box::new),
                handover: None,
            });
        }
        match self.replica.member(&e.envoy) {
            Some(m) if m.signing_key == e.signing_key => Ok(e.clone()),
            _ => Err(PeerRefused::new(format!(
                "envoy {:?} is not a member of this circle",
                e.envoy
            ))),
        }
    }

    /// Asks `addr` for a hello on `conn`, proving this envoy's membership
    /// and checking the peer's proof in its answer. On success the peer is
    /// marked a member and its members are learnt; the hello is returned.
    pub(super) async fn exchange_hello(
        &self,
        addr: SocketAddr,
        conn: &PeerConn,
    ) -> Result<Hello, PeerError> {
        match self.ask_hello(addr, conn).await {
            Err(PeerError::Followed) => {
                // The other peers are met again under the new circle at
                // their next contact; this one at once.
                self.forget_connections().await;
                self.ask_hello(addr, conn).await
            }
            r => r,
        }
    }

    /// One hello on `conn` ([`Mesh::exchange_hello`]); [`PeerError::Followed`]
    /// when the refusal carried a handover this envoy followed.
    async fn ask_hello(&self, addr: SocketAddr, conn: &PeerConn) -> Result<Hello, PeerError> {
        let ask = self.ask(&conn.exporter)?.encode()?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.uri(addr, &self.path(&Route::Hello)))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full(ask))?;
        // The whole answer, its body too, within the hello's time: a peer
        // that starts an answer and then stalls is given up on.
        let answer = async {
            let resp = self.request_on(addr, conn, req).await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = read_capped(resp.into_body(), MAX_HELLO_BODY).await?;
            Ok::<_, PeerError>((status, headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .map_err(|_| PeerError::HelloTimeout)??;
        if status == http::StatusCode::FORBIDDEN {
            if self.note_refusal(addr, &headers) {
                return Err(PeerError::Followed);
            }
            if headers
                .get(H_REFUSAL)
                .is_some_and(|v| v == "another-circle")
            {
                return Err(PeerError::AnotherCircle(format!(
                    "it refuses this envoy: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
        }
        if !status.is_success() {
            let text = if status == http::StatusCode::NOT_FOUND {
                "it has no protocol-2 hello (an envoy running an older lockbox?): run the \
                 same lockbox version on both"
                    .to_owned()
            } else {
                String::from_utf8_lossy(&body).into_owned()
            };
            return Err(PeerError::HelloRefused { status, text });
        }
        let hello = Hello::parse(&body)?;
        if hello.protocol != PROTOCOL_VERSION {
            return Err(PeerError::Protocol {
                envoy: hello.envoy,
                protocol: hello.protocol,
            });
        }
        if hello.instance == self.instance {
            // Ourselves, listed as a static peer.
            if let Ok(mut peers) = self.peers.lock() {
                peers.remove(&addr);
            }
            return Err(PeerError::Ourselves);
        }
        let unhex = |s: &str| hex::decode(s).unwrap_or_default();
        let e = self
            .verify_peer(
                &unhex(&hello.endorsement),
                &unhex(&hello.proof),
                Side::Answerer,
                &conn.exporter,
            )
            .map_err(|r| match r.another_circle {
                true => PeerError::AnotherCircle(r.why),
                false => PeerError::NotAMember(r.why),
            })?;
        if e.envoy != hello.envoy {
            return Err(PeerError::NotAMember(format!(
                "its hello names {:?} but its endorsement {:?}",
                hello.envoy, e.envoy
            )));
        }
        // Only a proven member's list of members is read.
        let members: Vec<Vec<u8>> = hello
            .members
            .iter()
            .take(crate::version::MAX_ENTRIES)
            .filter_map(|m| hex::decode(m).ok())
            .collect();
        self.replica.learn_members(&members);
        self.seen(addr, |p| {
            p.envoy = Some(hello.envoy.clone());
            p.instance = Some(hello.instance);
            p.member = true;
            p.refused = None;
            p.free_percent = Some(hello.free_percent);
            p.disk_short = hello.disk_short;
            p.unlocked = hello.unlocked;
            p.protocol = Some(hello.protocol);
            p.digests = Some(hello.digests());
        });
        Ok(hello)
    }

    /// Say hello to `addr` (on the open connection, or a new one proven
    /// by it); then catch up if its digests differ from ours.
    pub(super) async fn contact(self: &Arc<Self>, addr: SocketAddr) {
        {
            let Ok(mut s) = self.contacting.lock() else {
                return;
            };
            if !s.insert(addr) {
                return;
            }
        }
        let mut result = self.contact_inner(addr).await;
        // Another circle: if both envoys are unlocked, a join finds out
        // whether they share the passphrase, and merges them if so.
        let mut joined = None;
        if matches!(result, Err(PeerError::AnotherCircle(_))) {
            joined = self.maybe_join(addr).await;
        }
        if let Ok(mut s) = self.contacting.lock() {
            s.remove(&addr);
        }
        if let (Some(j), Err(PeerError::AnotherCircle(why))) = (&joined, &mut result) {
            *why = format!("{why}; {j}");
        }
        let e = match result {
            Ok(()) | Err(PeerError::Ourselves) => return,
            Err(e) => e,
        };
        // Whatever failed, the connection is not trusted further.
        self.connections.lock().await.remove(&addr);
        let refused = match &e {
            PeerError::NotAMember(why) => Some(why.clone()),
            PeerError::AnotherCircle(_) => Some(e.to_string()),
            PeerError::HelloRefused { status, text } if status.as_u16() == 403 => {
                Some(format!("it refuses this envoy: {text}"))
            }
            _ => None,
        };
        let Ok(mut peers) = self.peers.lock() else {
            return;
        };
        let p = peers.entry(addr).or_default();
        match refused {
            // Logged when it changes, not at every attempt.
            Some(why) => {
                if p.refused.as_deref() != Some(why.as_str()) {
                    tracing::warn!("peer {addr} refused: {why}");
                }
                p.last_seen = Some(super::now_instant());
                p.member = false;
                p.refused = Some(why);
                p.error = None;
            }
            None => {
                let e = e.to_string();
                if p.error.as_deref() != Some(e.as_str()) {
                    tracing::info!("peer {addr}: {e}");
                }
                p.error = Some(e);
            }
        }
    }

    /// [`Mesh::contact`] as a boxed future of a named type: a join calls
    /// it again from inside a contact, and the cycle needs a break.
    pub(super) fn contact_boxed(
        self: Arc<Self>,
        addr: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.contact(addr).await })
    }

    pub(super) async fn contact_inner(self: &Arc<Self>, addr: SocketAddr) -> Result<(), PeerError> {
        let (conn, fresh) = self.connection_hello(addr).await?;
        let hello = match fresh {
            Some(h) => h,
            None => self.exchange_hello(addr, &conn).await?,
        };
        self.catch_up(addr, hello.digests()).await
    }

    /// Answers a hello on the connection of `session`: checks the asker's
    /// endorsement and session proof, and only then marks the connection
    /// proven and answers with this envoy's own. A peer that does not prove
    /// membership gets `403` and nothing else — no endorsement, no member,
    /// no digest.
    pub(super) async fn serve_hello(
        self: &Arc<Self>,
        remote: SocketAddr,
        session: &PeerSession,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let body = match read_capped(req.into_body(), HelloAsk::MAX_LEN).await {
            Ok(b) => b,
            Err(e) => return respond(413, e.to_string()),
        };
        let ask = match HelloAsk::parse(&body) {
            Ok(a) => a,
            Err(e) => return respond(400, format!("bad hello: {e}")),
        };
        if ask.protocol != PROTOCOL_VERSION {
            return respond(
                426,
                format!(
                    "envoy {:?} speaks lockbox protocol {PROTOCOL_VERSION}, not {}: run the \
                     same lockbox version on both",
                    self.replica.envoy().as_str(),
                    ask.protocol
                ),
            );
        }
        let exporter = session.exporter;
        let me = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let (endorsement, proof) = me.membership_of(&ask, &exporter)?;
            me.verify_peer(&endorsement, &proof, Side::Asker, &exporter)
                .map(|e| (e, ask))
        })
        .await;
        let (e, ask) = match checked {
            Ok(Ok(v)) => v,
            Ok(Err(refused)) => {
                self.log_refused(remote, &refused.why);
                let mut r = respond(403, format!("not a member of this circle: {}", refused.why));
                let h = r.headers_mut();
                if let Ok(v) = http::HeaderValue::from_str(self.replica.envoy().as_str()) {
                    h.insert(H_ENVOY, v);
                }
                if refused.another_circle {
                    h.insert(H_REFUSAL, http::HeaderValue::from_static("another-circle"));
                }
                if let Some(l) = refused.leave {
                    if let Ok(v) = http::HeaderValue::from_str(&hex::encode(l.to_bytes())) {
                        h.insert(H_LEAVE, v);
                    }
                }
                if let Some(b) = refused.handover {
                    if let Ok(v) = http::HeaderValue::from_str(&hex::encode(b)) {
                        h.insert(H_HANDOVER, v);
                    }
                }
                return r;
            }
            Err(e) => return respond(500, e.to_string()),
        };
        if let Err(why) = session.prove(&e) {
            return respond(403, why);
        }
        // A proven member that says where its server is becomes a peer we
        // push to and sync with.
        if ask.port != 0 && ask.instance != self.instance {
            let addr = SocketAddr::new(remote.ip(), ask.port);
            let theirs = ask.digests();
            let differs = theirs != self.digests();
            let fresh = self
                .peers
                .lock()
                .map(|p| p.get(&addr).is_none_or(|p| !p.member))
                .unwrap_or(false);
            self.seen(addr, |p| {
                p.envoy = Some(e.envoy.clone());
                p.instance = Some(ask.instance);
                p.digests = Some(theirs);
                p.member = true;
                p.refused = None;
            });
            if differs || fresh {
                let me = self.clone();
                tokio::spawn(async move { me.contact(addr).await });
            }
        }
        match self.hello(&exporter).encode() {
            Ok(b) => respond(200, b),
            Err(e) => respond(500, e.to_string()),
        }
    }

    /// What a refusal of our hello says beyond its text: the refusing
    /// envoy's name (for `status`), our own leave if we left — a record
    /// that verifies on its own (signed by us or by the circle), applied
    /// like any other, so this envoy learns it left — and a handover into
    /// the circle that succeeded ours, which this envoy follows (returns
    /// true then).
    fn note_refusal(&self, addr: SocketAddr, headers: &http::HeaderMap) -> bool {
        let text = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        if let Some(envoy) = text(H_ENVOY).and_then(|e| crate::WireName::new(e).ok()) {
            self.seen(addr, |p| p.envoy = Some(envoy.to_string()));
        }
        let leave = text(H_LEAVE)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| Signed::<crate::records::Leave>::from_bytes(&b).ok());
        if let Some(l) = leave {
            if l.body().signing_key == self.replica.signing_public() {
                if let Err(e) = self.replica.apply_leave(&l) {
                    tracing::info!("peer {addr} sent a leave that is not taken: {e}");
                }
            }
        }
        let handover = text(H_HANDOVER)
            .filter(|h| h.len() <= 2 * crate::handover::MAX_HANDOVER_LEN)
            .and_then(|h| hex::decode(h).ok());
        let Some(bytes) = handover else {
            return false;
        };
        let h = match crate::handover::Handover::parse(&bytes) {
            Ok(h) => h,
            Err(e) => {
                tracing::info!("peer {addr} sent a handover that is not taken: {e}");
                return false;
            }
        };
        let sealed = h.sealed_secret.clone();
        match self.replica.follow(h) {
            Ok(()) => {
                // Unlocked: the join credentials take the new secret now.
                if let Some(c) = self.credentials() {
                    c.reopen(&sealed);
                }
                true
            }
            Err(e) => {
                tracing::info!("peer {addr} sent a handover that is not taken: {e}");
                false
            }
        }
    }

    /// Logs a refused hello, at most once a minute per address: a host
    /// that keeps trying must not fill the log.
    fn log_refused(&self, remote: SocketAddr, why: &str) {
        let now = super::now_instant();
        let Ok(mut last) = self.refused_log.lock() else {
            return;
        };
        if last.len() > 1024 {
            last.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
        }
        let due = last
            .get(&remote.ip())
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(60));
        if due {
            last.insert(remote.ip(), now);
            tracing::info!("refused a hello from {remote}: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            user: "alice".into(),
            envoy: "laptop".into(),
            instance: u64::MAX,
            endorsement: "ab".repeat(40),
            proof: "cd".repeat(50),
            members: vec!["01".into(), "02".into()],
            free_percent: 42,
            disk_short: true,
            files: hex::encode([1u8; 16]),
            tombstones: hex::encode([2u8; 16]),
            resurrects: hex::encode([3u8; 16]),
            leaves: hex::encode([4u8; 16]),
            unlocked: Some(true),
        }
    }

    #[test]
    fn a_hello_round_trips() {
        let h = hello();
        let bytes = h.encode().unwrap();
        assert_eq!(Hello::parse(&bytes).unwrap(), h);
        assert_eq!(Hello::parse(&bytes).unwrap().encode().unwrap(), bytes);
    }

    #[test]
    fn its_digests_are_read_and_an_unreadable_one_differs() {
        let mut h = hello();
        let d = h.digests();
        assert_eq!(
            (d.files, d.tombstones, d.resurrects, d.leaves),
            ([1; 16], [2; 16], [3; 16], [4; 16])
        );
        h.files = "not hex".into();
        h.leaves = hex::encode([5u8; 15]);
        let d = h.digests();
        assert_eq!((d.files, d.leaves), ([0; 16], [0; 16]));
    }

    #[test]
    fn an_older_hello_without_the_newer_fields_parses() {
        let json = br#"{"protocol":1,"user":"alice","envoy":"laptop","instance":7,
            "endorsement":"","members":[],"free_percent":90,"files":"","tombstones":"",
            "unknown":"ignored"}"#;
        let h = Hello::parse(json).unwrap();
        assert!(!h.disk_short);
        assert_eq!((h.resurrects.as_str(), h.leaves.as_str()), ("", ""));
        assert_eq!(h.unlocked, None);
        assert_eq!(Hello::parse(&h.encode().unwrap()).unwrap(), h);
        // An envoy that does not say writes no field at all.
        assert!(!String::from_utf8(h.encode().unwrap())
            .unwrap()
            .contains("unlocked"));
    }

    #[test]
    fn garbage_and_oversized_hellos_are_refused() {
        for bad in [
            &b""[..],
            b"{}",
            b"[]",
            b"null",
            b"{\"protocol\":\"1\"}",
            b"\xff",
        ] {
            let e = Hello::parse(bad).unwrap_err();
            assert!(matches!(e, HelloError::Json(_)), "{bad:?}: {e}");
        }
        let mut big = hello().encode().unwrap();
        big.truncate(big.len() - 1);
        big.extend(std::iter::repeat_n(b' ', Hello::MAX_LEN));
        big.push(b'}');
        let e = Hello::parse(&big).unwrap_err();
        assert!(
            matches!(
                e,
                HelloError::TooLarge {
                    max: Hello::MAX_LEN,
                    ..
                }
            ),
            "{e}"
        );
        // The same hello with its padding within the limit parses.
        big.drain(big.len() - 1 - (big.len() - Hello::MAX_LEN)..big.len() - 1);
        assert_eq!(big.len(), Hello::MAX_LEN);
        assert_eq!(Hello::parse(&big).unwrap(), hello());
    }
}
