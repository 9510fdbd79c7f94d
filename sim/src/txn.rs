//! A simulated transactional producer, as the Java client and librdkafka behave with a
//! `transactional.id`: InitProducerId (retried while the coordinator is busy), then
//! transactions one after another: AddPartitionsToTxn for the partitions it will write, one
//! transactional batch per partition (idempotent sequences, resent unchanged after a lost
//! answer), then EndTxn to commit or abort, retried until answered. Fenced (its epoch bumped
//! because the coordinator aborted its transaction on a timeout), it knows that transaction
//! aborted and starts over with InitProducerId. Some transactions stall past the transaction
//! timeout, so the coordinator must abort them.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rand::Rng;
use sluice_core::ConnId;
use sluice_runtime_sim::{Nanos, World, MS};

use crate::checker::Checker;
use crate::codec;
use crate::workload::TOPIC;

pub const TXN_TIMEOUT_MS: i32 = 1_000;
const REQUEST_TIMEOUT: Nanos = 3_000 * MS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Init,
    Idle,
    AddPartitions,
    Produce,
    /// AddOffsetsToTxn for the offsets group.
    AddOffsets,
    /// TxnOffsetCommit of this transaction's offset.
    CommitOffsets,
    End,
}

/// The group whose offsets transactional producers commit in their transactions (as a
/// consume-transform-produce loop does); each transaction commits a value of its own.
pub const OFFSETS_GROUP: &str = "sim-txn-offsets";

/// The offset a transaction commits: unique per (producer, transaction).
pub fn txn_offset(producer: usize, no: u64) -> i64 {
    (no as i64) * 1_000 + producer as i64
}

/// The transaction being written.
struct Txn {
    no: u64,
    /// Per partition: its values and first sequence.
    parts: BTreeMap<i32, (Vec<String>, i32)>,
    acked: BTreeSet<i32>,
    commit: bool,
}

pub struct TxnProducer {
    pub idx: usize,
    id: String,
    pub conn: Option<ConnId>,
    producer: Option<(i64, i16)>,
    next_seq: BTreeMap<i32, i32>,
    step: Step,
    /// The request in flight: correlation id, when sent.
    in_flight: Option<(i32, Nanos)>,
    next_cid: i32,
    txn: Option<Txn>,
    made: u64,
    txns: u64,
    stalled_until: Option<Nanos>,
    pub committed: u64,
    pub aborted: u64,
}

impl TxnProducer {
    pub fn new(idx: usize) -> TxnProducer {
        TxnProducer {
            idx,
            id: format!("sim-txn-{idx}"),
            conn: None,
            producer: None,
            next_seq: BTreeMap::new(),
            step: Step::Init,
            in_flight: None,
            next_cid: 0,
            txn: None,
            made: 0,
            txns: 0,
            stalled_until: None,
            committed: 0,
            aborted: 0,
        }
    }

    /// Values made so far.
    pub fn made(&self) -> u64 {
        self.made
    }

    /// Nothing open: no transaction in progress.
    pub fn is_idle(&self) -> bool {
        self.txn.is_none() && self.step != Step::Init
    }

    pub fn describe(&self) -> String {
        format!(
            "txn producer {}: {:?}, producer {:?}, txn {:?}, {} committed, {} aborted, conn {:?}",
            self.idx,
            self.step,
            self.producer,
            self.txn.as_ref().map(|t| (t.no, t.commit, t.parts.keys().collect::<Vec<_>>(), t.acked.len())),
            self.committed,
            self.aborted,
            self.conn
        )
    }

    /// The process freezes mid-transaction (past the transaction timeout, the coordinator
    /// aborts it and fences this producer).
    pub fn stall(&mut self, until: Nanos) {
        if self.txn.is_some() {
            self.stalled_until = Some(until);
        }
    }

    pub fn heal(&mut self) {
        self.stalled_until = None;
    }

    /// Does whatever is due. `new_txns` says whether to start new transactions (the safety
    /// phase); `opened` gets a connection it opens.
    pub fn pump(
        &mut self,
        w: &mut World,
        checker: &mut Checker,
        partitions: i32,
        batch_max: usize,
        new_txns: bool,
        opened: &mut Vec<ConnId>,
    ) {
        let now = w.now();
        if self.stalled_until.is_some_and(|u| now < u) {
            return;
        }
        self.stalled_until = None;
        if let Some((_, sent)) = self.in_flight {
            if now - sent > REQUEST_TIMEOUT {
                if let Some(c) = self.conn.take() {
                    w.close(c);
                }
                self.in_flight = None;
            } else {
                return;
            }
        }
        if self.step == Step::Idle && new_txns {
            self.begin(w, checker, partitions, batch_max);
        }
        if self.step == Step::Idle {
            return;
        }
        let conn = match self.conn {
            Some(c) => c,
            None => {
                let c = w.connect(self.idx, 0);
                opened.push(c);
                self.conn = Some(c);
                c
            }
        };
        self.next_cid += 1;
        let cid = self.next_cid;
        let frame = match self.step {
            Step::Idle => return,
            Step::Init => {
                let req = InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(StrBytes::from_string(self.id.clone()))))
                    .with_transaction_timeout_ms(TXN_TIMEOUT_MS);
                codec::frame(ApiKey::InitProducerId, codec::INIT_PRODUCER_ID_VERSION, cid, &req)
            }
            Step::AddPartitions => {
                let (pid, epoch) = self.producer.expect("initialised");
                let txn = self.txn.as_ref().expect("open");
                let mut t = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
                t.name = TopicName(StrBytes::from_static_str(TOPIC));
                t.partitions = txn.parts.keys().copied().collect();
                let mut req = AddPartitionsToTxnRequest::default();
                req.v3_and_below_transactional_id = TransactionalId(StrBytes::from_string(self.id.clone()));
                req.v3_and_below_producer_id = ProducerId(pid);
                req.v3_and_below_producer_epoch = epoch;
                req.v3_and_below_topics = vec![t];
                codec::frame(ApiKey::AddPartitionsToTxn, codec::ADD_PARTITIONS_TO_TXN_VERSION, cid, &req)
            }
            Step::Produce => {
                let (pid, epoch) = self.producer.expect("initialised");
                let txn = self.txn.as_ref().expect("open");
                let mut td = produce_request::TopicProduceData::default();
                td.name = TopicName(StrBytes::from_static_str(TOPIC));
                for (p, (values, seq)) in txn.parts.iter().filter(|(p, _)| !txn.acked.contains(p)) {
                    let mut pd = produce_request::PartitionProduceData::default();
                    pd.index = *p;
                    pd.records = Some(codec::transactional_batch_of(values, 1_700_000_000_000, pid, epoch, *seq));
                    td.partition_data.push(pd);
                }
                let mut req = ProduceRequest::default();
                req.transactional_id = Some(TransactionalId(StrBytes::from_string(self.id.clone())));
                req.acks = -1;
                req.timeout_ms = 30_000;
                req.topic_data = vec![td];
                codec::frame(ApiKey::Produce, codec::PRODUCE_VERSION, cid, &req)
            }
            Step::AddOffsets => {
                let (pid, epoch) = self.producer.expect("initialised");
                let mut req = AddOffsetsToTxnRequest::default();
                req.transactional_id = TransactionalId(StrBytes::from_string(self.id.clone()));
                req.producer_id = ProducerId(pid);
                req.producer_epoch = epoch;
                req.group_id = GroupId(StrBytes::from_static_str(OFFSETS_GROUP));
                codec::frame(ApiKey::AddOffsetsToTxn, 3, cid, &req)
            }
            Step::CommitOffsets => {
                let (pid, epoch) = self.producer.expect("initialised");
                let no = self.txn.as_ref().map_or(0, |t| t.no);
                let mut p = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default();
                p.partition_index = 0;
                p.committed_offset = txn_offset(self.idx, no);
                p.committed_leader_epoch = -1;
                let mut t = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default();
                t.name = TopicName(StrBytes::from_static_str(TOPIC));
                t.partitions = vec![p];
                let mut req = TxnOffsetCommitRequest::default();
                req.transactional_id = TransactionalId(StrBytes::from_string(self.id.clone()));
                req.group_id = GroupId(StrBytes::from_static_str(OFFSETS_GROUP));
                req.producer_id = ProducerId(pid);
                req.producer_epoch = epoch;
                req.topics = vec![t];
                codec::frame(ApiKey::TxnOffsetCommit, 3, cid, &req)
            }
            Step::End => {
                let (pid, epoch) = self.producer.expect("initialised");
                let mut req = EndTxnRequest::default();
                req.transactional_id = TransactionalId(StrBytes::from_string(self.id.clone()));
                req.producer_id = ProducerId(pid);
                req.producer_epoch = epoch;
                req.committed = self.txn.as_ref().is_some_and(|t| t.commit);
                codec::frame(ApiKey::EndTxn, codec::END_TXN_VERSION, cid, &req)
            }
        };
        w.send(conn, frame);
        self.in_flight = Some((cid, now));
    }

    /// Opens the next transaction: its partitions, values and outcome are drawn now.
    fn begin(&mut self, w: &mut World, checker: &mut Checker, partitions: i32, batch_max: usize) {
        self.txns += 1;
        let n = w.workload_rng().gen_range(1..=partitions.min(3) as usize);
        let mut parts = BTreeMap::new();
        while parts.len() < n {
            let p = w.workload_rng().gen_range(0..partitions);
            let k = w.workload_rng().gen_range(1..=batch_max);
            if parts.contains_key(&p) {
                continue;
            }
            let values: Vec<String> =
                (self.made + 1..=self.made + k as u64).map(|i| format!("t{}-{i}", self.idx)).collect();
            self.made += k as u64;
            let next = self.next_seq.entry(p).or_insert(0);
            let seq = *next;
            *next += k as i32;
            parts.insert(p, (values, seq));
        }
        let commit = w.workload_rng().gen_bool(0.7);
        let all: Vec<String> = parts.values().flat_map(|(v, _)| v.iter().cloned()).collect();
        checker.on_txn_send(self.idx, self.txns, &all);
        checker.on_txn_offset(txn_offset(self.idx, self.txns), self.idx, self.txns);
        self.txn = Some(Txn { no: self.txns, parts, acked: BTreeSet::new(), commit });
        self.step = Step::AddPartitions;
    }

    /// The open transaction ended (or was aborted by the coordinator): the checker learns how.
    fn finish(&mut self, checker: &mut Checker, at: Nanos, committed: bool) {
        if let Some(t) = self.txn.take() {
            checker.on_txn_outcome(at, self.idx, t.no, committed);
            if committed {
                self.committed += 1;
            } else {
                self.aborted += 1;
            }
        }
    }

    /// Fenced: the coordinator bumped the epoch, which it does only when it aborts this
    /// producer's transaction. Start over.
    fn fenced(&mut self, checker: &mut Checker, at: Nanos) {
        self.finish(checker, at, false);
        self.producer = None;
        self.next_seq.clear();
        self.step = Step::Init;
    }

    pub fn on_response(&mut self, w: &mut World, checker: &mut Checker, frame: Bytes) {
        let at = w.now();
        let Some((cid, _)) = self.in_flight else { return };
        if codec::correlation_id(&frame) != Some(cid) {
            return;
        }
        self.in_flight = None;
        let bad =
            |checker: &mut Checker, what: String| checker.on_error(at, format!("txn producer {}: {what}", self.idx));
        match self.step {
            Step::Idle => {}
            Step::Init => match codec::decode::<InitProducerIdResponse>(
                ApiKey::InitProducerId,
                codec::INIT_PRODUCER_ID_VERSION,
                frame,
            ) {
                Ok((_, r)) if r.error_code == 0 => {
                    checker.on_producer_id(at, self.idx, r.producer_id.0);
                    self.producer = Some((r.producer_id.0, r.producer_epoch));
                    self.next_seq.clear();
                    self.step = Step::Idle;
                }
                Ok((_, r)) if matches!(r.error_code, 14 | 15 | 16 | 51) => {}
                Ok((_, r)) => bad(checker, format!("InitProducerId refused with error {}", r.error_code)),
                Err(e) => bad(checker, format!("undecodable InitProducerId response: {e}")),
            },
            Step::AddPartitions => {
                match codec::decode::<AddPartitionsToTxnResponse>(
                    ApiKey::AddPartitionsToTxn,
                    codec::ADD_PARTITIONS_TO_TXN_VERSION,
                    frame,
                ) {
                    Ok((_, r)) => {
                        let codes: BTreeSet<i16> = r
                            .results_by_topic_v3_and_below
                            .iter()
                            .flat_map(|t| t.results_by_partition.iter().map(|p| p.partition_error_code))
                            .collect();
                        if codes.iter().all(|c| *c == 0) {
                            self.step = Step::Produce;
                        } else if codes.contains(&90) || codes.contains(&47) {
                            self.fenced(checker, at);
                        } else if !codes.iter().all(|c| matches!(c, 0 | 14 | 15 | 16 | 51 | 55)) {
                            bad(checker, format!("AddPartitionsToTxn refused with {codes:?}"));
                        }
                    }
                    Err(e) => bad(checker, format!("undecodable AddPartitionsToTxn response: {e}")),
                }
            }
            Step::Produce => match codec::decode::<ProduceResponse>(ApiKey::Produce, codec::PRODUCE_VERSION, frame) {
                Ok((_, r)) => {
                    let mut fenced = false;
                    for pr in r.responses.iter().flat_map(|t| &t.partition_responses) {
                        let Some(txn) = self.txn.as_mut() else { break };
                        match pr.error_code {
                            0 => {
                                if txn.acked.insert(pr.index) {
                                    let values = &txn.parts[&pr.index].0;
                                    checker.on_ack(at, self.idx, pr.index, pr.base_offset, values, -1);
                                }
                            }
                            47 | 90 => fenced = true,
                            // Retriable (not yet durable, storage trouble): sent again.
                            5 | 6 | 7 | 19 | 56 | 45 => {}
                            code => bad(checker, format!("transactional produce refused with error {code}")),
                        }
                    }
                    if fenced {
                        self.fenced(checker, at);
                    } else if self.txn.as_ref().is_some_and(|t| t.acked.len() == t.parts.len()) {
                        self.step = Step::AddOffsets;
                    }
                }
                Err(e) => bad(checker, format!("undecodable produce response: {e}")),
            },
            Step::AddOffsets => match codec::decode::<AddOffsetsToTxnResponse>(ApiKey::AddOffsetsToTxn, 3, frame) {
                Ok((_, r)) if r.error_code == 0 => self.step = Step::CommitOffsets,
                Ok((_, r)) if matches!(r.error_code, 47 | 90) => self.fenced(checker, at),
                Ok((_, r)) if matches!(r.error_code, 14 | 15 | 16 | 51) => {}
                Ok((_, r)) => bad(checker, format!("AddOffsetsToTxn refused with error {}", r.error_code)),
                Err(e) => bad(checker, format!("undecodable AddOffsetsToTxn response: {e}")),
            },
            Step::CommitOffsets => match codec::decode::<TxnOffsetCommitResponse>(ApiKey::TxnOffsetCommit, 3, frame) {
                Ok((_, r)) => {
                    let code = r.topics.iter().flat_map(|t| &t.partitions).map(|p| p.error_code).find(|c| *c != 0);
                    match code {
                        None => self.step = Step::End,
                        Some(47 | 90) => self.fenced(checker, at),
                        Some(14 | 15 | 16 | 51) => {}
                        Some(c) => bad(checker, format!("TxnOffsetCommit refused with error {c}")),
                    }
                }
                Err(e) => bad(checker, format!("undecodable TxnOffsetCommit response: {e}")),
            },
            Step::End => match codec::decode::<EndTxnResponse>(ApiKey::EndTxn, codec::END_TXN_VERSION, frame) {
                Ok((_, r)) if r.error_code == 0 => {
                    let commit = self.txn.as_ref().is_some_and(|t| t.commit);
                    self.finish(checker, at, commit);
                    self.step = Step::Idle;
                }
                Ok((_, r)) if matches!(r.error_code, 47 | 90) => self.fenced(checker, at),
                Ok((_, r)) if matches!(r.error_code, 14 | 15 | 16 | 51) => {}
                Ok((_, r)) => bad(checker, format!("EndTxn refused with error {}", r.error_code)),
                Err(e) => bad(checker, format!("undecodable EndTxn response: {e}")),
            },
        }
    }

    pub fn on_closed(&mut self, conn: ConnId) {
        if self.conn == Some(conn) {
            self.conn = None;
            self.in_flight = None;
        }
    }
}
