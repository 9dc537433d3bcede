//! The hanfs wire protocol between the controller (MN) and an agent (SN). Pure: message types, frame
//! encoding and validation, no I/O, so both ends and the hostile-input tests share one definition.
//!
//! A frame is a big-endian `u32` payload length followed by one postcard-encoded message. Payloads over
//! [`MAX_FRAME`] are refused before anything is allocated, so a peer cannot make the other end buffer
//! more than that. Bulk data (manifests, file contents, deltas) travels as a sequence of chunks of at
//! most [`CHUNK`] bytes; the receiver writes each chunk out before reading the next frame, so TCP flow
//! control is the backpressure and memory stays bounded on both ends whatever the image size.
//!
//! Session: the controller sends [`ToAgent::Hello`], the agent answers [`FromAgent::Hello`] with the
//! protocol version and its identity. A version mismatch ends the session. Then requests and replies
//! alternate; an update of one image is `Open` → `Opened` (where the replica stands) → [`GetManifest` when
//! it is not at the shared base] → `Plan` + chunks → `Need` (what the agent lacks, minus what it kept
//! from an interrupted transfer: the resume) → blobs, pipelined → `Commit` → `Committed`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Protocol version; both ends must speak the same one.
pub const VERSION: u16 = 1;
/// Largest frame payload either end accepts.
pub const MAX_FRAME: usize = 4 << 20;
/// Largest bulk chunk inside a frame (leaves room for the envelope below [`MAX_FRAME`]).
pub const CHUNK: usize = 1 << 20;
/// Length of the frame header.
pub const HEADER: usize = 4;

/// Where one image stands on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageState {
    pub name: String,
    pub generation: u64,
    /// Contract digest (hex BLAKE3 Merkle) of the replica's manifest.
    pub digest: String,
}

/// How a blob's bytes become the content of one file of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The bytes are the content.
    Literal,
    /// The bytes are a librsync delta against the plan's base for that file, which the agent holds.
    Delta,
}

/// Controller → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToAgent {
    Hello {
        version: u16,
        controller: String,
    },
    Ping,
    Status,
    /// Open (recover, or adopt at generation 0 if new) the replica of `image` at `path` under the
    /// agent's root; answered by `Opened`.
    Open {
        image: String,
        path: String,
    },
    /// Send the replica's recorded manifest (for a replica that is not at the shared base).
    GetManifest,
    /// A change plan (tree engine, postcard) of `len` bytes follows in `Chunk`s, one zstd frame when
    /// `zstd` (a manifest compresses several times over); answered by `Need`.
    Plan {
        len: u64,
        zstd: bool,
    },
    /// One piece of bulk data (plan or blob).
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Start of the content of `plan.contents[index]`, `len` bytes in `Chunk`s, closed by `BlobEnd`.
    /// Blobs are pipelined without replies; a failure is reported at `Commit`.
    /// `zstd`: the bytes are one zstd frame of the content or of the delta, compressed once on
    /// the MN for every SN.
    Blob {
        index: u32,
        encoding: Encoding,
        len: u64,
        zstd: bool,
    },
    BlobEnd,
    /// Apply the staged plan atomically; answered by `Committed` or `Error`.
    Commit,
    /// Rescan the replica of the open image and report its digest.
    Verify,
    /// Write the exports (Linux: whole file; AIX: the managed block) and run the reload command.
    Exports {
        text: String,
    },
    Bye,
    // Statelite replication (appended: postcard indexes variants by position).
    /// Open the backup copy of one node's statelite data at `<root>/<node>` (`root` absolute and
    /// within the agent's `statelite_roots`): answered by `Opened`, then `GetManifest`/`Plan`/blobs/
    /// `Commit` as for an image.
    StateliteOpen {
        root: String,
        node: String,
    },
    /// Scan the live statelite data at `<root>/<node>` (the serving side): answered by `Manifest` +
    /// chunks; then `StateliteRead`s of that scan's files.
    StateliteScan {
        root: String,
        node: String,
    },
    /// The content of one regular file of the last `StateliteScan`: answered by `Content` + chunks.
    StateliteRead {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
}

/// Agent → controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromAgent {
    Hello {
        version: u16,
        agent: String,
    },
    Pong,
    Status {
        images: Vec<ImageState>,
    },
    /// `state` is where the replica stands now: on every `Open` the agent rescans it, and when the
    /// tree on disk no longer has the recorded digest it takes the tree as it is as its base
    /// (`drifted` then holds the digest it had recorded), so the next plan, made from the agent's
    /// own manifest, repairs it.
    Opened {
        state: ImageState,
        drifted: Option<String>,
    },
    /// The recorded manifest follows in `Chunk`s (`len` bytes).
    Manifest {
        len: u64,
    },
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// After a plan: indexes into `plan.contents` still to be sent. Content the agent kept from an
    /// interrupted transfer (its spool, by content hash) is left out: that is the resume.
    Need {
        indexes: Vec<u32>,
        resumed: u32,
    },
    Committed {
        state: ImageState,
    },
    /// `recorded`: what the agent last committed; `actual`: the digest of a fresh scan.
    Verified {
        recorded: ImageState,
        actual: String,
    },
    ExportsDone {
        reloaded: bool,
        output: String,
    },
    /// The request failed; the agent may close the session after sending it.
    Error {
        reason: String,
    },
    /// Reply to `StateliteRead`: `len` bytes of content follow in `Chunk`s.
    Content {
        len: u64,
    },
    // Appended: postcard indexes variants by position.
    /// The request failed because a filesystem of the agent is full (ENOSPC) while writing `path`;
    /// what was partly written there has been removed. The agent closes the session after it.
    NoSpace {
        path: String,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("protocol version {theirs} not supported (this end speaks {VERSION})")]
    Version { theirs: u16 },
    #[error("path `{path}` refused: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("name `{0}` refused: names are 1-128 characters of [A-Za-z0-9._-], not starting with `.`")]
    BadName(String),
}

/// Encodes one message as a whole frame (header + payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; HEADER];
    let mut out = postcard::to_extend(msg, std::mem::take(&mut out)).map_err(|e| Error::Malformed(e.to_string()))?;
    let n = out.len() - HEADER;
    if n > MAX_FRAME {
        return Err(Error::TooLarge(n));
    }
    out[..HEADER].copy_from_slice(&(n as u32).to_be_bytes());
    Ok(out)
}

/// The frame bytes that precede `len` bytes of data in a `ToAgent::Chunk` frame: header, variant
/// and length. Sending this and then the data from where it lies saves copying every bulk byte
/// into a message first (the frame is byte-identical to `encode(&ToAgent::Chunk(data))`).
pub fn chunk_prefix(len: usize) -> Result<Vec<u8>, Error> {
    let empty = postcard::to_stdvec(&ToAgent::Chunk(Vec::new())).map_err(|e| Error::Malformed(e.to_string()))?;
    // The empty chunk ends with its length, a one-byte varint 0.
    let mut body = empty[..empty.len() - 1].to_vec();
    let mut n = len;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            body.push(b);
            break;
        }
        body.push(b | 0x80);
    }
    let total = body.len() + len;
    if total > MAX_FRAME {
        return Err(Error::TooLarge(total));
    }
    let mut out = (total as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// The data of a `ToAgent::Chunk` payload, borrowed (None for any other message): the receiving end
/// of [`chunk_prefix`].
pub fn chunk_data(payload: &[u8]) -> Option<&[u8]> {
    // Variant index of `Chunk` as postcard writes it (one byte: fewer than 128 variants).
    let tag = *chunk_prefix(0).ok()?.get(HEADER)?;
    let rest = payload.strip_prefix(&[tag])?;
    let (mut n, mut shift, mut i) = (0usize, 0u32, 0usize);
    loop {
        let b = *rest.get(i)?;
        n |= usize::from(b & 0x7f).checked_shl(shift)?;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    let data = &rest[i..];
    (data.len() == n).then_some(data)
}

/// Reads the payload length from a header, refusing oversized frames before any allocation.
pub fn frame_len(header: [u8; HEADER]) -> Result<usize, Error> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(Error::TooLarge(n));
    }
    Ok(n)
}

/// Decodes one payload; trailing bytes make it malformed (a frame carries exactly one message).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    let (v, rest) = postcard::take_from_bytes(payload).map_err(|e| Error::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::Malformed(format!("{} bytes after the message", rest.len())));
    }
    Ok(v)
}

/// A path relative to a root that cannot leave it: no empty string, no leading `/`, no `.`/`..`/empty
/// component, no NUL, under 4096 bytes.
pub fn check_rel_path(p: &str) -> Result<(), Error> {
    let bad = |why| Err(Error::BadPath { path: p.chars().take(200).collect(), why });
    if p.is_empty() {
        return bad("empty");
    }
    if p.len() >= 4096 {
        return bad("too long");
    }
    if p.starts_with('/') {
        return bad("absolute");
    }
    if p.contains('\0') {
        return bad("contains NUL");
    }
    for c in p.split('/') {
        match c {
            "" => return bad("empty component"),
            "." | ".." => return bad("`.` or `..` component"),
            _ => {}
        }
    }
    Ok(())
}

/// Image names become file names in state directories: checked by the one validator of names
/// (`model::check_name`) that the config and the xCAT import use too.
pub fn check_name(n: &str) -> Result<(), Error> {
    model::check_name(n).map_err(|_| Error::BadName(n.chars().take(200).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_limits() {
        let m = ToAgent::Chunk(vec![7; CHUNK]);
        let f = encode(&m).unwrap();
        let n = frame_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, f.len() - 4);
        assert_eq!(decode::<ToAgent>(&f[4..]).unwrap(), m);
        assert!(matches!(encode(&ToAgent::Chunk(vec![0; MAX_FRAME])), Err(Error::TooLarge(_))));
        assert!(matches!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()), Err(Error::TooLarge(_))));
        assert!(matches!(decode::<ToAgent>(&[0xff, 0xff]), Err(Error::Malformed(_))));
        let mut f = encode(&ToAgent::Ping).unwrap();
        f.push(0);
        assert!(matches!(decode::<ToAgent>(&f[4..]), Err(Error::Malformed(_))));
    }

    #[test]
    fn chunk_prefix_matches_encode() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, CHUNK] {
            let data = vec![5u8; n];
            let mut f = chunk_prefix(n).unwrap();
            f.extend_from_slice(&data);
            assert_eq!(f, encode(&ToAgent::Chunk(data)).unwrap(), "{n}");
        }
        assert!(chunk_prefix(MAX_FRAME).is_err());
        for n in [0usize, 1, 200, CHUNK] {
            let f = encode(&ToAgent::Chunk(vec![9u8; n])).unwrap();
            assert_eq!(chunk_data(&f[HEADER..]).map(<[u8]>::len), Some(n));
        }
        assert_eq!(chunk_data(&encode(&ToAgent::BlobEnd).unwrap()[HEADER..]), None);
        let mut f = encode(&ToAgent::Chunk(vec![1, 2, 3])).unwrap();
        f.pop();
        assert_eq!(chunk_data(&f[HEADER..]), None, "a short chunk is not data");
    }

    #[test]
    fn statelite_variants_are_appended() {
        // postcard writes the variant index: older peers' messages must keep their numbers.
        assert_eq!(encode(&ToAgent::Bye).unwrap()[HEADER], 12);
        let m = ToAgent::StateliteOpen { root: "/nodedata".into(), node: "cn001".into() };
        assert_eq!(encode(&m).unwrap()[HEADER], 13);
        assert_eq!(encode(&ToAgent::StateliteRead { path: b"etc/x".to_vec() }).unwrap()[HEADER], 15);
        assert_eq!(encode(&FromAgent::Error { reason: String::new() }).unwrap()[HEADER], 10);
        assert_eq!(encode(&FromAgent::Content { len: 5 }).unwrap()[HEADER], 11);
        let m = FromAgent::NoSpace { path: "/x".into(), reason: "ENOSPC".into() };
        assert_eq!(encode(&m).unwrap()[HEADER], 12);
        let m = FromAgent::Opened {
            state: ImageState { name: "i".into(), generation: 1, digest: "d".into() },
            drifted: None,
        };
        assert_eq!(encode(&m).unwrap()[HEADER], 3);
    }

    #[test]
    fn paths_and_names() {
        for ok in ["a", "netboot/rh8/x86_64/compute/rootimg", "a/..b/c.."] {
            check_rel_path(ok).unwrap();
        }
        for bad in ["", "/etc", "a/../b", "..", "a//b", "a/", "./a", "a\0b"] {
            assert!(check_rel_path(bad).is_err(), "{bad:?}");
        }
        check_name("rh8-compute_1.2").unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
