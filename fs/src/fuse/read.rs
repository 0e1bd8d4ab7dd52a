//! The read path (the `read` operation): readers of one store version
//! ([`ReaderState`]), decryption by whole 64 KiB chunk (into the reply or
//! the chunk cache) or by the 4 KiB blocks a small read needs, checked
//! against the version's block tags, asking the retagger for tags a
//! version lacks, and loading a whole plaintext for a writer. Damaged
//! versions are reported once. It must not keep plaintext outside the
//! caches of `cache`.

use crate::escape::Escape;
use std::fs::File;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use fuser::{Errno, FileHandle, ReplyData};
use lockbox_crypto::seal::tags::{BlockTags, BLOCKS_PER_CHUNK, BLOCK_SIZE};
use lockbox_crypto::seal::{self, Opened, Payload, CHUNK_SIZE};
use lockbox_crypto::wipe::SecretBuf;
use lockbox_crypto::AgeIdentity;

use crate::pages::Pages;
use crate::retag::Job;
use crate::{lock, Error, Name};

use super::cache::Cached;
use super::inodes::{Handle, StoreVersion};
use super::staged::Staged;
use super::{errno_of, LockboxFs};

pub(super) struct ReaderState {
    /// The store version pinned at open. Store files are never changed in
    /// place (a new version is a new file renamed over the name), so every
    /// read of this handle reads the same bytes through it.
    pub(super) file: Arc<File>,
    /// Its payload key and layout, made at the first cache miss (a header
    /// unwrap). Reads decrypt by position through it, so concurrent reads
    /// of one handle (the kernel's read-ahead runs several) decrypt on
    /// several threads. Dropped at lock.
    pub(super) payload: Option<Arc<Payload>>,
    /// Bumped at lock, so a payload opened across a lock is not kept.
    pub(super) epoch: u64,
}

impl LockboxFs {
    /// Plaintext of a store file, for a writer that keeps the old content.
    pub(super) fn load_plaintext(
        &self,
        name: &Name,
        identity: &AgeIdentity,
    ) -> Result<Pages, Errno> {
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
    pub(super) fn damaged(&self, name: &Name, version: StoreVersion, why: &str) -> Errno {
        if lock(&self.inner).warned_damaged.insert(version) {
            tracing::warn!(
                "{name}: the ciphertext failed authentication or cannot be opened ({why}); \
                 reads return EIO. Restore it from another envoy or a backup.",
                name = name.escaped()
            );
        }
        Errno::EIO
    }

    /// Read `size` bytes at `offset`: from the chunk cache, else decrypted
    /// now. A chunk the read covers whole is decrypted straight into the
    /// reply (the kernel's page cache keeps it); a chunk read in part goes
    /// through the cache, for the reads of its other parts.
    pub(super) fn read_decrypted(
        &self,
        h: &Handle,
        offset: u64,
        size: u32,
    ) -> Result<SecretBuf, Errno> {
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
    pub(super) fn damaged_reader(&self, h: &Handle, why: &str) -> Errno {
        match h {
            Handle::Reader { name, version, .. } => self.damaged(name, *version, why),
            _ => Errno::EIO,
        }
    }

    /// A reader's file and payload key, opening the payload (a header
    /// unwrap) on first use.
    pub(super) fn payload(&self, h: &Handle) -> Result<(Arc<File>, Arc<Payload>), Errno> {
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
    pub(super) fn decrypt_onto(
        &self,
        h: &Handle,
        idx: u64,
        out: &mut SecretBuf,
    ) -> Result<usize, Errno> {
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
    pub(super) fn read_by_blocks(
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
                        Ok(_) => {
                            tracing::debug!("{}: a block does not match its tag", name.escaped())
                        }
                        Err(e) => tracing::debug!("{}: reading by blocks: {e}", name.escaped()),
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
    pub(super) fn block_tags(
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
    pub(super) fn ask_for_tags(&self, h: &Handle, file: &Arc<File>, payload: &Arc<Payload>) {
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
    pub(super) fn decrypt_to_cache(&self, h: &Handle, idx: u64) -> Result<Arc<SecretBuf>, Errno> {
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

    /// Open node `ino`, named `name`, for reading: the staged content of
    /// its writers if it has some (`staged`), else a reader of its store
    /// version.
    pub(super) fn open_reader(
        &self,
        ino: u64,
        name: Name,
        staged: Option<Arc<Mutex<Staged>>>,
    ) -> Result<u64, Errno> {
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
        Ok(self.add_handle(Handle::Reader {
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
        }))
    }

    /// `read` through handle `fh`: from the staged content of a writer's
    /// handle, or decrypted from a reader's store version.
    pub(super) fn read_handle(&self, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        match &*h {
            Handle::Staged { ino, staged, .. } => {
                // The buffer may hold plaintext loaded before a lock (or
                // written since): it is read only while unlocked, as the
                // store is (reading back needs the key: see
                // `docs/design.md`, "Write path").
                if let Err(e) = self.identity_or_eacces("reading back") {
                    return reply.error(e);
                }
                let mut st = lock(staged);
                if let Err(e) = self
                    .ensure_loaded(*ino, &mut st, "reading back")
                    .and_then(|()| self.unstream(&mut st, "reading a file being written"))
                {
                    return reply.error(e);
                }
                let mut buf = SecretBuf::new(vec![0u8; size as usize]);
                let n = st.pages.read_at(offset, &mut buf);
                reply.data(&buf[..n])
            }
            Handle::Reader { .. } => match self.read_decrypted(&h, offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            },
        }
    }
}
