//! Reconcile: bring the records in line with the store when the agent
//! starts, after it was stopped or killed.
//!
//! The store's changes reach the records through the journal, and the
//! records become durable with the next grouped commit, so an agent
//! killed within that window leaves a store ahead of its records. Each
//! kind of change leaves its own evidence, and the start reads it:
//!
//! - a seal left without its record carries the record made of it
//!   (`user.lockbox.record`), or the unsigned version it was placed as
//!   (`user.lockbox.placed`), which is signed as it was; without either it
//!   is recorded as a new local version;
//! - a delete left without its tombstone left the deleted bytes in the
//!   held folder (`lockbox_fs::store`'s `held`): a record whose file is
//!   gone and whose bytes are held there was deleted here on purpose, and
//!   its delete is signed now;
//! - a rename left without its records left the moved bytes naming where
//!   they came from (`user.lockbox.moved-from`): the record of that name,
//!   whose bytes these are, was renamed away here, and its delete is
//!   signed now;
//! - a record whose file is gone with no such evidence lost its file (by
//!   hand, or the disk): it is dropped, and a peer sends the file again.
//!
//! See docs/design.md, "Durability and its bound".

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use lockbox_crypto::digest::Sha256;
use lockbox_crypto::sign::Signed;
use lockbox_fs::escape::Escape;
use lockbox_fs::meta::{LocalStat, Op};
use lockbox_fs::store::release_held;
use lockbox_fs::{FileState, Name};

use super::local::{decode_version, describe_file};
use super::{version_ops, Replica, ReplicaError};
use crate::records::FileVersion;

/// Why a record's file is gone from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// Its bytes are in the held folder: deleted here.
    Deleted,
    /// Its bytes are under another name that says it came from this one:
    /// renamed away here.
    Renamed,
    /// No trace: lost.
    Lost,
}

impl Replica {
    /// Bring the records in line with the store after the agent was down or
    /// crashed (see the module docs). Returns how many records changed.
    pub fn reconcile(&self) -> Result<usize, ReplicaError> {
        let _guard = self.store.change_lock();
        let mut changed = 0;
        let entries = self.store.list()?;
        let mut seen = HashSet::new();
        for entry in entries {
            seen.insert(entry.name.clone());
            if !entry.is_age || entry.state == FileState::Failed {
                continue;
            }
            if self.reconcile_file(&entry.name)? {
                changed += 1;
            }
        }
        let held = self.held_hashes()?;
        let mut gone_names = Vec::new();
        for (name, record, _) in self.meta.versions()? {
            if let Ok(n) = Name::new(name) {
                if !seen.contains(&n) {
                    gone_names.push((n, record));
                }
            }
        }
        let moved = self.moved_away(&seen, &gone_names);
        let mut used = HashSet::new();
        for (n, record) in gone_names {
            let prev = Signed::<FileVersion>::from_trusted_bytes(&record).ok();
            let hash = prev.as_ref().map(|p| p.body().hash);
            let held_at = hash.and_then(|h| held.iter().find(|(_, hh)| *hh == h));
            let how = match (held_at, hash) {
                (Some(_), _) => Gone::Deleted,
                (None, Some(h)) if moved.get(&n) == Some(&h) => Gone::Renamed,
                _ => Gone::Lost,
            };
            match (how, prev) {
                (Gone::Deleted | Gone::Renamed, Some(prev)) => {
                    tracing::info!(
                        "{} was {} here just before the agent stopped: recording its delete",
                        n.escaped(),
                        if how == Gone::Deleted {
                            "deleted"
                        } else {
                            "renamed"
                        }
                    );
                    let held_path = held_at.map(|(p, _)| p.clone());
                    if let Some(p) = &held_path {
                        used.insert(p.clone());
                    }
                    self.local_removed_then(&n, &prev, held_path);
                }
                _ => {
                    tracing::info!(
                        "{} is gone from the store: a peer will send it again",
                        n.escaped()
                    );
                    self.meta.apply(&[Op::DelVersion(n)])?;
                }
            }
            changed += 1;
        }
        // Held bytes no record names any more: their delete was durable
        // before the agent stopped.
        for (p, _) in &held {
            if !used.contains(p) {
                release_held(p);
            }
        }
        // A state whose file is gone (removed by hand while the agent was
        // down) goes too.
        for (name, _) in self.meta.states()? {
            if let Ok(n) = Name::new(name) {
                if !seen.contains(&n) {
                    self.meta.apply(&[Op::SetState(n, None)])?;
                }
            }
        }
        Ok(changed)
    }

    /// Bring the record of `name`, which has a sealed store file, in line
    /// with it. Returns whether the record changed.
    fn reconcile_file(&self, name: &Name) -> Result<bool, ReplicaError> {
        let path = self.store.path_of(name);
        let stat = LocalStat::of(&path).ok();
        let known = self.meta.version(name)?;
        let record = known
            .as_ref()
            .and_then(|(b, _)| Signed::<FileVersion>::from_trusted_bytes(b).ok());
        if let (Some((_, Some(s))), Some(_)) = (&known, &record) {
            if Some(*s) == stat {
                return Ok(false);
            }
        }
        let (_, _, hash) = describe_file(&path)?;
        // A file received or recorded just before a crash carries its
        // record, which may not have been made durable with the others
        // (and may have been pushed already): it keeps that record.
        let record = record.filter(|r| r.body().hash == hash).or_else(|| {
            self.store
                .attached_record(name)
                .and_then(|b| Signed::<FileVersion>::from_bytes(&b).ok())
                .filter(|r| {
                    r.body().hash == hash
                        && r.body().fits_name(name)
                        && self.members().by_key(&r.signer()).is_some()
                })
        });
        // A local seal placed just before the agent was killed, before
        // its version was signed (or its record durable): sign exactly
        // the version it was placed as (its vector from what its writer
        // started from; a signature of the same body is the same
        // record), not one derived from whatever record survived.
        let placed = || {
            self.store
                .attached_placed(name)
                .and_then(|b| decode_version(&b))
                .filter(|v| {
                    v.hash == hash
                        && v.fits_name(name)
                        && v.author == self.envoy
                        && v.user == self.user
                })
        };
        match record {
            Some(r) if r.body().hash == hash => {
                self.meta.apply(&version_ops(name, &r, stat))?;
                Ok(false)
            }
            _ if let Some(v) = placed() => {
                tracing::info!(
                    "recording {} as the version it was placed as before the agent stopped",
                    name.escaped()
                );
                self.local_placed(name, v, stat);
                Ok(true)
            }
            _ => {
                tracing::info!("recording {} as a new local version", name.escaped());
                self.record_local(name, None, None, None, stat)?;
                Ok(true)
            }
        }
    }

    /// The held folder's files with the hash of their bytes (a file that
    /// cannot be read or is not sealed is let go: nothing can name it).
    fn held_hashes(&self) -> Result<Vec<(PathBuf, Sha256)>, ReplicaError> {
        let mut held = Vec::new();
        for p in self.store.held_files()? {
            match describe_file(&p) {
                Ok((_, _, hash)) => held.push((p, hash)),
                Err(_) => release_held(&p),
            }
        }
        Ok(held)
    }

    /// For the names in `gone` (records whose file is gone), the hash of
    /// the bytes now under another name that says it was renamed from
    /// there. Reads the stores' marks only when some record lost its file.
    fn moved_away(
        &self,
        present: &HashSet<Name>,
        gone: &[(Name, Vec<u8>)],
    ) -> HashMap<Name, Sha256> {
        let mut moved = HashMap::new();
        if gone.is_empty() {
            return moved;
        }
        let gone: HashSet<&Name> = gone.iter().map(|(n, _)| n).collect();
        for name in present {
            let Some(from) = self.store.moved_from(name) else {
                continue;
            };
            if !gone.contains(&from) {
                continue;
            }
            if let Ok((_, _, hash)) = describe_file(&self.store.path_of(name)) {
                moved.insert(from, hash);
            }
        }
        moved
    }
}
