//! The attributes the kernel is shown: the folder's, a file's from its
//! staged content or its store version's plaintext size (no key needed),
//! and an unlinked file's from a handle still open on it. It must not
//! change the node table beyond noting a store version's size.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use lockbox_crypto::seal::CHUNK_SIZE;

use crate::{lock, Name};

use super::inodes::{Handle, StoreVersion};
use super::{errno_of, LockboxFs, ROOT};

impl LockboxFs {
    pub(super) fn root_attr(&self) -> FileAttr {
        let now = SystemTime::now();
        let mtime = std::fs::metadata(self.store.dir())
            .and_then(|m| m.modified())
            .unwrap_or(now);
        FileAttr {
            ino: INodeNo(ROOT),
            size: 0,
            blocks: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::Directory,
            perm: 0o700,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(super) fn file_attr(&self, ino: u64, size: u64, mtime: SystemTime) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::RegularFile,
            perm: 0o600,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: CHUNK_SIZE as u32,
            flags: 0,
        }
    }

    /// Attributes of a node: staged size while being written, else the
    /// plaintext size of its store version (no key needed).
    pub(super) fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        if ino == ROOT {
            return Ok(self.root_attr());
        }
        let (name, staged) = {
            let inner = lock(&self.inner);
            let node = inner.nodes.get(&ino).ok_or(Errno::ENOENT)?;
            (node.name.clone(), node.staged.clone())
        };
        if let Some(s) = staged {
            let s = lock(&s);
            if s.loaded && s.poisoned.is_none() {
                let mut attr = self.file_attr(ino, s.len(), s.mtime);
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
                let mtime = file.metadata().and_then(|m| m.modified()).ok()?;
                Some(self.file_attr(ino, *len, mtime))
            }
            Handle::Staged { staged, .. } => {
                let st = lock(staged);
                (st.loaded && st.poisoned.is_none())
                    .then(|| self.file_attr(ino, st.len(), st.mtime))
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
        Ok(self.file_attr(ino, size, meta.modified().unwrap_or(UNIX_EPOCH)))
    }
}
