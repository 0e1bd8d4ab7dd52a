//! The client side of the peer port: one reused HTTP/2 connection over
//! mutual TLS per peer, proven by a hello before anything else is asked on
//! it, requests on it, and the endpoint paths. It must not decide what to
//! ask for (hello, catch-up and fan-out do).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::{full, Body};
use super::route::Route;
use super::{Hello, Mesh, PeerError};
use crate::proof::EXPORTER_LABEL;

/// One open connection to a peer: the HTTP/2 handle and the TLS session's
/// exporter value, which the session proofs on it sign.
#[derive(Clone)]
pub(super) struct PeerConn {
    pub(super) send: hyper::client::conn::http2::SendRequest<Body>,
    pub(super) exporter: [u8; 32],
}

impl Mesh {
    /// Opens a new connection to `addr`: TCP, mutual TLS, HTTP/2. Nothing is
    /// asked on it yet; the server refuses everything but a hello until a
    /// hello on this connection proves membership.
    async fn open(&self, addr: SocketAddr) -> Result<PeerConn, PeerError> {
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| PeerError::Connect { addr, source })?;
            let _ = tcp.set_nodelay(true);
            let connector = tokio_rustls::TlsConnector::from(self.client_tls.clone());
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|source| PeerError::Tls { addr, source })?;
            let exporter = tls
                .get_ref()
                .1
                .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
                .map_err(|e| PeerError::Tls {
                    addr,
                    source: std::io::Error::other(e),
                })?;
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .max_frame_size(1 << 20)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|source| PeerError::Http2 { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("connection to {addr} ended: {e}");
                }
            });
            Ok::<_, PeerError>(PeerConn { send, exporter })
        };
        tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| PeerError::ConnectTimeout { addr })?
    }

    /// The proven connection to `addr`, and the peer's hello when the
    /// connection is new: an open one is reused; otherwise a new one is
    /// opened and a hello exchanged on it, in which both sides prove
    /// membership. Only a connection whose peer proved membership is kept.
    pub(super) async fn connection_hello(
        &self,
        addr: SocketAddr,
    ) -> Result<(PeerConn, Option<Hello>), PeerError> {
        if let Some(c) = self.connections.lock().await.get(&addr) {
            if !c.send.is_closed() {
                return Ok((c.clone(), None));
            }
        }
        // Not under the lock: one slow peer must not hold up the others. Two
        // callers may race to open a connection to the same peer; the last
        // one kept wins and the other closes when dropped.
        let conn = self.open(addr).await?;
        let hello = self.exchange_hello(addr, &conn).await?;
        self.connections.lock().await.insert(addr, conn.clone());
        Ok((conn, Some(hello)))
    }

    /// The proven connection to `addr` (see [`Mesh::connection_hello`]).
    pub(super) async fn connection(
        &self,
        addr: SocketAddr,
    ) -> Result<hyper::client::conn::http2::SendRequest<Body>, PeerError> {
        Ok(self.connection_hello(addr).await?.0.send)
    }

    /// Sends `req` on `conn`, which may not have proven anything yet (the
    /// hello itself).
    pub(super) async fn request_on(
        &self,
        addr: SocketAddr,
        conn: &PeerConn,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PeerError> {
        let mut send = conn.send.clone();
        send.ready()
            .await
            .map_err(|source| PeerError::Connection { addr, source })?;
        send.send_request(req)
            .await
            .map_err(|source| PeerError::Request { addr, source })
    }

    pub(super) async fn request(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PeerError> {
        let mut send = self.connection(addr).await?;
        send.ready()
            .await
            .map_err(|source| PeerError::Connection { addr, source })?;
        match send.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.connections.lock().await.remove(&addr);
                Err(PeerError::Request { addr, source: e })
            }
        }
    }

    pub(super) fn uri(&self, addr: SocketAddr, path: &str) -> String {
        format!("https://{addr}{path}")
    }

    /// The path of `route` to this envoy's user.
    pub(super) fn path(&self, route: &Route) -> String {
        route.path(self.replica.user().as_str())
    }

    pub(super) async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<Response<Incoming>, PeerError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(self.uri(addr, path))
            .body(full(Bytes::new()))?;
        self.request(addr, req).await
    }
}
