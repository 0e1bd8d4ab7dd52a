//! `service install` and `service uninstall`: the systemd user unit
//! (`lockbox.service`, kept beside this file and built in), written into
//! `$XDG_CONFIG_HOME/systemd/user/` (`~/.config/systemd/user/`) with
//! `ExecStart=` this binary's absolute path.
//!
//! It must not run `systemctl` or touch systemd's state (enabling,
//! starting): it prints the line that does, for the user to run.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};

use crate::paths::Paths;

/// The unit, with `@EXEC@` where the binary's path goes.
const UNIT: &str = include_str!("lockbox.service");

/// What the user runs after `install`.
pub const ENABLE: &str =
    "systemctl --user daemon-reload && systemctl --user enable --now lockbox.service";

/// `exe` as one word of a systemd command line: quoted when it holds a
/// space or a quote, with `\`, `"`, `%` (specifiers) and `$` (variables)
/// escaped.
fn exec_word(exe: &Path) -> anyhow::Result<String> {
    let Some(s) = exe.to_str() else {
        bail!(
            "the lockbox binary's path {} is not UTF-8: a systemd unit cannot name it; \
             install lockbox under a UTF-8 path",
            exe.display()
        );
    };
    if s.chars().any(|c| c.is_control()) {
        bail!("the lockbox binary's path {s:?} holds a control character: install it elsewhere");
    }
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    Ok(if s.contains([' ', '\t', '"', '\'', '\\']) {
        format!("\"{escaped}\"")
    } else {
        escaped
    })
}

/// The unit for the binary at `exe`.
pub fn unit_for(exe: &Path) -> anyhow::Result<String> {
    Ok(UNIT.replace("@EXEC@", &exec_word(exe)?))
}

/// `lockbox service install [--force]`.
pub fn install(paths: &Paths, force: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the lockbox executable")?;
    let unit = unit_for(&exe)?;
    let path = paths.systemd_unit();
    match std::fs::read(&path) {
        Ok(old) if old == unit.as_bytes() => {
            println!("{} is already installed", path.display());
            println!("start it at login with: {ENABLE}");
            return Ok(());
        }
        Ok(_) if !force => bail!(
            "{} exists and differs from the unit this lockbox writes (ExecStart={}): \
             run lockbox service install --force to replace it",
            path.display(),
            exe.display()
        ),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
        }
    }
    let dir = path.parent().context("the unit path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // A complete file or none: written beside it, then renamed over it.
    let tmp = dir.join(".lockbox.service.tmp");
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(unit.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    println!("wrote {}", path.display());
    println!("start it now and at every login with: {ENABLE}");
    println!("it starts locked: unlock it with lockbox unlock");
    Ok(())
}

/// `lockbox service uninstall`: removes the unit unless it is still
/// enabled (its `default.target.wants` link exists).
pub fn uninstall(paths: &Paths) -> anyhow::Result<()> {
    let path = paths.systemd_unit();
    if !path.exists() {
        println!("{} is not installed: nothing to do", path.display());
        return Ok(());
    }
    let wants = path
        .parent()
        .map(|d| d.join("default.target.wants/lockbox.service"));
    if wants
        .as_deref()
        .is_some_and(|w| w.symlink_metadata().is_ok())
    {
        bail!(
            "lockbox.service is still enabled: run systemctl --user disable --now \
             lockbox.service, then lockbox service uninstall"
        );
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    println!("removed {}", path.display());
    println!("then run: systemctl --user daemon-reload");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_names_the_binary_as_one_word() {
        let unit = unit_for(Path::new("/usr/local/bin/lockbox")).unwrap();
        assert!(unit.contains("\nExecStart=/usr/local/bin/lockbox daemon --foreground\n"));
        let odd = unit_for(Path::new("/opt/my apps/100%/$x\"/lockbox")).unwrap();
        assert!(
            odd.contains(
                "\nExecStart=\"/opt/my apps/100%%/$$x\\\"/lockbox\" daemon --foreground\n"
            ),
            "{odd}"
        );
        assert!(!unit.contains("@EXEC@"));
    }
}
