//! sluice-core: the sans-IO Kafka broker.
//!
//! Contract: no async, no I/O, no clock, no OS randomness. A [`Node`] is driven by a runtime
//! through three calls: [`Node::handle`] with an [`Input`] (a request frame, a closed
//! connection, a finished disk operation, a timeout), [`Node::poll_output`] until it returns
//! `None` (responses, disk operations, peer messages), and [`Node::poll_timeout`] for the next
//! timer. Time and randomness come in from outside (the `Time` passed to `handle`, the seed
//! passed to `Node::new`), so a seeded simulator reproduces a run bit for bit.
//!
//! Durability is an input: nothing that depends on a write (a produce acknowledgement, a high
//! watermark advance, a metadata change) leaves core before the `Sync` that covers the write
//! has been reported complete.

pub mod config;
pub mod group;
pub mod io;
pub mod limits;
pub mod log;
pub mod metadata;
pub mod metrics;
pub mod mutants;
pub mod node;
pub mod peer;
pub mod properties;
pub mod protocol;
pub mod quorum;
pub mod replica;
pub mod txn;
pub mod types;

pub use config::NodeConfig;
pub use io::{DirEntry, DiskError, DiskOp, DiskReply, Input, Output, Part};
pub use node::Node;
pub use types::{BrokerId, ConnId, FileId, Instant, Offset, OpId, Time};
