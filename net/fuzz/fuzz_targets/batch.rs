//! A batch of pushes (`POST /lockbox/push/<user>`, `mesh::batch`): any
//! bytes decode to verified items or fail cleanly, and the items of a batch
//! that decodes encode back to a batch that decodes to the same items.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_net::mesh::batch;

fuzz_target!(|data: &[u8]| {
    let Ok(items) = batch::decode(data) else {
        return;
    };
    let again: Vec<batch::Outgoing> = items
        .iter()
        .map(|i| (i.name.clone(), i.rec.to_bytes(), i.body.clone()))
        .collect();
    let back = batch::decode(&batch::encode(&again)).expect("a re-encoded batch decodes");
    assert_eq!(back.len(), items.len());
    for (a, b) in items.iter().zip(&back) {
        assert_eq!((&a.name, &a.body), (&b.name, &b.body));
        assert_eq!(a.rec.to_bytes(), b.rec.to_bytes());
    }
});
