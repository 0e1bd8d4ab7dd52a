//! The admission rule: whether a version a peer offers is wanted, and
//! under which name (its own, or its conflict copy), or why it is refused.
//!
//! The rule is pure: [`check_offer`] and [`place`] take the offered record
//! and what is held (the current record, the name's tombstones and
//! resurrects, the members, this envoy's user) as values, so each outcome
//! is unit-tested here. [`Replica::admit`] does the database reads and
//! calls them. This must not read or write bodies or the store.

use lockbox_crypto::sign::Signed;
use lockbox_fs::escape::Escape;
use lockbox_fs::Name;

use super::{internal, Admission, Members, Refusal, Replica};
use crate::records::{self, FileVersion, Resurrect, Tombstone};
use crate::version::{resolve, Resolution};
use crate::WireName;

/// What is held under one name, as far as the rule looks at it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held<'a> {
    /// The record of the version stored under the name, if any.
    pub current: Option<&'a FileVersion>,
    /// The name's tombstones.
    pub tombstones: &'a [Signed<Tombstone>],
    /// The name's resurrects.
    pub resurrects: &'a [Signed<Resurrect>],
    /// Whether this envoy keeps its file under the name out of the mesh
    /// (recorded as a failed seal: a plaintext, which a version from a
    /// peer must not replace).
    pub kept_out: bool,
}

/// Where [`place`] puts an offered version, looking at one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
    /// Decided: wanted (and where), already held, or refused.
    Decided(Result<Admission, Refusal>),
    /// It loses a conflict with the version held under the name: place it
    /// again under its conflict-copy name, with what is held there.
    ConflictCopy(Name),
}

/// Whether `rec` may be offered for `name` at all, whatever is held: it is
/// signed by one of `members` (else 403), for `user` (else 400), and may
/// be stored under `name` — its own name or its conflict copy (else 400).
/// Any name the name rules allow may be offered: a name means nothing.
pub(super) fn check_offer(
    user: &WireName,
    members: &Members,
    name: &Name,
    rec: &Signed<FileVersion>,
) -> Result<(), Refusal> {
    let v = rec.body();
    if members.by_key(&rec.signer()).is_none() {
        return Err(Refusal::NotMember(format!(
            "the version of {name} is signed by {}, which is not a member of this circle",
            rec.signer()
        )));
    }
    if v.user != *user {
        return Err(Refusal::Bad(format!("the record is for user {}", v.user)));
    }
    if !v.fits_name(name) {
        return Err(Refusal::Bad(format!(
            "a record of {} cannot be stored as {name}",
            v.name
        )));
    }
    Ok(())
}

/// The rule for version `v` offered under `name`, given what is `held`
/// there: refused as deleted (410) when a tombstone that no resurrect
/// lifts covers it; stored when nothing is held or it supersedes or wins
/// over what is; already held when it is the same; refused (409) when what
/// is held is newer; and when it loses a conflict, placed again under its
/// conflict-copy name (refused with 409 if that is where it already is).
/// A name whose file this envoy keeps out of the mesh is refused (409):
/// that file is its own.
pub(super) fn place(name: &Name, v: &FileVersion, held: &Held<'_>) -> Placement {
    use Placement::Decided;
    if records::deleted_by(held.tombstones, held.resurrects, &v.vv) {
        return Decided(Err(Refusal::Tombstoned));
    }
    if held.kept_out {
        return Decided(Err(Refusal::Newer(name.to_string())));
    }
    let Some(cur) = held.current else {
        return Decided(Ok(Admission::Store(name.clone())));
    };
    let (a, b) = (cur.candidate(), v.candidate());
    match resolve(&a, &b) {
        Resolution::Same => Decided(Ok(Admission::Same)),
        Resolution::Supersedes { newer, .. } if newer == &b => {
            Decided(Ok(Admission::Store(name.clone())))
        }
        Resolution::Supersedes { .. } => Decided(Err(Refusal::Newer(name.to_string()))),
        Resolution::Conflict { winner, .. } if winner == &b => {
            Decided(Ok(Admission::Store(name.clone())))
        }
        // The newcomer loses: it is kept as its conflict copy.
        Resolution::Conflict { .. } => match v.conflict_name() {
            None => Decided(Err(Refusal::Bad("no conflict-copy name".into()))),
            Some(copy) if &copy == name => Decided(Err(Refusal::Newer(name.to_string()))),
            Some(copy) => Placement::ConflictCopy(copy),
        },
    }
}

/// Whether version `v` already lost its own name: `at_copy` is what is
/// held under its conflict-copy name `copy`. A version moved to its
/// conflict copy (on any envoy) has lost the name to a concurrent version,
/// and that is final: it is kept under the copy, or changed or deleted
/// there, never again under the name — also after the winner under the
/// name was deleted, and whatever order the envoys hear of it in.
///
/// `Some`: what an offer of `v` under its own name gets — already held
/// (the copy holds it), refused (409) when the copy holds a later version
/// of it, or as deleted (410) when the copy's delete covers it. `None`:
/// nothing says it lost the name; the rule under the name decides.
pub(super) fn kept_as_copy(
    copy: &Name,
    v: &FileVersion,
    at_copy: &Held<'_>,
) -> Option<Result<Admission, Refusal>> {
    if records::deleted_by(at_copy.tombstones, at_copy.resurrects, &v.vv) {
        return Some(Err(Refusal::Tombstoned));
    }
    let held = at_copy.current?;
    let (h, o) = (held.candidate(), v.candidate());
    match resolve(&h, &o) {
        Resolution::Same => Some(Ok(Admission::Same)),
        Resolution::Supersedes { newer, .. } if newer == &h => {
            Some(Err(Refusal::Newer(copy.to_string())))
        }
        _ => None,
    }
}

/// Of two signed records of one version (same name, vector and ciphertext
/// hash) that differ in their bytes — a version signed twice, e.g. again
/// after a crash — the one every envoy keeps: the smaller encoded record,
/// bytewise. It depends on neither the order nor the envoy, so wherever
/// the two meet (a push, a fetch, a catch-up) the tables converge.
pub(super) fn kept_record<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    if b < a {
        b
    } else {
        a
    }
}

/// Whether `offered` is the same version as `held` signed differently, and
/// the one to keep by [`kept_record`].
pub(super) fn replaces_same(held: &Signed<FileVersion>, offered: &Signed<FileVersion>) -> bool {
    let (h, o) = (held.body(), offered.body());
    if h.name != o.name || h.vv != o.vv || h.hash != o.hash {
        return false;
    }
    let (hb, ob) = (held.to_bytes(), offered.to_bytes());
    hb != ob && kept_record(&hb, &ob) == ob.as_slice()
}

impl Replica {
    /// Check a version offered by a peer for `name`, before its body is read.
    /// When it is a version already held under another signed record, the
    /// record to keep is settled here ([`kept_record`]).
    pub fn admit(&self, name: &Name, rec: &Signed<FileVersion>) -> Result<Admission, Refusal> {
        self.carries(name)?;
        self.carries(&rec.body().name)?;
        check_offer(&self.user, &self.members(), name, rec)?;
        if *name != rec.body().name {
            // Offered under its conflict copy: if it is what this envoy
            // holds under the name, it lost the name elsewhere; it moves.
            let guard = self.store.change_lock();
            let moved = self.take_to_copy_locked(name, rec)?;
            drop(guard);
            if moved {
                self.remote_changed(&rec.body().name);
                self.remote_changed(name);
                return Ok(Admission::Same);
            }
        }
        let a = self.decide(name, rec.body())?;
        if a == Admission::Same && self.held_elsewise(name, rec).is_some() {
            let _guard = self.store.change_lock();
            self.keep_one_record_locked(name, rec)?;
        }
        Ok(a)
    }

    /// Where (`name` or its conflict copy) the version of `rec` is held
    /// under a record that [`replaces_same`] says `rec` replaces.
    fn held_elsewise(&self, name: &Name, rec: &Signed<FileVersion>) -> Option<Name> {
        let copy = rec.body().conflict_name();
        [Some(name.clone()), copy].into_iter().flatten().find(|at| {
            self.record(at)
                .ok()
                .flatten()
                .is_some_and(|held| replaces_same(&held, rec))
        })
    }

    /// Under the change lock: if the version of `rec` is held under a
    /// record it replaces ([`replaces_same`]), keep `rec` instead (the
    /// bytes are the same; only the record changes).
    pub(super) fn keep_one_record_locked(
        &self,
        name: &Name,
        rec: &Signed<FileVersion>,
    ) -> Result<(), Refusal> {
        let Some(at) = self.held_elsewise(name, rec) else {
            return Ok(());
        };
        let stat = self
            .meta
            .version(&at)
            .map_err(internal)?
            .and_then(|(_, s)| s);
        self.store.attach_record_current(&at, &rec.to_bytes());
        self.meta
            .apply(&super::version_ops(&at, rec, stat))
            .map_err(internal)?;
        tracing::info!(
            "{} was signed twice; keeping the record every envoy keeps",
            at.escaped()
        );
        Ok(())
    }

    /// Under the change lock: `rec` is offered under its conflict copy
    /// `copy`, so on some envoy it lost its name. If this envoy holds that
    /// very version under the name, and nothing under `copy`, the file moves
    /// there (the bytes are the same; the record kept is the one
    /// [`kept_record`] keeps). Returns whether it moved: the offer is then
    /// already held.
    fn take_to_copy_locked(&self, copy: &Name, rec: &Signed<FileVersion>) -> Result<bool, Refusal> {
        let name = &rec.body().name;
        if copy == name || rec.body().conflict_name().as_ref() != Some(copy) {
            return Ok(false);
        }
        let Some(held) = self.record(name).map_err(internal)? else {
            return Ok(false);
        };
        let same = matches!(
            resolve(&held.body().candidate(), &rec.body().candidate()),
            Resolution::Same
        );
        if !same || self.kept_out(name) || !self.store.contains(name) {
            return Ok(false);
        }
        if self.record(copy).map_err(internal)?.is_some() || self.store.contains(copy) {
            // Something is there already: the offer is decided as usual,
            // and the name gives the version up once the copy holds it.
            return Ok(false);
        }
        self.store.rename_locked(name, copy).map_err(internal)?;
        let keep = if replaces_same(&held, rec) {
            rec
        } else {
            &held
        };
        self.store.attach_record_current(copy, &keep.to_bytes());
        let mut ops = super::version_ops(copy, keep, self.store.local_stat(copy)).to_vec();
        ops.push(lockbox_fs::meta::Op::DelVersion(name.clone()));
        self.meta.apply(&ops).map_err(internal)?;
        tracing::info!(
            "{}: its version lost the name to a concurrent one on another envoy; kept as {}",
            name.escaped(),
            copy.escaped()
        );
        Ok(true)
    }

    /// Under the change lock: if the version held under `name` has lost
    /// its name ([`kept_as_copy`]: its conflict copy holds it, a later
    /// version of it, or deleted it), the name gives it up: its file and
    /// record go (no delete is recorded: nobody deleted the name). Returns
    /// whether it went; the caller tells the mount once the lock is
    /// released.
    pub(super) fn give_up_lost_name_locked(&self, name: &Name) -> Result<bool, Refusal> {
        let Some(held) = self.record(name).map_err(internal)? else {
            return Ok(false);
        };
        if held.body().name != *name || self.lost_its_name(held.body())?.is_none() {
            return Ok(false);
        }
        self.store.remove_locked(name).map_err(internal)?;
        self.store
            .prune_folders_locked(name, |f| self.folder_is_live(f));
        self.meta
            .apply(&[lockbox_fs::meta::Op::DelVersion(name.clone())])
            .map_err(internal)?;
        tracing::info!(
            "{}: its version was kept as its conflict copy on another envoy; the name gives it up",
            name.escaped()
        );
        Ok(true)
    }

    /// Under the change lock, after `copy` changed (a version stored or
    /// deleted there): if `copy` is the conflict-copy name of the version
    /// held under the name it was made from, that name gives the version
    /// up when it lost it ([`Self::give_up_lost_name_locked`]). Returns the
    /// name given up.
    pub(super) fn give_up_origin_locked(&self, copy: &Name) -> Result<Option<Name>, Refusal> {
        let Some(origin) = crate::version::conflict_origin(copy.as_bytes())
            .and_then(|n| Name::new(n.to_vec()).ok())
            .filter(|n| n != copy)
        else {
            return Ok(None);
        };
        let held_there = self.record(&origin).map_err(internal)?;
        if held_there.and_then(|h| h.body().conflict_name()).as_ref() != Some(copy) {
            return Ok(None);
        }
        Ok(self.give_up_lost_name_locked(&origin)?.then_some(origin))
    }

    /// Under the change lock: move `cur`, held under `name` and losing it
    /// to a concurrent version about to take it, to its conflict copy.
    /// Returns the copy's name and the ops that record it there. Nothing
    /// moves (the newcomer replaces it) when the copy says it was kept
    /// there before ([`kept_as_copy`]: held, changed or deleted there).
    pub(super) fn set_aside_locked(
        &self,
        name: &Name,
        cur: &Signed<FileVersion>,
    ) -> Result<Option<(Name, Vec<lockbox_fs::meta::Op>)>, Refusal> {
        let Some(copy) = cur.body().conflict_name() else {
            return Ok(None);
        };
        if copy == *name || !self.store.contains(name) || self.lost_its_name(cur.body())?.is_some()
        {
            return Ok(None);
        }
        self.store.rename_locked(name, &copy).map_err(internal)?;
        let ops = super::version_ops(&copy, cur, self.store.local_stat(&copy)).to_vec();
        Ok(Some((copy, ops)))
    }

    /// [`kept_as_copy`] for `v` with what is held under its conflict copy
    /// now: `Some` when `v` lost its own name (what an offer of it there
    /// gets). The error is this envoy's failure to read its tables.
    pub(super) fn lost_its_name(
        &self,
        v: &FileVersion,
    ) -> Result<Option<Result<Admission, Refusal>>, Refusal> {
        let Some(copy) = v.conflict_name().filter(|c| *c != v.name) else {
            return Ok(None);
        };
        self.with_held(&copy, &v.vv, |held| kept_as_copy(&copy, v, held))
    }

    /// Where an admitted version goes, given what is held now.
    pub(super) fn decide(&self, name: &Name, v: &FileVersion) -> Result<Admission, Refusal> {
        if *name == v.name {
            if let Some(decided) = self.lost_its_name(v)? {
                return decided;
            }
        }
        match self.place_at(name, v)? {
            Placement::Decided(r) => r,
            Placement::ConflictCopy(copy) => match self.place_at(&copy, v)? {
                Placement::Decided(r) => r,
                // Not reached: under its own conflict-copy name a losing
                // version is refused (`place`).
                Placement::ConflictCopy(_) => Err(Refusal::Newer(copy.to_string())),
            },
        }
    }

    /// [`place`] with what is held under `name` now.
    fn place_at(&self, name: &Name, v: &FileVersion) -> Result<Placement, Refusal> {
        self.with_held(name, &v.vv, |held| place(name, v, held))
    }

    /// `f` of what is held under `name` now, for a version with vector
    /// `vv`.
    fn with_held<R>(
        &self,
        name: &Name,
        vv: &crate::VersionVector,
        f: impl FnOnce(&Held<'_>) -> R,
    ) -> Result<R, Refusal> {
        let tombstones = self.tombstones(name);
        let resurrects = self.resurrects(name);
        let current = match self.record(name) {
            Ok(c) => c,
            // A deleted version is refused before the record is looked at
            // (so a damaged record does not turn a 410 into a 500).
            Err(_) if records::deleted_by(&tombstones, &resurrects, vv) => None,
            Err(e) => return Err(internal(e)),
        };
        Ok(f(&Held {
            current: current.as_ref().map(|c| c.body()),
            tombstones: &tombstones,
            resurrects: &resurrects,
            kept_out: self.kept_out(name),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Resurrect;
    use crate::VersionVector;
    use lockbox_crypto::circle::Endorsement;
    use lockbox_crypto::digest::Sha256;
    use lockbox_crypto::sign::SigningKey;

    fn wn(s: &str) -> WireName {
        WireName::new(s).unwrap()
    }

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn key(envoy: &str) -> SigningKey {
        SigningKey::from_seed(&[envoy.len() as u8 + envoy.as_bytes()[0]; 32])
    }

    /// Members alpha and bravo of alice's circle.
    fn members() -> Members {
        let mut m = Members::default();
        for envoy in ["alpha", "bravo"] {
            let e = Endorsement {
                user: "alice".into(),
                envoy: envoy.into(),
                recipient: "age1qqqq".into(),
                signing_key: key(envoy).public(),
                created_unix: 1,
            };
            m.by_envoy
                .insert(envoy.into(), Signed::sign(e, &key("circle")));
        }
        m
    }

    /// A vector with these counters.
    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (envoy, n) in entries {
            for _ in 0..*n {
                v.bump(&wn(envoy)).unwrap();
            }
        }
        v
    }

    /// Version `vv` of `file` by `author`, with content byte `content`.
    fn version(file: &str, author: &str, vv: VersionVector, content: u8) -> FileVersion {
        FileVersion {
            user: wn("alice"),
            name: name(file),
            vv,
            author: wn(author),
            sealed_unix: 1_000 + i64::from(content),
            plaintext_len: 10,
            ciphertext_len: 200,
            hash: Sha256([content; 32]),
            recipients: vec![wn("alpha"), wn("bravo")],
            reseal: false,
            executable: false,
        }
    }

    fn signed(v: FileVersion) -> Signed<FileVersion> {
        let author = v.author.to_string();
        Signed::sign(v, &key(&author))
    }

    fn tombstone(file: &str, vv: VersionVector) -> Signed<Tombstone> {
        let t = Tombstone {
            user: wn("alice"),
            name: name(file),
            vv,
            author: wn("bravo"),
            deleted_unix: 2_000,
        };
        Signed::sign(t, &key("bravo"))
    }

    fn resurrect(file: &str, vv: VersionVector) -> Signed<Resurrect> {
        let r = Resurrect {
            user: wn("alice"),
            name: name(file),
            vv,
            author: wn("alpha"),
            resurrected_unix: 3_000,
        };
        Signed::sign(r, &key("alpha"))
    }

    const NOTHING: Held<'static> = Held {
        current: None,
        tombstones: &[],
        resurrects: &[],
        kept_out: false,
    };

    fn holding(v: &FileVersion) -> Held<'_> {
        Held {
            current: Some(v),
            ..NOTHING
        }
    }

    fn status(p: &Placement) -> Option<u16> {
        match p {
            Placement::Decided(Err(r)) => Some(r.status()),
            _ => None,
        }
    }

    #[test]
    fn a_name_not_held_is_stored() {
        let doc = name("doc");
        let v = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        assert_eq!(
            place(&doc, &v, &NOTHING),
            Placement::Decided(Ok(Admission::Store(doc.clone())))
        );
    }

    #[test]
    fn a_newer_version_replaces_the_held_one() {
        let doc = name("doc");
        let old = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        let new = version("doc", "bravo", vv(&[("alpha", 1), ("bravo", 1)]), 2);
        assert_eq!(
            place(&doc, &new, &holding(&old)),
            Placement::Decided(Ok(Admission::Store(doc.clone())))
        );
    }

    #[test]
    fn an_older_version_or_a_replay_of_one_is_refused_with_409() {
        let doc = name("doc");
        let v1 = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        let v2 = version("doc", "alpha", vv(&[("alpha", 2)]), 2);
        let v3 = version("doc", "bravo", vv(&[("alpha", 2), ("bravo", 1)]), 3);
        for old in [&v1, &v2] {
            let p = place(&doc, old, &holding(&v3));
            assert_eq!(
                p,
                Placement::Decided(Err(Refusal::Newer("doc".into()))),
                "{old:?}"
            );
            assert_eq!(status(&p), Some(409));
        }
    }

    #[test]
    fn the_same_version_again_is_already_held() {
        let doc = name("doc");
        let v = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        assert_eq!(
            place(&doc, &v.clone(), &holding(&v)),
            Placement::Decided(Ok(Admission::Same))
        );
    }

    #[test]
    fn concurrent_versions_keep_the_winner_and_send_the_loser_to_its_copy() {
        let doc = name("doc");
        let a = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        let b = version("doc", "bravo", vv(&[("bravo", 1)]), 2);
        let (ca, cb) = (a.candidate(), b.candidate());
        let (winner, loser) = match resolve(&ca, &cb) {
            Resolution::Conflict { winner, .. } if winner == &ca => (&a, &b),
            Resolution::Conflict { .. } => (&b, &a),
            other => panic!("not a conflict: {other:?}"),
        };
        // The winner offered where the loser is held takes the name.
        assert_eq!(
            place(&doc, winner, &holding(loser)),
            Placement::Decided(Ok(Admission::Store(doc.clone())))
        );
        // The loser offered where the winner is held goes to its copy ...
        let copy = loser.conflict_name().unwrap();
        assert_ne!(copy, doc);
        assert_eq!(
            place(&doc, loser, &holding(winner)),
            Placement::ConflictCopy(copy.clone())
        );
        // ... where it is stored when the copy is free, already held when it
        // is there, and refused (409) when it loses there too.
        assert_eq!(
            place(&copy, loser, &NOTHING),
            Placement::Decided(Ok(Admission::Store(copy.clone())))
        );
        assert_eq!(
            place(&copy, loser, &holding(loser)),
            Placement::Decided(Ok(Admission::Same))
        );
        let p = place(&copy, loser, &holding(winner));
        assert_eq!(status(&p), Some(409), "{p:?}");
    }

    #[test]
    fn a_tombstoned_version_is_refused_with_410_unless_resurrected() {
        let doc = name("doc");
        let v = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        let tombs = [tombstone("doc", vv(&[("alpha", 1)]))];
        let held = Held {
            tombstones: &tombs,
            ..NOTHING
        };
        let p = place(&doc, &v, &held);
        assert_eq!(p, Placement::Decided(Err(Refusal::Tombstoned)));
        assert_eq!(status(&p), Some(410));
        // Also when a version is held (the delete wins before anything).
        let other = version("doc", "bravo", vv(&[("bravo", 1)]), 2);
        let held_too = Held {
            current: Some(&other),
            ..held
        };
        assert_eq!(
            place(&doc, &v, &held_too),
            Placement::Decided(Err(Refusal::Tombstoned))
        );
        // A version made after the delete is not covered by it.
        let after = version("doc", "alpha", vv(&[("alpha", 2)]), 3);
        assert_eq!(
            place(&doc, &after, &held),
            Placement::Decided(Ok(Admission::Store(doc.clone())))
        );
        // A resurrect that lifts the delete lets the old version back in.
        let res = [resurrect("doc", vv(&[("alpha", 1)]))];
        let lifted = Held {
            resurrects: &res,
            ..held
        };
        assert_eq!(
            place(&doc, &v, &lifted),
            Placement::Decided(Ok(Admission::Store(doc.clone())))
        );
        // One that lifts an earlier delete only does not.
        let res = [resurrect("doc", vv(&[("bravo", 1)]))];
        let not_lifted = Held {
            resurrects: &res,
            ..held
        };
        assert_eq!(
            place(&doc, &v, &not_lifted),
            Placement::Decided(Err(Refusal::Tombstoned))
        );
    }

    #[test]
    fn an_offer_by_an_unknown_signer_is_refused_with_403() {
        let doc = name("doc");
        let v = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        let by_stranger = Signed::sign(v.clone(), &key("mallory"));
        let e = check_offer(&wn("alice"), &members(), &doc, &by_stranger).unwrap_err();
        assert!(matches!(e, Refusal::NotMember(_)), "{e}");
        assert_eq!(e.status(), 403);
        assert_eq!(
            check_offer(&wn("alice"), &members(), &doc, &signed(v)),
            Ok(())
        );
        // Nobody is a member of an empty circle.
        let v = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        let e = check_offer(&wn("alice"), &Members::default(), &doc, &signed(v));
        assert_eq!(e.map_err(|e| e.status()), Err(403));
    }

    #[test]
    fn an_offer_for_another_user_or_name_is_refused_with_400() {
        let doc = name("doc");
        let v = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        let rec = signed(v.clone());
        let e = check_offer(&wn("bob"), &members(), &doc, &rec).unwrap_err();
        assert_eq!(e, Refusal::Bad("the record is for user alice".into()));
        let e = check_offer(&wn("alice"), &members(), &name("other"), &rec).unwrap_err();
        assert_eq!(e.status(), 400);
        // Its conflict-copy name is a name it may be stored under.
        let copy = v.conflict_name().unwrap();
        assert_eq!(check_offer(&wn("alice"), &members(), &copy, &rec), Ok(()));
        // Names mean nothing: one shaped like a failed seal's or a conflict
        // copy's is offered like any other.
        for odd in ["doc.1700000000.failed", "doc.conflict-b-20260101-000000"] {
            let v = version(odd, "alpha", vv(&[("alpha", 1)]), 1);
            assert_eq!(
                check_offer(&wn("alice"), &members(), &name(odd), &signed(v)),
                Ok(())
            );
        }
    }

    proptest::proptest! {
        /// Two signed records of one version (as a crash's second signing
        /// makes: another seal time) settle on one record, whichever order
        /// they meet in and however often: the pick is symmetric,
        /// idempotent and associative, and exactly one of two different
        /// records replaces the other.
        #[test]
        fn one_record_of_a_version_is_kept_in_any_order(
            times in proptest::collection::vec(0i64..4_000_000_000, 3),
            signers in proptest::collection::vec(0usize..2, 3),
        ) {
            let same = vv(&[("alpha", 2), ("bravo", 1)]);
            let recs: Vec<Signed<FileVersion>> = times
                .iter()
                .zip(&signers)
                .map(|(t, who)| {
                    let mut v = version("doc", "alpha", same.clone(), 7);
                    v.sealed_unix = *t;
                    Signed::sign(v, &key(["alpha", "bravo"][*who]))
                })
                .collect();
            let bytes: Vec<Vec<u8>> = recs.iter().map(|r| r.to_bytes()).collect();
            let (a, b, c) = (&bytes[0][..], &bytes[1][..], &bytes[2][..]);
            proptest::prop_assert_eq!(kept_record(a, b), kept_record(b, a));
            proptest::prop_assert_eq!(kept_record(a, a), a);
            proptest::prop_assert_eq!(
                kept_record(kept_record(a, b), c),
                kept_record(a, kept_record(b, c))
            );
            let (x, y) = (&recs[0], &recs[1]);
            let (xy, yx) = (replaces_same(x, y), replaces_same(y, x));
            if a == b {
                proptest::prop_assert!(!xy && !yx);
            } else {
                proptest::prop_assert!(xy != yx, "exactly one replaces the other");
                let kept = if xy { b } else { a };
                proptest::prop_assert_eq!(kept, kept_record(a, b));
            }
            // Another version (other bytes) is never settled this way.
            let mut other = recs[1].body().clone();
            other.hash = Sha256([8; 32]);
            let other = Signed::sign(other, &key("alpha"));
            proptest::prop_assert!(!replaces_same(x, &other) && !replaces_same(&other, x));
        }
    }

    /// A version kept under its conflict copy has lost its own name for
    /// good: offered there again it is already held, refused (409) when
    /// the copy holds a later version of it, and deleted (410) when the
    /// copy's delete covers it — even where nothing is held under the name
    /// (its winner deleted). Nothing at the copy says nothing.
    #[test]
    fn a_version_kept_as_its_conflict_copy_does_not_take_its_name_back() {
        let doc = name("doc");
        let loser = version("doc", "bravo", vv(&[("bravo", 1)]), 2);
        let copy = loser.conflict_name().unwrap();
        assert_eq!(kept_as_copy(&copy, &loser, &NOTHING), None);
        assert_eq!(
            kept_as_copy(&copy, &loser, &holding(&loser)),
            Some(Ok(Admission::Same))
        );
        let mut edited = version("doc", "alpha", vv(&[("alpha", 1), ("bravo", 1)]), 3);
        edited.name = copy.clone();
        assert_eq!(
            kept_as_copy(&copy, &loser, &holding(&edited)),
            Some(Err(Refusal::Newer(copy.to_string())))
        );
        let tombs = [tombstone(&copy.to_string(), vv(&[("bravo", 1)]))];
        let deleted = Held {
            tombstones: &tombs,
            ..NOTHING
        };
        assert_eq!(
            kept_as_copy(&copy, &loser, &deleted),
            Some(Err(Refusal::Tombstoned))
        );
        // A later version of the name, or another version under the copy
        // (not one of this version's line), is not held back.
        let later = version("doc", "bravo", vv(&[("bravo", 2)]), 4);
        assert_eq!(kept_as_copy(&copy, &later, &holding(&loser)), None);
        let other = version("doc", "alpha", vv(&[("alpha", 1)]), 5);
        assert_eq!(kept_as_copy(&copy, &loser, &holding(&other)), None);
        // The rule under the name alone would take it back.
        assert_eq!(
            place(&doc, &loser, &NOTHING),
            Placement::Decided(Ok(Admission::Store(doc.clone())))
        );
    }

    /// A file this envoy keeps out of the mesh (a failed seal) is not
    /// replaced by a peer's version of its name, whatever that name is.
    #[test]
    fn a_name_held_out_of_the_mesh_is_refused_with_409() {
        let doc = name("doc");
        let v = version("doc", "alpha", vv(&[("alpha", 1)]), 1);
        let held = Held {
            kept_out: true,
            ..NOTHING
        };
        let p = place(&doc, &v, &held);
        assert_eq!(p, Placement::Decided(Err(Refusal::Newer("doc".into()))));
        assert_eq!(status(&p), Some(409));
        assert_eq!(
            place(&doc, &v, &NOTHING),
            Placement::Decided(Ok(Admission::Store(doc.clone())))
        );
    }
}
