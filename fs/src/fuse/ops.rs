//! The FUSE operations: [`FuseOps`] implements `fuser::Filesystem` over a
//! [`LockboxFs`], each operation checking its arguments, calling into the
//! node table, the write buffer, the read path and the store, and
//! answering the kernel (the journal entry of a change is made after the
//! answer).

use std::ffi::OsStr;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use lockbox_crypto::wipe::SecretBuf;

use crate::pages::Pages;
use crate::{lock, Error, Name};

use super::inodes::Handle;
use super::staged::{lock_both, Staged};
use super::{errno_of, name_errno, LockboxFs, ROOT, TTL};

/// The FUSE operations: what implements [`Filesystem`] for the fuser
/// session (see [`crate::mount`]), each over the [`LockboxFs`] it shares
/// with the agent.
pub struct FuseOps(pub Arc<LockboxFs>);

impl Filesystem for FuseOps {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Bigger requests mean fewer round trips; the kernel may refuse.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Let open(O_TRUNC) arrive as one request instead of truncate + open.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT {
            return reply.error(Errno::ENOENT);
        }
        let Ok(name) = Name::from_os(name) else {
            return reply.error(if name.len() > 255 {
                Errno::ENAMETOOLONG
            } else {
                Errno::ENOENT
            });
        };
        let fs = &self.0;
        match fs.lookup_attr(&name) {
            // Counted by `lookup_attr`.
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut inner = lock(&self.0.inner);
        if let Some(n) = inner.nodes.get_mut(&ino.0) {
            n.lookups = n.lookups.saturating_sub(nlookup);
        }
        LockboxFs::maybe_drop(&mut inner, ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.attr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    /// `access(2)`. The mount has no `default_permissions` (so the kernel
    /// asks no `getattr` of the folder before each name it changes) and
    /// no `allow_other` (so the kernel lets only the owner in at all); for
    /// the owner, the modes shown decide: the folder is 0700, a file 0600,
    /// never executable.
    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if ino.0 == ROOT {
            return reply.ok();
        }
        if !lock(&self.0.inner).nodes.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        if mask.contains(AccessFlags::X_OK) {
            return reply.error(Errno::EACCES);
        }
        reply.ok()
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fs = &self.0;
        if ino.0 == ROOT {
            return reply.attr(&TTL, &fs.root_attr());
        }
        // chmod/chown are accepted and ignored: files are always 0600, ours.
        let staged = lock(&fs.inner)
            .nodes
            .get(&ino.0)
            .and_then(|n| n.staged.clone());
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        });
        if let Some(size) = size {
            if size > fs.config.max_file_size {
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
                        fs.ensure_loaded(ino.0, st, "truncating to a non-zero size")
                            .and_then(|()| fs.unstream(st, "truncating a file being written"))
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
                None => fs.truncate_closed(ino.0, size),
            };
            if let Err(e) = r {
                return reply.error(e);
            }
            // ftruncate(2) writes through its descriptor: its fsync and
            // close seal the new length, as they would a write. (Without a
            // descriptor, truncate(2) of a file open for writing is sealed
            // by its writers' close.)
            if let Some(Ok(h)) = fh.map(|fh| fs.handle(fh)) {
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
                let name = lock(&fs.inner)
                    .nodes
                    .get(&ino.0)
                    .and_then(|n| n.name.clone());
                let Some(name) = name else {
                    return reply.error(Errno::ENOENT);
                };
                if let Err(e) = fs.store.set_mtime(&name, t) {
                    return reply.error(errno_of(&e));
                }
            }
        }
        match fs.attr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _d: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM)
    }

    fn mkdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EPERM)
    }

    fn symlink(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _l: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM)
    }

    fn link(&self, _r: &Request, _i: INodeNo, _p: INodeNo, _n: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EPERM)
    }

    fn rmdir(&self, _r: &Request, _p: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let exists = Name::from_os(name).is_ok_and(|n| self.0.resolve(&n).is_ok());
        reply.error(if exists {
            Errno::ENOTDIR
        } else {
            Errno::ENOENT
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = &self.0;
        if parent.0 != ROOT {
            return reply.error(Errno::ENOENT);
        }
        let Ok(name) = Name::from_os(name) else {
            return reply.error(Errno::ENOENT);
        };
        let ino = lock(&fs.inner).by_name.get(&name).copied();
        let staged = ino.and_then(|i| lock(&fs.inner).nodes.get(&i).and_then(|n| n.staged.clone()));
        // Hold the staged lock so a concurrent seal cannot re-create the name.
        let _st = staged.as_ref().map(|s| lock(s));
        let (removed, missing) = match fs.store.remove_pending(&name) {
            Ok(recorded) => (Some(recorded), false),
            Err(Error::NotFound(_)) => (None, true),
            Err(e @ Error::Io { .. }) => return reply.error(errno_of(&e)),
            Err(_) => (None, false),
        };
        let mut inner = lock(&fs.inner);
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
            fs.forget_cached(c);
        }
        tracing::debug!("deleted {name}");
        fs.keys.deleted(&name);
        reply.ok();
        // The tombstone is signed and recorded after the answer.
        drop(removed);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let fs = &self.0;
        if parent.0 != ROOT || newparent.0 != ROOT {
            return reply.error(Errno::ENOENT);
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let (Ok(from), Ok(to)) = (Name::from_os(name), Name::from_os(newname)) else {
            return reply.error(name_errno(if Name::from_os(name).is_err() {
                name
            } else {
                newname
            }));
        };
        let src = match fs.resolve_known(&from) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        // The node the rename replaces, if the kernel knows one (no node:
        // nothing to forget, whether or not the store has the file).
        let dst = lock(&fs.inner).by_name.get(&to).copied();
        if dst == Some(src) {
            return reply.ok();
        }
        // A node is not proof that the file is still there: ask the store.
        if flags.contains(RenameFlags::RENAME_NOREPLACE) && fs.resolve(&to).is_ok() {
            return reply.error(Errno::EEXIST);
        }
        let (staged, dst_staged) = {
            let inner = lock(&fs.inner);
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
            if !fs.store.contains(&from) {
                st.dirty = true;
            }
            if let Err(e) = fs.seal_staged(src, st) {
                return reply.error(e);
            }
        }
        let recorded = match fs.store.rename_pending(&from, &to) {
            Ok(r) => r,
            Err(e) => {
                drop(st);
                if matches!(e, Error::NotFound(_)) {
                    fs.gone(&from, src);
                }
                return reply.error(errno_of(&e));
            }
        };
        let mut inner = lock(&fs.inner);
        let mut replaced = None;
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
            n.name = Some(to);
        }
        drop(inner);
        // Before the answer: once rename(2) returns, the replaced file's
        // plaintext is out of the caches.
        if let Some(c) = replaced {
            fs.forget_cached(c);
        }
        reply.ok();
        // The records of the move are signed and made after the answer.
        drop(recorded);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Closing a handle that cannot write seals nothing: the kernel need
        // not send its FLUSH, one round trip close(2) would wait for.
        let open = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => FopenFlags::FOPEN_NOFLUSH,
            _ => FopenFlags::empty(),
        };
        match self.0.open_node(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), open),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let fs = &self.0;
        if parent.0 != ROOT {
            return reply.error(Errno::ENOENT);
        }
        let Ok(name) = Name::from_os(name) else {
            return reply.error(name_errno(name));
        };
        let mut new_file = false;
        let ino = match fs.resolve(&name) {
            Ok(ino) => {
                if flags & libc::O_EXCL != 0 {
                    return reply.error(Errno::EEXIST);
                }
                ino
            }
            Err(_) => {
                // A new file exists once closed, even if nothing is written.
                let staged = Arc::new(Mutex::new(Staged::new(Pages::new(), true, true, 0)));
                new_file = true;
                LockboxFs::add_node(&mut lock(&fs.inner), name, Some(staged))
            }
        };
        // create always opens for writing (O_CREAT with O_RDONLY still may write nothing).
        let wflags = if OpenFlags(flags).acc_mode() == OpenAccMode::O_RDONLY {
            (flags & !libc::O_ACCMODE) | libc::O_RDWR
        } else {
            flags
        };
        let fh = match fs.open_node(ino, wflags) {
            Ok(fh) => fh,
            Err(e) => return reply.error(e),
        };
        // A brand-new file exists once closed, even with nothing written (no
        // old version can be lost by sealing it at the first close).
        if new_file {
            if let Ok(Handle::Staged { wrote, .. }) = fs.handle(FileHandle(fh)).as_deref() {
                wrote.store(true, Ordering::Relaxed);
            }
        }
        // The staged buffer for a brand-new node was made with writers = 0.
        // (Taken out of `inner` first: a buffer's lock is never taken under it.)
        let staged = lock(&fs.inner)
            .nodes
            .get(&ino)
            .and_then(|n| n.staged.clone());
        if let Some(s) = staged {
            let mut st = lock(&s);
            st.writers = st.writers.max(1);
        }
        match fs.attr_of(ino) {
            Ok(attr) => {
                if let Some(n) = lock(&fs.inner).nodes.get_mut(&ino) {
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

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = &self.0;
        let h = match fs.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        match &*h {
            Handle::Staged { ino, staged, .. } => {
                // The buffer may hold plaintext loaded before a lock (or
                // written since): it is read only while unlocked, as the
                // store is (SPEC §5.2: reading back needs the key).
                if let Err(e) = fs.identity_or_eacces("reading back") {
                    return reply.error(e);
                }
                let mut st = lock(staged);
                if let Err(e) = fs
                    .ensure_loaded(*ino, &mut st, "reading back")
                    .and_then(|()| fs.unstream(&mut st, "reading a file being written"))
                {
                    return reply.error(e);
                }
                let mut buf = SecretBuf::new(vec![0u8; size as usize]);
                let n = st.pages.read_at(offset, &mut buf);
                reply.data(&buf[..n])
            }
            Handle::Reader { .. } => match fs.read_decrypted(&h, offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            },
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let fs = &self.0;
        let h = match fs.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Staged {
            ino,
            staged,
            write: true,
            wrote,
        } = &*h
        else {
            return reply.error(Errno::EBADF);
        };
        wrote.store(true, Ordering::Relaxed);
        let mut st = lock(staged);
        if offset + data.len() as u64 > fs.config.max_file_size {
            // What was staged is now a cut-off version: never seal it.
            st.poison(Errno::EFBIG);
            return reply.error(Errno::EFBIG);
        }
        if let Err(e) = fs.ensure_loaded(*ino, &mut st, "appending to or partly overwriting a file")
        {
            return reply.error(e);
        }
        if let Err(e) = fs.stage_write(&mut st, offset, data) {
            return reply.error(e);
        }
        st.dirty = true;
        // Also after utimensat: a write makes the file modified now.
        st.mtime = SystemTime::now();
        reply.written(data.len() as u32)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.0.seal_written(fh.0) {
            // close(2) returns now; the version is signed and recorded
            // while the caller goes on.
            Ok(recorded) => {
                reply.ok();
                drop(recorded);
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fsync means: seal now if anything changed, then make what is
        // sealed durable. The agent groups the syncs
        // (`Store::with_grouped_syncs`): this seal, or the close's before
        // this fsync, may still wait in its temp file, and a rename of the
        // last window may not be synced yet. The journal entry is queued
        // (the Pending dropped) before the round, which takes the change lock.
        let fs = &self.0;
        let done = fs
            .seal_for_fsync(fh.0)
            .map(drop)
            .and_then(|()| fs.sync_store("fsync"));
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fsync of the folder: every create, rename and delete so far (and
        // every seal closed so far) is durable when it returns. Without
        // this handler fuser answers ENOSYS, which the kernel turns into
        // success without asking again: a save by rename followed by an
        // fsync of the folder would be told "durable" while the rename
        // still waited for the next grouped sync.
        match self.0.sync_store("fsync of the folder") {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = &self.0;
        let Some(h) = lock(&fs.inner).handles.remove(&fh.0) else {
            return reply.ok();
        };
        let ino = match &*h {
            Handle::Reader { ino, .. } | Handle::Staged { ino, .. } => *ino,
        };
        if let Handle::Staged {
            staged,
            write: true,
            ..
        } = &*h
        {
            let mut st = lock(staged);
            st.writers = st.writers.saturating_sub(1);
            if st.writers == 0 {
                // Normally flush sealed it already; this catches writers that
                // never flushed (e.g. the kernel skipped flush).
                if let Err(e) = fs.seal_staged(ino, &mut st) {
                    tracing::warn!("sealing at release failed ({e:?}); the previous version stays");
                }
                // Under its lock: an open that found it on the node now
                // stages anew rather than joining a buffer taken off it.
                st.released = true;
                drop(st);
                let mut inner = lock(&fs.inner);
                if let Some(n) = inner.nodes.get_mut(&ino) {
                    if n.staged.as_ref().is_some_and(|s| Arc::ptr_eq(s, staged)) {
                        // The size cache stays: it is keyed by the store
                        // version it describes.
                        n.staged = None;
                    }
                }
            }
        }
        let mut inner = lock(&fs.inner);
        if let Some(n) = inner.nodes.get_mut(&ino) {
            n.open = n.open.saturating_sub(1);
        }
        LockboxFs::maybe_drop(&mut inner, ino);
        reply.ok()
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = &self.0;
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut names: Vec<Name> = match fs.store.names() {
            Ok(names) => names,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let mut inner = lock(&fs.inner);
        // Files created but not sealed yet are listed too.
        for n in inner.nodes.values() {
            if let (Some(name), Some(_)) = (&n.name, &n.staged) {
                names.push(name.clone());
            }
        }
        names.sort();
        names.dedup();
        let entries: Vec<(u64, Name)> = names
            .into_iter()
            .map(|name| {
                let ino = match inner.by_name.get(&name) {
                    Some(&i) => i,
                    None => LockboxFs::add_node(&mut inner, name.clone(), None),
                };
                (ino, name)
            })
            .collect();
        let fh = inner.next_fh;
        inner.next_fh += 1;
        inner.dirs.insert(fh, entries);
        reply.opened(FileHandle(fh), FopenFlags::empty())
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let inner = lock(&self.0.inner);
        let Some(entries) = inner.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let dots = [
            (ROOT, FileType::Directory, OsStr::new(".")),
            (ROOT, FileType::Directory, OsStr::new("..")),
        ];
        let all = dots.into_iter().chain(
            entries
                .iter()
                .map(|(i, n)| (*i, FileType::RegularFile, n.as_os_str())),
        );
        for (i, (ino, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.0.inner).dirs.remove(&fh.0);
        reply.ok()
    }

    // Extended attributes are not kept (only content is lockbox's). ENOSYS
    // tells the kernel once and for all, as fuser's defaults do, without
    // their WARN on every mount (`ls` asks for `security.capability`).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::statvfs(self.0.store.dir()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }
}
