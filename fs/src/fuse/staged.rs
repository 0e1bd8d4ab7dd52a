//! The write buffer of a file open for writing ([`Staged`]): plaintext
//! staged in memory ([`Pages`]), or for a file written from start to end,
//! a seal that grows with each write ([`SealStream`]); opening for writing,
//! loading the old content when a write needs it, and sealing into the
//! store at flush, fsync and release (and for `truncate(2)` of a closed
//! file); the `write` and `release` operations. Plaintext stays in memory: it reaches the disk only sealed.

use crate::escape::Escape;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{Errno, FileHandle, OpenAccMode, ReplyEmpty, ReplyWrite};

use crate::pages::Pages;
use crate::store::{is_executable, Pending, Seal, SealAttrs, SealStream};
use crate::{lock, Base, Name};

use super::cache::Cached;
use super::inodes::{Handle, StoreVersion};
use super::{errno_of, LockboxFs};

/// Lock two staged buffers (either may be absent) in one order for all
/// callers, their addresses', so two renames of the same pair in opposite
/// directions cannot each hold one and wait for the other.
pub(super) fn lock_both<'a>(
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

/// Bytes staged before a file written from start to end is sealed as it
/// grows instead of at its close (see [`Staged::stream`]).
pub(super) const STREAM_FROM: u64 = 8 << 20;

/// Plaintext staged for a file open for writing.
pub(super) struct Staged {
    pub(super) pages: Pages,
    /// A file written from its start to its end, past [`STREAM_FROM`]
    /// bytes, while unlocked: its content is sealed as the writes come
    /// ([`SealStream`]) and `pages` is empty. Anything else a writer does
    /// (a write elsewhere than at the end, a read, a truncation) first
    /// turns it back into staged plaintext, decrypting what was sealed.
    pub(super) stream: Option<SealStream>,
    /// Every write so far was an append to content that began empty and
    /// was never streamed and turned back: the content may become a stream.
    pub(super) streamable: bool,
    /// Whether `pages` holds the file's content. A writer that opened an
    /// existing file without `O_TRUNC` loads the old plaintext only when a
    /// read or write needs it, so `open` + `ftruncate(0)` works while locked.
    pub(super) loaded: bool,
    /// Changed since the last seal.
    pub(super) dirty: bool,
    /// Open write handles.
    pub(super) writers: u32,
    /// Its last writer released it: it is being taken off its node, and
    /// an open that found it there must stage anew instead of joining it
    /// (joined, it would be a buffer the node no longer shows, so `stat`
    /// would show the store's old version until the kernel forgot it).
    pub(super) released: bool,
    /// A write failed (EFBIG): the staged content is incomplete and must
    /// never be sealed; close reports this error and the old version stays.
    pub(super) poisoned: Option<Errno>,
    /// The modification time the file shows, and its next seal gives the
    /// store file: the last write, or the time utimensat set after it.
    pub(super) mtime: SystemTime,
    /// The version its writer started from: the one current for the name
    /// when it was opened for writing, then each version it sealed (see
    /// `docs/design.md`, "Version vectors of local versions"). Kept while
    /// locked, until the seal at unlock.
    pub(super) base: Base,
    /// The owner's execute bit the file shows and its next seal gives the
    /// store file: the create mode's, the store file's when it was
    /// staged, or what a `chmod` set since.
    pub(super) executable: bool,
}

impl Staged {
    pub(super) fn new(pages: Pages, loaded: bool, dirty: bool, writers: u32) -> Staged {
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
            base: Base::Current,
            executable: false,
        }
    }

    /// Size of the content.
    pub(super) fn len(&self) -> u64 {
        match &self.stream {
            Some(s) => s.len(),
            None => self.pages.len(),
        }
    }

    /// Make the content empty (`O_TRUNC`, `truncate` to 0).
    pub(super) fn clear(&mut self) {
        self.pages.truncate(0);
        self.stream = None;
        self.loaded = true;
        self.streamable = true;
    }

    /// One more writer opens the file; `O_TRUNC` empties it, modified now.
    /// False, and nothing changes, once its last writer released it.
    #[must_use]
    pub(super) fn join_writer(&mut self, trunc: bool) -> bool {
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
    pub(super) fn poison(&mut self, e: Errno) {
        self.poisoned = Some(e);
        self.stream = None;
    }
}

impl LockboxFs {
    /// Seal a staged file if it changed since its last seal. The caller holds
    /// the staged lock, which also serialises seals with renames.
    pub(super) fn seal_staged(&self, ino: u64, st: &mut Staged) -> Result<(), Errno> {
        self.seal_staged_pending(ino, st).map(drop)
    }

    /// [`LockboxFs::seal_staged`], leaving the journal entry (signing and
    /// recording the version) to the returned [`Pending`]: the caller
    /// answers the kernel first and then drops it, which queues the entry.
    /// It holds the store's change lock, so the caller must not change the
    /// store before.
    pub(super) fn seal_staged_pending(
        &self,
        ino: u64,
        st: &mut Staged,
    ) -> Result<Option<Pending<'_>>, Errno> {
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
            let attrs = SealAttrs::new(st.mtime, st.executable);
            self.store.finish_stream(stream, &name, attrs, &st.base)
        } else {
            let recipients = self.seal_to().map_err(|e| {
                tracing::warn!("cannot seal {}: {e}", name.escaped());
                Errno::EIO
            })?;
            self.store.seal_deferred(
                &name,
                st.pages.reader(),
                &recipients,
                self.config.max_file_size,
                SealAttrs::new(st.mtime, st.executable),
                &st.base,
            )
        };
        match done {
            Ok(Seal {
                sealed,
                tags,
                binding,
                metadata,
                recorded,
                placed,
            }) => {
                st.dirty = false;
                tracing::debug!("sealed {} ({} bytes)", name.escaped(), sealed.plaintext_len);
                if let Some(p) = placed {
                    // A next seal by this writer comes after this one.
                    st.base = p.next;
                    if p.under != name {
                        // It lost to a version that arrived during the
                        // write and went to its conflict copy: the name
                        // shows that version, not what was written here.
                        tracing::info!(
                            "{} changed on another envoy while it was written here: this \
                             version is kept as {}",
                            name.escaped(),
                            p.under.escaped()
                        );
                        self.now_cached(ino, None);
                        self.keys.sealed(&p.under, &sealed);
                        return Ok(Some(recorded));
                    }
                }
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
                tracing::warn!(
                    "sealing {} failed: {e}; the previous version is unchanged",
                    name.escaped()
                );
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
    pub(super) fn seal_written(&self, fh: u64) -> Result<Option<Pending<'_>>, Errno> {
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
    pub(super) fn sync_store(&self, what: &str) -> Result<(), Errno> {
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
    pub(super) fn seal_for_fsync(&self, fh: u64) -> Result<Option<Pending<'_>>, Errno> {
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

    /// Load the old plaintext into a lazily staged writer (needs the key).
    pub(super) fn ensure_loaded(&self, ino: u64, st: &mut Staged, what: &str) -> Result<(), Errno> {
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
    pub(super) fn unstream(&self, st: &mut Staged, what: &str) -> Result<(), Errno> {
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
    pub(super) fn stage_write(
        &self,
        st: &mut Staged,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
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
                let mut stream = self.store.begin_stream(&to)?;
                crate::store::pump(&mut st.pages.reader(), &mut stream)?;
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

    /// Open node `ino`, named `name`, for writing with `acc` (`O_TRUNC` if
    /// `trunc`): join the staged buffer of its other writers (`staged`), or
    /// stage anew.
    pub(super) fn open_writer(
        &self,
        ino: u64,
        name: &Name,
        staged: Option<Arc<Mutex<Staged>>>,
        acc: OpenAccMode,
        trunc: bool,
    ) -> Result<u64, Errno> {
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
            let s = self.stage_anew(name, acc, trunc)?;
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
    pub(super) fn stage_anew(
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
        st.base = self.store.base_of(name);
        let meta = self.store.metadata(name).ok();
        st.executable = meta.as_ref().is_some_and(is_executable);
        if !trunc {
            // Unchanged until its first write: the store file's time.
            if let Some(t) = meta.and_then(|m| m.modified().ok()) {
                st.mtime = t;
            }
        }
        Ok(Arc::new(Mutex::new(st)))
    }

    /// Truncate a file with no open writer to `size` (`truncate(2)` on a
    /// path): seal the shortened version at once.
    pub(super) fn truncate_closed(&self, ino: u64, size: u64) -> Result<(), Errno> {
        let name = lock(&self.inner)
            .nodes
            .get(&ino)
            .and_then(|n| n.name.clone())
            .ok_or(Errno::ENOENT)?;
        // What it started from, before the content is read.
        let base = self.store.base_of(&name);
        let mut pages = if size == 0 {
            Pages::new()
        } else {
            let identity = self.identity_or_eacces("truncating to a non-zero size")?;
            self.load_plaintext(&name, &identity)?
        };
        pages.truncate(size);
        let mut st = Staged::new(pages, true, true, 0);
        st.base = base;
        st.executable = self.store.executable(&name);
        self.seal_staged(ino, &mut st)
    }

    /// `write` through handle `fh`: stage `data` at `offset`.
    pub(super) fn write_handle(&self, fh: FileHandle, offset: u64, data: &[u8], reply: ReplyWrite) {
        let h = match self.handle(fh) {
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
        // The user's use: it keeps the session from its idle lock.
        self.keys.used();
        let mut st = lock(staged);
        if offset + data.len() as u64 > self.config.max_file_size {
            // What was staged is now a cut-off version: never seal it.
            st.poison(Errno::EFBIG);
            return reply.error(Errno::EFBIG);
        }
        if let Err(e) =
            self.ensure_loaded(*ino, &mut st, "appending to or partly overwriting a file")
        {
            return reply.error(e);
        }
        if let Err(e) = self.stage_write(&mut st, offset, data) {
            return reply.error(e);
        }
        st.dirty = true;
        // Also after utimensat: a write makes the file modified now.
        st.mtime = SystemTime::now();
        reply.written(data.len() as u32)
    }

    /// `release` of handle `fh`: the last writer's release seals what is
    /// staged and takes the buffer off its node.
    pub(super) fn release_handle(&self, fh: FileHandle, reply: ReplyEmpty) {
        let Some(h) = lock(&self.inner).handles.remove(&fh.0) else {
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
                if let Err(e) = self.seal_staged(ino, &mut st) {
                    // One line naming the file and the error in words
                    // (e.g. "File too large" for a write past the limit).
                    let name = lock(&self.inner)
                        .nodes
                        .get(&ino)
                        .and_then(|n| n.name.clone());
                    let shown =
                        name.map_or_else(|| "a removed file".into(), |n| n.escaped().to_string());
                    let why = std::io::Error::from_raw_os_error(i32::from(e));
                    tracing::warn!(
                        "sealing {shown} at its last close failed: {why}; the previous version stays"
                    );
                }
                // Under its lock: an open that found it on the node now
                // stages anew rather than joining a buffer taken off it.
                st.released = true;
                drop(st);
                let mut inner = lock(&self.inner);
                if let Some(n) = inner.nodes.get_mut(&ino) {
                    if n.staged.as_ref().is_some_and(|s| Arc::ptr_eq(s, staged)) {
                        // The size cache stays: it is keyed by the store
                        // version it describes.
                        n.staged = None;
                    }
                }
            }
        }
        let mut inner = lock(&self.inner);
        if let Some(n) = inner.nodes.get_mut(&ino) {
            n.open = n.open.saturating_sub(1);
        }
        LockboxFs::maybe_drop(&mut inner, ino);
        reply.ok()
    }
}
