//! The hello answer (JSON from a peer): any bytes parse or fail cleanly,
//! and what parses encodes to JSON that parses to the same hello.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_net::mesh::Hello;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Hello::parse(data) {
        let again = h.encode().expect("a parsed hello encodes");
        assert_eq!(
            Hello::parse(&again).ok().as_ref(),
            Some(&h),
            "a parsed hello re-parses differently"
        );
    }
});
