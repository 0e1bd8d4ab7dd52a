//! Grouped syncs of the store ([`Store::with_grouped_syncs`]): a seal made
//! through the mount ([`Store::seal_deferred`]) *waits* in its temp file,
//! where every read of the name finds it, until a background round makes
//! all waiting temps durable with one `syncfs` and renames them into place;
//! the folder is synced once per round too. What a crash may undo is
//! bounded by the window, and a name still never holds a torn file: a temp
//! enters the store only after it is durable.
//!
//! It owns the waiting seals (per name, the newest), the rounds, the
//! changes of a name that has one (install, pass on by rename, drop), and
//! the recovery at start of seals completed before the agent stopped
//! ([`Store::recover_leftovers`]). It must not seal (that is `seal`) and
//! only the store's single writer may recover.

use crate::escape::Escape;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::durable::sync_dir;
use crate::grouped::GroupedSync;
use crate::journal::Event;
use crate::meta::LocalStat;
use crate::name::Name;
use crate::sealed::{Base, Placed, Sealed};
use crate::{lock, Error};

use super::{tree, Pending, StagedFile, Store};

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
pub(super) fn remove_leftover(p: &Path) -> usize {
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
pub(super) const SEAL_XATTR: &str = "user.lockbox.seal";

/// This boot's id (`/proc/sys/kernel/random/boot_id`), if the kernel says.
pub(super) fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Mark a waiting seal complete, so that if the agent dies before a round
/// puts it in place the next start does (see [`Store::recover_leftovers`]).
/// Without extended attributes on the store's file system a waiting seal
/// dies with the agent, as it would with the machine; that is said once.
pub(super) fn mark_complete(file: &File, seq: u64, name: &Name) {
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
pub(super) fn seal_mark(seq: u64, name: &Name) -> Option<Vec<u8>> {
    let boot = boot_id()?;
    let mut v = format!("{boot}\n{seq}\n").into_bytes();
    v.extend_from_slice(name.as_bytes());
    Some(v)
}

/// The number and name of the complete seal `path` holds, if it was
/// marked in this boot.
pub(super) fn completed_seal_of(path: &Path) -> Option<(u64, Name)> {
    use std::os::unix::ffi::OsStrExt;
    let boot = boot_id()?;
    // The boot id, the sequence number, the name.
    let mut buf = vec![0u8; 64 + crate::name::MAX_PATH_BYTES];
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
pub(super) struct Waiting {
    /// Per name, its newest seal. Held while a temp is opened or renamed
    /// into place, so a reader never opens a path that just moved.
    pub(super) files: Mutex<HashMap<Name, WaitingFile>>,
    /// Numbers the seals, so a round installs only the one it synced.
    pub(super) next: AtomicU64,
    /// One round at a time (the store's syncer, the metadata's, `fsync`).
    pub(super) round: Mutex<()>,
    /// The store folders whose entries changed since their last sync.
    pub(super) changed: super::tree::Changed,
    /// The time each store folder should have, as the mount shows it: set
    /// by `utimensat`, or the time a name in it last changed through the
    /// mount. A round that puts a seal in place in such a folder gives it
    /// this time back (the seal's create, or the time set, came before the
    /// rename that lands it). Kept while seals wait there, and for
    /// [`KEEP_FOLDER_TIME`] (a file being written there has no seal
    /// waiting yet), with when it was noted.
    pub(super) folder_times: Mutex<HashMap<PathBuf, (std::time::SystemTime, Instant)>>,
    /// Tests: the next sync of the waiting temps fails as a disk's would.
    #[cfg(test)]
    pub(super) fail_next_sync: AtomicBool,
}

#[derive(Debug)]
pub(super) struct WaitingFile {
    pub(super) temp: PathBuf,
    pub(super) seq: u64,
}

/// How long the time the mount gave a store folder is kept for a seal
/// that lands there later, when none waits there yet (a file written for
/// longer than this, across a change of its folder, may move the folder's
/// time on disk when its seal lands; the mount shows the right one until
/// the agent restarts).
pub(super) const KEEP_FOLDER_TIME: Duration = Duration::from_secs(600);

/// The time `folder` must keep when a round puts a seal in place as its
/// file `dest`, which on disk moves the folder's time although the mount
/// showed the change before: the time the mount gave it since
/// (`Waiting::folder_times`: a name changed, or `rsync -a` set it right
/// after closing the files in it); else, for a seal that replaces a file,
/// the time it had before the round (`before`, if an earlier seal of the
/// round kept one), since a new version of a file is not a change of its
/// folder; else `None`.
fn folder_time_to_keep(
    times: &HashMap<PathBuf, (std::time::SystemTime, Instant)>,
    before: Option<std::time::SystemTime>,
    folder: &Path,
    dest: &Path,
) -> Option<std::time::SystemTime> {
    if let Some((t, _)) = times.get(folder) {
        return Some(*t);
    }
    if dest.symlink_metadata().is_err() {
        return None;
    }
    before.or_else(|| folder.symlink_metadata().and_then(|m| m.modified()).ok())
}

/// Say that `name`'s waiting seal was dropped because the disk failed to
/// store it (`e`).
pub(super) fn log_lost_to_the_disk(name: &Name, e: &Error) {
    tracing::error!(
        "{name}: the disk failed while storing its newest version ({e}); that version is \
         dropped and {name} keeps the one before it; check the disk",
        name = name.escaped()
    );
}

impl Store {
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
        let mut folders = BTreeSet::new();
        for (name, (_, temp)) in newest {
            let dest = self.path_of(&name);
            let put = File::open(&temp)
                .and_then(|f| f.sync_data())
                .and_then(|()| tree::rename_making_folders(&self.dir, &temp, &name));
            match put {
                Ok(made) => {
                    let _ = rustix::fs::removexattr(&dest, SEAL_XATTR);
                    folders.extend(made.iter().chain([&name]).map(|n| self.folder_of(n)));
                    done.recovered.push(name);
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot put the sealed {} in place ({e}): it is lost",
                        name.escaped()
                    );
                    done.removed += remove_leftover(&temp);
                }
            }
        }
        for folder in folders {
            sync_dir(&folder)?;
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
            // Held through the renames: a folder's time set meanwhile
            // (`set_folder_mtime`) comes before or after each one whole.
            let mut times = lock(&w.folder_times);
            // Per folder, the time to give back once the round's seals are
            // in place (its last rename's verdict; `None`: that rename
            // moves it): one `utimensat` per folder, not per seal.
            let mut give_back: HashMap<PathBuf, Option<std::time::SystemTime>> = HashMap::new();
            let mut failed = None;
            for (name, temp, seq) in batch {
                let mut files = lock(&w.files);
                if files.get(&name).map(|f| f.seq) != Some(seq) {
                    continue; // replaced, removed or installed meanwhile
                }
                let dest = self.path_of(&name);
                let folder = self.folder_of(&name);
                let before = give_back.get(&folder).copied().flatten();
                let keep = folder_time_to_keep(&times, before, &folder, &dest);
                match tree::rename_making_folders(&self.dir, &temp, &name) {
                    Ok(made) => {
                        files.remove(&name);
                        for n in made.iter().chain([&name]) {
                            w.changed.insert(self.folder_of(n));
                        }
                        let _ = rustix::fs::removexattr(&dest, SEAL_XATTR);
                        give_back.insert(folder, keep);
                    }
                    Err(e) => failed = Some(Error::io("rename into", &dest, e)),
                }
            }
            for (folder, t) in give_back {
                if let Some(t) = t {
                    let _ = File::open(&folder).and_then(|f| f.set_modified(t));
                }
            }
            // A folder no seal waits for has its time on disk, unless a
            // file written there is still to be sealed.
            let files = lock(&w.files);
            let waited: HashSet<PathBuf> = files.keys().map(|n| self.folder_of(n)).collect();
            times.retain(|folder, (_, noted)| {
                waited.contains(folder) || noted.elapsed() < KEEP_FOLDER_TIME
            });
            drop((times, files));
            if let Some(e) = failed {
                return Err(e);
            }
        }
        w.changed.sync(force_dir.then_some(self.dir.as_path()))?;
        self.sync_held()
    }

    /// A round's sync of the waiting temps failed: drop those seals, so
    /// each name keeps the version it had. The kernel reports a write-back
    /// error once and may have let the failed pages go, so a second sync
    /// can succeed without the data on disk; installing the temps then
    /// would put files with holes where complete versions were (the
    /// "fsyncgate" lesson). A seal that a newer one replaced meanwhile is
    /// that one's round's business.
    pub(super) fn drop_unsynced(&self, w: &Waiting, batch: Vec<(Name, PathBuf, u64)>, e: &Error) {
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
    pub(super) fn sync_contents<'p>(
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
    pub(super) fn waiting_temp(&self, name: &Name) -> Option<PathBuf> {
        let w = self.waiting.as_ref()?;
        lock(&w.files).get(name).map(|f| f.temp.clone())
    }

    /// Under the change lock: put `name`'s waiting seal in place now (made
    /// durable first), as a rename of `name` needs it in the store.
    pub(super) fn install_locked(&self, name: &Name) -> Result<(), Error> {
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
        self.put_in_place(&temp, name)?;
        files.remove(name);
        drop(files);
        let _ = rustix::fs::removexattr(&dest, SEAL_XATTR);
        Ok(())
    }

    /// Under the change lock: rename `from`, which exists only as a seal
    /// waiting for its round, to `to` without a sync: the seal waits on as
    /// `to`'s newest version (its temp file marked with the new name, for
    /// a restart after a kill), and its round puts it in place over `to`'s
    /// older file. This is how editors and `rsync` replace a file: write a
    /// temp file, close it, rename it over the target; installing the temp
    /// first would cost each of them an `fdatasync`. A start after a crash
    /// puts the seal in place under `to` (a complete seal of this boot),
    /// marked with `from` by the rename (`held`'s mark), so a version of
    /// `from` that was signed and sent before the crash is deleted there as
    /// the rename did.
    /// `false`, nothing done, if `from` has no waiting seal or also a file
    /// in the store, which must leave the name with the rename.
    pub(super) fn pass_waiting_locked(&self, from: &Name, to: &Name) -> Result<bool, Error> {
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
    pub(super) fn drop_waiting_locked(&self, name: &Name) -> bool {
        match self.take_waiting_locked(name) {
            Some(temp) => {
                remove_leftover(&temp);
                true
            }
            None => false,
        }
    }

    /// Take `name`'s waiting seal out of the waiting list, leaving its
    /// temp file to the caller (under the change lock).
    pub(super) fn take_waiting_locked(&self, name: &Name) -> Option<PathBuf> {
        let w = self.waiting.as_ref()?;
        let f = lock(&w.files).remove(name)?;
        Some(f.temp)
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

    /// Put a complete seal (marked with `seq`) among the waiting ones as
    /// the newest version of `name`.
    /// It goes where the journal places a seal from `base`
    /// ([`Store::place_locked`]); a seal placed under another name is
    /// marked with that name, for a restart.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wait_staged(
        &self,
        g: &GroupedSync,
        w: &Waiting,
        name: &Name,
        mut staged: StagedFile,
        file: &File,
        seq: u64,
        sealed: Sealed,
        base: &Base,
    ) -> (Sealed, Option<fs::Metadata>, Pending<'_>, Option<Placed>) {
        let guard = self.lock_changes();
        let placed = self.place_locked(name, base, &sealed);
        if let Some(p) = &placed {
            StagedFile::attach_placed_via(file, &p.version);
        }
        let at = placed.as_ref().map_or(name, |p| &p.under);
        if at != name {
            mark_complete(file, seq, at);
        }
        let metadata = file.metadata().ok();
        let stat = metadata.as_ref().map(LocalStat::from_metadata);
        let temp = std::mem::take(&mut staged.path);
        let older = lock(&w.files).insert(at.clone(), WaitingFile { temp, seq });
        if let Some(older) = older {
            remove_leftover(&older.temp);
        }
        self.forget_states_locked(&[at]);
        g.mark();
        let event = match &placed {
            Some(p) => Event::Placed(at.clone(), sealed.clone(), p.version.clone(), stat),
            None => Event::Changed(name.clone(), Some(sealed.clone()), stat),
        };
        (sealed, metadata, self.pending(guard, event), placed)
    }
}
