//! Where everything of one envoy lives (see `docs/format.md`, "Files on an
//! envoy"). `HOME` decides all paths, so tests and the demo run several
//! envoys side by side.

use std::path::{Path, PathBuf};

/// The files and folders of one envoy for one user.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `~/.lockbox/`: all state.
    pub state: PathBuf,
    /// `~/lockbox/`: the mount point.
    pub mount: PathBuf,
}

impl Paths {
    /// Paths under an explicit home directory.
    pub fn under(home: impl Into<PathBuf>) -> Self {
        let home = home.into();
        Paths {
            state: home.join(".lockbox"),
            mount: home.join("lockbox"),
        }
    }

    /// Paths under `$HOME`.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() && Path::new(&h).is_absolute() => Ok(Paths::under(h)),
            _ => anyhow::bail!("HOME is not set to an absolute path: set HOME and retry"),
        }
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
    /// `agent.sock`: the control socket.
    pub fn socket(&self) -> PathBuf {
        self.state.join("agent.sock")
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
