//! The hello ask (JSON from an unproven peer, the one body such a peer may
//! send): any bytes parse or fail cleanly, and what parses encodes to JSON
//! that parses to the same ask.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_net::mesh::HelloAsk;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = HelloAsk::parse(data) {
        let again = a.encode().expect("a parsed ask encodes");
        assert_eq!(
            HelloAsk::parse(&again).ok().as_ref(),
            Some(&a),
            "a parsed ask re-parses differently"
        );
    }
});
