//! Messages between brokers (DESIGN.md §7): core-defined serde types in a versioned envelope,
//! postcard-encoded. Both runtimes carry the bytes; the simulator encodes and decodes them
//! too, so the wire format is what its runs exercise.
//!
//! Bytes from a peer are untrusted like bytes from a client: an envelope that is too large,
//! of another protocol version or cluster, or that does not decode is an error the caller
//! logs (and a runtime answers by closing that peer's connection), never a panic.

use serde::{Deserialize, Serialize};

use crate::limits;
use crate::quorum;

/// The version of the peer protocol this build speaks. A change to any message type that is
/// not backward compatible bumps it; an envelope of another version is refused.
pub const PROTOCOL_VERSION: u16 = 7;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    /// The cluster the sender belongs to: a node never acts on another cluster's message.
    pub cluster_id: String,
    /// The sender's `node.id`.
    pub from: i32,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// The metadata quorum (Raft).
    Quorum(quorum::Message),
    /// A broker and the active controller: registration, heartbeats, forwarded changes.
    Broker(BrokerMessage),
    /// Partition replication: a follower's fetch and its leader's answer. The record
    /// batches of an answer follow the envelope on the wire, partition after partition.
    Replica(ReplicaMessage),
}

/// A follower's fetch from its leader, and the answer (Kafka's Fetch as replicas use it,
/// with Sluice's durable end: what the follower has synced).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMessage {
    Fetch {
        /// Numbers the fetch: the answer carries it, so a late answer to an earlier fetch is
        /// told apart.
        id: u64,
        /// The follower's broker epoch (its registration's offset).
        broker_epoch: i64,
        /// How long the leader may hold the fetch when it has nothing new.
        max_wait_ms: u32,
        partitions: Vec<FetchPartition>,
    },
    FetchResponse {
        id: u64,
        partitions: Vec<FetchedPartition>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPartition {
    pub topic: [u8; 16],
    pub partition: i32,
    /// The leader epoch the follower follows in: a stale or future one is refused.
    pub leader_epoch: i32,
    /// The follower's log end offset: where to read from.
    pub fetch_offset: i64,
    /// The epoch of the follower's last batch (-1 with none): the leader checks the logs
    /// agree there, and answers where they part ways otherwise.
    pub last_fetched_epoch: i32,
    /// Offsets below it are synced on the follower's disk: only these count towards the
    /// high watermark.
    pub durable_end: i64,
    pub max_bytes: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedPartition {
    pub topic: [u8; 16],
    pub partition: i32,
    pub leader_epoch: i32,
    /// A Kafka error code (0: none).
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// The logs part ways: the follower's last epoch ends here on the leader (epoch, end
    /// offset). No records come with it; the follower truncates, then fetches again.
    pub diverging: Option<(i32, i64)>,
    /// Bytes of record batches that follow the envelope for this partition.
    pub records_len: u32,
}

/// A reading of the active controller's monotonic clock (ns), under the quorum epoch it leads
/// in: a reading of another epoch is another process's, or another node's, clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerClock {
    pub epoch: i32,
    pub at: u64,
}

/// What a broker and the active controller say to each other (KIP-631's broker lifecycle,
/// carried on the peer connection rather than Kafka's RPCs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerMessage {
    /// A broker asks to be registered with its client endpoint. `incarnation` is new at every
    /// start of the process, so the controller tells a restart from a repeat.
    Register { incarnation: u64, host: String, port: i32, rack: Option<String> },
    /// A registered broker is alive. `caught_up` says its metadata has reached the high
    /// watermark the controller last told it, so it may be unfenced. `sent_at` is the
    /// broker's monotonic clock (ns) as it sends it, echoed in the answer.
    Heartbeat { broker_epoch: i64, caught_up: bool, sent_at: u64 },
    /// The controller's answer to a heartbeat: the broker's epoch (its registration's offset),
    /// `None` when the broker is not (or no longer) registered, whether it is fenced, and the
    /// heartbeat's `sent_at`, and the controller's clock as it answers.
    HeartbeatResponse { broker_epoch: Option<i64>, fenced: bool, sent_at: u64, clock: ControllerClock },
    /// A broker asks the controller to create a topic a client asked for by name (automatic
    /// topic creation). Fire and forget: the client learns of it from Metadata.
    CreateTopic { name: String },
    /// A broker has handed out its producer ids and asks for a block.
    AllocateProducerIds,
    /// The controller recorded the block of producer ids below `end` for the broker.
    ProducerIdsGranted { end: i64 },
    /// A partition's leader asks for a new ISR (Kafka's AlterPartition), built on the
    /// registration it knows (leader and partition epochs). Each member comes with the broker
    /// epoch its fetches carried, so a restarted broker's old self is not let in. The
    /// controller answers by committing the change, or not at all.
    AlterPartition { topic: [u8; 16], partition: i32, leader_epoch: i32, partition_epoch: i32, isr: Vec<(i32, i64)> },
    /// A broker is stopping (controlled shutdown): the controller fences it, which moves its
    /// partitions' leadership to other in-sync replicas, and keeps it fenced. Sent with every
    /// heartbeat until the process stops.
    WantShutdown { broker_epoch: i64 },
    /// A transaction coordinator asks a partition's leader to write a transaction's marker
    /// (Kafka's WriteTxnMarkers), answered with `TxnMarkerWritten` once it is durable on the
    /// partition's in-sync replicas, or refused. `coordinator_epoch` is the leader epoch of
    /// the coordinator's `__transaction_state` partition: a partition refuses a marker from
    /// an older coordinator than the last whose marker it took for that producer. `strict`
    /// (transaction version 2): the marker's epoch must be above the producer's there.
    WriteTxnMarker { req: u64, marker: TxnMarker, topic: String, partition: i32 },
    /// The answer to `WriteTxnMarker` `req`: 0 once the marker is durable (or has nothing to
    /// mark: the producer has moved to a newer epoch), TRANSACTION_COORDINATOR_FENCED for an
    /// older coordinator's, else the error
    /// (NOT_LEADER_OR_FOLLOWER and the like: the coordinator asks the leader it knows then).
    TxnMarkerWritten { req: u64, error: i16 },
    /// A partition's leader could not write its log and cut it back to what is synced: it
    /// leads no more in `leader_epoch` and asks for a new one. Followers may hold what it
    /// served them past that point; a new epoch lets them find it by divergence. Sent again
    /// until the registration moves past `leader_epoch`.
    ResignLeadership { topic: [u8; 16], partition: i32, leader_epoch: i32 },
    /// A client's request only the controller can carry out (CreateTopics, AlterConfigs, ...),
    /// passed on by the broker it reached: `frame` is the request as the client sent it, less
    /// its length. `clock` is when the broker sent it, on the controller's clock as the
    /// broker last learnt it (never later than the truth): the controller refuses a forward
    /// that has been on its way too long. Answered with `Forwarded`.
    Forward { id: u64, frame: Vec<u8>, clock: ControllerClock },
    /// The answer to `Forward` `id`: the response frame to relay to the client, or `None`
    /// when the controller could not run the request (the broker handles it itself).
    Forwarded { id: u64, frame: Option<Vec<u8>> },
    /// A partition's leader asks the controller to record that its records below `offset`
    /// are deleted (DeleteRecords; the offset is at most its high watermark).
    DeleteRecords { topic: [u8; 16], partition: i32, offset: i64 },
    /// A partition's leader asks a transaction's coordinator whether the transaction holds
    /// these partitions (topic, partition, producer id, producer epoch) before it takes their
    /// first transactional batch (KIP-890; Kafka's AddPartitionsToTxn v4 with verifyOnly).
    /// With `add` (a transaction-version-2 producer, which never adds partitions itself),
    /// the coordinator adds those it does not hold yet, answering once that is durable.
    /// Answered with `TxnVerified`.
    VerifyTxn { id: u64, transactional_id: String, partitions: Vec<(String, i32, i64, i16)>, add: bool },
    /// The answer to `VerifyTxn` `id`, a code per partition in its order: 0 when the
    /// transaction holds it, else the error the partition's produce gets.
    TxnVerified { id: u64, codes: Vec<i16> },
}

/// A transaction marker a coordinator writes, or asks a partition's leader to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub epoch: i16,
    /// Commit, else abort.
    pub commit: bool,
    /// The leader epoch of the coordinator's `__transaction_state` partition.
    pub coordinator_epoch: i32,
    /// Transaction version 2: the marker's epoch must be above the producer's there.
    pub strict: bool,
}

/// The first frame on a peer connection: who is calling, in which cluster, speaking which
/// version. Every later frame on the connection is an [`Envelope`] from that node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub cluster_id: String,
    pub node_id: i32,
}

pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    postcard::to_allocvec(hello).expect("hellos serialize")
}

/// Decodes and checks a connection's first frame: the node it names, if it may talk to us.
pub fn decode_hello(bytes: &[u8], cluster_id: &str) -> Result<i32, PeerError> {
    let (hello, _): (Hello, usize) = decode_versioned(bytes, limits::PEER_HELLO_BYTES_MAX)?;
    if hello.cluster_id != cluster_id {
        return Err(PeerError::OtherCluster(hello.cluster_id));
    }
    Ok(hello.node_id)
}

/// Decodes a hello or an envelope, refusing it whole when it is over `max` bytes or of
/// another protocol version. The version comes first in both (a varint), so another version
/// is told apart from garbage even when the rest of its layout differs. Returns the value
/// and the length of its encoding.
fn decode_versioned<T: serde::de::DeserializeOwned>(bytes: &[u8], max: usize) -> Result<(T, usize), PeerError> {
    if bytes.len() > max {
        return Err(PeerError::TooLarge(bytes.len()));
    }
    let (version, _) = postcard::take_from_bytes::<u16>(bytes).map_err(|e| PeerError::Malformed(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(PeerError::Version(version));
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| PeerError::Malformed(e.to_string()))?;
    Ok((value, bytes.len() - rest.len()))
}

/// Why bytes from a peer were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerError {
    TooLarge(usize),
    Version(u16),
    OtherCluster(String),
    /// The envelope names a sender other than the connection it came on.
    WrongSender {
        claimed: i32,
        actual: i32,
    },
    Malformed(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::TooLarge(n) => write!(f, "peer message of {n} bytes is over the limit"),
            PeerError::Version(v) => write!(f, "peer protocol version {v}, this node speaks {PROTOCOL_VERSION}"),
            PeerError::OtherCluster(c) => write!(f, "peer message from cluster {c:?}"),
            PeerError::WrongSender { claimed, actual } => {
                write!(f, "peer message claims to be from node {claimed} but came from node {actual}")
            }
            PeerError::Malformed(e) => write!(f, "malformed peer message: {e}"),
        }
    }
}

pub fn encode(env: &Envelope) -> Vec<u8> {
    postcard::to_allocvec(env).expect("peer messages serialize")
}

/// Decodes and checks bytes that came from node `from`, for a node of `cluster_id`. Returns
/// the envelope and the length of its encoding: any bytes after it are the record batches
/// of a replica fetch's answer.
pub fn decode_with_tail(bytes: &[u8], from: i32, cluster_id: &str) -> Result<(Envelope, usize), PeerError> {
    let (env, len): (Envelope, usize) = decode_versioned(bytes, limits::PEER_MESSAGE_BYTES_MAX)?;
    if env.cluster_id != cluster_id {
        return Err(PeerError::OtherCluster(env.cluster_id));
    }
    if env.from != from {
        return Err(PeerError::WrongSender { claimed: env.from, actual: from });
    }
    Ok((env, len))
}

/// Decodes and checks bytes that came from node `from`, for a node of `cluster_id`.
pub fn decode(bytes: &[u8], from: i32, cluster_id: &str) -> Result<Envelope, PeerError> {
    decode_with_tail(bytes, from, cluster_id).map(|(env, _)| env)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn vote() -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            cluster_id: "c1".into(),
            from: 2,
            body: Body::Quorum(quorum::Message::Vote { epoch: 3, last_epoch: 2, log_end: 10, pre_vote: true }),
        }
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let env = vote();
        assert_eq!(decode(&encode(&env), 2, "c1"), Ok(env.clone()));
        assert_eq!(decode(&encode(&env), 3, "c1"), Err(PeerError::WrongSender { claimed: 2, actual: 3 }));
        assert_eq!(decode(&encode(&env), 2, "c2"), Err(PeerError::OtherCluster("c1".into())));
        let newer = Envelope { version: PROTOCOL_VERSION + 1, ..env.clone() };
        assert_eq!(decode(&encode(&newer), 2, "c1"), Err(PeerError::Version(PROTOCOL_VERSION + 1)));
        let big = vec![0u8; limits::PEER_MESSAGE_BYTES_MAX + 1];
        assert_eq!(decode(&big, 2, "c1"), Err(PeerError::TooLarge(big.len())));
        assert!(matches!(decode(&[], 2, "c1"), Err(PeerError::Malformed(_))));
    }

    #[test]
    fn hellos_are_checked() {
        let hello = Hello { version: PROTOCOL_VERSION, cluster_id: "c1".into(), node_id: 4 };
        assert_eq!(decode_hello(&encode_hello(&hello), "c1"), Ok(4));
        assert_eq!(decode_hello(&encode_hello(&hello), "c2"), Err(PeerError::OtherCluster("c1".into())));
        let old = Hello { version: 0, ..hello.clone() };
        assert_eq!(decode_hello(&encode_hello(&old), "c1"), Err(PeerError::Version(0)));
        let bytes = encode_hello(&hello);
        for cut in 0..bytes.len() {
            assert!(decode_hello(&bytes[..cut], "c1").is_err(), "a prefix of {cut} bytes decoded");
        }
        assert!(matches!(decode_hello(&[0u8; 5000], "c1"), Err(PeerError::TooLarge(5000))));
    }

    #[test]
    fn garbage_and_truncations_are_refused_never_a_panic() {
        let bytes = encode(&vote());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 2, "c1").is_err(), "a prefix of {cut} bytes decoded");
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..10_000 {
            let len = rng.gen_range(0..64);
            let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = decode(&junk, 2, "c1");
            let mut flipped = bytes.clone();
            let i = rng.gen_range(0..flipped.len());
            flipped[i] ^= 1 << rng.gen_range(0..8);
            let _ = decode(&flipped, 2, "c1");
        }
    }
}
