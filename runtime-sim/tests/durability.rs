//! The durability contract, checked on the real core over the simulated disk: nothing is
//! acknowledged before its sync, a crash loses only unacknowledged records, a torn tail is cut
//! cleanly, a failed sync fails the produce and loses nothing acknowledged.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_core::{ConnId, NodeConfig};
use sluice_runtime_sim::SimNode;

mod common;
use common::{decode, frame};

const C: ConnId = ConnId(1);

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn create_topic(sim: &mut SimNode, topic: &str, partitions: i32) {
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = name(topic);
    t.num_partitions = partitions;
    t.replication_factor = 1;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    sim.request(C, frame(ApiKey::CreateTopics, 5, 1, &req));
    assert!(sim.take_response(C).is_none(), "CreateTopics answered before its metadata record was synced");
    sim.complete_syncs();
    let resp: CreateTopicsResponse =
        decode(ApiKey::CreateTopics, 5, sim.take_response(C).expect("answered after sync"));
    assert_eq!(resp.topics[0].error_code, 0);
}

/// A plain record, as a client library would build it.
fn record(offset: i64, timestamp: i64, value: Bytes) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        // The codec starts a new batch wherever offset - sequence changes: -1 for the first
        // record keeps the batch whole (one batch per partition, as clients send).
        sequence: offset as i32 - 1,
        timestamp,
        key: None,
        value: Some(value),
        headers: IndexMap::new(),
    }
}

fn batch(values: &[Vec<u8>]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| record(i as i64, 1_700_000_000_000 + i as i64, Bytes::from(v.clone())))
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .unwrap();
    buf.freeze()
}

fn produce_req(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    let mut pd = produce_request::PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(records);
    let mut td = produce_request::TopicProduceData::default();
    td.name = name(topic);
    td.partition_data = vec![pd];
    let mut r = ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 1000;
    r.topic_data = vec![td];
    r
}

fn fetch_req(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    let mut fp = fetch_request::FetchPartition::default();
    fp.partition = partition;
    fp.fetch_offset = offset;
    fp.partition_max_bytes = 1 << 24;
    let mut ft = fetch_request::FetchTopic::default();
    ft.topic = name(topic);
    ft.partitions = vec![fp];
    let mut r = FetchRequest::default();
    r.replica_id = BrokerId(-1);
    r.max_wait_ms = max_wait_ms;
    r.min_bytes = 1;
    r.max_bytes = 1 << 24;
    r.session_epoch = -1;
    r.topics = vec![ft];
    r
}

/// Every (offset, value) from `offset` to the high watermark.
fn read_all(sim: &mut SimNode, topic: &str, partition: i32) -> (Vec<(i64, Vec<u8>)>, i64) {
    let mut out = Vec::new();
    let mut offset = 0;
    // Its own connection: responses on one connection come in request order, so a fetch on C
    // would wait behind C's unanswered produces.
    let reader = ConnId(77);
    loop {
        sim.request(reader, frame(ApiKey::Fetch, 11, 9, &fetch_req(topic, partition, offset, 0)));
        let resp: FetchResponse = decode(ApiKey::Fetch, 11, sim.take_response(reader).expect("fetch answered"));
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        let mut recs = p.records.clone().unwrap_or_default();
        if recs.is_empty() {
            return (out, p.high_watermark);
        }
        for set in RecordBatchDecoder::decode_all(&mut recs).unwrap() {
            for r in set.records {
                if r.offset >= offset {
                    out.push((r.offset, r.value.unwrap().to_vec()));
                }
            }
        }
        offset = out.last().map_or(offset, |(o, _)| o + 1);
    }
}

fn produce(sim: &mut SimNode, topic: &str, values: &[Vec<u8>], cid: i32) {
    sim.request(C, frame(ApiKey::Produce, 9, cid, &produce_req(topic, 0, batch(values), -1)));
}

fn take_produce(sim: &mut SimNode) -> Option<(i16, i64)> {
    let resp: ProduceResponse = decode(ApiKey::Produce, 9, sim.take_response(C)?);
    let p = &resp.responses[0].partition_responses[0];
    Some((p.error_code, p.base_offset))
}

#[test]
fn acknowledged_only_after_sync_and_offsets_are_assigned_in_order() {
    let mut sim = SimNode::new(NodeConfig::default(), 1);
    create_topic(&mut sim, "t", 1);
    produce(&mut sim, "t", &[b"a".to_vec(), b"b".to_vec()], 10);
    produce(&mut sim, "t", &[b"c".to_vec()], 11);
    assert!(sim.take_response(C).is_none(), "produce answered before its sync");
    assert!(sim.pending_syncs() > 0);
    // Nothing un-synced is visible to a consumer either.
    assert_eq!(read_all(&mut sim, "t", 0), (vec![], 0));
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((0, 0)));
    assert_eq!(take_produce(&mut sim), Some((0, 2)));
    let (records, hw) = read_all(&mut sim, "t", 0);
    assert_eq!(hw, 3);
    assert_eq!(records, vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())]);
}

#[test]
fn long_poll_fetch_wakes_on_durable_data_and_times_out() {
    let mut sim = SimNode::new(NodeConfig::default(), 2);
    create_topic(&mut sim, "t", 1);
    sim.request(C, frame(ApiKey::Fetch, 11, 5, &fetch_req("t", 0, 0, 500)));
    let c2 = ConnId(2);
    sim.request(c2, frame(ApiKey::Produce, 9, 6, &produce_req("t", 0, batch(&[b"x".to_vec()]), -1)));
    assert!(sim.take_response(C).is_none(), "fetch answered before data was durable");
    sim.complete_syncs();
    let resp: FetchResponse = decode(ApiKey::Fetch, 11, sim.take_response(C).expect("fetch woken"));
    assert!(resp.responses[0].partitions[0].records.as_ref().is_some_and(|r| !r.is_empty()));
    // At the end of the log the fetch parks until max.wait.ms, then answers empty.
    sim.request(C, frame(ApiKey::Fetch, 11, 7, &fetch_req("t", 0, 1, 500)));
    sim.advance_ms(400);
    assert!(sim.take_response(C).is_none());
    sim.advance_ms(200);
    let resp: FetchResponse = decode(ApiKey::Fetch, 11, sim.take_response(C).expect("fetch timed out"));
    assert!(resp.responses[0].partitions[0].records.as_ref().is_none_or(|r| r.is_empty()));
    // A fetch naming no partition (a Java consumer closing its fetch session) has nothing to
    // wait for: answered at once, as Kafka does, not after max.wait.ms.
    let mut close = fetch_req("t", 0, 1, 500);
    close.topics.clear();
    sim.request(C, frame(ApiKey::Fetch, 11, 8, &close));
    let resp: FetchResponse = decode(ApiKey::Fetch, 11, sim.take_response(C).expect("an empty fetch answered at once"));
    assert_eq!((resp.error_code, resp.responses.len()), (0, 0));
}

#[test]
fn failed_sync_fails_the_produce_and_loses_nothing_acknowledged() {
    let mut sim = SimNode::new(NodeConfig::default(), 3);
    create_topic(&mut sim, "t", 1);
    produce(&mut sim, "t", &[b"kept".to_vec()], 1);
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((0, 0)));
    produce(&mut sim, "t", &[b"lost".to_vec()], 2);
    sim.fail_next_sync = Some(sluice_runtime_sim::no_space());
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((56, -1)), "KAFKA_STORAGE_ERROR");
    produce(&mut sim, "t", &[b"next".to_vec()], 3);
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((0, 1)), "the failed record's offset is reused");
    let (records, _) = read_all(&mut sim, "t", 0);
    assert_eq!(records, vec![(0, b"kept".to_vec()), (1, b"next".to_vec())]);
}

#[test]
fn full_disk_refuses_and_recovers() {
    let mut sim = SimNode::new(NodeConfig::default(), 4);
    create_topic(&mut sim, "t", 1);
    produce(&mut sim, "t", &[vec![1u8; 100]], 1);
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((0, 0)));
    sim.disk.capacity_bytes = Some(0);
    produce(&mut sim, "t", &[vec![2u8; 100]], 2);
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim).map(|r| r.0), Some(56));
    sim.disk.capacity_bytes = None;
    produce(&mut sim, "t", &[vec![3u8; 100]], 3);
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((0, 1)));
    let (records, _) = read_all(&mut sim, "t", 0);
    assert_eq!(records.iter().map(|r| r.1[0]).collect::<Vec<_>>(), vec![1, 3]);
}

/// Many seeds: random produces, random sync points, a crash at a random moment (unsynced
/// writes dropped or torn), a restart. Every acknowledged record is still at its offset, no
/// record appears that was never written, and the log accepts new records after it.
#[test]
fn crash_at_any_moment_keeps_every_acknowledged_record() {
    let mut torn = 0;
    for seed in 0..300u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut cfg = NodeConfig::default();
        cfg.log.segment_bytes = rng.gen_range(300..3000);
        let mut sim = SimNode::new(cfg, seed);
        create_topic(&mut sim, "t", 1);
        let mut acked: Vec<(i64, Vec<Vec<u8>>)> = Vec::new();
        let mut sent: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut next_value = 0u32;
        let mut in_flight = std::collections::VecDeque::new();
        for step in 0..rng.gen_range(1..40) {
            let n = rng.gen_range(1..20);
            let values: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    next_value += 1;
                    let mut v = format!("s{seed}-v{next_value}-").into_bytes();
                    v.resize(rng.gen_range(v.len()..700), b'x');
                    v
                })
                .collect();
            produce(&mut sim, "t", &values, step);
            in_flight.push_back(values.clone());
            sent.push(values);
            if rng.gen_bool(0.4) {
                sim.complete_syncs();
            }
            // Whatever the node has acknowledged so far, whenever it did, must survive.
            while let Some((err, base)) = take_produce(&mut sim) {
                assert_eq!(err, 0);
                acked.push((base, in_flight.pop_front().unwrap()));
            }
        }
        let report = sim.crash_and_restart(&mut rng);
        torn += report.torn_writes;
        let (records, hw) = read_all(&mut sim, "t", 0);
        let by_offset: std::collections::BTreeMap<i64, Vec<u8>> = records.iter().cloned().collect();
        for (base, values) in &acked {
            for (i, v) in values.iter().enumerate() {
                assert_eq!(by_offset.get(&(base + i as i64)), Some(v), "seed {seed}: acknowledged record lost");
            }
        }
        let all_sent: std::collections::BTreeSet<&Vec<u8>> = sent.iter().flatten().collect();
        for (o, v) in &records {
            assert!(all_sent.contains(v), "seed {seed}: offset {o} holds a value never sent");
        }
        let offsets: Vec<i64> = records.iter().map(|r| r.0).collect();
        assert_eq!(offsets, (0..hw).collect::<Vec<_>>(), "seed {seed}: offsets not contiguous from 0");
        produce(&mut sim, "t", &[b"after".to_vec()], 999);
        sim.complete_syncs();
        assert_eq!(take_produce(&mut sim), Some((0, hw)), "seed {seed}: log does not continue at its end");
    }
    assert!(torn > 10, "the crash model must actually tear writes ({torn})");
}

#[test]
fn corrupt_tail_is_cut_off_at_restart() {
    let mut sim = SimNode::new(NodeConfig::default(), 5);
    create_topic(&mut sim, "t", 1);
    produce(&mut sim, "t", &[b"one".to_vec(), b"two".to_vec()], 1);
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((0, 0)));
    // Garbage after the last batch: a plausible header with a bad CRC.
    let mut junk = BytesMut::new();
    junk.put_i64(2);
    junk.put_i32(60);
    junk.put_slice(&[0xAB; 60]);
    sim.disk.append_durable("t-0/00000000000000000000.log", &junk);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    sim.crash_and_restart(&mut rng);
    assert_eq!(sim.node.recovery_stats().torn_tails, 1);
    let (records, hw) = read_all(&mut sim, "t", 0);
    assert_eq!(hw, 2);
    assert_eq!(records.len(), 2);
    produce(&mut sim, "t", &[b"three".to_vec()], 2);
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((0, 2)));
}

#[test]
fn topics_survive_restart_and_deletion_is_durable() {
    let mut sim = SimNode::new(NodeConfig::default(), 6);
    create_topic(&mut sim, "a", 3);
    create_topic(&mut sim, "b", 1);
    let mut req = DeleteTopicsRequest::default();
    req.topic_names = vec![name("b")];
    sim.request(C, frame(ApiKey::DeleteTopics, 4, 3, &req));
    assert!(sim.take_response(C).is_none(), "delete answered before its record was synced");
    sim.complete_syncs();
    let resp: DeleteTopicsResponse = decode(ApiKey::DeleteTopics, 4, sim.take_response(C).unwrap());
    assert_eq!(resp.responses[0].error_code, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    sim.crash_and_restart(&mut rng);
    let mut md = MetadataRequest::default();
    md.topics = None;
    sim.request(C, frame(ApiKey::Metadata, 9, 4, &md));
    let resp: MetadataResponse = decode(ApiKey::Metadata, 9, sim.take_response(C).unwrap());
    let topics: Vec<(String, usize)> =
        resp.topics.iter().map(|t| (t.name.as_ref().unwrap().0.to_string(), t.partitions.len())).collect();
    assert_eq!(topics, vec![("a".to_string(), 3)]);
    assert!(sim.disk.read_file("b-0/00000000000000000000.log").is_none(), "deleted topic's files remain");
}

/// ListOffsets by timestamp finds the first record at or after the time, inside a batch, and
/// MAX_TIMESTAMP the record with the largest time, reading the batch from disk.
#[test]
fn list_offsets_by_timestamp_looks_inside_batches() {
    let mut sim = SimNode::new(NodeConfig::default(), 7);
    create_topic(&mut sim, "t", 1);
    let ts = 1_700_000_000_000i64;
    let recs: Vec<Record> =
        [0i64, 7, 3].iter().enumerate().map(|(i, d)| record(i as i64, ts + d, Bytes::from_static(b"v"))).collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &recs, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .unwrap();
    sim.request(C, frame(ApiKey::Produce, 9, 1, &produce_req("t", 0, buf.freeze(), -1)));
    let mut single = recs[0].clone();
    single.timestamp = ts + 100;
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&single],
        &RecordEncodeOptions { version: 2, compression: Compression::None },
    )
    .unwrap();
    sim.request(C, frame(ApiKey::Produce, 9, 2, &produce_req("t", 0, buf.freeze(), -1)));
    sim.complete_syncs();
    take_produce(&mut sim);
    take_produce(&mut sim);
    let cases = [
        (ts, (0, ts)),
        (ts + 1, (1, ts + 7)),
        (ts + 7, (1, ts + 7)),
        (ts + 8, (3, ts + 100)),
        (ts + 101, (-1, -1)),
        (-3, (3, ts + 100)),
    ];
    for (query, want) in cases {
        let mut p = list_offsets_request::ListOffsetsPartition::default();
        p.timestamp = query;
        let mut t = list_offsets_request::ListOffsetsTopic::default();
        t.name = name("t");
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![t];
        sim.request(C, frame(ApiKey::ListOffsets, 7, 3, &req));
        let resp: ListOffsetsResponse = decode(ApiKey::ListOffsets, 7, sim.take_response(C).unwrap());
        let p = &resp.topics[0].partitions[0];
        assert_eq!((p.offset, p.timestamp), want, "query {query}");
    }
}

/// A data directory written before the metadata quorum (topics in `.sluice-meta/metadata.log`)
/// keeps its topics: that log is read as the base the quorum's records apply on, and topics
/// created since live in the quorum's log.
#[test]
fn topics_of_a_pre_quorum_metadata_log_are_kept() {
    use sluice_core::metadata::{encode_record, MetaRecord};
    let mut sim = SimNode::new(NodeConfig::default(), 8);
    let old = MetaRecord::TopicCreated { name: "old".into(), id: [7; 16], partitions: 2, configs: vec![] };
    sim.disk.append_durable(".sluice-meta/metadata.log", &encode_record(&old));
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    sim.crash_and_restart(&mut rng);
    create_topic(&mut sim, "new", 1);
    sim.crash_and_restart(&mut rng);
    let mut md = MetadataRequest::default();
    md.topics = None;
    sim.request(C, frame(ApiKey::Metadata, 9, 4, &md));
    let resp: MetadataResponse = decode(ApiKey::Metadata, 9, sim.take_response(C).unwrap());
    let mut topics: Vec<(String, usize)> =
        resp.topics.iter().map(|t| (t.name.as_ref().unwrap().0.to_string(), t.partitions.len())).collect();
    topics.sort();
    assert_eq!(topics, vec![("new".to_string(), 1), ("old".to_string(), 2)]);
    produce(&mut sim, "old", &[b"kept".to_vec()], 5);
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((0, 0)));
    assert_eq!(read_all(&mut sim, "old", 0).0, vec![(0, b"kept".to_vec())]);
}

/// Bytes from a peer broker are untrusted: junk, another cluster's messages and a quorum
/// message from a node that is no voter change nothing, and the node serves on.
#[test]
fn bad_peer_messages_change_nothing() {
    use sluice_core::peer::{encode, Body, Envelope, PROTOCOL_VERSION};
    use sluice_core::quorum::Message;
    let mut sim = SimNode::new(NodeConfig::default(), 9);
    create_topic(&mut sim, "t", 1);
    let vote = |cluster: &str, from: i32| Envelope {
        version: PROTOCOL_VERSION,
        cluster_id: cluster.to_string(),
        from,
        body: Body::Quorum(Message::Vote { epoch: 99, last_epoch: 99, log_end: 1_000, pre_vote: false }),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..200 {
        let junk: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
        sim.peer(2, Bytes::from(junk));
    }
    sim.peer(2, Bytes::from(encode(&vote("another-cluster", 2))));
    sim.peer(3, Bytes::from(encode(&vote(&NodeConfig::default().cluster_id, 2))));
    // A well-formed vote request from a node that is not a voter: refused, no new epoch.
    sim.peer(2, Bytes::from(encode(&vote(&NodeConfig::default().cluster_id, 2))));
    sim.complete_syncs();
    produce(&mut sim, "t", &[b"still".to_vec()], 7);
    sim.complete_syncs();
    assert_eq!(take_produce(&mut sim), Some((0, 0)));
    create_topic(&mut sim, "u", 1); // the metadata quorum still leads and commits
}

/// A client that pipelines more requests than the broker keeps in flight is slowed, not cut
/// off: at the limit the node asks the runtime to stop reading the connection, once half are
/// answered to read it again, and every request is answered, in order.
#[test]
fn a_connection_with_too_many_requests_in_flight_is_paused_not_closed() {
    let max = sluice_core::limits::IN_FLIGHT_REQUESTS_PER_CONN_MAX;
    let mut sim = SimNode::new(NodeConfig::default(), 1);
    create_topic(&mut sim, "t", 1);
    // acks=all produces wait for their sync: each stays in flight until the syncs complete.
    for i in 0..max + 50 {
        produce(&mut sim, "t", &[format!("v{i}").into_bytes()], i as i32);
        assert_eq!(sim.paused.contains(&C), i + 1 >= max, "paused after {} requests?", i + 1);
    }
    assert!(sim.take_response(C).is_none());
    assert!(sim.closed.is_empty(), "the connection is not closed");
    sim.complete_syncs();
    assert!(!sim.paused.contains(&C), "read again once answered");
    for i in 0..max + 50 {
        assert_eq!(take_produce(&mut sim), Some((0, i as i64)), "request {i}");
    }
    assert!(sim.closed.is_empty());
}
