//! Receiving a version from a peer: streaming its body into a staged file
//! checked against the record (`stage_body`), then installing it under the
//! store's change lock after deciding again (`install`), moving a losing
//! current version to its conflict copy. It must not decide the rule
//! itself (that is [`super::admission`]).

use lockbox_fs::escape::Escape;
use std::fs;
use std::io::{Read, Write};

use lockbox_crypto::digest::HashingWriter;
use lockbox_crypto::sign::Signed;
use lockbox_fs::store::StagedFile;
use lockbox_fs::Name;

use super::{internal, version_ops, Admission, Refusal, Replica};
use crate::records::FileVersion;
use crate::version::{resolve, Resolution};

impl Replica {
    /// Stream a peer's ciphertext into a staged file, checking its length
    /// and hash against the record. Nothing enters the store here.
    pub fn stage_body(
        &self,
        rec: &FileVersion,
        body: &mut dyn Read,
    ) -> Result<StagedFile, Refusal> {
        let staged = self.stage_checked(rec, body, true)?;
        let mut head = [0u8; 32];
        let n = fs::File::open(staged.path())
            .and_then(|mut f| f.read(&mut head))
            .map_err(internal)?;
        if !lockbox_crypto::seal::is_age(&head[..n]) {
            return Err(Refusal::Bad("the body is not an age file".into()));
        }
        Ok(staged)
    }

    /// [`Replica::stage_body`] for a body already in memory (an item of a
    /// batch), not yet durable: the caller syncs the staged files of a
    /// batch together ([`lockbox_fs::Store::sync_staged`]) before it
    /// installs them.
    pub fn stage_bytes_unsynced(
        &self,
        rec: &FileVersion,
        body: &[u8],
    ) -> Result<StagedFile, Refusal> {
        let staged = self.stage_checked(rec, &mut &body[..], false)?;
        if !lockbox_crypto::seal::is_age(&body[..body.len().min(32)]) {
            return Err(Refusal::Bad("the body is not an age file".into()));
        }
        Ok(staged)
    }

    /// Copy `body` into a staged file (synced if `durable`), checking its
    /// length and hash against `rec`.
    fn stage_checked(
        &self,
        rec: &FileVersion,
        body: &mut dyn Read,
        durable: bool,
    ) -> Result<StagedFile, Refusal> {
        let limit = rec.ciphertext_len;
        let fill = |f: &mut fs::File| {
            let mut w = HashingWriter::new(f);
            let mut limited = body.take(limit + 1);
            let n = std::io::copy(&mut limited, &mut w).map_err(lockbox_fs::Error::Read)?;
            w.flush().map_err(lockbox_fs::Error::Read)?;
            let (_, hash, _) = w.finish();
            Ok((hash, n))
        };
        let staged = if durable {
            self.store.stage(fill)
        } else {
            self.store.stage_unsynced(fill)
        };
        let (staged, (hash, len)) =
            staged.map_err(|e| Refusal::Bad(format!("receiving the body failed: {e}")))?;
        if len != rec.ciphertext_len || hash != rec.hash {
            return Err(Refusal::Bad(format!(
                "the body of {} does not match its record ({len} bytes received, {} expected, \
                 hash {})",
                rec.name,
                rec.ciphertext_len,
                if hash == rec.hash {
                    "matches"
                } else {
                    "differs"
                }
            )));
        }
        Ok(staged)
    }

    /// Put a received, staged version in place under the change lock,
    /// re-deciding against what is held now. Returns where it went.
    pub fn install(
        &self,
        name: &Name,
        rec: &Signed<FileVersion>,
        staged: StagedFile,
    ) -> Result<Admission, Refusal> {
        let _guard = self.store.change_lock();
        super::admission::check_offer(&self.user, &self.members(), name, rec)?;
        let mut target = match self.decide(name, rec.body())? {
            Admission::Same => {
                self.keep_one_record_locked(name, rec)?;
                return Ok(Admission::Same);
            }
            Admission::Store(t) => t,
        };
        let mut touched = Vec::new();
        if self.store.lists_folders() {
            // Kinds at one path (`docs/folders.md`): a folder keeps its path,
            // a file there goes to its conflict copy; a file where a folder
            // above it goes gives way the same.
            if self.store.is_folder(&target) {
                target = rec.body().conflict_name().ok_or_else(|| {
                    Refusal::Bad(format!("{}: a folder holds the path", target.escaped()))
                })?;
            }
            if let Some(parent) = target.parent() {
                let made = self.make_folder_locked(&parent)?;
                // A folder this envoy removed or renamed away comes back
                // for a file written into it elsewhere meanwhile
                // (`docs/folders.md`, "On the mesh"): say where it is.
                if let Some(gone) = made.iter().find(|f| !self.tombstones(f).is_empty()) {
                    self.note_kept(format!(
                        "{} was written on envoy {} into the folder {}, which was removed or \
                         renamed meanwhile: it is kept where it was written",
                        target.escaped(),
                        rec.body().author.as_str().escaped(),
                        gone.escaped()
                    ));
                }
                touched.extend(made);
            }
        }
        let mut ops = Vec::new();
        touched.push(target.clone());
        let before = self
            .record(&target)
            .ok()
            .flatten()
            .map(|r| r.body().vv.clone());
        // The version it replaces under the name, if it loses a conflict, is
        // moved to its own conflict copy first.
        if let Some(cur) = self.record(&target).map_err(internal)? {
            let (a, b) = (cur.body().candidate(), rec.body().candidate());
            if let Resolution::Conflict { loser, .. } = resolve(&a, &b) {
                if loser == &a {
                    if let Some((copy, aside)) = self.set_aside_locked(&target, &cur)? {
                        ops.extend(aside);
                        touched.push(copy);
                    }
                }
            }
        }
        // The record goes with the file: killed before the records are
        // durable, the next start finds it there (`reconcile`). So does
        // the execute bit it names.
        staged
            .set_executable(rec.body().executable)
            .map_err(internal)?;
        staged.attach_record(&rec.to_bytes());
        self.store
            .commit_staged(staged, &target)
            .map_err(internal)?;
        // Stored under its conflict-copy name, it is recorded as one.
        ops.extend(version_ops(&target, rec, self.store.local_stat(&target)));
        self.meta.apply(&ops).map_err(internal)?;
        self.sightings.arrived(&target, before);
        // Stored under a conflict copy (this version, or a later one of
        // the version kept there): the version that lost its name to make
        // it, if this envoy still holds it under the name, gives it up.
        if let Some(origin) = self.give_up_origin_locked(&target)? {
            touched.push(origin);
        }
        // The kernel is told after the lock is released: an invalidation can
        // wait on a FUSE request that itself waits for the lock.
        drop(_guard);
        for n in &touched {
            self.remote_changed(n);
        }
        Ok(Admission::Store(target))
    }
}
