//! A frame from a peer as `Conn` reads it: the length header, then one message of either
//! direction, and the borrowed chunk fast path.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((h, payload)) = data.split_first_chunk::<{ proto::HEADER }>() else { return };
    let _ = proto::frame_len(*h);
    let _ = proto::decode::<proto::ToAgent>(payload);
    let _ = proto::decode::<proto::FromAgent>(payload);
    let _ = proto::chunk_data::<proto::ToAgent>(payload);
    let _ = proto::chunk_data::<proto::FromAgent>(payload);
});
