//! The replica: one envoy's copy of the user's lockbox as the mesh sees it —
//! the ciphertext store, the signed record of every version, the tombstones
//! and the members of the circle — and the rules that change it.
//!
//! Local changes reach it through the store's
//! [`Journal`](lockbox_fs::store::Journal) (the mount and the CLI never call
//! it directly): each sealed version gets a signed
//! [`FileVersion`](crate::records::FileVersion), each delete a signed
//! [`Tombstone`], and both are queued for fan-out. Changes from peers arrive
//! through [`Replica::admit`] (is this version wanted?) and
//! [`Replica::install`] (put it in place), which apply the same rules under
//! the store's change lock, so a local seal and a received version of the
//! same name never overtake each other.
//!
//! This module owns the [`Replica`] type, its paths and opening, and the
//! answers to a peer ([`Refusal`], [`Admission`]). The work is in its parts:
//!
//! - `members` — the circle's members: loading, endorsements learnt from
//!   peers, `recipients.txt`, leaves and evictions;
//! - `local` — local versions: recording and **signing** what the mount
//!   sealed or deleted, re-adds, and reconciling with the store at start;
//! - `admission` — the admission rule, pure: is an offered version wanted,
//!   and under which name;
//! - `receive` — staging a peer's body and installing it;
//! - `tables` — the file, tombstone, resurrect and leave tables: reading,
//!   digests, wire lists, applying a peer's records;
//! - `retention` — last contact, forgetting expired deletes, re-sealing
//!   after the members changed.
//!
//! It must not talk to the network: the mesh calls it.

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use lockbox_crypto::circle::Endorsement;
use lockbox_crypto::sign::{PublicKey, Signed, SigningKey};
use lockbox_fs::meta::{LocalStat, Meta, Op, State};
use lockbox_fs::{Name, Store};

use crate::records::{Leave, Resurrect, Tombstone};
use crate::WireName;

mod admission;
mod handover;
mod local;
mod members;
mod receive;
mod reconcile;
mod retention;
mod tables;

pub use members::Members;
pub use retention::Reseal;
pub use tables::{decode_manifest, decode_manifest_entry, ManifestError, Table, MAX_TABLE_ENTRIES};

use local::JournalLink;
use members::load_members;

/// Why a version, tombstone or request from a peer was refused; each maps
/// to an HTTP status of the protocol (see `docs/protocol.md`,
/// "6. Transport").
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

/// Why an operation of the replica itself failed (opening it, recording a
/// local change, a `lockbox resurrect`/`leave`/`evict`/re-encryption).
/// What a peer sent and was refused is a [`Refusal`] instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// `circle.pub` cannot be read.
    #[error(
        "cannot read {}: {source} (the envoy is not fully initialised: run lockbox init)",
        path.display()
    )]
    CircleUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `circle.pub` does not hold a public key.
    #[error("{} is damaged: {source}", path.display())]
    CircleDamaged {
        /// The file.
        path: PathBuf,
        /// Why.
        source: lockbox_crypto::Error,
    },
    /// The store or `meta.redb` failed.
    #[error(transparent)]
    Store(#[from] lockbox_fs::Error),
    /// This envoy has no endorsement of its own (it is not initialised).
    #[error("this envoy has no endorsement of its own: run lockbox init")]
    NoEndorsement,
    /// Sealing or signing failed.
    #[error(transparent)]
    Crypto(lockbox_crypto::Error),
    /// Writing one of the circle's files failed.
    #[error("cannot write the circle's files: {0}")]
    CircleWrite(std::io::Error),
    /// A handover is not for this envoy in its circle.
    #[error(transparent)]
    Handover(#[from] crate::handover::HandoverError),
    /// A record in `meta.redb` does not decode.
    #[error("the record of {name} is damaged: {source}")]
    DamagedRecord {
        /// The name it is stored under.
        name: Name,
        /// Why.
        source: lockbox_crypto::Error,
    },
    /// A store file cannot be read or is not an age file.
    #[error("{}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A store file is not a well-formed age file.
    #[error("{}: {source}", path.display())]
    NotSealed {
        /// The file.
        path: PathBuf,
        /// Why.
        source: lockbox_crypto::Error,
    },
    /// A version vector cannot be bumped.
    #[error(transparent)]
    Version(#[from] crate::Error),
    /// `lockbox resurrect` of a name that is not deleted.
    #[error("{0} is not deleted (no delete of it is in force): nothing to resurrect")]
    NotDeleted(Name),
    /// `lockbox evict` given a record that is not an eviction.
    #[error("not an eviction")]
    NotAnEviction,
    /// `lockbox evict` of this envoy itself.
    #[error("this envoy cannot evict itself: use lockbox leave --yes")]
    EvictSelf,
    /// A leave or eviction was refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Writing `recipients.txt` failed.
    #[error(transparent)]
    Recipients(#[from] std::io::Error),
    /// Another thread panicked while it rewrote `recipients.txt`.
    #[error("the recipient set's lock is poisoned")]
    RecipientsPoisoned,
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

/// Notices of files kept where they were written that `status` shows.
pub const MAX_KEPT: usize = 20;

impl Replica {
    /// The notices of files kept where they were written, oldest first:
    /// for each file a peer wrote into a folder removed or renamed here
    /// meanwhile, where it is.
    pub fn kept_where_written(&self) -> Vec<String> {
        self.kept
            .lock()
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Note (and log) a file kept where it was written.
    pub(super) fn note_kept(&self, notice: String) {
        tracing::warn!("{notice}");
        if let Ok(mut k) = self.kept.lock() {
            if k.len() == MAX_KEPT {
                k.pop_front();
            }
            k.push_back(notice);
        }
    }
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
    /// A new folder version.
    Folder(Signed<crate::records::Folder>),
}

/// Where the replica keeps what is not in the store.
#[derive(Debug, Clone)]
pub struct ReplicaPaths {
    /// `members/`: one endorsement file per member.
    pub members: PathBuf,
    /// `circle.pub`.
    pub circle_public: PathBuf,
    /// `circle.secret`: the circle secret sealed to this envoy's own
    /// recipient (written when this envoy adopts another circle).
    pub circle_secret: PathBuf,
    /// `circle.hello`: the circle's hello key, readable while locked (see
    /// `lockbox_crypto::hello`).
    pub circle_hello: PathBuf,
    /// `handover/`: handovers this envoy made for the members of a circle
    /// it left in a merge, and that circle's hello key.
    pub handover: PathBuf,
    /// `recipients.txt`, regenerated from the members.
    pub recipients: PathBuf,
    /// `meta.redb`.
    pub meta: PathBuf,
}

/// One envoy's replica of the lockbox.
pub struct Replica {
    user: WireName,
    envoy: WireName,
    store: Store,
    meta: Meta,
    signing: SigningKey,
    /// The circle public key; replaced when this envoy's circle loses a
    /// merge and it adopts the other one ([`Replica::adopt_circle`]).
    circle: RwLock<PublicKey>,
    /// The circle's hello key, if this envoy holds one for its circle
    /// (`circle.hello`; none for a circle made by protocol 1).
    hello_key: RwLock<Option<Arc<lockbox_crypto::hello::HelloKey>>>,
    paths: ReplicaPaths,
    members: RwLock<Members>,
    /// This envoy's own endorsement, kept apart from `members`: after it
    /// learns it left, it still shows it in every hello, so the others can
    /// say why they refuse it (it left) instead of "no endorsement".
    own_endorsement: RwLock<Option<Signed<Endorsement>>>,
    /// Where new local versions and tombstones go (set by the mesh).
    outgoing: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Outgoing>>>,
    /// Folders that held files this envoy deleted or moved away just
    /// before it stopped (found by [`Replica::reconcile`]) and that its
    /// store no longer has: a folder version of its own for one of them,
    /// back from a peer, was lost here with the same commit window
    /// (see [`Replica::apply_folder`]).
    lost_folders: Mutex<std::collections::HashSet<Name>>,
    /// Called with every name a peer changed (the agent drops the kernel's
    /// cached pages and attributes of it).
    on_remote_change: Mutex<Option<NameHook>>,
    /// Called when the member set changes.
    on_members_change: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Held while `recipients.txt` is rewritten from the members (see
    /// [`Replica::write_recipients`]).
    recipients_file: Mutex<()>,
    /// This replica itself, for work handed to a thread of its own.
    this: std::sync::Weak<Replica>,
    /// What a local writer could have seen (see `local::Sightings`).
    sightings: local::Sightings,
    /// The files peers wrote into folders this envoy removed or renamed
    /// meanwhile, kept where they were written (newest last, at most
    /// [`MAX_KEPT`]; for `status`).
    kept: Mutex<std::collections::VecDeque<String>>,
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

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The metadata of a version recorded under `name`: its record, the
/// store file's stat, and the file's state, in one batch (so one
/// transaction). A record stored under a name other than its own is a
/// conflict copy; any other record makes the name's file an ordinary one.
pub(super) fn version_ops(
    name: &Name,
    rec: &Signed<crate::records::FileVersion>,
    stat: Option<LocalStat>,
) -> [Op; 2] {
    let state = (rec.body().name != *name).then_some(State::Conflict);
    [
        Op::PutVersion {
            name: name.clone(),
            record: rec.to_bytes(),
            stat,
        },
        Op::SetState(name.clone(), state),
    ]
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
    ) -> Result<Arc<Replica>, ReplicaError> {
        let circle_text = fs::read_to_string(&paths.circle_public).map_err(|source| {
            ReplicaError::CircleUnreadable {
                path: paths.circle_public.clone(),
                source,
            }
        })?;
        let circle = PublicKey::from_base64(circle_text.trim()).map_err(|source| {
            ReplicaError::CircleDamaged {
                path: paths.circle_public.clone(),
                source,
            }
        })?;
        let mut meta = Meta::open(&paths.meta)?;
        // Records become durable with the same bound as the store's seals
        // and renames, and never before them: each write-back first runs a
        // round of the store's grouped syncs, so a durable record never
        // names a seal that a crash could still undo.
        if let Some(window) = store.sync_window() {
            let s = store.clone();
            meta = meta.with_grouped_commits_after(window, move || s.sync_round(false));
        }
        let mut members = load_members(&paths.members, &circle, &user);
        let hello_key = members::load_hello_key(&paths.circle_hello, &circle);
        let own_endorsement = members
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
            store: store
                .with_states(&meta)
                .with_journal(Arc::new(JournalLink(weak.clone()))),
            meta,
            signing,
            circle: RwLock::new(circle),
            hello_key: RwLock::new(hello_key.map(Arc::new)),
            paths,
            members: RwLock::new(members),
            own_endorsement: RwLock::new(own_endorsement),
            outgoing: Mutex::new(None),
            lost_folders: Mutex::default(),
            on_remote_change: Mutex::new(None),
            recipients_file: Mutex::new(()),
            on_members_change: Mutex::new(None),
            this: weak.clone(),
            sightings: local::Sightings::default(),
            kept: Mutex::default(),
        }))
    }

    /// Make every record so far durable (shutdown).
    pub fn flush(&self) -> Result<(), ReplicaError> {
        self.store.deliver_journal();
        Ok(self.meta.flush()?)
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

    /// This envoy's session proof (wire bytes) for the TLS session whose
    /// exporter value is `exporter`, speaking as `side` (see
    /// [`crate::proof`]).
    pub fn session_proof(&self, side: crate::proof::Side, exporter: [u8; 32]) -> Vec<u8> {
        lockbox_crypto::sign::Signed::sign(
            crate::proof::SessionProof {
                user: self.user.to_string(),
                envoy: self.envoy.to_string(),
                side,
                exporter,
            },
            &self.signing,
        )
        .to_bytes()
    }

    /// The circle public key.
    pub fn circle(&self) -> PublicKey {
        *self.circle.read().unwrap_or_else(|p| p.into_inner())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbox_crypto::circle::CircleKey;
    use lockbox_crypto::kdf::KdfParams;
    use lockbox_fs::meta::{List, LocalStat, Op};
    use secrecy::SecretString;
    use std::path::Path;

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
            self.open_with(Store::open(&self.state).unwrap())
        }

        /// With its store's syncs grouped, as the agent's are: a close's
        /// seal waits in its temp file for the next round.
        fn open_grouped(&self) -> Arc<Replica> {
            let store = Store::open(&self.state)
                .unwrap()
                .with_grouped_syncs(std::time::Duration::from_secs(60));
            self.open_with(store)
        }

        fn open_with(&self, store: Store) -> Arc<Replica> {
            let paths = ReplicaPaths {
                members: self.state.join("members"),
                circle_public: self.state.join("circle.pub"),
                circle_secret: self.state.join("circle.secret"),
                circle_hello: self.state.join("circle.hello"),
                handover: self.state.join("handover"),
                recipients: self.state.join("recipients.txt"),
                meta: self.state.join("meta.redb"),
            };
            Replica::open(
                WireName::new("alice").unwrap(),
                WireName::new(self.name).unwrap(),
                store,
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

    /// Seals `content` as `doc` through `r`'s store (to a throwaway key)
    /// and returns the name and the record `r` made of it.
    fn seal_doc(r: &Replica, content: &[u8]) -> (Name, Signed<crate::records::FileVersion>) {
        let doc = Name::new("doc").unwrap();
        let to =
            lockbox_fs::SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        r.store()
            .seal(&doc, std::io::Cursor::new(content.to_vec()), &to, 1 << 20)
            .unwrap();
        let _guard = r.store().change_lock();
        let rec = r.record(&doc).unwrap().expect("recorded");
        (doc, rec)
    }

    /// `bytes` (a peer's store file) staged in `r`'s store, as a transfer
    /// stages them.
    fn staged_copy(r: &Replica, bytes: &[u8]) -> lockbox_fs::store::StagedFile {
        let write = |f: &mut std::fs::File| {
            std::io::Write::write_all(f, bytes).map_err(lockbox_fs::Error::Read)
        };
        r.store().stage(write).unwrap().0
    }

    #[test]
    fn a_received_file_whose_record_was_lost_gets_it_back_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = circle(dir.path(), ["alpha", "bravo"]);
        let (alpha, bravo) = (a.open(), b.open());
        let (doc, rec) = seal_doc(&alpha, b"from alpha");
        let body = fs::read(alpha.store().current_path(&doc)).unwrap();
        let staged = staged_copy(&bravo, &body);
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

    /// A local version whose record was made (and maybe pushed) but not
    /// yet durable when the agent was killed keeps that very record at the
    /// next start, instead of being signed again with a later seal time.
    #[test]
    fn a_local_version_whose_record_was_lost_is_not_signed_again() {
        let dir = tempfile::tempdir().unwrap();
        let [a] = circle(dir.path(), ["alpha"]);
        let alpha = a.open();
        let (doc, rec) = seal_doc(&alpha, b"v1");
        alpha.meta.apply(&[Op::DelVersion(doc.clone())]).unwrap();
        assert_eq!(alpha.reconcile().unwrap(), 0, "signed again");
        let _guard = alpha.store().change_lock();
        let got = alpha.record(&doc).unwrap().expect("doc's record is back");
        assert_eq!(got.to_bytes(), rec.to_bytes());
    }

    /// Seal `content` as `doc` as the mount does at a close: from the
    /// version its writer started from, placed by the journal.
    fn seal_placed(r: &Replica, doc: &Name, content: &[u8]) {
        let to =
            lockbox_fs::SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        let base = r.store().base_of(doc);
        let seal = r
            .store()
            .seal_deferred(
                doc,
                std::io::Cursor::new(content.to_vec()),
                &to,
                1 << 20,
                lockbox_fs::store::SealAttrs::new(std::time::SystemTime::now(), false),
                &base,
            )
            .unwrap();
        drop(seal);
    }

    /// A seal placed through the mount's path just before the agent was
    /// killed — its version not yet signed onto its file, and neither its
    /// record nor the one before it durable — is signed at the next start
    /// as exactly the version it was placed as: the very record, whose
    /// vector comes after the version it replaced. (It used to be derived
    /// from the record that survived: the older version's vector again, so
    /// the two were taken for concurrent and the older could keep the
    /// name.)
    #[test]
    fn a_placed_seal_whose_record_was_lost_is_signed_as_placed() {
        for grouped in [false, true] {
            a_placed_seal_is_signed_as_placed(grouped);
        }
    }

    /// With the store's syncs `grouped` (the seal waits in its temp file,
    /// then is put in place as a restart does) or not.
    fn a_placed_seal_is_signed_as_placed(grouped: bool) {
        use crate::version::Causality;
        let dir = tempfile::tempdir().unwrap();
        let [a] = circle(dir.path(), ["alpha"]);
        let alpha = if grouped { a.open_grouped() } else { a.open() };
        let (doc, v1) = seal_doc(&alpha, b"v1");
        seal_placed(&alpha, &doc, b"v2");
        alpha.store().deliver_journal();
        let v2 = {
            let _guard = alpha.store().change_lock();
            alpha.record(&doc).unwrap().expect("v2 recorded")
        };
        assert_eq!(v2.body().vv.compare(&v1.body().vv), Causality::After);
        // Killed: no record durable, and v2's signed record never reached
        // its file (still waiting in its temp file, if grouped).
        alpha.meta.apply(&[Op::DelVersion(doc.clone())]).unwrap();
        alpha.store().attach_record_current(&doc, b"not a record");
        let alpha = if grouped {
            // The restart: a new store puts the waiting seal in place.
            let waiting = fs::read_dir(a.state.join("tmp")).unwrap().count();
            assert_eq!(waiting, 1, "v2 is not waiting for its round");
            drop(alpha);
            let alpha = a.open();
            alpha.store().recover_leftovers().unwrap();
            alpha
        } else {
            alpha
        };
        assert_eq!(alpha.reconcile().unwrap(), 1);
        let _guard = alpha.store().change_lock();
        let got = alpha.record(&doc).unwrap().expect("doc's record is back");
        assert_eq!(
            got.to_bytes(),
            v2.to_bytes(),
            "not the version placed (grouped: {grouped})"
        );
    }

    /// A placed seal that a chmod then superseded (a version signed, maybe
    /// pushed) is not signed again as placed at the start, even when a
    /// second chmod, whose record the kill lost, gave the file back the
    /// mode the placed version names: the start records a version after
    /// the chmod's instead. (Signed as placed, the older version lost to
    /// the chmod's on every envoy, and the second chmod was undone: found
    /// by `crash::a_chmod_just_before_a_sigkill_…` under load.)
    #[test]
    fn a_placed_seal_a_chmod_superseded_is_not_signed_again_as_placed() {
        // The chmod +x's record durable, or only attached to the file.
        for lost in [false, true] {
            a_placed_seal_superseded(lost);
        }
    }

    fn a_placed_seal_superseded(record_lost: bool) {
        use crate::version::Causality;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let [a] = circle(dir.path(), ["alpha"]);
        let alpha = a.open();
        let (doc, _) = seal_doc(&alpha, b"v1");
        seal_placed(&alpha, &doc, b"v2");
        // chmod +x, recorded (and attached to the file) ...
        drop(
            alpha
                .store()
                .set_executable(&doc, true)
                .unwrap()
                .expect("changed"),
        );
        alpha.store().deliver_journal();
        let plus_x = {
            let _guard = alpha.store().change_lock();
            alpha.record(&doc).unwrap().expect("recorded")
        };
        assert!(plus_x.body().executable);
        if record_lost {
            alpha.meta.apply(&[Op::DelVersion(doc.clone())]).unwrap();
        }
        // ... then chmod -x, killed before the journal heard of it.
        let path = alpha.store().current_path(&doc);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(alpha.reconcile().unwrap(), 1);
        let _guard = alpha.store().change_lock();
        let got = alpha.record(&doc).unwrap().expect("recorded");
        assert!(!got.body().executable, "the chmod -x was undone");
        assert_eq!(
            got.body().vv.compare(&plus_x.body().vv),
            Causality::After,
            "not after the chmod +x's version (its record lost: {record_lost})"
        );
        assert_eq!(got.body().hash, plus_x.body().hash);
    }

    /// A seal renamed while it waited for its round (the rename passes the
    /// seal on, an editor's or rsync's save) whose version was signed, and
    /// maybe pushed, before the agent was killed, with none of the records
    /// durable: the start puts it in place under the new name and signs
    /// the delete of the old one, which a peer that got the push would
    /// otherwise send back (found by `crash::a_delete_and_a_rename_…`
    /// under load).
    #[test]
    fn a_waiting_seal_renamed_before_a_kill_deletes_its_old_name_at_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let [a] = circle(dir.path(), ["alpha"]);
        let n = |s: &str| Name::new(s).unwrap();
        let alpha = a.open_grouped();
        let to =
            lockbox_fs::SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        let seal = alpha
            .store()
            .seal_deferred(
                &n("moved"),
                std::io::Cursor::new(b"the only version".to_vec()),
                &to,
                1 << 20,
                lockbox_fs::store::SealAttrs::new(std::time::SystemTime::now(), false),
                &lockbox_fs::Base::Current,
            )
            .unwrap();
        drop(seal);
        alpha.store().deliver_journal();
        let pushed = {
            let _guard = alpha.store().change_lock();
            alpha.record(&n("moved")).unwrap().expect("signed")
        };
        alpha.store().rename(&n("moved"), &n("there")).unwrap();
        assert_eq!(
            fs::read_dir(a.state.join("tmp")).unwrap().count(),
            1,
            "the seal no longer waits"
        );
        // Killed before any round or commit: no record of either name.
        {
            let _guard = alpha.store().change_lock();
            alpha
                .meta
                .apply(&[
                    Op::DelVersion(n("moved")),
                    Op::DelVersion(n("there")),
                    Op::PutList(List::Tombstones, n("moved"), Vec::new()),
                ])
                .unwrap();
        }
        drop(alpha);
        let alpha = a.open();
        assert_eq!(
            alpha.store().recover_leftovers().unwrap().recovered,
            vec![n("there")]
        );
        alpha.reconcile().unwrap();
        let _guard = alpha.store().change_lock();
        assert!(
            crate::records::deleted_by(&alpha.tombstones(&n("moved")), &[], &pushed.body().vv),
            "the rename's delete of the old name was not signed"
        );
        assert!(alpha.record(&n("there")).unwrap().is_some());
    }

    /// A delete and a rename whose records were lost (the agent killed
    /// before they were durable) are signed at the next start from what
    /// they left: the held bytes, the moved bytes' mark. A record whose
    /// file left no trace is dropped, for a peer to send again.
    #[test]
    fn a_delete_or_rename_whose_records_were_lost_is_signed_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let [a] = circle(dir.path(), ["alpha"]);
        let alpha = a.open();
        let n = |s: &str| Name::new(s).unwrap();
        let to =
            lockbox_fs::SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        let seal = |name: &str| {
            let content = std::io::Cursor::new(name.as_bytes().to_vec());
            alpha.store().seal(&n(name), content, &to, 1 << 20).unwrap();
            let _guard = alpha.store().change_lock();
            alpha.record(&n(name)).unwrap().expect("recorded")
        };
        let (gone, moved, _lost, w) = (seal("gone"), seal("moved"), seal("lost"), seal("w"));
        let m2 = seal("m2");
        let removed = a.state.join("removed");
        let gone_bytes = fs::read(alpha.store().path_of(&n("gone"))).unwrap();
        alpha.store().remove(&n("gone")).unwrap();
        alpha.store().rename(&n("moved"), &n("there")).unwrap();
        alpha.store().rename(&n("m2"), &n("t2")).unwrap();
        // Removed by hand while the agent was down: no trace.
        fs::remove_file(alpha.store().path_of(&n("lost"))).unwrap();
        let held = || fs::read_dir(&removed).unwrap().count();
        assert_eq!(held(), 0, "held bytes outlived the delete's commit");
        // Killed before the commit: the records as before the changes, the
        // deleted bytes still held.
        {
            let _guard = alpha.store().change_lock();
            let mut ops = version_ops(&n("gone"), &gone, None).to_vec();
            ops.extend(version_ops(&n("moved"), &moved, None));
            ops.extend([
                Op::DelVersion(n("there")),
                Op::PutList(List::Tombstones, n("gone"), Vec::new()),
                Op::PutList(List::Tombstones, n("moved"), Vec::new()),
            ]);
            alpha.meta.apply(&ops).unwrap();
        }
        // Held without the mark (a file system without extended
        // attributes): the lost record with their hash names them.
        fs::write(removed.join("1.0"), &gone_bytes).unwrap();
        // A version signed (and maybe pushed) whose record was never
        // durable, deleted while its seal waited: only the held bytes, with
        // the record attached to them, tell.
        let held_w = removed.join("2.0");
        fs::rename(alpha.store().path_of(&n("w")), &held_w).unwrap();
        lockbox_fs::store::set_moved_from(&held_w, &n("w"));
        alpha.meta.apply(&[Op::DelVersion(n("w"))]).unwrap();
        // A file renamed while its seal waited (its record never durable,
        // nor the rename's): the moved bytes carry the origin's record,
        // which recording them at the start replaces.
        {
            let _guard = alpha.store().change_lock();
            alpha
                .meta
                .apply(&[
                    Op::DelVersion(n("m2")),
                    Op::DelVersion(n("t2")),
                    Op::PutList(List::Tombstones, n("m2"), Vec::new()),
                ])
                .unwrap();
        }
        alpha
            .store()
            .attach_record_current(&n("t2"), &m2.to_bytes());
        // `there` gets back the record attached to its bytes (not a change).
        assert_eq!(
            alpha.reconcile().unwrap(),
            6,
            "gone, moved, lost, w, m2, t2"
        );
        let _guard = alpha.store().change_lock();
        for (name, prev) in [("gone", &gone), ("moved", &moved), ("w", &w), ("m2", &m2)] {
            assert!(alpha.record(&n(name)).unwrap().is_none(), "{name}");
            let tombs = alpha.tombstones(&n(name));
            assert!(
                crate::records::deleted_by(&tombs, &[], &prev.body().vv),
                "the delete of {name} was not signed"
            );
        }
        assert!(
            alpha.tombstones(&n("lost")).is_empty(),
            "a file lost by hand was taken for a delete"
        );
        assert!(alpha.record(&n("lost")).unwrap().is_none());
        assert!(alpha.record(&n("there")).unwrap().is_some());
        assert!(alpha.record(&n("t2")).unwrap().is_some());
        assert_eq!(held(), 0, "held bytes stay after the start");
    }

    /// A version `lockbox resurrect` let back in, deleted again, stays
    /// deleted on every envoy. Its tombstone used to carry the version's
    /// own vector, which the resurrect that let it in covers: the resurrect
    /// lifted the new delete too, and the name came back from any envoy
    /// that still held the version.
    #[test]
    fn a_resurrected_version_deleted_again_stays_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = circle(dir.path(), ["alpha", "bravo"]);
        let (alpha, bravo) = (a.open(), b.open());
        let (doc, v1) = seal_doc(&alpha, b"v1");
        let bytes = fs::read(alpha.store().current_path(&doc)).unwrap();
        let staged = |r: &Replica| staged_copy(r, &bytes);
        let record = |r: &Replica| {
            let _guard = r.store().change_lock();
            r.record(&doc).unwrap()
        };
        bravo.install(&doc, &v1, staged(&bravo)).unwrap();
        // Deleted on alpha, then let back in: bravo still holds v1.
        alpha.store().remove(&doc).unwrap();
        let first = alpha.tombstones(&doc);
        let r = alpha.resurrect(&doc).unwrap();
        // bravo hears of both together (the resurrect first: a delete it
        // lifts never takes anything).
        bravo.apply_resurrect(&r).unwrap();
        for t in &first {
            bravo.apply_tombstone(t).unwrap();
        }
        assert!(
            record(&bravo).is_some(),
            "the resurrect did not keep v1 on bravo"
        );
        alpha.install(&doc, &v1, staged(&alpha)).unwrap();
        assert!(record(&alpha).is_some(), "v1 did not come back to alpha");
        // Deleted again.
        alpha.store().remove(&doc).unwrap();
        assert!(record(&alpha).is_none());
        for t in &alpha.tombstones(&doc) {
            bravo.apply_tombstone(t).unwrap();
        }
        assert!(
            record(&bravo).is_none(),
            "the second delete was lifted by the resurrect: v1 stays on bravo"
        );
        assert!(!bravo.store().contains(&doc));
        // And alpha refuses v1 from an envoy that missed the delete.
        assert!(
            alpha.install(&doc, &v1, staged(&alpha)).is_err() || record(&alpha).is_none(),
            "v1 came back to alpha"
        );
    }

    /// Two records of one version (a second signing) settle on one record
    /// on every envoy, whichever each held first.
    #[test]
    fn two_records_of_one_version_settle_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = circle(dir.path(), ["alpha", "bravo"]);
        let (alpha, bravo) = (a.open(), b.open());
        let (doc, first) = seal_doc(&alpha, b"v1");
        let mut body = first.body().clone();
        body.sealed_unix += 7;
        let second = alpha.sign_version(body);
        let body_bytes = fs::read(alpha.store().current_path(&doc)).unwrap();
        let staged = staged_copy(&bravo, &body_bytes);
        bravo.install(&doc, &second, staged).unwrap();
        let kept = admission::kept_record(&first.to_bytes(), &second.to_bytes()).to_vec();
        // Each meets the other's record, in either order.
        assert_eq!(alpha.admit(&doc, &second), Ok(Admission::Same));
        assert_eq!(bravo.admit(&doc, &first), Ok(Admission::Same));
        for r in [&alpha, &bravo] {
            let _guard = r.store().change_lock();
            assert_eq!(r.record(&doc).unwrap().unwrap().to_bytes(), kept);
        }
        assert_eq!(alpha.files_digest(), bravo.files_digest());
        // Again: nothing changes.
        assert_eq!(alpha.admit(&doc, &first), Ok(Admission::Same));
        assert_eq!(alpha.admit(&doc, &second), Ok(Admission::Same));
        assert_eq!(alpha.files_digest(), bravo.files_digest());
    }

    /// Names in folders travel like names at the root: a version at
    /// `ssh/keys/id` is admitted and installed in its folders, a rename
    /// across folders travels as a tombstone and a version, and a delete
    /// from a peer takes the folders the file alone made. An envoy whose
    /// store holds no folders refuses them (400), as one from before
    /// folders does.
    #[test]
    fn names_in_folders_travel_and_take_their_folders_along() {
        let n = |s: &str| Name::new(s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = circle(dir.path(), ["alpha", "bravo", "charlie"]);
        let alpha = a.open_with(Store::open(&a.state).unwrap().with_folders());
        let bravo = b.open_with(Store::open(&b.state).unwrap().with_folders());
        let flat = c.open();
        let to =
            lockbox_fs::SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        let id = n("ssh/keys/id");
        alpha
            .store()
            .seal(&id, std::io::Cursor::new(b"key".to_vec()), &to, 1 << 20)
            .unwrap();
        assert!(matches!(
            offer(&alpha, &bravo, &id),
            Ok(Admission::Store(_))
        ));
        assert_eq!(
            fs::read(bravo.store().path_of(&id)).unwrap(),
            fs::read(alpha.store().path_of(&id)).unwrap()
        );
        assert!(matches!(offer(&alpha, &flat, &id), Err(Refusal::Bad(_))));
        assert!(!flat.store().path_of(&n("ssh")).exists());
        // A rename across folders.
        let moved = n("gpg/id");
        alpha.store().rename(&id, &moved).unwrap();
        let tombs = alpha.tombstones(&id);
        assert_eq!(tombs.len(), 1, "the rename's tombstone at the old path");
        assert_eq!(bravo.apply_tombstone(&tombs[0]), Ok(true));
        assert!(matches!(
            flat.apply_tombstone(&tombs[0]),
            Err(Refusal::Bad(_))
        ));
        assert!(matches!(
            offer(&alpha, &bravo, &moved),
            Ok(Admission::Store(_))
        ));
        assert!(bravo.store().path_of(&moved).is_file());
        assert!(
            !bravo.store().path_of(&n("ssh")).exists(),
            "the folders the file alone made went with it"
        );
        assert_eq!(holdings(&alpha), holdings(&bravo));
        // A delete.
        alpha.store().remove(&moved).unwrap();
        for t in alpha.tombstones(&moved) {
            assert_eq!(bravo.apply_tombstone(&t), Ok(true));
        }
        assert!(!bravo.store().path_of(&n("gpg")).exists());
        assert!(holdings(&bravo).is_empty());
    }

    /// What a catch-up from `from` brings `to`: every table, then every
    /// file (refusals are the tests' to look at, not here).
    fn sync(from: &Replica, to: &Replica) {
        for t in Table::SERVED {
            let recs = from.table_records(t);
            let _ = to.apply_table(
                t,
                &crate::records::encode_list(recs.iter().map(|r| r.as_slice())),
            );
        }
        for (name, _) in from.manifest() {
            let _ = offer(from, to, &name);
        }
    }

    /// The tree of `r`'s store: every file and folder.
    fn tree_of(r: &Replica) -> lockbox_fs::store::Walk {
        lockbox_fs::store::walk(r.store().dir(), lockbox_fs::name::MAX_DEPTH).unwrap()
    }

    fn folder_pair(dir: &Path) -> (Arc<Replica>, Arc<Replica>) {
        let [a, b] = circle(dir, ["alpha", "bravo"]);
        (
            a.open_with(Store::open(&a.state).unwrap().with_folders()),
            b.open_with(Store::open(&b.state).unwrap().with_folders()),
        )
    }

    fn seal_at(r: &Replica, name: &str, body: &[u8]) {
        let to =
            lockbox_fs::SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        r.store()
            .seal(
                &Name::new(name).unwrap(),
                std::io::Cursor::new(body.to_vec()),
                &to,
                1 << 20,
            )
            .unwrap();
    }

    /// Folders travel: made (empty too), renamed with what is in them,
    /// removed; each envoy ends with the same tree and the same digests.
    #[test]
    fn folders_are_made_renamed_and_removed_on_every_envoy() {
        let n = |s: &str| Name::new(s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (alpha, bravo) = folder_pair(dir.path());
        let a = alpha.store();
        a.make_folder(&n("ssh")).unwrap();
        a.make_folder(&n("ssh/empty")).unwrap();
        seal_at(&alpha, "ssh/id", b"key");
        a.deliver_journal();
        assert!(alpha.folder_is_live(&n("ssh")) && alpha.folder_is_live(&n("ssh/empty")));
        sync(&alpha, &bravo);
        assert_eq!(tree_of(&bravo), tree_of(&alpha));
        assert!(bravo.store().is_folder(&n("ssh/empty")));
        assert_eq!(bravo.files_digest(), alpha.files_digest());
        assert_ne!(bravo.files_digest(), {
            let [_, _, c] = circle(dir.path(), ["a2", "b2", "c2"]);
            c.open().files_digest()
        });
        // A rename of the folder with what is in it.
        let moved = a.rename_folder(&n("ssh"), &n("keys")).unwrap();
        assert_eq!(moved, vec![(n("ssh/id"), n("keys/id"))]);
        a.deliver_journal();
        sync(&alpha, &bravo);
        assert_eq!(tree_of(&bravo), tree_of(&alpha));
        assert_eq!(
            tree_of(&bravo).folders,
            vec![n("keys"), n("keys/empty")],
            "the old folders went, the new came"
        );
        assert_eq!(bravo.files_digest(), alpha.files_digest());
        // rm -r.
        a.remove(&n("keys/id")).unwrap();
        a.remove_folder(&n("keys/empty")).unwrap();
        a.remove_folder(&n("keys")).unwrap();
        a.deliver_journal();
        sync(&alpha, &bravo);
        assert_eq!(tree_of(&bravo), lockbox_fs::store::Walk::default());
        assert_eq!(bravo.files_digest(), alpha.files_digest());
        // Either way round, again: nothing changes.
        sync(&bravo, &alpha);
        assert_eq!(tree_of(&alpha), lockbox_fs::store::Walk::default());
    }

    /// A folder made and moved away in one commit window before a SIGKILL
    /// loses both records here, while a peer got the first. Back from the
    /// peer, that record of this envoy's own is met with the removal the
    /// store shows (its files moved away just before the stop), not taken
    /// as news. Without that evidence (an envoy restored from an older
    /// copy of its state) a folder of its own from a peer is taken back.
    #[test]
    fn an_own_folder_lost_in_a_crash_is_not_taken_back_from_a_peer() {
        let n = |s: &str| Name::new(s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (alpha, _bravo) = folder_pair(dir.path());
        let a = alpha.store();
        a.make_folder(&n("d")).unwrap();
        a.make_folder(&n("kept")).unwrap();
        seal_at(&alpha, "d/x", b"x");
        a.deliver_journal();
        let (d_rec, kept_rec) = {
            let _guard = a.change_lock();
            (
                alpha.folders(&n("d"))[0].clone(),
                alpha.folders(&n("kept"))[0].clone(),
            )
        };
        let x = {
            let _guard = a.change_lock();
            alpha.record(&n("d/x")).unwrap().unwrap()
        };
        a.rename_folder(&n("d"), &n("e")).unwrap();
        a.deliver_journal();
        // Killed: the file's record as before the move, and no record of
        // either folder (nor of kept, as if restored from an older copy).
        {
            let _guard = a.change_lock();
            let mut ops = version_ops(&n("d/x"), &x, None).to_vec();
            ops.push(Op::DelVersion(n("e/x")));
            for f in ["d", "e", "kept"] {
                ops.push(Op::PutList(List::Folders, n(f), Vec::new()));
            }
            for t in ["d/x", "d"] {
                ops.push(Op::PutList(List::Tombstones, n(t), Vec::new()));
            }
            alpha.meta.apply(&ops).unwrap();
        }
        a.remove_folder(&n("kept")).unwrap();
        a.deliver_journal();
        alpha
            .meta
            .apply(&[
                Op::PutList(List::Folders, n("kept"), Vec::new()),
                Op::PutList(List::Tombstones, n("kept"), Vec::new()),
            ])
            .unwrap();
        alpha.reconcile().unwrap();
        // The peer sends both folder records back.
        assert!(alpha.apply_folder(&d_rec).unwrap());
        assert!(alpha.apply_folder(&kept_rec).unwrap());
        let _guard = a.change_lock();
        assert!(!alpha.folder_is_live(&n("d")), "d was taken back");
        assert!(!a.is_folder(&n("d")), "d is in the store again");
        assert!(
            crate::records::deleted_by(&alpha.tombstones(&n("d")), &[], &d_rec.body().vv),
            "no removal of d that covers its record"
        );
        assert!(alpha.folder_is_live(&n("kept")), "kept was not taken back");
        assert!(a.is_folder(&n("kept")));
    }

    /// A folder rename, a folder made and a folder removed whose records
    /// were lost (the agent killed before they were durable) are recorded
    /// at the next start: the files' marks sign the old names' deletes,
    /// the folders of the store are recorded, and a folder on record that
    /// is gone has its removal signed. Without that, a peer would send the
    /// old tree back, and the new folders would stay here alone.
    #[test]
    fn folder_changes_whose_records_were_lost_are_recorded_at_the_start() {
        let n = |s: &str| Name::new(s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (alpha, _bravo) = folder_pair(dir.path());
        let a = alpha.store();
        a.make_folder(&n("d")).unwrap();
        a.make_folder(&n("gone")).unwrap();
        seal_at(&alpha, "d/x", b"x");
        a.deliver_journal();
        let list = |name: &str| alpha.meta.list(List::Folders, &n(name)).unwrap();
        let (d_list, gone_list) = (list("d"), list("gone"));
        let x = {
            let _guard = a.change_lock();
            alpha.record(&n("d/x")).unwrap().unwrap()
        };
        a.rename_folder(&n("d"), &n("e")).unwrap();
        a.remove_folder(&n("gone")).unwrap();
        a.make_folder(&n("new")).unwrap();
        a.deliver_journal();
        // Killed: the records as before these changes.
        {
            let _guard = a.change_lock();
            let mut ops = version_ops(&n("d/x"), &x, None).to_vec();
            ops.extend([
                Op::DelVersion(n("e/x")),
                Op::PutList(List::Folders, n("d"), d_list),
                Op::PutList(List::Folders, n("gone"), gone_list),
                Op::PutList(List::Folders, n("e"), Vec::new()),
                Op::PutList(List::Folders, n("new"), Vec::new()),
            ]);
            for t in ["d/x", "d", "gone"] {
                ops.push(Op::PutList(List::Tombstones, n(t), Vec::new()));
            }
            alpha.meta.apply(&ops).unwrap();
        }
        assert!(alpha.reconcile().unwrap() >= 5);
        let _guard = a.change_lock();
        assert!(
            crate::records::deleted_by(&alpha.tombstones(&n("d/x")), &[], &x.body().vv),
            "the old name's delete"
        );
        assert!(alpha.record(&n("e/x")).unwrap().is_some());
        for (f, live) in [("d", false), ("gone", false), ("e", true), ("new", true)] {
            assert_eq!(alpha.folder_is_live(&n(f)), live, "{f}");
        }
        assert!(
            !alpha.tombstones(&n("gone")).is_empty(),
            "the removal of gone"
        );
        // Again: nothing more to record.
        drop(_guard);
        assert_eq!(alpha.reconcile().unwrap(), 0);
    }

    /// A file written on bravo into a folder that alpha renamed meanwhile
    /// survives where it was written, on both, and so does its folder; a
    /// folder made on one envoy where the other made a file keeps the path,
    /// and the file goes to its conflict copy.
    #[test]
    fn concurrent_writes_into_moved_folders_survive_and_a_folder_keeps_its_path() {
        let n = |s: &str| Name::new(s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (alpha, bravo) = folder_pair(dir.path());
        alpha.store().make_folder(&n("d")).unwrap();
        seal_at(&alpha, "d/old", b"old");
        alpha.store().deliver_journal();
        sync(&alpha, &bravo);
        // Apart: alpha renames d, bravo writes into it; alpha makes a
        // folder x where bravo writes a file x.
        alpha.store().rename_folder(&n("d"), &n("e")).unwrap();
        alpha.store().make_folder(&n("x")).unwrap();
        seal_at(&bravo, "d/new", b"written on bravo");
        seal_at(&bravo, "x", b"a file named x");
        alpha.store().deliver_journal();
        bravo.store().deliver_journal();
        // Together again, in either order.
        sync(&alpha, &bravo);
        sync(&bravo, &alpha);
        sync(&alpha, &bravo);
        assert_eq!(tree_of(&alpha), tree_of(&bravo));
        let t = tree_of(&alpha);
        assert!(
            t.files.contains(&n("d/new")),
            "the write into the moved folder: {t:?}"
        );
        assert!(
            t.files.contains(&n("e/old")) && !t.files.contains(&n("d/old")),
            "{t:?}"
        );
        assert!(t.folders.contains(&n("x")), "{t:?}");
        assert!(
            t.files
                .iter()
                .any(|f| f.as_bytes().starts_with(b"x.conflict-bravo-")),
            "the file x kept as its conflict copy: {t:?}"
        );
        assert_eq!(alpha.files_digest(), bravo.files_digest());
    }

    /// Offer what `from` holds under `at` to `to` under `at`, as a push or
    /// a catch-up does: admitted, then (if wanted) its body staged and
    /// installed. Returns the admission.
    /// The owner's execute bit travels (`docs/folders.md`, "What users get": modes): a
    /// version's record names it and the receiver's store file takes it;
    /// a chmod is a new version of the same content, which supersedes the
    /// old one everywhere; a re-encryption keeps it; and a chmod whose
    /// record was lost (the agent killed) is recorded at the next start.
    #[test]
    fn the_execute_bit_travels_and_a_chmod_is_a_version() {
        use lockbox_fs::store::SealAttrs;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = circle(dir.path(), ["alpha", "bravo"]);
        let (alpha, bravo) = (a.open(), b.open());
        let mode = |r: &Replica, n: &Name| {
            fs::metadata(r.store().current_path(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        let record = |r: &Replica, n: &Name| {
            let _guard = r.store().change_lock();
            r.record(n).unwrap().expect("recorded").body().clone()
        };
        let to =
            lockbox_fs::SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        let run = Name::new("run.sh").unwrap();
        let exec = SealAttrs {
            executable: Some(true),
            ..SealAttrs::default()
        };
        alpha
            .store()
            .seal_with(
                &run,
                std::io::Cursor::new(b"#!/bin/sh".to_vec()),
                &to,
                1 << 20,
                exec,
            )
            .unwrap();
        let first = record(&alpha, &run);
        assert!(first.executable);
        assert!(matches!(
            offer(&alpha, &bravo, &run),
            Ok(Admission::Store(_))
        ));
        assert_eq!(mode(&bravo, &run), 0o700);
        assert!(record(&bravo, &run).executable);
        // chmod -x on alpha: a version of the same bytes after the first.
        drop(
            alpha
                .store()
                .set_executable(&run, false)
                .unwrap()
                .expect("changed"),
        );
        alpha.store().deliver_journal();
        let second = record(&alpha, &run);
        assert!(!second.executable);
        assert_eq!(second.hash, first.hash);
        assert_eq!(
            second.vv.compare(&first.vv),
            crate::version::Causality::After
        );
        assert!(matches!(
            offer(&alpha, &bravo, &run),
            Ok(Admission::Store(_))
        ));
        assert_eq!(mode(&bravo, &run), 0o600);
        assert_eq!(record(&bravo, &run), second);
        // The same bit again is no version at all.
        assert!(alpha.store().set_executable(&run, false).unwrap().is_none());
        // A chmod +x by hand while the agent is stopped (or whose record
        // was lost): the next start records it, as a version after.
        fs::set_permissions(
            bravo.store().path_of(&run),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        assert_eq!(bravo.reconcile().unwrap(), 1);
        let third = record(&bravo, &run);
        assert!(third.executable);
        assert_eq!(
            third.vv.compare(&second.vv),
            crate::version::Causality::After
        );
        assert_eq!(bravo.reconcile().unwrap(), 0, "recorded once");
        // A re-encryption keeps the bit, in the record and on the file.
        let resealed = bravo
            .reseal(&run, Reseal::All, |src, out| {
                std::io::copy(src, out).map_err(|e| e.to_string())?;
                Ok::<_, String>(lockbox_fs::Sealed {
                    plaintext_len: third.plaintext_len,
                    ciphertext_len: third.ciphertext_len,
                    hash: third.hash,
                    envoys: Vec::new(),
                    executable: false,
                })
            })
            .unwrap();
        assert!(resealed);
        assert!(record(&bravo, &run).executable);
        assert_eq!(mode(&bravo, &run), 0o700);
    }

    fn offer(from: &Replica, to: &Replica, at: &Name) -> Result<Admission, Refusal> {
        let rec = {
            let _guard = from.store().change_lock();
            from.record(at).unwrap().expect("a record to offer")
        };
        match to.admit(at, &rec)? {
            Admission::Same => Ok(Admission::Same),
            Admission::Store(_) => {
                let body = fs::read(from.store().current_path(at)).unwrap();
                let staged = staged_copy(to, &body);
                to.install(at, &rec, staged)
            }
        }
    }

    /// What `r` holds: each name and the hash of its version.
    fn holdings(r: &Replica) -> Vec<(String, crate::records::FileVersion)> {
        r.manifest()
            .into_iter()
            .map(|(n, bytes)| {
                let rec = Signed::<crate::records::FileVersion>::from_bytes(&bytes).unwrap();
                (n.to_string(), rec.body().clone())
            })
            .collect()
    }

    /// Two concurrent versions of doc met on one envoy (the winner, `w`),
    /// which then deletes doc — or doc and its conflict copy, or changes
    /// the copy — while the loser's envoy (`l`) never saw the winner. Meeting
    /// again in any order, the loser does not take doc back anywhere: it
    /// stays the conflict copy (changed or deleted as `w` left it), and
    /// both envoys hold the same. (It used to come back under doc.)
    #[test]
    fn a_version_that_lost_its_name_does_not_take_it_back() {
        use lockbox_fs::SealTo;
        use std::io::Cursor;
        let to = SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        let seal = |r: &Replica, name: &Name, text: &str| {
            r.store()
                .seal(name, Cursor::new(text.as_bytes().to_vec()), &to, 1 << 20)
                .unwrap();
        };
        // What `w` did after the conflict, and in which order `l` hears.
        #[derive(Debug, Clone, Copy)]
        enum After {
            DeleteName,
            DeleteBoth,
            ChangeCopy,
        }
        for after in [After::DeleteName, After::DeleteBoth, After::ChangeCopy] {
            for tombstones_first in [false, true] {
                let case = format!("{after:?}, tombstones first: {tombstones_first}");
                let dir = tempfile::tempdir().unwrap();
                let [a, b] = circle(dir.path(), ["alpha", "bravo"]);
                let (alpha, bravo) = (a.open(), b.open());
                let doc = Name::new("doc").unwrap();
                seal(&alpha, &doc, "from alpha");
                seal(&bravo, &doc, "from bravo");
                // The loser's version reaches the winner's envoy (never
                // the other way): they conflict there.
                let rec = |r: &Replica| {
                    let _guard = r.store().change_lock();
                    r.record(&doc).unwrap().unwrap().body().clone()
                };
                let (ca, cb) = (rec(&alpha).candidate(), rec(&bravo).candidate());
                let alpha_wins = matches!(
                    crate::version::resolve(&ca, &cb),
                    crate::version::Resolution::Conflict { winner, .. } if winner == &ca
                );
                let (w, l) = if alpha_wins {
                    (alpha.clone(), bravo.clone())
                } else {
                    (bravo.clone(), alpha.clone())
                };
                assert!(matches!(offer(&l, &w, &doc), Ok(Admission::Store(_))));
                let copy = holdings(&w)
                    .into_iter()
                    .map(|(n, _)| n)
                    .find(|n| n.starts_with("doc.conflict-"))
                    .unwrap_or_else(|| panic!("{case}: no conflict copy on the winner"));
                let copy = Name::new(copy).unwrap();
                // `l` still holds its own version under doc, never saw the winner.
                let lost = {
                    let _guard = l.store().change_lock();
                    l.record(&doc).unwrap().unwrap()
                };
                assert_eq!(lost.body().conflict_name().as_ref(), Some(&copy), "{case}");
                w.store().remove(&doc).unwrap();
                match after {
                    After::DeleteName => {}
                    After::DeleteBoth => w.store().remove(&copy).unwrap(),
                    After::ChangeCopy => seal(&w, &copy, "the copy, changed"),
                }
                let tombstones = |r: &Replica| -> Vec<_> {
                    [&doc, &copy]
                        .into_iter()
                        .flat_map(|n| r.tombstones(n))
                        .collect()
                };
                let tell_tombstones = || {
                    for t in tombstones(&w) {
                        l.apply_tombstone(&t).unwrap();
                    }
                };
                if tombstones_first {
                    tell_tombstones();
                }
                // `l` offers doc to `w` (if it still holds it): not taken back.
                if l.store().contains(&doc) {
                    let back = offer(&l, &w, &doc);
                    let want = match after {
                        After::DeleteName => Ok(Admission::Same),
                        After::DeleteBoth => Err(Refusal::Tombstoned),
                        After::ChangeCopy => Err(Refusal::Newer(copy.to_string())),
                    };
                    assert_eq!(back, want, "{case}");
                }
                // `w` offers what it holds to `l`, then its deletes.
                for (n, _) in holdings(&w) {
                    let n = Name::new(n).unwrap();
                    let moves = n == copy && l.store().contains(&doc);
                    let got = offer(&w, &l, &n).unwrap();
                    if moves && matches!(after, After::DeleteName) {
                        // The very version l holds under doc: it moves
                        // there, its body is not sent again.
                        assert_eq!(got, Admission::Same, "{case}");
                    }
                }
                tell_tombstones();
                assert!(
                    !l.store().contains(&doc),
                    "{case}: doc is back on {}",
                    l.envoy()
                );
                assert!(
                    !w.store().contains(&doc),
                    "{case}: doc is back on {}",
                    w.envoy()
                );
                assert_eq!(holdings(&l), holdings(&w), "{case}");
                assert_eq!(l.files_digest(), w.files_digest(), "{case}");
                let at_copy = holdings(&l)
                    .into_iter()
                    .find(|(n, _)| *n == copy.to_string());
                match after {
                    After::DeleteName => {
                        assert_eq!(
                            at_copy.map(|(_, v)| v.hash),
                            Some(lost.body().hash),
                            "{case}"
                        )
                    }
                    After::DeleteBoth => assert!(at_copy.is_none(), "{case}"),
                    After::ChangeCopy => {
                        assert_eq!(
                            at_copy.map(|(_, v)| v.author.to_string()),
                            Some(w.envoy().to_string()),
                            "{case}"
                        )
                    }
                }
            }
        }
    }

    /// States come from `meta.redb`: a failed seal stays out of the mesh
    /// (not recorded, not in the manifest, a peer's version of its name
    /// refused) while a peer's file of the same shape of name is an
    /// ordinary one; a conflict copy made at install is recorded so, in
    /// the same batch as its record.
    #[test]
    fn a_failed_seal_stays_out_and_a_conflict_copy_is_recorded() {
        use lockbox_fs::{FileState, SealTo};
        use std::io::Cursor;
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = circle(dir.path(), ["alpha", "bravo"]);
        let (alpha, bravo) = (a.open(), b.open());
        let to = SealTo::keys(vec![lockbox_crypto::AgeIdentity::generate().to_public()]);
        let n = |s: &str| Name::new(s).unwrap();
        let body_of = |r: &Replica, name: &Name| fs::read(r.store().current_path(name)).unwrap();
        let record_of = |r: &Replica, name: &Name| {
            let _guard = r.store().change_lock();
            r.record(name).unwrap().expect("recorded")
        };

        // bravo cannot seal a plaintext (no recipients): it is set aside.
        fs::write(bravo.store().path_of(&n("x")), b"plain").unwrap();
        let report = bravo.store().sweep(&SealTo::default(), 1 << 20).unwrap();
        let failed = report.failed[0].1.clone();
        assert_eq!(bravo.meta.state(&failed).unwrap(), Some(State::Failed));
        assert!(bravo.kept_out(&failed));
        {
            let _guard = bravo.store().change_lock();
            assert!(bravo.record(&failed).unwrap().is_none());
        }
        assert!(bravo.manifest().is_empty());
        // alpha's own file of that very name is an ordinary file of the mesh,
        // but it does not replace bravo's plaintext.
        alpha
            .store()
            .seal(&failed, Cursor::new(b"alpha's".to_vec()), &to, 1 << 20)
            .unwrap();
        let rec = record_of(&alpha, &failed);
        assert_eq!(alpha.manifest().len(), 1);
        assert_eq!(
            bravo.admit(&failed, &rec),
            Err(Refusal::Newer(failed.to_string()))
        );
        assert_eq!(fs::read(bravo.store().path_of(&failed)).unwrap(), b"plain");

        // Concurrent versions of doc: the loser becomes a conflict copy.
        let doc = n("doc");
        for (r, text) in [(&alpha, "from alpha"), (&bravo, "from bravo")] {
            r.store()
                .seal(&doc, Cursor::new(text.as_bytes().to_vec()), &to, 1 << 20)
                .unwrap();
        }
        let rec = record_of(&alpha, &doc);
        let body = body_of(&alpha, &doc);
        let staged = staged_copy(&bravo, &body);
        bravo.install(&doc, &rec, staged).unwrap();
        let listed = bravo.store().list().unwrap();
        let states: Vec<(String, FileState)> = listed
            .iter()
            .map(|e| (e.name.to_string(), e.state))
            .collect();
        let copy = listed
            .iter()
            .find(|e| e.name.as_bytes().starts_with(b"doc.conflict-"))
            .unwrap_or_else(|| panic!("no conflict copy: {states:?}"));
        assert_eq!(copy.state, FileState::Conflict, "{states:?}");
        assert_eq!(bravo.meta.state(&copy.name).unwrap(), Some(State::Conflict));
        assert_eq!(bravo.meta.state(&doc).unwrap(), None);
        assert_eq!(
            bravo.store().entry(&doc).unwrap().state,
            FileState::Ciphertext
        );
    }
}
