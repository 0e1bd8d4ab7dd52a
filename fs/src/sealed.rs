//! What a completed seal produced ([`Sealed`]): the plaintext and
//! ciphertext lengths, the ciphertext's hash and the envoys it is sealed
//! to.
//!
//! A module of its own because the store makes it, the journal carries it
//! to the mesh and the mount hands it to the agent: each of them uses it
//! without importing the others. It must stay plain data.

use lockbox_crypto::digest::Sha256;

/// What a completed seal produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Plaintext bytes sealed.
    pub plaintext_len: u64,
    /// Ciphertext bytes written.
    pub ciphertext_len: u64,
    /// SHA-256 of the ciphertext.
    pub hash: Sha256,
    /// The envoys it is sealed to ([`SealTo::envoys`](crate::SealTo::envoys)).
    pub envoys: Vec<String>,
}
