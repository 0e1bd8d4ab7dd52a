//! `lockbox-net`: the mesh that carries a user's ciphertext between envoys
//! (see `docs/design.md`, "The mesh").
//!
//! Envoys find each other by a multicast announcement, talk HTTP/2 over
//! mutual TLS on the peer port, push each newly sealed version to every
//! live peer (fan-out), and pull and merge whole tables when a peer's
//! digests differ from their own (anti-entropy, which is also how an envoy
//! that was away catches up). The byte layouts are written down in
//! `docs/protocol.md`.
//!
//! The crate is built in order of purity. The codecs and rules take bytes
//! and values and return bytes and values, with no sockets, clocks or
//! randomness, and are tested on their own; the sockets, TLS and HTTP are a
//! thin shell around them. Everything that arrives from the network is
//! untrusted: each parser caps its input before reading it, rejects
//! trailing bytes, and returns an error rather than panicking.
//!
//! The modules:
//!
//! - [`announce`] — the multicast announcement datagram: encode and parse
//!   (pure);
//! - `codec` — the byte reader and writer the wire formats share (pure);
//! - [`name`] — user and envoy names as they travel, and their text rules
//!   (pure);
//! - [`version`] — version vectors and the concurrent-edit rule (pure);
//! - [`records`] — the signed records (file versions, tombstones,
//!   resurrects, leaves), record lists, table digests and the deletion
//!   rule (pure);
//! - [`proof`] — session proofs: a member's signature over the TLS
//!   session's exporter value, which proves membership on each connection
//!   (pure);
//! - [`join`] — what two circles exchange once a join showed they share
//!   the passphrase, and the merge rule (pure);
//! - [`handover`] — what the envoy whose circle lost a merge leaves for
//!   the other members of that circle, so they follow even while locked
//!   (pure);
//! - [`discovery`] — the multicast socket that sends and receives
//!   announcements;
//! - [`tls`] — the fleet certificate authority, certificates, and the
//!   mutual-TLS configurations of the peer port;
//! - [`replica`] — one envoy's copy of the lockbox as the mesh sees it: the
//!   store, the signed records, the tables and the members, and the rules
//!   that change them (the admission rule is pure, in its `admission`
//!   part);
//! - [`mesh`] — the running mesh around one replica: the peer server (whose
//!   routes, [`mesh::route`], are pure) and client, the hello exchange,
//!   catch-up, fan-out and the discovery rounds.
//!
//! [`Error`] is what the wire parsers return; the replica and the mesh
//! have their own error types ([`replica::ReplicaError`],
//! [`replica::Refusal`] for what a peer sent, [`mesh::PeerError`]).

#![forbid(unsafe_code)]
// Tests may unwrap; library code is still linted by the non-test build.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod announce;
mod codec;
pub mod discovery;
#[cfg(test)]
mod fuzz_corpus;
pub mod handover;
pub mod join;
pub mod mesh;
pub mod name;
pub mod proof;
pub mod records;
pub mod replica;
pub mod tls;
pub mod version;

pub use announce::Announcement;
pub use name::{TextFault, WireName};
pub use version::{Causality, VersionVector};

/// Everything that can go wrong in `lockbox-net`.
///
/// Most variants describe input from a peer that was rejected; such input is
/// dropped and changes nothing. The `Display` text says what was wrong and,
/// where someone can act on it, what to do, so it can be logged or shown as
/// is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is longer than the format allows; it was not parsed.
    #[error(
        "{what} is {len} bytes, more than the {max}-byte limit: dropped unread \
         (it is damaged, hostile, or from an incompatible program)"
    )]
    TooLarge {
        /// What was being read, e.g. `"announcement"`.
        what: &'static str,
        /// The length of the input.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },

    /// The datagram does not start with the announcement magic `LBXA`.
    #[error(
        "not a lockbox announcement (starts with {found:02x?}, expected \"LBXA\"): another \
         program sends to this multicast group; if this repeats, set a different \
         `multicast` address in ~/.lockbox/config.yaml on every envoy"
    )]
    BadMagic {
        /// The first four bytes that were found.
        found: [u8; 4],
    },

    /// The announcement is from a wire version this build does not speak.
    #[error(
        "announcement uses wire version {found}, but this lockbox speaks only version \
         {supported}: upgrade lockbox on this envoy to hear that peer"
    )]
    UnsupportedVersion {
        /// The version byte in the datagram.
        found: u8,
        /// The version this build speaks.
        supported: u8,
    },

    /// The input ends before a field does.
    #[error(
        "{what} is truncated: it ends inside {field}; the sender is damaged or is \
         not lockbox"
    )]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// The field that was cut short.
        field: &'static str,
    },

    /// The input goes on after its last field.
    #[error(
        "{what} has {count} unexpected byte(s) after its last field; the sender is \
         damaged or speaks a different format"
    )]
    TrailingBytes {
        /// What was being read.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },

    /// A user name, envoy name or age recipient breaks the text rules.
    #[error("{field} {fault}")]
    BadText {
        /// Which text it was, e.g. `"announced envoy name"`.
        field: &'static str,
        /// What is wrong with it.
        fault: TextFault,
    },

    /// The announcement gives 0 as the peer port.
    #[error(
        "announced peer port is 0: the sender announced before its peer server was \
         listening, which is a bug in the sender"
    )]
    ZeroPort,

    /// A version vector has more entries than the format allows.
    #[error(
        "version vector has {count} entries, more than the limit of {max}: a circle \
         never has that many envoys, so the record is damaged or hostile"
    )]
    TooManyEntries {
        /// The number of entries.
        count: usize,
        /// The largest number accepted.
        max: usize,
    },

    /// A record list announces more records than its table takes.
    #[error(
        "{what} announces {count} records, more than the limit of {max}: dropped unread \
         (the sender is damaged or hostile)"
    )]
    TooManyRecords {
        /// What was being read, e.g. `"record list"`.
        what: &'static str,
        /// The count announced.
        count: usize,
        /// The largest count accepted.
        max: usize,
    },

    /// A version vector's entries are not sorted by envoy name.
    #[error(
        "version vector entry {envoy:?} is out of order (entries must be sorted by \
         envoy name): the record is not canonical, so it is damaged or hostile"
    )]
    UnsortedEntries {
        /// The first entry found out of order.
        envoy: String,
    },

    /// A version vector names the same envoy twice.
    #[error("version vector names envoy {envoy:?} twice: the record is damaged or hostile")]
    DuplicateEntry {
        /// The repeated envoy name.
        envoy: String,
    },

    /// A version vector has an entry whose counter is 0.
    #[error(
        "version vector entry {envoy:?} has counter 0 (absent envoys are left out, \
         never written as 0): the record is not canonical, so it is damaged or hostile"
    )]
    ZeroCounter {
        /// The envoy whose counter is 0.
        envoy: String,
    },

    /// Bumping a counter that is already at its maximum.
    #[error(
        "version counter of envoy {envoy:?} is at its maximum (2^64-1) and cannot be \
         bumped: only a damaged or hostile envoy sends such a version; find the envoy \
         that signed it and evict it if it is not yours"
    )]
    CounterOverflow {
        /// The envoy whose counter is full.
        envoy: String,
    },
}
