//! Signed records, record lists and the manifest: what peers send in pushes,
//! table POSTs and pulls, and what the agent reads back from meta.redb. Any
//! bytes parse or fail cleanly; a parsed record re-encodes to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_crypto::sign::Signed;
use lockbox_net::records::{decode_list, FileVersion, Leave, Resurrect, Tombstone};
use lockbox_net::replica::decode_manifest;

/// Both parses of one record type: what the verified parse accepts, the
/// trusted one (no signature check, for the envoy's own database) accepts
/// as the same record; whatever the trusted one accepts re-encodes to the
/// input. Random bytes rarely carry a valid signature, so the trusted parse
/// is what drives the body decoders here.
fn both<T: lockbox_crypto::sign::Record + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let trusted = Signed::<T>::from_trusted_bytes(data);
    if let Ok(r) = &trusted {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = Signed::<T>::from_bytes(data) {
        assert_eq!(Some(&r), trusted.as_ref().ok());
    }
}

fuzz_target!(|data: &[u8]| {
    both::<FileVersion>(data);
    both::<Tombstone>(data);
    both::<Resurrect>(data);
    both::<Leave>(data);
    if let Ok(items) = decode_list(data, 1 << 20) {
        let again = lockbox_net::records::encode_list(items.iter().copied());
        assert_eq!(again, data);
    }
    let _ = decode_manifest(data);
});
