//! The control API's request parser (`vmm::api::request::parse`) on arbitrary requests:
//! the method, path, query and body as a client could send them after HTTP framing.
//!
//! The first byte picks the method; the rest is split at the first two NUL bytes into
//! path, query and body (no NUL: all path). Nothing may panic, and every refusal must be
//! a 4xx with a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::api::request::parse;

const METHODS: [&str; 6] = ["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(pick) % METHODS.len()];
    let mut parts = rest.splitn(3, |b| *b == 0);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();
    if let Err(e) = parse(method, &path, query.as_deref(), body) {
        assert!((400..500).contains(&e.status), "{e:?}");
        assert!(!e.message.is_empty());
    }
});
