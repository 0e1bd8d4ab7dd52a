//! User and envoy names as they travel on the wire.
//!
//! A [`WireName`] is 1–64 bytes of UTF-8 with no `/`, no NUL, no control
//! characters, and is not `.` or `..`. Those rules make a name safe to put in
//! a URL path (`/lockbox/push/<user>/…`), in a conflict-copy file name
//! (`NAME.conflict-<envoy>-…`) and in a log line. Every name read from the
//! network goes through the same check, so a value of this type is valid by
//! construction and encoding it cannot fail.

use std::borrow::Borrow;
use std::fmt;

use crate::Error;

/// What is wrong with a piece of text read from the wire or given by a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TextFault {
    /// The text is empty.
    Empty,
    /// The text is longer than allowed.
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The longest length allowed, in bytes.
        max: usize,
    },
    /// The bytes are not valid UTF-8.
    NotUtf8,
    /// The text contains a NUL byte.
    ContainsNul,
    /// The text contains `/`.
    ContainsSlash,
    /// The text contains a control character (such as a newline or escape).
    ContainsControl,
    /// The text is `.` or `..`.
    DotName,
    /// An age recipient does not start with `age1`.
    NotAgeRecipient,
    /// An age recipient has characters other than `a`–`z` and `0`–`9` after
    /// its `age1` prefix, or nothing at all.
    BadRecipientCharacters,
}

impl fmt::Display for TextFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextFault::Empty => f.write_str("is empty"),
            TextFault::TooLong { len, max } => {
                write!(f, "is {len} bytes long, more than the {max}-byte limit")
            }
            TextFault::NotUtf8 => f.write_str("is not valid UTF-8"),
            TextFault::ContainsNul => f.write_str("contains a NUL byte"),
            TextFault::ContainsSlash => f.write_str("contains '/'"),
            TextFault::ContainsControl => {
                f.write_str("contains a control character (newline, tab, escape, …)")
            }
            TextFault::DotName => f.write_str("is '.' or '..'"),
            TextFault::NotAgeRecipient => {
                f.write_str("does not start with \"age1\", so it is not an age recipient")
            }
            TextFault::BadRecipientCharacters => f.write_str(
                "must continue after \"age1\" with lowercase letters and digits only (bech32)",
            ),
        }
    }
}

/// The rules every text field on the wire shares: not empty, at most `max`
/// bytes, no NUL, no `/`, no control characters.
pub(crate) fn check_text(text: &str, max: usize) -> Result<(), TextFault> {
    if text.is_empty() {
        Err(TextFault::Empty)
    } else if text.len() > max {
        Err(TextFault::TooLong {
            len: text.len(),
            max,
        })
    } else if text.contains('\0') {
        Err(TextFault::ContainsNul)
    } else if text.contains('/') {
        Err(TextFault::ContainsSlash)
    } else if text.chars().any(char::is_control) {
        Err(TextFault::ContainsControl)
    } else {
        Ok(())
    }
}

/// Text read from the wire: checks the length before anything else, then
/// UTF-8, then `check`.
pub(crate) fn text_from_wire<'a>(
    bytes: &'a [u8],
    max: usize,
    field: &'static str,
    check: impl Fn(&str) -> Result<(), TextFault>,
) -> Result<&'a str, Error> {
    let bad = |fault| Error::BadText { field, fault };
    if bytes.len() > max {
        return Err(bad(TextFault::TooLong {
            len: bytes.len(),
            max,
        }));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad(TextFault::NotUtf8))?;
    check(text).map_err(bad)?;
    Ok(text)
}

/// A user or envoy name, valid for the wire (see the module docs for the
/// rules).
///
/// Names order by their bytes, which for UTF-8 is the same as ordering by
/// code points; version vectors rely on this for their canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireName(String);

impl WireName {
    /// The longest name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validate `name` as a user or envoy name.
    ///
    /// # Errors
    ///
    /// [`Error::BadText`] saying which rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        Self::check(&name).map_err(|fault| Error::BadText {
            field: "user or envoy name",
            fault,
        })?;
        Ok(WireName(name))
    }

    /// Read a name from wire bytes, describing it as `field` in errors.
    pub(crate) fn from_wire(bytes: &[u8], field: &'static str) -> Result<Self, Error> {
        text_from_wire(bytes, Self::MAX_LEN, field, Self::check).map(|s| WireName(s.to_owned()))
    }

    fn check(name: &str) -> Result<(), TextFault> {
        check_text(name, Self::MAX_LEN)?;
        if name == "." || name == ".." {
            return Err(TextFault::DotName);
        }
        Ok(())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for WireName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for WireName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Sound because `WireName`'s `Ord`, `Eq` and `Hash` are exactly those of the
// inner `String`, which match `str`'s.
impl Borrow<str> for WireName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for WireName {
    type Error = Error;

    fn try_from(name: &str) -> Result<Self, Error> {
        WireName::new(name)
    }
}

impl TryFrom<String> for WireName {
    type Error = Error;

    fn try_from(name: String) -> Result<Self, Error> {
        WireName::new(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(name: &str) -> Option<TextFault> {
        match WireName::new(name) {
            Ok(_) => None,
            Err(Error::BadText { fault, .. }) => Some(fault),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn accepts_ordinary_names() {
        for name in ["laptop", "a", "work-pc.local", "Zoë's Mac", &"x".repeat(64)] {
            assert_eq!(fault(name), None, "{name:?}");
        }
    }

    #[test]
    fn rejects_each_rule() {
        let too_long = "x".repeat(65);
        let cases = [
            ("", TextFault::Empty),
            (too_long.as_str(), TextFault::TooLong { len: 65, max: 64 }),
            ("a\0b", TextFault::ContainsNul),
            ("a/b", TextFault::ContainsSlash),
            ("a\nb", TextFault::ContainsControl),
            ("a\u{1b}[31m", TextFault::ContainsControl),
            ("a\u{85}", TextFault::ContainsControl),
            (".", TextFault::DotName),
            ("..", TextFault::DotName),
        ];
        for (name, want) in cases {
            assert_eq!(fault(name), Some(want), "{name:?}");
        }
    }

    #[test]
    fn length_counts_bytes_not_chars() {
        // 32 two-byte characters = 64 bytes: fine; one more is too long.
        assert_eq!(fault(&"é".repeat(32)), None);
        assert_eq!(
            fault(&"é".repeat(33)),
            Some(TextFault::TooLong { len: 66, max: 64 })
        );
    }

    #[test]
    fn wire_rejects_non_utf8_and_checks_length_first() {
        let err = WireName::from_wire(b"\xff\xfe", "announced envoy name");
        assert_eq!(
            err,
            Err(Error::BadText {
                field: "announced envoy name",
                fault: TextFault::NotUtf8
            })
        );
        let long = [0xffu8; 65];
        assert!(matches!(
            WireName::from_wire(&long, "x"),
            Err(Error::BadText {
                fault: TextFault::TooLong { .. },
                ..
            })
        ));
    }

    #[test]
    fn error_message_names_the_field_and_the_rule() {
        let err = WireName::from_wire(b"a/b", "announced user name").unwrap_err();
        assert_eq!(err.to_string(), "announced user name contains '/'");
    }
}
