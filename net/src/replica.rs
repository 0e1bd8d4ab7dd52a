//! The replica: one envoy's copy of the user's lockbox as the mesh sees it —
//! the ciphertext store, the signed record of every version, the tombstones
//! and the members of the circle — and the rules that change it.
//!
//! Local changes reach it through the store's [`Journal`] (the mount and the
//! CLI never call it directly): each sealed version gets a signed
//! [`FileVersion`], each delete a signed [`Tombstone`], and both are queued
//! for fan-out. Changes from peers arrive through [`Replica::admit`] (is this
//! version wanted?) and [`Replica::install`] (put it in place), which apply
//! the same rules under the store's change lock, so a local seal and a
//! received version of the same name never overtake each other.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use lockbox_crypto::circle::{verify_endorsement, Endorsement};
use lockbox_crypto::digest::{HashingWriter, Sha256};
use lockbox_crypto::recipients::RecipientEntry;
use lockbox_crypto::sign::{Decoder, Encoder, PublicKey, Signed, SigningKey};
use lockbox_fs::meta::{List, LocalStat, Meta, Op};
use lockbox_fs::name::NameKind;
use lockbox_fs::store::{Journal, StagedFile};
use lockbox_fs::{Name, Sealed, Store};

use crate::records::{self, FileVersion, Leave, LeaveKind, Resurrect, Tombstone, Versioned};
use crate::version::{resolve, Resolution};
use crate::WireName;

/// The `misc` key of the last completed catch-up.
const LAST_CONTACT: &str = "last_contact";

/// Most entries a manifest or tombstone table may hold.
pub const MAX_TABLE_ENTRIES: usize = 1 << 20;

/// Why a version, tombstone or request from a peer was refused; each maps
/// to an HTTP status of the protocol (SPEC §6.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: malformed name, record or body.
    #[error("bad request: {0}")]
    Bad(String),
    /// 403: signed by a key that is not a member of the circle.
    #[error("forbidden: {0}")]
    NotMember(String),
    /// 409: this envoy holds a newer version.
    #[error("conflict: this envoy holds a newer version of {0}")]
    Newer(String),
    /// 410 `tombstoned`: the name was deleted after this version.
    #[error("tombstoned")]
    Tombstoned,
    /// 410 `dormant`: no lockbox for this user here.
    #[error("dormant")]
    Dormant,
    /// 413: over the size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// 507: the receiver's disk is (nearly) full.
    #[error("insufficient storage: {0}% free")]
    DiskFull(u8),
    /// 500: the receiver failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Refusal {
    /// The HTTP status code for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Bad(_) => 400,
            Refusal::NotMember(_) => 403,
            Refusal::Newer(_) => 409,
            Refusal::Tombstoned | Refusal::Dormant => 410,
            Refusal::TooLarge(_) => 413,
            Refusal::DiskFull(_) => 507,
            Refusal::Internal(_) => 500,
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Internal(e.to_string())
}

/// What admitting or installing a version came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Already held: nothing to do.
    Same,
    /// Wanted: store it under this name (the record's name, or its
    /// conflict-copy name when it loses a conflict).
    Store(Name),
}

/// Something for the fan-out to send.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A new local version of this name.
    Version(Name),
    /// A new tombstone.
    Tombstone(Signed<Tombstone>),
    /// A new resurrect.
    Resurrect(Signed<Resurrect>),
}

/// The tables the mesh compares by digest and exchanges whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Signed deletes (`/lockbox/tombstones`).
    Tombstones,
    /// Signed re-adds (`/lockbox/resurrects`).
    Resurrects,
    /// Signed leaves and evictions (`/lockbox/leaves`).
    Leaves,
}

impl Table {
    /// All of them, in the order a catch-up pulls them: membership first,
    /// then what lifts deletes, then deletes — so a copy that a resurrect
    /// lets back in is not removed by the delete it lifts on the way.
    pub const ALL: [Table; 3] = [Table::Leaves, Table::Resurrects, Table::Tombstones];

    /// The endpoint's path segment.
    pub fn path(self) -> &'static str {
        match self {
            Table::Tombstones => "tombstones",
            Table::Resurrects => "resurrects",
            Table::Leaves => "leaves",
        }
    }
}

/// Which files [`Replica::reseal`] re-encrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Only those sealed to a recipient set other than the members.
    Drifted,
    /// Every one (`lockbox reencrypt`).
    All,
}

/// Where the replica keeps what is not in the store.
#[derive(Debug, Clone)]
pub struct ReplicaPaths {
    /// `members/`: one endorsement file per member.
    pub members: PathBuf,
    /// `circle.pub`.
    pub circle_public: PathBuf,
    /// `recipients.txt`, regenerated from the members.
    pub recipients: PathBuf,
    /// `meta.redb`.
    pub meta: PathBuf,
}

/// The members of the circle: envoy name → its endorsement.
#[derive(Debug, Clone, Default)]
pub struct Members {
    by_envoy: BTreeMap<String, Signed<Endorsement>>,
}

impl Members {
    /// The member whose signing key is `key`.
    pub fn by_key(&self, key: &PublicKey) -> Option<&Endorsement> {
        self.by_envoy
            .values()
            .map(|s| s.body())
            .find(|e| e.signing_key == *key)
    }

    /// Member envoy names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_envoy.keys().cloned().collect()
    }

    /// Every endorsement in wire form.
    pub fn endorsements(&self) -> Vec<Vec<u8>> {
        self.by_envoy.values().map(|s| s.to_bytes()).collect()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.by_envoy.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_envoy.is_empty()
    }
}

/// One envoy's replica of the lockbox.
pub struct Replica {
    user: WireName,
    envoy: WireName,
    store: Store,
    meta: Meta,
    signing: SigningKey,
    circle: PublicKey,
    paths: ReplicaPaths,
    members: RwLock<Members>,
    /// This envoy's own endorsement, kept apart from `members`: after it
    /// learns it left, it still shows it in every hello, so the others can
    /// say why they refuse it (it left) instead of "no endorsement".
    own: Option<Signed<Endorsement>>,
    /// Where new local versions and tombstones go (set by the mesh).
    outgoing: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Outgoing>>>,
    /// Called with every name a peer changed (the agent drops the kernel's
    /// cached pages and attributes of it).
    on_remote_change: Mutex<Option<NameHook>>,
    /// Called when the member set changes.
    on_members_change: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Held while `recipients.txt` is rewritten from the members (see
    /// [`Replica::write_recipients`]).
    recipients_file: Mutex<()>,
}

/// A callback that is told a file name.
type NameHook = Box<dyn Fn(&Name) + Send + Sync>;

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("user", &self.user)
            .field("envoy", &self.envoy)
            .finish_non_exhaustive()
    }
}

/// The store's journal: forwards to the replica (a weak link, since the
/// replica owns the store).
#[derive(Debug)]
struct JournalLink(Weak<Replica>);

impl Journal for JournalLink {
    fn changed(&self, name: &Name, sealed: Option<&Sealed>, stat: Option<LocalStat>) {
        if let Some(r) = self.0.upgrade() {
            r.local_changed(name, sealed, None, stat);
        }
    }

    fn removed(&self, name: &Name) {
        if let Some(r) = self.0.upgrade() {
            match r.record(name) {
                Ok(Some(prev)) => r.local_removed(name, &prev),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }

    fn renamed(&self, from: &Name, to: &Name, stat: Option<LocalStat>) {
        if let Some(r) = self.0.upgrade() {
            let moved = r.record(from).ok().flatten();
            if let Some(prev) = &moved {
                r.local_removed(from, prev);
            }
            r.local_changed(to, None, moved.as_ref(), stat);
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a name takes part in the mesh (failed files stay local).
pub fn in_mesh(name: &Name) -> bool {
    name.kind() != NameKind::Failed
}

impl Replica {
    /// Open the replica of an initialised envoy. `store` is the plain store;
    /// the replica installs itself as its journal ([`Replica::store`]).
    pub fn open(
        user: WireName,
        envoy: WireName,
        store: Store,
        signing: SigningKey,
        paths: ReplicaPaths,
    ) -> Result<Arc<Replica>, String> {
        let circle_text = fs::read_to_string(&paths.circle_public).map_err(|e| {
            format!(
                "cannot read {}: {e} (the envoy is not fully initialised: run lockbox init)",
                paths.circle_public.display()
            )
        })?;
        let circle = PublicKey::from_base64(circle_text.trim())
            .map_err(|e| format!("{} is damaged: {e}", paths.circle_public.display()))?;
        let mut meta = Meta::open(&paths.meta).map_err(|e| e.to_string())?;
        // Records become durable with the same bound as the store's seals
        // and renames, and never before them: each write-back first runs a
        // round of the store's grouped syncs, so a durable record never
        // names a seal that a crash could still undo.
        if let Some(window) = store.sync_window() {
            let s = store.clone();
            meta = meta.with_grouped_commits_after(window, move || s.sync_round(false));
        }
        let mut members = load_members(&paths.members, &circle, &user);
        let own = members
            .by_envoy
            .get(envoy.as_str())
            .filter(|e| e.body().signing_key == signing.public())
            .cloned();
        let departed: Vec<PublicKey> = meta
            .leaves()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, r)| Signed::<Leave>::from_trusted_bytes(&r).ok())
            .map(|l| l.body().signing_key)
            .collect();
        members
            .by_envoy
            .retain(|_, e| !departed.contains(&e.body().signing_key));
        Ok(Arc::new_cyclic(|weak| Replica {
            user,
            envoy,
            store: store.with_journal(Arc::new(JournalLink(weak.clone()))),
            meta,
            signing,
            circle,
            paths,
            members: RwLock::new(members),
            own,
            outgoing: Mutex::new(None),
            on_remote_change: Mutex::new(None),
            recipients_file: Mutex::new(()),
            on_members_change: Mutex::new(None),
        }))
    }

    /// Make every record so far durable (shutdown).
    pub fn flush(&self) -> Result<(), String> {
        self.store.deliver_journal();
        self.meta.flush().map_err(|e| e.to_string())
    }

    /// The store, with this replica as its journal: every change made
    /// through it is recorded and fanned out.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The user.
    pub fn user(&self) -> &WireName {
        &self.user
    }

    /// This envoy.
    pub fn envoy(&self) -> &WireName {
        &self.envoy
    }

    /// This envoy's signing key (public half).
    pub fn signing_public(&self) -> PublicKey {
        self.signing.public()
    }

    /// The circle public key.
    pub fn circle(&self) -> PublicKey {
        self.circle
    }

    /// A snapshot of the members.
    pub fn members(&self) -> Members {
        self.members.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// This envoy's own endorsement, in wire form (also after it left).
    pub fn own_endorsement(&self) -> Option<Vec<u8>> {
        self.own.as_ref().map(|s| s.to_bytes())
    }

    /// This envoy's own age recipient, from its endorsement.
    pub fn own_recipient(&self) -> Option<String> {
        self.own.as_ref().map(|s| s.body().recipient.clone())
    }

    /// Send new local versions and tombstones to `tx` from now on.
    pub fn set_outgoing(&self, tx: tokio::sync::mpsc::UnboundedSender<Outgoing>) {
        if let Ok(mut o) = self.outgoing.lock() {
            *o = Some(tx);
        }
    }

    /// Call `f` with every name a peer changed.
    pub fn on_remote_change(&self, f: impl Fn(&Name) + Send + Sync + 'static) {
        if let Ok(mut o) = self.on_remote_change.lock() {
            *o = Some(Box::new(f));
        }
    }

    /// Call `f` whenever the member set changes.
    pub fn on_members_change(&self, f: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut o) = self.on_members_change.lock() {
            *o = Some(Box::new(f));
        }
    }

    fn emit(&self, out: Outgoing) {
        if let Ok(o) = self.outgoing.lock() {
            if let Some(tx) = o.as_ref() {
                let _ = tx.send(out);
            }
        }
    }

    fn remote_changed(&self, name: &Name) {
        if let Ok(o) = self.on_remote_change.lock() {
            if let Some(f) = o.as_ref() {
                f(name);
            }
        }
    }

    // ---- members -------------------------------------------------------

    /// Verify and add endorsements a peer showed us. Returns the envoys that
    /// became members; endorsements that do not verify under our circle key
    /// are skipped (and reported in the error list).
    pub fn learn_members(&self, endorsements: &[Vec<u8>]) -> (Vec<String>, Vec<String>) {
        let mut added = Vec::new();
        let mut refused = Vec::new();
        for bytes in endorsements.iter().take(crate::version::MAX_ENTRIES) {
            if bytes.is_empty() {
                refused.push("the peer sent no endorsement".to_string());
                continue;
            }
            let signed = match Signed::<Endorsement>::from_bytes(bytes) {
                Ok(s) => s,
                Err(e) => {
                    refused.push(format!("unreadable endorsement: {e}"));
                    continue;
                }
            };
            let e = signed.body().clone();
            if verify_endorsement(&signed, &self.circle).is_err() || e.user != self.user.as_str() {
                refused.push(format!(
                    "envoy {:?} is not endorsed by this circle (set up with a different \
                     passphrase or for another user)",
                    e.envoy
                ));
                continue;
            }
            if WireName::new(e.envoy.as_str()).is_err() {
                refused.push(format!("endorsement names a bad envoy {:?}", e.envoy));
                continue;
            }
            if let Some(l) = self.left(&e.signing_key) {
                refused.push(format!(
                    "envoy {:?} {} this circle on {}",
                    e.envoy,
                    l.body().kind.verb(),
                    crate::version::utc_date(l.body().left_unix)
                ));
                continue;
            }
            let Ok(mut members) = self.members.write() else {
                continue;
            };
            let replace = match members.by_envoy.get(&e.envoy) {
                None => true,
                // An envoy set up again (after a purge) has a newer endorsement.
                Some(old) => old.body().created_unix < e.created_unix && old.body() != &e,
            };
            if !replace {
                continue;
            }
            let file = self.paths.members.join(format!("{}.endorsement", e.envoy));
            if let Err(err) = write_file_atomic(&file, &signed.to_bytes()) {
                tracing::warn!("cannot record member {}: {err}", e.envoy);
                continue;
            }
            members.by_envoy.insert(e.envoy.clone(), signed);
            added.push(e.envoy);
        }
        if !added.is_empty() {
            if let Err(e) = self.write_recipients() {
                tracing::warn!("cannot rewrite the recipient set: {e}");
            }
            tracing::info!("new member(s) of the circle: {}", added.join(", "));
            if let Ok(o) = self.on_members_change.lock() {
                if let Some(f) = o.as_ref() {
                    f();
                }
            }
        }
        (added, refused)
    }

    /// Regenerate `recipients.txt` from the members. Two peers' hellos can
    /// add members at the same moment: each rewrite reads the members only
    /// once it holds the file's lock, so the last one written is never an
    /// older set than another's (a lost member would be left out of every
    /// seal until the next change).
    fn write_recipients(&self) -> Result<(), String> {
        let _file = self
            .recipients_file
            .lock()
            .map_err(|_| "the recipient set's lock is poisoned".to_string())?;
        let entries: Vec<RecipientEntry> = self
            .members()
            .by_envoy
            .values()
            .map(|s| RecipientEntry {
                recipient: s.body().recipient.clone(),
                envoy: s.body().envoy.clone(),
            })
            .collect();
        write_file_atomic(
            &self.paths.recipients,
            lockbox_crypto::recipients::encode(&entries).as_bytes(),
        )
        .map_err(|e| e.to_string())
    }

    fn member_names(&self) -> Vec<WireName> {
        self.members()
            .names()
            .into_iter()
            .filter_map(|n| WireName::new(n).ok())
            .collect()
    }

    // ---- records -------------------------------------------------------

    /// The signed record of the version stored as `name`.
    pub fn record(&self, name: &Name) -> Result<Option<Signed<FileVersion>>, String> {
        match self.meta.version(name).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some((bytes, _)) => Signed::<FileVersion>::from_trusted_bytes(&bytes)
                .map(Some)
                .map_err(|e| format!("the record of {name} is damaged: {e}")),
        }
    }

    /// The tombstones of `name`.
    pub fn tombstones(&self, name: &Name) -> Vec<Signed<Tombstone>> {
        decode_records(&self.meta.list(List::Tombstones, name).unwrap_or_default())
    }

    /// The resurrects of `name`.
    pub fn resurrects(&self, name: &Name) -> Vec<Signed<Resurrect>> {
        decode_records(&self.meta.list(List::Resurrects, name).unwrap_or_default())
    }

    /// Whether a version of `name` with vector `vv` is deleted here: a
    /// tombstone covers it and no resurrect lifts that tombstone.
    pub fn is_deleted(&self, name: &Name, vv: &crate::VersionVector) -> bool {
        records::deleted_by(&self.tombstones(name), &self.resurrects(name), vv)
    }

    /// The signed leaves and evictions.
    pub fn leaves(&self) -> Vec<Signed<Leave>> {
        self.meta
            .leaves()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, r)| Signed::<Leave>::from_trusted_bytes(&r).ok())
            .collect()
    }

    /// The leave of the member with signing key `key`, if it left.
    fn left(&self, key: &PublicKey) -> Option<Signed<Leave>> {
        let bytes = self.meta.leaves().ok()?;
        bytes
            .into_iter()
            .find(|(k, _)| k.as_slice() == key.0.as_slice())
            .and_then(|(_, r)| Signed::<Leave>::from_trusted_bytes(&r).ok())
    }

    /// This envoy's own leave or eviction, if it happened.
    pub fn departed(&self) -> Option<Signed<Leave>> {
        self.left(&self.signing.public())
    }

    /// Every record of `table`, each in wire form (a table response).
    pub fn table_records(&self, table: Table) -> Vec<Vec<u8>> {
        let lists = |which| {
            self.meta
                .all_lists(which)
                .unwrap_or_default()
                .into_iter()
                .flat_map(|(_, list)| records_of(&list))
                .collect()
        };
        match table {
            Table::Tombstones => lists(List::Tombstones),
            Table::Resurrects => lists(List::Resurrects),
            Table::Leaves => self
                .meta
                .leaves()
                .unwrap_or_default()
                .into_iter()
                .map(|(_, r)| r)
                .collect(),
        }
    }

    /// The digest of `table` (as announced).
    pub fn table_digest(&self, table: Table) -> [u8; 16] {
        let rows = match table {
            Table::Tombstones => self.meta.all_lists(List::Tombstones),
            Table::Resurrects => self.meta.all_lists(List::Resurrects),
            Table::Leaves => self.meta.leaves(),
        }
        .unwrap_or_default();
        records::table_digest(rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    /// How many records each table holds (for `status`).
    pub fn table_sizes(&self) -> [(Table, usize); 3] {
        Table::ALL.map(|t| (t, self.table_records(t).len()))
    }

    /// Every `(stored name, record)` of the mesh's files.
    pub fn manifest(&self) -> Vec<(Name, Vec<u8>)> {
        let mut out = Vec::new();
        for (name, rec, _) in self.meta.versions().unwrap_or_default() {
            if let Ok(n) = Name::new(name) {
                if in_mesh(&n) {
                    out.push((n, rec));
                }
            }
        }
        out
    }

    /// The manifest in wire form: a list of items, each the stored name and
    /// the record (both length-prefixed).
    pub fn manifest_bytes(&self) -> Vec<u8> {
        let items: Vec<Vec<u8>> = self
            .manifest()
            .into_iter()
            .map(|(n, rec)| {
                let mut e = Encoder::new();
                e.bytes(n.as_bytes());
                e.bytes(&rec);
                e.finish()
            })
            .collect();
        records::encode_list(items.iter().map(|v| v.as_slice()))
    }

    /// The digest of the file table (as announced).
    pub fn files_digest(&self) -> [u8; 16] {
        let m = self.manifest();
        records::table_digest(m.iter().map(|(n, r)| (n.as_bytes(), r.as_slice())))
    }

    fn sign_version(&self, v: FileVersion) -> Signed<FileVersion> {
        Signed::sign(v, &self.signing)
    }

    /// Record a local change of `name`, told by the store's journal (in
    /// the order of the changes, possibly after the file moved on; see
    /// `lockbox_fs::journal`). `moved` is the record of the version renamed
    /// here, if any; `stat` the file's stat right after the change.
    fn local_changed(
        &self,
        name: &Name,
        sealed: Option<&Sealed>,
        moved: Option<&Signed<FileVersion>>,
        stat: Option<LocalStat>,
    ) {
        if !in_mesh(name) {
            return;
        }
        let mut stat = stat;
        if sealed.is_none() && moved.is_none() {
            // Only the file itself says what it holds, and it may have
            // changed since (a later change queued behind this one, or a
            // new mtime): describe it as it is now, with its stat of now.
            // Gone: a later change (queued) moved or removed it.
            match LocalStat::of(&self.store.current_path(name)) {
                Ok(now) => stat = Some(now),
                Err(_) => {
                    tracing::debug!("{name} was gone before its change was recorded");
                    return;
                }
            }
        }
        if let Err(e) = self.record_local(name, sealed, moved, None, stat) {
            tracing::warn!("cannot record the new version of {name}: {e}");
        }
    }

    /// Sign and store the record of the local version in the store as
    /// `name`, whose stat is `stat`. `reseal_of`: the record this version
    /// re-encrypts. With neither `sealed` nor `moved`, the file is read to
    /// describe it.
    fn record_local(
        &self,
        name: &Name,
        sealed: Option<&Sealed>,
        moved: Option<&Signed<FileVersion>>,
        reseal_of: Option<&FileVersion>,
        stat: Option<LocalStat>,
    ) -> Result<Signed<FileVersion>, String> {
        let (plaintext_len, ciphertext_len, hash) = match (sealed, moved) {
            (Some(s), _) => (s.plaintext_len, s.ciphertext_len, s.hash),
            (None, Some(m)) => (
                m.body().plaintext_len,
                m.body().ciphertext_len,
                m.body().hash,
            ),
            (None, None) => describe_file(&self.store.current_path(name))?,
        };
        let recipients = match (moved, sealed) {
            (Some(m), None) => m.body().recipients.clone(),
            (_, Some(s)) => sealed_to(&s.envoys).unwrap_or_else(|| self.member_names()),
            _ => self.member_names(),
        };
        let signed = if let Some(orig) = reseal_of {
            self.sign_version(FileVersion {
                plaintext_len,
                ciphertext_len,
                hash,
                recipients,
                reseal: true,
                ..orig.clone()
            })
        } else {
            let prev = self.record(name).ok().flatten();
            let tombs = self.tombstones(name);
            if prev.is_none() && records::has_live_tombstone(&tombs, &self.resurrects(name)) {
                // A deliberate re-add of a deleted name: lift the delete
                // everywhere, then seal a version that comes after it.
                self.record_resurrect(name, &tombs)?;
            }
            let mut vv = prev.map(|p| p.body().vv.clone()).unwrap_or_default();
            vv = vv.merge(&records::floor(&tombs));
            vv.bump(&self.envoy).map_err(|e| e.to_string())?;
            self.sign_version(FileVersion {
                user: self.user.clone(),
                name: name.clone(),
                vv,
                author: self.envoy.clone(),
                sealed_unix: now_unix(),
                plaintext_len,
                ciphertext_len,
                hash,
                recipients,
                reseal: false,
            })
        };
        self.meta
            .apply(&[Op::PutVersion {
                name: name.clone(),
                record: signed.to_bytes(),
                stat,
            }])
            .map_err(|e| e.to_string())?;
        self.emit(Outgoing::Version(name.clone()));
        Ok(signed)
    }

    /// Record the local delete of `name`, whose version was `prev` (told by
    /// the store's journal, in order with every other local change).
    fn local_removed(&self, name: &Name, prev: &Signed<FileVersion>) {
        let t = Signed::sign(
            Tombstone {
                user: self.user.clone(),
                name: name.clone(),
                vv: prev.body().vv.clone(),
                author: self.envoy.clone(),
                deleted_unix: now_unix(),
            },
            &self.signing,
        );
        let mut tombs = self.tombstones(name);
        tombs.push(t.clone());
        let tombs = records::merge_antichain(tombs);
        let result = self.meta.apply(&[
            Op::DelVersion(name.clone()),
            Op::PutList(List::Tombstones, name.clone(), encode_records(&tombs)),
        ]);
        match result {
            Ok(()) => self.emit(Outgoing::Tombstone(t)),
            Err(e) => tracing::warn!("cannot record the delete of {name}: {e}"),
        }
    }

    /// Bring the records in line with the store after the agent was down or
    /// crashed: a store file with no record, or whose stat differs from the
    /// recorded one, is hashed and, if its bytes changed, recorded as a new
    /// local version; a record whose file is gone is dropped (a peer will
    /// send the file back). Returns how many records changed.
    pub fn reconcile(&self) -> Result<usize, String> {
        let _guard = self.store.change_lock();
        let mut changed = 0;
        let entries = self.store.list().map_err(|e| e.to_string())?;
        let mut seen = std::collections::HashSet::new();
        for entry in entries {
            seen.insert(entry.name.clone());
            if !entry.is_age || !in_mesh(&entry.name) {
                continue;
            }
            let path = self.store.path_of(&entry.name);
            let stat = LocalStat::of(&path).ok();
            let known = self.meta.version(&entry.name).map_err(|e| e.to_string())?;
            let record = known
                .as_ref()
                .and_then(|(b, _)| Signed::<FileVersion>::from_trusted_bytes(b).ok());
            if let (Some((_, Some(s))), Some(_)) = (&known, &record) {
                if Some(*s) == stat {
                    continue;
                }
            }
            let (_, _, hash) = describe_file(&path)?;
            // A file received just before a crash carries its record, which
            // may not have been made durable with the others.
            let record = record.filter(|r| r.body().hash == hash).or_else(|| {
                self.store
                    .attached_record(&entry.name)
                    .and_then(|b| Signed::<FileVersion>::from_bytes(&b).ok())
                    .filter(|r| {
                        r.body().hash == hash
                            && r.body().fits_name(&entry.name)
                            && self.members().by_key(&r.signer()).is_some()
                    })
            });
            match record {
                Some(r) if r.body().hash == hash => {
                    self.meta
                        .apply(&[Op::PutVersion {
                            name: entry.name.clone(),
                            record: r.to_bytes(),
                            stat,
                        }])
                        .map_err(|e| e.to_string())?;
                }
                _ => {
                    tracing::info!("recording {} as a new local version", entry.name);
                    self.record_local(&entry.name, None, None, None, stat)?;
                    changed += 1;
                }
            }
        }
        for (name, _, _) in self.meta.versions().map_err(|e| e.to_string())? {
            if let Ok(n) = Name::new(name) {
                if !seen.contains(&n) {
                    tracing::info!("{n} is gone from the store: a peer will send it again");
                    self.meta
                        .apply(&[Op::DelVersion(n)])
                        .map_err(|e| e.to_string())?;
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    // ---- from peers ----------------------------------------------------

    /// Check a version offered by a peer for `name`, before its body is read.
    pub fn admit(&self, name: &Name, rec: &Signed<FileVersion>) -> Result<Admission, Refusal> {
        let v = rec.body();
        if self.members().by_key(&rec.signer()).is_none() {
            return Err(Refusal::NotMember(format!(
                "the version of {name} is signed by {}, which is not a member of this circle",
                rec.signer()
            )));
        }
        if v.user != self.user {
            return Err(Refusal::Bad(format!("the record is for user {}", v.user)));
        }
        if !v.fits_name(name) || !in_mesh(name) {
            return Err(Refusal::Bad(format!(
                "a record of {} cannot be stored as {name}",
                v.name
            )));
        }
        self.decide(name, v)
    }

    /// Where an admitted version goes, given what is held now.
    fn decide(&self, name: &Name, v: &FileVersion) -> Result<Admission, Refusal> {
        if self.is_deleted(name, &v.vv) {
            return Err(Refusal::Tombstoned);
        }
        let current = self.record(name).map_err(internal)?;
        let Some(cur) = current else {
            return Ok(Admission::Store(name.clone()));
        };
        let (a, b) = (cur.body().candidate(), v.candidate());
        match resolve(&a, &b) {
            Resolution::Same => Ok(Admission::Same),
            Resolution::Supersedes { newer, .. } if newer == &b => {
                Ok(Admission::Store(name.clone()))
            }
            Resolution::Supersedes { .. } => Err(Refusal::Newer(name.to_string())),
            Resolution::Conflict { winner, .. } if winner == &b => {
                Ok(Admission::Store(name.clone()))
            }
            Resolution::Conflict { .. } => {
                // The newcomer loses: it is kept as its conflict copy.
                let copy = v
                    .conflict_name()
                    .ok_or_else(|| Refusal::Bad("no conflict-copy name".into()))?;
                if &copy == name {
                    return Err(Refusal::Newer(name.to_string()));
                }
                self.decide(&copy, v)
            }
        }
    }

    /// Stream a peer's ciphertext into a staged file, checking its length
    /// and hash against the record. Nothing enters the store here.
    pub fn stage_body(
        &self,
        rec: &FileVersion,
        body: &mut dyn Read,
    ) -> Result<StagedFile, Refusal> {
        let limit = rec.ciphertext_len;
        let (staged, (hash, len)) = self
            .store
            .stage(|f| {
                let mut w = HashingWriter::new(f);
                let mut limited = body.take(limit + 1);
                let n = std::io::copy(&mut limited, &mut w).map_err(lockbox_fs::Error::Read)?;
                w.flush().map_err(lockbox_fs::Error::Read)?;
                let (_, hash, _) = w.finish();
                Ok((hash, n))
            })
            .map_err(|e| Refusal::Bad(format!("receiving the body failed: {e}")))?;
        if len != rec.ciphertext_len || hash != rec.hash {
            return Err(Refusal::Bad(format!(
                "the body of {} does not match its record ({len} bytes received, {} expected, \
                 hash {})",
                rec.name,
                rec.ciphertext_len,
                if hash == rec.hash {
                    "matches"
                } else {
                    "differs"
                }
            )));
        }
        let mut head = [0u8; 32];
        let n = fs::File::open(staged.path())
            .and_then(|mut f| f.read(&mut head))
            .map_err(internal)?;
        if !lockbox_crypto::seal::is_age(&head[..n]) {
            return Err(Refusal::Bad("the body is not an age file".into()));
        }
        Ok(staged)
    }

    /// Put a received, staged version in place under the change lock,
    /// re-deciding against what is held now. Returns where it went.
    pub fn install(
        &self,
        name: &Name,
        rec: &Signed<FileVersion>,
        staged: StagedFile,
    ) -> Result<Admission, Refusal> {
        let _guard = self.store.change_lock();
        let target = match self.admit(name, rec)? {
            Admission::Same => return Ok(Admission::Same),
            Admission::Store(t) => t,
        };
        let mut ops = Vec::new();
        let mut touched = vec![target.clone()];
        // The version it replaces under the name, if it loses a conflict, is
        // moved to its own conflict copy first.
        if let Some(cur) = self.record(&target).map_err(internal)? {
            let (a, b) = (cur.body().candidate(), rec.body().candidate());
            if let Resolution::Conflict { loser, .. } = resolve(&a, &b) {
                if loser == &a {
                    if let Some(copy) = cur.body().conflict_name() {
                        if copy != target && self.store.contains(&target) {
                            self.store.rename_locked(&target, &copy).map_err(internal)?;
                            ops.push(Op::PutVersion {
                                name: copy.clone(),
                                record: cur.to_bytes(),
                                stat: self.store.local_stat(&copy),
                            });
                            touched.push(copy);
                        }
                    }
                }
            }
        }
        // The record goes with the file: killed before the records are
        // durable, the next start finds it there (`reconcile`).
        staged.attach_record(&rec.to_bytes());
        self.store
            .commit_staged(staged, &target)
            .map_err(internal)?;
        ops.push(Op::PutVersion {
            name: target.clone(),
            record: rec.to_bytes(),
            stat: self.store.local_stat(&target),
        });
        self.meta.apply(&ops).map_err(internal)?;
        // The kernel is told after the lock is released: an invalidation can
        // wait on a FUSE request that itself waits for the lock.
        drop(_guard);
        for n in &touched {
            self.remote_changed(n);
        }
        Ok(Admission::Store(target))
    }

    /// Check that a peer's record is signed by a member, for our user.
    fn check_member_record(
        &self,
        what: &str,
        signer: &PublicKey,
        user: &WireName,
    ) -> Result<(), Refusal> {
        if self.members().by_key(signer).is_none() {
            return Err(Refusal::NotMember(format!(
                "the {what} is signed by {signer}, which is not a member of this circle"
            )));
        }
        if *user != self.user {
            return Err(Refusal::Bad(format!("the {what} is for user {user}")));
        }
        Ok(())
    }

    /// Apply a tombstone from a peer: record it and remove the version it
    /// deletes, if held. Returns whether anything changed.
    pub fn apply_tombstone(&self, t: &Signed<Tombstone>) -> Result<bool, Refusal> {
        let name = t.body().name.clone();
        self.check_member_record(&format!("delete of {name}"), &t.signer(), &t.body().user)?;
        let _guard = self.store.change_lock();
        let old = self.tombstones(&name);
        let mut merged = old.clone();
        merged.push(t.clone());
        let merged = records::merge_antichain(merged);
        if merged == old {
            return Ok(false);
        }
        let mut ops = vec![Op::PutList(
            List::Tombstones,
            name.clone(),
            encode_records(&merged),
        )];
        let cur = self.record(&name).map_err(internal)?;
        let resurrects = self.resurrects(&name);
        let delete = cur
            .as_ref()
            .is_some_and(|c| records::deleted_by(&merged, &resurrects, &c.body().vv));
        if delete {
            self.store.remove_locked(&name).map_err(internal)?;
            ops.push(Op::DelVersion(name.clone()));
        }
        self.meta.apply(&ops).map_err(internal)?;
        drop(_guard);
        if delete {
            tracing::info!("{name} was deleted on envoy {}", t.body().author);
            self.remote_changed(&name);
        }
        Ok(true)
    }

    /// Apply a resurrect from a peer: record it, so the tombstones it covers
    /// no longer gate the name. Returns whether anything changed.
    pub fn apply_resurrect(&self, r: &Signed<Resurrect>) -> Result<bool, Refusal> {
        let name = r.body().name.clone();
        self.check_member_record(&format!("re-add of {name}"), &r.signer(), &r.body().user)?;
        let _guard = self.store.change_lock();
        let old = self.resurrects(&name);
        let mut merged = old.clone();
        merged.push(r.clone());
        let merged = records::merge_antichain(merged);
        if merged == old {
            return Ok(false);
        }
        self.meta
            .apply(&[Op::PutList(
                List::Resurrects,
                name.clone(),
                encode_records(&merged),
            )])
            .map_err(internal)?;
        tracing::info!("{name} was re-added on envoy {}", r.body().author);
        Ok(true)
    }

    /// Sign, store and queue a resurrect covering `tombs` (under the change
    /// lock).
    fn record_resurrect(
        &self,
        name: &Name,
        tombs: &[Signed<Tombstone>],
    ) -> Result<Signed<Resurrect>, String> {
        let r = Signed::sign(
            Resurrect {
                user: self.user.clone(),
                name: name.clone(),
                vv: records::floor(tombs),
                author: self.envoy.clone(),
                resurrected_unix: now_unix(),
            },
            &self.signing,
        );
        let mut all = self.resurrects(name);
        all.push(r.clone());
        let all = records::merge_antichain(all);
        self.meta
            .apply(&[Op::PutList(
                List::Resurrects,
                name.clone(),
                encode_records(&all),
            )])
            .map_err(|e| e.to_string())?;
        tracing::debug!("{name} re-added: its delete is lifted on every envoy");
        self.emit(Outgoing::Resurrect(r.clone()));
        Ok(r)
    }

    /// `lockbox resurrect NAME`: lift the delete of `name` on every envoy,
    /// so a copy some envoy still holds may come back. Errors when `name` is
    /// not deleted.
    pub fn resurrect(&self, name: &Name) -> Result<Signed<Resurrect>, String> {
        let _guard = self.store.change_lock();
        let tombs = self.tombstones(name);
        if !records::has_live_tombstone(&tombs, &self.resurrects(name)) {
            return Err(format!(
                "{name} is not deleted (no delete of it is in force): nothing to resurrect"
            ));
        }
        self.record_resurrect(name, &tombs)
    }

    // ---- leaving -------------------------------------------------------

    /// Apply a leave or eviction (from a peer, or made here): record it, drop
    /// the member it names and rewrite the recipients. Returns whether
    /// anything changed. A leave must be signed by the member's own key; an
    /// eviction by the circle key.
    pub fn apply_leave(&self, l: &Signed<Leave>) -> Result<bool, Refusal> {
        let body = l.body();
        if body.user != self.user {
            return Err(Refusal::Bad(format!("the leave is for user {}", body.user)));
        }
        if !records::leave_is_authorised(l, &self.circle) {
            return Err(Refusal::NotMember(match body.kind {
                LeaveKind::Leave => format!(
                    "the leave of {} is not signed by that envoy's key",
                    body.envoy
                ),
                LeaveKind::Evict => format!(
                    "the eviction of {} is not signed by this circle's key",
                    body.envoy
                ),
            }));
        }
        let earlier = self.left(&body.signing_key);
        if let Some(old) = &earlier {
            // One record per key: the canonical (smallest) one, so every
            // envoy keeps the same table.
            if old.to_bytes() <= l.to_bytes() {
                return Ok(false);
            }
        }
        // A self-signed leave of a key that was never a member would only
        // fill the table; an eviction carries the circle's authority and may
        // name an envoy this one never met.
        if body.kind == LeaveKind::Leave
            && earlier.is_none()
            && self.members().by_key(&body.signing_key).is_none()
        {
            return Err(Refusal::NotMember(format!(
                "the leave of {} names a key that is not a member of this circle",
                body.envoy
            )));
        }
        self.meta
            .apply(&[Op::PutLeave(body.signing_key.0.to_vec(), l.to_bytes())])
            .map_err(internal)?;
        let dropped = {
            let Ok(mut members) = self.members.write() else {
                return Err(Refusal::Internal("member table poisoned".into()));
            };
            let gone: Vec<String> = members
                .by_envoy
                .iter()
                .filter(|(_, e)| e.body().signing_key == body.signing_key)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &gone {
                members.by_envoy.remove(n);
                // Our own stays on disk: it is how this envoy tells the
                // others who it is (and they answer that it left).
                if body.signing_key != self.signing.public() {
                    let _ = fs::remove_file(self.paths.members.join(format!("{n}.endorsement")));
                }
            }
            gone
        };
        tracing::info!("envoy {} {} the circle", body.envoy, body.kind.verb());
        if !dropped.is_empty() {
            if let Err(e) = self.write_recipients() {
                tracing::warn!("cannot rewrite the recipient set: {e}");
            }
            if let Ok(o) = self.on_members_change.lock() {
                if let Some(f) = o.as_ref() {
                    f();
                }
            }
        }
        Ok(true)
    }

    /// When this envoy last completed a catch-up with a member (Unix
    /// seconds), if ever.
    pub fn last_contact(&self) -> Option<i64> {
        let b = self.meta.misc(LAST_CONTACT).ok()??;
        Some(i64::from_be_bytes(b.try_into().ok()?))
    }

    /// Record a completed catch-up at `unix`.
    pub fn set_last_contact(&self, unix: i64) {
        if let Err(e) = self
            .meta
            .apply(&[Op::PutMisc(LAST_CONTACT, unix.to_be_bytes().to_vec())])
        {
            tracing::warn!("cannot record the last catch-up: {e}");
        }
    }

    /// Forget deletes older than `retention` seconds at `now` (and the
    /// resurrects that lifted only such deletes). Returns how many records
    /// went. A resurrect stays while a tombstone it covers stays, so pruning
    /// never brings a lifted delete back into force.
    pub fn prune(&self, retention: i64, now: i64) -> usize {
        let cutoff = now.saturating_sub(retention);
        let _guard = self.store.change_lock();
        let mut ops = Vec::new();
        let mut gone = 0;
        let names: Vec<Vec<u8>> = [List::Tombstones, List::Resurrects]
            .iter()
            .flat_map(|l| self.meta.all_lists(*l).unwrap_or_default())
            .map(|(n, _)| n)
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for raw in names {
            if !seen.insert(raw.clone()) {
                continue;
            }
            let Ok(name) = Name::new(raw) else { continue };
            let tombs = self.tombstones(&name);
            let kept: Vec<_> = tombs
                .iter()
                .filter(|t| t.body().deleted_unix >= cutoff)
                .cloned()
                .collect();
            let res = self.resurrects(&name);
            let kept_res: Vec<_> = res
                .iter()
                .filter(|r| {
                    r.body().resurrected_unix >= cutoff
                        || kept
                            .iter()
                            .any(|t| records::deletes(&r.body().vv, &t.body().vv))
                })
                .cloned()
                .collect();
            if kept.len() != tombs.len() {
                gone += tombs.len() - kept.len();
                ops.push(Op::PutList(
                    List::Tombstones,
                    name.clone(),
                    encode_records(&kept),
                ));
            }
            if kept_res.len() != res.len() {
                gone += res.len() - kept_res.len();
                ops.push(Op::PutList(
                    List::Resurrects,
                    name,
                    encode_records(&kept_res),
                ));
            }
        }
        if let Err(e) = self.meta.apply(&ops) {
            tracing::warn!("cannot forget expired deletes: {e}");
            return 0;
        }
        if gone > 0 {
            tracing::info!("forgot {gone} delete record(s) older than the tombstone retention");
        }
        gone
    }

    /// `lockbox leave`: sign this envoy's leave and apply it. The caller
    /// delivers it ([`crate::mesh::Mesh::deliver`]) before scrubbing.
    pub fn leave(&self) -> Result<Signed<Leave>, String> {
        let l = Signed::sign(
            Leave {
                user: self.user.clone(),
                envoy: self.envoy.clone(),
                signing_key: self.signing.public(),
                kind: LeaveKind::Leave,
                left_unix: now_unix(),
            },
            &self.signing,
        );
        self.apply_leave(&l).map_err(|e| e.to_string())?;
        Ok(l)
    }

    /// `lockbox evict ENVOY`: apply an eviction the CLI signed with the
    /// circle key (the caller delivers it; anti-entropy spreads it too).
    pub fn evict(&self, l: &Signed<Leave>) -> Result<(), String> {
        if l.body().kind != LeaveKind::Evict {
            return Err("not an eviction".into());
        }
        if l.body().signing_key == self.signing.public() {
            return Err("this envoy cannot evict itself: use lockbox leave --yes".into());
        }
        self.apply_leave(l).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The endorsement of member `envoy`.
    pub fn member(&self, envoy: &str) -> Option<Endorsement> {
        let m = self.members.read().ok()?;
        m.by_envoy.get(envoy).map(|s| s.body().clone())
    }

    /// Re-encrypt `name` to the current members: always with `Reseal::All`,
    /// with `Reseal::Drifted` only if its record names a different recipient
    /// set. `reseal` does the crypto: it reads the old ciphertext and writes
    /// the new into the given file, returning what it sealed. Returns whether
    /// it re-encrypted.
    pub fn reseal(
        &self,
        name: &Name,
        which: Reseal,
        reseal: impl FnOnce(&mut fs::File, &mut fs::File) -> Result<Sealed, String>,
    ) -> Result<bool, String> {
        let Some(rec) = self.record(name)? else {
            return Ok(false);
        };
        let members = self.member_names();
        if which == Reseal::Drifted && rec.body().recipients == members {
            return Ok(false);
        }
        let mut src = self.store.open_file(name).map_err(|e| e.to_string())?;
        let (staged, sealed) = self
            .store
            .stage(|out| reseal(&mut src, out).map_err(lockbox_fs::Error::Journal))
            .map_err(|e| e.to_string())?;
        let _guard = self.store.change_lock();
        // Only if the version is still the one we re-encrypted.
        match self.record(name)? {
            Some(now) if now.body().hash == rec.body().hash => {}
            _ => return Ok(false),
        }
        self.store
            .commit_staged(staged, name)
            .map_err(|e| e.to_string())?;
        let stat = self.store.local_stat(name);
        self.record_local(name, Some(&sealed), None, Some(rec.body()), stat)?;
        drop(_guard);
        self.remote_changed(name);
        Ok(true)
    }

    /// Whether the record of `name` names an envoy that is not a member
    /// (one that left): its file should be re-encrypted. A record that only
    /// lacks a member is left to the re-encryption that follows a join, so
    /// two envoys that disagree about a new member do not re-seal back and
    /// forth.
    pub fn sealed_to_outsiders(&self, name: &Name) -> bool {
        let Ok(Some(rec)) = self.record(name) else {
            return false;
        };
        let members = self.member_names();
        rec.body().recipients.iter().any(|r| !members.contains(r))
    }

    /// Names whose record is sealed to a set other than the members. The
    /// changes still queued for the journal are recorded first, so a seal
    /// made just before (a close, then `lockbox status`) counts.
    pub fn drift(&self) -> Vec<Name> {
        self.store.deliver_journal();
        let members = self.member_names();
        self.manifest()
            .into_iter()
            .filter(|(_, rec)| {
                Signed::<FileVersion>::from_trusted_bytes(rec)
                    .map(|r| r.body().recipients != members)
                    .unwrap_or(false)
            })
            .map(|(n, _)| n)
            .collect()
    }
}

/// Length of the plaintext and ciphertext, and the ciphertext hash, of a
/// store file (read through once).
/// The envoys a seal named, sorted as the members are; `None` if it named
/// none or one that cannot be a name (the members are recorded then).
fn sealed_to(envoys: &[String]) -> Option<Vec<WireName>> {
    if envoys.is_empty() {
        return None;
    }
    let mut names: Vec<WireName> = envoys
        .iter()
        .map(|e| WireName::new(e.clone()).ok())
        .collect::<Option<_>>()?;
    names.sort();
    names.dedup();
    Some(names)
}

fn describe_file(path: &Path) -> Result<(u64, u64, Sha256), String> {
    let mut f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let header = lockbox_crypto::seal::read_header(&mut f)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let plain = lockbox_crypto::seal::plaintext_len(header.header_len, len)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = HashingWriter::new(std::io::sink());
    std::io::copy(&mut f, &mut w).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, hash, n) = w.finish();
    Ok((plain, n, hash))
}

/// The items of a stored list, in wire form.
fn records_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    if bytes.is_empty() {
        return Vec::new();
    }
    records::decode_list(bytes, MAX_TABLE_ENTRIES)
        .map(|items| items.into_iter().map(<[u8]>::to_vec).collect())
        .unwrap_or_default()
}

/// The records in a list from meta.redb (unreadable entries are skipped; the
/// signatures were checked when the records came in).
fn decode_records<T: Versioned>(bytes: &[u8]) -> Vec<Signed<T>> {
    records_of(bytes)
        .iter()
        .filter_map(|b| Signed::<T>::from_trusted_bytes(b).ok())
        .collect()
}

fn encode_records<T: Versioned>(t: &[Signed<T>]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = t.iter().map(|t| t.to_bytes()).collect();
    records::encode_list(bytes.iter().map(|b| b.as_slice()))
}

/// Decode a manifest in wire form into `(stored name, record)` pairs.
pub fn decode_manifest(bytes: &[u8]) -> Result<Vec<(Name, Signed<FileVersion>)>, String> {
    let items = records::decode_list(bytes, MAX_TABLE_ENTRIES).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let mut d = Decoder::new(item);
        let name = d
            .bytes(lockbox_fs::name::MAX_NAME_BYTES)
            .map_err(|e| e.to_string())?;
        let name = Name::new(name.to_vec()).map_err(|e| e.to_string())?;
        let rec = d
            .bytes(lockbox_crypto::sign::MAX_RECORD_BYTES)
            .map_err(|e| e.to_string())?;
        d.finish().map_err(|e| e.to_string())?;
        let rec = Signed::<FileVersion>::from_bytes(rec).map_err(|e| e.to_string())?;
        out.push((name, rec));
    }
    Ok(out)
}

/// Load the members from `members/`, keeping only endorsements that verify
/// under `circle` for `user`.
fn load_members(dir: &Path, circle: &PublicKey, user: &WireName) -> Members {
    let mut members = Members::default();
    let Ok(rd) = fs::read_dir(dir) else {
        return members;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "endorsement") {
            continue;
        }
        let bytes = match fs::read(&path) {
            Ok(b) if b.len() <= lockbox_crypto::sign::MAX_RECORD_BYTES => b,
            _ => continue,
        };
        match Signed::<Endorsement>::from_bytes(&bytes) {
            Ok(s) if verify_endorsement(&s, circle).is_ok() && s.body().user == user.as_str() => {
                let envoy = s.body().envoy.clone();
                let newer = members
                    .by_envoy
                    .get(&envoy)
                    .is_none_or(|o| o.body().created_unix < s.body().created_unix);
                if newer {
                    members.by_envoy.insert(envoy, s);
                }
            }
            _ => tracing::warn!(
                "ignoring {}: not an endorsement of this circle",
                path.display()
            ),
        }
    }
    members
}

/// Write a small private file atomically and make the rename durable.
fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    lockbox_fs::durable::write_private_file(path, bytes, lockbox_fs::durable::Existing::Replace)?;
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbox_crypto::circle::CircleKey;
    use lockbox_crypto::kdf::KdfParams;
    use secrecy::SecretString;

    /// An envoy of user alice: its state dir, the seed of its signing key
    /// and its endorsement.
    struct Envoy {
        state: PathBuf,
        name: &'static str,
        seed: [u8; 32],
        endorsement: Signed<Endorsement>,
    }

    impl Envoy {
        fn new(dir: &Path, circle: &CircleKey, name: &'static str, seed: u8) -> Envoy {
            let state = dir.join(name);
            fs::create_dir_all(state.join("members")).unwrap();
            fs::write(state.join("circle.pub"), circle.public().to_base64()).unwrap();
            let seed = [seed; 32];
            let endorsement = circle.endorse(Endorsement {
                user: "alice".into(),
                envoy: name.into(),
                recipient: lockbox_crypto::identity::generate().to_public().to_string(),
                signing_key: SigningKey::from_seed(&seed).public(),
                created_unix: 1,
            });
            Envoy {
                state,
                name,
                seed,
                endorsement,
            }
        }

        /// Record `e` as a member in this envoy's `members/`.
        fn knows(&self, e: &Envoy) {
            let file = self
                .state
                .join("members")
                .join(format!("{}.endorsement", e.name));
            fs::write(file, e.endorsement.to_bytes()).unwrap();
        }

        fn open(&self) -> Arc<Replica> {
            let paths = ReplicaPaths {
                members: self.state.join("members"),
                circle_public: self.state.join("circle.pub"),
                recipients: self.state.join("recipients.txt"),
                meta: self.state.join("meta.redb"),
            };
            Replica::open(
                WireName::new("alice").unwrap(),
                WireName::new(self.name).unwrap(),
                Store::open(&self.state).unwrap(),
                SigningKey::from_seed(&self.seed),
                paths,
            )
            .unwrap()
        }
    }

    /// Envoys of one circle of alice's under `dir`, each knowing all.
    fn circle<const N: usize>(dir: &Path, names: [&'static str; N]) -> [Envoy; N] {
        let pass = SecretString::from("pw pw pw".to_string());
        let circle = CircleKey::derive(&pass, "alice", KdfParams::TEST).unwrap();
        let mut seed = 0u8;
        let envoys = names.map(|name| {
            seed += 1;
            Envoy::new(dir, &circle, name, seed)
        });
        for x in &envoys {
            for y in &envoys {
                x.knows(y);
            }
        }
        envoys
    }

    /// Envoys learned by several hellos at once all end up in
    /// `recipients.txt` (two at once used to lose one, now and then: a
    /// rewrite from an older member set could land last).
    #[test]
    fn members_learned_at_the_same_moment_are_all_recipients() {
        let names = ["alpha", "b1", "b2", "b3", "b4", "b5", "b6", "b7"];
        for round in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let [a, others @ ..] = circle(dir.path(), names);
            // alpha knows only itself; the others arrive together.
            for o in &others {
                fs::remove_file(
                    a.state
                        .join("members")
                        .join(format!("{}.endorsement", o.name)),
                )
                .unwrap();
            }
            let alpha = a.open();
            assert_eq!(alpha.members().names(), ["alpha"]);
            let start = std::sync::Barrier::new(others.len());
            std::thread::scope(|s| {
                for o in &others {
                    let (alpha, start) = (&alpha, &start);
                    s.spawn(move || {
                        start.wait();
                        // What learn_members does, without its write of
                        // the endorsement file, which (synced, under the
                        // members' lock) spaces the rewrites out.
                        let e = o.endorsement.clone();
                        let mut members = alpha.members.write().unwrap();
                        members.by_envoy.insert(o.name.to_string(), e);
                        drop(members);
                        alpha.write_recipients().unwrap();
                    });
                }
            });
            let text = fs::read_to_string(a.state.join("recipients.txt")).unwrap();
            let mut listed: Vec<String> = lockbox_crypto::recipients::parse(&text)
                .unwrap()
                .into_iter()
                .map(|r| r.envoy)
                .collect();
            listed.sort();
            assert_eq!(listed, names, "round {round}");
        }
    }

    #[test]
    fn a_departed_envoy_still_shows_who_it_is_and_is_told_it_left() {
        let dir = tempfile::tempdir().unwrap();
        let [a, c] = circle(dir.path(), ["alpha", "charlie"]);
        let alpha = a.open();
        let charlie = c.open();
        let own = Some(c.endorsement.to_bytes());
        assert_eq!(charlie.own_endorsement(), own);

        let leave = charlie.leave().unwrap();
        assert!(alpha.apply_leave(&leave).unwrap());
        assert_eq!(alpha.members().names(), ["alpha"]);
        assert_eq!(charlie.members().names(), ["alpha"]);
        // Charlie knows it left, yet still presents its endorsement, also
        // after a restart ...
        assert!(charlie.departed().is_some());
        assert_eq!(charlie.own_endorsement(), own);
        drop(charlie);
        let charlie = c.open();
        assert!(charlie.departed().is_some());
        assert_eq!(charlie.members().names(), ["alpha"]);
        assert_eq!(charlie.own_endorsement(), own);
        // ... so alpha can say why it refuses it ...
        let (added, refused) = alpha.learn_members(&[c.endorsement.to_bytes()]);
        assert!(added.is_empty());
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].contains("\"charlie\" left this circle"),
            "{}",
            refused[0]
        );
        assert_eq!(alpha.members().names(), ["alpha"]);
        // ... and a hello without one is named as such.
        let (_, refused) = alpha.learn_members(&[Vec::new()]);
        assert_eq!(refused, ["the peer sent no endorsement"]);
    }

    #[test]
    fn queued_local_changes_are_recorded_in_order_as_if_made_inline() {
        use lockbox_fs::SealTo;
        use std::io::Cursor;
        let dir = tempfile::tempdir().unwrap();
        let [a] = circle(dir.path(), ["alpha"]);
        let alpha = a.open();
        let store = alpha.store().clone();
        let to = SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        let n = |s: &str| Name::new(s).unwrap();
        let seal = |name: &str, text: &str| {
            drop(
                store
                    .seal_pending(
                        &n(name),
                        Cursor::new(text.as_bytes().to_vec()),
                        &to,
                        1 << 20,
                    )
                    .unwrap()
                    .1,
            )
        };

        // A chain of queued changes, each reading what the one before it
        // recorded: x is sealed twice, moved to y, then to z, then removed.
        seal("x", "one");
        seal("x", "two");
        drop(store.rename_pending(&n("x"), &n("y")).unwrap());
        drop(store.rename_pending(&n("y"), &n("z")).unwrap());
        drop(store.remove_pending(&n("z")).unwrap());
        seal("w", "kept");
        // The mesh's lock sees all of them recorded.
        let guard = store.change_lock();
        for gone in ["x", "y", "z"] {
            assert!(alpha.record(&n(gone)).unwrap().is_none(), "{gone}");
            assert_eq!(alpha.tombstones(&n(gone)).len(), 1, "{gone}");
        }
        let w = alpha.record(&n("w")).unwrap().expect("w recorded");
        let recorded = alpha.meta.version(&n("w")).unwrap().unwrap().1;
        assert_eq!(recorded, LocalStat::of(&store.current_path(&n("w"))).ok());
        // x's tombstone covers the version x had after its second seal.
        let x = alpha.tombstones(&n("x"));
        assert_eq!(x[0].body().vv.get("alpha"), 2);
        assert_eq!(w.body().plaintext_len, 4);

        // A name with no record (put in place without the journal) renamed:
        // its new name is described from the file itself.
        let put = |name: &str| {
            let (staged, _) = store
                .stage(|f| {
                    lockbox_fs::store::seal_into(
                        f,
                        &n(name),
                        Cursor::new(b"raw".to_vec()),
                        &to,
                        None,
                        1 << 20,
                    )
                })
                .unwrap();
            store.commit_staged(staged, &n(name)).unwrap();
        };
        put("raw");
        put("raw2");
        drop(guard);
        drop(store.rename_pending(&n("raw"), &n("cooked")).unwrap());
        // Renamed and removed before its record is made: nothing recorded.
        drop(store.rename_pending(&n("raw2"), &n("cooked2")).unwrap());
        drop(store.remove_pending(&n("cooked2")).unwrap());
        let _guard = store.change_lock();
        let cooked = alpha
            .record(&n("cooked"))
            .unwrap()
            .expect("cooked recorded");
        assert_eq!(cooked.body().plaintext_len, 3);
        assert!(alpha.record(&n("cooked2")).unwrap().is_none());
        assert!(alpha.record(&n("raw2")).unwrap().is_none());
    }

    #[test]
    fn a_received_file_whose_record_was_lost_gets_it_back_from_the_file() {
        use lockbox_fs::SealTo;
        use std::io::Cursor;
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = circle(dir.path(), ["alpha", "bravo"]);
        let (alpha, bravo) = (a.open(), b.open());
        let doc = Name::new("doc").unwrap();
        let to = SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        alpha
            .store()
            .seal(&doc, Cursor::new(b"from alpha".to_vec()), &to, 1 << 20)
            .unwrap();
        let rec = {
            let _guard = alpha.store().change_lock();
            alpha.record(&doc).unwrap().expect("alpha recorded doc")
        };
        let body = fs::read(alpha.store().current_path(&doc)).unwrap();
        let (staged, ()) = bravo
            .store()
            .stage(|f| std::io::Write::write_all(f, &body).map_err(lockbox_fs::Error::Read))
            .unwrap();
        assert!(matches!(
            bravo.install(&doc, &rec, staged),
            Ok(Admission::Store(_))
        ));
        // Killed before the records were durable: the file is in place,
        // its record is not. The next start takes the record from the file
        // instead of calling the file a new version of bravo's.
        bravo.meta.apply(&[Op::DelVersion(doc.clone())]).unwrap();
        assert_eq!(bravo.reconcile().unwrap(), 0);
        let _guard = bravo.store().change_lock();
        let got = bravo.record(&doc).unwrap().expect("bravo has doc's record");
        assert_eq!(got.to_bytes(), rec.to_bytes());
        assert_eq!(got.body().vv.get("bravo"), 0, "no version of bravo's own");
    }
}
