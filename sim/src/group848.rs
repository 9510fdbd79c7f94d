//! A simulated member of a KIP-848 consumer group, as librdkafka's `group.protocol=consumer`
//! behaves: ConsumerGroupHeartbeat with its own member id and epoch, the assignment decided by
//! the coordinator; it reconciles one step at a time: partitions to give up are committed and
//! released, partitions to take get their committed offsets fetched (OffsetFetch v9, with its
//! epoch), and the next heartbeat reports what it owns. Fenced (FENCED_MEMBER_EPOCH,
//! UNKNOWN_MEMBER_ID), it drops everything and rejoins at epoch 0. Faults as for classic
//! members: crash, stall past the session (a zombie whose first act is a commit), leave.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_core::ConnId;
use sluice_runtime_sim::{Nanos, World, MS};

use crate::checker::Checker;
use crate::codec;
use crate::group::GroupMember;
use crate::workload::TOPIC;

pub const GROUP: &str = "sim-group-848";
pub const SESSION_TIMEOUT_MS: u64 = 1_000;
pub const HEARTBEAT_INTERVAL_MS: u64 = 150;
const REBALANCE_TIMEOUT_MS: i32 = 2_000;
const COMMIT_EVERY: Nanos = 100 * MS;
const REQUEST_TIMEOUT: Nanos = 3_000 * MS;
const BACKOFF: Nanos = 50 * MS;

#[derive(Clone, Debug)]
enum Req {
    Heartbeat {
        leaving: bool,
        owned: BTreeSet<i32>,
    },
    /// A commit; `release` names partitions to give up once it is answered.
    Commit {
        offsets: BTreeMap<i32, i64>,
        release: BTreeSet<i32>,
    },
    OffsetFetch(Vec<i32>),
}

pub struct Member848 {
    idx: usize,
    instance: Option<String>,
    incarnation: u32,
    ctrl: Option<ConnId>,
    data: Option<ConnId>,
    member_id: String,
    /// 0 while (re)joining.
    epoch: i32,
    owned: BTreeSet<i32>,
    positions: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
    /// The assignment the coordinator asks for, until it is reached.
    target: Option<BTreeSet<i32>>,
    topic_id: Option<uuid::Uuid>,
    ack_needed: bool,
    ctrl_req: Option<(i32, Req, Nanos)>,
    fetch_req: Option<(i32, u64, Nanos)>,
    fetch_epoch: u64,
    next_cid: i32,
    last_heartbeat: Nanos,
    last_commit: Nanos,
    retry_at: Nanos,
    down_until: Option<Nanos>,
    stalled_until: Option<Nanos>,
    zombie_commit: bool,
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl Member848 {
    pub fn new(idx: usize, instance: Option<String>) -> Member848 {
        Member848 {
            idx,
            instance,
            incarnation: 0,
            ctrl: None,
            data: None,
            member_id: format!("m{idx}-0"),
            epoch: 0,
            owned: BTreeSet::new(),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            target: None,
            topic_id: None,
            ack_needed: false,
            ctrl_req: None,
            fetch_req: None,
            fetch_epoch: 0,
            next_cid: 0,
            last_heartbeat: 0,
            last_commit: 0,
            retry_at: 0,
            down_until: None,
            stalled_until: None,
            zombie_commit: false,
        }
    }

    /// A fresh process: new member id, nothing owned.
    fn reincarnate(&mut self, checker: &mut Checker) {
        let (idx, inst, inc) = (self.idx, self.instance.clone(), self.incarnation + 1);
        self.release_all(checker);
        *self = Member848::new(idx, inst);
        self.incarnation = inc;
        self.member_id = format!("m{idx}-{inc}");
    }

    fn release(&mut self, checker: &mut Checker, parts: &BTreeSet<i32>) {
        for p in parts {
            if self.owned.remove(p) {
                checker.on_release(&self.member_id, *p);
            }
            self.positions.remove(p);
        }
        self.fetch_epoch += 1;
    }

    fn release_all(&mut self, checker: &mut Checker) {
        let all = self.owned.clone();
        self.release(checker, &all);
    }

    /// Fenced: everything goes, without a commit; join again at epoch 0.
    fn fenced(&mut self, checker: &mut Checker, now: Nanos) {
        self.release_all(checker);
        checker.on_fenced(&self.member_id);
        self.epoch = 0;
        self.target = None;
        self.retry_at = now + BACKOFF;
    }

    fn dirty(&self, parts: &BTreeSet<i32>) -> BTreeMap<i32, i64> {
        self.positions
            .iter()
            .filter(|(p, o)| parts.contains(p) && self.committed.get(p) != Some(o))
            .map(|(p, o)| (*p, *o))
            .collect()
    }

    fn send_ctrl<T: kafka_protocol::protocol::Encodable>(
        &mut self,
        w: &mut World,
        key: ApiKey,
        version: i16,
        body: &T,
        req: Req,
    ) {
        let Some(conn) = self.ctrl else { return };
        self.next_cid += 1;
        self.ctrl_req = Some((self.next_cid, req, w.now()));
        w.send(conn, codec::frame(key, version, self.next_cid, body));
    }

    fn send_heartbeat(&mut self, w: &mut World, leaving: bool) {
        self.last_heartbeat = w.now();
        self.ack_needed = false;
        let mut req = ConsumerGroupHeartbeatRequest::default();
        req.group_id = GroupId(sb(GROUP));
        req.member_id = sb(&self.member_id);
        // A static member leaving says -2: it is coming back under its instance id.
        req.member_epoch = match (leaving, &self.instance) {
            (true, Some(_)) => -2,
            (true, None) => -1,
            (false, _) => self.epoch,
        };
        req.instance_id = self.instance.as_deref().map(sb);
        req.rebalance_timeout_ms = if self.epoch == 0 { REBALANCE_TIMEOUT_MS } else { -1 };
        if self.epoch == 0 && !leaving {
            req.subscribed_topic_names = Some(vec![TopicName(sb(TOPIC))]);
        }
        if !leaving {
            let mut tps = Vec::new();
            if let (Some(id), false) = (self.topic_id, self.owned.is_empty()) {
                let mut tp = consumer_group_heartbeat_request::TopicPartitions::default();
                tp.topic_id = id;
                tp.partitions = self.owned.iter().copied().collect();
                tps.push(tp);
            }
            req.topic_partitions = Some(tps);
        }
        let owned = self.owned.clone();
        self.send_ctrl(w, ApiKey::ConsumerGroupHeartbeat, 1, &req, Req::Heartbeat { leaving, owned });
    }

    fn send_commit(
        &mut self,
        w: &mut World,
        checker: &mut Checker,
        offsets: BTreeMap<i32, i64>,
        release: BTreeSet<i32>,
    ) {
        self.last_commit = w.now();
        checker.on_commit_sent(&offsets);
        let req = crate::group::commit_request(GROUP, &self.member_id, self.epoch, self.instance.as_deref(), &offsets);
        self.send_ctrl(w, ApiKey::OffsetCommit, 9, &req, Req::Commit { offsets, release });
    }

    fn send_offset_fetch(&mut self, w: &mut World, parts: Vec<i32>) {
        let mut t = offset_fetch_request::OffsetFetchRequestTopics::default();
        t.name = TopicName(sb(TOPIC));
        t.partition_indexes = parts.clone();
        let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
        g.group_id = GroupId(sb(GROUP));
        g.member_id = Some(sb(&self.member_id));
        g.member_epoch = self.epoch;
        g.topics = Some(vec![t]);
        let mut req = OffsetFetchRequest::default();
        req.groups = vec![g];
        self.send_ctrl(w, ApiKey::OffsetFetch, 9, &req, Req::OffsetFetch(parts));
    }

    /// The next request on the coordinator connection, if one is due.
    fn send_next(&mut self, w: &mut World, checker: &mut Checker, now: Nanos) {
        if self.epoch > 0 && self.zombie_commit {
            self.zombie_commit = false;
            let dirty = self.dirty(&self.owned.clone());
            if !dirty.is_empty() {
                return self.send_commit(w, checker, dirty, BTreeSet::new());
            }
        }
        self.zombie_commit = false;
        if let Some(target) = self.target.clone() {
            let revoke: BTreeSet<i32> = self.owned.difference(&target).copied().collect();
            if !revoke.is_empty() {
                let dirty = self.dirty(&revoke);
                if dirty.is_empty() {
                    self.release(checker, &revoke);
                } else {
                    return self.send_commit(w, checker, dirty, revoke);
                }
            }
            let add: Vec<i32> = target.difference(&self.owned).copied().collect();
            if !add.is_empty() {
                return self.send_offset_fetch(w, add);
            }
            self.target = None;
            self.ack_needed = true;
        }
        if self.epoch == 0 || self.ack_needed || now - self.last_heartbeat >= HEARTBEAT_INTERVAL_MS * MS {
            return self.send_heartbeat(w, false);
        }
        if now - self.last_commit >= COMMIT_EVERY {
            let dirty = self.dirty(&self.owned.clone());
            if !dirty.is_empty() {
                self.send_commit(w, checker, dirty, BTreeSet::new());
            }
        }
    }

    fn send_fetch(&mut self, w: &mut World) {
        let Some(conn) = self.data else { return };
        self.next_cid += 1;
        self.fetch_req = Some((self.next_cid, self.fetch_epoch, w.now()));
        w.send(conn, crate::group::fetch_frame(self.next_cid, self.owned.iter().copied(), &self.positions));
    }

    fn on_ctrl_response(&mut self, w: &mut World, checker: &mut Checker, frame: Bytes) {
        let now = w.now();
        let Some((cid, req, sent)) = self.ctrl_req.take() else { return };
        let who = self.idx;
        if codec::correlation_id(&frame) != Some(cid) {
            return checker.on_error(now, format!("member {who}: answer to an unknown request"));
        }
        let bad = |checker: &mut Checker, e: String| checker.on_error(now, format!("member {who}: {e}"));
        match req {
            Req::Heartbeat { leaving, owned } => {
                let r: ConsumerGroupHeartbeatResponse = match codec::decode(ApiKey::ConsumerGroupHeartbeat, 1, frame) {
                    Ok((_, r)) => r,
                    Err(e) => return bad(checker, e),
                };
                if leaving {
                    if let Some(c) = self.ctrl.take() {
                        w.close(c);
                    }
                    return;
                }
                match r.error_code {
                    0 => {
                        checker.on_confirm(now, &self.member_id, &owned, sent);
                        self.epoch = r.member_epoch;
                        if let Some(a) = r.assignment {
                            let mut parts = BTreeSet::new();
                            for tp in a.topic_partitions {
                                self.topic_id = Some(tp.topic_id);
                                parts.extend(tp.partitions);
                            }
                            self.target = (parts != self.owned).then_some(parts);
                        }
                    }
                    25 | 110 => self.fenced(checker, now),
                    _ => self.retry_at = now + BACKOFF,
                }
            }
            Req::Commit { offsets, release } => {
                let r: OffsetCommitResponse = match codec::decode(ApiKey::OffsetCommit, 9, frame) {
                    Ok((_, r)) => r,
                    Err(e) => return bad(checker, e),
                };
                let error = r
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| p.error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0);
                match error {
                    0 => {
                        let parts: BTreeSet<i32> = offsets.keys().copied().collect();
                        checker.on_confirm(now, &self.member_id, &parts, sent);
                        for (p, o) in &offsets {
                            checker.on_commit_ack(now, self.idx, *p, *o);
                            self.committed.insert(*p, *o);
                        }
                        self.release(checker, &release);
                    }
                    25 | 110 => self.fenced(checker, now),
                    // A stale epoch: the heartbeat brings the new one; release anyway (the
                    // coordinator is waiting for it) and let the next owner re-read.
                    _ => {
                        self.release(checker, &release);
                        self.retry_at = now + BACKOFF;
                    }
                }
            }
            Req::OffsetFetch(parts) => {
                let r: OffsetFetchResponse = match codec::decode(ApiKey::OffsetFetch, 9, frame) {
                    Ok((_, r)) => r,
                    Err(e) => return bad(checker, e),
                };
                let Some(g) = r.groups.first() else { return bad(checker, "OffsetFetch without its group".into()) };
                let got: Vec<(i32, i64, i16)> = g
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| (p.partition_index, p.committed_offset, p.error_code)))
                    .collect();
                if g.error_code == 25 || g.error_code == 110 {
                    return self.fenced(checker, now);
                }
                if g.error_code != 0 || got.iter().any(|p| p.2 != 0) || got.len() != parts.len() {
                    self.retry_at = now + BACKOFF;
                    return;
                }
                // Still wanted? (A heartbeat may have changed the target meanwhile: then the
                // next step starts over.)
                for (p, committed, _) in got {
                    if !self.target.as_ref().is_some_and(|t| t.contains(&p)) {
                        continue;
                    }
                    let start = checker.on_offset_fetch(now, self.idx, p, committed, sent);
                    self.positions.insert(p, start);
                    if committed >= 0 {
                        self.committed.insert(p, committed);
                    }
                    self.owned.insert(p);
                    checker.on_own(now, &self.member_id, p);
                }
                self.fetch_epoch += 1;
            }
        }
    }

    fn on_fetch_response(&mut self, w: &mut World, checker: &mut Checker, frame: Bytes) {
        let now = w.now();
        let Some((_, epoch, _)) = self.fetch_req.take() else { return };
        let seen = match crate::workload::fetched(frame) {
            Ok(s) => s,
            Err(e) => return checker.on_error(now, format!("member {}: {e}", self.idx)),
        };
        if epoch != self.fetch_epoch {
            return; // sent before the owned partitions changed: discarded
        }
        crate::group::consume_fetched(now, self.idx, &mut self.positions, checker, seen);
    }
}

impl GroupMember for Member848 {
    fn pump(&mut self, w: &mut World, checker: &mut Checker, opened: &mut Vec<ConnId>) {
        let now = w.now();
        if let Some(until) = self.stalled_until {
            if now < until {
                return;
            }
            self.stalled_until = None;
            self.zombie_commit = true;
        }
        if let Some((_, _, sent)) = &self.ctrl_req {
            if now - sent > REQUEST_TIMEOUT {
                if let Some(c) = self.ctrl.take() {
                    w.close(c);
                }
                self.ctrl_req = None;
            }
        }
        if let Some((_, _, sent)) = self.fetch_req {
            if now - sent > REQUEST_TIMEOUT {
                if let Some(c) = self.data.take() {
                    w.close(c);
                }
                self.fetch_req = None;
            }
        }
        if let Some(until) = self.down_until {
            if now < until || self.ctrl_req.is_some() {
                return;
            }
            if let Some(c) = self.ctrl.take() {
                w.close(c);
            }
            self.reincarnate(checker);
        }
        if self.ctrl.is_none() {
            let c = w.connect(self.idx, 0);
            opened.push(c);
            self.ctrl = Some(c);
        }
        if self.ctrl_req.is_none() && now >= self.retry_at {
            self.send_next(w, checker, now);
        }
        if self.fetch_req.is_none() && !self.owned.is_empty() {
            if self.data.is_none() {
                let c = w.connect(self.idx, 0);
                opened.push(c);
                self.data = Some(c);
            }
            self.send_fetch(w);
        }
    }

    fn on_response(&mut self, w: &mut World, checker: &mut Checker, _partitions: i32, conn: ConnId, frame: Bytes) {
        if self.ctrl == Some(conn) {
            self.on_ctrl_response(w, checker, frame);
        } else if self.data == Some(conn) {
            self.on_fetch_response(w, checker, frame);
        }
    }

    fn on_closed(&mut self, w: &mut World, _checker: &mut Checker, conn: ConnId) {
        if self.ctrl == Some(conn) {
            self.ctrl = None;
            // Whatever was in flight may or may not have happened; carry on from here.
            self.ctrl_req = None;
            self.retry_at = w.now() + BACKOFF;
        }
        if self.data == Some(conn) {
            self.data = None;
            self.fetch_req = None;
        }
    }

    fn crash(&mut self, w: &mut World, checker: &mut Checker, down: Nanos) {
        for c in [self.ctrl.take(), self.data.take()].into_iter().flatten() {
            w.close(c);
        }
        self.reincarnate(checker);
        self.down_until = Some(w.now() + down);
    }

    fn stall(&mut self, until: Nanos) {
        if self.stalled_until.is_none() && self.down_until.is_none() {
            self.stalled_until = Some(until);
        }
    }

    fn leave(&mut self, w: &mut World, checker: &mut Checker, down: Nanos) {
        if self.epoch <= 0 || self.down_until.is_some() || self.ctrl_req.is_some() || self.ctrl.is_none() {
            return;
        }
        self.release_all(checker);
        self.send_heartbeat(w, true);
        self.down_until = Some(w.now() + down);
    }

    fn heal(&mut self, now: Nanos) {
        if let Some(at) = self.down_until {
            self.down_until = Some(at.min(now));
        }
        if self.stalled_until.is_some() {
            self.stalled_until = Some(now);
        }
    }

    fn is_settled(&self) -> bool {
        self.epoch > 0
            && self.target.is_none()
            && !self.ack_needed
            && self.stalled_until.is_none()
            && self.down_until.is_none()
    }

    fn generation(&self) -> i32 {
        self.epoch
    }

    fn assignment(&self) -> Vec<i32> {
        self.owned.iter().copied().collect()
    }

    fn describe(&self) -> String {
        format!(
            "member {} ({}): epoch {} owned {:?} target {:?} positions {:?} committed {:?} stalled {:?} down {:?}",
            self.idx,
            self.member_id,
            self.epoch,
            self.owned,
            self.target,
            self.positions,
            self.committed,
            self.stalled_until,
            self.down_until
        )
    }
}
