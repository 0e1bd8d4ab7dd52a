//! Paths in a lockbox tree (`docs/folders.md`, "Paths"): names
//! ([`Name`]: one component each) joined by `/`, with no empty component,
//! at most [`MAX_PATH_BYTES`] bytes and [`MAX_DEPTH`] folders deep. A path
//! is bytes, as a name is; every path that reaches the store, the mount or
//! the wire is meant to go through [`RelPath::new`] (or be built from
//! names by [`RelPath::join`]), so traversal is impossible by construction.
//!
//! Pure: no I/O. The folders of the mount and the mesh are being built on
//! it (`docs/folders.md`, "Order of the work"); until they are, nothing
//! outside this module makes a path of more than one component.

use std::fmt;

use crate::name::{Name, MAX_NAME_BYTES};

/// The longest path, in bytes: the kernel's 4096-byte `PATH_MAX` less 1 KiB
/// for the store folder's own path, since the store is reached by full
/// paths.
pub const MAX_PATH_BYTES: usize = 3072;

/// The most folders a path may go through (so at most one more
/// component): bounds recursion and the work of one folder rename.
pub const MAX_DEPTH: usize = 64;

/// Why bytes are not a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A component, or the whole path, or its depth is over the limit: the
    /// mount answers `ENAMETOOLONG`, as Linux does for a name or path too
    /// long.
    #[error("path '{path}' is too long: {why}")]
    TooLong {
        /// The path as given (lossy, cut).
        path: String,
        /// Which limit.
        why: &'static str,
    },
    /// Not a path at all (empty, an empty component, `.`, `..`, NUL): the
    /// mount answers `EINVAL`.
    #[error("bad path '{path}': {why}")]
    Invalid {
        /// The path as given (lossy, cut).
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl PathError {
    fn too_long(bytes: &[u8], why: &'static str) -> PathError {
        PathError::TooLong {
            path: shown(bytes),
            why,
        }
    }

    fn invalid(bytes: &[u8], why: &'static str) -> PathError {
        PathError::Invalid {
            path: shown(bytes),
            why,
        }
    }

    /// Whether the mount answers it with `ENAMETOOLONG` (else `EINVAL`).
    pub fn is_too_long(&self) -> bool {
        matches!(self, PathError::TooLong { .. })
    }
}

/// At most 300 characters of `bytes`, lossy, for an error message.
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(300).collect()
}

/// A validated path from the root of a lockbox: one or more names joined
/// by `/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Validate raw bytes as a path.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<RelPath, PathError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(PathError::invalid(&bytes, "it is empty"));
        }
        if bytes.len() > MAX_PATH_BYTES {
            return Err(PathError::too_long(&bytes, "it is over 3072 bytes"));
        }
        let mut components = 0;
        for c in bytes.split(|b| *b == b'/') {
            components += 1;
            check_component(&bytes, c)?;
        }
        if components > MAX_DEPTH + 1 {
            return Err(PathError::too_long(&bytes, "it is over 64 folders deep"));
        }
        Ok(RelPath(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its components, from the root down.
    pub fn components(&self) -> impl Iterator<Item = Name> + '_ {
        self.0
            .split(|b| *b == b'/')
            .map(|c| Name::new(c).expect("a path's components are names"))
    }

    /// How many folders it goes through (0 for a name at the root).
    pub fn depth(&self) -> usize {
        self.0.iter().filter(|b| **b == b'/').count()
    }

    /// Its last component.
    pub fn file_name(&self) -> Name {
        let start = self.0.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
        Name::new(&self.0[start..]).expect("a path's components are names")
    }

    /// The folder it is in; `None` at the root.
    pub fn parent(&self) -> Option<RelPath> {
        let at = self.0.iter().rposition(|b| *b == b'/')?;
        Some(RelPath(self.0[..at].to_vec()))
    }

    /// `name` in this folder, within the limits.
    pub fn join(&self, name: &Name) -> Result<RelPath, PathError> {
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.as_bytes().len());
        bytes.extend_from_slice(&self.0);
        bytes.push(b'/');
        bytes.extend_from_slice(name.as_bytes());
        RelPath::new(bytes)
    }

    /// Whether this is `folder` or lies below it (component-wise: `a/bc`
    /// is not below `a/b`). A rename of `folder` into such a path is one
    /// into its own subtree (`EINVAL`).
    pub fn is_within(&self, folder: &RelPath) -> bool {
        let f = &folder.0;
        self.0.starts_with(f) && (self.0.len() == f.len() || self.0[f.len()] == b'/')
    }

    /// Where this path goes when folder `from` is renamed to `to`: `to`
    /// followed by what follows `from` in it; `None` if it is not within
    /// `from`. Errors when the new path is over a limit.
    pub fn moved(&self, from: &RelPath, to: &RelPath) -> Option<Result<RelPath, PathError>> {
        if !self.is_within(from) {
            return None;
        }
        let mut bytes = to.0.clone();
        bytes.extend_from_slice(&self.0[from.0.len()..]);
        Some(RelPath::new(bytes))
    }
}

/// Check one component of `path` (named in the error).
fn check_component(path: &[u8], c: &[u8]) -> Result<(), PathError> {
    if c.is_empty() {
        return Err(PathError::invalid(
            path,
            "it has an empty component (a leading, trailing or double '/')",
        ));
    }
    if c.len() > MAX_NAME_BYTES {
        return Err(PathError::too_long(path, "a component is over 255 bytes"));
    }
    if c.contains(&0) {
        return Err(PathError::invalid(path, "it contains a NUL byte"));
    }
    if c == b"." || c == b".." {
        return Err(PathError::invalid(path, "a component is '.' or '..'"));
    }
    Ok(())
}

impl From<Name> for RelPath {
    /// A name at the root.
    fn from(name: Name) -> RelPath {
        RelPath(name.as_bytes().to_vec())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({:?})", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn paths_are_names_joined_by_slashes() {
        for ok in ["a", "ssh/id_ed25519", "a/b/c", ".git/objects/ab", "é/x y"] {
            assert_eq!(p(ok).as_bytes(), ok.as_bytes());
        }
        for (bad, too_long) in [
            ("", false),
            ("/a", false),
            ("a/", false),
            ("a//b", false),
            ("a/./b", false),
            ("../a", false),
            ("a/..", false),
            (".", false),
            ("a\0b", false),
        ] {
            let e = RelPath::new(bad).unwrap_err();
            assert_eq!(e.is_too_long(), too_long, "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_limits_are_those_documented_and_too_long_is_enametoolong() {
        let long = "n".repeat(MAX_NAME_BYTES);
        assert!(RelPath::new(long.clone()).is_ok());
        assert!(RelPath::new(format!("{long}n")).unwrap_err().is_too_long());
        // 64 folders deep is the most.
        let deepest = vec!["d"; MAX_DEPTH + 1].join("/");
        assert_eq!(p(&deepest).depth(), MAX_DEPTH);
        let deeper = vec!["d"; MAX_DEPTH + 2].join("/");
        assert!(RelPath::new(deeper).unwrap_err().is_too_long());
        // 3072 bytes is the most.
        let parts = format!("{}/{}", [&long[..]; 11].join("/"), "x".repeat(200));
        let fits = format!("{}/{}", parts, "y".repeat(MAX_PATH_BYTES - parts.len() - 1));
        assert_eq!(p(&fits).as_bytes().len(), MAX_PATH_BYTES);
        assert!(RelPath::new(format!("{fits}x")).unwrap_err().is_too_long());
        // A join over a limit says so too.
        let e = p(&fits).parent().unwrap().join(&Name::new(long).unwrap());
        assert!(e.unwrap_err().is_too_long());
    }

    #[test]
    fn within_is_by_whole_components() {
        assert!(p("a/b").is_within(&p("a/b")));
        assert!(p("a/b/c").is_within(&p("a/b")));
        assert!(p("a/b/c").is_within(&p("a")));
        assert!(!p("a/bc").is_within(&p("a/b")));
        assert!(!p("a").is_within(&p("a/b")));
        assert!(!p("b/a").is_within(&p("a")));
        assert_eq!(p("a/b/c").moved(&p("a/b"), &p("x")), Some(Ok(p("x/c"))));
        assert_eq!(p("a/b").moved(&p("a/b"), &p("x/y")), Some(Ok(p("x/y"))));
        assert_eq!(p("a/bc").moved(&p("a/b"), &p("x")), None);
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

    fn path() -> impl Strategy<Value = RelPath> {
        proptest::collection::vec(component(), 1..8)
            .prop_map(|cs| RelPath::new(cs.join(&b'/')).unwrap())
    }

    proptest! {
        /// A path is its parent joined with its last component, its
        /// components joined by `/`, and as deep as it has folders.
        #[test]
        fn parent_file_name_and_components_rebuild_the_path(x in path()) {
            let rebuilt = match x.parent() {
                Some(parent) => parent.join(&x.file_name()).unwrap(),
                None => RelPath::from(x.file_name()),
            };
            prop_assert_eq!(&rebuilt, &x);
            let joined: Vec<Vec<u8>> = x.components().map(|c| c.as_bytes().to_vec()).collect();
            prop_assert_eq!(joined.join(&b'/'), x.as_bytes().to_vec());
            prop_assert_eq!(x.depth() + 1, x.components().count());
            prop_assert!(x.is_within(&x));
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

        /// Arbitrary bytes are a path exactly when every component is a name
        /// and the whole fits the limits; what is refused stays refused.
        #[test]
        fn any_bytes_are_checked_component_by_component(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let by_names = !bytes.is_empty()
                && bytes.split(|b| *b == b'/').all(|c| Name::new(c).is_ok());
            prop_assert_eq!(RelPath::new(bytes.clone()).is_ok(), by_names);
        }
    }
}
