//! `encrypt`, `decrypt`, `delete`, `list`: through the agent when it runs,
//! otherwise directly on the store (except `decrypt`, which needs the
//! agent's unlock session). Names are printed escaped
//! (`lockbox_fs::escape`).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use lockbox_fs::escape::Escape;
use lockbox_fs::Name;

use crate::client::{self, Client, ConnectError};
use crate::control::{Failure, Request, Response};
use crate::envoy::Envoy;
use crate::paths::Paths;
use crate::status::{render_list, ListEntry};

fn agent(paths: &Paths) -> anyhow::Result<Option<Client>> {
    match Client::connect(paths) {
        Ok(c) => Ok(Some(c)),
        Err(ConnectError::NotRunning) => Ok(None),
        Err(ConnectError::Refused(e)) => Err(e),
    }
}

/// `lockbox encrypt PATH [--name NAME]`.
pub fn encrypt(paths: &Paths, path: &Path, name: Option<std::ffi::OsString>) -> anyhow::Result<()> {
    let name = match name {
        Some(n) => n,
        None => path.file_name().map(OsStr::to_owned).with_context(|| {
            format!("{} has no file name: give one with --name", path.display())
        })?,
    };
    let name = Name::from_os(&name)?;
    let mut src = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = src.metadata()?;
    if meta.is_dir() {
        bail!("{} is a folder: lockbox holds only files", path.display());
    }
    let len = match agent(paths)? {
        Some(mut c) => {
            match c.call(&Request::Encrypt {
                name: name.as_bytes().to_vec(),
            })? {
                Response::Ok => {}
                other => return Err(client::into_error(other)),
            }
            c.send_data(&mut src)?;
            match c.response()? {
                Response::Encrypted { len } => len,
                other => return Err(client::into_error(other)),
            }
        }
        None => {
            // No agent: seal directly, holding the agent lock meanwhile.
            let (envoy, _lock) = Envoy::load_exclusive(paths.clone(), None)?;
            envoy.encrypt(&name, src)?.plaintext_len
        }
    };
    println!("sealed {} ({len} bytes)", name.escaped());
    Ok(())
}

/// `lockbox decrypt NAME -o OUT`. A file output is written to a 0600 temp
/// file beside OUT and renamed only when the whole plaintext authenticated,
/// so a damaged ciphertext leaves no partial file behind.
pub fn decrypt(paths: &Paths, name: &OsStr, out: &Path) -> anyhow::Result<()> {
    let name = Name::from_os(name)?;
    let mut c = Client::require(paths)?;
    let len = match c.call(&Request::Decrypt {
        name: name.as_bytes().to_vec(),
    })? {
        Response::Decrypting { len } => len,
        r if client::is_failure(&r, Failure::Locked) => bail!("locked: run lockbox unlock"),
        other => return Err(client::into_error(other)),
    };
    if out == Path::new("-") {
        let stdout = io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        c.receive_data(&mut w)?;
        w.flush()?;
        return Ok(());
    }
    if out.is_dir() {
        bail!("{} is a folder: give a file path to -o", out.display());
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let base = out
        .file_name()
        .context("-o needs a file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{base}.lockbox-partial-{:08x}",
        rand::random::<u32>()
    ));
    let result = (|| -> anyhow::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::new(f);
        let got = c.receive_data(&mut w)?;
        if got != len {
            bail!("the agent sent {got} bytes of {len}: nothing was written");
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Send `req` to the agent and expect `Ok`; with no agent running, do
/// `local` on the store instead (holding the agent lock meanwhile).
fn through_agent_or_locally(
    paths: &Paths,
    req: Request,
    local: impl FnOnce(&Envoy) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match agent(paths)? {
        Some(mut c) => match c.call(&req)? {
            Response::Ok => Ok(()),
            other => Err(client::into_error(other)),
        },
        None => {
            let (envoy, _lock) = Envoy::load_exclusive(paths.clone(), None)?;
            local(&envoy)
        }
    }
}

/// `lockbox delete NAME`. Without an agent the tombstone is signed and
/// recorded here, and the peers pull it when the agent next runs.
pub fn delete(paths: &Paths, name: &OsStr) -> anyhow::Result<()> {
    let name = Name::from_os(name)?;
    let req = Request::Delete {
        name: name.as_bytes().to_vec(),
    };
    through_agent_or_locally(paths, req, |envoy| envoy.delete(&name))?;
    println!("deleted {}", name.escaped());
    Ok(())
}

/// `lockbox resurrect NAME`: lift the delete of NAME on every envoy (through
/// the agent, or recorded here for the peers to pull).
pub fn resurrect(paths: &Paths, name: &OsStr) -> anyhow::Result<()> {
    let name = Name::from_os(name)?;
    let req = Request::Resurrect {
        name: name.as_bytes().to_vec(),
    };
    through_agent_or_locally(paths, req, |envoy| {
        let replica = envoy
            .replica
            .as_ref()
            .context("the replica was not opened")?;
        replica
            .resurrect(&name)
            .map(drop)
            .map_err(|e| anyhow::anyhow!(e))
    })?;
    println!(
        "resurrected {}: its delete is lifted on every envoy; write the file again \
         (or an envoy that still holds a copy shares it)",
        name.escaped()
    );
    Ok(())
}

/// `lockbox list [--json]`.
pub fn list(paths: &Paths, json: bool) -> anyhow::Result<()> {
    let rows: Vec<ListEntry> = match agent(paths)? {
        Some(mut c) => match c.call(&Request::List)? {
            Response::List(rows) => rows,
            other => return Err(client::into_error(other)),
        },
        None => {
            let envoy = Envoy::load(paths.clone())?;
            let (store, _meta) = crate::status::store_with_states(paths, &envoy.store);
            store.list()?.iter().map(ListEntry::from_entry).collect()
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render_list(&rows));
    }
    Ok(())
}

/// `lockbox reencrypt`: every file re-sealed to the current members by the
/// agent (which needs the session), with a progress bar on a terminal.
pub fn reencrypt(paths: &Paths) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let mut c = Client::require(paths)?;
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut resp = c.call(&Request::Reencrypt)?;
    loop {
        match resp {
            Response::Progress { done, total } => {
                if io::stderr().is_terminal() {
                    let b = bar.get_or_insert_with(|| {
                        let b = indicatif::ProgressBar::new(total as u64);
                        if let Ok(style) = indicatif::ProgressStyle::with_template(
                            "re-encrypting {bar:30} {pos}/{len} files",
                        ) {
                            b.set_style(style);
                        }
                        b
                    });
                    b.set_position(done as u64);
                }
            }
            Response::Reencrypted { resealed, total } => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                let members = crate::envoy::read_recipients(&paths.recipients())
                    .map(|r| r.keys.len())
                    .unwrap_or(0);
                println!(
                    "re-encrypted {resealed} of {total} file(s) to the {members} current member(s)"
                );
                if resealed < total {
                    println!(
                        "{} file(s) changed meanwhile or could not be read: see the agent log",
                        total - resealed
                    );
                }
                return Ok(());
            }
            r if client::is_failure(&r, Failure::Locked) => bail!("locked: run lockbox unlock"),
            other => return Err(client::into_error(other)),
        }
        resp = c.response()?;
    }
}
