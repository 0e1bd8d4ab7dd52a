//! The mode of a store file: the one attribute besides its time that a
//! file in the lockbox keeps and the mesh carries (see `docs/format.md`,
//! "Store files", and `docs/folders.md`, "What users get"). Owner read
//! and write always; the owner's execute bit when the file is
//! executable, so a script kept in the lockbox stays runnable.
//! Group and other bits are never set: a `chmod` that asks for them is
//! granted with them cleared, the way a umask would.
//!
//! A seal gives its temp file the bit before it is put in place
//! ([`SealAttrs`]); a received version takes the bit its record names
//! ([`StagedFile::set_executable`]); a `chmod` that flips it is a new
//! version of the same content ([`Store::set_executable`]).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use super::{Pending, StagedFile, Store};
use crate::escape::Escape;
use crate::journal::Event;
use crate::meta::LocalStat;
use crate::sealed::Sealed;
use crate::{Error, Name};

/// The mode of a store file that is not executable.
pub const FILE_MODE: u32 = 0o600;

/// The mode of a store file that is executable.
pub const EXECUTABLE_FILE_MODE: u32 = 0o700;

/// The mode of a store file, executable or not.
pub fn file_mode(executable: bool) -> u32 {
    if executable {
        EXECUTABLE_FILE_MODE
    } else {
        FILE_MODE
    }
}

/// Whether a file with metadata `meta` is executable by its owner (a store
/// file, or a plaintext one being imported).
pub fn is_executable(meta: &fs::Metadata) -> bool {
    meta.mode() & 0o100 != 0
}

/// Give the store file (or temp file) at `path` the mode for `executable`.
pub(super) fn set_mode_at(path: &Path, executable: bool) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(file_mode(executable)))
}

/// What a seal gives its store file besides the ciphertext.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealAttrs {
    /// Its modification time; `None`: the time of the seal.
    pub mtime: Option<SystemTime>,
    /// The owner's execute bit; `None`: the bit of the version it replaces
    /// (clear for a new name).
    pub executable: Option<bool>,
}

impl SealAttrs {
    /// The time `mtime` and the execute bit `executable` (the mount's
    /// seals, which know both).
    pub fn new(mtime: SystemTime, executable: bool) -> SealAttrs {
        SealAttrs {
            mtime: Some(mtime),
            executable: Some(executable),
        }
    }
}

impl StagedFile {
    /// Give the file the execute bit `on` before it is put in place (a
    /// received version, as its record says; a re-encryption, as the
    /// version it replaces was).
    pub fn set_executable(&self, on: bool) -> Result<(), Error> {
        set_mode_at(&self.path, on).map_err(|e| Error::io("set the mode of", &self.path, e))
    }
}

impl Store {
    /// Whether `name`'s newest bytes are executable; false if it has none.
    pub fn executable(&self, name: &Name) -> bool {
        self.at_current(name, |p| {
            p.symlink_metadata().is_ok_and(|m| is_executable(&m))
        })
    }

    /// Give the temp file `file` of a seal of `name` what `attrs` asks,
    /// and note the execute bit in `sealed`.
    pub(super) fn give_attrs(
        &self,
        file: &File,
        name: &Name,
        attrs: SealAttrs,
        sealed: &mut Sealed,
    ) {
        let executable = attrs.executable.unwrap_or_else(|| self.executable(name));
        if executable {
            if let Err(e) = file.set_permissions(fs::Permissions::from_mode(EXECUTABLE_FILE_MODE)) {
                tracing::warn!(
                    "cannot make the new version of {} executable: {e}",
                    name.escaped()
                );
            }
        }
        sealed.executable = executable;
        if let Some(t) = attrs.mtime {
            super::seal::set_mtime_of(file, t);
        }
    }

    /// `chmod`: give `name`'s newest bytes the owner's execute bit `on`.
    /// A change of the bit is a change of the file, which the journal
    /// hears of (as a new version of the same content) when the returned
    /// [`Pending`] is dropped; `None` when the bit was already so. The new
    /// mode is durable when it returns.
    pub fn set_executable(&self, name: &Name, on: bool) -> Result<Option<Pending<'_>>, Error> {
        let guard = self.lock_changes();
        let stat = self.at_current(name, |p| {
            let meta = p.symlink_metadata().map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotFound(name.to_string()),
                _ => Error::io("stat", p, e),
            })?;
            if is_executable(&meta) == on {
                return Ok(None);
            }
            set_mode_at(p, on)
                .and_then(|()| File::open(p)?.sync_all())
                .map_err(|e| Error::io("set the mode of", p, e))?;
            Ok::<_, Error>(Some(LocalStat::of(p).ok()))
        })?;
        Ok(stat.map(|stat| self.pending(guard, Event::Changed(name.clone(), None, stat))))
    }
}
