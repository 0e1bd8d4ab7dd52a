//! Names in a lockbox (`docs/folders.md`, "Paths"). A [`Name`] is a path
//! from the root of the lockbox: one or more [`Component`]s joined by `/`,
//! with no empty component, at most [`MAX_PATH_BYTES`] bytes and
//! [`MAX_DEPTH`] folders deep. A component is 1–255 bytes, no `/` or NUL,
//! not `.` or `..`. Names are bytes, as on Linux; they need not be UTF-8.
//!
//! Every name that reaches the store, the mount or the wire goes through
//! [`Name::new`] (or is built from components by [`Name::join`]), so
//! traversal is impossible by construction. A name carries no meaning:
//! nothing may decide a file's state from it (states are recorded in
//! `meta.redb`).
//!
//! Pure: no I/O.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::Error;

/// The longest component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// The longest path, in bytes: the kernel's 4096-byte `PATH_MAX` less 1 KiB
/// for the store folder's own path, since the store is reached by full
/// paths.
pub const MAX_PATH_BYTES: usize = 3072;

/// The most folders a path may go through (so at most one more
/// component): bounds recursion and the work of one folder rename.
pub const MAX_DEPTH: usize = 64;

/// A validated path from the root of a lockbox: one or more components
/// joined by `/`. A name at the root is a path of one component.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Vec<u8>);

/// One validated component of a path: what a folder lists, what the kernel
/// looks up in a folder.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Component(Vec<u8>);

/// A refusal: the bytes shown (lossy, cut), why, and whether a limit was
/// passed (the mount answers `ENAMETOOLONG`, else `EINVAL`).
fn bad(bytes: &[u8], why: &'static str, too_long: bool) -> Error {
    Error::BadName {
        name: String::from_utf8_lossy(bytes).chars().take(300).collect(),
        why,
        too_long,
    }
}

/// Why `c` is not a component, if it is not.
fn component_fault(c: &[u8]) -> Option<(&'static str, bool)> {
    if c.is_empty() {
        Some((
            "has an empty component (a leading, trailing or double '/')",
            false,
        ))
    } else if c.len() > MAX_NAME_BYTES {
        Some(("has a component longer than 255 bytes", true))
    } else if c.contains(&0) {
        Some(("contains a NUL byte", false))
    } else if c == b"." || c == b".." {
        Some(("has a component '.' or '..'", false))
    } else {
        None
    }
}

impl Name {
    /// Validate raw bytes as a path.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Name, Error> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(bad(&bytes, "is empty", false));
        }
        if bytes.len() > MAX_PATH_BYTES {
            return Err(bad(&bytes, "is longer than 3072 bytes", true));
        }
        let mut components = 0;
        for c in bytes.split(|b| *b == b'/') {
            components += 1;
            if let Some((why, too_long)) = component_fault(c) {
                return Err(bad(&bytes, why, too_long));
            }
        }
        if components > MAX_DEPTH + 1 {
            return Err(bad(&bytes, "is more than 64 folders deep", true));
        }
        Ok(Name(bytes))
    }

    /// Validate an OS string (a path from argv or the control socket).
    pub fn from_os(s: &OsStr) -> Result<Name, Error> {
        Name::new(s.as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As an `OsStr`, for joining onto a directory path (it is relative:
    /// the join stays below that directory).
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// Into an `OsString`.
    pub fn into_os_string(self) -> OsString {
        OsString::from_vec(self.0)
    }

    /// Its components, from the root down.
    pub fn components(&self) -> impl Iterator<Item = Component> + '_ {
        self.0.split(|b| *b == b'/').map(|c| Component(c.to_vec()))
    }

    /// How many folders it goes through (0 for a name at the root).
    pub fn depth(&self) -> usize {
        self.0.iter().filter(|b| **b == b'/').count()
    }

    /// Whether it is a name at the root (no folder).
    pub fn is_at_root(&self) -> bool {
        !self.0.contains(&b'/')
    }

    /// Its last component.
    pub fn file_name(&self) -> Component {
        let start = self.0.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
        Component(self.0[start..].to_vec())
    }

    /// The folder it is in; `None` at the root.
    pub fn parent(&self) -> Option<Name> {
        let at = self.0.iter().rposition(|b| *b == b'/')?;
        Some(Name(self.0[..at].to_vec()))
    }

    /// `c` in this folder, within the limits.
    pub fn join(&self, c: &Component) -> Result<Name, Error> {
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + c.0.len());
        bytes.extend_from_slice(&self.0);
        bytes.push(b'/');
        bytes.extend_from_slice(&c.0);
        Name::new(bytes)
    }

    /// Whether this is `folder` or lies below it (component-wise: `a/bc`
    /// is not below `a/b`). A rename of `folder` into such a path is one
    /// into its own subtree (`EINVAL`).
    pub fn is_within(&self, folder: &Name) -> bool {
        let f = &folder.0;
        self.0.starts_with(f) && (self.0.len() == f.len() || self.0[f.len()] == b'/')
    }

    /// Where this path goes when folder `from` is renamed to `to`: `to`
    /// followed by what follows `from` in it; `None` if it is not within
    /// `from`. Errors when the new path is over a limit.
    pub fn moved(&self, from: &Name, to: &Name) -> Option<Result<Name, Error>> {
        if !self.is_within(from) {
            return None;
        }
        let mut bytes = to.0.clone();
        bytes.extend_from_slice(&self.0[from.0.len()..]);
        Some(Name::new(bytes))
    }

    /// This name with `suffix` appended to its last component, if that
    /// still fits the limits: how the sweep (`NAME.<ts>.failed`) and the
    /// conflict rule (`NAME.conflict-…`) choose a name beside it. The name
    /// means nothing afterwards (a file's state is recorded in
    /// `meta.redb`, see `docs/design.md`, "The sweep and file states"); any
    /// name may be a user's.
    pub fn with_suffix(&self, suffix: &str) -> Result<Name, Error> {
        let mut v = self.0.clone();
        v.extend_from_slice(suffix.as_bytes());
        Name::new(v)
    }

    /// `NAME.<ts>.failed` for this name, if that still fits (see
    /// [`Name::with_suffix`]).
    pub fn failed(&self, unix_ts: u64) -> Result<Name, Error> {
        self.with_suffix(&format!(".{unix_ts}.failed"))
    }
}

impl Component {
    /// Validate raw bytes as one component.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Component, Error> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(bad(&bytes, "is empty", false));
        }
        if bytes.contains(&b'/') {
            return Err(bad(&bytes, "contains '/' (one component has none)", false));
        }
        match component_fault(&bytes) {
            Some((why, too_long)) => Err(bad(&bytes, why, too_long)),
            None => Ok(Component(bytes)),
        }
    }

    /// Validate an OS string (a component from the kernel or a folder
    /// listing).
    pub fn from_os(s: &OsStr) -> Result<Component, Error> {
        Component::new(s.as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As an `OsStr`.
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }
}

impl From<Component> for Name {
    /// A name at the root.
    fn from(c: Component) -> Name {
        Name(c.0)
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

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Component({:?})", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn too_long(e: Error) -> bool {
        match e {
            Error::BadName { too_long, .. } => too_long,
            other => panic!("not a bad name: {other}"),
        }
    }

    #[test]
    fn components_refuse_traversal_and_bad_bytes() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"../x", b"a\0b"] {
            assert!(Component::new(bad).is_err(), "{bad:?}");
        }
        assert!(too_long(Component::new(vec![b'a'; 256]).unwrap_err()));
        assert!(Component::new(vec![b'a'; 255]).is_ok());
        for good in [
            &b"id_ed25519"[..],
            b".hidden",
            b"...",
            b"a b",
            b"\xff\xfe",
            b"-rf",
        ] {
            assert!(Component::new(good).is_ok(), "{good:?}");
            assert!(Name::new(good).unwrap().is_at_root(), "{good:?}");
        }
    }

    #[test]
    fn paths_are_components_joined_by_slashes() {
        for ok in ["a", "ssh/id_ed25519", "a/b/c", ".git/objects/ab", "é/x y"] {
            assert_eq!(p(ok).as_bytes(), ok.as_bytes());
        }
        for bad in ["", "/a", "a/", "a//b", "a/./b", "../a", "a/..", ".", "a\0b"] {
            let e = Name::new(bad).unwrap_err();
            assert!(!too_long(e), "{bad:?}");
        }
    }

    #[test]
    fn the_limits_are_those_documented_and_too_long_is_enametoolong() {
        let long = "n".repeat(MAX_NAME_BYTES);
        assert!(Name::new(long.clone()).is_ok());
        assert!(too_long(Name::new(format!("{long}n")).unwrap_err()));
        // 64 folders deep is the most.
        let deepest = vec!["d"; MAX_DEPTH + 1].join("/");
        assert_eq!(p(&deepest).depth(), MAX_DEPTH);
        let deeper = vec!["d"; MAX_DEPTH + 2].join("/");
        assert!(too_long(Name::new(deeper).unwrap_err()));
        // 3072 bytes is the most.
        let parts = format!("{}/{}", [&long[..]; 11].join("/"), "x".repeat(200));
        let fits = format!("{}/{}", parts, "y".repeat(MAX_PATH_BYTES - parts.len() - 1));
        assert_eq!(p(&fits).as_bytes().len(), MAX_PATH_BYTES);
        assert!(too_long(Name::new(format!("{fits}x")).unwrap_err()));
        // A join over a limit says so too.
        let e = p(&fits)
            .parent()
            .unwrap()
            .join(&Component::new(long).unwrap());
        assert!(too_long(e.unwrap_err()));
    }

    #[test]
    fn suffixes_go_on_the_last_component_and_must_fit() {
        let n = p("keys");
        assert_eq!(n.failed(42).unwrap().as_bytes(), b"keys.42.failed");
        assert_eq!(
            p("a/keys").failed(42).unwrap().as_bytes(),
            b"a/keys.42.failed"
        );
        let long = p(&format!("a/{}", "k".repeat(250)));
        assert!(too_long(long.failed(1_700_000_000).unwrap_err()));
        assert!(p(&"a".repeat(250)).failed(1_700_000_000).is_err());
    }

    #[test]
    fn within_is_by_whole_components() {
        assert!(p("a/b").is_within(&p("a/b")));
        assert!(p("a/b/c").is_within(&p("a/b")));
        assert!(p("a/b/c").is_within(&p("a")));
        assert!(!p("a/bc").is_within(&p("a/b")));
        assert!(!p("a").is_within(&p("a/b")));
        assert!(!p("b/a").is_within(&p("a")));
        assert_eq!(
            p("a/b/c").moved(&p("a/b"), &p("x")).unwrap().unwrap(),
            p("x/c")
        );
        assert_eq!(
            p("a/b").moved(&p("a/b"), &p("x/y")).unwrap().unwrap(),
            p("x/y")
        );
        assert!(p("a/bc").moved(&p("a/b"), &p("x")).is_none());
    }

    /// A component: 1–12 bytes, any byte but `/` and NUL, not `.`/`..`.
    fn component() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 1..12)
            .prop_map(|c| {
                c.into_iter()
                    .map(|b| if b == b'/' { b'_' } else { b })
                    .collect()
            })
            .prop_filter("not . or ..", |c: &Vec<u8>| c != b"." && c != b"..")
    }

    fn path() -> impl Strategy<Value = Name> {
        proptest::collection::vec(component(), 1..8)
            .prop_map(|cs| Name::new(cs.join(&b'/')).unwrap())
    }

    proptest! {
        #[test]
        fn a_component_is_valid_iff_the_rules_hold(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ok = !bytes.is_empty()
                && bytes.len() <= 255
                && !bytes.contains(&b'/')
                && !bytes.contains(&0)
                && bytes != b"." && bytes != b"..";
            let got = Component::new(bytes.clone());
            prop_assert_eq!(got.is_ok(), ok);
            if let Ok(c) = got {
                // A valid component is exactly one path component.
                let p = std::path::Path::new("/base").join(c.as_os_str());
                prop_assert_eq!(p.parent(), Some(std::path::Path::new("/base")));
                prop_assert_eq!(c.as_bytes(), &bytes[..]);
            }
        }

        /// A path is its parent joined with its last component, its
        /// components joined by `/`, and as deep as it has folders; joined
        /// onto a folder, it stays below that folder.
        #[test]
        fn parent_file_name_and_components_rebuild_the_path(x in path()) {
            let rebuilt = match x.parent() {
                Some(parent) => parent.join(&x.file_name()).unwrap(),
                None => Name::from(x.file_name()),
            };
            prop_assert_eq!(&rebuilt, &x);
            let joined: Vec<Vec<u8>> = x.components().map(|c| c.as_bytes().to_vec()).collect();
            prop_assert_eq!(joined.join(&b'/'), x.as_bytes().to_vec());
            prop_assert_eq!(x.depth() + 1, x.components().count());
            prop_assert_eq!(x.is_at_root(), x.depth() == 0);
            prop_assert!(x.is_within(&x));
            let base = std::path::Path::new("/base");
            prop_assert!(base.join(x.as_os_str()).starts_with(base));
            prop_assert_eq!(base.join(x.as_os_str()).components().count(), 2 + x.depth() + 1);
        }

        /// A move keeps what follows the folder, and moving back undoes it.
        #[test]
        fn a_move_keeps_the_rest_and_can_be_undone(base in path(), rest in path(), to in path()) {
            let inside = base.join(&rest.file_name()).unwrap();
            let moved = inside.moved(&base, &to).unwrap().unwrap();
            prop_assert!(moved.is_within(&to));
            prop_assert_eq!(moved.file_name(), inside.file_name());
            prop_assert_eq!(moved.moved(&to, &base).unwrap().unwrap(), inside.clone());
            // Within means a move is defined, and the other way round.
            prop_assert_eq!(rest.moved(&base, &to).is_some(), rest.is_within(&base));
        }

        /// Arbitrary bytes are a path exactly when every component is one
        /// and the whole fits the limits.
        #[test]
        fn any_bytes_are_checked_component_by_component(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let by_components = !bytes.is_empty()
                && bytes.split(|b| *b == b'/').all(|c| Component::new(c).is_ok());
            prop_assert_eq!(Name::new(bytes.clone()).is_ok(), by_components);
        }
    }
}
