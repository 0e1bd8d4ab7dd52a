//! Byte-level reading and writing shared by the wire formats.
//!
//! [`Reader`] walks a borrowed byte slice field by field; every read names
//! the field it is for, so a short input yields [`Error::Truncated`] saying
//! where it ended, and [`Reader::finish`] refuses trailing bytes. Integers are
//! big-endian throughout the protocol.

use crate::Error;

/// A cursor over untrusted input.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    /// What is being read, for error messages (e.g. `"announcement"`).
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Start reading `input`, described as `what` in errors.
    pub(crate) fn new(input: &'a [u8], what: &'static str) -> Self {
        Reader { rest: input, what }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Error> {
        if self.rest.len() < n {
            return Err(Error::Truncated {
                what: self.what,
                field,
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// One byte.
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Error> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian `u16`.
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// A big-endian `u64`.
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Succeed only if every byte has been read.
    pub(crate) fn finish(self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                what: self.what,
                count: self.rest.len(),
            })
        }
    }
}

/// Append `bytes` preceded by their length as one byte.
///
/// Callers pass only validated text whose length is capped well below 256
/// (names at 64 bytes, recipients at 128), so the length always fits.
pub(crate) fn put_short_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u8::MAX));
    // Cannot truncate: every caller's text is capped below 256 bytes by its type.
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}
