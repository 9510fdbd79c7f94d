//! The broker node: the one state machine the runtimes drive.
//!
//! `handle` is the only mutation; `poll_output` drains what it produced; `poll_timeout` says
//! when to call again with `Input::Timeout`. Durability is an input: a produce is answered,
//! and the high watermark moves, only after the `Sync` covering its write has completed.
//! Syncs are issued at the end of every `handle` for every partition written since its last
//! sync was issued, so one sync covers every connection's writes (group commit).

mod admin;
mod cleaner;
mod cluster;
mod configs;
mod consumer_groups;
mod coordination;
mod delete_records;
mod fetch;
mod forwarding;
mod gauges;
mod groups;
mod metadata_quorum;
mod produce;
mod producer_ids;
mod reassignment;
mod recovery;
mod replication;
mod snapshots;
mod summaries;
mod transactions;
mod txn_markers;
mod txn_verify;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{NodeConfig, TopicSettings};
use crate::io::{DiskError, DiskOp, DiskReply, Input, Output, Part};
use crate::limits;
use crate::log::{FileIds, PartitionLog};

use crate::protocol::{self, FrameError, RequestContext};
use crate::types::{ConnId, FileId, Instant, Offset, OpId, Time};

pub use forwarding::FORWARD_MAX_AGE_MS;
pub use groups::{OFFSETS_PARTITIONS, OFFSETS_TOPIC};
pub use recovery::RecoveryStats;
pub use transactions::{TXN_PARTITIONS, TXN_TOPIC};

/// The partition of the internal topic `__consumer_offsets` (a group's) or
/// `__transaction_state` (a transactional id's) that holds `key`'s state.
pub fn coordinator_partition(topic: &str, key: &str) -> i32 {
    let partitions = if topic == TXN_TOPIC { TXN_PARTITIONS } else { OFFSETS_PARTITIONS };
    groups::partition_for(key, partitions)
}

/// What [`Node::replica_view`] shows of one partition replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub online: bool,
    /// This node holds a replica (false: another broker's partition, no files here).
    pub hosted: bool,
    /// Bumped when a reassignment moves a new copy here.
    pub copy: u64,
    pub leads: bool,
    pub leader_epoch: i32,
    /// The ISR, on the leader.
    pub isr: Vec<i32>,
    pub log_start: Offset,
    pub high_watermark: Offset,
    pub durable_end: Offset,
    pub log_end: Offset,
}

/// A topic's id (Kafka's UUID).
pub type TopicId = [u8; 16];
/// A partition, named by its topic's id so a stale reference can never hit a new topic of the
/// same name.
pub type Tp = (TopicId, i32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct JobId(u64);

/// What a disk operation was for.
#[derive(Debug)]
enum Purpose {
    /// A write or truncate of a partition's files; failure fails the partition's tail.
    Log {
        tp: Tp,
        generation: u64,
        /// For a batch's data write: the log end offset once it is on disk.
        written: Option<Offset>,
        /// A segment file this write or truncation changes: it needs a sync once done.
        sync_file: Option<FileId>,
    },
    /// One file of a partition's sync batch.
    LogSync {
        tp: Tp,
        generation: u64,
        file: FileId,
    },
    /// A write or truncation of the metadata quorum's files, numbered in issue order.
    QuorumWrite {
        seq: u64,
    },
    /// The creation of a new segment of the quorum's log.
    QuorumRoll,
    /// One of the two files of a quorum sync.
    QuorumSync {
        id: u64,
    },
    Job(JobId),
    Recovery(recovery::Step),
    /// A segment of the offsets topic read back at start-up.
    OffsetsLoad {
        load: u64,
        slot: usize,
    },
    /// A batch read to answer ListOffsets by timestamp.
    TimestampRead {
        id: u64,
        ti: usize,
        pi: usize,
        target: fetch::TsTarget,
    },
    /// One of the log cleaner's operations (its job's id).
    Clean {
        id: u64,
    },
    /// A step of writing a metadata snapshot.
    Snapshot(snapshots::SnapStep),
    /// A step of reading the newest metadata snapshot at start-up.
    SnapshotLoad,
    /// A step of writing a segment's summary; `write` marks the data write, whose outcome
    /// is the summary's.
    Summary {
        tp: Tp,
        base: Offset,
        write: bool,
    },
    /// The size of the data directory's file system, for a DescribeLogDirs answer waiting
    /// on it.
    LogDirSpace {
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        resp: Box<kafka_protocol::messages::DescribeLogDirsResponse>,
    },
    /// Nothing waits on it (closing handles, deleting files); failures are logged.
    Ignore,
}

/// Something a set of disk operations achieves together (creating a topic, ...).
struct Job {
    remaining: usize,
    failed: bool,
    on_done: JobDone,
}

enum JobDone {
    TopicReady {
        name: String,
        id: TopicId,
    },
    PartitionsReady {
        name: String,
        id: TopicId,
        from: i32,
    },
    TopicDeleteDurable {
        name: String,
        id: TopicId,
    },
    DirsRemoved {
        name: String,
    },
    /// A block of producer ids is recorded: ids below `end` may be handed out.
    ProducerIds {
        end: i64,
    },
    /// The controller recorded a block of producer ids for another broker: tell it.
    ProducerIdsFor {
        broker: i32,
        end: i64,
    },
    /// A replica moved here by a reassignment has its files.
    ReplicaReady {
        tp: Tp,
    },
    /// Nothing follows (a controller's proposal about a broker).
    Nothing,
}

/// A request that waits for jobs before it can be answered.
struct Waiter {
    conn: ConnId,
    seq: u64,
    jobs: BTreeSet<JobId>,
    failed: BTreeSet<JobId>,
    then: Then,
}

type BuildResponse = Box<dyn FnOnce(&BTreeSet<JobId>) -> Result<Bytes, String> + Send>;

enum Then {
    /// Handle the request again from the start (it found a topic still being created).
    Redispatch { ctx: RequestContext, body: Bytes },
    /// Send the response the closure builds, given which jobs failed.
    Respond(BuildResponse),
}

/// One partition of a topic: its replicas (from the metadata), and its log when this node
/// holds a replica.
struct Partition {
    /// The brokers holding its replicas; the first leads. Empty for a partition created before
    /// placement existed (a cluster of one): this node leads it.
    replicas: Vec<i32>,
    /// Empty, and never written, when another broker holds the partition (`Remote`).
    log: PartitionLog,
    state: PartState,
    /// The sync batch in flight: files still to complete, the offset it makes durable.
    sync: Option<SyncBatch>,
    /// Failed syncs of the recovered log (before the node serves).
    recovery_sync_failures: u32,
    /// Offsets below this have been written (their write operations completed).
    written_end: Offset,
    /// Leader, follower or neither, from the partition's registration.
    role: crate::replica::Role,
    /// Which copy of the partition this node holds: moved here again by a reassignment, it is
    /// a new one (for the simulator's checkers, through `ReplicaView`).
    copy: u64,
    /// The log start the metadata log records (DeleteRecords): the log start moves there
    /// once the high watermark has.
    log_start_wanted: Offset,
}

impl Partition {
    /// What a client's request for the partition is answered, unless it is online here and
    /// this node leads it.
    fn serve_error(&self) -> Option<crate::protocol::errors::KafkaError> {
        use crate::protocol::errors::KafkaError;
        self.state.error().or(match self.role {
            crate::replica::Role::Leader(_) => None,
            _ => Some(KafkaError::NotLeaderOrFollower),
        })
    }

    /// `serve_error`, and KIP-320's check of the leader epoch the client believes in (-1:
    /// none given): an older one is FENCED_LEADER_EPOCH (its metadata is stale: it refreshes
    /// it), a newer one UNKNOWN_LEADER_EPOCH (this leader has not heard of it yet: it retries).
    fn serve_error_in(&self, current_leader_epoch: i32) -> Option<crate::protocol::errors::KafkaError> {
        use crate::protocol::errors::KafkaError;
        self.serve_error().or_else(|| {
            let mine = self.role.leader_epoch();
            match current_leader_epoch {
                e if e >= 0 && e < mine => Some(KafkaError::FencedLeaderEpoch),
                e if e > mine => Some(KafkaError::UnknownLeaderEpoch),
                _ => None,
            }
        })
    }

    /// Whether this node leads the partition in `leader_epoch`.
    fn leads_in(&self, leader_epoch: i32) -> bool {
        matches!(&self.role, crate::replica::Role::Leader(l) if l.leader_epoch == leader_epoch)
    }

    fn leads(&self) -> bool {
        self.state == PartState::Online && matches!(self.role, crate::replica::Role::Leader(_))
    }

    /// What a leader serves its followers up to: what its writes have completed, synced or not.
    fn served_end(&self) -> Offset {
        self.written_end.min(self.log.log_end_offset).max(self.log.durable_end)
    }
}

/// Syncs of a recovered log tried before its partition is taken offline.
const RECOVERY_SYNC_ATTEMPTS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartState {
    Recovering,
    /// Being created (its job has not finished).
    Creating,
    Online,
    /// A disk error made it unusable until restart.
    Offline,
    /// Held by another broker: requests for it get NOT_LEADER_OR_FOLLOWER.
    Remote,
}

impl PartState {
    /// What a request for the partition is answered, unless it is online here.
    fn error(self) -> Option<crate::protocol::errors::KafkaError> {
        use crate::protocol::errors::KafkaError;
        match self {
            PartState::Online => None,
            PartState::Offline => Some(KafkaError::KafkaStorageError),
            PartState::Remote => Some(KafkaError::NotLeaderOrFollower),
            PartState::Recovering | PartState::Creating => Some(KafkaError::LeaderNotAvailable),
        }
    }
}

struct SyncBatch {
    remaining: usize,
    end: Offset,
    generation: u64,
    failed_files: Vec<FileId>,
}

struct Topic {
    id: TopicId,
    configs: BTreeMap<String, String>,
    settings: TopicSettings,
    partitions: Vec<Partition>,
    /// Set while the topic is being created.
    creating: Option<JobId>,
}

impl Topic {
    /// The partition a request names by index, if the topic has it.
    fn partition(&self, index: i32) -> Option<&Partition> {
        self.partitions.get(usize::try_from(index).ok()?)
    }
}

/// Responses of one connection are sent in request order; finished ones wait here.
#[derive(Default)]
struct Conn {
    next_seq: u64,
    next_send: u64,
    done: BTreeMap<u64, Option<Vec<Part>>>,
    /// The runtime was told to stop reading it (too many requests in flight).
    paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Recovering,
    Serving,
    Failed(String),
}

pub struct Node {
    /// The configuration in force: the static one with the metadata log's dynamic broker
    /// configs on top (`configs::broker_configs_altered`).
    config: NodeConfig,
    /// The configuration the node was started with.
    static_config: NodeConfig,
    rng: ChaCha8Rng,
    now: Time,
    phase: Phase,
    topics: BTreeMap<String, Topic>,
    names: BTreeMap<TopicId, String>,
    conns: BTreeMap<ConnId, Conn>,
    ops: BTreeMap<OpId, Purpose>,
    next_op: u64,
    next_file: u64,
    next_job: u64,
    outputs: VecDeque<Output>,
    meta: metadata_quorum::MetaQuorum,
    /// The committed metadata, the broker lifecycle and the controller.
    cluster: cluster::ClusterState,
    snapshots: snapshots::Snapshots,
    jobs: BTreeMap<JobId, Job>,
    waiters: Vec<Waiter>,
    /// DeleteRecords waiting for their deletions' commit.
    deletes: Vec<delete_records::PendingDelete>,
    /// Requests to handle again once this input's committed metadata is applied (they found
    /// a change committed and not yet in the image).
    deferred: Vec<(ConnId, u64, RequestContext, Bytes)>,
    produces: Vec<produce::PendingProduce>,
    fetches: Vec<fetch::PendingFetch>,
    lookups: BTreeMap<u64, fetch::PendingLookup>,
    next_lookup: u64,
    coordinator: crate::group::Coordinator<groups::GroupWaiter>,
    /// KIP-848 consumer groups.
    consumer: crate::group::consumer::Coordinator,
    /// Durable committed offsets: group -> (topic, partition) -> offset.
    offsets: BTreeMap<String, BTreeMap<(String, i32), groups::Committed>>,
    /// The coordinators' partitions led here: served, or being read back.
    coordination: coordination::Coordination,
    /// Wall-clock ms since when each empty group has been empty (offsets retention).
    empty_since: BTreeMap<String, i64>,
    next_offsets_retention_check: Instant,
    commits: Vec<groups::PendingCommit>,
    buffered: VecDeque<(ConnId, Bytes)>,
    /// Names whose directories are still being removed; re-creating waits for them.
    deleting: BTreeMap<String, JobId>,
    dirty: BTreeSet<Tp>,
    hw_moved: bool,
    recovery: recovery::Recovery,
    next_retention_check: Instant,
    /// Inputs handled, for spacing out the invariant checks.
    inputs: u64,
    producer_ids: producer_ids::ProducerIds,
    next_producer_expiry_check: Instant,
    /// The transaction coordinator's transactional ids.
    txns: BTreeMap<String, transactions::TxnEntry>,
    /// Markers of ending transactions, being written.
    markers: Vec<transactions::MarkerWrite>,
    /// Markers other brokers' coordinators (or clients) asked this one to write, until durable.
    remote_markers: Vec<txn_markers::RemoteMarker>,
    next_marker_req: u64,
    /// Clients' WriteTxnMarkers requests, until every marker they asked for is answered.
    client_markers: BTreeMap<u64, txn_markers::ClientMarkers>,
    /// Offsets committed in open transactions, durable but not yet visible, by producer id.
    txn_offsets: BTreeMap<i64, Vec<(String, String, i32, groups::Committed)>>,
    next_txn_abort_check: Instant,
    /// Followers' fetching, leaders' held fetches, the controller's partition changes.
    replication: replication::ReplicationState,
    /// Admin requests sent to the controller, and those other brokers sent here.
    forwarding: forwarding::Forwarding,
    /// Counts and timings for the metrics endpoint.
    metrics: crate::metrics::Metrics,
    /// The log cleaner (compaction).
    cleaner: cleaner::Cleaner,
    /// Transactional produces waiting for another broker's coordinator (KIP-890).
    txn_verify: txn_verify::TxnVerify,
}

impl FileIds for u64 {
    fn next_file_id(&mut self) -> FileId {
        *self += 1;
        FileId(*self)
    }
}

impl Node {
    pub fn new(config: NodeConfig, seed: u64, now: Time) -> Node {
        let mut node = Node {
            next_retention_check: now.mono.plus_millis(config.log.retention_check_interval_ms),
            cleaner: cleaner::Cleaner::new(now.mono.plus_millis(config.log.cleaner_backoff_ms)),
            txn_verify: txn_verify::TxnVerify::default(),
            static_config: config.clone(),
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            phase: Phase::Recovering,
            topics: BTreeMap::new(),
            names: BTreeMap::new(),
            conns: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_op: 0,
            next_file: 0,
            next_job: 0,
            outputs: VecDeque::new(),
            meta: metadata_quorum::MetaQuorum::default(),
            cluster: cluster::ClusterState::default(),
            snapshots: snapshots::Snapshots::default(),
            jobs: BTreeMap::new(),
            waiters: Vec::new(),
            deletes: Vec::new(),
            deferred: Vec::new(),
            produces: Vec::new(),
            fetches: Vec::new(),
            lookups: BTreeMap::new(),
            next_lookup: 0,
            coordinator: crate::group::Coordinator::new(crate::group::GroupConfig::default(), 0),
            consumer: crate::group::consumer::Coordinator::default(),
            offsets: BTreeMap::new(),
            coordination: coordination::Coordination::default(),
            empty_since: BTreeMap::new(),
            next_offsets_retention_check: now.mono,
            commits: Vec::new(),
            buffered: VecDeque::new(),
            deleting: BTreeMap::new(),
            dirty: BTreeSet::new(),
            hw_moved: false,
            recovery: recovery::Recovery::default(),
            inputs: 0,
            producer_ids: producer_ids::ProducerIds::default(),
            next_producer_expiry_check: now.mono,
            txns: BTreeMap::new(),
            markers: Vec::new(),
            remote_markers: Vec::new(),
            next_marker_req: 0,
            client_markers: BTreeMap::new(),
            txn_offsets: BTreeMap::new(),
            next_txn_abort_check: now.mono,
            replication: replication::ReplicationState::default(),
            forwarding: forwarding::Forwarding::default(),
            metrics: crate::metrics::Metrics::new(now.mono),
        };
        node.next_txn_abort_check = now.mono.plus_millis(node.config.txn_abort_check_interval_ms);
        node.next_producer_expiry_check = now.mono.plus_millis(node.config.producer_id_expiration_check_interval_ms);
        node.coordinator = crate::group::Coordinator::new(node.config.group.clone(), node.rng.next_u64());
        if node.config.is_cluster() {
            node.cluster.incarnation = node.rng.next_u64();
        }
        node.consumer = crate::group::consumer::Coordinator::new(crate::group::consumer::Config {
            session_timeout_ms: node.config.group.consumer_session_timeout_ms,
            heartbeat_interval_ms: node.config.group.consumer_heartbeat_interval_ms,
            max_members: node.config.group.max_members,
        });
        node.next_offsets_retention_check = now.mono.plus_millis(node.config.group.offsets_retention_check_interval_ms);
        node.start_recovery();
        node
    }

    /// The only mutation.
    pub fn handle(&mut self, now: Time, input: Input) {
        self.now = now;
        match input {
            Input::Request { conn, frame } => self.on_frame(conn, frame),
            Input::ConnClosed { conn } => self.on_conn_closed(conn),
            Input::DiskDone { op, result } => self.on_disk_done(op, result),
            Input::Peer { from, bytes } => self.on_peer(from.0, bytes),
            Input::Timeout => self.on_timeout(),
            Input::ShutdownRequested => self.shutdown_requested(),
        }
        self.after_input();
        // The invariants walk every partition: after every input in debug builds, after every
        // 64th in release ones (where a node may have thousands of partitions).
        self.inputs += 1;
        if cfg!(debug_assertions) || self.inputs.is_multiple_of(64) {
            self.invariants();
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let fetch = self.fetches.iter().map(|f| f.deadline).min();
        let retention = (self.phase == Phase::Serving).then_some(self.next_retention_check);
        let groups = [self.coordinator.poll_timeout(), self.consumer.poll_timeout()].into_iter().flatten().min();
        let offsets = (self.phase == Phase::Serving).then_some(self.next_offsets_retention_check);
        let producers = (self.phase == Phase::Serving).then_some(self.next_producer_expiry_check);
        let txns = (self.phase == Phase::Serving && !self.txns.is_empty()).then_some(self.next_txn_abort_check);
        let quorum = self.quorum_poll_timeout();
        let cluster = self.cluster_poll_timeout();
        let replication = self.replication_poll_timeout();
        let produce = self.produces.iter().map(|p| p.deadline).filter(|d| d.0 != u64::MAX).min();
        let markers = self.markers_retry_at();
        let forwards = self.forward_poll_timeout();
        let deletes = self.deletes_poll_timeout();
        // Requests left to handle again after the last pass of an input: at once.
        let deferred = (!self.deferred.is_empty()).then(|| self.now.mono.plus_millis(1));
        let verify = [self.txn_verify_poll_timeout(), deferred].into_iter().flatten().min();
        let cleaner = (self.phase == Phase::Serving).then(|| self.cleaner_poll_timeout()).flatten();
        [
            cleaner,
            fetch,
            retention,
            groups,
            offsets,
            producers,
            txns,
            quorum,
            cluster,
            replication,
            produce,
            markers,
            forwards,
            deletes,
            verify,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// True once start-up recovery has finished and requests are served.
    pub fn is_serving(&self) -> bool {
        self.phase == Phase::Serving
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// A one-line description of the node's state, for reports when a run goes wrong.
    pub fn describe(&self) -> String {
        let mut out = format!("phase {:?}", self.phase);
        if let Some(q) = &self.meta.quorum {
            out += &format!(
                "; metadata quorum epoch {} {} hw {} end {} durable {}",
                q.epoch(),
                if q.is_leader() { "leader" } else { "not leader" },
                q.high_watermark(),
                q.log().end(),
                q.durable_end()
            );
        }
        for (name, t) in &self.topics {
            for (i, p) in t.partitions.iter().enumerate() {
                let l = &p.log;
                out += &format!(
                    "; {name}-{i} {:?} {} start {} hw {} durable {} end {} sync {}",
                    p.state,
                    match &p.role {
                        crate::replica::Role::Leader(l) => format!("leader e{} isr {:?}", l.leader_epoch, l.isr),
                        crate::replica::Role::Follower(f) => format!("follower of {} e{}", f.leader, f.leader_epoch),
                        crate::replica::Role::Idle { leader_epoch } => format!("idle e{leader_epoch}"),
                    },
                    l.log_start_offset,
                    l.high_watermark,
                    l.durable_end,
                    l.log_end_offset,
                    if p.sync.is_some() { "in flight" } else { "idle" }
                );
            }
        }
        out
    }

    /// What recovery found at start-up.
    pub fn recovery_stats(&self) -> &RecoveryStats {
        &self.recovery.stats
    }

    /// Transaction markers this node's coordinator has asked other brokers for and not yet
    /// heard back about (for the simulator's faults).
    pub fn markers_asked(&self) -> usize {
        self.markers
            .iter()
            .flat_map(|w| &w.waits)
            .filter(|(_, at)| matches!(at, transactions::MarkerAt::Remote { .. }))
            .count()
    }

    /// A partition replica as this node holds it (for the simulator's checkers and tools).
    pub fn replica_view(&self, topic: &str, partition: i32) -> Option<ReplicaView> {
        let p = self.topics.get(topic)?.partition(partition)?;
        let l = &p.log;
        Some(ReplicaView {
            online: p.state == PartState::Online,
            hosted: p.state != PartState::Remote,
            copy: p.copy,
            leads: p.leads(),
            leader_epoch: p.role.leader_epoch(),
            isr: p.role.leadership().map(|l| l.isr.clone()).unwrap_or_default(),
            log_start: l.log_start_offset,
            high_watermark: l.high_watermark,
            durable_end: l.durable_end,
            log_end: l.log_end_offset,
        })
    }

    /// High watermark and log end offset of a partition (for tests, the simulator and tools).
    pub fn partition_offsets(&self, topic: &str, partition: i32) -> Option<(Offset, Offset, Offset)> {
        let p = self.topics.get(topic)?.partition(partition)?;
        Some((p.log.log_start_offset, p.log.high_watermark, p.log.log_end_offset))
    }

    // ---- plumbing -------------------------------------------------------------------

    fn issue(&mut self, action: DiskOp, purpose: Purpose) -> OpId {
        self.next_op += 1;
        let op = OpId(self.next_op);
        if matches!(action, DiskOp::Sync { .. }) {
            self.metrics.sync_started(op.0, self.now.mono);
        }
        self.ops.insert(op, purpose);
        self.outputs.push_back(Output::Disk { op, action });
        op
    }

    fn issue_all(&mut self, actions: Vec<DiskOp>, purpose: impl Fn() -> Purpose) {
        for a in actions {
            let p = match a {
                DiskOp::Close { .. } | DiskOp::DeleteFile { .. } => Purpose::Ignore,
                _ => purpose(),
            };
            self.issue(a, p);
        }
    }

    /// Issues an operation on a partition's files; writes and truncations of segment files
    /// mark the file for the next sync when they complete.
    fn issue_log_op(&mut self, tp: Tp, generation: u64, action: DiskOp, written: Option<Offset>) {
        let purpose = match &action {
            DiskOp::Close { .. } | DiskOp::DeleteFile { .. } => Purpose::Ignore,
            DiskOp::Write { file, .. } | DiskOp::Truncate { file, .. } => {
                let is_log = self.partition(tp).is_some_and(|p| p.log.has_log_file(*file));
                Purpose::Log { tp, generation, written, sync_file: is_log.then_some(*file) }
            }
            _ => Purpose::Log { tp, generation, written, sync_file: None },
        };
        self.issue(action, purpose);
    }

    fn new_job(&mut self, remaining: usize, on_done: JobDone) -> JobId {
        self.next_job += 1;
        let id = JobId(self.next_job);
        self.jobs.insert(id, Job { remaining, failed: false, on_done });
        id
    }

    /// Whether the image holds what a topic or partitions creation job made here.
    fn job_in_image(&self, id: JobId) -> bool {
        let topic = |name: &str, tid: &TopicId| self.cluster.image.topics.get(name).filter(|t| t.id == *tid);
        match self.jobs.get(&id).map(|j| &j.on_done) {
            Some(JobDone::TopicReady { name, id }) => topic(name, id).is_some(),
            Some(JobDone::PartitionsReady { name, id, from }) => topic(name, id).is_some_and(|t| t.partitions > *from),
            _ => false,
        }
    }

    fn job_step(&mut self, id: JobId, ok: bool) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.failed |= !ok;
        job.remaining = job.remaining.saturating_sub(1);
        if job.remaining > 0 {
            return;
        }
        let job = self.jobs.remove(&id).expect("present");
        self.finish_job(id, job);
    }

    fn new_topic_id(&mut self) -> TopicId {
        loop {
            let mut id = [0u8; 16];
            self.rng.fill_bytes(&mut id);
            id[6] = (id[6] & 0x0f) | 0x40; // UUID version 4
            id[8] = (id[8] & 0x3f) | 0x80;
            if !self.names.contains_key(&id) && id != [0; 16] {
                return id;
            }
        }
    }

    /// Queues a response for a request; sends whatever is now in order.
    fn respond(&mut self, conn: ConnId, seq: u64, parts: Option<Vec<Part>>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return; // the connection is gone; so is its answer
        };
        if seq < c.next_send || seq >= c.next_seq || c.done.contains_key(&seq) {
            tracing::error!(conn = conn.0, seq, "an answer for a request this connection does not have; dropped");
            return;
        }
        c.done.insert(seq, parts);
        self.metrics.request_answered(conn, seq, self.now.mono);
        if forwarding::is_forwarded(conn) {
            // One request per such connection: its answer goes back over the peer link.
            let parts = self.conns.get_mut(&conn).and_then(|c| c.done.remove(&seq)).flatten();
            return self.forwarded_response(conn, parts.unwrap_or_default());
        }
        let Some(c) = self.conns.get_mut(&conn) else { return };
        while let Some(parts) = c.done.remove(&c.next_send) {
            c.next_send += 1;
            if let Some(parts) = parts {
                self.outputs.push_back(Output::Response { conn, parts });
            }
        }
        if c.paused && c.next_seq - c.next_send <= limits::IN_FLIGHT_REQUESTS_PER_CONN_MAX as u64 / 2 {
            c.paused = false;
            self.outputs.push_back(Output::Resume { conn });
        }
    }

    /// Queues an encoded response; a response that failed to encode is a bug in core, logged
    /// and answered by closing the connection (the client retries elsewhere), never a panic.
    fn respond_bytes(&mut self, conn: ConnId, seq: u64, frame: Result<Bytes, String>) {
        match frame {
            Ok(frame) => self.respond(conn, seq, Some(vec![Part::Bytes(frame)])),
            Err(e) => {
                tracing::error!(conn = conn.0, error = %e, "response could not be encoded");
                self.close(conn, "response could not be encoded");
            }
        }
    }

    fn close(&mut self, conn: ConnId, why: &str) {
        tracing::info!(conn = conn.0, why, "closing connection");
        if forwarding::is_forwarded(conn) {
            return self.forwarded_closed(conn);
        }
        self.on_conn_closed(conn);
        self.outputs.push_back(Output::Close { conn });
    }

    // ---- inputs ---------------------------------------------------------------------

    fn on_frame(&mut self, conn: ConnId, frame: Bytes) {
        if self.cluster.closing && !forwarding::is_forwarded(conn) {
            return self.close(conn, "the broker is stopping");
        }
        match self.phase {
            Phase::Serving => {}
            Phase::Recovering => {
                if self.buffered.len() >= limits::REQUESTS_BUFFERED_DURING_RECOVERY_MAX {
                    self.close(conn, "too many requests while recovering");
                } else {
                    self.buffered.push_back((conn, frame));
                }
                return;
            }
            Phase::Failed(_) => {
                self.close(conn, "node failed at start-up");
                return;
            }
        }
        let c = self.conns.entry(conn).or_default();
        let seq = c.next_seq;
        c.next_seq += 1;
        if !c.paused && c.next_seq - c.next_send >= limits::IN_FLIGHT_REQUESTS_PER_CONN_MAX as u64 {
            c.paused = true;
            tracing::debug!(conn = conn.0, "too many requests in flight: not read until half are answered");
            self.outputs.push_back(Output::Pause { conn });
        }
        match protocol::parse_header(&frame) {
            Ok((ctx, body)) => {
                self.metrics.request_started(conn, seq, ctx.api_key as i16, ctx.version, self.now.mono);
                self.dispatch(conn, seq, ctx, body)
            }
            Err(FrameError::UnsupportedVersion { api_key: ApiKey::ApiVersions, correlation_id, .. }) => {
                // Kafka answers a too-new ApiVersions with version 0 and UNSUPPORTED_VERSION, so
                // the client can retry with a version from the list.
                let ctx = RequestContext { api_key: ApiKey::ApiVersions, version: 0, correlation_id, client_id: None };
                let resp =
                    protocol::api_versions_response(crate::protocol::errors::KafkaError::UnsupportedVersion.code());
                self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
            }
            Err(e) => {
                tracing::warn!(conn = conn.0, error = ?e, "bad request frame");
                self.close(conn, "bad request frame");
            }
        }
    }

    /// Handles a request, or forwards it to the active controller when only that can.
    fn dispatch(&mut self, conn: ConnId, seq: u64, ctx: RequestContext, body: Bytes) {
        if !self.forward(conn, seq, &ctx, &body) {
            self.dispatch_here(conn, seq, ctx, body);
        }
    }

    fn dispatch_here(&mut self, conn: ConnId, seq: u64, ctx: RequestContext, body: Bytes) {
        let result = match ctx.api_key {
            ApiKey::ApiVersions => self.handle_api_versions(conn, seq, &ctx, body),
            ApiKey::Metadata => self.handle_metadata(conn, seq, ctx, body),
            ApiKey::Produce => self.handle_produce(conn, seq, ctx, body),
            ApiKey::Fetch => self.handle_fetch(conn, seq, ctx, body),
            ApiKey::ListOffsets => self.handle_list_offsets(conn, seq, &ctx, body),
            ApiKey::OffsetForLeaderEpoch => self.handle_offset_for_leader_epoch(conn, seq, &ctx, body),
            ApiKey::CreateTopics => self.handle_create_topics(conn, seq, ctx, body),
            ApiKey::DeleteTopics => self.handle_delete_topics(conn, seq, ctx, body),
            ApiKey::ElectLeaders => self.handle_elect_leaders(conn, seq, ctx, body),
            ApiKey::DeleteRecords => self.handle_delete_records(conn, seq, ctx, body),
            ApiKey::AlterPartitionReassignments => self.handle_alter_partition_reassignments(conn, seq, ctx, body),
            ApiKey::ListPartitionReassignments => self.handle_list_partition_reassignments(conn, seq, ctx, body),
            ApiKey::CreatePartitions => self.handle_create_partitions(conn, seq, ctx, body),
            ApiKey::DescribeConfigs => self.handle_describe_configs(conn, seq, &ctx, body),
            ApiKey::DescribeLogDirs => self.handle_describe_log_dirs(conn, seq, &ctx, body),
            ApiKey::AlterConfigs => self.handle_alter_configs(conn, seq, ctx, body),
            ApiKey::IncrementalAlterConfigs => self.handle_incremental_alter_configs(conn, seq, ctx, body),
            ApiKey::DescribeCluster => self.handle_describe_cluster(conn, seq, &ctx, body),
            ApiKey::DescribeQuorum => self.handle_describe_quorum(conn, seq, &ctx, body),
            ApiKey::FindCoordinator => self.handle_find_coordinator(conn, seq, ctx, body),
            ApiKey::JoinGroup => self.handle_join_group(conn, seq, ctx, body),
            ApiKey::SyncGroup => self.handle_sync_group(conn, seq, ctx, body),
            ApiKey::Heartbeat => self.handle_heartbeat(conn, seq, ctx, body),
            ApiKey::LeaveGroup => self.handle_leave_group(conn, seq, ctx, body),
            ApiKey::OffsetCommit => self.handle_offset_commit(conn, seq, ctx, body),
            ApiKey::OffsetFetch => self.handle_offset_fetch(conn, seq, ctx, body),
            ApiKey::ListGroups => self.handle_list_groups(conn, seq, &ctx, body),
            ApiKey::DescribeGroups => self.handle_describe_groups(conn, seq, &ctx, body),
            ApiKey::DeleteGroups => self.handle_delete_groups(conn, seq, ctx, body),
            ApiKey::OffsetDelete => self.handle_offset_delete(conn, seq, ctx, body),
            ApiKey::ConsumerGroupHeartbeat => self.handle_consumer_group_heartbeat(conn, seq, ctx, body),
            ApiKey::ConsumerGroupDescribe => self.handle_consumer_group_describe(conn, seq, ctx, body),
            ApiKey::InitProducerId => self.handle_init_producer_id(conn, seq, ctx, body),
            ApiKey::AddPartitionsToTxn => self.handle_add_partitions_to_txn(conn, seq, ctx, body),
            ApiKey::AddOffsetsToTxn => self.handle_add_offsets_to_txn(conn, seq, ctx, body),
            ApiKey::TxnOffsetCommit => self.handle_txn_offset_commit(conn, seq, ctx, body),
            ApiKey::EndTxn => self.handle_end_txn(conn, seq, ctx, body),
            ApiKey::ListTransactions => self.handle_list_transactions(conn, seq, &ctx, body),
            ApiKey::DescribeTransactions => self.handle_describe_transactions(conn, seq, &ctx, body),
            ApiKey::DescribeProducers => self.handle_describe_producers(conn, seq, &ctx, body),
            ApiKey::WriteTxnMarkers => self.handle_write_txn_markers(conn, seq, ctx, body),
            _ => Err(FrameError::UnknownApi(ctx.api_key as i16)),
        };
        if let Err(e) = result {
            tracing::warn!(conn = conn.0, error = ?e, "request could not be decoded");
            self.close(conn, "malformed request");
        }
    }

    fn on_conn_closed(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.metrics.connection_closed(conn);
        self.forwards_of_closed(conn);
        self.produces.retain(|p| p.conn != conn);
        self.fetches.retain(|f| f.conn != conn);
        self.lookups.retain(|_, l| l.conn != conn);
        self.waiters.retain(|w| w.conn != conn);
        self.txn_verify_conn_closed(conn);
        self.buffered.retain(|(c, _)| *c != conn);
    }

    fn on_timeout(&mut self) {
        self.quorum_timeout();
        self.forward_timeouts();
        self.broker_tick();
        self.fence_silent_brokers();
        if self.phase != Phase::Serving {
            return;
        }
        self.expire_fetches();
        self.expire_txn_verifications();
        self.replication_timeout();
        self.hw_moved |= self.produces.iter().any(|p| p.deadline <= self.now.mono);
        self.complete_deletes();
        // Markers another broker has not confirmed in time are asked for again.
        self.hw_moved |= self.markers_retry_at().is_some_and(|t| t <= self.now.mono);
        self.settle_groups();
        self.expire_consumer_members();
        if self.now.mono >= self.next_offsets_retention_check {
            self.next_offsets_retention_check =
                self.now.mono.plus_millis(self.config.group.offsets_retention_check_interval_ms);
            self.expire_offsets();
        }
        if self.now.mono >= self.next_txn_abort_check {
            self.next_txn_abort_check = self.now.mono.plus_millis(self.config.txn_abort_check_interval_ms);
            self.abort_expired_txns();
            self.expire_txn_ids();
            // Markers that could not even be appended (a partition not online) are tried
            // again here too, not only when some high watermark moves.
            self.complete_markers();
        }
        if self.now.mono >= self.next_producer_expiry_check {
            self.next_producer_expiry_check =
                self.now.mono.plus_millis(self.config.producer_id_expiration_check_interval_ms);
            self.expire_producers();
        }
        if self.now.mono >= self.next_retention_check {
            self.next_retention_check = self.now.mono.plus_millis(self.config.log.retention_check_interval_ms);
            self.apply_retention();
        }
        self.cleaner_tick();
    }

    fn apply_retention(&mut self) {
        let wall = self.now.wall_ms;
        let mut ops = Vec::new();
        for t in self.topics.values_mut() {
            for p in t.partitions.iter_mut().filter(|p| p.state == PartState::Online) {
                let n = p.log.apply_retention(&t.settings, wall, &mut ops);
                if n > 0 {
                    tracing::info!(dir = %p.log.dir, segments = n, log_start_offset = p.log.log_start_offset, "retention deleted segments");
                }
            }
        }
        self.issue_all(ops, || Purpose::Ignore);
    }

    /// Forgets idempotent producers idle for `producer.id.expiration.ms` (by their batches'
    /// timestamps, as Kafka does).
    fn expire_producers(&mut self) {
        let (wall, ttl) = (self.now.wall_ms, self.config.producer_id_expiration_ms);
        for t in self.topics.values_mut() {
            for p in t.partitions.iter_mut().filter(|p| p.state == PartState::Online) {
                let n = p.log.producers.expire(wall, ttl);
                if n > 0 {
                    tracing::debug!(dir = %p.log.dir, producers = n, "idle producer ids expired");
                }
            }
        }
    }

    fn on_disk_done(&mut self, op: OpId, result: Result<DiskReply, DiskError>) {
        self.metrics.sync_done(op.0, self.now.mono);
        let Some(purpose) = self.ops.remove(&op) else {
            tracing::warn!(op = op.0, "completion for an unknown disk operation");
            return;
        };
        match purpose {
            Purpose::Log { tp, generation, written, sync_file } => match result {
                Err(e) => self.storage_failure(tp, generation, &e),
                Ok(_) => {
                    // Writes complete in order: everything below `written` is now written, and
                    // its file needs a sync. A sync covers only writes completed before it is
                    // issued, so a write that is still in flight (and may yet fail) never
                    // counts as durable.
                    let mut wake = false;
                    if let Some(p) = self.partition_mut(tp).filter(|p| p.log.generation == generation) {
                        if let Some(end) = written {
                            p.written_end = p.written_end.max(end);
                            wake = p.leads();
                        }
                        if let Some(f) = sync_file.filter(|f| p.log.has_log_file(*f)) {
                            p.log.dirty.insert(f);
                            self.dirty.insert(tp);
                        }
                    }
                    self.replication.wake_parked |= wake;
                }
            },
            Purpose::LogSync { tp, generation, file } => self.on_log_sync(tp, generation, file, result.err()),
            Purpose::QuorumWrite { seq } => self.on_quorum_write(seq, result.map(|_| ())),
            Purpose::QuorumRoll => self.on_quorum_roll(result.map(|_| ())),
            Purpose::QuorumSync { id } => self.on_quorum_sync(id, result.map(|_| ())),
            Purpose::Job(id) => {
                if let Err(e) = &result {
                    tracing::error!(error = %e, "disk operation for an admin change failed");
                }
                self.job_step(id, result.is_ok());
            }
            Purpose::Recovery(step) => self.on_recovery_step(step, result),
            Purpose::OffsetsLoad { load, slot } => {
                let data = match result {
                    Ok(DiskReply::Data(d)) => Ok(d),
                    Ok(other) => Err(format!("unexpected reply {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                self.on_offsets_read(load, slot, data);
            }
            Purpose::TimestampRead { id, ti, pi, target } => {
                let data = match result {
                    Ok(DiskReply::Data(d)) => Ok(d),
                    Ok(other) => Err(format!("unexpected reply {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                self.on_timestamp_read(id, ti, pi, target, data);
            }
            Purpose::Clean { id } => self.on_clean_done(id, result),
            Purpose::Snapshot(step) => self.on_snapshot_step(step, result),
            Purpose::SnapshotLoad => self.on_snapshot_load(result),
            Purpose::Summary { tp, base, write } => self.on_summary_step(tp, base, write, result),
            Purpose::LogDirSpace { conn, seq, ctx, resp } => self.on_log_dir_space(conn, seq, ctx, *resp, result),
            Purpose::Ignore => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "background disk operation failed");
                }
            }
        }
    }

    // ---- durability -------------------------------------------------------------------

    /// Issues a sync for every partition written since its last sync was issued (unless one
    /// is already in flight: it will be followed by another when it completes), and for the
    /// metadata log. Then answers what became durable.
    fn after_input(&mut self) {
        // Requests answered within the pass (a coordinator's verdict on this node's own
        // partitions, once its record is durable) are handled again at once, not at the next
        // input.
        for _ in 0..4 {
            self.after_input_pass();
            if self.deferred.is_empty() {
                break;
            }
        }
    }

    fn after_input_pass(&mut self) {
        self.settle_meta_rejected();
        for (conn, seq, ctx, body) in std::mem::take(&mut self.deferred) {
            self.dispatch(conn, seq, ctx, body);
        }
        self.release_blocked();
        let dirty = std::mem::take(&mut self.dirty);
        for tp in dirty {
            let Some(p) = self.partition_mut(tp) else {
                continue;
            };
            if p.sync.is_some() || p.log.dirty.is_empty() {
                if !p.log.dirty.is_empty() {
                    self.dirty.insert(tp);
                }
                continue;
            }
            let files = std::mem::take(&mut p.log.dirty);
            // A sync makes durable only what was already written when it was issued: a write
            // that has not completed (and might yet fail) is not covered.
            p.sync = Some(SyncBatch {
                remaining: files.len(),
                end: p.written_end.min(p.log.log_end_offset),
                generation: p.log.generation,
                failed_files: Vec::new(),
            });
            let generation = p.log.generation;
            if crate::mutants::active(crate::mutants::Mutant::AckBeforeSync) {
                p.log.durable_end = p.log.log_end_offset;
                self.durable_moved(tp);
            }
            for file in files {
                self.issue(DiskOp::Sync { file }, Purpose::LogSync { tp, generation, file });
            }
        }
        if std::mem::take(&mut self.hw_moved) {
            self.reconcile_coordinators();
            self.complete_produces();
            self.complete_commits();
            self.complete_markers();
            self.complete_remote_markers();
            self.wake_fetches();
        }
        self.after_input_replication();
        self.close_logs();
    }

    fn on_log_sync(&mut self, tp: Tp, generation: u64, file: FileId, error: Option<DiskError>) {
        let recovering = self.phase == Phase::Recovering;
        let Some(p) = self.partition_mut(tp) else {
            return;
        };
        let Some(batch) = p.sync.as_mut() else { return };
        if error.is_some() {
            batch.failed_files.push(file);
        }
        batch.remaining -= 1;
        if batch.remaining > 0 {
            return;
        }
        let batch = p.sync.take().expect("present");
        let still_dirty = !p.log.dirty.is_empty();
        if !batch.failed_files.is_empty() {
            let e = error.unwrap_or_else(|| DiskError::Io("an earlier sync of this batch failed".into()));
            if recovering && batch.generation == p.log.generation {
                // The recovered log is not yet known durable, and cutting it back would throw
                // away acknowledged records: sync the files that failed again, a bounded number
                // of times, then give up on the partition (offline until a restart).
                p.recovery_sync_failures += 1;
                if p.recovery_sync_failures >= RECOVERY_SYNC_ATTEMPTS {
                    tracing::error!(dir = %p.log.dir, error = %e, "sync of a recovered log keeps failing; partition offline");
                    p.state = PartState::Offline;
                    self.maybe_serving();
                } else {
                    tracing::warn!(dir = %p.log.dir, error = %e, attempt = p.recovery_sync_failures, "sync of a recovered log failed; syncing again");
                    p.log.dirty.extend(batch.failed_files);
                    self.dirty.insert(tp);
                }
                if still_dirty {
                    self.dirty.insert(tp);
                }
                return;
            }
            // A file whose sync failed still has writes (or a truncation) that are not
            // durable: it must be synced again before anything after it counts as durable.
            let failed: Vec<FileId> = batch.failed_files.into_iter().filter(|f| p.log.has_log_file(*f)).collect();
            p.log.dirty.extend(failed);
            self.dirty.insert(tp);
            self.storage_failure(tp, generation, &e);
            return;
        }
        if still_dirty {
            self.dirty.insert(tp);
        }
        let p = self.partition_mut(tp).expect("checked above");
        if batch.generation == p.log.generation && batch.end > p.log.durable_end {
            p.log.durable_end = batch.end.min(p.log.log_end_offset);
            self.durable_moved(tp);
        }
        if recovering {
            self.maybe_serving();
        }
    }

    /// A write or sync of a partition failed (a full disk, an I/O error): nothing past the
    /// durable end can be trusted. Cut the log back to it and fail the waiting produces; the
    /// partition keeps serving, and later produces may succeed once space is freed. A leader
    /// with followers also resigns its leader epoch: it may have served them records past
    /// the cut (see `resign_leadership`).
    fn storage_failure(&mut self, tp: Tp, generation: u64, e: &DiskError) {
        let interval = self.topic_settings(tp).map_or(4096, |s| s.index_interval_bytes);
        let recovering = self.phase == Phase::Recovering;
        let Some(p) = self.partition_mut(tp) else {
            return;
        };
        if generation != p.log.generation {
            return; // already cut back after an earlier failure
        }
        if recovering {
            // Before serving, the high watermark is not yet the durable end: cutting the log
            // back to it would throw away acknowledged records. Keep the log; serve nothing.
            tracing::error!(dir = %p.log.dir, error = %e, "write to a recovering log failed; partition offline");
            p.state = PartState::Offline;
            p.sync = None;
            self.maybe_serving();
            return;
        }
        // Only what is synced here can have been acknowledged or served to a client: keep that.
        tracing::error!(dir = %p.log.dir, error = %e, durable_end = p.log.durable_end, "log write failed; truncating to the durable end");
        let mut ops = Vec::new();
        let durable = p.log.durable_end;
        p.log.truncate_to(durable, interval, &mut ops);
        p.written_end = p.written_end.min(p.log.log_end_offset);
        if p.log.generation == generation {
            p.log.generation += 1; // nothing to cut, but in-flight work must still be voided
        }
        let generation = p.log.generation;
        for action in ops {
            self.issue_log_op(tp, generation, action, None);
        }
        self.dirty.insert(tp);
        self.hw_moved = true; // lets waiting produces see the new generation and fail
                              // The coordinators need no look here: a cut log they wait on is read as far as it
                              // goes (`reconcile_coordinators`), and a leadership given up below is a role change,
                              // which has them look. (Looking at every internal partition after each failed write
                              // was a tenth of the default sweep's time with sync failures.)
        let lead_on = crate::mutants::active(crate::mutants::Mutant::LeadOnAfterFailedWrite);
        if self.partition(tp).is_some_and(|p| p.leads() && p.replicas.len() > 1) && !lead_on {
            self.resign_leadership(tp);
        }
        // A follower waiting for the failed sync before it fetched again waits no more: it
        // fetches from its new end (no sync completion would ever wake it).
        self.replication.fetch_due = true;
    }

    // ---- lookups ------------------------------------------------------------------------

    fn partition_mut(&mut self, tp: Tp) -> Option<&mut Partition> {
        let name = self.names.get(&tp.0)?;
        self.topics.get_mut(name)?.partitions.get_mut(usize::try_from(tp.1).ok()?)
    }

    fn partition(&self, tp: Tp) -> Option<&Partition> {
        let name = self.names.get(&tp.0)?;
        self.topics.get(name)?.partition(tp.1)
    }

    fn topic_settings(&self, tp: Tp) -> Option<&TopicSettings> {
        let name = self.names.get(&tp.0)?;
        Some(&self.topics.get(name)?.settings)
    }

    /// State invariants, checked after every input. A failure is a bug in core.
    fn invariants(&self) {
        for (name, t) in &self.topics {
            assert_eq!(self.names.get(&t.id), Some(name), "topic id index out of sync");
            for p in &t.partitions {
                let l = &p.log;
                if p.state == PartState::Online {
                    assert!(l.log_start_offset <= l.high_watermark, "{}: log start past high watermark", l.dir);
                    assert!(l.high_watermark <= l.durable_end, "{}: high watermark past the durable end", l.dir);
                    assert!(l.durable_end <= l.log_end_offset, "{}: durable end past log end", l.dir);
                    let last = l.segments.last().expect("online logs have a segment");
                    assert_eq!(last.next_offset().max(last.base_offset), l.log_end_offset, "{}: log end offset", l.dir);
                    for w in l.segments.windows(2) {
                        assert!(w[0].next_offset() <= w[1].base_offset, "{}: segments overlap", l.dir);
                    }
                }
            }
        }
        if let Some(q) = &self.meta.quorum {
            q.invariants();
        }
        for c in self.conns.values() {
            assert!(c.next_send <= c.next_seq);
        }
    }
}
