//! The envoy's age identity and its passphrase-wrapped file, `identity.age`.
//!
//! Despite its name the file is not an age file; it is this small binary
//! format (version 1, all integers big-endian):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 16 | magic `lockbox-identity` |
//! | 16 | 1 | format version, `1` |
//! | 17 | 4 | Argon2id memory, KiB |
//! | 21 | 4 | Argon2id iterations |
//! | 25 | 4 | Argon2id parallelism |
//! | 29 | 16 | Argon2id salt, random |
//! | 45 | 24 | XChaCha20-Poly1305 nonce, random |
//! | 69 | 2 | ciphertext length `n` |
//! | 71 | `n` | XChaCha20-Poly1305 ciphertext of the `AGE-SECRET-KEY-1…` string, tag included |
//! | 71 + `n` | 32 | SHA-256 of every preceding byte |
//!
//! The key is Argon2id(passphrase, salt, params); the associated data is
//! bytes 0..71. The magic and the trailing checksum frame every version, so
//! a damaged file is told apart from a newer one and from a wrong passphrase:
//! a bad magic, length or checksum, or parameters beyond the
//! [caps](crate::kdf::KdfParams::validate), is [`Error::CorruptIdentity`];
//! an intact file of another version is [`Error::UnsupportedIdentityVersion`];
//! an intact file that does not decrypt is [`Error::WrongPassphrase`].

use std::str::FromStr;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::{rngs::OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::digest::Sha256;
use crate::kdf::KdfParams;
use crate::{AgeIdentity, Error, Result};

/// First bytes of every identity file, whatever its version.
pub const MAGIC: &[u8; 16] = b"lockbox-identity";
/// The format version [`wrap`] writes.
pub const VERSION: u8 = 1;

const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const CHECKSUM_LEN: usize = 32;
/// Bytes 0..HEADER_LEN are the fixed header and the AEAD associated data.
const HEADER_LEN: usize = 16 + 1 + 12 + SALT_LEN + NONCE_LEN + 2;
/// Largest ciphertext accepted (an X25519 key string is 74 bytes).
const MAX_CIPHERTEXT_LEN: usize = 1024;

/// A new random age X25519 identity.
pub fn generate() -> AgeIdentity {
    AgeIdentity::generate()
}

/// Wraps `identity` under `passphrase` into the bytes of an identity file.
///
/// `params` are validated and stored in the file; use
/// [`KdfParams::DEFAULT`] (tests use [`KdfParams::TEST`]).
pub fn wrap(
    identity: &AgeIdentity,
    passphrase: &SecretString,
    params: KdfParams,
) -> Result<Vec<u8>> {
    params.validate()?;
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut nonce);

    let secret = identity.to_string();
    let plain = secret.expose_secret().as_bytes();
    let ct_len = plain.len() + TAG_LEN;
    // Room for the tag up front: a reallocation would leave a copy of the
    // plaintext behind in freed memory.
    let mut buf = Zeroizing::new(Vec::with_capacity(ct_len));
    buf.extend_from_slice(plain);
    // An X25519 identity string is 74 bytes; this cannot fail for one.
    let ct_len_u16 = u16::try_from(ct_len)
        .ok()
        .filter(|&n| usize::from(n) <= MAX_CIPHERTEXT_LEN)
        .ok_or_else(|| Error::CorruptIdentity("identity string is too long".into()))?;

    let mut file = Vec::with_capacity(HEADER_LEN + ct_len + CHECKSUM_LEN);
    file.extend_from_slice(MAGIC);
    file.push(VERSION);
    file.extend_from_slice(&params.memory_kib.to_be_bytes());
    file.extend_from_slice(&params.iterations.to_be_bytes());
    file.extend_from_slice(&params.parallelism.to_be_bytes());
    file.extend_from_slice(&salt);
    file.extend_from_slice(&nonce);
    file.extend_from_slice(&ct_len_u16.to_be_bytes());
    debug_assert_eq!(file.len(), HEADER_LEN);

    let key = params.derive(passphrase, &salt)?;
    let aead = XChaCha20Poly1305::new((&*key).into());
    // The plaintext is encrypted in place, so `buf` holds only ciphertext
    // afterwards (and is wiped on drop either way).
    aead.encrypt_in_place(XNonce::from_slice(&nonce), &file, &mut *buf)
        .map_err(|_| Error::CorruptIdentity("encryption failed".into()))?;
    file.extend_from_slice(&buf);
    let checksum = Sha256::of(&file);
    file.extend_from_slice(&checksum.0);
    Ok(file)
}

/// The parsed, checksum-verified parts of a version-1 file.
struct Parsed<'a> {
    header: &'a [u8],
    params: KdfParams,
    salt: &'a [u8],
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

fn corrupt(reason: &str) -> Error {
    Error::CorruptIdentity(reason.to_owned())
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

/// Checks the framing (magic, checksum), the version, the length and the
/// parameter caps, in that order.
fn parse(file: &[u8]) -> Result<Parsed<'_>> {
    if file.len() < MAGIC.len() + 1 + CHECKSUM_LEN {
        return Err(corrupt(&format!("only {} bytes", file.len())));
    }
    if !file.starts_with(MAGIC) {
        return Err(corrupt("bad magic: not a lockbox identity file"));
    }
    let (body, checksum) = file.split_at(file.len() - CHECKSUM_LEN);
    if Sha256::of(body).0 != checksum {
        return Err(corrupt(
            "checksum mismatch: the file is damaged or truncated",
        ));
    }
    let version = body[MAGIC.len()];
    if version != VERSION {
        return Err(Error::UnsupportedIdentityVersion(version));
    }
    if body.len() < HEADER_LEN + TAG_LEN {
        return Err(corrupt("bad length: too short for a version 1 file"));
    }
    let (header, ciphertext) = body.split_at(HEADER_LEN);
    let declared = usize::from(u16::from_be_bytes([header[69], header[70]]));
    if declared != ciphertext.len() || declared > MAX_CIPHERTEXT_LEN {
        return Err(corrupt(&format!(
            "bad length: header declares {declared} ciphertext bytes, file holds {}",
            ciphertext.len()
        )));
    }
    let params = KdfParams {
        memory_kib: be_u32(header, 17),
        iterations: be_u32(header, 21),
        parallelism: be_u32(header, 25),
    };
    params.validate().map_err(|e| match e {
        Error::KdfParams(reason) => corrupt(&format!("KDF parameters out of range: {reason}")),
        other => other,
    })?;
    Ok(Parsed {
        header,
        params,
        salt: &header[29..29 + SALT_LEN],
        nonce: &header[45..45 + NONCE_LEN],
        ciphertext,
    })
}

/// Unwraps an identity file with `passphrase`.
///
/// Errors: [`Error::CorruptIdentity`], [`Error::UnsupportedIdentityVersion`],
/// [`Error::WrongPassphrase`] (see the [module docs](self)). The parameters
/// are checked against the caps before any key derivation.
pub fn unwrap(file: &[u8], passphrase: &SecretString) -> Result<AgeIdentity> {
    let parsed = parse(file)?;
    let key = parsed.params.derive(passphrase, parsed.salt)?;
    let aead = XChaCha20Poly1305::new((&*key).into());
    let mut buf = Zeroizing::new(parsed.ciphertext.to_vec());
    aead.decrypt_in_place(XNonce::from_slice(parsed.nonce), parsed.header, &mut *buf)
        .map_err(|_| Error::WrongPassphrase)?;
    let text =
        std::str::from_utf8(&buf).map_err(|_| corrupt("the decrypted payload is not text"))?;
    AgeIdentity::from_str(text).map_err(|reason| {
        corrupt(&format!(
            "the decrypted payload is not an age identity: {reason}"
        ))
    })
}

/// The KDF parameters stored in an identity file (checks framing, version,
/// length and caps; derives nothing).
pub fn params_of(file: &[u8]) -> Result<KdfParams> {
    parse(file).map(|p| p.params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn sample() -> (AgeIdentity, Vec<u8>) {
        let id = generate();
        let file = wrap(&id, &pass("open sesame"), KdfParams::TEST).unwrap();
        (id, file)
    }

    fn same(a: &AgeIdentity, b: &AgeIdentity) -> bool {
        a.to_string().expose_secret() == b.to_string().expose_secret()
    }

    /// Replaces the trailing checksum with the correct one for the rest.
    fn rechecksum(file: &mut [u8]) {
        let n = file.len() - CHECKSUM_LEN;
        let sum = Sha256::of(&file[..n]);
        file[n..].copy_from_slice(&sum.0);
    }

    #[test]
    fn round_trip() {
        let (id, file) = sample();
        assert_eq!(file.len(), HEADER_LEN + 74 + TAG_LEN + CHECKSUM_LEN);
        assert!(file.starts_with(b"lockbox-identity\x01"));
        let back = unwrap(&file, &pass("open sesame")).unwrap();
        assert!(same(&id, &back));
        assert_eq!(back.to_public().to_string(), id.to_public().to_string());
        assert_eq!(params_of(&file).unwrap(), KdfParams::TEST);
    }

    #[test]
    fn wrapping_is_randomised() {
        let id = generate();
        let a = wrap(&id, &pass("p"), KdfParams::TEST).unwrap();
        let b = wrap(&id, &pass("p"), KdfParams::TEST).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn plaintext_key_is_not_in_the_file() {
        let (id, file) = sample();
        let secret = id.to_string();
        let needle = secret.expose_secret().as_bytes();
        assert!(!file.windows(16).any(|w| needle.windows(16).any(|n| n == w)));
    }

    #[test]
    fn wrong_passphrase() {
        let (_, file) = sample();
        assert!(matches!(
            unwrap(&file, &pass("open sesame ")),
            Err(Error::WrongPassphrase)
        ));
        assert!(matches!(
            unwrap(&file, &pass("")),
            Err(Error::WrongPassphrase)
        ));
    }

    #[test]
    fn every_flipped_byte_is_corrupt() {
        let (_, file) = sample();
        for i in 0..file.len() {
            for bit in [0, 7] {
                let mut bad = file.clone();
                bad[i] ^= 1 << bit;
                let r = unwrap(&bad, &pass("open sesame")).map(|_| ());
                assert!(
                    matches!(r, Err(Error::CorruptIdentity(_))),
                    "byte {i}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn tampering_with_a_valid_checksum_is_a_wrong_passphrase() {
        // Someone who rewrites the checksum gets past the accident check, but
        // the AEAD (header as associated data) still refuses.
        let (_, file) = sample();
        for i in [29, 44, 45, 68, HEADER_LEN, file.len() - CHECKSUM_LEN - 1] {
            let mut bad = file.clone();
            bad[i] ^= 1;
            rechecksum(&mut bad);
            let r = unwrap(&bad, &pass("open sesame")).map(|_| ());
            assert!(matches!(r, Err(Error::WrongPassphrase)), "byte {i}: {r:?}");
        }
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let (_, file) = sample();
        for len in 0..file.len() {
            let r = unwrap(&file[..len], &pass("open sesame")).map(|_| ());
            assert!(
                matches!(r, Err(Error::CorruptIdentity(_))),
                "len {len}: {r:?}"
            );
        }
        let mut long = file.clone();
        long.push(0);
        assert!(matches!(
            unwrap(&long, &pass("open sesame")),
            Err(Error::CorruptIdentity(_))
        ));
    }

    #[test]
    fn params_beyond_caps_are_corrupt_before_any_derivation() {
        let (_, file) = sample();
        // 4 GiB + 1 KiB, u32::MAX iterations, 1000 lanes: deriving with any
        // of these would allocate or spin for ages; they must fail at once.
        for (at, value) in [
            (17, 4 * 1024 * 1024 + 1),
            (17, u32::MAX),
            (21, 65),
            (21, 0),
            (25, 1000),
            (25, 0),
        ] {
            let mut bad = file.clone();
            bad[at..at + 4].copy_from_slice(&u32::to_be_bytes(value));
            rechecksum(&mut bad);
            let r = unwrap(&bad, &pass("open sesame")).map(|_| ());
            assert!(
                matches!(&r, Err(Error::CorruptIdentity(m)) if m.contains("KDF")),
                "offset {at} = {value}: {r:?}"
            );
            assert!(matches!(params_of(&bad), Err(Error::CorruptIdentity(_))));
        }
    }

    #[test]
    fn declared_length_must_match() {
        let (_, file) = sample();
        for declared in [0u16, 89, 91, u16::MAX] {
            let mut bad = file.clone();
            bad[69..71].copy_from_slice(&declared.to_be_bytes());
            rechecksum(&mut bad);
            assert!(matches!(
                unwrap(&bad, &pass("open sesame")),
                Err(Error::CorruptIdentity(m)) if m.contains("length")
            ));
        }
    }

    #[test]
    fn unknown_version_is_reported_as_such() {
        let (_, file) = sample();
        for v in [0u8, 2, 255] {
            let mut newer = file.clone();
            newer[16] = v;
            rechecksum(&mut newer);
            assert!(matches!(
                unwrap(&newer, &pass("open sesame")),
                Err(Error::UnsupportedIdentityVersion(x)) if x == v
            ));
        }
        // A newer version may have any layout after the version byte.
        let mut newer = MAGIC.to_vec();
        newer.push(2);
        newer.extend_from_slice(b"whatever comes next");
        newer.extend_from_slice(&[0; CHECKSUM_LEN]);
        rechecksum(&mut newer);
        assert!(matches!(
            params_of(&newer),
            Err(Error::UnsupportedIdentityVersion(2))
        ));
    }

    #[test]
    fn bad_magic() {
        let (_, mut file) = sample();
        file[0] = b'L';
        rechecksum(&mut file);
        assert!(matches!(
            unwrap(&file, &pass("open sesame")),
            Err(Error::CorruptIdentity(m)) if m.contains("magic")
        ));
        assert!(matches!(
            unwrap(b"age-encryption.org/v1\n-> X25519 abc\n", &pass("x")),
            Err(Error::CorruptIdentity(_))
        ));
    }

    #[test]
    fn a_payload_that_is_not_a_key_is_corrupt() {
        // Build a structurally valid file around a wrong payload.
        let params = KdfParams::TEST;
        let salt = [1u8; SALT_LEN];
        let nonce = [2u8; NONCE_LEN];
        let payload = b"AGE-SECRET-KEY-1NOTAKEY";
        let mut file = MAGIC.to_vec();
        file.push(VERSION);
        for v in [params.memory_kib, params.iterations, params.parallelism] {
            file.extend_from_slice(&v.to_be_bytes());
        }
        file.extend_from_slice(&salt);
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&((payload.len() + TAG_LEN) as u16).to_be_bytes());
        let key = params.derive(&pass("pw"), &salt).unwrap();
        let mut buf = payload.to_vec();
        XChaCha20Poly1305::new((&*key).into())
            .encrypt_in_place(XNonce::from_slice(&nonce), &file, &mut buf)
            .unwrap();
        file.extend_from_slice(&buf);
        file.extend_from_slice(&Sha256::of(&file).0);
        assert!(matches!(
            unwrap(&file, &pass("pw")),
            Err(Error::CorruptIdentity(m)) if m.contains("not an age identity")
        ));
    }

    #[test]
    fn wrap_validates_params() {
        let bad = KdfParams {
            iterations: 0,
            ..KdfParams::TEST
        };
        assert!(matches!(
            wrap(&generate(), &pass("p"), bad),
            Err(Error::KdfParams(_))
        ));
    }
}
