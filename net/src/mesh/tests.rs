//! Hostile peers, seen from the client: a real [`Mesh`] (its own replica,
//! store and mTLS client) contacts a fake peer on `127.0.0.1:0` that holds a
//! valid fleet certificate and a valid endorsement, speaks HTTP/2 over
//! mutual TLS, and answers what each test scripts: an oversized, malformed
//! or stalled hello, a table or manifest over its cap or malformed, a file
//! body that does not match its signed record or belongs to another name.
//! Each test checks that nothing was taken: no membership, no table entry,
//! no stored file, no temp file left behind.
//!
//! Every check runs through the mesh's own paths (`contact`,
//! `contact_inner`, `catch_up`, `pull_table`, `fetch`); the fake peer only
//! answers and must not stand in for the code under test. Each hostile
//! answer has a well-formed twin that the same path takes, so a test cannot
//! pass because the fixture never reaches the check.

use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lockbox_crypto::circle::{CircleSecret, Endorsement};
use lockbox_crypto::digest::Sha256;
use lockbox_crypto::hello::HelloKey;
use lockbox_crypto::sign::{Encoder, Signed, SigningKey};
use lockbox_fs::{Name, Store};
use tokio::net::TcpListener;

use super::body::{respond, Body, BodyError};
use super::{Hello, HelloError, Mesh, MeshConfig, PeerError, MAX_HELLO_BODY, MAX_TABLE_BODY};
use crate::records::{self, FileVersion, Tombstone};
use crate::replica::{Refusal, Replica, ReplicaPaths, Table};
use crate::tls::{FleetCa, TlsMaterial};
use crate::{VersionVector, WireName};

const USER: &str = "alice";

/// Long enough for any answer that does not wait for more input, on a
/// loaded 2-core machine; a check that hangs fails after it.
const PROMPTLY: Duration = Duration::from_secs(30);

const HELLO: &str = "/lockbox/hello/alice";
const TOMBSTONES: &str = "/lockbox/tombstones/alice";
const MANIFEST: &str = "/lockbox/files/alice";
const DOC: &str = "/lockbox/files/alice/doc";

/// The hellos the fake peer was asked: each connection's TLS exporter
/// value and the body.
type HelloBodies = Arc<Mutex<Vec<([u8; 32], Vec<u8>)>>>;

/// What the fake peer answers to a request for a path, on the connection
/// whose TLS exporter value is given (a hello's proof signs it).
type Script = Box<dyn Fn(&str, &[u8; 32]) -> Response<Body> + Send + Sync>;

fn wn(s: &str) -> WireName {
    WireName::new(s).unwrap()
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Envoy alpha's mesh, and bravo, a fake peer of the same fleet and
/// circle that answers what the test scripts.
struct World {
    _dir: tempfile::TempDir,
    /// alpha's state folder (`store/`, `tmp/`, …).
    state: PathBuf,
    mesh: Arc<Mesh>,
    replica: Arc<Replica>,
    bravo_key: SigningKey,
    bravo_seed: [u8; 32],
    bravo_endorsement: Signed<Endorsement>,
    /// Bravo's TLS client configuration (a fleet certificate).
    bravo_client: Arc<rustls::ClientConfig>,
    /// Alpha's endorsement.
    alpha_endorsement: Signed<Endorsement>,
    /// The fake peer's address.
    peer: SocketAddr,
    /// Its answers.
    script: Arc<Mutex<Script>>,
    /// The hellos it was asked: each connection's exporter and the body.
    hello_bodies: HelloBodies,
    /// The body of each tombstone list POSTed to the fake peer.
    tombstone_bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The circle's hello key.
    hello_key: HelloKey,
    /// The paths it was asked for, in order.
    asked: Arc<Mutex<Vec<String>>>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let secret = CircleSecret::generate(1_700_000_000);
    let circle = secret.key();
    let hello_key = HelloKey::of(&secret).unwrap();
    let endorse = |envoy: &str, key: &SigningKey| {
        circle.endorse(Endorsement {
            user: USER.into(),
            envoy: envoy.into(),
            recipient: lockbox_crypto::identity::generate().to_public().to_string(),
            signing_key: key.public(),
            created_unix: 1,
        })
    };
    let (alpha_key, bravo_key) = (
        SigningKey::from_seed(&[1; 32]),
        SigningKey::from_seed(&[2; 32]),
    );
    let bravo_endorsement = endorse("bravo", &bravo_key);
    let state = dir.path().join("alpha");
    let members = state.join("members");
    fs::create_dir_all(&members).unwrap();
    fs::write(state.join("circle.pub"), circle.public().to_base64()).unwrap();
    fs::write(state.join("circle.hello"), hello_key.to_bytes()).unwrap();
    let alpha_endorsement = endorse("alpha", &alpha_key);
    for (envoy, e) in [("alpha", &alpha_endorsement), ("bravo", &bravo_endorsement)] {
        fs::write(members.join(format!("{envoy}.endorsement")), e.to_bytes()).unwrap();
    }
    let replica = Replica::open(
        wn(USER),
        wn("alpha"),
        Store::open(&state).unwrap(),
        alpha_key,
        ReplicaPaths {
            members,
            circle_public: state.join("circle.pub"),
            circle_secret: state.join("circle.secret"),
            circle_hello: state.join("circle.hello"),
            handover: state.join("handover"),
            recipients: state.join("recipients.txt"),
            meta: state.join("meta.redb"),
        },
    )
    .unwrap();

    let ca = FleetCa::generate("test fleet").unwrap();
    let material = |envoy: &str| {
        let issued = ca.issue(envoy, &[], Duration::from_secs(3600)).unwrap();
        TlsMaterial::from_issued(&issued).unwrap()
    };
    let (alpha_tls, bravo_tls) = (material("alpha"), material("bravo"));
    let cfg = MeshConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        multicast: None,
        announce_interval: Duration::from_secs(3600),
        stale_after: Duration::from_secs(3600),
        static_peers: Vec::new(),
        push_concurrency: 2,
        disk_pressure_percent: 0,
        max_file_size: 1 << 30,
        recipient: String::new(),
        default_port: 0,
        tombstone_retention: Duration::from_secs(30 * 86_400),
    };
    let mesh = Mesh::start(
        replica.clone(),
        cfg,
        alpha_tls.server_config().unwrap(),
        alpha_tls.client_config().unwrap(),
    )
    .await
    .unwrap();

    let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(|_: &str, _: &[u8; 32]| {
        respond(404, "no script")
    })));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let hello_bodies = Arc::new(Mutex::new(Vec::new()));
    let tombstone_bodies = Arc::new(Mutex::new(Vec::new()));
    let peer = fake_peer(
        bravo_tls.server_config().unwrap(),
        script.clone(),
        asked.clone(),
        hello_bodies.clone(),
        tombstone_bodies.clone(),
    )
    .await;
    World {
        _dir: dir,
        state,
        mesh,
        replica,
        bravo_key,
        bravo_seed: [2; 32],
        bravo_endorsement,
        bravo_client: bravo_tls.client_config().unwrap(),
        alpha_endorsement,
        peer,
        script,
        asked,
        hello_bodies,
        tombstone_bodies,
        hello_key,
    }
}

/// An HTTP/2 server over mutual TLS on `127.0.0.1:0` that answers each
/// request with `script` and notes its path in `asked`, and the body of
/// each hello in `hello_bodies`, and of each tombstone list in
/// `tombstone_bodies`.
async fn fake_peer(
    tls: Arc<rustls::ServerConfig>,
    script: Arc<Mutex<Script>>,
    asked: Arc<Mutex<Vec<String>>>,
    hello_bodies: HelloBodies,
    tombstone_bodies: Arc<Mutex<Vec<Vec<u8>>>>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let exporter = tls
                .get_ref()
                .1
                .export_keying_material([0u8; 32], crate::proof::EXPORTER_LABEL, None)
                .unwrap();
            let (script, asked, bodies) = (script.clone(), asked.clone(), hello_bodies.clone());
            let tombstones = tombstone_bodies.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let path = req.uri().path().to_string();
                asked.lock().unwrap().push(path.clone());
                let resp = (script.lock().unwrap())(&path, &exporter);
                let bodies = bodies.clone();
                let tombstones = tombstones.clone();
                async move {
                    // Only a hello's and a tombstone list's body are read
                    // (others may be stalled uploads the script answers
                    // before they end).
                    if path == HELLO {
                        if let Ok(b) = req.into_body().collect().await {
                            bodies
                                .lock()
                                .unwrap()
                                .push((exporter, b.to_bytes().to_vec()));
                        }
                    } else if path == TOMBSTONES && req.method() == http::Method::POST {
                        if let Ok(b) = req.into_body().collect().await {
                            tombstones.lock().unwrap().push(b.to_bytes().to_vec());
                        }
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service),
            );
        }
    });
    addr
}

/// Bravo's session proof, as the answering side, for the session with
/// `exporter`.
fn bravo_proof(key: &SigningKey, exporter: &[u8; 32]) -> Vec<u8> {
    Signed::sign(
        crate::proof::SessionProof {
            user: USER.into(),
            envoy: "bravo".into(),
            side: crate::proof::Side::Answerer,
            exporter: *exporter,
        },
        key,
    )
    .to_bytes()
}

/// An answer that sends `first`, then nothing more and never ends; with
/// `content_length` declared if given.
fn stalling(status: u16, first: Vec<u8>, content_length: Option<u64>) -> Response<Body> {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(async move {
        if !first.is_empty() {
            let _ = tx.send_data(Bytes::from(first)).await;
        }
        // Held open until the test's runtime ends.
        std::future::pending::<()>().await;
        drop(tx);
    });
    let mut r = Response::new(body.boxed());
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    if let Some(len) = content_length {
        r.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            len.to_string().parse().unwrap(),
        );
    }
    r
}

/// A file answer: the version record in its header, and `body`.
fn file_answer(rec: &Signed<FileVersion>, body: Vec<u8>) -> Response<Body> {
    let mut r = respond(200, body);
    r.headers_mut().insert(
        super::H_RECORD,
        hex::encode(rec.to_bytes()).parse().unwrap(),
    );
    r
}

/// A manifest in wire form listing each `(name, record)`.
fn manifest(items: &[(&str, &Signed<FileVersion>)]) -> Vec<u8> {
    let items: Vec<Vec<u8>> = items
        .iter()
        .map(|(n, rec)| {
            let mut e = Encoder::new();
            e.bytes(n.as_bytes());
            e.bytes(&rec.to_bytes());
            e.finish()
        })
        .collect();
    records::encode_list(items.iter().map(|v| v.as_slice()))
}

/// A ciphertext of `len` bytes: age's magic line, then filler.
fn ciphertext(len: usize) -> Vec<u8> {
    let mut b = lockbox_crypto::seal::AGE_MAGIC.to_vec();
    b.extend((0..len.saturating_sub(b.len())).map(|i| (i % 251) as u8));
    b
}

/// What alpha holds, to compare before and after.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    names: Vec<Name>,
    tmp: Vec<String>,
    tables: Vec<Vec<Vec<u8>>>,
    files: [u8; 16],
    members: Vec<String>,
}

impl World {
    /// Answer with `script` from now on.
    fn answer(&self, script: impl Fn(&str, &[u8; 32]) -> Response<Body> + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Box::new(script);
    }

    /// Answer a hello with bravo's good one, and everything else with
    /// `script`, from now on.
    fn serve(&self, script: impl Fn(&str) -> Response<Body> + Send + Sync + 'static) {
        let hello = self.hello(|_| {});
        self.answer(move |path, x| match path {
            HELLO => respond(200, hello(x)),
            _ => script(path),
        });
    }

    /// A hello of bravo's with alpha's own digests (so nothing is pulled),
    /// changed by `tweak`, for the connection with the exporter it is
    /// called with: its proof is bravo's, for that session, unless `tweak`
    /// set one.
    fn hello(
        &self,
        tweak: impl FnOnce(&mut Hello),
    ) -> impl Fn(&[u8; 32]) -> Vec<u8> + Send + Sync + Clone + 'static {
        let d = self.mesh.digests();
        let mut h = Hello {
            protocol: super::PROTOCOL_VERSION,
            user: USER.into(),
            envoy: "bravo".into(),
            instance: 7,
            endorsement: hex::encode(self.bravo_endorsement.to_bytes()),
            proof: String::new(),
            members: Vec::new(),
            free_percent: 90,
            disk_short: false,
            files: hex::encode(d.files),
            tombstones: hex::encode(d.tombstones),
            resurrects: hex::encode(d.resurrects),
            leaves: hex::encode(d.leaves),
            unlocked: None,
        };
        tweak(&mut h);
        let seed = self.bravo_seed;
        move |exporter: &[u8; 32]| {
            let mut h = h.clone();
            if h.proof.is_empty() {
                h.proof = hex::encode(bravo_proof(&SigningKey::from_seed(&seed), exporter));
            }
            h.encode().unwrap()
        }
    }

    /// Version 1 of `file` by bravo, with ciphertext `body`.
    fn version(&self, file: &str, body: &[u8]) -> Signed<FileVersion> {
        let mut vv = VersionVector::new();
        vv.bump(&wn("bravo")).unwrap();
        let v = FileVersion {
            user: wn(USER),
            name: name(file),
            vv,
            author: wn("bravo"),
            sealed_unix: 1_700_000_000,
            plaintext_len: body.len() as u64,
            ciphertext_len: body.len() as u64,
            hash: Sha256::of(body),
            recipients: vec![wn("alpha"), wn("bravo")],
            reseal: false,
            executable: false,
        };
        Signed::sign(v, &self.bravo_key)
    }

    /// Whether the fake peer is taken as a member (None: not in the table).
    fn member(&self) -> Option<bool> {
        self.mesh
            .peers
            .lock()
            .unwrap()
            .get(&self.peer)
            .map(|p| p.member)
    }

    fn held(&self) -> Held {
        let mut tmp: Vec<String> = fs::read_dir(self.state.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        tmp.sort();
        Held {
            names: self.replica.store().names().unwrap(),
            tmp,
            tables: Table::ALL
                .iter()
                .map(|t| self.replica.table_records(*t))
                .collect(),
            files: self.replica.files_digest(),
            members: self.replica.members().names(),
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    /// `contact_inner` with the fake peer, failing the test if it hangs.
    async fn contact(&self) -> Result<(), PeerError> {
        tokio::time::timeout(PROMPTLY, self.mesh.contact_inner(self.peer))
            .await
            .expect("the contact neither finished nor failed")
    }

    /// `fetch` of `file` from the fake peer, failing the test if it hangs.
    async fn fetch(&self, file: &str) -> Result<(), PeerError> {
        tokio::time::timeout(PROMPTLY, self.mesh.fetch(self.peer, &name(file)))
            .await
            .expect("the fetch neither finished nor failed")
    }
}

/// The fixture's control: a well-formed hello of a member makes it one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_hello_makes_the_peer_a_member() {
    let w = world().await;
    let hello = w.hello(|_| {});
    w.answer(move |_, x| respond(200, hello(x)));
    let before = w.held();
    w.contact().await.unwrap();
    assert_eq!(w.member(), Some(true));
    assert_eq!(w.asked(), [HELLO], "equal digests: nothing pulled");
    assert_eq!(w.held(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_hello_makes_no_member() {
    let w = world().await;
    let before = w.held();
    // A hello padded past the cap, its length declared: refused unread.
    let mut big = w.hello(|_| {})(&[0; 32]);
    big.splice(1..1, std::iter::repeat_n(b' ', MAX_HELLO_BODY));
    let declared = big.len() as u64;
    w.answer(move |_, _| stalling(200, b"{".to_vec(), Some(declared)));
    let e = w.contact().await.unwrap_err();
    assert!(
        matches!(
            e,
            PeerError::Body(BodyError::TooLarge {
                cap: MAX_HELLO_BODY
            })
        ),
        "{e}"
    );
    // The same, streamed without a length and never ended: refused once it
    // passes the cap.
    w.answer(move |_, _| stalling(200, big.clone(), None));
    let e = w.contact().await.unwrap_err();
    assert!(
        matches!(
            e,
            PeerError::Body(BodyError::TooLarge {
                cap: MAX_HELLO_BODY
            })
        ),
        "{e}"
    );
    assert_eq!(w.member(), None, "not taken as a peer at all");
    assert_eq!(w.asked(), [HELLO, HELLO]);
    assert_eq!(w.held(), before);

    // Through `contact`, the error is what `status` shows for the peer (and
    // what is logged).
    w.mesh.contact(w.peer).await;
    let peers = w.mesh.peers();
    let p = peers.iter().find(|p| p.addr == w.peer.to_string()).unwrap();
    assert_eq!(p.envoy, None);
    assert_eq!(
        p.error.as_deref(),
        Some(format!("body larger than {MAX_HELLO_BODY} bytes").as_str())
    );
    assert_eq!(w.member(), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_hello_makes_no_member() {
    let w = world().await;
    let before = w.held();
    let good = w.hello(|_| {})(&[0; 32]);
    let truncated = good[..good.len() / 2].to_vec();
    let protocol = format!("\"protocol\":{}", super::PROTOCOL_VERSION);
    let wrong_type = String::from_utf8(good.clone())
        .unwrap()
        .replacen(&protocol, "\"protocol\":\"2\"", 1)
        .into_bytes();
    assert_ne!(wrong_type, good);
    for bad in [
        b"not json".to_vec(),
        b"{}".to_vec(),
        b"\xff\xfe".to_vec(),
        truncated,
        wrong_type,
    ] {
        let shown = String::from_utf8_lossy(&bad).into_owned();
        w.answer(move |_, _| respond(200, bad.clone()));
        let e = w.contact().await.unwrap_err();
        assert!(
            matches!(e, PeerError::BadHello(HelloError::Json(_))),
            "{shown}: {e}"
        );
        assert_eq!(w.member(), None, "{shown}");
    }
    // A hello whose endorsement is not one: the peer is refused.
    let forged = w.hello(|h| h.endorsement = "00".repeat(40));
    w.answer(move |_, x| respond(200, forged(x)));
    let e = w.contact().await.unwrap_err();
    assert!(matches!(e, PeerError::NotAMember(_)), "{e}");
    assert_eq!(w.member(), None);
    w.mesh.contact(w.peer).await;
    assert_eq!(w.member(), Some(false));
    let peers = w.mesh.peers();
    let p = peers.iter().find(|p| p.addr == w.peer.to_string()).unwrap();
    assert!(p.refused.is_some(), "{p:?}");
    assert!(
        w.asked().iter().all(|p| p == HELLO),
        "nothing pulled from a peer that is not a member: {:?}",
        w.asked()
    );
    assert_eq!(w.held(), before);
}

/// A hello whose answer starts and then stalls: the client gives up
/// within the hello's timeout, and the peer can be contacted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_that_stalls_times_out() {
    let w = world().await;
    w.answer(|_, _| stalling(200, b"{\"protocol\":".to_vec(), None));
    let e = w.contact().await.unwrap_err();
    assert!(matches!(e, PeerError::HelloTimeout), "{e}");
    assert_eq!(w.member(), None);
    // `contact` lets go of the peer when it gives up: the next hello is
    // sent, and a good one makes it a member.
    let hello = w.hello(|_| {});
    w.answer(move |_, x| respond(200, hello(x)));
    tokio::time::timeout(PROMPTLY, w.mesh.contact(w.peer))
        .await
        .unwrap();
    assert_eq!(w.member(), Some(true));
}

/// A hello whose tombstone digest differs, so that catch-up pulls the
/// tombstone table and answers it with `table`.
fn pulls_tombstones(w: &World, table: impl Fn() -> Response<Body> + Send + Sync + 'static) {
    let hello = w.hello(|h| h.tombstones = hex::encode([9u8; 16]));
    w.answer(move |path, x| match path {
        HELLO => respond(200, hello(x)),
        TOMBSTONES => table(),
        _ => respond(404, "not scripted"),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_table_fails_the_catch_up_and_changes_nothing() {
    let w = world().await;
    let before = w.held();
    // Declared over the cap, and never sent: refused unread.
    pulls_tombstones(&w, || {
        stalling(200, vec![0; 16], Some(MAX_TABLE_BODY as u64 + 1))
    });
    let e = w.contact().await.unwrap_err();
    assert!(
        matches!(
            e,
            PeerError::Body(BodyError::TooLarge {
                cap: MAX_TABLE_BODY
            })
        ),
        "{e}"
    );
    assert_eq!(w.asked(), [HELLO, TOMBSTONES]);
    assert_eq!(w.held(), before);
    assert_eq!(w.mesh.last_catchup(), None, "the catch-up did not complete");
}

/// A malformed table, or one whose records are not a member's, changes
/// no table; the rest of the catch-up goes on (one bad table must not
/// stop it). Its control: a member's tombstone in the same place is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_table_changes_no_table() {
    let w = world().await;
    let before = w.held();
    let tombstone = |key: &SigningKey| {
        let mut vv = VersionVector::new();
        vv.bump(&wn("bravo")).unwrap();
        Signed::sign(
            Tombstone {
                user: wn(USER),
                name: name("doc"),
                vv,
                author: wn("bravo"),
                deleted_unix: 1_700_000_000,
            },
            key,
        )
        .to_bytes()
    };
    let stranger = tombstone(&SigningKey::from_seed(&[66; 32]));
    let mut truncated = records::encode_list([stranger.as_slice()]);
    truncated.truncate(truncated.len() - 3);
    let mut trailing = records::encode_list([stranger.as_slice()]);
    trailing.push(0);
    for (what, bad) in [
        ("garbage", b"\xff\xff\xff\xff garbage".to_vec()),
        ("a truncated list", truncated),
        ("trailing bytes", trailing),
        ("a count past the end", (1u32 << 31).to_be_bytes().to_vec()),
        (
            "a non-member's tombstone",
            records::encode_list([stranger.as_slice()]),
        ),
        (
            "not a record",
            records::encode_list([&b"not a tombstone"[..]]),
        ),
    ] {
        pulls_tombstones(&w, move || respond(200, bad.clone()));
        w.contact().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(w.held(), before, "{what}");
        assert_eq!(
            w.asked().last().map(String::as_str),
            Some(TOMBSTONES),
            "{what}"
        );
    }
    // The control: bravo's own tombstone is taken — also when bytes follow
    // it: a table is applied as it arrives, each record checked on its own,
    // so a fault after a valid record comes too late to refuse that one.
    let mut good = records::encode_list([tombstone(&w.bravo_key).as_slice()]);
    good.push(0);
    pulls_tombstones(&w, move || respond(200, good.clone()));
    w.contact().await.unwrap();
    assert_eq!(w.replica.table_records(Table::Tombstones).len(), 1);
}

/// A table body applied as a stream: a POST (`stop_at_refusal`) stops at
/// the first refused record and answers with it, leaving the records after
/// it alone; a pull applies the rest and reports the refusal; a fault in
/// the list after a valid record comes after that record was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_table_stops_at_a_refusal_only_when_posted() {
    use super::body::{apply_table_body, TableBodyError};
    let w = world().await;
    let tombstone = |key: &SigningKey, doc: &str| {
        let mut vv = VersionVector::new();
        vv.bump(&wn("bravo")).unwrap();
        Signed::sign(
            Tombstone {
                user: wn(USER),
                name: name(doc),
                vv,
                author: wn("bravo"),
                deleted_unix: 1_700_000_000,
            },
            key,
        )
        .to_bytes()
    };
    let stranger = tombstone(&SigningKey::from_seed(&[66; 32]), "a");
    let good = tombstone(&w.bravo_key, "b");
    let list = records::encode_list([stranger.as_slice(), good.as_slice()]);
    let body = || http_body_util::Full::new(Bytes::from(list.clone()));
    let held = || w.replica.table_records(Table::Tombstones).len();

    let posted = apply_table_body(w.replica.clone(), Table::Tombstones, body(), true).await;
    assert!(
        matches!(posted, Err(TableBodyError::Refused(Refusal::NotMember(_)))),
        "{posted:?}"
    );
    assert_eq!(posted.unwrap_err().status(), 403);
    assert_eq!(held(), 0, "a POST stops at the refusal");

    let pulled = apply_table_body(w.replica.clone(), Table::Tombstones, body(), false).await;
    assert!(
        matches!(pulled, Err(TableBodyError::Refused(Refusal::NotMember(_)))),
        "{pulled:?}"
    );
    assert_eq!(held(), 1, "a pull takes the rest");

    let mut trailing = records::encode_list([tombstone(&w.bravo_key, "c").as_slice()]);
    trailing.push(0);
    let body = http_body_util::Full::new(Bytes::from(trailing));
    let got = apply_table_body(w.replica.clone(), Table::Tombstones, body, true).await;
    assert!(matches!(got, Err(TableBodyError::List { .. })), "{got:?}");
    assert_eq!(got.unwrap_err().status(), 400);
    assert_eq!(held(), 2, "the record before the fault was applied");
}

/// A hello whose file digest differs, so that catch-up pulls the manifest
/// and answers it (and any file) with `script`.
fn pulls_files(w: &World, script: impl Fn(&str) -> Response<Body> + Send + Sync + 'static) {
    let hello = w.hello(|h| h.files = hex::encode([9u8; 16]));
    w.answer(move |path, x| match path {
        HELLO => respond(200, hello(x)),
        path => script(path),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_or_malformed_manifest_fetches_nothing() {
    let w = world().await;
    let before = w.held();
    pulls_files(&w, |_| {
        stalling(200, vec![0; 16], Some(MAX_TABLE_BODY as u64 + 1))
    });
    let e = w.contact().await.unwrap_err();
    assert!(
        matches!(
            e,
            PeerError::Body(BodyError::TooLarge {
                cap: MAX_TABLE_BODY
            })
        ),
        "{e}"
    );
    let body = ciphertext(1000);
    let rec = w.version("doc", &body);
    let mut truncated = manifest(&[("doc", &rec)]);
    truncated.truncate(truncated.len() - 1);
    let mut bad_name = manifest(&[("doc", &rec)]);
    let at = bad_name.windows(3).position(|s| s == b"doc").unwrap();
    bad_name[at] = b'/';
    for (what, bad) in [
        ("garbage", b"garbage".to_vec()),
        ("a truncated manifest", truncated),
        ("a name with a slash", bad_name),
    ] {
        pulls_files(&w, move |_| respond(200, bad.clone()));
        let e = w.contact().await.unwrap_err();
        assert!(matches!(e, PeerError::Manifest(_)), "{what}: {e}");
    }
    assert!(
        !w.asked().iter().any(|p| p == DOC),
        "no file asked for: {:?}",
        w.asked()
    );
    assert_eq!(w.held(), before);
    assert_eq!(w.mesh.last_catchup(), None);
}

/// A file whose body does not match its signed record, through the whole
/// catch-up: asked for, refused, nothing stored and no temp file left;
/// its well-formed twin is then stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_stores_no_file_whose_body_differs_from_its_record() {
    let w = world().await;
    let before = w.held();
    let body = ciphertext(100_000);
    let rec = w.version("doc", &body);
    let listed = manifest(&[("doc", &rec)]);
    let mut flipped = body.clone();
    flipped[50_000] ^= 1;
    let script = |listed: Vec<u8>, rec: Signed<FileVersion>, body: Vec<u8>| {
        move |path: &str| match path {
            MANIFEST => respond(200, listed.clone()),
            DOC => file_answer(&rec, body.clone()),
            _ => respond(404, "not scripted"),
        }
    };
    pulls_files(&w, script(listed.clone(), rec.clone(), flipped));
    // The fetch's failure is logged; the catch-up of the rest goes on.
    w.contact().await.unwrap();
    assert!(w.asked().iter().any(|p| p == DOC), "{:?}", w.asked());
    assert_eq!(w.held(), before);

    pulls_files(&w, script(listed, rec, body.clone()));
    w.contact().await.unwrap();
    assert_eq!(w.replica.store().names().unwrap(), [name("doc")]);
    let stored = fs::read(w.replica.store().current_path(&name("doc"))).unwrap();
    assert_eq!(stored, body);
}

/// Every way a file answer can differ from what was asked for and signed
/// is refused by `fetch`, with nothing stored and no temp file left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_body_that_differs_from_its_record_is_not_installed() {
    let w = world().await;
    let before = w.held();
    let body = ciphertext(300_000);
    let rec = w.version("doc", &body);
    let other = w.version("other", &body);
    let mut flipped = body.clone();
    flipped[123_456] ^= 0x80;
    let mut longer = body.clone();
    longer.extend_from_slice(&[0; 4096]);
    let shorter = body[..body.len() - 1].to_vec();
    let not_age = {
        let mut b = vec![b'x'; body.len()];
        b[0] = b'y';
        b
    };
    let not_age_rec = w.version("doc", &not_age);
    let cases: Vec<(&str, Signed<FileVersion>, Vec<u8>, &str)> = vec![
        (
            "a flipped bit",
            rec.clone(),
            flipped,
            "does not match its record",
        ),
        (
            "longer than declared",
            rec.clone(),
            longer,
            "does not match its record",
        ),
        (
            "shorter than declared",
            rec.clone(),
            shorter,
            "does not match its record",
        ),
        (
            "the record of another name",
            other,
            body.clone(),
            "cannot be stored as doc",
        ),
        ("not an age file", not_age_rec, not_age, "not an age file"),
    ];
    for (what, rec, answer, why) in cases {
        w.serve(move |_| file_answer(&rec, answer.clone()));
        let e = w.fetch("doc").await.unwrap_err();
        assert!(
            matches!(&e, PeerError::Refused(Refusal::Bad(m)) if m.contains(why)),
            "{what}: {e}"
        );
        assert_eq!(w.held(), before, "{what}");
    }
    // Longer than declared and never ending: refused once past the
    // record's length, without waiting for an end.
    let mut endless = body.clone();
    endless.extend_from_slice(&[0; 70_000]);
    let answer_rec = rec.clone();
    w.serve(move |_| {
        let mut r = stalling(200, endless.clone(), None);
        r.headers_mut().insert(
            super::H_RECORD,
            hex::encode(answer_rec.to_bytes()).parse().unwrap(),
        );
        r
    });
    let e = w.fetch("doc").await.unwrap_err();
    assert!(matches!(e, PeerError::Refused(Refusal::Bad(_))), "{e}");
    assert_eq!(w.held(), before);

    // The control: the body that matches is stored.
    w.serve(move |_| file_answer(&rec, body.clone()));
    w.fetch("doc").await.unwrap();
    assert_eq!(w.replica.store().names().unwrap(), [name("doc")]);
    assert!(w.held().tmp.is_empty());
}

/// A record over the size limit is refused from the record alone: its body
/// (here never sent) is not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_size_limit_is_refused_unread() {
    let w = world().await;
    let before = w.held();
    let mut vv = VersionVector::new();
    vv.bump(&wn("bravo")).unwrap();
    let huge = Signed::sign(
        FileVersion {
            user: wn(USER),
            name: name("doc"),
            vv,
            author: wn("bravo"),
            sealed_unix: 1_700_000_000,
            plaintext_len: 1 << 30,
            ciphertext_len: super::MAX_CIPHERTEXT + 1,
            hash: Sha256::of(b""),
            recipients: vec![wn("alpha"), wn("bravo")],
            reseal: false,
            executable: false,
        },
        &w.bravo_key,
    );
    w.serve(move |_| {
        let mut r = stalling(200, ciphertext(100), None);
        r.headers_mut().insert(
            super::H_RECORD,
            hex::encode(huge.to_bytes()).parse().unwrap(),
        );
        r
    });
    let e = w.fetch("doc").await.unwrap_err();
    assert!(matches!(e, PeerError::Refused(Refusal::TooLarge(_))), "{e}");
    assert_eq!(w.held(), before);
}

/// A raw HTTP/2 connection to alpha's peer server with bravo's fleet
/// certificate, and its TLS exporter value.
async fn raw_to_alpha(w: &World) -> (hyper::client::conn::http2::SendRequest<Body>, [u8; 32]) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", w.mesh.port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(w.bravo_client.clone());
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let tls = connector.connect(name, tcp).await.unwrap();
    let exporter = tls
        .get_ref()
        .1
        .export_keying_material([0u8; 32], crate::proof::EXPORTER_LABEL, None)
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (send, exporter)
}

/// Sends `req` and reads the answer's status and body, failing the test
/// if that takes longer than [`PROMPTLY`].
async fn ask(
    send: &mut hyper::client::conn::http2::SendRequest<Body>,
    req: Request<Body>,
) -> (u16, Vec<u8>) {
    let (status, _, body) = ask_with_headers(send, req).await;
    (status, body)
}

/// [`ask`], with the answer's headers.
async fn ask_with_headers(
    send: &mut hyper::client::conn::http2::SendRequest<Body>,
    req: Request<Body>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    tokio::time::timeout(PROMPTLY, async {
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body.to_vec())
    })
    .await
    .expect("no answer")
}

/// A request whose body declares 1 GiB and never sends a byte: it can
/// only be answered before its body is read.
fn stalled_upload(path: &str, record: Option<&Signed<FileVersion>>) -> Request<Body> {
    let (tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
    tokio::spawn(async move {
        std::future::pending::<()>().await;
        drop(tx);
    });
    let mut req = Request::post(format!("https://127.0.0.1{path}"))
        .header(http::header::CONTENT_LENGTH, (1u64 << 30).to_string());
    if let Some(r) = record {
        req = req.header(super::H_RECORD, hex::encode(r.to_bytes()));
    }
    req.body(body.boxed()).unwrap()
}

/// Bravo's hello ask with its `proof` in the clear (as a circle without a
/// hello key sends it).
fn bravo_ask(w: &World, proof: crate::proof::SessionProof) -> Request<Body> {
    bravo_ask_of(
        w,
        hex::encode(w.bravo_endorsement.to_bytes()),
        hex::encode(Signed::sign(proof, &w.bravo_key).to_bytes()),
        String::new(),
    )
}

/// Bravo's hello ask with these `endorsement`, `proof` and `sealed`
/// fields, and alpha's own digests.
fn bravo_ask_of(w: &World, endorsement: String, proof: String, sealed: String) -> Request<Body> {
    let d = w.mesh.digests();
    let ask = super::HelloAsk {
        protocol: super::PROTOCOL_VERSION,
        user: USER.into(),
        envoy: "bravo".into(),
        instance: 7,
        port: 0,
        endorsement,
        proof,
        sealed,
        files: hex::encode(d.files),
        tombstones: hex::encode(d.tombstones),
        resurrects: hex::encode(d.resurrects),
        leaves: hex::encode(d.leaves),
    };
    Request::post(format!("https://127.0.0.1{HELLO}"))
        .body(super::body::full(ask.encode().unwrap()))
        .unwrap()
}

fn bravo_proof_for(exporter: [u8; 32], side: crate::proof::Side) -> crate::proof::SessionProof {
    crate::proof::SessionProof {
        user: USER.into(),
        envoy: "bravo".into(),
        side,
        exporter,
    }
}

/// What a peer that has not proven membership on its connection gets:
/// `403` for every endpoint but the hello, answered before its body is
/// read (the uploads here declare 1 GiB and never send a byte); a hello
/// whose proof was made for another connection or for the other side is
/// refused with nothing of alpha's in it; only a proven hello opens the
/// connection, and only that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproven_connection_gets_nothing_but_its_hello() {
    use crate::proof::Side;
    let w = world().await;
    let before = w.held();
    let rec = w.version("doc", &ciphertext(1000));
    let alpha_secret_looking = [
        hex::encode(w.alpha_endorsement.to_bytes()),
        hex::encode(w.replica.circle().0),
        w.replica.circle().to_base64(),
    ];
    let nothing_of_alphas = |what: &str, body: &[u8]| {
        let text = String::from_utf8_lossy(body);
        for s in &alpha_secret_looking {
            assert!(!text.contains(s.as_str()), "{what}: {text}");
        }
    };
    let get = |path: &str| {
        Request::get(format!("https://127.0.0.1{path}"))
            .body(super::body::full(Bytes::new()))
            .unwrap()
    };

    let (mut send, exporter) = raw_to_alpha(&w).await;
    for (what, req) in [
        ("manifest", get(MANIFEST)),
        ("a file", get(DOC)),
        ("a table", get(TOMBSTONES)),
        ("a table upload", stalled_upload(TOMBSTONES, None)),
        (
            "a push",
            stalled_upload("/lockbox/push/alice/doc", Some(&rec)),
        ),
    ] {
        let (status, body) = ask(&mut send, req).await;
        assert_eq!(status, 403, "{what}: {}", String::from_utf8_lossy(&body));
        nothing_of_alphas(what, &body);
    }
    // Protocol 1's hello is told to upgrade.
    let (status, body) = ask(&mut send, get(HELLO)).await;
    assert_eq!(status, 426, "{}", String::from_utf8_lossy(&body));
    nothing_of_alphas("an old hello", &body);
    // Bravo's real endorsement with a proof replayed from another session,
    // or made for the answering side: refused, nothing of alpha's.
    let mut other = exporter;
    other[0] ^= 1;
    for (what, proof) in [
        ("another session", bravo_proof_for(other, Side::Asker)),
        ("the other side", bravo_proof_for(exporter, Side::Answerer)),
    ] {
        let (status, body) = ask(&mut send, bravo_ask(&w, proof)).await;
        assert_eq!(status, 403, "{what}: {}", String::from_utf8_lossy(&body));
        nothing_of_alphas(what, &body);
        let (status, _) = ask(&mut send, get(MANIFEST)).await;
        assert_eq!(status, 403, "{what}: still unproven");
    }
    assert_eq!(w.held(), before);

    // The control: a proof for this session opens this connection, and
    // alpha's answer proves alpha on it.
    let (status, body) = ask(
        &mut send,
        bravo_ask(&w, bravo_proof_for(exporter, Side::Asker)),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let hello = Hello::parse(&body).unwrap();
    crate::proof::check(
        &hex::decode(&hello.proof).unwrap(),
        w.alpha_endorsement.body(),
        Side::Answerer,
        &exporter,
    )
    .unwrap();
    let (status, _) = ask(&mut send, get(MANIFEST)).await;
    assert_eq!(status, 200);
    // Another connection has proven nothing.
    let (mut fresh, _) = raw_to_alpha(&w).await;
    let (status, _) = ask(&mut fresh, get(MANIFEST)).await;
    assert_eq!(status, 403);
}

/// The impersonation this protocol closes: a fleet machine that is not a
/// member shows bravo's real endorsement (as served to anyone by protocol
/// 1) with bravo's proof from another connection. Alpha does not take it
/// for bravo: no member, nothing pulled, nothing pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_endorsement_makes_no_member() {
    let w = world().await;
    let before = w.held();
    let replayed = hex::encode(bravo_proof(&w.bravo_key, &[42; 32]));
    let hello = w.hello(|h| {
        h.proof = replayed;
        h.tombstones = hex::encode([9u8; 16]);
    });
    w.answer(move |path, x| match path {
        HELLO => respond(200, hello(x)),
        _ => respond(200, records::encode_list([])),
    });
    let e = w.contact().await.unwrap_err();
    assert!(
        matches!(&e, PeerError::NotAMember(why) if why.contains("another connection")),
        "{e}"
    );
    w.mesh.contact(w.peer).await;
    assert_eq!(w.member(), Some(false));
    assert_eq!(w.asked(), [HELLO, HELLO], "nothing pulled");
    assert!(w.mesh.push_targets().is_empty(), "nobody to push to");
    assert_eq!(w.held(), before);
}

/// What alpha asks a hello with: its endorsement and proof sealed under the
/// circle's hello key, so that a server that is not a member learns
/// neither alpha's endorsement nor the circle key. The control: a member's
/// key opens it, on that connection only, to alpha's endorsement and a
/// proof for that session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alphas_hello_is_sealed_for_members_only() {
    use crate::proof::Side;
    let w = world().await;
    w.serve(|_| respond(200, records::encode_list([])));
    w.contact().await.unwrap();
    let asks = w.hello_bodies.lock().unwrap().clone();
    assert_eq!(asks.len(), 1, "one hello");
    let (exporter, body) = &asks[0];
    let text = String::from_utf8_lossy(body);
    for (what, s) in [
        (
            "its endorsement",
            hex::encode(w.alpha_endorsement.to_bytes()),
        ),
        ("the circle key", hex::encode(w.replica.circle().0)),
        ("the circle key", w.replica.circle().to_base64()),
    ] {
        assert!(!text.contains(s.as_str()), "{what} in the ask: {text}");
    }
    let ask = super::HelloAsk::parse(body).unwrap();
    assert!(
        ask.endorsement.is_empty() && ask.proof.is_empty(),
        "{ask:?}"
    );
    let (e, p) = super::open_membership(&w.hello_key, exporter, &ask.sealed)
        .expect("a member opens the sealed ask");
    assert_eq!(e, w.alpha_endorsement.to_bytes());
    crate::proof::check(&p, w.alpha_endorsement.body(), Side::Asker, exporter).unwrap();
    let mut other = *exporter;
    other[0] ^= 1;
    assert!(super::open_membership(&w.hello_key, &other, &ask.sealed).is_none());
    let stranger = HelloKey::of(&CircleSecret::generate(1_700_000_001)).unwrap();
    assert!(super::open_membership(&stranger, exporter, &ask.sealed).is_none());
}

/// Bravo's hello ask on the connection with `exporter`, its endorsement and
/// proof sealed under `key` for the session `sealed_for`.
fn bravo_sealed_ask(w: &World, key: &HelloKey, sealed_for: [u8; 32]) -> Request<Body> {
    let proof = Signed::sign(
        bravo_proof_for(sealed_for, crate::proof::Side::Asker),
        &w.bravo_key,
    );
    let sealed = super::seal_membership(
        key,
        &sealed_for,
        &w.bravo_endorsement.to_bytes(),
        &proof.to_bytes(),
    )
    .unwrap();
    bravo_ask_of(w, String::new(), String::new(), sealed)
}

/// A sealed hello opens a connection only when it is sealed with the
/// circle's hello key for this very session: sealed with another circle's
/// key, or for another session, it is refused as another circle's (which
/// may lead to a join) and the connection stays closed. The control: the
/// right key, this session — 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_hello_opens_only_with_the_circles_key_on_its_session() {
    let w = world().await;
    let get_manifest = || {
        Request::get(format!("https://127.0.0.1{MANIFEST}"))
            .body(super::body::full(Bytes::new()))
            .unwrap()
    };
    let (mut send, exporter) = raw_to_alpha(&w).await;
    let stranger = HelloKey::of(&CircleSecret::generate(1_700_000_001)).unwrap();
    let mut other = exporter;
    other[0] ^= 1;
    for (what, key, session) in [
        ("another circle's key", &stranger, exporter),
        ("another session", &w.hello_key, other),
    ] {
        let (status, headers, body) =
            ask_with_headers(&mut send, bravo_sealed_ask(&w, key, session)).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 403, "{what}: {text}");
        assert_eq!(
            headers.get("lockbox-refusal").map(|v| v.as_bytes()),
            Some(&b"another-circle"[..]),
            "{what}"
        );
        assert!(!text.contains(&hex::encode(w.alpha_endorsement.to_bytes())));
        let (status, _) = ask(&mut send, get_manifest()).await;
        assert_eq!(status, 403, "{what}: still unproven");
    }
    let (status, body) = ask(&mut send, bravo_sealed_ask(&w, &w.hello_key, exporter)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _) = ask(&mut send, get_manifest()).await;
    assert_eq!(status, 200);
}

/// A proven raw connection of bravo's to alpha.
async fn proven_bravo(w: &World) -> hyper::client::conn::http2::SendRequest<Body> {
    use crate::proof::Side;
    let (mut send, exporter) = raw_to_alpha(w).await;
    let (status, body) = ask(
        &mut send,
        bravo_ask(w, bravo_proof_for(exporter, Side::Asker)),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    send
}

fn batch_request(body: Vec<u8>) -> Request<Body> {
    Request::post("https://127.0.0.1/lockbox/push/alice")
        .body(super::body::full(body))
        .unwrap()
}

/// A batch is taken item by item, as separate pushes would be: the good
/// versions are stored, one whose body is not what its record says is
/// refused on its own, and the answer lists each status in order. A
/// malformed batch changes nothing, and an unproven connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_pushes_is_taken_item_by_item() {
    let w = world().await;
    let before = w.held();
    let items: Vec<(Name, Vec<u8>, Vec<u8>)> = ["one", "two", "bad"]
        .iter()
        .map(|f| {
            let body = ciphertext(500 + f.len());
            let rec = w.version(f, &body);
            let mut sent = body.clone();
            if *f == "bad" {
                sent[100] ^= 1;
            }
            (name(f), rec.to_bytes(), sent)
        })
        .collect();
    let encoded = super::batch::encode(&items);

    let (mut unproven, _) = raw_to_alpha(&w).await;
    let (status, _) = ask(&mut unproven, batch_request(encoded.clone())).await;
    assert_eq!(status, 403);

    let mut send = proven_bravo(&w).await;
    let mut broken = encoded.clone();
    broken.truncate(encoded.len() - 1);
    let (status, _) = ask(&mut send, batch_request(broken)).await;
    assert_eq!(status, 400);
    assert_eq!(w.held(), before, "a malformed batch changed something");

    let (status, body) = ask(&mut send, batch_request(encoded)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let statuses: Vec<u16> = serde_json::from_slice(&body).unwrap();
    assert_eq!(statuses[..2], [201, 201], "{statuses:?}");
    assert!((400..500).contains(&statuses[2]), "{statuses:?}");
    let names = w.replica.store().names().unwrap();
    assert!(names.contains(&name("one")) && names.contains(&name("two")));
    assert!(!names.contains(&name("bad")), "{names:?}");
    for f in ["one", "two"] {
        let held = fs::read(w.state.join("store").join(f)).unwrap();
        assert_eq!(held, ciphertext(500 + f.len()), "{f}");
    }
    // The same batch again: held already, nothing staged; and no staged
    // file of either batch is left behind.
    let (status, body) = ask(&mut send, batch_request(super::batch::encode(&items))).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let statuses: Vec<u16> = serde_json::from_slice(&body).unwrap();
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    assert!((400..500).contains(&statuses[2]), "{statuses:?}");
    let left: Vec<_> = fs::read_dir(w.state.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Wait until the fake peer has been sent `n` single pushes in all.
async fn pushed_alone(w: &World, n: usize) {
    let singles = || {
        w.asked()
            .iter()
            .filter(|p| p.starts_with("/lockbox/push/alice/"))
            .count()
    };
    tokio::time::timeout(PROMPTLY, async {
        while singles() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} single pushes: {:?}", w.asked()));
}

/// Versions queued for a peer while none is in flight go together as one
/// batch; a peer that does not know the route (404) gets each alone, and
/// is not asked for a batch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_batches_gets_each_version_alone() {
    let w = world().await;
    let mut send = proven_bravo(&w).await;
    let items: Vec<(Name, Vec<u8>, Vec<u8>)> = ["one", "two", "three"]
        .iter()
        .map(|f| {
            let body = ciphertext(700);
            (name(f), w.version(f, &body).to_bytes(), body)
        })
        .collect();
    let (status, _) = ask(&mut send, batch_request(super::batch::encode(&items))).await;
    assert_eq!(status, 200);
    const BATCH: &str = "/lockbox/push/alice";
    w.serve(|path| match path {
        BATCH => respond(404, "no such endpoint"),
        _ => respond(201, "stored"),
    });
    for f in ["one", "two", "three"] {
        w.mesh.queue_push(w.peer, name(f));
    }
    pushed_alone(&w, 3).await;
    let batches = |w: &World| w.asked().iter().filter(|p| *p == BATCH).count();
    assert_eq!(batches(&w), 1, "{:?}", w.asked());
    for f in ["one", "two"] {
        w.mesh.queue_push(w.peer, name(f));
    }
    pushed_alone(&w, 5).await;
    assert_eq!(batches(&w), 1, "asked for a batch again: {:?}", w.asked());
}

/// Tombstones queued for a peer while one list is in flight go together
/// as the next list: a burst of deletes is a few requests, not one per
/// record, and every record arrives, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_tombstones_goes_as_a_few_lists() {
    let w = world().await;
    w.serve(|_| respond(200, "ok"));
    const N: usize = 300;
    let records: Vec<Vec<u8>> = (0..N).map(|i| format!("record {i}").into_bytes()).collect();
    for r in &records {
        w.mesh
            .queue_record(w.peer, crate::replica::Table::Tombstones, r.clone());
    }
    let received = || -> Vec<Vec<u8>> {
        let bodies = w.tombstone_bodies.lock().unwrap().clone();
        bodies
            .iter()
            .flat_map(|b| {
                crate::records::decode_list(b, N)
                    .unwrap()
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    tokio::time::timeout(PROMPTLY, async {
        while received().len() < N {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {N} records: {:?}", received().len(), w.asked()));
    assert_eq!(received(), records, "every record, in order, once");
    let lists = w.asked().iter().filter(|p| *p == TOMBSTONES).count();
    // The first goes alone; the rest queue behind it (256 at most a list).
    assert!(
        (2..=6).contains(&lists),
        "{lists} requests for {N} tombstones"
    );
}
