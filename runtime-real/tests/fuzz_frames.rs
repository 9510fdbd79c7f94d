//! Randomized decoder test: thousands of mutated and random request frames go through a real
//! core node (in-process, disk operations answered from memory). The node must never panic,
//! and must keep answering a well-formed request afterwards. Runs with the broker's allocator,
//! as the binary does (see alloc.rs for why).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use sluice_core::{ConnId, DiskOp, DiskReply, Input, Node, NodeConfig, Output, Time};

#[global_allocator]
static ALLOC: sluice_runtime_real::alloc::BrokerAlloc = sluice_runtime_real::alloc::BrokerAlloc;

/// Runs every disk operation against nothing: success, empty files, empty directories.
/// Returns the connections the node closed.
fn pump(node: &mut Node, t: &mut Time, responses: &mut Vec<(ConnId, usize)>) -> Vec<ConnId> {
    let mut closed = Vec::new();
    loop {
        let mut done = Vec::new();
        while let Some(o) = node.poll_output() {
            match o {
                Output::Disk { op, action } => {
                    let reply = match action {
                        DiskOp::Open { .. } => DiskReply::Opened { len: 0 },
                        DiskOp::ListDir { .. } => DiskReply::Listing(Vec::new()),
                        DiskOp::Read { .. } => DiskReply::Data(Bytes::new()),
                        _ => DiskReply::Done,
                    };
                    done.push(Input::DiskDone { op, result: Ok(reply) });
                }
                Output::Response { conn, parts } => responses.push((conn, parts.iter().map(|p| p.len()).sum())),
                Output::Close { conn } => closed.push(conn),
                _ => {}
            }
        }
        if done.is_empty() {
            return closed;
        }
        for i in done {
            t.mono.0 += 1000;
            node.handle(*t, i);
        }
    }
}

/// A request frame, or an empty one if the body sets a field the version lacks (skipped).
fn frame<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
    let mut h = RequestHeader::default();
    h.request_api_key = key as i16;
    h.request_api_version = version;
    h.correlation_id = 7;
    h.client_id = Some(StrBytes::from_static_str("fuzz"));
    let mut buf = BytesMut::new();
    h.encode(&mut buf, key.request_header_version(version)).unwrap();
    if body.encode(&mut buf, version).is_err() {
        return Bytes::new();
    }
    buf.freeze()
}

fn seeds() -> Vec<Bytes> {
    let topic = TopicName(StrBytes::from_static_str("fuzz"));
    let mut out = Vec::new();
    for v in [0i16, 3] {
        out.push(frame(ApiKey::ApiVersions, v, &ApiVersionsRequest::default()));
    }
    for v in [0i16, 4, 9, 12] {
        let mut r = MetadataRequest::default();
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(topic.clone());
        r.topics = Some(vec![t]);
        r.allow_auto_topic_creation = v >= 4;
        out.push(frame(ApiKey::Metadata, v, &r));
    }
    let batch = Bytes::from(sluice_core::log::batch::encode_values(&[b"abcd"], 1000));
    for v in [3i16, 7, 9, 11] {
        let mut pd = produce_request::PartitionProduceData::default();
        pd.records = Some(batch.clone());
        let mut td = produce_request::TopicProduceData::default();
        td.name = topic.clone();
        td.partition_data = vec![pd];
        let mut r = ProduceRequest::default();
        r.acks = -1;
        r.topic_data = vec![td];
        out.push(frame(ApiKey::Produce, v, &r));
    }
    for v in [4i16, 11, 12] {
        let mut fp = fetch_request::FetchPartition::default();
        fp.partition_max_bytes = 1 << 20;
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = topic.clone();
        ft.partitions = vec![fp];
        let mut r = FetchRequest::default();
        r.replica_id = BrokerId(-1);
        r.max_bytes = 1 << 20;
        r.topics = vec![ft];
        out.push(frame(ApiKey::Fetch, v, &r));
    }
    for v in [1i16, 7] {
        let mut p = list_offsets_request::ListOffsetsPartition::default();
        p.timestamp = -2;
        let mut t = list_offsets_request::ListOffsetsTopic::default();
        t.name = topic.clone();
        t.partitions = vec![p];
        let mut r = ListOffsetsRequest::default();
        r.topics = vec![t];
        out.push(frame(ApiKey::ListOffsets, v, &r));
    }
    for v in [2i16, 5, 7] {
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = TopicName(StrBytes::from_static_str("made"));
        t.num_partitions = 2;
        t.replication_factor = 1;
        let mut r = CreateTopicsRequest::default();
        r.topics = vec![t];
        out.push(frame(ApiKey::CreateTopics, v, &r));
    }
    for v in [1i16, 4] {
        let mut res = describe_configs_request::DescribeConfigsResource::default();
        res.resource_type = 2;
        res.resource_name = StrBytes::from_static_str("fuzz");
        let mut r = DescribeConfigsRequest::default();
        r.resources = vec![res];
        out.push(frame(ApiKey::DescribeConfigs, v, &r));
    }
    out.push(frame(ApiKey::DescribeCluster, 1, &DescribeClusterRequest::default()));
    // Consumer groups.
    let group = GroupId(StrBytes::from_static_str("fuzz-group"));
    for v in [0i16, 4] {
        let mut r = FindCoordinatorRequest::default();
        r.key = StrBytes::from_static_str("fuzz-group");
        r.coordinator_keys = if v >= 4 { vec![StrBytes::from_static_str("fuzz-group")] } else { vec![] };
        out.push(frame(ApiKey::FindCoordinator, v, &r));
    }
    for v in [0i16, 5, 9] {
        let mut p = join_group_request::JoinGroupRequestProtocol::default();
        p.name = StrBytes::from_static_str("range");
        p.metadata = Bytes::from_static(b"meta");
        let mut r = JoinGroupRequest::default();
        r.group_id = group.clone();
        r.session_timeout_ms = 10_000;
        r.rebalance_timeout_ms = 10_000;
        r.protocol_type = StrBytes::from_static_str("consumer");
        r.protocols = vec![p];
        out.push(frame(ApiKey::JoinGroup, v, &r));
    }
    let mut r = SyncGroupRequest::default();
    r.group_id = group.clone();
    r.member_id = StrBytes::from_static_str("m");
    out.push(frame(ApiKey::SyncGroup, 3, &r));
    let mut r = HeartbeatRequest::default();
    r.group_id = group.clone();
    out.push(frame(ApiKey::Heartbeat, 4, &r));
    for v in [2i16, 8] {
        let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
        p.committed_offset = 5;
        let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
        t.name = topic.clone();
        t.partitions = vec![p];
        let mut r = OffsetCommitRequest::default();
        r.group_id = group.clone();
        r.generation_id_or_member_epoch = -1;
        r.topics = vec![t];
        out.push(frame(ApiKey::OffsetCommit, v, &r));
    }
    let mut r = OffsetFetchRequest::default();
    r.group_id = group.clone();
    out.push(frame(ApiKey::OffsetFetch, 3, &r));
    let mut r = LeaveGroupRequest::default();
    r.group_id = group.clone();
    out.push(frame(ApiKey::LeaveGroup, 1, &r));
    out.push(frame(ApiKey::ListGroups, 4, &ListGroupsRequest::default()));
    let mut r = DescribeGroupsRequest::default();
    r.groups = vec![group.clone()];
    out.push(frame(ApiKey::DescribeGroups, 5, &r));
    let mut r = DeleteGroupsRequest::default();
    r.groups_names = vec![group];
    out.push(frame(ApiKey::DeleteGroups, 2, &r));
    out.retain(|f| !f.is_empty());
    assert!(out.len() >= 20, "most seed frames must encode");
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &Bytes) -> Bytes {
    let mut b = seed.to_vec();
    match rng.below(6) {
        0 => {
            // Flip a few bytes anywhere after the API key and version.
            for _ in 0..1 + rng.below(4) {
                if b.len() > 4 {
                    let i = 4 + rng.below(b.len() - 4);
                    b[i] = rng.next() as u8;
                }
            }
        }
        1 => b.truncate(rng.below(b.len() + 1)),
        2 => {
            // Overwrite four bytes with a huge or negative length.
            if b.len() > 8 {
                let i = 8 + rng.below(b.len() - 8);
                let v: [u8; 4] =
                    [[0x7f, 0xff, 0xff, 0xff], [0xff, 0xff, 0xff, 0xfe], [0x03, 0x3c, 0x0c, 0x00]][rng.below(3)];
                for (k, x) in v.iter().enumerate() {
                    if i + k < b.len() {
                        b[i + k] = *x;
                    }
                }
            }
        }
        3 => {
            let extra = rng.below(64);
            b.extend((0..extra).map(|_| rng.next() as u8));
        }
        4 => b = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        _ => {
            // A varint-heavy tail: every byte with the continuation bit.
            let i = rng.below(b.len() + 1);
            b.truncate(i);
            b.extend(std::iter::repeat_n(0xffu8, 1 + rng.below(8)));
        }
    }
    Bytes::from(b)
}

#[test]
fn random_frames_never_panic_and_the_node_keeps_serving() {
    let mut t = Time { mono: sluice_core::Instant(1), wall_ms: 1_700_000_000_000 };
    let mut node = Node::new(NodeConfig::default(), 42, t);
    let mut responses = Vec::new();
    pump(&mut node, &mut t, &mut responses);
    assert!(node.is_serving());
    let seeds = seeds();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let iterations = 20_000u64;
    // Fifty connections at a time; one the node closes is replaced by a fresh id, as a
    // runtime does (ids are never reused).
    let mut live: Vec<u64> = (1..=50).collect();
    let mut next_id = 51;
    for i in 0..iterations {
        let slot = (i % 50) as usize;
        let conn = ConnId(live[slot]);
        let pick = rng.below(seeds.len());
        let f = mutate(&mut rng, &seeds[pick]);
        t.mono.0 += 10_000;
        node.handle(t, Input::Request { conn, frame: f });
        if pump(&mut node, &mut t, &mut responses).contains(&conn) {
            live[slot] = next_id;
            next_id += 1;
        }
        if i % 97 == 0 {
            t.mono.0 += 1_000_000_000;
            node.handle(t, Input::Timeout);
            pump(&mut node, &mut t, &mut responses);
        }
    }
    // The node still answers a well-formed request on a fresh connection.
    responses.clear();
    node.handle(t, Input::Request { conn: ConnId(9999), frame: seeds[0].clone() });
    pump(&mut node, &mut t, &mut responses);
    assert!(responses.iter().any(|(c, len)| *c == ConnId(9999) && *len > 8), "no ApiVersions answer after fuzzing");
}

/// The 8-byte frame that makes the codec ask for ~3.6 GiB (a Metadata v0 topic count of
/// 54 million): the connection is closed and nothing else happens.
#[test]
fn huge_array_count_is_a_clean_error() {
    let mut t = Time { mono: sluice_core::Instant(1), wall_ms: 0 };
    let mut node = Node::new(NodeConfig::default(), 1, t);
    let mut responses = Vec::new();
    pump(&mut node, &mut t, &mut responses);
    let frames: [&[u8]; 2] = [
        &[0x00, 0x03, 0x00, 0x00, 0, 0, 0, 1, 0xff, 0xff, 0x03, 0x3c, 0x0c, 0x00, 0xb6],
        &[0x00, 0x03, 0x00, 0x00, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
    ];
    for f in frames {
        node.handle(t, Input::Request { conn: ConnId(1), frame: Bytes::from_static(f) });
        let mut closed = false;
        while let Some(o) = node.poll_output() {
            closed |= matches!(o, Output::Close { conn } if conn == ConnId(1));
        }
        assert!(closed, "a frame that cannot decode closes its connection");
    }
}
