//! Tests of the join: both sides in memory, and hostile bytes.

use proptest::prelude::*;

use super::*;

const EXPORTER: [u8; 32] = [0x5a; 32];

fn pw(pass: &str, user: &str) -> JoinPassword {
    JoinPassword::derive(&SecretString::from(pass.to_owned()), user)
}

/// Both sides with their own inputs; returns (asker's keys, answerer's keys).
fn run(asker: (&str, &str, &[u8; 32]), answerer: (&str, &str, &[u8; 32])) -> (JoinKeys, JoinKeys) {
    let (pa, ma) = start(&pw(asker.0, asker.1), asker.1, asker.2, Side::Asker);
    let (pb, mb) = start(
        &pw(answerer.0, answerer.1),
        answerer.1,
        answerer.2,
        Side::Answerer,
    );
    assert_eq!(ma.len(), MSG_LEN);
    assert_eq!(mb.len(), MSG_LEN);
    (pa.finish(&mb).unwrap(), pb.finish(&ma).unwrap())
}

fn same() -> (JoinKeys, JoinKeys) {
    run(
        ("correct horse", "alice", &EXPORTER),
        ("correct horse", "alice", &EXPORTER),
    )
}

/// Every way the two sides can disagree: each side's check of the other's
/// confirmation is refused as "the passphrases differ", and nothing sealed
/// by one opens on the other.
fn assert_refused(a: &JoinKeys, b: &JoinKeys) {
    let e = a
        .check(Side::Asker, &b.confirm(Side::Answerer))
        .unwrap_err();
    assert!(matches!(e, Error::JoinRefused), "{e:?}");
    assert!(e.to_string().contains("the passphrases differ"), "{e}");
    assert!(matches!(
        b.check(Side::Answerer, &a.confirm(Side::Asker)),
        Err(Error::JoinRefused)
    ));
    let sealed = a.seal(Side::Asker, b"secret").unwrap();
    assert!(b.open(Side::Answerer, &sealed).is_err());
    let sealed = b.seal(Side::Answerer, b"secret").unwrap();
    assert!(a.open(Side::Asker, &sealed).is_err());
}

#[test]
fn same_passphrase_keys_agree() {
    let (a, b) = same();
    assert_eq!(a.side(), Side::Asker);
    assert_eq!(b.side(), Side::Answerer);
    b.check(Side::Answerer, &a.confirm(Side::Asker)).unwrap();
    a.check(Side::Asker, &b.confirm(Side::Answerer)).unwrap();
    // The two confirmations differ: one side's is not the other's.
    assert_ne!(a.confirm(Side::Asker), b.confirm(Side::Answerer));
    assert_eq!(a.confirm(Side::Asker), b.confirm(Side::Asker));

    let sealed = a.seal(Side::Asker, b"circle secret").unwrap();
    assert_eq!(sealed.len(), SEAL_OVERHEAD + 13);
    assert_eq!(
        &b.open(Side::Answerer, &sealed).unwrap()[..],
        b"circle secret"
    );
    let sealed = b.seal(Side::Answerer, b"").unwrap();
    assert_eq!(&a.open(Side::Asker, &sealed).unwrap()[..], b"");
    let big = vec![7u8; MAX_PLAINTEXT];
    let sealed = b.seal(Side::Answerer, &big).unwrap();
    assert_eq!(sealed.len(), MAX_SEALED);
    assert_eq!(&a.open(Side::Asker, &sealed).unwrap()[..], &big[..]);
    // Random nonces: the same plaintext seals differently each time.
    assert_ne!(
        a.seal(Side::Asker, b"x").unwrap(),
        a.seal(Side::Asker, b"x").unwrap()
    );
}

#[test]
fn wrong_passphrase_is_refused_both_ways() {
    let (a, b) = run(
        ("correct horse", "alice", &EXPORTER),
        ("correct horsf", "alice", &EXPORTER),
    );
    assert_refused(&a, &b);
}

#[test]
fn another_user_or_tls_session_is_refused() {
    let (a, b) = run(
        ("correct horse", "alice", &EXPORTER),
        ("correct horse", "alicf", &EXPORTER),
    );
    assert_refused(&a, &b);
    let mut other = EXPORTER;
    other[31] ^= 1;
    let (a, b) = run(
        ("correct horse", "alice", &EXPORTER),
        ("correct horse", "alice", &other),
    );
    assert_refused(&a, &b);
}

/// The user is part of the password hash and of the identities: the same
/// password hash used under another user name still fails.
#[test]
fn user_binding_is_in_the_identities_too() {
    let p = pw("correct horse", "alice");
    let (pa, ma) = start(&p, "alice", &EXPORTER, Side::Asker);
    let (pb, mb) = start(&p, "bob", &EXPORTER, Side::Answerer);
    assert_refused(&pa.finish(&mb).unwrap(), &pb.finish(&ma).unwrap());
}

#[test]
fn reflected_message_is_rejected() {
    let p = pw("correct horse", "alice");
    for side in [Side::Asker, Side::Answerer] {
        let (pending, msg) = start(&p, "alice", &EXPORTER, side);
        assert_eq!(pending.side(), side);
        let e = pending.finish(&msg).unwrap_err();
        assert!(
            matches!(&e, Error::Malformed(m) if m.contains("other side")),
            "{e:?}"
        );
        // With the side byte changed, our own point is still refused.
        let (pending, mut msg) = start(&p, "alice", &EXPORTER, side);
        msg[0] = side.peer().spake_byte();
        let e = pending.finish(&msg).unwrap_err();
        assert!(
            matches!(&e, Error::Malformed(m) if m.contains("own point")),
            "{e:?}"
        );
    }
}

#[test]
fn reflected_confirmation_and_sealed_message_fail() {
    let (a, b) = same();
    // Each side's own confirmation, sent back to it.
    assert!(matches!(
        a.check(Side::Asker, &a.confirm(Side::Asker)),
        Err(Error::JoinRefused)
    ));
    assert!(matches!(
        b.check(Side::Answerer, &b.confirm(Side::Answerer)),
        Err(Error::JoinRefused)
    ));
    // Its own sealed message, sent back.
    let sealed = a.seal(Side::Asker, b"hello").unwrap();
    assert!(a.open(Side::Asker, &sealed).is_err());
    // Checking or opening "as the other side" is refused outright.
    assert!(matches!(
        a.check(Side::Answerer, &a.confirm(Side::Asker)),
        Err(Error::Malformed(_))
    ));
    assert!(a.open(Side::Answerer, &sealed).is_err());
    assert!(matches!(
        a.seal(Side::Answerer, b"hello"),
        Err(Error::Malformed(_))
    ));
    // A confirmation made for the wrong side is refused by the peer.
    assert!(matches!(
        b.check(Side::Answerer, &a.confirm(Side::Answerer)),
        Err(Error::JoinRefused)
    ));
}

#[test]
fn confirmation_and_sealed_bytes_are_all_checked() {
    let (a, b) = same();
    let mac = a.confirm(Side::Asker);
    for i in 0..MAC_LEN {
        let mut bad = mac;
        bad[i] ^= 0x80;
        assert!(matches!(
            b.check(Side::Answerer, &bad),
            Err(Error::JoinRefused)
        ));
    }
    for len in [0, 1, 31, 33, 64] {
        assert!(b.check(Side::Answerer, &vec![0u8; len]).is_err(), "{len}");
    }
    assert!(b.check(Side::Answerer, &mac[..31]).is_err());

    let sealed = a.seal(Side::Asker, b"endorsement").unwrap();
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(b.open(Side::Answerer, &bad), Err(Error::Malformed(_))),
            "byte {i}"
        );
    }
    for len in 0..SEAL_OVERHEAD {
        assert!(b.open(Side::Answerer, &sealed[..len]).is_err(), "{len}");
    }
    assert!(b.open(Side::Answerer, &vec![0; MAX_SEALED + 1]).is_err());
    assert!(a.seal(Side::Asker, &vec![0; MAX_PLAINTEXT + 1]).is_err());
}

#[test]
fn garbage_messages_of_every_length_are_errors() {
    let p = pw("correct horse", "alice");
    for side in [Side::Asker, Side::Answerer] {
        for len in 0..100 {
            for fill in [0x00, 0x01, 0xff, 0x42] {
                let mut msg = vec![fill; len];
                if let Some(first) = msg.first_mut() {
                    *first = side.peer().spake_byte();
                }
                let (pending, _) = start(&p, "alice", &EXPORTER, side);
                assert!(
                    matches!(pending.finish(&msg), Err(Error::Malformed(_))),
                    "{side:?} len {len} fill {fill:#x}"
                );
            }
        }
    }
}

#[test]
fn small_order_and_non_canonical_points_are_rejected() {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    let p = pw("correct horse", "alice");
    let finish = |point: [u8; 32]| {
        let (pending, _) = start(&p, "alice", &EXPORTER, Side::Asker);
        let mut msg = vec![SIDE_B];
        msg.extend_from_slice(&point);
        pending.finish(&msg)
    };
    for t in EIGHT_TORSION {
        let e = finish(t.compress().to_bytes()).unwrap_err();
        assert!(
            matches!(&e, Error::Malformed(m) if m.contains("prime-order")),
            "{e:?}"
        );
    }
    // A good point plus a torsion component.
    let mixed = ED25519_BASEPOINT_POINT + EIGHT_TORSION[1];
    let e = finish(mixed.compress().to_bytes()).unwrap_err();
    assert!(
        matches!(&e, Error::Malformed(m) if m.contains("prime-order")),
        "{e:?}"
    );
    // y = p + 1 encodes the identity's y non-canonically.
    let mut non_canonical = [0xffu8; 32];
    non_canonical[0] = 0xee;
    non_canonical[31] = 0x7f;
    let e = finish(non_canonical).unwrap_err();
    assert!(
        matches!(&e, Error::Malformed(m) if m.contains("canonical")),
        "{e:?}"
    );
    // A prime-order point is accepted (the keys just do not match).
    assert!(finish(ED25519_BASEPOINT_POINT.compress().to_bytes()).is_ok());
}

#[test]
fn the_wire_message_is_not_a_function_of_the_passphrase() {
    let p = pw("correct horse", "alice");
    for side in [Side::Asker, Side::Answerer] {
        let (_, m1) = start(&p, "alice", &EXPORTER, side);
        let (_, m2) = start(&p, "alice", &EXPORTER, side);
        assert_ne!(m1, m2);
        assert_ne!(m1[1..], m2[1..]);
        assert_eq!(m1[0], side.spake_byte());
    }
}

#[test]
fn password_is_domain_separated_and_hidden() {
    let a = pw("pass", "alice");
    // Length-prefixed user: ("alice", "xpass") and ("alicex", "pass") differ.
    assert_ne!(a.0, pw("xpass", "alic").0);
    assert_ne!(pw("pass", "alicex").0, pw("xpass", "alice").0);
    assert_eq!(a.0, pw("pass", "alice").0);
    let mut h = Sha256::new();
    h.update(b"lockbox-join-password-v1\0\0\0\0\x05alicepass");
    assert_eq!(a.0, <[u8; 32]>::from(h.finalize()));
    assert_eq!(format!("{a:?}"), "JoinPassword(..)");
    let (pending, _) = start(&a, "alice", &EXPORTER, Side::Asker);
    assert_eq!(format!("{pending:?}"), "Pending { side: Asker, .. }");
    let (k, _) = same();
    assert_eq!(format!("{k:?}"), "JoinKeys { side: Asker, .. }");
}

#[test]
fn hello_and_confirm_round_trip() {
    let (_, msg) = start(&pw("p", "alice"), "alice", &EXPORTER, Side::Asker);
    let hello = JoinHello { msg };
    let bytes = hello.encode();
    assert_eq!(bytes.len(), JoinHello::LEN);
    assert_eq!(bytes[0], 1);
    assert_eq!(JoinHello::parse(&bytes).unwrap(), hello);
    for len in 0..JoinHello::LEN + 3 {
        if len == JoinHello::LEN {
            continue;
        }
        let mut b = bytes.clone();
        b.resize(len, 0);
        assert!(
            matches!(JoinHello::parse(&b), Err(Error::Malformed(_))),
            "{len}"
        );
    }
    let mut v2 = bytes;
    v2[0] = 2;
    assert!(matches!(JoinHello::parse(&v2), Err(Error::Malformed(m)) if m.contains("version 2")));

    let (a, _) = same();
    for sealed in [
        Vec::new(),
        a.seal(Side::Asker, b"x").unwrap(),
        vec![9; MAX_SEALED],
    ] {
        let c = JoinConfirm {
            mac: a.confirm(Side::Asker),
            sealed,
        };
        let bytes = c.encode();
        assert!(bytes.len() <= JoinConfirm::MAX_LEN);
        assert_eq!(JoinConfirm::parse(&bytes).unwrap(), c);
        for len in 0..bytes.len().min(80) {
            assert!(JoinConfirm::parse(&bytes[..len]).is_err(), "{len}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(JoinConfirm::parse(&long).is_err());
        let mut v0 = bytes;
        v0[0] = 0;
        assert!(
            matches!(JoinConfirm::parse(&v0), Err(Error::Malformed(m)) if m.contains("version 0"))
        );
    }
    // Over the cap: refused as a whole, and a declared length over the cap
    // is refused without reading it.
    let over = JoinConfirm {
        mac: [0; 32],
        sealed: vec![0; MAX_SEALED + 1],
    };
    assert!(
        matches!(JoinConfirm::parse(&over.encode()), Err(Error::Malformed(m)) if m.contains("cap"))
    );
    let mut declared = vec![1u8];
    declared.extend_from_slice(&[0; 32]);
    declared.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(JoinConfirm::parse(&declared), Err(Error::Malformed(m)) if m.contains("cap")));
}

/// The whole exchange as the two ends would run it, through the wire types.
#[test]
fn a_join_over_the_wire_types() {
    let secret = crate::circle::CircleSecret::generate(1_700_000_000);
    let asker_pw = pw("tr0ub4dor", "alice");
    let member_pw = pw("tr0ub4dor", "alice");

    let (asking, msg) = start(&asker_pw, "alice", &EXPORTER, Side::Asker);
    let hello = JoinHello { msg }.encode();

    let (answering, msg) = start(&member_pw, "alice", &EXPORTER, Side::Answerer);
    let member = answering
        .finish(&JoinHello::parse(&hello).unwrap().msg)
        .unwrap();
    let reply_hello = JoinHello { msg }.encode();
    let reply = JoinConfirm {
        mac: member.confirm(Side::Answerer),
        sealed: member.seal(Side::Answerer, &secret.to_bytes()).unwrap(),
    }
    .encode();

    let asker = asking
        .finish(&JoinHello::parse(&reply_hello).unwrap().msg)
        .unwrap();
    let reply = JoinConfirm::parse(&reply).unwrap();
    asker.check(Side::Asker, &reply.mac).unwrap();
    let got =
        crate::circle::CircleSecret::from_bytes(&asker.open(Side::Asker, &reply.sealed).unwrap())
            .unwrap();
    assert_eq!(got.public(), secret.public());

    let last = JoinConfirm {
        mac: asker.confirm(Side::Asker),
        sealed: Vec::new(),
    }
    .encode();
    member
        .check(Side::Answerer, &JoinConfirm::parse(&last).unwrap().mac)
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn finish_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..80),
        side_byte in prop_oneof![Just(SIDE_A), Just(SIDE_B), any::<u8>()],
        fixed_len: bool,
    ) {
        let mut msg = body;
        if fixed_len {
            msg.resize(MSG_LEN, 0);
        }
        if let Some(first) = msg.first_mut() {
            *first = side_byte;
        }
        let (pending, _) = start(&pw("p", "alice"), "alice", &EXPORTER, Side::Asker);
        if let Ok(keys) = pending.finish(&msg) {
            // Only a well-formed point from the other side gets this far,
            // and its keys match nobody's.
            prop_assert_eq!(msg.len(), MSG_LEN);
            prop_assert_eq!(msg[0], SIDE_B);
            prop_assert!(keys.check(Side::Asker, &[0u8; 32]).is_err());
        }
    }

    #[test]
    fn open_and_parsers_never_panic(input in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (a, _) = same();
        prop_assert!(a.open(Side::Asker, &input).is_err());
        prop_assert!(a.check(Side::Asker, &input).is_err());
        if let Ok(h) = JoinHello::parse(&input) {
            prop_assert_eq!(h.encode(), input.clone());
        }
        if let Ok(c) = JoinConfirm::parse(&input) {
            prop_assert_eq!(c.encode(), input);
        }
    }
}
