//! Joining (`POST /lockbox/join/<user>`, then `POST
//! /lockbox/join-confirm/<user>` on the same connection): how two envoys of
//! different circles find out, online, whether they know the same
//! passphrase, and merge their circles if they do (see `docs/protocol.md`,
//! "Joining"). The password-authenticated exchange itself (SPAKE2, bound to
//! the TLS session) is `lockbox_crypto::join`; what the two sides offer and
//! the merge rule are [`crate::join`]. This module owns both HTTP sides,
//! the limit on failed attempts per address, and adopting the winning
//! circle; it must not prove membership (that is the hello).
//!
//! A join needs the passphrase on both sides, so only an unlocked envoy
//! asks or answers. Every run costs an active attacker one online guess;
//! an answering envoy takes at most [`FAILED_JOINS_PER_HOUR`] failed runs
//! per address an hour, logs each, and `status` lists the addresses.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use lockbox_crypto::circle::CircleSecret;
use lockbox_crypto::circle::Endorsement;
use lockbox_crypto::join::{self, JoinConfirm, JoinHello, JoinKeys, JoinPassword, Side};
use lockbox_crypto::sign::{PublicKey, Signed};

use super::body::{full, read_capped, respond, Body};
use super::route::Route;
use super::server::PeerSession;
use super::{Mesh, PeerError};
use crate::join::{merge, Merge, Offer};

/// Failed joins an answering envoy takes from one address in an hour.
pub const FAILED_JOINS_PER_HOUR: usize = 5;

/// How long an asking envoy waits before it tries to join a peer again
/// after the passphrases were found to differ.
const RETRY_AFTER_REFUSAL: Duration = Duration::from_secs(3600);
/// … and after a join that failed otherwise (the peer was locked,
/// unreachable, busy), plus up to 5 s more ([`Mesh::retry_after_failure`]).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// What an unlocked envoy joins with: a password derived from the
/// passphrase and the user, and its circle's secret (replaced in place when
/// it adopts another circle). Held by the agent's unlock session and
/// dropped (wiped) at lock.
pub struct JoinCredentials {
    password: JoinPassword,
    circle: RwLock<Arc<CircleSecret>>,
    /// Opens a circle secret sealed to this envoy (with the unlocked
    /// identity), for a handover followed while unlocked.
    opener: Option<SecretOpener>,
}

/// Opens a circle secret sealed to this envoy's recipient.
pub type SecretOpener = Box<dyn Fn(&[u8]) -> Option<CircleSecret> + Send + Sync>;

impl JoinCredentials {
    /// Credentials from the join password and the circle secret.
    pub fn new(password: JoinPassword, circle: CircleSecret) -> Self {
        JoinCredentials {
            password,
            circle: RwLock::new(Arc::new(circle)),
            opener: None,
        }
    }

    /// With `opener`, which opens a circle secret sealed to this envoy
    /// (held as long as the credentials: dropped at lock).
    pub fn with_opener(mut self, opener: SecretOpener) -> Self {
        self.opener = Some(opener);
        self
    }

    /// Takes the circle secret `sealed` to this envoy (from a handover it
    /// followed) as the circle it joins with; unchanged if it cannot be
    /// opened (the next unlock opens `circle.secret`).
    pub fn reopen(&self, sealed: &[u8]) {
        match self.opener.as_ref().and_then(|o| o(sealed)) {
            Some(c) => self.set_circle(c),
            None => tracing::warn!(
                "cannot open the new circle's secret: this envoy joins other circles again \
                 after its next unlock"
            ),
        }
    }

    fn circle(&self) -> Arc<CircleSecret> {
        self.circle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_circle(&self, c: CircleSecret) {
        *self.circle.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
    }
}

/// Where the mesh asks for the credentials (the agent's session); `None`
/// while locked.
pub type CredentialSource = Box<dyn Fn() -> Option<Arc<JoinCredentials>> + Send + Sync>;

/// Failed joins from one address, for the limit and for `status`.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    failed: VecDeque<Instant>,
    last_why: String,
}

/// An address whose joins failed (for `status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefusedJoin {
    /// The address.
    pub addr: String,
    /// Failed joins from it in the last hour.
    pub failed_last_hour: usize,
    /// Seconds since the last one.
    pub last_secs: u64,
    /// Why the last one failed.
    pub why: String,
}

/// A join begun on a connection, waiting for the asker's confirmation.
pub(super) struct Begun {
    keys: JoinKeys,
    /// The circle this envoy offered, and the size it offered.
    offered: (PublicKey, u32),
}

const H_OUTCOME: &str = "lockbox-join";

impl Mesh {
    /// Sets where the credentials for joins come from (the agent's unlock
    /// session).
    pub fn set_join_credentials(&self, source: CredentialSource) {
        if let Ok(mut s) = self.join_source.lock() {
            *s = Some(source);
        }
    }

    pub(super) fn credentials(&self) -> Option<Arc<JoinCredentials>> {
        self.join_source.lock().ok()?.as_ref()?()
    }

    /// Addresses whose joins failed in the last hour.
    pub fn refused_joins(&self) -> Vec<RefusedJoin> {
        let now = super::now_instant();
        let Ok(mut a) = self.join_attempts.lock() else {
            return Vec::new();
        };
        a.retain(|_, v| {
            v.failed
                .retain(|t| now.duration_since(*t) < Duration::from_secs(3600));
            !v.failed.is_empty()
        });
        let mut out: Vec<RefusedJoin> = a
            .iter()
            .map(|(ip, v)| RefusedJoin {
                addr: ip.to_string(),
                failed_last_hour: v.failed.len(),
                last_secs: v
                    .failed
                    .back()
                    .map(|t| now.duration_since(*t).as_secs())
                    .unwrap_or(0),
                why: v.last_why.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        out
    }

    fn limited(&self, ip: IpAddr) -> bool {
        let now = super::now_instant();
        self.join_attempts.lock().is_ok_and(|mut a| {
            a.get_mut(&ip).is_some_and(|v| {
                v.failed
                    .retain(|t| now.duration_since(*t) < Duration::from_secs(3600));
                v.failed.len() >= FAILED_JOINS_PER_HOUR
            })
        })
    }

    /// Counts a failed join from `ip` (a begun one counts until it is
    /// confirmed; [`Mesh::join_failure_is`] logs why it failed).
    fn join_failed(&self, ip: IpAddr, why: &str) {
        if let Ok(mut a) = self.join_attempts.lock() {
            if a.len() > 4096 {
                a.clear();
            }
            let v = a.entry(ip).or_default();
            v.failed.push_back(super::now_instant());
            while v.failed.len() > FAILED_JOINS_PER_HOUR * 4 {
                v.failed.pop_front();
            }
            v.last_why = why.to_owned();
        }
    }

    /// The first message of a join, on a connection that need not have
    /// proved anything.
    pub(super) async fn serve_join(
        self: &Arc<Self>,
        remote: SocketAddr,
        session: &PeerSession,
        req: Request<Incoming>,
    ) -> Response<Body> {
        if self.limited(remote.ip()) {
            return respond(
                429,
                "too many failed joins from this address in the last hour: try again later",
            );
        }
        let body = match read_capped(req.into_body(), JoinHello::LEN).await {
            Ok(b) => b,
            Err(e) => return respond(413, e.to_string()),
        };
        let Some(cred) = self.credentials() else {
            return respond(
                423,
                format!(
                    "envoy {:?} is locked: unlock it to let another envoy join",
                    self.replica.envoy().as_str()
                ),
            );
        };
        let hello = match JoinHello::parse(&body) {
            Ok(h) => h,
            Err(e) => return respond(400, format!("bad join: {e}")),
        };
        let user = self.replica.user().to_string();
        let (pending, mine) = join::start(&cred.password, &user, &session.exporter, Side::Answerer);
        let keys = match pending.finish(&hello.msg) {
            Ok(k) => k,
            Err(e) => {
                self.join_failed(remote.ip(), &e.to_string());
                self.join_failure_is(remote.ip(), &e.to_string());
                return respond(400, format!("bad join: {e}"));
            }
        };
        let circle = cred.circle();
        let offer = match self.offer(&circle) {
            Ok(o) => o,
            Err(e) => return respond(500, e),
        };
        let sealed = match keys.seal(Side::Answerer, &offer.encode()) {
            Ok(s) => s,
            Err(e) => return respond(500, e.to_string()),
        };
        let confirm = JoinConfirm {
            mac: keys.confirm(Side::Answerer),
            sealed,
        };
        // Counted as failed until the asker confirms: a run that never
        // confirms is a guess too.
        self.join_failed(remote.ip(), "not confirmed (no second message)");
        session.begin_join(Begun {
            keys,
            offered: (circle.public(), offer.members),
        });
        let mut out = JoinHello { msg: mine }.encode();
        out.extend_from_slice(&confirm.encode());
        respond(200, out)
    }

    /// The asker's confirmation of the join begun on this connection: if
    /// it checks, the passphrases are the same; both sides then apply the
    /// merge rule to the two offers.
    pub(super) async fn serve_join_confirm(
        self: &Arc<Self>,
        remote: SocketAddr,
        session: &PeerSession,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let Some(begun) = session.take_join() else {
            return respond(409, "no join was begun on this connection");
        };
        let body = match read_capped(req.into_body(), JoinConfirm::MAX_LEN).await {
            Ok(b) => b,
            Err(e) => return respond(413, e.to_string()),
        };
        let confirm = match JoinConfirm::parse(&body) {
            Ok(c) => c,
            Err(e) => return respond(400, format!("bad join confirmation: {e}")),
        };
        if begun.keys.check(Side::Answerer, &confirm.mac).is_err() {
            // Already counted when it began; now we know why.
            self.join_failure_is(remote.ip(), "the passphrases differ");
            return respond(403, "the passphrases differ");
        }
        self.join_confirmed(remote.ip());
        let theirs = match begun
            .keys
            .open(Side::Answerer, &confirm.sealed)
            .map_err(|e| e.to_string())
            .and_then(|b| Offer::parse(&b).map_err(|e| e.to_string()))
        {
            Ok(o) => o,
            Err(e) => return respond(400, format!("bad join offer: {e}")),
        };
        // Not waited for: this envoy may be asking a join of its own, which
        // holds the lock until its peer answers — perhaps this very peer,
        // asking us at the same moment. The asker joins again a little later.
        let Ok(held) = self.join_lock.try_lock() else {
            return respond(409, "busy with another join: join again");
        };
        match self.settle(&held, begun.offered, theirs).await {
            Ok(m) => {
                let mut r = respond(200, format!("{m:?}"));
                if let Ok(v) = http::HeaderValue::from_str(&format!("{m:?}")) {
                    r.headers_mut().insert(H_OUTCOME, v);
                }
                r
            }
            Err(e) => respond(409, e),
        }
    }

    /// Why the last (counted) join from `ip` failed.
    fn join_failure_is(&self, ip: IpAddr, why: &str) {
        tracing::warn!("a join from {ip} failed: {why}");
        if let Ok(mut a) = self.join_attempts.lock() {
            if let Some(v) = a.get_mut(&ip) {
                v.last_why = why.to_owned();
            }
        }
    }

    /// The last attempt from `ip` was confirmed: it does not count.
    fn join_confirmed(&self, ip: IpAddr) {
        if let Ok(mut a) = self.join_attempts.lock() {
            if let Some(v) = a.get_mut(&ip) {
                v.failed.pop_back();
                if v.failed.is_empty() {
                    a.remove(&ip);
                }
            }
        }
    }

    /// Applies the merge rule to the circle this envoy offered and
    /// `theirs`, adopting theirs if it wins. The caller holds the join lock
    /// (one merge at a time); refused if this envoy's circle changed since
    /// it made its offer (the other side then joins again).
    async fn settle(
        self: &Arc<Self>,
        _held: &tokio::sync::MutexGuard<'_, ()>,
        offered: (PublicKey, u32),
        theirs: Offer,
    ) -> Result<Merge, String> {
        let cred = self
            .credentials()
            .ok_or_else(|| "locked meanwhile".to_owned())?;
        let own = cred.circle();
        // Both sides decide from the two offers as made; if this envoy's
        // circle or its size changed since, the other side's decision
        // would not be the complement of ours.
        let members = self.circle_size();
        if (own.public(), members) != offered {
            return Err("this envoy's circle changed during the join: join again".into());
        }
        let m = merge(
            (&own.public(), own.created_unix(), members),
            (
                &theirs.circle.public(),
                theirs.circle.created_unix(),
                theirs.members,
            ),
        );
        match m {
            Merge::Adopt => {
                let replica = self.replica.clone();
                let bytes = theirs.circle.to_bytes();
                let old = own.clone();
                let adopted = tokio::task::spawn_blocking(move || {
                    let c = CircleSecret::from_bytes(&bytes).map_err(|e| e.to_string())?;
                    let now = unix_now();
                    // The other members of our circle are handed over
                    // first, then counted as members of the new one.
                    let handed = replica
                        .make_handovers(&old, &c, now)
                        .map_err(|e| e.to_string())?;
                    replica.adopt_circle(&c, now).map_err(|e| e.to_string())?;
                    if !handed.is_empty() {
                        replica.learn_members(&handed);
                        tracing::info!(
                            "{} other member(s) of this envoy's old circle were handed over",
                            handed.len()
                        );
                    }
                    Ok::<_, String>(c)
                })
                .await
                .map_err(|e| e.to_string())??;
                cred.set_circle(adopted);
                self.circle_changed().await;
            }
            Merge::Keep => self.endorse_joiner(&own, &theirs.endorsement),
            Merge::Same => {}
        }
        // Only the side that adopted knows its circle now has two members
        // (the winner learns the adopter from its next hello, within
        // moments); a winner whose partner then failed to adopt must not
        // count a member it does not have.
        if m == Merge::Adopt {
            self.merged
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(m)
    }

    /// This envoy's offer in a join: its circle, its size, and its own
    /// endorsement.
    fn offer(&self, circle: &CircleSecret) -> Result<Offer, String> {
        let own = self
            .replica
            .own_endorsement()
            .ok_or_else(|| "this envoy has no endorsement".to_owned())?;
        Ok(Offer {
            members: self.circle_size(),
            circle: CircleSecret::from_bytes(&circle.to_bytes()).map_err(|e| e.to_string())?,
            endorsement: Signed::<Endorsement>::from_bytes(&own).map_err(|e| e.to_string())?,
        })
    }

    /// After a join this envoy's circle won: endorse the other envoy (which
    /// proved it knows the passphrase, and adopts this circle) with this
    /// circle's key at once, so it counts as a member before its first
    /// hello under the new circle arrives — a second join racing this one
    /// then sees a circle of two.
    fn endorse_joiner(&self, circle: &CircleSecret, theirs: &Signed<Endorsement>) {
        let mut body = theirs.body().clone();
        if body.user != self.replica.user().as_str()
            || body.signing_key == self.replica.signing_public()
        {
            return;
        }
        body.created_unix = unix_now();
        let e = circle.key().endorse(body);
        let (_, refused) = self.replica.learn_members(&[e.to_bytes()]);
        if let Some(why) = refused.first() {
            tracing::info!("the joining envoy is not taken as a member: {why}");
        }
    }

    /// How many members this envoy's circle has, for an offer: the members
    /// it knows, and at least two once it adopted another envoy's circle (whose
    /// endorsement may not have reached it yet) — so that a circle that has
    /// just grown never counts as a circle of one and is not pulled apart
    /// by a second join racing the first.
    fn circle_size(&self) -> u32 {
        let known = self.replica.members().len() as u32;
        if self.merged.load(std::sync::atomic::Ordering::Relaxed) {
            known.max(2)
        } else {
            known
        }
    }

    /// Whether to try to join `addr` now (not more often than the retry
    /// times above), and notes the attempt.
    fn join_due(&self, addr: SocketAddr) -> bool {
        let now = super::now_instant();
        let Ok(mut t) = self.join_tried.lock() else {
            return false;
        };
        match t.get(&addr) {
            Some((at, wait)) if now.duration_since(*at) < *wait => false,
            _ => {
                t.insert(addr, (now, self.retry_after_failure()));
                true
            }
        }
    }

    /// [`RETRY_AFTER_FAILURE`] plus up to 5 s that differ between envoys
    /// and between tries, so that two envoys whose joins met head-on (each
    /// found the other busy) do not meet again.
    fn retry_after_failure(&self) -> Duration {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        RETRY_AFTER_FAILURE + Duration::from_millis((self.instance ^ nanos) % 5000)
    }

    fn join_backoff(&self, addr: SocketAddr, wait: Duration) {
        if let Ok(mut t) = self.join_tried.lock() {
            t.insert(addr, (super::now_instant(), wait));
        }
    }

    /// After `addr` turned out to be of another circle: join it if this
    /// envoy is unlocked and it is due. Returns what the join found, for
    /// `status`, or `None` when no join was tried.
    pub(super) async fn maybe_join(self: &Arc<Self>, addr: SocketAddr) -> Option<String> {
        self.credentials()?;
        if !self.join_due(addr) {
            return None;
        }
        match self.join(addr).await {
            Ok(m) => {
                tracing::info!("joined {addr}: {m:?}");
                Some(format!("joined: {m:?}"))
            }
            Err(PeerError::JoinRefused) => {
                self.join_backoff(addr, RETRY_AFTER_REFUSAL);
                Some(PeerError::JoinRefused.to_string())
            }
            Err(e) => Some(format!("a join failed: {e}")),
        }
    }

    /// Joins `addr` on a new connection: the two SPAKE2 messages, the
    /// answerer's confirmation and offer, then ours; then the merge rule.
    pub(super) async fn join(self: &Arc<Self>, addr: SocketAddr) -> Result<Merge, PeerError> {
        let cred = self.credentials().ok_or(PeerError::JoinLocked)?;
        let conn = self.open(addr).await?;
        let user = self.replica.user().to_string();
        let (pending, mine) = join::start(&cred.password, &user, &conn.exporter, Side::Asker);
        let send = |route: Route, body: Vec<u8>| {
            let req = Request::builder()
                .method(Method::POST)
                .uri(self.uri(addr, &self.path(&route)))
                .body(full(body));
            let conn = conn.clone();
            async move {
                let req = req?;
                let resp = self.request_on(addr, &conn, req).await?;
                let status = resp.status();
                let body = read_capped(
                    resp.into_body(),
                    JoinHello::LEN + JoinConfirm::MAX_LEN + 1024,
                )
                .await?;
                Ok::<_, PeerError>((status, body))
            }
        };
        let within = Duration::from_secs(10);
        let (status, body) =
            tokio::time::timeout(within, send(Route::Join, JoinHello { msg: mine }.encode()))
                .await
                .map_err(|_| PeerError::JoinFailed("no answer".into()))??;
        if status.as_u16() == 423 {
            return Err(PeerError::JoinLocked);
        }
        if !status.is_success() {
            return Err(PeerError::JoinFailed(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let bad = |e: lockbox_crypto::Error| PeerError::JoinFailed(e.to_string());
        if body.len() < JoinHello::LEN {
            return Err(PeerError::JoinFailed("a short answer".into()));
        }
        let (hello, rest) = body.split_at(JoinHello::LEN);
        let theirs_hello = JoinHello::parse(hello).map_err(bad)?;
        let confirm = JoinConfirm::parse(rest).map_err(bad)?;
        let keys = pending.finish(&theirs_hello.msg).map_err(bad)?;
        if keys.check(Side::Asker, &confirm.mac).is_err() {
            return Err(PeerError::JoinRefused);
        }
        let theirs = keys
            .open(Side::Asker, &confirm.sealed)
            .map_err(bad)
            .and_then(|b| Offer::parse(&b).map_err(|e| PeerError::JoinFailed(e.to_string())))?;
        // Held from our offer to our own settling, so our circle cannot
        // change in between (an answer we give meanwhile finds it busy).
        let held = self.join_lock.lock().await;
        let own = cred.circle();
        let offer = self.offer(&own).map_err(PeerError::JoinFailed)?;
        let ours = JoinConfirm {
            mac: keys.confirm(Side::Asker),
            sealed: keys.seal(Side::Asker, &offer.encode()).map_err(bad)?,
        };
        let (status, body) = tokio::time::timeout(within, send(Route::JoinConfirm, ours.encode()))
            .await
            .map_err(|_| PeerError::JoinFailed("no answer".into()))??;
        if !status.is_success() {
            return Err(PeerError::JoinFailed(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let m = self
            .settle(&held, (own.public(), offer.members), theirs)
            .await
            .map_err(PeerError::JoinFailed)?;
        drop(held);
        if m == Merge::Keep {
            // The other side adopts ours: meet it again soon.
            self.join_backoff(addr, self.retry_after_failure());
        }
        Ok(m)
    }

    /// After this envoy's circle changed (it adopted or followed another):
    /// every connection is dropped and every peer met again under the new
    /// circle.
    pub(super) async fn circle_changed(self: &Arc<Self>) {
        self.forget_connections().await;
        let me = self.clone();
        tokio::spawn(async move { me.contact_all().await });
    }

    /// Drops every connection and takes no peer for a member until it is
    /// met again.
    pub(super) async fn forget_connections(&self) {
        self.connections.lock().await.clear();
        if let Ok(mut p) = self.peers.lock() {
            for peer in p.values_mut() {
                peer.member = false;
            }
        }
    }

    /// Says hello to every known peer again (after adopting a circle).
    async fn contact_all(self: &Arc<Self>) {
        let addrs: Vec<SocketAddr> = self
            .peers
            .lock()
            .map(|p| p.keys().copied().collect())
            .unwrap_or_default();
        for a in addrs {
            tokio::spawn(self.clone().contact_boxed(a));
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The per-address failure table's type (for the mesh's field).
pub(super) type JoinAttempts = HashMap<IpAddr, Attempts>;
