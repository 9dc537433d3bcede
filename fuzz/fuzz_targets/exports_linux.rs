//! A deployed Linux exports file (`/etc/exports.d/hanfs.exports`) read back for the diff; what
//! parses must render again without a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(e) = exports::parse(exports::Dialect::Linux, text) {
            let _ = exports::render(&e);
        }
    }
});
