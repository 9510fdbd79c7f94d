//! A simulated consumer-group member, as the classic Java consumer behaves with the eager
//! protocol: JoinGroup (member-id handshake, optionally static), SyncGroup (the leader makes a
//! range assignment), OffsetFetch for its partitions, then fetch, commit every so often and
//! heartbeat; on REBALANCE_IN_PROGRESS it commits, revokes everything and rejoins; on
//! ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID it has lost its partitions and rejoins. The group
//! traffic goes over one connection (the coordinator's) and fetches over another, like a real
//! client. Faults it suffers: a crash (state lost, no goodbye), a stall (silent past its
//! session, then carries on as a zombie that commits with its old generation first) and a
//! clean leave.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_core::ConnId;
use sluice_runtime_sim::{Nanos, World, MS};

use crate::checker::Checker;
use crate::codec;
use crate::workload::Seen;
use crate::workload::TOPIC;

pub const GROUP: &str = "sim-group";

/// What the workload needs of a group member, whichever protocol it speaks.
pub trait GroupMember {
    /// Does whatever is due; connections it opens are added to `opened`.
    fn pump(&mut self, w: &mut World, checker: &mut Checker, opened: &mut Vec<ConnId>);
    fn on_response(&mut self, w: &mut World, checker: &mut Checker, partitions: i32, conn: ConnId, frame: Bytes);
    fn on_closed(&mut self, w: &mut World, checker: &mut Checker, conn: ConnId);
    /// The process dies: connections reset, everything in memory gone, back after `down`.
    fn crash(&mut self, w: &mut World, checker: &mut Checker, down: Nanos);
    /// The process freezes (a long pause) without noticing.
    fn stall(&mut self, until: Nanos);
    /// A clean shutdown; the process comes back later.
    fn leave(&mut self, w: &mut World, checker: &mut Checker, down: Nanos);
    /// Ends any stall and crash (the liveness phase).
    fn heal(&mut self, now: Nanos);
    /// Consuming, with nothing pending.
    fn is_settled(&self) -> bool;
    /// Generation (classic) or member epoch (KIP-848): equal across a settled group.
    fn generation(&self) -> i32;
    fn assignment(&self) -> Vec<i32>;
    fn describe(&self) -> String;
}
pub const SESSION_TIMEOUT_MS: i32 = 1_000;
pub const REBALANCE_TIMEOUT_MS: i32 = 2_000;
const HEARTBEAT_EVERY: Nanos = 150 * MS;
const COMMIT_EVERY: Nanos = 100 * MS;
const REQUEST_TIMEOUT: Nanos = 3_000 * MS;
const BACKOFF: Nanos = 50 * MS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Join,
    Sync,
    Offsets,
    Consuming,
    /// Crashed or left; back (as a new process) at the given time.
    Down(Nanos),
}

#[derive(Clone, Debug)]
enum Req {
    Join,
    Sync,
    OffsetFetch,
    Commit(BTreeMap<i32, i64>),
    Heartbeat,
    Leave,
}

pub struct Member {
    /// Client index (the checker's consumer id).
    pub idx: usize,
    instance: Option<String>,
    ctrl: Option<ConnId>,
    data: Option<ConnId>,
    member_id: String,
    pub generation: i32,
    pub phase: Phase,
    pub assignment: Vec<i32>,
    positions: BTreeMap<i32, i64>,
    /// Offsets this member last had acknowledged.
    committed: BTreeMap<i32, i64>,
    /// Assignments the leader hands out in SyncGroup, made from the JoinGroup answer.
    to_assign: Vec<(String, Vec<i32>)>,
    ctrl_req: Option<(i32, Req, Nanos)>,
    /// The fetch in flight: correlation id, the assignment epoch it was sent in, when.
    fetch_req: Option<(i32, u64, Nanos)>,
    epoch: u64,
    next_cid: i32,
    last_heartbeat: Nanos,
    last_commit: Nanos,
    retry_at: Nanos,
    stalled_until: Option<Nanos>,
    /// Woken from a stall: its first act is a commit with whatever generation it had.
    zombie_commit: bool,
    /// Revoking for a rebalance: rejoin once this commit is answered.
    rejoin_after_commit: bool,
}

/// The ConsumerProtocolSubscription (v0) a Java consumer sends for one topic.
fn subscription() -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(1);
    b.put_i16(TOPIC.len() as i16);
    b.put_slice(TOPIC.as_bytes());
    b.put_i32(-1);
    b.freeze()
}

fn encode_assignment(parts: &[i32]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32(parts.len() as i32);
    for p in parts {
        b.put_i32(*p);
    }
    b.freeze()
}

fn decode_assignment(b: &[u8]) -> Option<Vec<i32>> {
    let n = usize::try_from(i32::from_be_bytes(b.get(..4)?.try_into().ok()?)).ok()?;
    (0..n).map(|i| Some(i32::from_be_bytes(b.get(4 + 4 * i..8 + 4 * i)?.try_into().ok()?))).collect()
}

/// Kafka's range assignor for one topic: members in id order take contiguous blocks, the
/// first ones one more partition each when it does not divide evenly.
pub fn range_assign(members: &[String], partitions: i32) -> Vec<(String, Vec<i32>)> {
    let mut ids = members.to_vec();
    ids.sort();
    let n = ids.len() as i32;
    let mut next = 0;
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| {
            let take = partitions / n + i32::from((i as i32) < partitions % n);
            let parts: Vec<i32> = (next..next + take).collect();
            next += take;
            (id, parts)
        })
        .collect()
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A member's OffsetCommit of `offsets` to `group` at its generation or member epoch.
pub(crate) fn commit_request(
    group: &str,
    member_id: &str,
    generation_or_epoch: i32,
    instance: Option<&str>,
    offsets: &BTreeMap<i32, i64>,
) -> OffsetCommitRequest {
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(sb(TOPIC));
    for (p, o) in offsets {
        let mut pp = offset_commit_request::OffsetCommitRequestPartition::default();
        pp.partition_index = *p;
        pp.committed_offset = *o;
        t.partitions.push(pp);
    }
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(sb(group));
    req.member_id = sb(member_id);
    req.generation_id_or_member_epoch = generation_or_epoch;
    req.group_instance_id = instance.map(sb);
    req.topics = vec![t];
    req
}

/// A member's fetch of its partitions from its positions (long poll, 64 KiB a partition).
pub(crate) fn fetch_frame(cid: i32, parts: impl Iterator<Item = i32>, positions: &BTreeMap<i32, i64>) -> Bytes {
    let from = parts.map(|p| (p, positions.get(&p).copied().unwrap_or(0)));
    codec::fetch_frame(cid, TOPIC, from, 64 * 1024)
}

/// Records a member fetched: checked, and its positions moved past them (records of
/// partitions it no longer has are skipped).
pub(crate) fn consume_fetched(
    now: Nanos,
    idx: usize,
    positions: &mut BTreeMap<i32, i64>,
    checker: &mut Checker,
    seen: Vec<crate::workload::Fetched>,
) {
    for s in seen {
        match s {
            Err(e) => checker.on_error(now, format!("member {idx}: {e}")),
            Ok((p, Seen::Bounds { .. }, hw)) => checker.on_high_watermark(now, idx, p, hw),
            Ok((p, Seen::Skip { base, next: n }, _)) => {
                let Some(next) = positions.get_mut(&p) else { continue };
                if n <= *next {
                    continue;
                }
                if base > *next {
                    checker.on_gap(now, idx, p, *next, base);
                }
                for o in (*next).max(base)..n {
                    checker.on_group_consume(p, o);
                }
                *next = n;
            }
            Ok((p, Seen::Record(o, v), hw)) => {
                let Some(next) = positions.get_mut(&p) else { continue };
                if o < *next {
                    continue;
                }
                if o != *next {
                    checker.on_gap(now, idx, p, *next, o);
                }
                *next = o + 1;
                checker.on_consume(now, idx, p, o, &v, hw);
                checker.on_group_consume(p, o);
            }
        }
    }
}

impl Member {
    pub fn new(idx: usize, instance: Option<String>) -> Member {
        Member {
            idx,
            instance,
            ctrl: None,
            data: None,
            member_id: String::new(),
            generation: -1,
            phase: Phase::Join,
            assignment: Vec::new(),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            to_assign: Vec::new(),
            ctrl_req: None,
            fetch_req: None,
            epoch: 0,
            next_cid: 0,
            last_heartbeat: 0,
            last_commit: 0,
            retry_at: 0,
            stalled_until: None,
            zombie_commit: false,
            rejoin_after_commit: false,
        }
    }

    fn describe_inner(&self) -> String {
        format!(
            "member {}: {:?} gen {} parts {:?} positions {:?} committed {:?} stalled {:?}",
            self.idx, self.phase, self.generation, self.assignment, self.positions, self.committed, self.stalled_until
        )
    }

    /// Drops the current assignment (eager revocation): fetched data still in flight for it
    /// is discarded when it arrives.
    fn revoke(&mut self) {
        self.assignment.clear();
        self.positions.clear();
        self.epoch += 1;
    }

    fn rejoin(&mut self, now: Nanos, forget_id: bool) {
        self.revoke();
        if forget_id {
            self.member_id.clear();
        }
        self.generation = -1;
        self.phase = Phase::Join;
        self.rejoin_after_commit = false;
        self.retry_at = now;
    }

    // ---- faults ---------------------------------------------------------------------

    fn crash_inner(&mut self, w: &mut World, down: Nanos) {
        let (ctrl, data) = (self.ctrl.take(), self.data.take());
        for c in [ctrl, data].into_iter().flatten() {
            w.close(c);
        }
        let (idx, inst) = (self.idx, self.instance.clone());
        *self = Member::new(idx, inst);
        self.phase = Phase::Down(w.now() + down);
    }

    fn stall_inner(&mut self, until: Nanos) {
        if self.stalled_until.is_none() && !matches!(self.phase, Phase::Down(_)) {
            self.stalled_until = Some(until);
        }
    }

    /// LeaveGroup is sent (no last commit).
    fn leave_inner(&mut self, w: &mut World, down: Nanos) {
        if self.member_id.is_empty() || matches!(self.phase, Phase::Down(_)) || self.ctrl_req.is_some() {
            return;
        }
        let Some(conn) = self.ctrl else { return };
        let mut m = leave_group_request::MemberIdentity::default();
        m.member_id = sb(&self.member_id);
        m.group_instance_id = self.instance.as_deref().map(sb);
        let mut req = LeaveGroupRequest::default();
        req.group_id = GroupId(sb(GROUP));
        req.members = vec![m];
        self.send_ctrl(w, conn, ApiKey::LeaveGroup, 4, &req, Req::Leave);
        let (idx, inst, ctrl) = (self.idx, self.instance.clone(), self.ctrl);
        let pending = self.ctrl_req.take();
        *self = Member::new(idx, inst);
        self.ctrl = ctrl;
        self.ctrl_req = pending;
        self.phase = Phase::Down(w.now() + down);
    }

    fn heal_inner(&mut self, now: Nanos) {
        if let Phase::Down(at) = self.phase {
            self.phase = Phase::Down(at.min(now));
        }
        if self.stalled_until.is_some() {
            self.stalled_until = Some(now);
        }
    }

    // ---- requests ----------------------------------------------------------------------

    fn send_ctrl<T: kafka_protocol::protocol::Encodable>(
        &mut self,
        w: &mut World,
        conn: ConnId,
        key: ApiKey,
        version: i16,
        body: &T,
        req: Req,
    ) {
        self.next_cid += 1;
        self.ctrl_req = Some((self.next_cid, req, w.now()));
        w.send(conn, codec::frame(key, version, self.next_cid, body));
    }

    /// Does whatever is due. Called on every tick and after every response.
    fn pump_inner(&mut self, w: &mut World, checker: &mut Checker, opened: &mut Vec<ConnId>) {
        let now = w.now();
        if let Some(until) = self.stalled_until {
            if now < until {
                return;
            }
            self.stalled_until = None;
            self.zombie_commit = true;
        }
        // Requests that have waited too long: drop the connection and carry on.
        let join_wait = (REBALANCE_TIMEOUT_MS as Nanos) * MS + REQUEST_TIMEOUT;
        if let Some((_, req, sent)) = &self.ctrl_req {
            let limit = if matches!(req, Req::Join | Req::Sync) { join_wait } else { REQUEST_TIMEOUT };
            if now - sent > limit {
                if let Some(c) = self.ctrl {
                    w.close(c);
                    self.ctrl_closed(now);
                }
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
        if let Phase::Down(at) = self.phase {
            if now < at || self.ctrl_req.is_some() {
                return;
            }
            if let Some(c) = self.ctrl.take() {
                w.close(c);
            }
            self.phase = Phase::Join;
        }
        if self.ctrl.is_none() {
            let c = w.connect(self.idx, 0);
            opened.push(c);
            self.ctrl = Some(c);
        }
        let conn = self.ctrl.expect("connected");
        if self.ctrl_req.is_none() && now >= self.retry_at {
            self.send_next(w, checker, conn, now);
        }
        if self.phase == Phase::Consuming && self.fetch_req.is_none() && !self.assignment.is_empty() {
            if self.data.is_none() {
                let c = w.connect(self.idx, 0);
                opened.push(c);
                self.data = Some(c);
            }
            self.send_fetch(w);
        }
    }

    fn send_next(&mut self, w: &mut World, checker: &mut Checker, conn: ConnId, now: Nanos) {
        match self.phase {
            Phase::Join => {
                let mut p = join_group_request::JoinGroupRequestProtocol::default();
                p.name = sb("range");
                p.metadata = subscription();
                let mut req = JoinGroupRequest::default();
                req.group_id = GroupId(sb(GROUP));
                req.member_id = sb(&self.member_id);
                req.group_instance_id = self.instance.as_deref().map(sb);
                req.session_timeout_ms = SESSION_TIMEOUT_MS;
                req.rebalance_timeout_ms = REBALANCE_TIMEOUT_MS;
                req.protocol_type = sb("consumer");
                req.protocols = vec![p];
                self.send_ctrl(w, conn, ApiKey::JoinGroup, 7, &req, Req::Join);
            }
            Phase::Sync => {
                let mut req = SyncGroupRequest::default();
                req.group_id = GroupId(sb(GROUP));
                req.member_id = sb(&self.member_id);
                req.generation_id = self.generation;
                req.group_instance_id = self.instance.as_deref().map(sb);
                req.protocol_type = Some(sb("consumer"));
                req.protocol_name = Some(sb("range"));
                req.assignments = self
                    .to_assign
                    .iter()
                    .map(|(id, parts)| {
                        let mut a = sync_group_request::SyncGroupRequestAssignment::default();
                        a.member_id = sb(id);
                        a.assignment = encode_assignment(parts);
                        a
                    })
                    .collect();
                self.send_ctrl(w, conn, ApiKey::SyncGroup, 5, &req, Req::Sync);
            }
            Phase::Offsets => {
                let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
                t.name = TopicName(sb(TOPIC));
                t.partition_indexes = self.assignment.clone();
                let mut req = OffsetFetchRequest::default();
                req.group_id = GroupId(sb(GROUP));
                req.topics = Some(vec![t]);
                self.send_ctrl(w, conn, ApiKey::OffsetFetch, 7, &req, Req::OffsetFetch);
            }
            Phase::Consuming => {
                let dirty = self.positions.iter().any(|(p, o)| self.committed.get(p) != Some(o));
                if (self.zombie_commit || now - self.last_commit >= COMMIT_EVERY) && dirty {
                    self.send_commit(w, checker, conn);
                } else if now - self.last_heartbeat >= HEARTBEAT_EVERY {
                    self.last_heartbeat = now;
                    let mut req = HeartbeatRequest::default();
                    req.group_id = GroupId(sb(GROUP));
                    req.member_id = sb(&self.member_id);
                    req.generation_id = self.generation;
                    req.group_instance_id = self.instance.as_deref().map(sb);
                    self.send_ctrl(w, conn, ApiKey::Heartbeat, 4, &req, Req::Heartbeat);
                }
                self.zombie_commit = false;
            }
            Phase::Down(_) => {}
        }
    }

    fn send_commit(&mut self, w: &mut World, checker: &mut Checker, conn: ConnId) {
        self.last_commit = w.now();
        let offsets = self.positions.clone();
        checker.on_commit_sent(&offsets);
        let req = commit_request(GROUP, &self.member_id, self.generation, self.instance.as_deref(), &offsets);
        self.send_ctrl(w, conn, ApiKey::OffsetCommit, 8, &req, Req::Commit(offsets));
    }

    fn send_fetch(&mut self, w: &mut World) {
        let Some(conn) = self.data else { return };
        self.next_cid += 1;
        self.fetch_req = Some((self.next_cid, self.epoch, w.now()));
        w.send(conn, fetch_frame(self.next_cid, self.assignment.iter().copied(), &self.positions));
    }

    // ---- responses ---------------------------------------------------------------------

    fn on_closed_inner(&mut self, w: &mut World, conn: ConnId) {
        if self.ctrl == Some(conn) {
            self.ctrl = None;
            self.ctrl_closed(w.now());
        }
        if self.data == Some(conn) {
            self.data = None;
            self.fetch_req = None;
        }
    }

    /// The coordinator connection is gone with whatever was in flight on it.
    fn ctrl_closed(&mut self, now: Nanos) {
        self.ctrl = None;
        let req = self.ctrl_req.take();
        self.retry_at = now + BACKOFF;
        match (req, self.phase) {
            // A join or sync whose answer is lost: join again (the member id is kept).
            (Some((_, Req::Join | Req::Sync, _)), _) | (_, Phase::Sync) => self.rejoin(now, false),
            (Some((_, Req::Commit(_), _)), _) if self.rejoin_after_commit => self.rejoin(now, false),
            _ => {}
        }
    }

    fn on_response_inner(&mut self, w: &mut World, checker: &mut Checker, partitions: i32, conn: ConnId, frame: Bytes) {
        if self.ctrl == Some(conn) {
            self.on_ctrl_response(w, checker, partitions, frame);
        } else if self.data == Some(conn) {
            self.on_fetch_response(w, checker, frame);
        }
    }

    fn on_ctrl_response(&mut self, w: &mut World, checker: &mut Checker, partitions: i32, frame: Bytes) {
        let now = w.now();
        let Some((cid, req, sent)) = self.ctrl_req.take() else { return };
        if codec::correlation_id(&frame) != Some(cid) {
            return checker.on_error(now, format!("member {}: answer to an unknown request", self.idx));
        }
        let who = self.idx;
        let bad = |checker: &mut Checker, e: String| checker.on_error(now, format!("member {who}: {e}"));
        match req {
            Req::Join => {
                let r: JoinGroupResponse = match codec::decode(ApiKey::JoinGroup, 7, frame) {
                    Ok((_, r)) => r,
                    Err(e) => return bad(checker, e),
                };
                match r.error_code {
                    0 => {
                        self.member_id = r.member_id.to_string();
                        self.generation = r.generation_id;
                        self.to_assign = if r.leader == r.member_id {
                            let ids: Vec<String> = r.members.iter().map(|m| m.member_id.to_string()).collect();
                            range_assign(&ids, partitions)
                        } else {
                            Vec::new()
                        };
                        self.phase = Phase::Sync;
                    }
                    79 => self.member_id = r.member_id.to_string(),
                    25 => self.rejoin(now, true),
                    _ => self.retry_at = now + BACKOFF,
                }
            }
            Req::Sync => {
                let r: SyncGroupResponse = match codec::decode(ApiKey::SyncGroup, 5, frame) {
                    Ok((_, r)) => r,
                    Err(e) => return bad(checker, e),
                };
                match r.error_code {
                    0 => {
                        let Some(parts) = decode_assignment(&r.assignment) else {
                            return bad(checker, "an assignment that does not parse".into());
                        };
                        let owner = self.instance.clone().unwrap_or_else(|| self.member_id.clone());
                        checker.on_assignment(now, &owner, self.generation, &parts);
                        self.assignment = parts;
                        self.epoch += 1;
                        self.phase = Phase::Offsets;
                    }
                    25 => self.rejoin(now, true),
                    _ => {
                        self.rejoin(now, false);
                        self.retry_at = now + BACKOFF;
                    }
                }
            }
            Req::OffsetFetch => {
                let r: OffsetFetchResponse = match codec::decode(ApiKey::OffsetFetch, 7, frame) {
                    Ok((_, r)) => r,
                    Err(e) => return bad(checker, e),
                };
                let parts: Vec<(i32, i64, i16)> = r
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| (p.partition_index, p.committed_offset, p.error_code)))
                    .collect();
                if r.error_code != 0 || parts.iter().any(|p| p.2 != 0) || parts.len() != self.assignment.len() {
                    self.retry_at = now + BACKOFF;
                    return;
                }
                for (p, committed, _) in parts {
                    let start = checker.on_offset_fetch(now, self.idx, p, committed, sent);
                    self.positions.insert(p, start);
                    if committed >= 0 {
                        self.committed.insert(p, committed);
                    }
                }
                self.phase = Phase::Consuming;
                self.last_heartbeat = now;
                self.last_commit = now;
            }
            Req::Commit(offsets) => {
                let r: OffsetCommitResponse = match codec::decode(ApiKey::OffsetCommit, 8, frame) {
                    Ok((_, r)) => r,
                    Err(e) => return bad(checker, e),
                };
                let codes: Vec<(i32, i16)> = r
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| (p.partition_index, p.error_code)))
                    .collect();
                let error = codes.iter().map(|c| c.1).find(|c| *c != 0).unwrap_or(0);
                if error == 0 {
                    for (p, o) in &offsets {
                        checker.on_commit_ack(now, self.idx, *p, *o);
                        self.committed.insert(*p, *o);
                    }
                }
                match error {
                    0 if self.rejoin_after_commit => self.rejoin(now, false),
                    0 => {}
                    25 => self.rejoin(now, true),
                    22 | 27 => self.rejoin(now, false),
                    _ if self.rejoin_after_commit => self.rejoin(now, false),
                    _ => self.retry_at = now + BACKOFF,
                }
            }
            Req::Heartbeat => {
                let r: HeartbeatResponse = match codec::decode(ApiKey::Heartbeat, 4, frame) {
                    Ok((_, r)) => r,
                    Err(e) => return bad(checker, e),
                };
                match r.error_code {
                    0 => {}
                    // A rebalance: commit what was consumed, then give everything up and rejoin.
                    27 if self.phase == Phase::Consuming => {
                        let dirty = self.positions.iter().any(|(p, o)| self.committed.get(p) != Some(o));
                        match (dirty, self.ctrl) {
                            (true, Some(conn)) => {
                                self.rejoin_after_commit = true;
                                self.send_commit(w, checker, conn);
                            }
                            _ => self.rejoin(now, false),
                        }
                    }
                    25 => self.rejoin(now, true),
                    22 | 27 => self.rejoin(now, false),
                    _ => {}
                }
            }
            Req::Leave => {
                if let Some(c) = self.ctrl.take() {
                    w.close(c);
                }
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
        if epoch != self.epoch || self.phase != Phase::Consuming {
            return; // for an assignment given up since: discarded, as a consumer does
        }
        consume_fetched(now, self.idx, &mut self.positions, checker, seen);
    }
}

impl GroupMember for Member {
    fn pump(&mut self, w: &mut World, checker: &mut Checker, opened: &mut Vec<ConnId>) {
        self.pump_inner(w, checker, opened)
    }
    fn on_response(&mut self, w: &mut World, checker: &mut Checker, partitions: i32, conn: ConnId, frame: Bytes) {
        self.on_response_inner(w, checker, partitions, conn, frame)
    }
    fn on_closed(&mut self, w: &mut World, _: &mut Checker, conn: ConnId) {
        self.on_closed_inner(w, conn)
    }
    fn crash(&mut self, w: &mut World, _: &mut Checker, down: Nanos) {
        self.crash_inner(w, down)
    }
    fn stall(&mut self, until: Nanos) {
        self.stall_inner(until)
    }
    fn leave(&mut self, w: &mut World, _: &mut Checker, down: Nanos) {
        self.leave_inner(w, down)
    }
    fn heal(&mut self, now: Nanos) {
        self.heal_inner(now)
    }
    fn is_settled(&self) -> bool {
        self.phase == Phase::Consuming && self.stalled_until.is_none()
    }
    fn generation(&self) -> i32 {
        self.generation
    }
    fn assignment(&self) -> Vec<i32> {
        self.assignment.clone()
    }
    fn describe(&self) -> String {
        self.describe_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignment_covers_every_partition_once() {
        let ids: Vec<String> = ["b", "a", "c"].iter().map(|s| s.to_string()).collect();
        let a = range_assign(&ids, 7);
        assert_eq!(a[0], ("a".to_string(), vec![0, 1, 2]));
        assert_eq!(a[1], ("b".to_string(), vec![3, 4]));
        assert_eq!(a[2], ("c".to_string(), vec![5, 6]));
        let a = range_assign(&ids, 2);
        assert_eq!(a.iter().map(|(_, p)| p.len()).sum::<usize>(), 2);
        assert_eq!(decode_assignment(&encode_assignment(&[3, 1])), Some(vec![3, 1]));
        assert_eq!(decode_assignment(&[0, 0, 0, 9]), None);
    }
}
