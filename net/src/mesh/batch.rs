//! Batched pushes: several small versions to one peer in one request
//! (`POST /lockbox/push/<user>`), for bursts of small files (a `cp -r`, a
//! `git checkout`, `tar x`).
//!
//! A push of one file costs a request of its own: its headers (the record,
//! hex-encoded), a stream, a TLS record or two, a task on each side.
//! During a burst that per-request cost, not the bytes, is most of what the
//! mesh spends. So each peer has a queue: the first version goes alone,
//! as it always did (no added latency), and whatever is queued while a
//! push is in flight goes next as one batch.
//!
//! The body is a list (see `records::encode_list`) of items, each itself
//! a list of three: the stored name, the signed record, the ciphertext.
//! The answer is a JSON array with one status per item, in order, as a
//! single push would have answered it. A peer that does not know the
//! route answers 404; the sender then pushes to it one at a time.
//!
//! Only small versions are batched ([`MAX_FILE`]); a batch holds at most
//! [`MAX_ITEMS`] of them and [`MAX_BODY`] bytes, and the receiver checks
//! every bound before it reads or allocates past it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use lockbox_crypto::sign::Signed;
use lockbox_fs::escape::Escape;
use lockbox_fs::store::StagedFile;
use lockbox_fs::Name;

use super::body::{after_small_body, full, read_capped, refuse, respond, Body};
use super::route::Route;
use super::Mesh;
use crate::records::FileVersion;
use crate::replica::{Admission, Refusal};

/// The largest ciphertext a batch carries; larger versions are pushed
/// alone (streamed).
pub const MAX_FILE: u64 = 64 * 1024;
/// Most versions in one batch.
pub const MAX_ITEMS: usize = 256;
/// The largest batch body.
pub const MAX_BODY: u64 = 4 << 20;

/// One version in a batch, as sent: the stored name, the record's bytes,
/// the ciphertext.
pub type Outgoing = (Name, Vec<u8>, Vec<u8>);

/// One version in a batch, as received: the record is verified.
#[derive(Debug)]
pub struct Item {
    /// The name it is pushed as.
    pub name: Name,
    /// Its signed record (signature checked).
    pub rec: Signed<FileVersion>,
    /// Its ciphertext.
    pub body: Vec<u8>,
}

/// Why a batch body was refused whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// It ends inside a length or an item.
    #[error("the batch is truncated")]
    Truncated,
    /// More items than [`MAX_ITEMS`].
    #[error("more than {MAX_ITEMS} versions in one batch")]
    TooMany,
    /// Bytes after the last item.
    #[error("trailing bytes after the batch")]
    Trailing,
    /// An item is not three parts, or its name or record does not parse.
    #[error("item {index}: {why}")]
    BadItem {
        /// Its place in the batch.
        index: usize,
        /// What is wrong.
        why: String,
    },
}

/// Encode `items` (name, record bytes, ciphertext) as a batch body.
pub fn encode(items: &[Outgoing]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for (name, rec, body) in items {
        let parts: [&[u8]; 3] = [name.as_bytes(), rec, body];
        let len: usize = 4 + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&3u32.to_be_bytes());
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
    }
    out
}

/// Take a big-endian u32 length off the front of `b`.
fn take_len(b: &mut &[u8]) -> Result<usize, BatchError> {
    let (n, rest) = b.split_first_chunk::<4>().ok_or(BatchError::Truncated)?;
    *b = rest;
    Ok(u32::from_be_bytes(*n) as usize)
}

/// Take `n` bytes off the front of `b`.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], BatchError> {
    if b.len() < n {
        return Err(BatchError::Truncated);
    }
    let (x, rest) = b.split_at(n);
    *b = rest;
    Ok(x)
}

/// Decode a batch body (at most [`MAX_BODY`] bytes, which the caller
/// capped before reading it): every item's record is verified here; what
/// the replica thinks of each is the caller's.
pub fn decode(mut b: &[u8]) -> Result<Vec<Item>, BatchError> {
    let count = take_len(&mut b)?;
    if count > MAX_ITEMS {
        return Err(BatchError::TooMany);
    }
    let mut items = Vec::with_capacity(count);
    for index in 0..count {
        let len = take_len(&mut b)?;
        let mut item = take(&mut b, len)?;
        let bad = |why: String| BatchError::BadItem { index, why };
        if take_len(&mut item)? != 3 {
            return Err(bad("not three parts".into()));
        }
        let mut parts = [&[][..]; 3];
        for p in &mut parts {
            let n = take_len(&mut item)?;
            *p = take(&mut item, n)?;
        }
        if !item.is_empty() {
            return Err(bad("trailing bytes".into()));
        }
        let [name, rec, body] = parts;
        if body.len() as u64 > MAX_FILE {
            return Err(bad(format!("a ciphertext over {MAX_FILE} bytes")));
        }
        let name = Name::new(name.to_vec()).map_err(|e| bad(e.to_string()))?;
        let rec = Signed::<FileVersion>::from_bytes(rec).map_err(|e| bad(e.to_string()))?;
        items.push(Item {
            name,
            rec,
            body: body.to_vec(),
        });
    }
    if !b.is_empty() {
        return Err(BatchError::Trailing);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_without_a_panic() {
        assert_eq!(decode(&[]).unwrap_err(), BatchError::Truncated);
        assert_eq!(decode(&[0, 0, 0, 0]).unwrap().len(), 0);
        assert_eq!(decode(&[0, 0, 0, 0, 1]).unwrap_err(), BatchError::Trailing);
        assert_eq!(
            decode(&((MAX_ITEMS as u32 + 1).to_be_bytes())).unwrap_err(),
            BatchError::TooMany
        );
        // An item that claims more bytes than follow.
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&b).unwrap_err(), BatchError::Truncated);
        // An item of two parts.
        let mut b = 1u32.to_be_bytes().to_vec();
        let item = [2u32.to_be_bytes(), 0u32.to_be_bytes(), 0u32.to_be_bytes()].concat();
        b.extend_from_slice(&(item.len() as u32).to_be_bytes());
        b.extend_from_slice(&item);
        assert!(matches!(
            decode(&b),
            Err(BatchError::BadItem { index: 0, .. })
        ));
    }

    #[test]
    fn an_item_with_a_bad_record_is_refused() {
        let name = Name::new("a").unwrap();
        let b = encode(&[(name, b"not a record".to_vec(), vec![1, 2, 3])]);
        assert!(matches!(
            decode(&b),
            Err(BatchError::BadItem { index: 0, .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes);
        }
    }
}

impl Mesh {
    /// `POST /lockbox/push/<user>` from the envoy `from` (proven on the
    /// connection): each item is decided and installed as a push of its
    /// own would be; the answer lists their statuses in order.
    pub(super) async fn serve_push_batch(
        self: &Arc<Self>,
        from: Option<String>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let free = self.replica.store().free_percent().unwrap_or(100);
        if free <= self.cfg.disk_pressure_percent {
            self.refusing_for_disk();
            return after_small_body(req, refuse(&Refusal::DiskFull(free))).await;
        }
        let bytes = match read_capped(req.into_body(), MAX_BODY as usize).await {
            Ok(b) => b,
            Err(e) => return respond(413, e.to_string()),
        };
        let items = match decode(&bytes) {
            Ok(i) => i,
            Err(e) => return refuse(&Refusal::Bad(e.to_string())),
        };
        drop(bytes);
        let me = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let statuses = me.take_items(&items);
            if let Some(from) = from {
                for (it, s) in items.iter().zip(&statuses) {
                    if matches!(s, 200 | 201) {
                        me.learn_held(from.clone(), &it.name, it.rec.body());
                    }
                }
            }
            statuses
        })
        .await;
        match done {
            Ok(statuses) => respond(200, serde_json::to_vec(&statuses).unwrap_or_default()),
            Err(e) => respond(500, e.to_string()),
        }
    }

    /// Decide on each item of a batch and install those that are wanted,
    /// as pushes of their own would be; their statuses, in order. The
    /// wanted ones are staged first and made durable together (one sync
    /// for the batch, not one per file), then installed in order, each
    /// decided again under the change lock.
    fn take_items(&self, items: &[Item]) -> Vec<u16> {
        let status = |r: Result<Admission, Refusal>| match r {
            Ok(Admission::Same) => 200,
            Ok(Admission::Store(_)) => 201,
            Err(r) => r.status(),
        };
        let mut staged: Vec<Result<Option<StagedFile>, Refusal>> =
            items.iter().map(|it| self.stage_item(it)).collect();
        let ready: Vec<&StagedFile> = staged
            .iter()
            .filter_map(|s| s.as_ref().ok().and_then(Option::as_ref))
            .collect();
        if let Err(e) = self.replica.store().sync_staged(&ready) {
            tracing::warn!("cannot make a received batch durable: {e}");
            for s in &mut staged {
                if matches!(s, Ok(Some(_))) {
                    // Dropped: its temp file goes.
                    *s = Err(Refusal::Internal(format!("sync: {e}")));
                }
            }
        }
        items
            .iter()
            .zip(staged)
            .map(|(it, s)| {
                status(match s {
                    Ok(None) => Ok(Admission::Same),
                    Ok(Some(staged)) => self.replica.install(&it.name, &it.rec, staged),
                    Err(r) => Err(r),
                })
            })
            .collect()
    }

    /// Decide on one item of a batch and stage it, unsynced, if it is
    /// wanted (`None`: this envoy holds it already).
    fn stage_item(&self, it: &Item) -> Result<Option<StagedFile>, Refusal> {
        self.size_allowed(&it.name, it.rec.body())?;
        match self.replica.admit(&it.name, &it.rec)? {
            Admission::Same => return Ok(None),
            Admission::Store(_) => {}
        }
        self.replica
            .stage_bytes_unsynced(it.rec.body(), &it.body)
            .map(Some)
    }
}

/// Per peer: the versions waiting for a push, and whether a sender runs.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// In the order they came; `queued` holds the same names, to skip a
    /// name already waiting in constant time.
    names: Vec<Name>,
    queued: std::collections::HashSet<Name>,
    sending: bool,
    /// The peer does not know the batch route: push to it one at a time.
    alone: bool,
}

/// How a batch went, as a whole.
enum Sent {
    /// The peer answered for each item.
    Answered,
    /// The peer does not know the route (an envoy from before batches).
    NotServed,
    /// The request failed: each version is pushed alone, with retries.
    Failed(String),
}

impl Mesh {
    /// Push `name`'s current version to `addr`: at once if nothing is in
    /// flight to it, else with the next batch (see the module comment).
    pub(super) fn queue_push(self: &Arc<Self>, addr: SocketAddr, name: Name) {
        let start = match self.queues.lock() {
            Ok(mut q) => {
                let e = q.entry(addr).or_default();
                if e.queued.insert(name.clone()) {
                    e.names.push(name);
                }
                !std::mem::replace(&mut e.sending, true)
            }
            Err(_) => return,
        };
        if start {
            tokio::spawn(self.clone().send_queue(addr));
        }
    }

    /// Push what is queued for `addr` until the queue is empty: one
    /// version alone, several small ones as batches, large ones each
    /// streamed on a task of its own.
    async fn send_queue(self: Arc<Self>, addr: SocketAddr) {
        loop {
            let (names, alone) = match self.queues.lock() {
                Ok(mut q) => {
                    let e = q.entry(addr).or_default();
                    if e.names.is_empty() {
                        e.sending = false;
                        return;
                    }
                    e.queued.clear();
                    (std::mem::take(&mut e.names), e.alone)
                }
                Err(_) => return,
            };
            let mut small = Vec::new();
            for name in names {
                let fits = self
                    .replica
                    .record(&name)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.body().ciphertext_len <= MAX_FILE);
                if fits && !alone {
                    small.push(name);
                } else {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _permit = me.transfers.acquire().await;
                        me.push(addr, &name).await;
                    });
                }
            }
            if small.len() == 1 {
                let _permit = self.transfers.acquire().await;
                self.push(addr, &small[0]).await;
                continue;
            }
            let mut rest = small.as_slice();
            while !rest.is_empty() {
                let _permit = self.transfers.acquire().await;
                let (items, taken) = self.batch_of(rest);
                rest = &rest[taken..];
                let mut alone: Vec<&Name> = items.iter().map(|(name, _, _)| name).collect();
                match self.push_batch(addr, &items).await {
                    Sent::Answered => continue,
                    Sent::NotServed => {
                        if let Ok(mut q) = self.queues.lock() {
                            q.entry(addr).or_default().alone = true;
                        }
                        // The rest of this burst goes alone too.
                        alone.extend(rest);
                        rest = &[];
                    }
                    Sent::Failed(e) => {
                        tracing::debug!("a batch of {} to {addr} failed: {e}", items.len());
                    }
                }
                for name in alone {
                    self.push(addr, name).await;
                }
            }
        }
    }

    /// The first versions of `names` that fit in one batch (their
    /// current records and ciphertexts), and how many names that took.
    fn batch_of(&self, names: &[Name]) -> (Vec<Outgoing>, usize) {
        use std::io::Read as _;
        let mut items = Vec::new();
        let mut size = 4u64;
        let mut taken = 0;
        for name in names.iter().take(MAX_ITEMS) {
            let Ok(Some(rec)) = self.replica.record(name) else {
                taken += 1;
                continue;
            };
            let len = rec.body().ciphertext_len;
            let rec = rec.to_bytes();
            let item = 24 + name.as_bytes().len() as u64 + rec.len() as u64 + len;
            if !items.is_empty() && size + item > MAX_BODY {
                break;
            }
            taken += 1;
            let mut body = Vec::with_capacity(len as usize);
            let read = self
                .replica
                .store()
                .open_file(name)
                .ok()
                .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut body).ok());
            if read.is_none() || body.len() as u64 != len {
                // Replaced or removed since its record was read: its own
                // push (of whatever is current then) follows from the
                // change that did it.
                continue;
            }
            size += item;
            items.push((name.clone(), rec, body));
        }
        (items, taken)
    }

    /// POST `items` to `addr` as one batch.
    async fn push_batch(&self, addr: SocketAddr, items: &[Outgoing]) -> Sent {
        if items.is_empty() {
            return Sent::Answered;
        }
        let req = match Request::builder()
            .method(Method::POST)
            .uri(self.uri(addr, &self.path(&Route::PushBatch)))
            .body(full(encode(items)))
        {
            Ok(r) => r,
            Err(e) => return Sent::Failed(e.to_string()),
        };
        let resp = match self.request(addr, req).await {
            Ok(r) => r,
            Err(e) => return Sent::Failed(e.to_string()),
        };
        let status = resp.status().as_u16();
        let text = read_capped(resp.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        match status {
            200 => {}
            404 | 405 => return Sent::NotServed,
            507 => {
                self.disk_refused_by(addr);
                return Sent::Answered;
            }
            s => return Sent::Failed(format!("{s}: {}", String::from_utf8_lossy(&text))),
        }
        let Ok(statuses) = serde_json::from_slice::<Vec<u16>>(&text) else {
            return Sent::Failed("an answer that is not a list of statuses".into());
        };
        if statuses.len() != items.len() {
            return Sent::Failed(format!(
                "{} statuses for {} versions",
                statuses.len(),
                items.len()
            ));
        }
        for ((name, rec, _), s) in items.iter().zip(statuses) {
            match s {
                200..=299 => {
                    if let Ok(r) = Signed::<FileVersion>::from_trusted_bytes(rec) {
                        self.learn_version(addr, name, r.body());
                    }
                }
                507 => self.disk_refused_by(addr),
                s => tracing::debug!("push of {} to {addr} in a batch: {s}", name.escaped()),
            }
        }
        Sent::Answered
    }
}
