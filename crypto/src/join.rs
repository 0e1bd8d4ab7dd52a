//! The join: an online PAKE between an envoy that asks to join and an
//! unlocked member that answers, bound to their TLS session, and the keys
//! that protect what the two then send each other (see
//! `docs/formats-crypto.md`, "8. The join").
//!
//! ```text
//! asker                                        answerer
//! (pending, hello) = start(pw, user, exporter, Asker)
//!                  ── JoinHello { msg } ──▶
//!                             (pending, hello) = start(pw, user, exporter, Answerer)
//!                             keys = pending.finish(asker's msg)
//!                  ◀── JoinHello { msg } + JoinConfirm { mac, sealed } ──
//! keys = pending.finish(answerer's msg)
//! keys.check(Asker, mac)?  keys.open(Asker, sealed)?
//!                  ── JoinConfirm { mac, sealed } ──▶
//!                             keys.check(Answerer, mac)?  keys.open(Answerer, sealed)?
//! ```
//!
//! SPAKE2 (Ed25519 group) in its asymmetric form: the asker is side A, the
//! answerer side B, and both identities bind the user name and the TLS
//! exporter value, so an exchange relayed into another TLS session yields
//! different keys. A wrong passphrase costs the guesser one online run;
//! nothing on the wire lets anyone test a guess offline.
//!
//! Every method that takes a [`Side`] takes **the caller's own side**, the
//! one it gave [`start`]: [`JoinKeys::confirm`] and [`JoinKeys::seal`] make
//! what this side sends, [`JoinKeys::check`] and [`JoinKeys::open`] accept
//! only what the *other* side made (a reflected value fails).
//!
//! This module owns the join's cryptography and message formats; it must
//! not do I/O, read a clock, or decide what a join grants (the caller
//! does, after [`JoinKeys::check`] passed).

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use curve25519_dalek::edwards::CompressedEdwardsY;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::{rngs::OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::sign::{Decoder, Encoder};
use crate::{Error, Result};

/// Bytes of a SPAKE2 message: a side byte and a compressed Edwards point.
pub const MSG_LEN: usize = 33;
/// Bytes of a key-confirmation MAC.
pub const MAC_LEN: usize = 32;
/// Largest plaintext [`JoinKeys::seal`] seals and [`JoinKeys::open`] returns.
pub const MAX_PLAINTEXT: usize = 64 * 1024;
/// Bytes a sealed join message adds to its plaintext: nonce and tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Largest sealed join message.
pub const MAX_SEALED: usize = MAX_PLAINTEXT + SEAL_OVERHEAD;

/// Version byte of [`JoinHello`] and [`JoinConfirm`].
const WIRE_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// SPAKE2's side bytes (`'A'`, `'B'`).
const SIDE_A: u8 = b'A';
const SIDE_B: u8 = b'B';

/// Domain of the password hash.
const PASSWORD_LABEL: &[u8] = b"lockbox-join-password-v1\0";
/// Domain of the SPAKE2 identities; the side's name follows.
const IDENTITY_LABEL: &[u8] = b"lockbox-join-v1\0";
/// Domain of the transcript hash.
const TRANSCRIPT_LABEL: &[u8] = b"lockbox-join-v1 transcript\0";

/// The passphrase as the join uses it: a domain-separated SHA-256 of the
/// user name and the passphrase. Cheap on purpose: the PAKE, not the hash,
/// keeps guesses online. As sensitive as the passphrase (one SHA-256 from
/// it): wiped on drop, never logged.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct JoinPassword([u8; 32]);

impl JoinPassword {
    /// `SHA-256("lockbox-join-password-v1\0" || u32 len(user) || user ||
    /// passphrase)`.
    pub fn derive(passphrase: &SecretString, user: &str) -> Self {
        let mut h = Sha256::new();
        h.update(PASSWORD_LABEL);
        h.update(len_prefix(user.as_bytes()));
        h.update(user.as_bytes());
        h.update(passphrase.expose_secret().as_bytes());
        Self(h.finalize().into())
    }
}

impl fmt::Debug for JoinPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinPassword(..)")
    }
}

/// The two roles of a join: the envoy that asks to join, and the member
/// that answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The envoy that asks (SPAKE2 side A).
    Asker,
    /// The member that answers (SPAKE2 side B).
    Answerer,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Asker => Side::Answerer,
            Side::Answerer => Side::Asker,
        }
    }

    /// The SPAKE2 side byte of this side's message.
    fn spake_byte(self) -> u8 {
        match self {
            Side::Asker => SIDE_A,
            Side::Answerer => SIDE_B,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Asker => 0,
            Side::Answerer => 1,
        }
    }

    fn name(self) -> &'static [u8] {
        match self {
            Side::Asker => b"asker",
            Side::Answerer => b"answerer",
        }
    }
}

/// A join started on one side, waiting for the other side's message.
/// Holds the SPAKE2 secret scalar; use it once ([`Pending::finish`]).
pub struct Pending {
    spake: Spake2<Ed25519Group>,
    side: Side,
    own_msg: [u8; MSG_LEN],
    /// `u32 len(user) || user || exporter`, for the transcript.
    binding: Vec<u8>,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// `u32` big-endian length of `b`. Names are capped far below 4 GiB; a
/// longer input saturates, which still binds it (the bytes follow).
fn len_prefix(b: &[u8]) -> [u8; 4] {
    u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes()
}

/// The SPAKE2 identity of `side`: `"lockbox-join-v1\0" || side name || 0 ||
/// binding`.
fn identity(side: Side, binding: &[u8]) -> Identity {
    let mut id = Vec::with_capacity(IDENTITY_LABEL.len() + 9 + binding.len());
    id.extend_from_slice(IDENTITY_LABEL);
    id.extend_from_slice(side.name());
    id.push(0);
    id.extend_from_slice(binding);
    Identity::new(&id)
}

/// Starts a join on `side` for `user`, bound to the TLS session whose
/// exporter value (RFC 5705 / RFC 8446 §7.5, 32 bytes, the same on both
/// ends) is `exporter`. Returns the pending state and the message to send
/// ([`MSG_LEN`] bytes; wrap it in a [`JoinHello`]). The message is random
/// each time: it is not a function of the passphrase.
pub fn start(pw: &JoinPassword, user: &str, exporter: &[u8; 32], side: Side) -> (Pending, Vec<u8>) {
    let mut binding = Vec::with_capacity(4 + user.len() + 32);
    binding.extend_from_slice(&len_prefix(user.as_bytes()));
    binding.extend_from_slice(user.as_bytes());
    binding.extend_from_slice(exporter);
    let password = Password::new(pw.0.as_slice());
    let id_a = identity(Side::Asker, &binding);
    let id_b = identity(Side::Answerer, &binding);
    let (spake, msg) = match side {
        Side::Asker => Spake2::<Ed25519Group>::start_a(&password, &id_a, &id_b),
        Side::Answerer => Spake2::<Ed25519Group>::start_b(&password, &id_a, &id_b),
    };
    let mut own_msg = [0u8; MSG_LEN];
    own_msg.copy_from_slice(&msg);
    (
        Pending {
            spake,
            side,
            own_msg,
            binding,
        },
        msg,
    )
}

impl Pending {
    /// The side this join was started on.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Finishes the exchange with the other side's message. Errors, all
    /// [`Error::Malformed`] and never a panic, whatever the bytes: a length
    /// other than [`MSG_LEN`], the wrong side byte (our own message sent
    /// back), a point that is not a canonical encoding of a curve point, a
    /// point of small order or outside the prime-order subgroup, our own
    /// point. A wrong passphrase is *not* detected here (SPAKE2 cannot):
    /// the keys just differ, and [`JoinKeys::check`] says so.
    pub fn finish(self, peer_msg: &[u8]) -> Result<JoinKeys> {
        if peer_msg.len() != MSG_LEN {
            return Err(Error::Malformed(format!(
                "join message is {} bytes, expected {MSG_LEN}",
                peer_msg.len()
            )));
        }
        if peer_msg[0] != self.side.peer().spake_byte() {
            return Err(Error::Malformed(
                "join message is not from the other side (our own message sent back?)".into(),
            ));
        }
        check_point(&peer_msg[1..])?;
        if peer_msg[1..] == self.own_msg[1..] {
            return Err(Error::Malformed(
                "join message repeats our own point".into(),
            ));
        }
        let (asker_msg, answerer_msg) = match self.side {
            Side::Asker => (&self.own_msg[..], peer_msg),
            Side::Answerer => (peer_msg, &self.own_msg[..]),
        };
        let transcript = transcript(&self.binding, asker_msg, answerer_msg);
        let shared = Zeroizing::new(
            self.spake
                .finish(peer_msg)
                .map_err(|e| Error::Malformed(format!("join message rejected: {e}")))?,
        );
        Ok(JoinKeys::schedule(&shared, transcript, self.side))
    }
}

/// Rejects anything but the canonical encoding of a point in the
/// prime-order subgroup other than the identity (an honest message is
/// `x·G + pw·M`, always such a point).
fn check_point(bytes: &[u8]) -> Result<()> {
    let mut b = [0u8; 32];
    b.copy_from_slice(bytes);
    let point = CompressedEdwardsY(b)
        .decompress()
        .ok_or_else(|| Error::Malformed("join message is not a curve point".into()))?;
    if point.compress().to_bytes() != b {
        return Err(Error::Malformed(
            "join message's point is not canonically encoded".into(),
        ));
    }
    if point.is_small_order() || !point.is_torsion_free() {
        return Err(Error::Malformed(
            "join message's point is outside the prime-order group".into(),
        ));
    }
    Ok(())
}

/// `SHA-256("lockbox-join-v1 transcript\0" || u32 len(user) || user ||
/// exporter || asker's message || answerer's message)`.
fn transcript(binding: &[u8], asker_msg: &[u8], answerer_msg: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TRANSCRIPT_LABEL);
    h.update(binding);
    h.update(asker_msg);
    h.update(answerer_msg);
    h.finalize().into()
}

/// The keys of a finished join: a confirmation key and a sealing key per
/// side, and the transcript they cover. Wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct JoinKeys {
    /// `[asker, answerer]`.
    confirm: [[u8; 32]; 2],
    /// `[asker → answerer, answerer → asker]`.
    seal: [[u8; 32]; 2],
    transcript: [u8; 32],
    #[zeroize(skip)]
    side: Side,
}

impl fmt::Debug for JoinKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinKeys")
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl JoinKeys {
    /// HKDF-SHA256 with the transcript as salt and the SPAKE2 key as input;
    /// one 32-byte key per label.
    fn schedule(shared: &[u8], transcript: [u8; 32], side: Side) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(&transcript), shared);
        let expand = |label: &[u8]| {
            let mut k = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's limit of 8160.
            if hk.expand(label, &mut k).is_err() {
                unreachable!("HKDF-SHA256 expands to 32 bytes");
            }
            k
        };
        Self {
            confirm: [
                expand(b"lockbox-join-v1 confirm asker"),
                expand(b"lockbox-join-v1 confirm answerer"),
            ],
            seal: [
                expand(b"lockbox-join-v1 seal asker"),
                expand(b"lockbox-join-v1 seal answerer"),
            ],
            transcript,
            side,
        }
    }

    /// The side these keys were made on.
    pub fn side(&self) -> Side {
        self.side
    }

    fn mac(&self, of: Side) -> HmacSha256 {
        let mut m = match <HmacSha256 as Mac>::new_from_slice(&self.confirm[of.index()]) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes a key of any length"),
        };
        m.update(&self.transcript);
        m
    }

    /// The refusal for a `side` that is not the one these keys were made
    /// on: checking or opening "as the other side" would accept our own
    /// values sent back.
    fn own_side(&self, side: Side) -> Result<()> {
        if side == self.side {
            Ok(())
        } else {
            Err(Error::Malformed(format!(
                "join keys of the {:?} side used as the {side:?}",
                self.side
            )))
        }
    }

    /// The key confirmation `side` (the caller's own) sends:
    /// `HMAC-SHA256(confirm key of side, transcript)`. Given the other side
    /// by mistake it makes a MAC the peer refuses (the peer checks for
    /// ours), so a mix-up fails closed.
    pub fn confirm(&self, side: Side) -> [u8; MAC_LEN] {
        self.mac(side).finalize().into_bytes().into()
    }

    /// Checks, in constant time, the confirmation the other side sent to
    /// `side` (the caller's own). [`Error::JoinRefused`] if it does not
    /// match: the passphrases differ, or the exchange was altered or
    /// relayed from another TLS session. Our own confirmation sent back
    /// fails too.
    pub fn check(&self, side: Side, mac: &[u8]) -> Result<()> {
        self.own_side(side)?;
        self.mac(side.peer())
            .verify_slice(mac)
            .map_err(|_| Error::JoinRefused)
    }

    /// Seals `plaintext` from `side` (the caller's own) to the other side:
    /// `nonce (24, random) || XChaCha20-Poly1305(seal key of side, nonce,
    /// plaintext, associated data = transcript)`. Plaintext over
    /// [`MAX_PLAINTEXT`] is refused, and so is a `side` other than these
    /// keys' own.
    pub fn seal(&self, side: Side, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.own_side(side)?;
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::Malformed(format!(
                "join plaintext of {} bytes exceeds the {MAX_PLAINTEXT}-byte cap",
                plaintext.len()
            )));
        }
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let aead = XChaCha20Poly1305::new((&self.seal[side.index()]).into());
        let tag = aead
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &self.transcript,
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| Error::Malformed("join plaintext cannot be sealed".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what the other side sealed to `side` (the caller's own). Input
    /// shorter than [`SEAL_OVERHEAD`] or longer than [`MAX_SEALED`], or
    /// that fails authentication (altered, sealed under other keys, or our
    /// own sealed message sent back), is [`Error::Malformed`].
    pub fn open(&self, side: Side, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.own_side(side)?;
        if sealed.len() < SEAL_OVERHEAD || sealed.len() > MAX_SEALED {
            return Err(Error::Malformed(format!(
                "sealed join message of {} bytes; expected {SEAL_OVERHEAD} to {MAX_SEALED}",
                sealed.len()
            )));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        // Sized up front: decryption is in place and never reallocates.
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        let aead = XChaCha20Poly1305::new((&self.seal[side.peer().index()]).into());
        aead.decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            &self.transcript,
            &mut plain[..],
            Tag::from_slice(tag),
        )
        .map_err(|_| Error::Malformed("sealed join message fails authentication".into()))?;
        Ok(plain)
    }
}

/// The first message of each side, as it travels in an HTTP body:
/// `0x01 || SPAKE2 message (33 bytes)`, exactly 34 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinHello {
    /// The SPAKE2 message from [`start`].
    pub msg: Vec<u8>,
}

impl JoinHello {
    /// Bytes of an encoded hello.
    pub const LEN: usize = 1 + MSG_LEN;

    /// The wire form. A `msg` of another length than [`MSG_LEN`] (not one
    /// from [`start`]) is encoded as is and refused by [`JoinHello::parse`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.msg.len());
        out.push(WIRE_VERSION);
        out.extend_from_slice(&self.msg);
        out
    }

    /// Parses [`JoinHello::encode`]'s output: exactly [`JoinHello::LEN`]
    /// bytes, version 1. The point itself is checked by [`Pending::finish`].
    pub fn parse(b: &[u8]) -> Result<Self> {
        check_version(b, "join hello")?;
        if b.len() != Self::LEN {
            return Err(Error::Malformed(format!(
                "join hello is {} bytes, expected {}",
                b.len(),
                Self::LEN
            )));
        }
        Ok(Self {
            msg: b[1..].to_vec(),
        })
    }
}

/// A side's key confirmation and what it sends under the join's keys (the
/// circle secret, an endorsement; may be empty), as it travels in an HTTP
/// body: `0x01 || mac (32) || u32 len || sealed (at most MAX_SEALED)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinConfirm {
    /// [`JoinKeys::confirm`] of the sending side.
    pub mac: [u8; MAC_LEN],
    /// [`JoinKeys::seal`] of the sending side, or empty.
    pub sealed: Vec<u8>,
}

impl JoinConfirm {
    /// Largest encoded confirmation.
    pub const MAX_LEN: usize = 1 + MAC_LEN + 4 + MAX_SEALED;

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(WIRE_VERSION);
        for b in self.mac {
            e.u8(b);
        }
        e.bytes(&self.sealed);
        e.finish()
    }

    /// Parses [`JoinConfirm::encode`]'s output. Input over
    /// [`JoinConfirm::MAX_LEN`] is refused before anything is read; a
    /// version other than 1, a sealed part over [`MAX_SEALED`] or
    /// trailing bytes are [`Error::Malformed`].
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() > Self::MAX_LEN {
            return Err(Error::Malformed(format!(
                "join confirmation of {} bytes exceeds the {}-byte cap",
                b.len(),
                Self::MAX_LEN
            )));
        }
        check_version(b, "join confirmation")?;
        let mut d = Decoder::new(&b[1..]);
        let mut mac = [0u8; MAC_LEN];
        for m in &mut mac {
            *m = d.u8()?;
        }
        let sealed = d.bytes(MAX_SEALED)?.to_vec();
        d.finish()?;
        Ok(Self { mac, sealed })
    }
}

/// The version byte every join message starts with.
fn check_version(b: &[u8], what: &str) -> Result<()> {
    match b.first() {
        None => Err(Error::Malformed(format!("{what} is empty"))),
        Some(&WIRE_VERSION) => Ok(()),
        Some(v) => Err(Error::Malformed(format!(
            "{what} version {v} is not supported; upgrade lockbox"
        ))),
    }
}

#[cfg(test)]
mod tests;
