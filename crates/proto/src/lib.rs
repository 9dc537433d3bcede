//! The hanfs wire protocol between the controller (MN) and an agent (SN). Pure: message types, frame
//! encoding and validation, no I/O, so both ends and the hostile-input tests share one definition.
//!
//! A frame is a big-endian `u32` payload length followed by one postcard-encoded message. Payloads over
//! [`MAX_FRAME`] are refused before anything is allocated, so a peer cannot make the other end buffer
//! more than that. Bulk data (manifests, file contents, deltas) travels as a sequence of chunks of at
//! most [`CHUNK`] bytes; the receiver writes each chunk out before reading the next frame, so TCP flow
//! control is the backpressure and memory stays bounded on both ends whatever the image size. A bulk
//! transfer's announced length is checked against a cap the receiver gives before any chunk is read.
//!
//! Direction is a type: [`Controller`] sends [`ToAgent`] and receives [`FromAgent`], [`Agent`] the
//! opposite ([`Role`]), so each end writes its own chunk tag. Each request type names its reply
//! ([`Request::Reply`]); a reply of another kind is [`Error::Unexpected`], an `Error`/`NoSpace` reply is
//! [`Error::Remote`]/[`Error::NoSpace`], decided once in [`Reply::from_msg`].
//!
//! Session: the controller sends [`req::Hello`], the agent answers [`reply::Hello`] with the
//! protocol version and its identity. A version mismatch ends the session. Then requests and replies
//! alternate; an update of one image is `Open` → `Opened` (where the replica stands) → [`GetManifest` when
//! it is not at the shared base] → `Plan` + chunks → `Need` (what the agent lacks, minus what it kept
//! from an interrupted transfer: the resume) → blobs, pipelined → `Commit` → `Committed`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod digest;
pub mod relay;
mod wire;

pub use digest::Digest;
pub use model::{AbsPath, Name, RelPath};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Protocol version; both ends must speak the same one.
pub const VERSION: u16 = 1;
/// Largest frame payload either end accepts.
pub const MAX_FRAME: usize = 4 << 20;
/// Largest bulk chunk inside a frame (leaves room for the envelope below [`MAX_FRAME`]).
pub const CHUNK: usize = 1 << 20;
/// Length of the frame header.
pub const HEADER: usize = 4;
/// Largest manifest or change plan either end receives (a plan carries the whole manifest of the
/// new generation, ~100 bytes per entry: several million entries).
pub const MAX_MANIFEST: u64 = 512 << 20;

/// Where one image stands on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageState {
    pub name: Name,
    pub generation: u64,
    /// Contract digest (BLAKE3 Merkle, hex on the wire) of the replica's manifest.
    pub digest: Digest,
}

/// How a blob's bytes become the content of one file of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The bytes are the content.
    Literal,
    /// The bytes are a librsync delta against the plan's base for that file, which the agent holds.
    Delta,
}

/// Requests (controller → agent) that carry fields; each names its reply.
pub mod req {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Hello {
        pub version: u16,
        pub controller: String,
    }

    /// Liveness.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Ping;

    /// Every image the agent holds.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Status;

    /// The replication of every read-write statelite area the agent serves (appended; an agent
    /// older than it ends the session at this request, which the controller reports as not
    /// known).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct StateliteRwStatus;

    /// The copy state of every kernel-nfsd statelite area of the agent (appended, like
    /// `StateliteRwStatus`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct StateliteKernelStatus;

    /// Open (recover, or adopt at generation 0 if new) the replica of `image` at `path` under the
    /// agent's root.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Open {
        #[serde(deserialize_with = "crate::wire::name")]
        pub image: Name,
        #[serde(deserialize_with = "crate::wire::rel_path")]
        pub path: RelPath,
    }

    /// Send the replica's recorded manifest (for a replica that is not at the shared base).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GetManifest;

    /// A change plan (tree engine, postcard) of `len` bytes follows in chunks, one zstd frame when
    /// `zstd` (a manifest compresses several times over).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Plan {
        pub len: u64,
        pub zstd: bool,
    }

    /// Apply the staged plan atomically.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Commit;

    /// Rescan the replica of the open image and report its digest.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Verify;

    /// Write the exports (Linux: whole file; AIX: the managed block) and run the reload command.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Exports {
        pub text: String,
    }

    /// Open the backup copy of one node's statelite data at `<root>/<node>` (`root` within the
    /// agent's `statelite_roots`); then `GetManifest`/`Plan`/blobs/`Commit` as for an image.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StateliteOpen {
        #[serde(deserialize_with = "crate::wire::abs_path")]
        pub root: AbsPath,
        #[serde(deserialize_with = "crate::wire::name")]
        pub node: Name,
    }

    /// Scan the live statelite data at `<root>/<node>` (the serving side); then `StateliteRead`s
    /// of that scan's files.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StateliteScan {
        #[serde(deserialize_with = "crate::wire::abs_path")]
        pub root: AbsPath,
        #[serde(deserialize_with = "crate::wire::name")]
        pub node: Name,
    }

    /// The content of one regular file of the last `StateliteScan`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StateliteRead {
        #[serde(with = "serde_bytes")]
        pub path: Vec<u8>,
    }

    /// Put the floating service address `address` (`10.0.1.101/24`, `fd00::65/64`: an address with
    /// its prefix length, checked while decoding) on the agent's `takeover_interface` and announce
    /// it (gratuitous ARP / unsolicited NA). Idempotent.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Claim {
        #[serde(deserialize_with = "crate::wire::address")]
        pub address: String,
    }

    /// Take the floating service address `address` off the agent's `takeover_interface`.
    /// Idempotent.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Release {
        #[serde(deserialize_with = "crate::wire::address")]
        pub address: String,
    }

    /// Relay fan-out: this agent will be asked by SN `child` (its certificate must name it) for
    /// the payloads of `image` at `generation` (the shared plan of this run) it receives; `token`
    /// authorises that child for this run only. Sent before the image's `Open` or inside its
    /// session before the `Plan`. Answered with the relay port, or an error ("not a relay").
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ExpectRelay {
        pub token: [u8; 32],
        #[serde(deserialize_with = "crate::wire::name")]
        pub child: Name,
        #[serde(deserialize_with = "crate::wire::name")]
        pub image: Name,
        pub generation: u64,
    }

    /// Inside an update, after `Need`: fetch the payloads `indexes` of the plan from the relay of
    /// SN `parent` at `addr:port` (its server certificate must name `parent`), each staged exactly
    /// as if the controller had sent it; one that cannot be had (parent gone, `stall_ms` without a
    /// byte, missing there) is listed in the reply for the controller to send.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Fetch {
        #[serde(deserialize_with = "crate::wire::name")]
        pub parent: Name,
        pub addr: String,
        pub port: u16,
        pub token: [u8; 32],
        pub indexes: Vec<u32>,
        pub stall_ms: u64,
    }
    /// Relay fan-out, instead of `Plan` for an SN on the shared plan: fetch the plan's bytes
    /// (`len` bytes, one zstd frame when `zstd`, BLAKE3 `blake3` over them) from the relay of SN
    /// `parent` at `addr:port` (as for `Fetch`) for the run of `generation`, check length and
    /// digest, and only then decode it. Answered as `Plan` is (`Need`, and the update goes on), or
    /// `PlanMissing` when the parent could not give it (dead, refusing, `stall_ms` without a
    /// frame, another digest, or not begun within `wait_ms` while the parent said `Waiting`):
    /// the session is where it was, and the controller sends `Plan`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RelayedPlan {
        pub len: u64,
        pub blake3: Digest,
        pub zstd: bool,
        pub generation: u64,
        #[serde(deserialize_with = "crate::wire::name")]
        pub parent: Name,
        pub addr: String,
        pub port: u16,
        pub token: [u8; 32],
        pub stall_ms: u64,
        pub wait_ms: u64,
    }

    /// As `Fetch`, for every payload the update still needs (the `Need` list the agent sent,
    /// minus what arrived since): the controller does not send the list back.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct FetchPending {
        #[serde(deserialize_with = "crate::wire::name")]
        pub parent: Name,
        pub addr: String,
        pub port: u16,
        pub token: [u8; 32],
        pub stall_ms: u64,
    }
}

/// Replies (agent → controller).
pub mod reply {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Hello {
        pub version: u16,
        pub agent: String,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Pong;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Status {
        pub images: Vec<ImageState>,
    }

    /// One read-write statelite area's replication (issue 13), as the agent sees it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RwArea {
        pub area: AbsPath,
        /// `primary` or `backup`.
        pub role: String,
        /// Primary: every change is on the backup before the client's reply. Backup: the
        /// primary's stream is connected and its last pass applied.
        pub protected: bool,
        /// Why not.
        pub reason: Option<String>,
        /// Age of the oldest change not on the backup, milliseconds (0: in sync).
        pub lag_ms: u64,
        /// Bytes of file data not on the backup.
        pub lag_bytes: u64,
        /// When the last reconciliation ended (Unix seconds), whether it succeeded, and its
        /// summary or error.
        pub last_reconcile: Option<i64>,
        pub last_reconcile_ok: Option<bool>,
        pub last_reconcile_result: Option<String>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StateliteRw {
        pub areas: Vec<RwArea>,
    }

    /// One statelite area kernel nfsd serves, copied continuously to its backup (issue 13
    /// point 4), as the agent sees it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KernelArea {
        pub area: AbsPath,
        /// `primary` (this agent copies the area) or `backup` (it holds the copy).
        pub role: String,
        /// Primary: the stream to the backup is up. Backup: an in-sync mark was applied.
        pub connected: bool,
        /// Primary: age of the oldest change the backup has not acknowledged, milliseconds.
        pub lag_ms: u64,
        /// Primary: bytes of the files waiting to be sent.
        pub lag_bytes: u64,
        /// Unix milliseconds of the last in-sync mark: acknowledged by the backup (primary) or
        /// applied here (backup). The copy held everything the primary had seen then.
        pub in_sync_at_ms: Option<i64>,
        /// The node directories in the area (the nodes this lag is for).
        pub nodes: Vec<String>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StateliteKernel {
        pub areas: Vec<KernelArea>,
    }

    /// `state` is where the replica stands now: on every `Open` the agent rescans it, and when the
    /// tree on disk no longer has the recorded digest it takes the tree as it is as its base
    /// (`drifted` then holds the digest it had recorded), so the next plan, made from the agent's
    /// own manifest, repairs it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Opened {
        pub state: ImageState,
        pub drifted: Option<Digest>,
    }

    /// A manifest of `len` bytes follows in chunks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Manifest {
        pub len: u64,
    }

    /// After a plan: indexes into `plan.contents` still to be sent. Content the agent kept from an
    /// interrupted transfer (its spool, by content hash) is left out: that is the resume.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Need {
        pub indexes: Vec<u32>,
        pub resumed: u32,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Committed {
        pub state: ImageState,
    }

    /// `recorded`: what the agent last committed; `actual`: the digest of a fresh scan.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Verified {
        pub recorded: ImageState,
        pub actual: Digest,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ExportsDone {
        pub reloaded: bool,
        pub output: String,
    }

    /// `len` bytes of a file's content follow in chunks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Content {
        pub len: u64,
    }

    /// The address is on the interface. `change`: `added` or `already present`; `announced`:
    /// the first gratuitous ARP / NA went out (false when the link cannot carry them: `detail`
    /// says why, and also what else the controller should know, e.g. an `nfs3` bound elsewhere).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Claimed {
        pub change: String,
        pub announced: bool,
        pub detail: String,
    }

    /// The address is off the interface. `change`: `removed` or `absent`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Released {
        pub change: String,
    }

    /// The relay listens on `port` (on the agent's own address) for the expected child.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RelayReady {
        pub port: u16,
    }

    /// What a `Fetch` could not get (the controller sends those itself) and the payload bytes it
    /// received from the parent.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Fetched {
        pub missing: Vec<u32>,
        pub bytes: u64,
    }
    /// `RelayedPlan` could not be had from the parent (`reason`); nothing changed on the agent.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PlanMissing {
        pub reason: String,
    }

    /// The answer to `RelayedPlan`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum PlanRelayed {
        /// The plan was had and checked: what `Plan` would have answered.
        Need(Need),
        /// Not had: send `Plan`.
        Missing(PlanMissing),
    }
}

/// Controller → agent. Variant order is the wire format (postcard writes the index): append only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToAgent {
    Hello(req::Hello),
    Ping,
    Status,
    Open(req::Open),
    GetManifest,
    Plan(req::Plan),
    /// One piece of bulk data (plan or blob).
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Start of the content of `plan.contents[index]`, `len` bytes in chunks, closed by `BlobEnd`.
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
    Commit,
    Verify,
    Exports(req::Exports),
    Bye,
    // Statelite replication (appended).
    StateliteOpen(req::StateliteOpen),
    StateliteScan(req::StateliteScan),
    StateliteRead(req::StateliteRead),
    // Service-address takeover (appended).
    Claim(req::Claim),
    Release(req::Release),
    // Read-write statelite replication status (appended).
    StateliteRwStatus,
    // Kernel-nfsd statelite copy status (appended).
    StateliteKernelStatus,
    // Relay fan-out (appended).
    ExpectRelay(req::ExpectRelay),
    Fetch(req::Fetch),
    // Relayed shared plan (appended).
    RelayedPlan(req::RelayedPlan),
    FetchPending(req::FetchPending),
}

/// Agent → controller. Variant order is the wire format: append only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromAgent {
    Hello(reply::Hello),
    Pong,
    Status(reply::Status),
    Opened(reply::Opened),
    Manifest(reply::Manifest),
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    Need(reply::Need),
    Committed(reply::Committed),
    Verified(reply::Verified),
    ExportsDone(reply::ExportsDone),
    /// The request failed; the agent may close the session after sending it.
    Error {
        reason: String,
    },
    Content(reply::Content),
    // Appended.
    /// The request failed because a filesystem of the agent is full (ENOSPC) while writing `path`;
    /// what was partly written there has been removed. The agent closes the session after it.
    NoSpace {
        path: String,
        reason: String,
    },
    // Service-address takeover (appended).
    Claimed(reply::Claimed),
    Released(reply::Released),
    // Read-write statelite replication status (appended).
    StateliteRw(reply::StateliteRw),
    // Kernel-nfsd statelite copy status (appended).
    StateliteKernel(reply::StateliteKernel),
    // Relay fan-out (appended).
    RelayReady(reply::RelayReady),
    Fetched(reply::Fetched),
    // Relayed shared plan (appended).
    PlanMissing(reply::PlanMissing),
}

/// One direction's message type.
pub trait Message: Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static {
    /// The variant index of this direction's `Chunk` (postcard writes it as one byte).
    const CHUNK_TAG: u8;
    /// The variant's name, for errors (never the payload: a chunk may be a megabyte).
    fn kind(&self) -> &'static str;
}

impl Message for ToAgent {
    const CHUNK_TAG: u8 = 6;
    fn kind(&self) -> &'static str {
        match self {
            ToAgent::Hello(_) => "Hello",
            ToAgent::Ping => "Ping",
            ToAgent::Status => "Status",
            ToAgent::Open(_) => "Open",
            ToAgent::GetManifest => "GetManifest",
            ToAgent::Plan(_) => "Plan",
            ToAgent::Chunk(_) => "Chunk",
            ToAgent::Blob { .. } => "Blob",
            ToAgent::BlobEnd => "BlobEnd",
            ToAgent::Commit => "Commit",
            ToAgent::Verify => "Verify",
            ToAgent::Exports(_) => "Exports",
            ToAgent::Bye => "Bye",
            ToAgent::StateliteOpen(_) => "StateliteOpen",
            ToAgent::StateliteScan(_) => "StateliteScan",
            ToAgent::StateliteRead(_) => "StateliteRead",
            ToAgent::Claim(_) => "Claim",
            ToAgent::Release(_) => "Release",
            ToAgent::StateliteRwStatus => "StateliteRwStatus",
            ToAgent::StateliteKernelStatus => "StateliteKernelStatus",
            ToAgent::ExpectRelay(_) => "ExpectRelay",
            ToAgent::Fetch(_) => "Fetch",
            ToAgent::RelayedPlan(_) => "RelayedPlan",
            ToAgent::FetchPending(_) => "FetchPending",
        }
    }
}

impl Message for FromAgent {
    const CHUNK_TAG: u8 = 5;
    fn kind(&self) -> &'static str {
        match self {
            FromAgent::Hello(_) => "Hello",
            FromAgent::Pong => "Pong",
            FromAgent::Status(_) => "Status",
            FromAgent::Opened(_) => "Opened",
            FromAgent::Manifest(_) => "Manifest",
            FromAgent::Chunk(_) => "Chunk",
            FromAgent::Need(_) => "Need",
            FromAgent::Committed(_) => "Committed",
            FromAgent::Verified(_) => "Verified",
            FromAgent::ExportsDone(_) => "ExportsDone",
            FromAgent::Error { .. } => "Error",
            FromAgent::Content(_) => "Content",
            FromAgent::NoSpace { .. } => "NoSpace",
            FromAgent::Claimed(_) => "Claimed",
            FromAgent::Released(_) => "Released",
            FromAgent::StateliteRw(_) => "StateliteRw",
            FromAgent::StateliteKernel(_) => "StateliteKernel",
            FromAgent::RelayReady(_) => "RelayReady",
            FromAgent::Fetched(_) => "Fetched",
            FromAgent::PlanMissing(_) => "PlanMissing",
        }
    }
}

/// Which end of a session this is: what it sends and what it receives.
pub trait Role: Send + Sync + 'static {
    type Out: Message;
    type In: Message;
    const NAME: &'static str;
}

/// The MN end: sends [`ToAgent`], receives [`FromAgent`].
#[derive(Debug)]
pub enum Controller {}
/// The SN end: sends [`FromAgent`], receives [`ToAgent`].
#[derive(Debug)]
pub enum Agent {}

impl Role for Controller {
    type Out = ToAgent;
    type In = FromAgent;
    const NAME: &'static str = "controller";
}

impl Role for Agent {
    type Out = FromAgent;
    type In = ToAgent;
    const NAME: &'static str = "agent";
}

/// A reply: taken out of a [`FromAgent`], which must be of its kind or a remote error.
pub trait Reply: Sized {
    const NAME: &'static str;
    /// The reply's kind, or `Remote`/`NoSpace` for the agent's error replies, or `Unexpected`.
    fn from_msg(m: FromAgent) -> Result<Self, Error>;
}

/// A request and the one reply kind it is answered with.
pub trait Request: Into<ToAgent> {
    type Reply: Reply;
}

/// The agent's refusals, the same for every reply kind.
fn remote(m: FromAgent, expected: &'static str) -> Error {
    match m {
        FromAgent::Error { reason } => Error::Remote(reason),
        FromAgent::NoSpace { path, reason } => Error::NoSpace { path, reason },
        other => Error::Unexpected { expected, got: other.kind() },
    }
}

macro_rules! reply {
    ($t:ty, $name:literal, $pat:pat => $v:expr) => {
        impl Reply for $t {
            const NAME: &'static str = $name;
            fn from_msg(m: FromAgent) -> Result<Self, Error> {
                match m {
                    $pat => Ok($v),
                    other => Err(remote(other, $name)),
                }
            }
        }
    };
}

reply!(reply::Hello, "Hello", FromAgent::Hello(r) => r);
reply!(reply::Pong, "Pong", FromAgent::Pong => reply::Pong);
reply!(reply::Status, "Status", FromAgent::Status(r) => r);
reply!(reply::Opened, "Opened", FromAgent::Opened(r) => r);
reply!(reply::Manifest, "Manifest", FromAgent::Manifest(r) => r);
reply!(reply::Need, "Need", FromAgent::Need(r) => r);
reply!(reply::Committed, "Committed", FromAgent::Committed(r) => r);
reply!(reply::Verified, "Verified", FromAgent::Verified(r) => r);
reply!(reply::ExportsDone, "ExportsDone", FromAgent::ExportsDone(r) => r);
reply!(reply::Content, "Content", FromAgent::Content(r) => r);
reply!(reply::Claimed, "Claimed", FromAgent::Claimed(r) => r);
reply!(reply::Released, "Released", FromAgent::Released(r) => r);
reply!(reply::StateliteRw, "StateliteRw", FromAgent::StateliteRw(r) => r);
reply!(reply::StateliteKernel, "StateliteKernel", FromAgent::StateliteKernel(r) => r);
reply!(reply::RelayReady, "RelayReady", FromAgent::RelayReady(r) => r);
reply!(reply::Fetched, "Fetched", FromAgent::Fetched(r) => r);

impl Reply for reply::PlanRelayed {
    const NAME: &'static str = "Need or PlanMissing";
    fn from_msg(m: FromAgent) -> Result<Self, Error> {
        match m {
            FromAgent::Need(r) => Ok(reply::PlanRelayed::Need(r)),
            FromAgent::PlanMissing(r) => Ok(reply::PlanRelayed::Missing(r)),
            other => Err(remote(other, Self::NAME)),
        }
    }
}

macro_rules! request {
    ($t:ty => $reply:ty, $v:ident) => {
        impl From<$t> for ToAgent {
            fn from(r: $t) -> ToAgent {
                ToAgent::$v(r)
            }
        }
        impl Request for $t {
            type Reply = $reply;
        }
    };
    (unit $t:ty => $reply:ty, $v:ident) => {
        impl From<$t> for ToAgent {
            fn from(_: $t) -> ToAgent {
                ToAgent::$v
            }
        }
        impl Request for $t {
            type Reply = $reply;
        }
    };
}

request!(req::Hello => reply::Hello, Hello);
request!(unit req::Ping => reply::Pong, Ping);
request!(unit req::Status => reply::Status, Status);
request!(req::Open => reply::Opened, Open);
request!(unit req::GetManifest => reply::Manifest, GetManifest);
request!(req::Plan => reply::Need, Plan);
request!(unit req::Commit => reply::Committed, Commit);
request!(unit req::Verify => reply::Verified, Verify);
request!(req::Exports => reply::ExportsDone, Exports);
request!(req::StateliteOpen => reply::Opened, StateliteOpen);
request!(req::StateliteScan => reply::Manifest, StateliteScan);
request!(req::StateliteRead => reply::Content, StateliteRead);
request!(req::Claim => reply::Claimed, Claim);
request!(req::Release => reply::Released, Release);
request!(unit req::StateliteRwStatus => reply::StateliteRw, StateliteRwStatus);
request!(unit req::StateliteKernelStatus => reply::StateliteKernel, StateliteKernelStatus);
request!(req::ExpectRelay => reply::RelayReady, ExpectRelay);
request!(req::Fetch => reply::Fetched, Fetch);
request!(req::RelayedPlan => reply::PlanRelayed, RelayedPlan);
request!(req::FetchPending => reply::Fetched, FetchPending);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("protocol version {theirs} not supported (this end speaks {VERSION})")]
    Version { theirs: u16 },
    #[error("protocol violation: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("protocol violation: {what} of {len} bytes announced, over the limit of {cap}")]
    Oversize { what: &'static str, len: u64, cap: u64 },
    #[error("protocol violation: {what} {why} than announced")]
    BulkLength { what: &'static str, why: &'static str },
    #[error("refused by the peer: {0}")]
    Remote(String),
    #[error("{reason}")]
    NoSpace { path: String, reason: String },
}

impl Error {
    /// The peer broke the protocol (as opposed to refusing a request, or a limit of ours).
    pub fn is_violation(&self) -> bool {
        !matches!(self, Error::Remote(_) | Error::NoSpace { .. })
    }
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

/// The frame bytes that precede `len` bytes of data in an `M::Chunk` frame: header, variant and
/// length. Sending this and then the data from where it lies saves copying every bulk byte into a
/// message first (the frame is byte-identical to `encode(&M::Chunk(data))`).
pub fn chunk_prefix<M: Message>(len: usize) -> Result<Vec<u8>, Error> {
    let mut body = vec![M::CHUNK_TAG];
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

/// The data of an `M::Chunk` payload, borrowed (None for any other message): the receiving end
/// of [`chunk_prefix`].
pub fn chunk_data<M: Message>(payload: &[u8]) -> Option<&[u8]> {
    let rest = payload.strip_prefix(&[M::CHUNK_TAG])?;
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

/// Decodes one payload; trailing bytes make it malformed (a frame carries exactly one message). A
/// name or path refused while decoding is named in the error (postcard keeps no serde message).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    let r = wire::decoding(|| postcard::take_from_bytes(payload));
    let (v, rest) = r.map_err(|(e, why)| Error::Malformed(why.unwrap_or_else(|| e.to_string())))?;
    if !rest.is_empty() {
        return Err(Error::Malformed(format!("{} bytes after the message", rest.len())));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
