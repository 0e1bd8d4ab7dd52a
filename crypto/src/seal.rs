//! Sealing store files with age (v1, X25519) and opening them again.
//!
//! A store file is a plain age v1 binary file, readable with the `age` CLI
//! and the matching identity. Three layers:
//!
//! - **Header caps, before age parses anything.** [`scan_header`] walks the
//!   header text by itself (magic line, `-> ` stanza lines, body lines, the
//!   final `--- <mac>` line) and refuses headers longer than
//!   [`MAX_HEADER_BYTES`] or with more than [`MAX_STANZAS`] stanzas. Only a
//!   header that passed this scan is handed to age's buffered parser.
//! - **Length arithmetic.** [`plaintext_len`] and [`ciphertext_len`] convert
//!   between plaintext and file sizes over age's STREAM layout (a 16-byte
//!   nonce, then chunks of [`CHUNK_SIZE`] plaintext bytes plus a 16-byte tag).
//! - **Streaming.** [`Sealer`] encrypts as it is written; [`Opened`] is a
//!   seekable plaintext view that authenticates the file length when it is
//!   opened and every chunk as it is read. [`Payload`] reads one chunk at a
//!   time by position, decrypting in the caller's buffer, for readers that
//!   jump around from several threads (the mount).
//!
//! # Errors while reading
//!
//! [`Opened`] implements [`Read`] and [`Seek`]. A chunk that fails
//! authentication (tampered, truncated, reordered) makes `read` or `seek`
//! return an [`io::Error`] of kind [`io::ErrorKind::InvalidData`]; the bytes
//! of such a chunk are never returned. [`is_auth_failure`] recognises these
//! errors so that a file system can turn them into `EIO`. After any error
//! other than `Interrupted`, an [`Opened`] refuses further reads and seeks
//! (also with `InvalidData`): open the file again to read other ranges.

use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::iter;

use age::stream::{StreamReader, StreamWriter};
use age::{DecryptError, Decryptor, Encryptor};
use zeroize::Zeroizing;

use crate::{AgeIdentity, AgeRecipient, Error, Result};

/// The first line of every age v1 file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// Largest age header (magic line through the `--- <mac>` line) we parse.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest number of recipient stanzas in a header we parse.
pub const MAX_STANZAS: usize = 256;
/// Largest recipient set [`Sealer`] seals to. age adds one random "grease"
/// stanza to every header it writes, so this is one less than [`MAX_STANZAS`].
pub const MAX_RECIPIENTS: usize = MAX_STANZAS - 1;
/// Plaintext bytes per STREAM chunk.
pub const CHUNK_SIZE: u64 = 64 * 1024;

/// Bytes of the payload nonce that follows the header.
const NONCE_LEN: u64 = 16;
/// Bytes of the Poly1305 tag at the end of every chunk.
const TAG_LEN: u64 = 16;
/// [`TAG_LEN`] as a buffer size: a chunk read by [`Payload::read_chunk`]
/// needs this much room past its plaintext.
pub const TAG_BYTES: usize = TAG_LEN as usize;
/// Ciphertext bytes of a full chunk.
const ENCRYPTED_CHUNK_SIZE: u64 = CHUNK_SIZE + TAG_LEN;
/// Characters of the base64 header MAC on the `---` line.
const ENCODED_MAC_LEN: usize = 43;
/// Characters of a full stanza body line.
const BODY_LINE_LEN: usize = 64;

/// Returns true if `prefix` starts with the age v1 magic line.
pub fn is_age(prefix: &[u8]) -> bool {
    prefix.starts_with(AGE_MAGIC)
}

/// What [`scan_header`] learned about a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Bytes from the start of the file through the newline of the `---` line.
    pub header_len: u64,
    /// Number of recipient stanzas (including age's grease stanza).
    pub stanzas: usize,
}

/// Incremental header scanner: consumes complete lines and remembers where
/// it stopped, so [`read_header`] never rescans bytes it has already seen.
#[derive(Debug, Default)]
struct HeaderScanner {
    /// Offset of the first byte not yet scanned (always a line start).
    pos: usize,
    /// Stanzas seen so far.
    stanzas: usize,
    /// True while body lines may follow (inside a stanza whose body has not
    /// yet ended with a short line).
    body_open: bool,
}

impl HeaderScanner {
    /// Scans the complete lines of `buf` (the file from its first byte) that
    /// have not been scanned yet. Returns the header's shape once the `---`
    /// line has been seen, `None` if more bytes are needed.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<HeaderInfo>> {
        let window = &buf[..buf.len().min(MAX_HEADER_BYTES)];
        if self.pos == 0 {
            if window.len() < AGE_MAGIC.len() {
                return if AGE_MAGIC.starts_with(window) {
                    Ok(None)
                } else {
                    Err(Error::NotAge)
                };
            }
            if !is_age(window) {
                return Err(Error::NotAge);
            }
            self.pos = AGE_MAGIC.len();
        }
        while let Some(nl) = window[self.pos..].iter().position(|&b| b == b'\n') {
            let line = &window[self.pos..self.pos + nl];
            self.pos += nl + 1;
            if let Some(args) = line.strip_prefix(b"-> ") {
                self.stanzas += 1;
                if self.stanzas > MAX_STANZAS {
                    return Err(Error::TooManyStanzas);
                }
                if !is_stanza_args(args) {
                    return Err(corrupt_header("malformed recipient stanza line"));
                }
                self.body_open = true;
            } else if let Some(mac) = line.strip_prefix(b"--- ") {
                if self.stanzas == 0 {
                    return Err(corrupt_header("header has no recipient stanzas"));
                }
                if mac.len() != ENCODED_MAC_LEN || !mac.iter().copied().all(is_base64_char) {
                    return Err(corrupt_header("malformed header MAC line"));
                }
                return Ok(Some(HeaderInfo {
                    header_len: self.pos as u64,
                    stanzas: self.stanzas,
                }));
            } else {
                if !self.body_open {
                    return Err(corrupt_header("unexpected line in header"));
                }
                if line.len() > BODY_LINE_LEN || !line.iter().copied().all(is_base64_char) {
                    return Err(corrupt_header("malformed stanza body line"));
                }
                // A body ends with its first short (possibly empty) line.
                self.body_open = line.len() == BODY_LINE_LEN;
            }
        }
        Ok(None)
    }

    /// The error for a header whose end was not found in `available` bytes,
    /// when no more bytes will come.
    fn incomplete(available: usize) -> Error {
        if available >= MAX_HEADER_BYTES {
            Error::HeaderTooLarge
        } else {
            Error::Truncated("the file ends inside its header".into())
        }
    }
}

/// `-> ` is followed by a tag and arguments: one or more runs of visible
/// ASCII separated by single spaces.
fn is_stanza_args(args: &[u8]) -> bool {
    args.split(|&b| b == b' ')
        .all(|arg| !arg.is_empty() && arg.iter().all(|b| (0x21..=0x7e).contains(b)))
}

/// Characters of unpadded standard base64.
fn is_base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

fn corrupt_header(reason: &str) -> Error {
    Error::Corrupt(reason.to_owned())
}

/// Scans the age header at the start of `prefix` without the age parser,
/// enforcing [`MAX_HEADER_BYTES`] and [`MAX_STANZAS`].
///
/// `prefix` may be any prefix of the file (or the whole file). Errors:
/// [`Error::NotAge`] if it does not start with [`AGE_MAGIC`];
/// [`Error::TooManyStanzas`] as soon as stanza number `MAX_STANZAS + 1`
/// starts; [`Error::HeaderTooLarge`] if no header end is found in the first
/// `MAX_HEADER_BYTES` bytes; [`Error::Truncated`] if `prefix` is shorter than
/// that and ends before the header does (give it more bytes, or the file is
/// truncated); [`Error::Corrupt`] for lines that cannot be part of an age header.
pub fn scan_header(prefix: &[u8]) -> Result<HeaderInfo> {
    HeaderScanner::default()
        .scan(prefix)?
        .ok_or_else(|| HeaderScanner::incomplete(prefix.len()))
}

/// Reads an age header from `input` (at most [`MAX_HEADER_BYTES`] + 1
/// bytes, possibly a little of the payload after it) and scans it like
/// [`scan_header`]. The position of `input` afterwards is unspecified.
///
/// Unlike [`scan_header`], which may be given a prefix, this sees the whole
/// input, so an input that ends before the magic line is complete (an empty
/// file, say) is [`Error::NotAge`], matching [`is_age`]; an input that starts
/// with the magic line but ends inside the header is [`Error::Truncated`].
pub fn read_header<R: Read>(input: R) -> Result<HeaderInfo> {
    read_header_bytes(input).map(|(info, _)| info)
}

/// [`read_header`], and the bytes it read: the header and whatever of the
/// payload came with it (reads are of 4 KiB).
pub(crate) fn read_header_bytes<R: Read>(input: R) -> Result<(HeaderInfo, Vec<u8>)> {
    let mut input = input.take(MAX_HEADER_BYTES as u64 + 1);
    let mut scanner = HeaderScanner::default();
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            // The whole input is here: if it does not even start with the
            // magic line it is not age (an empty file included), as `is_age`
            // would say; otherwise its header is cut short.
            return Err(if is_age(&buf) {
                HeaderScanner::incomplete(buf.len())
            } else {
                Error::NotAge
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(info) = scanner.scan(&buf)? {
            return Ok((info, buf));
        }
    }
}

/// Plaintext length of an age file of `ciphertext_len` bytes whose header is
/// `header_len` bytes long.
///
/// Pure arithmetic over the STREAM layout; it does not authenticate anything.
/// Errors if no plaintext length gives this file size: the payload is
/// shorter than a nonce and one tag (32 bytes), the last chunk is shorter than
/// its tag, or an empty last chunk follows other chunks (age never writes one).
pub fn plaintext_len(header_len: u64, ciphertext_len: u64) -> Result<u64> {
    let body = ciphertext_len
        .checked_sub(header_len)
        .filter(|&b| b >= NONCE_LEN + TAG_LEN)
        .ok_or_else(|| {
            Error::Truncated(format!(
                "{ciphertext_len} bytes cannot hold a {header_len}-byte header, \
                 a nonce and a tag"
            ))
        })?;
    let payload = body - NONCE_LEN;
    // At least one: payload >= TAG_LEN > 0.
    let chunks = payload.div_ceil(ENCRYPTED_CHUNK_SIZE);
    let last = payload - (chunks - 1) * ENCRYPTED_CHUNK_SIZE;
    if last < TAG_LEN || (last == TAG_LEN && chunks > 1) {
        return Err(Error::Corrupt(format!(
            "a payload of {payload} bytes is impossible: the last chunk would be \
             {last} bytes"
        )));
    }
    Ok(payload - chunks * TAG_LEN)
}

/// Total age file length for `plaintext_len` bytes under a `header_len`-byte
/// header. The inverse of [`plaintext_len`]. Saturates at `u64::MAX`.
pub fn ciphertext_len(header_len: u64, plaintext_len: u64) -> u64 {
    let chunks = plaintext_len.div_ceil(CHUNK_SIZE).max(1);
    header_len
        .saturating_add(NONCE_LEN)
        .saturating_add(plaintext_len)
        .saturating_add(chunks.saturating_mul(TAG_LEN))
}

/// Returns true if `e` (from [`Opened`]'s `read` or `seek`) means the
/// ciphertext failed authentication: it was altered or truncated. A file
/// system should answer such a read with `EIO`.
pub fn is_auth_failure(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
}

/// A streaming age encryptor to a set of X25519 recipients.
///
/// Write plaintext into it, then call [`Sealer::finish`]: without `finish`
/// the last chunk is never written and the file does not open.
pub struct Sealer<W: Write> {
    inner: StreamWriter<W>,
}

impl<W: Write> Sealer<W> {
    /// Writes the age header for `recipients` to `out` and returns the
    /// encryptor. Errors: [`Error::NoRecipients`] for an empty set,
    /// [`Error::TooManyRecipients`] above [`MAX_RECIPIENTS`].
    pub fn new(recipients: &[AgeRecipient], out: W) -> Result<Self> {
        Self::with_shares(recipients, None, out)
    }

    /// [`Sealer::new`], wrapping the file key with a share from `pool` for
    /// each recipient that has one ready (the same stanza, with the key
    /// agreement done ahead; see [`crate::share`]).
    pub fn with_shares(
        recipients: &[AgeRecipient],
        pool: Option<&crate::share::SharePool>,
        out: W,
    ) -> Result<Self> {
        if recipients.is_empty() {
            return Err(Error::NoRecipients);
        }
        if recipients.len() > MAX_RECIPIENTS {
            return Err(Error::TooManyRecipients(recipients.len()));
        }
        let shares: Vec<Option<crate::share::Share>> = recipients
            .iter()
            .map(|r| pool.and_then(|p| p.take(r)))
            .collect();
        let wrappers = recipients.iter().zip(&shares).map(|(r, s)| match s {
            Some(s) => s as &dyn age::Recipient,
            None => r as &dyn age::Recipient,
        });
        let encryptor =
            Encryptor::with_recipients(wrappers).map_err(|e| Error::Seal(e.to_string()))?;
        Ok(Self {
            inner: encryptor.wrap_output(out)?,
        })
    }

    /// Encrypts and writes the last chunk and returns the output.
    pub fn finish(self) -> Result<W> {
        Ok(self.inner.finish()?)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Seals everything `plaintext` yields to `recipients` onto `out`. Returns the
/// number of plaintext bytes and the output.
pub fn seal_stream<R: Read, W: Write>(
    recipients: &[AgeRecipient],
    mut plaintext: R,
    out: W,
) -> Result<(u64, W)> {
    let mut sealer = Sealer::new(recipients, out)?;
    // One chunk at a time, through a buffer that is wiped afterwards.
    let mut buf = crate::wipe::SecretBuf::new(vec![0u8; CHUNK_SIZE as usize]);
    let mut total = 0u64;
    loop {
        let n = match plaintext.read(&mut buf[..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        sealer.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, sealer.finish()?))
}

/// An opened age file: a seekable view of its plaintext.
///
/// [`Opened::open`] checks the header caps, unwraps the file key with the
/// identity, and authenticates the file length by decrypting the last chunk,
/// so [`Opened::plaintext_len`] can be trusted. Reads and seeks then decrypt
/// chunk by chunk; see the [module docs](self) for how failures surface.
/// Reading at or past the end returns `Ok(0)`.
pub struct Opened<R: Read + Seek> {
    reader: StreamReader<BufReader<R>>,
    header_len: u64,
    plaintext_len: u64,
    /// Current plaintext position (may be past the end after a seek).
    pos: u64,
    /// Set after the age reader failed: it cannot be trusted to resume
    /// (it keeps the rejected chunk buffered), so every later call fails.
    failed: bool,
}

impl<R: Read + Seek> Opened<R> {
    /// Opens the age file that starts at the current position of `input` and
    /// runs to its end.
    ///
    /// Errors: [`Error::NotAge`], [`Error::HeaderTooLarge`],
    /// [`Error::TooManyStanzas`], [`Error::Truncated`] and [`Error::Corrupt`]
    /// for bad files; [`Error::NotARecipient`] if `identity` opens none of the
    /// stanzas (which is also what a tampered X25519 stanza looks like);
    /// [`Error::Io`] for errors of `input` itself.
    pub fn open(identity: &AgeIdentity, mut input: R) -> Result<Self> {
        let start = input.stream_position()?;
        let info = read_header(&mut input)?;
        let end = input.seek(SeekFrom::End(0))?;
        let total = end
            .checked_sub(start)
            .ok_or_else(|| Error::Truncated("the file shrank while it was opened".into()))?;
        let expected_len = plaintext_len(info.header_len, total)?;
        input.seek(SeekFrom::Start(start))?;

        let decryptor = Decryptor::new_buffered(BufReader::new(input)).map_err(decrypt_error)?;
        let mut reader = decryptor
            .decrypt(iter::once(identity as &dyn age::Identity))
            .map_err(decrypt_error)?;
        // Seeking to the end makes age decrypt the last chunk *as* the last
        // chunk, which authenticates the length of the file.
        let len = reader.seek(SeekFrom::End(0)).map_err(payload_error)?;
        reader.seek(SeekFrom::Start(0)).map_err(payload_error)?;
        if len != expected_len {
            return Err(Error::Corrupt(format!(
                "payload holds {len} bytes but the header scan implies {expected_len}"
            )));
        }
        Ok(Self {
            reader,
            header_len: info.header_len,
            plaintext_len: len,
            pos: 0,
            failed: false,
        })
    }

    /// Length of the plaintext in bytes (authenticated at open).
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Length of the age header in bytes.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }
}

impl<R: Read + Seek> Read for Opened<R> {
    /// Reads plaintext. A chunk that fails authentication gives an error of
    /// kind [`io::ErrorKind::InvalidData`] (see [`is_auth_failure`]).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check_failed()?;
        if buf.is_empty() || self.pos >= self.plaintext_len {
            return Ok(0);
        }
        let n = match self.reader.read(buf) {
            Ok(0) => {
                // The length was authenticated at open: the input changed since.
                self.failed = true;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "age payload ended before its authenticated length",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failed = true;
                return Err(auth_io_error(e));
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for Opened<R> {
    /// Seeks in the plaintext. Seeking into the middle of a chunk decrypts
    /// that chunk, so an authentication failure can surface here too.
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.plaintext_len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        }
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        self.check_failed()?;
        if let Err(e) = self
            .reader
            .seek(SeekFrom::Start(target.min(self.plaintext_len)))
        {
            self.failed = true;
            return Err(auth_io_error(e));
        }
        self.pos = target;
        Ok(target)
    }
}

impl<R: Read + Seek> Opened<R> {
    fn check_failed(&self) -> io::Result<()> {
        if self.failed {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an earlier read of this age file failed; open it again",
            ))
        } else {
            Ok(())
        }
    }
}

/// Opens `input` with `identity` and reads the whole plaintext into memory.
/// For small files and tests: any authentication failure is an
/// [`Error::Corrupt`], never partial data.
pub fn open_to_vec<R: Read + Seek>(identity: &AgeIdentity, input: R) -> Result<Zeroizing<Vec<u8>>> {
    let mut opened = Opened::open(identity, input)?;
    let len = usize::try_from(opened.plaintext_len())
        .map_err(|_| Error::Corrupt("plaintext does not fit in memory".into()))?;
    // Sized up front so the buffer never reallocates and leaves copies behind.
    let mut plaintext = Zeroizing::new(vec![0u8; len]);
    opened
        .read_exact(&mut plaintext[..])
        .map_err(payload_error)?;
    Ok(plaintext)
}

/// Maps age's header and key-unwrapping errors.
fn decrypt_error(e: DecryptError) -> Error {
    match e {
        DecryptError::NoMatchingKeys => Error::NotARecipient,
        DecryptError::InvalidMac => {
            Error::Corrupt("header MAC does not match: the header was altered".into())
        }
        DecryptError::InvalidHeader => Error::Corrupt("malformed age header".into()),
        // The magic line was checked by the scan, so age falling back to
        // "unknown format" means a v1 header it could not parse.
        DecryptError::UnknownFormat => Error::Corrupt("malformed age header".into()),
        DecryptError::DecryptionFailed | DecryptError::KeyDecryptionFailed => {
            Error::Corrupt("a recipient stanza failed to decrypt".into())
        }
        DecryptError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Error::Truncated("the file ends inside its header or nonce".into())
        }
        DecryptError::Io(e) => Error::Io(e),
        other => Error::Corrupt(other.to_string()),
    }
}

/// Maps an error from reading or seeking the payload.
fn payload_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::InvalidData => Error::Corrupt(
            "a payload chunk fails authentication: the file was altered or truncated".into(),
        ),
        io::ErrorKind::UnexpectedEof => Error::Truncated("the payload is cut short".into()),
        _ => Error::Io(e),
    }
}

/// Normalises age's stream errors: a stream that ends before its last chunk
/// is an authentication failure too, so it becomes `InvalidData`.
fn auth_io_error(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(io::ErrorKind::InvalidData, "age payload is truncated")
    } else {
        e
    }
}

mod payload;
pub mod tags;
pub use payload::{read_binding, Payload, CHUNK_BUFFER};

#[cfg(test)]
mod tests;
