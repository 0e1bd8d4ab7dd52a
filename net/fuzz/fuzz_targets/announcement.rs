//! The discovery datagram: any bytes parse or fail cleanly, and what parses
//! encodes back to the same bytes (one encoding per value).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_net::Announcement;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Announcement::parse(data) {
        assert_eq!(a.encode(), data, "a parsed announcement re-encodes differently");
    }
});
