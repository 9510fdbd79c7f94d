//! The classic consumer group protocol's state machine (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup), sans-IO: the node hands it requests with an opaque waiter token and the time,
//! and it answers now or later (when the rebalance completes or times out). Committed offsets
//! and their persistence in `__consumer_offsets` are the node's job.
//!
//! States: Empty -> PreparingRebalance -> CompletingRebalance -> Stable, and back to
//! PreparingRebalance when membership changes; Dead when deleted. Members get their id in a
//! first JoinGroup (KIP-394); static members (KIP-345) keep theirs across restarts by
//! `group.instance.id`.
//!
//! Driven by `node/groups.rs`, which serves the group APIs over the wire.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::types::Instant;

pub mod consumer;

/// Errors the coordinator answers with (mapped to Kafka codes at the protocol edge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupError {
    UnknownMemberId,
    IllegalGeneration,
    RebalanceInProgress,
    InconsistentGroupProtocol,
    InvalidSessionTimeout,
    MemberIdRequired,
    GroupMaxSizeReached,
    FencedInstanceId,
    CoordinatorNotAvailable,
    CoordinatorLoadInProgress,
    /// Another broker coordinates the group (its offsets partition is led there).
    NotCoordinator,
    InvalidGroupId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub initial_rebalance_delay_ms: u64,
    pub min_session_timeout_ms: u64,
    pub max_session_timeout_ms: u64,
    pub max_members: usize,
    /// `offsets.retention.minutes`, in ms: how long an empty group's offsets (or a standalone
    /// commit) are kept.
    pub offsets_retention_ms: u64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: u64,
    /// `group.consumer.session.timeout.ms` and `group.consumer.heartbeat.interval.ms`, for
    /// groups of the KIP-848 protocol.
    pub consumer_session_timeout_ms: u64,
    pub consumer_heartbeat_interval_ms: u64,
    /// `offset.metadata.max.bytes`: the longest metadata string a commit may carry.
    pub offset_metadata_max_bytes: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_members: crate::limits::GROUP_MEMBERS_MAX,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            offset_metadata_max_bytes: 4096,
        }
    }
}

/// A JoinGroup request, in the coordinator's terms.
#[derive(Clone, Debug)]
pub struct Join {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// Clients from JoinGroup v4 on take a member id in a first round trip.
    pub requires_known_member_id: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinResult {
    pub error: Option<GroupError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader only: every member's id, instance id and metadata for the protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    /// A JoinGroup refused with `e`.
    pub fn failed(e: GroupError, member_id: &str) -> JoinResult {
        JoinResult {
            error: Some(e),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResult {
    pub error: Option<GroupError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    /// A SyncGroup refused with `e`.
    pub fn failed(e: GroupError) -> SyncResult {
        SyncResult { error: Some(e), protocol_type: None, protocol_name: None, assignment: Bytes::new() }
    }
}

/// What `__consumer_offsets` keeps of a group: written when a generation's assignment is
/// made (before any member learns it) and when the group becomes empty, so that a restarted
/// coordinator carries on from the last generation any member was told about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub protocol_type: Option<String>,
    pub generation_id: i32,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    /// Wall-clock ms when the group reached this state; filled in by whoever writes it.
    pub state_since_ms: i64,
    pub members: Vec<MemberRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
}

/// A group record the node must make durable. Once it is (or failed), the node calls
/// `Coordinator::stored` with the generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    pub group: String,
    pub generation_id: i32,
    pub record: GroupRecord,
}

/// An answer that was waiting for the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deferred<W> {
    Join(W, JoinResult),
    Sync(W, SyncResult),
}

#[derive(Clone, Debug)]
struct Member<W> {
    instance_id: Option<String>,
    client_id: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heard: Instant,
    join_waiter: Option<W>,
    sync_waiter: Option<W>,
}

#[derive(Clone, Debug)]
struct Group<W> {
    state: GroupState,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member<W>>,
    /// Member ids handed out by MEMBER_ID_REQUIRED and not yet used, with their deadline.
    pending: BTreeMap<String, Instant>,
    static_members: BTreeMap<String, String>,
    /// When the join phase ends even if some members have not rejoined.
    join_deadline: Option<Instant>,
    /// The leader's assignment while its record is being made durable.
    storing: Option<BTreeMap<String, Bytes>>,
}

impl<W> Group<W> {
    fn new() -> Group<W> {
        Group {
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            static_members: BTreeMap::new(),
            join_deadline: None,
            storing: None,
        }
    }

    fn record(&self, assignments: Option<&BTreeMap<String, Bytes>>) -> GroupRecord {
        GroupRecord {
            protocol_type: self.protocol_type.clone(),
            generation_id: self.generation_id,
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            state_since_ms: 0,
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberRecord {
                    id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m.protocols.iter().map(|(p, b)| (p.clone(), b.to_vec())).collect(),
                    assignment: assignments.map_or(&m.assignment, |a| a.get(id).unwrap_or(&m.assignment)).to_vec(),
                })
                .collect(),
        }
    }
}

/// Every group this node coordinates.
pub struct Coordinator<W> {
    config: GroupConfig,
    groups: BTreeMap<String, Group<W>>,
    /// Member ids are random (like Kafka's UUIDs), so that no id handed out before a restart
    /// is handed out again after it.
    rng: ChaCha8Rng,
    /// Answers that became ready, drained by `poll`.
    ready: Vec<Deferred<W>>,
    /// Group records to make durable, drained by `take_stores`.
    stores: Vec<Store>,
}

fn ms(t: Instant, ms: u64) -> Instant {
    t.plus_millis(ms)
}

impl<W: Clone> Coordinator<W> {
    /// `seed` must differ between restarts of a node (member ids are drawn from it).
    pub fn new(config: GroupConfig, seed: u64) -> Coordinator<W> {
        Coordinator {
            config,
            groups: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            ready: Vec::new(),
            stores: Vec::new(),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Group records to write, in the order they were made.
    pub fn take_stores(&mut self) -> Vec<Store> {
        std::mem::take(&mut self.stores)
    }

    /// A group record written by `take_stores` is durable (`ok`) or failed. A generation's
    /// assignment is handed out only once its record is durable; if it cannot be written the
    /// group rebalances.
    pub fn stored(&mut self, now: Instant, group: &str, generation_id: i32, ok: bool) {
        let Some(g) = self.groups.get_mut(group) else { return };
        if g.state != GroupState::CompletingRebalance || g.generation_id != generation_id {
            return;
        }
        let Some(given) = g.storing.take() else { return };
        if ok {
            for (id, m) in g.members.iter_mut() {
                m.assignment = given.get(id).cloned().unwrap_or_default();
            }
            g.state = GroupState::Stable;
        } else {
            self.prepare_rebalance(group, now);
        }
    }

    /// Rebuilds a group from its last durable record (at start-up). Members keep their ids,
    /// generation and assignment; their sessions start now.
    pub fn restore(&mut self, now: Instant, name: &str, rec: GroupRecord) {
        let mut g = Group::new();
        g.state = if rec.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
        g.generation_id = rec.generation_id;
        g.protocol_type = rec.protocol_type;
        g.protocol_name = rec.protocol_name;
        g.leader = rec.leader;
        for m in rec.members {
            if let Some(inst) = &m.instance_id {
                g.static_members.insert(inst.clone(), m.id.clone());
            }
            g.members.insert(
                m.id,
                Member {
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m.protocols.into_iter().map(|(p, b)| (p, Bytes::from(b))).collect(),
                    assignment: Bytes::from(m.assignment),
                    last_heard: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        self.groups.insert(name.to_string(), g);
    }

    /// The group's protocol type, if it has one (a group of the "consumer" protocol type
    /// was managed by its members; a group without one only ever committed offsets).
    pub fn protocol_type(&self, group: &str) -> Option<String> {
        self.groups.get(group).and_then(|g| g.protocol_type.clone())
    }

    /// Marks that a group became empty: its record is written so the new generation outlives
    /// a restart.
    fn store_empty(&mut self, group: &str) {
        if let Some(g) = self.groups.get(group) {
            self.stores.push(Store {
                group: group.to_string(),
                generation_id: g.generation_id,
                record: g.record(None),
            });
        }
    }

    pub fn state(&self, group: &str) -> Option<GroupState> {
        self.groups.get(group).map(|g| g.state)
    }

    pub fn generation(&self, group: &str) -> Option<i32> {
        self.groups.get(group).map(|g| g.generation_id)
    }

    pub fn members(&self, group: &str) -> Vec<String> {
        self.groups.get(group).map(|g| g.members.keys().cloned().collect()).unwrap_or_default()
    }

    /// `client_id` and a random UUID, as Kafka makes them.
    fn new_member_id(&mut self, client_id: &str) -> String {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{client_id}-{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }

    /// A JoinGroup. Returns an answer now, or None: the answer comes from `poll` later.
    pub fn join(&mut self, now: Instant, j: Join, waiter: W) -> Option<JoinResult> {
        let fail = |e, member_id: &str| Some(JoinResult::failed(e, member_id));
        if j.session_timeout_ms < self.config.min_session_timeout_ms
            || j.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(GroupError::InvalidSessionTimeout, &j.member_id);
        }
        let max_members = self.config.max_members;
        let g = self.groups.entry(j.group.clone()).or_insert_with(Group::new);
        if g.state == GroupState::Dead {
            return fail(GroupError::CoordinatorNotAvailable, &j.member_id);
        }
        let compatible = g.protocol_type.as_ref().is_none_or(|t| *t == j.protocol_type)
            && (g.members.is_empty()
                || j.protocols
                    .iter()
                    .any(|(p, _)| g.members.values().all(|m| m.protocols.iter().any(|(q, _)| q == p))));
        if j.protocols.is_empty() || !compatible {
            return fail(GroupError::InconsistentGroupProtocol, &j.member_id);
        }
        // The size limit, as Kafka applies it before anything else about the member: during a
        // rebalance it counts the members that have rejoined (so the last ones to rejoin a
        // group over its limit are the ones turned away), otherwise every member.
        let awaiting = g.members.values().filter(|m| m.join_waiter.is_some()).count();
        let known_member = g.members.get(&j.member_id);
        let accept = match g.state {
            GroupState::Empty | GroupState::Dead => true,
            GroupState::PreparingRebalance => {
                known_member.is_some_and(|m| m.join_waiter.is_some()) || awaiting < max_members
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                known_member.is_some() || g.members.len() < max_members
            }
        };
        if !accept {
            if known_member.is_some() {
                let mut out = Vec::new();
                self.remove_member(&j.group, &j.member_id, &mut out);
                self.ready.extend(out);
            }
            return fail(GroupError::GroupMaxSizeReached, "");
        }
        // Static members: the instance id names the member, whatever id it comes with.
        let mut member_id = j.member_id.clone();
        let mut replaced = false;
        if let Some(inst) = &j.instance_id {
            match g.static_members.get(inst).cloned() {
                Some(old) if member_id.is_empty() || member_id != old => {
                    // A restarted static member: it takes over its old slot under a new id.
                    let new = self.new_member_id(&j.client_id);
                    let g = self.groups.get_mut(&j.group).expect("present");
                    if let Some(mut m) = g.members.remove(&old) {
                        m.join_waiter = None;
                        m.sync_waiter = None;
                        g.members.insert(new.clone(), m);
                    }
                    if g.leader.as_deref() == Some(old.as_str()) {
                        g.leader = Some(new.clone());
                    }
                    g.static_members.insert(inst.clone(), new.clone());
                    member_id = new;
                    replaced = true;
                }
                Some(_) => {}
                None if !member_id.is_empty() => return fail(GroupError::UnknownMemberId, &member_id),
                None => {
                    member_id = self.new_member_id(&j.client_id);
                    self.groups
                        .get_mut(&j.group)
                        .expect("present")
                        .static_members
                        .insert(inst.clone(), member_id.clone());
                }
            }
        } else if member_id.is_empty() {
            member_id = self.new_member_id(&j.client_id);
            if j.requires_known_member_id {
                let g = self.groups.get_mut(&j.group).expect("present");
                g.pending.insert(member_id.clone(), ms(now, j.session_timeout_ms));
                return fail(GroupError::MemberIdRequired, &member_id);
            }
        } else {
            let g = self.groups.get(&j.group).expect("present");
            if !g.members.contains_key(&member_id) && !g.pending.contains_key(&member_id) {
                return fail(GroupError::UnknownMemberId, &member_id);
            }
        }
        let g = self.groups.get_mut(&j.group).expect("present");
        g.pending.remove(&member_id);
        let known = g.members.get(&member_id).map(|m| m.protocols == j.protocols);
        let m = g.members.entry(member_id.clone()).or_insert_with(|| Member {
            instance_id: j.instance_id.clone(),
            client_id: j.client_id.clone(),
            session_timeout_ms: j.session_timeout_ms,
            rebalance_timeout_ms: j.rebalance_timeout_ms,
            protocols: j.protocols.clone(),
            assignment: Bytes::new(),
            last_heard: now,
            join_waiter: None,
            sync_waiter: None,
        });
        m.protocols = j.protocols.clone();
        m.session_timeout_ms = j.session_timeout_ms;
        m.rebalance_timeout_ms = j.rebalance_timeout_ms;
        m.last_heard = now;
        m.join_waiter = Some(waiter);
        g.protocol_type.get_or_insert_with(|| j.protocol_type.clone());
        match g.state {
            // A known member with unchanged protocols rejoining a stable group (a static member
            // restarting, or a client that lost its response): answer with the current
            // generation, no rebalance.
            // (Not while an assignment naming the replaced id is pending: that rebalances.)
            GroupState::Stable | GroupState::CompletingRebalance
                if known == Some(true)
                    && (j.instance_id.is_some() || g.leader.as_deref() != Some(member_id.as_str()))
                    && !(replaced && g.state == GroupState::CompletingRebalance) =>
            {
                if replaced {
                    // The new id must outlive a restart, or the old incarnation's would.
                    let record = g.record(None);
                    self.stores.push(Store { group: j.group.clone(), generation_id: g.generation_id, record });
                }
                let m = g.members.get_mut(&member_id).expect("present");
                m.join_waiter = None;
                let leader = g.leader.clone().unwrap_or_default();
                let members = if leader == member_id { Self::member_list(g) } else { Vec::new() };
                return Some(JoinResult {
                    error: None,
                    generation_id: g.generation_id,
                    protocol_type: g.protocol_type.clone(),
                    protocol_name: g.protocol_name.clone(),
                    leader,
                    member_id,
                    members,
                });
            }
            GroupState::Empty => {
                g.state = GroupState::PreparingRebalance;
                let delay = self.config.initial_rebalance_delay_ms.min(j.rebalance_timeout_ms);
                g.join_deadline = Some(ms(now, delay));
            }
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(&j.group, now),
            GroupState::PreparingRebalance | GroupState::Dead => {}
        }
        None
    }

    fn member_list(g: &Group<W>) -> Vec<(String, Option<String>, Bytes)> {
        let proto = g.protocol_name.clone().unwrap_or_default();
        g.members
            .iter()
            .map(|(id, m)| {
                let meta = m.protocols.iter().find(|(p, _)| *p == proto).map(|(_, b)| b.clone()).unwrap_or_default();
                (id.clone(), m.instance_id.clone(), meta)
            })
            .collect()
    }

    /// Starts a rebalance: every member must rejoin within the largest rebalance timeout.
    fn prepare_rebalance(&mut self, group: &str, now: Instant) {
        let Some(g) = self.groups.get_mut(group) else { return };
        let timeout = g.members.values().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0);
        g.state = GroupState::PreparingRebalance;
        g.join_deadline = Some(ms(now, timeout));
        g.storing = None;
        // Members waiting on SyncGroup learn that a rebalance started, and rejoin.
        for m in g.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                self.ready.push(Deferred::Sync(w, SyncResult::failed(GroupError::RebalanceInProgress)));
            }
        }
    }

    /// Answers that became ready: syncs answered by the leader's assignment, rebalances that
    /// completed, and everything `now` expires. Call after every request and on timeouts.
    pub fn poll(&mut self, now: Instant) -> Vec<Deferred<W>> {
        let mut out = std::mem::take(&mut self.ready);
        out.extend(self.poll_syncs());
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            self.expire_sessions(&name, now, &mut out);
            self.maybe_complete_join(&name, now, &mut out);
        }
        self.groups.retain(|_, g| {
            !(g.state == GroupState::Empty && g.members.is_empty() && g.pending.is_empty() && g.generation_id == 0)
        });
        out
    }

    fn expire_sessions(&mut self, name: &str, now: Instant, out: &mut Vec<Deferred<W>>) {
        let Some(g) = self.groups.get_mut(name) else { return };
        g.pending.retain(|_, deadline| *deadline > now);
        let preparing = g.state == GroupState::PreparingRebalance;
        let expired: Vec<String> = g
            .members
            .iter()
            .filter(|(_, m)| !(preparing && m.join_waiter.is_some()))
            .filter(|(_, m)| m.last_heard.plus_millis(m.session_timeout_ms) <= now)
            .map(|(id, _)| id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            self.remove_member(name, id, out);
        }
        self.after_departure(name, now);
    }

    fn remove_member(&mut self, name: &str, id: &str, out: &mut Vec<Deferred<W>>) {
        let Some(g) = self.groups.get_mut(name) else { return };
        let Some(m) = g.members.remove(id) else { return };
        if let Some(inst) = &m.instance_id {
            g.static_members.remove(inst);
        }
        if let Some(w) = m.join_waiter {
            out.push(Deferred::Join(w, JoinResult::failed(GroupError::UnknownMemberId, id)));
        }
        if let Some(w) = m.sync_waiter {
            out.push(Deferred::Sync(w, SyncResult::failed(GroupError::UnknownMemberId)));
        }
        if g.leader.as_deref() == Some(id) {
            g.leader = None;
        }
    }

    /// After members left: an empty group goes Empty; otherwise the rest rebalance.
    fn after_departure(&mut self, name: &str, now: Instant) {
        let Some(g) = self.groups.get_mut(name) else { return };
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.generation_id += 1;
            g.protocol_name = None;
            g.join_deadline = None;
            g.storing = None;
            self.store_empty(name);
        } else if g.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(name, now);
        }
    }

    /// Ends the join phase when every member has rejoined, or when its deadline passes (the
    /// members that did not rejoin are removed).
    fn maybe_complete_join(&mut self, name: &str, now: Instant, out: &mut Vec<Deferred<W>>) {
        let Some(g) = self.groups.get_mut(name) else { return };
        if g.state != GroupState::PreparingRebalance {
            return;
        }
        let all_in = g.members.values().all(|m| m.join_waiter.is_some()) && g.pending.is_empty();
        let due = g.join_deadline.is_some_and(|d| d <= now);
        // A new group waits out the initial delay even when everyone is in, so that members
        // starting together land in one generation.
        let initial = g.generation_id == 0 || g.protocol_name.is_none();
        if !(due || (all_in && !initial)) {
            return;
        }
        let missing: Vec<String> =
            g.members.iter().filter(|(_, m)| m.join_waiter.is_none()).map(|(id, _)| id.clone()).collect();
        for id in missing {
            self.remove_member(name, &id, out);
        }
        let g = self.groups.get_mut(name).expect("present");
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.join_deadline = None;
            if g.generation_id > 0 {
                self.store_empty(name);
            }
            return;
        }
        g.generation_id += 1;
        g.state = GroupState::CompletingRebalance;
        g.join_deadline = None;
        // The protocol every member supports that ranks best across their preference lists.
        let candidates: Vec<String> =
            g.members.values().next().map(|m| m.protocols.iter().map(|(p, _)| p.clone()).collect()).unwrap_or_default();
        let chosen = candidates
            .into_iter()
            .filter(|p| g.members.values().all(|m| m.protocols.iter().any(|(q, _)| q == p)))
            .min_by_key(|p| {
                g.members
                    .values()
                    .map(|m| m.protocols.iter().position(|(q, _)| q == p).unwrap_or(usize::MAX))
                    .sum::<usize>()
            });
        g.protocol_name = chosen;
        if g.leader.as_ref().is_none_or(|l| !g.members.contains_key(l)) {
            g.leader = g.members.keys().next().cloned();
        }
        let leader = g.leader.clone().unwrap_or_default();
        let list = Self::member_list(g);
        for (id, m) in g.members.iter_mut() {
            m.last_heard = now;
            if let Some(w) = m.join_waiter.take() {
                out.push(Deferred::Join(
                    w,
                    JoinResult {
                        error: None,
                        generation_id: g.generation_id,
                        protocol_type: g.protocol_type.clone(),
                        protocol_name: g.protocol_name.clone(),
                        leader: leader.clone(),
                        member_id: id.clone(),
                        members: if *id == leader { list.clone() } else { Vec::new() },
                    },
                ));
            }
        }
    }

    fn check_member(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> Result<(), GroupError> {
        let g = self.groups.get(group).ok_or(GroupError::UnknownMemberId)?;
        if let Some(inst) = instance {
            if let Some(owner) = g.static_members.get(inst) {
                if owner != member {
                    return Err(GroupError::FencedInstanceId);
                }
            }
        }
        if !g.members.contains_key(member) {
            return Err(GroupError::UnknownMemberId);
        }
        if generation != g.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }

    /// A SyncGroup: the leader brings the assignments; everyone gets theirs once it has.
    pub fn sync(
        &mut self,
        now: Instant,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        waiter: W,
    ) -> Option<SyncResult> {
        let fail = |e| Some(SyncResult::failed(e));
        if let Err(e) = self.check_member(group, member, generation, instance) {
            return fail(e);
        }
        let g = self.groups.get_mut(group).expect("checked");
        g.members.get_mut(member).expect("checked").last_heard = now;
        match g.state {
            GroupState::PreparingRebalance => fail(GroupError::RebalanceInProgress),
            GroupState::Stable => {
                let m = &g.members[member];
                Some(SyncResult {
                    error: None,
                    protocol_type: g.protocol_type.clone(),
                    protocol_name: g.protocol_name.clone(),
                    assignment: m.assignment.clone(),
                })
            }
            GroupState::CompletingRebalance => {
                g.members.get_mut(member).expect("checked").sync_waiter = Some(waiter);
                // The leader's assignment is handed out once the group's record holding it is
                // durable (`stored`).
                if g.leader.as_deref() == Some(member) && g.storing.is_none() {
                    let given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    let record = g.record(Some(&given));
                    g.storing = Some(given);
                    let generation_id = g.generation_id;
                    self.stores.push(Store { group: group.to_string(), generation_id, record });
                    if crate::mutants::active(crate::mutants::Mutant::AssignBeforeDurable) {
                        self.stored(now, group, generation_id, true);
                    }
                }
                None
            }
            GroupState::Empty | GroupState::Dead => fail(GroupError::UnknownMemberId),
        }
    }

    /// Sync answers that are ready (the group became stable).
    fn poll_syncs(&mut self) -> Vec<Deferred<W>> {
        let mut out = Vec::new();
        for g in self.groups.values_mut().filter(|g| g.state == GroupState::Stable) {
            for m in g.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    out.push(Deferred::Sync(
                        w,
                        SyncResult {
                            error: None,
                            protocol_type: g.protocol_type.clone(),
                            protocol_name: g.protocol_name.clone(),
                            assignment: m.assignment.clone(),
                        },
                    ));
                }
            }
        }
        out
    }

    /// May this member commit offsets for this generation? Kafka's rules: the generation must
    /// be current (commits during PreparingRebalance are allowed, so eager members can commit
    /// before they rejoin), never while the group waits for the leader's assignment.
    pub fn validate_commit(
        &mut self,
        now: Instant,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> Result<(), GroupError> {
        if crate::mutants::active(crate::mutants::Mutant::CommitStaleGeneration) {
            return Ok(());
        }
        match self.member_state(group, member, generation, instance)? {
            GroupState::CompletingRebalance => Err(GroupError::RebalanceInProgress),
            _ => self.touch(now, group, member),
        }
    }

    /// May this member commit offsets in a transaction (TxnOffsetCommit v3, KIP-447)? As in
    /// Kafka: an empty group, or none, takes a commit at generation -1 from anyone; otherwise
    /// the member must be known (and own its static instance) at the current generation, so
    /// a zombie of an older generation is fenced. Unlike OffsetCommit, a rebalance waiting
    /// for the leader's assignment does not stop it.
    pub fn validate_txn_commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> Result<(), GroupError> {
        if crate::mutants::active(crate::mutants::Mutant::CommitStaleGeneration) {
            return Ok(());
        }
        match self.groups.get(group) {
            None if generation < 0 => Ok(()),
            None => Err(GroupError::IllegalGeneration),
            Some(g) if generation < 0 && g.state == GroupState::Empty => Ok(()),
            Some(_) => self.check_member(group, member, generation, instance),
        }
    }

    pub fn heartbeat(
        &mut self,
        now: Instant,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> Result<(), GroupError> {
        // Kafka checks the generation before the state: a wrong generation is ILLEGAL_GENERATION
        // even during a rebalance.
        let state = self.member_state(group, member, generation, instance)?;
        self.touch(now, group, member)?;
        match state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// The group's state, if `member` belongs to it at `generation`.
    fn member_state(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> Result<GroupState, GroupError> {
        self.check_member(group, member, generation, instance)?;
        Ok(self.groups[group].state)
    }

    /// Records that a checked member was heard from.
    fn touch(&mut self, now: Instant, group: &str, member: &str) -> Result<(), GroupError> {
        let m =
            self.groups.get_mut(group).and_then(|g| g.members.get_mut(member)).ok_or(GroupError::UnknownMemberId)?;
        m.last_heard = now;
        Ok(())
    }

    /// A LeaveGroup for one member: it goes, the rest rebalance.
    pub fn leave(&mut self, now: Instant, group: &str, member: &str, instance: Option<&str>) -> Result<(), GroupError> {
        let mut out = Vec::new();
        let g = self.groups.get(group).ok_or(GroupError::UnknownMemberId)?;
        let id = match instance.and_then(|i| g.static_members.get(i)) {
            Some(owner) if !member.is_empty() && owner != member => return Err(GroupError::FencedInstanceId),
            Some(owner) => owner.clone(),
            None => member.to_string(),
        };
        if !g.members.contains_key(&id) {
            return Err(GroupError::UnknownMemberId);
        }
        self.remove_member(group, &id, &mut out);
        self.after_departure(group, now);
        self.ready.extend(out);
        Ok(())
    }

    /// The earliest time `poll` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        let mut take = |t: Instant| best = Some(best.map_or(t, |b: Instant| b.min(t)));
        for g in self.groups.values() {
            if let Some(d) = g.join_deadline {
                take(d);
            }
            for d in g.pending.values() {
                take(*d);
            }
            // Members waiting in a join are not expired (see `expire_sessions`).
            let preparing = g.state == GroupState::PreparingRebalance;
            for m in g.members.values().filter(|m| !(preparing && m.join_waiter.is_some())) {
                take(m.last_heard.plus_millis(m.session_timeout_ms));
            }
        }
        best
    }

    /// The groups and their states (ListGroups).
    pub fn list(&self) -> Vec<(String, GroupState, Option<String>)> {
        self.groups.iter().map(|(n, g)| (n.clone(), g.state, g.protocol_type.clone())).collect()
    }

    /// A group as DescribeGroups shows it: state, protocol type and name, and per member its
    /// id, instance id, client id, metadata for the chosen protocol and assignment.
    #[allow(clippy::type_complexity)]
    pub fn describe(
        &self,
        group: &str,
    ) -> Option<(GroupState, Option<String>, Option<String>, Vec<(String, Option<String>, String, Bytes, Bytes)>)> {
        let g = self.groups.get(group)?;
        let proto = g.protocol_name.clone().unwrap_or_default();
        let members = g
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m.protocols.iter().find(|(p, _)| *p == proto).map(|(_, b)| b.clone()).unwrap_or_default();
                (id.clone(), m.instance_id.clone(), m.client_id.clone(), meta, m.assignment.clone())
            })
            .collect();
        Some((g.state, g.protocol_type.clone(), g.protocol_name.clone(), members))
    }

    /// Topics a group's members subscribe to, from their consumer-protocol metadata (for
    /// OffsetDelete and offsets retention). Metadata that does not parse names nothing.
    pub fn subscribed_topics(&self, group: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let Some(g) = self.groups.get(group) else { return out };
        if g.protocol_type.as_deref() != Some("consumer") {
            return out;
        }
        for m in g.members.values() {
            for (_, meta) in &m.protocols {
                out.extend(subscription_topics(meta).unwrap_or_default());
            }
        }
        out
    }

    /// Forgets every group `gone` names, because another broker coordinates them now (this
    /// one lost the leadership of their offsets partition): their waiting JoinGroup and
    /// SyncGroup answers are refused with NOT_COORDINATOR (out of `poll`), and their pending
    /// records are dropped (the new coordinator reads back only what was committed).
    pub fn unload(&mut self, gone: impl Fn(&str) -> bool) {
        let names: Vec<String> = self.groups.keys().filter(|g| gone(g)).cloned().collect();
        let refused = &mut self.ready;
        for name in names {
            let Some(g) = self.groups.remove(&name) else { continue };
            for (id, m) in g.members {
                if let Some(w) = m.join_waiter {
                    refused.push(Deferred::Join(w, JoinResult::failed(GroupError::NotCoordinator, &id)));
                }
                if let Some(w) = m.sync_waiter {
                    refused.push(Deferred::Sync(w, SyncResult::failed(GroupError::NotCoordinator)));
                }
            }
        }
        self.stores.retain(|s| !gone(&s.group));
    }

    /// Forgets an empty group (DeleteGroups). A group with members cannot be deleted.
    pub fn delete(&mut self, group: &str) -> Result<(), GroupError> {
        match self.groups.get(group) {
            Some(g) if !g.members.is_empty() => Err(GroupError::RebalanceInProgress),
            _ => {
                self.groups.remove(group);
                Ok(())
            }
        }
    }
}

/// The topic names of a ConsumerProtocolSubscription (every version starts with its version
/// and then the topics as a non-flexible array of strings). Read by hand, bounded by the
/// bytes present: these are a client's bytes, and the codec crate sizes arrays from the
/// count a client claims before it reads them.
pub fn subscription_topics(meta: &[u8]) -> Option<Vec<String>> {
    let take = |b: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, rest) = (b.get(..n)?.to_vec(), b.get(n..)?);
        *b = rest;
        Some(head)
    };
    let mut b = meta;
    let version = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
    if version < 0 {
        return None;
    }
    let n = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
    // Each name takes at least its 2-byte length.
    let n = usize::try_from(n).ok().filter(|n| *n <= b.len() / 2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
        let name = take(&mut b, usize::try_from(len).ok()?)?;
        out.push(String::from_utf8(name).ok()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type C = Coordinator<u32>;

    fn join(group: &str, member: &str, instance: Option<&str>) -> Join {
        Join {
            group: group.into(),
            member_id: member.into(),
            instance_id: instance.map(String::from),
            client_id: "c".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            requires_known_member_id: true,
        }
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Joins a new member through the member-id handshake; returns its id.
    fn handshake(c: &mut C, now: Instant, group: &str, waiter: u32) -> String {
        let r = c.join(now, join(group, "", None), waiter).expect("MEMBER_ID_REQUIRED at once");
        assert_eq!(r.error, Some(GroupError::MemberIdRequired));
        assert!(c.join(now, join(group, &r.member_id, None), waiter).is_none(), "parked until the rebalance ends");
        r.member_id
    }

    fn joins(out: &[Deferred<u32>]) -> Vec<(u32, JoinResult)> {
        out.iter().filter_map(|d| if let Deferred::Join(w, r) = d { Some((*w, r.clone())) } else { None }).collect()
    }

    fn syncs(out: &[Deferred<u32>]) -> Vec<(u32, SyncResult)> {
        out.iter().filter_map(|d| if let Deferred::Sync(w, r) = d { Some((*w, r.clone())) } else { None }).collect()
    }

    /// Two members form a group: one generation after the initial delay, one leader who gets
    /// the member list, assignments handed out when the leader syncs.
    fn two_member_group(c: &mut C) -> (String, String) {
        let a = handshake(c, t(0), "g", 1);
        let b = handshake(c, t(100), "g", 2);
        assert!(c.poll(t(2_000)).is_empty(), "the initial delay holds the first generation");
        let out = joins(&c.poll(t(3_000)));
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|(_, r)| r.error.is_none() && r.generation_id == 1 && r.protocol_name.as_deref() == Some("range")));
        let leader = out[0].1.leader.clone();
        assert!(out.iter().all(|(_, r)| r.leader == leader));
        let (lead, follow) = if leader == a { (a, b) } else { (b, a) };
        let lead_view = out.iter().find(|(_, r)| r.member_id == lead).unwrap();
        assert_eq!(lead_view.1.members.len(), 2, "the leader sees every member");
        assert!(out.iter().find(|(_, r)| r.member_id == follow).unwrap().1.members.is_empty());
        assert_eq!(c.state("g"), Some(GroupState::CompletingRebalance));
        // The follower syncs first and waits; the leader's sync releases both.
        assert!(c.sync(t(3_010), "g", &follow, 1, None, vec![], 11).is_none());
        let assignments = vec![(lead.clone(), Bytes::from_static(b"p0")), (follow.clone(), Bytes::from_static(b"p1"))];
        assert!(c.sync(t(3_020), "g", &lead, 1, None, assignments, 12).is_none());
        assert!(syncs(&c.poll(t(3_020))).is_empty(), "nobody learns the assignment before it is durable");
        let stores = c.take_stores();
        assert_eq!(stores.len(), 1);
        assert_eq!(stores[0].generation_id, 1);
        assert_eq!(stores[0].record.members.len(), 2);
        c.stored(t(3_021), "g", 1, true);
        let s = syncs(&c.poll(t(3_021)));
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().find(|(w, _)| *w == 11).unwrap().1.assignment, Bytes::from_static(b"p1"));
        assert_eq!(s.iter().find(|(w, _)| *w == 12).unwrap().1.assignment, Bytes::from_static(b"p0"));
        assert_eq!(c.state("g"), Some(GroupState::Stable));
        (lead, follow)
    }

    #[test]
    fn join_sync_and_heartbeat() {
        let mut c = C::new(GroupConfig::default(), 1);
        let (lead, follow) = two_member_group(&mut c);
        assert_eq!(c.heartbeat(t(4_000), "g", &lead, 1, None), Ok(()));
        assert_eq!(c.heartbeat(t(4_000), "g", &follow, 0, None), Err(GroupError::IllegalGeneration));
        assert_eq!(c.heartbeat(t(4_000), "g", "nobody", 1, None), Err(GroupError::UnknownMemberId));
        assert_eq!(
            c.join(t(0), Join { session_timeout_ms: 10, ..join("g", "", None) }, 9).unwrap().error,
            Some(GroupError::InvalidSessionTimeout)
        );
    }

    #[test]
    fn unload_refuses_the_waiting_members_and_forgets_only_those_groups() {
        let mut c = C::new(GroupConfig::default(), 1);
        let _ = two_member_group(&mut c);
        let other = handshake(&mut c, t(3_500), "h", 30);
        // A third member of "g" waits in its JoinGroup (a rebalance begins).
        let third = c.join(t(4_000), join("g", "", None), 21).expect("MEMBER_ID_REQUIRED");
        assert!(c.join(t(4_000), join("g", &third.member_id, None), 21).is_none());
        c.unload(|g| g == "g");
        let out = c.poll(t(4_001));
        assert!(
            out.iter().any(|d| matches!(d, Deferred::Join(21, r) if r.error == Some(GroupError::NotCoordinator))),
            "the waiting member is told NOT_COORDINATOR: {out:?}"
        );
        assert_eq!(c.state("g"), None, "the unloaded group is gone");
        assert!(c.take_stores().iter().all(|s| s.group != "g"), "no record of the unloaded group is written");
        assert_eq!(c.members("h"), vec![other], "the other group is untouched");
    }

    #[test]
    fn a_new_member_triggers_a_rebalance_that_ends_when_all_rejoin() {
        let mut c = C::new(GroupConfig::default(), 1);
        let (lead, follow) = two_member_group(&mut c);
        let third = handshake(&mut c, t(5_000), "g", 3);
        assert_eq!(c.state("g"), Some(GroupState::PreparingRebalance));
        assert_eq!(c.heartbeat(t(5_100), "g", &lead, 1, None), Err(GroupError::RebalanceInProgress));
        assert!(c.join(t(5_200), join("g", &lead, None), 1).is_none());
        assert!(joins(&c.poll(t(5_200))).is_empty(), "still waiting for one member");
        assert!(c.join(t(5_300), join("g", &follow, None), 2).is_none());
        let out = joins(&c.poll(t(5_300)));
        assert_eq!(out.len(), 3, "everyone is in: no need to wait for the deadline");
        assert!(out.iter().all(|(_, r)| r.generation_id == 2));
        assert!(c.members("g").contains(&third));
    }

    #[test]
    fn a_silent_member_is_removed_after_its_session_timeout() {
        let mut c = C::new(GroupConfig::default(), 1);
        let (lead, follow) = two_member_group(&mut c);
        for s in 1..=4 {
            assert_eq!(c.heartbeat(t(3_020 + s * 3_000), "g", &lead, 1, None), Ok(()));
        }
        c.poll(t(13_100));
        assert_eq!(c.members("g"), vec![lead.clone()], "the follower stopped heartbeating");
        assert_eq!(c.state("g"), Some(GroupState::PreparingRebalance));
        assert!(c.join(t(13_200), join("g", &lead, None), 1).is_none());
        let out = joins(&c.poll(t(13_200)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.generation_id, 2);
        assert_eq!(c.heartbeat(t(13_300), "g", &follow, 2, None), Err(GroupError::UnknownMemberId));
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_deadline() {
        let mut c = C::new(GroupConfig::default(), 1);
        let (lead, follow) = two_member_group(&mut c);
        assert!(c.join(t(4_000), join("g", &lead, None), 1).is_none(), "the leader asks for a rebalance");
        // The follower keeps heartbeating (told to rejoin) but never does.
        for s in 0..10 {
            assert_eq!(c.heartbeat(t(4_000 + s * 3_000), "g", &follow, 1, None), Err(GroupError::RebalanceInProgress));
        }
        let out = joins(&c.poll(t(34_000)));
        let lead_result = out.iter().find(|(w, _)| *w == 1).unwrap();
        assert_eq!(lead_result.1.generation_id, 2);
        assert_eq!(c.members("g"), vec![lead]);
    }

    #[test]
    fn leaving_rebalances_and_the_last_leaves_an_empty_group() {
        let mut c = C::new(GroupConfig::default(), 1);
        let (lead, follow) = two_member_group(&mut c);
        assert_eq!(c.leave(t(4_000), "g", &follow, None), Ok(()));
        assert_eq!(c.state("g"), Some(GroupState::PreparingRebalance));
        assert_eq!(c.leave(t(4_100), "g", &lead, None), Ok(()));
        assert_eq!(c.state("g"), Some(GroupState::Empty));
        assert_eq!(c.leave(t(4_200), "g", &lead, None), Err(GroupError::UnknownMemberId));
        assert_eq!(c.delete("g"), Ok(()));
    }

    #[test]
    fn a_restarted_static_member_takes_its_place_without_a_rebalance() {
        let mut c = C::new(GroupConfig::default(), 1);
        assert!(c.join(t(0), join("s", "", Some("i1")), 1).is_none());
        assert!(c.join(t(0), join("s", "", Some("i2")), 2).is_none());
        let out = joins(&c.poll(t(3_000)));
        let gen = out[0].1.generation_id;
        let leader = out[0].1.leader.clone();
        let ids: Vec<String> = out.iter().map(|(_, r)| r.member_id.clone()).collect();
        let follower = ids.iter().find(|id| **id != leader).unwrap().clone();
        // Waiter 1 joined as instance i1, waiter 2 as i2.
        let inst_of = |id: &str| if out.iter().any(|(w, r)| *w == 1 && r.member_id == id) { "i1" } else { "i2" };
        let assignments: Vec<(String, Bytes)> = ids.iter().map(|id| (id.clone(), Bytes::from(id.clone()))).collect();
        c.sync(t(3_010), "s", &leader, gen, Some(inst_of(&leader)), assignments, 5);
        assert_eq!(c.take_stores().len(), 1);
        c.stored(t(3_010), "s", gen, true);
        c.poll(t(3_010));
        assert_eq!(c.state("s"), Some(GroupState::Stable));
        // The follower restarts: no member id, same instance id.
        let inst = inst_of(&follower);
        let r = c.join(t(4_000), join("s", "", Some(inst)), 7).expect("answered at once");
        assert_eq!(r.error, None);
        assert_eq!(r.generation_id, gen, "no new generation");
        assert_ne!(r.member_id, follower);
        assert_eq!(c.state("s"), Some(GroupState::Stable));
        let s = c.sync(t(4_010), "s", &r.member_id, gen, Some(inst), vec![], 8).expect("stable: answered at once");
        assert_eq!(s.assignment, Bytes::from(follower.clone()), "keeps its assignment");
        assert_eq!(c.heartbeat(t(4_020), "s", &follower, gen, Some(inst)), Err(GroupError::FencedInstanceId));
    }

    #[test]
    fn a_restored_group_carries_on_at_its_generation() {
        let mut c = C::new(GroupConfig::default(), 1);
        let (lead, follow) = two_member_group(&mut c);
        // What the node would have made durable, handed to a fresh coordinator (a restart).
        let mut c2 = C::new(GroupConfig::default(), 2);
        let mut rec = c.groups["g"].record(None);
        rec.state_since_ms = 5;
        c2.restore(t(50_000), "g", rec);
        assert_eq!(c2.state("g"), Some(GroupState::Stable));
        assert_eq!(c2.heartbeat(t(50_001), "g", &lead, 1, None), Ok(()), "no rejoin after a restart");
        let s = c2.sync(t(50_002), "g", &follow, 1, None, vec![], 3).expect("stable");
        assert_eq!(s.assignment, Bytes::from_static(b"p1"));
        // Sessions restart at the restore: a member never heard from again is removed.
        c2.poll(t(50_000 + 10_001));
        assert_eq!(c2.state("g"), Some(GroupState::PreparingRebalance));
        // New ids never repeat old ones.
        let fresh = handshake(&mut c2, t(60_000), "g", 4);
        assert!(fresh != lead && fresh != follow);
    }

    #[test]
    fn an_assignment_that_cannot_be_stored_is_never_handed_out() {
        let mut c = C::new(GroupConfig::default(), 1);
        let a = handshake(&mut c, t(0), "g", 1);
        let out = joins(&c.poll(t(3_000)));
        assert_eq!(out.len(), 1);
        assert!(c.sync(t(3_001), "g", &a, 1, None, vec![(a.clone(), Bytes::from_static(b"x"))], 2).is_none());
        assert_eq!(c.take_stores().len(), 1);
        c.stored(t(3_002), "g", 1, false);
        let s = syncs(&c.poll(t(3_002)));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].1.error, Some(GroupError::RebalanceInProgress), "the member rejoins");
        assert_eq!(c.state("g"), Some(GroupState::PreparingRebalance));
        // A stale confirmation changes nothing.
        c.stored(t(3_003), "g", 1, true);
        assert_eq!(c.state("g"), Some(GroupState::PreparingRebalance));
        // When the last member leaves, the empty group's record is written.
        assert_eq!(c.leave(t(3_004), "g", &a, None), Ok(()));
        let stores = c.take_stores();
        assert_eq!(stores.len(), 1);
        assert!(stores[0].record.members.is_empty());
        assert_eq!(stores[0].generation_id, 2);
    }

    #[test]
    fn subscriptions_parse_safely() {
        // version 1, topics ["ab", "c"], then fields this reader does not need.
        let good = [0, 1, 0, 0, 0, 2, 0, 2, b'a', b'b', 0, 1, b'c', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(subscription_topics(&good), Some(vec!["ab".to_string(), "c".to_string()]));
        assert_eq!(subscription_topics(b"subscription"), None, "a count far past the bytes present");
        assert_eq!(subscription_topics(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
        assert_eq!(subscription_topics(&[0, 0, 0, 0, 0, 1, 0, 5, b'a']), None, "a name cut short");
        assert_eq!(subscription_topics(&[]), None);
    }

    #[test]
    fn group_size_is_bounded() {
        let mut c = C::new(GroupConfig { max_members: 1, ..GroupConfig::default() }, 1);
        let a = handshake(&mut c, t(0), "g", 1);
        let r = c.join(t(0), join("g", "", None), 2).unwrap();
        assert_eq!(r.error, Some(GroupError::GroupMaxSizeReached), "refused before a member id is handed out");
        assert_eq!(r.member_id, "");
        let out = joins(&c.poll(t(3_000)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.member_id, a);
    }
}

#[cfg(test)]
mod commit_tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn commits_need_the_current_generation_and_no_pending_assignment() {
        let mut c: Coordinator<u32> = Coordinator::new(GroupConfig::default(), 1);
        let a = join_one(&mut c);
        // CompletingRebalance: the leader has not synced yet.
        assert_eq!(
            c.validate_commit(Instant::from_millis(3_001), "g", &a, 1, None),
            Err(GroupError::RebalanceInProgress)
        );
        c.sync(Instant::from_millis(3_002), "g", &a, 1, None, vec![(a.clone(), Bytes::new())], 9);
        c.stored(Instant::from_millis(3_002), "g", 1, true);
        c.poll(Instant::from_millis(3_002));
        assert_eq!(c.validate_commit(Instant::from_millis(3_003), "g", &a, 1, None), Ok(()));
        assert_eq!(
            c.validate_commit(Instant::from_millis(3_003), "g", &a, 0, None),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(c.validate_commit(Instant::from_millis(3_003), "g", "x", 1, None), Err(GroupError::UnknownMemberId));
        // A rebalance starts (the member asks for one): its current generation may still commit.
        assert!(c.join(Instant::from_millis(3_004), join_req(&a), 10).is_none());
        assert_eq!(c.state("g"), Some(GroupState::PreparingRebalance));
        assert_eq!(c.validate_commit(Instant::from_millis(3_005), "g", &a, 1, None), Ok(()));
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub fn join_req(member: &str) -> Join {
        Join {
            group: "g".into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            requires_known_member_id: false,
        }
    }

    /// One member joins a new group (no handshake) and gets generation 1.
    pub fn join_one(c: &mut Coordinator<u32>) -> String {
        assert!(c.join(Instant::from_millis(0), join_req(""), 1).is_none());
        let out = c.poll(Instant::from_millis(3_000));
        match &out[..] {
            [Deferred::Join(1, r)] => {
                assert_eq!(r.generation_id, 1);
                r.member_id.clone()
            }
            other => panic!("expected one join answer, got {other:?}"),
        }
    }
}
