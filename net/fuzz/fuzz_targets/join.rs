//! The join's messages (bytes from an unproven peer): the first byte picks
//! the parser — a join hello, a join confirmation, or an offer (which
//! arrives sealed, but is parsed after opening) — and any bytes parse or
//! fail cleanly; what parses encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_crypto::join::{JoinConfirm, JoinHello};
use lockbox_net::join::Offer;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(h) = JoinHello::parse(rest) {
                assert_eq!(h.encode(), rest, "a join hello re-encodes differently");
            }
        }
        1 => {
            if let Ok(c) = JoinConfirm::parse(rest) {
                assert_eq!(c.encode(), rest, "a join confirmation re-encodes differently");
            }
        }
        _ => {
            if let Ok(o) = Offer::parse(rest) {
                assert_eq!(&o.encode()[..], rest, "an offer re-encodes differently");
            }
        }
    }
});
