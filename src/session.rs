//! The unlock session: the envoy's age identity held in RAM until the idle
//! timeout or `lock`. Time is passed in, so the rules are tested without
//! waiting. The idle timer counts the user's use only ([`Session::use_identity`],
//! [`Session::touch`]: reads and writes through the mount, `decrypt`,
//! `encrypt`); everything else looks without touching it
//! ([`Session::peek_identity`], [`Session::expire`], [`Session::idle_left`]),
//! so a status widget polling the agent cannot keep it unlocked. Dropping the identity zeroizes it (age's X25519 secret is
//! zeroize-on-drop); in-flight decryptions hold an `Arc` and release it when
//! they finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbox_crypto::seal::tags::TagKey;
use lockbox_crypto::AgeIdentity;

/// The session state.
pub struct Session {
    identity: Option<Arc<AgeIdentity>>,
    /// The identity's block-tag key, derived at unlock, dropped with it.
    tag_key: Option<Arc<TagKey>>,
    /// What the mesh joins other circles with (the join password and the
    /// circle secret), set after unlock, dropped with the identity.
    join: Option<Arc<lockbox_net::mesh::JoinCredentials>>,
    last_used: Instant,
    timeout: Duration,
    /// It locked (by `lock`, or by the idle timeout in whichever call
    /// noticed it: a read, `status`, the idle timer) and the file system
    /// has not yet dropped what it holds of the session (decrypted chunks,
    /// block tags, readers' keys, the kernel's cached pages).
    cleanup_due: bool,
}

impl Session {
    /// A locked session with the given idle timeout.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Session {
            identity: None,
            tag_key: None,
            join: None,
            last_used: now,
            timeout,
            cleanup_due: false,
        }
    }

    /// Hold `identity` from `now` on.
    pub fn unlock(&mut self, identity: AgeIdentity, now: Instant) {
        self.tag_key = Some(Arc::new(TagKey::of(&identity)));
        self.identity = Some(Arc::new(identity));
        self.last_used = now;
    }

    /// Hold the join credentials while unlocked (dropped at lock).
    pub fn set_join(&mut self, join: Arc<lockbox_net::mesh::JoinCredentials>) {
        if self.identity.is_some() {
            self.join = Some(join);
        }
    }

    /// The join credentials while unlocked, without touching the idle
    /// timer (joins are the mesh's work, not the user's).
    pub fn join(&self) -> Option<Arc<lockbox_net::mesh::JoinCredentials>> {
        self.identity.as_ref()?;
        self.join.clone()
    }

    /// Drop the identity.
    pub fn lock(&mut self) {
        self.cleanup_due |= self.identity.is_some();
        self.identity = None;
        self.tag_key = None;
        self.join = None;
    }

    /// Whether it locked since the last call: the caller then has the file
    /// system drop what it holds of the session. The idle timer asks at
    /// each deadline, so a timeout that a read noticed first is cleaned up
    /// too.
    pub fn take_cleanup(&mut self) -> bool {
        std::mem::take(&mut self.cleanup_due)
    }

    /// Lock if idle past the timeout; returns whether it locked now.
    pub fn expire(&mut self, now: Instant) -> bool {
        if self.identity.is_some() && now.saturating_duration_since(self.last_used) >= self.timeout
        {
            self.lock();
            return true;
        }
        false
    }

    /// The identity for a use that is not the user's (re-encryption),
    /// without touching the idle timer.
    pub fn peek_identity(&self) -> Option<Arc<AgeIdentity>> {
        self.identity.clone()
    }

    /// The key a seal tags its blocks with (see `docs/format.md`, "Block tags"),
    /// while unlocked; without touching the idle timer (a seal works
    /// locked too, it only goes without tags).
    pub fn tag_key(&self) -> Option<Arc<TagKey>> {
        self.tag_key.clone()
    }

    /// The identity for a decryption the user asked for (a read through the
    /// mount, `decrypt`), resetting the idle timer; `None` when locked (or
    /// idle past the timeout, which locks).
    pub fn use_identity(&mut self, now: Instant) -> Option<Arc<AgeIdentity>> {
        self.expire(now);
        let id = self.identity.clone()?;
        self.last_used = now;
        Some(id)
    }

    /// Reset the idle timer: the user used the session without needing the
    /// identity (a write through the mount, `encrypt`). Only the user's use
    /// counts: never `status`, `list`, the mesh, the sweep or the timer
    /// itself, which call [`Session::expire`] at most (see `docs/design.md`,
    /// "The session"). A timeout already passed locks instead.
    pub fn touch(&mut self, now: Instant) {
        if !self.expire(now) {
            self.last_used = now;
        }
    }

    /// Whether the identity is held.
    pub fn is_unlocked(&self) -> bool {
        self.identity.is_some()
    }

    /// Time until the idle timeout, when unlocked.
    pub fn idle_left(&self, now: Instant) -> Option<Duration> {
        self.identity.as_ref()?;
        Some(
            self.timeout
                .saturating_sub(now.saturating_duration_since(self.last_used)),
        )
    }

    /// When the session would time out, when unlocked.
    pub fn deadline(&self) -> Option<Instant> {
        self.identity
            .as_ref()
            .map(|_| self.last_used + self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_locks_and_use_resets_it() {
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let mut s = Session::new(10 * min, t0);
        assert!(s.use_identity(t0).is_none());
        s.unlock(lockbox_crypto::identity::generate(), t0);
        assert_eq!(s.idle_left(t0 + 4 * min), Some(6 * min));
        assert!(s.use_identity(t0 + 9 * min).is_some());
        // Used at 9 min: still unlocked at 18 min.
        assert!(!s.expire(t0 + 18 * min));
        s.touch(t0 + 18 * min);
        assert_eq!(s.deadline(), Some(t0 + 28 * min));
        assert!(s.expire(t0 + 28 * min));
        assert!(!s.is_unlocked());
        assert!(s.use_identity(t0 + 28 * min).is_none());
        assert_eq!(s.idle_left(t0), None);
    }

    /// However the lock comes (an explicit lock, the timer's expiry, or a
    /// use that finds the timeout passed), the cleanup is due exactly once.
    #[test]
    fn every_lock_leaves_one_cleanup_due() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut s = Session::new(sec, t0);
        assert!(!s.take_cleanup(), "never unlocked");
        s.unlock(lockbox_crypto::identity::generate(), t0);
        assert!(!s.take_cleanup(), "unlocked");
        // A read after the timeout locks, before the idle timer does.
        assert!(s.use_identity(t0 + 2 * sec).is_none());
        assert!(!s.expire(t0 + 2 * sec), "the timer finds it locked already");
        assert!(s.take_cleanup(), "yet the cleanup is due");
        assert!(!s.take_cleanup(), "once");
        s.unlock(lockbox_crypto::identity::generate(), t0);
        s.touch(t0 + 3 * sec);
        assert!(s.take_cleanup(), "status after the timeout");
        s.unlock(lockbox_crypto::identity::generate(), t0);
        s.lock();
        s.lock();
        assert!(s.take_cleanup(), "lock");
        assert!(!s.take_cleanup(), "a second lock of a locked session");
    }

    /// What `status`, `list`, the mesh and the timer do (look, expire, peek)
    /// never moves the deadline; only the user's use does.
    #[test]
    fn only_use_moves_the_deadline() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut s = Session::new(10 * sec, t0);
        s.unlock(lockbox_crypto::identity::generate(), t0);
        for i in 1..10 {
            let now = t0 + i * sec;
            assert!(!s.expire(now));
            assert!(s.peek_identity().is_some());
            assert!(s.tag_key().is_some());
            assert_eq!(s.idle_left(now), Some((10 - i) * sec));
            assert_eq!(s.deadline(), Some(t0 + 10 * sec));
        }
        assert!(s.expire(t0 + 10 * sec), "looking kept it unlocked");
        s.unlock(lockbox_crypto::identity::generate(), t0);
        s.touch(t0 + 5 * sec);
        assert_eq!(s.deadline(), Some(t0 + 15 * sec));
        assert!(s.use_identity(t0 + 14 * sec).is_some());
        assert_eq!(s.deadline(), Some(t0 + 24 * sec));
    }

    #[test]
    fn touch_after_timeout_does_not_revive() {
        let t0 = Instant::now();
        let mut s = Session::new(Duration::from_secs(1), t0);
        s.unlock(lockbox_crypto::identity::generate(), t0);
        s.touch(t0 + Duration::from_secs(5));
        assert!(!s.is_unlocked());
    }

    #[test]
    fn lock_drops_identity_but_inflight_users_keep_theirs() {
        let t0 = Instant::now();
        let mut s = Session::new(Duration::from_secs(60), t0);
        s.unlock(lockbox_crypto::identity::generate(), t0);
        let held = s.use_identity(t0).expect("unlocked");
        s.lock();
        assert!(!s.is_unlocked());
        assert_eq!(Arc::strong_count(&held), 1);
    }
}
