//! lockbox's cryptography, and nothing else.
//!
//! This crate turns bytes and [`std::io::Read`]/[`std::io::Write`] values into
//! other bytes. It never opens a file, a socket or a terminal: the caller reads
//! `~/.lockbox/identity.age` and hands the bytes to [`identity::unwrap`], the
//! caller opens a store file and hands it to [`seal::Opened::open`].
//!
//! | module | job |
//! |---|---|
//! | [`kdf`] | Argon2id parameters, their caps for untrusted input, derivation |
//! | [`seal`] | age v1 sealing to X25519 recipients, header caps, seekable opening |
//! | [`identity`] | the passphrase-wrapped `identity.age` format |
//! | [`recipients`] | the `recipients.txt` format |
//! | [`sign`] | Ed25519 keys, the canonical encoding and [`sign::Signed`] records |
//! | [`circle`] | the circle key (random, sealed on disk), endorsements, succession, the merge winner |
//! | [`hello`] | the hello key every member holds, and the hello ask sealed under it |
//! | [`join`] | the join: SPAKE2 bound to the TLS session, key confirmation, sealed messages |
//! | [`digest`] | SHA-256 content digests, hashing readers and writers |
//! | [`wipe`] | plaintext buffers wiped on drop, at memory speed |
//!
//! The on-disk formats defined here are written down in
//! `docs/formats-crypto.md`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Tests unwrap freely; the non-test build of the library is still linted
// for `unwrap_used` (clippy checks both with --all-targets).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod circle;
pub mod digest;
pub mod error;
pub mod hello;
pub mod identity;
pub mod join;
pub mod kdf;
pub mod recipients;
pub mod seal;
pub mod share;
pub mod sign;
pub mod wipe;

pub use age::x25519::{Identity as AgeIdentity, Recipient as AgeRecipient};
pub use error::Error;
pub use secrecy::{ExposeSecret, SecretString};

/// The result type of every fallible function in this crate.
pub type Result<T> = std::result::Result<T, Error>;
