//! SHA-256 content digests.
//!
//! [`Sha256`] names content (a store file's ciphertext, a record body) by
//! its digest; [`HashingWriter`] and [`HashingReader`] compute it while the
//! bytes stream past, so nothing has to be read twice.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::Digest;

use crate::{Error, Result};

/// A SHA-256 digest. `Display` and `Debug` print 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| Error::BadEncoding {
            what: "SHA-256 digest",
            reason: format!("{e}; expected 64 hex digits"),
        })?;
        Ok(Self(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// A [`Write`] passthrough that hashes and counts what it writes.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    /// Returns the inner writer, the digest of everything written through
    /// it, and the number of bytes written.
    pub fn finish(self) -> (W, Sha256, u64) {
        (self.inner, Sha256(self.hasher.finalize().into()), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Hash only what the inner writer accepted.
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A [`Read`] passthrough that hashes and counts what it reads.
pub struct HashingReader<R: Read> {
    inner: R,
    hasher: sha2::Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    /// Returns the inner reader, the digest of everything read through it,
    /// and the number of bytes read.
    pub fn finish(self) -> (R, Sha256, u64) {
        (self.inner, Sha256(self.hasher.finalize().into()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answers() {
        assert_eq!(
            Sha256::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Sha256::of(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            format!("{:?}", Sha256::of(b"abc")),
            "Sha256(ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad)"
        );
    }

    #[test]
    fn hex_parsing() {
        let d = Sha256::of(b"x");
        assert_eq!(Sha256::from_hex(&d.to_hex()).unwrap(), d);
        assert_eq!(Sha256::from_hex(&d.to_hex().to_uppercase()).unwrap(), d);
        for bad in ["", "00", &"0".repeat(63), &"0".repeat(65), &"g".repeat(64)] {
            assert!(
                matches!(Sha256::from_hex(bad), Err(Error::BadEncoding { .. })),
                "{bad}"
            );
        }
    }

    /// A writer that accepts at most 3 bytes per call.
    struct Slow(Vec<u8>);

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    proptest! {
        #[test]
        fn streaming_matches_one_shot(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let mut w = HashingWriter::new(Slow(Vec::new()));
            w.write_all(&bytes).unwrap();
            let (inner, digest, len) = w.finish();
            prop_assert_eq!(&inner.0, &bytes);
            prop_assert_eq!(digest, Sha256::of(&bytes));
            prop_assert_eq!(len, bytes.len() as u64);

            let mut r = HashingReader::new(&bytes[..]);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            let (_, digest, len) = r.finish();
            prop_assert_eq!(out, bytes.clone());
            prop_assert_eq!(digest, Sha256::of(&bytes));
            prop_assert_eq!(len, bytes.len() as u64);
        }
    }
}
