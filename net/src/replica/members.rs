//! The circle's members: the endorsements in `members/` (loaded at start,
//! learnt from peers' hellos), `recipients.txt` regenerated from them, and
//! members leaving or evicted (`apply_leave`, `leave`, `evict`). It owns
//! who is a member; it must not decide about files or deletes.

use lockbox_fs::escape::Escape;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use lockbox_crypto::circle::{verify_endorsement, CircleSecret, Endorsement};
use lockbox_crypto::hello::HelloKey;
use lockbox_crypto::recipients::RecipientEntry;
use lockbox_crypto::sign::{PublicKey, Signed};
use lockbox_fs::meta::Op;

use super::{internal, now_unix, Refusal, Replica, ReplicaError};
use crate::records::{self, Leave, LeaveKind};
use crate::WireName;

/// The members of the circle: envoy name → its endorsement.
#[derive(Debug, Clone, Default)]
pub struct Members {
    pub(super) by_envoy: BTreeMap<String, Signed<Endorsement>>,
}

impl Members {
    /// The member whose signing key is `key`.
    pub fn by_key(&self, key: &PublicKey) -> Option<&Endorsement> {
        self.by_envoy
            .values()
            .map(|s| s.body())
            .find(|e| e.signing_key == *key)
    }

    /// Member envoy names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_envoy.keys().cloned().collect()
    }

    /// Every endorsement in wire form.
    pub fn endorsements(&self) -> Vec<Vec<u8>> {
        self.by_envoy.values().map(|s| s.to_bytes()).collect()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.by_envoy.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_envoy.is_empty()
    }
}

impl Replica {
    /// A snapshot of the members.
    pub fn members(&self) -> Members {
        self.members.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// This envoy's own endorsement, in wire form (also after it left).
    pub fn own_endorsement(&self) -> Option<Vec<u8>> {
        self.own()
            .as_ref()
            .map(|s: &Signed<Endorsement>| s.to_bytes())
    }

    pub(super) fn own(&self) -> Option<Signed<Endorsement>> {
        self.own_endorsement
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This envoy's own age recipient, from its endorsement.
    pub fn own_recipient(&self) -> Option<String> {
        self.own().map(|s| s.body().recipient.clone())
    }

    /// The circle's hello key, if this envoy holds one for the circle it is
    /// in now. `None` for a circle made by protocol 1, and for a store
    /// whose key is not written yet: its hello asks then go unsealed.
    pub fn hello_key(&self) -> Option<Arc<HelloKey>> {
        let circle = self.circle();
        self.hello_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|k| k.circle() == circle)
    }

    /// Keeps the hello key of `secret`'s circle in `circle.hello` (0600)
    /// and here, if that circle is this envoy's and has one (the agent
    /// calls this at every unlock; [`Replica::adopt_circle`] too).
    ///
    /// # Errors
    ///
    /// [`ReplicaError::CircleWrite`] if the file cannot be written.
    pub fn keep_hello_key(&self, secret: &CircleSecret) -> Result<(), ReplicaError> {
        if secret.public() != self.circle() {
            return Ok(());
        }
        let Some(key) = HelloKey::of(secret) else {
            return Ok(());
        };
        if self
            .hello_key()
            .is_some_and(|k| k.to_bytes() == key.to_bytes())
            && self.paths.circle_hello.exists()
        {
            return Ok(());
        }
        write_file_atomic(&self.paths.circle_hello, &key.to_bytes())
            .map_err(ReplicaError::CircleWrite)?;
        *self.hello_key.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
        Ok(())
    }

    /// Makes `secret`'s circle this envoy's: seals the secret to this
    /// envoy's own recipient into `circle.secret`, writes `circle.pub`,
    /// endorses this envoy with the new circle key, and starts the members
    /// afresh from that endorsement (the old circle's endorsements do not
    /// verify under the new key; the others' come with their next hello).
    /// Called when this envoy's circle lost a merge with one that proved,
    /// in a join, that it knows the same passphrase.
    ///
    /// The other members of the old circle are not left behind: the join
    /// leaves each a handover first ([`Replica::make_handovers`]).
    pub fn adopt_circle(
        &self,
        secret: &lockbox_crypto::circle::CircleSecret,
        now_unix: u64,
    ) -> Result<(), ReplicaError> {
        let own = self.own().ok_or(ReplicaError::NoEndorsement)?;
        let recipient: lockbox_crypto::AgeRecipient = own
            .body()
            .recipient
            .parse()
            .map_err(|_| ReplicaError::NoEndorsement)?;
        let sealed = lockbox_crypto::circle::seal_secret(secret, &recipient)
            .map_err(ReplicaError::Crypto)?;
        let mut body = own.body().clone();
        body.created_unix = now_unix;
        let endorsement = secret.key().endorse(body);
        self.take_circle(&sealed, endorsement, HelloKey::of(secret), secret.public())?;
        tracing::info!(
            "this envoy joined circle {} (its own circle lost the merge)",
            secret.public()
        );
        Ok(())
    }

    /// Makes `circle` this envoy's: `sealed` (its secret sealed to this
    /// envoy's recipient) becomes `circle.secret`, `endorsement` this
    /// envoy's own, `hello` its hello key, and the members start afresh
    /// from this envoy alone (the old circle's endorsements do not verify
    /// under the new key; the others' come with their next hello).
    pub(super) fn take_circle(
        &self,
        sealed: &[u8],
        endorsement: Signed<Endorsement>,
        hello: Option<HelloKey>,
        circle: PublicKey,
    ) -> Result<(), ReplicaError> {
        // The secret first, then the public key: a crash in between leaves
        // a secret whose public key does not match `circle.pub`, which the
        // agent notices at its next unlock and repairs from the secret.
        let write = |path: &Path, bytes: &[u8]| {
            write_file_atomic(path, bytes).map_err(ReplicaError::CircleWrite)
        };
        write(&self.paths.circle_secret, sealed)?;
        write(
            &self
                .paths
                .members
                .join(format!("{}.endorsement", self.envoy)),
            &endorsement.to_bytes(),
        )?;
        if let Some(h) = &hello {
            if let Err(e) = write(&self.paths.circle_hello, &h.to_bytes()) {
                // Its hellos go unsealed until the next unlock writes it.
                tracing::warn!("cannot keep the new circle's hello key: {e}");
            }
        }
        write(&self.paths.circle_public, format!("{circle}\n").as_bytes())?;
        *self.circle.write().unwrap_or_else(|p| p.into_inner()) = circle;
        *self.hello_key.write().unwrap_or_else(|p| p.into_inner()) = hello.map(Arc::new);
        *self
            .own_endorsement
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(endorsement.clone());
        {
            let mut m = self.members.write().unwrap_or_else(|p| p.into_inner());
            m.by_envoy.clear();
            m.by_envoy.insert(self.envoy.to_string(), endorsement);
        }
        self.members_changed();
        Ok(())
    }

    /// Verify and add endorsements a peer showed us. Returns the envoys that
    /// became members; endorsements that do not verify under our circle key
    /// are skipped (and reported in the error list).
    pub fn learn_members(&self, endorsements: &[Vec<u8>]) -> (Vec<String>, Vec<String>) {
        let mut added = Vec::new();
        let mut refused = Vec::new();
        for bytes in endorsements.iter().take(crate::version::MAX_ENTRIES) {
            if bytes.is_empty() {
                refused.push("the peer sent no endorsement".to_string());
                continue;
            }
            let signed = match Signed::<Endorsement>::from_bytes(bytes) {
                Ok(s) => s,
                Err(e) => {
                    refused.push(format!("unreadable endorsement: {e}"));
                    continue;
                }
            };
            let e = signed.body().clone();
            if verify_endorsement(&signed, &self.circle()).is_err() || e.user != self.user.as_str()
            {
                refused.push(format!(
                    "envoy {:?} is not endorsed by this circle (set up with a different \
                     passphrase or for another user)",
                    e.envoy
                ));
                continue;
            }
            if WireName::new(e.envoy.as_str()).is_err() {
                refused.push(format!("endorsement names a bad envoy {:?}", e.envoy));
                continue;
            }
            if let Some(l) = self.left(&e.signing_key) {
                refused.push(format!(
                    "envoy {:?} {} this circle on {}",
                    e.envoy,
                    l.body().kind.verb(),
                    crate::version::utc_date(l.body().left_unix)
                ));
                continue;
            }
            let Ok(mut members) = self.members.write() else {
                continue;
            };
            let replace = match members.by_envoy.get(&e.envoy) {
                None => true,
                // An envoy set up again (after a purge) has a newer endorsement.
                Some(old) => old.body().created_unix < e.created_unix && old.body() != &e,
            };
            if !replace {
                continue;
            }
            let file = self.paths.members.join(format!("{}.endorsement", e.envoy));
            if let Err(err) = write_file_atomic(&file, &signed.to_bytes()) {
                tracing::warn!("cannot record member {}: {err}", e.envoy.escaped());
                continue;
            }
            members.by_envoy.insert(e.envoy.clone(), signed);
            added.push(e.envoy);
        }
        if !added.is_empty() {
            let shown: Vec<String> = added.iter().map(|e| e.escaped().to_string()).collect();
            tracing::info!("new member(s) of the circle: {}", shown.join(", "));
            self.members_changed();
        }
        (added, refused)
    }

    /// After the members changed: rewrite `recipients.txt` and tell the
    /// agent (which re-seals when unlocked).
    fn members_changed(&self) {
        if let Err(e) = self.write_recipients() {
            tracing::warn!("cannot rewrite the recipient set: {e}");
        }
        if let Ok(o) = self.on_members_change.lock() {
            if let Some(f) = o.as_ref() {
                f();
            }
        }
    }

    /// Regenerate `recipients.txt` from the members. Two peers' hellos can
    /// add members at the same moment: each rewrite reads the members only
    /// once it holds the file's lock, so the last one written is never an
    /// older set than another's (a lost member would be left out of every
    /// seal until the next change).
    pub(super) fn write_recipients(&self) -> Result<(), ReplicaError> {
        let _file = self
            .recipients_file
            .lock()
            .map_err(|_| ReplicaError::RecipientsPoisoned)?;
        let entries: Vec<RecipientEntry> = self
            .members()
            .by_envoy
            .values()
            .map(|s| RecipientEntry {
                recipient: s.body().recipient.clone(),
                envoy: s.body().envoy.clone(),
            })
            .collect();
        write_file_atomic(
            &self.paths.recipients,
            lockbox_crypto::recipients::encode(&entries).as_bytes(),
        )?;
        Ok(())
    }

    pub(super) fn member_names(&self) -> Vec<WireName> {
        self.members()
            .names()
            .into_iter()
            .filter_map(|n| WireName::new(n).ok())
            .collect()
    }

    /// The endorsement of member `envoy`.
    pub fn member(&self, envoy: &str) -> Option<Endorsement> {
        let m = self.members.read().ok()?;
        m.by_envoy.get(envoy).map(|s| s.body().clone())
    }

    /// The signed leaves and evictions.
    pub fn leaves(&self) -> Vec<Signed<Leave>> {
        self.meta
            .leaves()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, r)| Signed::<Leave>::from_trusted_bytes(&r).ok())
            .collect()
    }

    /// The leave of the member with signing key `key`, if it left.
    /// The leave or eviction of the member whose signing key is `key`, if
    /// it left.
    pub fn left(&self, key: &PublicKey) -> Option<Signed<Leave>> {
        let bytes = self.meta.leaves().ok()?;
        bytes
            .into_iter()
            .find(|(k, _)| k.as_slice() == key.0.as_slice())
            .and_then(|(_, r)| Signed::<Leave>::from_trusted_bytes(&r).ok())
    }

    /// This envoy's own leave or eviction, if it happened.
    pub fn departed(&self) -> Option<Signed<Leave>> {
        self.left(&self.signing.public())
    }

    /// Apply a leave or eviction (from a peer, or made here): record it, drop
    /// the member it names and rewrite the recipients. Returns whether
    /// anything changed. A leave must be signed by the member's own key; an
    /// eviction by the circle key.
    pub fn apply_leave(&self, l: &Signed<Leave>) -> Result<bool, Refusal> {
        let body = l.body();
        if body.user != self.user {
            return Err(Refusal::Bad(format!("the leave is for user {}", body.user)));
        }
        if !records::leave_is_authorised(l, &self.circle()) {
            return Err(Refusal::NotMember(match body.kind {
                LeaveKind::Leave => format!(
                    "the leave of {} is not signed by that envoy's key",
                    body.envoy
                ),
                LeaveKind::Evict => format!(
                    "the eviction of {} is not signed by this circle's key",
                    body.envoy
                ),
            }));
        }
        let earlier = self.left(&body.signing_key);
        if let Some(old) = &earlier {
            // One record per key: the canonical (smallest) one, so every
            // envoy keeps the same table.
            if old.to_bytes() <= l.to_bytes() {
                return Ok(false);
            }
        }
        // A self-signed leave of a key that was never a member would only
        // fill the table; an eviction carries the circle's authority and may
        // name an envoy this one never met.
        if body.kind == LeaveKind::Leave
            && earlier.is_none()
            && self.members().by_key(&body.signing_key).is_none()
        {
            return Err(Refusal::NotMember(format!(
                "the leave of {} names a key that is not a member of this circle",
                body.envoy
            )));
        }
        self.meta
            .apply(&[Op::PutLeave(body.signing_key.0.to_vec(), l.to_bytes())])
            .map_err(internal)?;
        let dropped = {
            let Ok(mut members) = self.members.write() else {
                return Err(Refusal::Internal("member table poisoned".into()));
            };
            let gone: Vec<String> = members
                .by_envoy
                .iter()
                .filter(|(_, e)| e.body().signing_key == body.signing_key)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &gone {
                members.by_envoy.remove(n);
                // Our own stays on disk: it is how this envoy tells the
                // others who it is (and they answer that it left).
                if body.signing_key != self.signing.public() {
                    let _ = fs::remove_file(self.paths.members.join(format!("{n}.endorsement")));
                }
            }
            gone
        };
        tracing::info!(
            "envoy {} {} the circle",
            body.envoy.as_str().escaped(),
            body.kind.verb()
        );
        if !dropped.is_empty() {
            if let Err(e) = self.write_recipients() {
                tracing::warn!("cannot rewrite the recipient set: {e}");
            }
            if let Ok(o) = self.on_members_change.lock() {
                if let Some(f) = o.as_ref() {
                    f();
                }
            }
        }
        Ok(true)
    }

    /// `lockbox leave`: sign this envoy's leave and apply it. The caller
    /// delivers it ([`crate::mesh::Mesh::deliver`]) before scrubbing.
    pub fn leave(&self) -> Result<Signed<Leave>, ReplicaError> {
        let l = Signed::sign(
            Leave {
                user: self.user.clone(),
                envoy: self.envoy.clone(),
                signing_key: self.signing.public(),
                kind: LeaveKind::Leave,
                left_unix: now_unix(),
            },
            &self.signing,
        );
        self.apply_leave(&l)?;
        Ok(l)
    }

    /// `lockbox evict ENVOY`: apply an eviction the CLI signed with the
    /// circle key (the caller delivers it; anti-entropy spreads it too).
    pub fn evict(&self, l: &Signed<Leave>) -> Result<(), ReplicaError> {
        if l.body().kind != LeaveKind::Evict {
            return Err(ReplicaError::NotAnEviction);
        }
        if l.body().signing_key == self.signing.public() {
            return Err(ReplicaError::EvictSelf);
        }
        self.apply_leave(l)?;
        Ok(())
    }
}

/// Load the members from `members/`, keeping only endorsements that verify
/// under `circle` for `user`.
pub(super) fn load_members(dir: &Path, circle: &PublicKey, user: &WireName) -> Members {
    let mut members = Members::default();
    let Ok(rd) = fs::read_dir(dir) else {
        return members;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "endorsement") {
            continue;
        }
        let bytes = match fs::read(&path) {
            Ok(b) if b.len() <= lockbox_crypto::sign::MAX_RECORD_BYTES => b,
            _ => continue,
        };
        match Signed::<Endorsement>::from_bytes(&bytes) {
            Ok(s) if verify_endorsement(&s, circle).is_ok() && s.body().user == user.as_str() => {
                let envoy = s.body().envoy.clone();
                let newer = members
                    .by_envoy
                    .get(&envoy)
                    .is_none_or(|o| o.body().created_unix < s.body().created_unix);
                if newer {
                    members.by_envoy.insert(envoy, s);
                }
            }
            _ => tracing::warn!(
                "ignoring {}: not an endorsement of this circle",
                path.display()
            ),
        }
    }
    members
}

/// The hello key in `path` if it is `circle`'s; `None` (with a warning
/// for a damaged file or another circle's key) otherwise.
pub(super) fn load_hello_key(path: &Path, circle: &PublicKey) -> Option<HelloKey> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", path.display());
            return None;
        }
    };
    match HelloKey::from_bytes(&bytes) {
        Ok(k) if k.circle() == *circle => Some(k),
        Ok(_) => {
            tracing::info!(
                "{} is another circle's hello key: it is written again at the next unlock",
                path.display()
            );
            None
        }
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            None
        }
    }
}

/// Write a small private file atomically and make the rename durable.
pub(super) fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    lockbox_fs::durable::write_private_file(path, bytes, lockbox_fs::durable::Existing::Replace)?;
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
