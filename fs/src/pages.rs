//! The in-memory staging buffer of a file open for writing (see
//! `docs/design.md`, "Write path").
//!
//! Plaintext being written through the mount lives here, never on disk,
//! until it is sealed. Storage is a sparse list of 64 KiB pages, so random
//! writes (sqlite) and growth cost no reallocation of the whole file, holes
//! cost nothing, and every page is zeroized when it is dropped or truncated
//! away. A page starts as small as what is written into it (4 KiB at
//! least) and doubles up to 64 KiB as it fills, so a small file costs a
//! small buffer to fill and to wipe; bytes past a page's end read as zeros.

use std::io::{self, Read};

use zeroize::Zeroize;

/// Bytes per page.
pub const PAGE: usize = 64 * 1024;

/// A file's plaintext being staged.
#[derive(Default)]
pub struct Pages {
    pages: Vec<Option<Box<[u8]>>>,
    len: u64,
}

impl Pages {
    /// An empty buffer.
    pub fn new() -> Self {
        Pages::default()
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory held by pages.
    pub fn resident(&self) -> usize {
        self.pages.iter().flatten().map(|p| p.len()).sum()
    }

    /// Write `data` at `offset`, growing the file (holes read as zeros).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let mut pos = offset;
        let mut src = data;
        while !src.is_empty() {
            let idx = (pos / PAGE as u64) as usize;
            let within = (pos % PAGE as u64) as usize;
            let n = src.len().min(PAGE - within);
            if self.pages.len() <= idx {
                self.pages.resize_with(idx + 1, || None);
            }
            let page = self.pages[idx].get_or_insert_with(|| zeroed(within + n));
            if page.len() < within + n {
                let mut bigger = zeroed(within + n);
                bigger[..page.len()].copy_from_slice(page);
                // As a slice: zeroize wipes a Box<[u8]> byte by byte.
                page[..].zeroize();
                *page = bigger;
            }
            page[within..within + n].copy_from_slice(&src[..n]);
            src = &src[n..];
            pos += n as u64;
        }
        self.len = self.len.max(end);
    }

    /// Copy up to `out.len()` bytes from `offset` into `out`; returns the
    /// count (short at end of file).
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> usize {
        if offset >= self.len {
            return 0;
        }
        let want = out.len().min((self.len - offset) as usize);
        let mut done = 0;
        while done < want {
            let pos = offset + done as u64;
            let idx = (pos / PAGE as u64) as usize;
            let within = (pos % PAGE as u64) as usize;
            let n = (want - done).min(PAGE - within);
            let out = &mut out[done..done + n];
            match self.pages.get(idx).and_then(|p| p.as_ref()) {
                Some(page) if within < page.len() => {
                    let have = n.min(page.len() - within);
                    out[..have].copy_from_slice(&page[within..within + have]);
                    out[have..].fill(0);
                }
                _ => out.fill(0),
            }
            done += n;
        }
        want
    }

    /// Set the length: shrinking zeroizes what is cut off, growing adds a hole.
    pub fn truncate(&mut self, len: u64) {
        if len < self.len {
            let keep_pages = len.div_ceil(PAGE as u64) as usize;
            free_pages(self.pages.drain(keep_pages.min(self.pages.len())..));
            // Zero the tail of the last kept page so a later growth reads zeros.
            // The page holding the new end may be a hole (or beyond the
            // pages that exist): only a real page at that index is cut.
            let within = (len % PAGE as u64) as usize;
            if within != 0 {
                if let Some(Some(page)) = self.pages.get_mut(keep_pages - 1) {
                    if within < page.len() {
                        page[within..].zeroize();
                    }
                }
            }
        }
        self.len = len;
    }

    /// A reader over the whole content, for sealing.
    pub fn reader(&self) -> PagesReader<'_> {
        PagesReader {
            pages: self,
            pos: 0,
        }
    }

    /// Replace the content with everything `src` yields (at most `limit`
    /// bytes; more is an error of kind `FileTooLarge`).
    pub fn fill_from(&mut self, src: &mut impl Read, limit: u64) -> io::Result<()> {
        self.truncate(0);
        let mut buf = lockbox_crypto::wipe::SecretBuf::new(vec![0u8; PAGE]);
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if self.len + n as u64 > limit {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    "over the size limit",
                ));
            }
            let at = self.len;
            self.write(at, &buf[..n]);
        }
    }
}

/// A zeroed page big enough for `need` bytes: the next power of two, at
/// least 4 KiB, at most [`PAGE`].
fn zeroed(need: usize) -> Box<[u8]> {
    vec![0u8; need.next_power_of_two().clamp(4096, PAGE)].into_boxed_slice()
}

/// Zeroize and free pages. After a large release, call the release hook
/// (the agent's heap trim): the agent keeps buffers up to a few MiB on the
/// heap, so 64 KiB chunks are not an `mmap` and a page fault each, and
/// without a trim a staged 1 GiB write would leave the idle agent that large.
fn free_pages(pages: impl Iterator<Item = Option<Box<[u8]>>>) {
    let mut freed = 0;
    for mut p in pages.flatten() {
        // As a slice, filled in bulk: zeroize's Box<[u8]> impl stores one
        // volatile byte at a time.
        p[..].zeroize();
        freed += p.len();
    }
    if freed >= RELEASE_AFTER {
        if let Some(hook) = RELEASE_HOOK.get() {
            hook();
        }
    }
}

/// Bytes freed at once after which the release hook runs.
const RELEASE_AFTER: usize = 4 << 20;

static RELEASE_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Set what runs after a large staged buffer is freed (once per process;
/// the agent passes its heap trim).
pub fn on_large_release(hook: fn()) {
    let _ = RELEASE_HOOK.set(hook);
}

impl Drop for Pages {
    fn drop(&mut self) {
        free_pages(self.pages.drain(..));
    }
}

/// `Read` over a [`Pages`].
pub struct PagesReader<'a> {
    pages: &'a Pages,
    pos: u64,
}

impl Read for PagesReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.pages.read_at(self.pos, out);
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0u64..300_000,
                proptest::collection::vec(any::<u8>(), 0..70_000)
            )
                .prop_map(|(o, d)| Op::Write(o, d)),
            // Small writes near the start, which grow short pages.
            (
                0u64..140_000,
                proptest::collection::vec(any::<u8>(), 0..9_000)
            )
                .prop_map(|(o, d)| Op::Write(o, d)),
            (0u64..300_000).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn behaves_like_a_vec(ops in proptest::collection::vec(op(), 1..12)) {
            let mut model: Vec<u8> = Vec::new();
            let mut pages = Pages::new();
            for op in ops {
                match op {
                    Op::Write(o, d) => {
                        let end = o as usize + d.len();
                        if model.len() < end { model.resize(end, 0); }
                        model[o as usize..end].copy_from_slice(&d);
                        pages.write(o, &d);
                    }
                    Op::Truncate(n) => {
                        model.resize(n as usize, 0);
                        pages.truncate(n);
                    }
                }
                prop_assert_eq!(pages.len(), model.len() as u64);
            }
            let mut all = Vec::new();
            pages.reader().read_to_end(&mut all).unwrap();
            prop_assert_eq!(&all, &model);
            // Random-offset reads agree too.
            for off in [0u64, 1, 65_535, 65_536, 131_071, model.len() as u64] {
                let mut buf = vec![0u8; 5000];
                let n = pages.read_at(off, &mut buf);
                let expect = model.get(off as usize..).map(|s| &s[..s.len().min(5000)]).unwrap_or(&[]);
                prop_assert_eq!(&buf[..n], expect);
            }
        }
    }

    /// Regression: shrinking into a hole past the last real page zeroed the
    /// tail of that (unrelated) last page.
    #[test]
    fn shrinking_into_a_hole_keeps_earlier_pages() {
        let mut p = Pages::new();
        p.truncate(107_910);
        p.write(0, &[9u8; 50_000]);
        p.truncate(107_909);
        let mut b = vec![0u8; 50_000];
        assert_eq!(p.read_at(0, &mut b), 50_000);
        assert!(b.iter().all(|&x| x == 9));
    }

    #[test]
    fn holes_cost_no_memory_and_read_as_zero() {
        let mut p = Pages::new();
        p.write(10 * PAGE as u64, b"x");
        assert_eq!(p.resident(), 4096);
        let mut b = [1u8; 4];
        assert_eq!(p.read_at(PAGE as u64, &mut b), 4);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn a_page_grows_with_what_is_written_and_reads_zeros_past_its_end() {
        let mut p = Pages::new();
        p.write(0, &[1u8; 100]);
        assert_eq!(p.resident(), 4096);
        p.write(5000, &[2u8; 100]);
        assert_eq!(p.resident(), 8192);
        p.write(PAGE as u64 - 1, &[3u8; 2]);
        assert_eq!(p.resident(), PAGE + 4096);
        let mut b = vec![9u8; 6000];
        assert_eq!(p.read_at(0, &mut b), 6000);
        assert!(b[..100].iter().all(|&x| x == 1));
        assert!(b[100..5000].iter().all(|&x| x == 0));
        assert!(b[5000..5100].iter().all(|&x| x == 2));
        assert!(b[5100..].iter().all(|&x| x == 0));
        // A short page inside the file: the bytes past it are a hole.
        let mut p = Pages::new();
        p.write(0, b"abc");
        p.write(3 * PAGE as u64, b"z");
        let mut b = vec![9u8; 8000];
        assert_eq!(p.read_at(0, &mut b), 8000);
        assert_eq!(&b[..3], b"abc");
        assert!(b[3..].iter().all(|&x| x == 0));
        p.truncate(2);
        p.truncate(PAGE as u64);
        assert_eq!(p.read_at(0, &mut b), 8000);
        assert_eq!(&b[..2], b"ab");
        assert!(b[2..].iter().all(|&x| x == 0));
    }

    #[test]
    fn fill_from_respects_the_limit() {
        let mut p = Pages::new();
        p.fill_from(&mut &[7u8; 100][..], 100).unwrap();
        assert_eq!(p.len(), 100);
        let e = p.fill_from(&mut &[7u8; 101][..], 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
    }
}
