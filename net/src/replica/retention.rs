//! Keeping the replica within its bounds over time: the last catch-up
//! (for the long-absence rule), forgetting deletes older than the
//! retention (`prune`), and re-encrypting files after the members changed
//! (`reseal`, `drift`). It must not take anything from peers.

use std::fs;

use lockbox_crypto::sign::Signed;
use lockbox_fs::meta::{List, Op};
use lockbox_fs::{Name, Sealed};

use super::tables::encode_records;
use super::{Replica, ReplicaError};
use crate::records::{self, FileVersion};

/// The `misc` key of the last completed catch-up.
const LAST_CONTACT: &str = "last_contact";

/// Which files [`Replica::reseal`] re-encrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Only those sealed to a recipient set other than the members.
    Drifted,
    /// Every one (`lockbox reencrypt`).
    All,
}

impl Replica {
    /// When this envoy last completed a catch-up with a member (Unix
    /// seconds), if ever.
    pub fn last_contact(&self) -> Option<i64> {
        let b = self.meta.misc(LAST_CONTACT).ok()??;
        Some(i64::from_be_bytes(b.try_into().ok()?))
    }

    /// Record a completed catch-up at `unix`.
    pub fn set_last_contact(&self, unix: i64) {
        if let Err(e) = self
            .meta
            .apply(&[Op::PutMisc(LAST_CONTACT, unix.to_be_bytes().to_vec())])
        {
            tracing::warn!("cannot record the last catch-up: {e}");
        }
    }

    /// Forget deletes older than `retention` seconds at `now` (and the
    /// resurrects that lifted only such deletes). Returns how many records
    /// went. A resurrect stays while a tombstone it covers stays, so pruning
    /// never brings a lifted delete back into force.
    pub fn prune(&self, retention: i64, now: i64) -> usize {
        let cutoff = now.saturating_sub(retention);
        let _guard = self.store.change_lock();
        let mut ops = Vec::new();
        let mut gone = 0;
        let names: Vec<Vec<u8>> = [List::Tombstones, List::Resurrects]
            .iter()
            .flat_map(|l| self.meta.all_lists(*l).unwrap_or_default())
            .map(|(n, _)| n)
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for raw in names {
            if !seen.insert(raw.clone()) {
                continue;
            }
            let Ok(name) = Name::new(raw) else { continue };
            let tombs = self.tombstones(&name);
            let kept: Vec<_> = tombs
                .iter()
                .filter(|t| t.body().deleted_unix >= cutoff)
                .cloned()
                .collect();
            let res = self.resurrects(&name);
            let kept_res: Vec<_> = res
                .iter()
                .filter(|r| {
                    r.body().resurrected_unix >= cutoff
                        || kept
                            .iter()
                            .any(|t| records::deletes(&r.body().vv, &t.body().vv))
                })
                .cloned()
                .collect();
            if kept.len() != tombs.len() {
                gone += tombs.len() - kept.len();
                ops.push(Op::PutList(
                    List::Tombstones,
                    name.clone(),
                    encode_records(&kept),
                ));
            }
            if kept_res.len() != res.len() {
                gone += res.len() - kept_res.len();
                ops.push(Op::PutList(
                    List::Resurrects,
                    name,
                    encode_records(&kept_res),
                ));
            }
        }
        if let Err(e) = self.meta.apply(&ops) {
            tracing::warn!("cannot forget expired deletes: {e}");
            return 0;
        }
        if gone > 0 {
            tracing::info!("forgot {gone} delete record(s) older than the tombstone retention");
        }
        gone
    }

    /// Re-encrypt `name` to the current members: always with `Reseal::All`,
    /// with `Reseal::Drifted` only if its record names a different recipient
    /// set. `reseal` does the crypto: it reads the old ciphertext and writes
    /// the new into the given file, returning what it sealed. Returns whether
    /// it re-encrypted.
    pub fn reseal<E: std::fmt::Display>(
        &self,
        name: &Name,
        which: Reseal,
        reseal: impl FnOnce(&mut fs::File, &mut fs::File) -> Result<Sealed, E>,
    ) -> Result<bool, ReplicaError> {
        let Some(rec) = self.record(name)? else {
            return Ok(false);
        };
        let members = self.member_names();
        if which == Reseal::Drifted && rec.body().recipients == members {
            return Ok(false);
        }
        let mut src = self.store.open_file(name)?;
        let (staged, sealed) = self.store.stage(|out| {
            reseal(&mut src, out).map_err(|e| lockbox_fs::Error::Journal(e.to_string()))
        })?;
        let _guard = self.store.change_lock();
        // Only if the content is still the one we re-encrypted. (A chmod
        // meanwhile made a version of the same content: that is the one
        // re-encrypted, with its vector and execute bit.)
        let now = match self.record(name)? {
            Some(now) if now.body().hash == rec.body().hash => now,
            _ => return Ok(false),
        };
        staged.set_executable(now.body().executable)?;
        self.store.commit_staged(staged, name)?;
        let stat = self.store.local_stat(name);
        self.record_local(name, Some(&sealed), None, Some(now.body()), stat)?;
        drop(_guard);
        self.remote_changed(name);
        Ok(true)
    }

    /// Whether the record of `name` names an envoy that is not a member
    /// (one that left): its file should be re-encrypted. A record that only
    /// lacks a member is left to the re-encryption that follows a join, so
    /// two envoys that disagree about a new member do not re-seal back and
    /// forth.
    pub fn sealed_to_outsiders(&self, name: &Name) -> bool {
        let Ok(Some(rec)) = self.record(name) else {
            return false;
        };
        let members = self.member_names();
        rec.body().recipients.iter().any(|r| !members.contains(r))
    }

    /// Names whose record is sealed to a set other than the members. The
    /// changes still queued for the journal are recorded first, so a seal
    /// made just before (a close, then `lockbox status`) counts.
    pub fn drift(&self) -> Vec<Name> {
        self.store.deliver_journal();
        let members = self.member_names();
        self.manifest()
            .into_iter()
            .filter(|(_, rec)| {
                Signed::<FileVersion>::from_trusted_bytes(rec)
                    .map(|r| r.body().recipients != members)
                    .unwrap_or(false)
            })
            .map(|(n, _)| n)
            .collect()
    }
}
