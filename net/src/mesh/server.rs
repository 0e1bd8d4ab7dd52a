//! The peer server: the accept loop on the peer port (TLS handshake, one
//! HTTP/2 connection per peer) and `handle`, which answers each request
//! by its route. It owns the server side of every
//! endpoint but the hello (in [`super::hello`]); it must not open
//! connections to peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lockbox_fs::Name;
use tokio::net::TcpListener;

use super::body::{
    after_small_body, apply_table_body, declared_over, file_body, receive_body, refuse, respond,
    Body, BodyError,
};
use super::route::Route;
use super::{record_header, Mesh, H_RECORD, MAX_TABLE_BODY};
use crate::records;
use crate::replica::{Admission, Refusal};

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
            let service = hyper::service::service_fn(move |req| {
                let mesh = mesh.clone();
                async move { Ok::<_, std::convert::Infallible>(mesh.handle(remote, req).await) }
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
        req: Request<Incoming>,
    ) -> Response<Body> {
        let route = match Route::parse(req.method(), req.uri().path(), self.replica.user().as_str())
        {
            Ok(r) => r,
            Err(e) => {
                return match e.refusal() {
                    Some(r) => after_small_body(req, refuse(&r)).await,
                    None => respond(404, "no such endpoint"),
                }
            }
        };
        match route {
            Route::Hello => self.serve_hello(remote, &req),
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
