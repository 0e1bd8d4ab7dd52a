//! The store: `~/.lockbox/store/`, one age file per lockbox file, mode 0600
//! (0700 when the file is executable).
//!
//! Every write is atomic: the ciphertext goes to a temp file in
//! `~/.lockbox/tmp/` (same file system), is made durable with `fsync`, is
//! renamed over the old version, and the store directory is synced. After a
//! crash at any instant a name holds its old or its new complete ciphertext,
//! never a torn one. Plaintext is never written here by lockbox: it streams
//! from the caller's reader straight into the age sealer.
//!
//! This file holds the [`Store`] type, opening it, the change lock and the
//! journal hand-off ([`Pending`]), staging and installing temp files, and
//! the reads, renames and removes of names. One job per file beside it:
//!
//! - `seal`: the sealing pipeline ([`Seal`], [`SealStream`], [`seal_into`],
//!   the hashing and tagging sink, [`pump`]).
//! - `waiting`: grouped syncs, the seals that wait in their temp files for
//!   a round, and the recovery of completed seals a stopped agent left
//!   ([`Leftovers`]).
//! - `tags`: the block tags kept for store files in `~/.lockbox/tags/`.
//! - `mode`: the owner's execute bit, the one mode bit a file keeps
//!   ([`SealAttrs`], [`Store::set_executable`]).
//! - `held`: deleted bytes held in `~/.lockbox/removed/` until the delete
//!   is on record, and the name a renamed file came from.
//! - `sweep`: sealing plaintext found in the store or in the bare mount
//!   folder, and setting aside (as failed) what does not seal.
//!
//! A file's state (failed, conflict copy) is what `meta.redb`'s `states`
//! table records for its name ([`Store::with_states`]), never what the name
//! looks like: names are the user's. The store records the failed state
//! itself and forgets any state of a name whose file it replaces, renames
//! or removes; the replica records conflict copies with their records.
//! - `tests`: the unit tests.
//!
//! Nothing here knows FUSE (that is [`crate::fuse`]) or what the mesh
//! records (that is the [`Journal`]'s side).

use crate::escape::Escape;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use lockbox_crypto::seal::tags::TagKey;
use lockbox_crypto::share::SharePool;
use lockbox_crypto::AgeRecipient;

use crate::durable::ensure_private_dir;
use crate::grouped::GroupedSync;
use crate::journal::{Event, Queue};
use crate::meta::{LocalStat, Meta, Op, State, WeakMeta};
use crate::name::{Name, MAX_DEPTH};
use crate::sealed::{Base, Placed, Sealed};
use crate::{lock, Error};

mod held;
mod mode;
mod seal;
mod sweep;
mod tags;
mod tree;
mod waiting;

pub use crate::journal::Journal;
pub use held::{moved_from_at, release_held, set_moved_from};
pub use mode::{file_mode, is_executable, SealAttrs, EXECUTABLE_FILE_MODE, FILE_MODE};
pub use seal::{pump, seal_into, Seal, SealStream};
pub use tree::{walk, Walk};
pub use waiting::Leftovers;
use waiting::Waiting;

/// What the store says a file is (see `docs/design.md`, "The sweep and file
/// states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// An age file sealed to the circle.
    Ciphertext,
    /// Not (yet) an age file: found in the store or the bare mount folder.
    Plaintext,
    /// Recorded as a failed seal: a plaintext the sweep could not seal,
    /// kept out of the mesh.
    Failed,
    /// Recorded as a conflict copy, and sealed: the losing side of a
    /// concurrent edit.
    Conflict,
}

/// One file of the store as `list` and `status` show it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file's name.
    pub name: Name,
    /// Its state.
    pub state: FileState,
    /// Plaintext size for an age file whose header parses, else bytes on disk.
    pub size: u64,
    /// Bytes on disk.
    pub stored_size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Whether the bytes on disk start with the age magic.
    pub is_age: bool,
}

/// Who a file is sealed to: the age recipients and the envoys they belong
/// to, read together from one snapshot. The envoys go into the version's
/// record, so a member change during a seal shows as drift and the file is
/// re-encrypted; naming the members at record time instead would hide a
/// departed member's key in a file sealed just before it left.
#[derive(Debug, Clone, Default)]
pub struct SealTo {
    /// The age recipients.
    pub keys: Vec<AgeRecipient>,
    /// Their envoys' names (empty when not known: the record then names the
    /// members at the time it is written).
    pub envoys: Vec<String>,
    /// This envoy's block-tag key, when unlocked: a seal then also writes
    /// the tags of its blocks (`tags/<name>`), so small reads of a large
    /// file decrypt 4 KiB blocks instead of 64 KiB chunks.
    pub tags: Option<Arc<TagKey>>,
}

impl SealTo {
    /// Recipients whose envoys are not known (tests, tools).
    pub fn keys(keys: Vec<AgeRecipient>) -> SealTo {
        SealTo {
            keys,
            envoys: Vec::new(),
            tags: None,
        }
    }
}

/// What a sweep did (see `docs/design.md`, "The sweep and file states").
#[derive(Debug, Default, Clone)]
pub struct SweepReport {
    /// Plaintext files now sealed.
    pub sealed: Vec<Name>,
    /// Plaintext files left alone because they exceed the size limit.
    pub too_large: Vec<Name>,
    /// Files that failed to seal, with the name they were moved to and why.
    pub failed: Vec<(Name, Name, String)>,
}

/// The ciphertext store of one envoy.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    tmp: PathBuf,
    /// Deleted bytes held until their delete is on record (`held`).
    held: PathBuf,
    /// Whether a file moved into `held` since its last sync.
    held_dirty: Arc<std::sync::atomic::AtomicBool>,
    /// Block tags of the store files (see the module doc).
    tags: PathBuf,
    /// The names that have a file in `tags`, read from the folder at open
    /// and kept in step by this store's changes, so that a rename or a
    /// remove of a name without tags (every file of one chunk, most files)
    /// costs no failing `rename` or `unlink`. A tags file this set misses
    /// (written by another process) is at worst left behind, and is then
    /// told apart by its binding like any stale index.
    tagged: Arc<Mutex<HashSet<Name>>>,
    /// Where every change is queued for the journal, under `changes` (see
    /// [`crate::journal`]).
    journal: Option<Arc<Queue>>,
    /// Serialises the last step of every change of a name (rename or remove
    /// into the store, and the journal entry for it), so the record of a
    /// version and the file it describes move together.
    changes: Arc<Mutex<()>>,
    /// When set, seals through the mount wait in their temp files and
    /// renames into the store folder are made durable by background rounds
    /// within a bounded window, instead of syncs per operation (see
    /// [`Store::with_grouped_syncs`]).
    grouped: Option<Arc<GroupedSync>>,
    /// The seals waiting for the next round (grouped mode only).
    waiting: Option<Arc<Waiting>>,
    /// Its window, when grouped.
    window: Option<std::time::Duration>,
    /// X25519 shares computed ahead for the seals (the agent's; see
    /// [`Store::with_share_pool`]).
    shares: Option<Arc<SharePool>>,
    /// Where the files' states are recorded (`meta.redb`), while its owner
    /// keeps it open ([`Store::with_states`]).
    meta: WeakMeta,
    /// Whether names in folders are listed ([`Store::with_folders`]).
    folders: bool,
}

/// A complete, durable file in the store's temp folder, not yet in the
/// store; removed when dropped unless [`Store::commit_staged`] took it.
#[derive(Debug)]
pub struct StagedFile {
    path: PathBuf,
}

/// The extended attribute in which a file received from a peer carries
/// its version record into the store (see [`StagedFile::attach_record`]).
const RECORD_XATTR: &str = "user.lockbox.record";

/// The extended attribute in which a local seal carries the unsigned
/// version the journal placed it as ([`Journal::place`]) into the store,
/// before it is put in place (see [`StagedFile::attach_placed`]).
const PLACED_XATTR: &str = "user.lockbox.placed";

/// The largest record [`Store::attached_record`] reads back.
const MAX_ATTACHED_RECORD: usize = 64 * 1024;

impl StagedFile {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Attach `record` (a signed version record) to the file before it is
    /// put in place, so the record reaches the store with the bytes it
    /// describes: a crash after the rename and before the record is made
    /// durable leaves a file whose record [`Store::attached_record`] gives
    /// back. Best effort: without extended attributes it does nothing.
    pub fn attach_record(&self, record: &[u8]) {
        let _ = rustix::fs::setxattr(
            &self.path,
            RECORD_XATTR,
            record,
            rustix::fs::XattrFlags::empty(),
        );
    }

    /// Attach `version`, the unsigned version the journal placed this seal
    /// as ([`crate::Placed::version`]), before it is put in place: killed before
    /// that version was signed, or before its record was durable, the next
    /// start signs exactly it ([`Store::attached_placed`]) — its vector
    /// from what its writer started from — instead of a new version
    /// derived from whatever record survived. Best effort, like
    /// [`StagedFile::attach_record`].
    fn attach_placed(&self, version: &[u8]) {
        attach_placed_to(&self.path, version);
    }

    /// [`StagedFile::attach_placed`] through `file`, the staged file open:
    /// no walk of its path.
    fn attach_placed_via(file: &File, version: &[u8]) {
        let _ = rustix::fs::fsetxattr(file, PLACED_XATTR, version, rustix::fs::XattrFlags::empty());
    }
}

/// The record attached to the file at `path` (a store file, or held
/// bytes; see [`Store::attached_record`]), unverified.
pub fn attached_record_at(path: &Path) -> Option<Vec<u8>> {
    attached_at(path, RECORD_XATTR)
}

fn attached_at(path: &Path, attr: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_ATTACHED_RECORD];
    let n = rustix::fs::getxattr(path, attr, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Attach a placed version to the file at `path` (best effort).
fn attach_placed_to(path: &Path, version: &[u8]) {
    let _ = rustix::fs::setxattr(path, PLACED_XATTR, version, rustix::fs::XattrFlags::empty());
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A change that is on disk and whose journal entry is still to be
/// queued: it is queued when this is dropped, and until then the store's
/// change lock stays held, so no other change comes between a change and
/// its place in the queue. The mount drops it after it has answered the
/// kernel; the journal's thread signs and records it after that (see
/// [`crate::journal`]).
#[must_use = "dropping it queues the journal entry at once"]
pub struct Pending<'a> {
    journal: Option<&'a Arc<Queue>>,
    event: Option<Event>,
    _guard: std::sync::MutexGuard<'a, ()>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // Runs before the guard (a field) is released.
        match (self.journal, self.event.take()) {
            (Some(q), Some(event)) => q.push(event),
            // No records to wait for.
            (None, Some(Event::Removed(_, held))) => held.iter().for_each(|h| release_held(h)),
            _ => {}
        }
    }
}

impl std::fmt::Debug for Pending<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (creating if needed) the store under `state_dir` (`~/.lockbox`).
    pub fn open(state_dir: &Path) -> Result<Store, Error> {
        let store = Store {
            dir: state_dir.join("store"),
            tmp: state_dir.join("tmp"),
            held: state_dir.join("removed"),
            held_dirty: Arc::default(),
            tags: state_dir.join("tags"),
            tagged: Arc::default(),
            journal: None,
            changes: Arc::new(Mutex::new(())),
            grouped: None,
            waiting: None,
            window: None,
            shares: None,
            meta: WeakMeta::default(),
            folders: false,
        };
        for d in [&store.dir, &store.tmp, &store.held, &store.tags] {
            ensure_private_dir(d)?;
        }
        *lock(&store.tagged) = tree::walk(&store.tags, MAX_DEPTH)?
            .files
            .into_iter()
            .collect();
        Ok(store)
    }

    /// Seal with X25519 shares computed ahead on a thread of their own
    /// (`lockbox_crypto::share`): the key agreement per recipient leaves
    /// the close path. For the long-lived agent; the CLI seals inline.
    pub fn with_share_pool(mut self) -> Store {
        match SharePool::start() {
            Ok(p) => self.shares = Some(p),
            Err(e) => tracing::warn!("cannot start the share thread ({e}): sealing inline"),
        }
        self
    }

    /// Read and record the files' states in `meta` (see the module doc)
    /// for as long as its owner keeps it open. Without it every file is an
    /// ordinary one and the sweep cannot set a file aside as failed.
    pub fn with_states(mut self, meta: &Meta) -> Store {
        self.meta = meta.downgrade();
        self
    }

    /// The recorded state of `name`'s file, if any.
    pub fn state(&self, name: &Name) -> Result<Option<State>, Error> {
        match self.meta.upgrade() {
            Some(m) => m.state(name),
            None => Ok(None),
        }
    }

    /// Record `name`'s state; the caller holds the change lock. Errors
    /// when no metadata is open.
    pub(super) fn set_state_locked(&self, name: &Name, state: State) -> Result<(), Error> {
        let meta = self.meta.upgrade().ok_or_else(|| {
            Error::Meta("the metadata database is not open: cannot record a file's state".into())
        })?;
        meta.apply(&[Op::SetState(name.clone(), Some(state))])
    }

    /// Forget the recorded state of each of `names`, whose files are being
    /// replaced, renamed or removed; the caller holds the change lock.
    fn forget_states_locked(&self, names: &[&Name]) {
        let Some(meta) = self.meta.upgrade() else {
            return;
        };
        for name in names {
            let forgot = match meta.state(name) {
                Ok(None) => Ok(()),
                Ok(Some(_)) => meta.apply(&[Op::SetState((*name).clone(), None)]),
                Err(e) => Err(e),
            };
            if let Err(e) = forgot {
                tracing::warn!(
                    "cannot forget the recorded state of {}: {e}",
                    name.escaped()
                );
            }
        }
    }

    /// Each recorded state of the files `moved` (old name, new name) goes
    /// to its new name, in one batch; the caller holds the change lock.
    pub(super) fn move_states_locked(&self, moved: &[(Name, Name)]) {
        let Some(meta) = self.meta.upgrade() else {
            return;
        };
        let mut ops = Vec::new();
        for (old, new) in moved {
            match (meta.state(old), meta.state(new)) {
                (Ok(None), Ok(None)) => {}
                (Ok(state), Ok(_)) => {
                    ops.push(Op::SetState(old.clone(), None));
                    ops.push(Op::SetState(new.clone(), state));
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("cannot move the recorded state of {}: {e}", old.escaped())
                }
            }
        }
        if ops.is_empty() {
            return;
        }
        if let Err(e) = meta.apply(&ops) {
            tracing::warn!("cannot move the recorded states of a folder's files: {e}");
        }
    }

    /// The pool of X25519 shares, if this store has one.
    pub fn shares(&self) -> Option<&SharePool> {
        self.shares.as_deref()
    }

    /// Tell `journal` of every change from now on, in order, from a
    /// thread of its own (see [`crate::journal`]).
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Store {
        self.journal = Some(Queue::start(journal));
        self
    }

    /// Take the change lock: while held, no name of the store changes
    /// except through the holder (who uses the `*_locked` methods). Every
    /// change queued for the journal before is delivered first, so the
    /// holder reads records that are up to date.
    pub fn change_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        let guard = self.lock_changes();
        self.deliver_journal();
        guard
    }

    /// The change lock, without waiting for the journal (the store's own
    /// changes, which only queue their events).
    fn lock_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.changes)
    }

    /// Deliver every change queued for the journal, on this thread; when
    /// it returns, the journal has been told of every change made before
    /// the call. The agent calls it before its final write-back.
    pub fn deliver_journal(&self) {
        if let Some(q) = &self.journal {
            q.deliver();
        }
    }

    /// What a writer that opens `name` for writing now starts from (see
    /// [`Base`]): the journal's description of the version current for
    /// `name`, once every change of it queued before was recorded.
    /// [`Base::Current`] without a journal.
    pub fn base_of(&self, name: &Name) -> Base {
        let Some(q) = &self.journal else {
            return Base::Current;
        };
        let _guard = self.lock_changes();
        if q.touches(name) {
            q.deliver();
        }
        q.journal().base(name)
    }

    /// Under the change lock: where a local seal of `name` that started
    /// from `base` goes ([`Journal::place`]); `None`: under `name`, as a
    /// change the journal records against the version current then.
    pub(super) fn place_locked(&self, name: &Name, base: &Base, sealed: &Sealed) -> Option<Placed> {
        let q = self.journal.as_ref()?;
        if *base == Base::Current {
            return None;
        }
        if q.touches(name) {
            q.deliver();
        }
        q.journal().place(name, base, sealed)
    }

    /// Write a complete file into the temp folder with `fill`, made durable;
    /// it enters the store only through [`Store::commit_staged`].
    pub fn stage<T>(
        &self,
        fill: impl FnOnce(&mut File) -> Result<T, Error>,
    ) -> Result<(StagedFile, T), Error> {
        self.stage_with(fill, true)
    }

    /// [`Store::stage`], not yet durable: the caller makes it so with
    /// [`Store::sync_staged`] before it commits it. For several files
    /// received together, which one sync then covers.
    pub fn stage_unsynced<T>(
        &self,
        fill: impl FnOnce(&mut File) -> Result<T, Error>,
    ) -> Result<(StagedFile, T), Error> {
        self.stage_with(fill, false)
    }

    /// Make the staged files `staged` durable: one `fdatasync` for one
    /// file, one `syncfs` of the store's file system for more.
    pub fn sync_staged(&self, staged: &[&StagedFile]) -> Result<(), Error> {
        if staged.is_empty() {
            return Ok(());
        }
        self.sync_contents(staged.iter().map(|s| s.path()))
    }

    /// [`Store::stage`], made durable only if `durable` (else a round of the
    /// grouped syncs does it before the file enters the store).
    fn stage_with<T>(
        &self,
        fill: impl FnOnce(&mut File) -> Result<T, Error>,
        durable: bool,
    ) -> Result<(StagedFile, T), Error> {
        let (staged, file, t) = self.stage_open(fill)?;
        if durable {
            file.sync_all()
                .map_err(|e| Error::io("sync", &staged.path, e))?;
        }
        Ok((staged, t))
    }

    /// Write a complete file into the temp folder with `fill`, not synced,
    /// and keep it open: what comes next (its mark, its placed version,
    /// its stat) goes through the open file rather than its path.
    fn stage_open<T>(
        &self,
        fill: impl FnOnce(&mut File) -> Result<T, Error>,
    ) -> Result<(StagedFile, File, T), Error> {
        let (staged, mut file) = self.new_temp()?;
        let t = fill(&mut file)?;
        Ok((staged, file, t))
    }

    /// A fresh, empty 0600 temp file (removed when the [`StagedFile`] is
    /// dropped).
    fn new_temp(&self) -> Result<(StagedFile, File), Error> {
        let staged = StagedFile {
            path: self
                .tmp
                .join(format!("{:016x}.partial", rand::random::<u64>())),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&staged.path)
            .map_err(|e| Error::io("create", &staged.path, e))?;
        Ok((staged, file))
    }

    /// Rename a staged file into place as `name` (replacing a seal of it
    /// still waiting). The caller holds [`Store::change_lock`] and records
    /// the change itself (no journal).
    pub fn commit_staged(&self, mut staged: StagedFile, name: &Name) -> Result<(), Error> {
        // The waiting seal goes first: if the agent died between the two, the
        // next start must not put it back over this file.
        self.drop_waiting_locked(name);
        self.put_in_place(&staged.path, name)?;
        staged.path = PathBuf::new();
        self.forget_states_locked(&[name]);
        Ok(())
    }

    /// Remove `name` (and a seal of it still waiting); the caller holds
    /// [`Store::change_lock`] (no journal). A missing file is not an error.
    pub fn remove_locked(&self, name: &Name) -> Result<(), Error> {
        self.remove_either(name).map(drop)
    }

    /// Remove `name`'s store file and its waiting seal; whether either was
    /// there.
    fn remove_either(&self, name: &Name) -> Result<bool, Error> {
        let waited = self.drop_waiting_locked(name);
        let p = self.path_of(name);
        let removed = match fs::remove_file(&p) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("remove", &p, e)),
        };
        if removed {
            self.folder_changed(name)?;
        }
        if waited || removed {
            self.drop_tags(name);
            self.forget_states_locked(&[name]);
        }
        Ok(waited || removed)
    }

    /// Rename `from` to `to`; the caller holds [`Store::change_lock`] (no
    /// journal). A seal of `from` still waiting becomes `to`'s if `from`
    /// has no older file in the store ([`Store::pass_waiting_locked`]);
    /// otherwise it is put in place first. One of `to` is dropped, as the
    /// rename replaces it.
    pub fn rename_locked(&self, from: &Name, to: &Name) -> Result<(), Error> {
        if from != to && self.pass_waiting_locked(from, to)? {
            self.forget_states_locked(&[from, to]);
            return Ok(());
        }
        self.install_locked(from)?;
        let a = self.path_of(from);
        // As in `commit_staged`: a replaced seal goes before the rename
        // (once it is sure there is something to rename).
        if from != to && self.waiting_temp(to).is_some() {
            if a.symlink_metadata().is_err() {
                return Err(Error::NotFound(from.to_string()));
            }
            self.drop_waiting_locked(to);
        }
        self.put_in_place(&a, to).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Error::NotFound(from.to_string())
            }
            e => e,
        })?;
        if from != to {
            self.move_tags(from, to);
            self.forget_states_locked(&[from, to]);
        }
        self.folder_changed(from)
    }

    /// Free space of the store's file system, in percent of its size
    /// (what peers compare with `disk_pressure_percent`).
    pub fn free_percent(&self) -> Result<u8, Error> {
        let s = rustix::fs::statvfs(&self.dir)
            .map_err(|e| Error::io("statvfs", &self.dir, e.into()))?;
        if s.f_blocks == 0 {
            return Ok(100);
        }
        Ok((s.f_bavail.saturating_mul(100) / s.f_blocks).min(100) as u8)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a name in the store.
    pub fn path_of(&self, name: &Name) -> PathBuf {
        self.dir.join(name.as_os_str())
    }

    /// Where `name`'s newest bytes are: its waiting seal's temp file, else
    /// its store file. Only stable while the caller holds the change lock
    /// (a round moves a temp into place under it).
    pub fn current_path(&self, name: &Name) -> PathBuf {
        self.waiting_temp(name)
            .unwrap_or_else(|| self.path_of(name))
    }

    /// Run `f` on the path of `name`'s newest bytes while no round can move
    /// them (for a single open, stat or touch).
    fn at_current<T>(&self, name: &Name, f: impl FnOnce(&Path) -> T) -> T {
        if let Some(w) = &self.waiting {
            let files = lock(&w.files);
            if let Some(wf) = files.get(name) {
                return f(&wf.temp);
            }
        }
        f(&self.path_of(name))
    }

    /// The record attached to `name`'s store file when it was received
    /// ([`StagedFile::attach_record`]) or recorded here
    /// ([`Store::attach_record_current`]), unverified; `None` if there is none.
    pub fn attached_record(&self, name: &Name) -> Option<Vec<u8>> {
        self.attached(name, RECORD_XATTR)
    }

    /// The unsigned version a local seal of `name`'s store file was placed
    /// as ([`StagedFile::attach_placed`]), unverified; `None` if there is
    /// none (not a placed local seal).
    pub fn attached_placed(&self, name: &Name) -> Option<Vec<u8>> {
        self.attached(name, PLACED_XATTR)
    }

    fn attached(&self, name: &Name, attr: &str) -> Option<Vec<u8>> {
        attached_at(&self.path_of(name), attr)
    }

    /// Attach `record` (the signed record just made of `name`'s newest
    /// bytes) to them, as [`StagedFile::attach_record`] does for a received
    /// file: a seal put in place at the next start ([`Store::recover_leftovers`])
    /// or whose record was not yet durable when the agent was killed keeps
    /// the record that was made (and maybe sent to peers) instead of being
    /// signed again. Best effort, like that one; the reader checks the
    /// record's hash against the bytes, so a record left on bytes that
    /// moved on is never taken for theirs.
    pub fn attach_record_current(&self, name: &Name, record: &[u8]) {
        self.at_current(name, |p| {
            let _ = rustix::fs::setxattr(p, RECORD_XATTR, record, rustix::fs::XattrFlags::empty());
        });
    }

    /// The [`LocalStat`] of `name`'s newest bytes (a seal still waiting,
    /// or its store file); `None` if it has none or they cannot be read.
    pub fn local_stat(&self, name: &Name) -> Option<LocalStat> {
        self.at_current(name, |p| LocalStat::of(p).ok())
    }

    /// Whether the store holds `name`.
    pub fn contains(&self, name: &Name) -> bool {
        self.at_current(name, |p| p.symlink_metadata().is_ok())
    }

    /// The file system's metadata of `name`'s newest bytes (its inode,
    /// ciphertext size and mtime, which a round's rename keeps).
    pub fn metadata(&self, name: &Name) -> Result<fs::Metadata, Error> {
        self.at_current(name, |p| {
            p.symlink_metadata().map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotFound(name.to_string()),
                _ => Error::io("stat", p, e),
            })
        })
    }

    /// Set the modification time of `name`'s newest bytes.
    pub fn set_mtime(&self, name: &Name, t: SystemTime) -> Result<(), Error> {
        self.at_current(name, |p| {
            File::open(p)
                .and_then(|f| f.set_modified(t))
                .map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => Error::NotFound(name.to_string()),
                    _ => Error::io("set the time of", p, e),
                })
        })
    }

    /// Rename a durable temp file into place as `name`; the journal hears
    /// of it (as `sealed`) when the returned [`Pending`] is dropped.
    /// A seal from `base` goes where the journal places it
    /// ([`Journal::place`]), returned with the [`Pending`].
    fn install_staged(
        &self,
        name: &Name,
        staged: StagedFile,
        sealed: Option<Sealed>,
        base: &Base,
    ) -> Result<(Pending<'_>, Option<Placed>), Error> {
        let guard = self.lock_changes();
        let placed = sealed
            .as_ref()
            .and_then(|s| self.place_locked(name, base, s));
        if let Some(p) = &placed {
            staged.attach_placed(&p.version);
        }
        let at = placed.as_ref().map_or(name, |p| &p.under);
        self.commit_staged(staged, at)?;
        let stat = LocalStat::of(&self.path_of(at)).ok();
        let event = match (&placed, sealed) {
            (Some(p), Some(s)) => Event::Placed(at.clone(), s, p.version.clone(), stat),
            (_, sealed) => Event::Changed(name.clone(), sealed, stat),
        };
        Ok((self.pending(guard, event), placed))
    }

    fn pending<'a>(&'a self, guard: std::sync::MutexGuard<'a, ()>, event: Event) -> Pending<'a> {
        Pending {
            journal: self.journal.as_ref(),
            event: Some(event),
            _guard: guard,
        }
    }

    /// Open a store file for reading (ciphertext or, for a plaintext entry,
    /// the raw bytes).
    pub fn open_file(&self, name: &Name) -> Result<File, Error> {
        self.at_current(name, |p| {
            File::open(p).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotFound(name.to_string()),
                _ => Error::io("open", p, e),
            })
        })
    }

    /// Remove `name` from the store (durably); the journal has been told
    /// when it returns.
    pub fn remove(&self, name: &Name) -> Result<(), Error> {
        self.remove_pending(name).map(drop)?;
        self.deliver_journal();
        Ok(())
    }

    /// [`Store::remove`], with the journal entry left to the returned
    /// [`Pending`]. `name` must not be a folder (the mount knows its
    /// nodes' kinds, the CLI asks [`Store::is_folder`]): the held folder
    /// takes files only.
    /// The store file is not unlinked but held until the journal's record
    /// of the delete is durable (see `held`).
    pub fn remove_pending(&self, name: &Name) -> Result<Pending<'_>, Error> {
        let guard = self.lock_changes();
        let (had, held) = self.hold_locked(name)?;
        if !had {
            return Err(Error::NotFound(name.to_string()));
        }
        self.folder_changed(name)?;
        self.drop_tags(name);
        self.forget_states_locked(&[name]);
        Ok(self.pending(guard, Event::Removed(name.clone(), held)))
    }

    /// Rename `from` to `to` inside the store (durably), replacing `to`;
    /// the journal has been told when it returns.
    pub fn rename(&self, from: &Name, to: &Name) -> Result<(), Error> {
        self.rename_pending(from, to).map(drop)?;
        self.deliver_journal();
        Ok(())
    }

    /// [`Store::rename`], with the journal entry left to the returned
    /// [`Pending`].
    pub fn rename_pending(&self, from: &Name, to: &Name) -> Result<Pending<'_>, Error> {
        self.rename_placed(from, to).map(|(p, _)| p)
    }

    /// [`Store::rename_pending`], placed by the journal
    /// ([`Journal::place_rename`]): `from` goes to `to`, or to another name
    /// (returned) when a version of `to` its writer could not have seen
    /// keeps `to`.
    pub fn rename_placed(&self, from: &Name, to: &Name) -> Result<(Pending<'_>, Name), Error> {
        let guard = self.lock_changes();
        // The journal delivers the queue itself only when the rename may
        // meet a version its writer could not have seen: an editor's save
        // (write, close, rename at once) does not wait for its signatures.
        let placed = match &self.journal {
            Some(q) if from != to => q.journal().place_rename(from, to),
            _ => None,
        };
        let at = placed.as_ref().map_or(to, |p| &p.under).clone();
        self.rename_locked(from, &at)?;
        if from != &at {
            // For a restart that finds `from`'s record without its file.
            self.mark_moved_from(&at, from);
        }
        if let Some(p) = &placed {
            // As a placed seal carries it: killed before it was signed,
            // the next start signs exactly it.
            self.at_current(&at, |path| attach_placed_to(path, &p.version));
        }
        let stat = self.local_stat(&at);
        let event = match placed {
            Some(p) => Event::RenamedPlaced(from.clone(), at.clone(), p.version, stat),
            None => Event::Renamed(from.clone(), to.clone(), stat),
        };
        Ok((self.pending(guard, event), at))
    }

    /// Describe one file of the store.
    pub fn entry(&self, name: &Name) -> Result<Entry, Error> {
        self.entry_with(name, self.state(name)?)
    }

    /// [`Store::entry`], its recorded state looked up already.
    fn entry_with(&self, name: &Name, recorded: Option<State>) -> Result<Entry, Error> {
        self.at_current(name, |p| {
            let meta = p.symlink_metadata().map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotFound(name.to_string()),
                _ => Error::io("stat", p, e),
            })?;
            self.describe(name.clone(), p, &meta, recorded)
        })
    }

    /// An entry from the file's metadata, its first bytes and its recorded
    /// state (the name says nothing).
    fn describe(
        &self,
        name: Name,
        path: &Path,
        meta: &fs::Metadata,
        recorded: Option<State>,
    ) -> Result<Entry, Error> {
        let stored_size = meta.len();
        let (is_age, plaintext_len) = probe(path, stored_size)?;
        let state = match recorded {
            Some(State::Failed) => FileState::Failed,
            Some(State::Conflict) if is_age => FileState::Conflict,
            _ if is_age => FileState::Ciphertext,
            _ => FileState::Plaintext,
        };
        Ok(Entry {
            name,
            state,
            size: plaintext_len.unwrap_or(stored_size),
            stored_size,
            mtime: meta.mtime(),
            is_age,
        })
    }

    /// List names in folders too ([`Store::names`]). Until the mount and
    /// the mesh carry folders (`docs/folders.md`, "Order of the work"),
    /// only the tests of the tree do: a store that lists `a/b` would hand
    /// the mount and the mesh a name they cannot hold yet.
    pub fn with_folders(mut self) -> Store {
        self.folders = true;
        self
    }

    /// The names of every regular file in the store's tree (at its top
    /// only, without [`Store::with_folders`]), with the seals still
    /// waiting, sorted. Anything else found there (a symlink, a device) is
    /// skipped with a warning.
    pub fn names(&self) -> Result<Vec<Name>, Error> {
        let depth = if self.folders { MAX_DEPTH } else { 0 };
        // Held through the walk: a round moves a seal from the waiting
        // ones into the store under this lock (see `entries_in`).
        let waiting = self.waiting.as_ref().map(|w| lock(&w.files));
        let mut out = tree::walk(&self.dir, depth)?.files;
        if let Some(files) = &waiting {
            out.extend(files.keys().cloned());
        }
        drop(waiting);
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every regular file in the store (see [`Store::names`]), described.
    pub fn list(&self) -> Result<Vec<Entry>, Error> {
        let states: std::collections::HashMap<Vec<u8>, State> = match self.meta.upgrade() {
            Some(m) => m.states()?.into_iter().collect(),
            None => Default::default(),
        };
        let mut out = Vec::new();
        for name in self.names()? {
            let recorded = states.get(name.as_bytes()).copied();
            match self.entry_with(&name, recorded) {
                Ok(e) => out.push(e),
                // Removed meanwhile: not an error.
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Whether an open file starts with the age magic; rewinds it.
fn is_age_file(f: &mut File) -> Result<bool, Error> {
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < lockbox_crypto::seal::AGE_MAGIC.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Read(e)),
        }
    }
    f.rewind().map_err(Error::Read)?;
    Ok(lockbox_crypto::seal::is_age(&head[..got]))
}

/// Whether a store file is an age file, and if so its plaintext length
/// (computed from the header length and file size, no key needed).
fn probe(path: &Path, size: u64) -> Result<(bool, Option<u64>), Error> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NotFound(path.display().to_string()))
        }
        Err(e) => return Err(Error::io("open", path, e)),
    };
    if !is_age_file(&mut f)? {
        return Ok((false, None));
    }
    let len = lockbox_crypto::seal::read_header(&mut f)
        .ok()
        .and_then(|h| lockbox_crypto::seal::plaintext_len(h.header_len, size).ok());
    Ok((true, len))
}

#[cfg(test)]
mod tests;
