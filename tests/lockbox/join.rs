//! Joining on real agents (`docs/protocol.md`, "Joining"): what the join
//! endpoints give a machine that runs the exchange itself with the right
//! passphrase and with a wrong one, how failed attempts are limited and
//! shown, and a store made by protocol 1 (its circle key derived from the
//! passphrase) keeping its circle and files.

use crate::harness::fs;
use std::time::Duration;

use lockbox_crypto::circle::{CircleKey, CircleSecret, Endorsement, CIRCLE_PARAMS};
use lockbox_crypto::join::{self, JoinConfirm, JoinHello, JoinPassword, Side};
use lockbox_crypto::sign::{PublicKey, Signed};
use lockbox_crypto::SecretString;
use lockbox_net::join::Offer;

use crate::harness::*;
use crate::{require, require_fuse};

/// The test passphrase of `n` (the first line of its passphrase file).
fn passphrase(n: &Node) -> SecretString {
    let text = fs::read_to_string(&n.m.e.pass).expect("the passphrase file");
    SecretString::from(text.lines().next().unwrap_or_default().to_owned())
}

fn circle_public(n: &Node) -> PublicKey {
    let text = fs::read_to_string(n.m.e.state().join("circle.pub")).expect("circle.pub");
    PublicKey::from_base64(text.trim()).expect("a public key")
}

/// One join run against `port` with `password`, as far as the asker's
/// side goes: the answerer's first answer, whether its confirmation
/// checked, and — when it did — its offer; then our confirmation (with
/// `offer`, when given, or a MAC made with the keys we have), and its
/// answer.
struct Run {
    first: Answer,
    theirs: Option<Offer>,
    second: Option<Answer>,
}

fn run_join(from: &Node, port: u16, password: &JoinPassword, offer: Option<&Offer>) -> Run {
    let user = from.user();
    let mut c = PeerClient::unproven(from, port);
    let (pending, mine) = join::start(password, &user, &c.exporter, Side::Asker);
    let first = c.post(
        &format!("/lockbox/join/{user}"),
        &[],
        JoinHello { msg: mine }.encode(),
    );
    if first.status != 200 {
        return Run {
            first,
            theirs: None,
            second: None,
        };
    }
    let (hello, rest) = first.body.split_at(JoinHello::LEN);
    let hello = JoinHello::parse(hello).expect("a join hello");
    let confirm = JoinConfirm::parse(rest).expect("a join confirmation");
    let keys = pending.finish(&hello.msg).expect("a valid SPAKE2 message");
    let theirs = match keys.check(Side::Asker, &confirm.mac) {
        Ok(()) => Some(
            Offer::parse(&keys.open(Side::Asker, &confirm.sealed).expect("opens"))
                .expect("an offer"),
        ),
        Err(_) => None,
    };
    let sealed = match offer {
        Some(o) => keys.seal(Side::Asker, &o.encode()).expect("seal"),
        None => Vec::new(),
    };
    let ours = JoinConfirm {
        mac: keys.confirm(Side::Asker),
        sealed,
    };
    let second = c.post(&format!("/lockbox/join-confirm/{user}"), &[], ours.encode());
    Run {
        first,
        theirs,
        second: Some(second),
    }
}

/// The join's promise, from the side of a machine that runs it by hand:
/// with the passphrase it gets the circle (and the answerer agrees when
/// shown its own circle back); with a wrong one it gets a refusal and
/// nothing it could test a guess against offline — its view of each run
/// is fresh randomness plus a MAC it cannot check — and after five failed
/// runs from its address the answerer stops answering and `status`
/// shows the address.
#[test]
fn a_join_gives_the_circle_only_for_the_passphrase_and_failures_are_limited() {
    require_fuse!();
    let c = Circle::loopback(&["alpha"]);
    let alpha = c.node("alpha");
    let user = alpha.user();
    let circle = circle_public(alpha);

    // The right passphrase: the confirmation checks and the offer is
    // alpha's circle; shown it back, alpha answers that it is the same.
    let right = JoinPassword::derive(&passphrase(alpha), &user);
    let run = run_join(alpha, alpha.port, &right, None);
    assert_eq!(run.first.status, 200, "{}", run.first.text());
    let offer = run
        .theirs
        .expect("the confirmation checks for the passphrase");
    assert_eq!(offer.circle.public(), circle);
    let same = Offer {
        circle: CircleSecret::from_bytes(&offer.circle.to_bytes()).expect("a secret"),
        members: offer.members,
        endorsement: offer.endorsement.clone(),
    };
    let run = run_join(alpha, alpha.port, &right, Some(&same));
    let second = run.second.expect("a confirmation was sent");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.text(), "Same");

    // A wrong passphrase: refused, and nothing of alpha's circle or
    // members in what came back.
    let wrong = JoinPassword::derive(&SecretString::from("not the passphrase".to_owned()), &user);
    let endorsement = fs::read(alpha.m.e.state().join("members").join("alpha.endorsement"))
        .expect("alpha's endorsement");
    let secrets = [
        hex::encode(&endorsement),
        circle.to_base64(),
        hex::encode(circle.0),
    ];
    let mut firsts = Vec::new();
    for attempt in 1..=lockbox_net::mesh::FAILED_JOINS_PER_HOUR {
        let run = run_join(alpha, alpha.port, &wrong, None);
        assert_eq!(
            run.first.status,
            200,
            "attempt {attempt}: {}",
            run.first.text()
        );
        assert!(
            run.theirs.is_none(),
            "attempt {attempt}: a wrong passphrase checked"
        );
        let second = run.second.expect("a confirmation was sent");
        assert_eq!(second.status, 403, "attempt {attempt}: {}", second.text());
        assert!(
            second.text().contains("passphrases differ"),
            "{}",
            second.text()
        );
        for answer in [&run.first, &second] {
            let seen = hex::encode(&answer.body) + &answer.text();
            for s in &secrets {
                assert!(!seen.contains(s.as_str()), "attempt {attempt} showed {s}");
            }
            assert!(!endorsement
                .windows(32)
                .any(|w| answer.body.windows(32).any(|b| b == w)));
        }
        firsts.push(run.first.body.clone());
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(
        firsts.len(),
        lockbox_net::mesh::FAILED_JOINS_PER_HOUR,
        "each run's answer is fresh"
    );
    // The sixth failed run is not answered, and the right passphrase from
    // the same address waits too.
    for pw in [&wrong, &right] {
        let run = run_join(alpha, alpha.port, pw, None);
        assert_eq!(run.first.status, 429, "{}", run.first.text());
    }
    let status = alpha.m.e.ok(&["status"]);
    assert!(
        status.contains("join refused") && status.contains("127.0.0.1: 5 failed join(s)"),
        "{status}"
    );
    // Nothing changed: alpha's circle is its own.
    assert_eq!(circle_public(alpha), circle);
}

/// Turns `n`'s store into the layout protocol 1 made: the circle key
/// derived from the passphrase and the user name, every member's
/// endorsement signed with it, and no `circle.secret`.
fn as_protocol_1(n: &Node, members: &[&Node]) -> PublicKey {
    let key = CircleKey::derive(&passphrase(n), &n.user(), CIRCLE_PARAMS).expect("derive");
    let bodies: Vec<(String, Endorsement)> = members
        .iter()
        .map(|m| {
            let own =
                m.m.e
                    .state()
                    .join("members")
                    .join(format!("{}.endorsement", m.name));
            let signed = Signed::<Endorsement>::from_bytes(&fs::read(own).expect("read"))
                .expect("an endorsement");
            (m.name.clone(), signed.body().clone())
        })
        .collect();
    let state = n.m.e.state();
    fs::remove_file(state.join("circle.secret")).expect("remove circle.secret");
    fs::remove_file(state.join("circle.hello")).expect("remove circle.hello");
    fs::write(state.join("circle.pub"), format!("{}\n", key.public())).expect("circle.pub");
    let dir = state.join("members");
    for entry in std::fs::read_dir(&dir).expect("members/") {
        fs::remove_file(entry.expect("an entry").path()).expect("remove");
    }
    for (name, body) in bodies {
        fs::write(
            dir.join(format!("{name}.endorsement")),
            key.endorse(body).to_bytes(),
        )
        .expect("write");
    }
    key.public()
}

/// A circle whose stores were made by protocol 1 (its key derived from the
/// passphrase, so any of its endorsements let a guess be tested offline)
/// keeps its files under protocol 2 and is re-keyed: at alpha's first
/// unlock a random circle succeeds it, and bravo — locked all along, its
/// hellos unsealed — follows by the handover alpha left it. No endorsement
/// carries the derived key any more; every file still reads; new files
/// sync.
#[test]
fn a_store_made_by_protocol_1_keeps_its_files_and_is_rekeyed() {
    require_fuse!();
    require!(is_root(), "rewrites another envoy's state folder");
    let c = Circle::loopback(&["alpha", "bravo"]);
    let (alpha, bravo) = (c.node("alpha"), c.node("bravo"));
    let doc = content("before the upgrade", 4000);
    fs::write(alpha.at("doc"), &doc).expect("write");
    c.wait_content(&["alpha", "bravo"], "doc", &doc);
    // Stopped, both rewritten to protocol 1's layout (the endorsements
    // read before either is rewritten).
    for n in [alpha, bravo] {
        n.m.e.ok(&["stop"]);
    }
    let derived = as_protocol_1(alpha, &[alpha, bravo]);
    // bravo's endorsement files are the same as alpha's, as protocol 1
    // left them.
    for name in ["alpha", "bravo"] {
        let from = alpha
            .m
            .e
            .state()
            .join("members")
            .join(format!("{name}.endorsement"));
        let to = bravo
            .m
            .e
            .state()
            .join("members")
            .join(format!("{name}.endorsement"));
        fs::write(to, fs::read(from).expect("read")).expect("write");
    }
    for f in ["circle.secret", "circle.hello"] {
        fs::remove_file(bravo.m.e.state().join(f)).expect("remove");
    }
    fs::write(bravo.m.e.state().join("circle.pub"), format!("{derived}\n")).expect("circle.pub");
    for n in [alpha, bravo] {
        assert!(!fs::present(n.m.e.state().join("circle.secret")));
    }
    bravo.m.e.start();
    alpha.m.e.unlock();
    c.wait("one re-keyed circle", CONVERGE, || {
        let (a, b) = (circle_public(alpha), circle_public(bravo));
        a == b && a != derived
    });
    assert_eq!(
        bravo.m.e.status_json()["unlocked"],
        false,
        "bravo stayed locked"
    );
    bravo.m.e.unlock();
    c.wait_formed(&["alpha", "bravo"]);
    let circle = circle_public(alpha);
    for n in [alpha, bravo] {
        assert_eq!(fs::read(n.at("doc")).expect("doc"), doc, "{}", n.name);
        let own = fs::read(
            n.m.e
                .state()
                .join("members")
                .join(format!("{}.endorsement", n.name)),
        )
        .expect("its endorsement");
        let own = Signed::<Endorsement>::from_bytes(&own).expect("an endorsement");
        assert_eq!(
            own.signer(),
            circle,
            "{} is endorsed by the new circle",
            n.name
        );
        // The new circle's secret is kept sealed, and its hello key lets
        // the envoy seal its hellos.
        for f in ["circle.secret", "circle.hello"] {
            assert_eq!(mode(&n.m.e.state().join(f)), 0o600, "{} {f}", n.name);
        }
    }
    c.wait_marker(&["alpha", "bravo"], "bravo", "after the upgrade");
}

/// Two circles of two, set up apart, meet: they become one circle of four.
/// The unlocked members join (the older circle wins); the member of the
/// losing circle that is **locked** all along follows through the handover
/// its partner left it — no unlock, no join — and a file written after the
/// merge is sealed to all four, readable by each once it unlocks.
#[test]
fn two_circles_of_two_become_one_and_a_locked_member_follows() {
    require_fuse!();
    let c = Circle::loopback_locked(&["alpha", "bravo", "charlie", "delta"]);
    let node = |n: &str| c.node(n);
    // Circle x: alpha and bravo, while charlie and delta do not run.
    for n in ["alpha", "bravo"] {
        node(n).m.e.unlock();
    }
    c.wait_formed(&["alpha", "bravo"]);
    for n in ["alpha", "bravo"] {
        node(n).m.e.ok(&["stop"]);
    }
    // Circle y: charlie and delta, while alpha and bravo do not run.
    for n in ["charlie", "delta"] {
        node(n).m.e.unlock();
    }
    c.wait_formed(&["charlie", "delta"]);
    let (x, y) = (circle_public(node("alpha")), circle_public(node("charlie")));
    assert_ne!(x, y, "two circles");
    // One member of each is locked from now on: delta, and bravo, which
    // starts locked. alpha and charlie are unlocked and meet.
    node("delta").m.e.ok(&["lock"]);
    node("bravo").m.e.start();
    node("alpha").m.e.unlock();
    let all = ["alpha", "bravo", "charlie", "delta"];
    c.wait("one circle of four", Duration::from_secs(60), || {
        let first = circle_public(node("alpha"));
        all.iter().all(|n| {
            circle_public(node(n)) == first && node(n).recipients() == all.map(String::from)
        })
    });
    let winner = circle_public(node("alpha"));
    assert!(winner == x || winner == y, "one of the two circles won");
    let (adopter, follower) = if winner == x {
        ("charlie", "delta")
    } else {
        ("alpha", "bravo")
    };
    // The follower stayed locked, and got there by the handover.
    let f = node(follower);
    assert_eq!(
        f.m.e.status_json()["unlocked"],
        false,
        "{follower} stayed locked"
    );
    let log = fs::read_to_string(f.m.e.state().join("agent.log")).expect("log");
    assert!(
        log.contains("followed its circle into circle"),
        "{follower}: {log}"
    );
    assert!(
        fs::read_dir(node(adopter).m.e.state().join("handover"))
            .is_ok_and(|mut rd| rd.next().is_some()),
        "{adopter} kept a handover"
    );
    // A file written now is sealed to all four: each reads it once
    // unlocked.
    let after = content("after the merge", 3000);
    fs::write(node("charlie").at("after"), &after).expect("write on charlie");
    for n in ["bravo", "delta"] {
        node(n).m.e.unlock();
    }
    c.wait_content(&all, "after", &after);
    // Its circle secret opened at that unlock: it can join others again.
    let log = fs::read_to_string(f.m.e.state().join("agent.log")).expect("log");
    assert!(!log.contains("cannot be opened"), "{follower}: {log}");
}
