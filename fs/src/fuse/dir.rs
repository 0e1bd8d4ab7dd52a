//! The folders' listings: `opendir` lists a folder (the store's entries
//! in it and the files created there but not sealed yet), giving each a
//! node; `readdir` pages through that listing; `releasedir` forgets it.

use std::ffi::OsStr;

use fuser::{
    Errno, FileHandle, FileType, FopenFlags, INodeNo, ReplyDirectory, ReplyEmpty, ReplyOpen,
};

use crate::{lock, Name};

use super::inodes::Listing;
use super::{errno_of, LockboxFs, ROOT};

impl LockboxFs {
    /// `opendir`: list the folder (the store's entries and files created
    /// but not sealed yet) under a new handle.
    pub(super) fn open_dir(&self, ino: INodeNo, reply: ReplyOpen) {
        let folder = match self.folder_at(ino.0) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let mut names: Vec<(Name, bool)> = match self.store.entries_in(folder.as_ref()) {
            Ok(names) => names,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let mut inner = lock(&self.inner);
        // Files created but not sealed yet are listed too.
        for n in inner.nodes.values() {
            if let (Some(name), Some(_)) = (&n.name, &n.staged) {
                if name.parent() == folder {
                    names.push((name.clone(), false));
                }
            }
        }
        names.sort();
        names.dedup_by(|a, b| a.0 == b.0);
        let entries: Vec<(u64, Name, bool)> = names
            .into_iter()
            .map(|(name, is_folder)| {
                let ino = match inner.by_name.get(&name) {
                    Some(&i) => i,
                    None if is_folder => LockboxFs::add_folder_node(&mut inner, name.clone()),
                    None => LockboxFs::add_node(&mut inner, name.clone(), None),
                };
                (ino, name, is_folder)
            })
            .collect();
        let parent = match &folder {
            None => ROOT,
            Some(f) => LockboxFs::parent_ino(&inner, f).unwrap_or(ROOT),
        };
        let fh = inner.next_fh;
        inner.next_fh += 1;
        inner.dirs.insert(
            fh,
            Listing {
                ino: ino.0,
                parent,
                entries,
            },
        );
        reply.opened(FileHandle(fh), FopenFlags::empty())
    }

    /// `readdir`: the entries of listing `fh` from `offset` on.
    pub(super) fn read_dir(&self, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let inner = lock(&self.inner);
        let Some(listing) = inner.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let dots = [
            (listing.ino, FileType::Directory, OsStr::new(".")),
            (listing.parent, FileType::Directory, OsStr::new("..")),
        ];
        let all = dots
            .into_iter()
            .chain(listing.entries.iter().map(|(i, n, is_folder)| {
                let kind = if *is_folder {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                (*i, kind, last_component(n))
            }));
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

/// The last component of `name`, as the listing of its folder shows it.
fn last_component(name: &Name) -> &OsStr {
    let b = name.as_bytes();
    let start = b.iter().rposition(|c| *c == b'/').map_or(0, |i| i + 1);
    std::os::unix::ffi::OsStrExt::from_bytes(&b[start..])
}
