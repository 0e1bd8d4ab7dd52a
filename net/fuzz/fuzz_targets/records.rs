//! Signed records, record lists and the manifest: what peers send in pushes,
//! table POSTs and pulls. Any bytes parse or fail cleanly; a parsed record
//! re-encodes to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_crypto::sign::Signed;
use lockbox_net::records::{decode_list, FileVersion, Leave, Resurrect, Tombstone};
use lockbox_net::replica::decode_manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Signed::<FileVersion>::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = Signed::<Tombstone>::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = Signed::<Resurrect>::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = Signed::<Leave>::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(items) = decode_list(data, 1 << 20) {
        let again = lockbox_net::records::encode_list(items.iter().copied());
        assert_eq!(again, data);
    }
    let _ = decode_manifest(data);
});
