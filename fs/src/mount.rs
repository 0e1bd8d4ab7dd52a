//! Mounting `~/lockbox`: cleaning up a stale mount a killed agent left
//! ("Transport endpoint is not connected"), keeping the mount point a
//! private (0700) folder whatever the umask, starting the multi-threaded
//! fuser session, waiting until the mount answers, and unmounting after
//! sealing whatever is still open.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use fuser::{BackgroundSession, MountOption};

use crate::fuse::{FuseOps, LockboxFs};

/// How long an unmount waits for the FUSE session to end (see
/// [`Mount::unmount`]).
const UNMOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What is at the mount point now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    /// A plain folder (or nothing).
    NotMounted,
    /// A mount whose FUSE server is gone (ENOTCONN).
    Stale,
    /// A live mount.
    Mounted,
}

/// Inspect the mount point: a mount is one listed in `/proc/self/mountinfo`;
/// whether it is alive is asked with `statfs`, which always reaches the FUSE
/// server (a `stat` may be answered from the kernel's cache of a dead one).
pub fn state(path: &Path) -> MountState {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !is_listed(&mountinfo, &as_the_kernel_names(path)) {
        return MountState::NotMounted;
    }
    match rustix::fs::statfs(path) {
        Err(e) if e == rustix::io::Errno::NOTCONN => MountState::Stale,
        _ => MountState::Mounted,
    }
}

/// `path` as mountinfo lists it: the kernel names a mount point by its
/// resolved path, so a HOME reached through a symbolic link (Fedora's
/// atomic desktops link /home to /var/home) or written with `..` or `//`
/// would never match. Only the folder holding the mount point is resolved:
/// the mount point itself may be a dead mount, which cannot be looked into.
fn as_the_kernel_names(path: &Path) -> PathBuf {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_owned();
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    match std::fs::canonicalize(parent) {
        Ok(p) => p.join(name),
        Err(_) => path.to_owned(),
    }
}

/// Whether `path` is a mount point in a mountinfo text (field 5; spaces and
/// other special bytes are octal-escaped there).
fn is_listed(mountinfo: &str, path: &Path) -> bool {
    let want = path
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040");
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Detach a mount: `umount2(MNT_DETACH)` as root, else `fusermount3 -u -z`.
pub fn detach(path: &Path) -> io::Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::PERM => {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(path)
                .output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount3 -u -z {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        }
        Err(e) => Err(io::Error::from_raw_os_error(e.raw_os_error())),
    }
}

/// What [`ensure_private`] found at the mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPoint {
    /// It was missing: created 0700.
    Created,
    /// It had other modes (given here): now 0700.
    Tightened {
        /// Its mode bits before.
        was: u32,
    },
    /// A 0700 folder already.
    Private,
}

/// Make the (unmounted) mount point a folder of mode 0700, whatever the
/// umask: created with that mode and set to it again (a umask can only
/// take bits away), or tightened if it exists with any other mode (logged:
/// a file written in a wider folder while no agent ran may have been seen).
/// While it is a bare folder it is where a program writes plaintext, so
/// nobody else may look into it. Not for a live mount: a chmod there would
/// reach the mount, not the folder under it.
pub fn ensure_private(path: &Path) -> io::Result<MountPoint> {
    const MODE: u32 = 0o700;
    let found = match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let was = meta.permissions().mode() & 0o7777;
            if was == MODE {
                return Ok(MountPoint::Private);
            }
            MountPoint::Tightened { was }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is not a folder: move it away so that lockbox can mount there",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(MODE)
                .create(path)?;
            MountPoint::Created
        }
        Err(e) => return Err(e),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(MODE))?;
    if let MountPoint::Tightened { was } = found {
        tracing::warn!(
            "{} had mode {was:04o}: tightened to 0700 (only you may look into it)",
            path.display()
        );
    }
    Ok(found)
}

/// A live mount of the lockbox file system.
pub struct Mount {
    path: PathBuf,
    fs: Arc<LockboxFs>,
    session: Option<BackgroundSession>,
}

impl Mount {
    /// Mount `fs` on `path` with `threads` FUSE worker threads; returns once
    /// the mount answers. A stale mount is detached first.
    pub fn start(fs: Arc<LockboxFs>, path: &Path, threads: usize) -> io::Result<Mount> {
        match state(path) {
            MountState::Stale => {
                tracing::warn!(
                    "{} is a stale mount left by a stopped agent: detaching it",
                    path.display()
                );
                detach(path)?;
            }
            MountState::Mounted => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is already a mount point: unmount it first",
                        path.display()
                    ),
                ))
            }
            MountState::NotMounted => {}
        }
        ensure_private(path)?;
        let mut config = fuser::Config::default();
        // No `default_permissions`: with it the kernel asks for the folder's
        // attributes again before each create, rename or unlink that follows
        // another (each one invalidates them), an extra round trip per
        // operation. Without `allow_other` the kernel lets only the owner
        // use the mount, and for the owner every mode lockbox shows (a 0700
        // folder of 0600 files; chmod is ignored) allows everything but
        // exec, which the kernel still checks and `access` answers.
        config.mount_options = vec![
            MountOption::FSName("lockbox".into()),
            MountOption::Subtype("lockbox".into()),
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::RW,
        ];
        config.n_threads = Some(threads.max(1));
        config.clone_fd = threads > 1;
        let session = fuser::Session::new(FuseOps(fs.clone()), path, &config)?;
        let session = session.spawn()?;
        fs.set_notifier(session.notifier());
        // Readiness: this stat is answered by the session we just started.
        std::fs::metadata(path)?;
        if state(path) != MountState::Mounted {
            return Err(io::Error::other(format!(
                "{} did not become a mount",
                path.display()
            )));
        }
        Ok(Mount {
            path: path.to_owned(),
            fs,
            session: Some(session),
        })
    }

    /// The mounted file system.
    pub fn fs(&self) -> &Arc<LockboxFs> {
        &self.fs
    }

    /// Seal what is still open, then unmount. If files are still open (the
    /// unmount is refused as busy, or for an ordinary user made lazy), the
    /// mount is detached instead: it leaves the folder at once, and what
    /// still holds a file in it gets ENOTCONN once the agent has exited.
    pub fn unmount(mut self) -> io::Result<()> {
        self.shutdown()
    }

    /// The one shutdown path, for [`Mount::unmount`] and for `Drop`.
    fn shutdown(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let sealed = self.fs.seal_all();
        if sealed > 0 {
            tracing::info!("sealed {sealed} open file(s) before unmounting");
        }
        // An ordinary user's unmount is lazy (`fusermount3 -u -z`): the
        // kernel ends the session only once nothing on the mount is open,
        // so waiting for the session's threads would wait as long as a
        // shell sits in ~/lockbox. Wait a little, then go on: the agent's
        // exit closes the FUSE device, and what still has a file there
        // gets ENOTCONN from then on.
        let (done, waited) = std::sync::mpsc::channel();
        let joined = std::thread::Builder::new()
            .name("unmount".into())
            .spawn(move || {
                let _ = done.send(session.umount_and_join());
            });
        let result = match joined {
            Ok(_) => waited.recv_timeout(UNMOUNT_WAIT).ok(),
            Err(e) => Some(Err(e)),
        };
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(
                    "unmount of {} failed ({e}): detaching it",
                    self.path.display()
                );
                if state(&self.path) != MountState::NotMounted {
                    detach(&self.path)?;
                }
            }
            None => tracing::warn!(
                "{} is still in use (a program has a file or folder open in it): it is \
                 detached and answers no more once the agent has exited",
                self.path.display()
            ),
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lookup_is_exact_and_unescapes() {
        let info = "36 35 98:0 / /home/a/lockbox rw - fuse lockbox rw\n\
                    37 35 98:0 / /home/b\\040c/lockbox rw - fuse lockbox rw\n";
        assert!(is_listed(info, Path::new("/home/a/lockbox")));
        assert!(!is_listed(info, Path::new("/home/a")));
        assert!(!is_listed(info, Path::new("/home/a/lockbox/x")));
        assert!(is_listed(info, Path::new("/home/b c/lockbox")));
    }

    #[test]
    fn a_mount_point_is_named_as_the_kernel_names_it() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("home")).unwrap();
        std::os::unix::fs::symlink(real.join("home"), real.join("link")).unwrap();
        assert_eq!(
            as_the_kernel_names(&real.join("link/lockbox")),
            real.join("home/lockbox")
        );
        assert_eq!(
            as_the_kernel_names(&real.join("home/../home//lockbox")),
            real.join("home/lockbox")
        );
        // The mount point itself is not looked into (it may be dead).
        assert_eq!(
            as_the_kernel_names(&real.join("home/missing")),
            real.join("home/missing")
        );
    }

    #[test]
    fn the_mount_point_is_made_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lockbox");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(ensure_private(&p).unwrap(), MountPoint::Created);
        assert_eq!(mode(&p), 0o700);
        assert_eq!(ensure_private(&p).unwrap(), MountPoint::Private);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o2755)).unwrap();
        assert_eq!(
            ensure_private(&p).unwrap(),
            MountPoint::Tightened { was: 0o2755 }
        );
        assert_eq!(mode(&p), 0o700);
        let file = d.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = ensure_private(&file).unwrap_err();
        assert!(err.to_string().contains("is not a folder"), "{err}");
    }

    #[test]
    fn a_plain_folder_is_not_mounted() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(state(d.path()), MountState::NotMounted);
    }
}
