//! A fake peer of the fleet, seen by real agents: a host with a valid fleet
//! certificate but not the user's passphrase runs its own peer server on a
//! port the members contact, and answers their hellos as member bravo —
//! with bravo's real endorsement, copied off a member's disk. It can sign
//! no session proof for bravo's key, so the members take it for no member:
//! they push nothing to it, pull nothing from it, and what they ask it
//! with is sealed under the circle's hello key, so it learns no
//! endorsement and no circle key.
//!
//! The fake server is in this file (TLS and HTTP/2 from the same crates as
//! the agent); the agents are the real binary.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use lockbox_crypto::hello::HelloKey;
use lockbox_net::mesh::{open_membership, Hello, HelloAsk};

use crate::harness::fs;
use crate::harness::mesh::{content, Circle, CONVERGE};
use crate::require_fuse;

/// One request the fake server got: the connection's TLS exporter value,
/// the method, the path and the body.
#[derive(Debug, Clone)]
struct Asked {
    exporter: [u8; 32],
    method: String,
    path: String,
    body: Vec<u8>,
}

/// The fake server: mallory's certificate, on mallory's port (which the
/// members have as a peer), answering every hello with `hello(exporter)`
/// and everything else with `200` and an empty body; every request is
/// kept in `asked`.
struct FakePeer {
    asked: Arc<Mutex<Vec<Asked>>>,
    _rt: tokio::runtime::Runtime,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

impl FakePeer {
    fn start(
        tls_dir: &std::path::Path,
        port: u16,
        hello: impl Fn(&[u8; 32]) -> Vec<u8> + Send + Sync + 'static,
    ) -> FakePeer {
        let tls = lockbox_net::tls::TlsMaterial::load(tls_dir)
            .expect("mallory's fleet certificate")
            .server_config()
            .expect("a server config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let hello = Arc::new(hello);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
                [127, 0, 0, 1],
                port,
            ))))
            .expect("bind mallory's port");
        let kept = asked.clone();
        rt.spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let exporter = tls
                    .get_ref()
                    .1
                    .export_keying_material([0u8; 32], lockbox_net::proof::EXPORTER_LABEL, None)
                    .expect("an exporter value");
                let (asked, hello) = (kept.clone(), hello.clone());
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (asked, hello) = (asked.clone(), hello.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let answer = if path.starts_with("/lockbox/hello/") {
                                hello(&exporter)
                            } else {
                                Vec::new()
                            };
                            asked.lock().expect("asked").push(Asked {
                                exporter,
                                method,
                                path,
                                body,
                            });
                            let body: Body = http_body_util::Full::new(Bytes::from(answer)).boxed();
                            Ok::<_, std::convert::Infallible>(http::Response::new(body))
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service),
                );
            }
        });
        FakePeer { asked, _rt: rt }
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().expect("asked").clone()
    }
}

/// The replayed-endorsement attack against real agents: the fake peer
/// answers as bravo, with bravo's endorsement off alpha's disk and a proof
/// signed by its own key. Alpha and bravo refuse it, push nothing to it
/// and pull nothing from it while a file goes between them; every hello
/// they sent it is sealed (no endorsement, no circle key in the bytes) —
/// and the control: the circle's hello key opens each one to the asker's
/// real endorsement, so what was checked is what was sent.
#[test]
fn a_fake_peer_with_a_members_endorsement_learns_nothing_and_gets_nothing() {
    require_fuse!();
    // mallory is a host of the fleet (its certificate) that never runs an
    // agent: the fake server stands on its port, which both members have
    // as a peer.
    let c = Circle::loopback_locked(&["alpha", "bravo", "mallory"]);
    let (alpha, bravo, mallory) = (c.node("alpha"), c.node("bravo"), c.node("mallory"));
    for n in [alpha, bravo] {
        n.m.e.unlock();
        n.m.assert_mounted();
    }
    c.wait_formed(&["alpha", "bravo"]);
    let state = |n: &str, file: &str| c.node(n).m.e.state().join(file);
    // bravo's endorsement of the circle they formed, off alpha's disk.
    let bravo_endorsement =
        std::fs::read(state("alpha", "members/bravo.endorsement")).expect("bravo's endorsement");
    let hello_key =
        HelloKey::from_bytes(&std::fs::read(state("alpha", "circle.hello")).expect("circle.hello"))
            .expect("a hello key");
    let circle = hello_key.circle();
    let user = alpha.user();
    let fake = {
        let endorsement = hex::encode(&bravo_endorsement);
        let forger = lockbox_crypto::sign::SigningKey::from_seed(&[66; 32]);
        FakePeer::start(&state("mallory", "tls"), mallory.port, move |x| {
            let proof = lockbox_crypto::sign::Signed::sign(
                lockbox_net::proof::SessionProof {
                    user: user.clone(),
                    envoy: "bravo".into(),
                    side: lockbox_net::proof::Side::Answerer,
                    exporter: *x,
                },
                &forger,
            );
            Hello {
                protocol: lockbox_net::mesh::PROTOCOL_VERSION,
                user: user.clone(),
                envoy: "bravo".into(),
                instance: 1,
                endorsement: endorsement.clone(),
                proof: hex::encode(proof.to_bytes()),
                members: vec![endorsement.clone()],
                free_percent: 90,
                disk_short: false,
                // Digests that differ from everyone's: a member would be
                // pulled from at once.
                files: hex::encode([7u8; 16]),
                tombstones: hex::encode([7u8; 16]),
                resurrects: hex::encode([7u8; 16]),
                leaves: hex::encode([7u8; 16]),
                unlocked: None,
            }
            .encode()
            .expect("a hello")
        })
    };
    let mallory_addr = format!("127.0.0.1:{}", mallory.port);
    c.wait(
        "both members to say hello to the fake peer",
        CONVERGE,
        || {
            let asked = fake.asked();
            ["alpha", "bravo"].iter().all(|n| {
                asked.iter().any(|a| {
                    a.path.starts_with("/lockbox/hello/")
                        && HelloAsk::parse(&a.body).is_ok_and(|h| h.envoy == *n)
                })
            })
        },
    );

    // A file goes from alpha to bravo, and both have asked the fake peer
    // since: had they taken it for bravo, it would have been pushed to or
    // pulled from by now.
    let secret = content("secret", 5000);
    fs::write(alpha.at("secret"), &secret).expect("write on alpha");
    c.wait_content(&["bravo"], "secret", &secret);
    c.wait("both members to refuse the fake peer", CONVERGE, || {
        [alpha, bravo].iter().all(|n| {
            n.peers()
                .iter()
                .any(|(_, state, detail)| state == "refused" && detail.contains(&mallory_addr))
        })
    });
    let asked = fake.asked();
    let hellos: Vec<&Asked> = asked
        .iter()
        .filter(|a| a.path.starts_with("/lockbox/hello/"))
        .collect();
    assert!(hellos.len() >= 2, "both members said hello: {asked:?}");
    let others: Vec<(&str, &str)> = asked
        .iter()
        .filter(|a| !a.path.starts_with("/lockbox/hello/"))
        .map(|a| (a.method.as_str(), a.path.as_str()))
        .collect();
    assert!(
        others.is_empty(),
        "the fake peer was asked for more: {others:?}"
    );
    for n in [alpha, bravo] {
        assert_eq!(n.recipients(), ["alpha", "bravo"], "{}", n.name);
    }

    // Nothing it received names a member's endorsement or the circle key;
    // and each hello, opened with the circle's key, is a member's real
    // endorsement (the control: the check looked at what was sent).
    let endorsements: Vec<Vec<u8>> = ["alpha", "bravo"]
        .iter()
        .map(|e| {
            std::fs::read(state(e, &format!("members/{e}.endorsement"))).expect("an endorsement")
        })
        .collect();
    let mut needles: Vec<Vec<u8>> = vec![
        circle.0.to_vec(),
        hex::encode(circle.0).into_bytes(),
        circle.to_base64().into_bytes(),
    ];
    for e in &endorsements {
        needles.push(hex::encode(e).into_bytes());
        needles.push(e.clone());
    }
    let mut opened = Vec::new();
    for a in &asked {
        for n in &needles {
            assert!(
                !a.body.windows(n.len()).any(|w| w == &n[..]),
                "the fake peer got a member's endorsement or the circle key in {} {}",
                a.method,
                a.path
            );
        }
        if a.path.starts_with("/lockbox/hello/") {
            let ask = HelloAsk::parse(&a.body).expect("a hello ask");
            assert!(ask.endorsement.is_empty() && ask.proof.is_empty());
            let (e, _) = open_membership(&hello_key, &a.exporter, &ask.sealed)
                .expect("the circle's key opens a member's sealed hello");
            assert!(endorsements.contains(&e), "{}: not a member's", ask.envoy);
            opened.push(ask.envoy);
        }
    }
    opened.sort();
    opened.dedup();
    assert_eq!(opened, ["alpha", "bravo"]);
}
