//! A librsync signature (stored on the MN, or brought by an admin): parse, then delta a small
//! buffer against it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = delta::Signature::parse(data) {
        let _ = delta::diff(&sig, b"hanfs fuzz: the new file's bytes, twice. hanfs fuzz", std::io::sink());
    }
});
