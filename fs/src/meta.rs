//! The metadata store: `~/.lockbox/meta.redb`, an embedded, crash-safe
//! key-value database (redb) beside the ciphertext store.
//!
//! It holds, per file name, the signed record of the version in the store
//! and the local `stat` of the store file when that record was written
//! (`versions`, `local`); per name the signed tombstones (`tombstones`) and
//! resurrects (`resurrects`); per signing key the signed leaves and evictions
//! (`leaves`); and a few small values (`misc`). Records are opaque bytes here: the mesh
//! (`lockbox-net`) gives them meaning. Every change is one transaction, so a
//! crash leaves the tables as they were before or after it.
//!
//! In the agent, commits are grouped ([`Meta::with_grouped_commits`]): each
//! commits without an `fsync`, and a background thread makes them durable
//! within the same window as the store folder's syncs, so a power loss
//! undoes at most the last window of records — as it may the last window of
//! renames and deletes — and never leaves the database torn.
//!
//! The record of a version is written just after its ciphertext is renamed
//! into the store, so a crash between the two can leave a store file newer
//! than its record. The `local` stat tells: at start the agent re-hashes
//! every store file whose stat differs from the recorded one
//! ([`LocalStat::of`]) and records it as a new local version.

use std::path::Path;

use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::grouped::Grouped;

use crate::name::Name;
use crate::Error;

const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
const LOCAL: TableDefinition<&[u8], &[u8]> = TableDefinition::new("local");
const TOMBSTONES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tombstones");
const RESURRECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("resurrects");
const LEAVES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("leaves");

/// The per-name record lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// Signed deletes.
    Tombstones,
    /// Signed re-adds.
    Resurrects,
}

impl List {
    fn table(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        match self {
            List::Tombstones => TOMBSTONES,
            List::Resurrects => RESURRECTS,
        }
    }
}
const MISC: TableDefinition<&str, &[u8]> = TableDefinition::new("misc");

/// What identifies one store file's bytes without reading them: inode,
/// size and modification time in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalStat {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl LocalStat {
    /// The stat of a store file.
    pub fn of(path: &Path) -> std::io::Result<LocalStat> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(LocalStat {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        })
    }

    fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.ino.to_be_bytes());
        b[8..16].copy_from_slice(&self.size.to_be_bytes());
        b[16..].copy_from_slice(&self.mtime_ns.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Option<LocalStat> {
        if b.len() != 24 {
            return None;
        }
        let u = |r: std::ops::Range<usize>| u64::from_be_bytes(b[r].try_into().unwrap_or([0; 8]));
        Some(LocalStat {
            ino: u(0..8),
            size: u(8..16),
            mtime_ns: u(16..24) as i64,
        })
    }
}

/// One change; a batch of them commits atomically ([`Meta::apply`]).
#[derive(Debug, Clone)]
pub enum Op {
    /// Record `record` as the version of `name`, whose store file has `stat`.
    PutVersion {
        /// The name.
        name: Name,
        /// The signed record bytes.
        record: Vec<u8>,
        /// The store file's stat, if it exists.
        stat: Option<LocalStat>,
    },
    /// Forget the version of `name`.
    DelVersion(Name),
    /// Replace the list of `name` (an encoded list; empty removes).
    PutList(List, Name, Vec<u8>),
    /// Record a leave or eviction under the signing key it names.
    PutLeave(Vec<u8>, Vec<u8>),
    /// Set a small value.
    PutMisc(&'static str, Vec<u8>),
}

/// A name's signed record bytes and the store file's stat recorded with it.
pub type Recorded = (Vec<u8>, Option<LocalStat>);

/// A raw name and the bytes stored under it.
pub type NamedBytes = (Vec<u8>, Vec<u8>);

/// The metadata database of one envoy.
#[derive(Debug)]
pub struct Meta {
    db: Arc<Database>,
    /// Set when commits are grouped: marked after each one.
    grouped: Option<Arc<Grouped>>,
}

fn db_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Meta(format!("{what}: {e}"))
}

/// An empty durable commit: it makes every earlier non-durable one durable.
fn durable_commit(db: &Database) -> Result<(), Error> {
    let w = db.begin_write().map_err(|e| db_err("begin", e))?;
    w.commit().map_err(|e| db_err("commit", e))
}

impl Meta {
    /// Open (or create) the database at `path`, mode 0600.
    pub fn open(path: &Path) -> Result<Meta, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        // Create it 0600 ourselves; redb would use the umask.
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::io("create", path, e))?;
        }
        let db = Database::create(path).map_err(|e| {
            db_err(
                &format!(
                    "cannot open {} (if it is damaged, move it away: the agent rebuilds it \
                     from the store and its peers)",
                    path.display()
                ),
                e,
            )
        })?;
        let w = db.begin_write().map_err(|e| db_err("begin", e))?;
        {
            w.open_table(VERSIONS).map_err(|e| db_err("table", e))?;
            w.open_table(LOCAL).map_err(|e| db_err("table", e))?;
            w.open_table(TOMBSTONES).map_err(|e| db_err("table", e))?;
            w.open_table(RESURRECTS).map_err(|e| db_err("table", e))?;
            w.open_table(LEAVES).map_err(|e| db_err("table", e))?;
            w.open_table(MISC).map_err(|e| db_err("table", e))?;
        }
        w.commit().map_err(|e| db_err("commit", e))?;
        Ok(Meta {
            db: Arc::new(db),
            grouped: None,
        })
    }

    /// Group the commits' `fsync`s within `window` (the agent's; the CLI
    /// commits durably one by one). [`Meta::flush`] makes everything
    /// durable at once (shutdown).
    pub fn with_grouped_commits(mut self, window: std::time::Duration) -> Meta {
        // Weak: dropping the Meta closes the database; the syncer then has
        // nothing left to do.
        let db = Arc::downgrade(&self.db);
        let flush = move || {
            if let Some(db) = db.upgrade() {
                if let Err(e) = durable_commit(&db) {
                    tracing::warn!("{e}");
                }
            }
        };
        match Grouped::start("meta-sync", window, flush) {
            Ok(g) => self.grouped = Some(g),
            Err(e) => tracing::warn!("cannot start the metadata syncer ({e}): syncing per commit"),
        }
        self
    }

    /// Make every commit so far durable.
    pub fn flush(&self) -> Result<(), Error> {
        if let Some(g) = &self.grouped {
            g.clear();
        }
        durable_commit(&self.db)
    }

    /// Apply `ops` in one transaction: durable at once, or within the window
    /// when commits are grouped.
    pub fn apply(&self, ops: &[Op]) -> Result<(), Error> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut w = self.db.begin_write().map_err(|e| db_err("begin", e))?;
        if self.grouped.is_some() {
            w.set_durability(Durability::None)
                .map_err(|e| db_err("durability", e))?;
        }
        {
            let mut versions = w.open_table(VERSIONS).map_err(|e| db_err("table", e))?;
            let mut local = w.open_table(LOCAL).map_err(|e| db_err("table", e))?;
            let mut tombs = w.open_table(TOMBSTONES).map_err(|e| db_err("table", e))?;
            let mut resurrects = w.open_table(RESURRECTS).map_err(|e| db_err("table", e))?;
            let mut leaves = w.open_table(LEAVES).map_err(|e| db_err("table", e))?;
            let mut misc = w.open_table(MISC).map_err(|e| db_err("table", e))?;
            for op in ops {
                match op {
                    Op::PutVersion { name, record, stat } => {
                        versions
                            .insert(name.as_bytes(), record.as_slice())
                            .map_err(|e| db_err("insert", e))?;
                        match stat {
                            Some(s) => {
                                local
                                    .insert(name.as_bytes(), &s.to_bytes()[..])
                                    .map_err(|e| db_err("insert", e))?;
                            }
                            None => {
                                local
                                    .remove(name.as_bytes())
                                    .map_err(|e| db_err("remove", e))?;
                            }
                        }
                    }
                    Op::DelVersion(name) => {
                        versions
                            .remove(name.as_bytes())
                            .map_err(|e| db_err("remove", e))?;
                        local
                            .remove(name.as_bytes())
                            .map_err(|e| db_err("remove", e))?;
                    }
                    Op::PutList(which, name, list) => {
                        let t = match which {
                            List::Tombstones => &mut tombs,
                            List::Resurrects => &mut resurrects,
                        };
                        if list.is_empty() {
                            t.remove(name.as_bytes()).map_err(|e| db_err("remove", e))?;
                        } else {
                            t.insert(name.as_bytes(), list.as_slice())
                                .map_err(|e| db_err("insert", e))?;
                        }
                    }
                    Op::PutLeave(key, record) => {
                        leaves
                            .insert(key.as_slice(), record.as_slice())
                            .map_err(|e| db_err("insert", e))?;
                    }
                    Op::PutMisc(key, v) => {
                        misc.insert(*key, v.as_slice())
                            .map_err(|e| db_err("insert", e))?;
                    }
                }
            }
        }
        w.commit().map_err(|e| db_err("commit", e))?;
        if let Some(g) = &self.grouped {
            g.mark();
        }
        Ok(())
    }

    /// The record of `name`'s version and its recorded local stat.
    pub fn version(&self, name: &Name) -> Result<Option<Recorded>, Error> {
        let r = self.db.begin_read().map_err(|e| db_err("begin", e))?;
        let versions = r.open_table(VERSIONS).map_err(|e| db_err("table", e))?;
        let local = r.open_table(LOCAL).map_err(|e| db_err("table", e))?;
        let Some(rec) = versions
            .get(name.as_bytes())
            .map_err(|e| db_err("get", e))?
        else {
            return Ok(None);
        };
        let stat = local
            .get(name.as_bytes())
            .map_err(|e| db_err("get", e))?
            .and_then(|v| LocalStat::from_bytes(v.value()));
        Ok(Some((rec.value().to_vec(), stat)))
    }

    /// Every `(name, record, local stat)`.
    #[allow(clippy::type_complexity)]
    pub fn versions(&self) -> Result<Vec<(Vec<u8>, Vec<u8>, Option<LocalStat>)>, Error> {
        let r = self.db.begin_read().map_err(|e| db_err("begin", e))?;
        let versions = r.open_table(VERSIONS).map_err(|e| db_err("table", e))?;
        let local = r.open_table(LOCAL).map_err(|e| db_err("table", e))?;
        let mut out = Vec::new();
        for item in versions.iter().map_err(|e| db_err("scan", e))? {
            let (k, v) = item.map_err(|e| db_err("scan", e))?;
            let stat = local
                .get(k.value())
                .map_err(|e| db_err("get", e))?
                .and_then(|s| LocalStat::from_bytes(s.value()));
            out.push((k.value().to_vec(), v.value().to_vec(), stat));
        }
        Ok(out)
    }

    /// The encoded `which` list of `name` (empty if none).
    pub fn list(&self, which: List, name: &Name) -> Result<Vec<u8>, Error> {
        let r = self.db.begin_read().map_err(|e| db_err("begin", e))?;
        let t = r
            .open_table(which.table())
            .map_err(|e| db_err("table", e))?;
        Ok(t.get(name.as_bytes())
            .map_err(|e| db_err("get", e))?
            .map(|v| v.value().to_vec())
            .unwrap_or_default())
    }

    /// Every `(signing key, leave record)`.
    pub fn leaves(&self) -> Result<Vec<NamedBytes>, Error> {
        self.scan(LEAVES)
    }

    /// Every `(name, encoded list)` of `which`.
    pub fn all_lists(&self, which: List) -> Result<Vec<NamedBytes>, Error> {
        self.scan(which.table())
    }

    fn scan(
        &self,
        table: TableDefinition<'static, &'static [u8], &'static [u8]>,
    ) -> Result<Vec<NamedBytes>, Error> {
        let r = self.db.begin_read().map_err(|e| db_err("begin", e))?;
        let t = r.open_table(table).map_err(|e| db_err("table", e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| db_err("scan", e))? {
            let (k, v) = item.map_err(|e| db_err("scan", e))?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// A small value.
    pub fn misc(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let r = self.db.begin_read().map_err(|e| db_err("begin", e))?;
        let t = r.open_table(MISC).map_err(|e| db_err("table", e))?;
        Ok(t.get(key)
            .map_err(|e| db_err("get", e))?
            .map(|v| v.value().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn grouped_commits_are_seen_at_once_and_kept_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let m = Meta::open(&path)
                .unwrap()
                .with_grouped_commits(std::time::Duration::from_millis(20));
            for i in 0..50u8 {
                m.apply(&[Op::PutMisc("k", vec![i])]).unwrap();
                assert_eq!(m.misc("k").unwrap(), Some(vec![i]));
            }
            m.flush().unwrap();
        }
        // Closed on drop, although the syncer thread lives on.
        let m = Meta::open(&path).unwrap();
        assert_eq!(m.misc("k").unwrap(), Some(vec![49]));
    }

    #[test]
    fn batches_commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let m = Meta::open(&path).unwrap();
            let stat = LocalStat {
                ino: 7,
                size: 100,
                mtime_ns: -5,
            };
            m.apply(&[
                Op::PutVersion {
                    name: n("a"),
                    record: b"ra".to_vec(),
                    stat: Some(stat),
                },
                Op::PutVersion {
                    name: n("b"),
                    record: b"rb".to_vec(),
                    stat: None,
                },
                Op::PutList(List::Tombstones, n("c"), b"tc".to_vec()),
                Op::PutList(List::Resurrects, n("c"), b"rc".to_vec()),
                Op::PutLeave(b"key".to_vec(), b"leave".to_vec()),
                Op::PutMisc("k", b"v".to_vec()),
            ])
            .unwrap();
            assert_eq!(
                m.version(&n("a")).unwrap(),
                Some((b"ra".to_vec(), Some(stat)))
            );
            m.apply(&[Op::DelVersion(n("b"))]).unwrap();
        }
        let m = Meta::open(&path).unwrap();
        let all = m.versions().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(m.version(&n("b")).unwrap(), None);
        assert_eq!(m.list(List::Tombstones, &n("c")).unwrap(), b"tc");
        assert_eq!(m.list(List::Resurrects, &n("c")).unwrap(), b"rc");
        assert_eq!(m.list(List::Tombstones, &n("a")).unwrap(), b"");
        assert_eq!(
            m.leaves().unwrap(),
            vec![(b"key".to_vec(), b"leave".to_vec())]
        );
        assert_eq!(m.misc("k").unwrap(), Some(b"v".to_vec()));
        m.apply(&[Op::PutList(List::Tombstones, n("c"), Vec::new())])
            .unwrap();
        assert!(m.all_lists(List::Tombstones).unwrap().is_empty());
        assert_eq!(m.all_lists(List::Resurrects).unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
