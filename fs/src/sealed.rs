//! What a completed seal produced ([`Sealed`]): the plaintext and
//! ciphertext lengths, the ciphertext's hash, the envoys it is sealed
//! to and whether the file is executable; what the writer started from ([`Base`]); and where the journal
//! placed a local seal ([`Placed`]).
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
    /// The owner's execute bit its store file was given
    /// ([`crate::store::file_mode`]).
    pub executable: bool,
}

/// The version a local change started from: the version current for the
/// name when its writer opened it for writing (see `docs/design.md`,
/// "Version vectors of local versions"). What it holds is the journal's
/// description ([`Journal::base`](crate::store::Journal::base)), opaque to
/// the store and the mount, which only carry it to the seal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Base {
    /// Not captured: the version the name holds when the change is
    /// recorded (a change the store makes on its own: the sweep, an
    /// import, `lockbox encrypt`).
    #[default]
    Current,
    /// Captured: the journal's description of the version the writer saw
    /// (also when the name had none).
    Seen(Vec<u8>),
}

/// Where the journal placed a local seal of a name
/// ([`Journal::place`](crate::store::Journal::place)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The name the new version goes under: its own, or its conflict-copy
    /// name when it loses to a version that arrived during the write.
    pub under: crate::Name,
    /// The journal's description of the new version, handed back to it
    /// with the change ([`Journal::placed`](crate::store::Journal::placed)).
    pub version: Vec<u8>,
    /// What a next seal by the same writer started from: this version.
    pub next: Base,
}
