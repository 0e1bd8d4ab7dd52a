//! Ed25519 keys, the canonical binary encoding, and signed records.
//!
//! Every record lockbox signs (endorsements, versions, tombstones, leaves)
//! is a [`Record`]: a type with a fixed domain string and a canonical,
//! deterministic encoding written with [`Encoder`] and read back with
//! [`Decoder`]. [`Signed`] binds a record body to its signer:
//!
//! ```text
//! signed message = "lockbox-signed-v1\0" || DOMAIN || "\0" || body bytes
//! wire bytes     = 0x01 || signer public key (32) || signature (64) || body bytes
//! ```
//!
//! The domain string in the signed message means a signature made for one
//! record type never verifies as another, even if the body bytes coincide.
//! Parsing verifies the signature before it decodes a single field.

use std::fmt;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Largest signed record (envelope and body) [`Signed::from_bytes`] accepts.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Version byte of the [`Signed`] envelope.
const ENVELOPE_VERSION: u8 = 1;
/// Envelope bytes before the body: version, signer, signature.
const ENVELOPE_LEN: usize = 1 + 32 + 64;
/// Prefix of every signed message.
const SIGNATURE_CONTEXT: &[u8] = b"lockbox-signed-v1\0";
/// First line of the `signing.key` file.
const KEY_FILE_HEADER: &str = "lockbox-signing-key v1\n";

/// An Ed25519 public key. `Display` and `Debug` print it as unpadded
/// URL-safe base64 (43 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Unpadded URL-safe base64 of the 32 key bytes.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses [`PublicKey::to_base64`]'s output; the bytes must be a valid
    /// Ed25519 point.
    pub fn from_base64(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadEncoding {
            what: "public key",
            reason,
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| bad(format!("{e}; expected 43 characters of URL-safe base64")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| bad(format!("{} bytes, expected 32", v.len())))?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| bad("not a valid Ed25519 public key".into()))?;
        Ok(Self(bytes))
    }

    /// Verifies an Ed25519 signature over `msg` (strict verification: no
    /// malleable signatures, no small-order keys).
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8; 64]) -> Result<()> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadSignature)?;
        key.verify_strict(msg, &Signature::from_bytes(sig))
            .map_err(|_| Error::BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An Ed25519 signing key. Wiped from memory on drop; `Debug` shows only
/// the public key.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut OsRng))
    }

    /// The key whose 32-byte seed (RFC 8032 secret key) is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `msg` as is. Prefer [`Signed::sign`], which adds the domain.
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    /// The text of `~/.lockbox/signing.key`:
    /// `lockbox-signing-key v1\n<seed as unpadded URL-safe base64>\n`.
    pub fn encode_file(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.0.to_bytes());
        let mut out = Zeroizing::new(String::with_capacity(KEY_FILE_HEADER.len() + 44));
        out.push_str(KEY_FILE_HEADER);
        URL_SAFE_NO_PAD.encode_string(&seed[..], &mut out);
        out.push('\n');
        out
    }

    /// Parses [`SigningKey::encode_file`]'s output. A missing final newline
    /// and trailing whitespace are tolerated; anything else is an error.
    pub fn parse_file(text: &str) -> Result<Self> {
        let encoded = text
            .strip_prefix(KEY_FILE_HEADER)
            .ok_or_else(|| {
                Error::BadSigningKey("first line is not `lockbox-signing-key v1`".into())
            })?
            .trim_end();
        let mut buf = Zeroizing::new([0u8; 48]);
        // 43 characters decode to 32 bytes; longer input is rejected before
        // decoding so the buffer is always large enough.
        if encoded.len() != 43 {
            return Err(Error::BadSigningKey(format!(
                "seed line has {} characters, expected 43",
                encoded.len()
            )));
        }
        let n = URL_SAFE_NO_PAD
            .decode_slice(encoded, &mut buf[..])
            .map_err(|e| Error::BadSigningKey(format!("seed is not base64: {e}")))?;
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            buf[..n]
                .try_into()
                .map_err(|_| Error::BadSigningKey(format!("seed is {n} bytes, expected 32")))?,
        );
        Ok(Self::from_seed(&seed))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SigningKey").field(&self.public()).finish()
    }
}

/// Writes the canonical encoding: big-endian integers, `u32`-length-prefixed
/// byte strings, raw 32-byte keys. No field tags, no padding, no optional
/// parts, so each value has exactly one encoding.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Four bytes, big-endian.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Eight bytes, big-endian.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// A `u32` big-endian length, then the bytes.
    ///
    /// # Panics
    ///
    /// If `v` is 4 GiB or longer; records are capped far below that.
    pub fn bytes(&mut self, v: &[u8]) {
        let len = u32::try_from(v.len()).expect("record field shorter than 4 GiB");
        self.u32(len);
        self.buf.extend_from_slice(v);
    }

    /// A string as its UTF-8 [`bytes`](Encoder::bytes).
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    /// The 32 bytes of a public key, without a length.
    pub fn key(&mut self, k: &PublicKey) {
        self.buf.extend_from_slice(&k.0);
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads the canonical encoding written by [`Encoder`]. Every read checks
/// the remaining input first; [`Decoder::finish`] rejects trailing bytes.
#[derive(Debug)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// A decoder over `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Self { rest: b }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.rest.len() {
            return Err(Error::Malformed(format!(
                "truncated: a field needs {n} bytes, {} remain",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// Four bytes, big-endian.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Eight bytes, big-endian.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A length-prefixed byte string of at most `max` bytes. The declared
    /// length is checked against `max` and against the remaining input
    /// before anything is taken; nothing is allocated.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8]> {
        let len = self.u32()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| Error::Malformed(format!("field of {len} bytes exceeds cap {max}")))?;
        self.take(len)
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, max: usize) -> Result<&'a str> {
        std::str::from_utf8(self.bytes(max)?)
            .map_err(|_| Error::Malformed("string field is not UTF-8".into()))
    }

    /// A 32-byte public key; it must be a valid Ed25519 point.
    pub fn key(&mut self) -> Result<PublicKey> {
        let bytes = self.array::<32>()?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::Malformed("not a valid Ed25519 public key".into()))?;
        Ok(PublicKey(bytes))
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Ends decoding; trailing bytes are an error.
    pub fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed(format!(
                "{} trailing bytes after the record",
                self.rest.len()
            )))
        }
    }
}

/// A record type that can be signed.
pub trait Record: Sized {
    /// The domain string mixed into every signature over this type, such as
    /// `"lockbox/endorsement/v1"`. Unique per type and version; must not
    /// contain a NUL byte.
    const DOMAIN: &'static str;

    /// Writes the canonical encoding of `self`.
    fn encode(&self, e: &mut Encoder);

    /// Reads a value written by [`Record::encode`], enforcing per-field caps.
    /// Trailing bytes are rejected by the caller.
    fn decode(d: &mut Decoder<'_>) -> Result<Self>;
}

/// A record body, its signer, and the signer's Ed25519 signature over
/// `"lockbox-signed-v1\0" || T::DOMAIN || "\0" || body bytes`.
///
/// A `Signed<T>` exists only by signing ([`Signed::sign`]) or by parsing
/// bytes whose signature verifies ([`Signed::from_bytes`]). It proves who
/// signed; whether that signer is trusted is the caller's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<T: Record> {
    body: T,
    body_bytes: Vec<u8>,
    signer: PublicKey,
    signature: [u8; 64],
}

/// The message an Ed25519 signature of a `T` covers.
fn signed_message<T: Record>(body_bytes: &[u8]) -> Vec<u8> {
    let mut msg =
        Vec::with_capacity(SIGNATURE_CONTEXT.len() + T::DOMAIN.len() + 1 + body_bytes.len());
    msg.extend_from_slice(SIGNATURE_CONTEXT);
    msg.extend_from_slice(T::DOMAIN.as_bytes());
    msg.push(0);
    msg.extend_from_slice(body_bytes);
    msg
}

impl<T: Record> Signed<T> {
    /// Encodes `body` and signs it with `key`.
    pub fn sign(body: T, key: &SigningKey) -> Self {
        let mut e = Encoder::new();
        body.encode(&mut e);
        let body_bytes = e.finish();
        let signature = key.sign_raw(&signed_message::<T>(&body_bytes));
        Self {
            body,
            body_bytes,
            signer: key.public(),
            signature,
        }
    }

    /// The record.
    pub fn body(&self) -> &T {
        &self.body
    }

    /// The canonical encoding of the record, as signed.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body_bytes
    }

    /// Who signed it.
    pub fn signer(&self) -> PublicKey {
        self.signer
    }

    /// The wire form: `0x01 || signer (32) || signature (64) || body bytes`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENVELOPE_LEN + self.body_bytes.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.signer.0);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.body_bytes);
        out
    }

    /// Parses the wire form. Rejects input over [`MAX_RECORD_BYTES`], then
    /// verifies the signature, and only then decodes the body (rejecting
    /// trailing bytes).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        Self::parse(b, true)
    }

    /// Parses the wire form like [`Signed::from_bytes`] but does not check
    /// the signature. Only for records read back from this envoy's own
    /// metadata database, which holds nothing that was not verified (or
    /// signed here) on the way in: re-verifying them on every lookup cost
    /// an Ed25519 verification per record per file operation. Anything that
    /// leaves the envoy is verified again by its receiver.
    pub fn from_trusted_bytes(b: &[u8]) -> Result<Self> {
        Self::parse(b, false)
    }

    fn parse(b: &[u8], verify: bool) -> Result<Self> {
        if b.len() > MAX_RECORD_BYTES {
            return Err(Error::Malformed(format!(
                "record of {} bytes exceeds the {MAX_RECORD_BYTES}-byte cap",
                b.len()
            )));
        }
        if b.len() < ENVELOPE_LEN {
            return Err(Error::Malformed(format!(
                "record of {} bytes is shorter than its {ENVELOPE_LEN}-byte envelope",
                b.len()
            )));
        }
        let mut d = Decoder::new(b);
        let version = d.u8()?;
        if version != ENVELOPE_VERSION {
            return Err(Error::Malformed(format!(
                "record envelope version {version} is not supported; upgrade lockbox"
            )));
        }
        let signer = PublicKey(d.array()?);
        let signature: [u8; 64] = d.array()?;
        let body_bytes = &b[ENVELOPE_LEN..];
        if verify {
            signer.verify_raw(&signed_message::<T>(body_bytes), &signature)?;
        }

        let mut d = Decoder::new(body_bytes);
        let body = T::decode(&mut d)?;
        d.finish()?;
        Ok(Self {
            body,
            body_bytes: body_bytes.to_vec(),
            signer,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Note {
        text: String,
        n: u64,
    }

    impl Record for Note {
        const DOMAIN: &'static str = "lockbox/test-note/v1";
        fn encode(&self, e: &mut Encoder) {
            e.str(&self.text);
            e.u64(self.n);
        }
        fn decode(d: &mut Decoder<'_>) -> Result<Self> {
            Ok(Self {
                text: d.str(1000)?.to_owned(),
                n: d.u64()?,
            })
        }
    }

    /// Same encoding as [`Note`], different domain.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Memo(Note);

    impl Record for Memo {
        const DOMAIN: &'static str = "lockbox/test-memo/v1";
        fn encode(&self, e: &mut Encoder) {
            self.0.encode(e)
        }
        fn decode(d: &mut Decoder<'_>) -> Result<Self> {
            Note::decode(d).map(Memo)
        }
    }

    fn note() -> Note {
        Note {
            text: "hello".into(),
            n: 42,
        }
    }

    #[test]
    fn rfc8032_test_vector_1() {
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let key = SigningKey::from_seed(&seed);
        assert_eq!(
            hex::encode(key.public().0),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = key.sign_raw(b"");
        assert_eq!(
            hex::encode(sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        key.public().verify_raw(b"", &sig).unwrap();
        assert!(matches!(
            key.public().verify_raw(b"x", &sig),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn public_key_text_round_trip() {
        let k = SigningKey::generate().public();
        let s = k.to_base64();
        assert_eq!(s.len(), 43);
        assert_eq!(PublicKey::from_base64(&s).unwrap(), k);
        assert_eq!(k.to_string(), s);
        assert_eq!(format!("{k:?}"), format!("PublicKey({s})"));
        for bad in [
            "",
            "AAAA",
            &format!("{s}="),
            &format!("{s}A"),
            &format!("+{}", &s[1..]),
            &format!("/{}", &s[1..]),
        ] {
            assert!(PublicKey::from_base64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signing_key_file_round_trip() {
        let k = SigningKey::generate();
        let text = k.encode_file();
        assert!(text.starts_with("lockbox-signing-key v1\n"));
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 2);
        assert_eq!(SigningKey::parse_file(&text).unwrap().public(), k.public());
        let no_newline = text.trim_end();
        assert_eq!(
            SigningKey::parse_file(no_newline).unwrap().public(),
            k.public()
        );
        let seed_line = text.lines().nth(1).unwrap();
        for bad in [
            String::new(),
            seed_line.to_owned(),
            format!("lockbox-signing-key v2\n{seed_line}\n"),
            format!("lockbox-signing-key v1\n{}\n", &seed_line[1..]),
            format!("lockbox-signing-key v1\n{seed_line}A\n"),
            format!("lockbox-signing-key v1\n{seed_line}\nextra\n"),
            format!("lockbox-signing-key v1\n{}=\n", &seed_line[..42]),
        ] {
            assert!(
                matches!(SigningKey::parse_file(&bad), Err(Error::BadSigningKey(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let k = SigningKey::from_seed(&[7; 32]);
        let dbg = format!("{k:?}");
        assert_eq!(dbg, format!("SigningKey(PublicKey({}))", k.public()));
        let file = k.encode_file();
        let seed_line = file.lines().nth(1).unwrap();
        assert!(!dbg.contains(seed_line));
    }

    #[test]
    fn signed_round_trip() {
        let key = SigningKey::generate();
        let s = Signed::sign(note(), &key);
        assert_eq!(s.signer(), key.public());
        assert_eq!(s.body(), &note());
        let bytes = s.to_bytes();
        assert_eq!(bytes[0], 1);
        let back = Signed::<Note>::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let bytes = Signed::sign(note(), &SigningKey::generate()).to_bytes();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    Signed::<Note>::from_bytes(&bad).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    /// The trusted parse skips only the signature check: it reads the same
    /// record, and the framing rules still hold.
    #[test]
    fn trusted_parse_skips_only_the_signature() {
        let key = SigningKey::generate();
        let s = Signed::sign(note(), &key);
        let bytes = s.to_bytes();
        assert_eq!(Signed::<Note>::from_trusted_bytes(&bytes).unwrap(), s);
        let mut forged = bytes.clone();
        let last = forged.len() - 1;
        forged[ENVELOPE_LEN - 1] ^= 1; // a signature byte
        assert!(Signed::<Note>::from_bytes(&forged).is_err());
        assert_eq!(
            Signed::<Note>::from_trusted_bytes(&forged).unwrap().body(),
            &note()
        );
        assert!(Signed::<Note>::from_trusted_bytes(&bytes[..last]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(Signed::<Note>::from_trusted_bytes(&long).is_err());
        let mut version = bytes;
        version[0] = 2;
        assert!(Signed::<Note>::from_trusted_bytes(&version).is_err());
    }

    #[test]
    fn truncation_and_trailing_bytes_are_rejected() {
        let key = SigningKey::generate();
        let bytes = Signed::sign(note(), &key).to_bytes();
        for len in 0..bytes.len() {
            assert!(Signed::<Note>::from_bytes(&bytes[..len]).is_err(), "{len}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Signed::<Note>::from_bytes(&long).is_err());
    }

    /// A record whose body has trailing bytes fails even when the signature
    /// over those bytes is valid.
    #[test]
    fn validly_signed_trailing_bytes_are_rejected() {
        let key = SigningKey::generate();
        let mut e = Encoder::new();
        note().encode(&mut e);
        let mut body = e.finish();
        body.push(9);
        let sig = key.sign_raw(&signed_message::<Note>(&body));
        let mut bytes = vec![1];
        bytes.extend_from_slice(&key.public().0);
        bytes.extend_from_slice(&sig);
        bytes.extend_from_slice(&body);
        assert!(matches!(
            Signed::<Note>::from_bytes(&bytes),
            Err(Error::Malformed(m)) if m.contains("trailing")
        ));
    }

    #[test]
    fn domains_separate_record_types() {
        let key = SigningKey::generate();
        let note_bytes = Signed::sign(note(), &key).to_bytes();
        let memo_bytes = Signed::sign(Memo(note()), &key).to_bytes();
        // Identical body bytes, different signatures.
        assert_eq!(note_bytes[97..], memo_bytes[97..]);
        assert_ne!(note_bytes, memo_bytes);
        assert!(matches!(
            Signed::<Memo>::from_bytes(&note_bytes),
            Err(Error::BadSignature)
        ));
        assert!(matches!(
            Signed::<Note>::from_bytes(&memo_bytes),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn another_signer_cannot_be_substituted() {
        let bytes = Signed::sign(note(), &SigningKey::generate()).to_bytes();
        let mut swapped = bytes.clone();
        swapped[1..33].copy_from_slice(&SigningKey::generate().public().0);
        assert!(matches!(
            Signed::<Note>::from_bytes(&swapped),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn oversized_and_unknown_version_records_are_rejected() {
        let big = vec![1u8; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            Signed::<Note>::from_bytes(&big),
            Err(Error::Malformed(_))
        ));
        let mut bytes = Signed::sign(note(), &SigningKey::generate()).to_bytes();
        bytes[0] = 2;
        assert!(matches!(
            Signed::<Note>::from_bytes(&bytes),
            Err(Error::Malformed(m)) if m.contains("version 2")
        ));
    }

    #[test]
    fn decoder_caps_declared_lengths_without_allocating() {
        // Declares 4 GiB - 1 bytes on a 6-byte input.
        let input = [0xff, 0xff, 0xff, 0xff, b'a', b'b'];
        assert!(matches!(
            Decoder::new(&input).bytes(usize::MAX),
            Err(Error::Malformed(_))
        ));
        assert!(
            matches!(Decoder::new(&input).bytes(10), Err(Error::Malformed(m)) if m.contains("cap"))
        );
        // Within the cap but beyond the input.
        let input = [0, 0, 0, 3, b'a', b'b'];
        assert!(
            matches!(Decoder::new(&input).bytes(10), Err(Error::Malformed(m)) if m.contains("truncated"))
        );
        let input = [0, 0, 0, 2, b'a', b'b'];
        assert_eq!(Decoder::new(&input).bytes(2).unwrap(), b"ab");
        assert!(Decoder::new(&input).bytes(1).is_err());
        let input = [0, 0, 0, 2, 0xc3, 0x28];
        assert!(
            matches!(Decoder::new(&input).str(10), Err(Error::Malformed(m)) if m.contains("UTF-8"))
        );
    }

    #[test]
    fn decoder_primitives_and_trailing_bytes() {
        let mut d = Decoder::new(&[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 4]);
        assert_eq!(d.u8().unwrap(), 1);
        assert_eq!(d.u32().unwrap(), 2);
        assert_eq!(d.u64().unwrap(), 3);
        assert_eq!(d.remaining(), 1);
        assert!(matches!(d.finish(), Err(Error::Malformed(_))));
        assert!(Decoder::new(&[0, 0, 0]).u32().is_err());
        assert!(Decoder::new(&[0; 7]).u64().is_err());
        assert!(Decoder::new(&[]).u8().is_err());
        Decoder::new(&[]).finish().unwrap();
        // A key must be a valid point: y = 2 is not on the curve.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(Decoder::new(&not_a_point).key().is_err());
        assert!(Decoder::new(&[0; 31]).key().is_err());
    }

    proptest! {
        #[test]
        fn encoder_decoder_round_trip(
            a: u8,
            b: u32,
            c: u64,
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            s in ".{0,50}",
            seed: [u8; 32],
        ) {
            let key = SigningKey::from_seed(&seed).public();
            let mut e = Encoder::new();
            e.u8(a);
            e.u32(b);
            e.u64(c);
            e.bytes(&bytes);
            e.str(&s);
            e.key(&key);
            let enc = e.finish();
            prop_assert_eq!(enc.len(), 1 + 4 + 8 + 4 + bytes.len() + 4 + s.len() + 32);
            let mut d = Decoder::new(&enc);
            prop_assert_eq!(d.u8().unwrap(), a);
            prop_assert_eq!(d.u32().unwrap(), b);
            prop_assert_eq!(d.u64().unwrap(), c);
            prop_assert_eq!(d.bytes(bytes.len()).unwrap(), &bytes[..]);
            prop_assert_eq!(d.str(s.len()).unwrap(), &s[..]);
            prop_assert_eq!(d.key().unwrap(), key);
            d.finish().unwrap();
        }

        #[test]
        fn decoder_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Signed::<Note>::from_bytes(&input);
            let mut d = Decoder::new(&input);
            let _ = d.str(100).and_then(|_| d.bytes(usize::MAX)).and_then(|_| d.key());
        }

        #[test]
        fn signed_notes_round_trip(text in ".{0,100}", n: u64) {
            let key = SigningKey::generate();
            let s = Signed::sign(Note { text, n }, &key);
            prop_assert_eq!(Signed::<Note>::from_bytes(&s.to_bytes()).unwrap(), s);
        }
    }
}
