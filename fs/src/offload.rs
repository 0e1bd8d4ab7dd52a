//! A writer that moves its sink to a second thread once enough bytes came
//! through, so producing the bytes (age encryption) and consuming them
//! (hashing the ciphertext and writing it to the temp file) run on two cores
//! for a large file. A small file stays on the caller's thread: spawning a
//! thread would cost more than it saves. Only ciphertext passes through, so
//! the buffers need no zeroizing.

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// Size of the buffers handed to the sink thread.
const BLOCK: usize = 256 * 1024;
/// Buffers in flight between the two threads (bounds the memory).
const IN_FLIGHT: usize = 4;

/// A writer into a sink that moves to a thread of its own after
/// `threshold` bytes. It owns the sink, so it can live across calls (a
/// seal that grows with each write of the mount, [`crate::store::SealStream`]).
/// [`OffloadedSink::finish`] returns the sink with everything written; an error
/// of the sink is returned from the write that follows it, or from
/// `finish`. Dropped unfinished, it waits for the sink thread to end.
pub struct OffloadedSink<W: Write + Send + 'static> {
    state: State<W>,
    buf: Vec<u8>,
    sent: u64,
    threshold: u64,
}

enum State<W> {
    Inline(W),
    Spawned {
        tx: SyncSender<Vec<u8>>,
        worker: JoinHandle<io::Result<W>>,
    },
    /// After an error or the end.
    Gone,
}

impl<W: Write + Send + 'static> OffloadedSink<W> {
    /// A writer into `sink`, offloading after `threshold` bytes.
    pub fn new(sink: W, threshold: u64) -> Self {
        // The buffer grows with what comes: a small file's seal (most of
        // them) needs a few KiB, and a whole block at once would be a
        // fresh mapping of 256 KiB, its page faults and its unmapping.
        OffloadedSink {
            state: State::Inline(sink),
            buf: Vec::new(),
            sent: 0,
            threshold,
        }
    }

    /// Hand the buffered bytes on: inline, or to the sink thread (started
    /// when the threshold is crossed).
    fn dispatch(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.sent += self.buf.len() as u64;
        match std::mem::replace(&mut self.state, State::Gone) {
            State::Inline(mut sink) if self.sent < self.threshold => {
                let r = sink.write_all(&self.buf);
                self.buf.clear();
                r?;
                self.state = State::Inline(sink);
                Ok(())
            }
            State::Inline(sink) => {
                let (tx, rx) = sync_channel::<Vec<u8>>(IN_FLIGHT);
                let worker =
                    std::thread::Builder::new()
                        .name("seal-sink".into())
                        .spawn(move || {
                            let mut sink = sink;
                            for block in rx {
                                sink.write_all(&block)?;
                            }
                            Ok(sink)
                        })?;
                self.state = State::Spawned { tx, worker };
                self.send()
            }
            spawned @ State::Spawned { .. } => {
                self.state = spawned;
                self.send()
            }
            State::Gone => Err(io::Error::other("the writer already failed")),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
        let State::Spawned { tx, .. } = &self.state else {
            return Err(io::Error::other("no sink thread"));
        };
        if tx.send(block).is_ok() {
            return Ok(());
        }
        // The sink thread stopped: it failed; return its error.
        match std::mem::replace(&mut self.state, State::Gone) {
            State::Spawned { worker, .. } => match worker.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(io::Error::other("the sink thread stopped early")),
                Err(_) => Err(io::Error::other("the sink thread panicked")),
            },
            _ => Err(io::Error::other("no sink thread")),
        }
    }

    /// Write out what is buffered and return the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.dispatch()?;
        match std::mem::replace(&mut self.state, State::Gone) {
            State::Inline(sink) => Ok(sink),
            State::Spawned { tx, worker } => {
                drop(tx);
                worker
                    .join()
                    .map_err(|_| io::Error::other("the sink thread panicked"))?
            }
            State::Gone => Err(io::Error::other("the writer already failed")),
        }
    }
}

impl<W: Write + Send + 'static> Drop for OffloadedSink<W> {
    fn drop(&mut self) {
        // Abandoned: let the thread end before the sink's owner goes on
        // (it removes the file the sink writes to).
        if let State::Spawned { tx, worker } = std::mem::replace(&mut self.state, State::Gone) {
            drop(tx);
            let _ = worker.join();
        }
    }
}

impl<W: Write + Send + 'static> Write for OffloadedSink<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOCK - self.buf.len());
        if self.buf.capacity() - self.buf.len() < n {
            // Doubling up to a block: a large file reaches it in a few steps.
            let want = (self.buf.len() + n).next_power_of_two().min(BLOCK);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BLOCK {
            self.dispatch()?;
        }
        Ok(n)
    }

    /// Buffered bytes reach the sink at [`OffloadedSink::finish`]; a flush in
    /// between does not force them out (the sink may be on another thread).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn small_and_large_writes_arrive_whole_and_in_order() {
        for (len, threshold) in [
            (0, 0),
            (10, 1 << 20),
            (BLOCK - 1, 0),
            (BLOCK * 3 + 5, 0),
            (BLOCK * 9 + 17, BLOCK as u64 * 2),
        ] {
            let data = pattern(len);
            let mut w = OffloadedSink::new(Vec::new(), threshold);
            for piece in data.chunks(65_552) {
                w.write_all(piece).unwrap();
            }
            let out = w.finish().unwrap();
            assert_eq!(out, data, "len {len} threshold {threshold}");
        }
    }

    /// A sink that records when it is dropped.
    struct Noting(std::sync::Arc<std::sync::atomic::AtomicBool>, Vec<u8>);

    impl Write for Noting {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Drop for Noting {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn dropped_unfinished_it_waits_for_the_sink_thread() {
        let gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut w = OffloadedSink::new(Noting(gone.clone(), Vec::new()), 0);
        w.write_all(&pattern(BLOCK * 5)).unwrap();
        drop(w);
        assert!(gone.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// A sink that fails after `ok` bytes.
    struct Failing {
        ok: usize,
    }

    impl Write for Failing {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if b.len() > self.ok {
                return Err(io::Error::other("disk full"));
            }
            self.ok -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_sink_error_is_returned_inline_and_offloaded() {
        for threshold in [0, u64::MAX] {
            let data = pattern(BLOCK * 20);
            let mut w = OffloadedSink::new(Failing { ok: BLOCK * 2 }, threshold);
            let r = w.write_all(&data).and_then(|()| w.finish().map(drop));
            let e = r.expect_err("the sink's error");
            assert_eq!(e.to_string(), "disk full", "threshold {threshold}");
        }
    }
}
