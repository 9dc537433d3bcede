//! A manifest from the wire or the state dir: decode, validate, digest.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = tree::Manifest::from_bytes(data) {
        if m.validate(true).is_ok() {
            let _ = tree::digest(&m);
            let _ = m.counts();
        }
    }
});
