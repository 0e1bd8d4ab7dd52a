//! The sealing pipeline of the store: plaintext in, age ciphertext out into
//! a temp file, hashed and (with the tag key) block-tagged on the way.
//!
//! It owns [`Store::seal`] and its forms (pending, deferred, streamed), the
//! [`Seal`] they return, [`SealStream`] for a file sealed as it is
//! written, [`seal_into`], the sink the ciphertext goes through and
//! [`pump`], which copies plaintext through a buffer it wipes. Putting a
//! sealed temp file in place is the store's (`mod.rs`) or, for a seal that
//! waits, `waiting`'s; plaintext never reaches the disk here.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use lockbox_crypto::digest::HashingWriter;
use lockbox_crypto::seal::tags::{Binding, BlockTags, TagKey, Tagger};
use lockbox_crypto::seal::{self, Sealer};
use lockbox_crypto::share::SharePool;

use crate::name::Name;
use crate::offload::OffloadedSink;
use crate::sealed::{Base, Placed, Sealed};
use crate::Error;

use super::waiting::mark_complete;
use super::{Pending, SealAttrs, SealTo, StagedFile, Store};

/// A seal through the mount, done: what it sealed, its block tags when
/// it kept some, and the journal entry to drop once the caller answered.
pub struct Seal<'a> {
    /// What was sealed.
    pub sealed: Sealed,
    /// The block tags written for it (also in `tags/<name>`).
    pub tags: Option<Arc<BlockTags>>,
    /// The new file's binding (see `lockbox_crypto::seal::tags`), when it
    /// was sealed with the tag key (while unlocked): unlike its inode,
    /// size and times, which a later file can repeat, no other file has
    /// it, so the mount keys what it caches of the file by it.
    pub binding: Option<Binding>,
    /// The new version's file system metadata, when the seal had it at
    /// hand (a seal waiting for its round): the mount's version check
    /// then needs no `stat` of its own.
    pub metadata: Option<fs::Metadata>,
    /// Its journal entry, made when this is dropped.
    pub recorded: Pending<'a>,
    /// Where the journal placed it, when it placed it
    /// ([`Journal::place`](super::Journal::place)): under another name when
    /// a version that arrived during the write keeps the name.
    pub placed: Option<Placed>,
}

/// Give a sealed temp file the modification time its version shows; if
/// the file system refuses, the version keeps the time of its seal.
pub(super) fn set_mtime_of(file: &File, t: SystemTime) {
    if let Err(e) = file.set_modified(t) {
        tracing::debug!("cannot set the time of a sealed temp file: {e}");
    }
}

/// Seal everything `plaintext` yields to `recipients` into `file` (the
/// ciphertext, hashed on the way). More than `max_size` bytes of plaintext
/// → [`Error::TooLarge`] (`name` is for the message).
pub fn seal_into(
    file: &mut File,
    name: &Name,
    plaintext: impl Read,
    recipients: &SealTo,
    shares: Option<&SharePool>,
    max_size: u64,
) -> Result<Sealed, Error> {
    seal_tagged(file, name, plaintext, recipients, shares, max_size).map(|(sealed, _)| sealed)
}

/// A seal's binding and block tags: what its [`Tagger`] found out about
/// the file it wrote.
pub(super) struct SealTags {
    /// Its binding, when it was sealed with the tag key.
    pub(super) binding: Option<Binding>,
    /// Its block tags, when it was, and has more than one chunk.
    pub(super) tags: Option<BlockTags>,
}

impl SealTags {
    /// What `tagger` found, and the writer under it.
    fn of<W: Write>(tagger: Tagger<W>) -> (W, SealTags) {
        let binding = tagger.binding();
        let (inner, tags) = tagger.finish();
        (inner, SealTags { binding, tags })
    }
}

/// [`seal_into`], and what its [`Tagger`] found out (block tags when
/// `recipients` carries the tag key).
pub(super) fn seal_tagged(
    file: &mut File,
    name: &Name,
    plaintext: impl Read,
    recipients: &SealTo,
    shares: Option<&SharePool>,
    max_size: u64,
) -> Result<(Sealed, SealTags), Error> {
    let mut limited = plaintext.take(max_size.saturating_add(1));
    // Past 1 MiB the ciphertext is hashed, tagged and written on a second
    // thread while this one encrypts.
    let dup = file.try_clone().map_err(sink_error)?;
    let mut sealer = Sealer::with_shares(
        &recipients.keys,
        shares,
        OffloadedSink::new(sealing_sink(dup, recipients.tags.as_deref()), 1 << 20),
    )?;
    let n = pump(&mut limited, &mut sealer)?;
    if n > max_size {
        return Err(Error::TooLarge {
            name: name.to_string(),
            limit: max_size,
        });
    }
    let hasher = sealer.finish()?.finish().map_err(sink_error)?;
    let (tagger, hash, ciphertext_len) = hasher.finish();
    let sealed = Sealed {
        plaintext_len: n,
        ciphertext_len,
        hash,
        envoys: recipients.envoys.clone(),
        executable: false,
    };
    Ok((sealed, SealTags::of(tagger).1))
}

/// How a write into a store temp file fails.
pub(super) fn sink_error(e: io::Error) -> Error {
    Error::io("write", Path::new("the store's temp file"), e)
}

/// What a seal's ciphertext goes through.
pub(super) type Sink = HashingWriter<Tagger<EarlyWriteback<File>>>;

/// Where a seal's ciphertext goes: hashed, tagged with `key` if there is
/// one, then into `file`, whose writeback starts early.
pub(super) fn sealing_sink(file: File, key: Option<&TagKey>) -> Sink {
    HashingWriter::new(Tagger::new(EarlyWriteback::new(file), key))
}

/// A seal in progress whose plaintext arrives in pieces (see
/// [`Store::begin_stream`]). Only ciphertext reaches the disk; dropped
/// unfinished, its temp file is removed.
pub struct SealStream {
    pub(super) staged: StagedFile,
    pub(super) sealer: Sealer<OffloadedSink<Sink>>,
    pub(super) len: u64,
    pub(super) envoys: Vec<String>,
}

impl SealStream {
    /// Plaintext bytes sealed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seal `data` as the next bytes of the file.
    pub fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write_all(data).map_err(sink_error)
    }

    /// Seal the last chunk; the complete temp file, open, what it is, and
    /// what its tagger found (block tags if it was begun with the tag key).
    fn finish(self) -> Result<(StagedFile, File, Sealed, SealTags), Error> {
        let SealStream {
            staged,
            sealer,
            len,
            envoys,
        } = self;
        let hasher = sealer.finish()?.finish().map_err(sink_error)?;
        let (tagger, hash, ciphertext_len) = hasher.finish();
        let (writeback, tagged) = SealTags::of(tagger);
        let sealed = Sealed {
            plaintext_len: len,
            ciphertext_len,
            hash,
            envoys,
            executable: false,
        };
        Ok((staged, writeback.file, sealed, tagged))
    }

    /// Give up the seal and get back what was written, decrypted with
    /// `identity` (one of the recipients) into memory; for a writer that
    /// turns out not to write from start to end. The temp file is removed.
    pub fn into_plaintext(
        self,
        identity: &lockbox_crypto::AgeIdentity,
    ) -> Result<crate::pages::Pages, Error> {
        let len = self.len;
        let (staged, mut file, _, _) = self.finish()?;
        file.rewind()
            .map_err(|e| Error::io("read", &staged.path, e))?;
        let mut opened = seal::Opened::open(identity, file)?;
        let mut pages = crate::pages::Pages::new();
        pages
            .fill_from(&mut opened, len)
            .map_err(|e| Error::io("read back", &staged.path, e))?;
        Ok(pages)
    }
}

impl Write for SealStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.sealer.write(data)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes of a seal written between two starts of their writeback.
pub(super) const WRITEBACK_STEP: u64 = 8 << 20;

/// A store temp file being written, whose ciphertext the disk starts
/// writing every [`WRITEBACK_STEP`] bytes instead of at the sync. On a
/// machine with much memory the kernel would keep a whole 1 GiB seal dirty
/// until the `fsync`, and the disk would only start once the encryption
/// had ended; this way the two overlap. `POSIX_FADV_DONTNEED` over what was
/// written starts that range's writeback without waiting for it (and lets
/// the kernel drop those pages once clean: the mount reads a store file
/// rarely right after sealing it). Small seals never reach a step.
pub(super) struct EarlyWriteback<F> {
    pub(super) file: F,
    pub(super) written: u64,
    pub(super) started: u64,
}

impl EarlyWriteback<File> {
    fn new(mut file: File) -> Self {
        let at = file.stream_position().unwrap_or(0);
        EarlyWriteback {
            file,
            written: at,
            started: at,
        }
    }
}

impl Write for EarlyWriteback<File> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            let len = std::num::NonZeroU64::new(self.written - self.started);
            // Advice only: a failure changes nothing but the timing.
            let _ =
                rustix::fs::fadvise(&self.file, self.started, len, rustix::fs::Advice::DontNeed);
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Copy plaintext from `src` into `dst` through a buffer that is zeroized
/// afterwards. Read errors and write errors stay apart: the first is the
/// source's fault, the second the store's.
///
/// The 64 KiB buffer is kept per thread and only the part a copy used is
/// wiped after it, so a small file's seal neither allocates nor clears the
/// whole buffer.
pub fn pump(src: &mut impl Read, dst: &mut impl Write) -> Result<u64, Error> {
    thread_local! {
        static BUF: std::cell::RefCell<Box<[u8]>> =
            std::cell::RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
    }
    BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => pump_through(src, dst, &mut buf),
        // A pump inside a pump (not done today): a buffer of its own.
        Err(_) => pump_through(src, dst, &mut vec![0u8; 64 * 1024]),
    })
}

pub(super) fn pump_through(
    src: &mut impl Read,
    dst: &mut impl Write,
    buf: &mut [u8],
) -> Result<u64, Error> {
    /// Wipes what was used of the buffer, however the copy ends.
    struct Wipe<'b> {
        buf: &'b mut [u8],
        used: usize,
    }
    impl Drop for Wipe<'_> {
        fn drop(&mut self) {
            use zeroize::Zeroize;
            self.buf[..self.used].zeroize();
        }
    }
    let mut w = Wipe { buf, used: 0 };
    let mut total = 0u64;
    loop {
        let n = match src.read(w.buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // What a failed read left in the buffer is unknown.
                w.used = w.buf.len();
                return Err(Error::Read(e));
            }
        };
        w.used = w.used.max(n);
        dst.write_all(&w.buf[..n])
            .map_err(|e| Error::io("write", Path::new("the store"), e))?;
        total += n as u64;
    }
}

impl Store {
    /// Seal everything `plaintext` yields to `recipients` and atomically
    /// install it as `name`. More than `max_size` bytes of plaintext →
    /// [`Error::TooLarge`] and nothing changes. The journal has been told
    /// when it returns. The file keeps the execute bit of the version it
    /// replaces.
    pub fn seal(
        &self,
        name: &Name,
        plaintext: impl Read,
        recipients: &SealTo,
        max_size: u64,
    ) -> Result<Sealed, Error> {
        self.seal_with(name, plaintext, recipients, max_size, SealAttrs::default())
    }

    /// [`Store::seal`], giving the store file `attrs` (an import of a
    /// plaintext file keeps its execute bit and time).
    pub fn seal_with(
        &self,
        name: &Name,
        plaintext: impl Read,
        recipients: &SealTo,
        max_size: u64,
        attrs: SealAttrs,
    ) -> Result<Sealed, Error> {
        let sealed = self
            .seal_tagged_pending(name, plaintext, recipients, max_size, attrs, &Base::Current)
            .map(|s| s.sealed)?;
        self.deliver_journal();
        Ok(sealed)
    }

    /// [`Store::seal_pending`], but in grouped mode the seal waits in its
    /// temp file for the next round instead of being synced now: every
    /// read of `name` sees it at once, and it is durable within the window
    /// (or at [`Store::sync_now`]). For the mount's closes; a seal that
    /// replaces a source it then deletes (the sweep) must not wait.
    /// `attrs` go on the store file (the mount's last write, or the time
    /// utimensat set; the execute bit the file shows) before the journal
    /// takes its stat.
    pub fn seal_deferred(
        &self,
        name: &Name,
        plaintext: impl Read,
        recipients: &SealTo,
        max_size: u64,
        attrs: SealAttrs,
        base: &Base,
    ) -> Result<Seal<'_>, Error> {
        let (Some(g), Some(w)) = (&self.grouped, &self.waiting) else {
            return self.seal_tagged_pending(name, plaintext, recipients, max_size, attrs, base);
        };
        let seq = w.next.fetch_add(1, Ordering::Relaxed);
        let fill = |file: &mut File| {
            let mut done = seal_tagged(file, name, plaintext, recipients, self.shares(), max_size)?;
            self.give_attrs(file, name, attrs, &mut done.0);
            mark_complete(file, seq, name);
            Ok(done)
        };
        let (staged, file, (sealed, tagged)) = self.stage_open(fill)?;
        let tags = self.keep_tags(name, tagged.tags);
        let (sealed, metadata, recorded, placed) =
            self.wait_staged(g, w, name, staged, &file, seq, sealed, base);
        Ok(Seal {
            sealed,
            tags,
            binding: tagged.binding,
            metadata,
            recorded,
            placed,
        })
    }

    /// Start a seal to `recipients` whose plaintext comes in pieces
    /// ([`SealStream::write`]), for a file the mount sees written from start
    /// to end: its ciphertext goes to a temp file as the writes arrive, so
    /// neither the plaintext nor the time to encrypt it piles up until the
    /// close. [`Store::finish_stream`] puts it in place.
    pub fn begin_stream(&self, recipients: &SealTo) -> Result<SealStream, Error> {
        let (staged, file) = self.new_temp()?;
        let sink = OffloadedSink::new(sealing_sink(file, recipients.tags.as_deref()), 1 << 20);
        let sealer = Sealer::with_shares(&recipients.keys, self.shares(), sink)?;
        Ok(SealStream {
            staged,
            sealer,
            len: 0,
            envoys: recipients.envoys.clone(),
        })
    }

    /// Seal the end of `stream` and install it as `name`, as
    /// [`Store::seal_deferred`] does with a whole plaintext.
    pub fn finish_stream(
        &self,
        stream: SealStream,
        name: &Name,
        attrs: SealAttrs,
        base: &Base,
    ) -> Result<Seal<'_>, Error> {
        let (staged, file, mut sealed, tagged) = stream.finish()?;
        self.give_attrs(&file, name, attrs, &mut sealed);
        let tags = self.keep_tags(name, tagged.tags);
        let (sealed, metadata, recorded, placed) =
            if let (Some(g), Some(w)) = (&self.grouped, &self.waiting) {
                let seq = w.next.fetch_add(1, Ordering::Relaxed);
                mark_complete(&file, seq, name);
                self.wait_staged(g, w, name, staged, &file, seq, sealed, base)
            } else {
                file.sync_all()
                    .map_err(|e| Error::io("sync", &staged.path, e))?;
                let (recorded, placed) =
                    self.install_staged(name, staged, Some(sealed.clone()), base)?;
                (sealed, None, recorded, placed)
            };
        Ok(Seal {
            sealed,
            tags,
            binding: tagged.binding,
            metadata,
            recorded,
            placed,
        })
    }

    /// [`Store::seal`], with the journal entry left to the returned
    /// [`Pending`].
    pub fn seal_pending(
        &self,
        name: &Name,
        plaintext: impl Read,
        recipients: &SealTo,
        max_size: u64,
    ) -> Result<(Sealed, Pending<'_>), Error> {
        let attrs = SealAttrs::default();
        self.seal_tagged_pending(name, plaintext, recipients, max_size, attrs, &Base::Current)
            .map(|s| (s.sealed, s.recorded))
    }

    /// [`Store::seal_pending`], with the block tags it kept, and `attrs`
    /// given to the store file.
    pub(super) fn seal_tagged_pending(
        &self,
        name: &Name,
        plaintext: impl Read,
        recipients: &SealTo,
        max_size: u64,
        attrs: SealAttrs,
        base: &Base,
    ) -> Result<Seal<'_>, Error> {
        let seal = |file: &mut File| {
            let mut done = seal_tagged(file, name, plaintext, recipients, self.shares(), max_size)?;
            self.give_attrs(file, name, attrs, &mut done.0);
            Ok(done)
        };
        let (staged, (sealed, tagged)) = self.stage(seal)?;
        let tags = self.keep_tags(name, tagged.tags);
        let (recorded, placed) = self.install_staged(name, staged, Some(sealed.clone()), base)?;
        Ok(Seal {
            sealed,
            tags,
            binding: tagged.binding,
            metadata: None,
            recorded,
            placed,
        })
    }
}
