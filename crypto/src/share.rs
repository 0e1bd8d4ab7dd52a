//! X25519 shares computed ahead of a seal.
//!
//! Wrapping a file key to an age X25519 recipient takes a fresh ephemeral
//! key and a Diffie-Hellman agreement with the recipient's key: two scalar
//! multiplications, most of the cost of sealing a small file. Neither
//! depends on the file, so a [`SharePool`] computes a few per recipient
//! ahead of time on a thread of its own, and a seal takes one per
//! recipient ([`SharePool::take`]); when none is ready it wraps as age does,
//! inline. The stanza is age's own X25519 stanza, byte for byte in format:
//!
//! ```text
//! -> X25519 base64(ephemeral public key)
//! ChaCha20-Poly1305(key = HKDF-SHA256(ikm = shared secret,
//!                                      salt = ephemeral pk || recipient pk,
//!                                      info = "age-encryption.org/v1/X25519"),
//!                   nonce = 0, file key)
//! ```
//!
//! Each share is used for one file only: [`SharePool::take`] hands it out by
//! value, and the shared secret is zeroized when it is dropped. The
//! ephemeral secret key itself is dropped (zeroized) right after the
//! agreement; only its public half and the shared secret are kept.
//!
//! The agreement is computed on the curve's Edwards form ([`agree`]): the
//! recipient's key, a Montgomery u-coordinate, is lifted once to an
//! Edwards point, and the shared secret is the u-coordinate of the
//! clamped-scalar multiple of that point — the same 32 bytes X25519's
//! ladder gives (clamping makes the scalar a multiple of 8, so a
//! small-order part vanishes in both, and the point and its negation have
//! one u-coordinate). The recipient's key is fixed and public, so the pool
//! also precomputes a table of its multiples once ([`Lifted`], about 30
//! KiB, the kind `curve25519-dalek` keeps for the base point): a
//! multiplication then costs what the ephemeral key's does, about a third
//! of the ladder's here, still in constant time in the scalar. A key that
//! is not on the curve (no Edwards point) goes through the ladder.
//!
//! The filler is woken only when a recipient falls to [`LOW`] ready
//! shares, and then fills it back to [`DEPTH`]: one wake-up per
//! `DEPTH - LOW` seals rather than one per seal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, Weak};

use age_core::format::{FileKey, Stanza};
use age_core::primitives::{aead_encrypt, hkdf};
use age_core::secrecy::ExposeSecret;
use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use curve25519_dalek::edwards::EdwardsBasepointTable;
use curve25519_dalek::traits::BasepointTable;
use curve25519_dalek::{EdwardsPoint, MontgomeryPoint};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::AgeRecipient;

const TAG: &str = "X25519";
const KEY_LABEL: &[u8] = b"age-encryption.org/v1/X25519";

/// Shares kept ready per recipient.
pub const DEPTH: usize = 16;
/// Ready shares at which a take wakes the filler.
pub const LOW: usize = DEPTH / 2;
/// Recipients the pool keeps shares for; past it, the least recently
/// asked-for are forgotten.
const MAX_KEYS: usize = 64;

/// The 32-byte X25519 public key of an age recipient.
fn key_of(r: &AgeRecipient) -> Option<[u8; 32]> {
    let (hrp, bytes) = bech32::decode(&r.to_string()).ok()?;
    (hrp.as_str() == "age").then_some(())?;
    bytes.try_into().ok()
}

/// One ephemeral share with one recipient, ready to wrap one file key.
pub struct Share {
    recipient: [u8; 32],
    epk: [u8; 32],
    shared: Zeroizing<[u8; 32]>,
}

/// The recipient key `u` lifted to the Edwards form, when it is on the
/// curve (see [`agree`]).
fn lift(u: &[u8; 32]) -> Option<Lifted> {
    let p = MontgomeryPoint(*u).to_edwards(0)?;
    Some(Arc::new(EdwardsBasepointTable::create(&p)))
}

/// A recipient key's Edwards form, as a table of its multiples: built
/// once per recipient (about a millisecond), shared by every share made
/// for it.
type Lifted = Arc<EdwardsBasepointTable>;

/// X25519 of the scalar `k` (clamped) and the recipient key `u`, whose
/// Edwards form is `lifted` ([`lift`]): through the Edwards form when
/// there is one, else through the ladder. Both give X25519's bytes.
fn agree(k: &[u8; 32], u: &[u8; 32], lifted: Option<&Lifted>) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(match lifted {
        // Multiplication by a clamped scalar (< 2^255) is exact with the
        // table, as with the base point's (`mul_base_clamped`).
        Some(table) => table.mul_base_clamped(*k).to_montgomery().to_bytes(),
        None => MontgomeryPoint(*u).mul_clamped(*k).to_bytes(),
    })
}

impl Share {
    /// A fresh share with the recipient whose key is `recipient` (lifted
    /// to `lifted`); `None` if the agreement was not contributory (a
    /// low-order key).
    fn compute(recipient: [u8; 32], lifted: Option<&Lifted>) -> Option<Share> {
        let mut k = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut k[..]);
        let epk = EdwardsPoint::mul_base_clamped(*k).to_montgomery();
        let shared = agree(&k, &recipient, lifted);
        // All zeros: the recipient key has small order (as x25519-dalek's
        // `was_contributory` says).
        if *shared == [0; 32] {
            return None;
        }
        Some(Share {
            recipient,
            epk: epk.to_bytes(),
            shared,
        })
    }
}

impl age::Recipient for Share {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        let mut salt = [0; 64];
        salt[..32].copy_from_slice(&self.epk);
        salt[32..].copy_from_slice(&self.recipient);
        let key = Zeroizing::new(hkdf(&salt, KEY_LABEL, self.shared.as_slice()));
        let body = aead_encrypt(&key, file_key.expose_secret());
        Ok((
            vec![Stanza {
                tag: TAG.to_owned(),
                args: vec![STANDARD_NO_PAD.encode(self.epk)],
                body,
            }],
            HashSet::new(),
        ))
    }
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share").finish_non_exhaustive()
    }
}

/// Shares computed ahead, per recipient, refilled by a background thread.
pub struct SharePool {
    state: Mutex<State>,
    /// Wakes the filler when a recipient runs low.
    low: Condvar,
}

#[derive(Default)]
struct State {
    ready: HashMap<[u8; 32], Vec<Share>>,
    /// Each asked recipient's key in the Edwards form (see [`agree`]),
    /// lifted once.
    lifted: HashMap<[u8; 32], Option<Lifted>>,
    /// Each asked recipient's key bytes (its bech32 form decoded once).
    keys: HashMap<AgeRecipient, [u8; 32]>,
    /// When each recipient was last asked for (a counter), to forget old ones.
    asked: HashMap<[u8; 32], u64>,
    clock: u64,
}

impl State {
    /// A recipient with fewer than [`DEPTH`] shares, if any.
    fn short(&self) -> Option<[u8; 32]> {
        self.asked
            .keys()
            .find(|k| self.ready.get(*k).is_none_or(|v| v.len() < DEPTH))
            .copied()
    }
}

impl SharePool {
    /// A pool with its filler thread (which ends when the pool is dropped).
    pub fn start() -> std::io::Result<Arc<SharePool>> {
        let pool = Arc::new(SharePool::empty());
        let weak = Arc::downgrade(&pool);
        std::thread::Builder::new()
            .name("x25519-shares".into())
            .spawn(move || fill(weak))?;
        Ok(pool)
    }

    /// A pool without a filler ([`SharePool::refill_one`] fills it).
    pub fn empty() -> SharePool {
        SharePool {
            state: Mutex::new(State::default()),
            low: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready share with `r`, if one is; either way `r` is kept filled
    /// from now on.
    pub fn take(&self, r: &AgeRecipient) -> Option<Share> {
        let mut st = self.state();
        let key = match st.keys.get(r) {
            Some(k) => *k,
            None => {
                let k = key_of(r)?;
                st.keys.insert(r.clone(), k);
                k
            }
        };
        st.clock += 1;
        let now = st.clock;
        st.asked.insert(key, now);
        if st.asked.len() > MAX_KEYS {
            if let Some(oldest) = st.asked.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                st.asked.remove(&oldest);
                st.ready.remove(&oldest);
                st.lifted.remove(&oldest);
                st.keys.retain(|_, k| *k != oldest);
            }
        }
        let ready = st.ready.get_mut(&key);
        let share = ready.and_then(|v| v.pop().map(|s| (s, v.len())));
        drop(st);
        match share {
            Some((share, left)) => {
                if left <= LOW {
                    self.low.notify_one();
                }
                Some(share)
            }
            None => {
                self.low.notify_one();
                None
            }
        }
    }

    /// Compute one share for a recipient that is short of them; false when
    /// none is.
    pub fn refill_one(&self) -> bool {
        let (key, lifted) = {
            let st = self.state();
            let Some(key) = st.short() else {
                return false;
            };
            (key, st.lifted.get(&key).cloned())
        };
        let lifted = match lifted {
            Some(l) => l,
            // Built without the lock (about a millisecond).
            None => {
                let l = lift(&key);
                let mut st = self.state();
                if st.asked.contains_key(&key) {
                    st.lifted.insert(key, l.clone());
                }
                l
            }
        };
        // Computed without the lock: takes go on meanwhile.
        let Some(share) = Share::compute(key, lifted.as_ref()) else {
            // A low-order key can never get a share: stop asking.
            self.state().asked.remove(&key);
            return true;
        };
        let mut st = self.state();
        if st.asked.contains_key(&key) {
            let v = st.ready.entry(key).or_default();
            if v.len() < DEPTH {
                v.push(share);
            }
        }
        true
    }

    /// Shares ready for `r`.
    pub fn ready(&self, r: &AgeRecipient) -> usize {
        key_of(r).map_or(0, |k| self.state().ready.get(&k).map_or(0, Vec::len))
    }
}

impl std::fmt::Debug for SharePool {
    /// Counts only: the shares are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        let ready: usize = st.ready.values().map(Vec::len).sum();
        f.debug_struct("SharePool")
            .field("recipients", &st.asked.len())
            .field("ready", &ready)
            .finish()
    }
}

/// The filler: compute shares while some recipient is short, else sleep
/// until a take.
fn fill(pool: Weak<SharePool>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        if p.refill_one() {
            continue;
        }
        let st = p.state();
        if st.short().is_none() {
            // Woken by a take; the timeout lets a dropped pool end the thread.
            let _ = p.low.wait_timeout(st, std::time::Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn seal_with(r: &dyn age::Recipient, msg: &[u8]) -> Vec<u8> {
        let enc = age::Encryptor::with_recipients(std::iter::once(r)).unwrap();
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(msg).unwrap();
        w.finish().unwrap();
        out
    }

    fn open_with(id: &age::x25519::Identity, file: &[u8]) -> Vec<u8> {
        let d = age::Decryptor::new(file).unwrap();
        let mut r = d
            .decrypt(std::iter::once(id as &dyn age::Identity))
            .unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    proptest::proptest! {
        /// The Edwards-form agreement gives X25519's bytes, for keys on the
        /// curve (every real recipient) and for any 32 bytes (a key off
        /// the curve goes through the ladder).
        #[test]
        fn the_agreement_is_x25519(k in proptest::array::uniform32(0u8..), seed in proptest::array::uniform32(0u8..), raw in proptest::array::uniform32(0u8..)) {
            let on_curve = x25519_dalek::x25519(seed, x25519_dalek::X25519_BASEPOINT_BYTES);
            for u in [on_curve, raw] {
                let lifted = lift(&u);
                proptest::prop_assert_eq!(*agree(&k, &u, lifted.as_ref()), x25519_dalek::x25519(k, u));
            }
            proptest::prop_assert!(lift(&on_curve).is_some());
            // The ephemeral public key is X25519's too.
            let epk = EdwardsPoint::mul_base_clamped(k).to_montgomery().to_bytes();
            proptest::prop_assert_eq!(epk, x25519_dalek::x25519(k, x25519_dalek::X25519_BASEPOINT_BYTES));
        }
    }

    #[test]
    fn a_low_order_key_gets_no_share() {
        // u = 0 and u = 1 have small order: X25519 with them is all zeros.
        for u in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            assert!(Share::compute(u, lift(&u).as_ref()).is_none(), "{u:?}");
        }
    }

    #[test]
    fn a_precomputed_share_wraps_like_age_and_is_used_once() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let pool = SharePool::empty();
        assert!(pool.take(&id.to_public()).is_none(), "nothing computed yet");
        while pool.refill_one() {}
        assert_eq!(pool.ready(&id.to_public()), DEPTH);
        let share = pool.take(&id.to_public()).unwrap();
        assert_eq!(pool.ready(&id.to_public()), DEPTH - 1);
        let file = seal_with(&share, b"precomputed");
        assert_eq!(open_with(&id, &file), b"precomputed");
        // Only the recipient's identity opens it.
        let d = age::Decryptor::new(&file[..]).unwrap();
        assert!(d
            .decrypt(std::iter::once(&other as &dyn age::Identity))
            .is_err());
        // Every share differs: no ephemeral key is used twice.
        let mut epks = HashSet::new();
        while let Some(s) = pool.take(&id.to_public()) {
            assert!(epks.insert(s.epk));
        }
        assert!(epks.insert(share.epk));
        assert_eq!(pool.ready(&id.to_public()), 0);
    }

    #[test]
    fn the_filler_keeps_every_asked_recipient_ready() {
        let a = age::x25519::Identity::generate();
        let b = age::x25519::Identity::generate();
        let pool = SharePool::start().unwrap();
        let _ = pool.take(&a.to_public());
        let _ = pool.take(&b.to_public());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while pool.ready(&a.to_public()) < DEPTH || pool.ready(&b.to_public()) < DEPTH {
            assert!(std::time::Instant::now() < deadline, "the filler stalled");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let s = pool.take(&b.to_public()).unwrap();
        assert_eq!(open_with(&b, &seal_with(&s, b"b")), b"b");
        // Taken down to LOW, a recipient is filled back to DEPTH.
        for _ in 0..DEPTH - LOW {
            assert!(pool.take(&a.to_public()).is_some());
        }
        while pool.ready(&a.to_public()) < DEPTH {
            assert!(
                std::time::Instant::now() < deadline,
                "the filler was not woken"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
