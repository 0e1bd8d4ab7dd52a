//! HTTP bodies on the peer port, both ways: small answers, reading a body
//! whole under a cap (`read_capped`), draining a small unwanted one
//! (`after_small_body`), reading a record list as a stream (`ListBody`)
//! and applying a table that way (`apply_table_body`), streaming a store
//! file out (`file_body`) and a received version into the store
//! (`receive_body`). Every body from a peer is capped before it is
//! buffered, and none but the small ones is ever held whole: a table holds
//! one record and one frame, a file a frame or two. It must not decide
//! what a request means or whether a version is wanted.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use lockbox_crypto::sign::Signed;
use lockbox_fs::Name;

use super::{
    MAX_CIPHERTEXT, MAX_TABLE_BODY, TABLE_BATCH_BYTES, TABLE_BATCH_RECORDS, TABLE_BODY_IDLE,
};
use crate::records::{FileVersion, ListDecoder};
use crate::replica::{Admission, Refusal, Replica, Table, MAX_TABLE_ENTRIES};

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
    /// Nothing of the body arrived for too long.
    #[error("the body stalled: nothing arrived for {secs} seconds")]
    Stalled {
        /// How long nothing arrived.
        secs: u64,
    },
}

/// Whether a body declares (by its `content-length`) more than `cap` bytes.
pub(super) fn declared_over<B: hyper::body::Body>(body: &B, cap: usize) -> bool {
    body.size_hint().lower() > cap as u64
}

/// Why a record list from a peer was not read to its end.
#[derive(Debug, thiserror::Error)]
pub(super) enum ListBodyError {
    /// The body: too long, broken off or stalled.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The list in it is malformed.
    #[error(transparent)]
    List(#[from] crate::Error),
}

/// A record list read from a body as it arrives (see
/// [`ListDecoder`]): one record at a time, holding at most one record and
/// the frame it came in. The declared length is checked against
/// [`MAX_TABLE_BODY`] before anything is read; the count against the
/// table's maximum as soon as its four bytes are in; a body that sends
/// nothing for [`TABLE_BODY_IDLE`] is given up.
pub(super) struct ListBody<B> {
    body: B,
    dec: ListDecoder,
    /// The rest of the frame being decoded.
    frame: Bytes,
    ended: bool,
}

impl<B> ListBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A list of at most `max_items` records in `body`; refused unread when
    /// the body declares more than a table can be.
    pub(super) fn new(body: B, max_items: usize) -> Result<Self, BodyError> {
        if declared_over(&body, MAX_TABLE_BODY) {
            return Err(BodyError::TooLarge {
                cap: MAX_TABLE_BODY,
            });
        }
        Ok(ListBody {
            body,
            dec: ListDecoder::new(max_items),
            frame: Bytes::new(),
            ended: false,
        })
    }

    /// The next record, or `None` at the end of a well-formed list.
    pub(super) async fn next(&mut self) -> Result<Option<Vec<u8>>, ListBodyError> {
        loop {
            let mut input = &self.frame[..];
            let got = self.dec.next(&mut input);
            let used = self.frame.len() - input.len();
            self.frame = self.frame.slice(used..);
            if let Some(item) = got? {
                return Ok(Some(item));
            }
            if self.ended {
                return Ok(None);
            }
            let frame = match tokio::time::timeout(TABLE_BODY_IDLE, self.body.frame()).await {
                Err(_) => {
                    return Err(BodyError::Stalled {
                        secs: TABLE_BODY_IDLE.as_secs(),
                    }
                    .into())
                }
                Ok(None) => {
                    self.ended = true;
                    self.dec.finish()?;
                    return Ok(None);
                }
                Ok(Some(Err(e))) => return Err(BodyError::Read(e.into()).into()),
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                self.frame = data;
            }
        }
    }
}

/// Why a table body from a peer was not applied whole.
#[derive(Debug, thiserror::Error)]
pub(super) enum TableBodyError {
    /// The body: too long, broken off or stalled.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The list is malformed (the records before the fault were applied).
    #[error("bad {table} list: {source}")]
    List {
        /// The table's path segment.
        table: &'static str,
        /// What is wrong with it.
        source: crate::Error,
    },
    /// A record was refused (the first one).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A blocking task failed (a bug).
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

impl TableBodyError {
    /// The status a POST of the table is answered with.
    pub(super) fn status(&self) -> u16 {
        match self {
            TableBodyError::Body(BodyError::TooLarge { .. } | BodyError::OverLimit) => 413,
            TableBodyError::Body(BodyError::Stalled { .. }) => 408,
            TableBodyError::Body(_) => 400,
            TableBodyError::List { source, .. } => match source {
                crate::Error::TooManyRecords { .. } | crate::Error::TooLarge { .. } => 413,
                _ => 400,
            },
            TableBodyError::Refused(r) => r.status(),
            TableBodyError::Task(_) => 500,
        }
    }
}

/// Read a table body as a stream and apply its records as they arrive,
/// a batch at a time (at most [`TABLE_BATCH_RECORDS`] records or
/// [`TABLE_BATCH_BYTES`] per blocking task), so that neither the body nor
/// the table is ever held whole. Each record is signed and checked on its
/// own, so applying the valid ones before the end of the body has been
/// seen is safe: a body that turns out cut short, or to go on past its
/// last record, is an error *after* the records that arrived whole were
/// applied. With `stop_at_refusal` (a POST) the first refused record ends
/// the reading and is the answer; otherwise (a pull) the rest is applied
/// and the first refusal returned at the end.
pub(super) async fn apply_table_body<B>(
    replica: Arc<Replica>,
    table: Table,
    body: B,
    stop_at_refusal: bool,
) -> Result<(), TableBodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut list = ListBody::new(body, MAX_TABLE_ENTRIES)?;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut batch_bytes = 0;
    let mut refused = None;
    let apply = |items: Vec<Vec<u8>>| {
        let replica = replica.clone();
        tokio::task::spawn_blocking(move || {
            replica.apply_table_records(table, items, stop_at_refusal)
        })
    };
    let read = loop {
        match list.next().await {
            Ok(Some(item)) => {
                batch_bytes += item.len();
                batch.push(item);
                if batch.len() >= TABLE_BATCH_RECORDS || batch_bytes >= TABLE_BATCH_BYTES {
                    batch_bytes = 0;
                    if let Err(r) = apply(std::mem::take(&mut batch)).await? {
                        refused.get_or_insert(r);
                        if stop_at_refusal {
                            break Ok(());
                        }
                    }
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    // What arrived whole before the end (or a fault) is applied too.
    let stopped = stop_at_refusal && refused.is_some();
    if !stopped && !batch.is_empty() {
        if let Err(r) = apply(batch).await? {
            refused.get_or_insert(r);
        }
    }
    // For a POST, a refused record came before whatever ended the reading.
    if stop_at_refusal {
        if let Some(r) = refused.take() {
            return Err(r.into());
        }
    }
    match read {
        Err(ListBodyError::Body(e)) => Err(e.into()),
        Err(ListBodyError::List(source)) => Err(TableBodyError::List {
            table: table.path(),
            source,
        }),
        Ok(()) => refused.map_or(Ok(()), |r| Err(r.into())),
    }
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

/// Files up to this size are sent as one body read at once, on the
/// caller's task: a small file (most secrets) was just written and is in
/// the page cache, and reading it costs less than what streaming it did
/// per push and peer (a task, two hand-offs to the blocking pool and a
/// 256 KiB buffer). The caller opened the file on its task already.
const READ_AT_ONCE: u64 = 64 * 1024;

/// The body of `file`: read at once when it is small, else streamed from
/// a blocking thread.
pub(super) fn file_body(mut file: std::fs::File) -> Body {
    let len = file.metadata().map_or(u64::MAX, |m| m.len());
    if len <= READ_AT_ONCE {
        // One more byte: the read that finds the end needs no new buffer.
        let mut buf = Vec::with_capacity(len as usize + 1);
        return match file.read_to_end(&mut buf) {
            Ok(_) => full(buf),
            Err(e) => {
                let (tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
                tx.abort(e);
                body.boxed()
            }
        };
    }
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
    // One frame waits in the channel while the worker writes the one
    // before: what a push holds is a frame or two, whatever its length
    // (flow control holds the rest back at the sender).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Bytes, BodyError>>(1);
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

    /// A file's body holds its bytes whether it is read at once (small)
    /// or streamed (large).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_body_holds_the_file_small_or_large() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            READ_AT_ONCE as usize,
            READ_AT_ONCE as usize + 1,
            700_000,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{len}"));
            std::fs::write(&p, &bytes).unwrap();
            let body = file_body(std::fs::File::open(&p).unwrap());
            let got = body.collect().await.unwrap().to_bytes();
            assert!(got[..] == bytes[..], "{len} bytes");
        }
    }

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

    /// A list sent a piece at a time over a body that stays open: each
    /// record is yielded as soon as it is whole, not at the end.
    #[tokio::test]
    async fn a_list_body_yields_each_record_as_it_arrives() {
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
        let mut list = ListBody::new(body, 10).unwrap();
        let enc = crate::records::encode_list([&b"first"[..], &b"second"[..]]);
        let (a, b) = enc.split_at(4 + 4 + 5 + 2);
        tx.send_data(Bytes::copy_from_slice(a)).await.unwrap();
        let got = tokio::time::timeout(PROMPTLY, list.next()).await.unwrap();
        assert_eq!(got.unwrap(), Some(b"first".to_vec()));
        tx.send_data(Bytes::copy_from_slice(b)).await.unwrap();
        let got = tokio::time::timeout(PROMPTLY, list.next()).await.unwrap();
        assert_eq!(got.unwrap(), Some(b"second".to_vec()));
        drop(tx);
        assert_eq!(list.next().await.unwrap(), None);
    }

    /// A count over the maximum is refused from its four bytes; the rest
    /// of the body (never sent here) is not waited for.
    #[tokio::test]
    async fn a_list_body_with_too_many_records_is_refused_at_its_count() {
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
        let mut list = ListBody::new(body, 10).unwrap();
        tx.send_data(Bytes::from_static(&[0, 0, 0, 11, 0]))
            .await
            .unwrap();
        let got = tokio::time::timeout(PROMPTLY, list.next()).await.unwrap();
        assert!(
            matches!(
                got,
                Err(ListBodyError::List(crate::Error::TooManyRecords {
                    count: 11,
                    ..
                }))
            ),
            "{got:?}"
        );
        drop(tx);
    }

    /// Cut short, or going on past its last record: an error after the
    /// records that were whole.
    #[tokio::test]
    async fn a_list_body_cut_short_or_too_long_fails_after_its_whole_records() {
        let enc = crate::records::encode_list([&b"one"[..], &b"two"[..]]);
        let mut long = enc.clone();
        long.push(0);
        for (what, bytes, whole, fault) in [
            ("short", &enc[..enc.len() - 1], 1, "truncated"),
            ("long", &long[..], 2, "unexpected byte"),
        ] {
            let body = Full::new(Bytes::copy_from_slice(bytes));
            let mut list = ListBody::new(body, 10).unwrap();
            let mut got = Vec::new();
            let e = loop {
                match list.next().await {
                    Ok(Some(item)) => got.push(item),
                    Ok(None) => panic!("{what}: no error"),
                    Err(e) => break e.to_string(),
                }
            };
            assert_eq!(got.len(), whole, "{what}");
            assert!(e.contains(fault), "{what}: {e}");
        }
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
