//! The signed records the mesh carries (see `docs/protocol.md`, "5. Records on
//! the wire"): a
//! [`FileVersion`] for every sealed version, a [`Tombstone`] for every
//! delete, and the rules that compare them.
//!
//! Both are [`Record`]s: canonical bytes signed with the signing key of the
//! envoy that made them (the envelope is [`Signed`]). Whether that signer is
//! a member of the circle is the receiver's check, against its member table.
//!
//! The deletion rule is a pure function of version vectors, so every envoy
//! reaches the same verdict whatever order records arrive in:
//!
//! - a tombstone deletes exactly the versions it had seen: version `v` is
//!   deleted by tombstone `t` when `v.vv` is Before or Equal to `t.vv`;
//! - a version made without knowing the tombstone (a concurrent edit)
//!   survives it, and so does a deliberate re-add, whose vector is bumped
//!   from the tombstone's and so comes after it;
//! - per name the tombstone table keeps the maximal tombstones only (an
//!   antichain): merging is a set union followed by dropping dominated
//!   entries, so it is commutative, associative and idempotent.

use lockbox_crypto::digest::Sha256;
use lockbox_crypto::sign::{Decoder, Encoder, Record, Signed};
use lockbox_fs::Name;
use sha2::Digest;

use crate::version::{Candidate, Causality, VersionVector};
use crate::WireName;

/// Most recipients a version names (one per envoy of the circle).
pub const MAX_RECIPIENTS: usize = 256;

fn bad(what: &str) -> lockbox_crypto::Error {
    lockbox_crypto::Error::Malformed(what.to_string())
}

fn decode_name(d: &mut Decoder<'_>) -> lockbox_crypto::Result<Name> {
    let raw = d.bytes(lockbox_fs::name::MAX_PATH_BYTES)?;
    Name::new(raw.to_vec()).map_err(|e| bad(&format!("record file name: {e}")))
}

fn decode_wire(d: &mut Decoder<'_>, field: &str) -> lockbox_crypto::Result<WireName> {
    let s = d.str(WireName::MAX_LEN)?;
    WireName::new(s).map_err(|e| bad(&format!("{field}: {e}")))
}

fn decode_vv(d: &mut Decoder<'_>) -> lockbox_crypto::Result<VersionVector> {
    let raw = d.bytes(crate::version::MAX_ENCODED_LEN)?;
    VersionVector::decode(raw).map_err(|e| bad(&format!("version vector: {e}")))
}

fn encode_vv(e: &mut Encoder, vv: &VersionVector) {
    // A vector in a record we made is always encodable (≤ 256 envoys); a
    // hostile one never reaches here because decoding caps it.
    e.bytes(&vv.encode().unwrap_or_default());
}

/// One sealed version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    /// The user whose lockbox it belongs to.
    pub user: WireName,
    /// The name it was sealed under.
    pub name: Name,
    /// Its version vector.
    pub vv: VersionVector,
    /// The envoy that wrote the content (kept by re-encryptions).
    pub author: WireName,
    /// When the content was sealed, Unix seconds by the author's clock.
    pub sealed_unix: i64,
    /// Plaintext length in bytes.
    pub plaintext_len: u64,
    /// Ciphertext length in bytes (the store file, the transfer body).
    pub ciphertext_len: u64,
    /// SHA-256 of the ciphertext.
    pub hash: Sha256,
    /// The envoys it is sealed to, sorted.
    pub recipients: Vec<WireName>,
    /// A re-encryption of the same content to a new recipient set: it keeps
    /// the vector of the version it re-encrypts.
    pub reseal: bool,
    /// The owner's execute bit: the store file is 0700, not 0600. On the
    /// wire, an optional trailing mode byte, present only when it is set
    /// (so a record without it is byte for byte what envoys before it
    /// wrote, and they refuse one with it as having trailing bytes).
    pub executable: bool,
}

/// The mode byte's bit for the owner's execute bit; no other bit is
/// defined.
const MODE_EXECUTABLE: u8 = 1;

impl Record for FileVersion {
    const DOMAIN: &'static str = "lockbox/file-version/v1";

    fn encode(&self, e: &mut Encoder) {
        e.str(self.user.as_str());
        e.bytes(self.name.as_bytes());
        encode_vv(e, &self.vv);
        e.str(self.author.as_str());
        e.u64(self.sealed_unix as u64);
        e.u64(self.plaintext_len);
        e.u64(self.ciphertext_len);
        e.bytes(&self.hash.0);
        e.u32(self.recipients.len() as u32);
        for r in &self.recipients {
            e.str(r.as_str());
        }
        e.u8(u8::from(self.reseal));
        if self.executable {
            e.u8(MODE_EXECUTABLE);
        }
    }

    fn decode(d: &mut Decoder<'_>) -> lockbox_crypto::Result<Self> {
        let user = decode_wire(d, "user")?;
        let name = decode_name(d)?;
        let vv = decode_vv(d)?;
        if vv.is_empty() {
            return Err(bad("a file version with an empty version vector"));
        }
        let author = decode_wire(d, "author")?;
        let sealed_unix = d.u64()? as i64;
        let plaintext_len = d.u64()?;
        let ciphertext_len = d.u64()?;
        let hash: [u8; 32] = d
            .bytes(32)?
            .try_into()
            .map_err(|_| bad("ciphertext hash is not 32 bytes"))?;
        let n = d.u32()? as usize;
        if n > MAX_RECIPIENTS {
            return Err(bad("more than 256 recipients"));
        }
        let mut recipients = Vec::with_capacity(n);
        for _ in 0..n {
            let r = decode_wire(d, "recipient envoy")?;
            if recipients.last().is_some_and(|p: &WireName| p >= &r) {
                return Err(bad("recipient envoys not sorted or repeated"));
            }
            recipients.push(r);
        }
        let reseal = match d.u8()? {
            0 => false,
            1 => true,
            _ => return Err(bad("reseal flag is neither 0 nor 1")),
        };
        // One encoding per record: a mode with no bit set is no mode byte.
        let executable = match d.remaining() {
            0 => false,
            _ => match d.u8()? {
                MODE_EXECUTABLE => true,
                0 => return Err(bad("a mode byte with no bit set (it is left out)")),
                m => {
                    return Err(bad(&format!(
                        "mode byte {m:#04x} has bits no version defines"
                    )))
                }
            },
        };
        Ok(Self {
            user,
            name,
            vv,
            author,
            sealed_unix,
            plaintext_len,
            ciphertext_len,
            hash: Sha256(hash),
            recipients,
            reseal,
            executable,
        })
    }
}

impl FileVersion {
    /// The fields the conflict rule looks at.
    pub fn candidate(&self) -> Candidate {
        Candidate {
            vv: self.vv.clone(),
            envoy: self.author.clone(),
            sealed_unix: self.sealed_unix,
            hash: self.hash.0,
            reseal: self.reseal,
            recipients: self.recipients.len(),
        }
    }

    /// The name this version is stored under when it loses a conflict.
    pub fn conflict_name(&self) -> Option<Name> {
        let base = String::from_utf8_lossy(self.name.as_bytes());
        let n = crate::version::conflict_name(&base, &self.author, self.sealed_unix, &self.hash.0);
        Name::new(n.into_bytes()).ok()
    }

    /// Whether a version with this record may be stored under `name`: its
    /// own name, or its conflict-copy name.
    pub fn fits_name(&self, name: &Name) -> bool {
        *name == self.name || self.conflict_name().as_ref() == Some(name)
    }
}

/// A signed delete of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The user.
    pub user: WireName,
    /// The deleted name.
    pub name: Name,
    /// The vector of the version that was deleted: every version Before or
    /// Equal to it is gone.
    pub vv: VersionVector,
    /// The envoy that deleted it.
    pub author: WireName,
    /// When, Unix seconds by the author's clock (for retention).
    pub deleted_unix: i64,
}

impl Record for Tombstone {
    const DOMAIN: &'static str = "lockbox/tombstone/v1";

    fn encode(&self, e: &mut Encoder) {
        e.str(self.user.as_str());
        e.bytes(self.name.as_bytes());
        encode_vv(e, &self.vv);
        e.str(self.author.as_str());
        e.u64(self.deleted_unix as u64);
    }

    fn decode(d: &mut Decoder<'_>) -> lockbox_crypto::Result<Self> {
        let user = decode_wire(d, "user")?;
        let name = decode_name(d)?;
        let vv = decode_vv(d)?;
        if vv.is_empty() {
            return Err(bad("a tombstone with an empty version vector"));
        }
        Ok(Self {
            user,
            name,
            vv,
            author: decode_wire(d, "author")?,
            deleted_unix: d.u64()? as i64,
        })
    }
}

/// One version of a folder (`docs/folders.md`, "On the mesh"): the
/// folder at `name` exists. A folder has no content; its versions share
/// its path's history with the file versions and tombstones of that path,
/// so a tombstone at the path deletes the folder versions it covers, and
/// a folder made after a delete comes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// The user whose lockbox it belongs to.
    pub user: WireName,
    /// The folder's path.
    pub name: Name,
    /// Its version vector.
    pub vv: VersionVector,
    /// The envoy that made it.
    pub author: WireName,
    /// When, Unix seconds by the author's clock.
    pub made_unix: i64,
}

impl Record for Folder {
    const DOMAIN: &'static str = "lockbox/folder/v1";

    fn encode(&self, e: &mut Encoder) {
        e.str(self.user.as_str());
        e.bytes(self.name.as_bytes());
        encode_vv(e, &self.vv);
        e.str(self.author.as_str());
        e.u64(self.made_unix as u64);
    }

    fn decode(d: &mut Decoder<'_>) -> lockbox_crypto::Result<Self> {
        let user = decode_wire(d, "user")?;
        let name = decode_name(d)?;
        let vv = decode_vv(d)?;
        if vv.is_empty() {
            return Err(bad("a folder with an empty version vector"));
        }
        Ok(Self {
            user,
            name,
            vv,
            author: decode_wire(d, "author")?,
            made_unix: d.u64()? as i64,
        })
    }
}

/// Whether tombstone vector `t` deletes a version with vector `v`.
pub fn deletes(t: &VersionVector, v: &VersionVector) -> bool {
    matches!(v.compare(t), Causality::Before | Causality::Equal)
}

/// A signed, deliberate re-add of a deleted name (see `docs/design.md`,
/// "Deletion, re-adds and departures"): it cancels every tombstone of the
/// name whose vector it covers, so those no longer gate versions of it. A re-add through the mount or `encrypt` records one
/// (then seals a version that comes after it); `lockbox resurrect NAME`
/// records one on its own, letting a copy some envoy still holds back in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resurrect {
    /// The user whose lockbox it belongs to.
    pub user: WireName,
    /// The name re-added.
    pub name: Name,
    /// The merged vector of the tombstones it cancels.
    pub vv: VersionVector,
    /// The envoy that re-added it.
    pub author: WireName,
    /// When, in Unix seconds by the author's clock.
    pub resurrected_unix: i64,
}

impl Record for Resurrect {
    const DOMAIN: &'static str = "lockbox/resurrect/v1";

    fn encode(&self, e: &mut Encoder) {
        e.str(self.user.as_str());
        e.bytes(self.name.as_bytes());
        encode_vv(e, &self.vv);
        e.str(self.author.as_str());
        e.u64(self.resurrected_unix as u64);
    }

    fn decode(d: &mut Decoder<'_>) -> lockbox_crypto::Result<Self> {
        let user = decode_wire(d, "user")?;
        let name = decode_name(d)?;
        let vv = decode_vv(d)?;
        if vv.is_empty() {
            return Err(bad("a resurrect with an empty version vector"));
        }
        Ok(Self {
            user,
            name,
            vv,
            author: decode_wire(d, "author")?,
            resurrected_unix: d.u64()? as i64,
        })
    }
}

/// How an envoy left the circle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveKind {
    /// `lockbox leave`: signed by the departing envoy's own signing key.
    Leave,
    /// `lockbox evict ENVOY`: signed by the circle key (the passphrase).
    Evict,
}

impl LeaveKind {
    /// How the departure reads in a sentence: "left" / "was evicted from"
    /// (the circle).
    pub fn verb(self) -> &'static str {
        match self {
            LeaveKind::Leave => "left",
            LeaveKind::Evict => "was evicted from",
        }
    }
}

/// A signed departure from the circle (see `docs/design.md`,
/// "Deletion, re-adds and departures"). It names the envoy's
/// signing key, not only its name: an envoy set up again under the same
/// name has a new key and a new endorsement, and may join again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leave {
    /// The user whose circle it is.
    pub user: WireName,
    /// The envoy that left.
    pub envoy: WireName,
    /// Its signing key (the member key that is no longer one).
    pub signing_key: lockbox_crypto::sign::PublicKey,
    /// Leave or evict.
    pub kind: LeaveKind,
    /// When, in Unix seconds by the signer's clock.
    pub left_unix: i64,
}

impl Record for Leave {
    const DOMAIN: &'static str = "lockbox/leave/v1";

    fn encode(&self, e: &mut Encoder) {
        e.str(self.user.as_str());
        e.str(self.envoy.as_str());
        e.key(&self.signing_key);
        e.u8(match self.kind {
            LeaveKind::Leave => 0,
            LeaveKind::Evict => 1,
        });
        e.u64(self.left_unix as u64);
    }

    fn decode(d: &mut Decoder<'_>) -> lockbox_crypto::Result<Self> {
        let user = decode_wire(d, "user")?;
        let envoy = decode_wire(d, "envoy")?;
        let signing_key = d.key()?;
        let kind = match d.u8()? {
            0 => LeaveKind::Leave,
            1 => LeaveKind::Evict,
            _ => return Err(bad("leave kind is neither 0 (leave) nor 1 (evict)")),
        };
        Ok(Self {
            user,
            envoy,
            signing_key,
            kind,
            left_unix: d.u64()? as i64,
        })
    }
}

/// Whether a leave's signature carries authority: a leave signed by the key
/// it names, or an eviction signed by the circle key.
pub fn leave_is_authorised(l: &Signed<Leave>, circle: &lockbox_crypto::sign::PublicKey) -> bool {
    match l.body().kind {
        LeaveKind::Leave => l.signer() == l.body().signing_key,
        LeaveKind::Evict => l.signer() == *circle,
    }
}

/// A record with a per-name version vector, kept per name as an antichain.
pub trait Versioned: Record {
    /// Its vector.
    fn vv(&self) -> &VersionVector;
}

impl Versioned for Tombstone {
    fn vv(&self) -> &VersionVector {
        &self.vv
    }
}

impl Versioned for Resurrect {
    fn vv(&self) -> &VersionVector {
        &self.vv
    }
}

impl Versioned for Folder {
    fn vv(&self) -> &VersionVector {
        &self.vv
    }
}

/// Whether a version with vector `v` is deleted: some tombstone covers it
/// and no resurrect covers that tombstone. A version made after a tombstone
/// (a concurrent edit, or a re-add bumped from it) is never deleted by it.
pub fn deleted_by(
    tombs: &[Signed<Tombstone>],
    resurrects: &[Signed<Resurrect>],
    v: &VersionVector,
) -> bool {
    tombs.iter().any(|t| {
        deletes(&t.body().vv, v)
            && !resurrects
                .iter()
                .any(|r| deletes(&r.body().vv, &t.body().vv))
    })
}

/// Whether any of `tombs` is not cancelled by `resurrects` (the name is
/// deleted, as far as its tombstones go).
pub fn has_live_tombstone(tombs: &[Signed<Tombstone>], resurrects: &[Signed<Resurrect>]) -> bool {
    tombs.iter().any(|t| {
        !resurrects
            .iter()
            .any(|r| deletes(&r.body().vv, &t.body().vv))
    })
}

/// Merges the records of one name into the antichain of maximal ones, in a
/// canonical order (by wire bytes): a set union that drops every record
/// whose vector another one covers (for equal vectors, keeps the smaller
/// bytes). Commutative, associative, idempotent; and it keeps the verdict of
/// [`deleted_by`], since whatever a dropped record covers its dominator
/// covers too.
pub fn merge_antichain<T: Versioned>(mut all: Vec<Signed<T>>) -> Vec<Signed<T>> {
    all.sort_by_key(|t| t.to_bytes());
    all.dedup_by(|a, b| a.to_bytes() == b.to_bytes());
    let keep: Vec<bool> = all
        .iter()
        .map(|t| {
            !all.iter().any(|o| {
                let c = t.body().vv().compare(o.body().vv());
                c == Causality::Before || (c == Causality::Equal && o.to_bytes() < t.to_bytes())
            })
        })
        .collect();
    all.into_iter()
        .zip(keep)
        .filter_map(|(t, k)| k.then_some(t))
        .collect()
}

/// The merged vector of a name's records (what a re-add bumps from).
pub fn floor<T: Versioned>(records: &[Signed<T>]) -> VersionVector {
    records
        .iter()
        .fold(VersionVector::new(), |acc, t| acc.merge(t.body().vv()))
}

/// Encodes a list of records (each already in wire form) for a table
/// response: `u32` count, then each as `u32` length + bytes.
pub fn encode_list<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let items: Vec<&[u8]> = items.into_iter().collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for i in items {
        out.extend_from_slice(&(i.len() as u32).to_be_bytes());
        out.extend_from_slice(i);
    }
    out
}

/// Decodes [`encode_list`]: at most `max_items` items of at most
/// `lockbox_crypto::sign::MAX_RECORD_BYTES` each; no trailing bytes.
pub fn decode_list(bytes: &[u8], max_items: usize) -> Result<Vec<&[u8]>, crate::Error> {
    let trunc = || crate::Error::Truncated {
        what: "record list",
        field: "an item",
    };
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, crate::Error> {
        if b.len() < n {
            return Err(trunc());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h.to_vec())
    };
    let mut rest = bytes;
    let count = u32::from_be_bytes(take(&mut rest, 4)?.try_into().map_err(|_| trunc())?) as usize;
    if count > max_items {
        return Err(crate::Error::TooManyRecords {
            what: "record list",
            count,
            max: max_items,
        });
    }
    // Every item takes at least its 4-byte length, so this bounds the
    // allocation by the input, not by a count the sender chose.
    let mut out = Vec::with_capacity(count.min(rest.len() / 4));
    for _ in 0..count {
        let len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().map_err(|_| trunc())?) as usize;
        if len > lockbox_crypto::sign::MAX_RECORD_BYTES {
            return Err(crate::Error::TooLarge {
                what: "record in a list",
                len,
                max: lockbox_crypto::sign::MAX_RECORD_BYTES,
            });
        }
        if rest.len() < len {
            return Err(trunc());
        }
        let (item, tail) = rest.split_at(len);
        out.push(item);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(crate::Error::TrailingBytes {
            what: "record list",
            count: rest.len(),
        });
    }
    Ok(out)
}

/// Most bytes a [`ListDecoder`] holds at any time: one record of
/// [`lockbox_crypto::sign::MAX_RECORD_BYTES`] and the length in front of it.
pub const LIST_DECODER_MAX_HELD: usize = lockbox_crypto::sign::MAX_RECORD_BYTES + 4;

/// A push-style decoder of [`encode_list`]'s format, for a list that
/// arrives in pieces (an HTTP body, frame by frame): it is fed `&[u8]`
/// chunks as they come and yields one record at a time, so that a table is
/// never held whole. It holds at most one record and the length in front of
/// it ([`LIST_DECODER_MAX_HELD`]), whatever the chunks or the count.
///
/// The rules are [`decode_list`]'s, checked as early as the bytes allow:
/// the count against `max_items` as soon as its four bytes are in, before
/// any record; each record's length against `MAX_RECORD_BYTES` before its
/// bytes; trailing bytes as soon as they arrive; a short list at
/// [`ListDecoder::finish`]. Records yielded before an error stay yielded —
/// the caller may already have acted on them, which is safe for lists of
/// signed records, each checked on its own. After an error every call
/// returns that error again.
#[derive(Debug)]
pub struct ListDecoder {
    max_items: usize,
    /// The `u32` being read (the count, or a record's length) and how many
    /// of its bytes have arrived.
    word: [u8; 4],
    word_have: usize,
    /// The count, once its bytes are in.
    count: Option<usize>,
    /// Records yielded so far.
    yielded: usize,
    /// The record being read, and its length.
    item: Option<(Vec<u8>, usize)>,
    failed: Option<crate::Error>,
}

impl ListDecoder {
    /// A decoder of a list of at most `max_items` records.
    pub fn new(max_items: usize) -> Self {
        ListDecoder {
            max_items,
            word: [0; 4],
            word_have: 0,
            count: None,
            yielded: 0,
            item: None,
            failed: None,
        }
    }

    /// The number of records the list announces, once read.
    pub fn count(&self) -> Option<usize> {
        self.count
    }

    /// How many records have been yielded.
    pub fn yielded(&self) -> usize {
        self.yielded
    }

    /// Whether every record the list announces has been yielded.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none() && self.count == Some(self.yielded)
    }

    /// The bytes held now: a record's part that arrived, its length's.
    /// Never more than [`LIST_DECODER_MAX_HELD`].
    pub fn held(&self) -> usize {
        self.word_have + self.item.as_ref().map_or(0, |(b, _)| b.capacity())
    }

    fn fail(&mut self, e: crate::Error) -> crate::Error {
        self.failed = Some(e.clone());
        e
    }

    /// Read a `u32` from `input` into `word`; whether it is complete.
    fn read_word(&mut self, input: &mut &[u8]) -> Option<u32> {
        let take = (4 - self.word_have).min(input.len());
        self.word[self.word_have..self.word_have + take].copy_from_slice(&input[..take]);
        self.word_have += take;
        *input = &input[take..];
        if self.word_have < 4 {
            return None;
        }
        self.word_have = 0;
        Some(u32::from_be_bytes(self.word))
    }

    /// Take bytes from the front of `input` up to the end of the next
    /// record and return it; `Ok(None)` once `input` is used up without
    /// completing one (feed the next chunk then). Call it again with the
    /// rest of `input` until it returns `Ok(None)`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::TooManyRecords`] for a count over `max_items`,
    /// [`crate::Error::TooLarge`] for a record longer than
    /// `MAX_RECORD_BYTES`, [`crate::Error::TrailingBytes`] for bytes after
    /// the last record.
    pub fn next(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, crate::Error> {
        loop {
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            let Some(count) = self.count else {
                let Some(count) = self.read_word(input) else {
                    return Ok(None);
                };
                let count = count as usize;
                if count > self.max_items {
                    return Err(self.fail(crate::Error::TooManyRecords {
                        what: "record list",
                        count,
                        max: self.max_items,
                    }));
                }
                self.count = Some(count);
                continue;
            };
            if self.yielded == count {
                if !input.is_empty() {
                    return Err(self.fail(crate::Error::TrailingBytes {
                        what: "record list",
                        count: input.len(),
                    }));
                }
                return Ok(None);
            }
            match &mut self.item {
                None => {
                    let Some(len) = self.read_word(input) else {
                        return Ok(None);
                    };
                    let len = len as usize;
                    if len > lockbox_crypto::sign::MAX_RECORD_BYTES {
                        return Err(self.fail(crate::Error::TooLarge {
                            what: "record in a list",
                            len,
                            max: lockbox_crypto::sign::MAX_RECORD_BYTES,
                        }));
                    }
                    self.item = Some((Vec::with_capacity(len), len));
                }
                Some((buf, len)) => {
                    let take = (*len - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if buf.len() < *len {
                        return Ok(None);
                    }
                    let (item, _) = self.item.take().unwrap_or_default();
                    self.yielded += 1;
                    return Ok(Some(item));
                }
            }
        }
    }

    /// The end of the input: an error unless every record announced was
    /// read.
    ///
    /// # Errors
    ///
    /// The error met before, or [`crate::Error::Truncated`] for a list cut
    /// short.
    pub fn finish(&self) -> Result<(), crate::Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.is_complete() {
            return Ok(());
        }
        Err(crate::Error::Truncated {
            what: "record list",
            field: if self.count.is_none() {
                "the count"
            } else {
                "a record"
            },
        })
    }
}

/// The 16-byte digest of a table announced in discovery: SHA-256 over the
/// sorted `(key, record bytes)` pairs, each length-prefixed, truncated.
/// Equal tables give equal digests on every envoy.
pub fn table_digest<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> [u8; 16] {
    let mut entries: Vec<(&[u8], &[u8])> = entries.into_iter().collect();
    entries.sort();
    let mut h = sha2::Sha256::new();
    h.update(b"lockbox-table-digest-v1\0");
    for (k, v) in entries {
        h.update((k.len() as u32).to_be_bytes());
        h.update(k);
        h.update((v.len() as u32).to_be_bytes());
        h.update(v);
    }
    let full: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbox_crypto::sign::SigningKey;
    use proptest::prelude::*;

    fn w(s: &str) -> WireName {
        WireName::new(s).unwrap()
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (e, n) in entries {
            for _ in 0..*n {
                v.bump(&w(e)).unwrap();
            }
        }
        v
    }

    fn version(vvv: VersionVector) -> FileVersion {
        FileVersion {
            user: w("alice"),
            name: Name::new(b"id_ed25519".to_vec()).unwrap(),
            vv: vvv,
            author: w("desk"),
            sealed_unix: 1_714_380_000,
            plaintext_len: 411,
            ciphertext_len: 700,
            hash: Sha256([7; 32]),
            recipients: vec![w("desk"), w("laptop")],
            reseal: false,
            executable: false,
        }
    }

    fn tomb(key: &SigningKey, v: VersionVector) -> Signed<Tombstone> {
        Signed::sign(
            Tombstone {
                user: w("alice"),
                name: Name::new(b"id_ed25519".to_vec()).unwrap(),
                vv: v,
                author: w("desk"),
                deleted_unix: 1,
            },
            key,
        )
    }

    #[test]
    fn file_version_round_trips_and_is_signed() {
        let key = SigningKey::generate();
        let s = Signed::sign(version(vv(&[("desk", 2), ("laptop", 1)])), &key);
        let back = Signed::<FileVersion>::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back.body(), s.body());
        assert_eq!(back.signer(), key.public());
        // A flipped bit anywhere is refused.
        let mut bytes = s.to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(Signed::<FileVersion>::from_bytes(&bytes).is_err());
        // A tombstone signature never verifies as a version.
        let t = tomb(&key, vv(&[("desk", 1)]));
        assert!(Signed::<FileVersion>::from_bytes(&t.to_bytes()).is_err());
    }

    /// The execute bit is one trailing mode byte, written only when set: a
    /// record without it is byte for byte what envoys before it signed
    /// (so they still take it; one with it they refuse, as they refuse any
    /// trailing byte), and each mode has one encoding.
    #[test]
    fn the_execute_bit_is_a_trailing_mode_byte_present_only_when_set() {
        let key = SigningKey::generate();
        let plain = version(vv(&[("desk", 1)]));
        let exec = FileVersion {
            executable: true,
            ..plain.clone()
        };
        let (p, x) = (Signed::sign(plain, &key), Signed::sign(exec, &key));
        // The fields before it are unchanged: the body ends with the reseal
        // flag, and the executable one adds exactly the mode byte.
        assert_eq!(p.body_bytes().last(), Some(&0u8), "reseal flag last");
        assert_eq!(x.body_bytes().len(), p.body_bytes().len() + 1);
        assert_eq!(&x.body_bytes()[..p.body_bytes().len()], p.body_bytes());
        assert_eq!(x.body_bytes().last(), Some(&MODE_EXECUTABLE));
        let back = Signed::<FileVersion>::from_bytes(&x.to_bytes()).unwrap();
        assert!(back.body().executable);
        assert!(
            !Signed::<FileVersion>::from_bytes(&p.to_bytes())
                .unwrap()
                .body()
                .executable
        );
        // A mode byte of 0 (the bit clear, which is written as no byte),
        // unknown bits, and a second byte are refused, signed or not.
        for tail in [&[0u8][..], &[2], &[0x81], &[1, 1]] {
            let mut body = p.body_bytes().to_vec();
            body.extend_from_slice(tail);
            let mut d = Decoder::new(&body);
            let r = FileVersion::decode(&mut d).and_then(|_| d.finish());
            assert!(r.is_err(), "tail {tail:?} decoded");
        }
    }

    #[test]
    fn unsorted_recipients_and_traversal_names_are_refused() {
        let key = SigningKey::generate();
        let mut v = version(vv(&[("desk", 1)]));
        v.recipients = vec![w("laptop"), w("desk")];
        let s = Signed::sign(v, &key);
        assert!(Signed::<FileVersion>::from_bytes(&s.to_bytes()).is_err());

        // Hand-encode a record whose name is "../x".
        let mut e = Encoder::new();
        e.str("alice");
        e.bytes(b"../x");
        let err = Name::new(b"../x".to_vec());
        assert!(err.is_err());
    }

    #[test]
    fn conflict_copy_name_fits() {
        let v = version(vv(&[("desk", 1)]));
        let c = v.conflict_name().unwrap();
        assert!(v.fits_name(&c));
        assert!(v.fits_name(&v.name));
        assert!(!v.fits_name(&Name::new(b"other".to_vec()).unwrap()));
        assert_eq!(
            c.as_bytes(),
            b"id_ed25519.conflict-desk-20240429-084000-07070707"
        );
    }

    #[test]
    fn a_tombstone_deletes_what_it_saw_and_nothing_newer() {
        let t = vv(&[("desk", 2)]);
        assert!(deletes(&t, &vv(&[("desk", 1)])));
        assert!(deletes(&t, &vv(&[("desk", 2)])));
        assert!(!deletes(&t, &vv(&[("desk", 3)])));
        assert!(!deletes(&t, &vv(&[("desk", 1), ("laptop", 1)])));
    }

    #[test]
    fn list_codec_rejects_garbage() {
        let a = [1u8, 2, 3];
        let b: [u8; 0] = [];
        let enc = encode_list([&a[..], &b[..]]);
        let dec = decode_list(&enc, 10).unwrap();
        assert_eq!(dec, vec![&a[..], &b[..]]);
        assert!(decode_list(&enc, 1).is_err());
        assert!(decode_list(&enc[..enc.len() - 1], 10).is_err());
        let mut long = enc.clone();
        long.push(0);
        assert!(decode_list(&long, 10).is_err());
        assert!(decode_list(&[0xff, 0xff, 0xff, 0xff], usize::MAX).is_err());
    }

    /// Feed `bytes` to a [`ListDecoder`] in pieces cut at `cuts` (sorted
    /// or not, any values): the records, and whether it ended cleanly;
    /// checks the memory bound after every step.
    fn stream(bytes: &[u8], cuts: &[usize], max_items: usize) -> (Vec<Vec<u8>>, bool) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut dec = ListDecoder::new(max_items);
        let mut out = Vec::new();
        for w in cuts.windows(2) {
            let mut input = &bytes[w[0]..w[1]];
            loop {
                let got = dec.next(&mut input);
                assert!(dec.held() <= LIST_DECODER_MAX_HELD, "{}", dec.held());
                match got {
                    Ok(Some(item)) => out.push(item),
                    Ok(None) => break,
                    Err(_) => return (out, false),
                }
            }
            assert!(input.is_empty(), "a chunk was not used up");
        }
        let ok = dec.finish().is_ok();
        (out, ok)
    }

    #[test]
    fn the_list_decoder_takes_a_list_byte_by_byte() {
        let a = vec![1u8, 2, 3];
        let b = Vec::new();
        let c = vec![9u8; 1000];
        let enc = encode_list([&a[..], &b[..], &c[..]]);
        let every: Vec<usize> = (0..enc.len()).collect();
        assert_eq!(stream(&enc, &every, 3), (vec![a, b, c], true));
        assert_eq!(stream(&encode_list([]), &[], 0), (vec![], true));
    }

    #[test]
    fn the_list_decoder_refuses_as_soon_as_the_bytes_allow() {
        // The count is checked before anything else: over the maximum, the
        // rest is never looked at.
        let mut dec = ListDecoder::new(10);
        let mut input = &[0u8, 0, 0, 11, 0xff, 0xff][..];
        let e = dec.next(&mut input).unwrap_err();
        assert!(
            matches!(
                e,
                crate::Error::TooManyRecords {
                    count: 11,
                    max: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(input.len(), 2);
        assert!(dec.next(&mut &b"more"[..]).is_err(), "it stays failed");
        assert!(dec.finish().is_err());

        // A record longer than a record can be: refused at its length.
        let big = (lockbox_crypto::sign::MAX_RECORD_BYTES as u32 + 1).to_be_bytes();
        let mut dec = ListDecoder::new(10);
        let mut input = &[0u8, 0, 0, 1, big[0], big[1], big[2], big[3]][..];
        let e = dec.next(&mut input).unwrap_err();
        assert!(matches!(e, crate::Error::TooLarge { .. }), "{e}");
        assert_eq!(dec.held(), 0);

        // Trailing bytes: the records before them were yielded.
        let mut long = encode_list([&b"abc"[..]]);
        long.push(0);
        assert_eq!(stream(&long, &[], 10), (vec![b"abc".to_vec()], false));

        // Cut short: an error at the end, after the whole records.
        let two = encode_list([&b"abc"[..], &b"defg"[..]]);
        let short = &two[..two.len() - 1];
        assert_eq!(stream(short, &[], 10), (vec![b"abc".to_vec()], false));
        let mut dec = ListDecoder::new(10);
        assert_eq!(dec.next(&mut &two[..2]).unwrap(), None);
        assert_eq!(dec.count(), None);
        let e = dec.finish().unwrap_err();
        assert!(e.to_string().contains("the count"), "{e}");
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0usize..3, 1u64..4), 1..4).prop_map(|es| {
            let names = ["a", "b", "c"];
            let mut v = VersionVector::new();
            for (i, n) in es {
                for _ in 0..n {
                    v.bump(&w(names[i])).unwrap();
                }
            }
            v
        })
    }

    fn resurrect(key: &SigningKey, v: VersionVector) -> Signed<Resurrect> {
        Signed::sign(
            Resurrect {
                user: w("alice"),
                name: Name::new(b"id_ed25519".to_vec()).unwrap(),
                vv: v,
                author: w("laptop"),
                resurrected_unix: 2,
            },
            key,
        )
    }

    #[test]
    fn resurrect_and_leave_round_trip_and_do_not_verify_as_each_other() {
        let key = SigningKey::generate();
        let r = resurrect(&key, vv(&[("desk", 3)]));
        let back = Signed::<Resurrect>::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(back.body(), r.body());
        assert!(Signed::<Tombstone>::from_bytes(&r.to_bytes()).is_err());

        let circle = SigningKey::generate();
        let leave = Leave {
            user: w("alice"),
            envoy: w("desk"),
            signing_key: key.public(),
            kind: LeaveKind::Leave,
            left_unix: 5,
        };
        let own = Signed::sign(leave.clone(), &key);
        let back = Signed::<Leave>::from_bytes(&own.to_bytes()).unwrap();
        assert_eq!(back.body(), &leave);
        assert!(leave_is_authorised(&back, &circle.public()));
        // A leave signed by another key is no one's authority.
        let forged = Signed::sign(leave.clone(), &SigningKey::generate());
        assert!(!leave_is_authorised(&forged, &circle.public()));
        // An eviction needs the circle key.
        let evict = Leave {
            kind: LeaveKind::Evict,
            ..leave
        };
        assert!(leave_is_authorised(
            &Signed::sign(evict.clone(), &circle),
            &circle.public()
        ));
        assert!(!leave_is_authorised(
            &Signed::sign(evict, &key),
            &circle.public()
        ));
        // An unknown kind byte is refused.
        let mut bytes = own.to_bytes();
        let kind_at = bytes.len() - 9;
        bytes[kind_at] = 7;
        assert!(Signed::<Leave>::from_bytes(&bytes).is_err());
    }

    #[test]
    fn a_resurrect_cancels_the_tombstones_it_covers_only() {
        let key = SigningKey::from_seed(&[3; 32]);
        let old = vv(&[("desk", 2)]);
        let t = vec![tomb(&key, old.clone())];
        assert!(deleted_by(&t, &[], &old));
        // Covering the tombstone: the deleted version is allowed back.
        let r = vec![resurrect(&key, old.clone())];
        assert!(!deleted_by(&t, &r, &old));
        assert!(!has_live_tombstone(&t, &r));
        // A later delete (of a later version) is not covered by it.
        let later = vv(&[("desk", 4)]);
        let t2 = merge_antichain(vec![t[0].clone(), tomb(&key, later.clone())]);
        assert!(deleted_by(&t2, &r, &later));
        assert!(
            deleted_by(&t2, &r, &old),
            "the later tombstone covers old too"
        );
        assert!(has_live_tombstone(&t2, &r));
        // A replayed old tombstone never deletes a re-add made after it.
        let mut readd = floor(&t);
        readd.bump(&w("laptop")).unwrap();
        let replayed = merge_antichain(vec![t[0].clone(), t[0].clone()]);
        assert!(!deleted_by(&replayed, &r, &readd));
        assert!(!deleted_by(&replayed, &[], &readd));
    }

    proptest! {
        #[test]
        fn tables_merge_in_any_order_to_the_same_verdict(
            tv in proptest::collection::vec(arb_vv(), 0..5),
            rv in proptest::collection::vec(arb_vv(), 0..4),
            split in 0usize..5,
            probe in arb_vv(),
        ) {
            let key = SigningKey::from_seed(&[4; 32]);
            let ts: Vec<_> = tv.into_iter().map(|v| tomb(&key, v)).collect();
            let rs: Vec<_> = rv.into_iter().map(|v| resurrect(&key, v)).collect();
            // Two envoys each saw part of the tables; merging their halves in
            // either order gives the full tables and the same verdict.
            let k = split.min(ts.len());
            let (ta, tb) = ts.split_at(k);
            let k = split.min(rs.len());
            let (ra, rb) = rs.split_at(k);
            let mut ab = merge_antichain(ta.to_vec());
            ab.extend(tb.iter().cloned());
            let ab = merge_antichain(ab);
            let mut ba = merge_antichain(tb.to_vec());
            ba.extend(ta.iter().cloned());
            let ba = merge_antichain(ba);
            prop_assert_eq!(&ab, &ba);
            let mut rab = merge_antichain(ra.to_vec());
            rab.extend(rb.iter().cloned());
            let rab = merge_antichain(rab);
            prop_assert_eq!(
                deleted_by(&ab, &rab, &probe),
                deleted_by(&ts, &rs, &probe)
            );
            prop_assert_eq!(has_live_tombstone(&ab, &rab), has_live_tombstone(&ts, &rs));
        }

        #[test]
        fn garbage_records_and_lists_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Signed::<FileVersion>::from_bytes(&bytes);
            let _ = Signed::<Tombstone>::from_bytes(&bytes);
            let _ = Signed::<Resurrect>::from_bytes(&bytes);
            let _ = Signed::<Leave>::from_bytes(&bytes);
            let _ = decode_list(&bytes, 1 << 20);
        }

        /// Any chunking of a valid list yields the same records.
        #[test]
        fn any_chunking_of_a_list_yields_its_records(
            items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let enc = encode_list(items.iter().map(|i| i.as_slice()));
            prop_assert_eq!(stream(&enc, &cuts, items.len()), (items.clone(), true));
            if !items.is_empty() {
                let (got, ok) = stream(&enc, &cuts, items.len() - 1);
                prop_assert!(got.is_empty() && !ok, "over the maximum: nothing");
            }
        }

        /// Any bytes, in any pieces: no panic, never more held than one
        /// record and its length, and the verdict of `decode_list`.
        #[test]
        fn the_list_decoder_agrees_with_decode_list(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            small in proptest::collection::vec(0u8..4, 0..40),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            // Random bytes are rarely a list; small ones often are.
            for input in [&bytes, &small] {
                let whole = decode_list(input, 64);
                let (got, ok) = stream(input, &cuts, 64);
                match whole {
                    Ok(items) => {
                        prop_assert!(ok);
                        let items: Vec<Vec<u8>> = items.iter().map(|i| i.to_vec()).collect();
                        prop_assert_eq!(got, items);
                    }
                    Err(_) => prop_assert!(!ok),
                }
            }
        }

        #[test]
        fn tombstone_merge_is_order_independent_and_idempotent(
            vs in proptest::collection::vec(arb_vv(), 1..6),
            probe in arb_vv(),
        ) {
            let key = SigningKey::from_seed(&[9; 32]);
            let ts: Vec<_> = vs.into_iter().map(|v| tomb(&key, v)).collect();
            let m1 = merge_antichain(ts.clone());
            let mut rev = ts.clone();
            rev.reverse();
            let m2 = merge_antichain(rev);
            prop_assert_eq!(&m1, &m2);
            prop_assert_eq!(merge_antichain(m1.clone()), m1.clone());
            let mut twice = m1.clone();
            twice.extend(ts.clone());
            prop_assert_eq!(merge_antichain(twice), m1.clone());
            // The merged table deletes exactly what the inputs delete.
            prop_assert_eq!(deleted_by(&m1, &[], &probe), deleted_by(&ts, &[], &probe));
            // A re-add bumped from the floor survives every tombstone.
            let mut re = floor(&m1);
            re.bump(&w("a")).unwrap();
            prop_assert!(!deleted_by(&m1, &[], &re));
        }
    }
}
