//! `std::fs` with a deadline: every call that can block on a FUSE mount
//! (read, write, read_dir, metadata, open, rename, remove, …) runs on a
//! thread of its own, and a call that has not returned within
//! [`MOUNT_DEADLINE`] fails the test with a message naming the operation
//! and the path, instead of hanging the run. Tests import it as `fs`
//! (`use crate::harness::fs;`); everything else of `std::fs` passes
//! through unchanged. It must not change what a call returns.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

pub use std::fs::*;

/// How long one file-system call on a mount may take before the test fails:
/// far beyond what a loaded 2-core box needs for the largest piece a test
/// moves in one call (a write of 200 MiB; reads go in 8 MiB pieces), far
/// below a hung run.
pub const MOUNT_DEADLINE: Duration = Duration::from_secs(120);

/// Run `f` (the operation `op` on `path`) on a thread of its own; panic if
/// it has not returned within [`MOUNT_DEADLINE`]. A hung call's thread is
/// left behind (it is blocked in the kernel); the test fails regardless.
#[track_caller]
pub fn within<T: Send + 'static>(
    op: &str,
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("fs-{op}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn a thread for a file-system call");
    match rx.recv_timeout(MOUNT_DEADLINE) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "{op} {} did not return within {MOUNT_DEADLINE:?} (a hung mount?)",
            path.display()
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{op} {}: the call panicked", path.display())
        }
    }
}

/// How much of a file [`read`] asks for in one call under the deadline.
const READ_PIECE: usize = 8 << 20;

/// `std::fs::read`, with the deadline on each 8 MiB piece: a large file
/// read slowly by a loaded machine passes, a read that stops making
/// progress fails.
#[track_caller]
pub fn read(p: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let p = p.as_ref().to_path_buf();
    let mut file = {
        let p = p.clone();
        within("open", &p.clone(), move || std::fs::File::open(p))?
    };
    let mut out = Vec::new();
    loop {
        let (f, buf, n) = within("read", &p, move || {
            let mut buf = Vec::with_capacity(READ_PIECE);
            let n = (&mut file).take(READ_PIECE as u64).read_to_end(&mut buf);
            (file, buf, n)
        });
        file = f;
        let n = n?;
        out.extend_from_slice(&buf);
        if n < READ_PIECE {
            return Ok(out);
        }
    }
}

/// `std::fs::read_to_string` under the deadline.
#[track_caller]
pub fn read_to_string(p: impl AsRef<Path>) -> io::Result<String> {
    let p = p.as_ref().to_path_buf();
    String::from_utf8(read(p)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `std::fs::write` under the deadline.
#[track_caller]
pub fn write(p: impl AsRef<Path>, data: impl AsRef<[u8]>) -> io::Result<()> {
    let (p, data) = (p.as_ref().to_path_buf(), data.as_ref().to_vec());
    within("write", &p.clone(), move || std::fs::write(p, data))
}

/// `std::fs::read_dir` under the deadline; the whole listing is read
/// before it returns (so iterating it cannot block).
#[track_caller]
pub fn read_dir(p: impl AsRef<Path>) -> io::Result<std::vec::IntoIter<io::Result<DirEntry>>> {
    let p = p.as_ref().to_path_buf();
    within("read_dir", &p.clone(), move || {
        std::fs::read_dir(p).map(|rd| rd.collect::<Vec<_>>().into_iter())
    })
}

/// `std::fs::metadata` under the deadline.
#[track_caller]
pub fn metadata(p: impl AsRef<Path>) -> io::Result<Metadata> {
    let p = p.as_ref().to_path_buf();
    within("metadata", &p.clone(), move || std::fs::metadata(p))
}

/// `std::fs::symlink_metadata` under the deadline.
#[track_caller]
pub fn symlink_metadata(p: impl AsRef<Path>) -> io::Result<Metadata> {
    let p = p.as_ref().to_path_buf();
    within("symlink_metadata", &p.clone(), move || {
        std::fs::symlink_metadata(p)
    })
}

/// `std::fs::remove_file` under the deadline.
#[track_caller]
pub fn remove_file(p: impl AsRef<Path>) -> io::Result<()> {
    let p = p.as_ref().to_path_buf();
    within("remove_file", &p.clone(), move || std::fs::remove_file(p))
}

/// `std::fs::rename` under the deadline.
#[track_caller]
pub fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    let (from, to) = (from.as_ref().to_path_buf(), to.as_ref().to_path_buf());
    within("rename", &from.clone(), move || std::fs::rename(from, to))
}

/// `File::open` under the deadline (use it instead of `fs::File::open` on
/// a mount).
#[track_caller]
pub fn open(p: impl AsRef<Path>) -> io::Result<File> {
    let p = p.as_ref().to_path_buf();
    within("open", &p.clone(), move || File::open(p))
}

/// `std::fs::OpenOptions` whose `open` runs under the deadline (shadows
/// the std type for `fs::OpenOptions::new()…open(p)` chains).
#[derive(Clone, Debug)]
pub struct OpenOptions(std::fs::OpenOptions);

impl OpenOptions {
    /// As `std::fs::OpenOptions::new`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> OpenOptions {
        OpenOptions(std::fs::OpenOptions::new())
    }

    /// As `std::fs::OpenOptions::read`.
    pub fn read(&mut self, on: bool) -> &mut OpenOptions {
        self.0.read(on);
        self
    }

    /// As `std::fs::OpenOptions::write`.
    pub fn write(&mut self, on: bool) -> &mut OpenOptions {
        self.0.write(on);
        self
    }

    /// As `std::fs::OpenOptions::truncate`.
    pub fn truncate(&mut self, on: bool) -> &mut OpenOptions {
        self.0.truncate(on);
        self
    }

    /// As `std::fs::OpenOptions::create`.
    pub fn create(&mut self, on: bool) -> &mut OpenOptions {
        self.0.create(on);
        self
    }

    /// As `std::fs::OpenOptions::create_new`.
    pub fn create_new(&mut self, on: bool) -> &mut OpenOptions {
        self.0.create_new(on);
        self
    }

    /// As `OpenOptionsExt::mode`.
    pub fn mode(&mut self, mode: u32) -> &mut OpenOptions {
        std::os::unix::fs::OpenOptionsExt::mode(&mut self.0, mode);
        self
    }

    /// As `std::fs::OpenOptions::open`, under the deadline.
    #[track_caller]
    pub fn open(&self, p: impl AsRef<Path>) -> io::Result<File> {
        let (options, p) = (self.0.clone(), p.as_ref().to_path_buf());
        within("open", &p.clone(), move || options.open(p))
    }
}

/// `Path::exists` under the deadline.
#[track_caller]
pub fn present(p: impl AsRef<Path>) -> bool {
    let p: PathBuf = p.as_ref().to_path_buf();
    within("stat", &p.clone(), move || p.exists())
}
