//! Durable private files: the one way lockbox writes a small file of its
//! own (keys, certificates, config, state) so that a crash leaves the old
//! or the new content whole, never a torn one, readable by the owner only.
//!
//! It owns the temp-file-then-rename dance, the `fsync` of a file and of
//! its folder, and private (0700) folders. It must not know what the bytes
//! are: callers (the store, `lockbox-net`'s TLS files, the CLI's state)
//! map its errors to their own and choose when to sync a folder.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::Error;

/// Create a directory (and parents) with mode 0700, fixing its mode if
/// it exists with another.
pub fn ensure_private_dir(d: &Path) -> Result<(), Error> {
    fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    let meta = d.metadata().map_err(|e| Error::io("stat", d, e))?;
    if meta.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod", d, e))?;
    }
    Ok(())
}

/// Whether [`write_private_file`] may replace a file that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it atomically.
    Replace,
    /// Refuse with `AlreadyExists`, even if it appears meanwhile.
    Keep,
}

/// Write a small 0600 file atomically: a temp file in the same folder
/// (`.NAME.tmp-XXXXXXXX`), fsync, then rename over `path` — or, with
/// [`Existing::Keep`], a hard link that fails if `path` exists. A failure
/// removes the temp file. The caller syncs the folder ([`sync_dir`]), once
/// for several files.
pub fn write_private_file(path: &Path, bytes: &[u8], existing: Existing) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let base = path
        .file_name()
        .map(|f| f.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{base}.tmp-{:08x}", rand::random::<u32>()));
    let result = (|| -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match existing {
            Existing::Replace => fs::rename(&tmp, path),
            Existing::Keep => match fs::hard_link(&tmp, path) {
                Ok(()) => fs::remove_file(&tmp),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
                // A file system without hard links: check, then rename.
                Err(_) if path.symlink_metadata().is_ok() => {
                    Err(io::ErrorKind::AlreadyExists.into())
                }
                Err(_) => fs::rename(&tmp, path),
            },
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory so a rename or unlink in it is durable.
pub fn sync_dir(d: &Path) -> Result<(), Error> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("sync", d, e))
}
