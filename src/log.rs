//! Where log lines go: standard error (the detached agent's is
//! `~/.lockbox/agent.log`), each line with its control characters escaped
//! (`lockbox_fs::escape::controls`). Names are escaped where they are
//! logged; this is the net under that for text nobody escaped (an error
//! that quotes a name, a peer's words), so no log line can carry a raw
//! escape sequence to a terminal or forge a line of its own. Under
//! systemd (standard error is the journal, as `JOURNAL_STREAM` says) each
//! line starts with its `<N>` priority (sd-daemon levels), for
//! `journalctl -p`.
//!
//! It must not drop or reorder lines, nor format anything itself.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;

use lockbox_fs::escape;
use tracing::Level;

/// A writer of whole log lines to standard error, escaped, each after
/// `prefix`. The fmt subscriber writes each event as one buffer that ends
/// in a newline.
#[derive(Default)]
pub struct EscapedStderr {
    /// Put before each line (the journal's priority, or nothing).
    pub prefix: &'static str,
}

/// `buf` (one event, ending in a newline) as one line after `prefix`,
/// control characters escaped.
fn escaped_line(prefix: &str, buf: &[u8]) -> String {
    let (body, newline) = match buf.strip_suffix(b"\n") {
        Some(body) => (body, "\n"),
        None => (buf, ""),
    };
    format!("{prefix}{}{newline}", escape::controls(body))
}

impl Write for EscapedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = escaped_line(self.prefix, buf);
        io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// The cap of `agent.log` when `LOCKBOX_LOG_CAP_BYTES` does not set one:
/// 10 MiB.
pub const DEFAULT_LOG_CAP: u64 = 10 << 20;

/// The detached agent's log, whose standard error is `agent.log`: lines
/// go to standard error as [`EscapedStderr`] writes them, and a line that
/// would take the file past `cap` bytes first moves it to `agent.log.1`
/// (replacing the one before) and makes a new `agent.log` (0600) the
/// process's standard error. So at most two files of at most `cap` bytes
/// each (a single line longer than `cap` excepted) are kept.
pub struct RotatingLog {
    state: std::sync::Mutex<Rotation>,
}

struct Rotation {
    path: std::path::PathBuf,
    written: u64,
    cap: u64,
}

impl RotatingLog {
    /// The log at `path` (standard error already writes to it), rotated
    /// past `cap` bytes.
    pub fn new(path: std::path::PathBuf, cap: u64) -> std::sync::Arc<RotatingLog> {
        let written = std::fs::metadata(&path).map_or(0, |m| m.len());
        std::sync::Arc::new(RotatingLog {
            state: std::sync::Mutex::new(Rotation {
                path,
                written,
                cap: cap.max(1),
            }),
        })
    }

    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut r = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.written > 0 && r.written + line.len() as u64 > r.cap {
            // A rotation that fails keeps the current file; the next try
            // comes after another cap's worth.
            let _ = rotate(&r.path);
            r.written = 0;
        }
        io::stderr().lock().write_all(line)?;
        r.written += line.len() as u64;
        Ok(())
    }
}

/// `path` → `path.1`, a new `path` as standard error.
fn rotate(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    match std::fs::rename(path, &old) {
        Ok(()) => {}
        // Removed by hand: a new one is made all the same.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    crate::sys::redirect_stderr(&file)
}

/// One line's writer of a [`RotatingLog`].
pub struct RotatingLine(std::sync::Arc<RotatingLog>);

impl Write for RotatingLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(escaped_line("", buf).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Makes a [`RotatingLine`] per event.
#[derive(Clone)]
pub struct Rotating(pub std::sync::Arc<RotatingLog>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Rotating {
    type Writer = RotatingLine;

    fn make_writer(&'a self) -> RotatingLine {
        RotatingLine(self.0.clone())
    }
}

/// The cap `LOCKBOX_LOG_CAP_BYTES` sets (a whole number of bytes, at
/// least 1), else [`DEFAULT_LOG_CAP`]; an unusable value is returned as
/// the error, to be logged.
pub fn log_cap() -> Result<u64, String> {
    match std::env::var("LOCKBOX_LOG_CAP_BYTES") {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_LOG_CAP),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "LOCKBOX_LOG_CAP_BYTES={v:?} is not a number of bytes above 0: \
                 the log is capped at {DEFAULT_LOG_CAP} bytes"
            )),
        },
        Err(_) => Err(format!(
            "LOCKBOX_LOG_CAP_BYTES is not UTF-8: the log is capped at {DEFAULT_LOG_CAP} bytes"
        )),
    }
}

/// Whether standard error is connected to the journal: `JOURNAL_STREAM`
/// (`DEVICE:INODE`, set by systemd) names the file standard error is.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// The sd-daemon priority prefix of a level: `<3>` error, `<4>` warning,
/// `<6>` info, `<7>` debug and trace.
pub fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        _ => "<7>",
    }
}

/// Log lines for the journal: escaped, each with its priority.
pub struct Journal;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Journal {
    type Writer = EscapedStderr;

    fn make_writer(&'a self) -> EscapedStderr {
        EscapedStderr { prefix: "<6>" }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EscapedStderr {
        EscapedStderr {
            prefix: priority(meta.level()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_keeps_its_own_newline_only() {
        // The escaping itself is tested in lockbox_fs::escape.
        let buf = b"WARN sealed a\x1b[31mred\nfake line\n";
        let body = buf.strip_suffix(b"\n").unwrap();
        let out = format!("{}\n", escape::controls(body));
        assert_eq!(out, "WARN sealed a\\x1b[31mred\\nfake line\n");
        assert_eq!(EscapedStderr::default().write(buf).unwrap(), buf.len());
    }
}
