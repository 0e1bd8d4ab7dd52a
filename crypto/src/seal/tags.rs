//! Block tags: an envoy's own index of a store file, so that a small read
//! of a large file authenticates and decrypts only the 4 KiB blocks it
//! needs instead of the whole 64 KiB age chunk around them.
//!
//! age authenticates a chunk as a whole (one Poly1305 tag per 64 KiB of
//! plaintext), so [`Payload::read_chunk`] reads and decrypts all of it for
//! any byte of it. On a cold disk that is most of a small random read's
//! cost. While it seals a file, the envoy also tags every 4 KiB block of
//! the ciphertext it writes, with a key only it holds (while unlocked):
//!
//! ```text
//! K        = HKDF-SHA256(ikm = the envoy's age identity string, salt = "",
//!                        info = "lockbox block tags v1")
//! binding  = SHA-256(the age header, through its MAC line, and the 16-byte payload nonce)
//! K_f      = HMAC-SHA256(K, "lockbox block tags v1" || binding)
//! tag(p)   = HMAC-SHA256(K_f, be64(p) || ciphertext of block p)[..16]
//! ```
//!
//! Block `p` is plaintext bytes `p * 4096 ..` (the last block of a chunk or
//! of the file may be shorter); its ciphertext sits at the same offset
//! inside its chunk, since ChaCha20 keeps lengths. A block whose ciphertext
//! matches its tag is ciphertext this envoy sealed into this very file (the
//! binding covers the header, whose MAC commits to the file key, and the
//! nonce, which with it gives the payload key), so decrypting it with the
//! ChaCha20 key stream at its offset ([`Payload::read_blocks`]) gives the
//! plaintext age would, without its chunk's Poly1305 check.
//!
//! The tags are an accelerator, never an authority: a tag that does not
//! match (a stale index, a damaged index, an altered block) sends the read
//! back to the whole chunk and its Poly1305 tag, which decides. A file
//! sealed while locked, or received from another envoy, has no tags until
//! they are made after the fact ([`Payload::tag_blocks`], every chunk's
//! Poly1305 tag checked first) and is read by chunk till then; so is a
//! file of one chunk, which gets no tags.
//!
//! The index file ([`BlockTags::encode`], version 1, integers big-endian):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `lbxtags1` |
//! | 8 | 32 | binding |
//! | 40 | 8 | plaintext length |
//! | 48 | 16 | check: HMAC-SHA256(K_f, "index" \|\| be64(length))[..16] |
//! | 64 | 16 × blocks | tag(0), tag(1), … (blocks = ⌈length / 4096⌉) |
//!
//! The check makes an index of another file, another envoy or another
//! length fail as a whole when it is loaded, before any block is read.

use std::fmt;
use std::io::{self, Write};

use age_core::primitives::hkdf;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Digest;
use zeroize::Zeroizing;

use super::{
    HeaderScanner, CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, MAX_HEADER_BYTES, NONCE_LEN, TAG_LEN,
};
use crate::{AgeIdentity, Error, Result};

type HmacSha256 = Hmac<sha2::Sha256>;

/// Plaintext bytes per tagged block.
pub const BLOCK_SIZE: u64 = 4096;
/// Bytes of one block tag.
pub const BLOCK_TAG_LEN: usize = 16;
/// Blocks per full chunk.
pub const BLOCKS_PER_CHUNK: u64 = CHUNK_SIZE / BLOCK_SIZE;
/// Bytes of an index file before its tags.
pub const INDEX_HEAD_LEN: u64 = 64;

const LABEL: &[u8] = b"lockbox block tags v1";
const INDEX_MAGIC: &[u8; 8] = b"lbxtags1";
const CHECK_LABEL: &[u8] = b"index";

/// The envoy's key for block tags, derived from its identity. Zeroized on
/// drop; `Debug` prints no key.
pub struct TagKey(Zeroizing<[u8; 32]>);

impl TagKey {
    /// The tag key of `identity`.
    pub fn of(identity: &AgeIdentity) -> TagKey {
        let secret = identity.to_string();
        TagKey(Zeroizing::new(hkdf(
            b"",
            LABEL,
            secret.expose_secret().as_bytes(),
        )))
    }

    /// The key for the tags of the file with `binding`.
    fn file_key(&self, binding: &Binding) -> FileKey {
        let mut mac = HmacSha256::new_from_slice(&self.0[..]).expect("HMAC takes any key length");
        mac.update(LABEL);
        mac.update(&binding.0);
        FileKey(Zeroizing::new(mac.finalize().into_bytes().into()))
    }
}

impl fmt::Debug for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TagKey(..)")
    }
}

/// What ties an index to one age file: SHA-256 of its header and payload
/// nonce. Two seals never share it (each has a fresh file key and nonce).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding(pub [u8; 32]);

impl Binding {
    /// The binding of an age file that starts with `head` (its header and
    /// nonce, nothing more).
    pub fn of(head: &[u8]) -> Binding {
        Binding(sha2::Sha256::digest(head).into())
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Binding({})", hex::encode(&self.0[..8]))
    }
}

/// The per-file MAC key.
struct FileKey(Zeroizing<[u8; 32]>);

impl FileKey {
    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0[..]).expect("HMAC takes any key length")
    }

    fn block_mac(&self, p: u64, block: &[u8]) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(&p.to_be_bytes());
        mac.update(block);
        mac
    }

    fn tag(&self, p: u64, block: &[u8]) -> [u8; BLOCK_TAG_LEN] {
        truncate(self.block_mac(p, block))
    }

    fn check(&self, plaintext_len: u64) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(CHECK_LABEL);
        mac.update(&plaintext_len.to_be_bytes());
        mac
    }
}

fn truncate(mac: HmacSha256) -> [u8; BLOCK_TAG_LEN] {
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; BLOCK_TAG_LEN];
    tag.copy_from_slice(&full[..BLOCK_TAG_LEN]);
    tag
}

/// Number of blocks of a file of `plaintext_len` bytes.
pub fn blocks_of(plaintext_len: u64) -> u64 {
    plaintext_len.div_ceil(BLOCK_SIZE)
}

/// Bytes of the index file of a file of `plaintext_len` bytes.
pub fn index_len(plaintext_len: u64) -> u64 {
    INDEX_HEAD_LEN + blocks_of(plaintext_len) * BLOCK_TAG_LEN as u64
}

/// The tags of one age file, with the key to check blocks against them.
pub struct BlockTags {
    key: FileKey,
    binding: Binding,
    plaintext_len: u64,
    tags: Vec<[u8; BLOCK_TAG_LEN]>,
}

impl fmt::Debug for BlockTags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockTags")
            .field("binding", &self.binding)
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

impl BlockTags {
    /// The file they belong to.
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// Plaintext length of that file.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Bytes of memory the tags take.
    pub fn memory(&self) -> usize {
        self.tags.len() * BLOCK_TAG_LEN + std::mem::size_of::<Self>()
    }

    /// Whether `ciphertext` is block `p` as this envoy sealed it.
    pub(super) fn matches(&self, p: u64, ciphertext: &[u8]) -> bool {
        match usize::try_from(p).ok().and_then(|i| self.tags.get(i)) {
            Some(tag) => self
                .key
                .block_mac(p, ciphertext)
                .verify_truncated_left(tag)
                .is_ok(),
            None => false,
        }
    }

    /// The index file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(index_len(self.plaintext_len) as usize);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&self.binding.0);
        out.extend_from_slice(&self.plaintext_len.to_be_bytes());
        out.extend_from_slice(&truncate(self.key.check(self.plaintext_len)));
        for tag in &self.tags {
            out.extend_from_slice(tag);
        }
        out
    }

    /// Reads an index file made by this envoy (`key`) for the age file
    /// with `binding` and `plaintext_len` (what [`Payload`] found in the
    /// file). Anything else — another file's index, another envoy's, a
    /// damaged or cut one — is [`Error::Corrupt`].
    pub fn decode(
        bytes: &[u8],
        key: &TagKey,
        binding: &Binding,
        plaintext_len: u64,
    ) -> Result<BlockTags> {
        let bad = |why: &str| Error::Corrupt(format!("block index: {why}"));
        let head = bytes
            .get(..INDEX_HEAD_LEN as usize)
            .ok_or_else(|| bad("shorter than its header"))?;
        if &head[..8] != INDEX_MAGIC {
            return Err(bad("not a version 1 index"));
        }
        if head[8..40] != binding.0 {
            return Err(bad("made for another version of the file"));
        }
        let len = u64::from_be_bytes(head[40..48].try_into().expect("8 bytes"));
        if len != plaintext_len {
            return Err(bad("made for another length"));
        }
        if bytes.len() as u64 != index_len(len) {
            return Err(bad("its length does not match its tag count"));
        }
        let file_key = key.file_key(binding);
        file_key
            .check(len)
            .verify_truncated_left(&head[48..64])
            .map_err(|_| bad("its check does not verify (another envoy's, or altered)"))?;
        let tags = bytes[INDEX_HEAD_LEN as usize..]
            .chunks_exact(BLOCK_TAG_LEN)
            .map(|t| t.try_into().expect("exact chunks"))
            .collect();
        Ok(BlockTags {
            key: file_key,
            binding: *binding,
            plaintext_len,
            tags,
        })
    }
}

/// Where a [`Tagger`] is in the age file passing through it.
enum State {
    /// Collecting the header and nonce.
    Head {
        buf: Vec<u8>,
        scanner: HeaderScanner,
        header_len: Option<usize>,
    },
    /// Tagging chunk after chunk.
    Body {
        key: FileKey,
        binding: Binding,
        /// The chunk being received (ciphertext and, once whole, its tag).
        chunk: Vec<u8>,
        chunks: u64,
        plaintext_len: u64,
        tags: Vec<[u8; BLOCK_TAG_LEN]>,
    },
    /// Not tagging: no key, or what passed is not an age file as expected.
    Off,
}

/// A writer of a sealed age file that computes its block tags as the
/// ciphertext passes on to `inner`. Without a key, or for bytes that turn
/// out not to be an age file, it only passes them on.
pub struct Tagger<W> {
    inner: W,
    key: Option<Zeroizing<[u8; 32]>>,
    state: State,
}

impl<W: Write> Tagger<W> {
    /// Tags what passes to `inner` with `key` (none: pass through only).
    pub fn new(inner: W, key: Option<&TagKey>) -> Self {
        let state = match key {
            Some(_) => State::Head {
                buf: Vec::new(),
                scanner: HeaderScanner::default(),
                header_len: None,
            },
            None => State::Off,
        };
        Tagger {
            inner,
            key: key.map(|k| k.0.clone()),
            state,
        }
    }

    /// The binding of the age file that passed, once its header and nonce
    /// have (with a key; `None` without one or for bytes that are not an
    /// age file). Known for a file of any size, also one that gets no tags.
    pub fn binding(&self) -> Option<Binding> {
        match &self.state {
            State::Body { binding, .. } => Some(*binding),
            _ => None,
        }
    }

    /// The inner writer, and the tags if every byte that passed made a
    /// complete age file of more than one chunk.
    pub fn finish(self) -> (W, Option<BlockTags>) {
        let tags = match self.state {
            State::Body {
                key,
                binding,
                chunk,
                chunks,
                mut plaintext_len,
                mut tags,
            } => {
                // What is left is the last chunk (it may be empty if the
                // last one was full), its tag at its end.
                let last = match chunk.len() {
                    0 if chunks > 0 => Some(&chunk[..0]),
                    n if n >= TAG_LEN as usize && (n > TAG_LEN as usize || chunks == 0) => {
                        Some(&chunk[..n - TAG_LEN as usize])
                    }
                    _ => None,
                };
                // A file of one chunk gets none: any read of it decrypts
                // that chunk whole anyway (so its block is never tagged).
                last.filter(|_| chunks > 0)
                    .map(|body| {
                        tag_chunk(&key, chunks, body, &mut tags);
                        plaintext_len += body.len() as u64;
                        BlockTags {
                            key,
                            binding,
                            plaintext_len,
                            tags,
                        }
                    })
                    .filter(|t| t.plaintext_len > CHUNK_SIZE)
            }
            _ => None,
        };
        (self.inner, tags)
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head {
                    buf,
                    scanner,
                    header_len,
                } => {
                    let room =
                        (MAX_HEADER_BYTES + NONCE_LEN as usize + 1).saturating_sub(buf.len());
                    let n = data.len().min(room);
                    if n == 0 {
                        self.state = State::Off;
                        return;
                    }
                    buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if header_len.is_none() {
                        match scanner.scan(buf) {
                            Ok(Some(info)) => *header_len = Some(info.header_len as usize),
                            Ok(None) => continue,
                            Err(_) => {
                                self.state = State::Off;
                                return;
                            }
                        }
                    }
                    let head = header_len.expect("set above") + NONCE_LEN as usize;
                    if buf.len() < head {
                        continue;
                    }
                    let binding = Binding::of(&buf[..head]);
                    let rest = buf.split_off(head);
                    let key =
                        TagKey(self.key.clone().expect("tagging has a key")).file_key(&binding);
                    self.state = State::Body {
                        key,
                        binding,
                        // Grows to a chunk only for a file that has one.
                        chunk: Vec::new(),
                        chunks: 0,
                        plaintext_len: 0,
                        tags: Vec::new(),
                    };
                    self.feed(&rest);
                }
                State::Body {
                    key,
                    chunk,
                    chunks,
                    plaintext_len,
                    tags,
                    ..
                } => {
                    let n = data.len().min(ENCRYPTED_CHUNK_SIZE as usize - chunk.len());
                    chunk.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if chunk.len() == ENCRYPTED_CHUNK_SIZE as usize {
                        let body = &chunk[..CHUNK_SIZE as usize];
                        tag_chunk(key, *chunks, body, tags);
                        *plaintext_len += CHUNK_SIZE;
                        *chunks += 1;
                        chunk.clear();
                    }
                }
            }
        }
    }
}

/// Tags the blocks of chunk number `idx`, whose ciphertext (without its
/// Poly1305 tag) is `body`.
fn tag_chunk(key: &FileKey, idx: u64, body: &[u8], tags: &mut Vec<[u8; BLOCK_TAG_LEN]>) {
    for (j, block) in body.chunks(BLOCK_SIZE as usize).enumerate() {
        tags.push(key.tag(idx * BLOCKS_PER_CHUNK + j as u64, block));
    }
}

impl<W: Write> Write for Tagger<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.feed(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{seal_stream, Payload, CHUNK_BUFFER};
    use super::*;
    use proptest::prelude::*;
    use std::fs::File;

    const C: usize = CHUNK_SIZE as usize;
    const B: usize = BLOCK_SIZE as usize;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        use rand::{rngs::StdRng, RngCore, SeedableRng};
        let mut v = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    /// Seals `pt` through a [`Tagger`] fed in pieces of `piece` bytes: the
    /// file's bytes and its tags.
    fn sealed(id: &AgeIdentity, pt: &[u8], piece: usize) -> (Vec<u8>, Option<BlockTags>) {
        let file = seal_stream(&[id.to_public()], pt, Vec::new()).unwrap().1;
        let mut tagger = Tagger::new(Vec::new(), Some(&TagKey::of(id)));
        for p in file.chunks(piece.max(1)) {
            tagger.write_all(p).unwrap();
        }
        let (out, tags) = tagger.finish();
        assert_eq!(out, file, "the tagger passes every byte on");
        (out, tags)
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// Plaintext of blocks `first..first + count` through the tags, or None.
    fn blocks(p: &Payload, f: &File, t: &BlockTags, first: u64, count: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; count as usize * B];
        let n = p.read_blocks(f, t, first, count, &mut buf).unwrap()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Every block, one by one and as whole chunks, reads back as `pt`.
    fn assert_all_blocks(id: &AgeIdentity, file: &[u8], tags: &BlockTags, pt: &[u8]) {
        let f = file_of(file);
        let p = Payload::open(id, &f).unwrap();
        assert_eq!(tags.binding(), p.binding());
        assert_eq!(tags.plaintext_len(), pt.len() as u64);
        for b in 0..blocks_of(pt.len() as u64) {
            let at = b as usize * B;
            let want = &pt[at..(at + B).min(pt.len())];
            assert_eq!(
                blocks(&p, &f, tags, b, 1).as_deref(),
                Some(want),
                "block {b}"
            );
        }
        for (i, chunk) in pt.chunks(C).enumerate() {
            let first = i as u64 * BLOCKS_PER_CHUNK;
            let count = chunk.len().div_ceil(B) as u64;
            assert_eq!(blocks(&p, &f, tags, first, count).as_deref(), Some(chunk));
        }
    }

    #[test]
    fn every_block_reads_back_at_edge_sizes_and_piece_sizes() {
        let id = AgeIdentity::generate();
        for len in [1, B - 1, B, B + 1, C - 1, C, C + 1, 2 * C, 3 * C + 5] {
            for piece in [1, 17, 4096, 65552, 1 << 20] {
                if piece < 100 && len > 2 * C {
                    continue;
                }
                let pt = data(len, len as u64);
                let (file, tags) = sealed(&id, &pt, piece);
                if len <= C {
                    assert!(tags.is_none(), "{len} bytes: one chunk, no tags");
                    continue;
                }
                let tags = tags.expect("an age file of several chunks passed");
                assert_eq!(tags.tags.len() as u64, blocks_of(len as u64));
                assert_all_blocks(&id, &file, &tags, &pt);
            }
        }
    }

    #[test]
    fn tags_made_after_the_fact_are_the_seals_own_and_only_for_authentic_chunks() {
        let id = AgeIdentity::generate();
        let key = TagKey::of(&id);
        for len in [0, 1, C, C + 1, 2 * C, 3 * C + 5] {
            let pt = data(len, 40 + len as u64);
            let (file, at_seal) = sealed(&id, &pt, 4096);
            let f = file_of(&file);
            let p = Payload::open(&id, &f).unwrap();
            let after = p.tag_blocks(&f, &key, || true).unwrap();
            match (&at_seal, &after) {
                (None, None) => assert!(len <= C, "{len} bytes: tags at the seal"),
                (Some(a), Some(b)) => {
                    assert_eq!(a.encode(), b.encode(), "{len} bytes: other tags");
                    assert_all_blocks(&id, &file, b, &pt);
                }
                _ => panic!("{len} bytes: tags at the seal {at_seal:?}, after {after:?}"),
            }
            if len <= C {
                continue;
            }
            // Stopped before a chunk: no tags.
            let mut asked = 0;
            let stopped = p.tag_blocks(&f, &key, || {
                asked += 1;
                asked < 2
            });
            assert!(stopped.unwrap().is_none(), "{len} bytes: stopped");
            // Another envoy's key makes tags that do not load under ours.
            let other = TagKey::of(&AgeIdentity::generate());
            let theirs = p.tag_blocks(&f, &other, || true).unwrap().unwrap();
            let loaded = BlockTags::decode(&theirs.encode(), &key, &p.binding(), len as u64);
            assert!(loaded.is_err(), "{len} bytes: another key's tags loaded");
            // A flipped byte in any chunk: no tags, an authentication error.
            for chunk in 0..(len as u64).div_ceil(CHUNK_SIZE) {
                let mut bad = file.clone();
                let at = file.len() - pt.len() - 16 * (len as u64).div_ceil(CHUNK_SIZE) as usize;
                bad[at + chunk as usize * (C + 16) + 3] ^= 1;
                let e = p.tag_blocks(&file_of(&bad), &key, || true).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{len}: chunk {chunk}");
            }
        }
    }

    #[test]
    fn small_files_and_non_age_bytes_get_no_tags() {
        let id = AgeIdentity::generate();
        for len in [0, 1, C] {
            let (_, tags) = sealed(&id, &data(len, 1), 7);
            assert!(tags.is_none(), "{len} bytes");
        }
        let key = TagKey::of(&id);
        for junk in [
            &b""[..],
            b"not age at all",
            b"age-encryption.org/v1\n-> X25519",
        ] {
            let mut t = Tagger::new(Vec::new(), Some(&key));
            t.write_all(junk).unwrap();
            assert!(t.finish().1.is_none(), "{junk:?}");
        }
        // A file of three chunks gets tags whole, and none when cut inside
        // its last tag (15 bytes left of its 10-byte chunk and tag) or to
        // an empty last chunk after full ones (16 bytes left).
        let file = seal_stream(&[id.to_public()], &data(2 * C + 10, 3)[..], Vec::new())
            .unwrap()
            .1;
        let tags_of = |bytes: &[u8]| {
            let mut t = Tagger::new(Vec::new(), Some(&key));
            t.write_all(bytes).unwrap();
            t.finish().1
        };
        assert!(tags_of(&file).is_some());
        assert!(tags_of(&file[..file.len() - 11]).is_none());
        assert!(tags_of(&file[..file.len() - 10]).is_none());
        // Without a key it only passes bytes on.
        let mut t = Tagger::new(Vec::new(), None);
        t.write_all(&file).unwrap();
        let (out, tags) = t.finish();
        assert_eq!(out, file);
        assert!(tags.is_none());
    }

    #[test]
    fn the_index_round_trips_only_for_its_own_file_envoy_and_length() {
        let id = AgeIdentity::generate();
        let pt = data(2 * C + 100, 5);
        let (file, tags) = sealed(&id, &pt, 4096);
        let tags = tags.unwrap();
        let bytes = tags.encode();
        assert_eq!(bytes.len() as u64, index_len(pt.len() as u64));
        let key = TagKey::of(&id);
        let back = BlockTags::decode(&bytes, &key, &tags.binding(), tags.plaintext_len()).unwrap();
        assert_all_blocks(&id, &file, &back, &pt);

        let other = TagKey::of(&AgeIdentity::generate());
        assert!(BlockTags::decode(&bytes, &other, &tags.binding(), tags.plaintext_len()).is_err());
        let elsewhere = Binding::of(b"another file");
        assert!(BlockTags::decode(&bytes, &key, &elsewhere, tags.plaintext_len()).is_err());
        assert!(
            BlockTags::decode(&bytes, &key, &tags.binding(), tags.plaintext_len() + 1).is_err()
        );
        for cut in [0, 8, 63, 64, bytes.len() - 1] {
            assert!(
                BlockTags::decode(&bytes[..cut], &key, &tags.binding(), tags.plaintext_len())
                    .is_err()
            );
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; BLOCK_TAG_LEN]);
        assert!(BlockTags::decode(&longer, &key, &tags.binding(), tags.plaintext_len()).is_err());
        // Any flipped byte of the head fails at once; one of a tag fails
        // that block only.
        for i in 0..INDEX_HEAD_LEN as usize {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                BlockTags::decode(&bad, &key, &tags.binding(), tags.plaintext_len()).is_err(),
                "byte {i}"
            );
        }
        let f = file_of(&file);
        let p = Payload::open(&id, &f).unwrap();
        let mut bad = bytes.clone();
        bad[INDEX_HEAD_LEN as usize + 3 * BLOCK_TAG_LEN + 5] ^= 0x80;
        let bad = BlockTags::decode(&bad, &key, &tags.binding(), tags.plaintext_len()).unwrap();
        assert_eq!(blocks(&p, &f, &bad, 3, 1), None);
        assert_eq!(blocks(&p, &f, &bad, 0, 16), None);
        assert_eq!(
            blocks(&p, &f, &bad, 4, 1).as_deref(),
            Some(&pt[4 * B..5 * B])
        );
    }

    #[test]
    fn altered_moved_or_foreign_blocks_do_not_match() {
        let id = AgeIdentity::generate();
        let pt = data(3 * C, 9);
        let (file, tags) = sealed(&id, &pt, 65552);
        let tags = tags.unwrap();
        let start = file.len() - (pt.len() + 3 * TAG_LEN as usize);
        let at = |p: usize| start + (p / 16) * ENCRYPTED_CHUNK_SIZE as usize + (p % 16) * B;
        // A flipped bit in block 20 (chunk 1): that block fails, its
        // neighbours do not.
        let mut flipped = file.clone();
        flipped[at(20) + 100] ^= 4;
        let f = file_of(&flipped);
        let p = Payload::open(&id, &f).unwrap();
        assert_eq!(blocks(&p, &f, &tags, 20, 1), None);
        assert_eq!(blocks(&p, &f, &tags, 16, 16), None);
        assert_eq!(
            blocks(&p, &f, &tags, 19, 1).as_deref(),
            Some(&pt[19 * B..20 * B])
        );
        assert_eq!(
            blocks(&p, &f, &tags, 21, 1).as_deref(),
            Some(&pt[21 * B..22 * B])
        );
        // Two blocks swapped.
        let mut swapped = file.clone();
        swapped[at(1)..at(1) + B].copy_from_slice(&file[at(2)..at(2) + B]);
        swapped[at(2)..at(2) + B].copy_from_slice(&file[at(1)..at(1) + B]);
        let f = file_of(&swapped);
        let p = Payload::open(&id, &f).unwrap();
        assert_eq!(blocks(&p, &f, &tags, 1, 1), None);
        assert_eq!(blocks(&p, &f, &tags, 2, 1), None);
        // ... and with their tags swapped in the index too: a tag names
        // its block's place, so the pair still does not pass.
        let mut index = tags.encode();
        let tag = |p: usize| INDEX_HEAD_LEN as usize + p * BLOCK_TAG_LEN;
        let (t1, t2) = (
            index[tag(1)..tag(2)].to_vec(),
            index[tag(2)..tag(3)].to_vec(),
        );
        index[tag(1)..tag(2)].copy_from_slice(&t2);
        index[tag(2)..tag(3)].copy_from_slice(&t1);
        let key = TagKey::of(&id);
        let moved = BlockTags::decode(&index, &key, &tags.binding(), tags.plaintext_len()).unwrap();
        assert_eq!(blocks(&p, &f, &moved, 1, 1), None);
        assert_eq!(blocks(&p, &f, &moved, 2, 1), None);
        assert_eq!(
            blocks(&p, &f, &moved, 3, 1).as_deref(),
            Some(&pt[3 * B..4 * B])
        );
        // Another seal of the same plaintext: its tags are not this file's.
        let (again, again_tags) = sealed(&id, &pt, 65552);
        let f = file_of(&again);
        let p = Payload::open(&id, &f).unwrap();
        let mut buf = vec![0u8; B];
        let e = p.read_blocks(&f, &tags, 0, 1, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(again_tags.is_some());
        // Ranges outside one chunk or the file are refused.
        let f = file_of(&file);
        let p = Payload::open(&id, &f).unwrap();
        let mut buf = vec![0u8; 2 * C];
        for (first, count) in [(15, 2), (0, 0), (48, 1), (0, 17)] {
            let e = p
                .read_blocks(&f, &tags, first, count, &mut buf)
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{first}+{count}");
        }
        let e = p.read_blocks(&f, &tags, 0, 2, &mut buf[..B]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_block_read_leaves_the_chunk_reader_in_agreement() {
        let id = AgeIdentity::generate();
        let pt = data(C + 3 * B + 7, 11);
        let (file, tags) = sealed(&id, &pt, 1000);
        let tags = tags.unwrap();
        let f = file_of(&file);
        let p = Payload::open(&id, &f).unwrap();
        let mut chunk = vec![0u8; CHUNK_BUFFER];
        let n = p.read_chunk(&f, 1, &mut chunk).unwrap();
        assert_eq!(blocks(&p, &f, &tags, 16, 4).as_deref(), Some(&chunk[..n]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn any_size_and_range_reads_back_the_plaintext(
            len in C + 1..4 * C + 7,
            seed: u64,
            piece in 1usize..70_000,
            pick in any::<proptest::sample::Index>(),
            span in 1u64..=16,
        ) {
            let id = AgeIdentity::generate();
            let pt = data(len, seed);
            let (file, tags) = sealed(&id, &pt, piece);
            let tags = tags.unwrap();
            let f = file_of(&file);
            let p = Payload::open(&id, &f).unwrap();
            let first = pick.index(blocks_of(len as u64) as usize) as u64;
            let count = span.min(BLOCKS_PER_CHUNK - first % BLOCKS_PER_CHUNK)
                .min(blocks_of(len as u64) - first);
            let at = first as usize * B;
            let end = (at + count as usize * B).min(len);
            prop_assert_eq!(blocks(&p, &f, &tags, first, count), Some(pt[at..end].to_vec()));
        }

        #[test]
        fn arbitrary_index_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let key = TagKey::of(&AgeIdentity::generate());
            prop_assert!(BlockTags::decode(&bytes, &key, &Binding::of(b"x"), 10).is_err());
        }
    }
}
