//! Folders on the mount (`docs/folders.md`, "The mount"): which name a
//! component of a folder node is, the folders' attributes and times,
//! `mkdir`, `rmdir`, and the rename of a whole folder. Folders exist only
//! when the store lists them ([`Store::with_folders`](crate::Store::with_folders));
//! otherwise the mount is the one flat folder it always was, and `mkdir`
//! is refused with `EPERM`.
//!
//! The store's folder operations give Linux's answers (`EEXIST`,
//! `ENOTEMPTY`, `ENOTDIR`, `EINVAL`); what the store cannot see, files
//! created here but not sealed yet, is checked here.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, Generation, INodeNo, RenameFlags, ReplyEmpty, ReplyEntry};

use crate::name::Component;
use crate::{lock, Name};

use super::inodes::FsState;
use super::staged::Staged;
use super::{errno_of, LockboxFs, ROOT, TTL};

impl LockboxFs {
    /// Whether this mount has folders.
    pub(super) fn has_folders(&self) -> bool {
        self.store.lists_folders()
    }

    /// The folder node `parent` is: `None` for the root.
    pub(super) fn folder_at(&self, parent: u64) -> Result<Option<Name>, Errno> {
        if parent == ROOT {
            return Ok(None);
        }
        let inner = lock(&self.inner);
        let n = inner.nodes.get(&parent).ok_or(Errno::ENOENT)?;
        if !n.folder {
            return Err(Errno::ENOTDIR);
        }
        n.name.clone().map(Some).ok_or(Errno::ENOENT)
    }

    /// The name `component` has in folder node `parent`: `EINVAL` or
    /// `ENAMETOOLONG` for a component or a path a lockbox cannot hold,
    /// `ENOTDIR` or `ENOENT` for a parent that is not a folder (any more).
    pub(super) fn name_in(&self, parent: INodeNo, component: &OsStr) -> Result<Name, Errno> {
        let c = Component::from_os(component).map_err(|e| errno_of(&e))?;
        match self.folder_at(parent.0)? {
            None => Ok(Name::from(c)),
            Some(f) => f.join(&c).map_err(|e| errno_of(&e)),
        }
    }

    /// The inode of the folder holding `name`, if the kernel may know it.
    pub(super) fn parent_ino(inner: &FsState, name: &Name) -> Option<u64> {
        match name.parent() {
            None => Some(ROOT),
            Some(p) => inner.by_name.get(&p).copied(),
        }
    }

    /// A name in `folder` (`None`: the root) came, went or moved: its time
    /// is now, as a folder's on disk.
    pub(super) fn touch_folder(&self, folder: Option<&Name>) {
        let now = SystemTime::now();
        // The store folder keeps it too, when a seal lands there later.
        self.store.folder_touched(folder, now);
        match folder {
            None => *lock(&self.folder_mtime) = now,
            Some(f) => {
                lock(&self.inner).folder_times.insert(f.clone(), now);
            }
        }
    }

    /// The attributes of folder node `ino`, named `name`. Its time is the
    /// one this mount gave it (a name in it changed, or `utimensat`), else
    /// the store folder's; its link count is 2 and one per folder in it.
    pub(super) fn folder_attr(&self, ino: u64, name: &Name) -> Result<FileAttr, Errno> {
        // Asked every time: the mesh may have removed it.
        let meta = self.store.metadata(name).map_err(|_| Errno::ENOENT)?;
        if !meta.is_dir() {
            return Err(Errno::ENOENT);
        }
        let known = lock(&self.inner).folder_times.get(name).copied();
        let mtime = known.unwrap_or_else(|| meta.modified().unwrap_or(UNIX_EPOCH));
        Ok(self.dir_attr(ino, mtime, self.store.folder_count(name, &meta)))
    }

    /// A folder's attributes: 0700, ours, `2 + folders` links.
    pub(super) fn dir_attr(&self, ino: u64, mtime: SystemTime, folders: usize) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::Directory,
            perm: 0o700,
            nlink: 2 + u32::try_from(folders).unwrap_or(u32::MAX - 2),
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The node of folder `name`, made if the mount has none.
    pub(super) fn folder_node(inner: &mut FsState, name: &Name) -> u64 {
        match inner.by_name.get(name) {
            Some(&ino) => ino,
            None => Self::add_folder_node(inner, name.clone()),
        }
    }

    /// Whether a file created through the mount and not sealed yet lies
    /// within `folder` (the store does not know it).
    fn staged_within(inner: &FsState, folder: &Name) -> bool {
        inner.nodes.values().any(|n| {
            n.staged.is_some()
                && n.name
                    .as_ref()
                    .is_some_and(|m| m != folder && m.is_within(folder))
        })
    }

    /// What the store cannot see at `name`: its node, whether that is a
    /// file created here and not sealed yet, and whether such a file lies
    /// within it.
    fn unsealed_at(&self, name: &Name) -> (Option<u64>, bool, bool) {
        let inner = lock(&self.inner);
        let ino = inner.by_name.get(name).copied();
        let staged = ino
            .and_then(|i| inner.nodes.get(&i))
            .is_some_and(|n| n.staged.is_some());
        (ino, staged, Self::staged_within(&inner, name))
    }

    /// `mkdir`: make the folder in the store and give it a node.
    pub(super) fn make_dir(&self, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if !self.has_folders() {
            return reply.error(Errno::EPERM);
        }
        let name = match self.name_in(parent, name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // A file created here and not sealed yet holds the name.
        let taken = {
            let inner = lock(&self.inner);
            inner
                .by_name
                .get(&name)
                .and_then(|i| inner.nodes.get(i))
                .is_some_and(|n| n.staged.is_some())
        };
        if taken {
            return reply.error(Errno::EEXIST);
        }
        if let Err(e) = self.store.make_folder(&name) {
            return reply.error(errno_of(&e));
        }
        let now = SystemTime::now();
        let ino = {
            let mut inner = lock(&self.inner);
            let ino = Self::folder_node(&mut inner, &name);
            if let Some(n) = inner.nodes.get_mut(&ino) {
                n.lookups += 1;
            }
            inner.folder_times.insert(name.clone(), now);
            ino
        };
        self.touch_folder(name.parent().as_ref());
        reply.entry(&TTL, &self.dir_attr(ino, now, 0), Generation(0));
    }

    /// `rmdir`: remove the empty folder from the store and forget its node.
    pub(super) fn remove_dir(&self, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match self.name_in(parent, name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (ino, staged, within) = self.unsealed_at(&name);
        if staged {
            return reply.error(Errno::ENOTDIR);
        }
        if !self.has_folders() {
            // The flat mount: a file is not a folder, and there are no others.
            let exists = self.store.contains(&name) && !self.store.is_folder(&name);
            return reply.error(if exists {
                Errno::ENOTDIR
            } else {
                Errno::ENOENT
            });
        }
        if within {
            return reply.error(Errno::ENOTEMPTY);
        }
        if let Err(e) = self.store.remove_folder(&name) {
            return reply.error(errno_of(&e));
        }
        {
            let mut inner = lock(&self.inner);
            inner.folder_times.remove(&name);
            if let Some(i) = ino {
                Self::forget_gone(&mut inner, &name, i);
            }
        }
        self.touch_folder(name.parent().as_ref());
        reply.ok()
    }

    /// `rename` of a folder `from` (which the store holds as one) to `to`,
    /// with everything in it: one rename in the store, and every node
    /// within renamed with it.
    pub(super) fn rename_dir(&self, from: Name, to: Name, flags: RenameFlags, reply: ReplyEmpty) {
        let (dst, dst_staged, staged_in_dst) = self.unsealed_at(&to);
        if flags.contains(RenameFlags::RENAME_NOREPLACE)
            && (dst_staged || self.store.contains(&to))
            && from != to
        {
            return reply.error(Errno::EEXIST);
        }
        if from == to {
            return reply.ok();
        }
        if to.is_within(&from) {
            return reply.error(Errno::EINVAL);
        }
        if dst_staged {
            return reply.error(Errno::ENOTDIR);
        }
        if staged_in_dst {
            return reply.error(Errno::ENOTEMPTY);
        }
        // The buffers of files being written within the folder stay locked
        // until their nodes have their new names: a seal must not land
        // under an old name after the store's rename (it would make the
        // old folder again). Locked in address order, as `lock_both` does.
        let mut buffers: Vec<Arc<Mutex<Staged>>> = {
            let inner = lock(&self.inner);
            inner
                .nodes
                .values()
                .filter(|n| n.name.as_ref().is_some_and(|m| m.is_within(&from)))
                .filter_map(|n| n.staged.clone())
                .collect()
        };
        buffers.sort_by_key(Arc::as_ptr);
        buffers.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let _held: Vec<_> = buffers.iter().map(|b| lock(b)).collect();
        if let Err(e) = self.store.rename_folder(&from, &to) {
            return reply.error(errno_of(&e));
        }
        {
            let mut inner = lock(&self.inner);
            // The empty folder the rename replaced.
            if let Some(d) = dst {
                Self::forget_gone(&mut inner, &to, d);
            }
            let moving: Vec<(Name, u64)> = inner
                .by_name
                .iter()
                .filter(|(n, _)| n.is_within(&from))
                .map(|(n, i)| (n.clone(), *i))
                .collect();
            for (old, ino) in moving {
                let Some(Ok(new)) = old.moved(&from, &to) else {
                    // Checked by the store's rename: every name fits.
                    continue;
                };
                inner.by_name.remove(&old);
                inner.by_name.insert(new.clone(), ino);
                if let Some(n) = inner.nodes.get_mut(&ino) {
                    n.name = Some(new.clone());
                }
                if let Some(t) = inner.folder_times.remove(&old) {
                    inner.folder_times.insert(new, t);
                }
            }
        }
        self.touch_folder(from.parent().as_ref());
        self.touch_folder(to.parent().as_ref());
        reply.ok()
    }
}
