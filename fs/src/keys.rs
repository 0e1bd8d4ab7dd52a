//! What the file system needs from the agent's unlock session: the
//! identity that decrypts, the recipients to seal to, the block-tag key,
//! and the hooks the mount calls after a seal or a delete.
//!
//! It owns only the [`Keys`] trait, so that the FUSE adapter
//! ([`crate::fuse`]) and the background retagger (`crate::retag`) both
//! use it without depending on each other. It must not hold keys itself:
//! the agent implements it (`AgentKeys` in `src/agent.rs`), the unit
//! tests with `test_keys`.

use std::sync::Arc;

use lockbox_crypto::seal::tags::TagKey;
use lockbox_crypto::AgeIdentity;

use crate::name::Name;
use crate::sealed::Sealed;
use crate::store::SealTo;

/// What the file system needs from the agent.
pub trait Keys: Send + Sync + 'static {
    /// The identity for a decryption, or `None` when locked. Asked only for
    /// the user's own reads through the mount (and writes that read the old
    /// content), so it resets the idle timer: the idle lock counts the
    /// user's use only (`docs/design.md`, "The session").
    fn identity(&self) -> Option<Arc<AgeIdentity>>;
    /// The user wrote through the mount: resets the idle timer like a
    /// read, though a write needs no key. Never called for the mount's own
    /// work (sealing, invalidating, background tagging).
    fn used(&self) {}
    /// Whether the session is unlocked (without resetting the idle timer).
    fn is_unlocked(&self) -> bool;
    /// The recipients to seal to (public keys; available while locked).
    fn recipients(&self) -> Result<SealTo, crate::Error>;
    /// The key seals tag their blocks with and reads check them against
    /// (see `lockbox_crypto::seal::tags`), while unlocked; without
    /// resetting the idle timer. `None`: seals go without tags and reads
    /// by whole chunk.
    fn tag_key(&self) -> Option<Arc<TagKey>> {
        None
    }
    /// A version was sealed through the mount (the mesh queues it).
    fn sealed(&self, _name: &Name, _sealed: &Sealed) {}
    /// A name was deleted through the mount.
    fn deleted(&self, _name: &Name) {}
}
