//! Reading the passphrase (see `docs/operations.md`, "Passphrases"): from
//! the terminal without echo (up to [`TTY_TRIES`] tries), from the first
//! line of a file or of standard input (`--passphrase-file FILE|-`), or
//! from the first line a program prints (`--passphrase-command CMD` or
//! `passphrase_command:` in config.yaml; its words are split here, no shell
//! runs them).
//!
//! It must never take a passphrase from argv or the environment, never put
//! one in a child's argv or environment, and never log one; every buffer
//! that held one is wiped on drop.

use std::io::{ErrorKind, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};
use zeroize::Zeroizing;

/// The longest passphrase line accepted.
const MAX_LEN: usize = 4096;

/// How many passphrases a terminal user may type before the command gives
/// up (a file, stdin or a program gets one try: it would give the same
/// answer again).
pub const TTY_TRIES: u32 = 3;

/// Where the passphrase comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The terminal, without echo.
    Terminal,
    /// The first line of this file.
    File(PathBuf),
    /// The first line of standard input (`--passphrase-file -`).
    Stdin,
    /// The first line this program prints (the text as given; split into
    /// words by [`split_words`]).
    Command(String),
}

impl Source {
    /// The source the options name: `--passphrase-file` first, then
    /// `--passphrase-command`, then `passphrase_command:` of config.yaml,
    /// else the terminal.
    pub fn new(file: Option<PathBuf>, command: Option<String>, configured: Option<String>) -> Self {
        match (file, command.or(configured)) {
            (Some(f), _) if f.as_os_str() == "-" => Source::Stdin,
            (Some(f), _) => Source::File(f),
            (None, Some(c)) => Source::Command(c),
            (None, None) => Source::Terminal,
        }
    }

    /// Whether a wrong passphrase may be asked again.
    pub fn is_terminal(&self) -> bool {
        *self == Source::Terminal
    }

    /// Read one passphrase (not empty).
    pub fn read(&self, prompt: &str) -> anyhow::Result<Zeroizing<String>> {
        let pass = match self {
            Source::Terminal => prompt_tty(prompt)?,
            Source::File(path) => from_file(path)?,
            Source::Stdin => from_stdin()?,
            Source::Command(cmd) => from_command(cmd)?,
        };
        if pass.is_empty() {
            bail!(
                "the passphrase {} is empty: choose a non-empty passphrase",
                self.describe()
            );
        }
        Ok(pass)
    }

    /// Where the passphrase came from, for messages ("from …").
    fn describe(&self) -> String {
        match self {
            Source::Terminal => "typed".into(),
            Source::File(p) => format!("in {}", p.display()),
            Source::Stdin => "on standard input".into(),
            Source::Command(c) => format!("printed by `{c}`"),
        }
    }
}

/// A new passphrase (for `init`): at the terminal typed twice, with up to
/// [`TTY_TRIES`] tries to make the two match.
pub fn read_new(src: &Source, prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    if !src.is_terminal() {
        return src.read(prompt);
    }
    for n in 1..=TTY_TRIES {
        let first = src.read(prompt)?;
        let again = prompt_tty("Repeat the passphrase: ")?;
        if *again == *first {
            return Ok(first);
        }
        if n < TTY_TRIES {
            eprintln!("the two passphrases differ: try again");
        }
    }
    bail!("the two passphrases differed {TTY_TRIES} times: run the command again")
}

/// What one try with a passphrase came to.
pub enum Attempt<T> {
    /// It was right.
    Done(T),
    /// It was wrong; the error says so (and is returned after the last try).
    Wrong(anyhow::Error),
}

/// Read a passphrase and hand it to `attempt`; at the terminal, ask again
/// after a wrong one, up to [`TTY_TRIES`] times in all.
pub fn with_tries<T>(
    src: &Source,
    prompt: &str,
    mut attempt: impl FnMut(Zeroizing<String>) -> anyhow::Result<Attempt<T>>,
) -> anyhow::Result<T> {
    let tries = if src.is_terminal() { TTY_TRIES } else { 1 };
    let mut n = 1;
    loop {
        let pass = src.read(prompt)?;
        match attempt(pass)? {
            Attempt::Done(t) => return Ok(t),
            Attempt::Wrong(e) if n >= tries => return Err(e),
            Attempt::Wrong(e) => {
                eprintln!("{e}: try again ({} of {tries} tries left)", tries - n);
                n += 1;
            }
        }
    }
}

fn prompt_tty(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|_| {
            anyhow!(
                "no terminal to read the passphrase from: use --passphrase-file FILE \
                 (- for standard input) or --passphrase-command CMD"
            )
        })
}

/// The first line of `path` (without its line ending).
pub fn from_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
    first_line(f, &path.display().to_string())
}

/// The first line of standard input. Refused on a terminal, where the
/// passphrase would echo (the prompt is for that).
fn from_stdin() -> anyhow::Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!(
            "--passphrase-file -: standard input is a terminal, where the passphrase would \
             show: leave the option out to be asked without echo"
        );
    }
    // Read the file descriptor directly: std's stdin buffer would keep a
    // copy of the passphrase that nothing wipes.
    let fd = std::os::fd::AsFd::as_fd(&stdin)
        .try_clone_to_owned()
        .context("cannot read standard input")?;
    first_line(std::fs::File::from(fd), "standard input")
}

/// Run `cmd` (its words split by [`split_words`], no shell) with stdin and
/// stderr inherited (so that it may ask the user) and take the first line
/// of its stdout.
fn from_command(cmd: &str) -> anyhow::Result<Zeroizing<String>> {
    let words = split_words(cmd).map_err(|e| anyhow!("passphrase command `{cmd}`: {e}"))?;
    let Some((program, args)) = words.split_first() else {
        bail!("the passphrase command is empty: give a program to run");
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run the passphrase command `{cmd}`"))?;
    let mut out = child.stdout.take().context("no stdout from the command")?;
    let line = first_line(&mut out, &format!("the output of `{cmd}`"));
    // Whatever follows the first line is read and dropped, so that the
    // program is not left blocked on a full pipe.
    let mut sink = Zeroizing::new([0u8; 4096]);
    while matches!(out.read(&mut sink[..]), Ok(n) if n > 0) {}
    drop(out);
    let status = child
        .wait()
        .with_context(|| format!("the passphrase command `{cmd}` was lost"))?;
    if !status.success() {
        bail!("the passphrase command `{cmd}` failed ({status}): nothing was done");
    }
    let line = line?;
    if line.is_empty() {
        bail!("the passphrase command `{cmd}` printed no passphrase: nothing was done");
    }
    Ok(line)
}

/// The first line `r` yields, without its line ending, read into wiped
/// memory only. `what` names the input in errors.
fn first_line(mut r: impl Read, what: &str) -> anyhow::Result<Zeroizing<String>> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_LEN + 1]);
    let mut len = 0;
    let end = loop {
        if let Some(i) = buf[..len].iter().position(|&b| b == b'\n') {
            break i;
        }
        if len > MAX_LEN {
            bail!("the first line of {what} is longer than {MAX_LEN} bytes");
        }
        match r.read(&mut buf[len..]) {
            Ok(0) => break len,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow!(e).context(format!("cannot read {what}"))),
        }
    };
    let mut line = &buf[..end];
    while let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let text = std::str::from_utf8(line)
        .map_err(|_| anyhow!("the first line of {what} is not UTF-8 text"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Split a command line into words as a shell would, but without one: words
/// are separated by blanks; `'…'` quotes literally, `"…"` quotes with `\"`
/// and `\\` as escapes, and `\` outside quotes takes the next character
/// literally. Nothing is expanded (no `$`, `~`, globs or pipes).
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("a ' quote is not closed".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("a \" quote is not closed".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("a \" quote is not closed".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("it ends with a lone \\".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_only_without_line_ending() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        let src = Source::File(p.clone());
        std::fs::write(&p, "correct horse\r\nsecond line\n").unwrap();
        assert_eq!(&*src.read("").unwrap(), "correct horse");
        std::fs::write(&p, "no newline").unwrap();
        assert_eq!(&*src.read("").unwrap(), "no newline");
        std::fs::write(&p, "\nnext").unwrap();
        assert!(src.read("").unwrap_err().to_string().contains("empty"));
        std::fs::write(&p, vec![b'x'; MAX_LEN + 1]).unwrap();
        assert!(src.read("").unwrap_err().to_string().contains("longer"));
        std::fs::write(&p, vec![b'x'; MAX_LEN]).unwrap();
        assert_eq!(src.read("").unwrap().len(), MAX_LEN);
        std::fs::write(&p, b"\xff\xfe\n").unwrap();
        assert!(src.read("").unwrap_err().to_string().contains("UTF-8"));
        assert!(Source::File(dir.path().join("missing")).read("").is_err());
    }

    #[test]
    fn sources_in_order_of_precedence() {
        let cfg = Some("pass show lockbox".to_string());
        assert_eq!(
            Source::new(Some("-".into()), None, cfg.clone()),
            Source::Stdin
        );
        assert_eq!(
            Source::new(Some("f".into()), Some("x".into()), cfg.clone()),
            Source::File("f".into())
        );
        assert_eq!(
            Source::new(None, Some("x".into()), cfg.clone()),
            Source::Command("x".into())
        );
        assert_eq!(
            Source::new(None, None, cfg.clone()),
            Source::Command("pass show lockbox".into())
        );
        assert_eq!(Source::new(None, None, None), Source::Terminal);
    }

    #[test]
    fn words_split_without_a_shell() {
        let w = |s: &str| split_words(s).unwrap();
        assert_eq!(w("pass show lockbox"), ["pass", "show", "lockbox"]);
        assert_eq!(w("  a\t b  "), ["a", "b"]);
        assert_eq!(
            w(r#"cat '/my dir/pw' "x \"y\" \n" z\ w"#),
            ["cat", "/my dir/pw", "x \"y\" \\n", "z w"]
        );
        assert_eq!(w("echo $HOME ~ *|x"), ["echo", "$HOME", "~", "*|x"]);
        assert_eq!(w("a '' b"), ["a", "", "b"]);
        assert!(w("").is_empty());
        assert!(split_words("echo 'x").is_err());
        assert!(split_words("echo \"x").is_err());
        assert!(split_words("echo x\\").is_err());
    }

    #[test]
    fn command_output_exit_and_emptiness() {
        let cmd = |c: &str| Source::Command(c.into()).read("");
        assert_eq!(&*cmd("printf 'pw one\\nsecond\\n'").unwrap(), "pw one");
        let err = cmd("false").unwrap_err().to_string();
        assert!(err.contains("`false`") && err.contains("failed"), "{err}");
        let err = cmd("true").unwrap_err().to_string();
        assert!(
            err.contains("`true`") && err.contains("no passphrase"),
            "{err}"
        );
        let err = cmd("/nonexistent/askpass --x").unwrap_err();
        assert!(
            format!("{err:#}").contains("`/nonexistent/askpass --x`"),
            "{err:#}"
        );
        let err = cmd("   ").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        // Much more output than a line: read to the end, the first line kept.
        assert_eq!(
            &*cmd("sh -c 'echo pw; head -c 1000000 /dev/zero'").unwrap(),
            "pw"
        );
    }

    #[test]
    fn tries_only_at_the_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "pw\n").unwrap();
        let mut calls = 0;
        let r: anyhow::Result<()> = with_tries(&Source::File(p), "", |_| {
            calls += 1;
            Ok(Attempt::Wrong(anyhow!("wrong passphrase")))
        });
        assert_eq!(r.unwrap_err().to_string(), "wrong passphrase");
        assert_eq!(calls, 1);
    }
}
