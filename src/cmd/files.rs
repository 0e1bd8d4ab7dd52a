//! `encrypt`, `decrypt`, `delete`, `list`: through the agent when it runs,
//! otherwise directly on the store (except `decrypt`, which needs the
//! agent's unlock session). Names are printed escaped
//! (`lockbox_fs::escape`).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Write};
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
        bail!(
            "{} is a folder: add it with everything in it with lockbox encrypt -r",
            path.display()
        );
    }
    // Refused before a byte is read (a pipe, whose size is unknown, is
    // checked by the seal as it streams).
    let limit = crate::envoy::load_config(paths)?.max_file_size;
    if meta.is_file() && meta.len() > limit {
        bail!(
            "{} is {}, over the largest file lockbox seals ({}, max_file_size in {}): \
             nothing was sealed",
            path.display(),
            bytesize::ByteSize(meta.len()),
            bytesize::ByteSize(limit),
            paths.config().display()
        );
    }
    let len = match agent(paths)? {
        Some(mut c) => encrypt_through(&mut c, &name, &mut src)?,
        None => {
            // No agent: seal directly, holding the agent lock meanwhile.
            let (envoy, _lock) = Envoy::load_exclusive(paths.clone(), None)?;
            let executable = executable_of(&src);
            envoy.encrypt(&name, src, executable)?.plaintext_len
        }
    };
    println!("sealed {} ({len} bytes)", name.escaped());
    Ok(())
}

/// The owner's execute bit a file sealed from `src` gets: a regular
/// file's own (a script stays runnable); `None` for a pipe or a device,
/// which keep the bit of the version they replace.
fn executable_of(src: &File) -> Option<bool> {
    let meta = src.metadata().ok().filter(|m| m.is_file())?;
    Some(lockbox_fs::store::is_executable(&meta))
}

/// Seal `src` as `name` through the agent on `c`; the plaintext length.
fn encrypt_through(c: &mut Client, name: &Name, src: &mut File) -> anyhow::Result<u64> {
    match c.call(&Request::Encrypt {
        name: name.as_bytes().to_vec(),
        executable: executable_of(src),
    })? {
        Response::Ok => {}
        other => return Err(client::into_error(other)),
    }
    c.send_data(src)?;
    match c.response()? {
        Response::Encrypted { len } => Ok(len),
        other => Err(client::into_error(other)),
    }
}

/// `lockbox encrypt -r DIR [--name NAME]`: every folder and regular file
/// under DIR, under NAME (default: DIR's base name), through the agent or
/// here. Symlinks and other kinds are skipped with a warning, as are names
/// a lockbox cannot hold; files over the size limit are reported and
/// skipped.
pub fn encrypt_tree(
    paths: &Paths,
    dir: &Path,
    name: Option<std::ffi::OsString>,
) -> anyhow::Result<()> {
    if !fs::metadata(dir)
        .with_context(|| format!("cannot open {}", dir.display()))?
        .is_dir()
    {
        bail!("{} is not a folder: add a file without -r", dir.display());
    }
    let name = match name {
        Some(n) => n,
        None => dir.file_name().map(OsStr::to_owned).with_context(|| {
            format!(
                "{} has no name of its own: give one with --name",
                dir.display()
            )
        })?,
    };
    let top = Name::from_os(&name)?;
    let tree = lockbox_fs::store::walk(dir, lockbox_fs::name::MAX_DEPTH)?;
    let under = |rel: &Name| Name::new([top.as_bytes(), b"/", rel.as_bytes()].concat());
    let limit = crate::envoy::load_config(paths)?.max_file_size;
    let mut folders = vec![top.clone()];
    for f in &tree.folders {
        folders.push(under(f)?);
    }
    let mut sealed = 0usize;
    let mut skipped = Vec::new();
    let mut files = Vec::new();
    for rel in &tree.files {
        let src = dir.join(rel.as_os_str());
        let len = fs::symlink_metadata(&src).map(|m| m.len()).unwrap_or(0);
        if len > limit {
            skipped.push(format!(
                "{} ({}, over max_file_size)",
                src.display(),
                bytesize::ByteSize(len)
            ));
            continue;
        }
        files.push((under(rel)?, src));
    }
    match agent(paths)? {
        Some(first) => {
            // One request per connection; the agent stopping meanwhile is
            // an error (what was sealed so far stays).
            let mut first = Some(first);
            let mut connect = || -> anyhow::Result<Client> {
                if let Some(c) = first.take() {
                    return Ok(c);
                }
                agent(paths)?.context("the agent stopped while the folder was being added")
            };
            for f in &folders {
                let mut c = connect()?;
                match c.call(&Request::MakeFolder {
                    name: f.as_bytes().to_vec(),
                })? {
                    Response::Ok => {}
                    other => return Err(client::into_error(other)),
                }
            }
            for (name, src) in &files {
                let mut file =
                    File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
                encrypt_through(&mut connect()?, name, &mut file)?;
                sealed += 1;
            }
        }
        None => {
            let (envoy, _lock) = Envoy::load_exclusive(paths.clone(), None)?;
            for f in &folders {
                envoy.make_folder(f)?;
            }
            for (name, src) in &files {
                let file =
                    File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
                let executable = executable_of(&file);
                envoy.encrypt(name, file, executable)?;
                sealed += 1;
            }
        }
    }
    for s in &skipped {
        eprintln!("skipped {s}");
    }
    println!(
        "sealed {sealed} file(s) in {} folder(s) under {}",
        folders.len(),
        top.escaped()
    );
    Ok(())
}

/// `lockbox decrypt NAME [-o OUT] [--force]`. Without `-o` (or with
/// `-o -`) the plaintext goes to stdout; a terminal gets it only when it
/// looks like text, or with `--force` (binary would garble it). A file
/// output is written to a 0600 temp file beside OUT and renamed only when
/// the whole plaintext authenticated, so a damaged ciphertext leaves no
/// partial file behind; every error names OUT, never the temp file.
pub fn decrypt(paths: &Paths, name: &OsStr, out: Option<&Path>, force: bool) -> anyhow::Result<()> {
    let name = Name::from_os(name)?;
    let out = out.filter(|o| *o != Path::new("-"));
    if let Some(out) = out {
        if out.is_dir() {
            bail!("{} is a folder: give a file path to -o", out.display());
        }
    }
    let mut c = Client::require(paths)?;
    let (len, executable) = match c.call(&Request::Decrypt {
        name: name.as_bytes().to_vec(),
    })? {
        Response::Decrypting { len, executable } => (len, executable),
        r if client::is_failure(&r, Failure::Locked) => bail!("locked: run lockbox unlock"),
        other => return Err(client::into_error(other)),
    };
    match out {
        None => to_stdout(&mut c, force),
        Some(out) => to_file(&mut c, len, executable, out),
    }
}

/// The plaintext to stdout. On a terminal (unless `force`) the first piece
/// is looked at before anything is written, and binary is refused. A
/// reader that stops early (`| head`) ends it quietly, as it ends `cat`.
fn to_stdout(c: &mut Client, force: bool) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    let mut w = BufWriter::new(stdout.lock());
    let mut sniffed = force || !terminal;
    let mut reader_gone = false;
    let mut wrote = |r: io::Result<()>| match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            reader_gone = true;
            Err(anyhow::anyhow!(e))
        }
        Err(e) => Err(anyhow::anyhow!(e).context("cannot write to standard output")),
    };
    let result = c
        .receive_data_with(|piece| {
            if !sniffed {
                if looks_binary(piece) {
                    bail!(
                        "refusing to write binary output to the terminal: use -o FILE, pipe \
                         it to a program, or add --force"
                    );
                }
                sniffed = true;
            }
            wrote(w.write_all(piece))
        })
        .and_then(|_| wrote(w.flush()));
    match result {
        Err(_) if reader_gone => Ok(()),
        r => r,
    }
}

/// Whether the start of a plaintext is unfit for a terminal: not UTF-8
/// (a character cut at the end of the piece is allowed), or control
/// characters other than tab, newline and carriage return (an escape
/// sequence could take the terminal over).
fn looks_binary(piece: &[u8]) -> bool {
    let text = match std::str::from_utf8(piece) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => {
            // Only a character cut off at the end: the rest is checked.
            std::str::from_utf8(&piece[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return true,
    };
    text.chars()
        .any(|ch| ch.is_control() && !matches!(ch, '\t' | '\n' | '\r'))
}

/// The plaintext into `out`, through a temp file beside it: 0600, or 0700
/// when the file in the lockbox is `executable`.
fn to_file(c: &mut Client, len: u64, executable: bool, out: &Path) -> anyhow::Result<()> {
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
    // Local failures name OUT (the temp file is ours, not the user's);
    // the agent's own errors (a damaged file) pass as they are.
    let named =
        |e: io::Error| anyhow::anyhow!(e).context(format!("cannot write {}", out.display()));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(lockbox_fs::store::file_mode(executable))
        .open(&tmp)
        .map_err(named)?;
    let result = (|| -> anyhow::Result<()> {
        let mut w = BufWriter::new(f);
        let got = c.receive_data_with(|piece| w.write_all(piece).map_err(named))?;
        if got != len {
            bail!("the agent sent {got} bytes of {len}: nothing was written");
        }
        let f = w.into_inner().map_err(|e| named(e.into_error()))?;
        f.sync_all().map_err(named)?;
        fs::rename(&tmp, out).map_err(named)?;
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

#[cfg(test)]
mod tests {
    use super::looks_binary;

    #[test]
    fn text_passes_binary_and_escapes_do_not() {
        assert!(!looks_binary(b"user: ada\npass: h\xc3\xb6hle\r\n\tend"));
        assert!(!looks_binary(b""));
        // A character cut at the end of the piece is still text.
        assert!(!looks_binary(b"caf\xc3"));
        assert!(looks_binary(b"caf\xc3 more"));
        assert!(looks_binary(b"\x00\x01\x02"));
        assert!(looks_binary(b"title \x1b]0;owned\x07"));
        assert!(looks_binary(b"\x7f"));
        assert!(looks_binary("c1 control \u{9b}".as_bytes()));
    }
}
