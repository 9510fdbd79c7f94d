//! ConsumerGroupHeartbeat and ConsumerGroupDescribe (KIP-848) over the wire: topic ids at the
//! edge, the state machine in `group::consumer`, and a group's record in `__consumer_offsets`
//! written whenever it changes; a heartbeat that changed its group is answered only once that
//! record is durable, so no epoch or assignment a member was told is forgotten by a restart.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::*;
use uuid::Uuid;

use super::groups::{sb, AfterDurable, PendingCommit, StoredKey, GROUP_ID_NOT_FOUND, OFFSETS_TOPIC};
use super::Node;
use crate::group::consumer::{Assignment, ConsumerError, Group, Heartbeat, HeartbeatResult};
use crate::log::batch;
use crate::protocol::{self, FrameError, RequestContext};
use crate::types::ConnId;

const INVALID_REQUEST: i16 = 42;

impl Node {
    /// Partition counts of every topic (what the assignors share out).
    pub(super) fn topic_sizes(&self) -> BTreeMap<String, i32> {
        self.topics
            .iter()
            .filter(|(n, t)| t.creating.is_none() && n.as_str() != OFFSETS_TOPIC)
            .map(|(n, t)| (n.clone(), t.partitions.len() as i32))
            .collect()
    }

    pub(super) fn handle_consumer_group_heartbeat(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: ConsumerGroupHeartbeatRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let group = req.group_id.0.to_string();
        let refuse = |node: &mut Node, code: i16, why: &str| {
            let mut resp = ConsumerGroupHeartbeatResponse::default();
            resp.error_code = code;
            resp.error_message = Some(sb(why));
            node.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
        };
        match self.groups_ready(conn, seq, &ctx, &body, Some(req.group_id.0.as_str())) {
            Some(0) => {}
            None => return Ok(()),
            Some(code) => {
                refuse(self, code, "the coordinator is loading, or is another broker");
                return Ok(());
            }
        }
        if group.is_empty() {
            refuse(self, INVALID_REQUEST, "GroupId can't be empty.");
            return Ok(());
        }
        if req.subscribed_topic_regex.as_ref().is_some_and(|r| !r.is_empty()) {
            refuse(self, INVALID_REQUEST, "regular expression subscriptions are not supported; name the topics");
            return Ok(());
        }
        // A group name is one kind of group at a time: a classic group with members keeps it.
        match self.coordinator.state(&group) {
            Some(crate::group::GroupState::Empty) => {
                // The empty classic group gives way, durably (its record would come back).
                let _ = self.coordinator.delete(&group);
                self.empty_since.remove(&group);
                match self.tombstones(&group, Vec::new(), true) {
                    Ok((w, u)) => self.commits.push(PendingCommit::new(vec![w], u, AfterDurable::Nothing)),
                    Err(e) => tracing::warn!(group = %group, error = ?e, "could not write a classic group's tombstone"),
                }
            }
            None => {}
            Some(_) => {
                refuse(self, GROUP_ID_NOT_FOUND, &format!("group {group} is a classic group"));
                return Ok(());
            }
        }
        let mut member_id = req.member_id.to_string();
        if member_id.is_empty() && ctx.version == 0 && req.member_epoch == 0 {
            // Version 0 clients leave the member id to the coordinator.
            member_id = Uuid::from_bytes(self.new_topic_id()).to_string();
        }
        let owned = req.topic_partitions.as_ref().map(|tps| {
            let mut a = Assignment::new();
            for tp in tps {
                if let Some(name) = self.names.get(tp.topic_id.as_bytes()) {
                    a.entry(name.clone()).or_default().extend(tp.partitions.iter().copied());
                }
            }
            a
        });
        let hb = Heartbeat {
            group: group.clone(),
            member_id,
            member_epoch: req.member_epoch,
            instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
            rack_id: req.rack_id.as_ref().map(|s| s.to_string()),
            client_id: ctx.client_id.clone().unwrap_or_default(),
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            subscribed: req.subscribed_topic_names.as_ref().map(|ts| ts.iter().map(|t| t.0.to_string()).collect()),
            assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
            owned,
        };
        let sizes = self.topic_sizes();
        let r = self.consumer.heartbeat(self.now.mono, hb, &sizes);
        let resp = self.heartbeat_response(r);
        let answer = move |ok: bool| {
            let mut resp = resp;
            if !ok {
                resp = ConsumerGroupHeartbeatResponse::default();
                resp.error_code = 15; // COORDINATOR_NOT_AVAILABLE: retriable
            }
            protocol::encode_response(&ctx, &resp)
        };
        let waits = self.store_consumer_groups();
        if waits.is_empty() {
            self.respond_bytes(conn, seq, answer(true));
        } else {
            self.commits.push(PendingCommit::new(
                waits,
                Vec::new(),
                AfterDurable::Respond { conn, seq, answer: Box::new(answer) },
            ));
        }
        Ok(())
    }

    /// ConsumerGroupDescribe: a KIP-848 group's epochs, members, their assignments and
    /// targets. A group of the classic kind is GROUP_ID_NOT_FOUND, as in Kafka (admin clients
    /// then ask DescribeGroups).
    pub(super) fn handle_consumer_group_describe(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: ConsumerGroupDescribeRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let Some(ready) = self.groups_ready(conn, seq, &ctx, &body, None) else { return Ok(()) };
        let mut resp = ConsumerGroupDescribeResponse::default();
        for id in &req.group_ids {
            let mut d = consumer_group_describe_response::DescribedGroup::default();
            d.group_id = id.clone();
            d.error_code = ready;
            match (ready, self.consumer.group(id.0.as_str())) {
                (0, Some(g)) => {
                    d.group_state = sb(g.state_name());
                    d.group_epoch = g.epoch;
                    d.assignment_epoch = g.assignment_epoch;
                    let assignor = g.members.values().find_map(|m| m.assignor.clone());
                    d.assignor_name = sb(assignor.unwrap_or_else(|| "uniform".to_string()));
                    for (mid, m) in &g.members {
                        let mut dm = consumer_group_describe_response::Member::default();
                        dm.member_id = sb(mid.clone());
                        dm.instance_id = m.instance_id.clone().map(sb);
                        dm.rack_id = m.rack_id.clone().map(sb);
                        dm.member_epoch = m.epoch;
                        dm.client_id = sb(m.client_id.clone());
                        dm.subscribed_topic_names = m.subscribed.iter().map(|t| TopicName(sb(t.clone()))).collect();
                        dm.assignment = self.described_assignment(&m.assigned);
                        dm.target_assignment =
                            self.described_assignment(&g.target.get(mid).cloned().unwrap_or_default());
                        if ctx.version >= 1 {
                            dm.member_type = 0; // a consumer-protocol member
                        }
                        d.members.push(dm);
                    }
                }
                (0, None) => {
                    d.error_code = GROUP_ID_NOT_FOUND;
                    d.error_message = Some(sb(format!("Group {} is not a consumer group.", id.0.as_str())));
                }
                _ => {}
            }
            resp.groups.push(d);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
        Ok(())
    }

    fn described_assignment(&self, a: &Assignment) -> consumer_group_describe_response::Assignment {
        let mut out = consumer_group_describe_response::Assignment::default();
        for (topic, parts) in a {
            if let Some(t) = self.topics.get(topic) {
                let mut tp = consumer_group_describe_response::TopicPartitions::default();
                tp.topic_id = Uuid::from_bytes(t.id);
                tp.topic_name = TopicName(sb(topic.clone()));
                tp.partitions = parts.iter().copied().collect();
                out.topic_partitions.push(tp);
            }
        }
        out
    }

    fn heartbeat_response(&self, r: HeartbeatResult) -> ConsumerGroupHeartbeatResponse {
        let mut resp = ConsumerGroupHeartbeatResponse::default();
        if let Some((e, why)) = r.error {
            resp.error_code = e.code();
            resp.error_message = Some(sb(why));
            return resp;
        }
        resp.member_id = Some(sb(r.member_id));
        resp.member_epoch = r.member_epoch;
        resp.heartbeat_interval_ms = r.heartbeat_interval_ms;
        resp.assignment = r.assignment.map(|a| {
            let mut out = consumer_group_heartbeat_response::Assignment::default();
            for (topic, parts) in a {
                if let Some(t) = self.topics.get(&topic) {
                    let mut tp = consumer_group_heartbeat_response::TopicPartitions::default();
                    tp.topic_id = Uuid::from_bytes(t.id);
                    tp.partitions = parts.into_iter().collect();
                    out.topic_partitions.push(tp);
                }
            }
            out
        });
        resp
    }

    /// Writes the record of every consumer group that changed; returns what to wait for.
    pub(super) fn store_consumer_groups(&mut self) -> Vec<(super::Tp, crate::types::Offset, u64)> {
        let mut waits = Vec::new();
        for (name, g) in self.consumer.take_changed() {
            let key = StoredKey::ConsumerGroup(name.clone()).encode();
            let value = g.map(|g| postcard::to_allocvec(&g).expect("consumer groups serialize"));
            let batch = Bytes::from(batch::encode_records(&[(Some(&key), value.as_deref())], self.now.wall_ms));
            match self.append_partition(OFFSETS_TOPIC, super::groups::offsets_partition(&name), Some(&batch)) {
                Ok((tp, _, end, generation, _, _)) => waits.push((tp, end, generation)),
                Err(e) => tracing::warn!(group = %name, error = ?e, "a consumer group record could not be written"),
            }
        }
        waits
    }

    /// Session and revocation timeouts of consumer group members; the records they change.
    pub(super) fn expire_consumer_members(&mut self) {
        if self.consumer.poll_timeout().is_none_or(|t| t > self.now.mono) {
            return;
        }
        let sizes = self.topic_sizes();
        self.consumer.poll(self.now.mono, &sizes);
        self.persist_consumer_groups();
    }

    /// Writes the records of changed consumer groups when no answer waits on them.
    pub(super) fn persist_consumer_groups(&mut self) {
        let waits = self.store_consumer_groups();
        if !waits.is_empty() {
            self.commits.push(PendingCommit::new(waits, Vec::new(), AfterDurable::Nothing));
        }
    }

    /// OffsetCommit and OffsetFetch by a member of a consumer group: its epoch must be current.
    pub(super) fn check_consumer_member(&self, group: &str, member: &str, epoch: i32) -> Result<(), i16> {
        self.consumer.validate_commit(group, member, epoch).map_err(ConsumerError::code)
    }

    /// A consumer group read back at start-up.
    pub(super) fn restore_consumer_group(&mut self, name: &str, g: Group) {
        self.consumer.restore(self.now.mono, name, g);
    }
}
