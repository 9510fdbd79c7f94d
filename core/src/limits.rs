//! Every bound core enforces, with its unit and the reason for it. Reaching a limit yields an
//! error code or a closed connection, never a crash.

/// Largest request frame accepted, in bytes (Kafka's `socket.request.max.bytes` default).
/// Bigger frames are rejected by the runtime before it allocates.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;

/// Largest record batch accepted, in bytes (Kafka's `message.max.bytes` default).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1_048_588;

/// Requests a connection may have in flight (parsed but not yet answered). At this many the
/// runtime stops reading the connection (`Output::Pause`) until half have been answered: a
/// client that pipelines this deep (acks=0 producers can) is slowed, not cut off.
pub const IN_FLIGHT_REQUESTS_PER_CONN_MAX: usize = 1024;

/// Requests buffered while the node recovers its logs at start-up, over all connections.
pub const REQUESTS_BUFFERED_DURING_RECOVERY_MAX: usize = 10_000;

/// Topics and partitions one node will hold; a CreateTopics past this gets a policy error.
pub const PARTITIONS_PER_NODE_MAX: usize = 100_000;

/// Partitions in one topic.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Longest a fetch may park waiting for data, in milliseconds, whatever the client asks.
pub const FETCH_MAX_WAIT_MS_MAX: u64 = 30_000;

/// Response bytes one Fetch may return, whatever the client asks (fetch.max.bytes default).
pub const FETCH_RESPONSE_BYTES_MAX: usize = 55 * 1024 * 1024;

/// Bytes read from a segment per read during recovery.
pub const RECOVERY_READ_BYTES: usize = 4 * 1024 * 1024;
/// The largest segment summary written or read (`log::summary`): a segment of very small
/// batches whose summary would be larger is scanned at start-up instead.
pub const SEGMENT_SUMMARY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Bytes a metadata log may hold; it is read whole at start-up.
pub const METADATA_LOG_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Members one consumer group may have (`group.max.size`); more get GROUP_MAX_SIZE_REACHED.
pub const GROUP_MEMBERS_MAX: usize = 1_000;

/// Largest message a peer broker may send (an envelope of quorum or replication messages);
/// larger ones are refused and the peer's connection closed. Metadata fetches carry at most
/// `fetch_max_entries` small records, far below it.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The first frame of a peer connection (a node id, a cluster id, a version) is small.
pub const PEER_HELLO_BYTES_MAX: usize = 4096;
