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

impl Write for EscapedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, "\n"),
            None => (buf, ""),
        };
        let line = format!("{}{}{newline}", self.prefix, escape::controls(body));
        io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
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
