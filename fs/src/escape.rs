//! Names as they are shown to people: file names (any member may create a
//! file whose name holds a newline or an escape sequence), envoy and user
//! names, and whole log lines, made safe to print on a terminal or into a
//! log.
//!
//! It owns the one escaping rule (`docs/design.md`, "Names on the
//! terminal"): a control character becomes `\n`, `\t`, `\r`, `\xNN` (C0 and
//! DEL) or `\u{NN}` (C1); the Unicode marks that reorder the text around
//! them (bidi overrides and isolates) become `\u{NNNN}`; a backslash
//! becomes `\\`; a byte that is not UTF-8 becomes `\xNN` (always 80–ff, so
//! it cannot be mistaken for an escaped character); everything else is
//! printed as is. The wrappers escape while they are formatted, so `{}` on
//! them costs no allocation.
//!
//! It must not be used for bytes that go to disk or the wire: the store,
//! the records and the wire carry a name's raw bytes (`Name::as_bytes`).

use std::ffi::OsStr;
use std::fmt;

use crate::name::Name;

/// A name or text shown escaped: format it with `{}`. Made by
/// [`Escape::escaped`].
#[derive(Clone, Copy)]
pub struct Escaped<'a>(&'a [u8]);

/// A text (a whole log line) with its control characters escaped but its
/// backslashes kept: a net under names escaped at their print site (which
/// it leaves alone), for text that nobody escaped (an error message that
/// quotes a name or a peer's words). Made by [`controls`].
#[derive(Clone, Copy)]
pub struct ControlsEscaped<'a>(&'a [u8]);

/// What can be shown escaped.
pub trait Escape {
    /// The value, escaped when formatted with `{}`.
    fn escaped(&self) -> Escaped<'_>;
}

impl Escape for [u8] {
    fn escaped(&self) -> Escaped<'_> {
        Escaped(self)
    }
}

impl Escape for Vec<u8> {
    fn escaped(&self) -> Escaped<'_> {
        Escaped(self)
    }
}

impl Escape for str {
    fn escaped(&self) -> Escaped<'_> {
        Escaped(self.as_bytes())
    }
}

impl Escape for String {
    fn escaped(&self) -> Escaped<'_> {
        Escaped(self.as_bytes())
    }
}

impl Escape for OsStr {
    fn escaped(&self) -> Escaped<'_> {
        Escaped(self.as_encoded_bytes())
    }
}

impl Escape for Name {
    fn escaped(&self) -> Escaped<'_> {
        Escaped(self.as_bytes())
    }
}

/// `text` with its control characters escaped, its backslashes kept.
pub fn controls(text: &(impl AsRef<[u8]> + ?Sized)) -> ControlsEscaped<'_> {
    ControlsEscaped(text.as_ref())
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, true)
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for ControlsEscaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, false)
    }
}

/// Whether `c` is shown escaped (a backslash only if `backslash`).
fn needs_escape(c: char, backslash: bool) -> bool {
    match c {
        '\\' => backslash,
        // Arabic letter mark, left-to-right and right-to-left marks, the
        // embeddings and overrides, the isolates: they reorder what a
        // terminal shows around them.
        '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}' => true,
        c => c.is_control(),
    }
}

fn write_char_escape(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '\n' => f.write_str("\\n"),
        '\t' => f.write_str("\\t"),
        '\r' => f.write_str("\\r"),
        c if c.is_ascii() => write!(f, "\\x{:02x}", c as u32),
        c => write!(f, "\\u{{{:x}}}", c as u32),
    }
}

fn write_escaped(f: &mut fmt::Formatter<'_>, bytes: &[u8], backslash: bool) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let mut plain_from = 0;
        for (i, c) in valid.char_indices() {
            if needs_escape(c, backslash) {
                f.write_str(&valid[plain_from..i])?;
                write_char_escape(f, c)?;
                plain_from = i + c.len_utf8();
            }
        }
        f.write_str(&valid[plain_from..])?;
        for b in chunk.invalid() {
            write!(f, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(b: &[u8]) -> String {
        b.escaped().to_string()
    }

    #[test]
    fn controls_backslash_and_bad_utf8_are_escaped() {
        assert_eq!(esc(b"plain name.txt"), "plain name.txt");
        assert_eq!(esc(b"a\x1b[31mred\nfake line"), "a\\x1b[31mred\\nfake line");
        assert_eq!(esc(b"tab\there\r"), "tab\\there\\r");
        assert_eq!(esc(b"back\\slash"), "back\\\\slash");
        assert_eq!(esc(b"\x00\x07\x7f"), "\\x00\\x07\\x7f");
        // Not UTF-8: each bad byte, never a replacement character.
        assert_eq!(esc(b"caf\xe9 \xff"), "caf\\xe9 \\xff");
        // C1 controls and bidi overrides, as Unicode escapes.
        assert_eq!(esc("a\u{85}b".as_bytes()), "a\\u{85}b");
        assert_eq!(esc("x\u{202e}txt.exe".as_bytes()), "x\\u{202e}txt.exe");
        // Everything else as is: accents (composed or not), quotes, emoji.
        let kept = "résumé e\u{301} 'q' \"d\" 🔑 日本";
        assert_eq!(esc(kept.as_bytes()), kept);
        assert_eq!(format!("{:?}", "a\nb".escaped()), "\"a\\nb\"");
    }

    #[test]
    fn the_log_net_escapes_controls_only() {
        let line = "sealed a\\x1b b\u{1b}[2J\nfake";
        assert_eq!(controls(line).to_string(), "sealed a\\x1b b\\x1b[2J\\nfake");
    }

    #[test]
    fn escaped_output_never_holds_a_control_character() {
        let all: Vec<u8> = (0..=255u8).collect();
        let out = esc(&all);
        assert!(!out.chars().any(|c| c.is_control()), "{out:?}");
        let name = Name::new(b"a\x1b[31mred\nfake line".to_vec()).unwrap();
        assert!(!name.escaped().to_string().contains('\u{1b}'));
    }
}
