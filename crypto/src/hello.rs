//! The hello key: a symmetric key that every member of a circle holds,
//! derived from the circle secret ([`HelloKey::of`]) and kept on disk
//! readable while the envoy is locked (`circle.hello`), so that a locked
//! envoy can still meet its peers. An envoy that asks a hello **seals**
//! what proves its membership (its endorsement and session proof) under
//! this key, bound to the TLS session ([`HelloKey::seal`]): a server that
//! is not a member — a fleet machine without the passphrase — learns no
//! endorsement and no circle key from being asked, only that it cannot
//! open what it got (see `docs/formats-crypto.md`, "9. The hello key").
//!
//! A circle made by protocol 1 has no hello key: its secret was derived
//! from the passphrase, so anything sealed under a key derived from it
//! would let whoever captured it test passphrase guesses offline.
//!
//! This module owns the key's derivation, its file format and the sealed
//! ask's bytes; it must not do I/O or decide what a failed open means (the
//! mesh does: "another circle").

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::{rngs::OsRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::circle::CircleSecret;
use crate::sign::PublicKey;
use crate::{Error, Result};

/// Version byte of the key file and of a sealed ask.
const VERSION: u8 = 1;
/// Bytes of [`HelloKey::to_bytes`]: version, key, the circle's public key.
pub const KEY_FILE_LEN: usize = 1 + 32 + 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed ask adds to its plaintext: version, nonce, tag.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Largest plaintext sealed or opened (an endorsement and a proof are a
/// few hundred bytes).
pub const MAX_PLAINTEXT: usize = 8 * 1024;
/// Largest sealed ask accepted.
pub const MAX_SEALED: usize = MAX_PLAINTEXT + SEAL_OVERHEAD;

/// HKDF info of the hello key, from the circle's seed.
const KEY_INFO: &[u8] = b"lockbox-hello-key-v2";
/// HKDF info of one session's key, from the hello key and the exporter.
const SESSION_INFO: &[u8] = b"lockbox-hello-ask-v2 session";
/// Associated data of a sealed ask.
const AAD: &[u8] = b"lockbox-hello-ask-v2";

/// The circle's hello key (secret; wiped on drop, `Debug` shows only the
/// circle it belongs to).
pub struct HelloKey {
    key: Zeroizing<[u8; 32]>,
    circle: PublicKey,
}

impl HelloKey {
    /// The hello key of `secret`'s circle, or `None` for a circle made by
    /// protocol 1 (its seed comes from the passphrase; see the module
    /// comment).
    pub fn of(secret: &CircleSecret) -> Option<HelloKey> {
        if secret.is_protocol_1() {
            return None;
        }
        let hk = Hkdf::<Sha256>::new(Some(&secret.public().0), &secret.seed()[..]);
        let mut key = Zeroizing::new([0u8; 32]);
        hk.expand(KEY_INFO, &mut key[..]).ok()?;
        Some(HelloKey {
            key,
            circle: secret.public(),
        })
    }

    /// The circle this key belongs to.
    pub fn circle(&self) -> PublicKey {
        self.circle
    }

    /// The key file's bytes ([`KEY_FILE_LEN`]): `0x01 || key || circle
    /// public key`. Secret: written 0600.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN));
        out.push(VERSION);
        out.extend_from_slice(&self.key[..]);
        out.extend_from_slice(&self.circle.0);
        out
    }

    /// Parses [`HelloKey::to_bytes`]: anything but [`KEY_FILE_LEN`] bytes
    /// of version 1 is [`Error::Malformed`].
    pub fn from_bytes(b: &[u8]) -> Result<HelloKey> {
        if b.len() != KEY_FILE_LEN {
            return Err(Error::Malformed(format!(
                "hello key is {} bytes, expected {KEY_FILE_LEN}",
                b.len()
            )));
        }
        if b[0] != VERSION {
            return Err(Error::Malformed(format!(
                "hello key version {} is not supported; upgrade lockbox",
                b[0]
            )));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&b[1..33]);
        let mut circle = [0u8; 32];
        circle.copy_from_slice(&b[33..]);
        Ok(HelloKey {
            key,
            circle: PublicKey(circle),
        })
    }

    /// The AEAD of the TLS session whose exporter value is `exporter`.
    fn session(&self, exporter: &[u8; 32]) -> XChaCha20Poly1305 {
        let hk = Hkdf::<Sha256>::new(Some(exporter), &self.key[..]);
        let mut k = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(SESSION_INFO, &mut k[..]);
        XChaCha20Poly1305::new((&*k).into())
    }

    /// Seals `plaintext` for the session with `exporter`:
    /// `0x01 || nonce (24) || ciphertext || tag (16)`, with a random nonce.
    /// Only a holder of this key, on this same TLS session, opens it.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] over [`MAX_PLAINTEXT`] bytes.
    pub fn seal(&self, exporter: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::Malformed(format!(
                "a hello of {} bytes exceeds the {MAX_PLAINTEXT}-byte cap",
                plaintext.len()
            )));
        }
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut buf = plaintext.to_vec();
        let tag = self
            .session(exporter)
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), AAD, &mut buf)
            .map_err(|_| Error::Malformed("cannot seal the hello".into()))?;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what [`HelloKey::seal`] made for the session with `exporter`.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] for a wrong length or version (checked before
    /// anything is decrypted); [`Error::Corrupt`] when it does not open —
    /// another circle's key, another session, or damage.
    pub fn open(&self, exporter: &[u8; 32], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < SEAL_OVERHEAD || sealed.len() > MAX_SEALED {
            return Err(Error::Malformed(format!(
                "a sealed hello of {} bytes (expected {SEAL_OVERHEAD}..={MAX_SEALED})",
                sealed.len()
            )));
        }
        if sealed[0] != VERSION {
            return Err(Error::Malformed(format!(
                "sealed hello version {} is not supported; upgrade lockbox",
                sealed[0]
            )));
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        let (body, tag) = sealed[1 + NONCE_LEN..].split_at(sealed.len() - SEAL_OVERHEAD);
        let mut buf = Zeroizing::new(body.to_vec());
        self.session(exporter)
            .decrypt_in_place_detached(nonce, AAD, &mut buf, Tag::from_slice(tag))
            .map_err(|_| {
                Error::Corrupt("the hello does not open with this circle's hello key".into())
            })?;
        Ok(buf)
    }
}

impl fmt::Debug for HelloKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HelloKey")
            .field("circle", &self.circle)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> HelloKey {
        HelloKey::of(&CircleSecret::generate(1_700_000_000)).unwrap()
    }

    #[test]
    fn a_sealed_hello_opens_with_the_circles_key_on_its_session_only() {
        let secret = CircleSecret::generate(1_700_000_000);
        let k = HelloKey::of(&secret).unwrap();
        let again = HelloKey::of(&secret).unwrap();
        assert_eq!(k.to_bytes(), again.to_bytes(), "derivation is stable");
        assert_eq!(k.circle(), secret.public());
        let sealed = k.seal(&[7; 32], b"endorsement and proof").unwrap();
        assert_eq!(
            &again.open(&[7; 32], &sealed).unwrap()[..],
            b"endorsement and proof"
        );
        // Nothing of the plaintext is in the sealed bytes.
        assert!(!sealed.windows(11).any(|w| w == b"endorsement"));
        // Another session, another circle: it does not open.
        assert!(matches!(k.open(&[8; 32], &sealed), Err(Error::Corrupt(_))));
        assert!(matches!(
            key().open(&[7; 32], &sealed),
            Err(Error::Corrupt(_))
        ));
        // Each seal is fresh.
        assert_ne!(sealed, k.seal(&[7; 32], b"endorsement and proof").unwrap());
    }

    #[test]
    fn a_protocol_1_circle_has_no_hello_key() {
        let p1 = CircleSecret::protocol_1(
            &secrecy::SecretString::from("pass".to_owned()),
            "alice",
            crate::kdf::KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
        )
        .unwrap();
        assert!(HelloKey::of(&p1).is_none());
    }

    #[test]
    fn the_key_file_round_trips_and_nothing_else_parses() {
        let k = key();
        let b = k.to_bytes();
        let back = HelloKey::from_bytes(&b).unwrap();
        assert_eq!(back.to_bytes(), b);
        assert_eq!(back.circle(), k.circle());
        for len in [0, 1, KEY_FILE_LEN - 1, KEY_FILE_LEN + 1] {
            let mut v = b.to_vec();
            v.resize(len, 0);
            assert!(HelloKey::from_bytes(&v).is_err(), "{len}");
        }
        let mut v = b.to_vec();
        v[0] = 2;
        assert!(HelloKey::from_bytes(&v).is_err());
    }

    #[test]
    fn an_oversized_hello_is_refused() {
        let k = key();
        assert!(k.seal(&[0; 32], &vec![0; MAX_PLAINTEXT + 1]).is_err());
        assert!(k.seal(&[0; 32], &vec![0; MAX_PLAINTEXT]).is_ok());
        assert!(matches!(
            k.open(&[0; 32], &vec![1; MAX_SEALED + 1]),
            Err(Error::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn any_change_to_a_sealed_hello_is_refused(
            plain in proptest::collection::vec(any::<u8>(), 0..512),
            at in any::<usize>(),
            bit in 0u8..8,
        ) {
            let k = key();
            let sealed = k.seal(&[3; 32], &plain).unwrap();
            prop_assert_eq!(&k.open(&[3; 32], &sealed).unwrap()[..], &plain[..]);
            let mut bad = sealed.clone();
            let i = at % bad.len();
            bad[i] ^= 1 << bit;
            prop_assert!(k.open(&[3; 32], &bad).is_err());
            for len in 0..sealed.len() {
                prop_assert!(k.open(&[3; 32], &sealed[..len]).is_err());
            }
        }

        #[test]
        fn junk_never_opens(junk in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assert!(key().open(&[0; 32], &junk).is_err());
        }
    }
}
