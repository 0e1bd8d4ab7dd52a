//! The peer server's routes: any method and path give a route or a clean
//! refusal, and a route's own method and path give that route back.
//!
//! Input: the first byte picks the method (`METHODS[b % 5]`), the rest is
//! the path (skipped unless UTF-8, as a URI path always is). The request is
//! to the agent of user `alice` (the seed corpus,
//! `lockbox_net`'s `fuzz_corpus` test, writes the same layout).
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use lockbox_net::mesh::route::Route;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, path)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    if let Ok(route) = Route::parse(method, path, "alice") {
        assert_eq!(&route.method(), method);
        let again = route.path("alice");
        assert_eq!(
            Route::parse(method, &again, "alice").as_ref(),
            Ok(&route),
            "{path:?} -> {again:?}"
        );
    }
});
