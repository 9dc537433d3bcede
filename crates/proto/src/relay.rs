//! The relay stream (fan-out of image payloads): a child SN dials its parent's relay port and asks
//! for the payloads of one run, one at a time. Its own frame set, never the controller's: a
//! parent only hands out payload bytes (the child verifies each by BLAKE3 as if the controller had
//! sent it), it never drives the child. Same framing as the control protocol (u32 length +
//! postcard, bulk in ≤ [`crate::CHUNK`] chunks). Variant order is the wire format: append only.

use crate::{Digest, Encoding, Message, Name, Role};
use serde::{Deserialize, Serialize};

/// Child → relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToRelay {
    /// First frame: the token the controller gave both ends for this run (it names the child;
    /// with TLS the child's certificate must name that child too), and which run.
    Hello {
        token: [u8; 32],
        #[serde(deserialize_with = "crate::wire::name")]
        image: Name,
        generation: u64,
    },
    /// The payload of `plan.contents[index]`: answered `Blob` + chunks + `BlobEnd` once the relay
    /// has it whole, or `Missing` when its own session ended without it.
    Get {
        index: u32,
    },
    /// Never sent by a child (the chunk tag of this direction; a relay refuses it).
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    Bye,
    // The relayed shared plan (appended).
    /// The run's plan bytes, if the relay holds them with this BLAKE3: answered `Plan` + chunks
    /// (once the relay has them, within its own bound) or `PlanMissing`.
    GetPlan {
        blake3: Digest,
    },
}

/// Relay → child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromRelay {
    /// The child and its token are expected for this run.
    Ready,
    /// The payload as the relay received it: `len` bytes in chunks, then `BlobEnd`.
    Blob {
        index: u32,
        encoding: Encoding,
        len: u64,
        zstd: bool,
    },
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    BlobEnd,
    /// The relay's own session ended without this payload.
    Missing {
        index: u32,
    },
    /// Still waiting for `Get`'s payload while the relay's own transfer makes progress (so a
    /// child tells a slow upstream from a stalled relay).
    Waiting,
    /// Refused (unexpected child, wrong token, unknown run); the relay closes after it.
    Error {
        reason: String,
    },
    // The relayed shared plan (appended).
    /// The plan's bytes as the relay received them: `len` bytes in chunks.
    Plan {
        len: u64,
    },
    /// The relay has no plan with that digest for this run (its own session ended without one,
    /// or it did not come in time).
    PlanMissing,
}

impl Message for ToRelay {
    const CHUNK_TAG: u8 = 2;
    fn kind(&self) -> &'static str {
        match self {
            ToRelay::Hello { .. } => "Hello",
            ToRelay::Get { .. } => "Get",
            ToRelay::Chunk(_) => "Chunk",
            ToRelay::Bye => "Bye",
            ToRelay::GetPlan { .. } => "GetPlan",
        }
    }
}

impl Message for FromRelay {
    const CHUNK_TAG: u8 = 2;
    fn kind(&self) -> &'static str {
        match self {
            FromRelay::Ready => "Ready",
            FromRelay::Blob { .. } => "Blob",
            FromRelay::Chunk(_) => "Chunk",
            FromRelay::BlobEnd => "BlobEnd",
            FromRelay::Missing { .. } => "Missing",
            FromRelay::Waiting => "Waiting",
            FromRelay::Error { .. } => "Error",
            FromRelay::Plan { .. } => "Plan",
            FromRelay::PlanMissing => "PlanMissing",
        }
    }
}

/// The child's end: sends [`ToRelay`], receives [`FromRelay`].
#[derive(Debug)]
pub enum Child {}
/// The relay's end: sends [`FromRelay`], receives [`ToRelay`].
#[derive(Debug)]
pub enum Parent {}

impl Role for Child {
    type Out = ToRelay;
    type In = FromRelay;
    const NAME: &'static str = "relay child";
}

impl Role for Parent {
    type Out = FromRelay;
    type In = ToRelay;
    const NAME: &'static str = "relay";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_tags_are_the_chunk_variants_index() {
        // postcard writes the variant index as the first byte: the tag must be it.
        let f = crate::encode(&ToRelay::Chunk(vec![1, 2])).unwrap();
        assert_eq!(f[crate::HEADER], ToRelay::CHUNK_TAG);
        let f = crate::encode(&FromRelay::Chunk(vec![1, 2])).unwrap();
        assert_eq!(f[crate::HEADER], FromRelay::CHUNK_TAG);
        let mut pre = crate::chunk_prefix::<FromRelay>(2).unwrap();
        pre.extend_from_slice(&[1, 2]);
        assert_eq!(pre, f);
    }

    #[test]
    fn a_hostile_name_in_hello_is_refused_while_decoding() {
        let m = ToRelay::Hello { token: [7; 32], image: Name::parse("img").unwrap(), generation: 3 };
        let f = crate::encode(&m).unwrap();
        assert_eq!(crate::decode::<ToRelay>(&f[crate::HEADER..]).unwrap(), m);
        let bad = crate::encode(&(0u8, [7u8; 32], "../x", 3u64)).unwrap();
        let e = crate::decode::<ToRelay>(&bad[crate::HEADER..]).unwrap_err();
        assert!(e.to_string().contains("name refused"), "{e}");
    }
}
