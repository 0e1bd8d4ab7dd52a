//! Version vectors: any bytes decode or fail cleanly; what decodes is
//! canonical (re-encodes to the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_net::VersionVector;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = VersionVector::decode(data) {
        assert_eq!(v.encode().ok().as_deref(), Some(data));
    }
});
