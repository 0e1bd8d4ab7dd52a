//! Reading the passphrase: from the terminal without echo, or from the first
//! line of `--passphrase-file`. Never from argv or the environment.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context};
use zeroize::Zeroizing;

/// The longest passphrase line accepted.
const MAX_LEN: u64 = 4096;

/// Read the passphrase. With `confirm`, a terminal user types it twice.
pub fn read(file: Option<&Path>, prompt: &str, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let pass = match file {
        Some(path) => from_file(path)?,
        None => {
            let first = prompt_tty(prompt)?;
            if confirm {
                let again = prompt_tty("Repeat the passphrase: ")?;
                if *again != *first {
                    bail!("the two passphrases differ: try again");
                }
            }
            first
        }
    };
    if pass.is_empty() {
        bail!("the passphrase is empty: choose a non-empty passphrase");
    }
    Ok(pass)
}

fn prompt_tty(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|_| {
            anyhow::anyhow!("no terminal to read the passphrase from: use --passphrase-file FILE")
        })
}

/// The first line of `path` (without its line ending).
pub fn from_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
    let mut line = Zeroizing::new(String::new());
    BufReader::new(f.take(MAX_LEN + 1))
        .read_line(&mut line)
        .with_context(|| format!("{} is not a text file", path.display()))?;
    if line.len() as u64 > MAX_LEN {
        bail!(
            "the first line of {} is longer than {MAX_LEN} bytes",
            path.display()
        );
    }
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_only_without_line_ending() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "correct horse\r\nsecond line\n").unwrap();
        assert_eq!(&*read(Some(&p), "", false).unwrap(), "correct horse");
        std::fs::write(&p, "\nnext").unwrap();
        assert!(read(Some(&p), "", false)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(read(Some(&dir.path().join("missing")), "", false).is_err());
    }
}
