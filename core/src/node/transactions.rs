//! The transaction coordinator: InitProducerId with a transactional id, AddPartitionsToTxn,
//! AddOffsetsToTxn, TxnOffsetCommit, EndTxn, and the markers that end a transaction.
//!
//! Each transactional id's state (`crate::txn::TxnMeta`) is a record in `__transaction_state`
//! (50 partitions, placed by the id's Java hash as Kafka places them), durable before the
//! request that changed it is answered; one change per id is in flight at a time (others get
//! CONCURRENT_TRANSACTIONS and retry). Ending a transaction stores PrepareCommit or
//! PrepareAbort, then appends a marker (a control batch with the producer's id and epoch) to
//! every partition of the transaction, waits until every marker is durable, then stores
//! CompleteCommit or CompleteAbort, and only then answers EndTxn: a committed transaction is
//! readable everywhere once its producer hears so. Start-up reads the records back and
//! finishes any transaction left preparing.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;

use super::groups::{offsets_partition, AfterDurable, Committed, PendingCommit, OFFSETS_TOPIC};
use super::produce::Origin;
use super::producer_ids::init_producer_id_response;
use super::txn_markers::Marker;
use super::{Node, Tp};
use crate::log::batch;
use crate::protocol::errors::{fenced_for_version, KafkaError};
use crate::protocol::{self, FrameError, RequestContext};
use crate::txn::{TxnError, TxnMeta, TxnState};
use crate::types::{ConnId, Offset};

pub const TXN_TOPIC: &str = "__transaction_state";
/// Kafka's `transaction.state.log.num.partitions` default.
pub const TXN_PARTITIONS: i32 = 50;

const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const NOT_COORDINATOR: i16 = 16;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
const OPERATION_NOT_ATTEMPTED: i16 = 55;

/// One transactional id at the coordinator.
#[derive(Debug)]
pub(super) struct TxnEntry {
    /// The state last made durable (`None` while the id's first record is being stored).
    pub meta: Option<TxnMeta>,
    /// A record is being stored, or markers written: other requests wait their turn.
    pub busy: bool,
}

/// What to do once a transaction record is durable.
pub(super) enum TxnNext {
    /// Answer a request (`true`: stored).
    Respond { conn: ConnId, seq: u64, answer: Box<dyn FnOnce(bool, &TxnMeta) -> Result<Bytes, String> + Send> },
    /// A preparing state is stored: write the markers (then answer EndTxn, if any).
    WriteMarkers { end_txn: Option<(ConnId, u64, RequestContext)> },
    /// The complete state is stored: answer EndTxn.
    Completed { end_txn: Option<(ConnId, u64, RequestContext)> },
    /// A version-2 producer's partitions are added: give the `n` verdicts (0 when stored).
    Verified { reply: super::txn_verify::VerifyReply, n: usize },
}

/// Markers of one ending transaction, being written.
pub(super) struct MarkerWrite {
    pub(super) id: String,
    pub(super) producer_id: i64,
    pub(super) epoch: i16,
    pub(super) commit: bool,
    /// A transaction-version-2 end: the marker's epoch is above the records' (partitions
    /// refuse one that is not: a late marker of an earlier end).
    pub(super) strict: bool,
    /// The leader epoch of the transaction's `__transaction_state` partition here when its
    /// markers began: written into each marker (Kafka's coordinator epoch).
    pub(super) coordinator_epoch: i32,
    /// Per partition: (topic, partition) and where its marker stands.
    pub(super) waits: Vec<((String, i32), MarkerAt)>,
    end_txn: Option<(ConnId, u64, RequestContext)>,
}

/// Where one partition's marker stands.
#[derive(Clone, Copy, Debug)]
pub(super) enum MarkerAt {
    /// Not written, or its write failed and was cut back: write it.
    ToWrite,
    /// Appended here as leader in `leader_epoch`: durable once the high watermark reaches
    /// `end` in log `generation` while this node still leads in that epoch (a follower's
    /// high watermark can pass `end` before it cuts away a marker its new leader never had).
    Local { tp: Tp, end: Offset, generation: u64, leader_epoch: i32 },
    /// Asked of the partition's leader, another broker; asked again at `retry_at` unless it
    /// has answered that the marker is durable.
    Remote { req: u64, retry_at: crate::types::Instant },
    /// Durable, or nothing to write (the topic is gone, or an older epoch's marker).
    Done,
}

/// How long a marker asked of another broker may go unanswered before it is asked again
/// (of whichever broker leads the partition by then).
pub(super) const MARKER_RETRY_MS: u64 = 2_000;

/// The `__transaction_state` partition of a transactional id, placed as Kafka places it.
pub fn txn_partition(id: &str) -> i32 {
    super::groups::partition_for(id, TXN_PARTITIONS)
}

fn txn_key(id: &str) -> Vec<u8> {
    let mut k = vec![0, 0];
    k.extend_from_slice(id.as_bytes());
    k
}

/// The transactional id a `__transaction_state` record's key names.
pub(super) fn txn_id_of_key(k: &[u8]) -> Option<String> {
    match k {
        [0, 0, rest @ ..] => String::from_utf8(rest.to_vec()).ok(),
        _ => None,
    }
}

impl Node {
    /// Whether transaction requests can be served: `Some(0)` once `__transaction_state`
    /// exists and is loaded, `Some(14)` while it loads, `None` when the request was parked
    /// until the topic's creation finishes; given a transactional id, `Some(16)` when another
    /// broker is its coordinator.
    pub(super) fn txns_ready(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: &Bytes,
        id: Option<&str>,
    ) -> Option<i16> {
        self.internal_topic_ready(TXN_TOPIC, id, conn, seq, ctx, body)
    }

    /// Stores a transactional id's next state; `next` runs once it is durable (or failed).
    pub(super) fn store_txn(&mut self, id: &str, meta: TxnMeta, next: TxnNext) -> Result<(), KafkaError> {
        let value = meta.encode();
        let key = txn_key(id);
        let batch = Bytes::from(batch::encode_records(&[(Some(&key), Some(&value))], self.now.wall_ms));
        let (tp, _, end, generation, _, _) = self.append_partition(TXN_TOPIC, txn_partition(id), Some(&batch))?;
        self.txns.entry(id.to_string()).or_insert(TxnEntry { meta: None, busy: false }).busy = true;
        self.commits.push(PendingCommit::new(
            vec![(tp, end, generation)],
            Vec::new(),
            AfterDurable::Txn { id: id.to_string(), meta: Box::new(meta), next },
        ));
        Ok(())
    }

    /// A transaction record became durable (`ok`) or could not be written.
    pub(super) fn txn_stored(&mut self, id: String, meta: TxnMeta, next: TxnNext, ok: bool) {
        let entry = self.txns.entry(id.clone()).or_insert(TxnEntry { meta: None, busy: false });
        entry.busy = false;
        if ok {
            entry.meta = Some(meta.clone());
        } else if entry.meta.is_none() {
            self.txns.remove(&id);
        }
        match next {
            TxnNext::Respond { conn, seq, answer } => {
                let frame = answer(ok, &meta);
                self.respond_bytes(conn, seq, frame);
            }
            TxnNext::WriteMarkers { end_txn } if ok => self.write_markers(&id, &meta, end_txn),
            TxnNext::WriteMarkers { end_txn } => {
                if let Some((conn, seq, ctx)) = end_txn {
                    self.answer_end_txn(conn, seq, &ctx, NOT_COORDINATOR);
                }
            }
            TxnNext::Completed { end_txn } if ok => {
                tracing::debug!(%id, state = meta.state.name(), "transaction complete");
                if let Some((conn, seq, ctx)) = end_txn {
                    self.answer_end_txn_with(conn, seq, &ctx, 0, Some(&meta));
                }
            }
            TxnNext::Verified { reply, n } => {
                let code = if ok { 0 } else { KafkaError::NotEnoughReplicas.code() };
                self.send_verdicts(reply, vec![code; n]);
            }
            TxnNext::Completed { end_txn } => {
                // The markers are durable; storing completion failed: store it again.
                let done = meta.clone();
                if let Err(e) = self.store_txn(&id, done, TxnNext::Completed { end_txn }) {
                    tracing::error!(%id, error = ?e, "could not store a transaction's completion");
                }
            }
        }
    }

    /// A transaction record's write is abandoned because another broker coordinates its id
    /// now: the request waiting on it is told so.
    pub(super) fn refuse_txn_next(&mut self, meta: &TxnMeta, next: TxnNext) {
        match next {
            TxnNext::Respond { conn, seq, answer } => {
                let frame = answer(false, meta);
                self.respond_bytes(conn, seq, frame);
            }
            TxnNext::WriteMarkers { end_txn } | TxnNext::Completed { end_txn } => {
                if let Some((conn, seq, ctx)) = end_txn {
                    self.answer_end_txn(conn, seq, &ctx, NOT_COORDINATOR);
                }
            }
            TxnNext::Verified { reply, n } => self.send_verdicts(reply, vec![KafkaError::NotEnoughReplicas.code(); n]),
        }
    }

    /// Drops the marker writes of the transactional ids `gone` names (another broker
    /// coordinates them now and writes their markers again); EndTxn calls waiting on them
    /// are told NOT_COORDINATOR and retry there.
    pub(super) fn drop_markers_of(&mut self, gone: impl Fn(&str) -> bool) {
        let (dropped, kept): (Vec<MarkerWrite>, Vec<MarkerWrite>) =
            std::mem::take(&mut self.markers).into_iter().partition(|w| gone(&w.id));
        self.markers = kept;
        for w in dropped {
            if let Some((conn, seq, ctx)) = w.end_txn {
                self.answer_end_txn(conn, seq, &ctx, NOT_COORDINATOR);
            }
        }
    }

    /// The coordinator epoch of `id`'s transactions here: the leader epoch of its
    /// `__transaction_state` partition (-1 where it is not known).
    fn txn_coordinator_epoch(&self, id: &str) -> i32 {
        let tp = self.topics.get(TXN_TOPIC).map(|t| (t.id, txn_partition(id)));
        tp.and_then(|tp| self.partition(tp)).map_or(-1, |p| p.role.leader_epoch())
    }

    /// Appends the markers of a transaction that is ending (its preparing state is durable).
    fn write_markers(&mut self, id: &str, meta: &TxnMeta, end_txn: Option<(ConnId, u64, RequestContext)>) {
        if let Some(e) = self.txns.get_mut(id) {
            e.busy = true;
        }
        let mut w = MarkerWrite {
            id: id.to_string(),
            producer_id: meta.producer_id,
            epoch: meta.epoch,
            commit: meta.state == TxnState::PrepareCommit,
            strict: meta.tv2,
            coordinator_epoch: self.txn_coordinator_epoch(id),
            waits: meta.partitions.iter().map(|p| (p.clone(), MarkerAt::ToWrite)).collect(),
            end_txn,
        };
        self.append_markers(&mut w);
        self.markers.push(w);
        self.hw_moved = true;
    }

    /// Writes the markers not yet written (or whose write failed and was cut back): here
    /// where this node leads the partition, else by asking its leader over the peer
    /// connection (`WriteTxnMarker`; Kafka's WriteTxnMarkers).
    fn append_markers(&mut self, w: &mut MarkerWrite) {
        let wall = self.now.wall_ms;
        let marker_of = Marker {
            producer_id: w.producer_id,
            epoch: w.epoch,
            commit: w.commit,
            coordinator_epoch: w.coordinator_epoch,
            strict: w.strict,
        };
        for ((topic, partition), at) in w.waits.iter_mut() {
            if !matches!(at, MarkerAt::ToWrite) {
                continue;
            }
            let marker =
                Bytes::from(batch::control_marker(w.producer_id, w.epoch, w.commit, w.coordinator_epoch, wall));
            match self.append_as(
                topic,
                *partition,
                Some(&marker),
                Origin::Coordinator { commit: w.commit, strict: w.strict },
            ) {
                Ok((tp, _, end, generation, _, _)) => {
                    let leader_epoch = self.partition(tp).map_or(-1, |p| p.role.leader_epoch());
                    *at = MarkerAt::Local { tp, end, generation, leader_epoch }
                }
                Err(KafkaError::UnknownTopicOrPartition) => *at = MarkerAt::Done, // deleted: nothing to mark
                Err(e @ (KafkaError::InvalidProducerEpoch | KafkaError::TransactionCoordinatorFenced)) => {
                    tracing::warn!(id = %w.id, topic, partition, error = ?e, "a marker of an older producer epoch or coordinator was refused");
                    *at = MarkerAt::Done;
                }
                Err(KafkaError::NotLeaderOrFollower) => {
                    // Another broker leads it: ask that one. With no leader known yet, look
                    // again shortly (request 0 is never answered).
                    let (req, wait) = match self.ask_leader_for_marker(marker_of, topic, *partition) {
                        Some(req) => (req, MARKER_RETRY_MS),
                        None => (0, 100),
                    };
                    *at = MarkerAt::Remote { req, retry_at: self.now.mono.plus_millis(wait) };
                }
                Err(e) => {
                    tracing::warn!(id = %w.id, topic, partition, error = ?e, "could not write a transaction marker; will retry")
                }
            }
        }
    }

    /// Checks the markers being written: when all of a transaction's are durable, its
    /// committed offsets become visible and its completion is stored. Markers whose writes
    /// failed, or whose leader has not answered in time, are written again.
    pub(super) fn complete_markers(&mut self) {
        let writes = std::mem::take(&mut self.markers);
        let now = self.now.mono;
        for mut w in writes {
            let mut all_durable = true;
            let mut rewrite = false;
            for (_, at) in w.waits.iter_mut() {
                match *at {
                    MarkerAt::Done => {}
                    MarkerAt::Local { tp, end, generation, leader_epoch } => match self.partition(tp) {
                        None => *at = MarkerAt::Done,
                        Some(p) if p.log.generation != generation || !p.leads_in(leader_epoch) => {
                            *at = MarkerAt::ToWrite;
                            all_durable = false;
                            rewrite = true;
                        }
                        Some(p) if p.log.high_watermark >= end => *at = MarkerAt::Done,
                        Some(_) => all_durable = false,
                    },
                    MarkerAt::Remote { retry_at, .. } => {
                        all_durable = false;
                        if now >= retry_at {
                            *at = MarkerAt::ToWrite;
                            rewrite = true;
                        }
                    }
                    MarkerAt::ToWrite => {
                        all_durable = false;
                        rewrite = true;
                    }
                }
            }
            if rewrite && self.phase == super::Phase::Serving {
                self.append_markers(&mut w);
            }
            if !all_durable {
                self.markers.push(w);
                continue;
            }
            // Offsets committed in the transaction are visible from now on, or never.
            if let Some(offs) = self.txn_offsets.remove(&w.producer_id) {
                if w.commit {
                    for (g, t, p, c) in offs {
                        self.offsets.entry(g).or_default().insert((t, p), c);
                    }
                }
            }
            let Some(meta) = self.txns.get(&w.id).and_then(|e| e.meta.clone()) else { continue };
            let done = meta.complete(self.now.wall_ms);
            if let Err(e) = self.store_txn(&w.id, done, TxnNext::Completed { end_txn: w.end_txn.take() }) {
                tracing::error!(id = %w.id, error = ?e, "could not store a transaction's completion; retrying");
                self.markers.push(w);
            }
        }
    }

    /// When the next marker asked of another broker is due to be asked again.
    pub(super) fn markers_retry_at(&self) -> Option<crate::types::Instant> {
        self.markers
            .iter()
            .flat_map(|w| &w.waits)
            .filter_map(|(_, at)| if let MarkerAt::Remote { retry_at, .. } = at { Some(*retry_at) } else { None })
            .min()
    }

    /// Aborts transactions open past their timeout (fencing their producers), as Kafka's
    /// coordinator does every `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub(super) fn abort_expired_txns(&mut self) {
        let now = self.now.wall_ms;
        let expired: Vec<(String, TxnMeta)> = self
            .txns
            .iter()
            .filter(|(_, e)| !e.busy)
            .filter_map(|(id, e)| e.meta.as_ref().filter(|m| m.expired(now)).map(|m| (id.clone(), m.clone())))
            .collect();
        for (id, meta) in expired {
            tracing::info!(%id, producer_id = meta.producer_id, "transaction timed out; aborting it");
            let Some(next) = meta.abort_and_fence(now, || self.take_producer_id()) else {
                continue; // no producer id to move to yet: tried again at the next check
            };
            if let Err(e) = self.store_txn(&id, next, TxnNext::WriteMarkers { end_txn: None }) {
                tracing::warn!(%id, error = ?e, "could not abort a timed-out transaction; will retry");
            }
        }
    }

    /// Forgets transactional ids idle (no transaction open or ending) for
    /// `transactional.id.expiration.ms`, with a tombstone in `__transaction_state`, as Kafka
    /// does; a producer that comes back later starts afresh with a new producer id.
    pub(super) fn expire_txn_ids(&mut self) {
        let (now, ttl) = (self.now.wall_ms, self.config.txn_id_expiration_ms);
        let idle: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, e)| !e.busy)
            .filter(|(_, e)| {
                e.meta.as_ref().is_some_and(|m| {
                    !matches!(m.state, TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort)
                        && now.saturating_sub(m.updated_ms) >= ttl
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            let key = txn_key(&id);
            let batch = Bytes::from(batch::encode_records(&[(Some(&key), None)], now));
            match self.append_partition(TXN_TOPIC, txn_partition(&id), Some(&batch)) {
                Ok((tp, _, end, generation, _, _)) => {
                    tracing::info!(%id, "transactional id expired");
                    if let Some(e) = self.txns.get_mut(&id) {
                        e.busy = true;
                    }
                    self.commits.push(PendingCommit::new(
                        vec![(tp, end, generation)],
                        Vec::new(),
                        AfterDurable::TxnExpired { id },
                    ));
                }
                Err(e) => tracing::warn!(%id, error = ?e, "could not expire a transactional id; will retry"),
            }
        }
    }

    /// A transactional id's tombstone is durable (or failed: it stays).
    pub(super) fn txn_expired(&mut self, id: &str, ok: bool) {
        if ok {
            self.txns.remove(id);
        } else if let Some(e) = self.txns.get_mut(id) {
            e.busy = false;
        }
    }

    /// After a load: transactions of the loaded ids left preparing (by a crash, or by the
    /// coordinator before this one) are finished.
    pub(super) fn resume_txns(&mut self, loaded: &[String]) {
        let preparing: Vec<(String, TxnMeta)> = loaded
            .iter()
            .filter_map(|id| self.txns.get_key_value(id))
            .filter_map(|(id, e)| e.meta.as_ref().filter(|m| m.state.preparing()).map(|m| (id.clone(), m.clone())))
            .collect();
        for (id, meta) in preparing {
            self.write_markers(&id, &meta, None);
        }
    }

    /// A transactional produce: the batch's producer must own `txn_id`'s open transaction,
    /// and the transaction must hold the partition (KIP-890's check, answered locally).
    /// A transaction-version-2 producer (`v2`) starts every transaction at a new epoch, so
    /// its first batch on a partition is sequence 0: a later one is out of order (its
    /// predecessor was refused, retriable, and will come again) where the partition does
    /// not know the producer at that epoch and would take any sequence.
    pub(super) fn check_txn_produce(
        &mut self,
        txn_id: &str,
        topic: &str,
        partition: i32,
        records: Option<&Bytes>,
        v2: bool,
    ) -> Result<(), KafkaError> {
        let verdict = self.check_txn_holds(txn_id, topic, partition, records)?;
        match verdict {
            Some((key, first_seq)) if v2 && first_seq != 0 && !self.txn_open_here(key) && !self.knows_epoch(key) => {
                Err(KafkaError::OutOfOrderSequenceNumber)
            }
            _ => Ok(()),
        }
    }

    /// Whether the partition knows the producer at this epoch: then its own sequence check
    /// decides (a marker that raised the epoch to this one expects 0), and a client that
    /// goes on at one epoch across transactions keeps its sequences.
    fn knows_epoch(&self, (tp, producer_id, epoch): (Tp, i64, i16)) -> bool {
        self.partition(tp).and_then(|p| p.log.producers.get(producer_id)).is_some_and(|e| e.epoch == epoch)
    }

    /// `check_txn_produce`'s check of the transaction: the batch's (partition, producer id,
    /// epoch) and first sequence when it is transactional and the transaction holds it.
    fn check_txn_holds(
        &mut self,
        txn_id: &str,
        topic: &str,
        partition: i32,
        records: Option<&Bytes>,
    ) -> Result<Option<((Tp, i64, i16), i32)>, KafkaError> {
        let Some(h) = records.and_then(|r| batch::parse_header(r).ok()) else {
            return Ok(None);
        };
        if !h.is_transactional() {
            return Ok(None);
        }
        // A partition not led here gets NOT_LEADER_OR_FOLLOWER before any check of the
        // transaction, so the client looks for its leader (a retriable error such as the
        // verification's would keep it asking this broker).
        let t = self.topics.get(topic).ok_or(KafkaError::UnknownTopicOrPartition)?;
        if let Some(e) = t.partition(partition).ok_or(KafkaError::UnknownTopicOrPartition)?.serve_error() {
            return Err(e);
        }
        let tp = (t.id, partition);
        match self.coordinates(TXN_TOPIC, txn_id) {
            Ok(()) => self
                .local_txn_verdict((tp, h.producer_id, h.producer_epoch))
                .and_then(|()| self.txn_holds(txn_id, h.producer_id, h.producer_epoch, topic, partition)),
            // Another broker coordinates the transaction: it was asked (`txn_verify`).
            Err(NOT_COORDINATOR) => self.remote_txn_verdict(tp, h.producer_id, h.producer_epoch),
            // The coordinator's state is still being read back, its partition has no leader,
            // or this node's metadata does not have the transactions' topic yet (a broker
            // catching up): the partition cannot check the transaction yet. Retriable, as
            // Kafka answers a verification it cannot do.
            Err(_) => Err(KafkaError::NotEnoughReplicas),
        }?;
        Ok(Some(((tp, h.producer_id, h.producer_epoch), h.base_sequence)))
    }

    /// Whether the transaction `txn_id`, coordinated here, holds `topic`-`partition` for the
    /// producer id and epoch given (KIP-890's check): TRANSACTION_ABORTABLE when it does not
    /// hold it (or is not ongoing), INVALID_TXN_STATE when it is another producer's,
    /// INVALID_PRODUCER_EPOCH for another epoch.
    pub(super) fn txn_holds(
        &self,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), KafkaError> {
        let meta = self.txns.get(txn_id).and_then(|e| e.meta.as_ref()).ok_or(KafkaError::InvalidTxnState)?;
        if meta.producer_id != producer_id {
            return Err(KafkaError::InvalidTxnState);
        }
        if epoch != meta.epoch {
            return Err(KafkaError::InvalidProducerEpoch);
        }
        if meta.is_ending() {
            // A producer cannot be writing in a transaction that is ending: this node's state
            // is behind (a coordinator replaced but not yet told so). Retriable, as Kafka
            // answers a verification that meets a transaction ending.
            return Err(KafkaError::NotEnoughReplicas);
        }
        if meta.state != TxnState::Ongoing || !meta.partitions.contains(&(topic.to_string(), partition)) {
            tracing::debug!(
                txn_id,
                topic,
                partition,
                state = meta.state.name(),
                "transactional produce outside its transaction"
            );
            return Err(KafkaError::TransactionAbortable);
        }
        Ok(())
    }

    // ---- requests -----------------------------------------------------------------

    /// InitProducerId with a transactional id.
    pub(super) fn init_transactional_producer(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
        req: InitProducerIdRequest,
    ) -> Result<(), FrameError> {
        let id = req.transactional_id.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        let next = match self.txns_ready(conn, seq, &ctx, &body, Some(&id)) {
            None => return Ok(()),
            Some(0) => self.next_producer_of(&id, &req, ctx.version),
            Some(code) => Err(code),
        };
        let refuse = |node: &mut Node, code: i16| {
            node.respond_bytes(
                conn,
                seq,
                protocol::encode_response(&ctx, &init_producer_id_response(ctx.version, Err(code))),
            );
        };
        let next = match next {
            Ok(next) => next,
            Err(code) => {
                refuse(self, code);
                return Ok(());
            }
        };
        let ctx2 = ctx.clone();
        let answer = Box::new(move |ok: bool, meta: &TxnMeta| {
            let result = if ok { Ok((meta.producer_id, meta.epoch)) } else { Err(NOT_COORDINATOR) };
            protocol::encode_response(&ctx2, &init_producer_id_response(ctx2.version, result))
        });
        if let Err(e) = self.store_txn(&id, next, TxnNext::Respond { conn, seq, answer }) {
            tracing::warn!(%id, error = ?e, "could not store a transaction record");
            refuse(self, NOT_COORDINATOR);
        }
        Ok(())
    }

    /// The state a transactional id takes for a new producer (InitProducerId), or the error
    /// code it gets. A transaction it finds open is aborted, fencing its producer, and the
    /// new one is told to retry (CONCURRENT_TRANSACTIONS) until that is done.
    fn next_producer_of(&mut self, id: &str, req: &InitProducerIdRequest, version: i16) -> Result<TxnMeta, i16> {
        let timeout = req.transaction_timeout_ms;
        if timeout <= 0 || timeout > self.config.txn_max_timeout_ms {
            return Err(INVALID_TRANSACTION_TIMEOUT);
        }
        let now = self.now.wall_ms;
        let entry = self.txns.get(id);
        if entry.is_some_and(|e| e.busy) {
            return Err(TxnError::ConcurrentTransactions.code());
        }
        match entry.and_then(|e| e.meta.clone()) {
            None => {
                self.take_producer_id().map(|pid| TxnMeta::new(pid, timeout, now)).ok_or(COORDINATOR_LOAD_IN_PROGRESS)
            }
            Some(m) if m.state == TxnState::Ongoing => {
                if let Some(next) = m.abort_and_fence(now, || self.take_producer_id()) {
                    let _ = self.store_txn(id, next, TxnNext::WriteMarkers { end_txn: None });
                }
                Err(TxnError::ConcurrentTransactions.code())
            }
            Some(m) if m.state.preparing() => Err(TxnError::ConcurrentTransactions.code()),
            Some(m) => {
                let expected =
                    (version >= 3 && req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
                let fresh = if m.epoch >= crate::txn::EPOCH_MAX { self.take_producer_id() } else { None };
                match m.reinit(expected, timeout, now, || fresh) {
                    Ok(Some(n)) => Ok(n),
                    Ok(None) => Err(COORDINATOR_LOAD_IN_PROGRESS),
                    Err(e) => Err(e.code()),
                }
            }
        }
    }

    pub(super) fn handle_add_partitions_to_txn(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: AddPartitionsToTxnRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let id = req.v3_and_below_transactional_id.0.to_string();
        let asked: Vec<(String, i32)> = req
            .v3_and_below_topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), *p)))
            .collect();
        let ready = self.txns_ready(conn, seq, &ctx, &body, Some(&id));
        let unknown: Vec<bool> =
            asked.iter().map(|(t, p)| self.topics.get(t).and_then(|t| t.partition(*p)).is_none()).collect();
        let result = match ready {
            None => return Ok(()),
            Some(0) if unknown.contains(&true) => Err(None),
            Some(0) => self.txn_change(&id, |m, now| {
                m.add_partitions(req.v3_and_below_producer_id.0, req.v3_and_below_producer_epoch, &asked, now, false)
            }),
            Some(code) => Err(Some(code)),
        };
        let version = ctx.version;
        let build = move |code_of: &dyn Fn(usize) -> i16| {
            let mut resp = AddPartitionsToTxnResponse::default();
            for t in &req.v3_and_below_topics {
                let mut tr = AddPartitionsToTxnTopicResult::default();
                tr.name = t.name.clone();
                for p in &t.partitions {
                    let i = asked.iter().position(|a| a.0 == t.name.0.as_str() && a.1 == *p).unwrap_or(0);
                    let mut pr = AddPartitionsToTxnPartitionResult::default();
                    pr.partition_index = *p;
                    pr.partition_error_code = fenced_for_version(ApiKey::AddPartitionsToTxn, version, code_of(i));
                    tr.results_by_partition.push(pr);
                }
                resp.results_by_topic_v3_and_below.push(tr);
            }
            resp
        };
        match result {
            Err(None) => {
                let resp = build(&|i| {
                    if unknown[i] {
                        KafkaError::UnknownTopicOrPartition.code()
                    } else {
                        OPERATION_NOT_ATTEMPTED
                    }
                });
                self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
            }
            Err(Some(code)) => {
                let resp = build(&|_| code);
                self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
            }
            Ok(None) => {
                let resp = build(&|_| 0);
                self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
            }
            Ok(Some(next)) => {
                let resp_ok = build(&|_| 0);
                let resp_err = build(&|_| NOT_COORDINATOR);
                let answer = Box::new(move |ok: bool, _: &TxnMeta| {
                    protocol::encode_response(&ctx, if ok { &resp_ok } else { &resp_err })
                });
                if self.store_txn(&id, next, TxnNext::Respond { conn, seq, answer }).is_err() {
                    self.close(conn, "could not store a transaction record");
                }
            }
        }
        Ok(())
    }

    /// Runs a change on an idle transactional id: `Ok(Some(next))` to store, `Ok(None)` for
    /// nothing to do, `Err(Some(code))` to refuse.
    pub(super) fn txn_change(
        &self,
        id: &str,
        change: impl FnOnce(&TxnMeta, i64) -> Result<Option<TxnMeta>, TxnError>,
    ) -> Result<Option<TxnMeta>, Option<i16>> {
        let Some(entry) = self.txns.get(id) else {
            return Err(Some(TxnError::InvalidProducerIdMapping.code()));
        };
        if entry.busy {
            return Err(Some(TxnError::ConcurrentTransactions.code()));
        }
        let Some(meta) = entry.meta.as_ref() else {
            return Err(Some(TxnError::ConcurrentTransactions.code()));
        };
        change(meta, self.now.wall_ms).map_err(|e| Some(e.code()))
    }

    pub(super) fn handle_add_offsets_to_txn(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: AddOffsetsToTxnRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let answer = |node: &mut Node, code: i16| {
            let mut r = AddOffsetsToTxnResponse::default();
            r.error_code = fenced_for_version(ApiKey::AddOffsetsToTxn, ctx.version, code);
            node.respond_bytes(conn, seq, protocol::encode_response(&ctx, &r));
        };
        // The group's offsets partition joins the transaction: the offsets topic must exist.
        match self.groups_ready(conn, seq, &ctx, &body, None) {
            None => return Ok(()),
            Some(0) => {}
            Some(code) => {
                answer(self, code);
                return Ok(());
            }
        }
        match self.txns_ready(conn, seq, &ctx, &body, Some(req.transactional_id.0.as_str())) {
            None => return Ok(()),
            Some(0) => {}
            Some(code) => {
                answer(self, code);
                return Ok(());
            }
        }
        let id = req.transactional_id.0.to_string();
        let part = vec![(OFFSETS_TOPIC.to_string(), offsets_partition(req.group_id.0.as_str()))];
        match self.txn_change(&id, |m, now| m.add_partitions(req.producer_id.0, req.producer_epoch, &part, now, false))
        {
            Err(code) => answer(self, code.unwrap_or(NOT_COORDINATOR)),
            Ok(None) => answer(self, 0),
            Ok(Some(next)) => {
                let ctx2 = ctx.clone();
                let reply = Box::new(move |ok: bool, _: &TxnMeta| {
                    let mut r = AddOffsetsToTxnResponse::default();
                    r.error_code = if ok { 0 } else { NOT_COORDINATOR };
                    protocol::encode_response(&ctx2, &r)
                });
                if self.store_txn(&id, next, TxnNext::Respond { conn, seq, answer: reply }).is_err() {
                    answer(self, NOT_COORDINATOR);
                }
            }
        }
        Ok(())
    }

    pub(super) fn handle_txn_offset_commit(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: TxnOffsetCommitRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let group = req.group_id.0.to_string();
        let refuse = |node: &mut Node, code: i16| {
            let answer = txn_offset_commit_answer(&req, txn_commit_error(ctx.version, code));
            node.respond_bytes(conn, seq, protocol::encode_response(&ctx, &answer));
        };
        let ready = match self.groups_ready(conn, seq, &ctx, &body, Some(req.group_id.0.as_str())) {
            Some(0) => self.txns_ready(conn, seq, &ctx, &body, None),
            other => other,
        };
        let part = (OFFSETS_TOPIC.to_string(), offsets_partition(&group));
        let check = match ready {
            Some(0) => self.txn_offset_commit_check(conn, seq, &ctx, &body, &req, &part),
            other => other.map(Err), // waiting for the coordinators' load, or refused
        };
        let Some(check) = check else {
            return Ok(()); // waits (for a coordinator's load, or the transaction's coordinator)
        };
        if let Err(code) = check {
            refuse(self, code);
            return Ok(());
        }
        let now = self.now.wall_ms;
        let updates: Vec<(String, String, i32, Committed)> = req
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
            .map(|(t, p)| {
                let c = Committed {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    commit_timestamp: now,
                };
                (group.clone(), t.name.0.to_string(), p.partition_index, c)
            })
            .collect();
        let mut b = super::groups::offsets_batch(&updates, now);
        b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        batch::set_producer(&mut b, req.producer_id.0, req.producer_epoch, -1);
        let b = Bytes::from(b);
        match self.append_as(OFFSETS_TOPIC, part.1, Some(&b), Origin::CoordinatorData) {
            Err(e) => refuse(self, if e == KafkaError::KafkaStorageError { NOT_COORDINATOR } else { e.code() }),
            Ok((tp, _, end, generation, _, _)) => {
                let ok = protocol::encode_response(&ctx, &txn_offset_commit_answer(&req, 0));
                let failed = protocol::encode_response(&ctx, &txn_offset_commit_answer(&req, NOT_COORDINATOR));
                self.commits.push(PendingCommit::new(
                    vec![(tp, end, generation)],
                    Vec::new(),
                    AfterDurable::TxnOffsets {
                        producer_id: req.producer_id.0,
                        offsets: updates,
                        conn,
                        seq,
                        answers: Box::new((ok, failed)),
                    },
                ));
            }
        }
        Ok(())
    }

    /// TxnOffsetCommit's checks once the coordinators are ready: the transaction holds the
    /// group (verified with its coordinator when another broker coordinates it, KIP-890; from
    /// v5, a transaction-version-2 producer's, added by it when it does not), and the group
    /// member it names is current (KIP-447). `None` while the request waits for the
    /// transaction's coordinator; else the error code the request gets, if any.
    fn txn_offset_commit_check(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: &Bytes,
        req: &TxnOffsetCommitRequest,
        part: &(String, i32),
    ) -> Option<Result<(), i16>> {
        let id = req.transactional_id.0.to_string();
        let coordinated = self.coordinates(TXN_TOPIC, &id);
        let remote = coordinated == Err(NOT_COORDINATOR);
        let add = ctx.version >= 5;
        let key = self.topics.get(OFFSETS_TOPIC).map(|t| ((t.id, part.1), req.producer_id.0, req.producer_epoch));
        // This coordinator's verdict on adding the group to a version-2 transaction.
        let verdict = key.filter(|_| coordinated.is_ok()).and_then(|k| self.take_txn_verdict(k));
        let mut to_add = false;
        let check = match self.txns.get(&id).and_then(|e| e.meta.as_ref()) {
            // Another broker coordinates the transaction: the first commit of the transaction
            // here is verified with it (KIP-890), as a partition's first batch is. Verdicts
            // the coordinator could not give are COORDINATOR_NOT_AVAILABLE, as Kafka's group
            // coordinator answers them.
            None if remote => {
                if let Some(key) = key.filter(|k| self.needs_verifying(*k)) {
                    if self.verify_txn(conn, seq, ctx, body, &id, vec![(key, OFFSETS_TOPIC.to_string())], add) {
                        return None;
                    }
                }
                match key.map(|(tp, pid, epoch)| self.remote_txn_verdict(tp, pid, epoch)) {
                    None | Some(Ok(())) => Ok(()),
                    Some(Err(KafkaError::NotEnoughReplicas)) => Err(COORDINATOR_NOT_AVAILABLE),
                    Some(Err(e)) => Err(e.code()),
                }
            }
            // The transaction's coordinator cannot be known yet (its partition has no
            // leader, or is loading here): retriable, not an unknown producer.
            None if coordinated.is_err() => Err(COORDINATOR_NOT_AVAILABLE),
            None => Err(TxnError::InvalidProducerIdMapping.code()),
            Some(m) => match m.check_producer(req.producer_id.0, req.producer_epoch) {
                Err(e) => Err(e.code()),
                // Ending (its markers being written): a producer cannot be committing offsets
                // in it, so this node's state is behind (a coordinator replaced but not yet
                // told so). Retriable, as Kafka's coordinator answers a transaction ending.
                Ok(()) if m.is_ending() => Err(TxnError::ConcurrentTransactions.code()),
                Ok(()) if m.state != TxnState::Ongoing || !m.partitions.contains(part) => {
                    to_add = add && coordinated.is_ok();
                    Err(KafkaError::TransactionAbortable.code())
                }
                Ok(()) => Ok(()),
            },
        };
        let check = match (to_add, verdict, key) {
            // Added by this coordinator first, then checked again.
            (true, None, Some(key)) => {
                if self.verify_txn(conn, seq, ctx, body, &id, vec![(key, OFFSETS_TOPIC.to_string())], true) {
                    return None;
                }
                check
            }
            (true, Some(code), _) if code != 0 => match super::txn_verify::verdict_error(code) {
                KafkaError::NotEnoughReplicas => Err(COORDINATOR_NOT_AVAILABLE),
                e => Err(e.code()),
            },
            _ => check,
        };
        let inst = req.group_instance_id.as_ref().map(|s| s.to_string());
        let group = req.group_id.0.as_str();
        Some(check.and_then(|()| self.txn_commit_member(group, req.member_id.as_str(), req.generation_id, inst)))
    }

    /// KIP-447's check of the group member a TxnOffsetCommit names (v3: its generation or
    /// member epoch, member id and static instance id): a zombie of an older generation is
    /// fenced. A request that names none (before v3, or a producer without a group member's
    /// metadata) is taken, as in Kafka.
    fn txn_commit_member(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<String>,
    ) -> Result<(), i16> {
        if generation < 0 && member.is_empty() && instance.is_none() {
            return Ok(());
        }
        if self.consumer.group(group).is_some() {
            return self.consumer.validate_txn_commit(group, member, generation);
        }
        self.coordinator
            .validate_txn_commit(group, member, generation, instance.as_deref())
            .map_err(super::groups::code)
    }

    pub(super) fn handle_end_txn(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: EndTxnRequest = protocol::decode_body(body.clone(), ctx.version)?;
        match self.txns_ready(conn, seq, &ctx, &body, Some(req.transactional_id.0.as_str())) {
            None => return Ok(()),
            Some(0) => {}
            Some(code) => {
                self.answer_end_txn(conn, seq, &ctx, code);
                return Ok(());
            }
        }
        let id = req.transactional_id.0.to_string();
        // Version 5 is transaction version 2: the end bumps the producer's epoch.
        let fresh = (ctx.version >= 5
            && self.txns.get(&id).and_then(|e| e.meta.as_ref()).is_some_and(|m| m.epoch >= crate::txn::EPOCH_MAX))
        .then(|| self.take_producer_id())
        .flatten();
        let (pid, epoch, commit) = (req.producer_id.0, req.producer_epoch, req.committed);
        let change = self.txn_change(&id, |m, now| {
            if ctx.version >= 5 {
                m.end_v2(pid, epoch, commit, now, || fresh)
            } else {
                m.end(pid, epoch, commit, now)
            }
        });
        match change {
            Err(code) => self.answer_end_txn(conn, seq, &ctx, code.unwrap_or(NOT_COORDINATOR)),
            Ok(None) => {
                let meta = self.txns.get(&id).and_then(|e| e.meta.clone());
                self.answer_end_txn_with(conn, seq, &ctx, 0, meta.as_ref());
            }
            Ok(Some(next)) => {
                let end_txn = Some((conn, seq, ctx.clone()));
                if self.store_txn(&id, next, TxnNext::WriteMarkers { end_txn }).is_err() {
                    self.answer_end_txn(conn, seq, &ctx, NOT_COORDINATOR);
                }
            }
        }
        Ok(())
    }

    fn answer_end_txn(&mut self, conn: ConnId, seq: u64, ctx: &RequestContext, code: i16) {
        self.answer_end_txn_with(conn, seq, ctx, code, None);
    }

    /// EndTxn's answer; from v5 on, a success names the producer id and epoch the producer
    /// goes on with (`meta`'s).
    fn answer_end_txn_with(&mut self, conn: ConnId, seq: u64, ctx: &RequestContext, code: i16, meta: Option<&TxnMeta>) {
        let mut r = EndTxnResponse::default();
        r.error_code = fenced_for_version(ApiKey::EndTxn, ctx.version, code);
        if let Some(m) = meta.filter(|_| code == 0 && ctx.version >= 5) {
            r.producer_id = m.producer_id.into();
            r.producer_epoch = m.epoch;
        }
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &r));
    }
}

// ---- admin --------------------------------------------------------------------------

impl Node {
    /// ListTransactions 0-2: every transactional id, filtered by state, producer id, how long
    /// its transaction has been open (v1) and an id pattern (v2: Sluice takes `.*` or a
    /// literal id; other regular expressions are refused with INVALID_REQUEST).
    pub(super) fn handle_list_transactions(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: ListTransactionsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = ListTransactionsResponse::default();
        let states: Vec<&str> = req.state_filters.iter().map(|s| s.as_str()).collect();
        resp.unknown_state_filters = req
            .state_filters
            .iter()
            .filter(|s| !TxnState::ALL.iter().any(|k| k.name() == s.as_str()))
            .cloned()
            .collect();
        let pattern = req.transactional_id_pattern.as_ref().map(|p| p.to_string()).filter(|p| !p.is_empty());
        let literal = match pattern.as_deref() {
            None | Some(".*") => None,
            Some(p) if p.chars().all(|c| c.is_alphanumeric() || "-_".contains(c)) => Some(p.to_string()),
            Some(_) => {
                resp.error_code = KafkaError::InvalidRequest.code();
                self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
                return Ok(());
            }
        };
        let now = self.now.wall_ms;
        for (id, e) in &self.txns {
            let Some(m) = &e.meta else { continue };
            let open_ms = if m.started_ms >= 0 { now - m.started_ms } else { -1 };
            if (!states.is_empty() && !states.contains(&m.state.name()))
                || (!req.producer_id_filters.is_empty()
                    && !req.producer_id_filters.contains(&ProducerId(m.producer_id)))
                || (req.duration_filter >= 0 && open_ms < req.duration_filter)
                || literal.as_ref().is_some_and(|l| l != id)
            {
                continue;
            }
            let mut t = list_transactions_response::TransactionState::default();
            t.transactional_id = TransactionalId(super::groups::sb(id.clone()));
            t.producer_id = ProducerId(m.producer_id);
            t.transaction_state = super::groups::sb(m.state.name());
            resp.transaction_states.push(t);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }

    /// DescribeTransactions 0: each id's state, timeout, start, producer and partitions.
    pub(super) fn handle_describe_transactions(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: DescribeTransactionsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = DescribeTransactionsResponse::default();
        for id in &req.transactional_ids {
            let mut t = describe_transactions_response::TransactionState::default();
            t.transactional_id = id.clone();
            let refused =
                if self.topics.contains_key(TXN_TOPIC) { self.coordinates(TXN_TOPIC, id).err() } else { None };
            match self.txns.get(id.0.as_str()).and_then(|e| e.meta.as_ref()) {
                None if refused.is_some() => t.error_code = refused.unwrap_or_default(),
                None => t.error_code = 105, // TRANSACTIONAL_ID_NOT_FOUND
                Some(m) => {
                    t.transaction_state = super::groups::sb(m.state.name());
                    t.transaction_timeout_ms = m.timeout_ms;
                    t.transaction_start_time_ms = m.started_ms;
                    t.producer_id = ProducerId(m.producer_id);
                    t.producer_epoch = m.epoch;
                    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                    for (topic, p) in &m.partitions {
                        by_topic.entry(topic).or_default().push(*p);
                    }
                    for (topic, partitions) in by_topic {
                        let mut td = describe_transactions_response::TopicData::default();
                        td.topic = TopicName(super::groups::sb(topic));
                        td.partitions = partitions;
                        t.topics.push(td);
                    }
                }
            }
            resp.transaction_states.push(t);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }

    /// DescribeProducers 0: the producers a partition knows (idempotent and transactional),
    /// with their epochs, last sequences and open transactions.
    pub(super) fn handle_describe_producers(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: DescribeProducersRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = DescribeProducersResponse::default();
        for t in &req.topics {
            let mut tr = describe_producers_response::TopicResponse::default();
            tr.name = t.name.clone();
            let topic = self.topics.get(t.name.0.as_str());
            for p in &t.partition_indexes {
                let mut pr = describe_producers_response::PartitionResponse::default();
                pr.partition_index = *p;
                match topic.and_then(|tt| tt.partition(*p)) {
                    None => pr.error_code = KafkaError::UnknownTopicOrPartition.code(),
                    Some(part) if part.serve_error().is_some() => {
                        pr.error_code = part.serve_error().map_or(0, KafkaError::code)
                    }
                    Some(part) => {
                        for (pid, e) in part.log.producers.iter() {
                            let mut s = describe_producers_response::ProducerState::default();
                            s.producer_id = ProducerId(*pid);
                            s.producer_epoch = i32::from(e.epoch);
                            s.last_sequence = e.batches.back().or(e.floor.as_ref()).map_or(-1, |b| b.last_seq);
                            s.last_timestamp = e.last_timestamp;
                            s.coordinator_epoch = e.coordinator_epoch;
                            s.current_txn_start_offset = e.txn_first.unwrap_or(-1);
                            pr.active_producers.push(s);
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }
}

/// A TxnOffsetCommit's error as its version is answered: TRANSACTION_ABORTABLE to the
/// versions that know it (v4+), INVALID_TXN_STATE to older ones, as Kafka.
fn txn_commit_error(version: i16, code: i16) -> i16 {
    if code == KafkaError::TransactionAbortable.code() && version < 4 {
        KafkaError::InvalidTxnState.code()
    } else {
        code
    }
}

/// A TxnOffsetCommit answer giving every partition of `req` the error `code` (0: none).
fn txn_offset_commit_answer(req: &TxnOffsetCommitRequest, code: i16) -> TxnOffsetCommitResponse {
    let mut resp = TxnOffsetCommitResponse::default();
    for t in &req.topics {
        let mut tr = TxnOffsetCommitResponseTopic::default();
        tr.name = t.name.clone();
        for p in &t.partitions {
            let mut pr = TxnOffsetCommitResponsePartition::default();
            pr.partition_index = p.partition_index;
            pr.error_code = code;
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}
