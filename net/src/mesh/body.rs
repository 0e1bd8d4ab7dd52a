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

/// Read a whole body, refusing more than `cap` bytes: unread when its
/// declared length (`content-length`) is over the cap, and as soon as what
/// arrived goes over it otherwise (the rest is not waited for).
pub(super) async fn read_capped<B>(mut body: B, cap: usize) -> Result<Vec<u8>, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.size_hint().lower() > cap as u64 {
        return Err(BodyError::TooLarge { cap });
    }
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
    // The worker reads at most one byte past the record's length; past it,
    // nothing more is waited for (a peer may send more and then stall).
    let declared = rec.body().ciphertext_len;
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
        if !sent || failed || total > declared {
            break;
        }
    }
    drop(tx);
    worker.await.map_err(|e| Refusal::Internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::channel::Channel;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::*;

    const CAP: usize = 1000;

    /// Long enough for any answer that does not wait for more input.
    const PROMPTLY: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_body_up_to_the_cap_is_read_whole() {
        for len in [0, 1, CAP - 1, CAP] {
            let body = Full::new(Bytes::from(vec![7u8; len]));
            assert_eq!(read_capped(body, CAP).await.unwrap(), vec![7u8; len]);
        }
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused() {
        let body = Full::new(Bytes::from(vec![7u8; CAP + 1]));
        let e = read_capped(body, CAP).await.unwrap_err();
        assert!(matches!(e, BodyError::TooLarge { cap: CAP }), "{e}");
        assert_eq!(e.to_string(), "body larger than 1000 bytes");
    }

    /// A body that goes over the cap is refused without waiting for the
    /// rest of it: here the rest never comes.
    #[tokio::test]
    async fn a_body_is_refused_once_it_goes_over_the_cap_not_at_its_end() {
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
        tx.send_data(Bytes::from(vec![1u8; CAP / 2])).await.unwrap();
        tx.send_data(Bytes::from(vec![1u8; CAP / 2 + 1]))
            .await
            .unwrap();
        let got = tokio::time::timeout(PROMPTLY, read_capped(body, CAP))
            .await
            .expect("refused before the body ended");
        assert!(matches!(got, Err(BodyError::TooLarge { .. })), "{got:?}");
        drop(tx);
    }

    #[tokio::test]
    async fn an_oversized_hello_is_refused() {
        let cap = super::super::MAX_HELLO_BODY;
        let body = Full::new(Bytes::from(vec![b' '; cap + 1]));
        assert!(matches!(
            read_capped(body, cap).await,
            Err(BodyError::TooLarge { .. })
        ));
    }

    /// An HTTP/2 server on `127.0.0.1:0` that reads each request body with
    /// `read_capped(_, CAP)` and reports the outcome; and a client
    /// connection to it.
    async fn capped_server() -> (
        hyper::client::conn::http2::SendRequest<Body>,
        mpsc::UnboundedReceiver<Result<usize, String>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, reports) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let report = report.clone();
                async move {
                    let got = read_capped(req.into_body(), CAP).await;
                    let status = if got.is_ok() { 200 } else { 413 };
                    let _ = report.send(got.map(|b| b.len()).map_err(|e| e.to_string()));
                    Ok::<_, Infallible>(respond(status, ""))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        (send, reports)
    }

    /// A request whose body is sent through the returned channel.
    fn streamed(
        len: Option<u64>,
    ) -> (
        http_body_util::channel::Sender<Bytes, std::io::Error>,
        Request<Body>,
    ) {
        let (tx, body) = Channel::<Bytes, std::io::Error>::new(8);
        let mut req = Request::post("http://127.0.0.1/lockbox/tombstones/alice");
        if let Some(len) = len {
            req = req.header(http::header::CONTENT_LENGTH, len);
        }
        (tx, req.body(body.boxed()).unwrap())
    }

    #[tokio::test]
    async fn over_a_connection_a_body_within_the_cap_is_read() {
        let (mut send, mut reports) = capped_server().await;
        let (mut tx, req) = streamed(Some(CAP as u64));
        let resp = tokio::spawn(send.send_request(req));
        tx.send_data(Bytes::from(vec![0u8; CAP])).await.unwrap();
        drop(tx);
        assert_eq!(reports.recv().await, Some(Ok(CAP)));
        assert_eq!(resp.await.unwrap().unwrap().status(), 200);
    }

    /// More than the cap, sent over a real connection that then stays
    /// open: refused as soon as the cap is passed.
    #[tokio::test]
    async fn over_a_connection_a_body_is_refused_once_past_the_cap() {
        let (mut send, mut reports) = capped_server().await;
        let (mut tx, req) = streamed(None);
        let resp = tokio::spawn(send.send_request(req));
        for _ in 0..3 {
            tx.send_data(Bytes::from(vec![0u8; CAP / 2])).await.unwrap();
        }
        let got = tokio::time::timeout(PROMPTLY, reports.recv())
            .await
            .expect("refused while the body was still open");
        assert_eq!(got, Some(Err("body larger than 1000 bytes".into())));
        let resp = tokio::time::timeout(PROMPTLY, resp).await.unwrap();
        assert_eq!(resp.unwrap().unwrap().status(), 413);
        drop(tx);
    }

    /// A declared length over the cap is refused before any of the body is
    /// read: here none of it is ever sent.
    #[tokio::test]
    async fn over_a_connection_a_declared_length_over_the_cap_is_refused_unread() {
        let (mut send, mut reports) = capped_server().await;
        let (tx, req) = streamed(Some(CAP as u64 + 1));
        let resp = tokio::spawn(send.send_request(req));
        let got = tokio::time::timeout(PROMPTLY, reports.recv())
            .await
            .expect("refused without waiting for the body");
        assert_eq!(got, Some(Err("body larger than 1000 bytes".into())));
        let resp = tokio::time::timeout(PROMPTLY, resp).await.unwrap();
        assert_eq!(resp.unwrap().unwrap().status(), 413);
        drop(tx);
    }
}
