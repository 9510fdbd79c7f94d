//! The group coordinator's protocol side: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups.
//!
//! Membership lives in `group::Coordinator`. Committed offsets and group records (each
//! generation's members and assignment, written before any member learns it) are records in
//! the internal `__consumer_offsets` topic, appended like any produce and acted on only once
//! durable; the cache OffsetFetch reads is updated at the same moment. At start-up both are
//! rebuilt from the topic, so members carry on at their generation after a restart. Offsets
//! retention (`offsets.retention.minutes`) expires the offsets of groups empty for that long,
//! and standalone commits that old, by writing tombstones.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use serde::{Deserialize, Serialize};

use super::{Node, Then, Tp};

#[cfg(test)]
mod hash_tests {
    #[test]
    fn java_string_hash() {
        // Values from java.lang.String.hashCode.
        assert_eq!(super::java_hash(""), 0);
        assert_eq!(super::java_hash("abc"), 96354);
        assert_eq!(super::java_hash("Hello"), 69_609_650);
        assert_eq!(super::java_hash("polygenelubricants"), i32::MIN);
    }
}
use crate::group::{Deferred, GroupError, Join, JoinResult, Store, SyncResult};
use crate::log::batch;
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, FrameError, RequestContext};
use crate::types::{ConnId, Offset};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's `offsets.topic.num.partitions` default.
pub const OFFSETS_PARTITIONS: i32 = 50;

/// Who waits for a deferred group answer.
#[derive(Clone, Debug)]
pub struct GroupWaiter {
    conn: ConnId,
    seq: u64,
    ctx: RequestContext,
}

/// A committed offset, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp: i64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct OffsetKey {
    pub(super) group: String,
    pub(super) topic: String,
    pub(super) partition: i32,
}

/// The key of a record in `__consumer_offsets`. Like Kafka's, keys start with a 2-byte
/// version saying what they name: 1 a committed offset, 2 a group. Keys written before the
/// version existed are bare offset keys; they never start with a zero byte (a group id is
/// never empty), so they still read.
pub(super) enum StoredKey {
    Offset(OffsetKey),
    Group(String),
    /// A KIP-848 consumer group's whole state.
    ConsumerGroup(String),
}

const KEY_OFFSET: u8 = 1;
const KEY_GROUP: u8 = 2;
const KEY_CONSUMER_GROUP: u8 = 3;

impl StoredKey {
    pub(super) fn encode(&self) -> Vec<u8> {
        let (version, body) = match self {
            StoredKey::Offset(k) => (KEY_OFFSET, postcard::to_allocvec(k)),
            StoredKey::Group(g) => (KEY_GROUP, postcard::to_allocvec(g)),
            StoredKey::ConsumerGroup(g) => (KEY_CONSUMER_GROUP, postcard::to_allocvec(g)),
        };
        let mut out = vec![0, version];
        out.extend(body.expect("keys serialize"));
        out
    }

    pub(super) fn decode(b: &[u8]) -> Option<StoredKey> {
        match b {
            [0, KEY_OFFSET, rest @ ..] => postcard::from_bytes(rest).ok().map(StoredKey::Offset),
            [0, KEY_GROUP, rest @ ..] => postcard::from_bytes(rest).ok().map(StoredKey::Group),
            [0, KEY_CONSUMER_GROUP, rest @ ..] => postcard::from_bytes(rest).ok().map(StoredKey::ConsumerGroup),
            [0, ..] | [] => None,
            legacy => postcard::from_bytes(legacy).ok().map(StoredKey::Offset),
        }
    }
}

/// A batch of committed-offset records (group, topic, partition -> offset), as OffsetCommit
/// and TxnOffsetCommit write them.
pub(super) fn offsets_batch(updates: &[(String, String, i32, Committed)], timestamp: i64) -> Vec<u8> {
    let records: Vec<(Vec<u8>, Vec<u8>)> = updates
        .iter()
        .map(|(g, t, p, c)| (offset_key(g, t, *p), postcard::to_allocvec(c).expect("offsets serialize")))
        .collect();
    let refs: Vec<(Option<&[u8]>, Option<&[u8]>)> =
        records.iter().map(|(k, v)| (Some(k.as_slice()), Some(v.as_slice()))).collect();
    batch::encode_records(&refs, timestamp)
}

fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    StoredKey::Offset(OffsetKey { group: group.to_string(), topic: topic.to_string(), partition }).encode()
}

/// Builds an answer once its offsets records are durable (`true`) or failed (`false`).
type BuildAnswer = Box<dyn FnOnce(bool) -> Result<Bytes, String> + Send>;

/// What happens once a pending change is durable (or failed).
pub(super) enum AfterDurable {
    /// Answer a request.
    Respond { conn: ConnId, seq: u64, answer: BuildAnswer },
    /// Tell the coordinator its group record is durable.
    GroupStored { group: String, generation_id: i32 },
    /// Nothing more (retention's tombstones).
    Nothing,
    /// A transactional id's tombstone is durable: forget it.
    TxnExpired { id: String },
    /// A transaction record is durable: the coordinator's next step.
    Txn { id: String, meta: Box<crate::txn::TxnMeta>, next: super::transactions::TxnNext },
    /// Offsets committed in a transaction are durable (not yet visible): answer with the
    /// first frame, or the second if they could not be written.
    TxnOffsets {
        producer_id: i64,
        offsets: Vec<(String, String, i32, Committed)>,
        conn: ConnId,
        seq: u64,
        answers: Box<(Result<Bytes, String>, Result<Bytes, String>)>,
    },
}

/// A change to committed offsets (a commit, deletions, a group record) waiting for its
/// records to be durable. `None` deletes an offset.
pub(super) struct PendingCommit {
    /// (offsets partition, offset that must be durable, its log generation when written)
    waits: Vec<(Tp, Offset, u64)>,
    updates: Vec<(String, String, i32, Option<Committed>)>,
    then: AfterDurable,
}

impl PendingCommit {
    pub(super) fn new(
        waits: Vec<(Tp, Offset, u64)>,
        updates: Vec<(String, String, i32, Option<Committed>)>,
        then: AfterDurable,
    ) -> PendingCommit {
        PendingCommit { waits, updates, then }
    }
}

/// Java's `String.hashCode`, so groups land on the partitions Kafka would put them on.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// Kafka's `partitionFor`: `Utils.abs(groupId.hashCode) % partitions` (abs of MIN_VALUE is 0).
pub fn offsets_partition(group: &str) -> i32 {
    partition_for(group, OFFSETS_PARTITIONS)
}

/// Where Kafka places a key among an internal topic's partitions: `Utils.abs(key.hashCode())
/// % partitions` (groups in `__consumer_offsets`, transactional ids in `__transaction_state`).
pub(super) fn partition_for(key: &str, partitions: i32) -> i32 {
    let h = java_hash(key);
    (if h == i32::MIN { 0 } else { h.abs() }) % partitions
}

pub(super) fn code(e: GroupError) -> i16 {
    match e {
        GroupError::UnknownMemberId => 25,
        GroupError::IllegalGeneration => 22,
        GroupError::RebalanceInProgress => 27,
        GroupError::InconsistentGroupProtocol => 23,
        GroupError::InvalidSessionTimeout => 26,
        GroupError::MemberIdRequired => 79,
        GroupError::GroupMaxSizeReached => 81,
        GroupError::FencedInstanceId => 82,
        GroupError::CoordinatorNotAvailable => 15,
        GroupError::CoordinatorLoadInProgress => 14,
        GroupError::NotCoordinator => NOT_COORDINATOR,
        GroupError::InvalidGroupId => 24,
    }
}

const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub(super) const NOT_COORDINATOR: i16 = 16;
const UNSTABLE_OFFSET_COMMIT: i16 = 88;
const INVALID_GROUP_ID: i16 = 24;
const NON_EMPTY_GROUP: i16 = 68;
pub(super) const GROUP_ID_NOT_FOUND: i16 = 69;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

/// An internal topic's partition count and configs, as Kafka creates it.
pub(super) fn internal_topic(name: &str) -> Option<(i32, BTreeMap<String, String>)> {
    let partitions = match name {
        OFFSETS_TOPIC => OFFSETS_PARTITIONS,
        super::transactions::TXN_TOPIC => super::transactions::TXN_PARTITIONS,
        _ => return None,
    };
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_string(), "compact".to_string());
    Some((partitions, configs))
}

pub(super) fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

impl Node {
    /// Whether group requests can be served: `Some(0)` once the offsets topic exists and its
    /// offsets are loaded, `Some(COORDINATOR_LOAD_IN_PROGRESS)` while they load (or it cannot
    /// be created), `None` when the request was parked until the topic's creation finishes
    /// (it is dispatched again then). Given a group, `Some(NOT_COORDINATOR)` when another
    /// broker leads its offsets partition.
    pub(super) fn groups_ready(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: &Bytes,
        group: Option<&str>,
    ) -> Option<i16> {
        self.internal_topic_ready(OFFSETS_TOPIC, group, conn, seq, ctx, body)
    }

    /// The readiness check of the coordinators on an internal topic (`__consumer_offsets`,
    /// `__transaction_state`); see `groups_ready`. A missing topic is created by the
    /// controller: here if this node is it, else on request (the client retries meanwhile).
    pub(super) fn internal_topic_ready(
        &mut self,
        name: &str,
        key: Option<&str>,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: &Bytes,
    ) -> Option<i16> {
        if let Some(job) = self.topics.get(name).and_then(|t| t.creating) {
            self.park(conn, seq, job, Then::Redispatch { ctx: ctx.clone(), body: body.clone() });
            return None;
        }
        if !self.topics.contains_key(name) {
            if !self.is_controller() {
                self.ask_controller_to_create(name);
                return Some(COORDINATOR_NOT_AVAILABLE);
            }
            let (partitions, rf, configs) = self.internal_topic_spec(name).expect("an internal topic");
            match self.create_topic(name, partitions, rf, configs) {
                // Its partitions are empty: each is served as soon as it is led here.
                Ok(job) => self.park(conn, seq, job, Then::Redispatch { ctx: ctx.clone(), body: body.clone() }),
                // Too few brokers for its replication factor yet (as in Kafka).
                Err(_) => return Some(COORDINATOR_NOT_AVAILABLE),
            }
            return None;
        }
        Some(key.map_or(0, |k| self.coordinates(name, k).err().unwrap_or(0)))
    }

    /// An internal topic's partitions, replicas and configs, as this cluster creates it: the
    /// configured replication factor capped at the brokers the cluster has (its voters, as
    /// every node is a broker and a controller), so that one node alone gets one replica
    /// while a starting cluster waits for enough brokers rather than settling for fewer.
    pub(super) fn internal_topic_spec(&self, name: &str) -> Option<(i32, i16, BTreeMap<String, String>)> {
        let (partitions, mut configs) = internal_topic(name)?;
        let r = &self.config.replication;
        let log = &self.config.log;
        let segment = if name == super::transactions::TXN_TOPIC {
            log.txn_state_segment_bytes
        } else {
            log.offsets_segment_bytes
        };
        configs.insert("segment.bytes".to_string(), segment.to_string());
        let wanted = if name == super::transactions::TXN_TOPIC {
            configs.insert("min.insync.replicas".to_string(), r.transaction_state_log_min_isr.to_string());
            r.transaction_state_log_replication_factor
        } else {
            r.offsets_topic_replication_factor
        };
        let brokers = self.config.voter_ids().len().max(self.cluster.image.brokers.len());
        Some((partitions, wanted.min(i16::try_from(brokers).unwrap_or(i16::MAX)).max(1), configs))
    }

    /// The broker coordinating `key` (a group, a transactional id): the leader of its
    /// partition of the internal topic `name`.
    pub(super) fn coordinator_of(&self, name: &str, key: &str) -> Result<i32, i16> {
        let t = self.topics.get(name).ok_or(COORDINATOR_NOT_AVAILABLE)?;
        let n = i32::try_from(t.partitions.len()).unwrap_or(i32::MAX).max(1);
        let tp = (t.id, partition_for(key, n));
        let p = t.partition(tp.1).ok_or(COORDINATOR_NOT_AVAILABLE)?;
        match self.partition_leader(tp).map(|(leader, _)| leader) {
            Some(me) if me == self.config.node_id.0 && !self.holds_lease() => Err(COORDINATOR_NOT_AVAILABLE),
            Some(me) if me == self.config.node_id.0 && !(p.leads() && self.coordination.is_loaded(tp)) => {
                Err(COORDINATOR_LOAD_IN_PROGRESS)
            }
            Some(leader) => Ok(leader),
            None => Err(COORDINATOR_NOT_AVAILABLE),
        }
    }

    /// Ok when this node coordinates `key` (of the internal topic `name`) now; else the
    /// error its requests get: NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS or
    /// COORDINATOR_NOT_AVAILABLE.
    pub(super) fn coordinates(&self, name: &str, key: &str) -> Result<(), i16> {
        match self.coordinator_of(name, key) {
            Ok(c) if c == self.config.node_id.0 => Ok(()),
            Ok(_) => Err(NOT_COORDINATOR),
            Err(code) => Err(code),
        }
    }

    /// `coordinates` for a group, as the group coordinator's error (Heartbeat, SyncGroup and
    /// LeaveGroup of a group another broker coordinates now must send the member there, not
    /// tell it it is unknown).
    fn coordinates_group(&self, group: &str) -> Result<(), GroupError> {
        if !self.topics.contains_key(OFFSETS_TOPIC) {
            return Ok(()); // no group exists yet: the coordinator says what it knows
        }
        self.coordinates(OFFSETS_TOPIC, group).map_err(|c| match c {
            COORDINATOR_LOAD_IN_PROGRESS => GroupError::CoordinatorLoadInProgress,
            NOT_COORDINATOR => GroupError::NotCoordinator,
            _ => GroupError::CoordinatorNotAvailable,
        })
    }

    /// Where a FindCoordinator for `key` sends the client, given the readiness of the
    /// internal topic: the broker, its host and port, or an error code and why. While the
    /// coordinators load, the client is sent to them anyway and its requests are answered
    /// COORDINATOR_LOAD_IN_PROGRESS until the load is done.
    fn coordinator_endpoint(
        &self,
        topic: &str,
        key: &str,
        ready: i16,
    ) -> Result<(BrokerId, StrBytes, i32), (i16, &'static str)> {
        match ready {
            0 | COORDINATOR_LOAD_IN_PROGRESS => {}
            COORDINATOR_NOT_AVAILABLE => return Err((ready, "the coordinators' topic is being created")),
            _ => return Err((ready, "unknown coordinator key type")),
        }
        let id = match self.coordinator_of(topic, key) {
            Ok(id) => id,
            Err(COORDINATOR_LOAD_IN_PROGRESS) => self.config.node_id.0,
            Err(code) => return Err((code, "the coordinator's partition has no leader")),
        };
        let (host, port, _) = self.broker_endpoint(id).ok_or((COORDINATOR_NOT_AVAILABLE, "no such broker"))?;
        Ok((BrokerId(id), sb(host), port))
    }

    pub(super) fn handle_find_coordinator(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: FindCoordinatorRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let keys: Vec<String> = if ctx.version >= 4 {
            req.coordinator_keys.iter().map(|k| k.to_string()).collect()
        } else {
            vec![req.key.to_string()]
        };
        // Groups (key type 0) and transactions (1): each key's coordinator is the broker
        // leading its partition of the internal topic.
        let topic = match req.key_type {
            0 => OFFSETS_TOPIC,
            1 => super::transactions::TXN_TOPIC,
            _ => "",
        };
        let ready = if topic.is_empty() {
            Some(KafkaError::InvalidRequest.code())
        } else {
            self.internal_topic_ready(topic, None, conn, seq, &ctx, &body)
        };
        let Some(ready) = ready else {
            return Ok(());
        };
        let found = |node: &Node, key: &str| node.coordinator_endpoint(topic, key, ready);
        let mut resp = FindCoordinatorResponse::default();
        if ctx.version >= 4 {
            for k in keys {
                let mut c = find_coordinator_response::Coordinator::default();
                match found(self, &k) {
                    Ok(at) => (c.node_id, c.host, c.port) = at,
                    Err((code, why)) => {
                        c.error_code = code;
                        c.node_id = BrokerId(-1);
                        c.error_message = Some(sb(why));
                    }
                }
                c.key = sb(k);
                resp.coordinators.push(c);
            }
        } else {
            match found(self, keys.first().map_or("", String::as_str)) {
                Ok(at) => (resp.node_id, resp.host, resp.port) = at,
                Err((code, why)) => {
                    resp.error_code = code;
                    resp.node_id = BrokerId(-1);
                    if ctx.version >= 1 {
                        resp.error_message = Some(sb(why));
                    }
                }
            }
        }
        self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
        Ok(())
    }

    pub(super) fn handle_join_group(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: JoinGroupRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let group = req.group_id.0.to_string();
        let waiter = GroupWaiter { conn, seq, ctx: ctx.clone() };
        if group.is_empty() {
            self.answer_join(waiter, JoinResult::failed(GroupError::InvalidGroupId, req.member_id.as_str()));
            return Ok(());
        }
        match self.groups_ready(conn, seq, &ctx, &body, Some(&group)) {
            Some(0) => {}
            None => return Ok(()),
            Some(code) => {
                let e = if code == NOT_COORDINATOR {
                    GroupError::NotCoordinator
                } else {
                    GroupError::CoordinatorLoadInProgress
                };
                self.answer_join(waiter, JoinResult::failed(e, req.member_id.as_str()));
                return Ok(());
            }
        }
        // A name is one kind of group at a time: a KIP-848 group with members keeps it; an
        // empty one gives way (its record goes).
        if self.consumer.has_members(&group) {
            self.answer_join(waiter, JoinResult::failed(GroupError::InconsistentGroupProtocol, req.member_id.as_str()));
            return Ok(());
        }
        if self.consumer.delete(&group) {
            self.persist_consumer_groups();
        }
        let j = Join {
            group,
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: ctx.client_id.clone().unwrap_or_default(),
            session_timeout_ms: u64::try_from(req.session_timeout_ms).unwrap_or(0),
            // Before v1 the rebalance timeout is the session timeout.
            rebalance_timeout_ms: u64::try_from(if ctx.version >= 1 {
                req.rebalance_timeout_ms
            } else {
                req.session_timeout_ms
            })
            .unwrap_or(0),
            protocol_type: req.protocol_type.to_string(),
            protocols: req.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
            requires_known_member_id: ctx.version >= 4,
        };
        if let Some(r) = self.coordinator.join(self.now.mono, j, waiter.clone()) {
            self.answer_join(waiter, r);
        }
        self.settle_groups();
        Ok(())
    }

    fn answer_join(&mut self, w: GroupWaiter, r: JoinResult) {
        let v = w.ctx.version;
        let mut resp = JoinGroupResponse::default();
        resp.error_code = r.error.map_or(0, code);
        resp.generation_id = r.generation_id;
        if v >= 7 {
            resp.protocol_type = r.protocol_type.map(sb);
            resp.protocol_name = r.protocol_name.map(sb);
        } else {
            resp.protocol_name = Some(sb(r.protocol_name.unwrap_or_default()));
        }
        resp.leader = sb(r.leader);
        resp.member_id = sb(r.member_id);
        resp.members = r
            .members
            .into_iter()
            .map(|(id, inst, meta)| {
                let mut m = join_group_response::JoinGroupResponseMember::default();
                m.member_id = sb(id);
                if v >= 5 {
                    m.group_instance_id = inst.map(sb);
                }
                m.metadata = meta;
                m
            })
            .collect();
        self.respond_bytes(w.conn, w.seq, protocol::encode_response(&w.ctx, &resp));
    }

    fn answer_sync(&mut self, w: GroupWaiter, r: SyncResult) {
        let mut resp = SyncGroupResponse::default();
        resp.error_code = r.error.map_or(0, code);
        if w.ctx.version >= 5 {
            resp.protocol_type = r.protocol_type.map(sb);
            resp.protocol_name = r.protocol_name.map(sb);
        }
        resp.assignment = r.assignment;
        self.respond_bytes(w.conn, w.seq, protocol::encode_response(&w.ctx, &resp));
    }

    /// Sends every group answer that became ready and writes the group records the
    /// coordinator asks for.
    pub(super) fn settle_groups(&mut self) {
        loop {
            let ready = self.coordinator.poll(self.now.mono);
            let stores = self.coordinator.take_stores();
            if ready.is_empty() && stores.is_empty() {
                return;
            }
            for d in ready {
                match d {
                    Deferred::Join(w, r) => self.answer_join(w, r),
                    Deferred::Sync(w, r) => self.answer_sync(w, r),
                }
            }
            for s in stores {
                self.store_group(s);
            }
        }
    }

    /// Appends a group record; the coordinator hears when it is durable.
    fn store_group(&mut self, s: Store) {
        let mut rec = s.record;
        if rec.members.is_empty() {
            self.empty_since.entry(s.group.clone()).or_insert(self.now.wall_ms);
        } else {
            self.empty_since.remove(&s.group);
        }
        rec.state_since_ms = self.empty_since.get(&s.group).copied().unwrap_or(self.now.wall_ms);
        let key = StoredKey::Group(s.group.clone()).encode();
        let value = postcard::to_allocvec(&rec).expect("group records serialize");
        let batch = Bytes::from(batch::encode_records(&[(Some(&key), Some(&value))], self.now.wall_ms));
        match self.append_partition(OFFSETS_TOPIC, offsets_partition(&s.group), Some(&batch)) {
            Ok((tp, _, end, generation, _, _)) => self.commits.push(PendingCommit {
                waits: vec![(tp, end, generation)],
                updates: Vec::new(),
                then: AfterDurable::GroupStored { group: s.group, generation_id: s.generation_id },
            }),
            Err(e) => {
                tracing::warn!(group = %s.group, error = ?e, "a group record could not be written");
                self.coordinator.stored(self.now.mono, &s.group, s.generation_id, false);
            }
        }
    }

    pub(super) fn handle_sync_group(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: SyncGroupRequest = protocol::decode_body(body, ctx.version)?;
        let waiter = GroupWaiter { conn, seq, ctx };
        if let Err(e) = self.coordinates_group(req.group_id.0.as_str()) {
            self.answer_sync(waiter, SyncResult::failed(e));
            return Ok(());
        }
        let assignments = req.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect();
        let inst = req.group_instance_id.as_ref().map(|s| s.to_string());
        let r = self.coordinator.sync(
            self.now.mono,
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            req.generation_id,
            inst.as_deref(),
            assignments,
            waiter.clone(),
        );
        if let Some(r) = r {
            self.answer_sync(waiter, r);
        }
        self.settle_groups();
        Ok(())
    }

    pub(super) fn handle_heartbeat(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: HeartbeatRequest = protocol::decode_body(body, ctx.version)?;
        let inst = req.group_instance_id.as_ref().map(|s| s.to_string());
        let r = self.coordinates_group(req.group_id.0.as_str()).and_then(|()| {
            self.coordinator.heartbeat(
                self.now.mono,
                req.group_id.0.as_str(),
                req.member_id.as_str(),
                req.generation_id,
                inst.as_deref(),
            )
        });
        let mut resp = HeartbeatResponse::default();
        resp.error_code = r.err().map_or(0, code);
        self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
        Ok(())
    }

    pub(super) fn handle_leave_group(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: LeaveGroupRequest = protocol::decode_body(body, ctx.version)?;
        let group = req.group_id.0.to_string();
        let mut resp = LeaveGroupResponse::default();
        if let Err(e) = self.coordinates_group(&group) {
            resp.error_code = code(e);
        } else if ctx.version >= 3 {
            for m in &req.members {
                let inst = m.group_instance_id.as_ref().map(|s| s.to_string());
                let r = self.coordinator.leave(self.now.mono, &group, m.member_id.as_str(), inst.as_deref());
                let mut mr = leave_group_response::MemberResponse::default();
                mr.member_id = m.member_id.clone();
                mr.group_instance_id = m.group_instance_id.clone();
                mr.error_code = r.err().map_or(0, code);
                resp.members.push(mr);
            }
        } else {
            resp.error_code =
                self.coordinator.leave(self.now.mono, &group, req.member_id.as_str(), None).err().map_or(0, code);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
        self.settle_groups();
        Ok(())
    }

    pub(super) fn handle_offset_commit(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: OffsetCommitRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let group = req.group_id.0.to_string();
        let mut resp = OffsetCommitResponse::default();
        let Some(ready) = self.groups_ready(conn, seq, &ctx, &body, Some(&group)) else { return Ok(()) };
        let ready = if ready == 0 { Ok(()) } else { Err(ready) };
        // A member of a generation must be current; a "simple" commit (no member, generation
        // -1) is allowed for groups that are not managed here at the moment.
        let inst = req.group_instance_id.as_ref().map(|s| s.to_string());
        let member_check = if req.generation_id_or_member_epoch < 0 && req.member_id.is_empty() {
            match self.coordinator.state(&group) {
                Some(s) if s != crate::group::GroupState::Empty => Err(code(GroupError::UnknownMemberId)),
                _ if self.consumer.has_members(&group) => Err(code(GroupError::UnknownMemberId)),
                _ => Ok(()),
            }
        } else if self.consumer.group(&group).is_some() {
            // Members of KIP-848 groups commit with their member epoch, from version 9 on.
            if ctx.version < 9 {
                Err(KafkaError::UnsupportedVersion.code())
            } else {
                self.check_consumer_member(&group, req.member_id.as_str(), req.generation_id_or_member_epoch)
            }
        } else {
            self.coordinator
                .validate_commit(
                    self.now.mono,
                    &group,
                    req.member_id.as_str(),
                    req.generation_id_or_member_epoch,
                    inst.as_deref(),
                )
                .map_err(code)
        };
        let check = ready.and(member_check).and(if group.is_empty() { Err(INVALID_GROUP_ID) } else { Ok(()) });
        let mut updates = Vec::new();
        for t in &req.topics {
            let mut tr = offset_commit_response::OffsetCommitResponseTopic::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let mut pr = offset_commit_response::OffsetCommitResponsePartition::default();
                pr.partition_index = p.partition_index;
                pr.error_code = match check {
                    Err(e) => e,
                    Ok(()) if !self.topics.contains_key(t.name.0.as_str()) => {
                        KafkaError::UnknownTopicOrPartition.code()
                    }
                    Ok(())
                        if p.committed_metadata
                            .as_ref()
                            .is_some_and(|m| m.len() > self.config.group.offset_metadata_max_bytes) =>
                    {
                        OFFSET_METADATA_TOO_LARGE
                    }
                    Ok(()) => {
                        let c = Committed {
                            offset: p.committed_offset,
                            leader_epoch: if ctx.version >= 6 { p.committed_leader_epoch } else { -1 },
                            metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                            commit_timestamp: self.now.wall_ms,
                        };
                        updates.push((group.clone(), t.name.0.to_string(), p.partition_index, c));
                        0
                    }
                };
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        if updates.is_empty() {
            self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
            return Ok(());
        }
        let batch = Bytes::from(offsets_batch(&updates, self.now.wall_ms));
        match self.append_partition(OFFSETS_TOPIC, offsets_partition(&group), Some(&batch)) {
            Ok((tp, _, end, generation, _, _)) => {
                let updates = updates.into_iter().map(|(g, t, p, c)| (g, t, p, Some(c))).collect();
                let answer: BuildAnswer = Box::new(move |ok| {
                    if !ok {
                        for pr in resp.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                            pr.error_code = 15; // COORDINATOR_NOT_AVAILABLE: retriable
                        }
                    }
                    protocol::encode_response(&ctx, &resp)
                });
                let early = crate::mutants::active(crate::mutants::Mutant::CommitAckBeforeDurable);
                self.commits.push(PendingCommit {
                    waits: if early { Vec::new() } else { vec![(tp, end, generation)] },
                    updates,
                    then: AfterDurable::Respond { conn, seq, answer },
                });
                if early {
                    self.complete_commits();
                }
            }
            Err(e) => {
                for pr in resp.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                    pr.error_code = if e == KafkaError::KafkaStorageError { 15 } else { e.code() };
                }
                self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
            }
        }
        Ok(())
    }

    /// Answers commits whose records became durable (and makes them visible to OffsetFetch).
    pub(super) fn complete_commits(&mut self) {
        let pending = std::mem::take(&mut self.commits);
        let mut stored_groups = false;
        for c in pending {
            let states: Vec<Option<bool>> = c
                .waits
                .iter()
                .map(|(tp, end, generation)| match self.partition(*tp) {
                    None => Some(false),
                    Some(p) if p.log.generation != *generation => Some(false),
                    Some(p) if p.log.high_watermark >= *end => Some(true),
                    Some(_) => None,
                })
                .collect();
            let verdict = if states.contains(&Some(false)) {
                Some(false)
            } else if states.iter().all(|s| *s == Some(true)) {
                Some(true)
            } else {
                None
            };
            let Some(ok) = verdict else {
                self.commits.push(c);
                continue;
            };
            if ok {
                for (g, t, p, v) in c.updates {
                    match v {
                        Some(v) => {
                            self.offsets.entry(g).or_default().insert((t, p), v);
                        }
                        None => self.drop_offset(&g, &t, p),
                    }
                }
            }
            match c.then {
                AfterDurable::Respond { conn, seq, answer } => self.respond_bytes(conn, seq, answer(ok)),
                AfterDurable::GroupStored { group, generation_id } => {
                    self.coordinator.stored(self.now.mono, &group, generation_id, ok);
                    stored_groups = true;
                }
                AfterDurable::Nothing => {}
                AfterDurable::Txn { id, meta, next } => self.txn_stored(id, *meta, next, ok),
                AfterDurable::TxnExpired { id } => self.txn_expired(&id, ok),
                AfterDurable::TxnOffsets { producer_id, offsets, conn, seq, answers } => {
                    let (yes, no) = *answers;
                    if ok && crate::mutants::active(crate::mutants::Mutant::TxnOffsetsBeforeCommit) {
                        for (g, t, p, c) in offsets {
                            self.offsets.entry(g).or_default().insert((t, p), c);
                        }
                    } else if ok {
                        self.txn_offsets.entry(producer_id).or_default().extend(offsets);
                    }
                    self.respond_bytes(conn, seq, if ok { yes } else { no });
                }
            }
        }
        if stored_groups {
            self.settle_groups();
        }
    }

    /// Refuses the changes waiting on `tp`, a coordinators' partition this node no longer
    /// leads: their requests are answered as failed writes (retriable, so the client finds
    /// the new coordinator), and nothing of them reaches this node's state, which is being
    /// unloaded.
    pub(super) fn fail_commits_on(&mut self, tp: Tp) {
        let (gone, kept): (Vec<PendingCommit>, Vec<PendingCommit>) =
            std::mem::take(&mut self.commits).into_iter().partition(|c| c.waits.iter().any(|w| w.0 == tp));
        self.commits = kept;
        for c in gone {
            match c.then {
                AfterDurable::Respond { conn, seq, answer } => self.respond_bytes(conn, seq, answer(false)),
                AfterDurable::TxnOffsets { conn, seq, answers, .. } => self.respond_bytes(conn, seq, answers.1),
                AfterDurable::Txn { meta, next, .. } => self.refuse_txn_next(&meta, next),
                AfterDurable::GroupStored { .. } | AfterDurable::Nothing | AfterDurable::TxnExpired { .. } => {}
            }
        }
    }

    /// Appends tombstones for some of a group's offsets (and for the group's record if
    /// `and_group`). Returns what to wait for and the
    /// cache updates to make once it is durable.
    #[allow(clippy::type_complexity)]
    pub(super) fn tombstones(
        &mut self,
        group: &str,
        which: Vec<(String, i32)>,
        and_group: bool,
    ) -> Result<((Tp, Offset, u64), Vec<(String, String, i32, Option<Committed>)>), KafkaError> {
        let mut keys: Vec<Vec<u8>> = which.iter().map(|(t, p)| offset_key(group, t, *p)).collect();
        if and_group {
            keys.push(StoredKey::Group(group.to_string()).encode());
        }
        let refs: Vec<(Option<&[u8]>, Option<&[u8]>)> = keys.iter().map(|k| (Some(k.as_slice()), None)).collect();
        let batch = Bytes::from(batch::encode_records(&refs, self.now.wall_ms));
        let (tp, _, end, generation, _, _) =
            self.append_partition(OFFSETS_TOPIC, offsets_partition(group), Some(&batch))?;
        Ok(((tp, end, generation), which.into_iter().map(|(t, p)| (group.to_string(), t, p, None)).collect()))
    }

    pub(super) fn handle_offset_fetch(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: OffsetFetchRequest = protocol::decode_body(body.clone(), ctx.version)?;
        // Before v8 one group is asked for; from v8 several, each to its own coordinator.
        let group = (ctx.version < 8).then(|| req.group_id.0.to_string());
        let Some(ready) = self.groups_ready(conn, seq, &ctx, &body, group.as_deref()) else { return Ok(()) };
        let v = ctx.version;
        // require_stable (v7+, read_committed consumers): a partition with offsets committed
        // in a transaction not yet ended is UNSTABLE_OFFSET_COMMIT, which the client retries.
        let pending: std::collections::BTreeSet<(String, String, i32)> = if req.require_stable {
            self.txn_offsets.values().flatten().map(|(g, t, p, _)| (g.clone(), t.clone(), *p)).collect()
        } else {
            std::collections::BTreeSet::new()
        };
        let unstable = |g: &str, t: &str, p: i32| pending.contains(&(g.to_string(), t.to_string(), p));
        let lookup = |node: &Node,
                      group: &str,
                      wanted: Option<Vec<(String, Vec<i32>)>>|
         -> Vec<(String, Vec<(i32, Option<Committed>)>)> {
            let have = node.offsets.get(group);
            match wanted {
                Some(ts) => ts
                    .into_iter()
                    .map(|(t, ps)| {
                        let parts =
                            ps.into_iter().map(|p| (p, have.and_then(|h| h.get(&(t.clone(), p)).cloned()))).collect();
                        (t, parts)
                    })
                    .collect(),
                None => {
                    let mut by_topic: BTreeMap<String, Vec<(i32, Option<Committed>)>> = BTreeMap::new();
                    for ((t, p), c) in have.into_iter().flatten() {
                        by_topic.entry(t.clone()).or_default().push((*p, Some(c.clone())));
                    }
                    by_topic.into_iter().collect()
                }
            }
        };
        let mut resp = OffsetFetchResponse::default();
        if v >= 8 {
            for g in &req.groups {
                let wanted = g
                    .topics
                    .as_ref()
                    .map(|ts| ts.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
                let mut gr = offset_fetch_response::OffsetFetchResponseGroup::default();
                gr.group_id = g.group_id.clone();
                gr.error_code = ready;
                // v9: a member of a consumer group names itself and must be current.
                if let (0, Some(member)) = (ready, g.member_id.as_ref()) {
                    if self.consumer.group(g.group_id.0.as_str()).is_some() {
                        let check = self.check_consumer_member(g.group_id.0.as_str(), member.as_str(), g.member_epoch);
                        gr.error_code = check.err().unwrap_or(0);
                    }
                }
                if gr.error_code == 0 {
                    for (t, parts) in lookup(self, g.group_id.0.as_str(), wanted) {
                        let mut tr = offset_fetch_response::OffsetFetchResponseTopics::default();
                        tr.name = TopicName(sb(t.clone()));
                        for (p, c) in parts {
                            let mut pr = offset_fetch_response::OffsetFetchResponsePartitions::default();
                            pr.partition_index = p;
                            (pr.committed_offset, pr.committed_leader_epoch, pr.metadata) = fetched(c);
                            if unstable(g.group_id.0.as_str(), &t, p) {
                                pr.error_code = UNSTABLE_OFFSET_COMMIT;
                                pr.committed_offset = -1;
                            }
                            tr.partitions.push(pr);
                        }
                        gr.topics.push(tr);
                    }
                }
                resp.groups.push(gr);
            }
        } else {
            let wanted = req
                .topics
                .as_ref()
                .map(|ts| ts.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
            if v >= 2 {
                resp.error_code = ready;
            }
            if ready == 0 {
                for (t, parts) in lookup(self, req.group_id.0.as_str(), wanted) {
                    let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
                    tr.name = TopicName(sb(t.clone()));
                    for (p, c) in parts {
                        let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                        pr.partition_index = p;
                        let epoch;
                        (pr.committed_offset, epoch, pr.metadata) = fetched(c);
                        if v >= 5 {
                            pr.committed_leader_epoch = epoch;
                        }
                        if unstable(req.group_id.0.as_str(), &t, p) {
                            pr.error_code = UNSTABLE_OFFSET_COMMIT;
                            pr.committed_offset = -1;
                        }
                        tr.partitions.push(pr);
                    }
                    resp.topics.push(tr);
                }
            } else if let Some(ts) = &req.topics {
                // Before v2 errors travel per partition.
                for t in ts {
                    let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
                    tr.name = t.name.clone();
                    for p in &t.partition_indexes {
                        let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                        pr.partition_index = *p;
                        pr.committed_offset = -1;
                        pr.error_code = ready;
                        tr.partitions.push(pr);
                    }
                    resp.topics.push(tr);
                }
            }
        }
        self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
        Ok(())
    }

    pub(super) fn handle_list_groups(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: ListGroupsRequest = protocol::decode_body(body, ctx.version)?;
        // name -> (protocol type, state, group type)
        let mut groups: BTreeMap<String, (String, String, &str)> = BTreeMap::new();
        // Groups known only by their committed offsets ("simple" groups, from consumers that
        // commit without joining) have no protocol type, as in Kafka.
        for g in self.offsets.keys() {
            groups.insert(g.clone(), (String::new(), "Empty".to_string(), "classic"));
        }
        for (g, state, ptype) in self.coordinator.list() {
            groups.insert(g, (ptype.unwrap_or_default(), state_name(state).to_string(), "classic"));
        }
        for (g, cg) in self.consumer.list() {
            groups.insert(g.clone(), ("consumer".to_string(), cg.state_name().to_string(), "consumer"));
        }
        let filter: Vec<String> = req.states_filter.iter().map(|s| s.to_string()).collect();
        let types: Vec<String> = req.types_filter.iter().map(|s| s.to_string()).collect();
        let mut resp = ListGroupsResponse::default();
        if self.coordination.loading() {
            resp.error_code = COORDINATOR_LOAD_IN_PROGRESS;
            groups.clear();
        }
        for (g, (ptype, state, gtype)) in groups {
            if !filter.is_empty() && !filter.iter().any(|f| f.eq_ignore_ascii_case(&state)) {
                continue;
            }
            if !types.is_empty() && !types.iter().any(|f| f.eq_ignore_ascii_case(gtype)) {
                continue;
            }
            let mut lg = list_groups_response::ListedGroup::default();
            lg.group_id = GroupId(sb(g));
            lg.protocol_type = sb(ptype);
            if ctx.version >= 4 {
                lg.group_state = sb(state);
            }
            if ctx.version >= 5 {
                lg.group_type = sb(gtype);
            }
            resp.groups.push(lg);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }

    pub(super) fn handle_describe_groups(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: DescribeGroupsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = DescribeGroupsResponse::default();
        let has_topic = self.topics.contains_key(OFFSETS_TOPIC);
        for g in &req.groups {
            let name = g.0.to_string();
            let mut d = describe_groups_response::DescribedGroup::default();
            d.group_id = g.clone();
            // A group another broker coordinates, or whose partition is still being read back
            // here, is not known here: say so, as Kafka does, rather than calling it Dead.
            let refused = if has_topic { self.coordinates(OFFSETS_TOPIC, &name).err() } else { None };
            let desc = if refused.is_some() { None } else { self.coordinator.describe(&name) };
            match desc {
                None if refused.is_some() => d.error_code = refused.unwrap_or_default(),
                Some((state, ptype, proto, members)) => {
                    d.group_state = sb(state_name(state));
                    d.protocol_type = sb(ptype.unwrap_or_default());
                    d.protocol_data = sb(proto.unwrap_or_default());
                    for (id, inst, client, meta, assignment) in members {
                        let mut m = describe_groups_response::DescribedGroupMember::default();
                        m.member_id = sb(id);
                        if ctx.version >= 4 {
                            m.group_instance_id = inst.map(sb);
                        }
                        m.client_id = sb(client);
                        m.client_host = sb("/127.0.0.1");
                        m.member_metadata = meta;
                        m.member_assignment = assignment;
                        d.members.push(m);
                    }
                }
                None if self.offsets.contains_key(&name) => {
                    d.group_state = sb("Empty");
                    d.protocol_type = sb("");
                }
                None => d.group_state = sb("Dead"),
            }
            if ctx.version >= 3 {
                d.authorized_operations = i32::MIN;
            }
            resp.groups.push(d);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }

    pub(super) fn handle_delete_groups(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: DeleteGroupsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = DeleteGroupsResponse::default();
        let (mut waits, mut updates) = (Vec::new(), Vec::new());
        for g in &req.groups_names {
            let name = g.0.to_string();
            let mut r = delete_groups_response::DeletableGroupResult::default();
            r.group_id = g.clone();
            let known = self.offsets.contains_key(&name)
                || self.coordinator.state(&name).is_some()
                || self.consumer.group(&name).is_some();
            r.error_code = if !known {
                GROUP_ID_NOT_FOUND
            } else if self.consumer.has_members(&name) || self.coordinator.delete(&name).is_err() {
                NON_EMPTY_GROUP
            } else {
                self.consumer.delete(&name);
                waits.extend(self.store_consumer_groups());
                self.empty_since.remove(&name);
                let which: Vec<(String, i32)> =
                    self.offsets.get(&name).map(|o| o.keys().cloned().collect()).unwrap_or_default();
                match self.tombstones(&name, which, true) {
                    Ok((w, u)) => {
                        waits.push(w);
                        updates.extend(u);
                        0
                    }
                    Err(e) => e.code(),
                }
            };
            resp.results.push(r);
        }
        self.answer_when_durable(
            conn,
            seq,
            waits,
            updates,
            Box::new(move |ok| {
                if !ok {
                    for r in resp.results.iter_mut().filter(|r| r.error_code == 0) {
                        r.error_code = 15;
                    }
                }
                protocol::encode_response(&ctx, &resp)
            }),
        );
        Ok(())
    }

    /// Answers at once if nothing was written, else once every write is durable.
    fn answer_when_durable(
        &mut self,
        conn: ConnId,
        seq: u64,
        waits: Vec<(Tp, Offset, u64)>,
        updates: Vec<(String, String, i32, Option<Committed>)>,
        answer: BuildAnswer,
    ) {
        if waits.is_empty() {
            self.respond_bytes(conn, seq, answer(true));
        } else {
            self.commits.push(PendingCommit { waits, updates, then: AfterDurable::Respond { conn, seq, answer } });
        }
    }

    pub(super) fn handle_offset_delete(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: OffsetDeleteRequest = protocol::decode_body(body, ctx.version)?;
        let group = req.group_id.0.to_string();
        let mut resp = OffsetDeleteResponse::default();
        let known = self.offsets.contains_key(&group)
            || self.coordinator.state(&group).is_some()
            || self.consumer.group(&group).is_some();
        if !known {
            resp.error_code = GROUP_ID_NOT_FOUND;
            self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
            return Ok(());
        }
        // A live group may not lose offsets of a topic it is subscribed to.
        let mut subscribed = self.coordinator.subscribed_topics(&group);
        if let Some(g) = self.consumer.group(&group) {
            subscribed.extend(g.members.values().flat_map(|m| m.subscribed.iter().cloned()));
        }
        let mut which = Vec::new();
        for t in &req.topics {
            let mut tr = offset_delete_response::OffsetDeleteResponseTopic::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let mut pr = offset_delete_response::OffsetDeleteResponsePartition::default();
                pr.partition_index = p.partition_index;
                if subscribed.contains(t.name.0.as_str()) {
                    pr.error_code = GROUP_SUBSCRIBED_TO_TOPIC;
                } else if self
                    .offsets
                    .get(&group)
                    .is_some_and(|o| o.contains_key(&(t.name.0.to_string(), p.partition_index)))
                {
                    which.push((t.name.0.to_string(), p.partition_index));
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        let (waits, updates) = if which.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            match self.tombstones(&group, which, false) {
                Ok((w, u)) => (vec![w], u),
                Err(e) => {
                    resp.error_code = e.code();
                    (Vec::new(), Vec::new())
                }
            }
        };
        self.answer_when_durable(
            conn,
            seq,
            waits,
            updates,
            Box::new(move |ok| {
                if !ok {
                    resp.error_code = 15;
                }
                protocol::encode_response(&ctx, &resp)
            }),
        );
        Ok(())
    }

    /// A topic was deleted: its committed offsets go too (a topic re-created under the same
    /// name must not inherit them). Tombstones make it durable; offsets of topics that no
    /// longer exist are also dropped when the offsets topic is read back at start-up.
    pub(super) fn forget_topic_offsets(&mut self, topic: &str) {
        let mut by_group: Vec<(String, Vec<(String, i32)>)> = Vec::new();
        for (g, offs) in &self.offsets {
            let which: Vec<(String, i32)> = offs.keys().filter(|(t, _)| t == topic).cloned().collect();
            if !which.is_empty() {
                by_group.push((g.clone(), which));
            }
        }
        for (g, which) in by_group {
            if let Err(e) = self.tombstones(&g, which.clone(), false) {
                tracing::warn!(group = %g, error = ?e, "could not write tombstones for a deleted topic's offsets");
            }
            if let Some(offs) = self.offsets.get_mut(&g) {
                for k in &which {
                    offs.remove(k);
                }
                if offs.is_empty() {
                    self.offsets.remove(&g);
                }
            }
        }
    }

    /// Offsets retention, as Kafka does it (KIP-211, KIP-496): a group that has been empty
    /// for the retention period loses all its offsets (and then the group goes); a group that
    /// was never managed here (standalone commits) loses each offset that long after its
    /// commit; a live consumer group loses offsets of topics it no longer subscribes to that
    /// long after their commit.
    pub(super) fn expire_offsets(&mut self) {
        if !self.topics.contains_key(OFFSETS_TOPIC) {
            return;
        }
        let now = self.now.wall_ms;
        let retention = i64::try_from(self.config.group.offsets_retention_ms).unwrap_or(i64::MAX);
        let old = |ts: i64| ts.saturating_add(retention) <= now;
        let mut plan: Vec<(String, Vec<(String, i32)>, bool)> = Vec::new();
        let names: std::collections::BTreeSet<String> =
            self.offsets.keys().chain(self.empty_since.keys()).cloned().collect();
        for name in names {
            let offs = self.offsets.get(&name);
            let state = self.coordinator.state(&name);
            let managed = self.coordinator.protocol_type(&name).is_some();
            let consumer_group = self.consumer.group(&name).is_some();
            let empty = state.is_none_or(|s| s == crate::group::GroupState::Empty) && !self.consumer.has_members(&name);
            let which: Vec<(String, i32)> = match (empty, managed) {
                (true, true) => match self.empty_since.get(&name) {
                    Some(since) if old(*since) => offs.map(|o| o.keys().cloned().collect()).unwrap_or_default(),
                    _ => continue,
                },
                (true, false) => offs
                    .map(|o| o.iter().filter(|(_, c)| old(c.commit_timestamp)).map(|(k, _)| k.clone()).collect())
                    .unwrap_or_default(),
                (false, _) => {
                    let subscribed = self.coordinator.subscribed_topics(&name);
                    if self.coordinator.protocol_type(&name).as_deref() != Some("consumer") || subscribed.is_empty() {
                        continue;
                    }
                    offs.map(|o| {
                        o.iter()
                            .filter(|((t, _), c)| !subscribed.contains(t) && old(c.commit_timestamp))
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default()
                }
            };
            // An empty group left with no offsets is gone too.
            let remaining = offs.map_or(0, |o| o.len()) - which.len();
            let drop_group = empty && remaining == 0 && (managed || state.is_some() || consumer_group);
            if !which.is_empty() || drop_group {
                plan.push((name, which, drop_group));
            }
        }
        for (name, which, drop_group) in plan {
            tracing::info!(group = %name, offsets = which.len(), group_too = drop_group, "offsets expired");
            if drop_group {
                let _ = self.coordinator.delete(&name);
                self.consumer.delete(&name);
                self.empty_since.remove(&name);
                self.persist_consumer_groups();
            }
            match self.tombstones(&name, which, drop_group) {
                Ok((w, u)) => {
                    self.commits.push(PendingCommit { waits: vec![w], updates: u, then: AfterDurable::Nothing })
                }
                Err(e) => tracing::warn!(group = %name, error = ?e, "could not write tombstones for expired offsets"),
            }
        }
    }

    pub(super) fn drop_offset(&mut self, group: &str, topic: &str, partition: i32) {
        if let Some(g) = self.offsets.get_mut(group) {
            g.remove(&(topic.to_string(), partition));
            if g.is_empty() {
                self.offsets.remove(group);
            }
        }
    }
}

/// What OffsetFetch says of a partition: offset, leader epoch and metadata (-1, -1 and ""
/// when nothing is committed).
fn fetched(c: Option<Committed>) -> (i64, i32, Option<StrBytes>) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, Some(sb(c.metadata.unwrap_or_default()))),
        None => (-1, -1, Some(sb(""))),
    }
}

fn state_name(s: crate::group::GroupState) -> &'static str {
    use crate::group::GroupState::*;
    match s {
        Empty => "Empty",
        PreparingRebalance => "PreparingRebalance",
        CompletingRebalance => "CompletingRebalance",
        Stable => "Stable",
        Dead => "Dead",
    }
}
