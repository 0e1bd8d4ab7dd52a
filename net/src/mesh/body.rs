//! HTTP bodies on the peer port, both ways: small answers, reading a body
//! whole under a cap (`read_capped`), draining a small unwanted one
//! (`after_small_body`), streaming a store file out (`file_body`) and a
//! received version into the store (`receive_body`). It must not decide
//! what a request means or whether a version is wanted.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use lockbox_crypto::sign::Signed;
use lockbox_fs::Name;

use super::MAX_CIPHERTEXT;
use crate::records::FileVersion;
use crate::replica::{Admission, Refusal, Replica};

/// The body type of every request and answer this envoy sends.
pub(super) type Body = BoxBody<Bytes, std::io::Error>;

pub(super) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub(super) fn respond(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

pub(super) fn refuse(r: &Refusal) -> Response<Body> {
    respond(r.status(), r.to_string())
}

/// Answer `resp` to a request whose body is not wanted, after reading that
/// body if it is small (≤ 1 MiB by its `content-length`): the stream then
/// ends cleanly, which some HTTP/2 clients (curl) need to see the answer.
/// A larger body is not read: the stream is reset after the answer.
pub(super) async fn after_small_body(
    req: Request<Incoming>,
    resp: Response<Body>,
) -> Response<Body> {
    const SMALL: u64 = 1 << 20;
    let small = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= SMALL);
    if small {
        let _ = read_capped(req.into_body(), SMALL as usize).await;
    }
    resp
}

/// Why a body from a peer was not read (whole).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body is longer than the most accepted; the rest was not read.
    #[error("body larger than {cap} bytes")]
    TooLarge {
        /// The most accepted, in bytes.
        cap: usize,
    },
    /// The stream failed while the body was read.
    #[error("reading the body failed: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The stream of a file failed while it was received.
    #[error("the transfer broke off: {0}")]
    BrokeOff(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file's body is longer than the largest ciphertext accepted.
    #[error("body over the size limit")]
    OverLimit,
}

/// Read a whole body, refusing more than `cap` bytes.
pub(super) async fn read_capped<B>(mut body: B, cap: usize) -> Result<Vec<u8>, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.into()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > cap {
                return Err(BodyError::TooLarge { cap });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// A streamed body that reads `file` on a blocking thread.
pub(super) fn file_body(mut file: std::fs::File) -> Body {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(async move {
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let n = file.read(&mut buf);
                (file, buf, n)
            })
            .await;
            let Ok((f, mut buf, n)) = read else { return };
            file = f;
            match n {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send_data(Bytes::from(buf)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tx.abort(e);
                    return;
                }
            }
        }
    });
    body.boxed()
}

/// A blocking reader over body chunks sent from the async side.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Result<Bytes, BodyError>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.cur = b,
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Stream `body` into a staged file (checked against `rec`) and install it.
pub(super) async fn receive_body(
    replica: Arc<Replica>,
    name: Name,
    rec: Signed<FileVersion>,
    mut body: Incoming,
) -> Result<Admission, Refusal> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Bytes, BodyError>>(16);
    let worker = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        let staged = replica.stage_body(rec.body(), &mut reader)?;
        replica.install(&name, &rec, staged)
    });
    let limit = MAX_CIPHERTEXT;
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let chunk = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => Ok(d),
                Err(_) => continue,
            },
            Err(e) => Err(BodyError::BrokeOff(e.into())),
        };
        let failed = chunk.is_err();
        if let Ok(d) = &chunk {
            total += d.len() as u64;
            if total > limit {
                let _ = tx.send(Err(BodyError::OverLimit));
                break;
            }
        }
        // The worker may have stopped early (a bad body); then stop too.
        let tx2 = tx.clone();
        let sent = tokio::task::spawn_blocking(move || tx2.send(chunk).is_ok())
            .await
            .unwrap_or(false);
        if !sent || failed {
            break;
        }
    }
    drop(tx);
    worker.await.map_err(|e| Refusal::Internal(e.to_string()))?
}
