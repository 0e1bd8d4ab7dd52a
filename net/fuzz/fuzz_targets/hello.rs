//! The hello answer (JSON from a peer): any bytes parse or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_net::mesh::Hello;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Hello>(data);
});
