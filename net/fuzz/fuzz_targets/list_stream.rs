//! The streaming record-list decoder (`records::ListDecoder`), which reads
//! table bodies from peers frame by frame. The first byte sets the size of
//! the pieces the rest is fed in; any bytes in any pieces decode or fail
//! cleanly, agree with the whole-list `decode_list`, and never make the
//! decoder hold more than one record and its length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockbox_net::records::{decode_list, ListDecoder, LIST_DECODER_MAX_HELD};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, list)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece) + 1;
    let mut dec = ListDecoder::new(1 << 10);
    let mut got = Vec::new();
    let mut ok = true;
    'feed: for chunk in list.chunks(piece) {
        let mut input = chunk;
        loop {
            let next = dec.next(&mut input);
            assert!(dec.held() <= LIST_DECODER_MAX_HELD);
            match next {
                Ok(Some(item)) => got.push(item),
                Ok(None) => break,
                Err(_) => {
                    ok = false;
                    break 'feed;
                }
            }
        }
        assert!(input.is_empty());
    }
    let ok = ok && dec.finish().is_ok();
    match decode_list(list, 1 << 10) {
        Ok(items) => {
            assert!(ok);
            assert_eq!(got.len(), items.len());
            for (a, b) in got.iter().zip(items) {
                assert_eq!(a.as_slice(), b);
            }
        }
        Err(_) => assert!(!ok),
    }
});
