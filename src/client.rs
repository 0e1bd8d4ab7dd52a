//! The CLI's side of the control socket. Before sending anything (a
//! passphrase above all) it checks that the socket belongs to this user, and
//! that the process answering runs as this user.

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;

use anyhow::{anyhow, bail, Context};

use crate::control::{self, Failure, Frame, Request, Response};
use crate::paths::Paths;
use crate::sys;

/// The message for every command that needs the agent when none runs.
pub const NOT_RUNNING: &str = "agent not running: run lockbox unlock";

/// A connection to this user's agent.
pub struct Client {
    stream: UnixStream,
}

/// Why connecting failed.
#[derive(Debug)]
pub enum ConnectError {
    /// No agent is listening.
    NotRunning,
    /// Something is wrong with the socket (foreign owner, not a socket, …).
    Refused(anyhow::Error),
}

impl Client {
    /// Connect to the agent of `paths`.
    pub fn connect(paths: &Paths) -> Result<Client, ConnectError> {
        let path = paths.socket();
        let me = sys::uid();
        // A socket folder others can enter (under $XDG_RUNTIME_DIR) is
        // refused before anything is sent.
        match paths.check_socket_dir(me, false) {
            Ok(true) => {}
            Ok(false) => return Err(ConnectError::NotRunning),
            Err(e) => return Err(ConnectError::Refused(e)),
        }
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ConnectError::NotRunning),
            Err(e) => {
                return Err(ConnectError::Refused(
                    anyhow!(e).context(format!("cannot inspect {}", path.display())),
                ))
            }
        };
        if !meta.file_type().is_socket() {
            return Err(ConnectError::Refused(anyhow!(
                "{} is not a socket: remove it and run lockbox unlock",
                path.display()
            )));
        }
        if meta.uid() != me {
            return Err(ConnectError::Refused(anyhow!(
                "{} belongs to uid {}, not to you (uid {me}): refusing to talk to it; remove it and run lockbox unlock",
                path.display(),
                meta.uid()
            )));
        }
        // A path too long for sun_path is reached through its folder.
        let connected =
            crate::paths::SocketAddr::of(&path).and_then(|addr| UnixStream::connect(addr.path()));
        let stream = match connected {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                return Err(ConnectError::NotRunning)
            }
            Err(e) => {
                return Err(ConnectError::Refused(
                    anyhow!(e).context(format!("cannot connect to {}", path.display())),
                ))
            }
        };
        match sys::peer_uid(&stream) {
            Ok(uid) if uid == me => Ok(Client { stream }),
            Ok(uid) => Err(ConnectError::Refused(anyhow!(
                "the agent on {} runs as uid {uid}, not as you: refusing to talk to it",
                path.display()
            ))),
            Err(e) => Err(ConnectError::Refused(anyhow!(e))),
        }
    }

    /// Connect, turning "not running" into the standard message.
    pub fn require(paths: &Paths) -> anyhow::Result<Client> {
        match Client::connect(paths) {
            Ok(c) => Ok(c),
            Err(ConnectError::NotRunning) => bail!(NOT_RUNNING),
            Err(ConnectError::Refused(e)) => Err(e),
        }
    }

    /// Send a request and read one response.
    pub fn call(&mut self, req: &Request) -> anyhow::Result<Response> {
        control::write_message(&mut self.stream, req).context("the agent went away")?;
        self.response()
    }

    /// Read the next response message.
    pub fn response(&mut self) -> anyhow::Result<Response> {
        match control::read_frame::<Response>(&mut self.stream) {
            Ok(Some(Frame::Message(r))) => Ok(r),
            Ok(Some(Frame::Data(_))) => bail!("the agent sent data where a reply was expected"),
            Ok(None) => bail!("the agent closed the connection (see ~/.lockbox/agent.log)"),
            Err(e) => Err(anyhow!(e).context("bad reply from the agent")),
        }
    }

    /// Send the plaintext of `src` for an `Encrypt` that was accepted.
    pub fn send_data(&mut self, src: &mut impl Read) -> anyhow::Result<()> {
        let mut buf = zeroize::Zeroizing::new(vec![0u8; control::DATA_CHUNK]);
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(anyhow!(e).context("cannot read the input file")),
            };
            if let Err(e) = control::write_data(&mut self.stream, &buf[..n]) {
                return Err(self.why_gone(e));
            }
        }
        control::write_message(&mut self.stream, &Request::EndOfData).map_err(|e| self.why_gone(e))
    }

    /// The agent stopped reading what was sent (`e`): its reply says why
    /// when it sent one before it closed (a file over the size limit), else
    /// "went away".
    fn why_gone(&mut self, e: io::Error) -> anyhow::Error {
        let _ = self
            .stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)));
        match self.response() {
            Ok(r @ Response::Error { .. }) => into_error(r),
            _ => anyhow!(e).context("the agent went away"),
        }
    }

    /// Hand each data frame of a `Decrypting` reply to `piece` until `End`;
    /// returns the bytes handed over. An error of `piece` ends the transfer
    /// and is returned as it is.
    pub fn receive_data_with(
        &mut self,
        mut piece: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut total = 0u64;
        loop {
            match control::read_frame::<Response>(&mut self.stream) {
                Ok(Some(Frame::Data(d))) => {
                    piece(&d)?;
                    total += d.len() as u64;
                }
                Ok(Some(Frame::Message(Response::End))) => return Ok(total),
                Ok(Some(Frame::Message(other))) => return Err(into_error(other)),
                Ok(None) => bail!("the agent closed the connection mid-transfer"),
                Err(e) => return Err(anyhow!(e).context("bad data from the agent")),
            }
        }
    }

    /// Wait until the agent closes the connection (it exits).
    pub fn wait_closed(mut self) {
        let mut sink = [0u8; 64];
        while matches!(self.stream.read(&mut sink), Ok(n) if n > 0) {}
    }
}

/// The error a failed response stands for.
pub fn into_error(resp: Response) -> anyhow::Error {
    match resp {
        Response::Error { message, .. } => anyhow!(message),
        other => anyhow!("unexpected reply from the agent: {other:?}"),
    }
}

/// Whether a response is an error of this kind.
pub fn is_failure(resp: &Response, kind: Failure) -> bool {
    matches!(resp, Response::Error { failure, .. } if *failure == kind)
}
