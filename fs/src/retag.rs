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

use crate::escape::Escape;
use std::collections::HashSet;
use std::fs::File;
use std::hash::Hash;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use lockbox_crypto::seal::tags::BlockTags;
use lockbox_crypto::seal::Payload;

use crate::keys::Keys;
use crate::{lock, Name, Store};

/// The thread's niceness: it only speeds up later reads, so it yields the
/// CPU to everything the user waits for.
const NICENESS: i32 = 15;

/// Versions remembered as asked for; past this many the memory is cleared
/// (a version asked for again is only tagged again).
const MAX_REMEMBERED: usize = 4096;

/// Jobs waiting at most: each holds an open store file and a payload key.
/// A version asked for while the queue is full is not remembered, so a
/// later read asks again.
const MAX_QUEUED: usize = 64;

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
    tx: Mutex<SyncSender<Job<V>>>,
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
        let (tx, rx) = sync_channel::<Job<V>>(MAX_QUEUED);
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
        lock(&self.asked).clear();
    }

    /// Queue `job`, unless its version was asked for before or the queue
    /// is full; never waits.
    pub(crate) fn request(&self, job: Job<V>) {
        let mut asked = lock(&self.asked);
        if asked.len() >= MAX_REMEMBERED {
            asked.clear();
        }
        if !asked.insert(job.version.clone()) {
            return;
        }
        let version = job.version.clone();
        let sent = lock(&self.tx).try_send(job);
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                asked.remove(&version);
            }
            // The thread only ends with this value; nothing to do if it died.
            Err(TrySendError::Disconnected(_)) => {}
        }
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
            tracing::debug!("{}: no block tags made: {e}", job.name.escaped());
            None
        }
    }
}

/// Keep a version's tags in `tags/<name>` if it is still the name's.
fn keep<V>(store: &Store, job: &Job<V>, tags: &BlockTags) {
    match store.attach_tags(&job.name, &job.file, tags) {
        Ok(true) => tracing::debug!("{}: block tags made", job.name.escaped()),
        Ok(false) => tracing::debug!(
            "{}: block tags made for a version since replaced",
            job.name.escaped()
        ),
        Err(e) => tracing::debug!("{}: block tags not kept: {e}", job.name.escaped()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::TestKeys;
    use std::sync::mpsc::{channel, Receiver};
    use std::time::Duration;

    type Done = Receiver<(u32, Arc<BlockTags>)>;

    fn setup() -> (tempfile::TempDir, Store, Arc<TestKeys>, Retagger<u32>, Done) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = TestKeys::unlocked();
        let (tx, rx) = channel();
        let done = Mutex::new(tx);
        let retag = Retagger::start(store.clone(), keys.clone(), move |v: &u32, t| {
            let _ = done.lock().unwrap().send((*v, t));
        })
        .unwrap();
        (dir, store, keys, retag, rx)
    }

    fn job(store: &Store, keys: &TestKeys, version: u32, name: &str) -> Job<u32> {
        let name = Name::new(name).unwrap();
        let file = store.open_file(&name).unwrap();
        let payload = Payload::open(&keys.id, &file).unwrap();
        Job {
            version,
            name,
            file: Arc::new(file),
            payload: Arc::new(payload),
        }
    }

    fn seal(store: &Store, keys: &TestKeys, name: &str, len: usize) {
        let to = keys.recipients().unwrap();
        let text = vec![7u8; len];
        store
            .seal(&Name::new(name).unwrap(), &text[..], &to, 1 << 30)
            .unwrap();
    }

    const WAIT: Duration = Duration::from_secs(30);
    const NONE: Duration = Duration::from_millis(300);

    #[test]
    fn a_version_is_tagged_once_and_kept_on_disk() {
        let (dir, store, keys, retag, done) = setup();
        seal(&store, &keys, "big", 300_000);
        retag.request(job(&store, &keys, 1, "big"));
        let (v, tags) = done.recv_timeout(WAIT).expect("tags made");
        assert_eq!(v, 1);
        assert_eq!(tags.plaintext_len(), 300_000);
        // The done callback runs before the index is written: wait for it.
        let index = dir.path().join("tags").join("big");
        let on_disk = |want: &[u8]| std::fs::read(&index).is_ok_and(|b| b == want);
        let deadline = std::time::Instant::now() + WAIT;
        while !on_disk(&tags.encode()) {
            assert!(std::time::Instant::now() < deadline, "no index on disk");
            std::thread::yield_now();
        }
        // Asked again: nothing; after a lock's forgetting: again.
        retag.request(job(&store, &keys, 1, "big"));
        assert!(done.recv_timeout(NONE).is_err(), "tagged twice");
        retag.forget_asked();
        retag.request(job(&store, &keys, 1, "big"));
        assert_eq!(done.recv_timeout(WAIT).expect("tags made again").0, 1);
        // A file of one chunk gets none.
        seal(&store, &keys, "small", 1000);
        retag.request(job(&store, &keys, 2, "small"));
        assert!(done.recv_timeout(NONE).is_err(), "a one-chunk file tagged");
    }

    #[test]
    fn nothing_is_made_while_locked_and_a_lock_can_be_asked_again_after() {
        let (dir, store, keys, retag, done) = setup();
        seal(&store, &keys, "big", 300_000);
        let j = job(&store, &keys, 1, "big");
        keys.set_unlocked(false);
        retag.request(j);
        assert!(done.recv_timeout(NONE).is_err(), "tagged while locked");
        assert!(!dir.path().join("tags").join("big").exists());
        keys.set_unlocked(true);
        retag.forget_asked();
        retag.request(job(&store, &keys, 1, "big"));
        assert_eq!(done.recv_timeout(WAIT).expect("tags after unlock").0, 1);
    }
}
