//! The block tags kept for store files, in `~/.lockbox/tags/<name>` (a tree
//! like the store's: a name in a folder has its tags in that folder there).
//!
//! A seal made while unlocked also leaves the block tags of its ciphertext
//! (see `lockbox_crypto::seal::tags`): an index only this envoy can make or
//! check, which lets the mount answer a small read of a large file from the
//! 4 KiB blocks it needs. The tags are written before their version becomes
//! visible, move with renames and go with removes; tags that do not belong
//! to a name's current version (a version received from a peer, a crash
//! between two steps) are told apart by their binding and ignored. Tags
//! made after the fact for a version sealed without them
//! ([`Store::attach_tags`], from `crate::retag`) are kept only while that
//! version is still the name's. Tags are a cache: nothing here may lose
//! data when it fails.

use crate::escape::Escape;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use lockbox_crypto::seal::tags::{self, BlockTags, TagKey};

use crate::name::Name;
use crate::{lock, Error};

use super::Store;

impl Store {
    /// Where `name`'s block tags are kept.
    pub(super) fn tags_path(&self, name: &Name) -> PathBuf {
        self.tags.join(name.as_os_str())
    }

    /// Keep `tags` as those of `name`'s next version, before that version
    /// becomes visible, and return them (for the mount's memory); without
    /// tags (sealed while locked, or a file of one chunk, which the tagger
    /// leaves out), drop the old ones. Tags are a cache: a failure to write
    /// them costs speed, never data, so it is only logged.
    pub(super) fn keep_tags(&self, name: &Name, tags: Option<BlockTags>) -> Option<Arc<BlockTags>> {
        let Some(tags) = tags else {
            self.drop_tags(name);
            return None;
        };
        if let Err(e) = self.write_tags(name, &tags) {
            tracing::debug!("no block tags kept for {}: {e}", name.escaped());
            self.drop_tags(name);
        }
        Some(Arc::new(tags))
    }

    /// Put `tags` in `tags/<name>` (a temp file renamed over it, no sync:
    /// a lost index costs speed only).
    pub(super) fn write_tags(&self, name: &Name, tags: &BlockTags) -> Result<(), Error> {
        let (mut staged, mut file) = self.new_temp()?;
        file.write_all(&tags.encode())
            .map_err(|e| Error::io("write", &staged.path, e))?;
        let dest = self.tags_path(name);
        super::tree::rename_making_folders(&self.tags, &staged.path, name)
            .map_err(|e| Error::io("rename into", &dest, e))?;
        staged.path = PathBuf::new();
        lock(&self.tagged).insert(name.clone());
        Ok(())
    }

    /// Keep `tags`, made after the fact from `version` (an open store file
    /// of `name`, [`Payload::tag_blocks`](lockbox_crypto::seal::Payload::tag_blocks)), as
    /// `name`'s tags if `version` is still its current version; `false`
    /// (nothing written) if the name moved on meanwhile. No rename or
    /// remove of the name runs between the check and the write. A seal
    /// of the name whose new version is not yet in place may have its
    /// fresh tags replaced by these, which its version then finds stale:
    /// that costs speed (reads by chunk) until its next seal, never data.
    pub fn attach_tags(
        &self,
        name: &Name,
        version: &File,
        tags: &BlockTags,
    ) -> Result<bool, Error> {
        let _changes = self.lock_changes();
        let ours = version
            .metadata()
            .map_err(|e| Error::io("stat", &self.path_of(name), e))?;
        let current = self.metadata(name).ok();
        if current.is_none_or(|c| (c.dev(), c.ino()) != (ours.dev(), ours.ino())) {
            return Ok(false);
        }
        self.write_tags(name, tags)?;
        Ok(true)
    }

    /// Forget `name`'s block tags (a missing file is fine).
    pub(super) fn drop_tags(&self, name: &Name) {
        if !lock(&self.tagged).remove(name) {
            return;
        }
        let p = self.tags_path(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("cannot remove {}: {e}", p.display()),
        }
    }

    /// `from`'s block tags become `to`'s (which lose theirs if `from` had none).
    pub(super) fn move_tags(&self, from: &Name, to: &Name) {
        if !lock(&self.tagged).remove(from) {
            self.drop_tags(to);
            return;
        }
        match super::tree::rename_making_folders(&self.tags, &self.tags_path(from), to) {
            Ok(_) => {
                lock(&self.tagged).insert(to.clone());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.drop_tags(to),
            Err(e) => {
                tracing::debug!("cannot move the block tags of {}: {e}", from.escaped());
                self.drop_tags(from);
                self.drop_tags(to);
            }
        }
    }

    /// The block tags of `name` made with `key`, if there are some for the
    /// version whose [`Payload`](lockbox_crypto::seal::Payload) reads `binding` and
    /// `plaintext_len`. Missing, stale or damaged tags are `None` (a read
    /// then decrypts whole chunks); the file is read only if its size is
    /// the one such tags have.
    pub fn read_tags(
        &self,
        name: &Name,
        key: &TagKey,
        binding: &tags::Binding,
        plaintext_len: u64,
    ) -> Option<BlockTags> {
        let p = self.tags_path(name);
        let file = File::open(&p).ok()?;
        let want = tags::index_len(plaintext_len);
        if file.metadata().ok()?.len() != want {
            tracing::debug!("{}: not the size of this version's tags", p.display());
            return None;
        }
        let mut bytes = Vec::with_capacity(want as usize);
        file.take(want).read_to_end(&mut bytes).ok()?;
        BlockTags::decode(&bytes, key, binding, plaintext_len)
            .map_err(|e| tracing::debug!("{}: {e}", p.display()))
            .ok()
    }
}
