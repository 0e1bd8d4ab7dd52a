//! The store as a tree (`docs/format.md`, "The store"): a name `a/b/f`
//! is the file `store/a/b/f`, and each folder of a name is a folder
//! (0700) of the store. This file owns walking the tree, making the folders
//! a name needs, putting a file in place at a name, and remembering which
//! folders changed so a round (or the change itself) syncs each of them.
//!
//! A store made before folders is a tree of depth one: nothing here reads
//! it differently.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::durable::sync_dir;
use crate::escape::Escape;
use crate::journal::Event;
use crate::name::{Component, Name};
use crate::{lock, Error};

use super::Store;

/// What a walk of a tree found: the names of its regular files and of its
/// folders, each sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Regular files.
    pub files: Vec<Name>,
    /// Folders (not the root).
    pub folders: Vec<Name>,
}

/// Walk the tree under `root`, into folders at most `max_depth` deep
/// ([`crate::name::MAX_DEPTH`] for all a lockbox may hold; 0: the top only): every
/// regular file and folder whose path is a [`Name`]. Anything else (a
/// symlink, a device, a name that cannot be a lockbox name, a folder deeper
/// than `max_depth`) is skipped with a warning; an entry removed during the
/// walk is skipped silently. A missing root is an empty tree.
pub fn walk(root: &Path, max_depth: usize) -> Result<Walk, Error> {
    let mut out = Walk::default();
    walk_into(root, None, max_depth, &mut out)?;
    out.files.sort();
    out.folders.sort();
    Ok(out)
}

fn walk_into(
    root: &Path,
    folder: Option<&Name>,
    max_depth: usize,
    out: &mut Walk,
) -> Result<(), Error> {
    let dir = match folder {
        Some(f) => root.join(f.as_os_str()),
        None => root.to_owned(),
    };
    for (c, is_folder) in entries(&dir)? {
        let name = match folder {
            Some(f) => f.join(&c),
            None => Ok(Name::from(c.clone())),
        };
        let Ok(name) = name else {
            tracing::warn!(
                "ignoring {}: its path is over a lockbox's limits",
                dir.join(c.as_os_str()).as_os_str().escaped()
            );
            continue;
        };
        if !is_folder {
            out.files.push(name);
        } else if name.depth() < max_depth {
            walk_into(root, Some(&name), max_depth, out)?;
            out.folders.push(name);
        } else {
            tracing::warn!(
                "ignoring the folder {}: not a folder this lockbox holds",
                root.join(name.as_os_str()).as_os_str().escaped()
            );
        }
    }
    Ok(())
}

/// The entries of one folder: each regular file's and folder's name, and
/// whether it is a folder. Anything else (a symlink, a device, a name that
/// cannot be a component) is skipped with a warning; an entry removed
/// meanwhile, silently. A missing folder has none.
pub fn entries(dir: &Path) -> Result<Vec<(Component, bool)>, Error> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", dir, e)),
    };
    let mut out = Vec::new();
    for dirent in rd {
        let dirent = dirent.map_err(|e| Error::io("read", dir, e))?;
        let Ok(c) = Component::from_os(&dirent.file_name()) else {
            tracing::warn!(
                "ignoring {}: not a name a lockbox can hold",
                dirent.path().as_os_str().escaped()
            );
            continue;
        };
        match dirent.file_type() {
            Ok(t) if t.is_file() => out.push((c, false)),
            Ok(t) if t.is_dir() => out.push((c, true)),
            Ok(_) => tracing::warn!(
                "ignoring {}: lockbox holds regular files and folders only",
                dirent.path().as_os_str().escaped()
            ),
            // Removed between readdir and stat: not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", &dirent.path(), e)),
        }
    }
    Ok(out)
}

/// Rename `from` to `to`, making the folders above `to` (below `root`)
/// first if they are missing. The folders made are returned, top down.
pub fn rename_making_folders(root: &Path, from: &Path, to: &Name) -> Result<Vec<Name>, io::Error> {
    let dest = root.join(to.as_os_str());
    match fs::rename(from, &dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && from.symlink_metadata().is_ok() => {
            let Some(parent) = to.parent() else {
                return Err(e);
            };
            let made = make_folders(root, &parent)?;
            fs::rename(from, &dest)?;
            Ok(made)
        }
        r => r.map(|()| Vec::new()),
    }
}

/// Make `folder` below `root`, and any folder above it that is missing
/// (mode 0700). The folders made are returned, top down. A file where one
/// of them should be is `ENOTDIR`, as Linux answers.
pub fn make_folders(root: &Path, folder: &Name) -> Result<Vec<Name>, io::Error> {
    let mut missing = Vec::new();
    let mut at = Some(folder.clone());
    while let Some(f) = at {
        match fs::symlink_metadata(root.join(f.as_os_str())) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                at = f.parent();
                missing.push(f);
            }
            Err(e) => return Err(e),
        }
    }
    missing.reverse();
    for f in &missing {
        match DirBuilder::new()
            .mode(0o700)
            .create(root.join(f.as_os_str()))
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

/// The folders of a store whose entries changed since their last sync.
#[derive(Debug, Default)]
pub(super) struct Changed(std::sync::Mutex<BTreeSet<PathBuf>>);

impl Changed {
    pub(super) fn insert(&self, folder: PathBuf) {
        lock(&self.0).insert(folder);
    }

    /// Whether every change is synced.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }

    /// Sync each changed folder (and `also`), once. A folder removed
    /// meanwhile needs no sync (its parent's change is in the set). On a
    /// failure the folders not yet synced stay marked for the next round.
    pub(super) fn sync(&self, also: Option<&Path>) -> Result<(), Error> {
        let mut folders = std::mem::take(&mut *lock(&self.0));
        if let Some(p) = also {
            folders.insert(p.to_owned());
        }
        while let Some(f) = folders.pop_first() {
            match sync_dir(&f) {
                Ok(()) => {}
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    folders.insert(f);
                    lock(&self.0).append(&mut folders);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// The store folder that holds `name`.
    pub(super) fn folder_of(&self, name: &Name) -> PathBuf {
        self.folder_path(name.parent().as_ref())
    }

    /// The store folder of `folder` (`None`: the top of the store).
    fn folder_path(&self, folder: Option<&Name>) -> PathBuf {
        match folder {
            Some(f) => self.path_of(f),
            None => self.dir.clone(),
        }
    }

    /// Put the file at `from` in place as `name` (making its folders if
    /// they are missing), and mark the folders that changed.
    pub(super) fn put_in_place(&self, from: &Path, name: &Name) -> Result<(), Error> {
        let made = rename_making_folders(&self.dir, from, name)
            .map_err(|e| Error::io("rename into", &self.path_of(name), e))?;
        for f in &made {
            self.folder_changed(f)?;
        }
        self.folder_changed(name)
    }

    /// After an entry named `name` was made, replaced or removed: sync its
    /// folder now, or let the syncer do it.
    pub(super) fn folder_changed(&self, name: &Name) -> Result<(), Error> {
        let folder = self.folder_of(name);
        match (&self.grouped, &self.waiting) {
            (Some(g), Some(w)) => {
                w.changed.insert(folder);
                g.mark();
                Ok(())
            }
            _ => sync_dir(&folder),
        }
    }
}

/// How many folders `dir` (whose metadata is `meta`) holds: from its link
/// count where the file system keeps it as 2 + its folders (ext4, xfs,
/// tmpfs), else by listing it (btrfs keeps 1).
fn count_folders(dir: &Path, meta: &fs::Metadata) -> usize {
    use std::os::unix::fs::MetadataExt;
    if meta.nlink() >= 2 {
        return (meta.nlink() - 2) as usize;
    }
    fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|d| d.file_type().is_ok_and(|t| t.is_dir()))
            .count()
    })
}

/// A folder operation refused with `errno`, as Linux refuses it.
fn refused(op: &'static str, folder: &Name, errno: i32) -> Error {
    folder_error(op, folder, io::Error::from_raw_os_error(errno))
}

fn folder_error(op: &'static str, folder: &Name, source: io::Error) -> Error {
    Error::Folder {
        op,
        name: folder.to_string(),
        source,
    }
}

/// Folder operations, each told to the journal: a folder made or removed,
/// and a folder rename as what it is for every entry below (each file
/// renamed, each folder removed at its old path and made at its new one).
/// A store that does not list folders ([`Store::with_folders`]) refuses
/// them (`EPERM`).
impl Store {
    /// Queue `event` for the journal; the caller holds the change lock.
    fn queue_locked(&self, event: Event) {
        if let Some(q) = &self.journal {
            q.push(event);
        }
    }

    fn folders_on(&self, op: &'static str, folder: &Name) -> Result<(), Error> {
        if self.folders {
            Ok(())
        } else {
            Err(refused(op, folder, libc::EPERM))
        }
    }

    /// Whether a seal waiting for its round lies within `folder`.
    fn waiting_within(&self, folder: &Name) -> bool {
        self.waiting
            .as_ref()
            .is_some_and(|w| lock(&w.files).keys().any(|n| n.is_within(folder)))
    }

    /// `mkdir -p`: make `folder` and each folder above it that is missing
    /// (0700), each told to the journal as made. The folders made, top
    /// down; `ENOTDIR` where a file is in the way.
    pub fn make_folder_all(&self, folder: &Name) -> Result<Vec<Name>, Error> {
        self.folders_on("make", folder)?;
        let _changes = self.lock_changes();
        let made = make_folders(&self.dir, folder).map_err(|e| folder_error("make", folder, e))?;
        for f in &made {
            self.folder_changed(f)?;
            self.queue_locked(Event::FolderMade(f.clone()));
        }
        Ok(made)
    }

    /// Make the folder `folder` and any missing above it, for the mesh
    /// (no journal entry: the folder's record came with it); the caller
    /// holds the change lock. The folders made, top down.
    pub fn make_folders_locked(&self, folder: &Name) -> Result<Vec<Name>, Error> {
        self.folders_on("make", folder)?;
        let made = make_folders(&self.dir, folder).map_err(|e| folder_error("make", folder, e))?;
        for f in &made {
            self.folder_changed(f)?;
        }
        Ok(made)
    }

    /// Remove the empty folder `folder` for the mesh (no journal entry);
    /// the caller holds the change lock. Whether it went: a folder with
    /// something in it stays.
    pub fn remove_folder_locked(&self, folder: &Name) -> bool {
        if !self.folders || self.waiting_within(folder) {
            return false;
        }
        if fs::remove_dir(self.path_of(folder)).is_err() {
            return false;
        }
        let _ = fs::remove_dir(self.tags.join(folder.as_os_str()));
        if let Err(e) = self.folder_changed(folder) {
            tracing::warn!("{e}");
        }
        true
    }

    /// Set the time of the store folder `folder` (a folder's time as
    /// `utimensat` set it, kept across an agent restart; a later change in
    /// the folder moves it, as on any file system: the mount says so with
    /// [`Store::folder_touched`]). A seal put in place there by a later
    /// round keeps it (see `Waiting::folder_times`).
    pub fn set_folder_mtime(&self, folder: &Name, t: std::time::SystemTime) -> Result<(), Error> {
        let p = self.path_of(folder);
        // Under the lock a round holds while it puts seals in place, so
        // none lands between the two.
        let mut times = self.waiting.as_ref().map(|w| lock(&w.folder_times));
        fs::File::open(&p)
            .and_then(|f| f.set_modified(t))
            .map_err(|e| folder_error("set the time of", folder, e))?;
        if let Some(times) = times.as_mut() {
            times.insert(p, (t, std::time::Instant::now()));
        }
        Ok(())
    }

    /// A name in `folder` (`None`: the top) was made, removed or renamed
    /// through the mount at `t`: that is its time now (what the mount
    /// shows), which a seal put in place there by a later round keeps. (A
    /// seal of a new file lands in the store folder up to a window after
    /// its create; left to move the folder's time then, it would show a
    /// time after one set meanwhile, or, after a restart, a later second
    /// than `rsync` set or saw.)
    pub fn folder_touched(&self, folder: Option<&Name>, t: std::time::SystemTime) {
        if let Some(w) = &self.waiting {
            let p = self.folder_path(folder);
            lock(&w.folder_times).insert(p, (t, std::time::Instant::now()));
        }
    }

    /// Whether `name` is a folder of the store.
    pub fn is_folder(&self, name: &Name) -> bool {
        fs::symlink_metadata(self.path_of(name)).is_ok_and(|m| m.is_dir())
    }

    /// Whether this store lists names in folders ([`Store::with_folders`]).
    pub fn lists_folders(&self) -> bool {
        self.folders
    }

    /// What one folder holds (`None`: the top of the store): each entry's
    /// name and whether it is a folder, files whose seal still waits for
    /// its round included, sorted. Without [`Store::with_folders`], the
    /// top's files only.
    pub fn entries_in(&self, folder: Option<&Name>) -> Result<Vec<(Name, bool)>, Error> {
        let dir = self.folder_path(folder);
        // The waiting seals are held still while the folder is read: a
        // round renames a seal into the folder and then drops it from the
        // waiting ones under this lock, so read between the two, the name
        // would be in neither.
        let waiting = self.waiting.as_ref().map(|w| lock(&w.files));
        let mut out = Vec::new();
        for (c, is_folder) in entries(&dir)? {
            if is_folder && !self.folders {
                tracing::warn!(
                    "ignoring the folder {}: this lockbox holds loose files only",
                    dir.join(c.as_os_str()).as_os_str().escaped()
                );
                continue;
            }
            let name = match folder {
                Some(f) => f.join(&c)?,
                None => Name::from(c),
            };
            out.push((name, is_folder));
        }
        if let Some(files) = &waiting {
            for n in files.keys() {
                if n.parent().as_ref() == folder {
                    out.push((n.clone(), false));
                }
            }
        }
        drop(waiting);
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// How many folders `folder`, whose metadata is `meta`, holds (for its
    /// link count).
    pub fn folder_count(&self, folder: &Name, meta: &fs::Metadata) -> usize {
        count_folders(&self.path_of(folder), meta)
    }

    /// How many folders the top of the store holds.
    pub fn folder_count_at_top(&self) -> usize {
        fs::metadata(&self.dir).map_or(0, |m| count_folders(&self.dir, &m))
    }

    /// Make the folder `folder` (0700) in a folder that exists, as
    /// `mkdir(2)`: `EEXIST` if the name is taken (by a seal still waiting
    /// too), `ENOENT` or `ENOTDIR` if its parent is missing or a file.
    pub fn make_folder(&self, folder: &Name) -> Result<(), Error> {
        self.folders_on("make", folder)?;
        let _changes = self.lock_changes();
        if self.waiting_temp(folder).is_some() {
            return Err(refused("make", folder, libc::EEXIST));
        }
        DirBuilder::new()
            .mode(0o700)
            .create(self.path_of(folder))
            .map_err(|e| folder_error("make", folder, e))?;
        self.folder_changed(folder)?;
        self.queue_locked(Event::FolderMade(folder.clone()));
        Ok(())
    }

    /// Remove the empty folder `folder`, as `rmdir(2)`: `ENOTEMPTY` if
    /// anything is in it (a seal still waiting for its round too),
    /// `ENOTDIR` if it is a file, `ENOENT` if it is missing.
    pub fn remove_folder(&self, folder: &Name) -> Result<(), Error> {
        self.folders_on("remove", folder)?;
        let _changes = self.lock_changes();
        if self.waiting_within(folder) {
            return Err(refused("remove", folder, libc::ENOTEMPTY));
        }
        fs::remove_dir(self.path_of(folder)).map_err(|e| folder_error("remove", folder, e))?;
        // Its block tags' folder, if it is empty (tags are a cache: one
        // left behind costs nothing).
        let _ = fs::remove_dir(self.tags.join(folder.as_os_str()));
        self.folder_changed(folder)?;
        self.queue_locked(Event::FolderRemoved(folder.clone()));
        Ok(())
    }

    /// Rename the folder `from`, with everything in it, to `to`, as
    /// `rename(2)` of a folder: `EINVAL` into its own subtree, `ENOTEMPTY`
    /// over a folder that is not empty, `ENOTDIR` over a file or when
    /// `from` is a file, `ENAMETOOLONG` when a name below would pass a
    /// limit; over an empty folder it replaces it. Seals waiting for their
    /// round within `from` are put in place first; block tags and recorded
    /// states go with their names. Returns each file moved, old name and
    /// new, sorted by the old.
    pub fn rename_folder(&self, from: &Name, to: &Name) -> Result<Vec<(Name, Name)>, Error> {
        self.folders_on("rename", from)?;
        let _changes = self.lock_changes();
        if !self.is_folder(from) {
            let errno = if self.contains(from) {
                libc::ENOTDIR
            } else {
                libc::ENOENT
            };
            return Err(refused("rename", from, errno));
        }
        if from == to {
            return Ok(Vec::new());
        }
        if to.is_within(from) {
            return Err(refused("rename", from, libc::EINVAL));
        }
        if self.waiting_within(to) {
            return Err(refused("rename", from, libc::ENOTEMPTY));
        }
        if self.waiting_temp(to).is_some() {
            return Err(refused("rename", from, libc::ENOTDIR));
        }
        let inside = walk(&self.path_of(from), crate::name::MAX_DEPTH)?;
        let mut moved = Vec::with_capacity(inside.files.len());
        for rel in &inside.files {
            let old = Name::new([from.as_bytes(), b"/", rel.as_bytes()].concat())?;
            let new = Name::new([to.as_bytes(), b"/", rel.as_bytes()].concat())
                .map_err(|_| refused("rename", from, libc::ENAMETOOLONG))?;
            moved.push((old, new));
        }
        // Waiting seals inside go in place first, so the one rename of the
        // folder takes them along.
        let waiting: Vec<Name> = match &self.waiting {
            Some(w) => lock(&w.files)
                .keys()
                .filter(|n| n.is_within(from))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        for name in &waiting {
            self.install_locked(name)?;
            let rel = &name.as_bytes()[from.as_bytes().len() + 1..];
            let new = Name::new([to.as_bytes(), b"/", rel].concat())
                .map_err(|_| refused("rename", from, libc::ENAMETOOLONG))?;
            moved.push((name.clone(), new));
        }
        moved.sort();
        moved.dedup();
        let replaced = self.is_folder(to);
        fs::rename(self.path_of(from), self.path_of(to))
            .map_err(|e| folder_error("rename", from, e))?;
        // Each file says where it came from: a start after a crash that
        // lost the rename's records signs the deletes of the old names
        // from these (`held`'s mark; `net`'s reconcile).
        for (old, new) in &moved {
            super::held::set_moved_from(&self.path_of(new), old);
        }
        self.move_folder_tags(from, to, &moved);
        self.move_states_locked(&moved);
        self.folder_changed(from)?;
        self.folder_changed(to)?;
        // The journal: the folders at their new paths (top down), the files
        // moved, then the folders at their old paths (bottom up), and the
        // empty folder the rename replaced.
        let folders: Vec<(Name, Name)> = std::iter::once(Ok((from.clone(), to.clone())))
            .chain(inside.folders.iter().map(|rel| {
                let old = Name::new([from.as_bytes(), b"/", rel.as_bytes()].concat())?;
                let new = Name::new([to.as_bytes(), b"/", rel.as_bytes()].concat())?;
                Ok((old, new))
            }))
            .collect::<Result<_, Error>>()?;
        if replaced {
            self.queue_locked(Event::FolderRemoved(to.clone()));
        }
        for (_, new) in &folders {
            self.queue_locked(Event::FolderMade(new.clone()));
        }
        for (old, new) in &moved {
            let stat = self.local_stat(new);
            self.queue_locked(Event::Renamed(old.clone(), new.clone(), stat));
        }
        for (old, _) in folders.iter().rev() {
            self.queue_locked(Event::FolderRemoved(old.clone()));
        }
        Ok(moved)
    }

    /// After the mesh removed `name`: remove each folder above it that is
    /// now empty and that `keep` does not hold (a folder made here or
    /// announced by a peer stays; one made only because a file arrived in
    /// it goes with its last entry), from the deepest up; returns them.
    /// The caller holds the change lock. A store without folders has none
    /// to remove.
    pub fn prune_folders_locked(&self, name: &Name, keep: impl Fn(&Name) -> bool) -> Vec<Name> {
        let mut pruned = Vec::new();
        if !self.folders {
            return pruned;
        }
        let mut at = name.parent();
        while let Some(folder) = at {
            if keep(&folder) || self.waiting_within(&folder) {
                return pruned;
            }
            match fs::remove_dir(self.path_of(&folder)) {
                Ok(()) => {
                    let _ = fs::remove_dir(self.tags.join(folder.as_os_str()));
                    if let Err(e) = self.folder_changed(&folder) {
                        tracing::warn!("{e}");
                    }
                }
                // Not empty, or not there: nothing above it goes either.
                Err(_) => return pruned,
            }
            at = folder.parent();
            pruned.push(folder);
        }
        pruned
    }

    /// The block tags of the files `moved` with folder `from` go to `to`
    /// (one rename of the tags' folder); if that fails, they are dropped.
    fn move_folder_tags(&self, from: &Name, to: &Name, moved: &[(Name, Name)]) {
        let mut tagged = lock(&self.tagged);
        if !moved.iter().any(|(old, _)| tagged.contains(old)) {
            return;
        }
        let (a, b) = (
            self.tags.join(from.as_os_str()),
            self.tags.join(to.as_os_str()),
        );
        // A folder of tags left at `to` (a cache: drop it) would refuse the
        // rename.
        let _ = fs::remove_dir_all(&b);
        let ok = rename_making_folders(&self.tags, &a, to).is_ok();
        for (old, new) in moved {
            tagged.remove(new);
            if tagged.remove(old) && ok {
                tagged.insert(new.clone());
            }
        }
        if !ok {
            let _ = fs::remove_dir_all(&a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::MAX_DEPTH;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn a_walk_finds_files_and_folders_and_skips_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("a/b/c")).unwrap();
        fs::create_dir(r.join("empty")).unwrap();
        for f in ["top", "a/f", "a/b/c/deep"] {
            fs::write(r.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("top", r.join("a/link")).unwrap();
        let w = walk(r, MAX_DEPTH).unwrap();
        assert_eq!(walk(r, 0).unwrap().files, vec![n("top")]);
        assert!(walk(r, 0).unwrap().folders.is_empty());
        assert_eq!(w.files, vec![n("a/b/c/deep"), n("a/f"), n("top")]);
        assert_eq!(w.folders, vec![n("a"), n("a/b"), n("a/b/c"), n("empty")]);
        assert_eq!(
            walk(&r.join("missing"), MAX_DEPTH).unwrap(),
            Walk::default()
        );
    }

    #[test]
    fn a_walk_stops_at_the_depth_limit() {
        let d = tempfile::tempdir().unwrap();
        let deepest = vec!["d"; MAX_DEPTH].join("/");
        let deeper = format!("{deepest}/d");
        fs::create_dir_all(d.path().join(&deeper)).unwrap();
        fs::write(d.path().join(&deepest).join("f"), b"x").unwrap();
        fs::write(d.path().join(&deeper).join("g"), b"x").unwrap();
        let w = walk(d.path(), MAX_DEPTH).unwrap();
        // The file 64 folders deep is found; the folder 65 deep is not.
        assert_eq!(w.files, vec![n(&format!("{deepest}/f"))]);
        assert_eq!(w.folders.len(), MAX_DEPTH);
    }

    #[test]
    fn renames_make_the_folders_they_need_and_say_which() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("store");
        fs::create_dir(&r).unwrap();
        let src = d.path().join("tmp");
        fs::write(&src, b"sealed").unwrap();
        let made = rename_making_folders(&r, &src, &n("a/b/f")).unwrap();
        assert_eq!(made, vec![n("a"), n("a/b")]);
        assert_eq!(fs::read(r.join("a/b/f")).unwrap(), b"sealed");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(r.join("a/b")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A missing source is still an error, and makes nothing.
        let e = rename_making_folders(&r, &src, &n("x/f")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!r.join("x").exists());
        // A file where a folder goes: ENOTDIR.
        fs::write(&src, b"again").unwrap();
        let e = rename_making_folders(&r, &src, &n("a/b/f/g")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        assert_eq!(fs::read(&src).unwrap(), b"again");
    }

    #[test]
    fn a_failed_sync_keeps_the_folders_marked() {
        let d = tempfile::tempdir().unwrap();
        let c = Changed::default();
        c.insert(d.path().to_owned());
        c.insert(d.path().join("gone"));
        // A folder gone is not an error; both leave the set.
        c.sync(None).unwrap();
        assert!(c.is_empty());
        // A folder that cannot be opened (a file is not one) stays marked.
        let f = d.path().join("file");
        fs::write(&f, b"").unwrap();
        let bad = f.join("x");
        c.insert(bad.clone());
        c.insert(d.path().to_owned());
        assert!(c.sync(None).is_err());
        assert!(lock(&c.0).contains(&bad));
    }
}
