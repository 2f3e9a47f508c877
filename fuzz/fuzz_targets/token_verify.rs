//! The assignment token check a gateway runs on every CONNECT's `auth.token`.
//!
//! Nothing but placement can make a token that verifies (HMAC-SHA256 with a secret the fuzzer
//! does not have), so any input must be refused, and refused without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_common::assignment::TokenKey;

fuzz_target!(|data: &[u8]| {
    let key = TokenKey::new(b"fuzz-secret-0123456789abcdef");
    let token = String::from_utf8_lossy(data);
    assert!(key.verify_at(&token, 0).is_err(), "accepted {token:?}");
});
