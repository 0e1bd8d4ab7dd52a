//! Local versions: what the mount and the CLI change, told by the store's
//! journal ([`JournalLink`]), recorded as signed records — a
//! [`FileVersion`] per seal (**signed here**, `sign_version`), a
//! [`Tombstone`] per delete, a [`Resurrect`] per deliberate re-add — and
//! queued for fan-out (`reconcile`, beside it, brings the records in
//! line with the store after a restart). A local version's vector comes from
//! what its writer started from (`local_base`, `local_vector`), and where
//! it goes when a version arrived during the write is decided under the
//! change lock by the mesh's own conflict rule (`place_local`,
//! `place_rename`; what a writer could have seen: [`Sightings`]). It must
//! not take anything from peers.

use lockbox_fs::escape::Escape;
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Weak};

/// A poisoned lock is still usable: what it guards is a cache.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

use lockbox_crypto::digest::{HashingWriter, Sha256};
use lockbox_crypto::sign::Signed;
use lockbox_crypto::sign::{Decoder, Encoder, Record};
use lockbox_fs::meta::{List, LocalStat, Op};
use lockbox_fs::store::{release_held, Journal};
use lockbox_fs::{Base, Name, Placed, Sealed};

use super::tables::encode_records;
use super::{now_unix, version_ops, Outgoing, Refusal, Replica, ReplicaError};
use crate::records::{self, FileVersion, Folder, Resurrect, Tombstone};
use crate::version::{resolve, Resolution};
use crate::{VersionVector, WireName};

/// The store's journal: forwards to the replica (a weak link, since the
/// replica owns the store).
#[derive(Debug)]
pub(super) struct JournalLink(pub(super) Weak<Replica>);

impl Journal for JournalLink {
    fn changed(&self, name: &Name, sealed: Option<&Sealed>, stat: Option<LocalStat>) {
        if let Some(r) = self.0.upgrade() {
            r.local_changed(name, sealed, None, stat);
        }
    }

    fn removed(&self, name: &Name) {
        self.removed_held(name, &[]);
    }

    /// The bytes held at `held` go once the tombstone is durable (at once
    /// when there is nothing to record; on an error they stay for the next
    /// start's reconcile).
    fn removed_held(&self, name: &Name, held: &[PathBuf]) {
        let Some(r) = self.0.upgrade() else {
            return;
        };
        r.sightings.removed(name);
        match r.record(name) {
            Ok(Some(prev)) => r.local_removed_then(name, &prev, held.to_vec()),
            Ok(None) => held.iter().for_each(|h| release_held(h)),
            Err(e) => tracing::warn!("{e}"),
        }
    }

    fn base(&self, name: &Name) -> Base {
        match self.0.upgrade() {
            Some(r) => r.local_base(name),
            None => Base::Current,
        }
    }

    fn place(&self, name: &Name, base: &Base, sealed: &Sealed) -> Option<Placed> {
        self.0.upgrade()?.place_local(name, base, sealed)
    }

    fn placed(&self, at: &Name, sealed: &Sealed, version: &[u8], stat: Option<LocalStat>) {
        let Some(r) = self.0.upgrade() else {
            return;
        };
        match decode_version(version) {
            Some(v) => r.local_placed(at, v, stat),
            // Not reached (`place` encoded it): record it the old way.
            None => r.local_changed(at, Some(sealed), None, stat),
        }
    }

    fn place_rename(&self, from: &Name, to: &Name) -> Option<Placed> {
        self.0.upgrade()?.place_rename(from, to)
    }

    fn renamed_placed(&self, from: &Name, at: &Name, version: &[u8], stat: Option<LocalStat>) {
        let Some(r) = self.0.upgrade() else {
            return;
        };
        match decode_version(version) {
            Some(v) => r.local_renamed_placed(from, at, v, stat),
            None => self.renamed(from, at, stat),
        }
    }

    fn renamed(&self, from: &Name, to: &Name, stat: Option<LocalStat>) {
        if let Some(r) = self.0.upgrade() {
            let moved = r.record(from).ok().flatten();
            if let Some(prev) = &moved {
                r.local_removed(from, prev);
            }
            r.local_changed(to, None, moved.as_ref(), stat);
        }
    }

    fn folder_made(&self, name: &Name) {
        if let Some(r) = self.0.upgrade() {
            r.local_folder_made(name);
        }
    }

    fn folder_removed(&self, name: &Name) {
        if let Some(r) = self.0.upgrade() {
            r.local_folder_removed(name);
        }
    }
}

/// The vector of a local version of a name: what its writer started from
/// (`base`: the vector of the version current when it opened the name for
/// writing, empty if there was none) merged with the floor of the name's
/// tombstones, then one more for `me` — above any counter of `me`'s the
/// name's `current` version (the one held when it is recorded) or the
/// floor carry, so two versions of one envoy never share a vector. A
/// version that arrived during the write is not in `base`: the new vector
/// is then concurrent with it, and the conflict rule keeps both.
pub(super) fn local_vector(
    me: &WireName,
    base: &VersionVector,
    current: Option<&VersionVector>,
    floor: &VersionVector,
) -> Result<VersionVector, crate::Error> {
    let top = [Some(base), current, Some(floor)]
        .into_iter()
        .flatten()
        .map(|v| v.get(me.as_str()))
        .max()
        .unwrap_or(0);
    let mut vv = base.merge(floor).raised(me, top);
    vv.bump(me)?;
    Ok(vv)
}

/// The vector of the tombstone of a local delete of a version with vector
/// `v`: `v` itself, unless a resurrect of the name covers `v` — a version
/// that `lockbox resurrect` let back in, whose own vector is under the
/// delete the resurrect lifted. A tombstone of `v` would then be lifted by
/// that same resurrect on every envoy and delete nothing: the name came
/// back from the first peer that still held it. So the tombstone covers
/// those resurrects too and comes after them (one more for `me`). (On an
/// overflow of `me`'s counter, `v`: the old behaviour.)
pub(super) fn tombstone_vector(
    me: &WireName,
    v: &VersionVector,
    resurrects: &[Signed<Resurrect>],
) -> VersionVector {
    let lifting: Vec<&VersionVector> = resurrects
        .iter()
        .map(|r| &r.body().vv)
        .filter(|r| records::deletes(r, v))
        .collect();
    if lifting.is_empty() {
        return v.clone();
    }
    let mut vv = lifting.into_iter().fold(v.clone(), |a, r| a.merge(r));
    match vv.bump(me) {
        Ok(_) => vv,
        Err(_) => v.clone(),
    }
}

/// What the mesh keeps in memory to tell what a local writer could have
/// seen: each version that arrived from a peer is numbered, with the
/// vector its name held before it; each local version written through the
/// mount keeps the numbers current when its writer opened the name and
/// when it was sealed, until the name is renamed, removed or replaced by a
/// peer's version. Lost at a
/// restart (a rename then supersedes what its target holds, as before).
/// Bounded: past [`MAX_SIGHTED`] names it starts afresh.
#[derive(Debug, Default)]
pub(super) struct Sightings {
    /// How many versions arrived from peers since the start.
    count: std::sync::atomic::AtomicU64,
    /// Per name, its last arrivals: number, and the vector held before.
    arrived: Mutex<HashMap<Name, VecDeque<Arrival>>>,
    /// Per stored name of a local version: the number when its writer
    /// opened it, and the number when it was sealed (its writer closed
    /// it).
    opened: Mutex<HashMap<Name, Written>>,
}

/// A local version's write: the arrival numbers when its writer opened
/// the name and when the version was sealed.
#[derive(Debug, Clone, Copy)]
struct Written {
    opened: u64,
    sealed: u64,
}

/// A version that arrived from a peer: its number, and the vector its
/// name held before it (none if it held nothing).
type Arrival = (u64, Option<VersionVector>);

/// Names [`Sightings`] keeps before it starts afresh.
const MAX_SIGHTED: usize = 1 << 14;

/// Arrivals kept per name.
const ARRIVALS_KEPT: usize = 16;

impl Sightings {
    fn now(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A peer's version was put under `name`, which held `before`.
    pub(super) fn arrived(&self, name: &Name, before: Option<VersionVector>) {
        let n = self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut arrived = lock(&self.arrived);
        if arrived.len() >= MAX_SIGHTED && !arrived.contains_key(name) {
            arrived.clear();
        }
        let list = arrived.entry(name.clone()).or_default();
        if list.len() >= ARRIVALS_KEPT {
            list.pop_front();
        }
        list.push_back((n, before));
        drop(arrived);
        // The name no longer holds what a local writer wrote there.
        lock(&self.opened).remove(name);
    }

    /// What `name` held before the first version that arrived after
    /// `since`, if that one arrived by `until`: `None` if none arrived in
    /// between (or it is no longer known).
    fn held_at(&self, name: &Name, since: u64, until: u64) -> Option<Option<VersionVector>> {
        let arrived = lock(&self.arrived);
        let list = arrived.get(name)?;
        let first = list
            .iter()
            .find(|(n, _)| *n > since)
            .filter(|(n, _)| *n <= until)?;
        // If older arrivals were dropped, the first after `since` may be
        // gone too: only trust a list that reaches back to `since`.
        if list.len() == ARRIVALS_KEPT && list.front().is_some_and(|(n, _)| *n > since) {
            return None;
        }
        Some(first.1.clone())
    }

    /// A local version of `at` is sealed now; its writer opened the name
    /// at `since`.
    fn opened(&self, at: &Name, since: u64) {
        let sealed = self.now();
        let mut opened = lock(&self.opened);
        if opened.len() >= MAX_SIGHTED && !opened.contains_key(at) {
            opened.clear();
        }
        opened.insert(
            at.clone(),
            Written {
                opened: since,
                sealed,
            },
        );
    }

    fn written(&self, name: &Name) -> Option<Written> {
        lock(&self.opened).get(name).copied()
    }

    /// `from` was renamed over `to`: neither opening says anything any
    /// more. The writer's opening served the one rename that ended its
    /// save; carried along, it would take a later rename of the file (days
    /// later, after its user read what arrived) for one that could not
    /// have seen what arrived since.
    fn moved(&self, from: &Name, to: &Name) {
        let mut opened = lock(&self.opened);
        opened.remove(from);
        opened.remove(to);
    }

    fn removed(&self, name: &Name) {
        lock(&self.opened).remove(name);
    }
}

/// A base as [`Replica::local_base`] describes it: the arrival number now,
/// then the held version's vector (nothing if none).
fn encode_base(since: u64, vv: Option<&VersionVector>) -> Option<Vec<u8>> {
    let mut b = since.to_be_bytes().to_vec();
    if let Some(v) = vv {
        b.extend(v.encode().ok()?);
    }
    Some(b)
}

fn decode_base(b: &[u8]) -> Option<(u64, VersionVector)> {
    let (since, vv) = b.split_first_chunk::<8>()?;
    let vv = if vv.is_empty() {
        VersionVector::new()
    } else {
        VersionVector::decode(vv).ok()?
    };
    Some((u64::from_be_bytes(*since), vv))
}

/// The unsigned body of a local version, as [`Journal::place`] hands it
/// to the store and the store hands it back.
fn encode_version(v: &FileVersion) -> Vec<u8> {
    let mut e = Encoder::new();
    v.encode(&mut e);
    e.finish()
}

pub(super) fn decode_version(bytes: &[u8]) -> Option<FileVersion> {
    let mut d = Decoder::new(bytes);
    let v = FileVersion::decode(&mut d).ok()?;
    d.finish().ok()?;
    Some(v)
}

impl Replica {
    /// What a writer opening `name` now starts from: the vector of the
    /// version held (the journal delivered every change of it before).
    pub(super) fn local_base(&self, name: &Name) -> Base {
        let since = self.sightings.now();
        let encoded = match self.record(name) {
            Ok(held) => encode_base(since, held.as_ref().map(|r| &r.body().vv)),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        };
        encoded.map_or(Base::Current, Base::Seen)
    }

    /// Under the change lock, before a local seal of `name` that started
    /// from `base` is put in place: its version (vector from the base, see
    /// [`local_vector`]), and where it goes. When a version that arrived
    /// during the write is held under `name` and is concurrent with it,
    /// the conflict rule every envoy applies (`resolve`) decides: the new
    /// version goes to its conflict copy, or the held one is moved to its
    /// own first (and recorded there) and the new one takes the name.
    /// `None` (the change is recorded the old way) when nothing was
    /// captured or the name's file stays out of the mesh.
    pub(super) fn place_local(&self, name: &Name, base: &Base, sealed: &Sealed) -> Option<Placed> {
        if self.kept_out(name) {
            return None;
        }
        let (since, base_vv) = match base {
            Base::Current => return None,
            Base::Seen(b) => decode_base(b)?,
        };
        let current = match self.record(name) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{e}");
                return None;
            }
        };
        let floor = records::floor(&self.tombstones(name));
        let vv = local_vector(
            &self.envoy,
            &base_vv,
            current.as_ref().map(|c| &c.body().vv),
            &floor,
        )
        .ok()?;
        let v = FileVersion {
            user: self.user.clone(),
            name: name.clone(),
            vv: vv.clone(),
            author: self.envoy.clone(),
            sealed_unix: now_unix(),
            plaintext_len: sealed.plaintext_len,
            ciphertext_len: sealed.ciphertext_len,
            hash: sealed.hash,
            recipients: sealed_to(&sealed.envoys).unwrap_or_else(|| self.member_names()),
            reseal: false,
            executable: sealed.executable,
        };
        let under = self.place_against(name, &v, current.as_ref());
        self.sightings.opened(&under, since);
        // A next seal by the same writer comes after this one, and sees
        // nothing that arrives from now on.
        let next = encode_base(self.sightings.now(), Some(&vv)).map_or(Base::Current, Base::Seen);
        Some(Placed {
            under,
            version: encode_version(&v),
            next,
        })
    }

    /// Under the change lock: where local version `v` of `name` goes, given
    /// the version `current` held there, by the mesh's conflict rule: under
    /// its conflict copy if it loses; under `name` if it wins, the held
    /// version moved to its own copy first when the two are concurrent.
    fn place_against(
        &self,
        name: &Name,
        v: &FileVersion,
        current: Option<&Signed<FileVersion>>,
    ) -> Name {
        let Some(cur) = current else {
            return name.clone();
        };
        let (held, new) = (cur.body().candidate(), v.candidate());
        match resolve(&held, &new) {
            Resolution::Conflict { winner, .. } | Resolution::Supersedes { newer: winner, .. }
                if winner == &held =>
            {
                v.conflict_name().unwrap_or_else(|| name.clone())
            }
            Resolution::Conflict { .. } => {
                if let Err(e) = self.move_aside_locked(name, cur) {
                    tracing::warn!(
                        "cannot keep the version of {} that arrived during a write: {e}",
                        name.escaped()
                    );
                }
                name.clone()
            }
            _ => name.clone(),
        }
    }

    /// Under the change lock, before `from` is renamed over `to`: the
    /// moved version's record as `to`'s, and where it goes. It supersedes
    /// what `to` held when `from`'s writer opened it (or when `to`'s own
    /// local version was opened, if later); a version of `to` that arrived
    /// after that and before `from` was sealed is one it could not have
    /// seen, and the conflict rule places the two. `None` (the rename is
    /// recorded against what `to` holds, as before) when nothing arrived
    /// in between, or `from` holds no
    /// version written through the mount since the start (nor since it was
    /// last renamed or replaced by a peer's version).
    pub(super) fn place_rename(&self, from: &Name, to: &Name) -> Option<Placed> {
        let placed = self.place_rename_of(from, to);
        // Under the change lock: the opening served this rename only.
        let at = placed.as_ref().map_or(to, |p| &p.under);
        self.sightings.moved(from, at);
        placed
    }

    fn place_rename_of(&self, from: &Name, to: &Name) -> Option<Placed> {
        // What arrived at `to` while `from`'s writer had it open was not
        // seen by that writer — unless `to` holds a version written here
        // since, whose writer opened it later and started from it. What
        // arrived after `from` was closed, whoever renames it could have
        // seen.
        let written = self.sightings.written(from)?;
        let since = written
            .opened
            .max(self.sightings.written(to).map_or(0, |w| w.opened));
        let seen = self.sightings.held_at(to, since, written.sealed)?;
        if self.kept_out(from) || self.kept_out(to) || !self.store.contains(from) {
            return None;
        }
        // Only now (a version arrived at `to` since `from` was opened) are
        // the records of both names needed up to date.
        self.store.deliver_journal();
        let moved = self.record(from).ok()??;
        let current = self.record(to).ok()?;
        let floor = records::floor(&self.tombstones(to));
        let vv = local_vector(
            &self.envoy,
            &seen.unwrap_or_default(),
            current.as_ref().map(|c| &c.body().vv),
            &floor,
        )
        .ok()?;
        let m = moved.body();
        let v = FileVersion {
            user: self.user.clone(),
            name: to.clone(),
            vv,
            author: self.envoy.clone(),
            sealed_unix: now_unix(),
            plaintext_len: m.plaintext_len,
            ciphertext_len: m.ciphertext_len,
            hash: m.hash,
            recipients: m.recipients.clone(),
            reseal: false,
            executable: m.executable,
        };
        let under = self.place_against(to, &v, current.as_ref());
        Some(Placed {
            under,
            version: encode_version(&v),
            next: Base::Current,
        })
    }

    /// Record a rename placed by `place_rename`: `from`'s delete, and the
    /// moved version under `at`.
    pub(super) fn local_renamed_placed(
        &self,
        from: &Name,
        at: &Name,
        v: FileVersion,
        stat: Option<LocalStat>,
    ) {
        if let Ok(Some(prev)) = self.record(from) {
            self.local_removed(from, &prev);
        }
        self.local_placed(at, v, stat);
    }

    /// Under the change lock: move `cur`, the version held under `name`,
    /// to its conflict copy (it lost to a local version about to take the
    /// name) and record it there, as `install` does with a received one.
    fn move_aside_locked(&self, name: &Name, cur: &Signed<FileVersion>) -> Result<(), Refusal> {
        if let Some((copy, ops)) = self.set_aside_locked(name, cur)? {
            self.meta.apply(&ops).map_err(super::internal)?;
            self.later_remote_changed(&copy);
        }
        Ok(())
    }

    /// Tell the mount of a change of `name` from a thread of its own: the
    /// caller may be a FUSE request (an invalidation waits for those).
    fn later_remote_changed(&self, name: &Name) {
        let Some(me) = self.this.upgrade() else {
            return;
        };
        let name = name.clone();
        let spawned = std::thread::Builder::new()
            .name("invalidate".into())
            .spawn(move || me.remote_changed(&name));
        if let Err(e) = spawned {
            tracing::debug!("cannot tell the mount of a conflict copy: {e}");
        }
    }

    /// Sign and record a local version `place_local` placed under `at`.
    pub(super) fn local_placed(&self, at: &Name, v: FileVersion, stat: Option<LocalStat>) {
        if self.kept_out(at) {
            return;
        }
        let name = v.name.clone();
        if &name != at {
            // It lost to a version that arrived during the write: the mount
            // still shows what it wrote under the name.
            self.later_remote_changed(&name);
            self.later_remote_changed(at);
        }
        let recorded = (|| {
            let tombs = self.tombstones(&name);
            if self.record(&name)?.is_none()
                && records::has_live_tombstone(&tombs, &self.resurrects(&name))
            {
                self.record_resurrect(&name, &tombs)?;
            }
            let signed = self.sign_version(v);
            self.store.attach_record_current(at, &signed.to_bytes());
            self.meta.apply(&version_ops(at, &signed, stat))?;
            self.emit(Outgoing::Version(at.clone()));
            Ok::<_, ReplicaError>(())
        })();
        if let Err(e) = recorded {
            tracing::warn!("cannot record the new version of {}: {e}", at.escaped());
        }
    }

    pub(super) fn sign_version(&self, v: FileVersion) -> Signed<FileVersion> {
        Signed::sign(v, &self.signing)
    }

    /// Record a local change of `name`, told by the store's journal (in
    /// the order of the changes, possibly after the file moved on; see
    /// `lockbox_fs::journal`). `moved` is the record of the version renamed
    /// here, if any; `stat` the file's stat right after the change.
    pub(super) fn local_changed(
        &self,
        name: &Name,
        sealed: Option<&Sealed>,
        moved: Option<&Signed<FileVersion>>,
        stat: Option<LocalStat>,
    ) {
        // A failed seal (recorded so by the store, before the journal hears
        // of it) stays out of the mesh, whatever its name.
        if self.kept_out(name) {
            return;
        }
        let mut stat = stat;
        if sealed.is_none() && moved.is_none() {
            // Only the file itself says what it holds, and it may have
            // changed since (a later change queued behind this one, or a
            // new mtime): describe it as it is now, with its stat of now.
            // Gone: a later change (queued) moved or removed it.
            match LocalStat::of(&self.store.current_path(name)) {
                Ok(now) => stat = Some(now),
                Err(_) => {
                    tracing::debug!("{} was gone before its change was recorded", name.escaped());
                    return;
                }
            }
        }
        if let Err(e) = self.record_local(name, sealed, moved, None, stat) {
            tracing::warn!("cannot record the new version of {}: {e}", name.escaped());
        }
    }

    /// Sign and store the record of the local version in the store as
    /// `name`, whose stat is `stat`. `reseal_of`: the record this version
    /// re-encrypts. With neither `sealed` nor `moved`, the file is read to
    /// describe it.
    pub(super) fn record_local(
        &self,
        name: &Name,
        sealed: Option<&Sealed>,
        moved: Option<&Signed<FileVersion>>,
        reseal_of: Option<&FileVersion>,
        stat: Option<LocalStat>,
    ) -> Result<Signed<FileVersion>, ReplicaError> {
        let (plaintext_len, ciphertext_len, hash, executable) = match (sealed, moved) {
            (Some(s), _) => (s.plaintext_len, s.ciphertext_len, s.hash, s.executable),
            (None, Some(m)) => (
                m.body().plaintext_len,
                m.body().ciphertext_len,
                m.body().hash,
                m.body().executable,
            ),
            (None, None) => {
                let path = self.store.current_path(name);
                let executable = self.store.executable(name);
                match self.unchanged_content(name, &path) {
                    // A chmod: the bytes are the recorded ones, unread.
                    Some(v) => (v.plaintext_len, v.ciphertext_len, v.hash, executable),
                    None => {
                        let (plain, len, hash) = describe_file(&path)?;
                        (plain, len, hash, executable)
                    }
                }
            }
        };
        let recipients = match (moved, sealed) {
            (Some(m), None) => m.body().recipients.clone(),
            (_, Some(s)) => sealed_to(&s.envoys).unwrap_or_else(|| self.member_names()),
            _ => self.member_names(),
        };
        let signed = if let Some(orig) = reseal_of {
            self.sign_version(FileVersion {
                plaintext_len,
                ciphertext_len,
                hash,
                recipients,
                reseal: true,
                ..orig.clone()
            })
        } else {
            let prev = self.record(name).ok().flatten();
            let tombs = self.tombstones(name);
            if prev.is_none() && records::has_live_tombstone(&tombs, &self.resurrects(name)) {
                // A deliberate re-add of a deleted name: lift the delete
                // everywhere, then seal a version that comes after it.
                self.record_resurrect(name, &tombs)?;
            }
            let mut vv = prev.map(|p| p.body().vv.clone()).unwrap_or_default();
            vv = vv.merge(&records::floor(&tombs));
            vv.bump(&self.envoy)?;
            self.sign_version(FileVersion {
                user: self.user.clone(),
                name: name.clone(),
                vv,
                author: self.envoy.clone(),
                sealed_unix: now_unix(),
                plaintext_len,
                ciphertext_len,
                hash,
                recipients,
                reseal: false,
                executable,
            })
        };
        // With the bytes before anywhere else: killed before the record is
        // durable (and after it was pushed), the next start finds this very
        // record on the file instead of signing the version again.
        self.store.attach_record_current(name, &signed.to_bytes());
        self.meta.apply(&version_ops(name, &signed, stat))?;
        self.emit(Outgoing::Version(name.clone()));
        Ok(signed)
    }

    /// The record of `name` when the file at `path` still has the stat
    /// (inode, size, modification time) recorded with it: its bytes are
    /// that version's, and need not be read to be described again (a
    /// `chmod` of a large file would read all of it).
    fn unchanged_content(&self, name: &Name, path: &Path) -> Option<FileVersion> {
        let (bytes, Some(stat)) = self.meta.version(name).ok()?? else {
            return None;
        };
        if LocalStat::of(path).ok()? != stat {
            return None;
        }
        Signed::<FileVersion>::from_trusted_bytes(&bytes)
            .ok()
            .map(|r| r.body().clone())
    }

    /// Record the local delete of `name`, whose version was `prev` (told by
    /// the store's journal, in order with every other local change).
    pub(super) fn local_removed(&self, name: &Name, prev: &Signed<FileVersion>) {
        self.local_removed_then(name, prev, Vec::new());
    }

    /// [`Replica::local_removed`]; the bytes held at `held` go once the
    /// tombstone is durable. The name's record goes if it is `prev` or the
    /// delete covers it (a restart signs a lost delete late, when the name
    /// may hold a newer version: see `reconcile`).
    pub(super) fn local_removed_then(
        &self,
        name: &Name,
        prev: &Signed<FileVersion>,
        held: Vec<PathBuf>,
    ) {
        let resurrects = self.resurrects(name);
        let (t, tombs) = self.sign_tombstone(name, &prev.body().vv, &resurrects);
        let mut ops = vec![Op::PutList(
            List::Tombstones,
            name.clone(),
            encode_records(&tombs),
        )];
        let current = self.record(name).ok().flatten();
        if current.is_some_and(|c| {
            c.to_bytes() == prev.to_bytes()
                || records::deleted_by(&tombs, &resurrects, &c.body().vv)
        }) {
            ops.push(Op::DelVersion(name.clone()));
        }
        let result = if held.is_empty() {
            self.meta.apply(&ops)
        } else {
            self.meta
                .apply_then(&ops, move || held.iter().for_each(|h| release_held(h)))
        };
        match result {
            Ok(()) => self.emit(Outgoing::Tombstone(t)),
            Err(e) => tracing::warn!("cannot record the delete of {}: {e}", name.escaped()),
        }
    }

    /// Sign a tombstone of `name` deleting what has vector `vv` (see
    /// [`tombstone_vector`]), and return it with the name's tombstones
    /// merged with it.
    pub(super) fn sign_tombstone(
        &self,
        name: &Name,
        vv: &VersionVector,
        resurrects: &[Signed<Resurrect>],
    ) -> (Signed<Tombstone>, Vec<Signed<Tombstone>>) {
        let t = Signed::sign(
            Tombstone {
                user: self.user.clone(),
                name: name.clone(),
                vv: tombstone_vector(&self.envoy, vv, resurrects),
                author: self.envoy.clone(),
                deleted_unix: now_unix(),
            },
            &self.signing,
        );
        let mut tombs = self.tombstones(name);
        tombs.push(t.clone());
        (t, records::merge_antichain(tombs))
    }

    /// Record the local making of the folder `name`: a folder version
    /// after everything its path held (tombstones, folder versions, a
    /// file's version), signed and sent.
    pub(super) fn local_folder_made(&self, name: &Name) {
        let mut held = self.folders(name);
        let floor = records::floor(&self.tombstones(name))
            .merge(&records::floor(&held))
            .merge(
                &self
                    .record(name)
                    .ok()
                    .flatten()
                    .map(|r| r.body().vv.clone())
                    .unwrap_or_default(),
            );
        let vv = match local_vector(&self.envoy, &VersionVector::new(), None, &floor) {
            Ok(vv) => vv,
            Err(e) => {
                tracing::warn!("cannot record the folder {}: {e}", name.escaped());
                return;
            }
        };
        let f = Signed::sign(
            Folder {
                user: self.user.clone(),
                name: name.clone(),
                vv,
                author: self.envoy.clone(),
                made_unix: now_unix(),
            },
            &self.signing,
        );
        held.push(f.clone());
        let held = records::merge_antichain(held);
        match self.meta.apply(&[Op::PutList(
            List::Folders,
            name.clone(),
            encode_records(&held),
        )]) {
            Ok(()) => self.emit(Outgoing::Folder(f)),
            Err(e) => tracing::warn!("cannot record the folder {}: {e}", name.escaped()),
        }
    }

    /// Record the local removal of the folder `name`: a tombstone of its
    /// path covering the folder versions held, signed and sent.
    pub(super) fn local_folder_removed(&self, name: &Name) {
        let held = self.folders(name);
        if held.is_empty() {
            return;
        }
        let resurrects = self.resurrects(name);
        let (t, tombs) = self.sign_tombstone(name, &records::floor(&held), &resurrects);
        let ops = [
            Op::PutList(List::Tombstones, name.clone(), encode_records(&tombs)),
            Op::PutList(List::Folders, name.clone(), Vec::new()),
        ];
        match self.meta.apply(&ops) {
            Ok(()) => self.emit(Outgoing::Tombstone(t)),
            Err(e) => tracing::warn!("cannot record the removal of {}: {e}", name.escaped()),
        }
    }

    /// Sign, store and queue a resurrect covering `tombs` (under the change
    /// lock).
    pub(super) fn record_resurrect(
        &self,
        name: &Name,
        tombs: &[Signed<Tombstone>],
    ) -> Result<Signed<Resurrect>, ReplicaError> {
        let r = Signed::sign(
            Resurrect {
                user: self.user.clone(),
                name: name.clone(),
                vv: records::floor(tombs),
                author: self.envoy.clone(),
                resurrected_unix: now_unix(),
            },
            &self.signing,
        );
        let mut all = self.resurrects(name);
        all.push(r.clone());
        let all = records::merge_antichain(all);
        self.meta.apply(&[Op::PutList(
            List::Resurrects,
            name.clone(),
            encode_records(&all),
        )])?;
        tracing::debug!(
            "{} re-added: its delete is lifted on every envoy",
            name.escaped()
        );
        self.emit(Outgoing::Resurrect(r.clone()));
        Ok(r)
    }

    /// `lockbox resurrect NAME`: lift the delete of `name` on every envoy,
    /// so a copy some envoy still holds may come back. Errors when `name` is
    /// not deleted.
    pub fn resurrect(&self, name: &Name) -> Result<Signed<Resurrect>, ReplicaError> {
        let _guard = self.store.change_lock();
        let tombs = self.tombstones(name);
        if !records::has_live_tombstone(&tombs, &self.resurrects(name)) {
            return Err(ReplicaError::NotDeleted(name.clone()));
        }
        self.record_resurrect(name, &tombs)
    }
}

/// The envoys a seal named, sorted as the members are; `None` if it named
/// none or one that cannot be a name (the members are recorded then).
pub(super) fn sealed_to(envoys: &[String]) -> Option<Vec<WireName>> {
    if envoys.is_empty() {
        return None;
    }
    let mut names: Vec<WireName> = envoys
        .iter()
        .map(|e| WireName::new(e.clone()).ok())
        .collect::<Option<_>>()?;
    names.sort();
    names.dedup();
    Some(names)
}

/// Length of the plaintext and ciphertext, and the ciphertext hash, of a
/// store file (read through once).
pub(super) fn describe_file(path: &Path) -> Result<(u64, u64, Sha256), ReplicaError> {
    let io = |source| ReplicaError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let not_sealed = |source| ReplicaError::NotSealed {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::File::open(path).map_err(io)?;
    let header = lockbox_crypto::seal::read_header(&mut f).map_err(not_sealed)?;
    let len = f.metadata().map_err(io)?.len();
    let plain = lockbox_crypto::seal::plaintext_len(header.header_len, len).map_err(not_sealed)?;
    let mut f = fs::File::open(path).map_err(io)?;
    let mut w = HashingWriter::new(std::io::sink());
    std::io::copy(&mut f, &mut w).map_err(io)?;
    let (_, hash, n) = w.finish();
    Ok((plain, n, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Causality;

    fn wn(s: &str) -> WireName {
        WireName::new(s).unwrap()
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries
            .iter()
            .fold(VersionVector::new(), |v, (e, n)| v.raised(&wn(e), *n))
    }

    #[test]
    fn a_local_vector_comes_from_the_base_not_from_what_arrived_since() {
        let a = wn("alpha");
        let none = VersionVector::new();
        // A new name: the first version of alpha's.
        assert_eq!(
            local_vector(&a, &none, None, &none).unwrap(),
            vv(&[("alpha", 1)])
        );
        // Nothing arrived during the write: it supersedes what it replaced.
        let base = vv(&[("alpha", 1), ("bravo", 1)]);
        let got = local_vector(&a, &base, Some(&base), &none).unwrap();
        assert_eq!(got, vv(&[("alpha", 2), ("bravo", 1)]));
        assert_eq!(got.compare(&base), Causality::After);
        // bravo's version arrived during the write: concurrent with it, so
        // the conflict rule keeps both (it used to be {alpha:2, bravo:2}).
        let arrived = vv(&[("alpha", 1), ("bravo", 2)]);
        let got = local_vector(&a, &base, Some(&arrived), &none).unwrap();
        assert_eq!(got, vv(&[("alpha", 2), ("bravo", 1)]));
        assert_eq!(got.compare(&arrived), Causality::Concurrent);
        // A new name bravo created meanwhile: concurrent too.
        let fresh = vv(&[("bravo", 1)]);
        let got = local_vector(&a, &none, Some(&fresh), &none).unwrap();
        assert_eq!(got.compare(&fresh), Causality::Concurrent);
    }

    #[test]
    fn a_local_vector_never_repeats_an_own_counter_and_follows_deletes() {
        let a = wn("alpha");
        let none = VersionVector::new();
        // The held version carries a later counter of alpha's than the
        // base (alpha's own version, seen by bravo, came back): the new one
        // counts past it.
        let base = vv(&[("alpha", 1)]);
        let held = vv(&[("alpha", 3), ("bravo", 1)]);
        let got = local_vector(&a, &base, Some(&held), &none).unwrap();
        assert_eq!(got.get("alpha"), 4);
        assert_eq!(got.get("bravo"), 0, "bravo's version was not seen");
        // A re-add after a delete comes after the delete.
        let floor = vv(&[("alpha", 5), ("charlie", 2)]);
        let got = local_vector(&a, &none, None, &floor).unwrap();
        assert_eq!(got, vv(&[("alpha", 6), ("charlie", 2)]));
        assert_eq!(got.compare(&floor), Causality::After);
    }
}
