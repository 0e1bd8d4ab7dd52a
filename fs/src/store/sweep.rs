//! Plaintext the store finds: [`Store::sweep`] seals plaintext files left
//! in the store folder, [`Store::import_dir`] seals every file of the bare
//! `~/lockbox` folder before mounting (whatever its first bytes: all of it
//! is the user's plaintext), and a file that fails to seal is set aside
//! under a new name and recorded as failed. It must not remove a plaintext
//! original before its sealed copy is durable, nor tell a file's state
//! from its name.

use crate::escape::Escape;
use std::fs::{self, File};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::name::Name;
use crate::Error;

use super::{is_executable, Event, SealAttrs, SealTo, State, Store};
use super::{FileState, SweepReport};

impl Store {
    /// Seal every plaintext file of the store in place (`docs/design.md`, "The sweep and
    /// file states"): files up
    /// to `max_size` are sealed and their plaintext replaced atomically;
    /// larger ones stay and are reported; a file that fails to seal is
    /// renamed to a free `NAME.<unix_ts>.failed` and recorded as failed
    /// (the state, not the name, keeps it out of the mesh and the sweep).
    pub fn sweep(&self, recipients: &SealTo, max_size: u64) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        for name in self.names()? {
            // One file that cannot be read must not keep the rest in plaintext.
            let entry = match self.entry(&name) {
                Ok(e) => e,
                Err(Error::NotFound(_)) => continue,
                Err(e) => {
                    tracing::warn!("sweep: skipping {}: {e}", name.escaped());
                    continue;
                }
            };
            if entry.state != FileState::Plaintext {
                continue;
            }
            if entry.stored_size > max_size {
                tracing::warn!(
                    "{} is plaintext and larger than {max_size} bytes: left as is, not synced",
                    entry.name.escaped()
                );
                report.too_large.push(entry.name);
                continue;
            }
            let src = self.path_of(&entry.name);
            let sealed = File::open(&src)
                .map_err(|e| Error::io("open", &src, e))
                .and_then(|f| self.seal(&entry.name, f, recipients, max_size));
            match sealed {
                Ok(_) => {
                    tracing::info!(
                        "sealed plaintext {} found in the store",
                        entry.name.escaped()
                    );
                    report.sealed.push(entry.name);
                }
                Err(e) => match self.mark_failed(&entry.name, &e) {
                    Ok(failed) => report.failed.push(failed),
                    Err(e2) => {
                        tracing::warn!(
                            "could not seal {} ({e}) nor rename it aside ({e2}): it stays \
                             plaintext in the store; move it out and add it again",
                            entry.name.escaped()
                        );
                        report
                            .failed
                            .push((entry.name.clone(), entry.name, e.to_string()));
                    }
                },
            }
        }
        Ok(report)
    }

    /// Seal every regular file found in `dir` (the bare `~/lockbox/` before
    /// mounting), in its folders too when the store has folders, into the
    /// store under the same name, then, once the sealed copies are durable,
    /// remove the plaintext originals and the folders they leave empty. Every file is
    /// plaintext there, an age file too (sealed again, it reads back as the
    /// same bytes). Files over `max_size` stay where they are.
    pub fn import_dir(
        &self,
        dir: &Path,
        recipients: &SealTo,
        max_size: u64,
    ) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        // Sealed, their plaintext not yet removed.
        let mut imported = Vec::new();
        // With folders, the whole tree (its folders made first, each told
        // to the journal); without, the top's files.
        let depth = if self.folders {
            crate::name::MAX_DEPTH
        } else {
            0
        };
        let tree = super::tree::walk(dir, depth)?;
        for folder in &tree.folders {
            if let Err(e) = self.make_folder_all(folder) {
                tracing::warn!("could not make the folder {}: {e}", folder.escaped());
            }
        }
        for name in tree.files {
            let path = dir.join(name.as_os_str());
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if meta.len() > max_size {
                tracing::warn!(
                    "{} is over the size limit: left in place",
                    path.as_os_str().escaped()
                );
                report.too_large.push(name);
                continue;
            }
            // A script stays runnable.
            let attrs = SealAttrs {
                executable: Some(is_executable(&meta)),
                ..SealAttrs::default()
            };
            let result = File::open(&path)
                .map_err(|e| Error::io("open", &path, e))
                .and_then(|f| {
                    self.seal_with(&name, f, recipients, max_size, attrs)
                        .map(|_| ())
                });
            match result {
                Ok(()) => imported.push((name, path)),
                Err(e) => {
                    tracing::warn!("could not seal {}: {e}", path.as_os_str().escaped());
                    report.failed.push((name.clone(), name, e.to_string()));
                }
            }
        }
        // A plaintext original goes only once its sealed copy is durable,
        // the rename into the store included (which grouped syncs would
        // otherwise leave to the next round): a crash in between must not
        // lose both.
        if !imported.is_empty() {
            self.sync_now()?;
        }
        for (name, path) in imported {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!("sealed {} from the unmounted folder", name.escaped()),
                Err(e) => tracing::warn!(
                    "sealed {}, but could not remove its plaintext {} ({e}): remove it by hand",
                    name.escaped(),
                    path.as_os_str().escaped()
                ),
            }
            report.sealed.push(name);
        }
        // The folders emptied of their plaintext go too, deepest first
        // (one still holding something stays).
        for folder in tree.folders.iter().rev() {
            let _ = fs::remove_dir(dir.join(folder.as_os_str()));
        }
        Ok(report)
    }

    /// Set `name` aside as failed: rename it to a free
    /// `NAME.<unix_ts>.failed` (a later second if that name is taken) and
    /// record the new name's state as failed, under the change lock, before
    /// the journal hears of the rename. Returns `(name, new name, why)`.
    pub(super) fn mark_failed(
        &self,
        name: &Name,
        why: &Error,
    ) -> Result<(Name, Name, String), Error> {
        if self.meta.upgrade().is_none() {
            return Err(Error::Meta(
                "the metadata database is not open: cannot record the failed seal".into(),
            ));
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let guard = self.lock_changes();
        let failed = self.free_failed_name(name, ts)?;
        self.rename_locked(name, &failed)?;
        self.set_state_locked(&failed, State::Failed)?;
        let stat = self.local_stat(&failed);
        drop(self.pending(guard, Event::Renamed(name.clone(), failed.clone(), stat)));
        self.deliver_journal();
        tracing::warn!(
            "could not seal {name} ({why}): renamed to {failed} and kept out of sync; rename \
             it (back) to retry",
            name = name.escaped(),
            failed = failed.escaped()
        );
        Ok((name.clone(), failed, why.to_string()))
    }

    /// A name `NAME.<ts>.failed` that holds no file (trying later seconds
    /// while one is taken: the user may hold such a name).
    fn free_failed_name(&self, name: &Name, ts: u64) -> Result<Name, Error> {
        const TRIES: u64 = 1000;
        for t in ts..ts + TRIES {
            let candidate = name.failed(t)?;
            if !self.contains(&candidate) && self.state(&candidate)?.is_none() {
                return Ok(candidate);
            }
        }
        Err(Error::Journal(format!(
            "no free name to set {name} aside as failed ({TRIES} taken)"
        )))
    }
}
