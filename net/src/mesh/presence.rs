//! What each member envoy holds, as this envoy last learnt it: the status
//! page's presence matrix (envoy × file).
//!
//! Nothing here asks a peer for anything: the knowledge comes from traffic
//! the mesh has anyway.
//!
//! - A peer whose files digest (in its last hello) equals ours holds
//!   exactly our records: every file is current there.
//! - A catch-up that pulls a peer's manifest learns every version it
//!   holds ([`Mesh::learn_manifest`]).
//! - A push a peer took, and a version a peer pushed or served to us,
//!   says it holds that version ([`Mesh::learn_version`]).
//!
//! A peer with neither is "unknown". What is kept is small: per envoy,
//! each name's vector and hash, never a record's signature or a byte of
//! content.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use lockbox_fs::Name;

use super::Mesh;
use crate::records::FileVersion;
use crate::version::{Causality, VersionVector};

/// One version, as far as presence needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    vv: VersionVector,
    hash: [u8; 32],
}

impl Held {
    /// The version `v` describes.
    pub fn of(v: &FileVersion) -> Held {
        Held {
            vv: v.vv.clone(),
            hash: v.hash.0,
        }
    }
}

/// What a peer holds of one name, against the version held here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The version held here.
    Current,
    /// A version this one replaced: it will get this one.
    Older,
    /// A version after this one: this envoy will get it.
    Newer,
    /// A version concurrent with this one: a conflict copy will settle it.
    Conflict,
    /// Nothing under the name.
    Missing,
    /// Not known: neither its digest nor a manifest tells.
    Unknown,
}

impl Presence {
    /// The word `status --json` and the page use.
    pub fn word(self) -> &'static str {
        match self {
            Presence::Current => "current",
            Presence::Older => "older",
            Presence::Newer => "newer",
            Presence::Conflict => "conflict",
            Presence::Missing => "missing",
            Presence::Unknown => "unknown",
        }
    }

    /// How a peer's version `theirs` stands to `ours`.
    pub fn compare(ours: &Held, theirs: Option<&Held>) -> Presence {
        let Some(theirs) = theirs else {
            return Presence::Missing;
        };
        match theirs.vv.compare(&ours.vv) {
            Causality::Equal if theirs.hash == ours.hash => Presence::Current,
            // One vector, two contents: two envoys claim one version.
            Causality::Equal | Causality::Concurrent => Presence::Conflict,
            Causality::Before => Presence::Older,
            Causality::After => Presence::Newer,
        }
    }
}

/// What this envoy knows of one peer's files.
#[derive(Debug, Clone, Default)]
pub(super) struct PeerFiles {
    /// When its manifest was last read whole (none: only single versions
    /// were learnt, so a name absent here may still be held there).
    listed: Option<SystemTime>,
    versions: HashMap<Name, Held>,
}

/// One member's holdings as [`Mesh::holdings`] reports them.
#[derive(Debug, Clone)]
pub enum Holdings {
    /// Its files digest equals ours: it holds every version held here.
    Same,
    /// The versions learnt from it; `whole` when they come from a full
    /// manifest (a name absent is missing there), with its age.
    Listed {
        /// Whether the list is a whole manifest.
        whole: bool,
        /// Seconds since the manifest was read, when it is one.
        listed_secs: Option<u64>,
        /// Name → version held there.
        versions: HashMap<Name, Held>,
    },
    /// Nothing learnt.
    Unknown,
}

impl Holdings {
    /// How this peer stands on `name`, whose version here is `ours`.
    pub fn of(&self, name: &Name, ours: &Held) -> Presence {
        match self {
            Holdings::Same => Presence::Current,
            Holdings::Listed {
                whole, versions, ..
            } => match versions.get(name) {
                None if !whole => Presence::Unknown,
                v => Presence::compare(ours, v),
            },
            Holdings::Unknown => Presence::Unknown,
        }
    }
}

impl Mesh {
    /// The envoy name of the peer at `addr`, once known.
    fn envoy_at(&self, addr: SocketAddr) -> Option<String> {
        self.peers.lock().ok()?.get(&addr)?.envoy.clone()
    }

    /// The peer at `addr` holds `v` (it took our push of it, or sent it).
    pub(super) fn learn_version(&self, addr: SocketAddr, name: &Name, v: &FileVersion) {
        if let Some(envoy) = self.envoy_at(addr) {
            self.learn_held(envoy, name, v);
        }
    }

    /// The envoy `envoy` holds `v` (it pushed it to us).
    pub(super) fn learn_held(&self, envoy: String, name: &Name, v: &FileVersion) {
        self.learnt
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut h) = self.holdings.lock() {
            h.entry(envoy)
                .or_default()
                .versions
                .insert(name.clone(), Held::of(v));
        }
    }

    /// The peer at `addr` listed exactly `versions` in its manifest.
    pub(super) fn learn_manifest(&self, addr: SocketAddr, versions: HashMap<Name, Held>) {
        let Some(envoy) = self.envoy_at(addr) else {
            return;
        };
        self.learnt
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut h) = self.holdings.lock() {
            h.insert(
                envoy,
                PeerFiles {
                    listed: Some(SystemTime::now()),
                    versions,
                },
            );
        }
    }

    /// A count that moves each time something is learnt of what a peer
    /// holds (for the status page's change detection).
    pub fn holdings_learnt(&self) -> u64 {
        self.learnt.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What each member peer holds, by envoy name, as far as this envoy
    /// knows (see the module comment).
    pub fn holdings(&self) -> HashMap<String, Holdings> {
        let ours = self.replica.files_digest();
        let members = self.replica.members().names();
        let same: Vec<String> = self
            .peers()
            .into_iter()
            .filter(|p| p.refused.is_none())
            .filter(|p| p.digests.is_some_and(|d| d.files == ours))
            .filter_map(|p| p.envoy)
            .collect();
        let known = self.holdings.lock().map(|h| h.clone()).unwrap_or_default();
        let now = SystemTime::now();
        members
            .into_iter()
            .filter(|m| m.as_str() != self.replica.envoy().as_str())
            .map(|m| {
                let h = if same.contains(&m) {
                    Holdings::Same
                } else {
                    match known.get(&m) {
                        Some(f) => Holdings::Listed {
                            whole: f.listed.is_some(),
                            listed_secs: f
                                .listed
                                .and_then(|t| now.duration_since(t).ok())
                                .map(|d| d.as_secs()),
                            versions: f.versions.clone(),
                        },
                        None => Holdings::Unknown,
                    }
                };
                (m, h)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::WireName;

    fn held(counters: &[(&str, u64)], hash: u8) -> Held {
        let mut vv = VersionVector::new();
        for (e, n) in counters {
            vv = vv.raised(&WireName::new(*e).unwrap(), *n);
        }
        Held {
            vv,
            hash: [hash; 32],
        }
    }

    #[test]
    fn a_peers_version_is_placed_against_ours() {
        let ours = held(&[("a", 2), ("b", 1)], 1);
        let cases = [
            (Some(held(&[("a", 2), ("b", 1)], 1)), Presence::Current),
            (Some(held(&[("a", 1), ("b", 1)], 9)), Presence::Older),
            (Some(held(&[("a", 3), ("b", 1)], 9)), Presence::Newer),
            (Some(held(&[("a", 1), ("b", 2)], 9)), Presence::Conflict),
            // The same vector with other bytes is no agreement.
            (Some(held(&[("a", 2), ("b", 1)], 2)), Presence::Conflict),
            (None, Presence::Missing),
        ];
        for (theirs, want) in cases {
            assert_eq!(
                Presence::compare(&ours, theirs.as_ref()),
                want,
                "{theirs:?}"
            );
        }
    }

    #[test]
    fn a_partial_list_does_not_call_an_absent_name_missing() {
        let name = Name::new("ssh/id").unwrap();
        let other = Name::new("other").unwrap();
        let ours = held(&[("a", 1)], 1);
        let versions: HashMap<Name, Held> = [(other.clone(), ours.clone())].into();
        let partial = Holdings::Listed {
            whole: false,
            listed_secs: None,
            versions: versions.clone(),
        };
        assert_eq!(partial.of(&name, &ours), Presence::Unknown);
        assert_eq!(partial.of(&other, &ours), Presence::Current);
        let whole = Holdings::Listed {
            whole: true,
            listed_secs: Some(3),
            versions,
        };
        assert_eq!(whole.of(&name, &ours), Presence::Missing);
        assert_eq!(Holdings::Same.of(&name, &ours), Presence::Current);
        assert_eq!(Holdings::Unknown.of(&name, &ours), Presence::Unknown);
    }
}
