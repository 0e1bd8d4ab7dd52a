//! The peer server: the accept loop on the peer port (connections counted
//! and capped per address and in all, TLS handshake, one HTTP/2 connection
//! per peer with its requests in flight capped, and the [`PeerSession`] of
//! each: its TLS exporter and who proved membership on it) and `handle`,
//! which answers each request by its route. Until a hello on the
//! connection proved membership, every request but the hello is refused
//! with `403` before its body is read. It owns the server side of every
//! endpoint but the hello (in [`super::hello`]); it must not open
//! connections to peers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lockbox_crypto::circle::Endorsement;
use lockbox_crypto::sign::PublicKey;
use lockbox_fs::Name;
use tokio::net::TcpListener;

use super::body::{
    after_small_body, apply_table_body, declared_over, file_body, receive_body, refuse, respond,
    Body, BodyError,
};
use super::route::Route;
use super::{
    record_header, Mesh, H_RECORD, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS,
    MAX_STREAMS_PER_CONNECTION, MAX_TABLE_BODY,
};
use crate::proof::EXPORTER_LABEL;
use crate::records;
use crate::replica::{Admission, Refusal};

/// One accepted connection as the server sees it: the TLS session's
/// exporter value, which the asker's session proof must sign, and the
/// member that proved itself on it, once one has.
pub(super) struct PeerSession {
    pub(super) exporter: [u8; 32],
    proven: Mutex<Option<(String, PublicKey)>>,
    /// A join begun on this connection, waiting for its confirmation.
    join: Mutex<Option<super::join::Begun>>,
}

impl PeerSession {
    pub(super) fn new(exporter: [u8; 32]) -> Self {
        PeerSession {
            exporter,
            proven: Mutex::new(None),
            join: Mutex::new(None),
        }
    }

    /// Keeps the join begun on this connection until its confirmation.
    pub(super) fn begin_join(&self, b: super::join::Begun) {
        if let Ok(mut j) = self.join.lock() {
            *j = Some(b);
        }
    }

    /// The join begun on this connection, once.
    pub(super) fn take_join(&self) -> Option<super::join::Begun> {
        self.join.lock().ok()?.take()
    }

    /// Marks the connection proven by the member of `e`. A connection
    /// speaks for one envoy: a second hello as another one is refused.
    pub(super) fn prove(&self, e: &Endorsement) -> Result<(), String> {
        let mut p = self
            .proven
            .lock()
            .map_err(|_| "connection state poisoned".to_owned())?;
        match &*p {
            Some((envoy, key)) if *envoy != e.envoy || *key != e.signing_key => Err(format!(
                "this connection already proved to be envoy {envoy:?}"
            )),
            _ => {
                *p = Some((e.envoy.clone(), e.signing_key));
                Ok(())
            }
        }
    }

    /// The envoy proven on this connection, if any.
    fn proven(&self) -> Option<(String, PublicKey)> {
        self.proven.lock().ok().and_then(|p| p.clone())
    }
}

/// The connections being served, counted by remote address, and when a
/// refusal was last logged (at most once a minute per address, and once a
/// minute for the overall limit). Pure: the clock is passed in.
#[derive(Debug, Default)]
struct Connections {
    per_address: HashMap<IpAddr, usize>,
    total: usize,
    logged: HashMap<IpAddr, Instant>,
    logged_full: Option<Instant>,
}

/// Why a connection was closed after accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Its address has [`MAX_CONNECTIONS_PER_ADDRESS`] open already.
    Address,
    /// [`MAX_CONNECTIONS`] are open already.
    Full,
}

/// How often a refusal is logged, at most (per address, or overall).
const LOG_REFUSALS_EVERY: Duration = Duration::from_secs(60);

impl Connections {
    /// Count a new connection from `ip`, or refuse it: `Err` with whether
    /// to log the refusal now.
    fn open(&mut self, ip: IpAddr, now: Instant) -> Result<(), (Refused, bool)> {
        let due = |last: Option<&Instant>| {
            last.is_none_or(|t| now.saturating_duration_since(*t) >= LOG_REFUSALS_EVERY)
        };
        if self.total >= MAX_CONNECTIONS {
            let log = due(self.logged_full.as_ref());
            if log {
                self.logged_full = Some(now);
            }
            return Err((Refused::Full, log));
        }
        let n = self.per_address.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_ADDRESS {
            let log = due(self.logged.get(&ip));
            if log {
                // Forget addresses not refused for a while, so the map
                // stays as small as the set of recent offenders.
                self.logged
                    .retain(|_, t| now.saturating_duration_since(*t) < LOG_REFUSALS_EVERY);
                self.logged.insert(ip, now);
            }
            return Err((Refused::Address, log));
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// A connection from `ip` ended.
    fn close(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&ip);
            }
            self.total = self.total.saturating_sub(1);
        }
    }
}

/// One counted connection; uncounted when dropped, however it ends.
struct Counted {
    conns: Arc<Mutex<Connections>>,
    ip: IpAddr,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Ok(mut c) = self.conns.lock() {
            c.close(self.ip);
        }
    }
}

/// The accept loop of the peer port. Each connection is counted by its
/// remote address before anything else: past
/// [`MAX_CONNECTIONS_PER_ADDRESS`] from one address, or
/// [`MAX_CONNECTIONS`] in all, it is closed at once (logged at most once a
/// minute). Each accepted one gets a TLS handshake (10 seconds at most),
/// then HTTP/2 with at most [`MAX_STREAMS_PER_CONNECTION`] requests in
/// flight and keep-alive pings, so that a peer that vanished frees its
/// place.
pub(super) async fn serve(mesh: Arc<Mesh>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let conns = Arc::new(Mutex::new(Connections::default()));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("peer port accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let opened = match conns.lock() {
            Ok(mut c) => c.open(remote.ip(), Instant::now()),
            Err(_) => Ok(()),
        };
        let counted = match opened {
            Ok(()) => Counted {
                conns: conns.clone(),
                ip: remote.ip(),
            },
            Err((why, log)) => {
                if log {
                    match why {
                        Refused::Address => tracing::warn!(
                            "closed a connection from {}: it has {MAX_CONNECTIONS_PER_ADDRESS} \
                             open to the peer port already (the most from one address)",
                            remote.ip()
                        ),
                        Refused::Full => tracing::warn!(
                            "closed a connection from {}: {MAX_CONNECTIONS} are open to the \
                             peer port already (the most in all)",
                            remote.ip()
                        ),
                    }
                }
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let mesh = mesh.clone();
        tokio::spawn(async move {
            let _counted = counted;
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!("refused a peer connection from {remote}: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            let exporter =
                match tls
                    .get_ref()
                    .1
                    .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
                {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::info!("no TLS exporter for the connection from {remote}: {e}");
                        return;
                    }
                };
            let session = Arc::new(PeerSession::new(exporter));
            let service = hyper::service::service_fn(move |req| {
                let mesh = mesh.clone();
                let session = session.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(mesh.handle(remote, &session, req).await)
                }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .max_frame_size(1 << 20)
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20))
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!("peer connection from {remote} ended: {e}");
            }
        });
    }
}

impl Mesh {
    pub(super) async fn handle(
        self: Arc<Self>,
        remote: SocketAddr,
        session: &PeerSession,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let route = Route::parse(req.method(), req.uri().path(), self.replica.user().as_str());
        // The hello is the one request an unproven connection may make.
        match &route {
            Ok(Route::Hello) => return self.serve_hello(remote, session, req).await,
            Ok(Route::Join) => return self.serve_join(remote, session, req).await,
            Ok(Route::JoinConfirm) => return self.serve_join_confirm(remote, session, req).await,
            Ok(Route::OldHello) => {
                return respond(
                    426,
                    format!(
                        "envoy {:?} speaks lockbox protocol {}: run the same lockbox version \
                         on both",
                        self.replica.envoy().as_str(),
                        super::PROTOCOL_VERSION
                    ),
                )
            }
            _ => {}
        }
        if !self.still_member(session) {
            // Not read: the body of an unproven peer costs nothing.
            return respond(403, "prove membership first: say hello on this connection");
        }
        let route = match route {
            Ok(r) => r,
            Err(e) => {
                return match e.refusal() {
                    Some(r) => after_small_body(req, refuse(&r)).await,
                    None => respond(404, "no such endpoint"),
                }
            }
        };
        match route {
            Route::Hello | Route::OldHello | Route::Join | Route::JoinConfirm => {
                respond(500, "answered above")
            }
            Route::Manifest | Route::File(_) if self.holding_back() => respond(
                503,
                "catching up after a long absence: ask again after its next catch-up",
            ),
            Route::Manifest => {
                let replica = self.replica.clone();
                match tokio::task::spawn_blocking(move || replica.manifest_bytes()).await {
                    Ok(b) => respond(200, b),
                    Err(e) => respond(500, e.to_string()),
                }
            }
            Route::File(name) => self.serve_file(&name),
            Route::Push(name) => {
                let from = session.proven().map(|(envoy, _)| envoy);
                self.serve_push(name, from, req).await
            }
            Route::PushBatch => {
                let from = session.proven().map(|(envoy, _)| envoy);
                self.serve_push_batch(from, req).await
            }
            Route::GetTable(table) => {
                let all = self.replica.table_records(table);
                respond(200, records::encode_list(all.iter().map(|v| v.as_slice())))
            }
            Route::PostTable(table) => {
                // Refused unread when no table can be that long; else it
                // waits for a permit with its body unread (flow control
                // holds the sender), then is read one record at a time.
                if declared_over(req.body(), MAX_TABLE_BODY) {
                    let e = BodyError::TooLarge {
                        cap: MAX_TABLE_BODY,
                    };
                    return respond(413, e.to_string());
                }
                let Ok(_permit) = self.table_permits.acquire().await else {
                    return respond(503, "shutting down");
                };
                match apply_table_body(self.replica.clone(), table, req.into_body(), true).await {
                    Ok(()) => respond(200, "ok"),
                    Err(e) => respond(e.status(), e.to_string()),
                }
            }
        }
    }

    /// Whether the connection of `session` was proven by an envoy that is
    /// still a member (one that left or was evicted since is refused).
    fn still_member(&self, session: &PeerSession) -> bool {
        session.proven().is_some_and(|(envoy, key)| {
            self.replica
                .member(&envoy)
                .is_some_and(|m| m.signing_key == key)
        })
    }

    pub(super) fn serve_file(&self, name: &Name) -> Response<Body> {
        let rec = match self.replica.record(name) {
            Ok(Some(r)) => r,
            Ok(None) => return respond(404, "no such file"),
            Err(e) => return respond(500, e.to_string()),
        };
        match self.replica.store().open_file(name) {
            Ok(f) => {
                let mut r = Response::new(file_body(f));
                if let Ok(v) = http::HeaderValue::from_str(&hex::encode(rec.to_bytes())) {
                    r.headers_mut().insert(H_RECORD, v);
                }
                r
            }
            Err(_) => respond(404, "no such file"),
        }
    }

    /// A push from the envoy `from` (proven on the connection).
    pub(super) async fn serve_push(
        &self,
        name: Name,
        from: Option<String>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        // Everything is decided from the record before the body is read.
        let rec = match record_header(req.headers()) {
            Ok(r) => r,
            Err(e) => return after_small_body(req, refuse(&Refusal::Bad(e.to_string()))).await,
        };
        let free = self.replica.store().free_percent().unwrap_or(100);
        let early = if let Err(r) = self.size_allowed(&name, rec.body()) {
            Some(refuse(&r))
        } else if free <= self.cfg.disk_pressure_percent {
            self.refusing_for_disk();
            Some(refuse(&Refusal::DiskFull(free)))
        } else {
            match self.replica.admit(&name, &rec) {
                Ok(Admission::Same) => Some(respond(200, "already held")),
                Ok(Admission::Store(_)) => None,
                Err(r) => Some(refuse(&r)),
            }
        };
        if let Some(resp) = early {
            return after_small_body(req, resp).await;
        }
        let version = rec.body().clone();
        let got = receive_body(self.replica.clone(), name.clone(), rec, req.into_body()).await;
        if let (Ok(_), Some(from)) = (&got, from) {
            self.learn_held(from, &name, &version);
        }
        match got {
            Ok(Admission::Same) => respond(200, "already held"),
            Ok(Admission::Store(n)) => respond(201, format!("stored as {n}")),
            Err(r) => refuse(&r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn connections_are_capped_per_address_and_freed_when_they_end() {
        let mut c = Connections::default();
        let t0 = Instant::now();
        for _ in 0..MAX_CONNECTIONS_PER_ADDRESS {
            assert_eq!(c.open(ip(1), t0), Ok(()));
        }
        // One more from that address is refused, and logged once.
        assert_eq!(c.open(ip(1), t0), Err((Refused::Address, true)));
        assert_eq!(c.open(ip(1), t0), Err((Refused::Address, false)));
        // Another address is not affected.
        assert_eq!(c.open(ip(2), t0), Ok(()));
        // A minute later a refusal is logged again.
        let later = t0 + LOG_REFUSALS_EVERY;
        assert_eq!(c.open(ip(1), later), Err((Refused::Address, true)));
        // One ends: one more is taken.
        c.close(ip(1));
        assert_eq!(c.open(ip(1), later), Ok(()));
        assert_eq!(c.total, MAX_CONNECTIONS_PER_ADDRESS + 1);
    }

    #[test]
    fn connections_are_capped_in_all() {
        let mut c = Connections::default();
        let t0 = Instant::now();
        let mut n = 0;
        'fill: for a in 0..=255u8 {
            for b in 0..=255u8 {
                if n == MAX_CONNECTIONS {
                    break 'fill;
                }
                assert_eq!(c.open(IpAddr::from([10, 1, a, b]), t0), Ok(()));
                n += 1;
            }
        }
        assert_eq!(c.open(ip(9), t0), Err((Refused::Full, true)));
        assert_eq!(c.open(ip(8), t0), Err((Refused::Full, false)));
        c.close(IpAddr::from([10, 1, 0, 0]));
        assert_eq!(c.open(ip(9), t0), Ok(()));
        // Closing an address that has none open changes nothing.
        c.close(ip(200));
        assert_eq!(c.total, MAX_CONNECTIONS);
    }
}
