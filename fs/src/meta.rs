//! The metadata store: `~/.lockbox/meta.redb`, an embedded, crash-safe
//! key-value database (redb) beside the ciphertext store.
//!
//! It holds, per file name, the signed record of the version in the store
//! and the local `stat` of the store file when that record was written
//! (`versions`, `local`); per name the signed tombstones (`tombstones`) and
//! resurrects (`resurrects`); per signing key the signed leaves and evictions
//! (`leaves`); per name the [`State`] lockbox gave a file when it made it
//! (`states`: a failed seal, a conflict copy); and a few small values
//! (`misc`). Records are opaque bytes here: the mesh (`lockbox-net`) gives
//! them meaning. Every change is one transaction, so a crash leaves the
//! tables as they were before or after it. A file's state is read from
//! `states` only, never from its name: names are the user's.
//!
//! In the agent, changes are written back in groups
//! ([`Meta::with_grouped_commits`]): a change is applied to an in-memory
//! layer that every read sees at once, and a background thread commits what
//! gathered in one durable transaction per window (the same window as the
//! store folder's syncs). A crash or power loss undoes at most the last
//! window of records — as it may the last window of renames and deletes —
//! and never leaves the database torn: each window is one transaction, and
//! each [`Meta::apply`] lands in one window whole. A redb commit per change
//! cost more than everything else a rename does.
//!
//! The record of a version is written just after its ciphertext is renamed
//! into the store, so a crash between the two can leave a store file newer
//! than its record. The `local` stat tells: at start the agent re-hashes
//! every store file whose stat differs from the recorded one
//! ([`LocalStat::of`]) and records it as a new local version.

use std::path::Path;

use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::grouped::GroupedSync;

use crate::name::Name;
use crate::{lock, Error};

const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
const LOCAL: TableDefinition<&[u8], &[u8]> = TableDefinition::new("local");
const TOMBSTONES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tombstones");
const RESURRECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("resurrects");
const LEAVES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("leaves");
const STATES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("states");
/// Per folder path, its live signed folder versions (format 3).
const FOLDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("folders");

/// What lockbox recorded about a file when it made it (the `states`
/// table; see `docs/format.md`, "The metadata database"). A file with no
/// recorded state is an ordinary one, ciphertext or plaintext by its
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The sweep could not seal it: a plaintext kept out of the mesh.
    Failed,
    /// The losing side of a concurrent edit, kept under a name of its own.
    Conflict,
}

impl State {
    /// The value stored in `states`.
    fn to_bytes(self) -> &'static [u8] {
        match self {
            State::Failed => b"failed",
            State::Conflict => b"conflict",
        }
    }

    /// A stored value; `None` for one this lockbox does not know (the file
    /// is then treated as an ordinary one).
    fn from_bytes(b: &[u8]) -> Option<State> {
        match b {
            b"failed" => Some(State::Failed),
            b"conflict" => Some(State::Conflict),
            _ => None,
        }
    }
}

/// The per-name record lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// Signed deletes.
    Tombstones,
    /// Signed re-adds.
    Resurrects,
    /// Signed folder versions (the live ones).
    Folders,
}

const MISC: TableDefinition<&str, &[u8]> = TableDefinition::new("misc");

/// What identifies one store file's bytes without reading them: inode,
/// size and modification time in nanoseconds. Kept with a version's record
/// (so without the device, which the store's folder fixes), and the base of
/// the mount's key for a store version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
        std::fs::symlink_metadata(path).map(|m| LocalStat::from_metadata(&m))
    }

    /// The stat of a store file from its metadata.
    pub fn from_metadata(m: &std::fs::Metadata) -> LocalStat {
        use std::os::unix::fs::MetadataExt;
        LocalStat {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        }
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
    /// Forget the version of `name`, and its recorded state (the file is
    /// gone).
    DelVersion(Name),
    /// Record the state of `name`'s file (`None` makes it an ordinary file).
    SetState(Name, Option<State>),
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

/// The tables, by index into an [`Overlay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tbl {
    Versions = 0,
    Local = 1,
    Tombstones = 2,
    Resurrects = 3,
    Leaves = 4,
    States = 5,
    Folders = 6,
    Misc = 7,
}

const TABLES: usize = 8;

/// Every table, in index order.
const ALL_TABLES: [Tbl; TABLES] = [
    Tbl::Versions,
    Tbl::Local,
    Tbl::Tombstones,
    Tbl::Resurrects,
    Tbl::Leaves,
    Tbl::States,
    Tbl::Folders,
    Tbl::Misc,
];

/// The byte-keyed tables, in index order: all but `misc`, the last.
const BYTE_TABLES: &[Tbl] = ALL_TABLES.split_at(Tbl::Misc as usize).0;

impl From<List> for Tbl {
    fn from(l: List) -> Tbl {
        match l {
            List::Tombstones => Tbl::Tombstones,
            List::Resurrects => Tbl::Resurrects,
            List::Folders => Tbl::Folders,
        }
    }
}

/// One key of one table set to a value, or removed (`None`).
type Entry = (Tbl, Vec<u8>, Option<Vec<u8>>);

/// What the operations do to the tables: the one translation used both
/// for a direct commit and for the write-back overlay.
fn entries(ops: &[Op]) -> Vec<Entry> {
    let mut out = Vec::with_capacity(ops.len() * 2);
    for op in ops {
        match op {
            Op::PutVersion { name, record, stat } => {
                out.push((
                    Tbl::Versions,
                    name.as_bytes().to_vec(),
                    Some(record.clone()),
                ));
                let stat = stat.map(|s| s.to_bytes().to_vec());
                out.push((Tbl::Local, name.as_bytes().to_vec(), stat));
            }
            Op::DelVersion(name) => {
                out.push((Tbl::Versions, name.as_bytes().to_vec(), None));
                out.push((Tbl::Local, name.as_bytes().to_vec(), None));
                out.push((Tbl::States, name.as_bytes().to_vec(), None));
            }
            Op::SetState(name, state) => {
                let v = state.map(|s| s.to_bytes().to_vec());
                out.push((Tbl::States, name.as_bytes().to_vec(), v));
            }
            Op::PutList(which, name, list) => {
                let v = (!list.is_empty()).then(|| list.clone());
                out.push(((*which).into(), name.as_bytes().to_vec(), v));
            }
            Op::PutLeave(key, record) => {
                out.push((Tbl::Leaves, key.clone(), Some(record.clone())));
            }
            Op::PutMisc(key, v) => {
                out.push((Tbl::Misc, key.as_bytes().to_vec(), Some(v.clone())));
            }
        }
    }
    out
}

/// Changes applied but not yet in the database, per table and key.
#[derive(Debug, Default)]
struct Overlay {
    tables: [std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>; TABLES],
}

impl Overlay {
    fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| t.is_empty())
    }

    fn put(&mut self, (t, k, v): Entry) {
        self.tables[t as usize].insert(k, v);
    }

    fn get(&self, t: Tbl, k: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.tables[t as usize].get(k)
    }

    fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        ALL_TABLES
            .into_iter()
            .zip(&self.tables)
            .flat_map(|(tbl, t)| t.iter().map(move |(k, v)| (tbl, k.clone(), v.clone())))
    }
}

/// The write-back layers of grouped mode: `pending` takes new changes;
/// `flushing` is what is being committed (still read from until the commit
/// is done).
#[derive(Default)]
struct Layers {
    pending: Overlay,
    flushing: Option<Arc<Overlay>>,
    /// A read snapshot of the database, shared by the lookups that miss
    /// the layers (opening a read transaction per lookup was a fifth of a
    /// rename). Grouped mode only: there the database changes only by a
    /// write-back, which replaces it in the same step as it lets go of
    /// `flushing`, so no lookup sees neither.
    snapshot: Option<Arc<Snapshot>>,
    /// What to do once `pending` is durable ([`Meta::apply_then`]), in
    /// the order it was asked.
    after: Vec<AfterCommit>,
}

/// An action that waits for changes to be durable ([`Meta::apply_then`]).
type AfterCommit = Box<dyn FnOnce() + Send>;

/// A read snapshot of the database with every table open.
struct Snapshot {
    /// The byte-keyed tables, by `Tbl` index (all but `misc`).
    bytes: Vec<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
    misc: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl Snapshot {
    fn open(db: &Database) -> Result<Snapshot, Error> {
        let r = db.begin_read().map_err(|e| db_err("begin", e))?;
        let bytes = BYTE_TABLES
            .iter()
            .map(|t| r.open_table(byte_table(*t)).map_err(|e| db_err("table", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let misc = r.open_table(MISC).map_err(|e| db_err("table", e))?;
        Ok(Snapshot { bytes, misc })
    }

    fn get(&self, t: Tbl, k: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let value = if t == Tbl::Misc {
            let key = std::str::from_utf8(k).map_err(|e| db_err("misc key", e))?;
            self.misc.get(key).map_err(|e| db_err("get", e))?
        } else {
            self.bytes[t as usize]
                .get(k)
                .map_err(|e| db_err("get", e))?
        };
        Ok(value.map(|v| v.value().to_vec()))
    }
}

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layers")
            .field("pending", &self.pending)
            .field("flushing", &self.flushing)
            .field("snapshot", &self.snapshot.is_some())
            .finish()
    }
}

impl Layers {
    /// The newest value of a key held in memory, if any.
    fn get(&self, t: Tbl, k: &[u8]) -> Option<Option<Vec<u8>>> {
        self.pending
            .get(t, k)
            .or_else(|| self.flushing.as_ref().and_then(|f| f.get(t, k)))
            .cloned()
    }
}

/// The database and the in-memory layers over it, with the locks that
/// order their changes: what a [`Meta`] and its write-back thread share.
#[derive(Debug)]
struct MetaDb {
    db: Database,
    /// Whether every change goes through the layers (grouped mode).
    grouped: std::sync::atomic::AtomicBool,
    layers: Mutex<Layers>,
    /// Held while a write-back commits and updates the layers, and while a
    /// scan merges the database with the layers (so nothing moves between
    /// them meanwhile).
    flush_lock: Mutex<()>,
    /// Held for a whole write-back (one at a time).
    write_lock: Mutex<()>,
    /// Run by each write-back after it took the pending changes and before
    /// it commits them (see [`Meta::with_grouped_commits_after`]).
    before_commit: std::sync::OnceLock<BeforeCommit>,
}

struct BeforeCommit(Box<dyn Fn() -> Result<(), Error> + Send + Sync>);

impl std::fmt::Debug for BeforeCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeCommit")
    }
}

/// The metadata database of one envoy.
#[derive(Debug)]
pub struct Meta {
    inner: Arc<MetaDb>,
    /// Set when commits are grouped (write-back): marked after each change.
    grouped: Option<Arc<GroupedSync>>,
}

fn db_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Meta(format!("{what}: {e}"))
}

/// Write `entries` in one durable transaction.
fn commit(db: &Database, entries: impl Iterator<Item = Entry>) -> Result<(), Error> {
    let w = db.begin_write().map_err(|e| db_err("begin", e))?;
    {
        let mut byte_tables = BYTE_TABLES
            .iter()
            .map(|t| w.open_table(byte_table(*t)).map_err(|e| db_err("table", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut misc = w.open_table(MISC).map_err(|e| db_err("table", e))?;
        for (t, k, v) in entries {
            if t == Tbl::Misc {
                let key = std::str::from_utf8(&k).map_err(|e| db_err("misc key", e))?;
                match v {
                    Some(v) => misc.insert(key, v.as_slice()).map(drop),
                    None => misc.remove(key).map(drop),
                }
                .map_err(|e| db_err("write", e))?;
                continue;
            }
            let table = &mut byte_tables[t as usize];
            match v {
                Some(v) => table.insert(k.as_slice(), v.as_slice()).map(drop),
                None => table.remove(k.as_slice()).map(drop),
            }
            .map_err(|e| db_err("write", e))?;
        }
    }
    w.commit().map_err(|e| db_err("commit", e))
}

impl MetaDb {
    /// Commit the pending layer durably (grouped mode). On failure the
    /// changes stay in memory, under any newer ones, for the next try.
    fn write_back(&self) -> Result<(), Error> {
        self.write_back_with(self.before_commit.get())
    }

    /// [`MetaDb::write_back`], running `before` (if any) between taking the
    /// batch and committing it.
    fn write_back_with(&self, before: Option<&BeforeCommit>) -> Result<(), Error> {
        // One write-back at a time. It is never taken under the store's
        // change lock, so `before_commit` may take that lock.
        let _writer = lock(&self.write_lock);
        let batch = {
            let mut layers = lock(&self.layers);
            if layers.pending.is_empty() && layers.after.is_empty() {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut layers.pending));
            layers.flushing = Some(batch.clone());
            (batch, std::mem::take(&mut layers.after))
        };
        let (batch, after) = batch;
        let result = match before {
            Some(before) => (before.0)(),
            None => Ok(()),
        };
        // A scan must not fall between the commit and the layers' update.
        let _flush = lock(&self.flush_lock);
        let result = result.and_then(|()| commit(&self.db, batch.entries()));
        // A lookup that misses the layers from now on must see the commit.
        let snapshot = match &result {
            Ok(()) => Snapshot::open(&self.db).ok().map(Arc::new),
            Err(_) => None,
        };
        let mut layers = lock(&self.layers);
        layers.flushing = None;
        layers.snapshot = snapshot;
        if result.is_err() {
            let newer = std::mem::take(&mut layers.pending);
            let mut back = Overlay::default();
            batch.entries().for_each(|e| back.put(e));
            newer.entries().for_each(|e| back.put(e));
            layers.pending = back;
            let newer = std::mem::take(&mut layers.after);
            layers.after = after.into_iter().chain(newer).collect();
            return result;
        }
        drop(layers);
        after.into_iter().for_each(|a| a());
        result
    }

    /// The value of `k` in table `t`: the newest in memory, else the
    /// database's (through the shared snapshot in grouped mode).
    fn get(&self, t: Tbl, k: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let snapshot = {
            let mut layers = lock(&self.layers);
            if let Some(v) = layers.get(t, k) {
                return Ok(v);
            }
            if self.grouped.load(std::sync::atomic::Ordering::Relaxed) && layers.snapshot.is_none()
            {
                layers.snapshot = Some(Arc::new(Snapshot::open(&self.db)?));
            }
            layers.snapshot.clone()
        };
        match snapshot {
            Some(s) => s.get(t, k),
            None => Snapshot::open(&self.db)?.get(t, k),
        }
    }

    /// Every key and value of a byte-keyed table, in key order, with the
    /// in-memory layers applied.
    fn scan(&self, t: Tbl) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>, Error> {
        let _flush = lock(&self.flush_lock);
        let r = self.db.begin_read().map_err(|e| db_err("begin", e))?;
        let table = r
            .open_table(byte_table(t))
            .map_err(|e| db_err("table", e))?;
        let mut out = std::collections::BTreeMap::new();
        for item in table.iter().map_err(|e| db_err("scan", e))? {
            let (k, v) = item.map_err(|e| db_err("scan", e))?;
            out.insert(k.value().to_vec(), v.value().to_vec());
        }
        let layers = lock(&self.layers);
        // No commit runs (we hold its lock): what a write-back took is
        // still in `flushing`, under the newer `pending`.
        let flushing = layers.flushing.as_deref().into_iter();
        for overlay in flushing.chain(std::iter::once(&layers.pending)) {
            for (k, v) in &overlay.tables[t as usize] {
                match v {
                    Some(v) => out.insert(k.clone(), v.clone()),
                    None => out.remove(k),
                };
            }
        }
        Ok(out)
    }
}

impl Drop for MetaDb {
    /// Closing writes back what is still in memory (the agent also flushes
    /// at shutdown; this covers any other owner).
    fn drop(&mut self) {
        // Without the hook: it takes the store's change lock, which the
        // dropping thread may hold (a journal entry that held the last
        // reference). The agent runs the hook's round itself at shutdown,
        // before its last flush, so nothing waits by now.
        if let Err(e) = self.write_back_with(None) {
            tracing::warn!("cannot write the metadata back at close: {e}");
        }
        lock(&self.layers).snapshot = None;
    }
}

/// The definition of a byte-keyed table (`misc`, keyed by `str`, is opened
/// by its callers itself).
fn byte_table(t: Tbl) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    match t {
        Tbl::Versions => VERSIONS,
        Tbl::Local => LOCAL,
        Tbl::Tombstones => TOMBSTONES,
        Tbl::Resurrects => RESURRECTS,
        Tbl::States => STATES,
        Tbl::Folders => FOLDERS,
        Tbl::Leaves | Tbl::Misc => LEAVES,
    }
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
        commit(&db, std::iter::empty())?; // creates the tables
        Ok(Meta {
            inner: Arc::new(MetaDb {
                db,
                grouped: std::sync::atomic::AtomicBool::new(false),
                layers: Mutex::new(Layers::default()),
                flush_lock: Mutex::new(()),
                write_lock: Mutex::new(()),
                before_commit: std::sync::OnceLock::new(),
            }),
            grouped: None,
        })
    }

    /// Write changes back in groups within `window` (the agent's; the CLI
    /// commits durably one by one): a change is applied in memory at once,
    /// seen by every read, and a background thread commits what gathered
    /// in one durable transaction per window. [`Meta::flush`] commits
    /// everything at once (shutdown).
    pub fn with_grouped_commits(self, window: std::time::Duration) -> Meta {
        self.with_grouped_commits_after(window, || Ok(()))
    }

    /// [`Meta::with_grouped_commits`], running `before` in every write-back
    /// after it took the changes to commit and before it commits them; an
    /// error leaves them in memory for the next write-back. The agent makes
    /// the store's waiting seals durable there, so no durable record names
    /// a file a crash could still take back. Every change `before` must
    /// cover was made before it was applied here, so it is in the batch.
    pub fn with_grouped_commits_after(
        mut self,
        window: std::time::Duration,
        before: impl Fn() -> Result<(), Error> + Send + Sync + 'static,
    ) -> Meta {
        let _ = self.inner.before_commit.set(BeforeCommit(Box::new(before)));
        // Weak: dropping the Meta closes the database; the syncer then has
        // nothing left to do.
        let inner = Arc::downgrade(&self.inner);
        let flush = move || {
            if let Some(inner) = inner.upgrade() {
                if let Err(e) = inner.write_back() {
                    tracing::warn!(
                        "cannot write the metadata back: {e} (kept in memory; tried again \
                         with the next change and at shutdown)"
                    );
                }
            }
        };
        match GroupedSync::start("meta-sync", window, flush) {
            Ok(g) => {
                self.grouped = Some(g);
                self.inner
                    .grouped
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("cannot start the metadata syncer ({e}): syncing per commit"),
        }
        self
    }

    /// Make every change so far durable.
    pub fn flush(&self) -> Result<(), Error> {
        if let Some(g) = &self.grouped {
            g.clear();
        }
        self.inner.write_back()
    }

    /// Apply `ops` atomically: durable at once, or (grouped) in memory now
    /// and durable within the window, all in the same transaction.
    pub fn apply(&self, ops: &[Op]) -> Result<(), Error> {
        if ops.is_empty() {
            return Ok(());
        }
        match &self.grouped {
            None => commit(&self.inner.db, entries(ops).into_iter()),
            Some(g) => {
                let mut layers = lock(&self.inner.layers);
                entries(ops).into_iter().for_each(|e| layers.pending.put(e));
                drop(layers);
                g.mark();
                Ok(())
            }
        }
    }

    /// [`Meta::apply`], then `after` once `ops` are durable: at once
    /// without grouping (and only if the commit succeeded), else after the
    /// write-back that commits them (a failed one keeps it for the next).
    /// For what must not outlive its record on disk, such as the held
    /// bytes of a delete whose tombstone this records: a crash before the
    /// commit finds them still there.
    pub fn apply_then(
        &self,
        ops: &[Op],
        after: impl FnOnce() + Send + 'static,
    ) -> Result<(), Error> {
        match &self.grouped {
            None => {
                self.apply(ops)?;
                after();
                Ok(())
            }
            Some(g) => {
                let mut layers = lock(&self.inner.layers);
                entries(ops).into_iter().for_each(|e| layers.pending.put(e));
                layers.after.push(Box::new(after));
                drop(layers);
                g.mark();
                Ok(())
            }
        }
    }

    /// The record of `name`'s version and its recorded local stat.
    pub fn version(&self, name: &Name) -> Result<Option<Recorded>, Error> {
        let Some(rec) = self.inner.get(Tbl::Versions, name.as_bytes())? else {
            return Ok(None);
        };
        let stat = self
            .inner
            .get(Tbl::Local, name.as_bytes())?
            .and_then(|v| LocalStat::from_bytes(&v));
        Ok(Some((rec, stat)))
    }

    /// Every `(name, record, local stat)`.
    #[allow(clippy::type_complexity)]
    pub fn versions(&self) -> Result<Vec<(Vec<u8>, Vec<u8>, Option<LocalStat>)>, Error> {
        let versions = self.inner.scan(Tbl::Versions)?;
        let local = self.inner.scan(Tbl::Local)?;
        Ok(versions
            .into_iter()
            .map(|(k, v)| {
                let stat = local.get(&k).and_then(|s| LocalStat::from_bytes(s));
                (k, v, stat)
            })
            .collect())
    }

    /// The encoded `which` list of `name` (empty if none).
    pub fn list(&self, which: List, name: &Name) -> Result<Vec<u8>, Error> {
        Ok(self
            .inner
            .get(which.into(), name.as_bytes())?
            .unwrap_or_default())
    }

    /// Every `(signing key, leave record)`.
    pub fn leaves(&self) -> Result<Vec<NamedBytes>, Error> {
        Ok(self.inner.scan(Tbl::Leaves)?.into_iter().collect())
    }

    /// Every `(name, encoded list)` of `which`.
    pub fn all_lists(&self, which: List) -> Result<Vec<NamedBytes>, Error> {
        Ok(self.inner.scan(which.into())?.into_iter().collect())
    }

    /// A small value.
    pub fn misc(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get(Tbl::Misc, key.as_bytes())
    }

    /// The recorded state of `name`'s file (`None`: an ordinary file).
    pub fn state(&self, name: &Name) -> Result<Option<State>, Error> {
        Ok(self
            .inner
            .get(Tbl::States, name.as_bytes())?
            .and_then(|v| State::from_bytes(&v)))
    }

    /// Every name with a recorded state (raw name bytes), in name order.
    pub fn states(&self) -> Result<Vec<(Vec<u8>, State)>, Error> {
        Ok(self
            .inner
            .scan(Tbl::States)?
            .into_iter()
            .filter_map(|(k, v)| State::from_bytes(&v).map(|s| (k, s)))
            .collect())
    }

    /// A handle that reaches this database while it is open, without
    /// keeping it open (the store's; see [`WeakMeta`]).
    pub fn downgrade(&self) -> WeakMeta {
        WeakMeta {
            inner: Arc::downgrade(&self.inner),
            grouped: self.grouped.clone(),
        }
    }
}

/// A [`Meta`] held without keeping the database open: the store reads and
/// records file states through it, while the owner of the [`Meta`] (the
/// replica, or a CLI command) keeps it open. A strong handle would close a
/// loop (the database's write-back holds the store) and the database would
/// never be written back at close.
#[derive(Debug, Clone, Default)]
pub struct WeakMeta {
    inner: std::sync::Weak<MetaDb>,
    grouped: Option<Arc<GroupedSync>>,
}

impl WeakMeta {
    /// The database, if it is still open.
    pub fn upgrade(&self) -> Option<Meta> {
        Some(Meta {
            inner: self.inner.upgrade()?,
            grouped: self.grouped.clone(),
        })
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
        drop(m);
        // Dropping writes back what is still in memory (a window of an
        // hour: only the drop can have written it).
        {
            let m = Meta::open(&path)
                .unwrap()
                .with_grouped_commits(std::time::Duration::from_secs(3600));
            m.apply(&[Op::PutMisc("k", vec![50])]).unwrap();
        }
        assert_eq!(
            Meta::open(&path).unwrap().misc("k").unwrap(),
            Some(vec![50])
        );
    }

    #[test]
    fn a_failing_before_commit_keeps_the_changes_for_the_next_write_back() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let calls = Arc::new(AtomicUsize::new(0));
        {
            let c = calls.clone();
            let m = Meta::open(&path).unwrap().with_grouped_commits_after(
                std::time::Duration::from_secs(3600),
                move || match c.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(Error::Meta("the store could not sync".into())),
                    _ => Ok(()),
                },
            );
            m.apply(&[Op::PutMisc("k", vec![1])]).unwrap();
            assert!(m.flush().is_err());
            assert_eq!(m.misc("k").unwrap(), Some(vec![1]), "kept in memory");
            m.apply(&[Op::PutMisc("j", vec![2])]).unwrap();
            m.flush().unwrap();
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        }
        let m = Meta::open(&path).unwrap();
        assert_eq!(m.misc("k").unwrap(), Some(vec![1]));
        assert_eq!(m.misc("j").unwrap(), Some(vec![2]));
    }

    #[test]
    fn a_scan_during_a_write_back_sees_what_it_took() {
        let dir = tempfile::tempdir().unwrap();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let path = dir.path().join("meta.redb");
        let m = Arc::new(Meta::open(&path).unwrap().with_grouped_commits_after(
            std::time::Duration::from_secs(3600),
            move || {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                entered_tx.send(()).unwrap();
                lock(&go_rx).recv().unwrap();
                Ok(())
            },
        ));
        let put = |name: &str| Op::PutVersion {
            name: Name::new(name).unwrap(),
            record: name.as_bytes().to_vec(),
            stat: None,
        };
        m.apply(&[put("taken")]).unwrap();
        let flusher = {
            let m = m.clone();
            std::thread::spawn(move || m.flush())
        };
        // The write-back took "taken" and waits in its hook: a newer change
        // and a scan both go on meanwhile.
        entered_rx.recv().unwrap();
        m.apply(&[put("newer")]).unwrap();
        let names: Vec<Vec<u8>> = m.versions().unwrap().into_iter().map(|v| v.0).collect();
        assert_eq!(names, vec![b"newer".to_vec(), b"taken".to_vec()]);
        go_tx.send(()).unwrap();
        flusher.join().unwrap().unwrap();
        let names: Vec<Vec<u8>> = m.versions().unwrap().into_iter().map(|v| v.0).collect();
        assert_eq!(names, vec![b"newer".to_vec(), b"taken".to_vec()]);
        // The drop writes "newer" back without the hook (which may take a
        // lock the dropping thread holds).
        drop(m);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        let names: Vec<Vec<u8>> = Meta::open(&path)
            .unwrap()
            .versions()
            .unwrap()
            .into_iter()
            .map(|v| v.0)
            .collect();
        assert_eq!(names, vec![b"newer".to_vec(), b"taken".to_vec()]);
    }

    /// Everything a reader can ask, for comparing two databases.
    #[allow(clippy::type_complexity)]
    fn view(
        m: &Meta,
    ) -> (
        Vec<Option<Recorded>>,
        Vec<NamedBytes>,
        Vec<NamedBytes>,
        Vec<(Vec<u8>, Vec<u8>, Option<LocalStat>)>,
        Option<Vec<u8>>,
        Vec<Option<State>>,
        Vec<(Vec<u8>, State)>,
    ) {
        let names = ["a", "b", "c"].map(n);
        (
            names.iter().map(|x| m.version(x).unwrap()).collect(),
            m.all_lists(List::Tombstones).unwrap(),
            m.all_lists(List::Resurrects).unwrap(),
            m.versions().unwrap(),
            m.misc("k").unwrap(),
            names.iter().map(|x| m.state(x).unwrap()).collect(),
            m.states().unwrap(),
        )
    }

    fn op_strategy() -> impl proptest::strategy::Strategy<Value = Option<Op>> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec!["a", "b", "c"]).prop_map(n);
        let bytes = prop::collection::vec(any::<u8>(), 0..4);
        prop_oneof![
            (name.clone(), bytes.clone(), any::<Option<u8>>()).prop_map(|(name, record, s)| {
                Some(Op::PutVersion {
                    name,
                    record,
                    stat: s.map(|i| LocalStat {
                        ino: i as u64,
                        size: 1,
                        mtime_ns: -1,
                    }),
                })
            }),
            name.clone().prop_map(|x| Some(Op::DelVersion(x))),
            (any::<bool>(), name.clone(), bytes.clone()).prop_map(|(t, x, b)| {
                let which = if t {
                    List::Tombstones
                } else {
                    List::Resurrects
                };
                Some(Op::PutList(which, x, b))
            }),
            (name.clone(), any::<Option<bool>>()).prop_map(|(x, s)| {
                let state = s.map(|f| if f { State::Failed } else { State::Conflict });
                Some(Op::SetState(x, state))
            }),
            bytes.prop_map(|b| Some(Op::PutMisc("k", b))),
            Just(None), // a flush
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The write-back layers are invisible: after every step a grouped
        /// database reads like one that commits each change at once, and
        /// after a flush and a reopen it holds the same.
        #[test]
        fn write_back_reads_like_direct_commits(
            steps in proptest::collection::vec(proptest::collection::vec(op_strategy(), 1..3), 1..25)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let direct = Meta::open(&dir.path().join("direct.redb")).unwrap();
            let path = dir.path().join("grouped.redb");
            let grouped = Meta::open(&path)
                .unwrap()
                .with_grouped_commits(std::time::Duration::from_secs(3600));
            for step in steps {
                let ops: Vec<Op> = step.iter().flatten().cloned().collect();
                if step.iter().any(|o| o.is_none()) {
                    grouped.flush().unwrap();
                }
                direct.apply(&ops).unwrap();
                grouped.apply(&ops).unwrap();
                proptest::prop_assert_eq!(view(&grouped), view(&direct));
            }
            grouped.flush().unwrap();
            drop(grouped);
            let reopened = Meta::open(&path).unwrap();
            proptest::prop_assert_eq!(view(&reopened), view(&direct));
        }
    }

    /// What waits for a change to be durable runs after its commit, never
    /// before: at once without grouping, at the write-back when grouped.
    #[test]
    fn apply_then_waits_for_the_commit() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let ops = |k: &str| vec![Op::PutList(List::Tombstones, n(k), b"t".to_vec())];
        let direct = Meta::open(&dir.path().join("direct.redb")).unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        direct
            .apply_then(&ops("a"), move || r.store(true, Ordering::SeqCst))
            .unwrap();
        assert!(ran.load(Ordering::SeqCst), "not run after a direct commit");

        let path = dir.path().join("grouped.redb");
        let grouped = Meta::open(&path)
            .unwrap()
            .with_grouped_commits(std::time::Duration::from_secs(3600));
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        grouped
            .apply_then(&ops("b"), move || r.store(true, Ordering::SeqCst))
            .unwrap();
        assert!(!ran.load(Ordering::SeqCst), "run before the write-back");
        assert_eq!(grouped.list(List::Tombstones, &n("b")).unwrap(), b"t");
        grouped.flush().unwrap();
        assert!(ran.load(Ordering::SeqCst), "not run after the write-back");
        drop(grouped);
        let reopened = Meta::open(&path).unwrap();
        assert_eq!(reopened.list(List::Tombstones, &n("b")).unwrap(), b"t");
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

    #[test]
    fn states_are_set_cleared_and_go_with_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let m = Meta::open(&path).unwrap();
            m.apply(&[
                Op::SetState(n("a"), Some(State::Failed)),
                Op::PutVersion {
                    name: n("b"),
                    record: b"rb".to_vec(),
                    stat: None,
                },
                Op::SetState(n("b"), Some(State::Conflict)),
                Op::SetState(n("c"), Some(State::Conflict)),
            ])
            .unwrap();
            assert_eq!(m.state(&n("a")).unwrap(), Some(State::Failed));
            assert_eq!(m.state(&n("b")).unwrap(), Some(State::Conflict));
            // The file goes: its state goes with its version.
            m.apply(&[Op::DelVersion(n("b"))]).unwrap();
            m.apply(&[Op::SetState(n("c"), None)]).unwrap();
        }
        let m = Meta::open(&path).unwrap();
        assert_eq!(m.states().unwrap(), vec![(b"a".to_vec(), State::Failed)]);
        assert_eq!(m.state(&n("b")).unwrap(), None);
        assert_eq!(m.state(&n("c")).unwrap(), None);
    }

    /// A `meta.redb` of format 1 (no `states` table) opens, keeps its
    /// records, reads as having no states and takes new ones.
    #[test]
    fn a_database_made_before_the_states_table_opens_and_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            // The layout of format 1, written with redb directly.
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            for t in [VERSIONS, LOCAL, TOMBSTONES, RESURRECTS, LEAVES] {
                w.open_table(t).unwrap();
            }
            w.open_table(MISC).unwrap();
            w.open_table(VERSIONS)
                .unwrap()
                .insert(&b"a"[..], &b"ra"[..])
                .unwrap();
            w.open_table(MISC).unwrap().insert("k", &b"v"[..]).unwrap();
            w.commit().unwrap();
            let r = db.begin_read().unwrap();
            assert!(r.open_table(STATES).is_err(), "format 1 has no states");
        }
        for grouped in [false, true] {
            let mut m = Meta::open(&path).unwrap();
            if grouped {
                m = m.with_grouped_commits(std::time::Duration::from_secs(3600));
            }
            assert_eq!(m.version(&n("a")).unwrap(), Some((b"ra".to_vec(), None)));
            assert_eq!(m.misc("k").unwrap(), Some(b"v".to_vec()));
            assert_eq!(m.state(&n("a")).unwrap(), None);
            assert!(m.states().unwrap().is_empty());
        }
        let m = Meta::open(&path).unwrap();
        m.apply(&[Op::SetState(n("a"), Some(State::Conflict))])
            .unwrap();
        drop(m);
        let m = Meta::open(&path).unwrap();
        assert_eq!(m.state(&n("a")).unwrap(), Some(State::Conflict));
        assert_eq!(m.version(&n("a")).unwrap(), Some((b"ra".to_vec(), None)));
    }

    #[test]
    fn a_weak_handle_reaches_the_database_only_while_it_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(&dir.path().join("meta.redb")).unwrap();
        let weak = m.downgrade();
        weak.upgrade()
            .unwrap()
            .apply(&[Op::SetState(n("a"), Some(State::Failed))])
            .unwrap();
        assert_eq!(m.state(&n("a")).unwrap(), Some(State::Failed));
        drop(m);
        assert!(weak.upgrade().is_none());
        assert!(WeakMeta::default().upgrade().is_none());
    }
}
