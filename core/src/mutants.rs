//! Deliberate bugs, compiled in only with the `mutants` feature, for proving that the
//! simulator's checkers catch what they guard against. Without the feature every check is a
//! constant `false` and compiles away.

/// A planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutant {
    /// Advance the high watermark (and so acknowledge) when a sync is issued, not completed.
    AckBeforeSync = 1,
    /// Serve fetches up to the log end offset instead of the high watermark.
    FetchPastHighWatermark = 2,
    /// At recovery, trust the first read: a corrupted read truncates the log without a re-read.
    TruncateOnFirstBadRead = 3,
    /// The coordinator accepts offset commits from any member id and generation or member
    /// epoch (no fencing of zombies).
    CommitStaleGeneration = 4,
    /// A generation's assignment is handed out before its group record is durable.
    AssignBeforeDurable = 5,
    /// OffsetCommit is acknowledged (and served by OffsetFetch) before its record is durable.
    CommitAckBeforeDurable = 6,
    /// The offsets topic is loaded from the first read of each segment, unchecked.
    OffsetsLoadUnchecked = 7,
    /// KIP-848: a partition is handed to its new owner before the old one has released it.
    AssignUnreleased = 8,
    /// Idempotent producers: a retried batch is appended again instead of being answered with
    /// the offsets it was first written at (Kafka's five-batch dedup window dropped).
    DedupWindowDropped = 9,
    /// Start-up does not rebuild producer state from the log: a retry of a batch written
    /// before a crash is taken for a new one.
    ProducerStateNotRebuilt = 10,
    /// When a failed write cuts the log back, producer state keeps the batches that were cut:
    /// their retries are answered as duplicates at offsets that no longer hold them.
    ProducerStateNotCut = 11,
    /// The last stable offset ignores open transactions: read_committed consumers read
    /// records of transactions that may yet abort.
    StablePastOpenTxn = 12,
    /// Offsets committed in a transaction become visible as soon as they are durable, before
    /// the transaction commits (and even if it aborts).
    TxnOffsetsBeforeCommit = 13,
    /// Raft: a vote is granted without checking that the candidate's log is as complete.
    VoteWithoutLogCheck = 14,
    /// Raft: a vote is answered before the vote is durable (a crash forgets it).
    VoteNotSynced = 15,
    /// Raft: the leader commits entries of earlier epochs by counting replicas, before an
    /// entry of its own epoch is on a majority (Raft paper, figure 8).
    CommitByCount = 16,
    /// Raft: a voter reports (fetches from) its log end before that end is durable.
    ReportBeforeSync = 17,
    /// A node applies metadata records as soon as they are in its log, before they are
    /// committed: a record a new leader never had stays applied.
    ApplyUncommitted = 18,
    /// Replication: the leader's high watermark is its own durable end, whatever its
    /// followers have (acks=all answered before the ISR has the records).
    HwIgnoresFollowers = 19,
    /// Replication: a replica that becomes a follower cuts its log back to its high watermark
    /// (the rule before KIP-101, which loses acknowledged records: a follower's high watermark
    /// lags its leader's).
    TruncateToHighWatermark = 20,
    /// Replication: the controller elects the first live replica, in sync or not.
    ElectOutsideIsr = 21,
    /// Replication: a follower reports what it has written as synced, before its sync.
    FollowerReportsBeforeSync = 22,
    /// Coordinators: a new leader of a coordinators' partition reads it back at once, up to
    /// its own high watermark, without waiting for that to cover the log it took over (a
    /// follower's high watermark lags its leader's: the last acknowledged commits are missed).
    CoordinatorLoadsAtOnce = 23,
    /// Raft: after a failed sync a voter cuts its log back to its durable end (the design
    /// before session 8): a follower's high watermark, learnt from its leader, can be past it.
    CutToDurableEnd = 24,
    /// Replication: the leader's high watermark moves while the ISR is smaller than
    /// `min.insync.replicas` (acks=all acknowledged on too few replicas).
    HwUnderMinIsr = 25,
    /// Replication: a follower joins the ISR on any fetch, without having everything below
    /// the high watermark durable (as a restarted replica that lost its tail would).
    IsrAdmitsLagging = 26,
    /// Replication: a leader whose write failed cuts its log back and leads on in the same
    /// epoch, though it served its followers records past its durable end.
    LeadOnAfterFailedWrite = 27,
    /// AlterConfigs: a topic config change is answered as soon as it is proposed, before the
    /// metadata quorum has committed it (a new controller may never have it).
    AckConfigBeforeCommit = 28,
    /// Reassignment: finishes as soon as it is asked, the added replicas counted in sync
    /// before they have caught up (the leaving ones, which hold the data, go at once).
    ReassignBeforeInSync = 29,
    /// DeleteRecords: a restarted node forgets the log starts the metadata log records and
    /// serves the deleted records again.
    ForgetDeletionsOnRestart = 30,
    /// Compaction: the cleaner drops a key's latest record when it drops the older ones.
    CleanerDropsLatest = 31,
    /// Compaction: a segment's cleaned copy is renamed over it before the copy is synced (a
    /// crash can leave the segment with less than the cleaner kept).
    SwapBeforeSync = 32,
    /// Dynamic broker configs: a restarted node rebuilds its image from the metadata log but
    /// keeps its static configuration, forgetting the dynamic configs until the next change.
    DynamicConfigsNotReplayed = 33,
    /// Replication: a follower takes any gap in its leader's answer on the first read, however
    /// far (a base offset garbled by a bad read on the leader then lands in its log).
    GapOnFirstRead = 34,
    /// Metadata snapshots: a snapshot is labelled one entry past the offset it was taken at
    /// (a restart from it skips the next record of the log).
    SnapshotOffByOne = 35,
    /// Metadata snapshots: a running node that fetches its leader's snapshot takes its image
    /// without carrying out what differs (topics it lacked are never made, its roles stay).
    SnapshotImageNotCarriedOut = 36,
    /// Segment summaries: a sealed segment's summary is written before the segment is
    /// synced, and recovery takes a summary without checking it against its segment (a crash
    /// that loses the segment's unsynced tail leaves a summary of batches that are not there).
    SummaryUnchecked = 37,
    /// Transactions: a partition takes a marker whatever its producer epoch and coordinator
    /// epoch (a replaced coordinator's late marker ends the producer's next transaction).
    MarkerOldEpochAccepted = 38,
    /// Metadata: a broker lists every registered broker to clients, fenced ones too (clients
    /// are sent to brokers the controller has given up on).
    FencedBrokerInMetadata = 39,
    /// Start-up: a restarted node builds its image from the metadata it has on disk and
    /// serves at once, without first catching up with the quorum (its Metadata answers go
    /// back to older leaders and epochs than it answered before the restart).
    ServeBeforeMetadataCaughtUp = 40,
}

pub const ALL: &[(Mutant, &str)] = &[
    (Mutant::AckBeforeSync, "ack-before-sync"),
    (Mutant::FetchPastHighWatermark, "fetch-past-high-watermark"),
    (Mutant::TruncateOnFirstBadRead, "truncate-on-first-bad-read"),
    (Mutant::CommitStaleGeneration, "commit-stale-generation"),
    (Mutant::AssignBeforeDurable, "assign-before-durable"),
    (Mutant::CommitAckBeforeDurable, "commit-ack-before-durable"),
    (Mutant::OffsetsLoadUnchecked, "offsets-load-unchecked"),
    (Mutant::AssignUnreleased, "assign-unreleased"),
    (Mutant::DedupWindowDropped, "dedup-window-dropped"),
    (Mutant::ProducerStateNotRebuilt, "producer-state-not-rebuilt"),
    (Mutant::ProducerStateNotCut, "producer-state-not-cut"),
    (Mutant::StablePastOpenTxn, "stable-past-open-txn"),
    (Mutant::TxnOffsetsBeforeCommit, "txn-offsets-before-commit"),
    (Mutant::VoteWithoutLogCheck, "vote-without-log-check"),
    (Mutant::VoteNotSynced, "vote-not-synced"),
    (Mutant::CommitByCount, "commit-by-count"),
    (Mutant::ReportBeforeSync, "report-before-sync"),
    (Mutant::ApplyUncommitted, "apply-uncommitted"),
    (Mutant::HwIgnoresFollowers, "hw-ignores-followers"),
    (Mutant::TruncateToHighWatermark, "truncate-to-high-watermark"),
    (Mutant::ElectOutsideIsr, "elect-outside-isr"),
    (Mutant::FollowerReportsBeforeSync, "follower-reports-before-sync"),
    (Mutant::CoordinatorLoadsAtOnce, "coordinator-loads-at-once"),
    (Mutant::CutToDurableEnd, "cut-to-durable-end"),
    (Mutant::HwUnderMinIsr, "hw-under-min-isr"),
    (Mutant::IsrAdmitsLagging, "isr-admits-lagging"),
    (Mutant::LeadOnAfterFailedWrite, "lead-on-after-failed-write"),
    (Mutant::AckConfigBeforeCommit, "ack-config-before-commit"),
    (Mutant::ReassignBeforeInSync, "reassign-before-in-sync"),
    (Mutant::ForgetDeletionsOnRestart, "forget-deletions-on-restart"),
    (Mutant::CleanerDropsLatest, "cleaner-drops-latest"),
    (Mutant::SwapBeforeSync, "swap-before-sync"),
    (Mutant::DynamicConfigsNotReplayed, "dynamic-configs-not-replayed"),
    (Mutant::GapOnFirstRead, "gap-on-first-read"),
    (Mutant::SnapshotOffByOne, "snapshot-off-by-one"),
    (Mutant::SnapshotImageNotCarriedOut, "snapshot-image-not-carried-out"),
    (Mutant::SummaryUnchecked, "summary-unchecked"),
    (Mutant::MarkerOldEpochAccepted, "marker-old-epoch-accepted"),
    (Mutant::FencedBrokerInMetadata, "fenced-broker-in-metadata"),
    (Mutant::ServeBeforeMetadataCaughtUp, "serve-before-metadata-caught-up"),
];

/// The simulator scenario whose checkers guard against `m`: the Raft mutants live in the
/// metadata quorum, which the `quorum` scenario drives; the rest in the broker node.
pub fn scenario(m: Mutant) -> &'static str {
    match m {
        Mutant::VoteWithoutLogCheck
        | Mutant::VoteNotSynced
        | Mutant::CommitByCount
        | Mutant::ReportBeforeSync
        | Mutant::CutToDurableEnd => "quorum",
        Mutant::ApplyUncommitted
        | Mutant::HwIgnoresFollowers
        | Mutant::TruncateToHighWatermark
        | Mutant::ElectOutsideIsr
        | Mutant::FollowerReportsBeforeSync
        | Mutant::CoordinatorLoadsAtOnce
        | Mutant::HwUnderMinIsr
        | Mutant::IsrAdmitsLagging
        | Mutant::LeadOnAfterFailedWrite
        | Mutant::AckConfigBeforeCommit
        | Mutant::ReassignBeforeInSync
        | Mutant::ForgetDeletionsOnRestart
        | Mutant::DynamicConfigsNotReplayed
        | Mutant::GapOnFirstRead
        | Mutant::SnapshotOffByOne
        | Mutant::SnapshotImageNotCarriedOut
        | Mutant::MarkerOldEpochAccepted
        | Mutant::FencedBrokerInMetadata
        | Mutant::ServeBeforeMetadataCaughtUp => "cluster",
        _ => "default",
    }
}

pub fn by_name(name: &str) -> Option<Mutant> {
    ALL.iter().find(|(_, n)| *n == name).map(|(m, _)| *m)
}

#[cfg(feature = "mutants")]
thread_local! {
    // Per thread: a simulated run drives its nodes on one thread, and parallel runs (a sweep,
    // the test harness) must not see each other's mutant.
    static ACTIVE: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Turns a mutant on for the calling thread (`None` turns them off).
#[cfg(feature = "mutants")]
pub fn set(m: Option<Mutant>) {
    ACTIVE.with(|a| a.set(m.map_or(0, |m| m as u8)));
}

#[inline]
pub fn active(m: Mutant) -> bool {
    #[cfg(feature = "mutants")]
    {
        ACTIVE.with(|a| a.get()) == m as u8
    }
    #[cfg(not(feature = "mutants"))]
    {
        let _ = m;
        false
    }
}
