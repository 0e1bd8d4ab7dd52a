//! The mount's bounded caches, emptied at lock: decrypted chunks by
//! (binding, index) and block tags by binding, each a [`BoundedCache`];
//! priming after a seal and dropping what a gone or replaced store file
//! left. Plaintext goes in only while unlocked.

use std::sync::Arc;

use lockbox_crypto::seal::tags::{Binding, BlockTags};
use lockbox_crypto::seal::CHUNK_SIZE;
use lockbox_crypto::wipe::SecretBuf;

use crate::lock;
use crate::pages::Pages;

use super::LockboxFs;

/// What the chunk and tag caches know a store file by: its binding, and
/// its plaintext length (which chunks of it they can hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cached {
    pub(super) binding: Binding,
    pub(super) len: u64,
}

/// An LRU cache bounded in bytes (as `weigh` counts them) and, if given a
/// cap, in entries; least recently used out first.
pub(super) struct BoundedCache<K: std::hash::Hash + Eq, V: Clone> {
    pub(super) lru: lru::LruCache<K, V>,
    pub(super) used: usize,
    pub(super) budget: usize,
    pub(super) weigh: fn(&V) -> usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> BoundedCache<K, V> {
    pub(super) fn new(budget: usize, entries: Option<usize>, weigh: fn(&V) -> usize) -> Self {
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

    pub(super) fn get(&mut self, key: &K) -> Option<V> {
        self.lru.get(key).cloned()
    }

    pub(super) fn put(&mut self, key: K, value: V) {
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

    pub(super) fn forget(&mut self, key: &K) {
        if let Some(old) = self.lru.pop(key) {
            self.used -= (self.weigh)(&old);
        }
    }

    pub(super) fn clear(&mut self) {
        self.lru.clear();
        self.used = 0;
    }

    pub(super) fn len(&self) -> usize {
        self.lru.len()
    }

    /// Drop every entry whose key `gone` picks (a pass over all of them).
    pub(super) fn forget_where(&mut self, gone: impl Fn(&K) -> bool)
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
pub(super) type ChunkCache = BoundedCache<(Binding, u64), Arc<SecretBuf>>;

/// Bytes of block tags kept in memory (a 1 GiB file has 4 MiB of them).
pub(super) const TAGS_BUDGET: usize = 16 << 20;

/// Files whose block tags (or lack of them) are remembered.
pub(super) const TAGS_ENTRIES: usize = 4096;

/// Block tags of files read lately, or that a file has none, by binding;
/// bounded in bytes and entries. Holds per-file MAC keys, so it is emptied
/// at lock.
pub(super) type TagCache = BoundedCache<Binding, Option<Arc<BlockTags>>>;

pub(super) fn chunk_bytes(chunk: &Arc<SecretBuf>) -> usize {
    chunk.len()
}

pub(super) fn tags_bytes(tags: &Option<Arc<BlockTags>>) -> usize {
    tags.as_ref().map_or(0, |t| t.memory())
}

impl LockboxFs {
    /// After a seal, keep a small file's plaintext as decrypted chunks of its
    /// new version, so reading it back costs no decryption. Only while
    /// unlocked: locked, plaintext must not outlive the writer's close.
    pub(super) fn prime_cache(&self, binding: Binding, pages: &Pages) {
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
    pub(super) fn cache_while_unlocked(&self) -> Option<std::sync::MutexGuard<'_, ChunkCache>> {
        let cache = lock(&self.cache);
        self.keys.is_unlocked().then_some(cache)
    }

    /// Remember `tags` (which hold a file's block keys) as `binding`'s,
    /// only while unlocked; see [`LockboxFs::cache_while_unlocked`].
    pub(super) fn put_tags(&self, binding: Binding, tags: Option<Arc<BlockTags>>) {
        let mut cache = lock(&self.tags);
        if self.keys.is_unlocked() {
            cache.put(binding, tags);
        }
    }

    /// Node `ino`'s store file is now `cached` (a seal, or a reader that
    /// opened it): what the caches hold of the file it had before is
    /// dropped.
    pub(super) fn now_cached(&self, ino: u64, cached: Option<Cached>) {
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
    pub(super) fn forget_cached(&self, c: Cached) {
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
}
