//! One envoy's local state as the agent and the CLI load it: paths, config,
//! store and recipient set, plus the operations both run on the store (the
//! agent for its clients, the CLI directly when no agent is running).

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use lockbox_crypto::AgeRecipient;
use lockbox_fs::{Name, Sealed, Store, SweepReport};

use crate::config::Config;
use crate::paths::Paths;

/// A loaded envoy.
pub struct Envoy {
    /// Its paths.
    pub paths: Paths,
    /// Its config.
    pub config: Config,
    /// Its store.
    pub store: Store,
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
        let store = Store::open(&paths.state)?;
        Ok(Envoy {
            paths,
            config,
            store,
        })
    }

    /// The current recipient set from `recipients.txt`.
    pub fn recipients(&self) -> anyhow::Result<Vec<AgeRecipient>> {
        let path = self.paths.recipients();
        let text = read_capped(&path, 1 << 20)?;
        let entries = lockbox_crypto::recipients::parse(&text)
            .with_context(|| format!("{} is damaged", path.display()))?;
        if entries.is_empty() {
            bail!(
                "recipients empty: {} lists no envoy; re-run lockbox init after lockbox purge",
                path.display()
            );
        }
        Ok(lockbox_crypto::recipients::to_age(&entries)?)
    }

    /// Seal `plaintext` as `name` to the current recipients.
    pub fn encrypt(&self, name: &Name, plaintext: impl Read) -> anyhow::Result<Sealed> {
        let recipients = self.recipients()?;
        let sealed = self
            .store
            .seal(name, plaintext, &recipients, self.config.max_file_size)?;
        tracing::info!("sealed {name} ({} bytes)", sealed.plaintext_len);
        Ok(sealed)
    }

    /// Remove `name` (local for now; tombstones come with the mesh).
    pub fn delete(&self, name: &Name) -> anyhow::Result<()> {
        self.store.remove(name)?;
        tracing::info!("deleted {name}");
        Ok(())
    }

    /// Seal plaintext found in the store and, when `~/lockbox` is not a
    /// mount, in the bare folder (SPEC §5.4).
    pub fn sweep(&self) -> anyhow::Result<SweepReport> {
        let recipients = self.recipients()?;
        let max = self.config.max_file_size;
        let mut report = self.store.sweep(&recipients, max)?;
        if !is_mount_point(&self.paths.mount) {
            let bare = self.store.import_dir(&self.paths.mount, &recipients, max)?;
            report.sealed.extend(bare.sealed);
            report.too_large.extend(bare.too_large);
            report.failed.extend(bare.failed);
        }
        Ok(report)
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
    let f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut text = String::new();
    f.take(cap + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as text", path.display()))?;
    if text.len() as u64 > cap {
        bail!("{} is larger than {cap} bytes", path.display());
    }
    Ok(text)
}

/// Write a private (0600) file atomically: temp file, fsync, rename, fsync
/// of the directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path has no parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{:08x}",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Create a directory (and parents) with mode 0700.
pub fn private_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (fs::metadata(path), path.parent()) else {
        return false;
    };
    fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}
