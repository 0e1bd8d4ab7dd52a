//! The hello exchange (`GET /lockbox/hello/<user>`): what an envoy says
//! about itself ([`Hello`]), how this envoy answers one (`serve_hello`)
//! and how it asks a peer (`contact`), learning the peer's members and
//! digests and then catching up if they differ. It owns the hello's JSON
//! and headers; it must not apply tables or fetch files itself (that is
//! [`super::catchup`]).

use lockbox_fs::escape::Escape;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use lockbox_crypto::sign::Signed;
use serde::{Deserialize, Serialize};

use super::body::{full, read_capped, respond, Body};
use super::route::Route;
use super::{Mesh, PeerError, H_ENDORSEMENT, H_INSTANCE, H_PORT, MAX_HELLO_BODY, PROTOCOL_VERSION};
use crate::announce::Digests;

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
        if bytes.len() > Self::MAX_LEN {
            return Err(HelloError::TooLarge {
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        Ok(serde_json::from_slice(bytes)?)
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

pub(super) fn parse_digest(s: &str) -> Option<[u8; 16]> {
    hex::decode(s).ok()?.try_into().ok()
}

impl Mesh {
    pub(super) fn hello(&self) -> Hello {
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

    /// Say hello to `addr`; learn its members; mark it; then catch up if
    /// its digests differ from ours.
    pub(super) async fn contact(self: &Arc<Self>, addr: SocketAddr) {
        {
            let Ok(mut s) = self.contacting.lock() else {
                return;
            };
            if !s.insert(addr) {
                return;
            }
        }
        let result = self.contact_inner(addr).await;
        if let Ok(mut s) = self.contacting.lock() {
            s.remove(&addr);
        }
        if let Err(e) = result {
            // Logged when it changes, not at every attempt.
            let Ok(mut peers) = self.peers.lock() else {
                return;
            };
            let e = e.to_string();
            let p = peers.entry(addr).or_default();
            if p.error.as_deref() != Some(e.as_str()) {
                tracing::info!("peer {addr}: {e}");
            }
            p.error = Some(e);
        }
    }

    pub(super) async fn contact_inner(self: &Arc<Self>, addr: SocketAddr) -> Result<(), PeerError> {
        let mine = digest_list(&self.digests());
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(self.uri(addr, &self.path(&Route::Hello)))
            .header(
                H_ENDORSEMENT,
                hex::encode(self.replica.own_endorsement().unwrap_or_default()),
            )
            .header(H_PORT, self.port.to_string())
            .header(H_INSTANCE, self.instance.to_string());
        for (h, d) in H_DIGESTS.iter().zip(mine) {
            req = req.header(*h, hex::encode(d));
        }
        let req = req.body(full(Bytes::new()))?;
        // The whole answer, its body too, within the hello's time: a peer
        // that starts an answer and then stalls is given up on.
        let answer = async {
            let resp = self.request(addr, req).await?;
            let status = resp.status();
            let body = read_capped(resp.into_body(), MAX_HELLO_BODY).await?;
            Ok::<_, PeerError>((status, body))
        };
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .map_err(|_| PeerError::HelloTimeout)??;
        if !status.is_success() {
            return Err(PeerError::HelloRefused {
                status,
                text: String::from_utf8_lossy(&body).into_owned(),
            });
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
                tracing::warn!("peer {addr} ({}) refused: {why}", hello.envoy.escaped());
            }
            return Ok(());
        }
        self.catch_up(addr, peer_digests).await
    }

    pub(super) fn serve_hello(
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
        match self.hello().encode() {
            Ok(b) => respond(200, b),
            Err(e) => respond(500, e.to_string()),
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
            members: vec!["01".into(), "02".into()],
            free_percent: 42,
            disk_short: true,
            files: hex::encode([1u8; 16]),
            tombstones: hex::encode([2u8; 16]),
            resurrects: hex::encode([3u8; 16]),
            leaves: hex::encode([4u8; 16]),
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
        assert_eq!(Hello::parse(&h.encode().unwrap()).unwrap(), h);
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
