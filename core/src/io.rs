//! The node's inputs and outputs: everything that crosses the sans-IO boundary.

use bytes::Bytes;

use crate::types::{BrokerId, ConnId, FileId, OpId};

/// Something that happened outside core.
#[derive(Debug)]
pub enum Input {
    /// One request frame from a client, without its 4-byte length prefix. A runtime never
    /// reuses a `ConnId`: after `ConnClosed` (or `Output::Close`) the id is dead.
    Request { conn: ConnId, frame: Bytes },
    /// The client connection is gone; forget its pending requests.
    ConnClosed { conn: ConnId },
    /// A disk operation core asked for has finished.
    DiskDone { op: OpId, result: Result<DiskReply, DiskError> },
    /// A message from another broker (replication and the metadata quorum; unused while a
    /// cluster has one node).
    Peer { from: BrokerId, bytes: Bytes },
    /// `poll_timeout` said to wake up now. Spurious timeouts are harmless.
    Timeout,
    /// The process is asked to stop (SIGTERM): a broker of a cluster hands its partitions'
    /// leadership over first (controlled shutdown); the runtime stops once `ready_to_stop`
    /// says so, or after a bound of its own.
    ShutdownRequested,
}

/// Something core wants the runtime to do.
#[derive(Debug)]
pub enum Output {
    /// Send these parts, in order, as one length-prefixed response frame. The parts already
    /// include the 4-byte size prefix.
    Response { conn: ConnId, parts: Vec<Part> },
    /// Close this connection (after any responses already emitted for it are sent).
    Close { conn: ConnId },
    /// Perform a disk operation and report back with `Input::DiskDone` carrying `op`.
    Disk { op: OpId, action: DiskOp },
    /// Send one message to another broker: these parts, in order (without a size prefix; the
    /// runtime frames the message). A follower's fetch answer carries its record batches as
    /// file ranges, sent without copying them through user space, like a client's fetch.
    Peer { to: BrokerId, parts: Vec<Part> },
    /// Stop reading requests from this connection until `Resume`: it has
    /// [`crate::limits::IN_FLIGHT_REQUESTS_PER_CONN_MAX`] requests unanswered (Kafka mutes a
    /// channel the same way). Frames already read may still come; they are served.
    Pause { conn: ConnId },
    /// Read requests from this connection again.
    Resume { conn: ConnId },
}

/// A piece of a response or a peer message: bytes in memory, or a byte range of a file the
/// runtime sends without copying it through user space (`sendfile`). A range holds only
/// completed writes when it is emitted; should the file no longer hold it when the runtime
/// sends it (cut meanwhile), the runtime closes the connection rather than send a short
/// frame.
#[derive(Debug, Clone)]
pub enum Part {
    Bytes(Bytes),
    File { file: FileId, position: u64, len: u32 },
}

impl Part {
    pub fn len(&self) -> usize {
        match self {
            Part::Bytes(b) => b.len(),
            Part::File { len, .. } => *len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A disk operation. Paths are relative to the node's data directory and use `/`.
/// Operations on one file complete in the order they were issued. A write is durable only
/// once a later `Sync` of the same file has completed successfully.
#[derive(Debug, Clone)]
pub enum DiskOp {
    /// Create a directory (and its parents); durable when done.
    CreateDir { path: String },
    /// List a directory's entries (files and directories), sorted by name.
    ListDir { path: String },
    /// Open a file for reading and writing, creating it if `create`; a created file's
    /// directory entry is durable when done. Replies `Opened` with the file's length.
    Open { file: FileId, path: String, create: bool },
    /// Write these bytes, back to back, at `position`.
    Write { file: FileId, position: u64, data: Vec<Bytes> },
    /// Make every completed write to the file durable (fdatasync).
    Sync { file: FileId },
    /// Cut the file to `len` bytes (durable after a later Sync).
    Truncate { file: FileId, len: u64 },
    /// Read up to `len` bytes at `position`; fewer at the end of the file.
    Read { file: FileId, position: u64, len: usize },
    /// Forget the handle. Responses already emitted that name the file stay valid.
    Close { file: FileId },
    /// Remove a directory and everything in it; durable when done.
    RemoveDirAll { path: String },
    /// Remove one file (closing any handle core holds to it first is core's job); durable
    /// when done.
    DeleteFile { path: String },
    /// Rename a file, atomically replacing any file at `to`; durable when done. Handles open
    /// on either file keep naming the file they named.
    Rename { from: String, to: String },
    /// How large the file system holding the data directory is, and how much of it this
    /// process may still use (statvfs). Replies `Space`.
    Space,
}

/// What a finished disk operation returns.
#[derive(Debug, Clone)]
pub enum DiskReply {
    Done,
    Opened {
        len: u64,
    },
    Data(Bytes),
    Listing(Vec<DirEntry>),
    /// The data directory's file system: its size and the bytes free to use, in bytes.
    Space {
        total: u64,
        usable: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
}

/// Why a disk operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskError {
    NotFound,
    NoSpace,
    Io(String),
}

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskError::NotFound => write!(f, "not found"),
            DiskError::NoSpace => write!(f, "no space left on device"),
            DiskError::Io(s) => write!(f, "{s}"),
        }
    }
}
