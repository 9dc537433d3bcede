//! An AIX `/etc/exports` (the admin's lines and hanfs' managed block): parse, and splice a block
//! into it as the agent does.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(e) = exports::parse(exports::Dialect::Aix, text) {
            let block = exports::render(&e);
            let _ = exports::splice_aix(text, &block);
        }
        let block = format!("{}\n/x -vers=4,ro\n{}\n", exports::BEGIN_MARKER, exports::END_MARKER);
        let _ = exports::splice_aix(text, &block);
    }
});
