//! The folder: `opendir` lists the store's names and the files created
//! but not sealed yet, giving each a node; `readdir` pages through that
//! listing; `releasedir` forgets it. The mount shows one flat folder (no
//! subfolders yet).

use std::ffi::OsStr;

use fuser::{
    Errno, FileHandle, FileType, FopenFlags, INodeNo, ReplyDirectory, ReplyEmpty, ReplyOpen,
};

use crate::{lock, Name};

use super::{errno_of, LockboxFs, ROOT};

impl LockboxFs {
    /// `opendir`: list the folder (the store's names and files created but
    /// not sealed yet) under a new handle.
    pub(super) fn open_dir(&self, ino: INodeNo, reply: ReplyOpen) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut names: Vec<Name> = match self.store.names() {
            Ok(names) => names,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let mut inner = lock(&self.inner);
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

    /// `readdir`: the entries of listing `fh` from `offset` on.
    pub(super) fn read_dir(&self, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let inner = lock(&self.inner);
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

    /// `releasedir`: forget listing `fh`.
    pub(super) fn release_dir(&self, fh: FileHandle, reply: ReplyEmpty) {
        lock(&self.inner).dirs.remove(&fh.0);
        reply.ok()
    }
}
