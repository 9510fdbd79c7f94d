//! Produce: check every batch, append, and answer once the sync covering it has completed.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Node, Then, Tp, Waiter};
use crate::log::batch::{self, BatchError, BatchHeader};
use crate::log::producers::{MarkerCheck, ProducerBatch, Verdict};
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, FrameError, RequestContext};
use crate::replica::Role;
use crate::types::{ConnId, Instant, Offset};

/// A produce waiting for its partitions' high watermarks.
pub(super) struct PendingProduce {
    pub conn: ConnId,
    seq: u64,
    ctx: RequestContext,
    resp: ProduceResponse,
    /// One per partition written.
    waits: Vec<Wait>,
    /// acks=-1 waits for the high watermark, acks=1 for this node's durable end.
    all: bool,
    /// When it is answered REQUEST_TIMED_OUT for what is still waiting (its timeout_ms).
    pub deadline: Instant,
}

/// A partition a produce waits on.
pub(super) struct Wait {
    /// Topic index and partition index in the response.
    ti: usize,
    pi: usize,
    tp: Tp,
    /// The offset that must be covered.
    end: Offset,
    /// The log generation and leader epoch at append: a cut or a lost leadership since fails it.
    generation: u64,
    leader_epoch: i32,
}

impl Node {
    pub(super) fn handle_produce(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: ProduceRequest = protocol::decode_body(body.clone(), ctx.version)?;
        // A topic still being created: answer once it exists.
        if let Some(job) =
            req.topic_data.iter().find_map(|t| self.topics.get(t.name.0.as_str()).and_then(|t| t.creating))
        {
            self.park(conn, seq, job, Then::Redispatch { ctx, body });
            return Ok(());
        }
        let acks = req.acks;
        let batches = partition_batches(&req);
        let refuse_all = refused_whole(&req, &batches);
        if self.produce_waits(conn, seq, &ctx, &body, &req, refuse_all.is_none(), &batches) {
            return Ok(());
        }
        // A partition named twice counts once, as its last entry (as in Kafka, which keys the
        // request by partition); a topic named twice is answered as one.
        let mut last: BTreeMap<(&str, i32), (usize, usize)> = BTreeMap::new();
        for (ti, td) in req.topic_data.iter().enumerate() {
            for (pi, pd) in td.partition_data.iter().enumerate() {
                last.insert((td.name.0.as_str(), pd.index), (ti, pi));
            }
        }
        let mut resp = ProduceResponse::default();
        let mut waits = Vec::new();
        for (ti, td) in req.topic_data.iter().enumerate() {
            let name = td.name.0.as_str();
            for (pi, pd) in td.partition_data.iter().enumerate() {
                if last.get(&(name, pd.index)) != Some(&(ti, pi)) {
                    continue;
                }
                let rti = match resp.responses.iter().position(|t| t.name.0.as_str() == name) {
                    Some(i) => i,
                    None => {
                        let mut tr = TopicProduceResponse::default();
                        tr.name = td.name.clone();
                        resp.responses.push(tr);
                        resp.responses.len() - 1
                    }
                };
                let mut pr = PartitionProduceResponse::default();
                pr.index = pd.index;
                pr.base_offset = -1;
                pr.log_append_time_ms = -1;
                pr.log_start_offset = -1;
                let result = if let Some(e) = refuse_all {
                    Err(e)
                } else if !matches!(acks, -1 | 0 | 1) {
                    Err(KafkaError::InvalidRequiredAcks)
                } else if name == super::groups::OFFSETS_TOPIC || name == super::transactions::TXN_TOPIC {
                    // Only the coordinators write their internal topics.
                    Err(KafkaError::InvalidTopic)
                } else if acks == -1 && self.isr_short(name, pd.index) {
                    // Nothing is written: the producer may retry safely.
                    Err(KafkaError::NotEnoughReplicas)
                } else if let Some(txn) = &req.transactional_id {
                    // A transactional producer's batch: its transaction must hold the partition.
                    self.check_txn_produce(txn.0.as_str(), name, pd.index, pd.records.as_ref(), ctx.version >= 12)
                        .and_then(|()| self.append_as(name, pd.index, pd.records.as_ref(), Origin::Transactional))
                } else {
                    self.append_partition(name, pd.index, pd.records.as_ref())
                };
                self.count_produce(name, result.is_err());
                match result {
                    Ok((tp, base, end, generation, log_start, append_time)) => {
                        pr.base_offset = base;
                        if ctx.version >= 5 {
                            pr.log_start_offset = log_start;
                        }
                        pr.log_append_time_ms = append_time;
                        let leader_epoch = self.partition(tp).map_or(-1, |p| p.role.leader_epoch());
                        let pi = resp.responses[rti].partition_responses.len();
                        waits.push(Wait { ti: rti, pi, tp, end, generation, leader_epoch });
                    }
                    Err(e) => {
                        tracing::debug!(topic = %name, partition = pd.index, error = ?e, "produce refused");
                        pr.error_code = e.for_version(ctx.version >= 11).code();
                    }
                }
                resp.responses[rti].partition_responses.push(pr);
            }
        }
        if req.transactional_id.is_some() {
            self.drop_txn_verdicts(&batches);
        }
        if acks == 0 {
            // acks=0 gets no response at all; the writes still become durable as usual.
            self.respond(conn, seq, None);
        } else if waits.is_empty() {
            self.add_leader_hints(ctx.version, &mut resp);
            self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
        } else {
            // A duplicate may wait for offsets that are already durable: look at once.
            self.hw_moved |= waits.iter().any(|w| self.partition(w.tp).is_some_and(|p| p.log.high_watermark >= w.end));
            let deadline = self.produce_deadline(acks, req.timeout_ms);
            self.produces.push(PendingProduce { conn, seq, ctx, resp, waits, all: acks == -1, deadline });
        }
        Ok(())
    }

    /// Counts a partition's produce in its topic's metrics; a topic this node does not have
    /// gets no counters (see `count_fetch`).
    fn count_produce(&mut self, topic: &str, failed: bool) {
        if self.topics.contains_key(topic) {
            let counters = self.metrics.topic(topic);
            counters.produce_requests += 1;
            counters.failed_produce_requests += u64::from(failed);
        }
    }

    /// Checks and appends one partition's record batches, all or none. Returns the partition,
    /// the first batch's base offset, the offset that must become durable, the log generation,
    /// the log start offset and the LogAppendTime (or -1).
    #[allow(clippy::type_complexity)]
    pub(super) fn append_partition(
        &mut self,
        topic: &str,
        partition: i32,
        records: Option<&Bytes>,
    ) -> Result<(Tp, Offset, Offset, u64, Offset, i64), KafkaError> {
        self.append_as(topic, partition, records, Origin::Client)
    }

    /// `append_partition` for a writer other than a plain client: a transactional producer
    /// (whose transaction the caller has checked) or the transaction coordinator (a marker).
    #[allow(clippy::type_complexity)]
    pub(super) fn append_as(
        &mut self,
        topic: &str,
        partition: i32,
        records: Option<&Bytes>,
        origin: Origin,
    ) -> Result<(Tp, Offset, Offset, u64, Offset, i64), KafkaError> {
        let t = self.topics.get(topic).ok_or(KafkaError::UnknownTopicOrPartition)?;
        let settings = t.settings.clone();
        let tp = (t.id, partition);
        let p = t.partition(partition).ok_or(KafkaError::UnknownTopicOrPartition)?;
        if let Some(e) = p.serve_error() {
            return Err(e);
        }
        let records = records.filter(|r| !r.is_empty()).ok_or(KafkaError::InvalidRecord)?;
        let batches = split_batches(records, settings.max_message_bytes, origin)?;
        // The coordinator's own transactional data (offsets committed in a transaction) has
        // no sequence numbers to check, as in Kafka.
        let producer = match origin {
            Origin::CoordinatorData => batches.first().and_then(|(_, h)| h.producer()),
            _ => idempotent_batch(&batches)?,
        };
        let wall = self.now.wall_ms;
        let mut ops = Vec::new();
        let mut next_file = self.next_file;
        let p = self.partition_mut(tp).expect("looked up above");
        let marker = checked_marker(p, origin, producer.as_ref(), records)?;
        if let Some(done) = written_already(p, tp, origin, producer.as_ref(), marker, wall)? {
            return Ok(done);
        }
        let marker = marker.map(|(m, _)| m);
        let mut base = None;
        // The data write of each batch, and the log end offset once it is written.
        let mut data_writes = Vec::with_capacity(batches.len());
        let epoch = p.role.leader_epoch();
        for (range, h) in &batches {
            let b = records.slice(range.clone());
            let (o, data_op) = p.log.append(&b, h, epoch, &settings, wall, &mut next_file, &mut ops);
            base.get_or_insert(o);
            data_writes.push((data_op, p.log.log_end_offset));
        }
        let (end, generation, log_start) = (p.log.log_end_offset, p.log.generation, p.log.log_start_offset);
        match (marker, &producer, base) {
            (Some(m), _, Some(at)) => {
                p.log.producers.end_txn(m.producer_id, m.epoch, m.commit, at, m.coordinator_epoch)
            }
            (None, Some(pb), Some(first)) => p.log.producers.record(pb, first, end - 1),
            _ => {}
        }
        self.next_file = next_file;
        if matches!(origin, Origin::Client | Origin::Transactional) {
            let counters = self.metrics.topic(topic);
            counters.messages_in +=
                batches.iter().map(|(_, h)| u64::try_from(h.records_count).unwrap_or(0)).sum::<u64>();
            counters.bytes_in += records.len() as u64;
        }
        for (i, action) in ops.into_iter().enumerate() {
            let written = data_writes.iter().find(|(op, _)| *op == i).map(|(_, end)| *end);
            self.issue_log_op(tp, generation, action, written);
        }
        let append_time = if settings.log_append_time { wall } else { -1 };
        Ok((tp, base.expect("at least one batch"), end, generation, log_start, append_time))
    }

    /// When a produce waiting for its acknowledgement times out: only acks=all waits on
    /// other brokers, and only it times out (as in Kafka).
    fn produce_deadline(&self, acks: i16, timeout_ms: i32) -> Instant {
        if acks == -1 {
            self.now.mono.plus_millis(u64::try_from(timeout_ms).unwrap_or(0))
        } else {
            Instant(u64::MAX)
        }
    }

    /// Whether an acks=all produce to the partition is refused before anything is written:
    /// this node leads it with fewer in-sync replicas than `min.insync.replicas` (capped at
    /// the replica count).
    fn isr_short(&self, topic: &str, partition: i32) -> bool {
        let Some(t) = self.topics.get(topic) else { return false };
        let Some(p) = t.partition(partition) else { return false };
        let Role::Leader(l) = &p.role else { return false };
        l.isr.len() < t.settings.min_insync_replicas.min(p.replicas.len().max(1))
    }

    /// What a produce waiting on `w` is answered, once it is known: covered (`Ok`), failed, or
    /// still waiting (`None`).
    fn wait_verdict(&self, w: &Wait, all: bool, expired: bool) -> Option<Result<(), KafkaError>> {
        let Some(p) = self.partition(w.tp) else {
            return Some(Err(KafkaError::UnknownTopicOrPartition));
        };
        let leads = matches!(&p.role, Role::Leader(l) if l.leader_epoch == w.leader_epoch);
        if !leads {
            // The records may yet survive on the new leader: the client is not told they failed.
            return Some(Err(KafkaError::NotLeaderOrFollower));
        }
        if p.log.generation != w.generation {
            return Some(Err(KafkaError::KafkaStorageError));
        }
        let covered = if all { p.log.high_watermark } else { p.log.durable_end };
        if covered >= w.end {
            return Some(Ok(()));
        }
        let min_isr = self.topic_settings(w.tp).map_or(1, |s| s.min_insync_replicas);
        let short = matches!(&p.role, Role::Leader(l) if l.isr.len() < min_isr.min(p.replicas.len().max(1)));
        if all && short {
            return Some(Err(KafkaError::NotEnoughReplicasAfterAppend));
        }
        expired.then_some(Err(KafkaError::RequestTimedOut))
    }

    /// Answers every pending produce whose partitions are all covered (or failed), and those
    /// past their timeout.
    pub(super) fn complete_produces(&mut self) {
        let pending = std::mem::take(&mut self.produces);
        let now = self.now.mono;
        for mut pp in pending {
            let mut waiting = Vec::new();
            let expired = pp.deadline <= now;
            for w in pp.waits.drain(..) {
                match self.wait_verdict(&w, pp.all, expired) {
                    None => waiting.push(w),
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        let pr = &mut pp.resp.responses[w.ti].partition_responses[w.pi];
                        pr.error_code = e.code();
                        pr.base_offset = -1;
                    }
                }
            }
            pp.waits = waiting;
            if pp.waits.is_empty() {
                self.add_leader_hints(pp.ctx.version, &mut pp.resp);
                let frame = protocol::encode_response(&pp.ctx, &pp.resp);
                self.respond_bytes(pp.conn, pp.seq, frame);
            } else {
                self.produces.push(pp);
            }
        }
    }

    /// KIP-951 (Produce v10+): a partition refused NOT_LEADER_OR_FOLLOWER names the leader
    /// and leader epoch the metadata gives, when another broker leads it, and the response
    /// carries those leaders' endpoints: the client sends there without first refreshing its
    /// metadata. The fields are tagged and left out when empty.
    fn add_leader_hints(&self, version: i16, resp: &mut ProduceResponse) {
        use kafka_protocol::messages::produce_response::{LeaderIdAndEpoch, NodeEndpoint};
        if version < 10 {
            return;
        }
        let me = self.config.node_id.0;
        let mut leaders = std::collections::BTreeSet::new();
        for t in &mut resp.responses {
            let Some(id) = self.topics.get(t.name.0.as_str()).map(|t| t.id) else { continue };
            for pr in &mut t.partition_responses {
                if pr.error_code != KafkaError::NotLeaderOrFollower.code() {
                    continue;
                }
                if let Some((leader, epoch)) = self.partition_leader((id, pr.index)).filter(|(l, _)| *l != me) {
                    pr.current_leader = LeaderIdAndEpoch::default()
                        .with_leader_id(kafka_protocol::messages::BrokerId(leader))
                        .with_leader_epoch(epoch);
                    leaders.insert(leader);
                }
            }
        }
        for id in leaders {
            if let Some((host, port, rack)) = self.broker_endpoint(id) {
                resp.node_endpoints.push(
                    NodeEndpoint::default()
                        .with_node_id(kafka_protocol::messages::BrokerId(id))
                        .with_host(StrBytes::from_string(host))
                        .with_port(port)
                        .with_rack(rack.map(StrBytes::from_string)),
                );
            }
        }
    }

    /// Whether a produce request waits: behind an earlier one of its connection that waits,
    /// or (KIP-890) for a transaction's coordinator to confirm that the transaction holds
    /// partitions it writes to for the first time (from v12, a transaction-version-2
    /// producer's, to add them).
    #[allow(clippy::too_many_arguments)]
    fn produce_waits(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: &Bytes,
        req: &ProduceRequest,
        may_write: bool,
        batches: &[(&str, i32, Option<&Bytes>)],
    ) -> bool {
        if self.produce_blocked(conn, seq, ctx, body) {
            return true;
        }
        let txn = req.transactional_id.as_ref().filter(|_| may_write);
        let add = ctx.version >= 12;
        txn.is_some_and(|t| self.verify_txn_first(conn, seq, ctx, body, t.0.as_str(), batches, add))
    }

    pub(super) fn park(&mut self, conn: ConnId, seq: u64, job: super::JobId, then: Then) {
        self.waiters.push(Waiter { conn, seq, jobs: [job].into(), failed: Default::default(), then });
    }
}

/// Each partition's records in a produce request: (topic, partition, records).
fn partition_batches(req: &ProduceRequest) -> Vec<(&str, i32, Option<&Bytes>)> {
    req.topic_data
        .iter()
        .flat_map(|t| t.partition_data.iter().map(move |pd| (t.name.0.as_str(), pd.index, pd.records.as_ref())))
        .collect()
}

/// Kafka's request-level refusals, which fail every partition of the request and write
/// nothing: transactional batches with no transactional id, or of more than one producer (id
/// and epoch; the coordinator checks a request's transaction for one producer).
fn refused_whole(req: &ProduceRequest, batches: &[(&str, i32, Option<&Bytes>)]) -> Option<KafkaError> {
    let producers: std::collections::BTreeSet<(i64, i16)> = batches
        .iter()
        .filter_map(|(_, _, r)| r.and_then(|r| batch::parse_header(r).ok()))
        .filter(|h| h.is_transactional())
        .map(|h| (h.producer_id, h.producer_epoch))
        .collect();
    if req.transactional_id.is_none() && !producers.is_empty() {
        Some(KafkaError::TransactionalIdAuthorizationFailed)
    } else if producers.len() > 1 {
        Some(KafkaError::InvalidProducerIdMapping)
    } else {
        None
    }
}

/// Where a write that is in the log already stands: a marker a coordinator asks for again
/// (durable once everything up to the log's end is), or a retried batch (its original
/// offsets, once durable); `None` for a write to append.
fn written_already(
    p: &super::Partition,
    tp: Tp,
    origin: Origin,
    producer: Option<&ProducerBatch>,
    marker: Option<(super::txn_markers::Marker, MarkerCheck)>,
    wall: i64,
) -> Result<Option<(Tp, Offset, Offset, u64, Offset, i64)>, KafkaError> {
    let (generation, log_start) = (p.log.generation, p.log.log_start_offset);
    match (marker, producer) {
        (Some((_, MarkerCheck::Written)), _) => {
            let end = p.log.log_end_offset;
            Ok(Some((tp, end, end, generation, log_start, wall)))
        }
        (None, Some(pb)) if origin != Origin::CoordinatorData => match p.log.producers.check(pb)? {
            Verdict::Duplicate(m) => {
                tracing::debug!(
                    producer_id = pb.producer_id,
                    seq = pb.first_seq,
                    offset = m.first_offset,
                    "duplicate batch"
                );
                // Kafka answers a duplicate with the batch's max timestamp as its append time.
                Ok(Some((tp, m.first_offset, m.last_offset + 1, generation, log_start, m.max_timestamp)))
            }
            Verdict::Append => Ok(None),
        },
        _ => Ok(None),
    }
}

/// A coordinator's marker, once the partition's producer state takes it, with whether it is
/// there already; `None` for other writes.
fn checked_marker(
    p: &super::Partition,
    origin: Origin,
    producer: Option<&ProducerBatch>,
    records: &Bytes,
) -> Result<Option<(super::txn_markers::Marker, MarkerCheck)>, KafkaError> {
    Ok(match (origin, producer) {
        (Origin::Coordinator { commit, strict }, Some(pb)) => {
            let coordinator_epoch = batch::control_marker_of(records).map_or(-1, |(_, c)| c);
            let check = p.log.producers.check_marker(pb.producer_id, pb.epoch, coordinator_epoch, strict)?;
            let m = super::txn_markers::Marker {
                producer_id: pb.producer_id,
                epoch: pb.epoch,
                commit,
                coordinator_epoch,
                strict,
            };
            Some((m, check))
        }
        (Origin::Coordinator { .. }, None) => return Err(KafkaError::InvalidRecord),
        _ => None,
    })
}

/// The producer fields of an idempotent producer's batch, which must carry a first
/// sequence (Kafka refuses -1 with INVALID_RECORD; any epoch is taken as it comes).
fn idempotent_batch(batches: &[(std::ops::Range<usize>, BatchHeader)]) -> Result<Option<ProducerBatch>, KafkaError> {
    match batches {
        [(_, h)] if h.has_producer_id() && h.base_sequence < 0 && !h.is_control() => Err(KafkaError::InvalidRecord),
        [(_, h)] => Ok(h.producer()),
        _ => Ok(None),
    }
}

/// Who is appending: what batches it may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// A client outside any transaction: no transactional or control batches.
    Client,
    /// A transactional producer whose transaction holds the partition.
    Transactional,
    /// The transaction coordinator writing a marker (`strict`: transaction version 2's).
    Coordinator { commit: bool, strict: bool },
    /// The coordinator writing a transaction's data (TxnOffsetCommit's offsets).
    CoordinatorData,
}

/// Splits a partition's records into checked batches.
fn split_batches(
    records: &Bytes,
    max_message_bytes: usize,
    origin: Origin,
) -> Result<Vec<(std::ops::Range<usize>, BatchHeader)>, KafkaError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        // Size first: a batch over the limit is refused as too large even before its CRC.
        if let Ok(h) = batch::parse_header(rest) {
            if h.size > max_message_bytes {
                return Err(BatchError::TooLarge(h.size).into());
            }
        }
        let h = batch::check_batch(rest)?;
        let allowed = match origin {
            Origin::Client => !h.is_control() && !h.is_transactional(),
            Origin::Transactional => !h.is_control(),
            Origin::CoordinatorData => !h.is_control() && h.is_transactional(),
            Origin::Coordinator { .. } => h.is_control() && h.is_transactional(),
        };
        if !allowed {
            return Err(KafkaError::InvalidRecord);
        }
        out.push((at..at + h.size, h));
        at += h.size;
    }
    // Kafka takes exactly one batch per partition from Produce v3 on.
    if out.len() != 1 {
        return Err(KafkaError::InvalidRecord);
    }
    Ok(out)
}
