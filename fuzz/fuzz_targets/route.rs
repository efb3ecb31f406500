//! Fuzz target: `server::route::route` with every method over the input as a request target
//! (when it is UTF-8, as the connection guarantees). Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::http::parse::Method;

const METHODS: [Method; 6] = [
    Method::Get,
    Method::Head,
    Method::Put,
    Method::Post,
    Method::Delete,
    Method::Other,
];

fn check(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    for method in METHODS {
        let _ = server::route::route(method, target);
    }
    // HEAD routes exactly like GET.
    assert_eq!(
        server::route::route(Method::Head, target),
        server::route::route(Method::Get, target)
    );
}

fuzz_target!(|data: &[u8]| check(data));
