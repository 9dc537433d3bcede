//! The agent config (`/etc/hanfs/agent.toml`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(d) = model::AgentConfig::from_toml("agent.toml", text) {
            let _ = d.to_string();
        }
    }
});
