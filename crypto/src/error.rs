//! The one error type of `lockbox-crypto`.
//!
//! Every variant names what went wrong and, where the user can do something
//! about it, what to do. Callers match on variants (for example to turn
//! [`Error::NotARecipient`] into a status line, or a tampered store file into
//! `EIO`); the `Display` text is meant to be shown as is.

use std::io;

use crate::seal::{MAX_HEADER_BYTES, MAX_RECIPIENTS, MAX_STANZAS};

/// Everything that can go wrong in `lockbox-crypto`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not open the identity file (the file itself is intact).
    #[error("wrong passphrase")]
    WrongPassphrase,

    /// The identity file is damaged: bad magic, bad length, checksum mismatch,
    /// KDF parameters beyond the caps, or a payload that is not an age key.
    #[error(
        "identity file is corrupt ({0}): restore ~/.lockbox/identity.age from a backup \
         or re-run `lockbox init` after `lockbox purge`"
    )]
    CorruptIdentity(String),

    /// The identity file is intact but was written in a newer format version.
    #[error(
        "identity file has format version {0}, which this lockbox does not know: \
         upgrade lockbox on this envoy"
    )]
    UnsupportedIdentityVersion(u8),

    /// The input does not start with the age v1 magic line.
    #[error(
        "not an age v1 file: the store holds only age-encrypted files; \
         move this file out of ~/.lockbox/store"
    )]
    NotAge,

    /// The age header is longer than [`MAX_HEADER_BYTES`].
    #[error(
        "age header is larger than {MAX_HEADER_BYTES} bytes: refusing to parse it; \
         the file is damaged or hostile, fetch it again from a peer"
    )]
    HeaderTooLarge,

    /// The age header has more than [`MAX_STANZAS`] recipient stanzas.
    #[error(
        "age header has more than {MAX_STANZAS} recipient stanzas: refusing to parse it; \
         the file is damaged or hostile, fetch it again from a peer"
    )]
    TooManyStanzas,

    /// The age file ends before its header or its last chunk does.
    #[error("age file is truncated ({0}): fetch it again from a peer or restore it from a backup")]
    Truncated(String),

    /// None of the file's recipient stanzas opens with this envoy's identity.
    #[error(
        "this file was not sealed to this envoy's key: run `lockbox reencrypt` \
         on an envoy that can read it"
    )]
    NotARecipient,

    /// The age file is malformed or was altered (header syntax, header MAC,
    /// impossible length, a payload chunk that fails authentication).
    #[error("age file is corrupt ({0}): fetch it again from a peer or restore it from a backup")]
    Corrupt(String),

    /// Sealing was asked for with an empty recipient set.
    #[error("no recipients to seal to: the recipient set must list at least one envoy")]
    NoRecipients,

    /// Sealing was asked for with more than [`MAX_RECIPIENTS`] recipients.
    #[error(
        "too many recipients ({0}): at most {MAX_RECIPIENTS} envoys fit in one age header; \
         evict envoys that are gone for good"
    )]
    TooManyRecipients(usize),

    /// A line of `recipients.txt` (or an entry handed to [`crate::recipients::to_age`])
    /// is not valid.
    #[error("recipients.txt line {line}: {reason}; fix or remove that line")]
    BadRecipients {
        /// 1-based line (or entry) number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// An Ed25519 signature does not verify.
    #[error("signature does not verify: the record was altered or was not signed by this key")]
    BadSignature,

    /// A circle record (an endorsement, a succession) was signed by another
    /// circle's key: its envoy is not a member of our circle. Protocol 1
    /// reached this with a different passphrase; in protocol 2 it is also a
    /// circle set up apart that has not yet merged through a join.
    #[error(
        "signed by another circle's key (set up apart, or with a different passphrase): \
         this envoy is not a member of our circle"
    )]
    WrongCircle,

    /// A join's key confirmation did not check: the two envoys did not
    /// start from the same passphrase (or someone between them altered the
    /// exchange, which looks the same). Nothing was learned or changed.
    #[error(
        "join refused: the passphrases differ (or the exchange was altered on the way); \
         check the passphrase on both envoys and try again"
    )]
    JoinRefused,

    /// A signed record or its canonical encoding is malformed.
    #[error("malformed record: {0}")]
    Malformed(String),

    /// Text that should hold a public key, a digest or a signing key does not.
    #[error("invalid {what}: {reason}")]
    BadEncoding {
        /// What was being parsed ("public key", "SHA-256 digest", ...).
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// The signing key file is damaged.
    #[error(
        "signing key file is invalid ({0}): restore ~/.lockbox/signing.key from a backup \
         or re-run `lockbox init` after `lockbox purge`"
    )]
    BadSigningKey(String),

    /// Argon2id parameters (or salt) outside what lockbox accepts.
    #[error("Argon2id parameters rejected: {0}")]
    KdfParams(String),

    /// age refused to build a header for the recipient set.
    #[error("cannot seal: {0}")]
    Seal(String),

    /// An I/O error from a reader or writer handed to this crate.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}
