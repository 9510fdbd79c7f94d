//! The `cluster` scenario's offsets workload: clients that commit offsets for a group of their
//! own (standalone commits, as a consumer with `assign` makes them) and read them back, each
//! at the group's coordinator: the broker leading the group's `__consumer_offsets` partition,
//! found with FindCoordinator and found again after NOT_COORDINATOR, a load in progress or a
//! dropped connection, as clients do. The coordinator moves whenever that partition's
//! leadership does (crashes, isolations, preferred elections).
//!
//! Checked:
//! - **lost-commit**: an OffsetFetch sent after a commit was acknowledged never answers an
//!   older offset (the committed offsets survive the coordinator's failover), unless that
//!   older one is a commit whose outcome was never known: a request the client gave up on
//!   may still reach the coordinator later and win, in Kafka as here (last writer wins);
//! - **phantom-commit**: it never answers an offset that was never committed;
//! - **convergence** (liveness): after the heal, each client gets a commit acknowledged and
//!   reads it back.
//!
//! Each client commits 0, 1, 2, ... in turn, one request at a time, so the offset an answer
//! names says which commit it saw. A commit that ends in a timeout, a dropped connection or
//! an error other than a refusal made before writing (COORDINATOR_LOAD_IN_PROGRESS,
//! NOT_COORDINATOR) is indefinite: a later fetch may see it or not.

use bytes::Bytes;
use kafka_protocol::messages::{
    offset_commit_request, offset_fetch_request, ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_core::ConnId;
use sluice_runtime_sim::{Nanos, World, MS};

use crate::codec;
use crate::replicated::TOPIC;

/// Timer token of a committer's next step.
pub const T_COMMIT: u64 = 18;
/// Committers are the simulated clients from this one on.
const FIRST_CLIENT: usize = 8;
const FIND_VERSION: i16 = 3;
const COMMIT_VERSION: i16 = 8;
const FETCH_VERSION: i16 = 7;
/// An unanswered request is given up (indefinite) after this long.
const REQUEST_TIMEOUT: Nanos = 3_000 * MS;

#[derive(Clone, Copy, Debug)]
enum Req {
    Find,
    Commit(i64),
    /// An OffsetFetch, with the highest commit acknowledged when it was sent.
    Fetch(i64),
}

struct Committer {
    group: String,
    /// The node it talks to: the one it asks for the coordinator, or the coordinator.
    node: usize,
    coordinator_known: bool,
    conn: Option<ConnId>,
    /// Correlation id, what was asked, when it was sent.
    in_flight: Option<(i32, Req, Nanos)>,
    /// The next offset to commit, and the highest commit acknowledged (-1: none).
    next: i64,
    acked: i64,
    /// Commits sent whose outcome is unknown.
    indefinite: std::collections::BTreeSet<i64>,
    fetch_next: bool,
    acked_after_heal: bool,
    read_after_heal: bool,
}

pub struct Commits {
    nodes: usize,
    every: Nanos,
    committers: Vec<Committer>,
    next_cid: i32,
    pub commits_acked: u64,
    pub answers: std::collections::BTreeMap<i16, u64>,
    pub violations: Vec<String>,
    healed: bool,
}

impl Commits {
    /// The partitions this workload writes, with their `min.insync.replicas`: its groups'
    /// partitions of `__consumer_offsets`.
    pub fn partitions_written(&self) -> Vec<(&'static str, i32, usize)> {
        use sluice_core::node::{coordinator_partition, OFFSETS_TOPIC};
        self.committers.iter().map(|c| (OFFSETS_TOPIC, coordinator_partition(OFFSETS_TOPIC, &c.group), 1)).collect()
    }

    pub fn new(nodes: usize, rng: &mut ChaCha8Rng) -> Commits {
        let committers = (0..rng.gen_range(1..=2))
            .map(|k| Committer {
                group: format!("sim-commits-{k}"),
                node: rng.gen_range(0..nodes),
                coordinator_known: false,
                conn: None,
                in_flight: None,
                next: 0,
                acked: -1,
                indefinite: Default::default(),
                fetch_next: false,
                acked_after_heal: false,
                read_after_heal: false,
            })
            .collect();
        Commits {
            nodes,
            every: [5u64, 30][rng.gen_range(0..2)] * MS,
            committers,
            next_cid: 0,
            commits_acked: 0,
            answers: Default::default(),
            violations: Vec::new(),
            healed: false,
        }
    }

    pub fn describe(&self) -> String {
        format!("{} committers every {} ms", self.committers.len(), self.every / MS)
    }

    pub fn start(&mut self, w: &mut World) {
        for k in 0..self.committers.len() {
            w.set_timer(FIRST_CLIENT + k, T_COMMIT, self.every);
        }
    }

    pub fn heal(&mut self) {
        self.healed = true;
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.committers.iter().any(|c| c.conn == Some(conn))
    }

    /// What keeps the committers from having settled after the heal, if anything.
    pub fn unsettled(&self) -> Option<String> {
        let k = self.committers.iter().position(|c| !(c.acked_after_heal && c.read_after_heal))?;
        Some(format!("committer {k} has not committed and read back since the heal"))
    }

    fn violation(&mut self, w: &World, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("t={}ms: {what}", w.now() / MS));
        }
    }

    /// The committer's next request, once the topic its offsets name exists.
    pub fn on_timer(&mut self, w: &mut World, client: usize, topic_created: bool) {
        let Some(k) = client.checked_sub(FIRST_CLIENT).filter(|k| *k < self.committers.len()) else { return };
        if self.committers[k].in_flight.is_some_and(|(_, _, at)| w.now() >= at + REQUEST_TIMEOUT) {
            self.rediscover(w, k);
        }
        let c = &mut self.committers[k];
        if c.in_flight.is_some() {
            return; // its answer, or its timeout, sets the next step
        }
        if !topic_created || !w.is_up(c.node) {
            if !w.is_up(c.node) {
                c.node = (c.node + 1) % self.nodes;
                c.coordinator_known = false;
            }
            w.set_timer(client, T_COMMIT, self.every);
            return;
        }
        let conn = *c.conn.get_or_insert_with(|| w.connect(client, c.node));
        self.next_cid += 1;
        let cid = self.next_cid;
        let c = &mut self.committers[k];
        let group = GroupId(StrBytes::from_string(c.group.clone()));
        let (req, frame) = if !c.coordinator_known {
            let mut r = FindCoordinatorRequest::default();
            r.key = StrBytes::from_string(c.group.clone());
            (Req::Find, codec::frame(ApiKey::FindCoordinator, FIND_VERSION, cid, &r))
        } else if c.fetch_next {
            let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
            t.name = TopicName(StrBytes::from_static_str(TOPIC));
            t.partition_indexes = vec![0];
            let mut r = OffsetFetchRequest::default();
            r.group_id = group;
            r.topics = Some(vec![t]);
            (Req::Fetch(c.acked), codec::frame(ApiKey::OffsetFetch, FETCH_VERSION, cid, &r))
        } else {
            let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
            p.partition_index = 0;
            p.committed_offset = c.next;
            let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
            t.name = TopicName(StrBytes::from_static_str(TOPIC));
            t.partitions = vec![p];
            let mut r = OffsetCommitRequest::default();
            r.group_id = group;
            r.generation_id_or_member_epoch = -1;
            r.topics = vec![t];
            c.indefinite.insert(c.next);
            c.next += 1;
            (Req::Commit(c.next - 1), codec::frame(ApiKey::OffsetCommit, COMMIT_VERSION, cid, &r))
        };
        w.send(conn, frame);
        c.in_flight = Some((cid, req, w.now()));
        w.set_timer(client, T_COMMIT, REQUEST_TIMEOUT);
    }

    /// Starts over: finds the coordinator again, through the next node.
    fn rediscover(&mut self, w: &mut World, k: usize) {
        let c = &mut self.committers[k];
        c.coordinator_known = false;
        c.node = (c.node + 1) % self.nodes;
        c.in_flight = None;
        if let Some(conn) = c.conn.take() {
            w.close(conn);
        }
    }

    pub fn on_response(&mut self, w: &mut World, conn: ConnId, frame: Bytes) {
        let Some(k) = self.committers.iter().position(|c| c.conn == Some(conn)) else { return };
        let Some((cid, req, _)) = self.committers[k].in_flight.take() else { return };
        let outcome = match req {
            Req::Find => self.on_found(w, k, cid, frame),
            Req::Commit(offset) => self.on_committed(w, k, cid, offset, frame),
            Req::Fetch(floor) => self.on_fetched(w, k, cid, floor, frame),
        };
        match outcome {
            Ok(code) => *self.answers.entry(code).or_default() += 1,
            Err(e) => self.violation(w, format!("committer {k}: {e}")),
        }
        w.set_timer(FIRST_CLIENT + k, T_COMMIT, self.every);
    }

    fn on_found(&mut self, w: &mut World, k: usize, cid: i32, frame: Bytes) -> Result<i16, String> {
        let (got, r) = codec::decode::<FindCoordinatorResponse>(ApiKey::FindCoordinator, FIND_VERSION, frame)?;
        if got != cid {
            return Err(format!("FindCoordinator answered with correlation id {got}, sent {cid}"));
        }
        let at = usize::try_from(r.node_id.0 - 1).ok().filter(|i| *i < self.nodes);
        match (r.error_code, at) {
            (0, Some(i)) => {
                let c = &mut self.committers[k];
                c.coordinator_known = true;
                if i != c.node {
                    c.node = i;
                    if let Some(conn) = c.conn.take() {
                        w.close(conn);
                    }
                }
            }
            _ => self.rediscover(w, k),
        }
        Ok(r.error_code)
    }

    fn on_committed(&mut self, w: &mut World, k: usize, cid: i32, offset: i64, frame: Bytes) -> Result<i16, String> {
        let (got, r) = codec::decode::<OffsetCommitResponse>(ApiKey::OffsetCommit, COMMIT_VERSION, frame)?;
        if got != cid {
            return Err(format!("OffsetCommit answered with correlation id {got}, sent {cid}"));
        }
        let code = r.topics.first().and_then(|t| t.partitions.first()).map_or(-1, |p| p.error_code);
        let healed = self.healed;
        let c = &mut self.committers[k];
        if matches!(code, 0 | 14 | 16) {
            c.indefinite.remove(&offset);
        }
        if code == 0 {
            c.acked = c.acked.max(offset);
            c.acked_after_heal |= healed;
            c.fetch_next = true;
            self.commits_acked += 1;
        } else {
            self.rediscover(w, k);
        }
        Ok(code)
    }

    fn on_fetched(&mut self, w: &mut World, k: usize, cid: i32, floor: i64, frame: Bytes) -> Result<i16, String> {
        let (got, r) = codec::decode::<OffsetFetchResponse>(ApiKey::OffsetFetch, FETCH_VERSION, frame)?;
        if got != cid {
            return Err(format!("OffsetFetch answered with correlation id {got}, sent {cid}"));
        }
        let p = r.topics.first().and_then(|t| t.partitions.first());
        let code = if r.error_code != 0 { r.error_code } else { p.map_or(-1, |p| p.error_code) };
        if code != 0 {
            self.rediscover(w, k);
            return Ok(code);
        }
        let seen = p.map_or(-1, |p| p.committed_offset);
        let (group, last_sent) = (self.committers[k].group.clone(), self.committers[k].next - 1);
        if seen < floor && !self.committers[k].indefinite.contains(&seen) {
            let msg = format!(
                "lost-commit: group {group}: OffsetFetch answered {seen} after the commit of {floor} was acknowledged"
            );
            self.violation(w, msg);
        }
        if seen > last_sent {
            self.violation(w, format!("phantom-commit: group {group}: OffsetFetch answered {seen}, never committed"));
        }
        let healed = self.healed;
        let c = &mut self.committers[k];
        c.fetch_next = false;
        c.read_after_heal |= healed && c.acked_after_heal && seen >= c.acked;
        Ok(code)
    }

    pub fn on_closed(&mut self, w: &mut World, conn: ConnId) {
        let Some(k) = self.committers.iter().position(|c| c.conn == Some(conn)) else { return };
        self.committers[k].conn = None;
        self.rediscover(w, k);
        w.set_timer(FIRST_CLIENT + k, T_COMMIT, self.every);
    }
}
