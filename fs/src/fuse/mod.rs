//! The FUSE adapter: `~/lockbox` as one flat folder of regular files
//! (see `docs/design.md`, "The mount"), or a tree of folders over a store
//! that has them (`docs/folders.md`).
//!
//! A thin layer over [`Store`]: writes are staged in memory ([`Pages`](crate::pages::Pages)) and
//! sealed into the store when a writer closes (`flush`, so `close(2)` reports
//! a sealing failure) or calls `fsync`; a file written from start to end is
//! sealed as it grows instead ([`SealStream`](crate::store::SealStream)), and its close seals only the
//! last chunk and puts it in place. Reads decrypt on demand: a read that
//! covers a whole 64 KiB age chunk decrypts it into the reply, a small read
//! of a large file decrypts only the 4 KiB blocks it needs, checked by the
//! version's block tags, and other reads go through a bounded in-memory
//! cache of decrypted chunks. Keys come from the agent through [`Keys`]:
//! reading needs the unlock session, sealing needs only the public
//! recipients, so creating or fully replacing a file works while locked and
//! everything that needs the old plaintext gets `EACCES`.
//!
//! This file holds [`LockboxFs`] (the state shared with the agent), its
//! settings ([`FsConfig`]), what the agent calls on it (lock, invalidate,
//! seal all), the glue to [`Keys`], opening a node, and the mapping of
//! store errors to errnos. One job per file beside it:
//!
//! - `inodes`: the node table (inode numbers, names, lookup counts), the
//!   open handles, and the store version each node last had.
//! - `attr`: the attributes the kernel is shown, and `setattr`.
//! - `names`: `create`, `unlink` and `rename`.
//! - `dir`: the folder listings (`opendir`, `readdir`, `releasedir`).
//! - `folders`: folders, over a store that has them: which name a
//!   component of a folder node is, folder attributes, `mkdir`, `rmdir`,
//!   the rename of a whole folder.
//! - `staged`: the write buffer of a file open for writing ([`Pages`](crate::pages::Pages) or
//!   a [`SealStream`](crate::store::SealStream)): opening for writing,
//!   `write`, and the seal at flush, fsync and release.
//! - `read`: the read path (`read`; readers of a store version, chunk and
//!   block decryption).
//! - `cache`: the bounded caches of decrypted chunks and block tags.
//! - `ops`: [`FuseOps`], the `fuser::Filesystem` operations: each checks
//!   or decodes its arguments and calls into the files above.
//! - `tests`, `folder_tests`: the unit tests (the folder tests on a real
//!   mount).
//!
//! Mounting is [`crate::mount`]'s; nothing here writes plaintext to disk.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{Errno, INodeNo, OpenAccMode, OpenFlags};
use lockbox_crypto::seal::tags::Binding;
use lockbox_crypto::AgeIdentity;

use crate::retag::Retagger;
use crate::store::{SealTo, Store};
use crate::{lock, Error, Name};

mod attr;
mod cache;
mod dir;
mod folders;
mod inodes;
mod names;
mod ops;
mod read;
mod staged;

pub use crate::keys::Keys;
use cache::{chunk_bytes, tags_bytes, ChunkCache, TagCache, TAGS_BUDGET, TAGS_ENTRIES};
use inodes::{FsState, Handle};
pub use ops::FuseOps;
use staged::Staged;

/// How long the kernel may cache a name and its attributes. The agent is
/// the store's only writer, and it tells the kernel of every change it
/// makes outside the mount ([`LockboxFs::invalidate`]; the mount's own
/// changes the kernel sees for itself), so the kernel need not ask again
/// on every `stat`, `open`, `rename` or `unlink` after a second, as it
/// must with gocryptfs, whose backing folder anyone may change. The hour
/// only bounds how long a change the agent failed to announce could stay
/// hidden. Failed lookups are not cached at all: a name a peer adds shows
/// at once.
const TTL: Duration = Duration::from_secs(3600);
const ROOT: u64 = 1;

/// Settings of the mounted file system.
#[derive(Debug, Clone, Copy)]
pub struct FsConfig {
    /// Largest file (bytes); a write past it gets `EFBIG`.
    pub max_file_size: u64,
    /// Bytes of decrypted chunks kept in memory.
    pub cache_bytes: usize,
}

/// The lockbox file system.
pub struct LockboxFs {
    store: Store,
    keys: Arc<dyn Keys>,
    config: FsConfig,
    inner: Mutex<FsState>,
    cache: Mutex<ChunkCache>,
    tags: Arc<Mutex<TagCache>>,
    /// Makes the block tags of versions read without them.
    retag: Retagger<Binding>,
    warned_locked: AtomicBool,
    uid: u32,
    gid: u32,
    notifier: OnceLock<fuser::Notifier>,
    /// The folder's modification time: when a name in it came, went or
    /// moved (through the mount, or from the mesh), as a directory's on
    /// disk. Not the store folder's: a grouped round that puts a closed
    /// file's seal in place up to a window after its close changes that
    /// one, and `tar` then saw the folder "change as we read it".
    folder_mtime: Mutex<SystemTime>,
}

fn errno_of(e: &Error) -> Errno {
    match e {
        Error::NotFound(_) => Errno::ENOENT,
        Error::BadName { too_long: true, .. } => Errno::ENAMETOOLONG,
        Error::BadName { .. } => Errno::EINVAL,
        Error::Folder { source, .. } => source.raw_os_error().map_or(Errno::EIO, Errno::from_i32),
        Error::TooLarge { .. } => Errno::EFBIG,
        Error::Io { source, .. } | Error::Read(source) => match source.raw_os_error() {
            Some(libc::ENOSPC) => Errno::ENOSPC,
            Some(libc::EDQUOT) => Errno::from_i32(libc::EDQUOT),
            _ => Errno::EIO,
        },
        _ => Errno::EIO,
    }
}

impl LockboxFs {
    /// A file system over `store`.
    pub fn new(store: Store, keys: Arc<dyn Keys>, config: FsConfig) -> io::Result<Self> {
        let meta = std::fs::metadata(store.dir())?;
        let tags = Arc::new(Mutex::new(TagCache::new(
            TAGS_BUDGET,
            Some(TAGS_ENTRIES),
            tags_bytes,
        )));
        let retag = {
            let (tags, keys) = (tags.clone(), keys.clone());
            Retagger::start(store.clone(), keys.clone(), move |binding, made| {
                // Checked under the cache's lock, which `on_lock` takes
                // after the session locked: no tag key stays behind.
                let mut tags = lock(&tags);
                if keys.is_unlocked() {
                    tags.put(*binding, Some(made));
                }
            })?
        };
        Ok(LockboxFs {
            store,
            keys,
            config,
            tags,
            retag,
            inner: Mutex::new(FsState {
                next_ino: ROOT + 1,
                next_fh: 1,
                ..FsState::default()
            }),
            cache: Mutex::new(ChunkCache::new(config.cache_bytes, None, chunk_bytes)),
            warned_locked: AtomicBool::new(false),
            uid: meta.uid(),
            gid: meta.gid(),
            notifier: OnceLock::new(),
            folder_mtime: Mutex::new(meta.modified().unwrap_or_else(|_| SystemTime::now())),
        })
    }

    /// The session was locked: drop every decrypted chunk, every open
    /// reader's key material and the plaintext the kernel caches for the
    /// mount's files, so that a reader open across the lock is refused too.
    /// Staged writes stay (they are sealed at close). Must not be called
    /// from a FUSE request thread.
    pub fn on_lock(&self) {
        lock(&self.cache).clear();
        lock(&self.tags).clear();
        self.retag.forget_asked();
        let inos: Vec<u64> = {
            let inner = lock(&self.inner);
            for h in inner.handles.values() {
                if let Handle::Reader { state, .. } = &**h {
                    let mut st = lock(state);
                    st.payload = None;
                    st.epoch += 1;
                }
            }
            inner.nodes.keys().copied().collect()
        };
        self.warned_locked.store(false, Ordering::Relaxed);
        // Outside the lock on the nodes: the kernel may wait, to drop a
        // page, for a read that a FUSE thread is answering.
        if let Some(notifier) = self.notifier.get() {
            for ino in inos {
                let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
            }
        }
    }

    /// Give the file system the channel to tell the kernel about changes
    /// made behind its back (set once, right after mounting).
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// The store changed `name` outside the mount (CLI, mesh): drop the
    /// kernel's cached attributes, pages and name for it. Must not be called
    /// from a FUSE request thread.
    pub fn invalidate(&self, name: &Name) {
        self.touch_folder(name.parent().as_ref());
        let (ino, parent, cached) = {
            let mut inner = lock(&self.inner);
            let ino = inner.by_name.get(name).copied();
            let parent = Self::parent_ino(&inner, name);
            // Its size is read from the header again.
            let cached = ino.and_then(|i| Self::file_gone(&mut inner, i));
            (ino, parent, cached)
        };
        if let Some(c) = cached {
            self.forget_cached(c);
        }
        if let Some(notifier) = self.notifier.get() {
            if let Some(ino) = ino {
                let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
            }
            // A folder the kernel does not know has no entries cached.
            if let Some(parent) = parent {
                let _ = notifier.inval_entry(INodeNo(parent), name.file_name().as_os_str());
                // The folder's time moved.
                let _ = notifier.inval_inode(INodeNo(parent), 0, 0);
            }
        }
    }

    /// Seal every file with unsealed writes (before unmounting).
    pub fn seal_all(&self) -> usize {
        let staged: Vec<(u64, Arc<Mutex<Staged>>)> = lock(&self.inner)
            .nodes
            .iter()
            .filter_map(|(ino, n)| n.staged.clone().map(|s| (*ino, s)))
            .collect();
        staged
            .into_iter()
            .filter(|(ino, s)| self.seal_staged(*ino, &mut lock(s)).is_ok())
            .count()
    }

    fn warn_locked(&self, what: &str) {
        if !self.warned_locked.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{what} refused (EACCES): lockbox is locked; run `lockbox unlock` to read or \
                 modify existing files (creating or fully replacing files works while locked)"
            );
        }
    }

    /// Who a seal through the mount is sealed to, with the tag key while
    /// unlocked.
    fn seal_to(&self) -> Result<SealTo, Error> {
        let mut to = self.keys.recipients()?;
        to.tags = self.keys.tag_key();
        Ok(to)
    }

    fn identity_or_eacces(&self, what: &str) -> Result<Arc<AgeIdentity>, Errno> {
        self.keys.identity().ok_or_else(|| {
            self.warn_locked(what);
            Errno::EACCES
        })
    }

    /// Open an existing node (shared by `open` and `create` on an existing name).
    fn open_node(&self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let acc = OpenFlags(flags).acc_mode();
        let trunc = flags & libc::O_TRUNC != 0;
        let (name, staged) = {
            let inner = lock(&self.inner);
            let node = inner.nodes.get(&ino).ok_or(Errno::ESTALE)?;
            if node.folder {
                return Err(Errno::EISDIR);
            }
            // Replaced by a rename or unlinked while the kernel still held
            // the old name: ESTALE makes it look the name up again.
            (node.name.clone().ok_or(Errno::ESTALE)?, node.staged.clone())
        };
        if acc == OpenAccMode::O_RDONLY {
            return self.open_reader(ino, name, staged);
        }
        self.open_writer(ino, &name, staged, acc, trunc)
    }
}

#[cfg(test)]
mod folder_tests;
#[cfg(test)]
mod tests;
