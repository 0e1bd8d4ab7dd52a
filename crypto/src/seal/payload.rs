//! Positional reads of an age payload: one chunk per call, decrypted in
//! place in the caller's buffer.
//!
//! [`Opened`](super::Opened) goes through age's `StreamReader`, which reads
//! into a buffer of its own, decrypts into a new allocation per chunk and
//! copies out; it also needs `&mut self`, so concurrent readers of a file
//! each need a decryptor. The mount reads 64 KiB chunks at random offsets
//! from several threads, so it uses a [`Payload`] instead: age still parses
//! the header, unwraps the file key and checks the header MAC (through
//! [`Capture`], which keeps a copy of the file key it unwrapped); what
//! follows is the STREAM construction of the age spec, done here so that a
//! chunk costs one `pread` into the caller's buffer and one in-place
//! ChaCha20-Poly1305 decryption:
//!
//! ```text
//! payload key = HKDF-SHA256(ikm = file key, salt = 16-byte nonce, info = "payload")
//! chunk i     = ChaCha20-Poly1305(payload key,
//!                                 nonce = 11-byte big-endian i || last ? 0x01 : 0x00,
//!                                 64 KiB of plaintext, or less in the last chunk)
//! ```
//!
//! The last chunk follows from the file length, which [`Payload::open`]
//! authenticates by decrypting the last chunk with the last flag set: a
//! file cut at a chunk boundary has a last chunk sealed without the flag
//! and fails. The tests check every chunk against age's own reader, and
//! tampering against both.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::iter;
use std::os::unix::fs::FileExt;

use age::{DecryptError, Decryptor};
use age_core::format::{FileKey, Stanza};
use age_core::primitives::hkdf;
use age_core::secrecy::ExposeSecret;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use zeroize::Zeroizing;

use super::tags::{Binding, BlockTags, TagKey, Tagger, BLOCKS_PER_CHUNK, BLOCK_SIZE};
use super::{
    decrypt_error, plaintext_len, read_header_bytes, HeaderInfo, CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE,
    NONCE_LEN, TAG_LEN,
};
use crate::wipe::SecretBuf;
use crate::{AgeIdentity, Error, Result};

/// The HKDF label of the payload key (age spec).
const PAYLOAD_KEY_LABEL: &[u8] = b"payload";

/// Bytes of ciphertext a chunk buffer must hold: a full chunk and its tag.
pub const CHUNK_BUFFER: usize = ENCRYPTED_CHUNK_SIZE as usize;

/// An identity that remembers the file key it unwrapped, so the payload
/// key can be derived once age has checked the header MAC with that key.
struct Capture<'a> {
    inner: &'a AgeIdentity,
    key: RefCell<Option<Zeroizing<[u8; 16]>>>,
}

impl age::Identity for Capture<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<std::result::Result<FileKey, DecryptError>> {
        let unwrapped = self.inner.unwrap_stanza(stanza);
        if let Some(Ok(key)) = &unwrapped {
            *self.key.borrow_mut() = Some(Zeroizing::new(*key.expose_secret()));
        }
        unwrapped
    }
}

/// Positional reads of a file by `pread`, as `Read + Seek` (for age's
/// header parser), without moving the descriptor's shared offset.
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for At<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Start(p) => p,
            _ => return Err(io::Error::other("At only seeks from the start")),
        };
        Ok(self.pos)
    }
}

/// Fill `buf` from `file` at `offset`; a file that ends first is a
/// truncated payload (an authentication failure).
fn pread_exact(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "age payload is truncated",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The header of the age file `file` (scanned as [`read_header`](super::read_header) does)
/// and its first bytes through the payload nonce: what a [`Binding`] is
/// made of. No key is needed.
fn read_head(file: &File) -> Result<(HeaderInfo, Vec<u8>)> {
    let (info, mut head) = read_header_bytes(At { file, pos: 0 })?;
    // The header (at most MAX_HEADER_BYTES, scanned above) and the nonce:
    // almost always in what the scan read already.
    let want = (info.header_len + NONCE_LEN) as usize;
    let have = head.len();
    if have < want {
        head.resize(want, 0);
        pread_exact(file, &mut head[have..], have as u64).map_err(super::payload_error)?;
    }
    head.truncate(want);
    Ok((info, head))
}

/// The header of the age file `file` and its [`Binding`], without a key:
/// what a reader that has not unwrapped the file key yet knows the file
/// by. Unlike a file's inode, size and times, which a later file can
/// repeat once this one is gone, no two seals share a binding (each has a
/// fresh file key and nonce), so caches of decrypted bytes are keyed by
/// it. Errors as [`read_header`](super::read_header), or when the file ends inside its nonce.
pub fn read_binding(file: &File) -> Result<(HeaderInfo, Binding)> {
    let (info, head) = read_head(file)?;
    Ok((info, Binding::of(&head)))
}

/// The payload of an opened age file: its key and layout. Holds no file;
/// every read is given the file it was opened from. The key is zeroized
/// when this is dropped.
pub struct Payload {
    aead: ChaCha20Poly1305,
    /// The payload key itself, for the ChaCha20 key stream of
    /// [`Payload::read_blocks`].
    key: Zeroizing<[u8; 32]>,
    /// What ties block tags to this file.
    binding: Binding,
    /// File offset of the first chunk (after the header and the nonce).
    start: u64,
    plaintext_len: u64,
    /// Number of chunks (at least one: an empty file has one empty chunk).
    chunks: u64,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

impl Payload {
    /// Opens the age file `file` (the whole file, from offset 0): checks
    /// the header caps, lets age unwrap the file key and check the header
    /// MAC, derives the payload key and authenticates the file length by
    /// decrypting the last chunk. Errors as [`Opened::open`](super::Opened::open).
    pub fn open(identity: &AgeIdentity, file: &File) -> Result<Payload> {
        let (info, head) = read_head(file)?;
        let total = file.metadata()?.len();
        let plaintext_len = plaintext_len(info.header_len, total)?;
        let capture = Capture {
            inner: identity,
            key: RefCell::new(None),
        };
        let decryptor =
            Decryptor::new_buffered(BufReader::new(At { file, pos: 0 })).map_err(decrypt_error)?;
        // Ok only if the header MAC checked out with the key just captured.
        decryptor
            .decrypt(iter::once(&capture as &dyn age::Identity))
            .map_err(decrypt_error)?;
        let file_key = capture
            .key
            .into_inner()
            .ok_or_else(|| Error::Corrupt("age accepted the header without a file key".into()))?;
        let nonce = &head[info.header_len as usize..];
        let key = Zeroizing::new(hkdf(nonce, PAYLOAD_KEY_LABEL, &file_key[..]));
        let chunks = plaintext_len.div_ceil(CHUNK_SIZE).max(1);
        let payload = Payload {
            aead: ChaCha20Poly1305::new((&*key).into()),
            binding: Binding::of(&head),
            key,
            start: info.header_len + NONCE_LEN,
            plaintext_len,
            chunks,
        };
        let mut last = SecretBuf::new(vec![0u8; CHUNK_BUFFER]);
        payload
            .read_chunk(file, chunks - 1, &mut last)
            .map_err(super::payload_error)?;
        Ok(payload)
    }

    /// Plaintext length (authenticated at open).
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Plaintext bytes of chunk `idx` (0 past the last chunk).
    pub fn chunk_len(&self, idx: u64) -> usize {
        if idx >= self.chunks {
            return 0;
        }
        (self.plaintext_len - idx * CHUNK_SIZE).min(CHUNK_SIZE) as usize
    }

    /// What ties block tags to this file ([`BlockTags::binding`]).
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// The STREAM nonce of chunk `idx`: an 11-byte big-endian counter (a
    /// u64 fills its low 8 bytes), then the last-chunk flag.
    fn chunk_nonce(&self, idx: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[3..11].copy_from_slice(&idx.to_be_bytes());
        nonce[11] = u8::from(idx + 1 == self.chunks);
        nonce
    }

    /// Reads `count` blocks of 4 KiB from block `first` on (all in one
    /// chunk) of `file` into `buf`, checks each against `tags` and only
    /// then decrypts them there with the ChaCha20 key stream at their
    /// offset (see [`super::tags`]). Returns the plaintext length at the
    /// start of `buf`, or `None` when a block does not match its tag:
    /// `buf` then holds ciphertext only, and the caller reads the whole
    /// chunk ([`Payload::read_chunk`]), whose Poly1305 tag decides.
    /// `tags` must be this file's (same binding and length) and the
    /// blocks inside one chunk and the file, or it is `InvalidInput`.
    pub fn read_blocks(
        &self,
        file: &File,
        tags: &BlockTags,
        first: u64,
        count: u64,
        buf: &mut [u8],
    ) -> io::Result<Option<usize>> {
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        if tags.binding() != self.binding || tags.plaintext_len() != self.plaintext_len {
            return Err(invalid("the block tags are another file's".into()));
        }
        let idx = first / BLOCKS_PER_CHUNK;
        let j = first % BLOCKS_PER_CHUNK;
        let chunk_len = self.chunk_len(idx) as u64;
        let from = j * BLOCK_SIZE;
        let to = ((j + count) * BLOCK_SIZE).min(chunk_len);
        if count == 0 || j + count > BLOCKS_PER_CHUNK || from >= to {
            return Err(invalid(format!(
                "blocks {first}..{} are not inside one chunk of the file",
                first + count
            )));
        }
        let len = (to - from) as usize;
        let have = buf.len();
        let buf = buf.get_mut(..len).ok_or_else(|| {
            invalid(format!(
                "a {have}-byte buffer cannot hold {len} bytes of blocks"
            ))
        })?;
        pread_exact(file, buf, self.start + idx * ENCRYPTED_CHUNK_SIZE + from)?;
        for (k, block) in buf.chunks(BLOCK_SIZE as usize).enumerate() {
            if !tags.matches(first + k as u64, block) {
                return Ok(None);
            }
        }
        let mut stream = ChaCha20::new((&*self.key).into(), (&self.chunk_nonce(idx)).into());
        // ChaCha20-Poly1305 keys Poly1305 with key stream block 0 and
        // encrypts from block 1 on.
        stream.seek(64 + from);
        stream.apply_keystream(buf);
        Ok(Some(len))
    }

    /// Reads chunk `idx` of `file` (the file this was opened from) into
    /// `buf` and decrypts it there. `buf` must hold the chunk and its tag
    /// ([`Payload::chunk_len`] + 16 bytes; [`CHUNK_BUFFER`] always does).
    /// Returns the plaintext length, at the start of `buf`. A chunk that
    /// fails authentication gives `InvalidData`
    /// ([`is_auth_failure`](super::is_auth_failure)) and leaves no
    /// plaintext in `buf`.
    pub fn read_chunk(&self, file: &File, idx: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read_sealed_chunk(file, idx, buf)?;
        self.open_chunk(idx, buf)
    }

    /// Reads chunk `idx`'s ciphertext and tag from `file` into the start
    /// of `buf`, still sealed; returns how many bytes that is.
    fn read_sealed_chunk(&self, file: &File, idx: u64, buf: &mut [u8]) -> io::Result<usize> {
        let sealed = self.sealed_chunk(idx, buf.len())?;
        pread_exact(
            file,
            &mut buf[..sealed],
            self.start + idx * ENCRYPTED_CHUNK_SIZE,
        )?;
        Ok(sealed)
    }

    /// Bytes chunk `idx` takes in the file (its ciphertext and tag), if a
    /// buffer of `have` bytes holds them; `InvalidInput` if not, or past
    /// the last chunk.
    fn sealed_chunk(&self, idx: u64, have: usize) -> io::Result<usize> {
        if idx >= self.chunks {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("chunk {idx} is past the end ({} chunks)", self.chunks),
            ));
        }
        let sealed = self.chunk_len(idx) + TAG_LEN as usize;
        if have < sealed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {have}-byte buffer cannot hold a {sealed}-byte chunk"),
            ));
        }
        Ok(sealed)
    }

    /// Decrypts in place chunk `idx`, whose ciphertext and tag begin `buf`
    /// (as [`Payload::read_chunk`] read them).
    fn open_chunk(&self, idx: u64, buf: &mut [u8]) -> io::Result<usize> {
        let sealed = self.sealed_chunk(idx, buf.len())?;
        let len = sealed - TAG_LEN as usize;
        let nonce = self.chunk_nonce(idx);
        let (text, tag) = buf[..sealed].split_at_mut(len);
        let tag = Tag::clone_from_slice(tag);
        self.aead
            .decrypt_in_place_detached(Nonce::from_slice(&nonce), b"", text, &tag)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("chunk {idx} of the age payload fails authentication"),
                )
            })?;
        Ok(len)
    }

    /// Block tags of `file` (the file this was opened from) made after the
    /// fact with `key`, for a version sealed without them: while locked,
    /// by the sweep, or by another envoy. Each chunk's ciphertext is tagged
    /// only once its Poly1305 tag has verified, so the tags vouch for
    /// nothing a seal's would not. `go_on` is asked before each chunk;
    /// `Ok(None)` if it says stop, and for a file of one chunk (which gets
    /// no tags, as at a seal). `InvalidData` if a chunk fails
    /// authentication. The plaintext a check makes is wiped.
    pub fn tag_blocks(
        &self,
        file: &File,
        key: &TagKey,
        mut go_on: impl FnMut() -> bool,
    ) -> io::Result<Option<BlockTags>> {
        if self.chunks < 2 {
            return Ok(None);
        }
        let mut tagger = Tagger::new(io::sink(), Some(key));
        let mut head = vec![0u8; self.start as usize];
        pread_exact(file, &mut head, 0)?;
        tagger.write_all(&head)?;
        let mut buf = SecretBuf::new(vec![0u8; CHUNK_BUFFER]);
        for idx in 0..self.chunks {
            if !go_on() {
                return Ok(None);
            }
            let sealed = self.read_sealed_chunk(file, idx, &mut buf)?;
            tagger.write_all(&buf[..sealed])?;
            self.open_chunk(idx, &mut buf)?;
        }
        let (_, tags) = tagger.finish();
        Ok(tags.filter(|t| t.binding() == self.binding && t.plaintext_len() == self.plaintext_len))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read_header, seal_stream, Opened};
    use super::*;
    use crate::AgeRecipient;
    use proptest::prelude::*;
    use std::io::{Cursor, Write};

    const C: usize = CHUNK_SIZE as usize;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        use rand::{rngs::StdRng, RngCore, SeedableRng};
        let mut v = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn sealed(r: &AgeRecipient, plaintext: &[u8]) -> Vec<u8> {
        seal_stream(std::slice::from_ref(r), plaintext, Vec::new())
            .unwrap()
            .1
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// Every chunk through `Payload`, concatenated.
    fn read_all(p: &Payload, f: &File) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; CHUNK_BUFFER];
        for idx in 0..p.plaintext_len().div_ceil(CHUNK_SIZE) {
            let n = p.read_chunk(f, idx, &mut buf)?;
            assert_eq!(n, p.chunk_len(idx));
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }

    /// What age's own reader makes of `file`.
    fn by_age(id: &AgeIdentity, file: &[u8]) -> Option<Vec<u8>> {
        let mut o = Opened::open(id, Cursor::new(file)).ok()?;
        let mut out = Vec::new();
        o.read_to_end(&mut out).ok()?;
        Some(out)
    }

    /// A damaged file must fail at open or at the damaged chunk; a chunk
    /// that does decrypt must be the original's.
    fn assert_rejected(id: &AgeIdentity, file: &[u8], original: &[u8], what: &str) {
        let f = file_of(file);
        let Ok(p) = Payload::open(id, &f) else {
            return;
        };
        let mut buf = vec![0u8; CHUNK_BUFFER];
        let mut failed = false;
        for idx in 0..p.plaintext_len().div_ceil(CHUNK_SIZE) {
            match p.read_chunk(&f, idx, &mut buf) {
                Ok(n) => {
                    let at = idx as usize * C;
                    assert_eq!(&buf[..n], &original[at..at + n], "{what}: wrong plaintext");
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
                    failed = true;
                }
            }
        }
        assert!(failed, "{what}: read back without an error");
    }

    #[test]
    fn every_chunk_matches_ages_reader_at_edge_sizes() {
        let id = AgeIdentity::generate();
        let r = id.to_public();
        for len in [0, 1, C - 1, C, C + 1, 2 * C, 3 * C + 5] {
            let pt = data(len, len as u64);
            let file = sealed(&r, &pt);
            let f = file_of(&file);
            let p = Payload::open(&id, &f).unwrap();
            assert_eq!(p.plaintext_len(), len as u64);
            assert_eq!(read_all(&p, &f).unwrap(), pt, "{len} bytes");
            assert_eq!(by_age(&id, &file).unwrap(), pt);
            assert_eq!(p.chunk_len(len.div_ceil(C).max(1) as u64), 0);
        }
    }

    #[test]
    fn the_binding_is_read_without_a_key_and_no_two_seals_share_it() {
        let id = AgeIdentity::generate();
        let pt = data(C + 10, 7);
        let (one, two) = (sealed(&id.to_public(), &pt), sealed(&id.to_public(), &pt));
        let (f1, f2) = (file_of(&one), file_of(&two));
        let (info, b1) = read_binding(&f1).unwrap();
        assert_eq!(info.header_len, read_header(&one[..]).unwrap().header_len);
        assert_eq!(b1, Payload::open(&id, &f1).unwrap().binding());
        // The same plaintext, the same recipient: another file key and nonce.
        let (_, b2) = read_binding(&f2).unwrap();
        assert_ne!(b1, b2);
        // It covers the nonce: a file that ends inside it has none.
        let cut = file_of(&one[..info.header_len as usize + NONCE_LEN as usize - 1]);
        assert!(read_binding(&cut).is_err());
        assert!(matches!(read_binding(&file_of(b"")), Err(Error::NotAge)));
    }

    #[test]
    fn a_stranger_cannot_open_and_bad_requests_are_refused() {
        let id = AgeIdentity::generate();
        let f = file_of(&sealed(&id.to_public(), &data(C + 10, 1)));
        let stranger = AgeIdentity::generate();
        assert!(matches!(
            Payload::open(&stranger, &f),
            Err(Error::NotARecipient)
        ));
        let p = Payload::open(&id, &f).unwrap();
        let mut small = vec![0u8; C];
        // Chunk 0 needs C + 16 bytes; chunk 1 fits.
        let e = p.read_chunk(&f, 0, &mut small).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(p.read_chunk(&f, 1, &mut small).unwrap(), 10);
        let e = p.read_chunk(&f, 2, &mut small).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(matches!(
            Payload::open(&id, &file_of(b"not age at all")),
            Err(Error::NotAge)
        ));
    }

    #[test]
    fn flipped_bytes_truncations_and_moved_chunks_are_rejected() {
        let id = AgeIdentity::generate();
        let r = id.to_public();
        let pt = data(2 * C + 100, 2);
        let file = sealed(&r, &pt);
        let body = file.len() - (pt.len() + 3 * TAG_LEN as usize);
        // Every byte of the header and nonce, then a sample of the payload
        // and all of its last tag.
        let sample = (0..body)
            .chain((body..file.len()).step_by(499))
            .chain(file.len() - 40..file.len());
        for i in sample {
            let mut bad = file.clone();
            bad[i] ^= 1 << (i % 8);
            assert_rejected(&id, &bad, &pt, &format!("flip at {i}"));
        }
        let e = ENCRYPTED_CHUNK_SIZE as usize;
        for len in [
            body,
            body + 1,
            body + e,
            body + e + 1,
            body + 2 * e,
            file.len() - 1,
        ] {
            assert_rejected(&id, &file[..len], &pt, &format!("cut to {len}"));
        }
        let mut swapped = file.clone();
        swapped[body..body + e].copy_from_slice(&file[body + e..body + 2 * e]);
        swapped[body + e..body + 2 * e].copy_from_slice(&file[body..body + e]);
        assert_rejected(&id, &swapped, &pt, "chunks 0 and 1 swapped");
        let mut extra = file.clone();
        extra.push(0);
        assert_rejected(&id, &extra, &pt, "one byte more");
        // A chunk of another file (same recipient) does not pass either.
        let other = sealed(&r, &pt);
        let mut mixed = file.clone();
        mixed[body..body + e].copy_from_slice(&other[body..body + e]);
        assert_rejected(&id, &mixed, &pt, "a chunk of another file");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn any_size_reads_back_like_ages_reader(len in 0usize..4 * C + 7, seed: u64) {
            let id = AgeIdentity::generate();
            let pt = data(len, seed);
            let file = sealed(&id.to_public(), &pt);
            let f = file_of(&file);
            let p = Payload::open(&id, &f).unwrap();
            prop_assert_eq!(read_all(&p, &f).unwrap(), by_age(&id, &file).unwrap());
        }
    }
}
