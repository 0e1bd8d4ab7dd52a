//! Block tags for versions that have none, made in the background.
//!
//! A seal made while unlocked tags the blocks of its ciphertext as it
//! writes them (`lockbox_crypto::seal::tags`), so that a small read of a
//! large file decrypts only the 4 KiB blocks it needs. A version sealed
//! without them — while locked, by the sweep, by a re-encryption, or by
//! another envoy and received over the mesh — is read by whole 64 KiB
//! chunks. When the mount finds such a version at a small read, it asks
//! the [`Retagger`] for its tags: one thread, at a low priority, checks
//! every chunk of the version against its Poly1305 tag and tags its blocks
//! ([`Payload::tag_blocks`]), keeps the tags in `tags/<name>` if the
//! version is still the name's ([`Store::attach_tags`]) and hands them to
//! the mount, whose later small reads of that version go by blocks.
//!
//! Only while unlocked: the thread needs the tag key, and it holds the
//! version's payload key (from the reader that asked) only while it
//! works; it asks the session before every chunk and drops the job at a
//! lock, so no key outlives the unlock by more than one chunk's check.
//! It never resets the idle timer. Each version is asked for once per
//! unlock (a damaged one fails its check once, at debug level: the reads
//! of it report the damage).

use std::collections::HashSet;
use std::fs::File;
use std::hash::Hash;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use lockbox_crypto::seal::tags::BlockTags;
use lockbox_crypto::seal::Payload;

use crate::fuse::Keys;
use crate::{Name, Store};

/// The thread's niceness: it only speeds up later reads, so it yields the
/// CPU to everything the user waits for.
const NICENESS: i32 = 15;

/// Versions remembered as asked for; past this many the memory is cleared
/// (a version asked for again is only tagged again).
const MAX_REMEMBERED: usize = 4096;

/// One version to tag: `version` is the caller's key for it.
pub(crate) struct Job<V> {
    pub version: V,
    pub name: Name,
    /// The version's store file, as the reader opened it.
    pub file: Arc<File>,
    /// Its payload key, from the reader.
    pub payload: Arc<Payload>,
}

/// The queue of versions to tag and the thread that works it off. The
/// thread ends when this is dropped.
pub(crate) struct Retagger<V> {
    tx: Mutex<Sender<Job<V>>>,
    asked: Mutex<HashSet<V>>,
}

impl<V: Hash + Eq + Clone + Send + 'static> Retagger<V> {
    /// Start the thread; `done` gets the tags of each version tagged, and
    /// must keep them only while unlocked.
    pub(crate) fn start(
        store: Store,
        keys: Arc<dyn Keys>,
        done: impl Fn(&V, Arc<BlockTags>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job<V>>();
        std::thread::Builder::new()
            .name("lockbox-retag".into())
            .spawn(move || {
                crate::lower_priority(NICENESS, "the block-tag thread");
                for job in rx {
                    if let Some(tags) = tag(keys.as_ref(), &job) {
                        // The mount first: once they are on disk, reads
                        // find them in its memory too.
                        done(&job.version, tags.clone());
                        keep(&store, &job, &tags);
                    }
                }
            })?;
        Ok(Retagger {
            tx: Mutex::new(tx),
            asked: Mutex::new(HashSet::new()),
        })
    }

    /// Forget which versions were asked for (at a lock, which stops the
    /// work on them: after the next unlock they may be asked for again).
    pub(crate) fn forget_asked(&self) {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Queue `job`, unless its version was asked for before.
    pub(crate) fn request(&self, job: Job<V>) {
        {
            let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            if asked.len() >= MAX_REMEMBERED {
                asked.clear();
            }
            if !asked.insert(job.version.clone()) {
                return;
            }
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        // The thread only ends with this value; nothing to do if it died.
        let _ = tx.send(job);
    }
}

/// Tag one version, while unlocked.
fn tag<V>(keys: &dyn Keys, job: &Job<V>) -> Option<Arc<BlockTags>> {
    let key = keys.tag_key()?;
    let made = job
        .payload
        .tag_blocks(&job.file, &key, || keys.is_unlocked());
    match made {
        Ok(tags) => tags.map(Arc::new),
        Err(e) => {
            tracing::debug!("{}: no block tags made: {e}", job.name);
            None
        }
    }
}

/// Keep a version's tags in `tags/<name>` if it is still the name's.
fn keep<V>(store: &Store, job: &Job<V>, tags: &BlockTags) {
    match store.attach_tags(&job.name, &job.file, tags) {
        Ok(true) => tracing::debug!("{}: block tags made", job.name),
        Ok(false) => tracing::debug!("{}: block tags made for a version since replaced", job.name),
        Err(e) => tracing::debug!("{}: block tags not kept: {e}", job.name),
    }
}
