//! The mount's node table: inode numbers for names, the kernel's lookup
//! counts, the open handles ([`Handle`]) and folder listings, and the
//! store version each node last had (whose plaintext size the mount keeps).
//!
//! It must not read or seal content: a node only points at its staged
//! buffer (`staged`) or its store file (`read`).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use fuser::{Errno, FileAttr, FileHandle};
use lockbox_crypto::seal::tags::Binding;

use crate::meta::LocalStat;
use crate::{lock, Name};

use super::cache::Cached;
use super::read::ReaderState;
use super::staged::Staged;
use super::{errno_of, LockboxFs};

/// Which version of a store file: its device and its [`LocalStat`]
/// (inode, size, modification time), which change whenever the file is
/// replaced. What the mount keeps plaintext sizes and damage reports by;
/// the caches of plaintext go by binding instead (see [`ChunkCache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct StoreVersion {
    pub(super) dev: u64,
    pub(super) stat: LocalStat,
}

impl StoreVersion {
    pub(super) fn of(m: &std::fs::Metadata) -> Self {
        StoreVersion {
            dev: m.dev(),
            stat: LocalStat::from_metadata(m),
        }
    }
}

pub(super) struct Node {
    /// `None` once unlinked (or replaced by a rename) while still open.
    pub(super) name: Option<Name>,
    /// A folder (else a file).
    pub(super) folder: bool,
    pub(super) lookups: u64,
    pub(super) open: u32,
    pub(super) staged: Option<Arc<Mutex<Staged>>>,
    /// Its store version as last stat'ed or sealed: whose plaintext size
    /// (in [`FsState::sizes`]) to forget when it is unlinked.
    pub(super) version: Option<StoreVersion>,
    /// Its store file as the caches know it, as last sealed or opened for
    /// reading: what to drop from them when it is unlinked or replaced.
    pub(super) cached: Option<Cached>,
}

pub(super) enum Handle {
    /// Decrypting reader of one store version. The decryptor is created on
    /// the first cache miss, so reads served from the cache cost no key work.
    Reader {
        ino: u64,
        version: StoreVersion,
        /// The file's binding (from its header and nonce, no key needed):
        /// what the chunk and tag caches know it by. Its `version` can
        /// recur once the file is gone (a new file that gets its inode,
        /// size and times); its binding never does.
        binding: Binding,
        name: Name,
        /// Plaintext length (from the header; no key needed).
        len: u64,
        state: Mutex<ReaderState>,
    },
    /// Reads and writes go to the staged plaintext.
    Staged {
        ino: u64,
        staged: Arc<Mutex<Staged>>,
        write: bool,
        /// Data was written through this handle since its last seal. Only
        /// then does `flush` seal: a process often closes a duplicate of a
        /// just-opened descriptor (dd, shell redirections) before writing,
        /// and sealing that would commit an empty, truncated version.
        wrote: AtomicBool,
    },
}

/// The mount's tables, under one lock: the nodes (inode numbers, names,
/// lookup counts), the open handles and folder listings, and what is known
/// of store versions (plaintext sizes, damage already reported).
#[derive(Default)]
pub(super) struct FsState {
    pub(super) by_name: HashMap<Name, u64>,
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) next_ino: u64,
    pub(super) handles: HashMap<u64, Arc<Handle>>,
    pub(super) next_fh: u64,
    pub(super) dirs: HashMap<u64, Listing>,
    /// The times this mount gave folders (a name in one changed, or
    /// `utimensat`); the root's is [`LockboxFs`]'s `folder_mtime`.
    pub(super) folder_times: HashMap<Name, std::time::SystemTime>,
    pub(super) warned_damaged: HashSet<StoreVersion>,
    /// Plaintext sizes of the store versions the mount has stat'ed or
    /// sealed, so that a name whose node the kernel forgot (memory
    /// pressure, `drop_caches`) or that was renamed (same version) is
    /// stat'ed again without reading its header. Cleared when it reaches
    /// [`MAX_SIZES`]; a miss only costs that read.
    pub(super) sizes: HashMap<StoreVersion, u64>,
    /// The inode number each name had when its node was dropped (the
    /// kernel forgot it), given to the name's next node: a file keeps its
    /// `st_ino` while the agent runs, as on a disk, even when the kernel
    /// drops its entry in between. vim compares the number it stat'ed
    /// with the one of the descriptor it writes through ("E949: File
    /// changed while writing"). A number is taken out when it is given
    /// again, so no two nodes share one. Cleared at [`MAX_RETIRED`].
    pub(super) retired: HashMap<Name, u64>,
}

/// Names whose inode number [`FsState::retired`] keeps.
pub(super) const MAX_RETIRED: usize = 1 << 16;

/// An open folder's listing: its own inode, its parent's, and each entry
/// (inode, name, whether a folder).
pub(super) struct Listing {
    pub(super) ino: u64,
    pub(super) parent: u64,
    pub(super) entries: Vec<(u64, Name, bool)>,
}

/// Versions whose plaintext size [`FsState::sizes`] keeps (about 40 bytes
/// each).
pub(super) const MAX_SIZES: usize = 1 << 16;

impl LockboxFs {
    /// Node `ino`'s store version `version` holds `size` bytes of plaintext.
    pub(super) fn remember_size(&self, ino: u64, version: StoreVersion, size: u64) {
        let mut inner = lock(&self.inner);
        Self::now_version(&mut inner, ino, version);
        if inner.sizes.len() >= MAX_SIZES {
            inner.sizes.clear();
        }
        inner.sizes.insert(version, size);
    }

    /// Node `ino`'s store file is gone (unlinked, replaced, or changed
    /// behind the mount's back): forget its version's size, and hand back
    /// what the chunk and tag caches know it by, for
    /// [`LockboxFs::forget_cached`] once the lock is released.
    pub(super) fn file_gone(inner: &mut FsState, ino: u64) -> Option<Cached> {
        let n = inner.nodes.get_mut(&ino)?;
        let (version, cached) = (n.version.take(), n.cached.take());
        if let Some(v) = version {
            inner.sizes.remove(&v);
        }
        cached
    }

    /// Node `ino`'s store file is now `version`. The size of the version it
    /// had is forgotten: that file is gone or changed, and a later file
    /// may repeat its inode, size and time with another header length.
    pub(super) fn now_version(inner: &mut FsState, ino: u64, version: StoreVersion) {
        let old = inner
            .nodes
            .get_mut(&ino)
            .and_then(|n| n.version.replace(version));
        if let Some(old) = old.filter(|o| *o != version) {
            inner.sizes.remove(&old);
        }
    }

    /// The node and attributes of `name`, for `lookup`: one `stat` of the
    /// store file, whether the mount knew the name or not; an unknown
    /// name gets a node only if the store has it.
    pub(super) fn lookup_attr(&self, name: &Name) -> Result<(u64, FileAttr), Errno> {
        // The kernel's lookup count goes up in the same critical section
        // that finds (or makes) the node: a FORGET of the kernel's previous
        // inode of this name, answered meanwhile on another thread, must
        // not drop the node this reply names (the kernel would then hold
        // an inode the mount no longer knows: ENOENT for an existing file).
        let counted = |inner: &mut FsState, ino: u64| {
            if let Some(n) = inner.nodes.get_mut(&ino) {
                n.lookups += 1;
            }
            ino
        };
        let known = {
            let mut inner = lock(&self.inner);
            let ino = inner.by_name.get(name).copied();
            ino.map(|i| counted(&mut inner, i))
        };
        let (ino, attr) = match known {
            Some(ino) => (ino, self.attr_of(ino)),
            None => {
                let meta = self.store.metadata(name).map_err(|e| errno_of(&e))?;
                let is_folder = meta.is_dir();
                if is_folder && !self.has_folders() {
                    return Err(Errno::ENOENT);
                }
                let (ino, fresh) = {
                    let mut inner = lock(&self.inner);
                    match inner.by_name.get(name) {
                        // Made meanwhile (a create): ask it.
                        Some(&ino) => (counted(&mut inner, ino), false),
                        None if is_folder => {
                            let ino = Self::add_folder_node(&mut inner, name.clone());
                            (counted(&mut inner, ino), false)
                        }
                        None => {
                            let ino = Self::add_node(&mut inner, name.clone(), None);
                            (counted(&mut inner, ino), true)
                        }
                    }
                };
                let attr = if fresh {
                    self.store_attr(ino, name, &meta)
                } else {
                    self.attr_of(ino)
                };
                (ino, attr)
            }
        };
        match attr {
            Ok(a) => Ok((ino, a)),
            Err(e) => {
                // Not answered: not counted.
                {
                    let mut inner = lock(&self.inner);
                    if let Some(n) = inner.nodes.get_mut(&ino) {
                        n.lookups = n.lookups.saturating_sub(1);
                    }
                    Self::maybe_drop(&mut inner, ino);
                }
                if e == Errno::ENOENT || known.is_none() {
                    self.gone(name, ino);
                }
                Err(e)
            }
        }
    }

    /// The inode of `name`, allocating one if the store has the file.
    pub(super) fn resolve(&self, name: &Name) -> Result<u64, Errno> {
        let mut inner = lock(&self.inner);
        if let Some(&ino) = inner.by_name.get(name) {
            let staged = inner.nodes.get(&ino).is_some_and(|n| n.staged.is_some());
            if staged || self.store.contains(name) {
                return Ok(ino);
            }
            Self::forget_gone(&mut inner, name, ino);
            return Err(Errno::ENOENT);
        }
        match self.store.metadata(name) {
            Err(_) => Err(Errno::ENOENT),
            Ok(m) if m.is_dir() => {
                if self.has_folders() {
                    Ok(Self::add_folder_node(&mut inner, name.clone()))
                } else {
                    Err(Errno::ENOENT)
                }
            }
            Ok(_) => Ok(Self::add_node(&mut inner, name.clone(), None)),
        }
    }

    /// [`LockboxFs::resolve`] without asking the store about a name that
    /// has a node: for a caller whose next step finds out anyway (`rename`
    /// renames it) and then calls [`LockboxFs::gone`] if it is not there.
    /// One `stat` less.
    pub(super) fn resolve_known(&self, name: &Name) -> Result<u64, Errno> {
        if let Some(&ino) = lock(&self.inner).by_name.get(name) {
            return Ok(ino);
        }
        self.resolve(name)
    }

    /// `name` (node `ino`) turned out to be gone from the store behind our
    /// back (deleted by the CLI or the mesh), unless it is being written.
    pub(super) fn gone(&self, name: &Name, ino: u64) {
        let mut inner = lock(&self.inner);
        let staged = inner.nodes.get(&ino).is_some_and(|n| n.staged.is_some());
        if !staged && inner.by_name.get(name) == Some(&ino) {
            Self::forget_gone(&mut inner, name, ino);
        }
    }

    pub(super) fn forget_gone(inner: &mut FsState, name: &Name, ino: u64) {
        inner.by_name.remove(name);
        if let Some(n) = inner.nodes.get_mut(&ino) {
            n.name = None;
        }
        Self::maybe_drop(inner, ino);
    }

    pub(super) fn add_node(
        inner: &mut FsState,
        name: Name,
        staged: Option<Arc<Mutex<Staged>>>,
    ) -> u64 {
        Self::insert_node(inner, name, staged, false)
    }

    /// A node for the folder `name`.
    pub(super) fn add_folder_node(inner: &mut FsState, name: Name) -> u64 {
        Self::insert_node(inner, name, None, true)
    }

    fn insert_node(
        inner: &mut FsState,
        name: Name,
        staged: Option<Arc<Mutex<Staged>>>,
        folder: bool,
    ) -> u64 {
        let ino = match inner.retired.remove(&name) {
            Some(i) if !inner.nodes.contains_key(&i) => i,
            _ => {
                let i = inner.next_ino;
                inner.next_ino += 1;
                i
            }
        };
        inner.by_name.insert(name.clone(), ino);
        inner.nodes.insert(
            ino,
            Node {
                name: Some(name),
                folder,
                lookups: 0,
                open: 0,
                staged,
                version: None,
                cached: None,
            },
        );
        ino
    }

    /// Forget a node nobody refers to any more.
    pub(super) fn maybe_drop(inner: &mut FsState, ino: u64) {
        let Some(n) = inner.nodes.get(&ino) else {
            return;
        };
        if n.lookups == 0 && n.open == 0 && n.staged.is_none() {
            if let Some(name) = n.name.clone() {
                if inner.by_name.get(&name) == Some(&ino) {
                    inner.by_name.remove(&name);
                }
                if inner.retired.len() >= MAX_RETIRED {
                    inner.retired.clear();
                }
                inner.retired.insert(name, ino);
            }
            inner.nodes.remove(&ino);
        }
    }

    pub(super) fn add_handle(&self, h: Handle) -> u64 {
        let mut inner = lock(&self.inner);
        let fh = inner.next_fh;
        inner.next_fh += 1;
        let ino = match &h {
            Handle::Reader { ino, .. } | Handle::Staged { ino, .. } => *ino,
        };
        if let Some(n) = inner.nodes.get_mut(&ino) {
            n.open += 1;
        }
        inner.handles.insert(fh, Arc::new(h));
        fh
    }

    pub(super) fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        lock(&self.inner)
            .handles
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }
}
