//! The cluster config (`/etc/hanfs/hanfs.toml`): parse and validate must answer every input with
//! a config or diagnostics, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(d) = model::Cluster::from_toml("hanfs.toml", text) {
            // Rendering the diagnostics walks their spans back into the text.
            let _ = d.to_string();
        }
    }
});
