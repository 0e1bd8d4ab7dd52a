//! The FUSE operations: [`FuseOps`] implements `fuser::Filesystem` over a
//! [`LockboxFs`], each operation checking its arguments, calling into the
//! node table, the write buffer, the read path and the store, and
//! answering the kernel (the journal entry of a change is made after the
//! answer).

use std::ffi::OsStr;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::lock;

use super::{LockboxFs, ROOT, TTL};

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
        let name = match self.0.name_in(parent, name) {
            Ok(n) => n,
            Err(e @ (Errno::ENAMETOOLONG | Errno::ENOTDIR)) => return reply.error(e),
            Err(_) => return reply.error(Errno::ENOENT),
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
    /// the owner, the modes shown decide: a folder is 0700, a file 0600,
    /// or 0700 when it is executable.
    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if ino.0 == ROOT {
            return reply.ok();
        }
        if !mask.contains(AccessFlags::X_OK) {
            return match lock(&self.0.inner).nodes.contains_key(&ino.0) {
                true => reply.ok(),
                false => reply.error(Errno::ENOENT),
            };
        }
        match self.0.may_execute(ino.0) {
            Ok(true) => reply.ok(),
            Ok(false) => reply.error(Errno::EACCES),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
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
        self.0.set_attr(ino, mode, size, mtime, fh, reply);
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

    fn mkdir(
        &self,
        _r: &Request,
        parent: INodeNo,
        name: &OsStr,
        _m: u32,
        _u: u32,
        reply: ReplyEntry,
    ) {
        self.0.make_dir(parent, name, reply);
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

    fn rmdir(&self, _r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.0.remove_dir(parent, name, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.0.unlink_name(parent, name, reply);
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
        self.0
            .rename_name(parent, name, newparent, newname, flags, reply);
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
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        // Of the mode asked, only the owner's execute bit is kept.
        self.0
            .create_name(parent, name, flags, mode & 0o100 != 0, reply);
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
        self.0.read_handle(fh, offset, size, reply);
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
        self.0.write_handle(fh, offset, data, reply);
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
        self.0.release_handle(fh, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.0.open_dir(ino, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.0.read_dir(fh, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.release_dir(fh, reply);
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
