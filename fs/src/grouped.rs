//! Grouped durability: many changes, one sync. A change *marks* the group;
//! a background thread runs the sync action at most `window` after the
//! first mark, so every change in that window shares one `fsync`. Used for
//! the store folder (renames, creates, deletes) and for the metadata
//! database's commits; docs/design.md states the bound this puts on what a
//! power loss may undo.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::lock;

/// One grouped sync: the mark that changes of a window set, and the
/// background thread that syncs them all at the end of the window.
#[derive(Debug)]
pub struct GroupedSync {
    dirty: Mutex<bool>,
    wake: Condvar,
}

impl GroupedSync {
    /// Start the background thread `name` that runs `sync` at most `window`
    /// after a mark. Fails only when the thread cannot be spawned (callers
    /// then sync per change).
    pub fn start(
        name: &str,
        window: Duration,
        sync: impl Fn() + Send + 'static,
    ) -> std::io::Result<Arc<GroupedSync>> {
        let group = Arc::new(GroupedSync {
            dirty: Mutex::new(false),
            wake: Condvar::new(),
        });
        let g = group.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                {
                    let mut dirty = lock(&g.dirty);
                    while !*dirty {
                        dirty = g.wake.wait(dirty).unwrap_or_else(|e| e.into_inner());
                    }
                }
                // Let more changes join this sync.
                std::thread::sleep(window);
                *lock(&g.dirty) = false;
                sync();
            })?;
        Ok(group)
    }

    /// A change happened: sync it within the window.
    pub fn mark(&self) {
        let was = std::mem::replace(&mut *lock(&self.dirty), true);
        // The thread waits only while nothing is marked: only the first mark
        // of a window needs to wake it (a wake is a futex call per change).
        if !was {
            self.wake.notify_one();
        }
    }

    /// The caller is about to sync everything itself: nothing is pending.
    pub fn clear(&self) {
        *lock(&self.dirty) = false;
    }
}
