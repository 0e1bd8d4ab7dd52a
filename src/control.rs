//! The control protocol between the `lockbox` CLI and its agent over
//! `~/.lockbox/agent.sock` (or under `$XDG_RUNTIME_DIR`, see `crate::paths`).
//!
//! A connection carries frames: a 4-byte big-endian length, then the
//! payload, whose first byte says what it is: `J` a JSON [`Request`] or
//! [`Response`], `D` raw file bytes (for `encrypt` and `decrypt`, which
//! stream). Lengths are capped before anything is allocated. The protocol is
//! local and versionless: the CLI and the agent are the same binary.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::status::{ListEntry, StatusReport};

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 20;
/// File bytes per data frame.
pub const DATA_CHUNK: usize = 256 * 1024;

/// What the CLI asks of the agent.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Request {
    /// Status of the agent and the store (resets the idle timer).
    Status,
    /// The status page's address (starting the page if it is not up).
    Web,
    /// The files of the store.
    List,
    /// Unwrap the identity with this passphrase and hold it.
    Unlock {
        /// The passphrase; zeroized when dropped.
        passphrase: Passphrase,
    },
    /// Drop the identity.
    Lock,
    /// Seal what follows in data frames as `name`, then an `EndOfData` frame.
    Encrypt {
        /// Raw name bytes.
        name: Vec<u8>,
        /// The owner's execute bit to give the file (its source's); absent:
        /// the one of the version it replaces.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        executable: Option<bool>,
    },
    /// Stream the plaintext of `name` back in data frames.
    Decrypt {
        /// Raw name bytes.
        name: Vec<u8>,
    },
    /// Remove `name`.
    Delete {
        /// Raw name bytes.
        name: Vec<u8>,
    },
    /// Re-encrypt every file to the current members (`Progress` frames,
    /// then `Reencrypted`).
    Reencrypt,
    /// Make the folder `name` and those above it (`mkdir -p`).
    MakeFolder {
        /// Raw name bytes.
        name: Vec<u8>,
    },
    /// Lift the delete of `name` on every envoy.
    Resurrect {
        /// Raw name bytes.
        name: Vec<u8>,
    },
    /// Sign this envoy's LEAVE and deliver it (`Delivered`); the CLI then
    /// stops the agent and scrubs.
    Leave,
    /// Apply and deliver an eviction signed with the circle key.
    Evict {
        /// The signed leave record (kind evict).
        record: Vec<u8>,
    },
    /// Stop the agent; the connection closes when the agent has exited.
    Stop,
    /// Marks the end of the data frames of an `Encrypt`.
    EndOfData,
}

/// A passphrase in transit: zeroized on drop, never printed.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Passphrase(pub Zeroizing<String>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Why a request failed, so the CLI can pick its exit code and message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Failure {
    /// The session is locked.
    Locked,
    /// Wrong passphrase.
    WrongPassphrase,
    /// No such file.
    NotFound,
    /// The request itself is bad (name, size, …).
    Invalid,
    /// The file or the agent's state is damaged.
    Damaged,
    /// Anything else.
    Internal,
}

/// What the agent answers.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum Response {
    /// Done.
    Ok,
    /// Failed, with a one-line message that says what to do.
    Error {
        /// Category.
        failure: Failure,
        /// Message for the user.
        message: String,
    },
    /// The status report.
    Status(Box<StatusReport>),
    /// The file list.
    List(Vec<ListEntry>),
    /// Unlocked; the sweep sealed these many files.
    Unlocked {
        /// Files sealed by the sweep.
        swept: usize,
    },
    /// Plaintext of `len` bytes follows in data frames, then `End`.
    Decrypting {
        /// Plaintext length.
        len: u64,
        /// Whether the file is executable (a file written with `-o` is
        /// made so too).
        #[serde(default)]
        executable: bool,
    },
    /// The data stream is complete.
    End,
    /// Encrypted: plaintext bytes sealed.
    Encrypted {
        /// Plaintext bytes sealed.
        len: u64,
    },
    /// The agent is stopping.
    Stopping,
    /// `done` of `total` files re-encrypted so far.
    Progress {
        /// Files handled.
        done: usize,
        /// Files in all.
        total: usize,
    },
    /// A leave or eviction was recorded and pushed to the live members.
    Delivered {
        /// Peers that took it.
        took: usize,
        /// Live member peers it was pushed to.
        asked: usize,
        /// Other members of the circle (live or not) before it.
        members: usize,
    },
    /// The status page's address, with its token.
    Web {
        /// `http://127.0.0.1:PORT/?token=…`
        url: String,
    },
    /// Re-encryption is complete.
    Reencrypted {
        /// Files re-encrypted.
        resealed: usize,
        /// Files considered.
        total: usize,
    },
}

/// One frame.
#[derive(Debug, PartialEq)]
pub enum Frame<T> {
    /// A JSON message.
    Message(T),
    /// File bytes.
    Data(Zeroizing<Vec<u8>>),
}

/// Read one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<Frame<T>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(bad(format!("frame length {len} out of range")));
    }
    let mut buf = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf)?;
    match buf[0] {
        b'J' => serde_json::from_slice(&buf[1..])
            .map(|m| Some(Frame::Message(m)))
            .map_err(|e| bad(format!("bad message: {e}"))),
        b'D' => Ok(Some(Frame::Data(Zeroizing::new(buf[1..].to_vec())))),
        k => Err(bad(format!("unknown frame kind {k}"))),
    }
}

/// Write a JSON message frame.
pub fn write_message<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut buf = Zeroizing::new(Vec::with_capacity(256));
    buf.extend_from_slice(&[0, 0, 0, 0, b'J']);
    serde_json::to_writer(&mut *buf, msg).map_err(io::Error::other)?;
    finish_frame(w, &mut buf)
}

/// Write a data frame (at most `MAX_FRAME - 1` bytes).
pub fn write_data(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if data.len() >= MAX_FRAME {
        return Err(bad("data frame too large".into()));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(data.len() + 5));
    buf.extend_from_slice(&[0, 0, 0, 0, b'D']);
    buf.extend_from_slice(data);
    finish_frame(w, &mut buf)
}

fn finish_frame(w: &mut impl Write, buf: &mut [u8]) -> io::Result<()> {
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(bad("message too large".into()));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    w.write_all(buf)?;
    w.flush()
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A `Read` over the data frames of a stream, ending at an `EndOfData`
/// request frame (the CLI's side of `encrypt`, read by the agent).
pub struct DataFrames<'a, R: Read> {
    inner: &'a mut R,
    pending: Zeroizing<Vec<u8>>,
    pos: usize,
    done: bool,
}

impl<'a, R: Read> DataFrames<'a, R> {
    /// Read data frames from `inner`.
    pub fn new(inner: &'a mut R) -> Self {
        DataFrames {
            inner,
            pending: Zeroizing::new(Vec::new()),
            pos: 0,
            done: false,
        }
    }
}

impl<R: Read> Read for DataFrames<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.pending.len() {
            if self.done {
                return Ok(0);
            }
            match read_frame::<Request>(self.inner)? {
                Some(Frame::Data(d)) => {
                    self.pending = d;
                    self.pos = 0;
                }
                Some(Frame::Message(Request::EndOfData)) => self.done = true,
                Some(Frame::Message(other)) => {
                    return Err(bad(format!("expected data, got {other:?}")))
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the sender went away before the end of the data",
                    ))
                }
            }
        }
        let n = out.len().min(self.pending.len() - self.pos);
        out[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn messages_and_data_round_trip() {
        let mut buf = Vec::new();
        write_message(
            &mut buf,
            &Request::Decrypt {
                name: b"a".to_vec(),
            },
        )
        .unwrap();
        write_data(&mut buf, b"payload").unwrap();
        let mut r = Cursor::new(buf);
        assert_eq!(
            read_frame::<Request>(&mut r).unwrap(),
            Some(Frame::Message(Request::Decrypt {
                name: b"a".to_vec()
            }))
        );
        assert_eq!(
            read_frame::<Request>(&mut r).unwrap(),
            Some(Frame::Data(Zeroizing::new(b"payload".to_vec())))
        );
        assert_eq!(read_frame::<Request>(&mut r).unwrap(), None);
    }

    #[test]
    fn oversize_and_garbage_frames_are_refused_before_allocation() {
        for bytes in [
            &[0xff, 0xff, 0xff, 0xff, b'J'][..],
            &[0, 0, 0, 0],
            &[0, 0, 0, 2, b'X', b'{'],
            &[0, 0, 0, 3, b'J', b'{', b'}'],
        ] {
            let e = read_frame::<Request>(&mut Cursor::new(bytes)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bytes:?}");
        }
        // Truncated payload.
        assert!(read_frame::<Request>(&mut Cursor::new(&[0, 0, 0, 9, b'D', 1][..])).is_err());
    }

    #[test]
    fn data_frames_read_until_end_of_data() {
        let mut buf = Vec::new();
        write_data(&mut buf, b"hello ").unwrap();
        write_data(&mut buf, b"world").unwrap();
        write_message(&mut buf, &Request::EndOfData).unwrap();
        write_message(&mut buf, &Request::Status).unwrap();
        let mut r = Cursor::new(buf);
        let mut out = String::new();
        DataFrames::new(&mut r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");
        // The stream continues after the data.
        assert_eq!(
            read_frame::<Request>(&mut r).unwrap(),
            Some(Frame::Message(Request::Status))
        );
    }

    #[test]
    fn data_frames_error_when_sender_vanishes() {
        let mut buf = Vec::new();
        write_data(&mut buf, b"partial").unwrap();
        let mut r = Cursor::new(buf);
        let mut out = Vec::new();
        let e = DataFrames::new(&mut r).read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn passphrase_is_not_printed() {
        let r = Request::Unlock {
            passphrase: Passphrase(Zeroizing::new("hunter2".into())),
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
