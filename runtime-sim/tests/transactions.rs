//! Transactions on the real core over the simulated disk: what read_committed sees (the last
//! stable offset, the aborted transactions) before and after a crash, a new producer with the
//! same transactional id aborting the open transaction it finds, the coordinator aborting a
//! transaction past its timeout and fencing its producer, and idle transactional ids expiring,
//! durably.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_core::log::batch;
use sluice_core::{ConnId, NodeConfig};
use sluice_runtime_sim::SimNode;

mod common;
use common::{decode, frame};

const C: ConnId = ConnId(1);
const TOPIC: &str = "t";

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Sends a request, lets every sync complete, and decodes the answer.
fn call<Q: Encodable, R: Decodable>(sim: &mut SimNode, key: ApiKey, version: i16, req: &Q) -> R {
    sim.auto_sync = true;
    sim.request(C, frame(key, version, 7, req));
    sim.complete_syncs();
    let resp = sim.take_response(C).unwrap_or_else(|| panic!("{key:?} not answered"));
    decode(key, version, resp)
}

fn node(config: NodeConfig) -> SimNode {
    let mut sim = SimNode::new(config, 1);
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(sb(TOPIC));
    t.num_partitions = 2;
    t.replication_factor = 1;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    let r: CreateTopicsResponse = call(&mut sim, ApiKey::CreateTopics, 5, &req);
    assert_eq!(r.topics[0].error_code, 0);
    sim
}

/// InitProducerId for `id`, retried while the coordinator is busy: (producer id, epoch).
fn init(sim: &mut SimNode, id: &str, timeout_ms: i32) -> (i64, i16) {
    for _ in 0..10 {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(sb(id))))
            .with_transaction_timeout_ms(timeout_ms);
        let r: InitProducerIdResponse = call(sim, ApiKey::InitProducerId, 4, &req);
        match r.error_code {
            0 => return (r.producer_id.0, r.producer_epoch),
            14 | 51 => continue,
            e => panic!("InitProducerId: error {e}"),
        }
    }
    panic!("InitProducerId never succeeded")
}

fn add_partitions(sim: &mut SimNode, id: &str, (pid, epoch): (i64, i16), parts: &[i32]) -> i16 {
    let mut t = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
    t.name = TopicName(sb(TOPIC));
    t.partitions = parts.to_vec();
    let mut req = AddPartitionsToTxnRequest::default();
    req.v3_and_below_transactional_id = TransactionalId(sb(id));
    req.v3_and_below_producer_id = ProducerId(pid);
    req.v3_and_below_producer_epoch = epoch;
    req.v3_and_below_topics = vec![t];
    let r: AddPartitionsToTxnResponse = call(sim, ApiKey::AddPartitionsToTxn, 3, &req);
    r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

/// One partition's transactional batch in a produce request: the partition, the producer
/// (id, epoch), its first sequence and the values.
type Entry<'a> = (i32, (i64, i16), i32, &'a [&'a str]);

/// A transactional produce request (acks=all) under `id` with one batch per entry.
fn produce_request(id: &str, entries: &[Entry]) -> ProduceRequest {
    let mut td = produce_request::TopicProduceData::default();
    td.name = TopicName(sb(TOPIC));
    for &(partition, (pid, epoch), seq, values) in entries {
        let mut b = batch::encode_values(values, 1_700_000_000_000);
        b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        batch::set_producer(&mut b, pid, epoch, seq);
        let mut pd = produce_request::PartitionProduceData::default();
        pd.index = partition;
        pd.records = Some(Bytes::from(b));
        td.partition_data.push(pd);
    }
    let mut req = ProduceRequest::default();
    req.transactional_id = Some(TransactionalId(sb(id)));
    req.acks = -1;
    req.timeout_ms = 1000;
    req.topic_data = vec![td];
    req
}

/// Each partition's (error, base offset) in a produce answer, in the request's order.
fn produce_results(r: &ProduceResponse) -> Vec<(i16, i64)> {
    r.responses[0].partition_responses.iter().map(|p| (p.error_code, p.base_offset)).collect()
}

/// A transactional batch of `values` to `partition`: (error, base offset).
fn produce(sim: &mut SimNode, id: &str, p: (i64, i16), partition: i32, seq: i32, values: &[&str]) -> (i16, i64) {
    let r: ProduceResponse = call(sim, ApiKey::Produce, 9, &produce_request(id, &[(partition, p, seq, values)]));
    produce_results(&r)[0]
}

fn end(sim: &mut SimNode, id: &str, p: (i64, i16), commit: bool) -> i16 {
    end_txn(sim, id, p, commit, 3).error_code
}

/// EndTxn at `version`.
fn end_txn(sim: &mut SimNode, id: &str, (pid, epoch): (i64, i16), commit: bool, version: i16) -> EndTxnResponse {
    let mut req = EndTxnRequest::default();
    req.transactional_id = TransactionalId(sb(id));
    req.producer_id = ProducerId(pid);
    req.producer_epoch = epoch;
    req.committed = commit;
    call(sim, ApiKey::EndTxn, version, &req)
}

/// EndTxn v5 committing: (error, the epoch the producer goes on with).
fn commit_v5(sim: &mut SimNode, id: &str, p: (i64, i16)) -> (i16, i16) {
    let r = end_txn(sim, id, p, true, 5);
    (r.error_code, r.producer_epoch)
}

/// read_committed: (high watermark, last stable offset, aborted (producer, first offset),
/// values of the transactions not aborted, in offset order).
fn read_committed(sim: &mut SimNode, partition: i32) -> (i64, i64, Vec<(i64, i64)>, Vec<String>) {
    let mut fp = fetch_request::FetchPartition::default();
    fp.partition = partition;
    fp.partition_max_bytes = 1 << 20;
    let mut ft = fetch_request::FetchTopic::default();
    ft.topic = TopicName(sb(TOPIC));
    ft.partitions = vec![fp];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_bytes = 1 << 20;
    req.isolation_level = 1;
    req.session_epoch = -1;
    req.topics = vec![ft];
    let r: FetchResponse = call(sim, ApiKey::Fetch, 11, &req);
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let aborted: Vec<(i64, i64)> =
        p.aborted_transactions.iter().flatten().map(|a| (a.producer_id.0, a.first_offset)).collect();
    let mut values = Vec::new();
    let mut set: &[u8] = p.records.as_deref().unwrap_or_default();
    while !set.is_empty() {
        let h = batch::check_batch(set).unwrap();
        let is_aborted = aborted.iter().any(|(pid, first)| *pid == h.producer_id && *first <= h.base_offset);
        if !h.is_control() && !(h.is_transactional() && is_aborted) {
            for (_, _, v) in batch::uncompressed_records(&set[..h.size]).unwrap() {
                values.push(String::from_utf8(v.unwrap().to_vec()).unwrap());
            }
        }
        set = &set[h.size..];
    }
    (p.high_watermark, p.last_stable_offset, aborted, values)
}

fn describe(sim: &mut SimNode, id: &str) -> (i16, String, i16) {
    let req = DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(sb(id))]);
    let r: DescribeTransactionsResponse = call(sim, ApiKey::DescribeTransactions, 0, &req);
    let t = &r.transaction_states[0];
    (t.error_code, t.transaction_state.to_string(), t.producer_epoch)
}

#[test]
fn read_committed_across_a_crash_and_a_new_producer_aborting_what_it_finds() {
    let mut sim = node(NodeConfig::default());
    let p = init(&mut sim, "tx", 60_000);
    assert_eq!(p.1, 0);
    // A committed transaction over both partitions.
    assert_eq!(add_partitions(&mut sim, "tx", p, &[0, 1]), 0);
    assert_eq!(produce(&mut sim, "tx", p, 0, 0, &["c0", "c1"]), (0, 0));
    assert_eq!(produce(&mut sim, "tx", p, 1, 0, &["c2"]), (0, 0));
    assert_eq!(end(&mut sim, "tx", p, true), 0);
    // An aborted one on partition 0.
    assert_eq!(add_partitions(&mut sim, "tx", p, &[0]), 0);
    assert_eq!(produce(&mut sim, "tx", p, 0, 2, &["a0"]), (0, 3));
    assert_eq!(end(&mut sim, "tx", p, false), 0);
    // One left open on partition 1 (offset 2, after the first marker at 1).
    assert_eq!(add_partitions(&mut sim, "tx", p, &[1]), 0);
    assert_eq!(produce(&mut sim, "tx", p, 1, 1, &["o0"]), (0, 2));
    // Partition 0: c0 c1, marker, a0, marker: all decided, a0 aborted.
    assert_eq!(read_committed(&mut sim, 0), (5, 5, vec![(p.0, 3)], vec!["c0".into(), "c1".into()]));
    // Partition 1: c2, marker, o0 open: read_committed stops before it.
    assert_eq!(read_committed(&mut sim, 1), (3, 2, vec![], vec!["c2".into()]));
    // A producer outside the transaction cannot write into it.
    assert_eq!(produce(&mut sim, "other", p, 1, 2, &["x"]).0, 48);

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    sim.crash_and_restart(&mut rng);
    assert_eq!(read_committed(&mut sim, 0), (5, 5, vec![(p.0, 3)], vec!["c0".into(), "c1".into()]));
    assert_eq!(read_committed(&mut sim, 1), (3, 2, vec![], vec!["c2".into()]));
    assert_eq!(describe(&mut sim, "tx"), (0, "Ongoing".into(), 0));
    // A new producer with the same id: the open transaction is aborted (its producer fenced
    // by a bumped epoch), then the new one gets the next epoch.
    let q = init(&mut sim, "tx", 60_000);
    assert_eq!(q, (p.0, 2));
    assert_eq!(end(&mut sim, "tx", p, true), 90, "the old producer is fenced");
    assert_eq!(read_committed(&mut sim, 1), (4, 4, vec![(p.0, 2)], vec!["c2".into()]));
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let mut config = NodeConfig::default();
    config.txn_abort_check_interval_ms = 100;
    let mut sim = node(config);
    let p = init(&mut sim, "slow", 500);
    assert_eq!(add_partitions(&mut sim, "slow", p, &[0]), 0);
    assert_eq!(produce(&mut sim, "slow", p, 0, 0, &["late"]), (0, 0));
    assert_eq!(read_committed(&mut sim, 0).1, 0, "open: nothing is stable");
    sim.auto_sync = true;
    for _ in 0..8 {
        sim.advance_ms(100);
    }
    assert_eq!(describe(&mut sim, "slow").1, "CompleteAbort");
    assert_eq!(end(&mut sim, "slow", p, true), 90);
    assert_eq!(produce(&mut sim, "slow", p, 0, 1, &["later"]).0, 47, "fenced on the partition too");
    assert_eq!(read_committed(&mut sim, 0), (2, 2, vec![(p.0, 0)], vec![]));
}

#[test]
fn writes_outside_the_transaction_are_abortable_for_the_versions_that_know_it() {
    let mut sim = node(NodeConfig::default());
    let p = init(&mut sim, "tx", 60_000);
    assert_eq!(add_partitions(&mut sim, "tx", p, &[0]), 0);
    // Partition 1 was never added: Produce v11+ is told to abort (and may go on), older
    // versions get INVALID_TXN_STATE, as from Kafka.
    for (version, want) in [(9, 48), (10, 48), (11, 120)] {
        let r: ProduceResponse = call(&mut sim, ApiKey::Produce, version, &produce_request("tx", &[(1, p, 0, &["x"])]));
        assert_eq!(produce_results(&r)[0].0, want, "Produce v{version}");
    }
    // Offsets of a group the transaction never added (no AddOffsetsToTxn): the same, for
    // TxnOffsetCommit v4 (v5 adds the group itself).
    for (version, want) in [(3, 48), (4, 120)] {
        let mut part = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default();
        part.partition_index = 0;
        part.committed_offset = 5;
        let mut topic = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default();
        topic.name = TopicName(sb(TOPIC));
        topic.partitions = vec![part];
        let mut req = TxnOffsetCommitRequest::default();
        req.transactional_id = TransactionalId(sb("tx"));
        req.group_id = GroupId(sb("g"));
        req.producer_id = ProducerId(p.0);
        req.producer_epoch = p.1;
        req.generation_id = -1;
        req.topics = vec![topic];
        let r: TxnOffsetCommitResponse = call(&mut sim, ApiKey::TxnOffsetCommit, version, &req);
        assert_eq!(r.topics[0].partitions[0].error_code, want, "TxnOffsetCommit v{version}");
    }
    // Nothing of it was written: the transaction's partition 0 is still empty.
    assert_eq!(read_committed(&mut sim, 1), (0, 0, vec![], vec![]));
}

#[test]
fn a_producer_with_an_open_transaction_outlives_producer_id_expiration() {
    let mut config = NodeConfig::default();
    config.producer_id_expiration_ms = 1_000;
    config.producer_id_expiration_check_interval_ms = 100;
    let mut sim = node(config);
    // An idle idempotent producer (not transactional) on partition 1 expires: the check runs.
    let plain = init_idempotent(&mut sim);
    let r: ProduceResponse = call(&mut sim, ApiKey::Produce, 9, &idempotent_request(plain, 0, "p0"));
    assert_eq!(produce_results(&r)[0], (0, 0));
    let p = init(&mut sim, "long", 60_000);
    assert_eq!(add_partitions(&mut sim, "long", p, &[0]), 0);
    assert_eq!(produce(&mut sim, "long", p, 0, 0, &["slow"]), (0, 0));
    sim.auto_sync = true;
    for _ in 0..20 {
        sim.advance_ms(100);
    }
    let r: ProduceResponse = call(&mut sim, ApiKey::Produce, 9, &idempotent_request(plain, 5, "p5"));
    assert_eq!(produce_results(&r)[0], (0, 1), "expired: a gap from an unknown producer is taken");
    // The transaction's producer was as idle, but its marker must still find it open.
    assert_eq!(end(&mut sim, "long", p, true), 0);
    assert_eq!(read_committed(&mut sim, 0), (2, 2, vec![], vec!["slow".into()]), "the commit made it stable");
}

/// InitProducerId without a transactional id: (producer id, epoch).
fn init_idempotent(sim: &mut SimNode) -> (i64, i16) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(-1)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let r: InitProducerIdResponse = call(sim, ApiKey::InitProducerId, 4, &req);
    assert_eq!(r.error_code, 0);
    (r.producer_id.0, r.producer_epoch)
}

/// A plain idempotent batch of one value at `seq` to partition 1.
fn idempotent_request(p: (i64, i16), seq: i32, value: &str) -> ProduceRequest {
    let mut req = produce_request("", &[(1, p, seq, &[value])]);
    req.transactional_id = None;
    let records = req.topic_data[0].partition_data[0].records.take().expect("one batch");
    let mut b = records.to_vec();
    b[21..23].copy_from_slice(&0i16.to_be_bytes()); // not transactional
    batch::set_producer(&mut b, p.0, p.1, seq); // the CRC again
    req.topic_data[0].partition_data[0].records = Some(Bytes::from(b));
    req
}

#[test]
fn idle_transactional_ids_expire_durably() {
    let mut config = NodeConfig::default();
    config.txn_abort_check_interval_ms = 100;
    config.txn_id_expiration_ms = 1_000;
    let mut sim = node(config);
    let p = init(&mut sim, "brief", 500);
    assert_eq!(describe(&mut sim, "brief").0, 0);
    sim.auto_sync = true;
    for _ in 0..12 {
        sim.advance_ms(100);
    }
    assert_eq!(describe(&mut sim, "brief").0, 105, "TRANSACTIONAL_ID_NOT_FOUND");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    sim.crash_and_restart(&mut rng);
    assert_eq!(describe(&mut sim, "brief").0, 105, "the tombstone is durable");
    // Back later, the id starts afresh with a new producer id.
    let q = init(&mut sim, "brief", 500);
    assert_ne!(q.0, p.0);
}

#[test]
fn a_request_carrying_two_producers_batches_is_refused_whole() {
    let mut sim = node(NodeConfig::default());
    let p = init(&mut sim, "a", 60_000);
    let q = init(&mut sim, "b", 60_000);
    assert_eq!(add_partitions(&mut sim, "a", p, &[0]), 0);
    assert_eq!(add_partitions(&mut sim, "b", q, &[1]), 0);
    // As Kafka: one producer (id and epoch) per request, or INVALID_PRODUCER_ID_MAPPING for
    // every partition and nothing written.
    let req = produce_request("a", &[(0, p, 0, &["a0"]), (1, q, 0, &["b0"])]);
    let r: ProduceResponse = call(&mut sim, ApiKey::Produce, 9, &req);
    assert_eq!(produce_results(&r), vec![(49, -1), (49, -1)]);
    let stale = (p.0, p.1 - 1);
    let req = produce_request("a", &[(0, p, 0, &["a0"]), (0, stale, 0, &["a0"])]);
    let r: ProduceResponse = call(&mut sim, ApiKey::Produce, 9, &req);
    assert_eq!(produce_results(&r)[0].0, 49, "two epochs of one producer id are two producers");
    assert_eq!(read_committed(&mut sim, 0).0, 0);
    assert_eq!(read_committed(&mut sim, 1).0, 0);
    // Each alone is taken.
    assert_eq!(produce(&mut sim, "a", p, 0, 0, &["a0"]), (0, 0));
    assert_eq!(produce(&mut sim, "b", q, 1, 0, &["b0"]), (0, 0));
}

#[test]
fn version_two_produces_behind_a_partition_being_added_keep_their_order() {
    let mut sim = node(NodeConfig::default());
    let p = init(&mut sim, "v2", 60_000);
    // Produce v12 adds the partitions itself. Three requests on one connection, sent before
    // any sync completes: the first waits for its partition's addition to be durable, the
    // second (same partition, next sequence) waits behind it, the third adds partition 1 once
    // the first two are through.
    sim.auto_sync = false;
    let requests = [
        produce_request("v2", &[(0, p, 0, &["x0", "x1"])]),
        produce_request("v2", &[(0, p, 2, &["x2"])]),
        produce_request("v2", &[(1, p, 0, &["y0"])]),
    ];
    for (i, req) in requests.iter().enumerate() {
        sim.request(C, frame(ApiKey::Produce, 12, i32::try_from(i).unwrap(), req));
    }
    for _ in 0..10 {
        sim.complete_syncs();
        sim.advance_ms(1);
    }
    let mut answers = Vec::new();
    while let Some(resp) = sim.take_response(C) {
        let correlation_id = i32::from_be_bytes(resp[4..8].try_into().unwrap());
        let r: ProduceResponse = decode(ApiKey::Produce, 12, resp);
        answers.push((correlation_id, produce_results(&r)[0]));
    }
    assert_eq!(answers, vec![(0, (0, 0)), (1, (0, 2)), (2, (0, 0))]);
    assert_eq!(commit_v5(&mut sim, "v2", p), (0, p.1 + 1));
    assert_eq!(read_committed(&mut sim, 0).3, vec!["x0", "x1", "x2"]);
    assert_eq!(read_committed(&mut sim, 1).3, vec!["y0"]);
}

/// A version-2 transaction starts its sequences at 0 on each partition, at a new epoch (EndTxn
/// v5 bumps it and its markers carry the new one). A later
/// batch that arrives first (its predecessor refused, retriable, while the coordinator was
/// still completing the last transaction) is out of order; taken, it would leave the
/// first batch out of order for good (the Java client retried it until its transaction
/// timed out).
#[test]
fn a_version_two_epoch_starts_at_sequence_zero_after_its_marker() {
    let mut sim = node(NodeConfig::default());
    let p = init(&mut sim, "v2", 60_000);
    let v12 = |sim: &mut SimNode, e: Entry| -> (i16, i64) {
        let r: ProduceResponse = call(sim, ApiKey::Produce, 12, &produce_request("v2", &[e]));
        produce_results(&r)[0]
    };
    // The partition has never seen the producer (and would take any sequence from an
    // idempotent one, KIP-360), but a version-2 transaction's first batch is sequence 0.
    assert_eq!(v12(&mut sim, (0, p, 2, &["x2"])).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert_eq!(v12(&mut sim, (0, p, 0, &["x0", "x1"])), (0, 0));
    assert_eq!(commit_v5(&mut sim, "v2", p), (0, p.1 + 1));
    assert_eq!(read_committed(&mut sim, 0).3, vec!["x0", "x1"], "the marker is written");
    let next = (p.0, p.1 + 1);
    assert_eq!(v12(&mut sim, (0, next, 2, &["y2"])).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert_eq!(v12(&mut sim, (0, next, 0, &["y0", "y1"])), (0, 3), "after the marker at offset 2");
    assert_eq!(v12(&mut sim, (0, next, 2, &["y2"])), (0, 5));
}
