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
//!   they came from (`user.lockbox.moved-from`; a seal passed on while it
//!   waited for its round too): the record of that name, whose bytes
//!   these are (or, when that record is gone too, the rename's own record
//!   attached to them, made after it), was renamed away here, and its
//!   delete is signed now;
//! - a record whose file is gone with no such evidence lost its file (by
//!   hand, or the disk): it is dropped, and a peer sends the file again.
//!
//! See docs/design.md, "Durability and its bound".

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use lockbox_crypto::sign::Signed;
use lockbox_fs::escape::Escape;
use lockbox_fs::meta::{List, LocalStat, Op};
use lockbox_fs::store::{attached_record_at, is_executable, moved_from_at, release_held};
use lockbox_fs::{FileState, Name};

use super::local::{decode_version, describe_file};
use super::{version_ops, Replica, ReplicaError};
use crate::records::{self, FileVersion};
use crate::version::Causality;

/// A change made here whose delete may not have reached the records: the
/// name, the version it took away, and the held bytes (if any) that go
/// once that delete is durable.
struct Trace {
    name: Name,
    version: Signed<FileVersion>,
    held: Option<PathBuf>,
    how: &'static str,
}

/// A file that says it was renamed here from `from`, which has no file.
struct Moved {
    at: Name,
    from: Name,
    /// The record attached to it, if it is one of `from`'s.
    attached: Option<Signed<FileVersion>>,
}

impl Replica {
    /// Bring the records in line with the store after the agent was down or
    /// crashed (see the module docs). Returns how many records changed.
    pub fn reconcile(&self) -> Result<usize, ReplicaError> {
        let _guard = self.store.change_lock();
        let mut changed = 0;
        let entries = self.store.list()?;
        let seen: HashSet<Name> = entries.iter().map(|e| e.name.clone()).collect();
        // Read before the records are brought in line: recording a file
        // attaches its new record over the one a rename left on it.
        let moved = self.moved_candidates(&seen);
        for entry in entries {
            if !entry.is_age || entry.state == FileState::Failed {
                continue;
            }
            if self.reconcile_file(&entry.name)? {
                changed += 1;
            }
        }
        let mut gone = HashMap::new();
        for (name, record, _) in self.meta.versions()? {
            if let Ok(n) = Name::new(name) {
                if !seen.contains(&n) {
                    gone.insert(n, Signed::<FileVersion>::from_trusted_bytes(&record).ok());
                }
            }
        }
        let mut traces = self.held_traces(&gone)?;
        traces.extend(self.moved_traces(moved, &gone));
        self.note_lost_folders(traces.iter().map(|t| &t.name));
        for t in traces {
            let tombs = self.tombstones(&t.name);
            if records::deleted_by(&tombs, &self.resurrects(&t.name), &t.version.body().vv) {
                // Its delete was durable before the agent stopped.
                if let Some(h) = &t.held {
                    release_held(h);
                }
                continue;
            }
            tracing::info!(
                "{} was {} here just before the agent stopped: recording its delete",
                t.name.escaped(),
                t.how
            );
            self.local_removed_then(&t.name, &t.version, t.held.into_iter().collect());
            changed += 1;
        }
        for (n, _) in gone {
            if self.meta.version(&n)?.is_none() {
                continue; // its lost delete was just signed
            }
            tracing::info!(
                "{} is gone from the store: a peer will send it again",
                n.escaped()
            );
            self.meta.apply(&[Op::DelVersion(n)])?;
            changed += 1;
        }
        changed += self.reconcile_folders()?;
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

    /// Note the folders above `names` (files deleted or moved away just
    /// before the agent stopped) that the store no longer has: their own
    /// records may have been lost in the same commit window.
    fn note_lost_folders<'n>(&self, names: impl Iterator<Item = &'n Name>) {
        if !self.store.lists_folders() {
            return;
        }
        let mut lost = self.lost_folders.lock().unwrap_or_else(|e| e.into_inner());
        for name in names {
            let mut at = name.parent();
            while let Some(f) = at {
                if !self.store.is_folder(&f) {
                    lost.insert(f.clone());
                }
                at = f.parent();
            }
        }
    }

    /// Bring the folder records in line with the store's folders: a
    /// folder on record that is gone was removed (or renamed away) here
    /// just before the agent stopped, and its removal is signed; a folder
    /// of the store with no record and no delete at its path was made
    /// here, and is recorded. (A folder whose path has a delete on record
    /// stays as it is: it may be one the mesh removed while its record was
    /// already gone.) Returns how many records changed.
    fn reconcile_folders(&self) -> Result<usize, ReplicaError> {
        if !self.store.lists_folders() {
            return Ok(0);
        }
        let mut changed = 0;
        let walk = lockbox_fs::store::walk(self.store.dir(), lockbox_fs::name::MAX_DEPTH)?;
        let present: HashSet<&Name> = walk.folders.iter().collect();
        for (name, _) in self.meta.all_lists(List::Folders)? {
            let Ok(n) = Name::new(name) else { continue };
            if !present.contains(&n) {
                tracing::info!(
                    "the folder {} was removed here just before the agent stopped: recording it",
                    n.escaped()
                );
                self.local_folder_removed(&n);
                changed += 1;
            }
        }
        for f in &walk.folders {
            if self.folder_is_live(f) || !self.tombstones(f).is_empty() {
                continue;
            }
            tracing::info!(
                "the folder {} was made here just before the agent stopped: recording it",
                f.escaped()
            );
            self.local_folder_made(f);
            changed += 1;
        }
        Ok(changed)
    }

    /// Bring the record of `name`, which has a sealed store file, in line
    /// with it. Returns whether the record changed.
    fn reconcile_file(&self, name: &Name) -> Result<bool, ReplicaError> {
        let path = self.store.path_of(name);
        let meta = fs::symlink_metadata(&path).ok();
        let stat = meta.as_ref().map(LocalStat::from_metadata);
        // A chmod changes neither the stat kept nor the content.
        let executable = meta.as_ref().is_some_and(is_executable);
        let known = self.meta.version(name)?;
        let stored = known
            .as_ref()
            .and_then(|(b, _)| Signed::<FileVersion>::from_trusted_bytes(b).ok());
        if let (Some((_, Some(s))), Some(r)) = (&known, &stored) {
            if Some(*s) == stat && r.body().executable == executable {
                return Ok(false);
            }
        }
        let (_, _, hash) = describe_file(&path)?;
        let describes = |v: &FileVersion| v.hash == hash && v.executable == executable;
        // A file received or recorded just before a crash carries its
        // record, which may not have been made durable with the others
        // (and may have been pushed already): it keeps that record.
        let attached = self
            .store
            .attached_record(name)
            .and_then(|b| Signed::<FileVersion>::from_bytes(&b).ok())
            .filter(|r| r.body().fits_name(name) && self.members().by_key(&r.signer()).is_some());
        // A version recorded after the seal was placed (a chmod of it,
        // maybe pushed already) makes the placed one stale, even when it
        // describes the file again (a chmod +x and -x).
        let superseded = |v: &FileVersion| {
            [&stored, &attached].into_iter().flatten().any(|r| {
                matches!(
                    r.body().vv.compare(&v.vv),
                    Causality::After | Causality::Equal
                )
            })
        };
        let placed_version = self
            .store
            .attached_placed(name)
            .and_then(|b| decode_version(&b));
        let record = stored
            .clone()
            .filter(|r| describes(r.body()))
            .or_else(|| attached.clone().filter(|r| describes(r.body())));
        // A local seal placed just before the agent was killed, before
        // its version was signed (or its record durable): sign exactly
        // the version it was placed as (its vector from what its writer
        // started from; a signature of the same body is the same
        // record), not one derived from whatever record survived.
        let placed = || {
            placed_version.clone().filter(|v| {
                describes(v)
                    && v.fits_name(name)
                    && v.author == self.envoy
                    && v.user == self.user
                    && !superseded(v)
            })
        };
        match record {
            Some(r) => {
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
                // After every version of the name this envoy signed: the
                // record attached to the file may be newer than the one
                // that was durable (signed and pushed, then lost).
                let newer_attached = attached.filter(|a| {
                    stored
                        .as_ref()
                        .is_none_or(|s| a.body().vv.compare(&s.body().vv) == Causality::After)
                });
                if let Some(a) = newer_attached {
                    // Without a stat: it may not describe these bytes.
                    self.meta.apply(&version_ops(name, &a, None))?;
                }
                self.record_local(name, None, None, None, stat)?;
                Ok(true)
            }
        }
    }

    /// The held folder's files, each with the version it held: the
    /// record of a name in `gone` (records whose file is gone) whose hash
    /// the bytes have, else the record attached to the bytes (a version
    /// signed, maybe pushed, and deleted before its record was durable).
    /// Bytes neither names are let go: nothing to record.
    fn held_traces(
        &self,
        gone: &HashMap<Name, Option<Signed<FileVersion>>>,
    ) -> Result<Vec<Trace>, ReplicaError> {
        let mut traces = Vec::new();
        for p in self.store.held_files()? {
            let Ok((_, _, hash)) = describe_file(&p) else {
                release_held(&p);
                continue;
            };
            // The name it was deleted from (without extended attributes:
            // the name whose lost record has its hash).
            let name = moved_from_at(&p).or_else(|| {
                gone.iter()
                    .find(|(_, r)| r.as_ref().is_some_and(|r| r.body().hash == hash))
                    .map(|(n, _)| n.clone())
            });
            let Some(name) = name else {
                release_held(&p);
                continue;
            };
            let recorded = gone
                .get(&name)
                .and_then(|r| r.clone())
                .filter(|r| r.body().hash == hash);
            let attached = || {
                self.attached_version(&p, &name)
                    .filter(|r| r.body().hash == hash)
            };
            match recorded.or_else(attached) {
                Some(version) => traces.push(Trace {
                    name,
                    version,
                    held: Some(p),
                    how: "deleted",
                }),
                None => release_held(&p),
            }
        }
        Ok(traces)
    }

    /// The files that say they were renamed here from a name that has no
    /// file now (`present`: the names with a file): each with that name
    /// and the record attached to it if it is one of that name's (signed,
    /// maybe pushed, before the rename, whose records were not durable).
    /// Only names and records are read: nothing is hashed yet.
    fn moved_candidates(&self, present: &HashSet<Name>) -> Vec<Moved> {
        let mut moved = Vec::new();
        for name in present {
            let Some(from) = self.store.moved_from(name) else {
                continue;
            };
            if present.contains(&from) {
                continue; // the name has a file again
            }
            let path = self.store.path_of(name);
            let attached = self.attached_version(&path, &from).or_else(|| {
                // The rename's own record of the moved bytes, signed from
                // the origin's version (so after it), when it was lost
                // with the rest: it stands for the origin's, which it
                // replaced on the file. (With its record on file, the
                // rename's records were made: nothing to do.)
                match self.record(name) {
                    Ok(None) => self.attached_version(&path, name),
                    _ => None,
                }
            });
            moved.push(Moved {
                at: name.clone(),
                from,
                attached,
            });
        }
        moved
    }

    /// The renames among `moved` whose records were lost, each with the
    /// version of its origin it took away: the origin's record in `gone`
    /// when the moved bytes are its, else the record attached to them when
    /// it describes them.
    fn moved_traces(
        &self,
        moved: Vec<Moved>,
        gone: &HashMap<Name, Option<Signed<FileVersion>>>,
    ) -> Vec<Trace> {
        let mut traces = Vec::new();
        for m in moved {
            let recorded = gone.get(&m.from).and_then(|r| r.clone());
            if recorded.is_none() && m.attached.is_none() {
                continue; // most files renamed here: their records are made
            }
            let Ok((_, _, hash)) = describe_file(&self.store.path_of(&m.at)) else {
                continue;
            };
            let of_these = |r: &Signed<FileVersion>| r.body().hash == hash;
            if let Some(version) = recorded
                .filter(of_these)
                .or_else(|| m.attached.filter(of_these))
            {
                traces.push(Trace {
                    name: m.from,
                    version,
                    held: None,
                    how: "renamed",
                });
            }
        }
        traces
    }

    /// The version record attached to the file at `path`, if it is one of
    /// `name`, is this user's and is signed by a member (whether it
    /// describes the file's bytes is the caller's to check).
    fn attached_version(&self, path: &Path, name: &Name) -> Option<Signed<FileVersion>> {
        let bytes = attached_record_at(path)?;
        // The name first: most files renamed here carry their own record.
        let unverified = Signed::<FileVersion>::from_trusted_bytes(&bytes).ok()?;
        if !unverified.body().fits_name(name) {
            return None;
        }
        let r = Signed::<FileVersion>::from_bytes(&bytes).ok()?;
        let body = r.body();
        let ok = body.fits_name(name)
            && body.user == self.user
            && self.members().by_key(&r.signer()).is_some();
        ok.then_some(r)
    }
}
