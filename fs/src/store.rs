//! The store: `~/.lockbox/store/`, one age file per lockbox file, mode 0600.
//!
//! Every write is atomic: the ciphertext goes to a temp file in
//! `~/.lockbox/tmp/` (same file system), is made durable with `fsync`, is
//! renamed over the old version, and the store directory is synced. After a
//! crash at any instant a name holds its old or its new complete ciphertext,
//! never a torn one. Plaintext is never written here by lockbox: it streams
//! from the caller's reader straight into the age sealer.
//!
//! The agent groups the syncs ([`Store::with_grouped_syncs`]): a seal made
//! through the mount ([`Store::seal_deferred`]) *waits* in its temp file,
//! where every read of the name finds it, until a background round makes
//! all waiting temps durable with one `syncfs` and renames them into place;
//! the folder is synced once per round too. What a crash may undo is
//! bounded by the window, and a name still never holds a torn file: a temp
//! enters the store only after it is durable.
//!
//! A seal made while unlocked also leaves the block tags of its ciphertext
//! in `~/.lockbox/tags/<name>` (see `lockbox_crypto::seal::tags`): an
//! index only this envoy can make or check, which lets the mount answer a
//! small read of a large file from the 4 KiB blocks it needs. The tags are
//! written before their version becomes visible, move with renames and go
//! with removes; tags that do not belong to a name's current version (a
//! version received from a peer, a crash between two steps) are told apart
//! by their binding and ignored. Tags made after the fact for a version
//! sealed without them ([`Store::attach_tags`], from `crate::retag`) are
//! kept only while that version is still the name's.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use lockbox_crypto::digest::HashingWriter;
use lockbox_crypto::seal::tags::{self, Binding, BlockTags, TagKey, Tagger};
use lockbox_crypto::seal::{self, Sealer};
use lockbox_crypto::share::SharePool;
use lockbox_crypto::AgeRecipient;

use crate::durable::{ensure_private_dir, sync_dir};
use crate::grouped::GroupedSync;
pub use crate::journal::Journal;
use crate::journal::{Event, Queue};
use crate::meta::LocalStat;
use crate::name::{Name, NameKind};
use crate::offload::OffloadedSink;
use crate::sealed::Sealed;
use crate::{lock, Error};

/// What the store says a file is (the seeds' auto-encrypt states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// An age file sealed to the circle.
    Ciphertext,
    /// Not (yet) an age file: found in the store or the bare mount folder.
    Plaintext,
    /// `NAME.<ts>.failed`: sealing failed; kept out of the mesh.
    Failed,
    /// `NAME.conflict-…`: the losing side of a concurrent edit.
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

/// What a sweep did (SPEC §5.4).
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
}

/// A seal through the mount, done: what it sealed, its block tags when
/// it kept some, and the journal entry to drop once the caller answered.
pub struct Seal<'a> {
    /// What was sealed.
    pub sealed: Sealed,
    /// The block tags written for it (also in `tags/<name>`).
    pub tags: Option<Arc<BlockTags>>,
    /// The new file's binding (see `lockbox_crypto::seal::tags`), when it
    /// was sealed with the tag key (while unlocked): unlike its inode,
    /// size and times, which a later file can repeat, no other file has
    /// it, so the mount keys what it caches of the file by it.
    pub binding: Option<Binding>,
    /// The new version's file system metadata, when the seal had it at
    /// hand (a seal waiting for its round): the mount's version check
    /// then needs no `stat` of its own.
    pub metadata: Option<fs::Metadata>,
    /// Its journal entry, made when this is dropped.
    pub recorded: Pending<'a>,
}

/// What [`Store::recover_leftovers`] did.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Complete seals put in place.
    pub recovered: Vec<Name>,
    /// Partial temp files removed.
    pub removed: usize,
}

/// Remove a temp file that is no longer wanted (a seal overtaken by a newer
/// change of its name, or a leftover of a stopped writer); 1 if removed.
fn remove_leftover(p: &Path) -> usize {
    match fs::remove_file(p) {
        Ok(()) => 1,
        Err(e) => {
            tracing::warn!("could not remove the temp file {}: {e}", p.display());
            0
        }
    }
}

/// The extended attribute that marks a waiting seal's temp file complete:
/// `BOOT_ID\nSEQ\nNAME`, the boot it was written in, its number and the
/// name it is for.
const SEAL_XATTR: &str = "user.lockbox.seal";

/// This boot's id (`/proc/sys/kernel/random/boot_id`), if the kernel says.
fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Give a sealed temp file the modification time its version shows; if
/// the file system refuses, the version keeps the time of its seal.
fn set_mtime_of(file: &File, t: SystemTime) {
    if let Err(e) = file.set_modified(t) {
        tracing::debug!("cannot set the time of a sealed temp file: {e}");
    }
}

/// Mark a waiting seal complete, so that if the agent dies before a round
/// puts it in place the next start does (see [`Store::recover_leftovers`]).
/// Without extended attributes on the store's file system a waiting seal
/// dies with the agent, as it would with the machine; that is said once.
fn mark_complete(file: &File, seq: u64, name: &Name) {
    let Some(v) = seal_mark(seq, name) else {
        return;
    };
    if let Err(e) = rustix::fs::fsetxattr(file, SEAL_XATTR, &v, rustix::fs::XattrFlags::empty()) {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "cannot mark sealed files as complete ({e}): a file closed less than a \
                 sync window before the agent is killed will be lost"
            );
        }
    }
}

/// The value of [`SEAL_XATTR`] for seal number `seq` of `name` in this
/// boot (none if the boot has no id).
fn seal_mark(seq: u64, name: &Name) -> Option<Vec<u8>> {
    let boot = boot_id()?;
    let mut v = format!("{boot}\n{seq}\n").into_bytes();
    v.extend_from_slice(name.as_bytes());
    Some(v)
}

/// The number and name of the complete seal `path` holds, if it was
/// marked in this boot.
fn completed_seal_of(path: &Path) -> Option<(u64, Name)> {
    use std::os::unix::ffi::OsStrExt;
    let boot = boot_id()?;
    let mut buf = [0u8; 512];
    let n = rustix::fs::getxattr(path, SEAL_XATTR, &mut buf[..]).ok()?;
    let mut parts = buf[..n].splitn(3, |&b| b == b'\n');
    if parts.next()? != boot.as_bytes() {
        return None;
    }
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let name = Name::from_os(std::ffi::OsStr::from_bytes(parts.next()?)).ok()?;
    Some((seq, name))
}

/// Seals that wait in their temp files for a round of the grouped syncs.
#[derive(Debug, Default)]
struct Waiting {
    /// Per name, its newest seal. Held while a temp is opened or renamed
    /// into place, so a reader never opens a path that just moved.
    files: Mutex<HashMap<Name, WaitingFile>>,
    /// Numbers the seals, so a round installs only the one it synced.
    next: AtomicU64,
    /// One round at a time (the store's syncer, the metadata's, `fsync`).
    round: Mutex<()>,
    /// The store folder changed since its last sync.
    dir_dirty: AtomicBool,
    /// Tests: the next sync of the waiting temps fails as a disk's would.
    #[cfg(test)]
    fail_next_sync: AtomicBool,
}

#[derive(Debug)]
struct WaitingFile {
    temp: PathBuf,
    seq: u64,
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
        if let (Some(q), Some(event)) = (self.journal, self.event.take()) {
            q.push(event);
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
            tags: state_dir.join("tags"),
            tagged: Arc::default(),
            journal: None,
            changes: Arc::new(Mutex::new(())),
            grouped: None,
            waiting: None,
            window: None,
            shares: None,
        };
        for d in [&store.dir, &store.tmp, &store.tags] {
            ensure_private_dir(d)?;
        }
        let listed = fs::read_dir(&store.tags).map_err(|e| Error::io("read", &store.tags, e))?;
        *lock(&store.tagged) = listed
            .flatten()
            .filter_map(|d| Name::from_os(&d.file_name()).ok())
            .collect();
        Ok(store)
    }

    /// Deal with the temp files a stopped writer left. A complete seal that
    /// was waiting for a round when the agent died, in this same boot (so
    /// its bytes are whole in the page cache), is synced and put in place:
    /// its `close(2)` had returned. Every other temp file holds partial
    /// ciphertext that was never renamed into place and is removed. Only
    /// the store's single writer may call this (the agent, or the CLI
    /// holding the agent lock), or it would take another writer's
    /// in-flight file.
    pub fn recover_leftovers(&self) -> Result<Leftovers, Error> {
        let mut done = Leftovers::default();
        let leftovers = fs::read_dir(&self.tmp).map_err(|e| Error::io("read", &self.tmp, e))?;
        // The newest complete seal per name (a crash can leave an older one
        // that was about to be removed).
        let mut newest: HashMap<Name, (u64, PathBuf)> = HashMap::new();
        for entry in leftovers.flatten() {
            let p = entry.path();
            if let Some((seq, name)) = completed_seal_of(&p) {
                let older = match newest.get(&name) {
                    Some((s, _)) if *s > seq => Some(p),
                    _ => newest.insert(name, (seq, p)).map(|(_, p)| p),
                };
                if let Some(older) = older {
                    done.removed += remove_leftover(&older);
                }
                continue;
            }
            done.removed += remove_leftover(&p);
        }
        for (name, (_, temp)) in newest {
            let dest = self.path_of(&name);
            let put = File::open(&temp)
                .and_then(|f| f.sync_data())
                .and_then(|()| fs::rename(&temp, &dest));
            match put {
                Ok(()) => {
                    let _ = rustix::fs::removexattr(&dest, SEAL_XATTR);
                    done.recovered.push(name);
                }
                Err(e) => {
                    tracing::warn!("cannot put the sealed {name} in place ({e}): it is lost");
                    done.removed += remove_leftover(&temp);
                }
            }
        }
        if !done.recovered.is_empty() {
            sync_dir(&self.dir)?;
        }
        done.recovered.sort();
        Ok(done)
    }

    /// Group the syncs of this store (the agent's, not the CLI's): a seal
    /// through [`Store::seal_deferred`] waits in its temp file, and a
    /// background round at most `window` after a change makes every waiting
    /// temp durable at once (one `syncfs`), renames them into place and
    /// syncs the folder once.
    ///
    /// A file's content is still durable before it is renamed into place,
    /// so a name always holds a complete version; what may trail by up to
    /// `window` (plus the round's own sync) after a crash is *which*
    /// complete version a name holds: a seal, rename, create or delete of
    /// the last moments may be undone. Call [`Store::sync_now`] where
    /// durability must not trail (`fsync(2)`, shutdown).
    pub fn with_grouped_syncs(mut self, window: std::time::Duration) -> Store {
        self.waiting = Some(Arc::new(Waiting::default()));
        let this = self.clone();
        // A failure that repeats is said again at most once a minute.
        let said: Mutex<Option<(String, std::time::Instant)>> = Mutex::new(None);
        let sync = move || {
            if let Err(e) = this.sync_round(false) {
                let text = e.to_string();
                let mut said = lock(&said);
                let again = said.as_ref().is_some_and(|(last, at)| {
                    *last == text && at.elapsed() < std::time::Duration::from_secs(60)
                });
                if !again {
                    tracing::warn!(
                        "{text} (tried again with the next change, by fsync and at shutdown)"
                    );
                    *said = Some((text, std::time::Instant::now()));
                }
            }
        };
        match GroupedSync::start("store-sync", window, sync) {
            Ok(g) => {
                self.grouped = Some(g);
                self.window = Some(window);
            }
            Err(e) => {
                self.waiting = None;
                tracing::warn!("cannot start the store's syncer ({e}): syncing per operation")
            }
        }
        self
    }

    /// One round of the grouped syncs: make the seals waiting now durable
    /// (one `fdatasync` for a single file, one `syncfs` for several), rename
    /// each into place unless a newer change of its name came meanwhile,
    /// then sync the folder if it changed (or always, with `force_dir`).
    /// The caller must not hold the change lock. A failed sync of the
    /// waiting temps drops their seals ([`Store::drop_unsynced`]); a failed
    /// sync of the folder is tried again by the next round.
    pub fn sync_round(&self, force_dir: bool) -> Result<(), Error> {
        let Some(w) = &self.waiting else {
            return sync_dir(&self.dir);
        };
        let _round = lock(&w.round);
        let batch: Vec<(Name, PathBuf, u64)> = lock(&w.files)
            .iter()
            .map(|(n, f)| (n.clone(), f.temp.clone(), f.seq))
            .collect();
        if !batch.is_empty() {
            if let Err(e) = self.sync_contents(batch.iter().map(|(_, temp, _)| temp.as_path())) {
                self.drop_unsynced(w, batch, &e);
                return Err(e);
            }
            let _changes = self.lock_changes();
            let mut failed = None;
            for (name, temp, seq) in batch {
                let mut files = lock(&w.files);
                if files.get(&name).map(|f| f.seq) != Some(seq) {
                    continue; // replaced, removed or installed meanwhile
                }
                let dest = self.path_of(&name);
                match fs::rename(&temp, &dest) {
                    Ok(()) => {
                        files.remove(&name);
                        w.dir_dirty.store(true, Ordering::SeqCst);
                        let _ = rustix::fs::removexattr(&dest, SEAL_XATTR);
                    }
                    Err(e) => failed = Some(Error::io("rename into", &dest, e)),
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if w.dir_dirty.swap(false, Ordering::SeqCst) || force_dir {
            if let Err(e) = sync_dir(&self.dir) {
                w.dir_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    /// A round's sync of the waiting temps failed: drop those seals, so
    /// each name keeps the version it had. The kernel reports a write-back
    /// error once and may have let the failed pages go, so a second sync
    /// can succeed without the data on disk; installing the temps then
    /// would put files with holes where complete versions were (the
    /// "fsyncgate" lesson). A seal that a newer one replaced meanwhile is
    /// that one's round's business.
    fn drop_unsynced(&self, w: &Waiting, batch: Vec<(Name, PathBuf, u64)>, e: &Error) {
        // Under the change lock the waiting seals do not change.
        let _changes = self.lock_changes();
        for (name, _, seq) in batch {
            if lock(&w.files).get(&name).map(|f| f.seq) == Some(seq) {
                self.drop_waiting_locked(&name);
                log_lost_to_the_disk(&name, e);
            }
        }
    }

    /// Make the temp files `temps` durable: `fdatasync` for one, `syncfs`
    /// of the store's file system for more (one device flush for all). A
    /// temp that is gone was replaced or removed: nothing to sync.
    fn sync_contents<'p>(
        &self,
        temps: impl ExactSizeIterator<Item = &'p Path>,
    ) -> Result<(), Error> {
        let mut temps = temps;
        #[cfg(test)]
        if let Some(w) = &self.waiting {
            if w.fail_next_sync.swap(false, Ordering::SeqCst) {
                return Err(Error::io(
                    "sync",
                    &self.tmp,
                    io::Error::from_raw_os_error(libc::EIO),
                ));
            }
        }
        if temps.len() == 1 {
            let temp = temps.next().expect("one temp");
            return match File::open(temp) {
                Ok(f) => f.sync_data().map_err(|e| Error::io("sync", temp, e)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("open", temp, e)),
            };
        }
        let d = File::open(&self.tmp).map_err(|e| Error::io("open", &self.tmp, e))?;
        rustix::fs::syncfs(&d)
            .map_err(|e| Error::io("sync the file system of", &self.tmp, e.into()))
    }

    /// The newest seal of `name` is waiting in its temp file (grouped mode).
    fn waiting_temp(&self, name: &Name) -> Option<PathBuf> {
        let w = self.waiting.as_ref()?;
        lock(&w.files).get(name).map(|f| f.temp.clone())
    }

    /// Under the change lock: put `name`'s waiting seal in place now (made
    /// durable first), as a rename of `name` needs it in the store.
    fn install_locked(&self, name: &Name) -> Result<(), Error> {
        let (Some(w), Some(temp)) = (&self.waiting, self.waiting_temp(name)) else {
            return Ok(());
        };
        if let Err(e) = self.sync_contents(std::iter::once(temp.as_path())) {
            // As in a round (see `drop_unsynced`): a failed sync is not
            // tried again on the same pages.
            self.drop_waiting_locked(name);
            log_lost_to_the_disk(name, &e);
            return Err(e);
        }
        let dest = self.path_of(name);
        let mut files = lock(&w.files);
        fs::rename(&temp, &dest).map_err(|e| Error::io("rename into", &dest, e))?;
        files.remove(name);
        drop(files);
        let _ = rustix::fs::removexattr(&dest, SEAL_XATTR);
        self.dir_changed()
    }

    /// Under the change lock: rename `from`, which exists only as a seal
    /// waiting for its round, to `to` without a sync: the seal waits on as
    /// `to`'s newest version (its temp file marked with the new name, for
    /// a restart after a kill), and its round puts it in place over `to`'s
    /// older file. This is how editors and `rsync` replace a file: write a
    /// temp file, close it, rename it over the target; installing the temp
    /// first would cost each of them an `fdatasync`. Until the round, a
    /// crash keeps both names as they were before the temp file was made
    /// (the create and the rename both undone), which the window allows.
    /// `false`, nothing done, if `from` has no waiting seal or also a file
    /// in the store, which must leave the name with the rename.
    fn pass_waiting_locked(&self, from: &Name, to: &Name) -> Result<bool, Error> {
        let (Some(g), Some(w)) = (&self.grouped, &self.waiting) else {
            return Ok(false);
        };
        let mut files = lock(&w.files);
        let Some(temp) = files.get(from).map(|f| f.temp.clone()) else {
            return Ok(false);
        };
        if self.path_of(from).symlink_metadata().is_ok() {
            return Ok(false);
        }
        // The passed seal gets a new number, the newest of `to`'s: a
        // restart that still finds `to`'s own waiting seal beside it puts
        // the passed one in place. A file system that refuses the mark
        // (no user extended attributes) gets the rename the slow way.
        let seq = w.next.fetch_add(1, Ordering::Relaxed);
        if let Some(mark) = seal_mark(seq, to) {
            let marked =
                rustix::fs::setxattr(&temp, SEAL_XATTR, &mark, rustix::fs::XattrFlags::empty());
            if marked.is_err() {
                return Ok(false);
            }
        }
        if let Some(old) = files.remove(to) {
            remove_leftover(&old.temp);
        }
        files.remove(from);
        files.insert(to.clone(), WaitingFile { temp, seq });
        drop(files);
        self.move_tags(from, to);
        g.mark();
        Ok(true)
    }

    /// Under the change lock: forget `name`'s waiting seal, as a newer
    /// change of the name replaced it. Returns whether there was one.
    fn drop_waiting_locked(&self, name: &Name) -> bool {
        let Some(w) = &self.waiting else {
            return false;
        };
        let Some(f) = lock(&w.files).remove(name) else {
            return false;
        };
        remove_leftover(&f.temp);
        true
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

    /// The pool of X25519 shares, if this store has one.
    pub fn shares(&self) -> Option<&SharePool> {
        self.shares.as_deref()
    }

    /// The window of grouped syncs, if this store groups them.
    pub fn sync_window(&self) -> Option<std::time::Duration> {
        self.window
    }

    /// Make every seal, rename, create and delete so far durable. The
    /// caller must not hold the change lock.
    pub fn sync_now(&self) -> Result<(), Error> {
        self.sync_round(true)
    }

    /// After a change of the folder: sync it now, or let the syncer do it.
    fn dir_changed(&self) -> Result<(), Error> {
        match (&self.grouped, &self.waiting) {
            (Some(g), Some(w)) => {
                w.dir_dirty.store(true, Ordering::SeqCst);
                g.mark();
                Ok(())
            }
            _ => sync_dir(&self.dir),
        }
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

    /// Write a complete file into the temp folder with `fill`, made durable;
    /// it enters the store only through [`Store::commit_staged`].
    pub fn stage<T>(
        &self,
        fill: impl FnOnce(&mut File) -> Result<T, Error>,
    ) -> Result<(StagedFile, T), Error> {
        self.stage_with(fill, true)
    }

    /// [`Store::stage`], made durable only if `durable` (else a round of the
    /// grouped syncs does it before the file enters the store).
    fn stage_with<T>(
        &self,
        fill: impl FnOnce(&mut File) -> Result<T, Error>,
        durable: bool,
    ) -> Result<(StagedFile, T), Error> {
        let (staged, mut file) = self.new_temp()?;
        let t = fill(&mut file)?;
        if durable {
            file.sync_all()
                .map_err(|e| Error::io("sync", &staged.path, e))?;
        }
        Ok((staged, t))
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
            .mode(0o600)
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
        let dest = self.path_of(name);
        fs::rename(&staged.path, &dest).map_err(|e| Error::io("rename into", &dest, e))?;
        staged.path = PathBuf::new();
        self.dir_changed()
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
            self.dir_changed()?;
        }
        if waited || removed {
            self.drop_tags(name);
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
            return Ok(());
        }
        self.install_locked(from)?;
        let (a, b) = (self.path_of(from), self.path_of(to));
        // As in `commit_staged`: a replaced seal goes before the rename
        // (once it is sure there is something to rename).
        if from != to && self.waiting_temp(to).is_some() {
            if a.symlink_metadata().is_err() {
                return Err(Error::NotFound(from.to_string()));
            }
            self.drop_waiting_locked(to);
        }
        fs::rename(&a, &b).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(from.to_string()),
            _ => Error::io("rename", &a, e),
        })?;
        if from != to {
            self.move_tags(from, to);
        }
        self.dir_changed()
    }

    /// Where `name`'s block tags are kept.
    fn tags_path(&self, name: &Name) -> PathBuf {
        self.tags.join(name.as_os_str())
    }

    /// Keep `tags` as those of `name`'s next version, before that version
    /// becomes visible, and return them (for the mount's memory); without
    /// tags (sealed while locked, or a file of one chunk, which the tagger
    /// leaves out), drop the old ones. Tags are a cache: a failure to write
    /// them costs speed, never data, so it is only logged.
    fn keep_tags(&self, name: &Name, tags: Option<BlockTags>) -> Option<Arc<BlockTags>> {
        let Some(tags) = tags else {
            self.drop_tags(name);
            return None;
        };
        if let Err(e) = self.write_tags(name, &tags) {
            tracing::debug!("no block tags kept for {name}: {e}");
            self.drop_tags(name);
        }
        Some(Arc::new(tags))
    }

    /// Put `tags` in `tags/<name>` (a temp file renamed over it, no sync:
    /// a lost index costs speed only).
    fn write_tags(&self, name: &Name, tags: &BlockTags) -> Result<(), Error> {
        let (mut staged, mut file) = self.new_temp()?;
        file.write_all(&tags.encode())
            .map_err(|e| Error::io("write", &staged.path, e))?;
        let dest = self.tags_path(name);
        fs::rename(&staged.path, &dest).map_err(|e| Error::io("rename into", &dest, e))?;
        staged.path = PathBuf::new();
        lock(&self.tagged).insert(name.clone());
        Ok(())
    }

    /// Keep `tags`, made after the fact from `version` (an open store file
    /// of `name`, [`Payload::tag_blocks`](seal::Payload::tag_blocks)), as
    /// `name`'s tags if `version` is still its current version; `false`
    /// (nothing written) if the name moved on meanwhile. No rename or
    /// remove of the name runs between the check and the write. A seal
    /// of the name whose new version is not yet in place may have its
    /// fresh tags replaced by these, which its version then finds stale:
    /// that costs speed (reads by chunk) until its next seal, never data.
    pub fn attach_tags(
        &self,
        name: &Name,
        version: &File,
        tags: &BlockTags,
    ) -> Result<bool, Error> {
        let _changes = self.lock_changes();
        let ours = version
            .metadata()
            .map_err(|e| Error::io("stat", &self.path_of(name), e))?;
        let current = self.metadata(name).ok();
        if current.is_none_or(|c| (c.dev(), c.ino()) != (ours.dev(), ours.ino())) {
            return Ok(false);
        }
        self.write_tags(name, tags)?;
        Ok(true)
    }

    /// Forget `name`'s block tags (a missing file is fine).
    fn drop_tags(&self, name: &Name) {
        if !lock(&self.tagged).remove(name) {
            return;
        }
        let p = self.tags_path(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("cannot remove {}: {e}", p.display()),
        }
    }

    /// `from`'s block tags become `to`'s (which lose theirs if `from` had none).
    fn move_tags(&self, from: &Name, to: &Name) {
        if !lock(&self.tagged).remove(from) {
            self.drop_tags(to);
            return;
        }
        match fs::rename(self.tags_path(from), self.tags_path(to)) {
            Ok(()) => {
                lock(&self.tagged).insert(to.clone());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.drop_tags(to),
            Err(e) => {
                tracing::debug!("cannot move the block tags of {from}: {e}");
                self.drop_tags(from);
                self.drop_tags(to);
            }
        }
    }

    /// The block tags of `name` made with `key`, if there are some for the
    /// version whose [`Payload`](seal::Payload) reads `binding` and
    /// `plaintext_len`. Missing, stale or damaged tags are `None` (a read
    /// then decrypts whole chunks); the file is read only if its size is
    /// the one such tags have.
    pub fn read_tags(
        &self,
        name: &Name,
        key: &TagKey,
        binding: &tags::Binding,
        plaintext_len: u64,
    ) -> Option<BlockTags> {
        let p = self.tags_path(name);
        let file = File::open(&p).ok()?;
        let want = tags::index_len(plaintext_len);
        if file.metadata().ok()?.len() != want {
            tracing::debug!("{}: not the size of this version's tags", p.display());
            return None;
        }
        let mut bytes = Vec::with_capacity(want as usize);
        file.take(want).read_to_end(&mut bytes).ok()?;
        BlockTags::decode(&bytes, key, binding, plaintext_len)
            .map_err(|e| tracing::debug!("{}: {e}", p.display()))
            .ok()
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
    /// ([`StagedFile::attach_record`]), unverified; `None` if there is none.
    pub fn attached_record(&self, name: &Name) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_ATTACHED_RECORD];
        let n = rustix::fs::getxattr(self.path_of(name), RECORD_XATTR, &mut buf[..]).ok()?;
        buf.truncate(n);
        Some(buf)
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

    /// Seal everything `plaintext` yields to `recipients` and atomically
    /// install it as `name`. More than `max_size` bytes of plaintext →
    /// [`Error::TooLarge`] and nothing changes. The journal has been told
    /// when it returns.
    pub fn seal(
        &self,
        name: &Name,
        plaintext: impl Read,
        recipients: &SealTo,
        max_size: u64,
    ) -> Result<Sealed, Error> {
        let sealed = self
            .seal_pending(name, plaintext, recipients, max_size)
            .map(|(sealed, _recorded)| sealed)?;
        self.deliver_journal();
        Ok(sealed)
    }

    /// [`Store::seal_pending`], but in grouped mode the seal waits in its
    /// temp file for the next round instead of being synced now: every
    /// read of `name` sees it at once, and it is durable within the window
    /// (or at [`Store::sync_now`]). For the mount's closes; a seal that
    /// replaces a source it then deletes (the sweep) must not wait.
    /// `mtime` becomes the store file's modification time (the mount's
    /// last write, or the time utimensat set), before the journal takes
    /// its stat.
    pub fn seal_deferred(
        &self,
        name: &Name,
        plaintext: impl Read,
        recipients: &SealTo,
        max_size: u64,
        mtime: SystemTime,
    ) -> Result<Seal<'_>, Error> {
        let (Some(g), Some(w)) = (&self.grouped, &self.waiting) else {
            return self.seal_tagged_pending(name, plaintext, recipients, max_size, Some(mtime));
        };
        let seq = w.next.fetch_add(1, Ordering::Relaxed);
        let fill = |file: &mut File| {
            let done = seal_tagged(file, name, plaintext, recipients, self.shares(), max_size)?;
            set_mtime_of(file, mtime);
            mark_complete(file, seq, name);
            Ok(done)
        };
        let (staged, (sealed, tagged)) = self.stage_with(fill, false)?;
        let tags = self.keep_tags(name, tagged.tags);
        let (sealed, metadata, recorded) = self.wait_staged(g, w, name, staged, seq, sealed);
        Ok(Seal {
            sealed,
            tags,
            binding: tagged.binding,
            metadata,
            recorded,
        })
    }

    /// Put a complete seal (marked with `seq`) among the waiting ones as
    /// the newest version of `name`.
    fn wait_staged(
        &self,
        g: &GroupedSync,
        w: &Waiting,
        name: &Name,
        mut staged: StagedFile,
        seq: u64,
        sealed: Sealed,
    ) -> (Sealed, Option<fs::Metadata>, Pending<'_>) {
        let guard = self.lock_changes();
        let metadata = fs::symlink_metadata(&staged.path).ok();
        let stat = metadata.as_ref().map(LocalStat::from_metadata);
        let temp = std::mem::take(&mut staged.path);
        let older = lock(&w.files).insert(name.clone(), WaitingFile { temp, seq });
        if let Some(older) = older {
            remove_leftover(&older.temp);
        }
        g.mark();
        let event = Event::Changed(name.clone(), Some(sealed.clone()), stat);
        (sealed, metadata, self.pending(guard, event))
    }

    /// Start a seal to `recipients` whose plaintext comes in pieces
    /// ([`SealStream::write`]), for a file the mount sees written from start
    /// to end: its ciphertext goes to a temp file as the writes arrive, so
    /// neither the plaintext nor the time to encrypt it piles up until the
    /// close. [`Store::finish_stream`] puts it in place.
    pub fn begin_stream(&self, recipients: &SealTo) -> Result<SealStream, Error> {
        let (staged, file) = self.new_temp()?;
        let sink = OffloadedSink::new(sealing_sink(file, recipients.tags.as_deref()), 1 << 20);
        let sealer = Sealer::with_shares(&recipients.keys, self.shares(), sink)?;
        Ok(SealStream {
            staged,
            sealer,
            len: 0,
            envoys: recipients.envoys.clone(),
        })
    }

    /// Seal the end of `stream` and install it as `name`, as
    /// [`Store::seal_deferred`] does with a whole plaintext.
    pub fn finish_stream(
        &self,
        stream: SealStream,
        name: &Name,
        mtime: SystemTime,
    ) -> Result<Seal<'_>, Error> {
        let (staged, file, sealed, tagged) = stream.finish()?;
        set_mtime_of(&file, mtime);
        let tags = self.keep_tags(name, tagged.tags);
        let (sealed, metadata, recorded) =
            if let (Some(g), Some(w)) = (&self.grouped, &self.waiting) {
                let seq = w.next.fetch_add(1, Ordering::Relaxed);
                mark_complete(&file, seq, name);
                self.wait_staged(g, w, name, staged, seq, sealed)
            } else {
                file.sync_all()
                    .map_err(|e| Error::io("sync", &staged.path, e))?;
                let recorded = self.install_staged(name, staged, Some(sealed.clone()))?;
                (sealed, None, recorded)
            };
        Ok(Seal {
            sealed,
            tags,
            binding: tagged.binding,
            metadata,
            recorded,
        })
    }

    /// [`Store::seal`], with the journal entry left to the returned
    /// [`Pending`].
    pub fn seal_pending(
        &self,
        name: &Name,
        plaintext: impl Read,
        recipients: &SealTo,
        max_size: u64,
    ) -> Result<(Sealed, Pending<'_>), Error> {
        self.seal_tagged_pending(name, plaintext, recipients, max_size, None)
            .map(|s| (s.sealed, s.recorded))
    }

    /// [`Store::seal_pending`], with the block tags it kept, and the
    /// modification time set to `mtime` if given.
    fn seal_tagged_pending(
        &self,
        name: &Name,
        plaintext: impl Read,
        recipients: &SealTo,
        max_size: u64,
        mtime: Option<SystemTime>,
    ) -> Result<Seal<'_>, Error> {
        let seal = |file: &mut File| {
            let done = seal_tagged(file, name, plaintext, recipients, self.shares(), max_size)?;
            if let Some(t) = mtime {
                set_mtime_of(file, t);
            }
            Ok(done)
        };
        let (staged, (sealed, tagged)) = self.stage(seal)?;
        let tags = self.keep_tags(name, tagged.tags);
        let recorded = self.install_staged(name, staged, Some(sealed.clone()))?;
        Ok(Seal {
            sealed,
            tags,
            binding: tagged.binding,
            metadata: None,
            recorded,
        })
    }

    /// Write `name` atomically: `fill` writes the complete content into a
    /// fresh 0600 temp file, which is then synced and renamed into place.
    /// The journal is told under the change lock, after the rename, when
    /// the returned [`Pending`] is dropped; `seen` turns `fill`'s result
    /// into what the journal is told.
    fn write_atomic<T>(
        &self,
        name: &Name,
        fill: impl FnOnce(&mut File) -> Result<T, Error>,
        seen: impl FnOnce(&T) -> Option<Sealed>,
    ) -> Result<(T, Pending<'_>), Error> {
        let (staged, t) = self.stage(fill)?;
        let pending = self.install_staged(name, staged, seen(&t))?;
        Ok((t, pending))
    }

    /// Rename a durable temp file into place as `name`; the journal hears
    /// of it (as `sealed`) when the returned [`Pending`] is dropped.
    fn install_staged(
        &self,
        name: &Name,
        staged: StagedFile,
        sealed: Option<Sealed>,
    ) -> Result<Pending<'_>, Error> {
        let guard = self.lock_changes();
        self.commit_staged(staged, name)?;
        let stat = LocalStat::of(&self.path_of(name)).ok();
        let event = Event::Changed(name.clone(), sealed, stat);
        Ok(self.pending(guard, event))
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
    /// [`Pending`].
    pub fn remove_pending(&self, name: &Name) -> Result<Pending<'_>, Error> {
        let guard = self.lock_changes();
        if !self.remove_either(name)? {
            return Err(Error::NotFound(name.to_string()));
        }
        Ok(self.pending(guard, Event::Removed(name.clone())))
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
        let guard = self.lock_changes();
        self.rename_locked(from, to)?;
        let stat = self.local_stat(to);
        Ok(self.pending(guard, Event::Renamed(from.clone(), to.clone(), stat)))
    }

    /// Describe one file of the store.
    pub fn entry(&self, name: &Name) -> Result<Entry, Error> {
        self.at_current(name, |p| {
            let meta = p.symlink_metadata().map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotFound(name.to_string()),
                _ => Error::io("stat", p, e),
            })?;
            self.describe(name.clone(), p, &meta)
        })
    }

    fn describe(&self, name: Name, path: &Path, meta: &fs::Metadata) -> Result<Entry, Error> {
        let stored_size = meta.len();
        let (is_age, plaintext_len) = probe(path, stored_size)?;
        let state = match name.kind() {
            NameKind::Failed => FileState::Failed,
            NameKind::Conflict if is_age => FileState::Conflict,
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

    /// The names of every regular file in the store, with the seals still
    /// waiting, sorted. Anything else found there (a folder, a symlink) is
    /// skipped with a warning.
    pub fn names(&self) -> Result<Vec<Name>, Error> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| Error::io("read", &self.dir, e))?;
        for dirent in rd {
            let dirent = dirent.map_err(|e| Error::io("read", &self.dir, e))?;
            let Ok(name) = Name::from_os(&dirent.file_name()) else {
                continue;
            };
            match dirent.file_type() {
                Ok(t) if t.is_file() => out.push(name),
                Ok(_) => tracing::warn!(
                    "ignoring {}: lockbox holds only regular files",
                    dirent.path().display()
                ),
                // Removed between readdir and stat: not an error.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", &dirent.path(), e)),
            }
        }
        if let Some(w) = &self.waiting {
            out.extend(lock(&w.files).keys().cloned());
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every regular file in the store (see [`Store::names`]), described.
    pub fn list(&self) -> Result<Vec<Entry>, Error> {
        let mut out = Vec::new();
        for name in self.names()? {
            match self.entry(&name) {
                Ok(e) => out.push(e),
                // Removed meanwhile: not an error.
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Seal every plaintext file of the store in place (SPEC §5.4): files up
    /// to `max_size` are sealed and their plaintext replaced atomically;
    /// larger ones stay and are reported; a file that fails to seal is
    /// renamed `NAME.<unix_ts>.failed`.
    pub fn sweep(&self, recipients: &SealTo, max_size: u64) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        for name in self.names()? {
            // One file that cannot be read must not keep the rest in plaintext.
            let entry = match self.entry(&name) {
                Ok(e) => e,
                Err(Error::NotFound(_)) => continue,
                Err(e) => {
                    tracing::warn!("sweep: skipping {name}: {e}");
                    continue;
                }
            };
            if entry.state != FileState::Plaintext {
                continue;
            }
            if entry.stored_size > max_size {
                tracing::warn!(
                    "{} is plaintext and larger than {max_size} bytes: left as is, not synced",
                    entry.name
                );
                report.too_large.push(entry.name);
                continue;
            }
            let src = self.path_of(&entry.name);
            let sealed = File::open(&src)
                .map_err(|e| Error::io("open", &src, e))
                .and_then(|f| self.seal(&entry.name, f, recipients, max_size));
            match sealed {
                Ok(_) => {
                    tracing::info!("sealed plaintext {} found in the store", entry.name);
                    report.sealed.push(entry.name);
                }
                Err(e) => match self.mark_failed(&entry.name, &e) {
                    Ok(failed) => report.failed.push(failed),
                    Err(e2) => {
                        tracing::warn!(
                            "could not seal {} ({e}) nor rename it aside ({e2}): it stays \
                             plaintext in the store; move it out and add it again",
                            entry.name
                        );
                        report
                            .failed
                            .push((entry.name.clone(), entry.name, e.to_string()));
                    }
                },
            }
        }
        Ok(report)
    }

    /// Seal every regular file found in `dir` (the bare `~/lockbox/` before
    /// mounting) into the store under the same name, then, once the sealed
    /// copies are durable, remove the plaintext originals. Files over
    /// `max_size` stay where they are.
    pub fn import_dir(
        &self,
        dir: &Path,
        recipients: &SealTo,
        max_size: u64,
    ) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        // Sealed, their plaintext not yet removed.
        let mut imported = Vec::new();
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(Error::io("read", dir, e)),
        };
        for dirent in rd.flatten() {
            let path = dirent.path();
            let Ok(name) = Name::from_os(&dirent.file_name()) else {
                continue;
            };
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if !meta.file_type().is_file() {
                tracing::warn!(
                    "ignoring {}: lockbox holds only regular files",
                    path.display()
                );
                continue;
            }
            if meta.len() > max_size {
                tracing::warn!("{} is over the size limit: left in place", path.display());
                report.too_large.push(name);
                continue;
            }
            let result = File::open(&path)
                .map_err(|e| Error::io("open", &path, e))
                .and_then(|mut f| {
                    if is_age_file(&mut f)? {
                        // Already ciphertext (e.g. copied from a store): keep as is.
                        self.write_atomic(
                            &name,
                            |out| {
                                io::copy(&mut f, out).map_err(|e| Error::io("copy", &path, e))?;
                                Ok(())
                            },
                            |_| None,
                        )
                        .map(|((), _recorded)| ())
                    } else {
                        self.seal(&name, f, recipients, max_size).map(|_| ())
                    }
                });
            match result {
                Ok(()) => imported.push((name, path)),
                Err(e) => {
                    tracing::warn!("could not seal {}: {e}", path.display());
                    report.failed.push((name.clone(), name, e.to_string()));
                }
            }
        }
        if imported.is_empty() {
            return Ok(report);
        }
        // A plaintext original goes only once its sealed copy is durable,
        // the rename into the store included (which grouped syncs would
        // otherwise leave to the next round): a crash in between must not
        // lose both.
        self.sync_now()?;
        for (name, path) in imported {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!("sealed {name} from the unmounted folder"),
                Err(e) => tracing::warn!(
                    "sealed {name}, but could not remove its plaintext {} ({e}): remove it by hand",
                    path.display()
                ),
            }
            report.sealed.push(name);
        }
        Ok(report)
    }

    fn mark_failed(&self, name: &Name, why: &Error) -> Result<(Name, Name, String), Error> {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let failed = name.failed(ts)?;
        tracing::warn!(
            "could not seal {name} ({why}): renamed to {failed}; rename it back to retry"
        );
        self.rename(name, &failed)?;
        Ok((name.clone(), failed, why.to_string()))
    }
}

/// Say that `name`'s waiting seal was dropped because the disk failed to
/// store it (`e`).
fn log_lost_to_the_disk(name: &Name, e: &Error) {
    tracing::error!(
        "{name}: the disk failed while storing its newest version ({e}); that version is \
         dropped and {name} keeps the one before it; check the disk"
    );
}

/// Seal everything `plaintext` yields to `recipients` into `file` (the
/// ciphertext, hashed on the way). More than `max_size` bytes of plaintext
/// → [`Error::TooLarge`] (`name` is for the message).
pub fn seal_into(
    file: &mut File,
    name: &Name,
    plaintext: impl Read,
    recipients: &SealTo,
    shares: Option<&SharePool>,
    max_size: u64,
) -> Result<Sealed, Error> {
    seal_tagged(file, name, plaintext, recipients, shares, max_size).map(|(sealed, _)| sealed)
}

/// A seal's binding and block tags: what its [`Tagger`] found out about
/// the file it wrote.
struct SealTags {
    /// Its binding, when it was sealed with the tag key.
    binding: Option<Binding>,
    /// Its block tags, when it was, and has more than one chunk.
    tags: Option<BlockTags>,
}

impl SealTags {
    /// What `tagger` found, and the writer under it.
    fn of<W: Write>(tagger: Tagger<W>) -> (W, SealTags) {
        let binding = tagger.binding();
        let (inner, tags) = tagger.finish();
        (inner, SealTags { binding, tags })
    }
}

/// [`seal_into`], and what its [`Tagger`] found out (block tags when
/// `recipients` carries the tag key).
fn seal_tagged(
    file: &mut File,
    name: &Name,
    plaintext: impl Read,
    recipients: &SealTo,
    shares: Option<&SharePool>,
    max_size: u64,
) -> Result<(Sealed, SealTags), Error> {
    let mut limited = plaintext.take(max_size.saturating_add(1));
    // Past 1 MiB the ciphertext is hashed, tagged and written on a second
    // thread while this one encrypts.
    let dup = file.try_clone().map_err(sink_error)?;
    let mut sealer = Sealer::with_shares(
        &recipients.keys,
        shares,
        OffloadedSink::new(sealing_sink(dup, recipients.tags.as_deref()), 1 << 20),
    )?;
    let n = pump(&mut limited, &mut sealer)?;
    if n > max_size {
        return Err(Error::TooLarge {
            name: name.to_string(),
            limit: max_size,
        });
    }
    let hasher = sealer.finish()?.finish().map_err(sink_error)?;
    let (tagger, hash, ciphertext_len) = hasher.finish();
    let sealed = Sealed {
        plaintext_len: n,
        ciphertext_len,
        hash,
        envoys: recipients.envoys.clone(),
    };
    Ok((sealed, SealTags::of(tagger).1))
}

/// How a write into a store temp file fails.
fn sink_error(e: io::Error) -> Error {
    Error::io("write", Path::new("the store's temp file"), e)
}

/// What a seal's ciphertext goes through.
type Sink = HashingWriter<Tagger<EarlyWriteback<File>>>;

/// Where a seal's ciphertext goes: hashed, tagged with `key` if there is
/// one, then into `file`, whose writeback starts early.
fn sealing_sink(file: File, key: Option<&TagKey>) -> Sink {
    HashingWriter::new(Tagger::new(EarlyWriteback::new(file), key))
}

/// A seal in progress whose plaintext arrives in pieces (see
/// [`Store::begin_stream`]). Only ciphertext reaches the disk; dropped
/// unfinished, its temp file is removed.
pub struct SealStream {
    staged: StagedFile,
    sealer: Sealer<OffloadedSink<Sink>>,
    len: u64,
    envoys: Vec<String>,
}

impl SealStream {
    /// Plaintext bytes sealed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seal `data` as the next bytes of the file.
    pub fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write_all(data).map_err(sink_error)
    }

    /// Seal the last chunk; the complete temp file, open, what it is, and
    /// what its tagger found (block tags if it was begun with the tag key).
    fn finish(self) -> Result<(StagedFile, File, Sealed, SealTags), Error> {
        let SealStream {
            staged,
            sealer,
            len,
            envoys,
        } = self;
        let hasher = sealer.finish()?.finish().map_err(sink_error)?;
        let (tagger, hash, ciphertext_len) = hasher.finish();
        let (writeback, tagged) = SealTags::of(tagger);
        let sealed = Sealed {
            plaintext_len: len,
            ciphertext_len,
            hash,
            envoys,
        };
        Ok((staged, writeback.file, sealed, tagged))
    }

    /// Give up the seal and get back what was written, decrypted with
    /// `identity` (one of the recipients) into memory; for a writer that
    /// turns out not to write from start to end. The temp file is removed.
    pub fn into_plaintext(
        self,
        identity: &lockbox_crypto::AgeIdentity,
    ) -> Result<crate::pages::Pages, Error> {
        let len = self.len;
        let (staged, mut file, _, _) = self.finish()?;
        file.rewind()
            .map_err(|e| Error::io("read", &staged.path, e))?;
        let mut opened = seal::Opened::open(identity, file)?;
        let mut pages = crate::pages::Pages::new();
        pages
            .fill_from(&mut opened, len)
            .map_err(|e| Error::io("read back", &staged.path, e))?;
        Ok(pages)
    }
}

impl Write for SealStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.sealer.write(data)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes of a seal written between two starts of their writeback.
const WRITEBACK_STEP: u64 = 8 << 20;

/// A store temp file being written, whose ciphertext the disk starts
/// writing every [`WRITEBACK_STEP`] bytes instead of at the sync. On a
/// machine with much memory the kernel would keep a whole 1 GiB seal dirty
/// until the `fsync`, and the disk would only start once the encryption
/// had ended; this way the two overlap. `POSIX_FADV_DONTNEED` over what was
/// written starts that range's writeback without waiting for it (and lets
/// the kernel drop those pages once clean: the mount reads a store file
/// rarely right after sealing it). Small seals never reach a step.
struct EarlyWriteback<F> {
    file: F,
    written: u64,
    started: u64,
}

impl EarlyWriteback<File> {
    fn new(mut file: File) -> Self {
        let at = file.stream_position().unwrap_or(0);
        EarlyWriteback {
            file,
            written: at,
            started: at,
        }
    }
}

impl Write for EarlyWriteback<File> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            let len = std::num::NonZeroU64::new(self.written - self.started);
            // Advice only: a failure changes nothing but the timing.
            let _ =
                rustix::fs::fadvise(&self.file, self.started, len, rustix::fs::Advice::DontNeed);
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Copy plaintext from `src` into `dst` through a buffer that is zeroized
/// afterwards. Read errors and write errors stay apart: the first is the
/// source's fault, the second the store's.
///
/// The 64 KiB buffer is kept per thread and only the part a copy used is
/// wiped after it, so a small file's seal neither allocates nor clears the
/// whole buffer.
pub fn pump(src: &mut impl Read, dst: &mut impl Write) -> Result<u64, Error> {
    thread_local! {
        static BUF: std::cell::RefCell<Box<[u8]>> =
            std::cell::RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
    }
    BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => pump_through(src, dst, &mut buf),
        // A pump inside a pump (not done today): a buffer of its own.
        Err(_) => pump_through(src, dst, &mut vec![0u8; 64 * 1024]),
    })
}

fn pump_through(src: &mut impl Read, dst: &mut impl Write, buf: &mut [u8]) -> Result<u64, Error> {
    /// Wipes what was used of the buffer, however the copy ends.
    struct Wipe<'b> {
        buf: &'b mut [u8],
        used: usize,
    }
    impl Drop for Wipe<'_> {
        fn drop(&mut self) {
            use zeroize::Zeroize;
            self.buf[..self.used].zeroize();
        }
    }
    let mut w = Wipe { buf, used: 0 };
    let mut total = 0u64;
    loop {
        let n = match src.read(w.buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // What a failed read left in the buffer is unknown.
                w.used = w.buf.len();
                return Err(Error::Read(e));
            }
        };
        w.used = w.used.max(n);
        dst.write_all(&w.buf[..n])
            .map_err(|e| Error::io("write", Path::new("the store"), e))?;
        total += n as u64;
    }
}

/// Whether an open file starts with the age magic; rewinds it.
fn is_age_file(f: &mut File) -> Result<bool, Error> {
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < seal::AGE_MAGIC.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Read(e)),
        }
    }
    f.rewind().map_err(Error::Read)?;
    Ok(seal::is_age(&head[..got]))
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
    let len = seal::read_header(&mut f)
        .ok()
        .and_then(|h| seal::plaintext_len(h.header_len, size).ok());
    Ok((true, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use lockbox_crypto::{identity, seal::open_to_vec};
    use std::io::Cursor;

    fn setup() -> (tempfile::TempDir, Store, lockbox_crypto::AgeIdentity) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store, identity::generate())
    }

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn seal_then_open_round_trips_with_private_modes() {
        let (dir, store, id) = setup();
        let s = store
            .seal(
                &n("key"),
                Cursor::new(b"secret bytes"),
                &SealTo::keys(vec![id.to_public()]),
                1 << 20,
            )
            .unwrap();
        assert_eq!(s.plaintext_len, 12);
        let f = store.open_file(&n("key")).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"secret bytes");
        let mode = |p: &Path| p.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.path_of(&n("key"))), 0o600);
        assert_eq!(mode(&dir.path().join("store")), 0o700);
        let e = store.entry(&n("key")).unwrap();
        assert_eq!(
            (e.state, e.size, e.stored_size),
            (FileState::Ciphertext, 12, s.ciphertext_len)
        );
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn too_large_changes_nothing() {
        let (dir, store, id) = setup();
        store
            .seal(
                &n("f"),
                Cursor::new(b"old"),
                &SealTo::keys(vec![id.to_public()]),
                10,
            )
            .unwrap();
        let err = store
            .seal(
                &n("f"),
                Cursor::new(vec![7u8; 11]),
                &SealTo::keys(vec![id.to_public()]),
                10,
            )
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        let f = store.open_file(&n("f")).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"old");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn failing_reader_leaves_old_version() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("source vanished mid-read"))
            }
        }
        let (_dir, store, id) = setup();
        store
            .seal(
                &n("f"),
                Cursor::new(b"old"),
                &SealTo::keys(vec![id.to_public()]),
                10,
            )
            .unwrap();
        assert!(store
            .seal(&n("f"), Broken, &SealTo::keys(vec![id.to_public()]), 10)
            .is_err());
        let f = store.open_file(&n("f")).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"old");
    }

    #[test]
    fn list_states_and_sweep() {
        let (dir, store, id) = setup();
        let r = SealTo::keys(vec![id.to_public()]);
        store.seal(&n("a"), Cursor::new(b"aa"), &r, 100).unwrap();
        fs::write(store.path_of(&n("plain")), b"dropped in by hand").unwrap();
        fs::write(store.path_of(&n("big")), vec![1u8; 200]).unwrap();
        fs::write(store.path_of(&n("x.1714380000.failed")), b"x").unwrap();
        store
            .seal(
                &n("a.conflict-b-20260101-000000"),
                Cursor::new(b"c"),
                &r,
                100,
            )
            .unwrap();
        fs::create_dir(dir.path().join("store/sub")).unwrap();
        let states: Vec<(String, FileState)> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.to_string(), e.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("a".into(), FileState::Ciphertext),
                ("a.conflict-b-20260101-000000".into(), FileState::Conflict),
                ("big".into(), FileState::Plaintext),
                ("plain".into(), FileState::Plaintext),
                ("x.1714380000.failed".into(), FileState::Failed),
            ]
        );
        let rep = store.sweep(&r, 100).unwrap();
        assert_eq!(rep.sealed, vec![n("plain")]);
        assert_eq!(rep.too_large, vec![n("big")]);
        assert!(rep.failed.is_empty());
        let f = store.open_file(&n("plain")).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"dropped in by hand");
    }

    #[test]
    fn sweep_with_no_recipients_marks_failed() {
        let (_dir, store, _id) = setup();
        fs::write(store.path_of(&n("p")), b"plain").unwrap();
        let rep = store.sweep(&SealTo::default(), 100).unwrap();
        assert_eq!(rep.failed.len(), 1);
        assert!(!store.contains(&n("p")));
        assert_eq!(rep.failed[0].1.kind(), NameKind::Failed);
        assert!(store.contains(&rep.failed[0].1));
    }

    /// A file that can neither be sealed nor renamed aside (its name has
    /// no room for the `.<ts>.failed` suffix) is reported, and the sweep
    /// goes on to the next one.
    #[test]
    fn one_file_the_sweep_cannot_handle_does_not_stop_it() {
        let (_dir, store, _id) = setup();
        let long = n(&"a".repeat(250));
        fs::write(store.path_of(&long), b"plain").unwrap();
        fs::write(store.path_of(&n("b")), b"plain too").unwrap();
        let rep = store.sweep(&SealTo::default(), 100).unwrap();
        assert_eq!(rep.failed.len(), 2, "{:?}", rep.failed);
        assert_eq!(rep.failed[0].0, long);
        assert_eq!(rep.failed[0].1, long, "nowhere to rename it to");
        assert!(store.contains(&long));
        assert_eq!(rep.failed[1].0, n("b"));
        assert_eq!(rep.failed[1].1.kind(), NameKind::Failed);
        assert!(!store.contains(&n("b")) && store.contains(&rep.failed[1].1));
    }

    #[test]
    fn import_dir_moves_plaintext_into_store() {
        let (dir, store, id) = setup();
        let bare = dir.path().join("bare");
        fs::create_dir(&bare).unwrap();
        fs::write(bare.join("notes"), b"hello").unwrap();
        fs::write(bare.join("huge"), vec![0u8; 50]).unwrap();
        let rep = store
            .import_dir(&bare, &SealTo::keys(vec![id.to_public()]), 10)
            .unwrap();
        assert_eq!(rep.sealed, vec![n("notes")]);
        assert_eq!(rep.too_large, vec![n("huge")]);
        assert!(!bare.join("notes").exists() && bare.join("huge").exists());
        let f = store.open_file(&n("notes")).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"hello");
    }

    /// A failed sync of the waiting seals drops them: a second sync could
    /// succeed without the pages the first failed to write, so installing
    /// them then would put a file with holes in place of a whole version.
    /// The name keeps its previous version, and nothing is left in `tmp/`.
    #[test]
    fn a_failed_sync_drops_the_waiting_seals_instead_of_installing_them() {
        let (dir, store, id) = grouped();
        let to = SealTo::keys(vec![id.to_public()]);
        let seal = |name: &str, text: &[u8]| {
            let s = store
                .seal_deferred(&n(name), Cursor::new(text.to_vec()), &to, 1 << 20, then())
                .unwrap();
            drop(s);
        };
        seal("kept", b"version one");
        store.sync_now().unwrap();
        seal("kept", b"version two");
        seal("new", b"never stored");
        let w = store.waiting.as_ref().unwrap();
        w.fail_next_sync.store(true, Ordering::SeqCst);
        assert!(store.sync_now().is_err(), "the failed sync is reported");
        store.sync_now().unwrap();
        let f = store.open_file(&n("kept")).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"version one");
        assert!(!store.contains(&n("new")));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        // The same when a rename needs a waiting seal in place first.
        seal("moved", b"about to move");
        store.sync_now().unwrap();
        seal("moved", b"moved, never stored");
        w.fail_next_sync.store(true, Ordering::SeqCst);
        store.rename(&n("moved"), &n("there")).unwrap_err();
        store.sync_now().unwrap();
        let f = store.open_file(&n("moved")).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"about to move");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// With grouped syncs (the agent's store), the folder's rename of an
    /// imported file would wait for the next round; the plaintext original
    /// must not go before it, so the import syncs the store first.
    #[test]
    fn import_dir_leaves_nothing_to_sync_behind_the_removed_originals() {
        let (dir, store, id) = grouped();
        let bare = dir.path().join("bare");
        fs::create_dir(&bare).unwrap();
        fs::write(bare.join("notes"), b"hello").unwrap();
        let rep = store
            .import_dir(&bare, &SealTo::keys(vec![id.to_public()]), 100)
            .unwrap();
        assert_eq!(rep.sealed, vec![n("notes")]);
        assert!(!bare.join("notes").exists());
        let w = store.waiting.as_ref().expect("a grouped store");
        assert!(
            !w.dir_dirty.load(Ordering::SeqCst) && lock(&w.files).is_empty(),
            "the plaintext is gone while its sealed copy still waits for a sync"
        );
        let f = store.open_file(&n("notes")).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"hello");
    }

    #[test]
    fn grouped_dir_sync_still_installs_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path())
            .unwrap()
            .with_grouped_syncs(std::time::Duration::from_millis(5));
        let id = identity::generate();
        store
            .seal(
                &n("g"),
                Cursor::new(b"grouped"),
                &SealTo::keys(vec![id.to_public()]),
                100,
            )
            .unwrap();
        // Visible immediately; only the folder's durability is deferred.
        let f = store.open_file(&n("g")).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"grouped");
        store.rename(&n("g"), &n("h")).unwrap();
        store.remove(&n("h")).unwrap();
        store.sync_now().unwrap();
        assert!(!store.contains(&n("h")));
    }

    /// A store that groups its syncs, with a window so long that only the
    /// test's own rounds run.
    fn grouped() -> (tempfile::TempDir, Store, lockbox_crypto::AgeIdentity) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path())
            .unwrap()
            .with_grouped_syncs(std::time::Duration::from_secs(3600));
        (dir, store, identity::generate())
    }

    /// The modification time the tests' seals through the mount give.
    fn then() -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800)
    }

    fn mtime_of(store: &Store, name: &str) -> SystemTime {
        store.metadata(&n(name)).unwrap().modified().unwrap()
    }

    fn seal_later(store: &Store, id: &lockbox_crypto::AgeIdentity, name: &str, text: &[u8]) {
        let to = SealTo::keys(vec![id.to_public()]);
        let seal = store
            .seal_deferred(&n(name), Cursor::new(text.to_vec()), &to, 1 << 20, then())
            .unwrap();
        assert_eq!(seal.sealed.plaintext_len, text.len() as u64);
        assert_eq!(
            mtime_of(store, name),
            then(),
            "the mount's time, also waiting"
        );
    }

    fn read(store: &Store, id: &lockbox_crypto::AgeIdentity, name: &str) -> Vec<u8> {
        open_to_vec(id, store.open_file(&n(name)).unwrap())
            .unwrap()
            .to_vec()
    }

    fn temps(dir: &tempfile::TempDir) -> usize {
        fs::read_dir(dir.path().join("tmp")).unwrap().count()
    }

    /// `len` bytes that differ from byte to byte.
    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 977) as u8).collect()
    }

    #[test]
    fn a_stream_sealed_in_pieces_is_one_age_file_in_either_mode() {
        for grouped_mode in [false, true] {
            let (dir, store, id) = if grouped_mode { grouped() } else { setup() };
            let text = bytes(3 * 64 * 1024 + 1234 + (1 << 20));
            let to = SealTo::keys(vec![id.to_public()]);
            let mut stream = store.begin_stream(&to).unwrap();
            for piece in text.chunks(100_003) {
                stream.append(piece).unwrap();
            }
            assert_eq!(stream.len(), text.len() as u64);
            assert_eq!(temps(&dir), 1, "the stream writes into a temp file");
            let Seal {
                sealed,
                recorded: pending,
                ..
            } = store.finish_stream(stream, &n("s"), then()).unwrap();
            drop(pending);
            assert_eq!(sealed.plaintext_len, text.len() as u64);
            assert_eq!(read(&store, &id, "s"), text, "grouped: {grouped_mode}");
            let raw = fs::read(store.current_path(&n("s"))).unwrap();
            assert_eq!(sealed.ciphertext_len, raw.len() as u64);
            assert_eq!(sealed.hash, lockbox_crypto::digest::Sha256::of(&raw));
            store.sync_now().unwrap();
            assert_eq!(temps(&dir), 0);
            assert_eq!(read(&store, &id, "s"), text);
            assert_eq!(mtime_of(&store, "s"), then(), "grouped: {grouped_mode}");
        }
    }

    #[test]
    fn block_tags_are_kept_for_their_version_and_follow_renames_and_removes() {
        let (dir, store, id) = grouped();
        let key = Arc::new(TagKey::of(&id));
        let tagged = SealTo {
            tags: Some(key.clone()),
            ..SealTo::keys(vec![id.to_public()])
        };
        let untagged = SealTo::keys(vec![id.to_public()]);
        let text = bytes(200_000);
        let tags_of = |name: &str| dir.path().join("tags").join(name);
        let check = |name: &str| -> Option<BlockTags> {
            let f = store.open_file(&n(name)).unwrap();
            let p = seal::Payload::open(&id, &f).unwrap();
            store.read_tags(&n(name), &key, &p.binding(), p.plaintext_len())
        };
        let seal = |name: &str, to: &SealTo, text: &[u8]| {
            store
                .seal_deferred(&n(name), Cursor::new(text.to_vec()), to, 1 << 20, then())
                .unwrap()
                .tags
        };
        let kept = seal("f", &tagged, &text).expect("tags for a file of four chunks");
        assert_eq!(kept.plaintext_len(), text.len() as u64);
        let read = check("f").expect("the tags file is this version's");
        assert_eq!(read.binding(), kept.binding());
        let mode = fs::metadata(tags_of("f")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // One chunk, or sealed without the key: no tags, and the old ones go.
        assert!(seal("f", &tagged, &text[..60_000]).is_none());
        assert!(!tags_of("f").exists());
        seal("f", &tagged, &text);
        assert!(seal("f", &untagged, &text).is_none());
        assert!(!tags_of("f").exists());
        // Another version's tags put back are not this version's.
        seal("f", &tagged, &text);
        let old = fs::read(tags_of("f")).unwrap();
        seal("f", &tagged, &text);
        fs::write(tags_of("f"), &old).unwrap();
        assert!(check("f").is_none(), "stale tags are told apart");
        // Renames move them (over a name with tags of its own), removes drop them.
        seal("f", &tagged, &text);
        seal("g", &tagged, &text);
        store.rename(&n("f"), &n("g")).unwrap();
        assert!(!tags_of("f").exists());
        assert!(check("g").is_some(), "g has f's tags");
        seal("h", &untagged, &text);
        store.rename(&n("h"), &n("g")).unwrap();
        assert!(!tags_of("g").exists(), "g took h's lack of tags");
        seal("g", &tagged, &text);
        store.remove(&n("g")).unwrap();
        assert!(!tags_of("g").exists());
        store.sync_now().unwrap();
        assert_eq!(temps(&dir), 0, "no tags temp file is left behind");
        // A store opened afresh knows the tags already on disk.
        seal("k", &tagged, &text);
        store.sync_now().unwrap();
        let again = Store::open(dir.path()).unwrap();
        again.rename(&n("k"), &n("m")).unwrap();
        assert!(
            !tags_of("k").exists(),
            "left behind by a rename after a reopen"
        );
        assert!(check("m").is_some(), "m has k's tags");
        again.remove(&n("m")).unwrap();
        assert!(
            !tags_of("m").exists(),
            "left behind by a remove after a reopen"
        );

        // Tags made after the fact are kept only for the current version,
        // whether it waits in the temp folder or is in place.
        seal("u", &untagged, &text);
        let made = |f: &File| {
            let p = seal::Payload::open(&id, f).unwrap();
            p.tag_blocks(f, &key, || true).unwrap().unwrap()
        };
        let v1 = store.open_file(&n("u")).unwrap();
        let t1 = made(&v1);
        assert!(store.attach_tags(&n("u"), &v1, &t1).unwrap());
        assert_eq!(check("u").map(|t| t.encode()), Some(t1.encode()));
        store.sync_now().unwrap();
        let v1 = store.open_file(&n("u")).unwrap();
        assert!(store.attach_tags(&n("u"), &v1, &t1).unwrap(), "in place");
        seal("u", &untagged, &text);
        assert!(!tags_of("u").exists());
        assert!(!store.attach_tags(&n("u"), &v1, &t1).unwrap(), "replaced");
        assert!(!tags_of("u").exists(), "tags of a replaced version kept");
        store.remove(&n("u")).unwrap();
        assert!(!store.attach_tags(&n("u"), &v1, &t1).unwrap(), "removed");
        assert!(!tags_of("u").exists());
        store.sync_now().unwrap();
        assert_eq!(temps(&dir), 0);
    }

    #[test]
    fn a_stream_given_up_returns_its_plaintext_and_leaves_nothing() {
        let (dir, store, id) = setup();
        let to = SealTo::keys(vec![id.to_public()]);
        for len in [0, 10, 64 * 1024, 2 << 20] {
            let text = bytes(len);
            let mut stream = store.begin_stream(&to).unwrap();
            stream.append(&text).unwrap();
            let pages = stream.into_plaintext(&id).unwrap();
            assert_eq!(pages.len(), len as u64);
            let mut back = vec![0u8; len];
            pages.read_at(0, &mut back);
            assert_eq!(back, text, "len {len}");
            assert_eq!(temps(&dir), 0, "len {len}");
        }
        // Dropped unfinished: the temp file goes too, and nothing is stored.
        let mut stream = store.begin_stream(&to).unwrap();
        stream.append(&bytes(3 << 20)).unwrap();
        drop(stream);
        assert_eq!(temps(&dir), 0);
        assert!(store.names().unwrap().is_empty());
    }

    #[test]
    fn a_deferred_seal_is_read_from_its_temp_until_a_round_installs_it() {
        let (dir, store, id) = grouped();
        seal_later(&store, &id, "a", b"first");
        seal_later(&store, &id, "a", b"second, longer");
        // Not in the store folder yet, but every read finds the newest seal.
        assert!(!dir.path().join("store/a").exists());
        assert_eq!(temps(&dir), 1, "the older waiting seal was removed");
        assert!(store.contains(&n("a")));
        assert_eq!(read(&store, &id, "a"), b"second, longer");
        assert_eq!(store.entry(&n("a")).unwrap().size, 14);
        assert_eq!(store.names().unwrap(), vec![n("a")]);
        assert_eq!(store.list().unwrap().len(), 1);
        let before = store.metadata(&n("a")).unwrap();
        store.sync_now().unwrap();
        // Installed: same inode, size and mtime (what the records keep).
        let after = fs::symlink_metadata(dir.path().join("store/a")).unwrap();
        assert_eq!((before.ino(), before.len()), (after.ino(), after.len()));
        assert_eq!(before.mtime_nsec(), after.mtime_nsec());
        assert_eq!(after.permissions().mode() & 0o777, 0o600);
        assert_eq!(temps(&dir), 0);
        assert_eq!(read(&store, &id, "a"), b"second, longer");
        assert_eq!(store.names().unwrap(), vec![n("a")]);
    }

    #[test]
    fn changes_of_a_waiting_name_act_on_its_newest_seal() {
        let (dir, store, id) = grouped();
        let to = SealTo::keys(vec![id.to_public()]);
        let ino_of =
            |name: &str| fs::metadata(dir.path().join("store").join(name)).map(|m| m.ino());
        let log = Arc::new(Log::default());
        let store = store.with_journal(log.clone());
        // Renaming a name that is only a waiting seal (a temp file written,
        // closed and renamed over its target, as editors and rsync do)
        // passes the seal on, without a sync; the round puts it in place.
        // (Where the temp file cannot be marked with its new name, it is
        // put in place first, as before.)
        let passes = has_user_xattrs(dir.path());
        seal_later(&store, &id, "a", b"new a");
        let temp_ino = store.local_stat(&n("a")).unwrap().ino;
        store.rename(&n("a"), &n("b")).unwrap();
        assert!(!store.contains(&n("a")));
        assert_eq!(read(&store, &id, "b"), b"new a");
        assert_eq!(
            temps(&dir),
            usize::from(passes),
            "still waiting, now as b's"
        );
        assert_eq!(
            ino_of("b").is_err(),
            passes,
            "put in place before its round"
        );
        assert_eq!(
            log.entries().last().unwrap(),
            &format!("renamed a b ino={temp_ino}"),
            "the journal has the waiting file's stat"
        );
        store.sync_now().unwrap();
        assert_eq!(temps(&dir), 0);
        assert_eq!(ino_of("b").unwrap(), temp_ino);
        assert_eq!(read(&store, &id, "b"), b"new a");
        // Over a name with a file in the store, which stays until the round.
        store
            .seal(&n("t"), Cursor::new(b"old t"), &to, 100)
            .unwrap();
        let old_t = ino_of("t").unwrap();
        seal_later(&store, &id, "t.swp", b"new t");
        store.rename(&n("t.swp"), &n("t")).unwrap();
        assert_eq!(read(&store, &id, "t"), b"new t");
        assert_eq!(
            ino_of("t").unwrap() == old_t,
            passes,
            "the old file went before the round"
        );
        store.sync_now().unwrap();
        assert_eq!(read(&store, &id, "t"), b"new t");
        assert_ne!(ino_of("t").unwrap(), old_t);
        assert!(!store.contains(&n("t.swp")));
        // A waiting seal of a name that also has a file in the store is put
        // in place first: the old file must leave the name with it.
        store
            .seal(&n("g"), Cursor::new(b"old g"), &to, 100)
            .unwrap();
        seal_later(&store, &id, "g", b"new g");
        store.rename(&n("g"), &n("h")).unwrap();
        assert!(ino_of("h").is_ok() && ino_of("g").is_err());
        assert_eq!(read(&store, &id, "h"), b"new g");
        assert_eq!(temps(&dir), 0);
        store.remove(&n("h")).unwrap();
        store.remove(&n("t")).unwrap();
        // Removing a name removes its installed file and its waiting seal.
        store
            .seal(&n("c"), Cursor::new(b"old c"), &to, 100)
            .unwrap();
        seal_later(&store, &id, "c", b"new c");
        store.remove(&n("c")).unwrap();
        assert!(!store.contains(&n("c")));
        assert!(matches!(store.remove(&n("c")), Err(Error::NotFound(_))));
        seal_later(&store, &id, "w", b"only waiting");
        store.remove(&n("w")).unwrap();
        assert!(!store.contains(&n("w")));
        assert_eq!(temps(&dir), 0);
        // A rename onto a waiting name replaces it: the older seal must not
        // come back with the next round.
        seal_later(&store, &id, "d", b"stale d");
        store
            .seal(&n("e"), Cursor::new(b"e's bytes"), &to, 100)
            .unwrap();
        store.rename(&n("e"), &n("d")).unwrap();
        store.sync_now().unwrap();
        assert_eq!(read(&store, &id, "d"), b"e's bytes");
        // So does a file put in place from a peer (commit_staged).
        seal_later(&store, &id, "f", b"local f");
        let (staged, ()) = store
            .stage(|file| {
                seal_into(file, &n("f"), Cursor::new(b"peer f"), &to, None, 100).map(drop)
            })
            .unwrap();
        {
            let _guard = store.change_lock();
            store.commit_staged(staged, &n("f")).unwrap();
        }
        store.sync_now().unwrap();
        assert_eq!(read(&store, &id, "f"), b"peer f");
        assert_eq!(temps(&dir), 0);
        assert_eq!(store.names().unwrap(), vec![n("b"), n("d"), n("f")]);
    }

    #[test]
    fn many_waiting_seals_share_one_round() {
        let (dir, store, id) = grouped();
        for i in 0..50 {
            seal_later(
                &store,
                &id,
                &format!("f{i:02}"),
                format!("body {i}").as_bytes(),
            );
        }
        assert_eq!(temps(&dir), 50);
        assert_eq!(store.names().unwrap().len(), 50);
        store.sync_round(false).unwrap();
        assert_eq!(temps(&dir), 0);
        for i in 0..50 {
            let p = dir.path().join(format!("store/f{i:02}"));
            assert!(seal::is_age(&fs::read(&p).unwrap()), "{}", p.display());
            assert_eq!(
                read(&store, &id, &format!("f{i:02}")),
                format!("body {i}").as_bytes()
            );
        }
    }

    #[test]
    fn leftover_temp_files_are_removed_only_when_asked() {
        let (dir, store, _id) = setup();
        fs::write(dir.path().join("tmp/dead.partial"), b"partial").unwrap();
        Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        let done = store.recover_leftovers().unwrap();
        assert_eq!((done.removed, done.recovered.len()), (1, 0));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// Whether the file system under `dir` keeps user extended attributes.
    fn has_user_xattrs(dir: &Path) -> bool {
        let p = dir.join("xattr-probe");
        let f = File::create(&p).unwrap();
        let ok = rustix::fs::fsetxattr(&f, "user.probe", b"1", rustix::fs::XattrFlags::empty());
        fs::remove_file(&p).unwrap();
        ok.is_ok()
    }

    #[test]
    fn a_seal_still_waiting_when_the_agent_died_is_put_in_place_at_the_next_start() {
        let (dir, store, id) = grouped();
        let to = SealTo::keys(vec![id.to_public()]);
        store
            .seal(&n("kept"), Cursor::new(b"old"), &to, 100)
            .unwrap();
        seal_later(&store, &id, "kept", b"closed, not yet synced");
        seal_later(&store, &id, "new", b"brand new");
        seal_later(&store, &id, "new", b"brand new, second close");
        // A temp file closed and renamed over its target: its seal waits
        // under the target's name.
        store
            .seal(&n("target"), Cursor::new(b"target's old"), &to, 100)
            .unwrap();
        seal_later(&store, &id, "target~", b"target's new");
        store.rename(&n("target~"), &n("target")).unwrap();
        // A partial temp of a seal in progress, and a complete one from an
        // earlier boot (its bytes may be torn by the power loss).
        fs::write(
            dir.path().join("tmp/cut.partial"),
            b"age-encryption.org/v1\n-> X",
        )
        .unwrap();
        let old_boot = dir.path().join("tmp/old-boot.partial");
        let f = File::create(&old_boot).unwrap();
        let v = "not-this-boot\n7\nghost";
        let marked = rustix::fs::fsetxattr(
            &f,
            SEAL_XATTR,
            v.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        );
        drop(f);
        // The agent dies: no round ran (the window is an hour). The next
        // start opens the store afresh.
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        let done = again.recover_leftovers().unwrap();
        assert_eq!(temps(&dir), 0);
        assert!(!again.contains(&n("ghost")));
        if !has_user_xattrs(dir.path()) {
            assert!(marked.is_err());
            eprintln!(
                "no user xattrs under {}: waiting seals are lost with the agent",
                dir.path().display()
            );
            assert_eq!(read(&again, &id, "kept"), b"old");
            assert!(!again.contains(&n("new")));
            assert_eq!(read(&again, &id, "target"), b"target's old");
            assert!(!again.contains(&n("target~")));
            return;
        }
        assert_eq!(done.recovered, vec![n("kept"), n("new"), n("target")]);
        assert_eq!(done.removed, 2);
        assert_eq!(read(&again, &id, "kept"), b"closed, not yet synced");
        assert_eq!(read(&again, &id, "new"), b"brand new, second close");
        assert_eq!(read(&again, &id, "target"), b"target's new");
        assert!(!again.contains(&n("target~")));
        let p = dir.path().join("store/new");
        assert!(
            rustix::fs::getxattr(&p, SEAL_XATTR, &mut [0u8; 512][..]).is_err(),
            "mark left"
        );
    }

    /// Records what the journal is told; holds every call while its gate
    /// is closed (a slow journal).
    #[derive(Debug, Default)]
    struct Log {
        entries: Mutex<Vec<String>>,
        closed: Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl Log {
        fn add(&self, what: String) {
            let mut closed = self.closed.lock().unwrap();
            while *closed {
                closed = self.opened.wait(closed).unwrap();
            }
            self.entries.lock().unwrap().push(what);
        }
        fn gate(&self, closed: bool) {
            *self.closed.lock().unwrap() = closed;
            self.opened.notify_all();
        }
        fn entries(&self) -> Vec<String> {
            self.entries.lock().unwrap().clone()
        }
    }

    fn ino(stat: Option<LocalStat>) -> String {
        stat.map_or("none".into(), |s| s.ino.to_string())
    }

    impl Journal for Log {
        fn changed(&self, name: &Name, sealed: Option<&Sealed>, stat: Option<LocalStat>) {
            self.add(format!(
                "changed {name} sealed={} ino={}",
                sealed.is_some(),
                ino(stat)
            ));
        }
        fn removed(&self, name: &Name) {
            self.add(format!("removed {name}"));
        }
        fn renamed(&self, from: &Name, to: &Name, stat: Option<LocalStat>) {
            self.add(format!("renamed {from} {to} ino={}", ino(stat)));
        }
    }

    #[test]
    fn pending_changes_are_queued_at_drop_and_a_slow_journal_holds_up_no_change() {
        let (dir, store, id) = setup();
        let log = Arc::new(Log::default());
        let store = store.with_journal(log.clone());
        let to = SealTo::keys(vec![id.to_public()]);
        log.gate(true);

        let (sealed, pending) = store
            .seal_pending(&n("a"), Cursor::new(b"one".to_vec()), &to, 1 << 20)
            .unwrap();
        assert_eq!(sealed.plaintext_len, 3);
        let a_ino = fs::metadata(dir.path().join("store/a")).unwrap().ino();
        // On disk already; until it is dropped no other change can start.
        assert!(store.contains(&n("a")));
        assert!(store.changes.try_lock().is_err());
        drop(pending);
        // Queued: the lock is free although the journal cannot run.
        assert!(store.changes.try_lock().is_ok());
        let pending = store.rename_pending(&n("a"), &n("b")).unwrap();
        assert!(store.contains(&n("b")) && !store.contains(&n("a")));
        assert!(store.changes.try_lock().is_err());
        drop(pending);
        drop(store.remove_pending(&n("b")).unwrap());
        assert!(!store.contains(&n("b")));
        assert!(log.entries().is_empty());

        // The mesh's lock waits for the whole queue, delivered in order, and
        // carries the stat each change had (the file is gone by now).
        let other = store.clone();
        let holder = std::thread::spawn(move || {
            let _guard = other.change_lock();
            // Nothing can be queued while the lock is held.
            other.journal.as_ref().unwrap().len()
        });
        log.gate(false);
        assert_eq!(holder.join().unwrap(), 0);
        assert_eq!(
            log.entries(),
            [
                format!("changed a sealed=true ino={a_ino}"),
                format!("renamed a b ino={a_ino}"),
                "removed b".to_string(),
            ]
        );
    }

    #[test]
    fn the_journal_thread_delivers_without_being_asked_and_immediate_forms_wait() {
        let (_dir, store, id) = setup();
        let log = Arc::new(Log::default());
        let store = store.with_journal(log.clone());
        let to = SealTo::keys(vec![id.to_public()]);

        drop(
            store
                .seal_pending(&n("a"), Cursor::new(b"one".to_vec()), &to, 1 << 20)
                .unwrap(),
        );
        // Nobody drains: the journal's thread delivers on its own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while log.entries().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never delivered");
            std::thread::yield_now();
        }
        assert_eq!(log.entries().len(), 1);

        // The immediate forms are journaled before they return; a failed
        // change journals nothing and leaves the lock free.
        store
            .seal(&n("c"), Cursor::new(b"two".to_vec()), &to, 1 << 20)
            .unwrap();
        assert_eq!(log.entries().len(), 2);
        store.rename(&n("c"), &n("d")).unwrap();
        store.remove(&n("d")).unwrap();
        assert_eq!(log.entries().len(), 4);
        assert!(matches!(store.remove(&n("gone")), Err(Error::NotFound(_))));
        assert!(store.rename_pending(&n("gone"), &n("x")).is_err());
        assert_eq!(log.entries().len(), 4);
        assert!(store.changes.try_lock().is_ok());
    }
}
