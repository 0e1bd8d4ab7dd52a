//! Handovers at one envoy (the format is [`crate::handover`]): made when
//! this envoy's circle loses a merge, one for each other member of that
//! circle, and kept in `handover/` with the old circle's hello key; found
//! for a member of the old circle that says hello; and followed when this
//! envoy gets one. It owns the `handover/` folder; it must not decide when
//! circles merge (the join does) or check session proofs (the hello does).

use std::fs;
use std::path::PathBuf;

use lockbox_crypto::circle::{CircleSecret, Endorsement};
use lockbox_crypto::hello::{HelloKey, KEY_FILE_LEN};
use lockbox_crypto::sign::PublicKey;

use super::members::write_file_atomic;
use super::{Replica, ReplicaError};
use crate::handover::{Handover, MAX_HANDOVER_LEN};

/// How many predecessor circles' hello keys are tried on a hello that does
/// not open with this circle's (each is one AEAD attempt).
const MAX_PREDECESSORS: usize = 16;

impl Replica {
    fn handover_file(&self, old: &PublicKey, e: &Endorsement) -> PathBuf {
        self.paths.handover.join(format!(
            "{}-{}.handover",
            hex::encode(old.0),
            hex::encode(e.signing_key.0)
        ))
    }

    /// Before this envoy adopts `new` in place of `old` (its circle lost a
    /// merge): a handover for every other member of `old`, kept in
    /// `handover/`, and `old`'s hello key, to read those members' hellos.
    /// Returns each member's endorsement by `new` (wire form), for the
    /// caller to learn once `new` is this envoy's circle, so the winning
    /// circle counts those members (and seals to them) before they follow.
    ///
    /// # Errors
    ///
    /// [`ReplicaError::CircleWrite`] if `handover/` cannot be written;
    /// [`ReplicaError::Crypto`] if a secret cannot be sealed.
    pub fn make_handovers(
        &self,
        old: &CircleSecret,
        new: &CircleSecret,
        now_unix: u64,
    ) -> Result<Vec<Vec<u8>>, ReplicaError> {
        let Some(new_hello) = HelloKey::of(new) else {
            return Ok(Vec::new());
        };
        let others: Vec<Endorsement> = self
            .members()
            .by_envoy
            .values()
            .map(|s| s.body().clone())
            .filter(|e| e.signing_key != self.signing_public())
            .collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        lockbox_fs::durable::ensure_private_dir(&self.paths.handover)?;
        if let Some(old_hello) = HelloKey::of(old) {
            write_file_atomic(
                &self
                    .paths
                    .handover
                    .join(format!("{}.hello", hex::encode(old.public().0))),
                &old_hello.to_bytes(),
            )
            .map_err(ReplicaError::CircleWrite)?;
        }
        let succession = old.sign_succession(self.user.as_str(), &new.public(), new.created_unix());
        let mut endorsed = Vec::new();
        for e in others {
            let Ok(recipient) = e.recipient.parse::<lockbox_crypto::AgeRecipient>() else {
                continue;
            };
            let sealed_secret = lockbox_crypto::circle::seal_secret(new, &recipient)
                .map_err(ReplicaError::Crypto)?;
            let endorsement = new.key().endorse(Endorsement {
                created_unix: now_unix,
                ..e.clone()
            });
            let h = Handover {
                succession: succession.clone(),
                endorsement: endorsement.clone(),
                sealed_secret,
                hello_key: HelloKey::from_bytes(&new_hello.to_bytes())
                    .map_err(ReplicaError::Crypto)?,
            };
            write_file_atomic(&self.handover_file(&old.public(), &e), &h.encode())
                .map_err(ReplicaError::CircleWrite)?;
            endorsed.push(endorsement.to_bytes());
        }
        Ok(endorsed)
    }

    /// The hello keys of circles that this envoy's circle succeeded, to
    /// read the hellos of their members that have not followed yet.
    pub fn predecessor_hello_keys(&self) -> Vec<HelloKey> {
        let Ok(rd) = fs::read_dir(&self.paths.handover) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "hello"))
            .filter_map(|p| {
                let b = fs::read(&p).ok()?;
                (b.len() == KEY_FILE_LEN).then_some(())?;
                HelloKey::from_bytes(&b).ok()
            })
            .take(MAX_PREDECESSORS)
            .collect()
    }

    /// The handover kept for the envoy endorsed by `e` in the predecessor
    /// circle `old` (its wire form), if this envoy made one.
    pub fn handover_for(&self, old: &PublicKey, e: &Endorsement) -> Option<Vec<u8>> {
        let b = fs::read(self.handover_file(old, e)).ok()?;
        if b.len() > MAX_HANDOVER_LEN {
            return None;
        }
        let h = Handover::parse(&b).ok()?;
        h.check(old, e).ok()?;
        Some(b)
    }

    /// Follows `h` into the circle that succeeded this envoy's: checks it
    /// against this envoy's circle and own endorsement, then makes the new
    /// circle its own, with the sealed secret as its `circle.secret` (it is
    /// opened at the next unlock) and the new hello key.
    ///
    /// # Errors
    ///
    /// [`ReplicaError::Handover`] if it is not for this envoy in its
    /// circle; [`ReplicaError::CircleWrite`] if the files cannot be
    /// written.
    pub fn follow(&self, h: Handover) -> Result<(), ReplicaError> {
        let own = self.own().ok_or(ReplicaError::NoEndorsement)?;
        h.check(&self.circle(), own.body())?;
        let new = h.new_circle();
        self.take_circle(&h.sealed_secret, h.endorsement, Some(h.hello_key), new)?;
        tracing::info!(
            "this envoy followed its circle into circle {new}, which won a merge with it"
        );
        Ok(())
    }
}
