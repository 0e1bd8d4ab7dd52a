//! Plaintext buffers that are wiped when dropped, at memory speed.
//!
//! `zeroize::Zeroizing<Vec<u8>>` wipes a vector's bytes one volatile store
//! at a time (zeroize's `Vec` impl walks the elements); for the mount's
//! 64 KiB chunks and FUSE replies that loop was an eighth of a sequential
//! read's CPU. A [`SecretBuf`] wipes its bytes as one slice, which zeroize
//! fills in bulk behind an optimisation barrier, and then its spare
//! capacity. What it does not cover is what `Zeroizing` does not either:
//! copies a reallocation left behind (callers size their buffers ahead).

use std::ops::{Deref, DerefMut};

use zeroize::Zeroize;

/// A `Vec<u8>` of secret bytes, wiped (contents and spare capacity) on drop.
#[derive(Default)]
pub struct SecretBuf(Vec<u8>);

impl SecretBuf {
    /// Take ownership of `bytes`.
    pub fn new(bytes: Vec<u8>) -> SecretBuf {
        SecretBuf(bytes)
    }

    /// An empty buffer that can hold `n` bytes without reallocating.
    pub fn with_capacity(n: usize) -> SecretBuf {
        SecretBuf(Vec::with_capacity(n))
    }

    /// Zero every byte and the spare capacity; the length stays.
    pub fn wipe(&mut self) {
        self.0.as_mut_slice().zeroize();
        self.0.spare_capacity_mut().zeroize();
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl Deref for SecretBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for SecretBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl std::fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBuf({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_zeroes_the_bytes_and_keeps_the_length() {
        let mut b = SecretBuf::with_capacity(1 << 16);
        b.extend_from_slice(&[0xa5; 40_000]);
        b.wipe();
        assert_eq!(b.len(), 40_000);
        assert!(b.iter().all(|&x| x == 0));
        assert!(b.capacity() >= 1 << 16, "no reallocation");
        // Debug shows the length, never the bytes.
        b[0] = 0x41;
        assert_eq!(format!("{b:?}"), "SecretBuf(40000 bytes)");
    }
}
