//! Deleted bytes held until the delete is on record: `~/.lockbox/removed/`.
//!
//! A delete through the mount (or `lockbox delete`) is acknowledged when
//! the store file is gone from its name, but its record — the signed
//! tombstone — is written later by the journal and made durable with the
//! next grouped commit of `meta.redb` (up to a window later). An agent
//! killed in between came back to a record whose file was gone and took
//! it for a lost file that a peer would send again: the delete was undone
//! on every envoy. So the store does not unlink the file: it *moves* it
//! into this folder (one `rename`, as cheap as the `unlink` it replaces),
//! and the bytes stay there until the record of the delete is durable
//! ([`Journal::removed_held`](crate::Journal::removed_held), which the
//! mesh runs after its commit). A start that finds bytes here knows each
//! one was deleted on purpose on this envoy, and by their hash which
//! record they belong to (`lockbox_net`'s reconcile signs the delete that
//! was lost, then empties the folder).
//!
//! A rename needs no such folder: the moved bytes carry the name they came
//! from ([`MOVED_FROM_XATTR`]), which tells a reconcile that the record of
//! a name whose file is gone was moved here on purpose. Held bytes carry
//! it too: the name they were deleted from.
//!
//! What is held is ciphertext, `0600`, in a `0700` folder, for at most a
//! commit window in a running agent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Store;
use crate::durable::sync_dir;
use crate::escape::Escape;
use crate::name::Name;
use crate::Error;

/// The extended attribute that names where a file was renamed from
/// through the mount (see the module docs). Best effort.
pub(super) const MOVED_FROM_XATTR: &str = "user.lockbox.moved-from";

/// What became of bytes a delete took.
enum Taken {
    /// There were none.
    Nothing,
    /// Moved into the held folder, here.
    Held(PathBuf),
    /// Removed: the held folder could not take them.
    Unlinked,
}

/// Tells held files apart within one agent's life (the process id tells
/// lives apart).
static HELD_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The folder of held bytes.
    pub fn held_dir(&self) -> &Path {
        &self.held
    }

    /// Move `name`'s bytes into the held folder: its waiting seal (whose
    /// record may have been pushed before it was durable) and its store
    /// file; the caller holds the change lock. Returns whether it had any,
    /// and where those that could be held went.
    pub(super) fn hold_locked(&self, name: &Name) -> Result<(bool, Vec<PathBuf>), Error> {
        let mut had = false;
        let mut held = Vec::new();
        let temp = self.take_waiting_locked(name);
        for from in temp.into_iter().chain([self.path_of(name)]) {
            match self.hold_file(&from, name)? {
                Taken::Nothing => {}
                Taken::Unlinked => had = true,
                Taken::Held(to) => {
                    had = true;
                    held.push(to);
                }
            }
        }
        Ok((had, held))
    }

    /// Move the file at `from`, `name`'s bytes, into the held folder, if
    /// it is there; if the folder cannot take it, remove it as before.
    fn hold_file(&self, from: &Path, name: &Name) -> Result<Taken, Error> {
        let seq = HELD_SEQ.fetch_add(1, Ordering::Relaxed);
        let to = self.held.join(format!("{}.{seq}", std::process::id()));
        match fs::rename(from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Taken::Nothing),
            Err(e) => {
                // A full disk can refuse even a rename (a new block for the
                // folder), and a delete is how one frees space: remove the
                // bytes instead. A crash within the window may then undo
                // this delete, as before the held folder.
                tracing::debug!(
                    "cannot hold {} in {}: {e}; removing it",
                    name.escaped(),
                    self.held.display()
                );
                return match fs::remove_file(from) {
                    Ok(()) => Ok(Taken::Unlinked),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Taken::Nothing),
                    Err(e) => Err(Error::io("remove", from, e)),
                };
            }
        }
        // Which name the bytes were taken from: a start needs it to tell
        // what was deleted (a conflict copy's record names its origin).
        set_moved_from(&to, name);
        // Durable with the store folder's next sync (grouped) or now: a
        // crash may undo the delete whole, but never lose the bytes while
        // their record still names them.
        self.held_dirty.store(true, Ordering::SeqCst);
        if self.grouped.is_none() {
            sync_dir(&self.held)?;
        }
        Ok(Taken::Held(to))
    }

    /// Sync the held folder if a file moved into it since the last time.
    pub(super) fn sync_held(&self) -> Result<(), Error> {
        if self.held_dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = sync_dir(&self.held) {
                self.held_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The files in the held folder: deletes made on this envoy whose
    /// records may not have been durable when the agent stopped.
    pub fn held_files(&self) -> Result<Vec<PathBuf>, Error> {
        let rd = fs::read_dir(&self.held).map_err(|e| Error::io("read", &self.held, e))?;
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        Ok(files)
    }

    /// Note on the file now under `to` that it was renamed from `from`
    /// through the mount (see the module docs).
    pub(super) fn mark_moved_from(&self, to: &Name, from: &Name) {
        self.at_current(to, |p| set_moved_from(p, from));
    }

    /// The name `name`'s store file was last renamed from through the
    /// mount, if it says so.
    pub fn moved_from(&self, name: &Name) -> Option<Name> {
        moved_from_at(&self.path_of(name))
    }
}

/// Mark the file at `path` as moved from `from` (best effort).
pub fn set_moved_from(path: &Path, from: &Name) {
    let _ = rustix::fs::setxattr(
        path,
        MOVED_FROM_XATTR,
        from.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    );
}

/// The name the file at `path` (a store file, or held bytes) was moved
/// from, if it says so.
pub fn moved_from_at(path: &Path) -> Option<Name> {
    let mut buf = vec![0u8; crate::name::MAX_PATH_BYTES + 1];
    let n = rustix::fs::getxattr(path, MOVED_FROM_XATTR, &mut buf[..]).ok()?;
    buf.truncate(n);
    Name::new(buf).ok()
}

/// Let go of held bytes: their delete is on record. A file already gone
/// is fine; another error is logged (the next start empties the folder).
pub fn release_held(held: &Path) {
    match fs::remove_file(held) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            "cannot remove {} (a deleted file's bytes, kept until its delete was recorded): {e}",
            held.display()
        ),
    }
}
