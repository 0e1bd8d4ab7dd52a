//! A handover (bytes from a peer's hello refusal): any bytes parse or fail
//! cleanly, and what parses encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_net::handover::Handover;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Handover::parse(data) {
        assert_eq!(&h.encode()[..], data, "a handover re-encodes differently");
    }
});
