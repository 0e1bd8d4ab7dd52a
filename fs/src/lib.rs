//! `lockbox-fs`: the local state of one envoy. The [`store::Store`] keeps one
//! age file per lockbox file with atomic, durable replacement; [`name::Name`]
//! is the only way a file name gets in. [`fuse::LockboxFs`] is the FUSE
//! adapter over the store, [`mount`] mounts it, and [`pages::Pages`] stages
//! plaintext being written, in memory only.
//!
//! The modules, one job each:
//!
//! - [`store`]: the ciphertext store (`~/.lockbox/store/`): sealing, staging
//!   and installing files atomically, grouped syncs and their recovery,
//!   block tags, the plaintext sweep.
//! - [`sealed`]: [`Sealed`], what a completed seal produced.
//! - [`journal`]: the queue that tells the mesh of every change of the
//!   store, in order, off the caller's path.
//! - [`meta`]: the metadata database (`~/.lockbox/meta.redb`): signed records
//!   per name and the [`meta::LocalStat`] of the store file they describe.
//! - [`grouped`]: [`grouped::GroupedSync`], many changes and one sync per
//!   window (the store folder's and the database's).
//! - [`durable`]: writing small private files atomically and durably, and
//!   private folders (used by the store, `lockbox-net` and the CLI).
//! - [`offload`]: [`offload::OffloadedSink`], a writer whose sink moves to a
//!   second thread for large seals.
//! - [`name`]: [`Name`], a valid path in a lockbox, and its
//!   [`name::Component`]s.
//! - [`escape`]: names (and log lines) as they are shown to people, with
//!   control characters escaped.
//! - [`pages`]: [`pages::Pages`], plaintext staged in memory.
//! - [`keys`]: [`keys::Keys`], what the mount needs from the agent's unlock
//!   session.
//! - [`fuse`]: the FUSE adapter ([`fuse::LockboxFs`], [`fuse::FuseOps`]).
//! - `retag`: block tags made in the background for versions read without
//!   them.
//! - [`mount`]: mounting and unmounting `~/lockbox`.
//! - `test_keys` (tests only): an unlock session for the unit tests.
#![forbid(unsafe_code)]

pub mod durable;
pub mod escape;
pub mod fuse;
pub mod grouped;
pub mod journal;
pub mod keys;
pub mod meta;
pub mod mount;
pub mod name;
pub mod offload;
pub mod pages;
mod retag;
pub mod sealed;
pub mod store;
#[cfg(test)]
mod test_keys;

pub use name::Name;
pub use sealed::{Base, Placed, Sealed};
pub use store::{Entry, FileState, SealTo, Store, SweepReport};

use std::path::{Path, PathBuf};

/// Errors of the store, each saying what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name that cannot be a lockbox file.
    #[error("bad file name '{name}': it {why}")]
    BadName {
        /// The name as given (lossy).
        name: String,
        /// What is wrong with it.
        why: &'static str,
        /// Whether a limit (component, path length, depth) was passed: the
        /// mount answers `ENAMETOOLONG`, else `EINVAL`.
        too_long: bool,
    },
    /// No such file in the store.
    #[error("no file named '{0}' in the lockbox: see lockbox list")]
    NotFound(String),
    /// A folder operation refused, with the error Linux gives for it
    /// (`EEXIST`, `ENOTEMPTY`, `ENOTDIR`, `EINVAL`, …), which the mount
    /// passes on.
    #[error("cannot {op} folder '{name}': {source}")]
    Folder {
        /// What was attempted.
        op: &'static str,
        /// The folder (lossy).
        name: String,
        /// The error, as the store's file system (or lockbox, with the
        /// same errno) gave it.
        source: std::io::Error,
    },
    /// Over the size limit.
    #[error("'{name}' is larger than the {limit}-byte limit")]
    TooLarge {
        /// The file.
        name: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading the plaintext source failed.
    #[error("reading the source failed: {0}")]
    Read(#[source] std::io::Error),
    /// Sealing or opening failed.
    #[error(transparent)]
    Crypto(#[from] lockbox_crypto::Error),
    /// The metadata database failed.
    #[error("metadata store: {0}")]
    Meta(String),
    /// The journal refused or failed to record a change.
    #[error("{0}")]
    Journal(String),
    /// The agent could not say whom to seal to (its recipients file is
    /// missing or damaged).
    #[error("no recipients to seal to: {0}")]
    Recipients(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file-system operation in the store failed.
    #[error("could not {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Lock `m`, going on past a poisoned lock: a panic in one FUSE or
/// background thread must not wedge the whole mount, and every state these
/// locks guard stays consistent between statements.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Make the calling thread at least `niceness` nice, for background work
/// that should yield the CPU to the FUSE threads and their callers. On
/// Linux the niceness is per thread: this one only (and never raised, for
/// an agent started nicer still). `what` names the thread in the debug
/// line of a failure, which leaves it at its priority.
pub(crate) fn lower_priority(niceness: i32, what: &str) {
    let tid = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if now < niceness {
        if let Err(e) = rustix::process::setpriority_process(Some(tid), niceness) {
            tracing::debug!("{what} keeps its priority: {e}");
        }
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}
