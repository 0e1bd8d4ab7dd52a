//! `Writer`: a child process (python3) that opens, writes and closes files
//! on a mount when told to, and holds its descriptors in between. Tests
//! that keep a file open across other steps use it instead of a descriptor
//! of their own: a descriptor of the test process would be closed — so
//! flushed, so sealed — by every child any test spawns meanwhile (fork
//! copies it, exec closes the copy). Every answer is awaited with
//! [`MOUNT_DEADLINE`]. Dropping it kills the child. It must not decide
//! what a test expects of an answer.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use super::fs::MOUNT_DEADLINE;

const SCRIPT: &str = r#"
import os, sys
fds = {}
inp = sys.stdin.buffer
modes = {"trunc": os.O_TRUNC, "append": os.O_APPEND}
while True:
    line = inp.readline()
    if not line:
        break
    cmd, slot, arg = line.decode().rstrip("\n").split(" ", 2)
    try:
        if cmd == "open":
            mode, path = arg.split(" ", 1)
            fds[slot] = os.open(path, os.O_WRONLY | os.O_CREAT | modes[mode], 0o644)
        elif cmd == "write":
            data = memoryview(inp.read(int(arg)))
            while data:
                data = data[os.write(fds[slot], data):]
        elif cmd == "close":
            os.close(fds.pop(slot))
        print("ok", flush=True)
    except OSError as e:
        print("err", e.errno, e.strerror, flush=True)
    except Exception as e:
        print("err", repr(e), flush=True)
"#;

/// How a [`Writer`] opens a file (always `O_WRONLY | O_CREAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Open {
    /// With `O_TRUNC`.
    Trunc,
    /// With `O_APPEND`.
    Append,
}

/// The child and its pipes; see the module comment.
pub(crate) struct Writer {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
}

impl Writer {
    /// Start the child.
    pub(crate) fn start() -> Writer {
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 (the writer child)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Writer {
            child,
            stdin,
            answers,
        }
    }

    fn ask(&mut self, line: &str, data: &[u8]) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stdin.write_all(data))
            .and_then(|()| self.stdin.flush())
            .expect("talk to the writer child");
        match self.answers.recv_timeout(MOUNT_DEADLINE) {
            Ok(a) if a == "ok" => Ok(()),
            Ok(a) => Err(a),
            Err(e) => {
                panic!("the writer child did not answer {line:?} within {MOUNT_DEADLINE:?}: {e}")
            }
        }
    }

    /// Open `path` as `slot` (any word without spaces).
    pub(crate) fn open(&mut self, slot: &str, how: Open, path: &Path) -> Result<(), String> {
        let how = match how {
            Open::Trunc => "trunc",
            Open::Append => "append",
        };
        self.ask(&format!("open {slot} {how} {}", path.display()), &[])
    }

    /// Write all of `data` to `slot`.
    pub(crate) fn write(&mut self, slot: &str, data: &[u8]) -> Result<(), String> {
        self.ask(&format!("write {slot} {}", data.len()), data)
    }

    /// Close `slot` (forgotten even if close(2) fails).
    pub(crate) fn close(&mut self, slot: &str) -> Result<(), String> {
        self.ask(&format!("close {slot} -"), &[])
    }

    /// Open, write all of `data`, close: the write is acknowledged when
    /// this returns `Ok`.
    pub(crate) fn put(&mut self, how: Open, path: &Path, data: &[u8]) -> Result<(), String> {
        self.open("put", how, path)?;
        let wrote = self.write("put", data);
        let closed = self.close("put");
        wrote.and(closed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
