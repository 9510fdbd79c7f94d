//! A simulated transactional producer, as the Java client and librdkafka behave with a
//! `transactional.id`: InitProducerId (retried while the coordinator is busy), then
//! transactions one after another: AddPartitionsToTxn for the partitions it will write, one
//! transactional batch per partition (idempotent sequences, resent unchanged after a lost
//! answer), then EndTxn to commit or abort, retried until answered. Fenced (its epoch bumped
//! because the coordinator aborted its transaction on a timeout), it knows that transaction
//! aborted and starts over with InitProducerId. Some transactions stall past the transaction
//! timeout, so the coordinator must abort them.
//!
//! Half the producers are of transaction version 2 (KIP-890 part 2, as the Java client 4.x
//! is when the brokers finalize it): they send no AddPartitionsToTxn or AddOffsetsToTxn (the
//! Produce v12 and TxnOffsetCommit v5 they send have the coordinator add the partitions),
//! and each EndTxn v5 answers the new epoch they go on with, their sequences from 0.
//!
//! In a cluster ([`TxnProducer::in_cluster`]) it sends each request where it believes the
//! request belongs: the transaction's coordinator (InitProducerId, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn), the offsets group's coordinator (TxnOffsetCommit) and each
//! partition's leader (a produce per leader). Told NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE
//! or NOT_LEADER_OR_FOLLOWER, or left without an answer, it tries the next node, as a client
//! whose metadata is stale finds the right broker in the end.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_core::ConnId;
use sluice_runtime_sim::{Nanos, World, MS};

use crate::checker::Checker;
use crate::codec;
use crate::workload::TOPIC;

pub const TXN_TIMEOUT_MS: i32 = 1_000;
const REQUEST_TIMEOUT: Nanos = 3_000 * MS;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

/// What an answer means to the producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    Done,
    /// Retriable (the coordinator busy or loading, a produce not yet durable): sent again.
    Again,
    /// The transaction cannot go on (a partition refused its batch as outside it, as a
    /// broker whose coordinator's state is stale may): abort it, as the Java client's
    /// abortable errors make the application do.
    Abort,
    /// The epoch was bumped: the coordinator aborted the transaction.
    Fenced,
    /// Fatal to this producer instance, as INVALID_TXN_STATE on EndTxn is to the Java client:
    /// the application closes it and starts another.
    Fatal,
    /// An error this producer should never get.
    Refused(i16),
}

fn classify(code: i16, step: Step) -> Answer {
    match (code, step) {
        (0, _) => Answer::Done,
        (47 | 90, _) => Answer::Fenced,
        (14 | 15 | 16 | 51, _) => Answer::Again,
        // Not leader (or not yet knowing the topic), timeouts, storage trouble, verification
        // not possible yet, a resend out of order behind a failed one.
        (3 | 5 | 6 | 7 | 19 | 20 | 45 | 56, Step::Produce) => Answer::Again,
        (55, Step::AddPartitions) => Answer::Again,
        (48, Step::Produce) => Answer::Abort,
        (48, Step::End) => Answer::Fatal,
        (code, _) => Answer::Refused(code),
    }
}

/// The request versions a producer sends.
#[derive(Clone, Copy, Debug)]
struct Versions {
    produce: i16,
    offsets: i16,
    end: i16,
}

const V1: Versions = Versions { produce: codec::PRODUCE_VERSION, offsets: 3, end: codec::END_TXN_VERSION };
/// Transaction version 2's: Produce v12, TxnOffsetCommit v5, EndTxn v5.
const V2: Versions = Versions { produce: 12, offsets: 5, end: 5 };

/// The one error code of a coordinator's answer (the worst of its partitions').
fn error_code(step: Step, frame: Bytes, versions: Versions) -> Result<i16, String> {
    fn worst(mut codes: impl Iterator<Item = i16>) -> i16 {
        codes.find(|c| *c != 0).unwrap_or(0)
    }
    Ok(match step {
        Step::AddPartitions => {
            let (_, r) = codec::decode::<AddPartitionsToTxnResponse>(
                ApiKey::AddPartitionsToTxn,
                codec::ADD_PARTITIONS_TO_TXN_VERSION,
                frame,
            )?;
            worst(
                r.results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|t| &t.results_by_partition)
                    .map(|p| p.partition_error_code),
            )
        }
        Step::AddOffsets => codec::decode::<AddOffsetsToTxnResponse>(ApiKey::AddOffsetsToTxn, 3, frame)?.1.error_code,
        Step::CommitOffsets => {
            let (_, r) = codec::decode::<TxnOffsetCommitResponse>(ApiKey::TxnOffsetCommit, versions.offsets, frame)?;
            worst(r.topics.iter().flat_map(|t| &t.partitions).map(|p| p.error_code))
        }
        Step::End => codec::decode::<EndTxnResponse>(ApiKey::EndTxn, versions.end, frame)?.1.error_code,
        Step::Idle | Step::Init | Step::Produce => 0,
    })
}

/// The transaction being written.
struct Txn {
    no: u64,
    /// Per partition: its values and first sequence.
    parts: BTreeMap<i32, (Vec<String>, i32)>,
    acked: BTreeSet<i32>,
    commit: bool,
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Coordinator,
    GroupCoordinator,
    Leader(i32),
}

pub struct TxnProducer {
    pub idx: usize,
    id: String,
    pub conn: Option<ConnId>,
    /// The node `conn` reaches.
    conn_node: usize,
    /// The cluster's nodes (1: the single-node scenario).
    nodes: usize,
    topic: &'static str,
    /// Where each kind of request is sent now (node 0 until told otherwise).
    targets: BTreeMap<Target, usize>,
    /// Its own random draws (in a cluster), else the world's workload stream.
    rng: Option<ChaCha8Rng>,
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
    /// Error codes answered, per step (for the report of a run that did not settle).
    answers: BTreeMap<(Step, i16), u64>,
    /// The last answer asked for the request again.
    pub retrying: bool,
    /// EndTxn requests sent so far.
    pub end_sends: u64,
    /// Transaction version 2.
    pub tv2: bool,
    /// An EndTxn of this producer was given up on in flight (a timeout, a closed connection)
    /// since its last InitProducerId: a late copy may still reach the coordinator.
    stale_end: bool,
}

impl TxnProducer {
    pub fn new(idx: usize) -> TxnProducer {
        TxnProducer {
            idx,
            id: format!("sim-txn-{idx}"),
            conn: None,
            conn_node: 0,
            nodes: 1,
            topic: TOPIC,
            targets: BTreeMap::new(),
            rng: None,
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
            answers: BTreeMap::new(),
            retrying: false,
            end_sends: 0,
            tv2: idx % 2 == 1,
            stale_end: false,
        }
    }

    fn versions(&self) -> Versions {
        if self.tv2 {
            V2
        } else {
            V1
        }
    }

    /// A producer in a cluster of `nodes`, writing to `topic`, starting at `first_node`, with
    /// random draws of its own (`seed`).
    pub fn transactional_id(&self) -> &str {
        &self.id
    }

    pub fn in_cluster(idx: usize, nodes: usize, topic: &'static str, first_node: usize, seed: u64) -> TxnProducer {
        let mut p = TxnProducer::new(idx);
        p.nodes = nodes;
        p.topic = topic;
        p.targets = [Target::Coordinator, Target::GroupCoordinator].into_iter().map(|t| (t, first_node)).collect();
        p.rng = Some(ChaCha8Rng::seed_from_u64(seed));
        p.tv2 = seed % 2 == 1;
        p
    }

    /// Transactions begun so far.
    pub fn begun(&self) -> u64 {
        self.txns
    }

    /// The node its transaction's coordinator is believed to be on.
    pub fn coordinator(&self) -> usize {
        self.node_of(Target::Coordinator)
    }

    /// Where the current step's request goes.
    fn target(&self) -> Target {
        match self.step {
            Step::Produce => {
                let txn = self.txn.as_ref();
                let p = txn.and_then(|t| t.parts.keys().find(|p| !t.acked.contains(p))).copied();
                p.map_or(Target::Coordinator, Target::Leader)
            }
            Step::CommitOffsets => Target::GroupCoordinator,
            _ => Target::Coordinator,
        }
    }

    fn node_of(&self, t: Target) -> usize {
        self.targets.get(&t).copied().unwrap_or(0)
    }

    /// The node believed to serve `t` does not: try the next.
    fn move_on(&mut self, t: Target) {
        let next = (self.node_of(t) + 1) % self.nodes;
        self.targets.insert(t, next);
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
            "txn producer {} (version {}): {:?}, producer {:?}, txn {:?}, {} committed, {} aborted, conn {:?} to node {}, targets {:?}, errors {:?}",
            self.idx,
            if self.tv2 { 2 } else { 1 },
            self.step,
            self.producer,
            self.txn.as_ref().map(|t| (t.no, t.commit, t.parts.keys().collect::<Vec<_>>(), t.acked.len())),
            self.committed,
            self.aborted,
            self.conn,
            self.conn_node,
            self.targets,
            self.answers.iter().filter(|((_, c), _)| *c != 0).collect::<Vec<_>>()
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
                self.stale_end |= self.step == Step::End;
                self.in_flight = None;
                self.move_on(self.target());
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
        let node = self.node_of(self.target());
        if self.conn.is_some() && self.conn_node != node {
            w.close(self.conn.take().expect("checked"));
        }
        let conn = match self.conn {
            Some(c) => c,
            None => {
                let c = w.connect(self.idx, node);
                opened.push(c);
                self.conn = Some(c);
                self.conn_node = node;
                c
            }
        };
        self.next_cid += 1;
        let cid = self.next_cid;
        let Some(frame) = self.request(cid) else { return };
        w.send(conn, frame);
        self.end_sends += u64::from(self.step == Step::End);
        self.in_flight = Some((cid, now));
    }

    /// The request of the current step (`None` when idle).
    fn request(&self, cid: i32) -> Option<Bytes> {
        let id = TransactionalId(StrBytes::from_string(self.id.clone()));
        if self.step == Step::Init {
            let req = InitProducerIdRequest::default()
                .with_transactional_id(Some(id))
                .with_transaction_timeout_ms(TXN_TIMEOUT_MS);
            return Some(codec::frame(ApiKey::InitProducerId, codec::INIT_PRODUCER_ID_VERSION, cid, &req));
        }
        let (pid, epoch) = self.producer?;
        let txn = self.txn.as_ref()?;
        let topic = TopicName(StrBytes::from_static_str(self.topic));
        Some(match self.step {
            Step::Idle | Step::Init => return None,
            Step::AddPartitions => {
                let mut t = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
                t.name = topic;
                t.partitions = txn.parts.keys().copied().collect();
                let mut req = AddPartitionsToTxnRequest::default();
                req.v3_and_below_transactional_id = id;
                req.v3_and_below_producer_id = ProducerId(pid);
                req.v3_and_below_producer_epoch = epoch;
                req.v3_and_below_topics = vec![t];
                codec::frame(ApiKey::AddPartitionsToTxn, codec::ADD_PARTITIONS_TO_TXN_VERSION, cid, &req)
            }
            Step::Produce => self.produce_request(txn, (pid, epoch), id, topic, cid),
            Step::AddOffsets => {
                let req = AddOffsetsToTxnRequest::default()
                    .with_transactional_id(id)
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch)
                    .with_group_id(GroupId(StrBytes::from_static_str(OFFSETS_GROUP)));
                codec::frame(ApiKey::AddOffsetsToTxn, 3, cid, &req)
            }
            Step::CommitOffsets => {
                let p = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                    .with_committed_offset(txn_offset(self.idx, txn.no))
                    .with_committed_leader_epoch(-1);
                let t = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                    .with_name(topic)
                    .with_partitions(vec![p]);
                let req = TxnOffsetCommitRequest::default()
                    .with_transactional_id(id)
                    .with_group_id(GroupId(StrBytes::from_static_str(OFFSETS_GROUP)))
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch)
                    .with_topics(vec![t]);
                codec::frame(ApiKey::TxnOffsetCommit, self.versions().offsets, cid, &req)
            }
            Step::End => {
                let req = EndTxnRequest::default()
                    .with_transactional_id(id)
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch)
                    .with_committed(txn.commit);
                codec::frame(ApiKey::EndTxn, self.versions().end, cid, &req)
            }
        })
    }

    /// The transaction's batches not yet acknowledged, for the partitions led (it believes)
    /// by the node the first of them goes to.
    fn produce_request(
        &self,
        txn: &Txn,
        (pid, epoch): (i64, i16),
        id: TransactionalId,
        topic: TopicName,
        cid: i32,
    ) -> Bytes {
        let node = self.node_of(self.target());
        let mut td = produce_request::TopicProduceData::default();
        td.name = topic;
        let due = |p: &i32| !txn.acked.contains(p) && self.node_of(Target::Leader(*p)) == node;
        for (p, (values, seq)) in txn.parts.iter().filter(|(p, _)| due(p)) {
            let mut pd = produce_request::PartitionProduceData::default();
            pd.index = *p;
            pd.records = Some(codec::transactional_batch_of(values, 1_700_000_000_000, pid, epoch, *seq));
            td.partition_data.push(pd);
        }
        let mut req = ProduceRequest::default();
        req.transactional_id = Some(id);
        req.acks = -1;
        req.timeout_ms = 30_000;
        req.topic_data = vec![td];
        codec::frame(ApiKey::Produce, self.versions().produce, cid, &req)
    }

    /// Opens the next transaction: its partitions, values and outcome are drawn now.
    fn begin(&mut self, w: &mut World, checker: &mut Checker, partitions: i32, batch_max: usize) {
        self.txns += 1;
        let rng = match self.rng.as_mut() {
            Some(r) => r,
            None => w.workload_rng(),
        };
        let n = rng.gen_range(1..=partitions.min(3) as usize);
        let mut parts = BTreeMap::new();
        while parts.len() < n {
            let p = rng.gen_range(0..partitions);
            let k = rng.gen_range(1..=batch_max);
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
        let commit = rng.gen_bool(0.7);
        let all: Vec<String> = parts.values().flat_map(|(v, _)| v.iter().cloned()).collect();
        checker.on_txn_send(self.idx, self.txns, &all);
        checker.on_txn_offset(txn_offset(self.idx, self.txns), self.idx, self.txns);
        self.txn = Some(Txn { no: self.txns, parts, acked: BTreeSet::new(), commit });
        // Version 2: the partitions join the transaction with its first batches.
        self.step = if self.tv2 { Step::Produce } else { Step::AddPartitions };
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

    /// INVALID_TXN_STATE for an EndTxn after one of this producer's own was given up on in
    /// flight: with transaction version 1 (as in Kafka) that late EndTxn, whose epoch is still
    /// the producer's, may have ended the transaction begun since, and this one then finds
    /// nothing to end. Fatal to a Java producer: the application starts a new one, whose
    /// InitProducerId bumps the epoch. The open transaction's outcome stays unknown to it (the
    /// checker holds such a transaction to all or nothing).
    fn restart_after_a_stale_end(&mut self) {
        self.txn = None;
        self.producer = None;
        self.next_seq.clear();
        self.step = Step::Init;
        self.stale_end = false;
    }

    pub fn on_response(&mut self, w: &mut World, checker: &mut Checker, frame: Bytes) {
        let at = w.now();
        let Some((cid, _)) = self.in_flight else { return };
        if codec::correlation_id(&frame) != Some(cid) {
            return;
        }
        self.in_flight = None;
        let answer = match self.step {
            Step::Idle => return,
            Step::Init => self.on_init(at, checker, frame),
            Step::Produce => self.on_produce(at, checker, frame),
            Step::End if self.tv2 => self.on_end_v2(frame),
            step => error_code(step, frame, self.versions()).map(|code| {
                *self.answers.entry((step, code)).or_default() += 1;
                self.wrong_node(code);
                classify(code, step)
            }),
        };
        self.retrying = matches!(answer, Ok(Answer::Again));
        match answer {
            Ok(Answer::Done) => self.advance(checker, at),
            Ok(Answer::Fenced) => self.fenced(checker, at),
            Ok(Answer::Abort) => {
                if let Some(t) = self.txn.as_mut() {
                    t.commit = false;
                }
                self.step = Step::End;
            }
            Ok(Answer::Again) => {}
            Ok(Answer::Fatal) if self.stale_end => self.restart_after_a_stale_end(),
            Ok(Answer::Fatal) => {
                checker.on_error(at, format!("txn producer {}: {:?} refused with error 48", self.idx, self.step))
            }
            Ok(Answer::Refused(code)) => {
                checker.on_error(at, format!("txn producer {}: {:?} refused with error {code}", self.idx, self.step))
            }
            Err(e) => {
                checker.on_error(at, format!("txn producer {}: undecodable {:?} answer: {e}", self.idx, self.step))
            }
        }
    }

    /// A coordinator's answer says it is not the one (or not yet): try the next node.
    fn wrong_node(&mut self, code: i16) {
        if matches!(code, 15 | 16) {
            self.move_on(self.target());
        }
    }

    /// The step's request succeeded: on to the next.
    fn advance(&mut self, checker: &mut Checker, at: Nanos) {
        self.step = match self.step {
            Step::Init | Step::Idle => Step::Idle,
            Step::AddPartitions => Step::Produce,
            Step::Produce if self.tv2 => Step::CommitOffsets,
            Step::Produce => Step::AddOffsets,
            Step::AddOffsets => Step::CommitOffsets,
            Step::CommitOffsets => Step::End,
            Step::End => {
                let commit = self.txn.as_ref().is_some_and(|t| t.commit);
                self.finish(checker, at, commit);
                Step::Idle
            }
        };
    }

    fn on_init(&mut self, at: Nanos, checker: &mut Checker, frame: Bytes) -> Result<Answer, String> {
        let (_, r) =
            codec::decode::<InitProducerIdResponse>(ApiKey::InitProducerId, codec::INIT_PRODUCER_ID_VERSION, frame)?;
        *self.answers.entry((Step::Init, r.error_code)).or_default() += 1;
        self.wrong_node(r.error_code);
        if r.error_code == 0 {
            checker.on_producer_id(at, self.idx, r.producer_id.0);
            self.producer = Some((r.producer_id.0, r.producer_epoch));
            self.next_seq.clear();
            self.stale_end = false; // the new epoch fences whatever is still in flight
        }
        Ok(classify(r.error_code, Step::Init))
    }

    /// EndTxn v5's answer names the producer id and epoch to go on with (a new epoch after
    /// every end): sequences start again at 0.
    fn on_end_v2(&mut self, frame: Bytes) -> Result<Answer, String> {
        let (_, r) = codec::decode::<EndTxnResponse>(ApiKey::EndTxn, V2.end, frame)?;
        *self.answers.entry((Step::End, r.error_code)).or_default() += 1;
        self.wrong_node(r.error_code);
        if r.error_code == 0 {
            if r.producer_id.0 < 0 || r.producer_epoch < 0 {
                return Err(format!("EndTxn v5 succeeded without a producer: {:?}", (r.producer_id, r.producer_epoch)));
            }
            self.producer = Some((r.producer_id.0, r.producer_epoch));
            self.next_seq.clear();
        }
        Ok(classify(r.error_code, Step::End))
    }

    /// Acknowledged partitions are done; the step is done when all are.
    fn on_produce(&mut self, at: Nanos, checker: &mut Checker, frame: Bytes) -> Result<Answer, String> {
        let (_, r) = codec::decode::<ProduceResponse>(ApiKey::Produce, self.versions().produce, frame)?;
        let Some(txn) = self.txn.as_mut() else { return Ok(Answer::Again) };
        let mut worst = Answer::Done;
        let mut elsewhere = Vec::new();
        for pr in r.responses.iter().flat_map(|t| &t.partition_responses) {
            *self.answers.entry((Step::Produce, pr.error_code)).or_default() += 1;
            if matches!(pr.error_code, 3 | 5 | 6) {
                elsewhere.push(pr.index);
            }
            match classify(pr.error_code, Step::Produce) {
                Answer::Done => {
                    if txn.acked.insert(pr.index) {
                        checker.on_ack(at, self.idx, pr.index, pr.base_offset, &txn.parts[&pr.index].0, -1);
                    }
                }
                a => worst = worst.max(a),
            }
        }
        let answer = match worst {
            Answer::Done if txn.acked.len() < txn.parts.len() => Answer::Again,
            a => a,
        };
        for p in elsewhere {
            self.move_on(Target::Leader(p));
        }
        Ok(answer)
    }

    pub fn on_closed(&mut self, conn: ConnId) {
        if self.conn == Some(conn) {
            self.conn = None;
            self.stale_end |= self.step == Step::End && self.in_flight.is_some();
            self.in_flight = None;
            self.move_on(self.target());
        }
    }
}
