//! The replicated tables as the replica holds them: the record of each
//! stored version (the file table and its manifest), the tombstones and
//! resurrects of each name, their digests and wire lists, and applying a
//! peer's tombstones and resurrects (merged as antichains). The leave table
//! is here as a table; what a leave does to the members is
//! [`super::members`]. It must not sign anything of this envoy's own.

use lockbox_crypto::sign::{Decoder, Encoder, PublicKey, Signed};
use lockbox_fs::escape::Escape;
use lockbox_fs::meta::{List, Op, State};
use lockbox_fs::Name;

use super::{internal, Refusal, Replica, ReplicaError};
use crate::records::{self, FileVersion, Folder, Leave, Resurrect, Tombstone, Versioned};
use crate::WireName;

/// Most entries a manifest or tombstone table may hold.
pub const MAX_TABLE_ENTRIES: usize = 1 << 20;

/// The tables the mesh compares by digest and exchanges whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Signed deletes (`/lockbox/tombstones`).
    Tombstones,
    /// Signed re-adds (`/lockbox/resurrects`).
    Resurrects,
    /// Signed leaves and evictions (`/lockbox/leaves`).
    Leaves,
    /// Signed folder versions (`/lockbox/folders`): announced within the
    /// files' digest, so envoys from before folders see no new digest.
    Folders,
}

impl Table {
    /// All of them, in the order a catch-up pulls them: membership first,
    /// then what lifts deletes, then deletes — so a copy that a resurrect
    /// lets back in is not removed by the delete it lifts on the way.
    pub const ALL: [Table; 3] = [Table::Leaves, Table::Resurrects, Table::Tombstones];

    /// Every table a peer may ask for or post to.
    pub const SERVED: [Table; 4] = [
        Table::Leaves,
        Table::Resurrects,
        Table::Tombstones,
        Table::Folders,
    ];

    /// The endpoint's path segment.
    pub fn path(self) -> &'static str {
        match self {
            Table::Tombstones => "tombstones",
            Table::Resurrects => "resurrects",
            Table::Leaves => "leaves",
            Table::Folders => "folders",
        }
    }
}

impl Replica {
    /// Refuse a name in a folder while this envoy's store does not hold
    /// folders (`docs/folders.md`, "Order of the work"), with 400, as an
    /// envoy from before folders does.
    pub(super) fn carries(&self, name: &Name) -> Result<(), Refusal> {
        if name.is_at_root() || self.store.lists_folders() {
            Ok(())
        } else {
            Err(Refusal::Bad(format!(
                "{}: this envoy does not hold folders yet",
                name.escaped()
            )))
        }
    }

    /// Whether `name`'s file stays out of the mesh: the store recorded it
    /// as a failed seal (a plaintext it could not seal). Its name says
    /// nothing; a state that cannot be read keeps it out too.
    pub fn kept_out(&self, name: &Name) -> bool {
        match self.meta.state(name) {
            Ok(state) => state == Some(State::Failed),
            Err(e) => {
                tracing::warn!(
                    "cannot read the state of {} ({e}): keeping it out of sync",
                    name.escaped()
                );
                true
            }
        }
    }

    /// The signed record of the version stored as `name`.
    pub fn record(&self, name: &Name) -> Result<Option<Signed<FileVersion>>, ReplicaError> {
        match self.meta.version(name)? {
            None => Ok(None),
            Some((bytes, _)) => Signed::<FileVersion>::from_trusted_bytes(&bytes)
                .map(Some)
                .map_err(|source| ReplicaError::DamagedRecord {
                    name: name.clone(),
                    source,
                }),
        }
    }

    /// The tombstones of `name`.
    pub fn tombstones(&self, name: &Name) -> Vec<Signed<Tombstone>> {
        decode_records(&self.meta.list(List::Tombstones, name).unwrap_or_default())
    }

    /// The resurrects of `name`.
    pub fn resurrects(&self, name: &Name) -> Vec<Signed<Resurrect>> {
        decode_records(&self.meta.list(List::Resurrects, name).unwrap_or_default())
    }

    /// The live folder versions of `name`.
    pub fn folders(&self, name: &Name) -> Vec<Signed<Folder>> {
        decode_records(&self.meta.list(List::Folders, name).unwrap_or_default())
    }

    /// Whether the folder `name` is on record here (made here, or by a
    /// peer), so it stays when its last entry goes.
    pub fn folder_is_live(&self, name: &Name) -> bool {
        !self.folders(name).is_empty()
    }

    /// Apply a folder version from a peer: record it unless a tombstone
    /// of its path covers it, and make the folder (and the folders above
    /// it). Returns whether anything changed.
    pub fn apply_folder(&self, f: &Signed<Folder>) -> Result<bool, Refusal> {
        let name = f.body().name.clone();
        self.carries(&name)?;
        self.check_member_record(&format!("folder {name}"), &f.signer(), &f.body().user)?;
        let guard = self.store.change_lock();
        if self.is_deleted(&name, &f.body().vv) {
            return Ok(false);
        }
        let old = self.folders(&name);
        if old.is_empty() && self.lost_own_folder(f) {
            // Made here and then removed or moved away just before the
            // agent stopped, both records lost with one commit window
            // (a peer got the first): the store says what happened here.
            let resurrects = self.resurrects(&name);
            let (t, tombs) = self.sign_tombstone(&name, &f.body().vv, &resurrects);
            self.meta
                .apply(&[Op::PutList(
                    List::Tombstones,
                    name.clone(),
                    encode_records(&tombs),
                )])
                .map_err(internal)?;
            drop(guard);
            tracing::info!(
                "the folder {} was removed here just before the agent stopped, and its \
                 record lost: recording its removal",
                name.escaped()
            );
            self.emit(crate::replica::Outgoing::Tombstone(t));
            return Ok(true);
        }
        let mut merged = old.clone();
        merged.push(f.clone());
        let merged = records::merge_antichain(merged);
        if merged == old {
            return Ok(false);
        }
        let made = self.make_folder_locked(&name)?;
        self.meta
            .apply(&[Op::PutList(
                List::Folders,
                name.clone(),
                encode_records(&merged),
            )])
            .map_err(internal)?;
        drop(guard);
        if !made.is_empty() {
            tracing::info!(
                "folder {} was made on envoy {}",
                name.escaped(),
                f.body().author.as_str().escaped()
            );
        }
        for m in &made {
            self.remote_changed(m);
        }
        Ok(true)
    }

    /// Whether `f` is a folder version this envoy signed (with its key of
    /// now) for a folder that held files it deleted or moved away just
    /// before it stopped and that its store no longer has: its record was
    /// lost here ([`Replica::reconcile`]). Only that evidence counts: an
    /// envoy whose state was restored from an older copy must take its
    /// newer folders back from its peers.
    fn lost_own_folder(&self, f: &Signed<Folder>) -> bool {
        f.signer() == self.signing.public()
            && !self.store.is_folder(&f.body().name)
            && self
                .lost_folders
                .lock()
                .map(|l| l.contains(&f.body().name))
                .unwrap_or(false)
    }

    /// Under the change lock: make the folder `name` and those above it
    /// in the store, if missing; the folders made, top down. A file where
    /// one of them goes is moved to its conflict copy first: the folder
    /// keeps the path (`docs/folders.md`, "Kinds at one path").
    pub(super) fn make_folder_locked(&self, name: &Name) -> Result<Vec<Name>, Refusal> {
        let mut at = Some(name.clone());
        let mut chain = Vec::new();
        while let Some(f) = at {
            at = f.parent();
            chain.push(f);
        }
        for f in chain.iter().rev() {
            if self.store.contains(f) && !self.store.is_folder(f) {
                self.file_gives_way_locked(f)?;
            }
        }
        self.store.make_folders_locked(name).map_err(internal)
    }

    /// Under the change lock: the file at `name` moves to its conflict
    /// copy, so a folder can take the path.
    fn file_gives_way_locked(&self, name: &Name) -> Result<(), Refusal> {
        let cur = self.record(name).map_err(internal)?;
        let aside = match &cur {
            Some(c) => self.set_aside_locked(name, c)?,
            None => None,
        };
        let Some((copy, mut ops)) = aside else {
            return Err(Refusal::Bad(format!(
                "{}: a file without a record holds the folder's path",
                name.escaped()
            )));
        };
        ops.push(Op::DelVersion(name.clone()));
        self.meta.apply(&ops).map_err(internal)?;
        tracing::info!(
            "{} became a folder on another envoy: the file is kept as {}",
            name.escaped(),
            copy.escaped()
        );
        Ok(())
    }

    /// Whether a version of `name` with vector `vv` is deleted here: a
    /// tombstone covers it and no resurrect lifts that tombstone.
    pub fn is_deleted(&self, name: &Name, vv: &crate::VersionVector) -> bool {
        records::deleted_by(&self.tombstones(name), &self.resurrects(name), vv)
    }

    /// Every record of `table`, each in wire form (a table response).
    pub fn table_records(&self, table: Table) -> Vec<Vec<u8>> {
        let lists = |which| {
            self.meta
                .all_lists(which)
                .unwrap_or_default()
                .into_iter()
                .flat_map(|(_, list)| records_of(&list))
                .collect()
        };
        match table {
            Table::Tombstones => lists(List::Tombstones),
            Table::Resurrects => lists(List::Resurrects),
            Table::Folders => lists(List::Folders),
            Table::Leaves => self
                .meta
                .leaves()
                .unwrap_or_default()
                .into_iter()
                .map(|(_, r)| r)
                .collect(),
        }
    }

    /// The digest of `table` (as announced).
    pub fn table_digest(&self, table: Table) -> [u8; 16] {
        let rows = match table {
            Table::Tombstones => self.meta.all_lists(List::Tombstones),
            Table::Resurrects => self.meta.all_lists(List::Resurrects),
            Table::Folders => self.meta.all_lists(List::Folders),
            Table::Leaves => self.meta.leaves(),
        }
        .unwrap_or_default();
        records::table_digest(rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    /// How many records each table holds (for `status`).
    pub fn table_sizes(&self) -> [(Table, usize); 4] {
        Table::SERVED.map(|t| (t, self.table_records(t).len()))
    }

    /// Every `(stored name, record)` of the mesh's files.
    pub fn manifest(&self) -> Vec<(Name, Vec<u8>)> {
        let mut out = Vec::new();
        // A failed seal has no record; should one ever have, it stays out.
        let kept_out: std::collections::HashSet<Vec<u8>> = self
            .meta
            .states()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, s)| *s == State::Failed)
            .map(|(n, _)| n)
            .collect();
        for (name, rec, _) in self.meta.versions().unwrap_or_default() {
            if kept_out.contains(&name) {
                continue;
            }
            if let Ok(n) = Name::new(name) {
                out.push((n, rec));
            }
        }
        out
    }

    /// The manifest in wire form: a list of items, each the stored name and
    /// the record (both length-prefixed).
    pub fn manifest_bytes(&self) -> Vec<u8> {
        let items: Vec<Vec<u8>> = self
            .manifest()
            .into_iter()
            .map(|(n, rec)| {
                let mut e = Encoder::new();
                e.bytes(n.as_bytes());
                e.bytes(&rec);
                e.finish()
            })
            .collect();
        records::encode_list(items.iter().map(|v| v.as_slice()))
    }

    /// The digest of the file table and the folder table, as announced:
    /// the file table's alone while there are no folder records (what an
    /// envoy from before folders announces), else the digest of both.
    pub fn files_digest(&self) -> [u8; 16] {
        let m = self.manifest();
        let files = records::table_digest(m.iter().map(|(n, r)| (n.as_bytes(), r.as_slice())));
        let folders = self.meta.all_lists(List::Folders).unwrap_or_default();
        if folders.is_empty() {
            return files;
        }
        let folders = self.table_digest(Table::Folders);
        records::table_digest([(&b"files"[..], &files[..]), (b"folders", &folders[..])])
    }

    /// Check that a peer's record is signed by a member, for our user.
    pub(super) fn check_member_record(
        &self,
        what: &str,
        signer: &PublicKey,
        user: &WireName,
    ) -> Result<(), Refusal> {
        if self.members().by_key(signer).is_none() {
            return Err(Refusal::NotMember(format!(
                "the {what} is signed by {signer}, which is not a member of this circle"
            )));
        }
        if *user != self.user {
            return Err(Refusal::Bad(format!("the {what} is for user {user}")));
        }
        Ok(())
    }

    /// Apply a list of signed records of `table` held whole (a small list;
    /// a peer's body is streamed through [`Replica::apply_table_records`]
    /// instead). Every valid one is applied; the first refusal is
    /// returned, so a POST answers with its status (403 for a non-member's
    /// record, 400 for garbage).
    pub fn apply_table(&self, table: Table, body: &[u8]) -> Result<(), Refusal> {
        let items = records::decode_list(body, MAX_TABLE_ENTRIES)
            .map_err(|e| Refusal::Bad(format!("bad {} list: {e}", table.path())))?;
        self.apply_table_records(table, items, false)
    }

    /// Apply some records of `table` from a peer (each in wire form), in
    /// order: a piece of a table body that is read as it arrives. Each
    /// record is signed and checked on its own, so applying the valid ones
    /// of a body before the rest of it has arrived (or turned out
    /// malformed) is as safe as applying them at its end. Returns the first
    /// refusal; with `stop_at_refusal`, the records after it are not
    /// looked at (a POST, whose sender gets the answer), otherwise they
    /// are (a pull, where one bad entry must not stop the rest).
    pub fn apply_table_records<I: AsRef<[u8]>>(
        &self,
        table: Table,
        items: impl IntoIterator<Item = I>,
        stop_at_refusal: bool,
    ) -> Result<(), Refusal> {
        let mut first_err = None;
        for item in items {
            if let Err(e) = self.apply_table_record(table, item.as_ref()) {
                first_err.get_or_insert(e);
                if stop_at_refusal {
                    break;
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Apply one signed record of `table` from a peer.
    fn apply_table_record(&self, table: Table, item: &[u8]) -> Result<(), Refusal> {
        let bad =
            |e: lockbox_crypto::Error| Refusal::Bad(format!("bad record in {}: {e}", table.path()));
        match table {
            Table::Tombstones => Signed::<Tombstone>::from_bytes(item)
                .map_err(bad)
                .and_then(|t| self.apply_tombstone(&t)),
            Table::Resurrects => Signed::<Resurrect>::from_bytes(item)
                .map_err(bad)
                .and_then(|r| self.apply_resurrect(&r)),
            Table::Leaves => Signed::<Leave>::from_bytes(item)
                .map_err(bad)
                .and_then(|l| self.apply_leave(&l)),
            Table::Folders => Signed::<Folder>::from_bytes(item)
                .map_err(bad)
                .and_then(|f| self.apply_folder(&f)),
        }
        .map(|_| ())
    }

    /// Apply a tombstone from a peer: record it and remove the version it
    /// deletes, if held. Returns whether anything changed.
    pub fn apply_tombstone(&self, t: &Signed<Tombstone>) -> Result<bool, Refusal> {
        let name = t.body().name.clone();
        self.carries(&name)?;
        self.check_member_record(&format!("delete of {name}"), &t.signer(), &t.body().user)?;
        let _guard = self.store.change_lock();
        let old = self.tombstones(&name);
        let mut merged = old.clone();
        merged.push(t.clone());
        let merged = records::merge_antichain(merged);
        if merged == old {
            return Ok(false);
        }
        let mut ops = vec![Op::PutList(
            List::Tombstones,
            name.clone(),
            encode_records(&merged),
        )];
        let cur = self.record(&name).map_err(internal)?;
        let resurrects = self.resurrects(&name);
        let delete = cur
            .as_ref()
            .is_some_and(|c| records::deleted_by(&merged, &resurrects, &c.body().vv));
        let mut pruned = Vec::new();
        if delete {
            self.store.remove_locked(&name).map_err(internal)?;
            ops.push(Op::DelVersion(name.clone()));
        }
        // The folder versions of the path it covers go; the folder with
        // them, once nothing is left in it.
        let folders = self.folders(&name);
        let live: Vec<_> = folders
            .iter()
            .filter(|f| !records::deleted_by(&merged, &resurrects, &f.body().vv))
            .cloned()
            .collect();
        if live.len() != folders.len() {
            // An empty list is no list (so the digests of envoys agree).
            let list = if live.is_empty() {
                Vec::new()
            } else {
                encode_records(&live)
            };
            ops.push(Op::PutList(List::Folders, name.clone(), list));
        }
        self.meta.apply(&ops).map_err(internal)?;
        if live.is_empty() && self.store.is_folder(&name) && self.store.remove_folder_locked(&name)
        {
            tracing::info!(
                "folder {} was removed on envoy {}",
                name.escaped(),
                t.body().author.as_str().escaped()
            );
            pruned.push(name.clone());
        }
        if delete || pruned.len() == 1 {
            pruned.extend(
                self.store
                    .prune_folders_locked(&name, |f| self.folder_is_live(f)),
            );
        }
        // The delete of a conflict copy covers the version that lost its
        // name to make it: where that version is still held under the name
        // (its envoy never saw the winner), the name gives it up.
        let given_up = self.give_up_origin_locked(&name)?;
        drop(_guard);
        if let Some(n) = &given_up {
            self.remote_changed(n);
        }
        if delete {
            tracing::info!(
                "{} was deleted on envoy {}",
                name.escaped(),
                t.body().author.as_str().escaped()
            );
            self.remote_changed(&name);
        }
        for folder in &pruned {
            self.remote_changed(folder);
        }
        Ok(true)
    }

    /// Apply a resurrect from a peer: record it, so the tombstones it covers
    /// no longer gate the name. Returns whether anything changed.
    pub fn apply_resurrect(&self, r: &Signed<Resurrect>) -> Result<bool, Refusal> {
        let name = r.body().name.clone();
        self.carries(&name)?;
        self.check_member_record(&format!("re-add of {name}"), &r.signer(), &r.body().user)?;
        let _guard = self.store.change_lock();
        let old = self.resurrects(&name);
        let mut merged = old.clone();
        merged.push(r.clone());
        let merged = records::merge_antichain(merged);
        if merged == old {
            return Ok(false);
        }
        self.meta
            .apply(&[Op::PutList(
                List::Resurrects,
                name.clone(),
                encode_records(&merged),
            )])
            .map_err(internal)?;
        tracing::info!(
            "{} was re-added on envoy {}",
            name.escaped(),
            r.body().author.as_str().escaped()
        );
        Ok(true)
    }
}

/// The items of a stored list, in wire form.
pub(super) fn records_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    if bytes.is_empty() {
        return Vec::new();
    }
    records::decode_list(bytes, MAX_TABLE_ENTRIES)
        .map(|items| items.into_iter().map(<[u8]>::to_vec).collect())
        .unwrap_or_default()
}

/// The records in a list from meta.redb (unreadable entries are skipped; the
/// signatures were checked when the records came in).
pub(super) fn decode_records<T: Versioned>(bytes: &[u8]) -> Vec<Signed<T>> {
    records_of(bytes)
        .iter()
        .filter_map(|b| Signed::<T>::from_trusted_bytes(b).ok())
        .collect()
}

pub(super) fn encode_records<T: Versioned>(t: &[Signed<T>]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = t.iter().map(|t| t.to_bytes()).collect();
    records::encode_list(bytes.iter().map(|b| b.as_slice()))
}

/// Why a manifest from a peer does not decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The list of entries is malformed.
    #[error(transparent)]
    List(#[from] crate::Error),
    /// An entry, or the record in it, is malformed.
    #[error(transparent)]
    Entry(#[from] lockbox_crypto::Error),
    /// An entry names a file with an invalid name.
    #[error(transparent)]
    Name(#[from] lockbox_fs::Error),
}

/// Decode a manifest in wire form into `(stored name, record)` pairs.
pub fn decode_manifest(bytes: &[u8]) -> Result<Vec<(Name, Signed<FileVersion>)>, ManifestError> {
    let items = records::decode_list(bytes, MAX_TABLE_ENTRIES)?;
    items.into_iter().map(decode_manifest_entry).collect()
}

/// Decode one item of a manifest's list (a manifest read as a stream
/// yields them one at a time): the stored name and its signed record.
pub fn decode_manifest_entry(item: &[u8]) -> Result<(Name, Signed<FileVersion>), ManifestError> {
    let mut d = Decoder::new(item);
    let name = d.bytes(lockbox_fs::name::MAX_NAME_BYTES)?;
    let name = Name::new(name.to_vec())?;
    let rec = d.bytes(lockbox_crypto::sign::MAX_RECORD_BYTES)?;
    d.finish()?;
    let rec = Signed::<FileVersion>::from_bytes(rec)?;
    Ok((name, rec))
}
