//! The journal of local changes: what the store tells the mesh, in order,
//! off the caller's path.
//!
//! Every change the store makes for the mount or the CLI (a seal, a
//! rename, a remove) becomes an [`Event`] that the mesh turns into signed
//! records (a version, a tombstone, a resurrect). Signing and recording
//! cost more than the change itself, so they do not run while the store's
//! change lock is held: the change *queues* its event under the lock, which
//! fixes the order, and a background thread delivers the queue to the
//! [`Journal`] in that order.
//!
//! Two rules keep the records as correct as when they were made inline:
//!
//! - **Nothing an event needs can change before it is delivered.** An event
//!   carries what the store looked like right after the change (the
//!   [`LocalStat`] of the new file, the [`Sealed`] description); what it
//!   reads from the records (a name's previous version) is changed only by
//!   events delivered before it, or by the mesh.
//! - **The mesh sees every queued change before it acts.** The mesh's own
//!   changes (a peer's version, tombstone or resurrect, reconcile, prune,
//!   reseal) take [`Store::change_lock`](crate::Store::change_lock), which
//!   delivers the whole queue first, on the caller's thread. While that
//!   lock is held no new event can be queued.
//!
//! The queue is bounded ([`MAX_QUEUED`]); a change that finds it full
//! delivers it on its own thread, which slows a burst down to the pace of
//! the journal instead of letting memory grow.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use crate::lock;
use crate::meta::LocalStat;
use crate::name::Name;
use crate::sealed::{Base, Placed, Sealed};

/// Told of every change the store makes on behalf of the mount or the CLI,
/// in the order the changes were made, after they were made (a seal through
/// the mount may still wait for its grouped sync: every read finds it, and
/// the records commit only after it is durable; see
/// [`Store::with_grouped_syncs`](crate::Store::with_grouped_syncs)). The
/// mesh implements it to sign and record versions and tombstones. A
/// journal cannot veto a change (it is already made); it logs its own
/// failures, and the agent reconciles the store at its next start.
///
/// A journal must not take the store's change lock: it may be called while
/// another thread holds it and waits for the queue (see the module docs).
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// `name` now holds a new version; `sealed` describes it when the store
    /// sealed it (None when existing ciphertext was copied in). `stat` is
    /// the new file's stat right after the change (None if it could not be
    /// read); the file may have moved on since.
    fn changed(&self, name: &Name, sealed: Option<&Sealed>, stat: Option<LocalStat>);
    /// `name` was removed.
    fn removed(&self, name: &Name);
    /// `name` was removed, and its bytes are held at `held` (its store
    /// file, and a seal of it that was still waiting) until the journal's
    /// record of the delete is durable (see `store::held`): the journal
    /// lets go of them then with [`crate::store::release_held`]. By
    /// default: [`Journal::removed`], then let go at once.
    fn removed_held(&self, name: &Name, held: &[PathBuf]) {
        self.removed(name);
        held.iter().for_each(|h| crate::store::release_held(h));
    }
    /// `from` was renamed to `to` (replacing `to`); `stat` as in
    /// [`Journal::changed`].
    fn renamed(&self, from: &Name, to: &Name, stat: Option<LocalStat>);

    /// What a writer that opens `name` for writing now starts from. Called
    /// under the change lock, once every change of `name` queued before
    /// was delivered. Without an answer, [`Base::Current`].
    fn base(&self, name: &Name) -> Base {
        let _ = name;
        Base::Current
    }

    /// Where a local seal of `name` that started from `base` goes, decided
    /// under the change lock before it is put in place (every change of
    /// `name` queued before was delivered): under `name`, or under another
    /// name when a version that arrived during the write keeps `name`. The
    /// journal may move `name`'s current version aside first (with the
    /// store's `*_locked` changes). `None`: under `name`, recorded by
    /// [`Journal::changed`] as before.
    fn place(&self, name: &Name, base: &Base, sealed: &Sealed) -> Option<Placed> {
        let _ = (name, base, sealed);
        None
    }

    /// A seal placed by [`Journal::place`] is in place under `at`;
    /// `version` is what `place` described it as.
    fn placed(&self, at: &Name, sealed: &Sealed, version: &[u8], stat: Option<LocalStat>) {
        let _ = version;
        self.changed(at, Some(sealed), stat);
    }

    /// Where a rename of `from` over `to` puts `from`'s version, decided
    /// under the change lock before the rename, as [`Journal::place`] does
    /// for a seal: under `to`, or under its conflict copy when a version of
    /// `to` that its writer could not have seen keeps `to`. `None`: under
    /// `to`, recorded by [`Journal::renamed`]. Changes may still be queued:
    /// a journal that needs them recorded delivers the queue
    /// ([`Store::deliver_journal`](crate::Store::deliver_journal)) itself,
    /// only when it must.
    fn place_rename(&self, from: &Name, to: &Name) -> Option<Placed> {
        let _ = (from, to);
        None
    }

    /// The folder `name` was made (`mkdir`, or as the new name of a folder
    /// renamed: see [`Store::rename_folder`](crate::Store::rename_folder)).
    fn folder_made(&self, name: &Name) {
        let _ = name;
    }

    /// The folder `name` was removed (`rmdir`, or as the old name of a
    /// folder renamed).
    fn folder_removed(&self, name: &Name) {
        let _ = name;
    }

    /// A rename placed by [`Journal::place_rename`] moved `from` to `at`.
    fn renamed_placed(&self, from: &Name, at: &Name, version: &[u8], stat: Option<LocalStat>) {
        let _ = version;
        self.renamed(from, at, stat);
    }
}

/// One change, as the journal is told it.
#[derive(Debug)]
pub(crate) enum Event {
    Changed(Name, Option<Sealed>, Option<LocalStat>),
    /// A name removed, and where its bytes are held.
    Removed(Name, Vec<PathBuf>),
    Renamed(Name, Name, Option<LocalStat>),
    /// A seal placed by [`Journal::place`]: where, what, its description.
    Placed(Name, Sealed, Vec<u8>, Option<LocalStat>),
    /// A rename placed by [`Journal::place_rename`]: from, where, its
    /// description.
    RenamedPlaced(Name, Name, Vec<u8>, Option<LocalStat>),
    /// A folder made.
    FolderMade(Name),
    /// A folder removed.
    FolderRemoved(Name),
}

impl Event {
    /// The names it changes.
    fn names(&self) -> [Option<&Name>; 2] {
        match self {
            Event::Changed(n, ..)
            | Event::Removed(n, _)
            | Event::Placed(n, ..)
            | Event::FolderMade(n)
            | Event::FolderRemoved(n) => [Some(n), None],
            Event::Renamed(a, b, _) | Event::RenamedPlaced(a, b, ..) => [Some(a), Some(b)],
        }
    }
}

/// Events queued beyond this are delivered by the change that finds the
/// queue full.
pub const MAX_QUEUED: usize = 4096;

/// How often the delivering thread checks that its queue still exists.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The queue between the store's changes and the journal.
#[derive(Debug)]
pub(crate) struct Queue {
    journal: Arc<dyn Journal>,
    events: Mutex<VecDeque<Event>>,
    /// Signalled when an event is queued while the delivering thread
    /// waits for one.
    queued: Condvar,
    /// The delivering thread waits on `queued`. Changed and read only
    /// with `events` locked, so a push that finds it false knows the
    /// thread will look at the queue again before it waits: a burst of
    /// seals wakes it once, not once per seal.
    waiting: AtomicBool,
    /// Held while events are delivered: one deliverer at a time, so the
    /// journal sees them in queue order.
    delivering: Mutex<()>,
    /// False when the delivering thread could not be started.
    threaded: AtomicBool,
    /// Per name, its events queued or being delivered: a name not here
    /// has its records up to date with every change of it.
    undelivered: Mutex<HashMap<Name, usize>>,
}

impl Queue {
    /// A queue to `journal`, with its delivering thread. If the thread
    /// cannot be started, every event is delivered as it is queued.
    pub(crate) fn start(journal: Arc<dyn Journal>) -> Arc<Queue> {
        let queue = Arc::new(Queue {
            journal,
            events: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            waiting: AtomicBool::new(false),
            delivering: Mutex::new(()),
            threaded: AtomicBool::new(true),
            undelivered: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&queue);
        let started = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || deliver_loop(weak));
        if let Err(e) = started {
            tracing::warn!("cannot start the journal thread ({e}): recording every change inline");
            queue.threaded.store(false, Ordering::Relaxed);
        }
        queue
    }

    /// Queue `event` (the caller holds the change lock, which fixes the
    /// order). Delivers the queue here if it is full.
    pub(crate) fn push(&self, event: Event) {
        {
            let mut counts = lock(&self.undelivered);
            for n in event.names().into_iter().flatten() {
                *counts.entry(n.clone()).or_insert(0) += 1;
            }
        }
        let (full, waiting) = {
            let mut events = lock(&self.events);
            events.push_back(event);
            (
                events.len() > MAX_QUEUED,
                self.waiting.load(Ordering::Relaxed),
            )
        };
        if full || !self.threaded.load(Ordering::Relaxed) {
            self.deliver();
        } else if waiting {
            self.queued.notify_one();
        }
    }

    /// Deliver every queued event, in order, on this thread. Returns when
    /// the queue is empty and no other thread is still delivering.
    pub(crate) fn deliver(&self) {
        let _one = lock(&self.delivering);
        loop {
            let Some(event) = lock(&self.events).pop_front() else {
                return;
            };
            self.tell(event);
        }
    }

    /// The journal it delivers to.
    pub(crate) fn journal(&self) -> &Arc<dyn Journal> {
        &self.journal
    }

    /// Whether a change of `name` is queued or being delivered.
    pub(crate) fn touches(&self, name: &Name) -> bool {
        lock(&self.undelivered).contains_key(name)
    }

    /// Events not yet delivered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.events).len()
    }

    fn tell(&self, event: Event) {
        let names: Vec<Name> = event.names().into_iter().flatten().cloned().collect();
        let j = &self.journal;
        match event {
            Event::Changed(name, sealed, stat) => j.changed(&name, sealed.as_ref(), stat),
            Event::Removed(name, held) => j.removed_held(&name, &held),
            Event::Renamed(from, to, stat) => j.renamed(&from, &to, stat),
            Event::Placed(at, sealed, version, stat) => j.placed(&at, &sealed, &version, stat),
            Event::RenamedPlaced(from, at, version, stat) => {
                j.renamed_placed(&from, &at, &version, stat)
            }
            Event::FolderMade(name) => j.folder_made(&name),
            Event::FolderRemoved(name) => j.folder_removed(&name),
        }
        let mut counts = lock(&self.undelivered);
        for n in names {
            if let Some(c) = counts.get_mut(&n) {
                *c -= 1;
                if *c == 0 {
                    counts.remove(&n);
                }
            }
        }
    }
}

/// The niceness of the delivering thread. Its work waits until after
/// the caller's answer anyway; on a machine of two cores, at the same
/// priority it took the CPU from the FUSE threads and their callers in a
/// burst of renames and deletes (two Ed25519 signatures per rename). At 10
/// it runs when they leave the CPU, and it still gets about a tenth of a
/// busy one; a backlog is bounded by [`MAX_QUEUED`].
const NICENESS: i32 = 10;

/// The delivering thread: waits for events and delivers them, until the
/// queue is gone (every store holding it was dropped).
fn deliver_loop(queue: Weak<Queue>) {
    crate::lower_priority(NICENESS, "the journal thread");
    loop {
        let Some(q) = queue.upgrade() else {
            return;
        };
        let has_events = {
            let mut events = lock(&q.events);
            if events.is_empty() {
                q.waiting.store(true, Ordering::Relaxed);
                events = q
                    .queued
                    .wait_timeout_while(events, IDLE_CHECK, |e| e.is_empty())
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                q.waiting.store(false, Ordering::Relaxed);
            }
            !events.is_empty()
        };
        if has_events {
            q.deliver();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts removes by name order; holds every call while `closed`.
    #[derive(Debug, Default)]
    struct Slow {
        seen: Mutex<Vec<String>>,
        closed: Mutex<bool>,
        opened: Condvar,
        calls: AtomicUsize,
    }

    impl Journal for Slow {
        fn changed(&self, _: &Name, _: Option<&Sealed>, _: Option<LocalStat>) {}
        fn removed(&self, name: &Name) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut closed = lock(&self.closed);
            while *closed {
                closed = self.opened.wait(closed).unwrap();
            }
            lock(&self.seen).push(name.to_string());
        }
        fn renamed(&self, _: &Name, _: &Name, _: Option<LocalStat>) {}
    }

    fn name(i: usize) -> Name {
        Name::new(format!("f{i:05}")).unwrap()
    }

    /// Records the niceness of the thread that delivers to it.
    #[derive(Debug, Default)]
    struct Niceness(Mutex<Option<i32>>, Condvar);

    impl Journal for Niceness {
        fn changed(&self, _: &Name, _: Option<&Sealed>, _: Option<LocalStat>) {}
        fn removed(&self, _: &Name) {
            let tid = rustix::thread::gettid();
            let nice = rustix::process::getpriority_process(Some(tid)).unwrap();
            *lock(&self.0) = Some(nice);
            self.1.notify_all();
        }
        fn renamed(&self, _: &Name, _: &Name, _: Option<LocalStat>) {}
    }

    #[test]
    fn the_delivering_thread_yields_the_cpu_to_the_callers() {
        let seen = Arc::new(Niceness::default());
        let q = Queue::start(seen.clone());
        q.push(Event::Removed(name(0), Vec::new()));
        let got = lock(&seen.0);
        let (got, _) = seen
            .1
            .wait_timeout_while(got, Duration::from_secs(30), |n| n.is_none())
            .unwrap();
        let here = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(
            *got,
            Some(NICENESS.max(here)),
            "the journal thread's niceness"
        );
    }

    #[test]
    fn a_full_queue_is_delivered_by_the_change_that_finds_it_full() {
        let slow = Arc::new(Slow::default());
        *lock(&slow.closed) = true;
        let q = Queue::start(slow.clone());
        q.push(Event::Removed(name(0), Vec::new()));
        // The thread took the first event and is held inside the journal.
        while slow.calls.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        for i in 1..=MAX_QUEUED {
            q.push(Event::Removed(name(i), Vec::new()));
        }
        assert_eq!(q.len(), MAX_QUEUED);
        // One more is over the bound: this push delivers the queue itself,
        // so it returns only once the journal has caught up.
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || {
                q.push(Event::Removed(name(MAX_QUEUED + 1), Vec::new()));
                q.len()
            })
        };
        // Wait until it has pushed (it is then held at the delivering lock).
        while q.len() <= MAX_QUEUED {
            std::thread::yield_now();
        }
        assert_eq!(q.len(), MAX_QUEUED + 1);
        *lock(&slow.closed) = false;
        slow.opened.notify_all();
        assert_eq!(pusher.join().unwrap(), 0);
        let seen = lock(&slow.seen).clone();
        let want: Vec<String> = (0..=MAX_QUEUED + 1).map(|i| name(i).to_string()).collect();
        assert_eq!(seen, want, "delivered out of order or not at all");
    }

    #[test]
    fn the_thread_ends_when_the_queue_is_dropped() {
        let slow = Arc::new(Slow::default());
        let q = Queue::start(slow.clone());
        q.push(Event::Removed(name(1), Vec::new()));
        q.deliver();
        assert_eq!(lock(&slow.seen).len(), 1);
        drop(q);
        // The thread holds the journal through the queue only: once it has
        // noticed the queue is gone, `slow` is ours alone.
        let deadline = std::time::Instant::now() + IDLE_CHECK * 20;
        while Arc::strong_count(&slow) > 1 {
            assert!(std::time::Instant::now() < deadline, "the thread lives on");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
