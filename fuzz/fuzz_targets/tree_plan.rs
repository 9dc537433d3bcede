//! A plan from the controller: decode and validate its manifest, as the agent does before
//! staging anything.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = tree::Plan::from_bytes(data) {
        let _ = p.manifest.validate(false);
        let _ = p.to_send().count();
        let _ = p.is_empty();
    }
});
