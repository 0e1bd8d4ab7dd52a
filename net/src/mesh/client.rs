//! The client side of the peer port: one reused HTTP/2 connection over
//! mutual TLS per peer, requests on it, and the endpoint paths. It must
//! not decide what to ask for (hello, catch-up and fan-out do).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::{full, Body};
use super::route::Route;
use super::{Mesh, PeerError};

impl Mesh {
    pub(super) async fn connection(
        &self,
        addr: SocketAddr,
    ) -> Result<hyper::client::conn::http2::SendRequest<Body>, PeerError> {
        let mut conns = self.connections.lock().await;
        if let Some(c) = conns.get(&addr) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
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
            Ok::<_, PeerError>(send)
        };
        let send = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| PeerError::ConnectTimeout { addr })??;
        conns.insert(addr, send.clone());
        Ok(send)
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
