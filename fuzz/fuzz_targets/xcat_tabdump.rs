//! xCAT `tabdump` CSV of any table.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = xcat::tabdump::parse("nodelist", "fuzz.csv", text);
    }
});
