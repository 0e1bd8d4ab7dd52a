//! One envoy's local state as the agent and the CLI load it: paths, config,
//! store and recipient set, plus the operations both run on the store (the
//! agent for its clients, the CLI directly when no agent is running).

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use std::sync::Arc;

use anyhow::{bail, Context};
use lockbox_crypto::sign::SigningKey;
use lockbox_fs::escape::Escape;
use lockbox_fs::store::SealAttrs;
use lockbox_fs::{Name, SealTo, Sealed, Store, SweepReport};
use lockbox_net::replica::{Replica, ReplicaPaths};
use lockbox_net::WireName;

use crate::config::Config;
use crate::paths::Paths;

/// A loaded envoy.
pub struct Envoy {
    /// Its paths.
    pub paths: Paths,
    /// Its config.
    pub config: Config,
    /// Its store (with the replica as journal once the replica is open).
    pub store: Store,
    /// The replica: records, tombstones, members. Open only with the agent
    /// lock held ([`Envoy::load_exclusive`]): its database is single-writer.
    pub replica: Option<Arc<Replica>>,
}

impl Envoy {
    /// Load an initialised envoy, or say how to initialise it.
    pub fn load(paths: Paths) -> anyhow::Result<Envoy> {
        if !paths.identity().exists() {
            bail!(
                "lockbox is not initialised for this user ({} is missing): run lockbox init",
                paths.identity().display()
            );
        }
        let config = load_config(&paths)?;
        // Folders on: names are paths (docs/folders.md).
        let store = Store::open(&paths.state)?.with_folders();
        Ok(Envoy {
            paths,
            config,
            store,
            replica: None,
        })
    }

    /// Load for writing: take the agent lock first (so no agent or other
    /// command writes the store meanwhile), then load, put in place the
    /// seals a killed agent left waiting and remove the leftovers of
    /// interrupted writes (`Store::recover_leftovers`). The lock is held
    /// until the returned guard drops.
    ///
    /// `grouped`: group the store's syncs within this window (the agent);
    /// None syncs per operation (the CLI).
    pub fn load_exclusive(
        paths: Paths,
        grouped: Option<std::time::Duration>,
    ) -> anyhow::Result<(Envoy, AgentLock)> {
        let lock = AgentLock::take(&paths)?;
        let mut envoy = Envoy::load(paths)?;
        if let Some(window) = grouped {
            envoy.store = envoy
                .store
                .clone()
                .with_grouped_syncs(window)
                .with_share_pool();
        }
        let leftovers = envoy.store.recover_leftovers()?;
        if leftovers.removed > 0 {
            let n = leftovers.removed;
            tracing::info!("removed {n} partial file(s) of interrupted writes");
        }
        if !leftovers.recovered.is_empty() {
            let names: Vec<String> = leftovers
                .recovered
                .iter()
                .map(|n| n.escaped().to_string())
                .collect();
            tracing::info!(
                "put in place {} file(s) sealed just before the agent stopped: {}",
                names.len(),
                names.join(", ")
            );
        }
        let replica = envoy.open_replica()?;
        match replica.reconcile() {
            Ok(0) => {}
            Ok(n) => tracing::info!("reconciled {n} record(s) with the store"),
            Err(e) => tracing::warn!("could not reconcile the records with the store: {e}"),
        }
        envoy.store = replica.store().clone();
        envoy.replica = Some(replica);
        Ok((envoy, lock))
    }

    fn open_replica(&self) -> anyhow::Result<Arc<Replica>> {
        let key_path = self.paths.signing_key();
        let key_text = read_capped(&key_path, 4096)?;
        let signing = SigningKey::parse_file(&key_text)
            .with_context(|| format!("{} is damaged", key_path.display()))?;
        let user = WireName::new(self.config.user.as_str())
            .map_err(|e| anyhow::anyhow!("user name: {e}"))?;
        let envoy = WireName::new(self.config.envoy.as_str())
            .map_err(|e| anyhow::anyhow!("envoy name in config.yaml: {e}"))?;
        let paths = ReplicaPaths {
            members: self.paths.members(),
            circle_public: self.paths.circle_public(),
            circle_secret: self.paths.circle_secret(),
            circle_hello: self.paths.circle_hello(),
            handover: self.paths.handover(),
            recipients: self.paths.recipients(),
            meta: self.paths.meta(),
        };
        Replica::open(user, envoy, self.store.clone(), signing, paths)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// The current recipient set from `recipients.txt`.
    pub fn recipients(&self) -> anyhow::Result<SealTo> {
        read_recipients(&self.paths.recipients())
    }

    /// Seal `plaintext` as `name` to the current recipients, making the
    /// folders it is in first (as `mkdir -p` would). The file is given the
    /// owner's execute bit `executable`, or (`None`) keeps the one of the
    /// version it replaces.
    pub fn encrypt(
        &self,
        name: &Name,
        plaintext: impl Read,
        executable: Option<bool>,
    ) -> anyhow::Result<Sealed> {
        let recipients = self.recipients()?;
        if let Some(folder) = name.parent() {
            self.make_folder(&folder)?;
        }
        let attrs = SealAttrs {
            executable,
            ..SealAttrs::default()
        };
        let sealed = self.store.seal_with(
            name,
            plaintext,
            &recipients,
            self.config.max_file_size,
            attrs,
        )?;
        tracing::info!("sealed {} ({} bytes)", name.escaped(), sealed.plaintext_len);
        Ok(sealed)
    }

    /// Make the folder `name` and those above it that are missing (`mkdir
    /// -p`); each is recorded and sent to the mesh.
    pub fn make_folder(&self, name: &Name) -> anyhow::Result<()> {
        for made in self.store.make_folder_all(name)? {
            tracing::info!("made the folder {}", made.escaped());
        }
        Ok(())
    }

    /// Remove `name`: the replica records a signed tombstone and the mesh
    /// fans it out.
    pub fn delete(&self, name: &Name) -> anyhow::Result<()> {
        if self.store.is_folder(name) {
            bail!(
                "{} is a folder: remove what is in it first, or rm -r it in ~/lockbox",
                name.escaped()
            );
        }
        self.store.remove(name)?;
        tracing::info!("deleted {}", name.escaped());
        Ok(())
    }

    /// Seal plaintext found in the store and, when `~/lockbox` is not a
    /// mount, in the bare folder (see `docs/design.md`, "The sweep and file
    /// states").
    pub fn sweep(&self) -> anyhow::Result<SweepReport> {
        let recipients = self.recipients()?;
        let max = self.config.max_file_size;
        let mut report = self.store.sweep(&recipients, max)?;
        // Only a plain folder: through a live mount the files are already ours.
        if lockbox_fs::mount::state(&self.paths.mount) == lockbox_fs::mount::MountState::NotMounted
        {
            let bare = self.store.import_dir(&self.paths.mount, &recipients, max)?;
            report.sealed.extend(bare.sealed);
            report.too_large.extend(bare.too_large);
            report.failed.extend(bare.failed);
        }
        Ok(report)
    }
}

/// The exclusive `flock` on `~/.lockbox/agent.lock`: held by the running
/// agent for its lifetime, and by the CLI while it writes the store with no
/// agent running. Released when dropped (or when the process dies).
pub struct AgentLock(fs::File);

impl AgentLock {
    /// Take the lock without waiting.
    pub fn take(paths: &Paths) -> anyhow::Result<AgentLock> {
        let path = paths.agent_lock();
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => Ok(AgentLock(f)),
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => String::new(),
                    p => format!(" (pid {p})"),
                };
                bail!("an agent is already running{holder}: use it, or run lockbox stop first")
            }
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    /// Record the agent's pid in the lock file (for messages and tests).
    pub fn write_pid(&mut self) -> anyhow::Result<()> {
        self.0.set_len(0)?;
        self.0.seek(std::io::SeekFrom::Start(0))?;
        write!(self.0, "{}", std::process::id())?;
        Ok(())
    }
}

/// The recipient set in a `recipients.txt`.
pub fn read_recipients(path: &Path) -> anyhow::Result<SealTo> {
    let text = read_capped(path, 1 << 20)?;
    let entries = lockbox_crypto::recipients::parse(&text)
        .with_context(|| format!("{} is damaged", path.display()))?;
    if entries.is_empty() {
        bail!(
            "recipients empty: {} lists no envoy; re-run lockbox init after lockbox purge",
            path.display()
        );
    }
    Ok(SealTo {
        keys: lockbox_crypto::recipients::to_age(&entries)?,
        envoys: entries.into_iter().map(|e| e.envoy).collect(),
        tags: None,
    })
}

/// `recipients.txt`, parsed once per version of the file: a seal asks for
/// the recipients at every close, and a `stat` tells whether the file was
/// replaced (`init`, `join`, `leave` write it anew) or edited since.
#[derive(Debug)]
pub struct RecipientsFile {
    path: std::path::PathBuf,
    last: std::sync::Mutex<Option<(RecipientsStamp, SealTo)>>,
}

/// What tells one version of `recipients.txt` from another without reading
/// it: device, inode, length, and modification and change times. Unlike a
/// store file's `lockbox_fs::meta::LocalStat` it takes the change time too,
/// as this file may be edited in place (by hand) rather than replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecipientsStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl RecipientsStamp {
    fn of(path: &Path) -> std::io::Result<RecipientsStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(RecipientsStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

impl RecipientsFile {
    /// The recipients listed at `path`.
    pub fn new(path: std::path::PathBuf) -> RecipientsFile {
        RecipientsFile {
            path,
            last: std::sync::Mutex::new(None),
        }
    }

    /// The current recipients: parsed again only when the file changed.
    pub fn get(&self) -> anyhow::Result<SealTo> {
        let stamp = RecipientsStamp::of(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, to)) = last.as_ref() {
            if *seen == stamp {
                return Ok(to.clone());
            }
        }
        let to = read_recipients(&self.path)?;
        // A change during the read shows in the next stamp, so that version
        // is parsed again rather than remembered under an older stamp.
        if RecipientsStamp::of(&self.path).ok() == Some(stamp) {
            *last = Some((stamp, to.clone()));
        }
        Ok(to)
    }
}

/// Read and validate `config.yaml` (absent = defaults).
pub fn load_config(paths: &Paths) -> anyhow::Result<Config> {
    let path = paths.config();
    let text = match fs::metadata(&path) {
        Ok(_) => read_capped(&path, 1 << 20)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut config =
        Config::parse(&text).with_context(|| format!("{} is invalid", path.display()))?;
    if config.user.is_empty() {
        config.user = crate::sys::user_name();
    }
    Ok(config)
}

/// Read a small text file, refusing anything over `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> anyhow::Result<String> {
    String::from_utf8(read_capped_bytes(path, cap)?)
        .with_context(|| format!("cannot read {} as text", path.display()))
}

/// Read a small file, refusing one larger than `cap` bytes.
pub fn read_capped_bytes(path: &Path, cap: u64) -> anyhow::Result<Vec<u8>> {
    let f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > cap {
        bail!("{} is larger than {cap} bytes", path.display());
    }
    Ok(bytes)
}

/// Write a private (0600) file atomically: temp file, fsync, rename, fsync
/// of the directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path has no parent")?;
    lockbox_fs::durable::write_private_file(path, bytes, lockbox_fs::durable::Existing::Replace)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(lockbox_fs::durable::sync_dir(dir)?)
}

/// Create a directory (and parents) with mode 0700.
pub fn private_dir(path: &Path) -> anyhow::Result<()> {
    Ok(lockbox_fs::durable::ensure_private_dir(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbox_crypto::identity;

    fn line(envoy: &str) -> String {
        format!("{}  # {envoy}\n", identity::generate().to_public())
    }

    #[test]
    fn recipients_are_parsed_again_only_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients.txt");
        fs::write(&path, line("alpha")).unwrap();
        let file = RecipientsFile::new(path.clone());
        assert_eq!(file.get().unwrap().envoys, ["alpha"]);
        // Replaced atomically, as init, join and leave do.
        let tmp = dir.path().join("next");
        fs::write(&tmp, line("alpha") + &line("bravo")).unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert_eq!(file.get().unwrap().envoys, ["alpha", "bravo"]);
        assert_eq!(file.get().unwrap().keys.len(), 2);
        // Edited in place, to the same length.
        let text = fs::read_to_string(&path).unwrap().replace("bravo", "zulu_");
        fs::write(&path, text).unwrap();
        assert_eq!(file.get().unwrap().envoys, ["alpha", "zulu_"]);
        // Damaged: an error naming the file, not the remembered list.
        fs::write(&path, "not a recipient\n").unwrap();
        let err = format!("{:#}", file.get().unwrap_err());
        assert!(err.contains("recipients.txt is damaged"), "{err}");
        fs::remove_file(&path).unwrap();
        assert!(file.get().is_err());
    }
}
