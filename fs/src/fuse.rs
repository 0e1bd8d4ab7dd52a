//! The FUSE adapter: `~/lockbox` as one flat folder of regular files (SPEC §5).
//!
//! A thin layer over [`Store`]: writes are staged in memory ([`Pages`]) and
//! sealed into the store when a writer closes (`flush`, so `close(2)` reports
//! a sealing failure) or calls `fsync`; a file written from start to end is
//! sealed as it grows instead ([`SealStream`]), and its close seals only the
//! last chunk and puts it in place. Reads decrypt on demand, one 64 KiB
//! age chunk at a time, through a bounded in-memory cache of decrypted
//! chunks. Keys come from the agent through [`Keys`]: reading needs the
//! unlock session, sealing needs only the public recipients, so creating or
//! fully replacing a file works while locked and everything that needs the
//! old plaintext gets `EACCES`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use lockbox_crypto::seal::tags::{Binding, BlockTags, BLOCKS_PER_CHUNK, BLOCK_SIZE};
use lockbox_crypto::seal::{self, Opened, Payload, CHUNK_SIZE};
use lockbox_crypto::wipe::SecretBuf;
use lockbox_crypto::AgeIdentity;

pub use crate::keys::Keys;
use crate::meta::LocalStat;
use crate::pages::Pages;
use crate::retag::{Job, Retagger};
use crate::store::{Pending, Seal, SealStream, SealTo, Store};
use crate::{lock, Error, Name};

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

/// Lock two staged buffers (either may be absent) in one order for all
/// callers, their addresses', so two renames of the same pair in opposite
/// directions cannot each hold one and wait for the other.
fn lock_both<'a>(
    a: Option<&'a Arc<Mutex<Staged>>>,
    b: Option<&'a Arc<Mutex<Staged>>>,
) -> (
    Option<std::sync::MutexGuard<'a, Staged>>,
    Option<std::sync::MutexGuard<'a, Staged>>,
) {
    match (a, b) {
        (Some(x), Some(y)) if Arc::ptr_eq(x, y) => (Some(lock(x)), None),
        (Some(x), Some(y)) if Arc::as_ptr(y) < Arc::as_ptr(x) => {
            let gy = lock(y);
            (Some(lock(x)), Some(gy))
        }
        (a, b) => {
            let ga = a.map(|x| lock(x));
            (ga, b.map(|y| lock(y)))
        }
    }
}

/// Settings of the mounted file system.
#[derive(Debug, Clone, Copy)]
pub struct FsConfig {
    /// Largest file (bytes); a write past it gets `EFBIG`.
    pub max_file_size: u64,
    /// Bytes of decrypted chunks kept in memory.
    pub cache_bytes: usize,
}

/// Which version of a store file: its device and its [`LocalStat`]
/// (inode, size, modification time), which change whenever the file is
/// replaced. What the mount keeps plaintext sizes and damage reports by;
/// the caches of plaintext go by binding instead (see [`ChunkCache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StoreVersion {
    dev: u64,
    stat: LocalStat,
}

impl StoreVersion {
    fn of(m: &std::fs::Metadata) -> Self {
        StoreVersion {
            dev: m.dev(),
            stat: LocalStat::from_metadata(m),
        }
    }
}

/// Bytes staged before a file written from start to end is sealed as it
/// grows instead of at its close (see [`Staged::stream`]).
const STREAM_FROM: u64 = 8 << 20;

/// Plaintext staged for a file open for writing.
struct Staged {
    pages: Pages,
    /// A file written from its start to its end, past [`STREAM_FROM`]
    /// bytes, while unlocked: its content is sealed as the writes come
    /// ([`SealStream`]) and `pages` is empty. Anything else a writer does
    /// (a write elsewhere than at the end, a read, a truncation) first
    /// turns it back into staged plaintext, decrypting what was sealed.
    stream: Option<SealStream>,
    /// Every write so far was an append to content that began empty and
    /// was never streamed and turned back: the content may become a stream.
    streamable: bool,
    /// Whether `pages` holds the file's content. A writer that opened an
    /// existing file without `O_TRUNC` loads the old plaintext only when a
    /// read or write needs it, so `open` + `ftruncate(0)` works while locked.
    loaded: bool,
    /// Changed since the last seal.
    dirty: bool,
    /// Open write handles.
    writers: u32,
    /// Its last writer released it: it is being taken off its node, and
    /// an open that found it there must stage anew instead of joining it
    /// (joined, it would be a buffer the node no longer shows, so `stat`
    /// would show the store's old version until the kernel forgot it).
    released: bool,
    /// A write failed (EFBIG): the staged content is incomplete and must
    /// never be sealed; close reports this error and the old version stays.
    poisoned: Option<Errno>,
    /// The modification time the file shows, and its next seal gives the
    /// store file: the last write, or the time utimensat set after it.
    mtime: SystemTime,
}

impl Staged {
    fn new(pages: Pages, loaded: bool, dirty: bool, writers: u32) -> Staged {
        Staged {
            streamable: loaded && pages.is_empty(),
            pages,
            stream: None,
            loaded,
            dirty,
            writers,
            released: false,
            poisoned: None,
            mtime: SystemTime::now(),
        }
    }

    /// Size of the content.
    fn len(&self) -> u64 {
        match &self.stream {
            Some(s) => s.len(),
            None => self.pages.len(),
        }
    }

    /// Make the content empty (`O_TRUNC`, `truncate` to 0).
    fn clear(&mut self) {
        self.pages.truncate(0);
        self.stream = None;
        self.loaded = true;
        self.streamable = true;
    }

    /// One more writer opens the file; `O_TRUNC` empties it, modified now.
    /// False, and nothing changes, once its last writer released it.
    #[must_use]
    fn join_writer(&mut self, trunc: bool) -> bool {
        if self.released {
            return false;
        }
        self.writers += 1;
        if trunc {
            self.clear();
            self.dirty = true;
            self.mtime = SystemTime::now();
        }
        true
    }

    /// The staged content can never be sealed (a failed write).
    fn poison(&mut self, e: Errno) {
        self.poisoned = Some(e);
        self.stream = None;
    }
}

struct Node {
    /// `None` once unlinked (or replaced by a rename) while still open.
    name: Option<Name>,
    lookups: u64,
    open: u32,
    staged: Option<Arc<Mutex<Staged>>>,
    /// Its store version as last stat'ed or sealed: whose plaintext size
    /// (in [`FsState::sizes`]) to forget when it is unlinked.
    version: Option<StoreVersion>,
    /// Its store file as the caches know it, as last sealed or opened for
    /// reading: what to drop from them when it is unlinked or replaced.
    cached: Option<Cached>,
}

/// What the chunk and tag caches know a store file by: its binding, and
/// its plaintext length (which chunks of it they can hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cached {
    binding: Binding,
    len: u64,
}

enum Handle {
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

struct ReaderState {
    /// The store version pinned at open. Store files are never changed in
    /// place (a new version is a new file renamed over the name), so every
    /// read of this handle reads the same bytes through it.
    file: Arc<File>,
    /// Its payload key and layout, made at the first cache miss (a header
    /// unwrap). Reads decrypt by position through it, so concurrent reads
    /// of one handle (the kernel's read-ahead runs several) decrypt on
    /// several threads. Dropped at lock.
    payload: Option<Arc<Payload>>,
    /// Bumped at lock, so a payload opened across a lock is not kept.
    epoch: u64,
}

/// An LRU cache bounded in bytes (as `weigh` counts them) and, if given a
/// cap, in entries; least recently used out first.
struct BoundedCache<K: std::hash::Hash + Eq, V: Clone> {
    lru: lru::LruCache<K, V>,
    used: usize,
    budget: usize,
    weigh: fn(&V) -> usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> BoundedCache<K, V> {
    fn new(budget: usize, entries: Option<usize>, weigh: fn(&V) -> usize) -> Self {
        let lru = match entries.and_then(std::num::NonZeroUsize::new) {
            Some(cap) => lru::LruCache::new(cap),
            None => lru::LruCache::unbounded(),
        };
        BoundedCache {
            lru,
            used: 0,
            budget,
            weigh,
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        self.lru.get(key).cloned()
    }

    fn put(&mut self, key: K, value: V) {
        let size = (self.weigh)(&value);
        if size > self.budget {
            return;
        }
        self.used += size;
        // `push` hands back what it replaced or evicted for the entry cap.
        if let Some((_, old)) = self.lru.push(key, value) {
            self.used -= (self.weigh)(&old);
        }
        while self.used > self.budget {
            match self.lru.pop_lru() {
                Some((_, old)) => self.used -= (self.weigh)(&old),
                None => break,
            }
        }
    }

    fn forget(&mut self, key: &K) {
        if let Some(old) = self.lru.pop(key) {
            self.used -= (self.weigh)(&old);
        }
    }

    fn clear(&mut self) {
        self.lru.clear();
        self.used = 0;
    }

    fn len(&self) -> usize {
        self.lru.len()
    }

    /// Drop every entry whose key `gone` picks (a pass over all of them).
    fn forget_where(&mut self, gone: impl Fn(&K) -> bool)
    where
        K: Clone,
    {
        let keys: Vec<K> = self
            .lru
            .iter()
            .map(|(k, _)| k)
            .filter(|k| gone(k))
            .cloned()
            .collect();
        for k in keys {
            self.forget(&k);
        }
    }
}

/// Decrypted chunks by (file binding, chunk index), bounded in bytes. Not
/// by [`StoreVersion`]: a file deleted or replaced frees its inode, and a new
/// file that gets it with the same size and times (kept by `cp -p` or
/// `rsync -a`, or set by `touch -d`) would be served the old file's
/// plaintext.
type ChunkCache = BoundedCache<(Binding, u64), Arc<SecretBuf>>;

/// Bytes of block tags kept in memory (a 1 GiB file has 4 MiB of them).
const TAGS_BUDGET: usize = 16 << 20;
/// Files whose block tags (or lack of them) are remembered.
const TAGS_ENTRIES: usize = 4096;

/// Block tags of files read lately, or that a file has none, by binding;
/// bounded in bytes and entries. Holds per-file MAC keys, so it is emptied
/// at lock.
type TagCache = BoundedCache<Binding, Option<Arc<BlockTags>>>;

fn chunk_bytes(chunk: &Arc<SecretBuf>) -> usize {
    chunk.len()
}

fn tags_bytes(tags: &Option<Arc<BlockTags>>) -> usize {
    tags.as_ref().map_or(0, |t| t.memory())
}

/// The mount's tables, under one lock: the nodes (inode numbers, names,
/// lookup counts), the open handles and folder listings, and what is known
/// of store versions (plaintext sizes, damage already reported).
#[derive(Default)]
struct FsState {
    by_name: HashMap<Name, u64>,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    handles: HashMap<u64, Arc<Handle>>,
    next_fh: u64,
    dirs: HashMap<u64, Vec<(u64, Name)>>,
    warned_damaged: HashSet<StoreVersion>,
    /// Plaintext sizes of the store versions the mount has stat'ed or
    /// sealed, so that a name whose node the kernel forgot (memory
    /// pressure, `drop_caches`) or that was renamed (same version) is
    /// stat'ed again without reading its header. Cleared when it reaches
    /// [`MAX_SIZES`]; a miss only costs that read.
    sizes: HashMap<StoreVersion, u64>,
}

/// Versions whose plaintext size [`FsState::sizes`] keeps (about 40 bytes
/// each).
const MAX_SIZES: usize = 1 << 16;

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
}

fn errno_of(e: &Error) -> Errno {
    match e {
        Error::NotFound(_) => Errno::ENOENT,
        Error::BadName { .. } => Errno::EINVAL,
        Error::TooLarge { .. } => Errno::EFBIG,
        Error::Io { source, .. } | Error::Read(source) => match source.raw_os_error() {
            Some(libc::ENOSPC) => Errno::ENOSPC,
            Some(libc::EDQUOT) => Errno::from_i32(libc::EDQUOT),
            _ => Errno::EIO,
        },
        _ => Errno::EIO,
    }
}

fn name_errno(name: &OsStr) -> Errno {
    if name.len() > crate::name::MAX_NAME_BYTES {
        Errno::ENAMETOOLONG
    } else {
        Errno::EINVAL
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
        let (ino, cached) = {
            let mut inner = lock(&self.inner);
            let ino = inner.by_name.get(name).copied();
            // Its size is read from the header again.
            let cached = ino.and_then(|i| Self::file_gone(&mut inner, i));
            (ino, cached)
        };
        if let Some(c) = cached {
            self.forget_cached(c);
        }
        if let Some(notifier) = self.notifier.get() {
            if let Some(ino) = ino {
                let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
            }
            let _ = notifier.inval_entry(INodeNo(ROOT), name.as_os_str());
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
    fn seal_to(&self) -> Result<SealTo, String> {
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

    fn root_attr(&self) -> FileAttr {
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

    fn file_attr(&self, ino: u64, size: u64, mtime: SystemTime) -> FileAttr {
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
    fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
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
    fn unnamed_attr(&self, ino: u64) -> Option<FileAttr> {
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
    fn store_attr(
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

    /// Node `ino`'s store version `version` holds `size` bytes of plaintext.
    fn remember_size(&self, ino: u64, version: StoreVersion, size: u64) {
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
    fn file_gone(inner: &mut FsState, ino: u64) -> Option<Cached> {
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
    fn now_version(inner: &mut FsState, ino: u64, version: StoreVersion) {
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
    fn lookup_attr(&self, name: &Name) -> Result<(u64, FileAttr), Errno> {
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
                let (ino, fresh) = {
                    let mut inner = lock(&self.inner);
                    match inner.by_name.get(name) {
                        // Made meanwhile (a create): ask it.
                        Some(&ino) => (counted(&mut inner, ino), false),
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
    fn resolve(&self, name: &Name) -> Result<u64, Errno> {
        let mut inner = lock(&self.inner);
        if let Some(&ino) = inner.by_name.get(name) {
            let staged = inner.nodes.get(&ino).is_some_and(|n| n.staged.is_some());
            if staged || self.store.contains(name) {
                return Ok(ino);
            }
            Self::forget_gone(&mut inner, name, ino);
            return Err(Errno::ENOENT);
        }
        if !self.store.contains(name) {
            return Err(Errno::ENOENT);
        }
        Ok(Self::add_node(&mut inner, name.clone(), None))
    }

    /// [`LockboxFs::resolve`] without asking the store about a name that
    /// has a node: for a caller whose next step finds out anyway (`rename`
    /// renames it) and then calls [`LockboxFs::gone`] if it is not there.
    /// One `stat` less.
    fn resolve_known(&self, name: &Name) -> Result<u64, Errno> {
        if let Some(&ino) = lock(&self.inner).by_name.get(name) {
            return Ok(ino);
        }
        self.resolve(name)
    }

    /// `name` (node `ino`) turned out to be gone from the store behind our
    /// back (deleted by the CLI or the mesh), unless it is being written.
    fn gone(&self, name: &Name, ino: u64) {
        let mut inner = lock(&self.inner);
        let staged = inner.nodes.get(&ino).is_some_and(|n| n.staged.is_some());
        if !staged && inner.by_name.get(name) == Some(&ino) {
            Self::forget_gone(&mut inner, name, ino);
        }
    }

    fn forget_gone(inner: &mut FsState, name: &Name, ino: u64) {
        inner.by_name.remove(name);
        if let Some(n) = inner.nodes.get_mut(&ino) {
            n.name = None;
        }
        Self::maybe_drop(inner, ino);
    }

    fn add_node(inner: &mut FsState, name: Name, staged: Option<Arc<Mutex<Staged>>>) -> u64 {
        let ino = inner.next_ino;
        inner.next_ino += 1;
        inner.by_name.insert(name.clone(), ino);
        inner.nodes.insert(
            ino,
            Node {
                name: Some(name),
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
    fn maybe_drop(inner: &mut FsState, ino: u64) {
        let Some(n) = inner.nodes.get(&ino) else {
            return;
        };
        if n.lookups == 0 && n.open == 0 && n.staged.is_none() {
            if let Some(name) = &n.name {
                if inner.by_name.get(name) == Some(&ino) {
                    inner.by_name.remove(name);
                }
            }
            inner.nodes.remove(&ino);
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
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

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        lock(&self.inner)
            .handles
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// Seal a staged file if it changed since its last seal. The caller holds
    /// the staged lock, which also serialises seals with renames.
    fn seal_staged(&self, ino: u64, st: &mut Staged) -> Result<(), Errno> {
        self.seal_staged_pending(ino, st).map(drop)
    }

    /// [`LockboxFs::seal_staged`], leaving the journal entry (signing and
    /// recording the version) to the returned [`Pending`]: the caller
    /// answers the kernel first and then drops it, which queues the entry.
    /// It holds the store's change lock, so the caller must not change the
    /// store before.
    fn seal_staged_pending(&self, ino: u64, st: &mut Staged) -> Result<Option<Pending<'_>>, Errno> {
        if let Some(e) = st.poisoned {
            return Err(e);
        }
        if !st.dirty || !st.loaded {
            return Ok(None);
        }
        let name = lock(&self.inner)
            .nodes
            .get(&ino)
            .and_then(|n| n.name.clone());
        let Some(name) = name else {
            // Unlinked while open: nothing to keep.
            st.dirty = false;
            st.stream = None;
            return Ok(None);
        };
        let done = if let Some(stream) = st.stream.take() {
            // The content now lives in the store only: a later read or
            // write through a handle still open loads it again.
            st.loaded = false;
            st.streamable = false;
            self.store.finish_stream(stream, &name, st.mtime)
        } else {
            let recipients = self.seal_to().map_err(|e| {
                tracing::warn!("cannot seal {name}: {e}");
                Errno::EIO
            })?;
            self.store.seal_deferred(
                &name,
                st.pages.reader(),
                &recipients,
                self.config.max_file_size,
                st.mtime,
            )
        };
        match done {
            Ok(Seal {
                sealed,
                tags,
                binding,
                metadata,
                recorded,
            }) => {
                st.dirty = false;
                tracing::debug!("sealed {name} ({} bytes)", sealed.plaintext_len);
                // The new version's plaintext size is known: `stat` after
                // the release need not read its header.
                let metadata = metadata.map_or_else(|| self.store.metadata(&name), Ok);
                if let Ok(meta) = metadata {
                    self.remember_size(ino, StoreVersion::of(&meta), sealed.plaintext_len);
                }
                self.now_cached(
                    ino,
                    binding.map(|binding| Cached {
                        binding,
                        len: sealed.plaintext_len,
                    }),
                );
                if let Some(binding) = binding {
                    self.prime_cache(binding, &st.pages);
                    if tags.is_some() {
                        // Reading back what was just written needs no load.
                        self.put_tags(binding, tags);
                    }
                }
                self.keys.sealed(&name, &sealed);
                Ok(Some(recorded))
            }
            Err(e) => {
                tracing::warn!("sealing {name} failed: {e}; the previous version is unchanged");
                if !st.loaded {
                    // A stream that failed to finish is gone with its content.
                    st.poison(Errno::EIO);
                }
                Err(errno_of(&e))
            }
        }
    }

    /// Seal what was written through handle `fh` since its last seal (flush
    /// and fsync); a failed seal leaves it to be tried again. The journal
    /// entry is left to the returned [`Pending`].
    fn seal_written(&self, fh: u64) -> Result<Option<Pending<'_>>, Errno> {
        match self.handle(FileHandle(fh)).as_deref() {
            Ok(Handle::Staged {
                ino,
                staged,
                write: true,
                wrote,
            }) if wrote.swap(false, Ordering::Relaxed) => {
                let r = self.seal_staged_pending(*ino, &mut lock(staged));
                if r.is_err() {
                    wrote.store(true, Ordering::Relaxed);
                }
                r
            }
            Ok(_) => Ok(None),
            Err(e) => Err(*e),
        }
    }

    /// A round of the store's grouped syncs, for an fsync (`what`): every
    /// seal, rename, create and delete so far is durable when it returns.
    fn sync_store(&self, what: &str) -> Result<(), Errno> {
        self.store.sync_now().map_err(|e| {
            tracing::warn!("{what}: {e}");
            Errno::EIO
        })
    }

    /// For fsync(2) through handle `fh`: seal its file's staged content if
    /// it changed, whichever descriptor changed it (another writer's, or
    /// this one read-only: `sync FILE` opens it so). Unlike `flush`, which
    /// seals only what its own descriptor wrote, an fsync must leave the
    /// file as it is now durable.
    fn seal_for_fsync(&self, fh: u64) -> Result<Option<Pending<'_>>, Errno> {
        match self.handle(FileHandle(fh)).as_deref() {
            Ok(Handle::Staged {
                ino, staged, wrote, ..
            }) => {
                let mut st = lock(staged);
                if st.released {
                    // Sealed by its last writer's release.
                    return Ok(None);
                }
                let r = self.seal_staged_pending(*ino, &mut st);
                if r.is_ok() {
                    wrote.store(false, Ordering::Relaxed);
                }
                r
            }
            Ok(Handle::Reader { .. }) => Ok(None),
            Err(e) => Err(*e),
        }
    }

    /// After a seal, keep a small file's plaintext as decrypted chunks of its
    /// new version, so reading it back costs no decryption. Only while
    /// unlocked: locked, plaintext must not outlive the writer's close.
    fn prime_cache(&self, binding: Binding, pages: &Pages) {
        let budget = self.config.cache_bytes as u64 / 4;
        if pages.len() > budget {
            return;
        }
        let Some(mut cache) = self.cache_while_unlocked() else {
            return;
        };
        for idx in 0..pages.len().div_ceil(CHUNK_SIZE) {
            let start = idx * CHUNK_SIZE;
            let mut chunk =
                SecretBuf::new(vec![0u8; (pages.len() - start).min(CHUNK_SIZE) as usize]);
            pages.read_at(start, &mut chunk);
            cache.put((binding, idx), Arc::new(chunk));
        }
    }

    /// The chunk cache, to put plaintext in, if the session is unlocked.
    /// Checked under the cache's lock: a lock locks the session first and
    /// then clears the caches (`on_lock`), so whatever is put either goes
    /// with that clearing or is not put at all — including by a read or a
    /// seal that began before the lock.
    fn cache_while_unlocked(&self) -> Option<std::sync::MutexGuard<'_, ChunkCache>> {
        let cache = lock(&self.cache);
        self.keys.is_unlocked().then_some(cache)
    }

    /// Remember `tags` (which hold a file's block keys) as `binding`'s,
    /// only while unlocked; see [`LockboxFs::cache_while_unlocked`].
    fn put_tags(&self, binding: Binding, tags: Option<Arc<BlockTags>>) {
        let mut cache = lock(&self.tags);
        if self.keys.is_unlocked() {
            cache.put(binding, tags);
        }
    }

    /// Node `ino`'s store file is now `cached` (a seal, or a reader that
    /// opened it): what the caches hold of the file it had before is
    /// dropped.
    fn now_cached(&self, ino: u64, cached: Option<Cached>) {
        let old = {
            let mut inner = lock(&self.inner);
            let Some(n) = inner.nodes.get_mut(&ino) else {
                return;
            };
            std::mem::replace(&mut n.cached, cached)
        };
        if let Some(old) = old.filter(|o| Some(*o) != cached) {
            self.forget_cached(old);
        }
    }

    /// Drop what the caches hold of a store file that is gone or replaced:
    /// its decrypted chunks (wiped as they go) and its block tags, at once
    /// rather than when they age out. A reader still open on it keeps
    /// reading, decrypting again.
    fn forget_cached(&self, c: Cached) {
        lock(&self.tags).forget(&c.binding);
        let mut cache = lock(&self.cache);
        let chunks = c.len.div_ceil(CHUNK_SIZE).max(1);
        // Whichever is fewer: the file's chunks, or the cache's entries (a
        // 1 GiB file has 16 384 chunks; the cache holds at most 256 whole
        // ones, or a few thousand of small files).
        if chunks > cache.len() as u64 {
            cache.forget_where(|(b, _)| *b == c.binding);
        } else {
            for idx in 0..chunks {
                cache.forget(&(c.binding, idx));
            }
        }
    }

    /// Load the old plaintext into a lazily staged writer (needs the key).
    fn ensure_loaded(&self, ino: u64, st: &mut Staged, what: &str) -> Result<(), Errno> {
        if st.loaded {
            return Ok(());
        }
        let identity = self.identity_or_eacces(what)?;
        let name = lock(&self.inner)
            .nodes
            .get(&ino)
            .and_then(|n| n.name.clone())
            .ok_or(Errno::ENOENT)?;
        st.pages = self.load_plaintext(&name, &identity)?;
        st.loaded = true;
        st.streamable = false;
        Ok(())
    }

    /// Turn a streamed content back into staged plaintext (needs the key),
    /// for anything but an append. It stays staged until the close.
    fn unstream(&self, st: &mut Staged, what: &str) -> Result<(), Errno> {
        if st.stream.is_none() {
            return Ok(());
        }
        let identity = self.identity_or_eacces(what)?;
        let stream = st.stream.take().expect("checked above");
        st.streamable = false;
        match stream.into_plaintext(&identity) {
            Ok(pages) => {
                st.pages = pages;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    "a file being written could not be read back ({e}); its writes since it \
                     was opened are lost, the previous version stays"
                );
                st.poison(Errno::EIO);
                Err(Errno::EIO)
            }
        }
    }

    /// Stage `data` at `offset` of a loaded content: appended to its stream,
    /// or into its pages (a content written from start to end past
    /// [`STREAM_FROM`] becomes a stream, while unlocked).
    fn stage_write(&self, st: &mut Staged, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let append = offset == st.len();
        if let Some(stream) = st.stream.as_mut().filter(|_| append) {
            if let Err(e) = stream.append(data) {
                tracing::warn!("sealing a file as it is written failed: {e}");
                st.poison(errno_of(&e));
                return Err(errno_of(&e));
            }
            return Ok(());
        }
        self.unstream(
            st,
            "writing elsewhere than at the end of a file being written",
        )?;
        st.streamable &= append;
        st.pages.write(offset, data);
        if st.streamable && st.pages.len() >= STREAM_FROM && self.keys.is_unlocked() {
            // Seal what was staged and go on streaming. A failure only
            // means the file is sealed at its close as usual.
            let started = self.seal_to().and_then(|to| {
                let mut stream = self.store.begin_stream(&to).map_err(|e| e.to_string())?;
                crate::store::pump(&mut st.pages.reader(), &mut stream)
                    .map_err(|e| e.to_string())?;
                Ok(stream)
            });
            match started {
                Ok(stream) => {
                    st.pages = Pages::new();
                    st.stream = Some(stream);
                }
                Err(e) => {
                    tracing::debug!("not sealing as written: {e}");
                    st.streamable = false;
                }
            }
        }
        Ok(())
    }

    /// Plaintext of a store file, for a writer that keeps the old content.
    fn load_plaintext(&self, name: &Name, identity: &AgeIdentity) -> Result<Pages, Errno> {
        let mut pages = Pages::new();
        let file = match self.store.open_file(name) {
            Ok(f) => f,
            Err(Error::NotFound(_)) => return Ok(pages),
            Err(e) => return Err(errno_of(&e)),
        };
        let version = file
            .metadata()
            .map(|m| StoreVersion::of(&m))
            .map_err(|_| Errno::EIO)?;
        let mut opened = Opened::open(identity, file)
            .map_err(|e| self.damaged(name, version, &e.to_string()))?;
        pages
            .fill_from(&mut opened, self.config.max_file_size)
            .map_err(|e| match e.kind() {
                io::ErrorKind::FileTooLarge => Errno::EFBIG,
                _ => self.damaged(name, version, &e.to_string()),
            })?;
        Ok(pages)
    }

    /// Log one WARN per damaged store version; the caller returns EIO.
    fn damaged(&self, name: &Name, version: StoreVersion, why: &str) -> Errno {
        if lock(&self.inner).warned_damaged.insert(version) {
            tracing::warn!(
                "{name}: the ciphertext failed authentication or cannot be opened ({why}); \
                 reads return EIO. Restore it from another envoy or a backup."
            );
        }
        Errno::EIO
    }

    /// Read `size` bytes at `offset`: from the chunk cache, else decrypted
    /// now. A chunk the read covers whole is decrypted straight into the
    /// reply (the kernel's page cache keeps it); a chunk read in part goes
    /// through the cache, for the reads of its other parts.
    fn read_decrypted(&self, h: &Handle, offset: u64, size: u32) -> Result<SecretBuf, Errno> {
        let Handle::Reader { len, binding, .. } = h else {
            return Err(Errno::EBADF);
        };
        // Reads need the session (and keep it alive).
        self.identity_or_eacces("reading")?;
        let end = (offset + size as u64).min(*len);
        let want = end.saturating_sub(offset) as usize;
        // Room for one tag more than the plaintext: a chunk is decrypted in
        // place after the bytes before it, and the vector must never grow
        // (a reallocation would leave a copy of the plaintext behind).
        let mut out = SecretBuf::new(Vec::with_capacity(want + seal::TAG_BYTES));
        let mut pos = offset;
        while pos < end {
            let idx = pos / CHUNK_SIZE;
            let within = (pos - idx * CHUNK_SIZE) as usize;
            let cached = lock(&self.cache).get(&(*binding, idx));
            let chunk_end = ((idx + 1) * CHUNK_SIZE).min(*len);
            let chunk = match cached {
                Some(c) => c,
                None if within == 0 && chunk_end <= end => {
                    let got = self.decrypt_onto(h, idx, &mut out)?;
                    if got == 0 {
                        break;
                    }
                    pos += got as u64;
                    continue;
                }
                None => {
                    let to = (end.min(chunk_end) - idx * CHUNK_SIZE) as usize;
                    if let Some(got) = self.read_by_blocks(h, idx, within, to, &mut out)? {
                        pos += got as u64;
                        continue;
                    }
                    self.decrypt_to_cache(h, idx)?
                }
            };
            if within >= chunk.len() {
                break;
            }
            let n = (chunk.len() - within).min((end - pos) as usize);
            out.extend_from_slice(&chunk[within..within + n]);
            pos += n as u64;
        }
        Ok(out)
    }

    /// [`LockboxFs::damaged`] for the version a reader reads.
    fn damaged_reader(&self, h: &Handle, why: &str) -> Errno {
        match h {
            Handle::Reader { name, version, .. } => self.damaged(name, *version, why),
            _ => Errno::EIO,
        }
    }

    /// A reader's file and payload key, opening the payload (a header
    /// unwrap) on first use.
    fn payload(&self, h: &Handle) -> Result<(Arc<File>, Arc<Payload>), Errno> {
        let Handle::Reader { state, .. } = h else {
            return Err(Errno::EBADF);
        };
        let (file, payload, epoch) = {
            let st = lock(state);
            (st.file.clone(), st.payload.clone(), st.epoch)
        };
        if let Some(p) = payload {
            return Ok((file, p));
        }
        let identity = self.identity_or_eacces("reading")?;
        let p =
            Payload::open(&identity, &file).map_err(|e| self.damaged_reader(h, &e.to_string()))?;
        let p = Arc::new(p);
        let mut st = lock(state);
        if st.epoch == epoch && st.payload.is_none() {
            st.payload = Some(p.clone());
        }
        Ok((file, p))
    }

    /// Decrypt chunk `idx` of a reader's version onto the end of `out`
    /// (which needs room for the chunk and its tag, or it grows); returns
    /// its plaintext length.
    fn decrypt_onto(&self, h: &Handle, idx: u64, out: &mut SecretBuf) -> Result<usize, Errno> {
        let (file, payload) = self.payload(h)?;
        let at = out.len();
        out.resize(at + payload.chunk_len(idx) + seal::TAG_BYTES, 0);
        let got = payload
            .read_chunk(&file, idx, &mut out[at..])
            .map_err(|e| self.damaged_reader(h, &e.to_string()))?;
        out.truncate(at + got);
        Ok(got)
    }

    /// Plaintext bytes `from..to` of chunk `idx` of a reader's version onto
    /// the end of `out`, from the 4 KiB blocks around them, checked against
    /// the version's block tags (see `lockbox_crypto::seal::tags`); the
    /// count appended. `None` when the range is large (whole chunks, which
    /// the cache keeps, serve it better), when the version has no tags, or
    /// when a block does not match them: the caller then decrypts the
    /// whole chunk, whose own tag decides between a stale index and a
    /// damaged file.
    fn read_by_blocks(
        &self,
        h: &Handle,
        idx: u64,
        from: usize,
        to: usize,
        out: &mut SecretBuf,
    ) -> Result<Option<usize>, Errno> {
        let block = BLOCK_SIZE as usize;
        let (first, last) = (from / block, to.div_ceil(block));
        let count = last.saturating_sub(first);
        if count == 0 || count as u64 > BLOCKS_PER_CHUNK / 2 {
            return Ok(None);
        }
        let (file, payload) = self.payload(h)?;
        let Some(tags) = self.block_tags(h, &file, &payload) else {
            return Ok(None);
        };
        let mut buf = SecretBuf::new(vec![0u8; count * block]);
        let first_block = idx * BLOCKS_PER_CHUNK + first as u64;
        match payload.read_blocks(&file, &tags, first_block, count as u64, &mut buf) {
            Ok(Some(n)) => {
                let (lo, hi) = (from - first * block, (to - first * block).min(n));
                let Some(part) = buf.get(lo..hi).filter(|p| !p.is_empty()) else {
                    return Ok(None);
                };
                // `out` has room for what the read wants: this never grows it.
                out.extend_from_slice(part);
                Ok(Some(part.len()))
            }
            other => {
                if let Handle::Reader { name, binding, .. } = h {
                    match other {
                        Ok(_) => tracing::debug!("{name}: a block does not match its tag"),
                        Err(e) => tracing::debug!("{name}: reading by blocks: {e}"),
                    }
                    self.put_tags(*binding, None);
                    // A stale or damaged index: make it again (a damaged
                    // file fails that, and its reads say so).
                    self.ask_for_tags(h, &file, &payload);
                }
                Ok(None)
            }
        }
    }

    /// The block tags of a reader's version, loaded at its first small read
    /// (`None`: a file of one chunk, a version sealed while locked or by a
    /// peer, or locked now).
    fn block_tags(
        &self,
        h: &Handle,
        file: &Arc<File>,
        payload: &Arc<Payload>,
    ) -> Option<Arc<BlockTags>> {
        let Handle::Reader { name, binding, .. } = h else {
            return None;
        };
        if payload.plaintext_len() <= CHUNK_SIZE {
            return None;
        }
        if let Some(known) = lock(&self.tags).get(binding) {
            return known;
        }
        let key = self.keys.tag_key()?;
        let tags = self
            .store
            .read_tags(name, &key, &payload.binding(), payload.plaintext_len())
            .map(Arc::new);
        self.put_tags(*binding, tags.clone());
        if tags.is_none() {
            self.ask_for_tags(h, file, payload);
        }
        tags
    }

    /// Ask for the block tags of a reader's version, which has none that
    /// match (see [`crate::retag`]); its later small reads go by blocks.
    fn ask_for_tags(&self, h: &Handle, file: &Arc<File>, payload: &Arc<Payload>) {
        if let Handle::Reader { name, binding, .. } = h {
            self.retag.request(Job {
                version: *binding,
                name: name.clone(),
                file: file.clone(),
                payload: payload.clone(),
            });
        }
    }

    /// Decrypt chunk `idx` of a reader's version (not in the cache) and
    /// put it in the cache.
    fn decrypt_to_cache(&self, h: &Handle, idx: u64) -> Result<Arc<SecretBuf>, Errno> {
        let Handle::Reader { binding, .. } = h else {
            return Err(Errno::EBADF);
        };
        let mut buf = SecretBuf::new(Vec::with_capacity(CHUNK_SIZE as usize + seal::TAG_BYTES));
        self.decrypt_onto(h, idx, &mut buf)?;
        let chunk = Arc::new(buf);
        if let Some(mut cache) = self.cache_while_unlocked() {
            cache.put((*binding, idx), chunk.clone());
        }
        Ok(chunk)
    }

    /// Open an existing node (shared by `open` and `create` on an existing name).
    fn open_node(&self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let acc = OpenFlags(flags).acc_mode();
        let trunc = flags & libc::O_TRUNC != 0;
        let (name, staged) = {
            let inner = lock(&self.inner);
            let node = inner.nodes.get(&ino).ok_or(Errno::ESTALE)?;
            // Replaced by a rename or unlinked while the kernel still held
            // the old name: ESTALE makes it look the name up again.
            (node.name.clone().ok_or(Errno::ESTALE)?, node.staged.clone())
        };
        if acc == OpenAccMode::O_RDONLY {
            let identity = self.identity_or_eacces("opening for reading")?;
            // A buffer poisoned by a failed write is never sealed: readers
            // read the store.
            if let Some(staged) = staged.filter(|s| lock(s).poisoned.is_none()) {
                return Ok(self.add_handle(Handle::Staged {
                    ino,
                    staged,
                    write: false,
                    wrote: AtomicBool::new(false),
                }));
            }
            drop(identity);
            let file = self.store.open_file(&name).map_err(|e| errno_of(&e))?;
            let version = file
                .metadata()
                .map(|m| StoreVersion::of(&m))
                .map_err(|_| Errno::EIO)?;
            // The plaintext length and the binding follow from the header
            // and nonce; the key is needed only when a chunk is not in the
            // cache.
            let (len, binding) = seal::read_binding(&file)
                .and_then(|(h, binding)| {
                    Ok((
                        seal::plaintext_len(h.header_len, version.stat.size)?,
                        binding,
                    ))
                })
                .map_err(|e| self.damaged(&name, version, &e.to_string()))?;
            // The size from the header is the truth, also for a version whose
            // inode, size and time an earlier file had.
            self.remember_size(ino, version, len);
            self.now_cached(ino, Some(Cached { binding, len }));
            return Ok(self.add_handle(Handle::Reader {
                ino,
                version,
                binding,
                name,
                len,
                state: Mutex::new(ReaderState {
                    file: Arc::new(file),
                    payload: None,
                    epoch: 0,
                }),
            }));
        }
        // Writing: share the staged buffer of other writers, or stage anew.
        // A staged buffer's lock is never taken while `inner` is held (a
        // writer holds its buffer's lock when it takes `inner`), so the
        // check of the node's buffer and the install of a new one are two
        // steps: the install happens only if the node still has the buffer
        // this open could not join, else it tries the newcomer.
        let mut current = staged;
        let staged = loop {
            if let Some(c) = &current {
                let mut st = lock(c);
                // A buffer poisoned by a failed write is never sealed: new
                // writers start afresh.
                if st.poisoned.is_none() && st.join_writer(trunc) {
                    break c.clone();
                }
            }
            let s = self.stage_anew(&name, acc, trunc)?;
            let mut inner = lock(&self.inner);
            let node = inner.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
            let unchanged = match (&node.staged, &current) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                node.staged = Some(s.clone());
                break s;
            }
            // Another writer staged it meanwhile: join that one (truncating
            // it, if this open truncates).
            current = node.staged.clone();
        };
        Ok(self.add_handle(Handle::Staged {
            ino,
            staged,
            write: true,
            wrote: AtomicBool::new(false),
        }))
    }

    /// A new staged buffer for a writer opening `name` with `acc` (one
    /// writer): empty if it truncates or the file is, else the old content,
    /// loaded at its first use.
    fn stage_anew(
        &self,
        name: &Name,
        acc: OpenAccMode,
        trunc: bool,
    ) -> Result<Arc<Mutex<Staged>>, Errno> {
        let size = self.store.entry(name).map(|e| e.size).unwrap_or(0);
        let empty = trunc || size == 0;
        // O_RDWR will read the old content: refuse now while locked.
        if !empty && acc == OpenAccMode::O_RDWR {
            self.identity_or_eacces("opening for reading and writing")?;
        }
        let mut st = Staged::new(Pages::new(), empty, trunc && size > 0, 1);
        if !trunc {
            // Unchanged until its first write: the store file's time.
            let meta = self.store.metadata(name).ok();
            if let Some(t) = meta.and_then(|m| m.modified().ok()) {
                st.mtime = t;
            }
        }
        Ok(Arc::new(Mutex::new(st)))
    }

    /// Truncate a file with no open writer to `size` (`truncate(2)` on a
    /// path): seal the shortened version at once.
    fn truncate_closed(&self, ino: u64, size: u64) -> Result<(), Errno> {
        let name = lock(&self.inner)
            .nodes
            .get(&ino)
            .and_then(|n| n.name.clone())
            .ok_or(Errno::ENOENT)?;
        let mut pages = if size == 0 {
            Pages::new()
        } else {
            let identity = self.identity_or_eacces("truncating to a non-zero size")?;
            self.load_plaintext(&name, &identity)?
        };
        pages.truncate(size);
        let mut st = Staged::new(pages, true, true, 0);
        self.seal_staged(ino, &mut st)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::TestKeys;

    fn unlocked_fs() -> (tempfile::TempDir, Arc<TestKeys>, LockboxFs) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = TestKeys::unlocked();
        let config = FsConfig {
            max_file_size: 1 << 30,
            cache_bytes: 16 << 20,
        };
        let fs = LockboxFs::new(store, keys.clone(), config).unwrap();
        (dir, keys, fs)
    }

    /// Write `len` bytes from start to end through a new file's handle.
    fn write_new(fs: &LockboxFs, name: &str, len: usize) -> (u64, Arc<Mutex<Staged>>) {
        let ino = {
            let staged = Arc::new(Mutex::new(Staged::new(Pages::new(), true, true, 0)));
            LockboxFs::add_node(&mut lock(&fs.inner), Name::new(name).unwrap(), Some(staged))
        };
        let fh = fs.open_node(ino, libc::O_WRONLY).unwrap();
        let Ok(h) = fs.handle(FileHandle(fh)) else {
            panic!("no handle")
        };
        let Handle::Staged { staged, .. } = &*h else {
            panic!("not a writer's handle")
        };
        let block = vec![7u8; 1 << 20];
        let mut st = lock(staged);
        for i in 0..len.div_ceil(block.len()) {
            let at = i * block.len();
            let n = block.len().min(len - at);
            fs.stage_write(&mut st, at as u64, &block[..n]).unwrap();
        }
        drop(st);
        (ino, staged.clone())
    }

    /// A seal that began before a lock and ends after it (a file sealed as
    /// it is written, closed once locked) leaves neither its block tags,
    /// which hold the file's block keys, nor its plaintext in the caches:
    /// they would outlive the lock's clearing of them. Unlocked, the same
    /// seal fills them (so the check can fail).
    #[test]
    fn a_seal_that_ends_after_a_lock_leaves_nothing_in_the_caches() {
        for lock_first in [false, true] {
            let (_dir, keys, fs) = unlocked_fs();
            // Past STREAM_FROM: sealed as written, with block tags.
            let (ino, staged) = write_new(&fs, "big", (STREAM_FROM + (1 << 20)) as usize);
            assert!(lock(&staged).stream.is_some(), "not sealed as written");
            // And a small one, whose seal would prime the chunk cache.
            let (small_ino, small) = write_new(&fs, "small", 1000);
            if lock_first {
                keys.set_unlocked(false);
                fs.on_lock();
            }
            fs.seal_staged_pending(ino, &mut lock(&staged)).unwrap();
            fs.seal_staged_pending(small_ino, &mut lock(&small))
                .unwrap();
            let (tags, chunks) = (lock(&fs.tags).len(), lock(&fs.cache).len());
            if lock_first {
                assert_eq!((tags, chunks), (0, 0), "cached after the lock");
            } else {
                assert!(
                    tags > 0 && chunks > 0,
                    "unlocked: {tags} tags, {chunks} chunks"
                );
            }
        }
    }
}
