//! Changes of names through the mount: `create` (a new node with an
//! empty staged buffer, or an existing node opened for writing), `unlink`
//! and `rename`, each in the store and in the node table together, with
//! the staged buffers involved locked so that no seal lands under a name
//! that is going. The journal entry of a change is made after the answer
//! to the kernel.

use crate::escape::Escape;
use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, OpenAccMode, OpenFlags, RenameFlags,
    ReplyCreate, ReplyEmpty,
};

use crate::pages::Pages;
use crate::{lock, Error};

use super::inodes::Handle;
use super::staged::{lock_both, Staged};
use super::{errno_of, LockboxFs, TTL};

impl LockboxFs {
    /// `unlink`: remove `name` from the store and the node table; the
    /// tombstone is made after the answer.
    pub(super) fn unlink_name(&self, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match self.name_in(parent, name) {
            Ok(n) => n,
            Err(e @ (Errno::ENAMETOOLONG | Errno::ENOTDIR)) => return reply.error(e),
            Err(_) => return reply.error(Errno::ENOENT),
        };
        let ino = lock(&self.inner).by_name.get(&name).copied();
        // unlink(2) of a folder (the kernel refuses it first; the store's
        // remove takes files only).
        if ino.is_some_and(|i| lock(&self.inner).nodes.get(&i).is_some_and(|n| n.folder)) {
            return reply.error(Errno::EISDIR);
        }
        let staged = ino.and_then(|i| {
            lock(&self.inner)
                .nodes
                .get(&i)
                .and_then(|n| n.staged.clone())
        });
        // Hold the staged lock so a concurrent seal cannot re-create the name.
        let _st = staged.as_ref().map(|s| lock(s));
        let (removed, missing) = match self.store.remove_pending(&name) {
            Ok(recorded) => (Some(recorded), false),
            Err(Error::NotFound(_)) => (None, true),
            Err(e @ Error::Io { .. }) => return reply.error(errno_of(&e)),
            Err(_) => (None, false),
        };
        let mut inner = lock(&self.inner);
        match (missing, ino) {
            (true, None) => return reply.error(Errno::ENOENT),
            (true, Some(_)) if staged.is_none() => {
                inner.by_name.remove(&name);
                return reply.error(Errno::ENOENT);
            }
            _ => {}
        }
        let mut cached = None;
        if let Some(i) = ino {
            inner.by_name.remove(&name);
            if let Some(n) = inner.nodes.get_mut(&i) {
                n.name = None;
            }
            cached = LockboxFs::file_gone(&mut inner, i);
            LockboxFs::maybe_drop(&mut inner, i);
        }
        drop(inner);
        if let Some(c) = cached {
            self.forget_cached(c);
        }
        tracing::debug!("deleted {}", name.escaped());
        self.keys.deleted(&name);
        self.touch_folder(name.parent().as_ref());
        reply.ok();
        // The tombstone is signed and recorded after the answer.
        drop(removed);
    }

    /// `rename`: rename `name` to `newname` in the store and the node
    /// table, sealing a source still being written first.
    pub(super) fn rename_name(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let (from, to) = match (self.name_in(parent, name), self.name_in(newparent, newname)) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if self.has_folders() {
            // The kinds from the nodes the kernel looked up before the
            // rename (no stat of the store; without a node, ask it).
            let kinds = {
                let inner = lock(&self.inner);
                let kind = |n: &crate::Name| {
                    let node = inner.by_name.get(n).and_then(|i| inner.nodes.get(i));
                    node.map(|n| n.folder)
                };
                (kind(&from), kind(&to))
            };
            let from_folder = match kinds.0 {
                Some(f) => f,
                None => self.store.is_folder(&from),
            };
            if from_folder {
                return self.rename_dir(from, to, flags, reply);
            }
            // A file over a folder (the kernel refuses it first).
            if kinds.1 == Some(true) {
                return reply.error(Errno::EISDIR);
            }
        }
        let src = match self.resolve_known(&from) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        // The node the rename replaces, if the kernel knows one (no node:
        // nothing to forget, whether or not the store has the file).
        let dst = lock(&self.inner).by_name.get(&to).copied();
        if dst == Some(src) {
            return reply.ok();
        }
        // A node is not proof that the file is still there: ask the store.
        if flags.contains(RenameFlags::RENAME_NOREPLACE) && self.resolve(&to).is_ok() {
            return reply.error(Errno::EEXIST);
        }
        let (staged, dst_staged) = {
            let inner = lock(&self.inner);
            let staged_of = |i: u64| inner.nodes.get(&i).and_then(|n| n.staged.clone());
            (staged_of(src), dst.and_then(staged_of))
        };
        // Both buffers stay locked until the nodes have their new names: a
        // seal of the source must not land under its old name between the
        // store's rename and the node's, and a seal of the target (a writer
        // closing it) must not land after the rename, over the file that
        // replaced it: it goes first, or finds its name gone.
        let (mut st, _dst_st) = lock_both(staged.as_ref(), dst_staged.as_ref());
        // A file still being written that was never sealed: seal what it has,
        // so the rename atomically replaces the target with real content.
        if let Some(st) = st.as_deref_mut() {
            if !self.store.contains(&from) {
                st.dirty = true;
            }
            if let Err(e) = self.seal_staged(src, st) {
                return reply.error(e);
            }
        }
        let (recorded, at) = match self.store.rename_placed(&from, &to) {
            Ok(r) => r,
            Err(e) => {
                drop(st);
                if matches!(e, Error::NotFound(_)) {
                    self.gone(&from, src);
                }
                return reply.error(errno_of(&e));
            }
        };
        let mut inner = lock(&self.inner);
        let mut replaced = None;
        if at != to {
            // A version of the target that the renamed file's writer could
            // not have seen keeps the target: the file went to its conflict
            // copy instead (the kernel is told by the journal, after the
            // answer).
            tracing::info!(
                "{} changed on another envoy while {} was written: the rename put it at {}",
                to.escaped(),
                from.escaped(),
                at.escaped()
            );
            inner.by_name.remove(&from);
            inner.by_name.insert(at.clone(), src);
            if let Some(n) = inner.nodes.get_mut(&src) {
                n.name = Some(at.clone());
            }
            drop(inner);
            self.touch_folder(from.parent().as_ref());
            self.touch_folder(at.parent().as_ref());
            reply.ok();
            drop(recorded);
            return;
        }
        if let Some(d) = dst {
            if let Some(n) = inner.nodes.get_mut(&d) {
                n.name = None;
            }
            replaced = LockboxFs::file_gone(&mut inner, d);
            LockboxFs::maybe_drop(&mut inner, d);
        }
        inner.by_name.remove(&from);
        inner.by_name.insert(to.clone(), src);
        if let Some(n) = inner.nodes.get_mut(&src) {
            // The size cache stays: it is keyed by the store file's inode,
            // size and mtime, which a rename keeps.
            n.name = Some(to.clone());
        }
        drop(inner);
        // Before the answer: once rename(2) returns, the replaced file's
        // plaintext is out of the caches.
        if let Some(c) = replaced {
            self.forget_cached(c);
        }
        self.touch_folder(from.parent().as_ref());
        self.touch_folder(to.parent().as_ref());
        reply.ok();
        // The records of the move are signed and made after the answer.
        drop(recorded);
    }

    /// `create`: open `name` for writing, making a node for a new file.
    pub(super) fn create_name(
        &self,
        parent: INodeNo,
        name: &OsStr,
        flags: i32,
        executable: bool,
        reply: ReplyCreate,
    ) {
        let name = match self.name_in(parent, name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mut new_file = false;
        let ino = match self.resolve(&name) {
            Ok(ino) => {
                if flags & libc::O_EXCL != 0 {
                    return reply.error(Errno::EEXIST);
                }
                ino
            }
            Err(_) => {
                // A new file exists once closed, even if nothing is written.
                let mut st = Staged::new(Pages::new(), true, true, 0);
                st.base = self.store.base_of(&name);
                st.executable = executable;
                let staged = Arc::new(Mutex::new(st));
                new_file = true;
                self.touch_folder(name.parent().as_ref());
                LockboxFs::add_node(&mut lock(&self.inner), name, Some(staged))
            }
        };
        // create always opens for writing (O_CREAT with O_RDONLY still may write nothing).
        let wflags = if OpenFlags(flags).acc_mode() == OpenAccMode::O_RDONLY {
            (flags & !libc::O_ACCMODE) | libc::O_RDWR
        } else {
            flags
        };
        let fh = match self.open_node(ino, wflags) {
            Ok(fh) => fh,
            Err(e) => return reply.error(e),
        };
        // A brand-new file exists once closed, even with nothing written (no
        // old version can be lost by sealing it at the first close).
        if new_file {
            if let Ok(Handle::Staged { wrote, .. }) = self.handle(FileHandle(fh)).as_deref() {
                wrote.store(true, Ordering::Relaxed);
            }
        }
        // The staged buffer for a brand-new node was made with writers = 0.
        // (Taken out of `inner` first: a buffer's lock is never taken under it.)
        let staged = lock(&self.inner)
            .nodes
            .get(&ino)
            .and_then(|n| n.staged.clone());
        if let Some(s) = staged {
            let mut st = lock(&s);
            st.writers = st.writers.max(1);
        }
        match self.attr_of(ino) {
            Ok(attr) => {
                if let Some(n) = lock(&self.inner).nodes.get_mut(&ino) {
                    n.lookups += 1;
                }
                reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(e),
        }
    }
}
