//! A librsync delta against a base: the first byte picks the base length, the rest is the delta.
//! The output limit bounds what a hostile delta can make the patcher write.
#![no_main]
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n).min(rest.len());
    let (base, d) = rest.split_at(n);
    let mut out = Vec::new();
    if let Ok(w) = delta::patch(base, d, &mut out, LIMIT) {
        assert!(w <= LIMIT && out.len() as u64 == w, "patch wrote {} bytes, said {w}", out.len());
    }
});
