//! The mesh (`docs/design.md`, "The mesh") on real agents: envoys with their
//! own HOME, agent and FUSE mount, one fleet CA, real mTLS on loopback ports
//! (and, as root, real multicast between network namespaces). Everything is
//! checked by content read back through the mounts, never by log lines alone.
//!
//! The fixtures (`Circle`, `Node`, `Fleet`) live in `harness::mesh`.

use crate::harness::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lockbox_crypto::sign::{Signed, SigningKey};
use lockbox_net::records::{encode_list, FileVersion, Tombstone};
use lockbox_net::WireName;

use crate::harness::age::*;
use crate::harness::*;
use crate::{require, require_fuse};

#[test]
fn writes_replaces_and_renames_converge_on_every_envoy() {
    require_fuse!();
    let c = Circle::loopback(&ALL);

    // A write on alpha reaches bravo and charlie, byte-identical.
    let v1 = content("v1", 300 * 1024);
    fs::write(c.node("alpha").at("id_ed25519"), &v1).expect("write on alpha");
    c.wait_content(&ALL, "id_ed25519", &v1);

    // bravo replaces it; everyone sees the new version.
    let v2 = content("v2", 5000);
    fs::write(c.node("bravo").at("id_ed25519"), &v2).expect("replace on bravo");
    c.wait_content(&ALL, "id_ed25519", &v2);

    // charlie renames it; the old name is gone everywhere.
    fs::rename(
        c.node("charlie").at("id_ed25519"),
        c.node("charlie").at("id_old"),
    )
    .expect("rename on charlie");
    c.wait_content(&ALL, "id_old", &v2);
    c.wait_gone(&ALL, "id_ed25519");

    // Rename over an existing file on alpha: the target takes the content.
    let other = content("other", 100);
    fs::write(c.node("alpha").at("notes"), &other).expect("write notes");
    c.wait_content(&ALL, "notes", &other);
    fs::rename(c.node("alpha").at("id_old"), c.node("alpha").at("notes")).expect("rename over");
    c.wait_content(&ALL, "notes", &v2);
    c.wait_gone(&ALL, "id_old");
    assert_eq!(c.wait_same_listing(&ALL, 1), ["notes"]);

    for n in &c.nodes {
        n.assert_store_sealed();
        // Every envoy's store holds the version sealed to all three.
        assert_eq!(n.recipients(), ALL, "{}", n.name);
    }
}

#[test]
fn a_received_version_gets_its_block_tags_at_its_first_small_read() {
    require_fuse!();
    let c = Circle::loopback(&ALL[..2]);
    // 300 KiB: five chunks, 75 blocks. alpha seals it with its own tags.
    let v = content("tagged", 300 * 1024);
    fs::write(c.node("alpha").at("big"), &v).expect("write on alpha");
    let bravo = c.node("bravo");
    let stored = bravo.m.store().join("big");
    wait_until(Duration::from_secs(30), || stored.exists()).expect("big reaches bravo");
    let tags = bravo.m.e.state().join("tags").join("big");
    assert!(!tags.exists(), "a received version comes without tags");

    // Never read on bravo: the small read reaches its agent, goes by chunk
    // and has the tags made.
    let f = open_random(&bravo.at("big"));
    assert!(pread(&f, 200_000, 100).unwrap() == v[200_000..200_100]);
    wait_until(Duration::from_secs(30), || {
        fs::metadata(&tags).is_ok_and(|m| m.len() == 64 + 16 * 75)
    })
    .expect("bravo made the block tags of the version it received");
    let alpha = fs::read(c.node("alpha").m.e.state().join("tags").join("big"))
        .expect("alpha's own seal kept tags");
    let ours = fs::read(&tags).unwrap();
    assert_eq!(
        alpha[8..48],
        ours[8..48],
        "same version (binding) and length"
    );
    assert_ne!(alpha[48..], ours[48..], "tags under bravo's own key");
    for at in [4096u64, 70_000, 290_000] {
        assert!(pread(&f, at, 4096).unwrap() == v[at as usize..at as usize + 4096]);
    }
}

#[test]
fn every_envoy_writing_at_once_converges() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let per = 6;
    std::thread::scope(|s| {
        for n in &c.nodes {
            s.spawn(move || {
                for i in 0..per {
                    let name = format!("{}-{i}", n.name);
                    fs::write(n.at(&name), content(&name, 1000 + i * 7000)).expect("write");
                }
            });
        }
    });
    let names = c.wait_same_listing(&ALL, per * ALL.len());
    for name in &names {
        let len = 1000 + name[name.len() - 1..].parse::<usize>().unwrap() * 7000;
        c.wait_content(&ALL, name, &content(name, len));
    }
    for n in &c.nodes {
        n.assert_store_sealed();
    }
}

/// A burst of small files (a `cp -r` of a tree), with a few large ones
/// among them: the small ones travel in batches (`net/src/mesh/batch.rs`),
/// the large ones alone, and every envoy ends with every file, byte for
/// byte, and its store sealed. Then a burst of renames and deletes, whose
/// tombstones travel as lists (`net/src/mesh/record_queue.rs`): every
/// envoy ends with the moved files under their new names only, and
/// without the deleted ones.
#[test]
fn a_burst_of_small_files_reaches_every_envoy() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let alpha = c.node("alpha");
    let len = |i: usize| {
        if i % 50 == 7 {
            200_000 + i
        } else {
            300 + i * 13
        }
    };
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            let name = format!("burst-{i:03}");
            let body = content(&name, len(i));
            (name, body)
        })
        .collect();
    for (name, body) in &files {
        fs::write(alpha.at(name), body).expect("write");
    }
    for (name, body) in &files {
        c.wait_content(&ALL, name, body);
    }
    for n in &c.nodes {
        n.assert_store_sealed();
    }
    let (moved, deleted) = files.split_at(150);
    for (name, _) in moved {
        fs::rename(alpha.at(name), alpha.at(&format!("moved-{name}"))).expect("mv");
    }
    for (name, _) in deleted {
        fs::remove_file(alpha.at(name)).expect("rm");
    }
    for (name, body) in moved {
        c.wait_content(&ALL, &format!("moved-{name}"), body);
        c.wait_gone(&ALL, name);
    }
    for (name, _) in deleted {
        c.wait_gone(&ALL, name);
    }
}

#[test]
fn a_delete_reaches_every_envoy_and_a_lagging_copy_does_not_return() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let v = content("doomed", 2000);
    fs::write(c.node("alpha").at("doomed"), &v).expect("write");
    c.wait_content(&ALL, "doomed", &v);

    // charlie lags: it is away, holding the old version, while bravo
    // deletes the file.
    let charlie = c.node("charlie");
    take_away(&c, "charlie");
    fs::remove_file(c.node("bravo").at("doomed")).expect("rm on bravo");
    c.wait_gone(&["alpha", "bravo"], "doomed");
    assert!(
        charlie.stored("doomed").exists(),
        "charlie holds the old version while away"
    );
    // charlie returns with its old copy: the delete wins everywhere.
    charlie.m.e.unlock();
    c.wait_gone(&ALL, "doomed");
    // Several rounds of anti-entropy later it is still gone everywhere: a
    // file written on charlie after its return has reached every envoy,
    // and every table agrees.
    c.wait_settled(&ALL, "charlie", "marker");
    for n in &c.nodes {
        assert!(
            !fs::present(n.at("doomed")),
            "doomed came back on {}",
            n.name
        );
        assert!(!n.stored("doomed").exists(), "doomed in {}'s store", n.name);
    }
}

#[test]
fn concurrent_edits_keep_both_versions_under_one_agreed_name() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let base = content("base", 1000);
    fs::write(c.node("alpha").at("shared"), &base).expect("write");
    c.wait_content(&ALL, "shared", &base);

    // bravo goes down and edits its copy offline (encrypt works without an
    // agent); alpha edits meanwhile. The two versions are concurrent.
    let bravo = c.node("bravo");
    bravo.m.e.ok(&["stop"]);
    let offline = content("bravo-offline", 1500);
    let src = bravo.m.e.plain_file("shared", &offline);
    bravo.m.e.ok(&["encrypt", &text(&src), "--name", "shared"]);
    let online = content("alpha-online", 1700);
    fs::write(c.node("alpha").at("shared"), &online).expect("edit on alpha");
    c.wait_content(&["alpha", "charlie"], "shared", &online);

    bravo.m.e.unlock();
    let names = c.wait_same_listing(&ALL, 2);
    assert_eq!(names[0], "shared", "{names:?}");
    let copy = &names[1];
    assert!(copy.starts_with("shared.conflict-"), "{names:?}");
    // Both edits survive, the same way on every envoy.
    let winner = fs::read(c.node("alpha").at("shared")).expect("read");
    let loser = fs::read(c.node("alpha").at(copy)).expect("read copy");
    let mut both = [winner.clone(), loser.clone()];
    both.sort();
    let mut want = [online.clone(), offline.clone()];
    want.sort();
    assert_eq!(both, want, "both edits are kept");
    let loser_envoy = if loser == offline { "bravo" } else { "alpha" };
    assert!(
        copy.starts_with(&format!("shared.conflict-{loser_envoy}-")),
        "{copy} names the envoy whose version lost"
    );
    c.wait_content(&ALL, "shared", &winner);
    c.wait_content(&ALL, copy, &loser);
}

#[test]
fn an_envoy_that_was_down_catches_up_and_reads_everything() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let keep = content("kept", 4000);
    let gone = content("gone", 100);
    for (name, v) in [("kept", &keep), ("gone", &gone), ("renamed", &gone)] {
        fs::write(c.node("alpha").at(name), v).expect("write");
        c.wait_content(&ALL, name, v);
    }

    let charlie = c.node("charlie");
    charlie.m.e.ok(&["stop"]);
    // While charlie is away: new files, a replacement, a delete, a rename.
    let mut fresh = Vec::new();
    for i in 0..5 {
        let name = format!("new-{i}");
        let v = content(&name, 10_000 * (i + 1));
        fs::write(c.node(ALL[i % 2]).at(&name), &v).expect("write while charlie is away");
        fresh.push((name, v));
    }
    let replaced = content("replaced", 70_000);
    fs::write(c.node("bravo").at("kept"), &replaced).expect("replace");
    fs::remove_file(c.node("alpha").at("gone")).expect("delete");
    fs::rename(c.node("bravo").at("renamed"), c.node("bravo").at("moved")).expect("rename");
    c.wait_same_listing(&["alpha", "bravo"], 7);

    let back = Instant::now();
    charlie.m.e.unlock();
    c.wait_same_listing(&ALL, 7);
    c.wait_content(&ALL, "kept", &replaced);
    c.wait_content(&ALL, "moved", &gone);
    for (name, v) in &fresh {
        c.wait_content(&["charlie"], name, v);
    }
    eprintln!(
        "charlie caught up {} ms after its unlock returned (announce interval {} ms)",
        back.elapsed().as_millis(),
        INTERVAL.as_millis()
    );
    assert!(!fs::present(charlie.at("gone")) && !fs::present(charlie.at("renamed")));
    charlie.assert_store_sealed();
}

#[test]
fn killing_a_receiving_agent_mid_transfer_leaves_no_torn_file() {
    require_fuse!();
    require!(have_age(), "age not found (apt-get install age)");
    let c = Circle::loopback(&["alpha", "bravo"]);
    let old = content("old", 10_000);
    fs::write(c.node("alpha").at("big"), &old).expect("write");
    c.wait_content(&["alpha", "bravo"], "big", &old);

    let bravo = c.node("bravo");
    // bravo's key, to decrypt its store file with the reference age CLI
    // while its agent is dead.
    let key = bravo
        .m
        .e
        .ok(&[
            "export-identity",
            "--passphrase-file",
            &text(&bravo.m.e.pass),
        ])
        .trim()
        .to_string();
    let pid = bravo.m.e.agent_pid().expect("bravo's agent");
    let big = content("new", 200 * MIB);
    fs::write(c.node("alpha").at("big"), &big).expect("write 200 MiB on alpha");
    // Kill bravo as soon as the transfer has started landing in its temp
    // folder, i.e. mid-transfer.
    let tmp = bravo.m.tmp();
    c.wait("the transfer to reach bravo", CONVERGE, || {
        fs::read_dir(&tmp).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
        })
    });
    kill9(pid);
    crate::harness::detach_mount(&bravo.m.mnt);

    // What bravo's store holds is the old version, whole and sealed: it
    // decrypts, and to the old bytes (a torn file starts with the magic too).
    let stored = fs::read(bravo.stored("big")).expect("bravo still has big");
    assert!(stored.starts_with(AGE_MAGIC));
    assert_eq!(mode(&bravo.stored("big")), 0o600);
    // age authenticates every chunk and the end of the stream, so a torn
    // file does not decrypt. What does is the old version, or a version
    // alpha published while the 200 MiB file grew (it seals a file written
    // start to end as it grows): a prefix of the new content, whole. On a
    // loaded machine bravo may have installed one of those before the kill.
    let plain = age_plaintext(&key, &bravo.stored("big"), "bravo's big after the kill");
    if plain != old {
        assert!(
            !plain.is_empty() && big.starts_with(&plain),
            "bravo's big after the kill is neither the old version nor one alpha \
             sealed ({} bytes)",
            plain.len()
        );
        eprintln!(
            "bravo had installed a {}-byte version of the new file before the kill",
            plain.len()
        );
    }

    // Restarted, bravo throws the partial transfer away and gets the new
    // version, byte-identical.
    bravo.m.e.unlock();
    c.wait_content(&["bravo"], "big", &big);
    bravo.assert_store_sealed();
    let store = fs::metadata(bravo.stored("big")).expect("stat");
    assert!(store.size() > big.len() as u64, "ciphertext is larger");
}

#[test]
fn a_host_with_another_passphrase_is_never_a_member() {
    require_fuse!();
    require!(have_curl(), "curl not found (apt-get install curl)");
    // alpha and bravo share the passphrase; mallory has a certificate from
    // the same fleet CA but another passphrase.
    let c = Circle::loopback_with_outsider(&["alpha", "bravo"], "mallory");
    // Each side sees the other circle refused, and says why.
    c.wait("mallory to be refused on both sides", CONVERGE, || {
        let refused = |n: &Node, who: &str| {
            n.peers()
                .iter()
                .any(|(e, s, d)| e == who && s == "refused" && d.contains("passphrase"))
        };
        refused(c.node("alpha"), "mallory")
            && refused(c.node("bravo"), "mallory")
            && refused(c.node("mallory"), "alpha")
    });
    assert_eq!(c.node("alpha").recipients(), ["alpha", "bravo"]);
    assert_eq!(c.node("mallory").recipients(), ["mallory"]);
    let recipients = fs::read_to_string(c.node("alpha").m.e.state().join("recipients.txt"))
        .expect("recipients.txt");
    assert!(!recipients.contains("mallory"), "{recipients}");

    // A file on mallory never reaches alpha; alpha's never reaches mallory.
    fs::write(c.node("mallory").at("planted"), b"planted").expect("write on mallory");
    let secret = content("secret", 3000);
    fs::write(c.node("alpha").at("secret"), &secret).expect("write on alpha");
    c.wait_content(&["bravo"], "secret", &secret);
    fs::write(c.node("alpha").at("shared"), b"alpha's").expect("write");
    c.wait_content(&["bravo"], "shared", b"alpha's");

    // mallory pushes a version signed by its own key straight to alpha's
    // peer port with its valid fleet certificate: 403.
    let mallory = c.node("mallory");
    let user = mallory.user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (record, body) = fetch_version(mallory, &user, "planted", dir.path());
    let alpha = c.node("alpha");
    let mut to_alpha = PeerClient::attempt(mallory, alpha.port);
    let pushed = to_alpha.post(
        &format!("/lockbox/push/{user}/planted"),
        &[("lockbox-record", record.clone())],
        fs::read(&body).expect("the body"),
    );
    assert_eq!(
        pushed.status,
        403,
        "push by a non-member: {}",
        pushed.text()
    );

    // A delete signed by mallory does not delete alpha's file of that name:
    // neither mallory's own tombstone (over its own version) nor one over
    // the very version alpha and bravo hold.
    let two = ["alpha", "bravo"];
    for n in two {
        let listing = c.node(n).listing();
        assert!(listing.contains(&"shared".to_string()), "{n}: {listing:?}");
    }
    fs::write(mallory.at("shared"), b"mallory's").expect("write");
    fs::remove_file(mallory.at("shared")).expect("rm on mallory");
    let tombs = dir.path().join("tombs");
    let path = format!("/lockbox/tombstones/{user}");
    let got = PeerClient::proven(mallory, mallory.port).get(&path);
    assert_eq!(got.status, 200, "{}", got.text());
    fs::write(&tombs, &got.body).expect("write");
    let post = to_alpha.post(&path, &[], got.body.clone());

    // The tombstone a non-member would need: over alpha's version vector,
    // signed with mallory's own signing key. mallory delivers it, and a
    // member (alpha's certificate, as a relaying peer) hands it to both.
    let (record, _) = fetch_version(alpha, &user, "shared", dir.path());
    let record = hex::decode(record).expect("hex");
    let record = Signed::<FileVersion>::from_bytes(&record).expect("a version record");
    let key = fs::read_to_string(mallory.m.e.state().join("signing.key")).expect("signing.key");
    let key = SigningKey::parse_file(&key).expect("mallory's signing key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let forged = Signed::sign(
        Tombstone {
            user: record.body().user.clone(),
            name: record.body().name.clone(),
            vv: record.body().vv.clone(),
            author: WireName::new("mallory").expect("a wire name"),
            deleted_unix: now,
        },
        &key,
    );
    let forged = encode_list([forged.to_bytes().as_slice()]);
    let by_mallory = to_alpha.post(&path, &[], forged.clone());
    let relayed: Vec<Answer> = [alpha, c.node("bravo")]
        .iter()
        .map(|n| PeerClient::proven(alpha, n.port).post(&path, &[], forged.clone()))
        .collect();

    // The envoys had the chance to act: a file alpha writes after all of
    // that has reached bravo, and both still refuse mallory.
    fs::write(alpha.at("marker"), b"after the deletes").expect("write marker");
    c.wait_content(&two, "marker", b"after the deletes");
    c.wait("mallory refused on alpha and bravo", CONVERGE, || {
        two.iter().all(|n| {
            c.node(n)
                .peers()
                .iter()
                .any(|(e, s, _)| e == "mallory" && s == "refused")
        })
    });
    for n in two {
        let listing = c.node(n).listing();
        assert_eq!(listing, ["marker", "secret", "shared"], "{n}");
        assert_eq!(
            fs::read(c.node(n).at("shared")).expect("shared"),
            b"alpha's",
            "a non-member's tombstone deleted {n}'s file"
        );
    }
    assert!(
        !fs::present(alpha.at("planted")),
        "mallory's file reached alpha"
    );
    assert!(!fs::present(c.node("bravo").at("planted")));
    assert!(
        !fs::present(mallory.at("secret")),
        "alpha's file reached mallory"
    );
    assert_eq!(post.status, 403, "tombstone by a non-member: {post:?}");
    assert_eq!(
        by_mallory.status, 403,
        "forged tombstone from mallory: {by_mallory:?}"
    );
    for r in &relayed {
        assert_eq!(r.status, 403, "forged tombstone relayed by a member: {r:?}");
    }
}

#[test]
fn peers_without_a_fleet_certificate_are_refused_in_the_handshake() {
    require_fuse!();
    require!(have_curl(), "curl not found (apt-get install curl)");
    let c = Circle::loopback(&["alpha"]);
    let alpha = c.node("alpha");
    let hello = format!("/lockbox/hello/{}", alpha.user());
    let own = (
        alpha.tls("ca.pem"),
        alpha.tls("cert.pem"),
        alpha.tls("key.pem"),
    );

    // With the fleet's certificate the request gets an HTTP answer (426:
    // protocol 1's hello, which curl can send): the probe works.
    let ok = alpha.curl_as(alpha.port, &hello, &[]);
    assert!(
        String::from_utf8_lossy(&ok.stdout).ends_with("426"),
        "{ok:?}"
    );

    // No client certificate: refused in the handshake, no HTTP status.
    let none = curl(alpha.port, &hello, None, &[]);
    assert!(!none.status.success(), "{none:?}");
    assert_eq!(String::from_utf8_lossy(&none.stdout), "000", "{none:?}");

    // A certificate from another fleet CA: refused the same way.
    let other = Fleet::new();
    let stranger = Envoy::new();
    other.issue(&stranger, "stranger", &["127.0.0.1"]);
    let st = |f: &str| text(&stranger.state().join("tls").join(f));
    let foreign = curl(
        alpha.port,
        &hello,
        Some((&own.0, &st("cert.pem"), &st("key.pem"))),
        &[],
    );
    assert!(!foreign.status.success(), "{foreign:?}");
    assert_eq!(
        String::from_utf8_lossy(&foreign.stdout),
        "000",
        "{foreign:?}"
    );

    // The other way round: a server with another fleet's certificate is
    // refused by alpha's client, and alpha's status says why.
    drop(c);
    let ports = free_ports(2);
    let alpha = Envoy::with_config(&loopback_config(ports[0], &ports[1..]));
    let fleet = Fleet::new();
    fleet.issue(&alpha, "alpha", &["127.0.0.1"]);
    let alpha = Node {
        m: MountedEnvoy::named(alpha, "alpha"),
        name: "alpha".into(),
        port: ports[0],
    };
    let stranger = Envoy::with_config(&loopback_config(ports[1], &ports[..1]));
    other.issue(&stranger, "stranger", &["127.0.0.1"]);
    let stranger = Node {
        m: MountedEnvoy::named(stranger, "stranger"),
        name: "stranger".into(),
        port: ports[1],
    };
    let c = Circle {
        nodes: vec![alpha, stranger],
        _fleet: fleet,
    };
    for n in &c.nodes {
        n.m.e.unlock();
    }
    c.wait(
        "both sides to report the other unreachable",
        CONVERGE,
        || {
            let unreachable = |n: &Node, port: u16| {
                n.peers().iter().any(|(_, s, d)| {
                    s == "unreachable"
                        && d.contains(&format!("127.0.0.1:{port}"))
                        && d.contains("TLS")
                })
            };
            unreachable(c.node("alpha"), ports[1]) && unreachable(c.node("stranger"), ports[0])
        },
    );
    assert_eq!(c.node("alpha").recipients(), ["alpha"]);
    assert_eq!(c.node("stranger").recipients(), ["stranger"]);
}

#[test]
fn a_new_member_can_read_files_written_before_it_joined() {
    require_fuse!();
    let c = Circle::loopback_locked(&ALL);
    for n in &c.nodes[..2] {
        n.m.e.unlock();
    }
    c.wait_formed(&["alpha", "bravo"]);
    let early = content("early", 200_000);
    fs::write(c.node("alpha").at("early"), &early).expect("write");
    c.wait_content(&["alpha", "bravo"], "early", &early);

    // charlie joins later: alpha and bravo re-seal what they hold to the new
    // member set, and charlie reads the file through its own mount.
    c.node("charlie").m.e.unlock();
    c.wait_formed(&ALL);
    c.wait_content(&ALL, "early", &early);
    c.wait("no recipient drift anywhere", CONVERGE, || {
        c.nodes
            .iter()
            .all(|n| n.m.e.status_json()["recipient_drift"] == 0)
    });
}

#[test]
fn envoys_in_network_namespaces_find_each_other_by_multicast() {
    require_fuse!();
    require!(
        crate::harness::netlab::available().is_ok(),
        crate::harness::netlab::available().unwrap_err()
    );
    // The lab first: the circle drops before it, stopping the agents through
    // the namespaces that still exist.
    let lab = crate::harness::netlab::NetLab::new(3).expect("network lab");
    // The defaults: multicast on 224.0.0.44:1533, peer port 1531, no static
    // peers; each host has its own address and port space.
    let c = Circle::in_lab(&lab, INTERVAL);
    // Each envoy reached the others at their own addresses (once every
    // peer line says live: wait_formed counts live members, not lines).
    c.wait("every peer of every envoy live", CONVERGE, || {
        c.nodes.iter().all(|n| {
            let peers = n.peers();
            peers.len() == ALL.len() - 1 && peers.iter().all(|(_, state, _)| state == "live")
        })
    });
    for (i, n) in c.nodes.iter().enumerate() {
        for (e, state, detail) in n.peers() {
            let j = ALL.iter().position(|a| *a == e).expect("a member");
            assert_ne!(i, j);
            assert_eq!(state, "live");
            assert!(
                detail.starts_with(&format!("{}:1531", lab.addr(j))),
                "{}: {e} at {detail}",
                n.name
            );
        }
    }

    let v = content("multicast", 50_000);
    fs::write(c.node("bravo").at("found"), &v).expect("write on bravo");
    c.wait_content(&ALL, "found", &v);
    fs::remove_file(c.node("charlie").at("found")).expect("rm on charlie");
    c.wait_gone(&ALL, "found");
    drop(c);
    drop(lab);
}

#[test]
fn a_locked_circle_shows_drift_until_unlock_and_reencrypt_reseals_on_demand() {
    require_fuse!();
    // (A new envoy joins only through an unlocked member, which re-seals at
    // once; the drift a locked circle shows comes here from an eviction.)
    let c = Circle::loopback(&ALL);
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("f{i}"),
                content(&format!("f{i}"), 1000 + 90_000 * i),
            )
        })
        .collect();
    for (name, v) in &files {
        fs::write(c.node("alpha").at(name), v).expect("write");
    }
    for (name, v) in &files {
        c.wait_content(&ALL, name, v);
    }
    let alpha = c.node("alpha");
    alpha.m.e.ok(&["lock"]);
    c.node("bravo").m.e.ok(&["lock"]);
    let err = alpha.m.e.fails(1, &["reencrypt"]);
    assert!(err.contains("locked: run lockbox unlock"), "{err}");

    // charlie is evicted while the others are locked: they drop it as a
    // member at once, but cannot re-seal yet; status says so.
    let pass = text(&alpha.m.e.pass);
    alpha
        .m
        .e
        .ok(&["evict", "charlie", "--passphrase-file", &pass]);
    for n in ["alpha", "bravo"] {
        c.wait(&format!("drift on {n}"), CONVERGE, || {
            c.node(n).m.e.status_json()["recipient_drift"] == 3
        });
    }
    let status = alpha.m.e.ok(&["status"]);
    assert!(
        status.contains("recipient drift: 3 file(s)") && status.contains("lockbox reencrypt"),
        "{status}"
    );

    // Unlocking alpha re-seals them; the new versions reach bravo (still
    // locked), and the drift is gone everywhere.
    alpha.m.e.unlock();
    for (name, v) in &files {
        c.wait_content(&["alpha"], name, v);
    }
    c.wait("no drift on alpha and bravo", CONVERGE, || {
        ["alpha", "bravo"]
            .iter()
            .all(|n| c.node(n).m.e.status_json()["recipient_drift"] == 0)
    });
    c.node("bravo").m.e.unlock();

    // `reencrypt` re-seals every file on demand (new ciphertext, same
    // plaintext); the envoys settle on one ciphertext per file. (Which one is
    // not asserted: a re-seal made in the same second as another of the same
    // version ties on time and recipients, and the greater hash wins.)
    let out = alpha.m.e.ok(&["reencrypt"]);
    assert!(
        out.contains("re-encrypted 3 of 3 file(s) to the 2 current member(s)"),
        "{out}"
    );
    for (name, v) in &files {
        c.wait("one ciphertext on every envoy", CONVERGE, || {
            let stored: Vec<_> = ["alpha", "bravo"]
                .iter()
                .map(|n| fs::read(c.node(n).stored(name)).ok())
                .collect();
            stored.iter().all(|s| s.is_some() && *s == stored[0])
        });
        c.wait_content(&["alpha", "bravo"], name, v);
    }
    // Nothing was lost to a conflict copy.
    assert_eq!(
        c.wait_same_listing(&["alpha", "bravo"], 3),
        ["f0", "f1", "f2"]
    );
}

#[test]
fn pushes_are_answered_with_the_protocol_status_codes() {
    require_fuse!();
    require!(have_curl(), "curl not found (apt-get install curl)");
    // charlie takes files up to 1 MiB only.
    let c = Circle::loopback_locked_with(&ALL, |name| {
        if name == "charlie" {
            "max_file_size: 1MiB\n".into()
        } else {
            String::new()
        }
    });
    for n in &c.nodes {
        n.m.e.unlock();
    }
    c.wait_formed(&ALL);
    let (alpha, bravo, charlie) = (c.node("alpha"), c.node("bravo"), c.node("charlie"));
    let user = alpha.user();
    let dir = tempfile::tempdir().expect("tempdir");

    let v1 = content("v1", 5000);
    fs::write(alpha.at("doc"), &v1).expect("write");
    c.wait_content(&ALL, "doc", &v1);
    let (old_record, old_body) = fetch_version(alpha, &user, "doc", dir.path());

    // The same version again: accepted as already held.
    let (status, _) = push_version(alpha, bravo, &user, "doc", &old_record, &old_body);
    assert_eq!(status, "200");

    // A newer version is held: 409, and bravo keeps it.
    let v2 = content("v2", 6000);
    fs::write(alpha.at("doc"), &v2).expect("replace");
    c.wait_content(&ALL, "doc", &v2);
    let (status, answer) = push_version(alpha, bravo, &user, "doc", &old_record, &old_body);
    assert_eq!(status, "409", "{answer}");

    // A record pushed under another name, or a name that cannot be: 400.
    for bad in ["other", "%2E%2E", "a%2Fb"] {
        let (status, answer) = push_version(alpha, bravo, &user, bad, &old_record, &old_body);
        assert_eq!(status, "400", "{bad}: {answer}");
    }
    // A body that does not match its record: 400, nothing stored. (Pushed
    // under the record's conflict-copy name, which bravo does not hold, so
    // the body is read and checked.)
    let rec = hex::decode(&old_record).expect("hex");
    let rec = Signed::<FileVersion>::from_bytes(&rec).expect("a record");
    let copy = rec
        .body()
        .conflict_name()
        .expect("conflict name")
        .to_string();
    let (status, answer) = push_version(
        alpha,
        bravo,
        &user,
        &copy,
        &old_record,
        &dir.path().join("doc.h"),
    );
    assert_eq!(status, "400", "{answer}");
    assert!(answer.contains("does not match its record"), "{answer}");
    assert!(!bravo.stored(&copy).exists());

    // A forged signature (one flipped bit in the record): 400.
    let mut forged = hex::decode(&old_record).expect("hex");
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (status, answer) =
        push_version(alpha, bravo, &user, &copy, &hex::encode(forged), &old_body);
    assert_eq!(status, "400", "{answer}");
    assert!(!bravo.stored(&copy).exists());

    // Another user's lockbox does not exist here: 410 dormant.
    let (status, answer) = push_version(alpha, bravo, "nobody-here", "doc", &old_record, &old_body);
    assert_eq!((status.as_str(), answer.as_str()), ("410", "dormant"));

    // A deleted name: 410 tombstoned, for the version it deleted.
    let (rec2, body2) = fetch_version(alpha, &user, "doc", dir.path());
    fs::remove_file(alpha.at("doc")).expect("rm");
    c.wait_gone(&ALL, "doc");
    // bravo removes its copy first and records the tombstone right after
    // (a crash between them must not leave a recorded version without its
    // file); a push in between is still answered "already held".
    c.wait("bravo recorded the delete", CONVERGE, || {
        table(bravo, "tombstones").0 >= 1
    });
    let (status, answer) = push_version(alpha, bravo, &user, "doc", &rec2, &body2);
    assert_eq!((status.as_str(), answer.as_str()), ("410", "tombstoned"));
    assert!(!fs::present(bravo.at("doc")));

    // Over charlie's size limit: 413; alpha and bravo have it, charlie not.
    let big = content("big", 2 * MIB);
    fs::write(alpha.at("big"), &big).expect("write big");
    c.wait_content(&["alpha", "bravo"], "big", &big);
    let (rec, body) = fetch_version(alpha, &user, "big", dir.path());
    // The refusal comes from the record, before any of the body is read;
    // curl is sent only the body's first bytes, so that the answer does
    // not race its upload (a server that answers early resets the stream,
    // which some curl versions report as a failure instead of the answer).
    let head = dir.path().join("big-head");
    fs::write(&head, &fs::read(&body).expect("body")[..4096]).expect("write head");
    let (status, answer) = push_version(alpha, charlie, &user, "big", &rec, &head);
    assert_eq!(status, "413", "{answer}");
    // charlie had the chance to take big (from the push, or by fetching
    // it): a file alpha writes after reaches charlie.
    c.wait_marker(&ALL, "alpha", "marker");
    assert!(!fs::present(charlie.at("big")) && !charlie.stored("big").exists());
    for n in &c.nodes {
        n.assert_store_sealed();
    }
}

#[test]
fn a_peer_short_of_disk_refuses_pushes_and_is_skipped() {
    require_fuse!();
    require!(have_curl(), "curl not found (apt-get install curl)");
    // bravo counts its disk as full unless more than 99 % is free.
    let c = Circle::loopback_locked_with(&["alpha", "bravo"], |name| {
        if name == "bravo" {
            "disk_pressure_percent: 99\n".into()
        } else {
            String::new()
        }
    });
    for n in &c.nodes {
        n.m.e.unlock();
    }
    c.wait_formed(&["alpha", "bravo"]);
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    let user = alpha.user();

    fs::write(alpha.at("doc"), b"not for bravo").expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let (rec, body) = fetch_version(alpha, &user, "doc", dir.path());
    let (status, answer) = push_version(alpha, bravo, &user, "doc", &rec, &body);
    assert_eq!(status, "507", "{answer}");
    // Neither a push nor bravo's own catch-up brings it: bravo skips
    // fetching while its disk is short. First a positive sign that both
    // had the chance to act: alpha's status says why bravo gets nothing,
    // and bravo has heard alpha's file table with doc in it (its own files
    // table differs on alpha: a catch-up it does not make).
    c.wait("alpha to see bravo short of disk", CONVERGE, || {
        alpha
            .peers()
            .iter()
            .any(|(e, _, d)| e == "bravo" && d.contains("disk"))
    });
    c.wait("bravo to hear of alpha's doc", CONVERGE, || {
        table(bravo, "files").1.iter().any(|p| p == "alpha")
    });
    assert!(
        !bravo.stored("doc").exists(),
        "bravo took a file with a full disk"
    );
    let peers = alpha.peers();
    assert!(
        peers
            .iter()
            .any(|(e, _, d)| e == "bravo" && d.contains("disk")),
        "alpha's status says why bravo gets nothing: {peers:?}"
    );
    // bravo's status page counts the push it refused.
    let st = bravo.m.e.status_json();
    let own = &st["envoys"][0];
    assert_eq!(own["envoy"], "bravo", "{st}");
    assert_eq!(own["disk_short"], true, "{own}");
    assert!(own["disk_refusals"].as_u64() >= Some(1), "{own}");
}

/// The envoy folders a demo made in `dir` (`lockbox-demo-*`).
fn demo_folders_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .expect("the demo's TMPDIR")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("lockbox-demo-"))
        })
        .collect()
}

#[test]
fn the_demo_runs_three_envoys_and_cleans_up() {
    require_fuse!();
    let tmp = tempfile::Builder::new()
        .prefix("lockbox-demo-test-")
        .tempdir()
        .expect("tempdir");
    let out = Command::new("timeout")
        .args(["-k", "10", "240"])
        .arg(bin())
        .arg("demo")
        .env("TMPDIR", tmp.path())
        .env("HOME", tmp.path())
        .stdin(Stdio::null())
        .output()
        .expect("run lockbox demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "the three envoys found each other",
        "[bravo] $ cat ~/lockbox/id_demo",
        "[charlie] $ cat ~/lockbox/id_demo",
        "starts with \"age-encryption.org/v1\"",
        "[alpha] old_key is gone",
        "recipients: alpha, bravo, charlie",
        "tombstones: 1 (same on every live peer)",
        "cleaned up",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
    // Nothing is left: no envoy folder, no mount.
    let left = demo_folders_in(tmp.path());
    assert!(left.is_empty(), "left behind: {left:?}");
    let mounts = mounts_under(tmp.path());
    assert!(mounts.is_empty(), "demo mounts left: {mounts:?}");
    let agents = processes_with_home_under(tmp.path());
    assert!(agents.is_empty(), "demo agents left running: {agents:?}");
}

#[test]
fn the_demo_cleans_up_when_terminated() {
    require_fuse!();
    let tmp = tempfile::Builder::new()
        .prefix("lockbox-demo-test-")
        .tempdir()
        .expect("tempdir");
    let mut demo = Command::new(bin())
        .arg("demo")
        .env("TMPDIR", tmp.path())
        .env("HOME", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run lockbox demo");
    // Read its output on a thread; SIGTERM it once its three agents run
    // and have found each other (the state a user would interrupt).
    let stdout = demo.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("the three envoys found each other") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let found = rx.recv_timeout(Duration::from_secs(240));
    let demo_pid = demo.id();
    let running: Vec<u32> = processes_with_home_under(tmp.path())
        .into_iter()
        .filter(|&p| p != demo_pid)
        .collect();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(demo.id() as i32).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM the demo");
    let status = wait_exit(&mut demo, Duration::from_secs(120));
    let out = reader.join().expect("reader");
    assert!(
        found.is_ok(),
        "the demo's envoys never found each other:\n{out}"
    );
    assert!(
        running.len() >= 3,
        "three agents ran before the SIGTERM: {running:?}"
    );
    assert!(status.is_some(), "the demo did not exit on SIGTERM:\n{out}");
    assert!(
        out.contains("cleaned up"),
        "no cleanup after SIGTERM:\n{out}"
    );
    // No agent, no mount, no envoy folder survives.
    let agents = processes_with_home_under(tmp.path());
    assert!(agents.is_empty(), "demo agents left running: {agents:?}");
    let mounts = mounts_under(tmp.path());
    assert!(mounts.is_empty(), "demo mounts left: {mounts:?}");
    let left = demo_folders_in(tmp.path());
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A fleet member (a valid certificate) sends a real agent bodies over
/// its caps: a table declared larger than the table cap, a table streamed
/// without a length that goes on past its (empty) list, and a push whose
/// signed record declares more than the largest ciphertext. Each is
/// refused while the body is still open: the declared ones unread (413),
/// the streamed one as soon as its bytes go past the list (400), without
/// the agent keeping it in memory. The agent then still serves, and holds
/// what it held. (Many such bodies at once: `resources`.)
#[test]
fn oversized_bodies_from_a_member_are_refused_and_change_nothing() {
    require_fuse!();
    let c = Circle::loopback(&["alpha", "bravo"]);
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    let user = alpha.user();
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = content("doc", 5000);
    fs::write(alpha.at("doc"), &doc).expect("write");
    c.wait_content(&["alpha", "bravo"], "doc", &doc);
    let (record, _) = fetch_version(alpha, &user, "doc", dir.path());
    let before = holdings(bravo);
    let tombstones = format!("/lockbox/tombstones/{user}");
    // A bound on a hang, not a wait: each refusal comes at once.
    let limit = Duration::from_secs(120);

    // A table declared over the cap (longer than the most records a table
    // takes can be): 413 from the declared length, with at most a
    // flow-control window of the body sent.
    let declared = ("content-length", (TABLE_CAP + 1).to_string());
    let got = upload(
        alpha,
        bravo.port,
        &tombstones,
        &[declared],
        TABLE_CAP + 1,
        limit,
    );
    assert_eq!(got.answer, Ok(413), "{got:?}");
    assert!(got.sent <= CONNECTION_WINDOW + (2 << 20), "{got:?}");
    assert_eq!(holdings(bravo), before);

    // A table streamed without a length, up to 1 GiB of zeros: an empty
    // list followed by bytes, refused (400) as soon as they come, the rest
    // not read; a table is read as a stream, so the agent's memory hardly
    // grows.
    let pid = bravo.m.e.agent_pid().expect("bravo's agent runs");
    let rss_before = rss_kib(pid);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let offered: u64 = 1 << 30;
    let got = upload(alpha, bravo.port, &tombstones, &[], offered, limit);
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    assert_eq!(got.answer, Ok(400), "{got:?}");
    assert!(
        got.sent < CONNECTION_WINDOW + (8 << 20),
        "refused at once, the rest not read: {got:?}"
    );
    let growth = peak.saturating_sub(rss_before) << 10;
    eprintln!(
        "streamed table: {} bytes sent, agent RSS {rss_before} KiB before, peak {peak} KiB",
        got.sent
    );
    assert!(
        growth < 64 << 20,
        "the agent's memory grew by {growth} bytes for {} bytes sent",
        got.sent
    );
    assert_eq!(holdings(bravo), before);

    // A push whose signed record declares a ciphertext over the largest
    // accepted: 413 from the record, its body (declared as long) unread.
    let key = fs::read_to_string(alpha.m.e.state().join("signing.key")).expect("signing.key");
    let key = SigningKey::parse_file(&key).expect("alpha's signing key");
    let rec =
        Signed::<FileVersion>::from_bytes(&hex::decode(&record).expect("hex")).expect("a record");
    let mut huge = rec.body().clone();
    huge.vv
        .bump(&WireName::new("alpha").expect("name"))
        .expect("bump");
    huge.ciphertext_len = lockbox_net::mesh::MAX_CIPHERTEXT + 1;
    let len = huge.ciphertext_len;
    let headers = [
        (
            "lockbox-record",
            hex::encode(Signed::sign(huge, &key).to_bytes()),
        ),
        ("content-length", len.to_string()),
    ];
    let push = format!("/lockbox/push/{user}/doc");
    let got = upload(alpha, bravo.port, &push, &headers, len, limit);
    assert_eq!(got.answer, Ok(413), "{got:?}");
    assert!(got.sent <= CONNECTION_WINDOW + (2 << 20), "{got:?}");
    assert_eq!(holdings(bravo), before);
    assert_eq!(fs::read(bravo.at("doc")).expect("doc on bravo"), doc);

    // bravo still serves: a new file from alpha reaches it, and it answers
    // a hello.
    c.wait_marker(&["alpha", "bravo"], "alpha", "marker");
    let hello = PeerClient::unproven(alpha, bravo.port).hello_as(
        &alpha.m.e.state(),
        "alpha",
        lockbox_net::proof::Side::Asker,
    );
    assert_eq!(hello.status, 200, "{}", hello.text());
}

/// `lockbox list --json` of `e`: each name's state.
fn listed_states(e: &Envoy) -> std::collections::BTreeMap<String, String> {
    let list: serde_json::Value = serde_json::from_str(&e.ok(&["list", "--json"])).expect("json");
    list.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().expect(k).to_string();
            (f("name"), f("state"))
        })
        .collect()
}

/// Names are the user's: files whose names look like a failed seal or a
/// conflict copy are ordinary files, listed as such and replicated.
#[test]
fn names_shaped_like_a_state_are_ordinary_files_that_sync() {
    require_fuse!();
    let both = ["alpha", "bravo"];
    let c = Circle::loopback(&both);
    let names = ["x.1714380000.failed", "notes.conflict-b-20260101-000000"];
    for (i, name) in names.iter().enumerate() {
        let v = content(name, 1000 + i);
        fs::write(c.node("alpha").at(name), &v).expect("write on alpha");
        c.wait_content(&both, name, &v);
    }
    for n in &c.nodes {
        let states = listed_states(&n.m.e);
        for name in names {
            assert_eq!(
                states.get(name).map(String::as_str),
                Some("ciphertext"),
                "{name} on {}: {states:?}",
                n.name
            );
        }
        let st = n.m.e.status_json();
        assert_eq!(st["files"]["failed"], 0, "{}", n.name);
        assert_eq!(st["files"]["conflict"], 0, "{}", n.name);
    }
}

/// A tmpfs too small for any seal over an envoy's temp folder, unmounted
/// (lazily) when dropped.
struct TinyTmp(std::path::PathBuf);

impl TinyTmp {
    fn mount(tmp: &std::path::Path) -> TinyTmp {
        std::fs::create_dir_all(tmp).expect("tmp");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "tinytmp"])
            .arg(tmp)
            .status()
            .expect("mount");
        assert!(st.success(), "mount a tmpfs on {}", tmp.display());
        TinyTmp(tmp.to_path_buf())
    }
}

impl Drop for TinyTmp {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A real conflict copy and a real failed seal are shown as such: the
/// conflict copy syncs, the failed seal (a plaintext) stays on its envoy.
#[test]
fn a_real_conflict_copy_and_a_real_failed_seal_keep_their_states() {
    require_fuse!();
    require!(is_root(), "mounting a tmpfs needs root");
    let both = ["alpha", "bravo"];
    let c = Circle::loopback_locked(&both);
    let alpha = c.node("alpha");
    // alpha's sweep at start cannot seal this plaintext: no room to write
    // its ciphertext.
    let tiny = TinyTmp::mount(&alpha.m.tmp());
    let plain = content("left in the store by hand", 100_000);
    std::fs::write(alpha.m.e.store().join("big"), &plain).expect("plaintext");
    for n in &c.nodes {
        n.m.e.unlock();
        n.m.assert_mounted();
    }
    let failed = listed_states(&alpha.m.e)
        .into_iter()
        .find(|(_, s)| s == "failed")
        .map(|(n, _)| n)
        .expect("a failed seal on alpha");
    assert!(failed.starts_with("big."), "{failed}");
    drop(tiny);
    c.wait_formed(&both);

    // A conflict copy: bravo edits offline while alpha edits too.
    let base = content("base", 1000);
    fs::write(alpha.at("shared"), &base).expect("write");
    c.wait_content(&both, "shared", &base);
    let bravo = c.node("bravo");
    bravo.m.e.ok(&["stop"]);
    let src = bravo.m.e.plain_file("shared", &content("offline", 1500));
    bravo.m.e.ok(&["encrypt", &text(&src), "--name", "shared"]);
    fs::write(alpha.at("shared"), content("online", 1700)).expect("edit on alpha");
    bravo.m.e.unlock();
    bravo.m.assert_mounted();
    c.wait_settled(&both, "alpha", "marker");
    let listing = bravo.listing();
    let copy = listing
        .iter()
        .find(|n| n.starts_with("shared.conflict-"))
        .unwrap_or_else(|| panic!("no conflict copy on bravo: {listing:?}"));
    c.wait_content(&both, copy, &fs::read(bravo.at(copy)).expect("copy"));
    for n in &c.nodes {
        let states = listed_states(&n.m.e);
        assert_eq!(
            states.get(copy.as_str()).map(String::as_str),
            Some("conflict"),
            "{}: {states:?}",
            n.name
        );
        assert_eq!(
            states.get("shared").map(String::as_str),
            Some("ciphertext"),
            "{}",
            n.name
        );
        assert_eq!(n.m.e.status_json()["files"]["conflict"], 1, "{}", n.name);
    }
    // The failed seal is still one, kept on alpha only.
    assert_eq!(
        listed_states(&alpha.m.e).get(&failed).map(String::as_str),
        Some("failed")
    );
    assert_eq!(
        std::fs::read(alpha.m.e.store().join(&failed)).expect("kept"),
        plain
    );
    assert!(!listed_states(&bravo.m.e).contains_key(&failed));
    assert!(!bravo.listing().contains(&failed), "{failed} reached bravo");
}
