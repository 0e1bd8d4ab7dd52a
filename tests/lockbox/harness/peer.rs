//! A raw client of a peer port, speaking as one envoy of a test mesh: its
//! fleet certificate, and — when the test wants a *proven* connection —
//! its endorsement and signing key, with which it says hello and proves
//! membership on the connection the way an agent does (protocol 2). The
//! mesh tests use it to send what an agent never would: replayed records,
//! junk, oversized or stalled bodies. It must not judge the answers (the
//! tests do).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use lockbox_crypto::sign::{Signed, SigningKey};
use lockbox_net::mesh::HelloAsk;
use lockbox_net::proof::{SessionProof, Side, EXPORTER_LABEL};

use super::fs;
use super::mesh::Node;

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// What a peer port answered.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How an upload ended: the answer's status (or why there was none
/// within the limit) and how many body bytes had been handed to the
/// connection by then.
#[derive(Debug)]
pub(crate) struct Uploaded {
    pub answer: Result<u16, String>,
    pub sent: u64,
}

/// One HTTP/2 connection to a peer port, on a runtime of its own.
pub(crate) struct PeerClient {
    rt: tokio::runtime::Runtime,
    send: hyper::client::conn::http2::SendRequest<Body>,
    port: u16,
    /// The TLS session's exporter value.
    pub exporter: [u8; 32],
}

/// The TLS client configuration of the fleet certificate in `tls_dir` (an
/// envoy's `~/.lockbox/tls`).
pub(crate) fn client_tls(tls_dir: &Path) -> Arc<rustls::ClientConfig> {
    lockbox_net::tls::TlsMaterial::load(tls_dir)
        .expect("the envoy's fleet certificate")
        .client_config()
        .expect("a client config")
}

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into()).boxed()
}

impl PeerClient {
    /// A connection to `port` with `node`'s fleet certificate, on which
    /// nothing is proven yet.
    pub fn unproven(node: &Node, port: u16) -> Self {
        Self::connect(&node.m.e.state().join("tls"), port)
    }

    /// A connection to `port` with the fleet certificate in `tls_dir`.
    pub fn connect(tls_dir: &Path, port: u16) -> Self {
        let tls = client_tls(tls_dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (send, exporter) = rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect to the peer port");
            let name = rustls::pki_types::ServerName::IpAddress(
                std::net::IpAddr::from([127, 0, 0, 1]).into(),
            );
            let tls = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            let exporter = tls
                .get_ref()
                .1
                .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
                .expect("an exporter value");
            let (send, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .expect("HTTP/2 handshake");
            tokio::spawn(conn);
            (send, exporter)
        });
        PeerClient {
            rt,
            send,
            port,
            exporter,
        }
    }

    /// A connection to `port` as `node`, proven by a hello with `node`'s
    /// endorsement and signing key. Panics if the hello is not answered
    /// `200`.
    pub fn proven(node: &Node, port: u16) -> Self {
        let mut c = Self::unproven(node, port);
        let a = c.hello_as(&node.m.e.state(), &node.name, Side::Asker);
        assert_eq!(a.status, 200, "hello as {}: {}", node.name, a.text());
        c
    }

    /// A connection to `port` as `node`, after a hello with `node`'s
    /// endorsement and key, whatever its answer (for a non-member, whose
    /// hello is refused: the tests then check it gets nothing else).
    pub fn attempt(node: &Node, port: u16) -> Self {
        let mut c = Self::unproven(node, port);
        let _ = c.hello_as(&node.m.e.state(), &node.name, Side::Asker);
        c
    }

    /// Says hello as envoy `envoy` whose state folder is `state` (its
    /// endorsement and signing key), with a session proof made for
    /// `side` on this connection.
    pub fn hello_as(&mut self, state: &Path, envoy: &str, side: Side) -> Answer {
        let (user, ask) = hello_ask(state, envoy, side, self.exporter);
        self.post(&format!("/lockbox/hello/{user}"), &[], ask)
    }

    fn send(&mut self, req: http::Request<Body>) -> Answer {
        let send = &mut self.send;
        self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(120), async move {
                send.ready().await.expect("the connection is open");
                let resp = send.send_request(req).await.expect("an answer");
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.expect("the body").to_bytes().to_vec();
                Answer {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                }
            })
            .await
            .expect("an answer within 120 s")
        })
    }

    fn uri(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// `GET path`.
    pub fn get(&mut self, path: &str) -> Answer {
        let req = http::Request::get(self.uri(path))
            .body(full(Bytes::new()))
            .expect("a request");
        self.send(req)
    }

    /// `POST path` with `headers` and `body`.
    pub fn post(&mut self, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Answer {
        let mut req = http::Request::post(self.uri(path));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(full(body)).expect("a request");
        self.send(req)
    }

    /// POST to `path` with `headers`, a body of up to `len` zeros sent as
    /// fast as the peer's flow control lets it, and not ended until the
    /// answer came. Waits at most `limit` for the answer. (curl cannot do
    /// this: it reports an answer that comes before its upload ends as a
    /// stream error.)
    pub fn upload(
        &mut self,
        path: &str,
        headers: &[(&str, String)],
        len: u64,
        limit: Duration,
    ) -> Uploaded {
        let sent = Arc::new(AtomicU64::new(0));
        let counted = sent.clone();
        let (mut tx, body) =
            http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(2);
        let mut req = http::Request::post(self.uri(path));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(body.boxed()).expect("a request");
        let send = &mut self.send;
        let answer = self.rt.block_on(async move {
            let feeder = tokio::spawn(async move {
                let chunk = Bytes::from(vec![0u8; 1 << 20]);
                while counted.load(Ordering::Relaxed) < len {
                    if tx.send_data(chunk.clone()).await.is_err() {
                        return;
                    }
                    counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                // Never ended: the answer must not wait for the end.
                std::future::pending::<()>().await;
            });
            let resp = tokio::time::timeout(limit, async {
                send.ready().await.map_err(|e| e.to_string())?;
                send.send_request(req).await.map_err(|e| e.to_string())
            })
            .await;
            feeder.abort();
            match resp {
                Ok(Ok(r)) => Ok(r.status().as_u16()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("no answer within {limit:?}")),
            }
        });
        Uploaded {
            answer,
            sent: sent.load(Ordering::Relaxed),
        }
    }
}

/// `(user, body)` of a hello ask as envoy `envoy` whose state folder is
/// `state` (its endorsement and signing key), with a session proof made
/// for `side` on the connection whose TLS exporter value is `exporter`.
pub(crate) fn hello_ask(
    state: &Path,
    envoy: &str,
    side: Side,
    exporter: [u8; 32],
) -> (String, Vec<u8>) {
    let key = SigningKey::parse_file(
        &fs::read_to_string(state.join("signing.key")).expect("signing.key"),
    )
    .expect("a signing key");
    let endorsement = fs::read(state.join("members").join(format!("{envoy}.endorsement")))
        .expect("its endorsement");
    let user = Signed::<lockbox_crypto::circle::Endorsement>::from_bytes(&endorsement)
        .expect("an endorsement")
        .body()
        .user
        .clone();
    let proof = Signed::sign(
        SessionProof {
            user: user.clone(),
            envoy: envoy.into(),
            side,
            exporter,
        },
        &key,
    );
    let zero = hex::encode([0u8; 16]);
    let ask = HelloAsk {
        protocol: lockbox_net::mesh::PROTOCOL_VERSION,
        user: user.clone(),
        envoy: envoy.into(),
        instance: 1,
        port: 0,
        endorsement: hex::encode(&endorsement),
        proof: hex::encode(proof.to_bytes()),
        sealed: String::new(),
        files: zero.clone(),
        tombstones: zero.clone(),
        resurrects: zero.clone(),
        leaves: zero,
    };
    (user, ask.encode().expect("an ask"))
}
