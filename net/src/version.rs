//! Version vectors and the concurrent-edit rule (see `docs/protocol.md`,
//! "3. Version vectors" and "4. Concurrent edits").
//!
//! Every sealed version of a file carries a [`VersionVector`]: for each envoy
//! that has sealed the file, how many times it has. Comparing two vectors
//! says whether one version happened before the other or whether they were
//! made concurrently, without trusting anyone's clock.
//!
//! [`resolve`] turns that into what a receiver does: a version that happened
//! after another simply replaces it; two concurrent versions are both kept,
//! the loser under the name [`conflict_name`] gives it. The choice of loser
//! uses only fields of the signed records, so every envoy makes the same one
//! and the mesh converges without talking about it.
//!
//! The canonical byte encoding of a vector is in `docs/protocol.md`
//! ("Version vectors").

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::codec::{put_short_bytes, Reader};
use crate::name::{TextFault, WireName};
use crate::Error;

/// The most entries a vector may have on the wire.
pub const MAX_ENTRIES: usize = 256;

/// The longest encoded vector: a 2-byte count, then per entry a length byte,
/// a name of at most 64 bytes and an 8-byte counter.
pub const MAX_ENCODED_LEN: usize = 2 + MAX_ENTRIES * (1 + WireName::MAX_LEN + 8);

/// What decode errors call the input.
const WHAT: &str = "version vector";

/// How two versions of a file are related in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Causality {
    /// The same version.
    Equal,
    /// `self` happened before `other`: every counter of `self` is at most the
    /// one in `other`, and they are not equal.
    Before,
    /// `self` happened after `other` (the mirror of [`Causality::Before`]).
    After,
    /// Neither happened before the other: each has a counter the other lacks.
    Concurrent,
}

/// A version vector: envoy name → how many versions that envoy has sealed.
///
/// An envoy that never sealed the file has counter 0 and no entry; stored
/// counters are never 0, so two vectors are [`Causality::Equal`] exactly when
/// they are `==`, and each vector has one encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct VersionVector {
    /// Invariant: every value is at least 1.
    counters: BTreeMap<WireName, u64>,
}

impl VersionVector {
    /// The empty vector: no envoy has sealed anything.
    pub fn new() -> Self {
        Self::default()
    }

    /// `envoy`'s counter (0 if it has none).
    pub fn get(&self, envoy: &str) -> u64 {
        self.counters.get(envoy).copied().unwrap_or(0)
    }

    /// Count one more version sealed by `envoy`, returning its new counter.
    ///
    /// # Errors
    ///
    /// [`Error::CounterOverflow`] if the counter is already `u64::MAX` (only a
    /// hostile vector gets there); the vector is then unchanged.
    pub fn bump(&mut self, envoy: &WireName) -> Result<u64, Error> {
        let next =
            self.get(envoy.as_str())
                .checked_add(1)
                .ok_or_else(|| Error::CounterOverflow {
                    envoy: envoy.to_string(),
                })?;
        self.counters.insert(envoy.clone(), next);
        Ok(next)
    }

    /// `self` with `envoy`'s counter raised to at least `at_least`.
    pub fn raised(&self, envoy: &WireName, at_least: u64) -> VersionVector {
        let mut v = self.clone();
        if at_least > v.get(envoy.as_str()) {
            v.counters.insert(envoy.clone(), at_least);
        }
        v
    }

    /// The pointwise maximum of `self` and `other`: the smallest vector that
    /// happened after (or equals) both.
    pub fn merge(&self, other: &VersionVector) -> VersionVector {
        let mut merged = self.clone();
        for (envoy, &count) in &other.counters {
            merged
                .counters
                .entry(envoy.clone())
                .and_modify(|c| *c = (*c).max(count))
                .or_insert(count);
        }
        merged
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut some_less = false;
        let mut some_greater = false;
        for (envoy, &mine) in &self.counters {
            match mine.cmp(&other.get(envoy.as_str())) {
                Ordering::Less => some_less = true,
                Ordering::Greater => some_greater = true,
                Ordering::Equal => {}
            }
        }
        // Envoys only `other` has: their counters are ≥ 1 against our 0.
        if other
            .counters
            .keys()
            .any(|envoy| !self.counters.contains_key(envoy))
        {
            some_less = true;
        }
        match (some_less, some_greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// The number of envoys with a counter.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether no envoy has a counter.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// The entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&WireName, u64)> + '_ {
        self.counters.iter().map(|(envoy, &count)| (envoy, count))
    }

    /// The canonical encoding: a big-endian `u16` entry count, then each
    /// entry in name order as a length byte, the name, and a big-endian `u64`
    /// counter.
    ///
    /// # Errors
    ///
    /// [`Error::TooManyEntries`] for more than [`MAX_ENTRIES`] entries (which
    /// only merging hostile vectors produces).
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        if self.counters.len() > MAX_ENTRIES {
            return Err(Error::TooManyEntries {
                count: self.counters.len(),
                max: MAX_ENTRIES,
            });
        }
        let mut out = Vec::with_capacity(2 + self.counters.len() * 24);
        // Cannot truncate: the count was just checked to be at most 256.
        out.extend_from_slice(&(self.counters.len() as u16).to_be_bytes());
        for (envoy, count) in &self.counters {
            put_short_bytes(&mut out, envoy.as_str().as_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
        Ok(out)
    }

    /// Decode a vector, accepting only the canonical encoding.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for input over [`MAX_ENCODED_LEN`] bytes (checked
    /// first), [`Error::TooManyEntries`], [`Error::Truncated`],
    /// [`Error::BadText`] for an invalid envoy name,
    /// [`Error::UnsortedEntries`], [`Error::DuplicateEntry`],
    /// [`Error::ZeroCounter`] and [`Error::TrailingBytes`].
    pub fn decode(bytes: &[u8]) -> Result<VersionVector, Error> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(Error::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_ENCODED_LEN,
            });
        }
        let mut r = Reader::new(bytes, WHAT);
        let count = usize::from(r.u16("the entry count")?);
        if count > MAX_ENTRIES {
            return Err(Error::TooManyEntries {
                count,
                max: MAX_ENTRIES,
            });
        }
        let mut counters = BTreeMap::new();
        let mut previous: Option<WireName> = None;
        for _ in 0..count {
            let len = usize::from(r.u8("an envoy name")?);
            if len > WireName::MAX_LEN {
                return Err(Error::BadText {
                    field: "envoy name in a version vector",
                    fault: TextFault::TooLong {
                        len,
                        max: WireName::MAX_LEN,
                    },
                });
            }
            let envoy = WireName::from_wire(
                r.take(len, "an envoy name")?,
                "envoy name in a version vector",
            )?;
            match previous.as_ref().map(|p| p.cmp(&envoy)) {
                Some(Ordering::Equal) => {
                    return Err(Error::DuplicateEntry {
                        envoy: envoy.into_string(),
                    })
                }
                Some(Ordering::Greater) => {
                    return Err(Error::UnsortedEntries {
                        envoy: envoy.into_string(),
                    })
                }
                Some(Ordering::Less) | None => {}
            }
            let counter = r.u64("a version counter")?;
            if counter == 0 {
                return Err(Error::ZeroCounter {
                    envoy: envoy.into_string(),
                });
            }
            counters.insert(envoy.clone(), counter);
            previous = Some(envoy);
        }
        r.finish()?;
        Ok(VersionVector { counters })
    }
}

/// One version of a file, as far as the conflict rule is concerned. Every
/// field comes from the version's signed record, so all envoys see the same
/// values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// The version's vector.
    pub vv: VersionVector,
    /// The envoy that sealed (and signed) it.
    pub envoy: WireName,
    /// When it was sealed, in Unix seconds by the sealer's clock.
    pub sealed_unix: i64,
    /// The SHA-256 of its ciphertext, identifying its bytes.
    pub hash: [u8; 32],
    /// A re-encryption of an earlier version's content to a new recipient
    /// set; it keeps that version's vector.
    pub reseal: bool,
    /// How many envoys it is sealed to.
    pub recipients: usize,
}

/// What to do when a second version of the same name meets the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution<'a> {
    /// Both are the same version (equal vectors and equal ciphertext): keep
    /// the one already held; nothing changes.
    Same,
    /// One happened after the other: `newer` replaces `older` under the name,
    /// and no conflict copy is made (the newer one was made knowing the older).
    Supersedes {
        /// The version to keep.
        newer: &'a Candidate,
        /// The version it replaces.
        older: &'a Candidate,
    },
    /// Neither happened before the other: both are kept. `winner` keeps the
    /// name; `loser` is kept as a separate file named by [`conflict_name`]
    /// with the loser's envoy and seal time.
    Conflict {
        /// The version that keeps the name.
        winner: &'a Candidate,
        /// The version that becomes the conflict copy.
        loser: &'a Candidate,
    },
}

/// Decide between two versions of the same name.
///
/// Causally ordered versions: the later one replaces the earlier.
///
/// Equal vectors with a re-encryption on either side are the same content
/// sealed to different recipient sets: the later seal (by `sealed_unix`)
/// replaces the other, then the one sealed to more envoys, then the greater
/// hash. A re-encryption follows a change of the member set, so the later
/// one knows the later set — whether a member joined or left (preferring
/// the larger set would bring a departed member's copy back). No conflict
/// copy is made, since no edit is lost; and when every unlocked envoy
/// re-seals its copies after a member change, they all settle on one
/// ciphertext per file.
///
/// Concurrent versions (and, defensively, versions with equal vectors but
/// different bytes and no re-encryption) conflict; the winner is the greater
/// by this total order, compared field by field:
///
/// 1. later `sealed_unix` (the most recent edit keeps the name),
/// 2. greater envoy name (bytewise),
/// 3. greater ciphertext hash (bytewise),
/// 4. greater version vector (its entries compared in order).
///
/// Two distinct candidates always differ in one of these, so the order is
/// strict, and the outcome depends neither on which envoy computes it nor on
/// the order of the arguments.
pub fn resolve<'a>(a: &'a Candidate, b: &'a Candidate) -> Resolution<'a> {
    match a.vv.compare(&b.vv) {
        Causality::Before => Resolution::Supersedes { newer: b, older: a },
        Causality::After => Resolution::Supersedes { newer: a, older: b },
        Causality::Equal if a.hash == b.hash => Resolution::Same,
        // Equal vectors and a re-encryption on either side: the same content
        // under different recipients. Keep the later one; within the same
        // second the re-encryption (made from the other, so after it), then
        // the one sealed to more envoys, then the greater hash; no conflict
        // copy. Preferring more envoys first would let the original, still
        // sealed to a member who just left, win over its re-encryption when
        // both fall in one second.
        Causality::Equal if a.reseal || b.reseal => {
            let key = |c: &Candidate| (c.sealed_unix, c.reseal, c.recipients, c.hash);
            if key(a) < key(b) {
                Resolution::Supersedes { newer: b, older: a }
            } else {
                Resolution::Supersedes { newer: a, older: b }
            }
        }
        Causality::Equal | Causality::Concurrent => {
            if precedence(a, b) == Ordering::Less {
                Resolution::Conflict {
                    winner: b,
                    loser: a,
                }
            } else {
                Resolution::Conflict {
                    winner: a,
                    loser: b,
                }
            }
        }
    }
}

/// The total order that picks the winner of a conflict (greater wins).
fn precedence(a: &Candidate, b: &Candidate) -> Ordering {
    a.sealed_unix
        .cmp(&b.sealed_unix)
        .then_with(|| a.envoy.cmp(&b.envoy))
        .then_with(|| a.hash.cmp(&b.hash))
        .then_with(|| a.vv.iter().cmp(b.vv.iter()))
}

/// The longest file name, in bytes (Linux `NAME_MAX`).
pub const MAX_FILE_NAME_LEN: usize = 255;

const SECONDS_PER_DAY: i64 = 86_400;

/// The earliest time a conflict stamp shows: 0000-01-01 00:00:00 UTC.
const STAMP_MIN_UNIX: i64 = days_from_civil(0, 1, 1) * SECONDS_PER_DAY;

/// The latest time a conflict stamp shows: 9999-12-31 23:59:59 UTC.
const STAMP_MAX_UNIX: i64 = days_from_civil(10000, 1, 1) * SECONDS_PER_DAY - 1;

/// The name of the conflict copy of `name`:
/// `NAME.conflict-<envoy>-<YYYYMMDD-HHMMSS>-<id>`, with the losing
/// version's envoy, its seal time in UTC, and `<id>`, the first 8 hex
/// digits of its ciphertext hash (unique to that seal), so two losers of
/// one name from one envoy in one second never share a copy.
///
/// A name in a folder (`dir/notes.txt`) gets its copy beside it, in the
/// same folder: the rule applies to its last component. The result's last
/// component is always one valid name of at most [`MAX_FILE_NAME_LEN`]
/// bytes:
///
/// - if it would be longer, that component is shortened (at a character
///   boundary) so the suffix fits whole;
/// - NUL, which a name never has, is replaced by `_` should it be there;
/// - seal times before year 0 or after year 9999 (a broken clock) are shown
///   as the nearest of those bounds, so the stamp is always 15 characters.
///
/// Every envoy computes the same name from the same losing record. (Before
/// the `<id>`, two losers from one envoy in one second shared a name, and
/// the second replaced the first: an acknowledged write was lost.)
pub fn conflict_name(
    name: &str,
    loser_envoy: &WireName,
    sealed_unix: i64,
    hash: &[u8; 32],
) -> String {
    let suffix = format!(
        ".conflict-{loser_envoy}-{}-{}",
        utc_stamp(sealed_unix),
        hex_prefix(hash)
    );
    // A name in a folder: the copy goes beside it, the rule applies to
    // the last component.
    let (folder, name) = match name.rfind('/') {
        Some(i) => name.split_at(i + 1),
        None => ("", name),
    };
    // At most 10 + 64 + 1 + 15 + 1 + 8 = 99 bytes, so the budget is at
    // least 156.
    let budget = MAX_FILE_NAME_LEN.saturating_sub(suffix.len());
    let mut cut = name.len().min(budget);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = folder.to_owned();
    out.extend(name[..cut].chars().map(|c| if c == '\0' { '_' } else { c }));
    out.push_str(&suffix);
    out
}

/// The name a conflict copy's name was made from by [`conflict_name`]:
/// what comes before its last `.conflict-`; `None` if it has none. A name
/// cut to fit gives only a prefix of the original (and `/` or NUL became
/// `_`), so a caller checks the version held under the result: its own
/// conflict-copy name must be `copy`.
pub fn conflict_origin(copy: &[u8]) -> Option<&[u8]> {
    const MARK: &[u8] = b".conflict-";
    let at = copy.windows(MARK.len()).rposition(|w| w == MARK)?;
    (at > 0).then(|| &copy[..at])
}

/// The first 8 hex digits (4 bytes) of `hash`, lowercase.
fn hex_prefix(hash: &[u8; 32]) -> String {
    hash[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDD-HHMMSS` in UTC, with the time clamped to years 0–9999.
/// `unix` as `YYYY-MM-DD HH:MM:SS UTC`, for messages (clamped like the
/// conflict stamp).
pub fn utc_date(unix: i64) -> String {
    let s = utc_stamp(unix);
    format!(
        "{}-{}-{} {}:{}:{} UTC",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

fn utc_stamp(unix: i64) -> String {
    let unix = unix.clamp(STAMP_MIN_UNIX, STAMP_MAX_UNIX);
    let days = unix.div_euclid(SECONDS_PER_DAY);
    let secs = unix.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31) in the proleptic
/// Gregorian calendar. Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html>); exact for every
/// `days` whose year fits an `i64`, which the clamp in [`utc_stamp`] ensures
/// with room to spare.
const fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// (year, month 1–12, day 1–31) → days since 1970-01-01; the inverse of
/// [`civil_from_days`] (Hinnant's `days_from_civil`).
const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = if month > 2 { month - 3 } else { month + 9 }; // [0, 11]
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(s: &str) -> WireName {
        WireName::new(s).unwrap()
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(envoy, count) in entries {
            for _ in 0..count {
                v.bump(&name(envoy)).unwrap();
            }
        }
        v
    }

    fn candidate(vv: VersionVector, envoy: &str, sealed_unix: i64, hash: u8) -> Candidate {
        Candidate {
            vv,
            envoy: name(envoy),
            sealed_unix,
            hash: [hash; 32],
            reseal: false,
            recipients: 1,
        }
    }

    /// `newer` replaces `older` without a conflict copy, in either order.
    fn assert_replaces(older: &Candidate, newer: &Candidate) {
        for (a, b) in [(older, newer), (newer, older)] {
            match resolve(a, b) {
                Resolution::Supersedes { newer: n, .. } => assert_eq!(n, newer),
                other => panic!("expected {newer:?} to replace, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_reseal_replaces_without_a_conflict_copy() {
        let v = vv(&[("desk", 2)]);
        let original = candidate(v.clone(), "desk", 10, 1);
        let mut reseal = candidate(v, "desk", 10, 9);
        reseal.reseal = true;
        reseal.recipients = 3;
        assert_replaces(&original, &reseal);
        // An edit made after the original still supersedes the reseal.
        let edit = candidate(vv(&[("desk", 2), ("laptop", 1)]), "laptop", 5, 2);
        assert!(
            matches!(resolve(&reseal, &edit), Resolution::Supersedes { newer, .. } if newer == &edit)
        );
    }

    /// A member left within the second the file was written: the re-seal
    /// without it has fewer recipients and the same time, and must still
    /// replace the original everywhere, or the departed key could read the
    /// copy that wins.
    #[test]
    fn a_same_second_reseal_to_fewer_envoys_beats_its_original() {
        let v = vv(&[("desk", 1)]);
        let mut original = candidate(v.clone(), "desk", 10, 9);
        original.recipients = 3;
        let mut reseal = candidate(v, "laptop", 10, 1);
        reseal.reseal = true;
        reseal.recipients = 2;
        assert_replaces(&original, &reseal);
    }

    #[test]
    fn utc_date_reads_like_a_date() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(1_714_380_000), "2024-04-29 08:40:00 UTC");
    }

    #[test]
    fn the_later_reseal_wins_whatever_its_recipients_and_hash() {
        let v = vv(&[("desk", 2)]);
        let mut first = candidate(v.clone(), "desk", 10, 9);
        let mut later = candidate(v, "laptop", 11, 1);
        for c in [&mut first, &mut later] {
            c.reseal = true;
            c.recipients = 3;
        }
        assert_replaces(&first, &later);
        // Later beats sealed to more envoys (a member left in between) …
        first.recipients = 4;
        assert!(
            matches!(resolve(&first, &later), Resolution::Supersedes { newer, .. } if newer == &later)
        );
        // … and in the same second, more envoys win.
        first.sealed_unix = later.sealed_unix;
        assert!(
            matches!(resolve(&later, &first), Resolution::Supersedes { newer, .. } if newer == &first)
        );
    }

    fn reverse(c: Causality) -> Causality {
        match c {
            Causality::Before => Causality::After,
            Causality::After => Causality::Before,
            other => other,
        }
    }

    #[test]
    fn bump_counts_per_envoy() {
        let mut v = VersionVector::new();
        assert_eq!(v.get("laptop"), 0);
        assert_eq!(v.bump(&name("laptop")), Ok(1));
        assert_eq!(v.bump(&name("laptop")), Ok(2));
        assert_eq!(v.bump(&name("desk")), Ok(1));
        assert_eq!((v.get("laptop"), v.get("desk"), v.get("nas")), (2, 1, 0));
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn bump_refuses_to_wrap() {
        let mut bytes = 1u16.to_be_bytes().to_vec();
        bytes.push(1);
        bytes.push(b'x');
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut v = VersionVector::decode(&bytes).unwrap();
        let before = v.clone();
        assert_eq!(
            v.bump(&name("x")),
            Err(Error::CounterOverflow { envoy: "x".into() })
        );
        assert_eq!(v, before);
    }

    #[test]
    fn compare_cases() {
        let a = vv(&[("a", 1)]);
        let ab = vv(&[("a", 1), ("b", 1)]);
        let b = vv(&[("b", 1)]);
        let empty = VersionVector::new();
        assert_eq!(a.compare(&a), Causality::Equal);
        assert_eq!(empty.compare(&empty), Causality::Equal);
        assert_eq!(empty.compare(&a), Causality::Before);
        assert_eq!(a.compare(&ab), Causality::Before);
        assert_eq!(ab.compare(&a), Causality::After);
        assert_eq!(a.compare(&b), Causality::Concurrent);
        assert_eq!(vv(&[("a", 2)]).compare(&ab), Causality::Concurrent);
    }

    #[test]
    fn encoding_is_pinned() {
        let v = vv(&[("laptop", 3), ("desk", 1)]);
        let mut want = vec![0, 2];
        want.push(4);
        want.extend_from_slice(b"desk");
        want.extend_from_slice(&1u64.to_be_bytes());
        want.push(6);
        want.extend_from_slice(b"laptop");
        want.extend_from_slice(&3u64.to_be_bytes());
        assert_eq!(v.encode(), Ok(want.clone()));
        assert_eq!(VersionVector::decode(&want), Ok(v));
        assert_eq!(VersionVector::new().encode(), Ok(vec![0, 0]));
    }

    /// Build an encoding by hand from (name bytes, counter) pairs.
    fn raw(entries: &[(&[u8], u64)]) -> Vec<u8> {
        let mut out = (entries.len() as u16).to_be_bytes().to_vec();
        for (n, c) in entries {
            out.push(n.len() as u8);
            out.extend_from_slice(n);
            out.extend_from_slice(&c.to_be_bytes());
        }
        out
    }

    #[test]
    fn decode_rejects_non_canonical_input() {
        let cases: [(Vec<u8>, Error); 4] = [
            (
                raw(&[(b"b", 1), (b"a", 1)]),
                Error::UnsortedEntries { envoy: "a".into() },
            ),
            (
                raw(&[(b"a", 1), (b"a", 2)]),
                Error::DuplicateEntry { envoy: "a".into() },
            ),
            (raw(&[(b"a", 0)]), Error::ZeroCounter { envoy: "a".into() }),
            (
                {
                    let mut b = raw(&[(b"a", 1)]);
                    b.push(0);
                    b
                },
                Error::TrailingBytes {
                    what: "version vector",
                    count: 1,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(VersionVector::decode(&bytes), Err(want));
        }
    }

    #[test]
    fn decode_rejects_bad_names() {
        for (bad, want) in [
            (&b"a/b"[..], TextFault::ContainsSlash),
            (b"", TextFault::Empty),
            (b"\xff", TextFault::NotUtf8),
            (b"..", TextFault::DotName),
            (&[b'x'; 65], TextFault::TooLong { len: 65, max: 64 }),
        ] {
            assert_eq!(
                VersionVector::decode(&raw(&[(bad, 1)])),
                Err(Error::BadText {
                    field: "envoy name in a version vector",
                    fault: want
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn decode_caps_count_and_size() {
        assert_eq!(
            VersionVector::decode(&257u16.to_be_bytes()),
            Err(Error::TooManyEntries {
                count: 257,
                max: 256
            })
        );
        let huge = vec![0u8; MAX_ENCODED_LEN + 1];
        assert!(matches!(
            VersionVector::decode(&huge),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn largest_vector_round_trips_and_one_more_does_not_encode() {
        let mut v = VersionVector::new();
        for i in 0..MAX_ENTRIES {
            let envoy = name(&format!("{i:0>64}"));
            for _ in 0..3 {
                v.bump(&envoy).unwrap();
            }
        }
        let bytes = v.encode().unwrap();
        assert_eq!(bytes.len(), MAX_ENCODED_LEN);
        assert_eq!(VersionVector::decode(&bytes), Ok(v.clone()));
        v.bump(&name("one-too-many")).unwrap();
        assert_eq!(
            v.encode(),
            Err(Error::TooManyEntries {
                count: 257,
                max: 256
            })
        );
    }

    #[test]
    fn every_truncation_fails() {
        let bytes = vv(&[("a", 5), ("bb", 1), ("ccc", 300)]).encode().unwrap();
        for n in 0..bytes.len() {
            assert!(
                matches!(
                    VersionVector::decode(&bytes[..n]),
                    Err(Error::Truncated { .. })
                ),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn later_version_supersedes_without_conflict() {
        let old = candidate(vv(&[("a", 1)]), "a", 2_000, 1);
        // Made after seeing `old`, even though its clock says earlier.
        let new = candidate(vv(&[("a", 1), ("b", 1)]), "b", 1_000, 2);
        let want = Resolution::Supersedes {
            newer: &new,
            older: &old,
        };
        assert_eq!(resolve(&old, &new), want);
        assert_eq!(resolve(&new, &old), want);
    }

    #[test]
    fn concurrent_versions_conflict_later_seal_wins() {
        let a = candidate(vv(&[("a", 1)]), "a", 1_000, 9);
        let b = candidate(vv(&[("b", 1)]), "b", 1_001, 1);
        let want = Resolution::Conflict {
            winner: &b,
            loser: &a,
        };
        assert_eq!(resolve(&a, &b), want);
        assert_eq!(resolve(&b, &a), want);
    }

    #[test]
    fn conflict_ties_break_by_envoy_then_hash() {
        let a = candidate(vv(&[("a", 1)]), "a", 1_000, 9);
        let b = candidate(vv(&[("b", 1)]), "b", 1_000, 1);
        assert_eq!(
            resolve(&a, &b),
            Resolution::Conflict {
                winner: &b,
                loser: &a
            }
        );
        let c = candidate(vv(&[("b", 2)]), "b", 1_000, 2);
        let d = candidate(vv(&[("a", 1), ("b", 1)]), "b", 1_000, 3);
        assert_eq!(
            resolve(&c, &d),
            Resolution::Conflict {
                winner: &d,
                loser: &c
            }
        );
    }

    #[test]
    fn same_vector_different_bytes_keeps_both() {
        let a = candidate(vv(&[("a", 1)]), "a", 1_000, 1);
        let b = candidate(vv(&[("a", 1)]), "a", 1_000, 2);
        assert_eq!(
            resolve(&a, &b),
            Resolution::Conflict {
                winner: &b,
                loser: &a
            }
        );
        assert_eq!(resolve(&a, &a.clone()), Resolution::Same);
    }

    /// A ciphertext hash for conflict names: its id is `0a1b2c3d`.
    const HASH: [u8; 32] = {
        let mut h = [0u8; 32];
        h[0] = 0x0a;
        h[1] = 0x1b;
        h[2] = 0x2c;
        h[3] = 0x3d;
        h
    };

    #[test]
    fn a_conflict_copys_name_gives_back_the_name_it_was_made_from() {
        let laptop = name("laptop");
        for original in [
            "notes.txt",
            "a.conflict-b-20260101-000000-00000000",
            ".x",
            "é",
        ] {
            let copy = conflict_name(original, &laptop, 1_714_380_000, &HASH);
            assert_eq!(
                conflict_origin(copy.as_bytes()),
                Some(original.as_bytes()),
                "{copy}"
            );
        }
        for plain in ["notes.txt", "", ".conflict-laptop-20240429-084000-0a1b2c3d"] {
            assert_eq!(conflict_origin(plain.as_bytes()), None, "{plain}");
        }
        // A long name is cut: the origin is a prefix of it, not the name.
        let long = "n".repeat(250);
        let copy = conflict_name(&long, &laptop, 0, &HASH);
        let origin = conflict_origin(copy.as_bytes()).unwrap();
        assert!(long.as_bytes().starts_with(origin) && origin.len() < long.len());
    }

    #[test]
    fn conflict_name_known_stamps() {
        let laptop = name("laptop");
        for (unix, stamp) in [
            (0, "19700101-000000"),
            (1_714_380_000, "20240429-084000"),
            (951_782_400, "20000229-000000"),
            (-1, "19691231-235959"),
            (253_402_300_799, "99991231-235959"),
            (i64::MAX, "99991231-235959"),
            (-62_167_219_200, "00000101-000000"),
            (i64::MIN, "00000101-000000"),
        ] {
            assert_eq!(
                conflict_name("notes.txt", &laptop, unix, &HASH),
                format!("notes.txt.conflict-laptop-{stamp}-0a1b2c3d"),
                "{unix}"
            );
        }
    }

    #[test]
    fn clamp_bounds_are_the_documented_instants() {
        assert_eq!(STAMP_MIN_UNIX, -62_167_219_200);
        assert_eq!(STAMP_MAX_UNIX, 253_402_300_799);
    }

    #[test]
    fn conflict_name_truncates_on_a_char_boundary() {
        let envoy = name(&"e".repeat(64));
        let long = "é".repeat(200); // 400 bytes
        let out = conflict_name(&long, &envoy, 0, &HASH);
        assert!(out.len() <= 255, "{}", out.len());
        // Suffix is 99 bytes, leaving 156 for the name: 78 'é' (156 bytes).
        assert_eq!(out.len(), 156 + 99);
        assert!(out.starts_with(&"é".repeat(78)));
        assert!(out.ends_with(&format!(
            ".conflict-{}-19700101-000000-0a1b2c3d",
            "e".repeat(64)
        )));
    }

    #[test]
    fn a_conflict_copy_goes_beside_its_file_in_its_folder() {
        assert_eq!(
            conflict_name("a/b\0c", &name("x"), 0, &HASH),
            "a/b_c.conflict-x-19700101-000000-0a1b2c3d"
        );
        // The cut is the last component's, whatever the folders' length.
        let envoy = name(&"e".repeat(64));
        let long = format!("{}/{}", "d".repeat(200), "é".repeat(200));
        let out = conflict_name(&long, &envoy, 0, &HASH);
        let (folder, last) = out.rsplit_once('/').unwrap();
        assert_eq!(folder, "d".repeat(200));
        assert_eq!(last.len(), 156 + 99);
        assert_eq!(
            conflict_origin(out.as_bytes()),
            Some(&long.as_bytes()[..201 + 156])
        );
    }

    #[test]
    fn two_losers_from_one_envoy_in_one_second_get_two_names() {
        let mut other = HASH;
        other[3] ^= 1;
        assert_ne!(
            conflict_name("f", &name("a"), 5, &HASH),
            conflict_name("f", &name("a"), 5, &other)
        );
    }

    fn small_vv() -> impl Strategy<Value = VersionVector> {
        // Few names and small counters, so that vectors often overlap and all
        // four causal relations show up.
        prop::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c", "d"]),
            1..=4u64,
            0..=4,
        )
        .prop_map(|m| {
            let entries: Vec<(&str, u64)> = m.into_iter().collect();
            vv(&entries)
        })
    }

    fn wide_vv() -> impl Strategy<Value = VersionVector> {
        prop::collection::btree_map("\\PC{1,16}", 1..=u64::MAX, 0..=20).prop_map(|m| {
            let mut v = VersionVector::new();
            for (n, c) in m {
                if let Ok(n) = WireName::new(n.replace('/', "_")) {
                    v.counters.insert(n, c);
                }
            }
            v
        })
    }

    fn small_candidate() -> impl Strategy<Value = Candidate> {
        (
            small_vv(),
            prop::sample::select(vec!["a", "b", "c"]),
            0..3i64,
            0..3u8,
        )
            .prop_map(|(v, e, t, h)| candidate(v, e, t, h))
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in small_vv(), b in small_vv()) {
            prop_assert_eq!(a.merge(&b), b.merge(&a));
        }

        #[test]
        fn merge_is_associative(a in small_vv(), b in small_vv(), c in small_vv()) {
            prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
        }

        #[test]
        fn merge_is_idempotent(a in small_vv(), b in small_vv()) {
            prop_assert_eq!(a.merge(&a), a.clone());
            let ab = a.merge(&b);
            prop_assert_eq!(ab.merge(&b), ab);
        }

        #[test]
        fn compare_is_antisymmetric(a in small_vv(), b in small_vv()) {
            prop_assert_eq!(a.compare(&b), reverse(b.compare(&a)));
            prop_assert_eq!(a.compare(&b) == Causality::Equal, a == b);
        }

        #[test]
        fn merge_is_an_upper_bound(a in small_vv(), b in small_vv()) {
            let m = a.merge(&b);
            for (x, y) in [(&a, &b), (&b, &a)] {
                let c = x.compare(&m);
                prop_assert!(matches!(c, Causality::Equal | Causality::Before), "{:?}", c);
                // Equal exactly when the other adds nothing.
                prop_assert_eq!(
                    c == Causality::Equal,
                    matches!(y.compare(x), Causality::Equal | Causality::Before)
                );
            }
        }

        #[test]
        fn bump_moves_forward(a in small_vv(), e in prop::sample::select(vec!["a", "b", "z"])) {
            let mut b = a.clone();
            let n = b.bump(&name(e)).unwrap();
            prop_assert_eq!(n, a.get(e) + 1);
            prop_assert_eq!(a.compare(&b), Causality::Before);
        }

        #[test]
        fn encode_decode_round_trip(v in wide_vv()) {
            let bytes = v.encode().unwrap();
            prop_assert_eq!(VersionVector::decode(&bytes), Ok(v));
        }

        #[test]
        fn decode_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(v) = VersionVector::decode(&bytes) {
                prop_assert_eq!(v.encode(), Ok(bytes));
            }
        }

        #[test]
        fn decode_near_valid_never_panics(
            v in wide_vv(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = v.encode().unwrap();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok(w) = VersionVector::decode(&bytes) {
                // Whatever is accepted is canonical.
                prop_assert_eq!(w.encode(), Ok(bytes));
            }
        }

        #[test]
        fn resolve_is_order_independent(a in small_candidate(), b in small_candidate()) {
            let ab = resolve(&a, &b);
            let ba = resolve(&b, &a);
            match (ab, ba) {
                (Resolution::Same, Resolution::Same) => {}
                (
                    Resolution::Supersedes { newer: n1, older: o1 },
                    Resolution::Supersedes { newer: n2, older: o2 },
                ) => {
                    prop_assert_eq!(n1, n2);
                    prop_assert_eq!(o1, o2);
                }
                (
                    Resolution::Conflict { winner: w1, loser: l1 },
                    Resolution::Conflict { winner: w2, loser: l2 },
                ) => {
                    prop_assert_eq!(w1, w2);
                    prop_assert_eq!(l1, l2);
                }
                (x, y) => prop_assert!(false, "{:?} vs {:?}", x, y),
            }
        }

        #[test]
        fn resolve_never_loses_a_version(a in small_candidate(), b in small_candidate()) {
            match resolve(&a, &b) {
                Resolution::Same => {
                    prop_assert_eq!(&a.vv, &b.vv);
                    prop_assert_eq!(a.hash, b.hash);
                }
                Resolution::Supersedes { newer, older } => {
                    // Only a version the survivor already contains is dropped.
                    prop_assert_eq!(older.vv.compare(&newer.vv), Causality::Before);
                }
                Resolution::Conflict { winner, loser } => {
                    // Both survive: one under the name, one as the copy.
                    let both = (winner == &a && loser == &b) || (winner == &b && loser == &a);
                    prop_assert!(both);
                    prop_assert!(matches!(
                        a.vv.compare(&b.vv),
                        Causality::Concurrent | Causality::Equal
                    ));
                }
            }
        }

        #[test]
        fn a_conflict_copy_is_one_short_component_beside_its_file(
            n in "\\PC{0,300}",
            envoy in "[a-z0-9.-]{1,64}",
            unix in any::<i64>(),
        ) {
            prop_assume!(envoy != "." && envoy != "..");
            let out = conflict_name(&n, &name(&envoy), unix, &HASH);
            // The same folder; a last component that is one short name.
            let (folder, last) = n.rsplit_once('/').map_or(("", n.as_str()), |(f, l)| (f, l));
            let (out_folder, out_last) =
                out.rsplit_once('/').map_or(("", out.as_str()), |(f, l)| (f, l));
            prop_assert_eq!(out_folder, folder);
            prop_assert!(out_last.len() <= MAX_FILE_NAME_LEN);
            prop_assert!(!out_last.contains('\0'));
            // The suffix is always whole; the stamp and id are fixed width.
            let suffix_at =
                out_last.len() - (".conflict-".len() + envoy.len() + 1 + 15 + 1 + 8);
            prop_assert!(out_last[suffix_at..].starts_with(".conflict-"));
            // The kept part of the name is a prefix of the original.
            prop_assert!(last.replace('\0', "_").starts_with(&out_last[..suffix_at]));
        }

        #[test]
        fn civil_conversion_round_trips(days in -4_000_000i64..4_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            prop_assert_eq!(days_from_civil(y, m, d), days);
            // The next day is either the next date in the month or the 1st.
            let (y2, m2, d2) = civil_from_days(days + 1);
            prop_assert!(
                (y2, m2, d2) == (y, m, d + 1)
                    || (d2 == 1 && ((y2, m2) == (y, m + 1) || (y2, m2) == (y + 1, 1)))
            );
        }
    }
}
