//! The status page (`lockbox web`): a small HTTP/1.1 server on the agent's
//! runtime, on `127.0.0.1` only, that shows the circle as
//! [`StatusReport`] has it (envoys, the presence matrix, drift, deletes)
//! and updates it live.
//!
//! What it may serve is decided before any handler runs ([`gate`]); the
//! handlers read status structures only and never open a store file or
//! touch key material, so no response can hold a file's content. The
//! design and its reasons: `docs/status-page.md`.
//!
//! Routes (every one behind the gate):
//!
//! | route | answer |
//! |---|---|
//! | `GET /` (`?only=not-everywhere` or `conflicts`) | the page |
//! | `GET /main` (same query) | the part of the page that changes |
//! | `GET /status.json` | the status, as `lockbox status --json` prints it |
//! | `GET /events` | server-sent events: one each time the status changes |
//! | `GET /app.js`, `/app.css` | the page's script and style |
//! | `POST /reencrypt` | re-encrypt the drifted files (unlocked only) |
//! | `POST /resurrect` (body: the name) | undo the delete of that name |

pub mod gate;
pub mod page;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::status::StatusReport;
use gate::{Ask, Gate, Verdict};

/// What the page can ask the agent to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Re-encrypt every drifted file.
    Reencrypt,
    /// Undo the delete of this name.
    Resurrect(String),
}

/// How an action went: the line the page shows, or an HTTP status and why.
pub type ActionResult = Result<String, (u16, String)>;

/// Where the page's figures come from, and who carries out its actions:
/// the agent.
pub trait Source: Send + Sync + 'static {
    /// The status, as `lockbox status --json` has it.
    fn status(&self) -> StatusReport;
    /// A value that changes whenever what the page shows may have changed
    /// (not with the clock alone): the event stream compares it twice a
    /// second, so it must cost little, whatever the store holds.
    fn fingerprint(&self) -> Vec<u8>;
    /// Carry out `action` (blocking: it runs on the blocking pool).
    fn act(&self, action: Action) -> ActionResult;
}

/// The largest POST body read (a name and a little).
const MAX_POST: usize = 8 * 1024;
/// How often the event stream looks for a changed status.
const EVENT_POLL: Duration = Duration::from_millis(500);
/// A comment sent on a quiet event stream, so proxies and the browser keep it.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A running status page.
#[derive(Debug)]
pub struct Web {
    gate: Arc<Gate>,
    addr: SocketAddr,
}

impl Web {
    /// Serve the page for `source` on `127.0.0.1:port` (0: a free port)
    /// on the current runtime.
    pub async fn start(port: u16, source: Arc<dyn Source>) -> std::io::Result<Web> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let gate = Arc::new(Gate::new(addr.port()));
        let state = Arc::new(State {
            gate: gate.clone(),
            source,
        });
        tokio::spawn(accept(listener, state));
        Ok(Web { gate, addr })
    }

    /// The address to open, with a fresh token ([`Gate::mint`]).
    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.gate.mint())
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

struct State {
    gate: Arc<Gate>,
    source: Arc<dyn Source>,
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("status page: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("status page: connection: {e}");
            }
        });
    }
}

/// A response body: whole, or the event stream.
pub enum Body {
    /// All of it at once.
    Full(Full<Bytes>),
    /// Server-sent events, as they come.
    Events(tokio::sync::mpsc::Receiver<Bytes>),
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(f) => Pin::new(f).poll_frame(cx),
            Body::Events(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

/// What every answer carries: no script, style or frame from elsewhere (no
/// inline script either), never framed, no referrer, never cached, its
/// type as declared.
const PROTECTIVE: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
];

/// An answer of type `kind` with [`PROTECTIVE`] headers.
fn with_headers(mut r: Response<Body>, kind: &'static str) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    for (k, v) in PROTECTIVE {
        h.insert(k, header::HeaderValue::from_static(v));
    }
    r
}

fn respond(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::Full(Full::new(body.into())));
    *r.status_mut() = status;
    with_headers(r, kind)
}

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers();
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let ask = Ask {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        host: text(header::HOST),
        origin: text(header::ORIGIN),
        cookies: headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect(),
        csrf: headers.get(gate::CSRF_HEADER).and_then(|v| v.to_str().ok()),
    };
    match state.gate.check(&ask) {
        Verdict::Pass => {}
        Verdict::SetCookie { path, token } => {
            let mut r = respond(StatusCode::SEE_OTHER, TEXT, "signed in\n");
            let h = r.headers_mut();
            h.insert(
                header::SET_COOKIE,
                Gate::set_cookie(&token).parse().expect("a cookie"),
            );
            h.insert(
                header::LOCATION,
                path.parse()
                    .unwrap_or(header::HeaderValue::from_static("/")),
            );
            return r;
        }
        Verdict::Unauthorized => {
            return respond(
                StatusCode::UNAUTHORIZED,
                TEXT,
                "open the address `lockbox web` prints (it carries the token)\n",
            )
        }
        Verdict::Forbidden(why) => return respond(StatusCode::FORBIDDEN, TEXT, format!("{why}\n")),
    }
    let only = page::Only::of_query(req.uri().query());
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => {
            let report = status(state).await;
            respond(
                StatusCode::OK,
                HTML,
                page::page(&report, state.gate.csrf(), only, now_unix()),
            )
        }
        (Method::GET, "/main") => {
            let report = status(state).await;
            respond(
                StatusCode::OK,
                HTML,
                page::main(&report, only, now_unix()).into_string(),
            )
        }
        (Method::GET, "/status.json") => {
            let report = status(state).await;
            match serde_json::to_vec_pretty(&report) {
                Ok(b) => respond(StatusCode::OK, "application/json", b),
                Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, TEXT, e.to_string()),
            }
        }
        (Method::GET, "/app.js") => respond(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            include_str!("app.js"),
        ),
        (Method::GET, "/app.css") => respond(
            StatusCode::OK,
            "text/css; charset=utf-8",
            include_str!("app.css"),
        ),
        (Method::GET, "/events") => events(state.clone()),
        (Method::POST, "/reencrypt") => act(state, Action::Reencrypt).await,
        (Method::POST, "/resurrect") => {
            let body = match Limited::new(req.into_body(), MAX_POST).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return respond(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        TEXT,
                        "the name is too long\n",
                    )
                }
            };
            match String::from_utf8(body.to_vec()) {
                Ok(name) if !name.is_empty() => act(state, Action::Resurrect(name)).await,
                _ => respond(StatusCode::BAD_REQUEST, TEXT, "send the name as the body\n"),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, TEXT, "no such page\n"),
    }
}

/// The status, gathered on the blocking pool (it reads the store and the
/// metadata database).
async fn status(state: &Arc<State>) -> StatusReport {
    let source = state.source.clone();
    match tokio::task::spawn_blocking(move || source.status()).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = StatusReport::default();
            r.warnings.push(format!("could not gather the status: {e}"));
            r
        }
    }
}

async fn act(state: &Arc<State>, action: Action) -> Response<Body> {
    let source = state.source.clone();
    match tokio::task::spawn_blocking(move || source.act(action)).await {
        Ok(Ok(said)) => respond(StatusCode::OK, TEXT, said),
        Ok(Err((code, why))) => respond(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            TEXT,
            why,
        ),
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, TEXT, e.to_string()),
    }
}

/// The event stream: `data: N` each time [`Source::fingerprint`] differs
/// from the last one sent, N counting up; a comment when quiet. It ends when the
/// page goes away (the send fails).
fn events(state: Arc<State>) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut last: Option<Vec<u8>> = None;
        let mut n = 0u64;
        let mut quiet = Duration::ZERO;
        if tx
            .send(Bytes::from_static(b"retry: 2000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let source = state.source.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || source.fingerprint()).await else {
                return;
            };
            if last.as_ref() != Some(&now) {
                last = Some(now);
                n += 1;
                quiet = Duration::ZERO;
                if tx
                    .send(Bytes::from(format!("data: {n}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            } else if quiet >= KEEPALIVE {
                quiet = Duration::ZERO;
                if tx.send(Bytes::from_static(b": quiet\n\n")).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(EVENT_POLL).await;
            quiet += EVENT_POLL;
        }
    });
    with_headers(Response::new(Body::Events(rx)), "text/event-stream")
}
