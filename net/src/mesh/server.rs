//! The peer server: the accept loop on the peer port (TLS handshake, one
//! HTTP/2 connection per peer, and the [`PeerSession`] of each: its TLS
//! exporter and who proved membership on it) and `handle`, which answers
//! each request by its route. Until a hello on the connection proved
//! membership, every request but the hello is refused with `403` before its
//! body is read. It owns the server side of every endpoint but the hello
//! (in [`super::hello`]); it must not open connections to peers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lockbox_crypto::circle::Endorsement;
use lockbox_crypto::sign::PublicKey;
use lockbox_fs::Name;
use tokio::net::TcpListener;

use super::body::{after_small_body, file_body, read_capped, receive_body, refuse, respond, Body};
use super::route::Route;
use super::{record_header, Mesh, H_RECORD, MAX_TABLE_BODY};
use crate::proof::EXPORTER_LABEL;
use crate::records;
use crate::replica::{Admission, Refusal};

/// One accepted connection as the server sees it: the TLS session's
/// exporter value, which the asker's session proof must sign, and the
/// member that proved itself on it, once one has.
pub(super) struct PeerSession {
    pub(super) exporter: [u8; 32],
    proven: Mutex<Option<(String, PublicKey)>>,
}

impl PeerSession {
    fn new(exporter: [u8; 32]) -> Self {
        PeerSession {
            exporter,
            proven: Mutex::new(None),
        }
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

pub(super) async fn serve(mesh: Arc<Mesh>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("peer port accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let mesh = mesh.clone();
        tokio::spawn(async move {
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
            Route::Hello | Route::OldHello => respond(500, "the hello is answered above"),
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
            Route::Push(name) => self.serve_push(name, req).await,
            Route::GetTable(table) => {
                let all = self.replica.table_records(table);
                respond(200, records::encode_list(all.iter().map(|v| v.as_slice())))
            }
            Route::PostTable(table) => match read_capped(req.into_body(), MAX_TABLE_BODY).await {
                Ok(body) => {
                    let replica = self.replica.clone();
                    match tokio::task::spawn_blocking(move || replica.apply_table(table, &body))
                        .await
                    {
                        Ok(Ok(())) => respond(200, "ok"),
                        Ok(Err(e)) => refuse(&e),
                        Err(e) => respond(500, e.to_string()),
                    }
                }
                Err(e) => respond(413, e.to_string()),
            },
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

    pub(super) async fn serve_push(&self, name: Name, req: Request<Incoming>) -> Response<Body> {
        // Everything is decided from the record before the body is read.
        let rec = match record_header(req.headers()) {
            Ok(r) => r,
            Err(e) => return after_small_body(req, refuse(&Refusal::Bad(e.to_string()))).await,
        };
        let free = self.replica.store().free_percent().unwrap_or(100);
        let early = if let Err(r) = self.size_allowed(&name, rec.body()) {
            Some(refuse(&r))
        } else if free <= self.cfg.disk_pressure_percent {
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
        match receive_body(self.replica.clone(), name, rec, req.into_body()).await {
            Ok(Admission::Same) => respond(200, "already held"),
            Ok(Admission::Store(n)) => respond(201, format!("stored as {n}")),
            Err(r) => refuse(&r),
        }
    }
}
