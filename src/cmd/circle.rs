//! `leave`, `evict` and `purge`: how an envoy leaves the user's circle
//! (see `docs/design.md`, "Deletion, re-adds and departures"). `leave` and
//! `evict` are signed records the agent delivers to
//! the live members; `purge` is a local wipe that tells no one. The rules
//! (who may sign what, what a departure changes) live in
//! `lockbox_net::replica`.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{bail, Context};
use lockbox_crypto::circle::{CircleKey, Endorsement, CIRCLE_PARAMS};
use lockbox_crypto::sign::{PublicKey, Signed};
use lockbox_crypto::SecretString;
use lockbox_net::records::{Leave, LeaveKind};
use lockbox_net::WireName;

use crate::client::{self, Client, ConnectError};
use crate::cmd::agentctl;
use crate::control::{Request, Response};
use crate::envoy;
use crate::passphrase::{self, Attempt, Source};
use crate::paths::Paths;

/// `lockbox leave --yes`: sign and deliver this envoy's LEAVE, then stop the
/// agent and scrub the local state. Refuses to scrub when other members
/// exist and none of them took the leave (they would keep this envoy as a
/// recipient): the leave stays recorded here, and a retry delivers it.
pub fn leave(paths: &Paths, yes: bool) -> anyhow::Result<()> {
    if !yes {
        bail!(
            "leave removes this envoy from the circle and deletes {} and {} here: \
             run lockbox leave --yes",
            paths.state.display(),
            paths.mount.display()
        );
    }
    let mut c = agentctl::connect_or_start(paths)?;
    let (took, asked, members) = match c.call(&Request::Leave)? {
        Response::Delivered {
            took,
            asked,
            members,
        } => (took, asked, members),
        other => return Err(client::into_error(other)),
    };
    drop(c);
    if members > 0 && took == 0 {
        bail!(
            "no other envoy took the leave ({asked} of {members} member(s) reachable), so they \
             would keep sealing files to this one: retry lockbox leave --yes when one is online \
             (or lockbox purge --yes here and lockbox evict from another envoy)"
        );
    }
    println!("left the circle: {took} of {members} other envoy(s) told; they tell the rest");
    scrub(paths)?;
    Ok(())
}

/// `lockbox purge --yes`: stop the agent and wipe this envoy's lockbox for
/// the user, telling no peer (they see it go stale).
pub fn purge(paths: &Paths, yes: bool) -> anyhow::Result<()> {
    if !yes {
        bail!(
            "purge deletes {} and {} here without telling the other envoys: \
             run lockbox purge --yes",
            paths.state.display(),
            paths.mount.display()
        );
    }
    scrub(paths)
}

/// `lockbox evict ENVOY`: remove another envoy from the circle. The
/// passphrase derives the circle key, which signs the eviction; the agent
/// records it, re-seals what it holds without that envoy, and delivers it.
pub fn evict(paths: &Paths, envoy: &str, pass: &Source) -> anyhow::Result<()> {
    let config = envoy::load_config(paths)?;
    if envoy == config.envoy {
        bail!("this is envoy {envoy}: to leave the circle, run lockbox leave --yes");
    }
    let name =
        WireName::new(envoy).map_err(|e| anyhow::anyhow!("bad envoy name {envoy:?}: {e}"))?;
    let file = paths.members().join(format!("{envoy}.endorsement"));
    let member = match fs::read(&file) {
        Ok(bytes) => Signed::<Endorsement>::from_bytes(&bytes)
            .with_context(|| format!("{} is damaged", file.display()))?,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "{envoy} is not a member of this circle (members: {}): check lockbox status",
            member_names(paths).join(", ")
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let circle_text = envoy::read_capped(&paths.circle_public(), 1024)?;
    let circle_public = PublicKey::from_base64(circle_text.trim())
        .with_context(|| format!("{} is damaged", paths.circle_public().display()))?;
    let circle = passphrase::with_tries(pass, "Lockbox passphrase: ", |pass| {
        let pass = SecretString::from(pass.to_string());
        match circle_key(paths, &pass, &config.user)? {
            Some(circle) if circle.public() == circle_public => Ok(Attempt::Done(circle)),
            _ => Ok(Attempt::Wrong(anyhow::anyhow!(
                "wrong passphrase: it does not open this circle's key"
            ))),
        }
    })?;
    let user = WireName::new(config.user.as_str())
        .map_err(|e| anyhow::anyhow!("bad user name {:?}: {e}", config.user))?;
    let record = circle.sign(Leave {
        user,
        envoy: name,
        signing_key: member.body().signing_key,
        kind: LeaveKind::Evict,
        left_unix: now_unix(),
    });
    let mut c = agentctl::connect_or_start(paths)?;
    match c.call(&Request::Evict {
        record: record.to_bytes(),
    })? {
        Response::Delivered {
            took,
            asked,
            members,
        } => {
            println!(
                "evicted {envoy}: {took} of {asked} reachable envoy(s) told ({} other member(s)); \
                 the rest learn it when they catch up",
                members.saturating_sub(1)
            );
            println!(
                "files are re-sealed without {envoy} while unlocked (lockbox status shows the drift)"
            );
            Ok(())
        }
        other => Err(client::into_error(other)),
    }
}

/// The circle key, with the passphrase: from `circle.secret` (sealed to
/// this envoy's identity, which the passphrase unwraps), or — in a store
/// made by protocol 1, which has none — derived from the passphrase.
/// `None`: the passphrase does not open this envoy's identity.
fn circle_key(paths: &Paths, pass: &SecretString, user: &str) -> anyhow::Result<Option<CircleKey>> {
    let sealed = match fs::read(paths.circle_secret()) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eprintln!("deriving the circle key from the passphrase…");
            return Ok(Some(CircleKey::derive(pass, user, CIRCLE_PARAMS)?));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read {}", paths.circle_secret().display()))
        }
    };
    let file = envoy::read_capped_bytes(&paths.identity(), 64 * 1024)?;
    let identity = match lockbox_crypto::identity::unwrap(&file, pass) {
        Ok(id) => id,
        Err(lockbox_crypto::Error::WrongPassphrase) => return Ok(None),
        Err(e) => return Err(e).context("cannot open this envoy's identity"),
    };
    let secret = lockbox_crypto::circle::open_secret(&sealed, &identity)
        .with_context(|| format!("{} is damaged", paths.circle_secret().display()))?;
    Ok(Some(secret.key()))
}

fn member_names(paths: &Paths) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(paths.members())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".endorsement"))
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Stop the agent (which unmounts), then remove `~/.lockbox/` and the
/// `~/lockbox/` folder.
fn scrub(paths: &Paths) -> anyhow::Result<()> {
    match Client::connect(paths) {
        Ok(_) => agentctl::stop(paths)?,
        Err(ConnectError::NotRunning) => {}
        Err(ConnectError::Refused(e)) => return Err(e),
    }
    if lockbox_fs::mount::state(&paths.mount) != lockbox_fs::mount::MountState::NotMounted {
        lockbox_fs::mount::detach(&paths.mount)
            .with_context(|| format!("cannot unmount {}", paths.mount.display()))?;
    }
    remove_all(&paths.state)?;
    remove_all(&paths.mount)?;
    println!(
        "removed {} and {}",
        paths.state.display(),
        paths.mount.display()
    );
    Ok(())
}

fn remove_all(p: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.display())),
    }
}
