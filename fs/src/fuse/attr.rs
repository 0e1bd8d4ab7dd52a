//! The attributes the kernel is shown: the folder's, a file's from its
//! staged content or its store version's plaintext size (no key needed),
//! and an unlinked file's from a handle still open on it; and `setattr`
//! (truncation, the modification time and the owner's execute bit; the
//! other mode bits and owners are fixed).
//! Reading attributes must not change the node table beyond noting a
//! store version's size.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, ReplyAttr, TimeOrNow};
use lockbox_crypto::seal::CHUNK_SIZE;

use crate::escape::Escape;
use crate::store::{file_mode, is_executable};
use crate::{lock, Error, Name};

use super::inodes::{Handle, StoreVersion};
use super::staged::Staged;
use super::{errno_of, LockboxFs, ROOT, TTL};

impl LockboxFs {
    pub(super) fn root_attr(&self) -> FileAttr {
        let mtime = *lock(&self.folder_mtime);
        let folders = if self.has_folders() {
            self.store.folder_count_at_top()
        } else {
            0
        };
        self.dir_attr(ROOT, mtime, folders)
    }

    /// A file's attributes: 0600, or 0700 when `executable`.
    pub(super) fn file_attr(
        &self,
        ino: u64,
        size: u64,
        mtime: SystemTime,
        executable: bool,
    ) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::RegularFile,
            perm: file_mode(executable) as u16,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: CHUNK_SIZE as u32,
            flags: 0,
        }
    }

    /// Attributes of a node: staged size while being written, else the
    /// plaintext size of its store version (no key needed). A buffer its
    /// last writer released is no longer what the file is: between the
    /// release marking it and taking it off the node, a `truncate(2)` goes
    /// to the store file (see `set_attr`), and the answer must say so.
    pub(super) fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        if ino == ROOT {
            return Ok(self.root_attr());
        }
        let (name, staged, folder) = {
            let inner = lock(&self.inner);
            let node = inner.nodes.get(&ino).ok_or(Errno::ENOENT)?;
            (node.name.clone(), node.staged.clone(), node.folder)
        };
        if folder {
            return self.folder_attr(ino, name.as_ref().ok_or(Errno::ENOENT)?);
        }
        if let Some(s) = staged {
            let s = lock(&s);
            if s.loaded && s.poisoned.is_none() && !s.released {
                let mut attr = self.file_attr(ino, s.len(), s.mtime, s.executable);
                if name.is_none() {
                    attr.nlink = 0;
                }
                return Ok(attr);
            }
        }
        let Some(name) = name else {
            // Unlinked or renamed over while open: fstat(2) of a descriptor
            // (the kernel asks without naming it) describes what it reads.
            return self.unnamed_attr(ino).ok_or(Errno::ENOENT);
        };
        let meta = self.store.metadata(&name).map_err(|_| Errno::ENOENT)?;
        self.store_attr(ino, &name, &meta)
    }

    /// Attributes of node `ino`, which has no name any more, from a handle
    /// still open on it: a reader's pinned store file, or a writer's loaded
    /// content. Link count 0, as for any open file whose last name went.
    pub(super) fn unnamed_attr(&self, ino: u64) -> Option<FileAttr> {
        let open: Vec<Arc<Handle>> = lock(&self.inner)
            .handles
            .values()
            .filter(|h| match &***h {
                Handle::Reader { ino: i, .. } | Handle::Staged { ino: i, .. } => *i == ino,
            })
            .cloned()
            .collect();
        let mut attr = open.iter().find_map(|h| match &**h {
            Handle::Reader { len, state, .. } => {
                let file = lock(state).file.clone();
                let meta = file.metadata().ok()?;
                let mtime = meta.modified().ok()?;
                Some(self.file_attr(ino, *len, mtime, is_executable(&meta)))
            }
            Handle::Staged { staged, .. } => {
                let st = lock(staged);
                (st.loaded && st.poisoned.is_none())
                    .then(|| self.file_attr(ino, st.len(), st.mtime, st.executable))
            }
        })?;
        attr.nlink = 0;
        Some(attr)
    }

    /// Attributes of node `ino`, named `name`, whose store file has
    /// metadata `meta`: the plaintext size comes from the mount's
    /// [`FsState::sizes`], or else the file's header.
    pub(super) fn store_attr(
        &self,
        ino: u64,
        name: &Name,
        meta: &std::fs::Metadata,
    ) -> Result<FileAttr, Errno> {
        let version = StoreVersion::of(meta);
        let known = {
            let mut inner = lock(&self.inner);
            let known = inner.sizes.get(&version).copied();
            if known.is_some() {
                Self::now_version(&mut inner, ino, version);
            }
            known
        };
        let size = match known {
            Some(size) => size,
            None => {
                let size = self.store.entry(name).map_err(|e| errno_of(&e))?.size;
                self.remember_size(ino, version, size);
                size
            }
        };
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        Ok(self.file_attr(ino, size, mtime, is_executable(meta)))
    }

    /// For `access(2)` with `X_OK`: whether node `ino` shows an execute
    /// bit (a folder always does). Only a stat, never a header read.
    pub(super) fn may_execute(&self, ino: u64) -> Result<bool, Errno> {
        let (name, staged, folder) = {
            let inner = lock(&self.inner);
            let node = inner.nodes.get(&ino).ok_or(Errno::ENOENT)?;
            (node.name.clone(), node.staged.clone(), node.folder)
        };
        if folder {
            return Ok(true);
        }
        if let Some(s) = staged {
            let s = lock(&s);
            if !s.released {
                return Ok(s.executable);
            }
        }
        match name {
            Some(name) => {
                let meta = self.store.metadata(&name).map_err(|_| Errno::ENOENT)?;
                Ok(is_executable(&meta))
            }
            None => {
                let attr = self.unnamed_attr(ino).ok_or(Errno::ENOENT)?;
                Ok(attr.perm & 0o100 != 0)
            }
        }
    }

    /// `chmod` of file `ino` (its staged buffer, if it has one): give it
    /// the owner's execute bit `on`. A buffer changed since its last seal
    /// carries the bit to the seal that is to come; otherwise the store
    /// file takes it now, a new version of the same content, and a buffer
    /// open on it keeps the bit for its next seal.
    fn set_executable(
        &self,
        ino: u64,
        staged: Option<&Arc<Mutex<Staged>>>,
        on: bool,
    ) -> Result<(), Errno> {
        let mut st = staged.map(|s| lock(s)).filter(|st| !st.released);
        if let Some(st) = st.as_deref_mut() {
            st.executable = on;
            if st.dirty {
                return Ok(());
            }
        }
        let name = lock(&self.inner)
            .nodes
            .get(&ino)
            .and_then(|n| n.name.clone())
            .ok_or(Errno::ENOENT)?;
        match self.store.set_executable(&name, on) {
            // The new version is recorded once the reply is on its way.
            Ok(recorded) => {
                drop(recorded);
                Ok(())
            }
            // Created and not sealed yet: its first seal takes the bit.
            Err(Error::NotFound(_)) if st.is_some() => Ok(()),
            Err(e) => {
                tracing::warn!("chmod of {}: {e}", name.escaped());
                Err(errno_of(&e))
            }
        }
    }

    /// `setattr`: truncate (`truncate(2)`, `ftruncate(2)`), set the
    /// modification time and (`chmod`) the owner's execute bit; answers
    /// with the attributes after.
    pub(super) fn set_attr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        size: Option<u64>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
        reply: ReplyAttr,
    ) {
        if ino.0 == ROOT {
            if let Some(t) = mtime {
                *lock(&self.folder_mtime) = match t {
                    TimeOrNow::SpecificTime(t) => t,
                    TimeOrNow::Now => SystemTime::now(),
                };
            }
            return reply.attr(&TTL, &self.root_attr());
        }
        let folder = lock(&self.inner)
            .nodes
            .get(&ino.0)
            .filter(|n| n.folder)
            .map(|n| n.name.clone());
        if let Some(name) = folder {
            // A folder: its time only (modes and owners are fixed).
            let Some(name) = name else {
                return reply.error(Errno::ENOENT);
            };
            if size.is_some() {
                return reply.error(Errno::EISDIR);
            }
            if let Some(t) = mtime {
                let t = match t {
                    TimeOrNow::SpecificTime(t) => t,
                    TimeOrNow::Now => SystemTime::now(),
                };
                lock(&self.inner).folder_times.insert(name.clone(), t);
                // On the store folder too, for the next start.
                if let Err(e) = self.store.set_folder_mtime(&name, t) {
                    tracing::debug!("{e}");
                }
            }
            return match self.folder_attr(ino.0, &name) {
                Ok(a) => reply.attr(&TTL, &a),
                Err(e) => reply.error(e),
            };
        }
        // chown is accepted and ignored (the files are the owner's); of a
        // chmod, only the owner's execute bit is kept.
        let staged = lock(&self.inner)
            .nodes
            .get(&ino.0)
            .and_then(|n| n.staged.clone());
        if let Some(mode) = mode {
            if let Err(e) = self.set_executable(ino.0, staged.as_ref(), mode & 0o100 != 0) {
                return reply.error(e);
            }
        }
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        });
        if let Some(size) = size {
            if size > self.config.max_file_size {
                return reply.error(Errno::EFBIG);
            }
            // A buffer its last writer released is sealed and being taken
            // off the node: the store file is what to truncate (a truncate
            // of that buffer would never be sealed). Checked under its lock,
            // which the release sets `released` under.
            let mut st = staged.as_ref().map(|s| lock(s)).filter(|st| !st.released);
            let r = match st.as_deref_mut() {
                Some(st) => {
                    let ready = if size == 0 {
                        st.clear();
                        Ok(())
                    } else if st.stream.as_ref().is_some_and(|s| s.len() == size) {
                        Ok(())
                    } else {
                        self.ensure_loaded(ino.0, st, "truncating to a non-zero size")
                            .and_then(|()| self.unstream(st, "truncating a file being written"))
                            .map(|()| st.streamable = false)
                    };
                    ready.map(|()| {
                        if st.len() != size || !st.dirty {
                            if st.stream.is_none() {
                                st.pages.truncate(size);
                            }
                            st.dirty = true;
                            st.mtime = SystemTime::now();
                        }
                    })
                }
                None => self.truncate_closed(ino.0, size),
            };
            if let Err(e) = r {
                return reply.error(e);
            }
            // ftruncate(2) writes through its descriptor: its fsync and
            // close seal the new length, as they would a write. (Without a
            // descriptor, truncate(2) of a file open for writing is sealed
            // by its writers' close.)
            if let Some(Ok(h)) = fh.map(|fh| self.handle(fh)) {
                if let Handle::Staged {
                    write: true, wrote, ..
                } = &*h
                {
                    wrote.store(true, Ordering::Relaxed);
                }
            }
        }
        if let Some(t) = mtime {
            // Staged and not yet sealed: the seal sets it. Otherwise (also a
            // staged file already sealed at close(2), whose release has not
            // come yet: cp -p and rsync set the time right after close) it
            // goes on the store file now.
            let pending = staged.as_ref().is_some_and(|s| {
                let mut st = lock(s);
                st.mtime = t;
                st.dirty
            });
            if !pending {
                let name = lock(&self.inner)
                    .nodes
                    .get(&ino.0)
                    .and_then(|n| n.name.clone());
                let Some(name) = name else {
                    return reply.error(Errno::ENOENT);
                };
                if let Err(e) = self.store.set_mtime(&name, t) {
                    return reply.error(errno_of(&e));
                }
            }
        }
        match self.attr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }
}
