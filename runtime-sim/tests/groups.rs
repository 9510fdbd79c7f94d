//! Consumer groups across restarts, on the real core over the simulated disk: a generation's
//! assignment is handed out only once its group record is durable, a restarted node carries
//! the group on at its generation (members need not rejoin), and offsets retention expires
//! what Kafka would expire, durably.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_core::{ConnId, NodeConfig};
use sluice_runtime_sim::SimNode;

mod common;
use common::{decode, frame};

const C: ConnId = ConnId(1);
const GROUP: &str = "g1";

/// Sends a request and decodes its answer (which must be there by now).
fn call<Q: Encodable, R: Decodable>(sim: &mut SimNode, conn: ConnId, key: ApiKey, version: i16, req: &Q) -> R {
    sim.request(conn, frame(key, version, 7, req));
    let resp = sim.take_response(conn).unwrap_or_else(|| panic!("{key:?} not answered"));
    decode(key, version, resp)
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn create_topic(sim: &mut SimNode, topic: &str, partitions: i32) {
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(sb(topic));
    t.num_partitions = partitions;
    t.replication_factor = 1;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    let resp: CreateTopicsResponse = call(sim, C, ApiKey::CreateTopics, 5, &req);
    assert_eq!(resp.topics[0].error_code, 0);
}

fn join_req(member: &str) -> JoinGroupRequest {
    let mut p = join_group_request::JoinGroupRequestProtocol::default();
    p.name = sb("range");
    p.metadata = Bytes::from_static(b"subscription");
    let mut req = JoinGroupRequest::default();
    req.group_id = GroupId(sb(GROUP));
    req.member_id = sb(member);
    req.session_timeout_ms = 10_000;
    req.rebalance_timeout_ms = 10_000;
    req.protocol_type = sb("consumer");
    req.protocols = vec![p];
    req
}

/// One member joins (member-id handshake, initial delay) and is its group's leader.
fn join(sim: &mut SimNode) -> (String, i32) {
    let r: JoinGroupResponse = call(sim, C, ApiKey::JoinGroup, 7, &join_req(""));
    assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED");
    let member = r.member_id.to_string();
    sim.request(C, frame(ApiKey::JoinGroup, 7, 8, &join_req(&member)));
    assert!(sim.take_response(C).is_none(), "held for the initial rebalance delay");
    sim.advance_ms(3_001);
    let r: JoinGroupResponse = decode(ApiKey::JoinGroup, 7, sim.take_response(C).expect("joined"));
    assert_eq!(r.error_code, 0);
    assert_eq!(r.leader.as_str(), member);
    (member, r.generation_id)
}

fn sync_req(member: &str, generation: i32, assignment: &'static [u8]) -> SyncGroupRequest {
    let mut req = SyncGroupRequest::default();
    req.group_id = GroupId(sb(GROUP));
    req.member_id = sb(member);
    req.generation_id = generation;
    req.protocol_type = Some(sb("consumer"));
    req.protocol_name = Some(sb("range"));
    if !assignment.is_empty() {
        let mut a = sync_group_request::SyncGroupRequestAssignment::default();
        a.member_id = sb(member);
        a.assignment = Bytes::from_static(assignment);
        req.assignments = vec![a];
    }
    req
}

fn heartbeat(sim: &mut SimNode, member: &str, generation: i32) -> i16 {
    let mut req = HeartbeatRequest::default();
    req.group_id = GroupId(sb(GROUP));
    req.member_id = sb(member);
    req.generation_id = generation;
    let r: HeartbeatResponse = call(sim, C, ApiKey::Heartbeat, 4, &req);
    r.error_code
}

fn commit(sim: &mut SimNode, group: &str, member: &str, generation: i32, offset: i64) -> i16 {
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.partition_index = 0;
    p.committed_offset = offset;
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(sb("t"));
    t.partitions = vec![p];
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(sb(group));
    req.member_id = sb(member);
    req.generation_id_or_member_epoch = generation;
    req.topics = vec![t];
    let r: OffsetCommitResponse = call(sim, C, ApiKey::OffsetCommit, 8, &req);
    r.topics[0].partitions[0].error_code
}

fn committed(sim: &mut SimNode, group: &str) -> i64 {
    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
    t.name = TopicName(sb("t"));
    t.partition_indexes = vec![0];
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(sb(group));
    req.topics = Some(vec![t]);
    let r: OffsetFetchResponse = call(sim, C, ApiKey::OffsetFetch, 7, &req);
    assert_eq!(r.error_code, 0);
    r.topics[0].partitions[0].committed_offset
}

fn list_groups(sim: &mut SimNode) -> Vec<(String, String)> {
    let r: ListGroupsResponse = call(sim, C, ApiKey::ListGroups, 4, &ListGroupsRequest::default());
    r.groups.iter().map(|g| (g.group_id.to_string(), g.group_state.to_string())).collect()
}

fn node() -> SimNode {
    let mut config = NodeConfig::default();
    config.group.offsets_retention_ms = 60_000;
    config.group.offsets_retention_check_interval_ms = 1_000;
    let mut sim = SimNode::new(config, 1);
    sim.auto_sync = true;
    create_topic(&mut sim, "t", 1);
    sim
}

#[test]
fn a_group_carries_on_at_its_generation_after_a_restart() {
    let mut sim = node();
    let (member, generation) = join(&mut sim);
    // The assignment is answered only once the group's record is durable.
    sim.auto_sync = false;
    sim.request(C, frame(ApiKey::SyncGroup, 5, 9, &sync_req(&member, generation, b"p0")));
    assert!(sim.take_response(C).is_none(), "SyncGroup answered before the group record was synced");
    assert!(sim.complete_syncs() > 0);
    let r: SyncGroupResponse = decode(ApiKey::SyncGroup, 5, sim.take_response(C).expect("answered once durable"));
    assert_eq!((r.error_code, r.assignment.as_ref()), (0, b"p0".as_slice()));
    sim.auto_sync = true;
    assert_eq!(commit(&mut sim, GROUP, &member, generation, 5), 0);

    sim.crash_and_restart(&mut ChaCha8Rng::seed_from_u64(3));
    sim.auto_sync = true;
    assert_eq!(heartbeat(&mut sim, &member, generation), 0, "the member carries on without rejoining");
    assert_eq!(committed(&mut sim, GROUP), 5);
    let r: SyncGroupResponse = call(&mut sim, C, ApiKey::SyncGroup, 5, &sync_req(&member, generation, b""));
    assert_eq!((r.error_code, r.assignment.as_ref()), (0, b"p0".as_slice()), "and keeps its assignment");
    assert_eq!(heartbeat(&mut sim, &member, generation - 1), 22, "ILLEGAL_GENERATION for the one before");
    assert_eq!(list_groups(&mut sim), vec![(GROUP.to_string(), "Stable".to_string())]);

    // Silent past its session timeout: it goes, the group empties, and that outlives a restart
    // too (a zombie of the old generation is refused).
    sim.advance_ms(10_001);
    assert_eq!(list_groups(&mut sim), vec![(GROUP.to_string(), "Empty".to_string())]);
    sim.crash_and_restart(&mut ChaCha8Rng::seed_from_u64(4));
    sim.auto_sync = true;
    assert_eq!(heartbeat(&mut sim, &member, generation), 25, "UNKNOWN_MEMBER_ID");
    assert_eq!(commit(&mut sim, GROUP, &member, generation, 9), 25);
    assert_eq!(committed(&mut sim, GROUP), 5);
    // A new member starts at the next generation, never a used one.
    let r: JoinGroupResponse = call(&mut sim, C, ApiKey::JoinGroup, 7, &join_req(""));
    assert_ne!(r.member_id.as_str(), member, "member ids are not handed out twice");
}

#[test]
fn offsets_expire_after_the_retention_period() {
    let mut sim = node();
    // A standalone commit expires by its commit time.
    assert_eq!(commit(&mut sim, "solo", "", -1, 7), 0);
    // A managed group's offsets expire once the group has been empty that long.
    let (member, generation) = join(&mut sim);
    let r: SyncGroupResponse = call(&mut sim, C, ApiKey::SyncGroup, 5, &sync_req(&member, generation, b"p0"));
    assert_eq!(r.error_code, 0);
    assert_eq!(commit(&mut sim, GROUP, &member, generation, 3), 0);
    for _ in 0..50 {
        sim.advance_ms(1_000);
        assert_eq!(heartbeat(&mut sim, &member, generation), 0);
    }
    assert_eq!(committed(&mut sim, "solo"), 7, "50 s: not yet");
    for _ in 0..15 {
        sim.advance_ms(1_000);
        assert_eq!(heartbeat(&mut sim, &member, generation), 0);
    }
    assert_eq!(committed(&mut sim, "solo"), -1, "65 s after its commit: expired");
    assert_eq!(committed(&mut sim, GROUP), 3, "a live group keeps its offsets, however old");

    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(sb(GROUP));
    let mut m = leave_group_request::MemberIdentity::default();
    m.member_id = sb(&member);
    leave.members = vec![m];
    let r: LeaveGroupResponse = call(&mut sim, C, ApiKey::LeaveGroup, 4, &leave);
    assert_eq!(r.error_code, 0);
    sim.advance_ms(50_000);
    assert_eq!(committed(&mut sim, GROUP), 3, "empty for 50 s: kept");
    sim.advance_ms(11_000);
    assert_eq!(committed(&mut sim, GROUP), -1, "empty for 61 s: expired");
    assert!(list_groups(&mut sim).is_empty(), "and the group is gone");

    // Durably: the tombstones are read back after a restart.
    sim.crash_and_restart(&mut ChaCha8Rng::seed_from_u64(5));
    sim.auto_sync = true;
    assert_eq!(committed(&mut sim, GROUP), -1);
    assert_eq!(committed(&mut sim, "solo"), -1);
    assert!(list_groups(&mut sim).is_empty());
}

fn cgh(member: &str, epoch: i32, owned: Option<Vec<(uuid::Uuid, Vec<i32>)>>) -> ConsumerGroupHeartbeatRequest {
    let mut req = ConsumerGroupHeartbeatRequest::default();
    req.group_id = GroupId(sb("kip848"));
    req.member_id = sb(member);
    req.member_epoch = epoch;
    req.rebalance_timeout_ms = if epoch == 0 { 10_000 } else { -1 };
    if epoch == 0 {
        req.subscribed_topic_names = Some(vec![TopicName(sb("t"))]);
    }
    req.topic_partitions = owned.map(|o| {
        o.into_iter()
            .map(|(id, ps)| {
                let mut tp = consumer_group_heartbeat_request::TopicPartitions::default();
                tp.topic_id = id;
                tp.partitions = ps;
                tp
            })
            .collect()
    });
    req
}

fn commit_v(sim: &mut SimNode, version: i16, member: &str, epoch: i32, offset: i64) -> i16 {
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.partition_index = 0;
    p.committed_offset = offset;
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(sb("t"));
    t.partitions = vec![p];
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(sb("kip848"));
    req.member_id = sb(member);
    req.generation_id_or_member_epoch = epoch;
    req.topics = vec![t];
    let r: OffsetCommitResponse = call(sim, C, ApiKey::OffsetCommit, version, &req);
    r.topics[0].partitions[0].error_code
}

#[test]
fn a_kip848_group_keeps_its_epochs_and_assignment_across_a_restart() {
    let mut sim = node();
    let r: ConsumerGroupHeartbeatResponse =
        call(&mut sim, C, ApiKey::ConsumerGroupHeartbeat, 1, &cgh("m-1", 0, Some(Vec::new())));
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    assert_eq!(r.member_epoch, 1);
    let a = r.assignment.expect("a joining member is told its assignment");
    assert_eq!(a.topic_partitions.len(), 1);
    assert_eq!(a.topic_partitions[0].partitions, vec![0]);
    let owned = vec![(a.topic_partitions[0].topic_id, vec![0])];
    assert_eq!(commit_v(&mut sim, 9, "m-1", 1, 11), 0);
    assert_eq!(commit_v(&mut sim, 9, "m-1", 0, 12), 113, "STALE_MEMBER_EPOCH");
    assert_eq!(commit_v(&mut sim, 8, "m-1", 1, 12), 35, "members of KIP-848 groups commit with v9");
    let r: ConsumerGroupHeartbeatResponse =
        call(&mut sim, C, ApiKey::ConsumerGroupHeartbeat, 1, &cgh("m-1", 2, Some(owned.clone())));
    assert_eq!(r.error_code, 110, "FENCED_MEMBER_EPOCH");

    sim.crash_and_restart(&mut ChaCha8Rng::seed_from_u64(6));
    sim.auto_sync = true;
    let r: ConsumerGroupHeartbeatResponse =
        call(&mut sim, C, ApiKey::ConsumerGroupHeartbeat, 1, &cgh("m-1", 1, Some(owned.clone())));
    assert_eq!((r.error_code, r.member_epoch), (0, 1), "the member carries on at its epoch");
    assert_eq!(committed(&mut sim, "kip848"), 11);
    assert_eq!(list_groups(&mut sim), vec![("kip848".to_string(), "Stable".to_string())]);
    // Leaving empties the group; that too outlives a restart.
    let r: ConsumerGroupHeartbeatResponse = call(&mut sim, C, ApiKey::ConsumerGroupHeartbeat, 1, &cgh("m-1", -1, None));
    assert_eq!((r.error_code, r.member_epoch), (0, -1));
    sim.crash_and_restart(&mut ChaCha8Rng::seed_from_u64(7));
    sim.auto_sync = true;
    assert_eq!(list_groups(&mut sim), vec![("kip848".to_string(), "Empty".to_string())]);
    let r: ConsumerGroupHeartbeatResponse =
        call(&mut sim, C, ApiKey::ConsumerGroupHeartbeat, 1, &cgh("m-1", 1, Some(owned)));
    assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID");
}

#[test]
fn commit_metadata_is_bounded() {
    let mut sim = node();
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.partition_index = 0;
    p.committed_offset = 3;
    p.committed_metadata = Some(sb(&"x".repeat(4097)));
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(sb("t"));
    t.partitions = vec![p.clone()];
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(sb("meta"));
    req.generation_id_or_member_epoch = -1;
    req.topics = vec![t.clone()];
    let r: OffsetCommitResponse = call(&mut sim, C, ApiKey::OffsetCommit, 8, &req);
    assert_eq!(r.topics[0].partitions[0].error_code, 12, "OFFSET_METADATA_TOO_LARGE");
    assert_eq!(committed(&mut sim, "meta"), -1, "nothing committed");
    req.topics[0].partitions[0].committed_metadata = Some(sb(&"x".repeat(4096)));
    let r: OffsetCommitResponse = call(&mut sim, C, ApiKey::OffsetCommit, 8, &req);
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    assert_eq!(committed(&mut sim, "meta"), 3);
}

#[test]
fn a_group_name_is_one_kind_of_group_at_a_time() {
    let mut sim = node();
    let mut join_kip848 = join_req("");
    join_kip848.group_id = GroupId(sb("kip848"));
    // A KIP-848 group with a member keeps its name from classic members...
    let r: ConsumerGroupHeartbeatResponse =
        call(&mut sim, C, ApiKey::ConsumerGroupHeartbeat, 1, &cgh("m-1", 0, Some(Vec::new())));
    assert_eq!(r.error_code, 0);
    let r: JoinGroupResponse = call(&mut sim, C, ApiKey::JoinGroup, 7, &join_kip848);
    assert_eq!(r.error_code, 23, "INCONSISTENT_GROUP_PROTOCOL");
    // ...until it empties; then a classic group takes the name, and keeps it across a restart.
    let r: ConsumerGroupHeartbeatResponse = call(&mut sim, C, ApiKey::ConsumerGroupHeartbeat, 1, &cgh("m-1", -1, None));
    assert_eq!(r.error_code, 0);
    let r: JoinGroupResponse = call(&mut sim, C, ApiKey::JoinGroup, 7, &join_kip848);
    assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED: a classic join goes ahead");
    sim.crash_and_restart(&mut ChaCha8Rng::seed_from_u64(8));
    sim.auto_sync = true;
    assert!(list_groups(&mut sim).is_empty(), "the empty KIP-848 group's record is gone: {:?}", list_groups(&mut sim));
    // And the other way round: a classic group with members keeps the name from KIP-848.
    let (member, generation) = join(&mut sim);
    let r: SyncGroupResponse = call(&mut sim, C, ApiKey::SyncGroup, 5, &sync_req(&member, generation, b"p0"));
    assert_eq!(r.error_code, 0);
    let mut hb = cgh("m-2", 0, Some(Vec::new()));
    hb.group_id = GroupId(sb(GROUP));
    let r: ConsumerGroupHeartbeatResponse = call(&mut sim, C, ApiKey::ConsumerGroupHeartbeat, 1, &hb);
    assert_eq!(r.error_code, 69, "GROUP_ID_NOT_FOUND: not a consumer group");
}
