//! Session proofs (bytes from an unproven peer): the first 32 bytes are the
//! session's exporter value, the rest the proof. Any bytes are checked
//! without panicking, and a proof that checks for one side never checks
//! for the other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_crypto::circle::Endorsement;
use lockbox_crypto::sign::SigningKey;
use lockbox_net::proof::{check, Side};

fuzz_target!(|data: &[u8]| {
    if data.len() < 32 {
        return;
    }
    let (exporter, proof) = data.split_at(32);
    let exporter: [u8; 32] = exporter.try_into().expect("32 bytes");
    // The seed corpus's endorsement (net/src/fuzz_corpus.rs).
    let e = Endorsement {
        user: "alice".into(),
        envoy: "desk".into(),
        recipient: String::new(),
        signing_key: SigningKey::from_seed(&[5; 32]).public(),
        created_unix: 0,
    };
    let asker = check(proof, &e, Side::Asker, &exporter).is_ok();
    let answerer = check(proof, &e, Side::Answerer, &exporter).is_ok();
    assert!(!(asker && answerer), "one proof checked for both sides");
});
