//! File names in a lockbox (see `docs/design.md`, "Shape of the mount"):
//! one path component, 1–255 bytes, no `/` or NUL, not `.` or `..`. Names
//! are bytes, as on Linux; they need not be UTF-8. Every name that reaches
//! the store, the mount or the wire goes through [`Name::new`], so traversal
//! is impossible by construction. A name carries no meaning: nothing may
//! decide a file's state from it (states are recorded in `meta.redb`).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::Error;

/// The longest name, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// A validated lockbox file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Vec<u8>);

impl Name {
    /// Validate raw bytes as a name.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Name, Error> {
        let bytes = bytes.into();
        let why = if bytes.is_empty() {
            Some("is empty")
        } else if bytes.len() > MAX_NAME_BYTES {
            Some("is longer than 255 bytes")
        } else if bytes.contains(&b'/') {
            Some("contains '/' (lockbox holds only files, no folders)")
        } else if bytes.contains(&0) {
            Some("contains a NUL byte")
        } else if bytes == b"." || bytes == b".." {
            Some("is '.' or '..'")
        } else {
            None
        };
        match why {
            Some(why) => Err(Error::BadName {
                name: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                why,
            }),
            None => Ok(Name(bytes)),
        }
    }

    /// Validate an OS string (a path component from the kernel or argv).
    pub fn from_os(s: &OsStr) -> Result<Name, Error> {
        Name::new(s.as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As an `OsStr`, for joining onto a directory path.
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// Into an `OsString`.
    pub fn into_os_string(self) -> OsString {
        OsString::from_vec(self.0)
    }

    /// `NAME.<ts>.failed` for this name, if that still fits in 255 bytes: a
    /// name the sweep may choose for a file it sets aside. The name means
    /// nothing afterwards (a file's state is recorded in `meta.redb`, see
    /// `docs/design.md`, "The sweep and file states"); any name may be a
    /// user's.
    pub fn failed(&self, unix_ts: u64) -> Result<Name, Error> {
        let mut v = self.0.clone();
        v.extend_from_slice(format!(".{unix_ts}.failed").as_bytes());
        Name::new(v)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({:?})", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_traversal_and_bad_bytes() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"../x", b"a\0b"] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
        assert!(Name::new(vec![b'a'; 256]).is_err());
        assert!(Name::new(vec![b'a'; 255]).is_ok());
    }

    #[test]
    fn accepts_ordinary_and_non_utf8_names() {
        for good in [
            &b"id_ed25519"[..],
            b".hidden",
            b"...",
            b"a b",
            b"\xff\xfe",
            b"-rf",
        ] {
            assert!(Name::new(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn failed_names_are_chosen_not_read() {
        let n = Name::new("keys").unwrap();
        assert_eq!(n.failed(42).unwrap().as_bytes(), b"keys.42.failed");
        assert!(Name::new(vec![b'a'; 250])
            .unwrap()
            .failed(1_700_000_000)
            .is_err());
    }

    proptest! {
        #[test]
        fn valid_iff_rules_hold(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ok = !bytes.is_empty()
                && bytes.len() <= 255
                && !bytes.contains(&b'/')
                && !bytes.contains(&0)
                && bytes != b"." && bytes != b"..";
            let got = Name::new(bytes.clone());
            prop_assert_eq!(got.is_ok(), ok);
            if let Ok(n) = got {
                // A valid name is exactly one path component.
                let p = std::path::Path::new("/base").join(n.as_os_str());
                prop_assert_eq!(p.parent(), Some(std::path::Path::new("/base")));
                prop_assert_eq!(n.as_bytes(), &bytes[..]);
            }
        }
    }
}
