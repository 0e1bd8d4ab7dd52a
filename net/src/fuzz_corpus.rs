//! The fuzz targets' seed corpus (`net/fuzz/corpus/<target>/`), made from
//! the real encoders so that it stays valid: a few valid inputs per target
//! and a few that are nearly valid (truncated, one byte off, a rule
//! broken), so that fuzzing starts next to the formats instead of from
//! nothing. Test-only; it must not be used by the crate itself.
//!
//! The test checks that the committed corpus is what this module makes.
//! After a format changes, write it anew with
//! `LOCKBOX_WRITE_FUZZ_CORPUS=1 cargo test -p lockbox-net --lib fuzz_corpus`.

use std::collections::BTreeMap;
use std::num::NonZeroU16;
use std::path::PathBuf;

use http::Method;
use lockbox_crypto::digest::Sha256;
use lockbox_crypto::sign::{Encoder, Signed, SigningKey};
use lockbox_fs::Name;

use crate::announce::{Announcement, Digests};
use crate::mesh::route::Route;
use crate::mesh::{Hello, HelloAsk};
use crate::proof::{SessionProof, Side};
use crate::records::{self, FileVersion, Leave, LeaveKind, Resurrect, Tombstone};
use crate::replica::Table;
use crate::{VersionVector, WireName};

/// Seeds by target, then by file name.
type Corpus = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

fn wn(s: &str) -> WireName {
    WireName::new(s).unwrap()
}

fn vv(entries: &[(&str, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for (envoy, n) in entries {
        for _ in 0..*n {
            v.bump(&wn(envoy)).unwrap();
        }
    }
    v
}

/// Variants of `valid` that are nearly valid: cut short, one byte more,
/// and one byte flipped at `flip`.
fn near(out: &mut BTreeMap<String, Vec<u8>>, stem: &str, valid: &[u8], flip: usize) {
    out.insert(
        format!("{stem}-truncated"),
        valid[..valid.len() - 1].to_vec(),
    );
    let mut longer = valid.to_vec();
    longer.push(0);
    out.insert(format!("{stem}-trailing"), longer);
    let mut flipped = valid.to_vec();
    flipped[flip % valid.len()] ^= 0x01;
    out.insert(format!("{stem}-flipped"), flipped);
}

fn announcements() -> BTreeMap<String, Vec<u8>> {
    let a = crate::announce::tests::sample();
    let mut out = BTreeMap::new();
    let bytes = a.encode();
    near(&mut out, "laptop", &bytes, 4);
    out.insert("laptop".into(), bytes);
    let b = Announcement {
        user: wn("bob smith"),
        envoy: wn("zoë's desk"),
        peer_port: NonZeroU16::new(u16::MAX).unwrap(),
        instance_id: 0,
        digests: Digests::default(),
        ..a
    };
    out.insert("unicode".into(), b.encode());
    out
}

fn version_vectors() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    out.insert("empty".into(), VersionVector::new().encode().unwrap());
    let two = vv(&[("alpha", 3), ("bravo", 1)]).encode().unwrap();
    near(&mut out, "two", &two, two.len() - 1);
    out.insert("two".into(), two);
    out.insert(
        "five".into(),
        vv(&[("a", 1), ("b", 2), ("c", 300), ("d", 1), ("e", 70_000)])
            .encode()
            .unwrap(),
    );
    out
}

fn records() -> BTreeMap<String, Vec<u8>> {
    let alpha = SigningKey::from_seed(&[1; 32]);
    let doc = Name::new("notes.txt").unwrap();
    let body = FileVersion {
        user: wn("alice"),
        name: doc.clone(),
        vv: vv(&[("alpha", 2), ("bravo", 1)]),
        author: wn("alpha"),
        sealed_unix: 1_767_225_600,
        plaintext_len: 1234,
        ciphertext_len: 1234 + 16 + 200,
        hash: Sha256([0xab; 32]),
        recipients: vec![wn("alpha"), wn("bravo")],
        reseal: false,
        executable: false,
    };
    let executable = Signed::sign(
        FileVersion {
            executable: true,
            ..body.clone()
        },
        &alpha,
    )
    .to_bytes();
    let version = Signed::sign(body, &alpha).to_bytes();
    let tombstone = Signed::sign(
        Tombstone {
            user: wn("alice"),
            name: doc.clone(),
            vv: vv(&[("alpha", 2), ("bravo", 1)]),
            author: wn("alpha"),
            deleted_unix: 1_767_225_700,
        },
        &alpha,
    )
    .to_bytes();
    let resurrect = Signed::sign(
        Resurrect {
            user: wn("alice"),
            name: doc.clone(),
            vv: vv(&[("alpha", 2), ("bravo", 1)]),
            author: wn("alpha"),
            resurrected_unix: 1_767_225_800,
        },
        &alpha,
    )
    .to_bytes();
    let leave = Signed::sign(
        Leave {
            user: wn("alice"),
            envoy: wn("alpha"),
            signing_key: alpha.public(),
            kind: LeaveKind::Leave,
            left_unix: 1_767_225_900,
        },
        &alpha,
    )
    .to_bytes();
    let mut out = BTreeMap::new();
    near(&mut out, "version", &version, version.len() - 1);
    near(&mut out, "tombstone", &tombstone, 10);
    for (stem, bytes) in [
        ("version", &version),
        ("version-executable", &executable),
        ("tombstone", &tombstone),
        ("resurrect", &resurrect),
        ("leave", &leave),
    ] {
        out.insert(stem.into(), bytes.clone());
    }
    out.insert(
        "list".into(),
        records::encode_list([&tombstone[..], &resurrect[..]]),
    );
    out.insert("list-empty".into(), records::encode_list([]));
    // A manifest, as `Replica::manifest_bytes` writes it.
    let mut entry = Encoder::new();
    entry.bytes(doc.as_bytes());
    entry.bytes(&version);
    let entry = entry.finish();
    let manifest = records::encode_list([&entry[..]]);
    near(&mut out, "manifest", &manifest, 6);
    out.insert("manifest".into(), manifest);
    out
}

/// Seeds of the streaming list decoder: a piece-size byte, then a list.
fn list_streams() -> BTreeMap<String, Vec<u8>> {
    let alpha = SigningKey::from_seed(&[1; 32]);
    let tombstone = Signed::sign(
        Tombstone {
            user: wn("alice"),
            name: Name::new("notes.txt").unwrap(),
            vv: vv(&[("alpha", 1)]),
            author: wn("alpha"),
            deleted_unix: 1_767_225_700,
        },
        &alpha,
    )
    .to_bytes();
    let list = records::encode_list([&tombstone[..], &b""[..], &tombstone[..]]);
    let seed = |piece: u8, bytes: &[u8]| {
        let mut v = vec![piece];
        v.extend_from_slice(bytes);
        v
    };
    let mut out = BTreeMap::new();
    out.insert("bytewise".into(), seed(0, &list));
    out.insert("pieces-of-7".into(), seed(6, &list));
    out.insert("whole".into(), seed(255, &list));
    out.insert("empty".into(), seed(3, &records::encode_list([])));
    out.insert("list-truncated".into(), seed(6, &list[..list.len() - 1]));
    let mut trailing = list.clone();
    trailing.push(0);
    out.insert("list-trailing".into(), seed(6, &trailing));
    out.insert(
        "huge-count".into(),
        seed(1, &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1]),
    );
    out
}

fn hellos() -> BTreeMap<String, Vec<u8>> {
    let h = Hello {
        protocol: 2,
        user: "alice".into(),
        envoy: "laptop".into(),
        instance: 0x0102_0304_0506_0708,
        endorsement: "ab".repeat(60),
        proof: "ef".repeat(80),
        members: vec!["ab".repeat(60), "cd".repeat(60)],
        free_percent: 42,
        disk_short: false,
        files: hex::encode([1u8; 16]),
        tombstones: hex::encode([2u8; 16]),
        resurrects: hex::encode([3u8; 16]),
        leaves: hex::encode([4u8; 16]),
        unlocked: Some(false),
    };
    let mut out = BTreeMap::new();
    let bytes = h.encode().unwrap();
    out.insert("hello-truncated".into(), bytes[..bytes.len() - 1].to_vec());
    out.insert("hello".into(), bytes);
    let older = br#"{"protocol":1,"user":"alice","envoy":"desk","instance":7,"endorsement":"","members":[],"free_percent":90,"files":"","tombstones":""}"#;
    out.insert("older".into(), older.to_vec());
    let text = String::from_utf8(h.encode().unwrap()).unwrap();
    out.insert(
        "protocol-as-text".into(),
        text.replace("\"protocol\":2", "\"protocol\":\"2\"")
            .into_bytes(),
    );
    out
}

fn hello_asks() -> BTreeMap<String, Vec<u8>> {
    let a = HelloAsk {
        protocol: 2,
        user: "alice".into(),
        envoy: "desk".into(),
        instance: 9,
        port: 1531,
        endorsement: "ab".repeat(60),
        proof: "ef".repeat(80),
        sealed: String::new(),
        files: hex::encode([1u8; 16]),
        tombstones: hex::encode([2u8; 16]),
        resurrects: hex::encode([3u8; 16]),
        leaves: hex::encode([4u8; 16]),
    };
    let mut out = BTreeMap::new();
    let bytes = a.encode().unwrap();
    out.insert("ask-truncated".into(), bytes[..bytes.len() - 1].to_vec());
    out.insert("ask".into(), bytes);
    let sealed = HelloAsk {
        endorsement: String::new(),
        proof: String::new(),
        sealed: hex::encode([[1u8].as_slice(), &[8; 24], &[9; 300]].concat()),
        ..a.clone()
    };
    out.insert("sealed".into(), sealed.encode().unwrap());
    let text = String::from_utf8(a.encode().unwrap()).unwrap();
    out.insert(
        "port-too-large".into(),
        text.replace("\"port\":1531", "\"port\":70000").into_bytes(),
    );
    out
}

/// The session proof target's input: 32 bytes of exporter, then the
/// proof; checked against [`proof_endorsement`].
fn session_proofs() -> BTreeMap<String, Vec<u8>> {
    let key = SigningKey::from_seed(&[5; 32]);
    let exporter = [6u8; 32];
    let proof = |side| {
        Signed::sign(
            SessionProof {
                user: "alice".into(),
                envoy: "desk".into(),
                side,
                exporter,
            },
            &key,
        )
        .to_bytes()
    };
    let input = |p: &[u8]| [&exporter[..], p].concat();
    let mut out = BTreeMap::new();
    let good = proof(Side::Asker);
    near(&mut out, "proof", &input(&good), 40);
    out.insert("proof".into(), input(&good));
    out.insert("answerer".into(), input(&proof(Side::Answerer)));
    out
}

/// The join target's input: a selector byte (0 hello, 1 confirmation,
/// 2 offer), then the message.
fn joins() -> BTreeMap<String, Vec<u8>> {
    use lockbox_crypto::join::{JoinConfirm, JoinHello};
    let mut out = BTreeMap::new();
    let hello = JoinHello {
        msg: vec![0x58; 33],
    }
    .encode();
    out.insert("hello".into(), [&[0u8][..], &hello].concat());
    out.insert(
        "hello-truncated".into(),
        [&[0u8][..], &hello[..hello.len() - 1]].concat(),
    );
    let confirm = JoinConfirm {
        mac: [7; 32],
        sealed: vec![9; 100],
    }
    .encode();
    out.insert("confirm".into(), [&[1u8][..], &confirm].concat());
    out.insert(
        "confirm-trailing".into(),
        [&[1u8][..], &confirm, &[0][..]].concat(),
    );
    // A fixed circle secret: version, seed, created, and the seed's key.
    let seed = [3u8; 32];
    let public = SigningKey::from_seed(&seed).public();
    let secret = [&[1u8][..], &seed, &5u64.to_be_bytes(), &public.0].concat();
    let endorsement = Signed::sign(proof_endorsement(), &SigningKey::from_seed(&seed)).to_bytes();
    let offer = [
        &[1u8][..],
        &2u32.to_be_bytes(),
        &secret,
        &(endorsement.len() as u32).to_be_bytes(),
        &endorsement,
    ]
    .concat();
    out.insert("offer".into(), [&[2u8][..], &offer].concat());
    let mut bad = offer.clone();
    bad[10] ^= 1;
    out.insert("offer-flipped".into(), [&[2u8][..], &bad].concat());
    out
}

/// The endorsement the session proof target checks proofs against: envoy
/// `desk` of `alice` with the seed corpus's key.
/// The handover target's input: an encoded handover (its parts are fixed
/// bytes: the sealed secret is not opened by the parser).
fn handovers() -> BTreeMap<String, Vec<u8>> {
    let (old, new) = (
        SigningKey::from_seed(&[3; 32]),
        SigningKey::from_seed(&[4; 32]),
    );
    let succession = Signed::sign(
        lockbox_crypto::circle::Succession {
            user: "alice".into(),
            old: old.public(),
            new: new.public(),
            new_created_unix: 1,
        },
        &old,
    )
    .to_bytes();
    let endorsement = Signed::sign(proof_endorsement(), &new).to_bytes();
    let sealed = vec![0x61; 200];
    let hello_key = [[1u8].as_slice(), &[7; 32], &new.public().0].concat();
    let part = |b: &[u8]| [&(b.len() as u32).to_be_bytes()[..], b].concat();
    let handover = [
        vec![1u8],
        part(&succession),
        part(&endorsement),
        part(&sealed),
        hello_key,
    ]
    .concat();
    let mut out = BTreeMap::new();
    near(&mut out, "handover", &handover, 10);
    out.insert("handover".into(), handover);
    out
}

pub(crate) fn proof_endorsement() -> lockbox_crypto::circle::Endorsement {
    lockbox_crypto::circle::Endorsement {
        user: "alice".into(),
        envoy: "desk".into(),
        recipient: String::new(),
        signing_key: SigningKey::from_seed(&[5; 32]).public(),
        created_unix: 0,
    }
}

/// The method byte of the route target's input (its `METHODS`).
fn method_byte(m: &Method) -> u8 {
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
    ]
    .iter()
    .position(|x| x == m)
    .unwrap() as u8
}

fn routes() -> BTreeMap<String, Vec<u8>> {
    let input = |m: &Method, path: &str| {
        let mut v = vec![method_byte(m)];
        v.extend_from_slice(path.as_bytes());
        v
    };
    let mut out = BTreeMap::new();
    let odd = Name::new(b"caf\xc3\xa9 \xff.txt".to_vec()).unwrap();
    let named = [
        ("hello", Route::Hello),
        ("manifest", Route::Manifest),
        ("file", Route::File(Name::new("notes.txt").unwrap())),
        ("file-encoded", Route::File(odd.clone())),
        ("push", Route::Push(odd)),
        (
            "push-in-folder",
            Route::Push(Name::new("ssh/keys/id").unwrap()),
        ),
        ("get-tombstones", Route::GetTable(Table::Tombstones)),
        ("post-leaves", Route::PostTable(Table::Leaves)),
    ];
    for (stem, r) in named {
        out.insert(stem.into(), input(&r.method(), &r.path("alice")));
    }
    for (stem, m, path) in [
        ("traversal", Method::GET, "/lockbox/files/alice/%2e%2e"),
        (
            "empty-component",
            Method::POST,
            "/lockbox/push/alice/a%2F%2Fb",
        ),
        ("other-user", Method::GET, "/lockbox/hello/bob"),
        (
            "wrong-method",
            Method::PUT,
            "/lockbox/files/alice/notes.txt",
        ),
        ("unknown-kind", Method::GET, "/lockbox/manifest/alice"),
        ("too-deep", Method::GET, "/lockbox/files/alice/a/b"),
    ] {
        out.insert(stem.into(), input(&m, path));
    }
    out
}

/// Batches of pushes: one of two small versions, the same cut short, and
/// one with a flipped length.
fn batches() -> BTreeMap<String, Vec<u8>> {
    let alpha = SigningKey::from_seed(&[1; 32]);
    let item = |name: &str, body: &[u8]| {
        let v = FileVersion {
            user: wn("alice"),
            name: Name::new(name).unwrap(),
            vv: vv(&[("alpha", 1)]),
            author: wn("alpha"),
            sealed_unix: 1_767_225_600,
            plaintext_len: body.len() as u64,
            ciphertext_len: body.len() as u64,
            hash: Sha256::of(body),
            recipients: vec![wn("alpha"), wn("bravo")],
            reseal: false,
            executable: false,
        };
        (
            Name::new(name).unwrap(),
            Signed::sign(v, &alpha).to_bytes(),
            body.to_vec(),
        )
    };
    let valid = crate::mesh::batch::encode(&[
        item("notes.txt", b"age-encryption.org/v1\n..."),
        item("ssh/id_ed25519", &[7; 300]),
    ]);
    let mut out = BTreeMap::new();
    out.insert("batch-truncated".into(), valid[..valid.len() - 1].to_vec());
    let mut long = valid.clone();
    long[7] ^= 0x40;
    out.insert("batch-bad-length".into(), long);
    out.insert("batch".into(), valid);
    out
}

fn corpus() -> Corpus {
    let mut c = Corpus::new();
    c.insert("announcement", announcements());
    c.insert("version_vector", version_vectors());
    c.insert("records", records());
    c.insert("list_stream", list_streams());
    c.insert("hello", hellos());
    c.insert("hello_ask", hello_asks());
    c.insert("session_proof", session_proofs());
    c.insert("join", joins());
    c.insert("handover", handovers());
    c.insert("route", routes());
    c.insert("batch", batches());
    c
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// Every valid seed parses and every near-valid one is refused, as meant.
#[test]
fn the_seeds_are_what_they_say() {
    let c = corpus();
    for (name, bytes) in &c["announcement"] {
        let valid = !name.contains('-');
        assert_eq!(Announcement::parse(bytes).is_ok(), valid, "{name}");
    }
    for (name, bytes) in &c["version_vector"] {
        let valid = !name.contains('-');
        assert_eq!(VersionVector::decode(bytes).is_ok(), valid, "{name}");
    }
    for (name, bytes) in &c["hello"] {
        let valid = !name.contains('-');
        assert_eq!(Hello::parse(bytes).is_ok(), valid, "{name}");
    }
    for (name, bytes) in &c["batch"] {
        let valid = !name.contains('-');
        assert_eq!(crate::mesh::batch::decode(bytes).is_ok(), valid, "{name}");
    }
    for (name, bytes) in &c["list_stream"] {
        let valid = !name.contains('-') || name == "pieces-of-7";
        let list = records::decode_list(&bytes[1..], 1 << 10);
        assert_eq!(list.is_ok(), valid, "{name}");
    }
    for (name, bytes) in &c["hello_ask"] {
        let valid = !name.contains('-');
        assert_eq!(HelloAsk::parse(bytes).is_ok(), valid, "{name}");
    }
    for (name, bytes) in &c["session_proof"] {
        let (exporter, proof) = bytes.split_at(32);
        let side = if name == "answerer" {
            Side::Answerer
        } else {
            Side::Asker
        };
        let checked = crate::proof::check(
            proof,
            &proof_endorsement(),
            side,
            exporter.try_into().unwrap(),
        );
        // Near-valid seeds: a proof cut short, with a byte more, or with
        // its signer's key changed.
        let valid = !name.contains('-');
        assert_eq!(checked.is_ok(), valid, "{name}: {checked:?}");
    }
    for (name, bytes) in &c["join"] {
        let (which, rest) = bytes.split_first().unwrap();
        let ok = match which {
            0 => lockbox_crypto::join::JoinHello::parse(rest).is_ok(),
            1 => lockbox_crypto::join::JoinConfirm::parse(rest).is_ok(),
            _ => crate::join::Offer::parse(rest).is_ok(),
        };
        assert_eq!(ok, !name.contains('-'), "{name}");
    }
    for (name, bytes) in &c["handover"] {
        let parsed = crate::handover::Handover::parse(bytes);
        assert_eq!(parsed.is_ok(), !name.contains('-'), "{name}: {parsed:?}");
    }
    let manifest = &c["records"]["manifest"];
    assert_eq!(crate::replica::decode_manifest(manifest).unwrap().len(), 1);
    for (name, bytes) in &c["route"] {
        let m = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
        ][usize::from(bytes[0])]
        .clone();
        let path = std::str::from_utf8(&bytes[1..]).unwrap();
        let parsed = Route::parse(&m, path, "alice");
        let valid = !matches!(
            name.as_str(),
            "traversal"
                | "empty-component"
                | "other-user"
                | "wrong-method"
                | "unknown-kind"
                | "too-deep"
        );
        assert_eq!(parsed.is_ok(), valid, "{name}: {parsed:?}");
    }
}

/// The committed corpus is the one made here (or is written anew, with
/// `LOCKBOX_WRITE_FUZZ_CORPUS=1`).
#[test]
fn the_committed_corpus_is_current() {
    let dir = corpus_dir();
    let write = std::env::var_os("LOCKBOX_WRITE_FUZZ_CORPUS").is_some();
    for (target, seeds) in corpus() {
        let tdir = dir.join(target);
        if write {
            std::fs::create_dir_all(&tdir).unwrap();
        }
        for (name, bytes) in seeds {
            let file = tdir.join(&name);
            if write {
                std::fs::write(&file, &bytes).unwrap();
            } else {
                let committed = std::fs::read(&file).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}; write the corpus with LOCKBOX_WRITE_FUZZ_CORPUS=1",
                        file.display()
                    )
                });
                assert_eq!(
                    committed,
                    bytes,
                    "{} is stale; write the corpus with LOCKBOX_WRITE_FUZZ_CORPUS=1",
                    file.display()
                );
            }
        }
    }
}
