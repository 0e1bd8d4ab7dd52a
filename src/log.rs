//! Where log lines go: standard error (the detached agent's is
//! `~/.lockbox/agent.log`), each line with its control characters escaped
//! (`lockbox_fs::escape::controls`). Names are escaped where they are
//! logged; this is the net under that for text nobody escaped (an error
//! that quotes a name, a peer's words), so no log line can carry a raw
//! escape sequence to a terminal or forge a line of its own.
//!
//! It must not drop or reorder lines, nor format anything itself.

use std::io::{self, Write};

use lockbox_fs::escape;

/// A writer of whole log lines to standard error, escaped. The fmt
/// subscriber writes each event as one buffer that ends in a newline.
pub struct EscapedStderr;

impl Write for EscapedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, "\n"),
            None => (buf, ""),
        };
        let line = format!("{}{newline}", escape::controls(body));
        io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
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
        assert_eq!(EscapedStderr.write(buf).unwrap(), buf.len());
    }
}
