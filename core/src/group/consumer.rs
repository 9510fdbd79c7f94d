//! The consumer group protocol of KIP-848 (ConsumerGroupHeartbeat), sans-IO: the coordinator
//! assigns partitions itself and hands them out member by member, so a rebalance never stops
//! the whole group.
//!
//! Epochs: the group epoch moves whenever membership or subscriptions change; the target
//! assignment is recomputed for the new epoch (sticky: partitions stay where they are when
//! they may); each member then converges on its target through its own epoch. A member first
//! gives up the partitions it must lose (keeping its epoch until its heartbeat shows them
//! released), then takes the new ones as they become free, moving to the target's epoch. A
//! partition is never held by two members at once. Members send their epoch with every
//! heartbeat and commit; a stale one is fenced.
//!
//! Topics are named here; the node maps them to topic ids on the wire.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::Instant;

/// Partitions by topic name.
pub type Assignment = BTreeMap<String, BTreeSet<i32>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerError {
    UnknownMemberId,
    FencedMemberEpoch,
    StaleMemberEpoch,
    UnreleasedInstanceId,
    UnsupportedAssignor,
    InvalidRequest,
    GroupMaxSizeReached,
}

/// Kafka's answer to a transactional commit from a member epoch older than the member's.
const ILLEGAL_GENERATION: i16 = 22;

impl ConsumerError {
    pub fn code(self) -> i16 {
        match self {
            ConsumerError::UnknownMemberId => 25,
            ConsumerError::FencedMemberEpoch => 110,
            ConsumerError::StaleMemberEpoch => 113,
            ConsumerError::UnreleasedInstanceId => 111,
            ConsumerError::UnsupportedAssignor => 112,
            ConsumerError::InvalidRequest => 42,
            ConsumerError::GroupMaxSizeReached => 81,
        }
    }
}

/// Where a member is on its way to its target assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Stable,
    /// It must give up `revoking` before it moves on.
    UnrevokedPartitions,
    /// Some of its target is still held by others.
    UnreleasedPartitions,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub epoch: i32,
    pub previous_epoch: i32,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: u64,
    pub subscribed: BTreeSet<String>,
    pub assignor: Option<String>,
    pub state: MemberState,
    pub assigned: Assignment,
    pub revoking: Assignment,
    #[serde(skip)]
    last_heard: Option<Instant>,
    #[serde(skip)]
    revoke_deadline: Option<Instant>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, Member>,
    pub target: BTreeMap<String, Assignment>,
    /// Partition counts of the subscribed topics the target was computed from.
    pub topics_seen: BTreeMap<String, i32>,
}

impl Group {
    /// Kafka's names for a consumer group's states.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != -2 && (m.epoch != self.assignment_epoch || m.state != MemberState::Stable))
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub max_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        // Kafka's group.consumer.* defaults.
        Config {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            max_members: crate::limits::GROUP_MEMBERS_MAX,
        }
    }
}

/// One ConsumerGroupHeartbeat, in the coordinator's terms.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    pub group: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    /// None: unchanged.
    pub subscribed: Option<Vec<String>>,
    pub assignor: Option<String>,
    /// The partitions the member owns; None: unchanged since its last heartbeat.
    pub owned: Option<Assignment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatResult {
    pub error: Option<(ConsumerError, String)>,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The member's assignment, when it changed or the member may not know it.
    pub assignment: Option<Assignment>,
}

pub const ASSIGNORS: &[&str] = &["uniform", "range"];

/// Every consumer group this node coordinates.
#[derive(Default)]
pub struct Coordinator {
    pub config: Config,
    groups: BTreeMap<String, Group>,
    /// Groups changed since the last `take_changed`: their records must be written.
    changed: BTreeSet<String>,
}

impl Coordinator {
    pub fn new(config: Config) -> Coordinator {
        Coordinator { config, groups: BTreeMap::new(), changed: BTreeSet::new() }
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    pub fn has_members(&self, name: &str) -> bool {
        self.groups.get(name).is_some_and(|g| !g.members.is_empty())
    }

    pub fn list(&self) -> impl Iterator<Item = (&String, &Group)> {
        self.groups.iter()
    }

    /// Forgets a group (DeleteGroups, or a classic group taking the name). Only empty ones.
    pub fn delete(&mut self, name: &str) -> bool {
        if self.has_members(name) {
            return false;
        }
        if self.groups.remove(name).is_some() {
            self.changed.insert(name.to_string());
        }
        true
    }

    /// Forgets every group `gone` names (another broker coordinates them now); their
    /// records not yet written are dropped.
    pub fn unload(&mut self, gone: impl Fn(&str) -> bool) {
        self.groups.retain(|name, _| !gone(name));
        self.changed.retain(|name| !gone(name));
    }

    /// Groups whose state changed since the last call (a removed group reads as None).
    pub fn take_changed(&mut self) -> Vec<(String, Option<Group>)> {
        std::mem::take(&mut self.changed).into_iter().map(|n| (n.clone(), self.groups.get(&n).cloned())).collect()
    }

    /// Rebuilds a group from its last durable record (at start-up); sessions start now.
    pub fn restore(&mut self, now: Instant, name: &str, mut g: Group) {
        for m in g.members.values_mut() {
            m.last_heard = Some(now);
            if m.state == MemberState::UnrevokedPartitions {
                m.revoke_deadline = Some(now.plus_millis(m.rebalance_timeout_ms));
            }
        }
        self.groups.insert(name.to_string(), g);
    }

    /// May `member` commit (or fetch) offsets at `epoch`? (OffsetCommit v9+ rules.)
    pub fn validate_commit(&self, group: &str, member: &str, epoch: i32) -> Result<(), ConsumerError> {
        if crate::mutants::active(crate::mutants::Mutant::CommitStaleGeneration) {
            return Ok(());
        }
        let m = self.groups.get(group).and_then(|g| g.members.get(member)).ok_or(ConsumerError::UnknownMemberId)?;
        if epoch != m.epoch {
            return Err(ConsumerError::StaleMemberEpoch);
        }
        Ok(())
    }

    /// May `member` commit offsets in a transaction at `epoch` (TxnOffsetCommit v3, KIP-447)?
    /// As in Kafka: a group with no members takes a commit at epoch -1 from anyone; otherwise
    /// the member must be known, and an epoch older than its own is ILLEGAL_GENERATION (a
    /// zombie), a newer one FENCED_MEMBER_EPOCH.
    pub fn validate_txn_commit(&self, group: &str, member: &str, epoch: i32) -> Result<(), i16> {
        if crate::mutants::active(crate::mutants::Mutant::CommitStaleGeneration) {
            return Ok(());
        }
        let g = self.groups.get(group);
        if epoch < 0 && g.is_none_or(|g| g.members.is_empty()) {
            return Ok(());
        }
        let m = g.and_then(|g| g.members.get(member)).ok_or(ConsumerError::UnknownMemberId.code())?;
        match epoch.cmp(&m.epoch) {
            std::cmp::Ordering::Greater => Err(ConsumerError::FencedMemberEpoch.code()),
            std::cmp::Ordering::Less => Err(ILLEGAL_GENERATION),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// A ConsumerGroupHeartbeat. `topics` gives every topic's partition count.
    pub fn heartbeat(&mut self, now: Instant, hb: Heartbeat, topics: &BTreeMap<String, i32>) -> HeartbeatResult {
        let interval = i32::try_from(self.config.heartbeat_interval_ms).unwrap_or(i32::MAX);
        let fail = |e: ConsumerError, why: &str| HeartbeatResult {
            error: Some((e, why.to_string())),
            member_id: hb.member_id.clone(),
            member_epoch: hb.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        };
        if hb.member_id.is_empty() {
            return fail(ConsumerError::InvalidRequest, "MemberId can't be empty.");
        }
        if let Some(a) = hb.assignor.as_deref().filter(|a| !ASSIGNORS.contains(a)) {
            return fail(ConsumerError::UnsupportedAssignor, &format!("assignor {a} is not supported"));
        }
        let name = hb.group.clone();
        let mut bump = false;
        match hb.member_epoch {
            // A static member leaving for a moment (a restart): it keeps its partitions, and
            // nobody moves, until it comes back under its instance id or its session ends.
            -2 if hb.instance_id.is_some()
                && self.groups.get(&name).is_some_and(|g| g.members.contains_key(&hb.member_id)) =>
            {
                let g = self.groups.get_mut(&name).expect("checked");
                let m = g.members.get_mut(&hb.member_id).expect("checked");
                if m.epoch >= 0 {
                    m.previous_epoch = m.epoch;
                }
                m.epoch = -2;
                m.last_heard = Some(now);
                self.changed.insert(name.clone());
                return HeartbeatResult {
                    error: None,
                    member_id: hb.member_id.clone(),
                    member_epoch: -2,
                    heartbeat_interval_ms: 0,
                    assignment: None,
                };
            }
            // Leaving.
            -1 | -2 => {
                let left = self.groups.get_mut(&name).is_some_and(|g| g.members.remove(&hb.member_id).is_some());
                if left {
                    self.bump(&name);
                    self.recompute(&name, topics);
                }
                return HeartbeatResult {
                    error: None,
                    member_id: hb.member_id.clone(),
                    member_epoch: hb.member_epoch,
                    heartbeat_interval_ms: 0,
                    assignment: None,
                };
            }
            0 => {
                if hb.rebalance_timeout_ms < 0
                    || hb.subscribed.is_none()
                    || hb.owned.as_ref().is_none_or(|o| !o.is_empty())
                {
                    return fail(
                        ConsumerError::InvalidRequest,
                        "a joining member sends its rebalance timeout, subscription and an empty owned list",
                    );
                }
                let max = self.config.max_members;
                let g = self.groups.entry(name.clone()).or_default();
                let static_peer = hb.instance_id.as_ref().and_then(|inst| {
                    g.members
                        .iter()
                        .find(|(id, m)| m.instance_id.as_ref() == Some(inst) && **id != hb.member_id)
                        .map(|(id, m)| (id.clone(), m.epoch))
                });
                match static_peer {
                    // The static member is back under a new id: it takes its old place, with
                    // its partitions and epoch.
                    Some((old, -2)) => {
                        let mut m = g.members.remove(&old).expect("present");
                        m.epoch = m.previous_epoch;
                        m.last_heard = Some(now);
                        m.client_id = hb.client_id.clone();
                        g.members.insert(hb.member_id.clone(), m);
                        if let Some(t) = g.target.remove(&old) {
                            g.target.insert(hb.member_id.clone(), t);
                        }
                        self.changed.insert(name.clone());
                    }
                    Some(_) => {
                        return fail(ConsumerError::UnreleasedInstanceId, "the instance id is in use by another member")
                    }
                    None if !g.members.contains_key(&hb.member_id) => {
                        if g.members.len() >= max {
                            return fail(ConsumerError::GroupMaxSizeReached, "the group is full");
                        }
                        g.members.insert(
                            hb.member_id.clone(),
                            Member {
                                epoch: 0,
                                previous_epoch: -1,
                                instance_id: hb.instance_id.clone(),
                                client_id: hb.client_id.clone(),
                                rack_id: None,
                                rebalance_timeout_ms: 0,
                                subscribed: BTreeSet::new(),
                                assignor: None,
                                state: MemberState::Stable,
                                assigned: Assignment::new(),
                                revoking: Assignment::new(),
                                last_heard: Some(now),
                                revoke_deadline: None,
                            },
                        );
                        bump = true;
                    }
                    None => {
                        // A member rejoining with its id (it lost its epoch): it starts over.
                        let m = g.members.get_mut(&hb.member_id).expect("present");
                        m.epoch = 0;
                        m.assigned.clear();
                        m.revoking.clear();
                        m.state = MemberState::Stable;
                        self.changed.insert(name.clone());
                    }
                }
            }
            received => {
                let Some(m) = self.groups.get(&name).and_then(|g| g.members.get(&hb.member_id)) else {
                    return fail(ConsumerError::UnknownMemberId, "the member is not in the group");
                };
                let owned_within = hb.owned.as_ref().is_some_and(|o| subset(o, &m.assigned));
                if received > m.epoch || (received < m.epoch && !(received == m.previous_epoch && owned_within)) {
                    return fail(ConsumerError::FencedMemberEpoch, "the member epoch is fenced");
                }
            }
        }
        // Update what the member says of itself.
        let g = self.groups.get_mut(&name).expect("present");
        let m = g.members.get_mut(&hb.member_id).expect("present");
        m.last_heard = Some(now);
        m.client_id = hb.client_id.clone();
        if hb.rebalance_timeout_ms >= 0 {
            m.rebalance_timeout_ms = u64::try_from(hb.rebalance_timeout_ms).unwrap_or(0);
        }
        if hb.rack_id.is_some() {
            m.rack_id = hb.rack_id.clone();
        }
        if let Some(subs) = &hb.subscribed {
            let subs: BTreeSet<String> = subs.iter().cloned().collect();
            if subs != m.subscribed {
                m.subscribed = subs;
                bump = true;
            }
        }
        if hb.assignor.is_some() && hb.assignor != m.assignor {
            m.assignor = hb.assignor.clone();
            bump = true;
        }
        // Partitions added to (or topics created for) the subscription move the epoch too.
        let subscribed: BTreeSet<&String> = g.members.values().flat_map(|m| m.subscribed.iter()).collect();
        let seen: BTreeMap<String, i32> =
            subscribed.into_iter().filter_map(|t| topics.get(t).map(|n| (t.clone(), *n))).collect();
        if seen != g.topics_seen {
            bump = true;
        }
        if bump {
            self.bump(&name);
        }
        self.recompute(&name, topics);
        // Converge the member on its target.
        let before = self.groups[&name].members[&hb.member_id].clone();
        self.reconcile(&name, &hb.member_id, hb.owned.as_ref(), now);
        let g = &self.groups[&name];
        let m = &g.members[&hb.member_id];
        if *m != before {
            self.changed.insert(name.clone());
        }
        let tell = hb.member_epoch != m.epoch
            || m.assigned != before.assigned
            || hb.owned.as_ref().is_some_and(|o| *o != m.assigned);
        HeartbeatResult {
            error: None,
            member_id: hb.member_id.clone(),
            member_epoch: m.epoch,
            heartbeat_interval_ms: interval,
            assignment: tell.then(|| m.assigned.clone()),
        }
    }

    fn bump(&mut self, name: &str) {
        if let Some(g) = self.groups.get_mut(name) {
            g.epoch += 1;
            self.changed.insert(name.to_string());
        }
    }

    /// Computes the target assignment for the group's epoch if it is behind.
    fn recompute(&mut self, name: &str, topics: &BTreeMap<String, i32>) {
        let Some(g) = self.groups.get_mut(name) else { return };
        if g.assignment_epoch >= g.epoch {
            return;
        }
        let subscribed: BTreeSet<&String> = g.members.values().flat_map(|m| m.subscribed.iter()).collect();
        g.topics_seen = subscribed.into_iter().filter_map(|t| topics.get(t).map(|n| (t.clone(), *n))).collect();
        let assignor = g.members.values().find_map(|m| m.assignor.clone()).unwrap_or_else(|| "uniform".to_string());
        g.target = if assignor == "range" { range(g) } else { uniform(g) };
        g.assignment_epoch = g.epoch;
        self.changed.insert(name.to_string());
    }

    /// Moves a member towards its target (Kafka's CurrentAssignmentBuilder, in short).
    fn reconcile(&mut self, name: &str, id: &str, owned: Option<&Assignment>, now: Instant) {
        let g = self.groups.get_mut(name).expect("present");
        // Who holds what (assigned or still being revoked), apart from this member.
        let mut held: BTreeSet<(String, i32)> = BTreeSet::new();
        for (mid, m) in &g.members {
            if mid != id {
                for (t, ps) in m.assigned.iter().chain(m.revoking.iter()) {
                    held.extend(ps.iter().map(|p| (t.clone(), *p)));
                }
            }
        }
        let target = g.target.get(id).cloned().unwrap_or_default();
        let target_epoch = g.assignment_epoch;
        let m = g.members.get_mut(id).expect("present");
        if m.state == MemberState::UnrevokedPartitions {
            // Still waiting for the member to let go?
            let released = owned.is_some_and(|o| !intersects(o, &m.revoking));
            if !released {
                return;
            }
            m.revoking.clear();
            m.revoke_deadline = None;
        } else if m.state == MemberState::Stable && m.epoch == target_epoch {
            return;
        }
        // The next step: keep what stays, revoke what goes, take what is free.
        let mut keep = Assignment::new();
        let mut revoke = Assignment::new();
        let mut take = Assignment::new();
        let mut waiting = false;
        for (t, ps) in &m.assigned {
            for p in ps {
                let stays = target.get(t).is_some_and(|s| s.contains(p));
                let into = if stays { &mut keep } else { &mut revoke };
                into.entry(t.clone()).or_default().insert(*p);
            }
        }
        for (t, ps) in &target {
            for p in ps {
                if m.assigned.get(t).is_some_and(|s| s.contains(p)) {
                    continue;
                }
                if held.contains(&(t.clone(), *p)) && !crate::mutants::active(crate::mutants::Mutant::AssignUnreleased)
                {
                    waiting = true;
                } else {
                    take.entry(t.clone()).or_default().insert(*p);
                }
            }
        }
        if !revoke.is_empty() {
            m.assigned = keep;
            m.revoking = revoke;
            m.state = MemberState::UnrevokedPartitions;
            m.revoke_deadline = Some(now.plus_millis(m.rebalance_timeout_ms));
            return;
        }
        for (t, ps) in take {
            keep.entry(t).or_default().extend(ps);
        }
        m.assigned = keep;
        if m.epoch != target_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = target_epoch;
        }
        m.state = if waiting { MemberState::UnreleasedPartitions } else { MemberState::Stable };
    }

    /// Members silent past the session timeout, or still holding revoked partitions past
    /// their rebalance timeout, are removed; the rest rebalance.
    pub fn poll(&mut self, now: Instant, topics: &BTreeMap<String, i32>) {
        let session = self.config.session_timeout_ms;
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let g = self.groups.get_mut(&name).expect("present");
            let gone: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    m.last_heard.is_some_and(|t| t.plus_millis(session) <= now)
                        || m.revoke_deadline.is_some_and(|d| d <= now)
                })
                .map(|(id, _)| id.clone())
                .collect();
            if gone.is_empty() {
                continue;
            }
            for id in &gone {
                tracing::info!(group = %name, member = %id, "consumer group member expired");
                g.members.remove(id);
            }
            self.bump(&name);
            self.recompute(&name, topics);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let session = self.config.session_timeout_ms;
        self.groups
            .values()
            .flat_map(|g| g.members.values())
            .flat_map(|m| [m.last_heard.map(|t| t.plus_millis(session)), m.revoke_deadline])
            .flatten()
            .min()
    }
}

fn subset(a: &Assignment, b: &Assignment) -> bool {
    a.iter().all(|(t, ps)| ps.is_empty() || b.get(t).is_some_and(|s| ps.is_subset(s)))
}

fn intersects(a: &Assignment, b: &Assignment) -> bool {
    a.iter().any(|(t, ps)| b.get(t).is_some_and(|s| !ps.is_disjoint(s)))
}

/// Every subscribed partition, spread evenly over the members subscribed to its topic,
/// keeping partitions where they are when that stays within the member's share.
fn uniform(g: &Group) -> BTreeMap<String, Assignment> {
    let ids: Vec<&String> = g.members.keys().collect();
    let mut out: BTreeMap<String, Assignment> = ids.iter().map(|id| ((*id).clone(), Assignment::new())).collect();
    if ids.is_empty() {
        return out;
    }
    let all: Vec<(String, i32)> =
        g.topics_seen.iter().flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p))).collect();
    let total = all.len();
    let quota = |i: usize| total / ids.len() + usize::from(i < total % ids.len());
    let quotas: BTreeMap<&String, usize> = ids.iter().enumerate().map(|(i, id)| (*id, quota(i))).collect();
    let mut count: BTreeMap<&String, usize> = ids.iter().map(|id| (*id, 0)).collect();
    let mut placed: BTreeSet<(String, i32)> = BTreeSet::new();
    // Stickiness: the previous target, within the share, for still-subscribed topics.
    for id in &ids {
        let m = &g.members[*id];
        for (t, ps) in g.target.get(*id).into_iter().flatten() {
            if !m.subscribed.contains(t) {
                continue;
            }
            for p in ps {
                let key = (t.clone(), *p);
                if count[id] < quotas[id] && all.contains(&key) && !placed.contains(&key) {
                    placed.insert(key);
                    *count.get_mut(id).expect("present") += 1;
                    out.get_mut(*id).expect("present").entry(t.clone()).or_default().insert(*p);
                }
            }
        }
    }
    for (t, p) in all {
        if placed.contains(&(t.clone(), p)) {
            continue;
        }
        // The subscribed member furthest below its share (then with the fewest).
        let best = ids
            .iter()
            .filter(|id| g.members[**id].subscribed.contains(&t))
            .min_by_key(|id| (count[*id] >= quotas[*id], count[*id]));
        if let Some(id) = best {
            *count.get_mut(*id).expect("present") += 1;
            out.get_mut(*id).expect("present").entry(t.clone()).or_default().insert(p);
        }
    }
    out
}

/// Kafka's range: per topic, its subscribers in id order take contiguous blocks.
fn range(g: &Group) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = g.members.keys().map(|id| (id.clone(), Assignment::new())).collect();
    for (t, n) in &g.topics_seen {
        let subs: Vec<&String> = g.members.iter().filter(|(_, m)| m.subscribed.contains(t)).map(|(id, _)| id).collect();
        if subs.is_empty() {
            continue;
        }
        let k = subs.len() as i32;
        let mut next = 0;
        for (i, id) in subs.into_iter().enumerate() {
            let take = n / k + i32::from((i as i32) < n % k);
            out.get_mut(id).expect("present").entry(t.clone()).or_default().extend(next..next + take);
            next += take;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn topics() -> BTreeMap<String, i32> {
        [("a".to_string(), 4)].into_iter().collect()
    }

    fn join(id: &str) -> Heartbeat {
        Heartbeat {
            group: "g".into(),
            member_id: id.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 10_000,
            subscribed: Some(vec!["a".into()]),
            owned: Some(Assignment::new()),
            ..Heartbeat::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: &Assignment) -> Heartbeat {
        Heartbeat {
            group: "g".into(),
            member_id: id.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            ..Heartbeat::default()
        }
    }

    fn parts(a: &Assignment) -> Vec<i32> {
        a.get("a").map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// No partition is held by two members at any moment of a hand-over.
    fn assert_exclusive(c: &Coordinator) {
        let mut seen = BTreeSet::new();
        for m in c.group("g").unwrap().members.values() {
            for (t, ps) in m.assigned.iter().chain(m.revoking.iter()) {
                for p in ps {
                    assert!(seen.insert((t.clone(), *p)), "{t}-{p} held twice");
                }
            }
        }
    }

    #[test]
    fn a_second_member_gets_partitions_only_once_the_first_releases_them() {
        let mut c = Coordinator::default();
        let r = c.heartbeat(t(0), join("m1"), &topics());
        assert_eq!((r.member_epoch, r.error.clone()), (1, None));
        let a1 = r.assignment.unwrap();
        assert_eq!(parts(&a1), vec![0, 1, 2, 3]);
        // m2 joins: epoch 2; m1 must give two partitions up before m2 gets them.
        let r2 = c.heartbeat(t(10), join("m2"), &topics());
        assert_eq!(r2.member_epoch, 2);
        assert!(parts(r2.assignment.as_ref().unwrap()).is_empty(), "nothing free yet");
        assert_exclusive(&c);
        let r1 = c.heartbeat(t(20), beat("m1", 1, &a1), &topics());
        assert_eq!(r1.member_epoch, 1, "keeps its epoch while revoking");
        let kept = r1.assignment.unwrap();
        assert_eq!(parts(&kept).len(), 2);
        assert_exclusive(&c);
        // m2 asks again: still held.
        let r2 = c.heartbeat(t(30), beat("m2", 2, &Assignment::new()), &topics());
        assert!(r2.assignment.is_none_or(|a| parts(&a).is_empty()));
        // m1 reports it let go: it moves to epoch 2; then m2 gets the rest.
        let r1 = c.heartbeat(t(40), beat("m1", 1, &kept), &topics());
        assert_eq!(r1.member_epoch, 2);
        let r2 = c.heartbeat(t(50), beat("m2", 2, &Assignment::new()), &topics());
        let got = parts(r2.assignment.as_ref().unwrap());
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|p| !parts(&kept).contains(p)));
        assert_exclusive(&c);
        assert_eq!(c.group("g").unwrap().state_name(), "Stable");
    }

    #[test]
    fn epochs_fence_and_sessions_expire() {
        let mut c = Coordinator::default();
        let a = c.heartbeat(t(0), join("m1"), &topics()).assignment.unwrap();
        assert_eq!(c.heartbeat(t(1), beat("m1", 5, &a), &topics()).error.unwrap().0, ConsumerError::FencedMemberEpoch);
        assert_eq!(c.heartbeat(t(1), beat("zz", 1, &a), &topics()).error.unwrap().0, ConsumerError::UnknownMemberId);
        assert_eq!(c.validate_commit("g", "m1", 1), Ok(()));
        assert_eq!(c.validate_commit("g", "m1", 0), Err(ConsumerError::StaleMemberEpoch));
        let mut bad = join("m2");
        bad.member_id = String::new();
        assert_eq!(c.heartbeat(t(2), bad, &topics()).error.unwrap().0, ConsumerError::InvalidRequest);
        // Silent for the session timeout: gone, and the group epoch moves.
        c.poll(t(45_001), &topics());
        assert!(c.group("g").unwrap().members.is_empty());
        assert_eq!(c.group("g").unwrap().epoch, 2);
        assert_eq!(
            c.heartbeat(t(45_002), beat("m1", 1, &a), &topics()).error.unwrap().0,
            ConsumerError::UnknownMemberId
        );
    }

    #[test]
    fn a_member_that_does_not_revoke_in_time_is_removed() {
        let mut c = Coordinator::default();
        let a1 = c.heartbeat(t(0), join("m1"), &topics()).assignment.unwrap();
        c.heartbeat(t(10), join("m2"), &topics());
        c.heartbeat(t(20), beat("m1", 1, &a1), &topics());
        // m1 keeps heartbeating but never releases its partitions.
        for s in 1..=10 {
            c.heartbeat(t(20 + s * 1_000), beat("m1", 1, &a1), &topics());
            c.heartbeat(t(20 + s * 1_000), beat("m2", 2, &Assignment::new()), &topics());
        }
        c.poll(t(10_021), &topics());
        assert!(!c.group("g").unwrap().members.contains_key("m1"), "fenced after its rebalance timeout");
        let r2 = c.heartbeat(t(10_030), beat("m2", 2, &Assignment::new()), &topics());
        assert_eq!(parts(r2.assignment.as_ref().unwrap()), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_static_member_restarting_keeps_its_partitions_and_moves_nobody() {
        let mut c = Coordinator::default();
        let mut ja = join("a1");
        ja.instance_id = Some("ia".into());
        let aa = c.heartbeat(t(0), ja, &topics()).assignment.unwrap();
        let mut jb = join("b1");
        jb.instance_id = Some("ib".into());
        c.heartbeat(t(1), jb, &topics());
        let kept = c.heartbeat(t(2), beat("a1", 1, &aa), &topics()).assignment.unwrap();
        let a = c.heartbeat(t(3), beat("a1", 1, &kept), &topics());
        let b = c.heartbeat(t(4), beat("b1", 2, &Assignment::new()), &topics());
        let (a_parts, b_parts) = (c.group("g").unwrap().members["a1"].assigned.clone(), b.assignment.unwrap());
        assert_eq!((a.member_epoch, parts(&a_parts).len(), parts(&b_parts).len()), (2, 2, 2));
        // a leaves for a restart: nothing moves.
        let mut leave = beat("a1", -2, &a_parts);
        leave.instance_id = Some("ia".into());
        assert_eq!(c.heartbeat(t(5), leave, &topics()).member_epoch, -2);
        let b = c.heartbeat(t(6), beat("b1", 2, &b_parts), &topics());
        assert_eq!((b.member_epoch, b.assignment), (2, None), "the other member is not disturbed");
        // Back under a new member id: its old place, at once.
        let mut back = join("a2");
        back.instance_id = Some("ia".into());
        let r = c.heartbeat(t(7), back, &topics());
        assert_eq!((r.error, r.member_epoch, r.assignment), (None, 2, Some(a_parts)));
        assert_eq!(c.group("g").unwrap().state_name(), "Stable");
        // A second process under the same instance id is refused.
        let mut dup = join("a3");
        dup.instance_id = Some("ia".into());
        assert_eq!(c.heartbeat(t(8), dup, &topics()).error.unwrap().0, ConsumerError::UnreleasedInstanceId);
    }

    #[test]
    fn leaving_and_new_partitions_rebalance() {
        let mut c = Coordinator::default();
        let a1 = c.heartbeat(t(0), join("m1"), &topics()).assignment.unwrap();
        let mut more = topics();
        more.insert("a".into(), 6);
        let r = c.heartbeat(t(1), beat("m1", 1, &a1), &more);
        assert_eq!(r.member_epoch, 2);
        assert_eq!(parts(r.assignment.as_ref().unwrap()), vec![0, 1, 2, 3, 4, 5]);
        let r = c.heartbeat(t(2), Heartbeat { member_epoch: -1, ..beat("m1", -1, &a1) }, &more);
        assert_eq!(r.member_epoch, -1);
        assert_eq!(c.group("g").unwrap().state_name(), "Empty");
        // The range assignor gives contiguous blocks.
        let mut j = join("x1");
        j.assignor = Some("range".into());
        c.heartbeat(t(3), j, &more);
        let mut j = join("x2");
        j.assignor = Some("range".into());
        c.heartbeat(t(4), j, &more);
        let g = c.group("g").unwrap();
        assert_eq!(parts(&g.target["x1"]), vec![0, 1, 2]);
        assert_eq!(parts(&g.target["x2"]), vec![3, 4, 5]);
        let mut j = join("y");
        j.assignor = Some("sticky".into());
        assert_eq!(c.heartbeat(t(5), j, &more).error.unwrap().0, ConsumerError::UnsupportedAssignor);
    }
}
