//! Partition replication on a node (DESIGN.md §7): each replica's role follows the
//! partition's registration in the metadata; followers fetch from their leaders over the peer
//! connection, append what they get with the leader's offsets, sync it, and only then report
//! it; leaders hold fetches that find nothing new, move the high watermark as the in-sync
//! replicas report, and ask the controller to change the ISR. The controller elects leaders
//! from the ISR when brokers are fenced, and commits the ISR changes leaders ask for.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::{Node, PartState, Tp};
use crate::io::Part;
use crate::log::batch;
use crate::log::producers::Replay;
use crate::metadata::{MetaRecord, PartitionImage, NO_LEADER};
use crate::peer::{Body, BrokerMessage, FetchPartition, FetchedPartition, ReplicaMessage};
use crate::protocol::errors::KafkaError;
use crate::replica::{Following, Leadership, Role};
use crate::types::{Instant, Offset};

/// How long past its wait a follower gives its leader to answer a fetch before asking again.
const FETCH_ANSWER_GRACE_MS: u64 = 2_000;
/// How long a follower waits before fetching again after an answer with errors (the leader
/// and this node disagree on who leads until the metadata catches up).
const FETCH_BACKOFF_MS: u64 = 100;
/// How long a leader waits for an ISR change to be committed before asking again.
const ALTER_PARTITION_RETRY_MS: u64 = 2_000;

#[derive(Default)]
pub(super) struct ReplicationState {
    /// Per leader this node follows partitions of: its fetch in flight and when to give up
    /// on it, and the earliest time of the next.
    fetchers: BTreeMap<i32, Fetcher>,
    next_fetch_id: u64,
    /// Followers may have a fetch to send (an answer came, a sync completed, a role changed).
    pub(super) fetch_due: bool,
    /// Followers' fetches held until there is something new for them, or their deadline.
    parked: Vec<Parked>,
    /// A leader's durable end moved or a role changed: the held fetches are looked at.
    pub(super) wake_parked: bool,
    next_isr_check: Option<Instant>,
    /// The controller's partition changes proposed and not yet committed.
    in_flight: BTreeMap<Tp, (Offset, super::JobId)>,
    /// The controller should look for partitions that need a new leader or ISR.
    pub reconcile_due: bool,
    /// The controller's next preferred-leader check (`auto.leader.rebalance.enable`).
    next_rebalance: Option<Instant>,
    rebalance_due: bool,
    /// Partitions this node resigned the leadership of after a failed write: the leader
    /// epoch it may not lead in again, and when it last asked the controller for a new one.
    resigned: BTreeMap<Tp, (i32, Instant)>,
}

#[derive(Default)]
struct Fetcher {
    in_flight: Option<(u64, Instant)>,
    not_before: Instant,
}

/// A partition change not yet in the image.
#[derive(Clone, Copy, Debug)]
pub(super) enum ChangePending {
    /// Waiting for its commit: this job finishes then.
    Job(super::JobId),
    /// Committed: applied before this input ends.
    Applying,
}

struct Parked {
    from: i32,
    id: u64,
    partitions: Vec<FetchPartition>,
    deadline: Instant,
}

impl Node {
    // ---- roles --------------------------------------------------------------------------

    /// The partition's registration. A partition made before placement existed (no replicas
    /// recorded) is this node's alone.
    pub(super) fn registration(&self, tp: Tp) -> Option<PartitionImage> {
        let name = self.names.get(&tp.0)?;
        let Some(t) = self.cluster.image.topics.get(name).filter(|t| t.id == tp.0) else {
            // Proposed here and not yet applied (its creation finishes just before its record
            // applies): as proposed.
            let p = self.partition(tp)?;
            let replicas = if p.replicas.is_empty() { vec![self.me_id()] } else { p.replicas.clone() };
            return Some(PartitionImage::new(replicas));
        };
        let p = t.parts.get(usize::try_from(tp.1).ok()?)?;
        if p.replicas.is_empty() {
            let me = self.me_id();
            return Some(PartitionImage::new(vec![me]));
        }
        Some(p.clone())
    }

    fn me_id(&self) -> i32 {
        self.config.node_id.0
    }

    /// This process is registered (its own incarnation) and unfenced: it may lead. A node
    /// alone is always.
    fn registered_unfenced(&self) -> bool {
        !self.config.is_cluster()
            || self
                .cluster
                .image
                .brokers
                .get(&self.me_id())
                .is_some_and(|b| !b.fenced && b.incarnation == self.cluster.incarnation)
    }

    /// Sets every partition's role from the metadata (when the node starts serving).
    pub(super) fn refresh_all_roles(&mut self) {
        let tps: Vec<Tp> =
            self.topics.values().flat_map(|t| (0..t.partitions.len()).map(move |i| (t.id, i as i32))).collect();
        for tp in tps {
            self.refresh_role(tp);
        }
        self.coordination.rescan = true;
        self.reconcile_coordinators();
    }

    pub(super) fn refresh_topic_roles(&mut self, name: &str) {
        let Some(t) = self.topics.get(name) else { return };
        let tps: Vec<Tp> = (0..t.partitions.len()).map(|i| (t.id, i as i32)).collect();
        for &tp in &tps {
            self.refresh_role(tp);
        }
        // A coordinators' topic just created is served at once (it is empty).
        if let Some(&tp) = tps.first() {
            self.coordinators_touched(tp);
        }
        self.reconcile_coordinators();
    }

    /// Makes the partition's role here what its registration says: leader, follower of its
    /// leader, or idle (no leader, not a replica, or not online here).
    pub(super) fn refresh_role(&mut self, tp: Tp) {
        if self.phase != super::Phase::Serving {
            return; // roles are set once recovery is done
        }
        let me = self.me_id();
        let image = self.registration(tp);
        let may_lead = self.registered_unfenced();
        let now = self.now.mono;
        // An entry for an epoch the registration has moved past is forgotten by
        // `resend_resignations`; until then it bars nothing (the comparison below).
        let resigned = self.replication.resigned.get(&tp).map(|(e, _)| *e);
        let Some(p) = self.partition_mut(tp) else { return };
        let Some(img) = image.filter(|i| i.replicas.contains(&me) && p.state == PartState::Online) else {
            if !matches!(p.role, Role::Idle { .. }) {
                p.role = Role::Idle { leader_epoch: p.role.leader_epoch() };
                self.role_changed(tp);
            }
            return;
        };
        let new = if img.leader == me && !may_lead {
            // A restarted broker's old registration still names it leader: it leads again only
            // once the controller has seen it back (a new registration, unfenced), by which
            // time the controller has moved leadership in a new epoch or re-elected it in one.
            Role::Idle { leader_epoch: img.leader_epoch }
        } else if img.leader == me && resigned.is_some_and(|e| img.leader_epoch <= e) {
            // It gave this epoch up after a failed write; the controller's new one comes.
            Role::Idle { leader_epoch: img.leader_epoch }
        } else if img.leader == me {
            if let Role::Leader(l) = &mut p.role {
                if l.leader_epoch == img.leader_epoch {
                    let changed = l.partition_epoch != img.partition_epoch;
                    if changed {
                        l.registered(&img.replicas, &img.isr, img.partition_epoch);
                    }
                    // An ISR shrunk below min.insync.replicas fails the produces waiting on it
                    // now (NOT_ENOUGH_REPLICAS_AFTER_APPEND), not at their timeout.
                    self.hw_moved |= changed;
                    self.advance_hw(tp);
                    return;
                }
            }
            tracing::info!(dir = %p.log.dir, epoch = img.leader_epoch, isr = ?img.isr, log_end = p.log.log_end_offset, "leading partition");
            Role::Leader(Box::new(Leadership::new(me, &img, p.log.log_end_offset, now)))
        } else if img.leader == NO_LEADER {
            Role::Idle { leader_epoch: img.leader_epoch }
        } else {
            match &p.role {
                Role::Follower(f) if f.leader == img.leader && f.leader_epoch == img.leader_epoch => return,
                _ => {
                    tracing::info!(dir = %p.log.dir, leader = img.leader, epoch = img.leader_epoch, "following partition");
                    Role::Follower(Following {
                        leader: img.leader,
                        leader_epoch: img.leader_epoch,
                        leader_hw: p.log.high_watermark,
                        gap_seen: None,
                    })
                }
            }
        };
        let becomes_follower = matches!(new, Role::Follower(_)) && !matches!(p.role, Role::Follower(_));
        let hw = p.log.high_watermark;
        if new != p.role {
            p.role = new;
            self.role_changed(tp);
        }
        if becomes_follower && crate::mutants::active(crate::mutants::Mutant::TruncateToHighWatermark) {
            // The rule before KIP-101: a new follower cuts its log back to its high watermark.
            self.truncate_log(tp, hw);
        }
        self.advance_hw(tp);
    }

    pub(super) fn role_changed(&mut self, tp: Tp) {
        // Produces waiting on a partition this node no longer leads fail over; held fetches
        // and followers' fetching are looked at again.
        self.hw_moved = true;
        self.replication.wake_parked = true;
        self.replication.fetch_due = true;
        self.coordinators_touched(tp);
    }

    // ---- offsets ------------------------------------------------------------------------

    /// The partition's durable end moved (a sync completed).
    pub(super) fn durable_moved(&mut self, tp: Tp) {
        // acks=1 produces wait for the durable end itself, whatever the high watermark does.
        self.hw_moved = true;
        self.advance_hw(tp);
        self.write_summaries(tp, false);
        match self.partition(tp).map(|p| &p.role) {
            Some(Role::Leader(_)) => self.replication.wake_parked = true,
            Some(Role::Follower(_)) => self.replication.fetch_due = true,
            _ => {}
        }
    }

    /// Moves the high watermark as far as the role allows: on a leader, the least durable
    /// end of the in-sync replicas (none while they are fewer than `min.insync.replicas`);
    /// on a follower, its leader's high watermark within what it has synced. Never back.
    pub(super) fn advance_hw(&mut self, tp: Tp) {
        let me = self.me_id();
        let min_isr = self.topic_settings(tp).map_or(1, |s| s.min_insync_replicas);
        let Some(p) = self.partition_mut(tp) else { return };
        let replicas = p.replicas.len().max(1);
        let candidate = match &p.role {
            Role::Leader(l) => {
                if crate::mutants::active(crate::mutants::Mutant::HwIgnoresFollowers) {
                    Some(p.log.durable_end)
                } else {
                    l.high_watermark(me, p.log.durable_end, min_isr, replicas)
                }
            }
            Role::Follower(f) => Some(f.leader_hw),
            Role::Idle { .. } => None,
        };
        let Some(hw) = candidate.map(|c| c.min(p.log.durable_end)) else { return };
        if hw > p.log.high_watermark {
            p.log.high_watermark = hw;
            p.log.producers.decided_below(hw);
            let deleted = p.log_start_wanted > p.log.log_start_offset;
            self.hw_moved = true;
            if deleted {
                self.apply_log_start(tp);
            }
        }
    }

    // ---- the follower side --------------------------------------------------------------

    /// Sends a fetch to every leader this node follows partitions of that has none in flight,
    /// once what the last answer brought is synced (a fetch reports the durable end).
    fn send_fetches(&mut self) {
        if !std::mem::take(&mut self.replication.fetch_due) || self.phase != super::Phase::Serving {
            return;
        }
        let now = self.now.mono;
        let max_bytes = u32::try_from(self.config.replication.replica_fetch_max_bytes).unwrap_or(u32::MAX);
        let mut by_leader: BTreeMap<i32, Vec<FetchPartition>> = BTreeMap::new();
        let mut syncing = BTreeSet::new();
        for t in self.topics.values() {
            for (i, p) in t.partitions.iter().enumerate() {
                let Role::Follower(f) = &p.role else { continue };
                if p.state != PartState::Online {
                    continue;
                }
                let report_unsynced = crate::mutants::active(crate::mutants::Mutant::FollowerReportsBeforeSync);
                if p.log.durable_end < p.log.log_end_offset && !report_unsynced {
                    syncing.insert(f.leader);
                }
                by_leader.entry(f.leader).or_default().push(FetchPartition {
                    topic: t.id,
                    partition: i32::try_from(i).expect("bounded"),
                    leader_epoch: f.leader_epoch,
                    fetch_offset: p.log.log_end_offset,
                    last_fetched_epoch: p.log.epochs.latest().unwrap_or(-1),
                    durable_end: if crate::mutants::active(crate::mutants::Mutant::FollowerReportsBeforeSync) {
                        p.log.log_end_offset
                    } else {
                        p.log.durable_end
                    },
                    max_bytes,
                });
            }
        }
        self.replication.fetchers.retain(|leader, _| by_leader.contains_key(leader));
        let me = self.me_id();
        let broker_epoch = self.cluster.image.brokers.get(&me).map_or(-1, |b| b.epoch);
        let wait = self.config.replication.replica_fetch_wait_max_ms;
        for (leader, partitions) in by_leader {
            if syncing.contains(&leader) {
                continue; // the sync's completion sets `fetch_due` again
            }
            if leader == me {
                continue; // a stale registration naming this node as another's leader
            }
            let f = self.replication.fetchers.entry(leader).or_default();
            if f.in_flight.is_some_and(|(_, deadline)| deadline > now) || f.not_before > now {
                continue; // its answer, its deadline or its backoff comes back here
            }
            self.replication.next_fetch_id += 1;
            let id = self.replication.next_fetch_id;
            f.in_flight = Some((id, now.plus_millis(wait + FETCH_ANSWER_GRACE_MS)));
            let max_wait_ms = u32::try_from(wait).unwrap_or(u32::MAX);
            let msg = ReplicaMessage::Fetch { id, broker_epoch, max_wait_ms, partitions };
            self.send_peer(leader, Body::Replica(msg));
        }
    }

    fn on_fetch_response(&mut self, from: i32, id: u64, partitions: Vec<FetchedPartition>, tail: Bytes) {
        let now = self.now.mono;
        match self.replication.fetchers.get_mut(&from) {
            Some(f) if f.in_flight.is_some_and(|(i, _)| i == id) => f.in_flight = None,
            _ => return, // an answer to a fetch given up on
        }
        self.replication.fetch_due = true;
        let mut at = 0usize;
        let mut errors = false;
        for fp in partitions {
            let len = fp.records_len as usize;
            let Some(data) = tail.get(at..at + len).map(|_| tail.slice(at..at + len)) else {
                tracing::warn!(from, "a fetch answer is shorter than its partitions say; rest ignored");
                break;
            };
            at += len;
            let tp = (fp.topic, fp.partition);
            let following = self.partition(tp).is_some_and(|p| {
                p.state == PartState::Online
                    && matches!(&p.role, Role::Follower(f) if f.leader == from && f.leader_epoch == fp.leader_epoch)
            });
            if !following {
                continue;
            }
            if fp.error == KafkaError::OffsetOutOfRange.code() && self.below_leader_start(tp, fp.log_start_offset) {
                self.restart_log_at(tp, fp.log_start_offset);
            } else if fp.error != 0 {
                tracing::debug!(from, partition = fp.partition, error = fp.error, "replica fetch refused");
                errors = true;
            } else if let Some((epoch, end)) = fp.diverging {
                self.truncate_diverged(tp, epoch, end);
            } else {
                self.append_fetched(tp, &data, fp.high_watermark);
            }
        }
        if let Some(f) = self.replication.fetchers.get_mut(&from) {
            f.not_before = if errors { now.plus_millis(FETCH_BACKOFF_MS) } else { Instant::ZERO };
        }
    }

    fn below_leader_start(&self, tp: Tp, leader_start: Offset) -> bool {
        self.partition(tp).is_some_and(|p| leader_start > p.log.log_end_offset)
    }

    /// The leader no longer has the records this replica would fetch next (its retention
    /// deleted them): this log is emptied and starts again at the leader's log start.
    fn restart_log_at(&mut self, tp: Tp, leader_start: Offset) {
        let wall = self.now.wall_ms;
        let mut next_file = self.next_file;
        let mut ops = Vec::new();
        let Some(p) = self.partition_mut(tp) else { return };
        tracing::info!(dir = %p.log.dir, log_end = p.log.log_end_offset, leader_start, "the leader's log starts past this one's end; starting again there");
        p.log.restart_at(leader_start, wall, &mut next_file, &mut ops);
        p.written_end = p.log.log_end_offset;
        let generation = p.log.generation;
        self.next_file = next_file;
        for action in ops {
            self.issue_log_op(tp, generation, action, None);
        }
        self.dirty.insert(tp);
        self.advance_hw(tp);
    }

    /// The leader says this log parts from its own after `end` of `epoch`: cut back to where
    /// both agree (KIP-279: the lesser of the two ends of that epoch), then fetch again.
    fn truncate_diverged(&mut self, tp: Tp, epoch: i32, end: Offset) {
        let Some(p) = self.partition_mut(tp) else { return };
        let l = &p.log;
        let target = if epoch < 0 {
            l.log_start_offset
        } else {
            let (_, own_end) = l.epochs.end_offset_for(epoch, l.log_end_offset);
            own_end.min(end)
        }
        .max(l.log_start_offset)
        .min(l.log_end_offset);
        if target >= l.log_end_offset {
            return;
        }
        if target < l.high_watermark {
            tracing::warn!(dir = %l.dir, target, high_watermark = l.high_watermark, "truncating below the high watermark");
        }
        tracing::info!(dir = %l.dir, epoch, end, target, log_end = l.log_end_offset, "log diverged from the leader's; truncating");
        self.truncate_log(tp, target);
    }

    /// Cuts a replica's log back so that `target` is its next offset.
    fn truncate_log(&mut self, tp: Tp, target: Offset) {
        let interval = self.topic_settings(tp).map_or(4096, |s| s.index_interval_bytes);
        let Some(p) = self.partition_mut(tp) else { return };
        if target >= p.log.log_end_offset {
            return;
        }
        let mut ops = Vec::new();
        p.log.truncate_to(target, interval, &mut ops);
        p.written_end = p.written_end.min(p.log.log_end_offset);
        let generation = p.log.generation;
        for action in ops {
            self.issue_log_op(tp, generation, action, None);
        }
        self.dirty.insert(tp);
    }

    /// Appends the batches a leader sent, with its offsets and epochs, after checking each
    /// (bytes from a peer are checked like bytes from a client).
    fn append_fetched(&mut self, tp: Tp, data: &Bytes, leader_hw: Offset) {
        let Some(settings) = self.topic_settings(tp).cloned() else { return };
        if self.cluster.closing {
            return; // stopping: the logs are being closed
        }
        let wall = self.now.wall_ms;
        let mut ops = Vec::new();
        let mut next_file = self.next_file;
        let mut writes = Vec::new();
        let Some(p) = self.partition_mut(tp) else { return };
        let epoch = p.role.leader_epoch();
        let mut at = 0;
        while at < data.len() {
            let h = match batch::check_batch(&data[at..]) {
                Ok(h) => h,
                Err(batch::BatchError::Truncated) => break, // the read ended inside a batch
                Err(e) => {
                    tracing::warn!(dir = %p.log.dir, error = ?e, "a bad batch from the leader; fetching again");
                    break;
                }
            };
            let end = p.log.log_end_offset;
            let unchecked = crate::mutants::active(crate::mutants::Mutant::GapOnFirstRead);
            let far = h.base_offset - end > i64::from(i32::MAX) && !unchecked;
            if h.base_offset < end || far || h.partition_leader_epoch > epoch {
                tracing::warn!(dir = %p.log.dir, base = h.base_offset, epoch = h.partition_leader_epoch, "a batch from the leader out of place; fetching again");
                break;
            }
            // A gap is the leader's cleaner's doing (compaction keeps offsets, not batches), or
            // a bad read of the batch's base offset there: taken when a second read agrees.
            if h.base_offset > end {
                let seen = Some((end, h.base_offset, h.crc));
                let Role::Follower(f) = &mut p.role else { break };
                let first = std::mem::replace(&mut f.gap_seen, seen) != seen;
                if first && !unchecked {
                    tracing::debug!(dir = %p.log.dir, end, base = h.base_offset, "a gap in the leader's log; reading it again");
                    break;
                }
            }
            let bytes = data.slice(at..at + h.size);
            if let Some(r) = Replay::of(&h, h.base_offset, &bytes) {
                p.log.producers.replay(&r);
            }
            let op = p.log.append_replicated(bytes, &h, &settings, wall, &mut next_file, &mut ops);
            writes.push((op, p.log.log_end_offset));
            at += h.size;
        }
        if let Role::Follower(f) = &mut p.role {
            f.leader_hw = f.leader_hw.max(leader_hw);
        }
        let generation = p.log.generation;
        self.next_file = next_file;
        for (i, action) in ops.into_iter().enumerate() {
            let written = writes.iter().find(|(op, _)| *op == i).map(|(_, end)| *end);
            self.issue_log_op(tp, generation, action, written);
        }
        self.advance_hw(tp);
    }

    // ---- the leader side ----------------------------------------------------------------

    /// Why a follower's fetch of this partition is refused, if it is.
    fn replica_fetch_error(&self, from: i32, fp: &FetchPartition) -> Option<KafkaError> {
        let Some(p) = self.partition((fp.topic, fp.partition)) else {
            return Some(KafkaError::UnknownTopicOrPartition);
        };
        let Role::Leader(l) = &p.role else {
            return Some(KafkaError::NotLeaderOrFollower);
        };
        if p.state != PartState::Online || !p.replicas.contains(&from) {
            return Some(KafkaError::NotLeaderOrFollower);
        }
        if fp.leader_epoch < l.leader_epoch {
            return Some(KafkaError::FencedLeaderEpoch);
        }
        (fp.leader_epoch > l.leader_epoch).then_some(KafkaError::UnknownLeaderEpoch)
    }

    /// Where the follower's log parts from this one, if it does: its last epoch ends earlier
    /// here, or this log never had that epoch (KIP-320's divergence check).
    fn divergence(&self, fp: &FetchPartition) -> Option<(i32, Offset)> {
        let p = self.partition((fp.topic, fp.partition))?;
        if fp.last_fetched_epoch < 0 {
            return None;
        }
        let (epoch, end) = p.log.epochs.end_offset_for(fp.last_fetched_epoch, p.log.log_end_offset);
        (epoch < fp.last_fetched_epoch || end < fp.fetch_offset).then_some((epoch, end))
    }

    /// A follower's fetch: note what it has, then answer now if there is something for it,
    /// or hold it until there is (or its wait is over).
    fn on_replica_fetch(
        &mut self,
        from: i32,
        id: u64,
        broker_epoch: i64,
        max_wait_ms: u32,
        partitions: Vec<FetchPartition>,
    ) {
        let now = self.now.mono;
        for fp in &partitions {
            if self.replica_fetch_error(from, fp).is_some() || self.divergence(fp).is_some() {
                continue;
            }
            let tp = (fp.topic, fp.partition);
            if let Some(p) = self.partition_mut(tp) {
                let durable = p.log.durable_end;
                if let Role::Leader(l) = &mut p.role {
                    l.on_fetch(from, fp.fetch_offset, fp.durable_end, broker_epoch, durable, now);
                }
            }
            self.advance_hw(tp);
            self.maybe_alter_isr(tp);
        }
        let wait = u64::from(max_wait_ms).min(self.config.replication.replica_fetch_wait_max_ms);
        if wait == 0 || self.fetch_has_news(from, &partitions) {
            self.answer_fetch(from, id, partitions);
        } else {
            self.replication.parked.push(Parked { from, id, partitions, deadline: now.plus_millis(wait) });
        }
    }

    fn fetch_has_news(&self, from: i32, partitions: &[FetchPartition]) -> bool {
        partitions.iter().any(|fp| {
            self.replica_fetch_error(from, fp).is_some()
                || self.divergence(fp).is_some()
                || self.partition((fp.topic, fp.partition)).is_some_and(|p| p.served_end() > fp.fetch_offset)
        })
    }

    /// Answers a follower's fetch: errors, divergence, or what this log has written from the
    /// offset asked, sent behind the envelope as ranges of the segment files (zero-copy, as
    /// a client's fetch).
    fn answer_fetch(&mut self, to: i32, id: u64, partitions: Vec<FetchPartition>) {
        // Bounded well under what a peer accepts in one message, whatever the config says.
        let mut budget =
            self.config.replication.replica_fetch_response_max_bytes.min(crate::limits::PEER_MESSAGE_BYTES_MAX / 2);
        let mut out = Vec::with_capacity(partitions.len());
        let mut tail = Vec::new();
        for fp in &partitions {
            let mut r = FetchedPartition {
                topic: fp.topic,
                partition: fp.partition,
                leader_epoch: fp.leader_epoch,
                error: 0,
                high_watermark: -1,
                log_start_offset: -1,
                diverging: None,
                records_len: 0,
            };
            if let Some(e) = self.replica_fetch_error(to, fp) {
                r.error = e.code();
            } else if let Some(d) = self.divergence(fp) {
                r.diverging = Some(d);
            } else if let Some(p) = self.partition((fp.topic, fp.partition)) {
                let l = &p.log;
                r.high_watermark = l.high_watermark;
                r.log_start_offset = l.log_start_offset;
                // Followers get what is written here, synced or not, so that their syncs run
                // beside the leader's rather than after it (the high watermark still waits
                // for this node's durable end too). Should the write or its sync fail, the
                // leader resigns this epoch rather than write other records at offsets a
                // follower holds (`resign_leadership`).
                let max = (fp.max_bytes as usize).min(budget);
                let served = p.served_end();
                if fp.fetch_offset <= served && max > 0 {
                    match l.read_replica(fp.fetch_offset, served, max, tail.is_empty()) {
                        crate::log::ReadResult::OutOfRange => {
                            // Where the follower can start again: a batch's first offset.
                            r.log_start_offset = l.batch_aligned_start();
                            r.error = KafkaError::OffsetOutOfRange.code();
                        }
                        crate::log::ReadResult::Empty => {}
                        crate::log::ReadResult::Range { file, position, len } => {
                            budget = budget.saturating_sub(len as usize);
                            r.records_len = len;
                            tail.push(Part::File { file, position, len });
                        }
                    }
                }
            }
            out.push(r);
        }
        let msg = ReplicaMessage::FetchResponse { id, partitions: out };
        self.send_peer_with_tail(to, Body::Replica(msg), tail);
    }

    /// Answers the held fetches that now have something new, or whose wait is over.
    fn wake_parked(&mut self, expired_only: bool) {
        let now = self.now.mono;
        let parked = std::mem::take(&mut self.replication.parked);
        for f in parked {
            if f.deadline <= now || (!expired_only && self.fetch_has_news(f.from, &f.partitions)) {
                self.answer_fetch(f.from, f.id, f.partitions);
            } else {
                self.replication.parked.push(f);
            }
        }
    }

    // ---- the ISR ------------------------------------------------------------------------

    /// Asks the controller for the ISR the leader's view of its followers calls for, unless
    /// a change is already waiting.
    fn maybe_alter_isr(&mut self, tp: Tp) {
        let me = self.me_id();
        let now = self.now.mono;
        let lag = self.config.replication.replica_lag_time_max_ms;
        let image = &self.cluster.image;
        let eligible = |id: i32, epoch: i64| image.brokers.get(&id).is_some_and(|b| !b.fenced && b.epoch == epoch);
        let Some(p) = self.partition(tp) else { return };
        let Role::Leader(l) = &p.role else { return };
        if p.replicas.len() <= 1
            || l.pending.as_ref().is_some_and(|(_, at)| now.millis_since(*at) < ALTER_PARTITION_RETRY_MS)
        {
            return;
        }
        let Some(isr) = l.isr_change(me, p.log.high_watermark, now, lag, eligible) else { return };
        let my_epoch = image.brokers.get(&me).map_or(-1, |b| b.epoch);
        let members: Vec<(i32, i64)> = isr
            .iter()
            .map(|id| (*id, if *id == me { my_epoch } else { l.followers.get(id).map_or(-1, |f| f.broker_epoch) }))
            .collect();
        let msg = BrokerMessage::AlterPartition {
            topic: tp.0,
            partition: tp.1,
            leader_epoch: l.leader_epoch,
            partition_epoch: l.partition_epoch,
            isr: members,
        };
        tracing::info!(dir = %p.log.dir, from = ?l.isr, to = ?isr, "asking the controller to change the ISR");
        if let Some(Role::Leader(l)) = self.partition_mut(tp).map(|p| &mut p.role) {
            l.ask(isr, now);
        }
        self.send_to_controller(msg);
    }

    /// Hands a message to the active controller: this node's own, or over the peer link.
    pub(super) fn send_to_controller(&mut self, msg: BrokerMessage) {
        let me = self.me_id();
        match self.controller() {
            Some(c) if c == me => self.on_broker_message(me, msg),
            Some(c) => self.send_peer(c, Body::Broker(msg)),
            None => {}
        }
    }

    /// A failed write cut this leader's log back to what is synced, below what it may have
    /// served its followers: it stops leading in this epoch and asks the controller for a
    /// new one (another in-sync replica, or itself again). Without it, what it writes next
    /// would stand at offsets a follower holds other records at, in the same epoch, where no
    /// divergence check can see it.
    pub(super) fn resign_leadership(&mut self, tp: Tp) {
        let Some(p) = self.partition_mut(tp) else { return };
        let epoch = p.role.leader_epoch();
        tracing::warn!(dir = %p.log.dir, epoch, "a leader's write failed; resigning this leader epoch");
        p.role = Role::Idle { leader_epoch: epoch };
        self.role_changed(tp);
        self.replication.resigned.insert(tp, (epoch, self.now.mono));
        self.send_resignation(tp, epoch);
    }

    fn send_resignation(&mut self, tp: Tp, leader_epoch: i32) {
        self.send_to_controller(BrokerMessage::ResignLeadership { topic: tp.0, partition: tp.1, leader_epoch });
    }

    /// Asks again for the new epochs not yet registered; forgets partitions gone since.
    fn resend_resignations(&mut self) {
        let now = self.now.mono;
        let image = &self.cluster.image;
        self.replication
            .resigned
            .retain(|tp, (e, _)| image.partition(&tp.0, tp.1).is_some_and(|(_, i)| i.leader_epoch <= *e));
        let due: Vec<(Tp, i32)> = self
            .replication
            .resigned
            .iter_mut()
            .filter(|(_, (_, at))| now.millis_since(*at) >= ALTER_PARTITION_RETRY_MS)
            .map(|(tp, (e, at))| {
                *at = now;
                (*tp, *e)
            })
            .collect();
        for (tp, e) in due {
            self.send_resignation(tp, e);
        }
    }

    /// The controller's side of `ResignLeadership`: a new leader epoch, led by another live
    /// in-sync replica if there is one (every one holds what was acknowledged), else by the
    /// same broker.
    pub(super) fn on_resign_leadership(&mut self, from: i32, topic: [u8; 16], partition: i32, leader_epoch: i32) {
        let image = &self.cluster.image;
        let Some((_, img)) = image.partition(&topic, partition) else { return };
        if img.leader != from || img.leader_epoch != leader_epoch {
            return; // already moved on
        }
        let live = |b: i32| image.brokers.get(&b).is_some_and(|x| !x.fenced);
        let leader = img.isr.iter().copied().find(|r| *r != from && live(*r)).unwrap_or(from);
        let rec = MetaRecord::PartitionChanged {
            id: topic,
            partition,
            leader,
            leader_epoch: leader_epoch + 1,
            partition_epoch: img.partition_epoch + 1,
            isr: img.isr.clone(),
        };
        self.propose_partition_change((topic, partition), rec);
    }

    fn check_isrs(&mut self) {
        let tps: Vec<Tp> = self
            .topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.leads() && p.replicas.len() > 1)
                    .map(|(i, _)| (t.id, i as i32))
            })
            .collect();
        for tp in tps {
            self.maybe_alter_isr(tp);
        }
    }

    // ---- the controller -----------------------------------------------------------------

    /// A leader asks for a new ISR: committed if it builds on the current registration, the
    /// leader stays in it, and every member joining is a registered, unfenced broker of the
    /// epoch the leader saw (KIP-841/903).
    pub(super) fn on_alter_partition(
        &mut self,
        from: i32,
        topic: [u8; 16],
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<(i32, i64)>,
    ) {
        let tp = (topic, partition);
        let Some((_, img)) = self.cluster.image.partition(&topic, partition) else { return };
        let image = &self.cluster.image;
        let joining_ok = isr.iter().all(|(id, epoch)| {
            img.isr.contains(id) || image.brokers.get(id).is_some_and(|b| !b.fenced && b.epoch == *epoch)
        });
        let valid = img.leader == from
            && img.leader_epoch == leader_epoch
            && img.partition_epoch == partition_epoch
            && isr.iter().any(|(id, _)| *id == from)
            && isr.iter().all(|(id, _)| img.replicas.contains(id))
            && joining_ok;
        if !valid {
            tracing::debug!(from, partition, leader_epoch, partition_epoch, "ISR change refused");
            return;
        }
        let rec = MetaRecord::PartitionChanged {
            id: topic,
            partition,
            leader: from,
            leader_epoch,
            partition_epoch: partition_epoch + 1,
            isr: isr.iter().map(|(id, _)| *id).collect(),
        };
        self.propose_partition_change(tp, rec);
    }

    /// This controller's change to the partition that is not in the image yet: still to be
    /// committed (its job finishes then), or committed and about to be applied (within the
    /// input that committed it, whose jobs finish before its records apply).
    pub(super) fn partition_change_pending(&self, tp: Tp) -> Option<ChangePending> {
        let &(at, job) = self.replication.in_flight.get(&tp)?;
        if at < self.cluster.applied {
            return None;
        }
        if self.jobs.contains_key(&job) {
            return Some(ChangePending::Job(job));
        }
        let hw = self.meta.quorum.as_ref().map_or(0, |q| q.high_watermark());
        (at < hw).then_some(ChangePending::Applying) // else lost with its job
    }

    /// Holds a request naming these partitions (topic, partition) while a change of one of
    /// them is not yet in the image: it is handled again once it is (a change computed from
    /// the image before would be a no-op). Returns whether it was held.
    pub(super) fn held_for_pending_change<'a>(
        &mut self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
        conn: crate::types::ConnId,
        seq: u64,
        ctx: &crate::protocol::RequestContext,
        body: &Bytes,
    ) -> bool {
        let pending = partitions.into_iter().find_map(|(topic, p)| {
            let id = self.cluster.image.topics.get(topic)?.id;
            self.partition_change_pending((id, p))
        });
        let (ctx, body) = (ctx.clone(), body.clone());
        match pending {
            None => return false,
            Some(ChangePending::Job(job)) => self.park(conn, seq, job, super::Then::Redispatch { ctx, body }),
            Some(ChangePending::Applying) => self.deferred.push((conn, seq, ctx, body)),
        }
        true
    }

    /// Proposes a change of the partition's registration, unless one is still pending (the
    /// next is computed from the image, which must hold the last). Returns the job its commit
    /// finishes.
    pub(super) fn propose_partition_change(&mut self, tp: Tp, rec: MetaRecord) -> Option<super::JobId> {
        if self.partition_change_pending(tp).is_some() {
            return None;
        }
        let job = self.new_job(1, super::JobDone::Nothing);
        let offset = self.meta_append(&rec, job)?;
        self.replication.in_flight.insert(tp, (offset, job));
        Some(job)
    }

    /// Elects leaders and trims ISRs after brokers are fenced or come back (clean elections
    /// only: a leader comes from the ISR).
    fn reconcile_partitions(&mut self) {
        if !std::mem::take(&mut self.replication.reconcile_due) || !self.config.is_cluster() {
            return;
        }
        if !self.controller_epoch_check() {
            return;
        }
        let image = &self.cluster.image;
        let fenced = |b: i32| image.brokers.get(&b).is_none_or(|x| x.fenced);
        let mut changes = Vec::new();
        let rebalance = std::mem::take(&mut self.replication.rebalance_due);
        for t in image.topics.values() {
            for (i, p) in t.parts.iter().enumerate() {
                let i = i32::try_from(i).expect("bounded");
                if let Some(w) = p.wanted(fenced) {
                    changes.push(((t.id, i), w.change_record(t.id, i)));
                } else if let Some(w) = p.reassignment_done(fenced) {
                    changes.push(((t.id, i), w.reassign_record(t.id, i)));
                } else if let (true, Ok(w)) = (rebalance, p.prefer(fenced)) {
                    // auto.leader.rebalance.enable: leadership goes back to the preferred
                    // replica once it is in sync again.
                    changes.push(((t.id, i), w.change_record(t.id, i)));
                }
            }
        }
        for (tp, rec) in changes {
            tracing::info!(?rec, "partition change");
            self.propose_partition_change(tp, rec);
        }
    }

    /// A committed partition change: the controller may propose the next one for it.
    pub(super) fn partition_change_applied(&mut self, id: [u8; 16], partition: i32) {
        self.replication.in_flight.remove(&(id, partition));
        self.replication.reconcile_due = true;
        if self.names.contains_key(&id) {
            self.refresh_role((id, partition));
        }
    }

    /// The controller starts a new epoch of leadership: nothing of the last one is in flight.
    pub(super) fn replication_controller_reset(&mut self) {
        self.replication.in_flight.clear();
        self.replication.reconcile_due = true;
        self.replication.next_rebalance = None;
    }

    /// ElectLeaders (preferred): on the controller, elects each named partition's preferred
    /// replica where it is in sync and does not lead; `None` names every partition (and then
    /// only those elected are answered, as Kafka does). Returns per partition the error code
    /// and the job committing the change.
    pub(super) fn elect_preferred(
        &mut self,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, i32, i16, Option<super::JobId>)> {
        let image = &self.cluster.image;
        let fenced = |b: i32| image.brokers.get(&b).is_none_or(|x| x.fenced);
        let all = wanted.is_none();
        let targets: Vec<(String, Vec<i32>)> = wanted
            .unwrap_or_else(|| image.topics.iter().map(|(n, t)| (n.clone(), (0..t.partitions).collect())).collect());
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for (name, parts) in targets {
            for p in parts {
                let found = image.topics.get(&name).and_then(|t| Some((t.id, t.parts.get(usize::try_from(p).ok()?)?)));
                let Some((id, img)) = found else {
                    out.push((name.clone(), p, KafkaError::UnknownTopicOrPartition.code(), None));
                    continue;
                };
                match img.prefer(fenced) {
                    // Another change is uncommitted (only when electing every partition: a
                    // request naming it waits for that change first): not elected now.
                    Ok(_) if all && self.partition_change_pending((id, p)).is_some() => {}
                    Ok(w) => changes.push((name.clone(), (id, p), w.change_record(id, p))),
                    Err(_) if all => {}
                    Err(crate::metadata::NoElection::NotNeeded) => out.push((name.clone(), p, 84, None)),
                    Err(crate::metadata::NoElection::NotAvailable) => out.push((name.clone(), p, 80, None)),
                }
            }
        }
        for (name, tp, rec) in changes {
            let job = self.propose_partition_change(tp, rec);
            let code = if job.is_some() { 0 } else { KafkaError::KafkaStorageError.code() };
            out.push((name, tp.1, code, job));
        }
        out
    }

    // ---- plumbing -----------------------------------------------------------------------

    pub(super) fn on_replica_message(&mut self, from: i32, msg: ReplicaMessage, tail: Bytes) {
        if self.phase != super::Phase::Serving {
            return; // the follower asks again; an answer is stale by then
        }
        match msg {
            ReplicaMessage::Fetch { id, broker_epoch, max_wait_ms, partitions } => {
                self.on_replica_fetch(from, id, broker_epoch, max_wait_ms, partitions)
            }
            ReplicaMessage::FetchResponse { id, partitions } => self.on_fetch_response(from, id, partitions, tail),
        }
    }

    pub(super) fn after_input_replication(&mut self) {
        if std::mem::take(&mut self.replication.wake_parked) {
            self.wake_parked(false);
        }
        self.reconcile_partitions();
        self.send_fetches();
    }

    pub(super) fn replication_timeout(&mut self) {
        let now = self.now.mono;
        self.wake_parked(true);
        self.resend_resignations();
        for f in self.replication.fetchers.values_mut() {
            // A fetch given up on, or a backoff over: fetch again.
            if f.in_flight.is_some_and(|(_, d)| d <= now) {
                f.in_flight = None;
                self.replication.fetch_due = true;
            }
            if f.not_before != Instant::ZERO && f.not_before <= now {
                f.not_before = Instant::ZERO;
                self.replication.fetch_due = true;
            }
        }
        let every = self.config.replication.leader_imbalance_check_interval_ms;
        if !self.is_controller() {
            self.replication.next_rebalance = None;
        } else if self.config.replication.auto_leader_rebalance {
            match self.replication.next_rebalance {
                None => self.replication.next_rebalance = Some(now.plus_millis(every)),
                Some(t) if t <= now => {
                    self.replication.next_rebalance = Some(now.plus_millis(every));
                    self.replication.rebalance_due = true;
                    self.replication.reconcile_due = true;
                }
                Some(_) => {}
            }
        }
        let interval = (self.config.replication.replica_lag_time_max_ms / 2).max(1);
        if self.replication.next_isr_check.is_none_or(|t| t <= now) {
            self.replication.next_isr_check = Some(now.plus_millis(interval));
            self.check_isrs();
            // Changes a controller could not propose then (its log refused them) are tried
            // again on the same beat.
            self.replication.reconcile_due |= self.is_controller();
        }
    }

    pub(super) fn replication_poll_timeout(&self) -> Option<Instant> {
        if !self.config.is_cluster() || self.phase != super::Phase::Serving {
            return None;
        }
        let r = &self.replication;
        let parked = r.parked.iter().map(|p| p.deadline).min();
        let fetchers = r
            .fetchers
            .values()
            .flat_map(|f| [f.in_flight.map(|(_, d)| d), (f.not_before != Instant::ZERO).then_some(f.not_before)])
            .flatten()
            .min();
        // Only the controller's check wakes the node (a deposed one's would be due forever).
        let rebalance =
            r.next_rebalance.filter(|_| self.config.replication.auto_leader_rebalance && self.is_controller());
        let resigned = r.resigned.values().map(|(_, at)| at.plus_millis(ALTER_PARTITION_RETRY_MS)).min();
        [parked, fetchers, rebalance, resigned, r.next_isr_check.or(Some(self.now.mono))].into_iter().flatten().min()
    }
}
