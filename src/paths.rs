//! Where everything of one envoy lives (see `docs/format.md`, "Files on an
//! envoy", and `docs/operations.md`, "The control socket"). `HOME` decides
//! all paths, so tests and the demo run several envoys side by side;
//! `XDG_RUNTIME_DIR` decides where the control socket is. The CLI and the
//! agent find the socket from the same two inputs through this module, and
//! both reach a socket path longer than `sun_path` takes through a folder
//! descriptor ([`SocketAddr`]).
//!
//! It must not decide anything but where things are: it reads no file but
//! the socket folder's owner and mode.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::bail;

/// The longest path `bind(2)` and `connect(2)` take for a Unix socket:
/// `sun_path` is 108 bytes, its terminating NUL included.
pub const SUN_PATH_MAX: usize = 107;

/// The files and folders of one envoy for one user.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `~/.lockbox/`: all state.
    pub state: PathBuf,
    /// `~/lockbox/`: the mount point.
    pub mount: PathBuf,
    /// `$XDG_RUNTIME_DIR` when set to an absolute path: the control socket
    /// lives in its `lockbox/` folder.
    pub runtime: Option<PathBuf>,
    /// The user's configuration folder: `$XDG_CONFIG_HOME` when set to an
    /// absolute path, else `~/.config`.
    pub config_home: PathBuf,
}

impl Paths {
    /// Paths under an explicit home directory, the socket under `state`.
    pub fn under(home: impl Into<PathBuf>) -> Self {
        let home = home.into();
        Paths {
            state: home.join(".lockbox"),
            mount: home.join("lockbox"),
            runtime: None,
            config_home: home.join(".config"),
        }
    }

    /// Paths under `$HOME`, the socket under `$XDG_RUNTIME_DIR` when that is
    /// set to an absolute path (the XDG base directory rules ignore a
    /// relative one).
    pub fn from_env() -> anyhow::Result<Self> {
        let mut paths = match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() && Path::new(&h).is_absolute() => Paths::under(h),
            _ => anyhow::bail!("HOME is not set to an absolute path: set HOME and retry"),
        };
        paths.runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|r| r.is_absolute());
        if let Some(c) = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|c| c.is_absolute())
        {
            paths.config_home = c;
        }
        Ok(paths)
    }

    /// The folder of the control socket: `$XDG_RUNTIME_DIR/lockbox/`, else
    /// `~/.lockbox/`.
    pub fn socket_dir(&self) -> PathBuf {
        match &self.runtime {
            Some(r) => r.join("lockbox"),
            None => self.state.clone(),
        }
    }

    /// The control socket. Under `$XDG_RUNTIME_DIR/lockbox/` it is
    /// `agent-HASH.sock`, HASH the first 16 hex digits of the SHA-256 of
    /// the state folder's path: one uid may run agents for several HOMEs
    /// (the tests, the demo), each with its own socket. Without it,
    /// `~/.lockbox/agent.sock`.
    pub fn socket(&self) -> PathBuf {
        match &self.runtime {
            Some(_) => {
                use std::os::unix::ffi::OsStrExt;
                let hash = lockbox_crypto::digest::Sha256::of(self.state.as_os_str().as_bytes());
                self.socket_dir()
                    .join(format!("agent-{}.sock", &hash.to_hex()[..16]))
            }
            None => self.state.join("agent.sock"),
        }
    }

    /// Checks the socket's folder under `$XDG_RUNTIME_DIR` (making it,
    /// mode 0700, when `create`): the runtime folder and `lockbox/` in it
    /// must be folders of this uid that no group or other user can enter.
    /// `Ok(false)`: `lockbox/` does not exist (and `create` was not asked).
    /// Without `$XDG_RUNTIME_DIR` there is nothing to check (`~/.lockbox`
    /// is made 0700 by `init`).
    pub fn check_socket_dir(&self, uid: u32, create: bool) -> anyhow::Result<bool> {
        let Some(runtime) = &self.runtime else {
            return Ok(true);
        };
        check_private_dir(runtime, uid, "XDG_RUNTIME_DIR")?;
        let dir = self.socket_dir();
        if create {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("cannot create the socket folder {}", dir.display())))
                }
            }
        } else if !dir.exists() {
            return Ok(false);
        }
        check_private_dir(&dir, uid, "the control socket's folder")?;
        Ok(true)
    }

    /// `config.yaml`.
    pub fn config(&self) -> PathBuf {
        self.state.join("config.yaml")
    }
    /// `identity.age`: the passphrase-wrapped age identity.
    pub fn identity(&self) -> PathBuf {
        self.state.join("identity.age")
    }
    /// `recipients.txt`.
    pub fn recipients(&self) -> PathBuf {
        self.state.join("recipients.txt")
    }
    /// `signing.key`.
    pub fn signing_key(&self) -> PathBuf {
        self.state.join("signing.key")
    }
    /// `circle.pub`: the circle public key derived at init.
    pub fn circle_public(&self) -> PathBuf {
        self.state.join("circle.pub")
    }
    /// `circle.secret`: the circle secret sealed to this envoy's own age
    /// recipient (protocol 2; a store made by protocol 1 gets it at its
    /// first unlock).
    pub fn circle_secret(&self) -> PathBuf {
        self.state.join("circle.secret")
    }

    /// `circle.hello`: the circle's hello key (0600, readable while
    /// locked), with which hello asks are sealed.
    pub fn circle_hello(&self) -> PathBuf {
        self.state.join("circle.hello")
    }

    /// `handover/`: handovers made for the members of a circle this envoy
    /// left in a merge, and that circle's hello key.
    pub fn handover(&self) -> PathBuf {
        self.state.join("handover")
    }

    /// `members/`: one signed endorsement per member envoy.
    pub fn members(&self) -> PathBuf {
        self.state.join("members")
    }
    /// `meta.redb`: version records, tombstones (the mesh's metadata).
    pub fn meta(&self) -> PathBuf {
        self.state.join("meta.redb")
    }
    /// `store/`: ciphertext files.
    pub fn store(&self) -> PathBuf {
        self.state.join("store")
    }
    /// `tls/`: mTLS material.
    pub fn tls(&self) -> PathBuf {
        self.state.join("tls")
    }
    /// The systemd user unit `service install` writes:
    /// `$XDG_CONFIG_HOME/systemd/user/lockbox.service`.
    pub fn systemd_unit(&self) -> PathBuf {
        self.config_home.join("systemd/user/lockbox.service")
    }
    /// `agent.lock`: held (flock) by the running agent.
    pub fn agent_lock(&self) -> PathBuf {
        self.state.join("agent.lock")
    }
    /// `agent.log`: the detached agent's log.
    pub fn log(&self) -> PathBuf {
        self.state.join("agent.log")
    }
}

/// `dir` (named `what` in errors) is a folder of `uid`, not a symbolic
/// link, with no permission for group or others.
fn check_private_dir(dir: &Path, uid: u32, what: &str) -> anyhow::Result<()> {
    let meta = fs::symlink_metadata(dir).map_err(|e| {
        anyhow::anyhow!(
            "{what} {} cannot be read ({e}): make it a folder of yours (mode 0700), \
                 or unset XDG_RUNTIME_DIR",
            dir.display()
        )
    })?;
    let shown = dir.display();
    if !meta.is_dir() {
        bail!("{what} {shown} is not a folder: remove it, or unset XDG_RUNTIME_DIR");
    }
    if meta.uid() != uid {
        bail!(
            "{what} {shown} belongs to uid {}, not to you (uid {uid}): refusing to put the \
             control socket there; remove it, or set XDG_RUNTIME_DIR to a folder of yours",
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "{what} {shown} is open to other users (mode {mode:04o}): refusing to put the \
             control socket there; run chmod 700 {shown}"
        );
    }
    Ok(())
}

/// A Unix socket path short enough for `bind(2)` and `connect(2)`: the
/// socket's own path when it fits in `sun_path`, else
/// `/proc/self/fd/N/NAME`, N an open descriptor of its folder, held as
/// long as this value lives. The socket file itself stays where
/// [`Paths::socket`] says.
pub struct SocketAddr {
    _dir: Option<File>,
    path: PathBuf,
}

impl SocketAddr {
    /// The address of `socket`; opens its folder when the path is too long.
    pub fn of(socket: &Path) -> io::Result<SocketAddr> {
        if socket.as_os_str().len() <= SUN_PATH_MAX {
            return Ok(SocketAddr {
                _dir: None,
                path: socket.to_path_buf(),
            });
        }
        let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a socket path without a folder",
            ));
        };
        let dir = File::open(dir)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(SocketAddr {
            _dir: Some(dir),
            path,
        })
    }

    /// The path to bind or connect to (valid while `self` lives).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_follows_the_runtime_dir_and_differs_per_home() {
        let a = Paths::under("/home/a");
        assert_eq!(a.socket(), PathBuf::from("/home/a/.lockbox/agent.sock"));
        let with = |home: &str| Paths {
            runtime: Some("/run/user/1000".into()),
            ..Paths::under(home)
        };
        let (x, y) = (with("/home/a").socket(), with("/home/b").socket());
        assert!(x.starts_with("/run/user/1000/lockbox/"), "{}", x.display());
        assert_ne!(x, y);
        assert_eq!(
            x,
            with("/home/a").socket(),
            "the same inputs, the same path"
        );
    }

    #[test]
    fn a_long_socket_path_is_reached_through_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        fs::create_dir(&deep).unwrap();
        let sock = deep.join("agent.sock");
        let addr = SocketAddr::of(&sock).unwrap();
        assert!(addr.path().as_os_str().len() <= SUN_PATH_MAX);
        let listener = std::os::unix::net::UnixListener::bind(addr.path()).unwrap();
        assert!(sock.exists(), "the socket is where Paths says");
        let _client =
            std::os::unix::net::UnixStream::connect(SocketAddr::of(&sock).unwrap().path()).unwrap();
        drop(listener);
    }
}
