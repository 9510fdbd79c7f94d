//! The `cluster` scenario's replicated workload: a topic with three replicas (of three or five
//! nodes) and
//! `min.insync.replicas=2`, and producers writing to it with acks=all through whichever node
//! they reach (moving on when told NOT_LEADER_OR_FOLLOWER to the leader it names, or else
//! to the one Metadata last named, as clients do), while nodes crash and are cut off.
//!
//! Checked, in Jepsen's words where they apply:
//! - the white-box checks of its partitions' replicas (`replica_watch`);
//! - **lost-write**: every record acknowledged at an offset is at that offset at the end;
//! - **inconsistent-offsets**: the replicas hold the same records below the high
//!   watermark, byte for byte as the leader wrote them;
//! - **duplicate**: no value is in a partition twice (the producers never resend one);
//! - **phantom**: every value in a log was sent to that partition, and none that was refused
//!   outright (NOT_ENOUGH_REPLICAS: nothing written) is there;
//! - **convergence** (liveness): after the heal, each partition has one leader, all three
//!   replicas in its ISR and at its high watermark, and takes writes again.
//!
//! A send that ends in a timeout, a closed connection or NOT_LEADER_OR_FOLLOWER is
//! indefinite: it may or may not be in the log, and either is correct.
//!
//! In most seeds an admin client also moves the partitions' replicas while all this goes on
//! (AlterPartitionReassignments, KIP-455): to two random nodes, to three (another order, or
//! others of five), or cancelled, one request at a time. After the heal it moves every
//! partition back to three nodes, so that convergence asks for three in-sync replicas.
//! A replica a reassignment removed holds nothing, and counts for nothing in the checks.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_core::{ConnId, Offset};
use sluice_runtime_sim::{Nanos, SimDisk, World, MS};

use crate::codec;
use crate::deleter::{Deleter, T_DELETE};

pub const TOPIC: &str = "replicated";
/// The topic's `min.insync.replicas`.
pub const MIN_INSYNC_REPLICAS: usize = 2;
/// Produce v10: NOT_LEADER_OR_FOLLOWER answers name the leader (KIP-951).
const PRODUCE_VERSION: i16 = 10;
/// The topic's replicas (of three or five nodes).
const REPLICAS: usize = 3;
/// The client that creates the topic; producers are the clients after it.
const CREATOR: usize = 1;
/// Timer tokens: creating the topic, and a producer's next send.
pub const T_CREATE: u64 = 16;
pub const T_PRODUCE: u64 = 17;
pub const T_REASSIGN: u64 = 19;
/// The client that reassigns partitions (producers are 2..=4, the commits workload's 8 on).
const REASSIGNER: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    InFlight,
    Acked,
    /// Refused before anything was written (NOT_ENOUGH_REPLICAS).
    Refused,
    /// May or may not have been written.
    Indefinite,
}

struct Producer {
    partition: i32,
    /// The node it sends to; it moves on after an error.
    node: usize,
    conn: Option<ConnId>,
    /// Requests sent and not answered, by correlation id (at most `in_flight_max`).
    in_flight: BTreeMap<i32, Vec<String>>,
    in_flight_max: usize,
    next_value: u64,
    acked_after_heal: bool,
}

pub struct Replicated {
    nodes: usize,
    pub partitions: i32,
    every: Nanos,
    producers: Vec<Producer>,
    creating: Option<(ConnId, i32)>,
    pub created: bool,
    next_cid: i32,
    sent: BTreeMap<String, (i32, Status)>,
    acked: BTreeMap<(i32, Offset), String>,
    pub answers: BTreeMap<i16, u64>,
    pub violations: Vec<String>,
    healed: bool,
    /// How often a reassignment is asked before the heal (none in some seeds).
    reassign_every: Option<Nanos>,
    /// The reassignment in flight: partition, target (None: cancel), connection, correlation id.
    reassigning: Option<(i32, Option<Vec<i32>>, ConnId, i32)>,
    /// Partitions moved back to three nodes since the heal (acknowledged; moved again by a
    /// late request, they are asked again).
    restored: BTreeSet<i32>,
    pub reassign_answers: BTreeMap<i16, u64>,
    reassign_log: Vec<(u64, i32, Option<Vec<i32>>, i16)>,
    /// DeleteRecords, in half the seeds.
    pub deleter: Deleter,
    /// Each partition's leader as the latest Metadata named it (`metadata_watch`).
    pub cached_leaders: BTreeMap<i32, usize>,
}

impl Replicated {
    pub fn new(nodes: usize, rng: &mut ChaCha8Rng) -> Replicated {
        let partitions = rng.gen_range(1..=3);
        let producers = (0..rng.gen_range(1..=3))
            .map(|k| Producer {
                partition: k % partitions,
                node: rng.gen_range(0..nodes),
                conn: None,
                in_flight: BTreeMap::new(),
                in_flight_max: rng.gen_range(1..=4),
                next_value: 0,
                acked_after_heal: false,
            })
            .collect();
        Replicated {
            nodes,
            partitions,
            every: [2u64, 10, 50][rng.gen_range(0..3)] * MS,
            producers,
            creating: None,
            created: false,
            next_cid: 0,
            sent: BTreeMap::new(),
            acked: BTreeMap::new(),
            answers: BTreeMap::new(),
            violations: Vec::new(),
            healed: false,
            reassign_every: [None, Some(300 * MS), Some(1_000 * MS)][rng.gen_range(0..3)],
            reassigning: None,
            restored: BTreeSet::new(),
            reassign_answers: BTreeMap::new(),
            reassign_log: Vec::new(),
            deleter: Deleter::new(rng),
            cached_leaders: BTreeMap::new(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "topic {TOPIC}: {} partitions x 3 replicas, min.insync.replicas 2, {} acks=all producers every {} ms ({:?} in flight), reassignments every {:?} ms",
            self.partitions,
            self.producers.len(),
            self.every / MS,
            self.producers.iter().map(|p| p.in_flight_max).collect::<Vec<_>>(),
            self.reassign_every.map(|e| e / MS)
        ) + ", " + &self.deleter.describe()
    }

    pub fn acked(&self) -> usize {
        self.acked.len()
    }

    fn violation(&mut self, w: &World, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("t={}ms: {what}", w.now() / MS));
        }
    }

    pub fn start(&mut self, w: &mut World) {
        w.set_timer(CREATOR, T_CREATE, 10 * MS);
    }

    pub fn heal(&mut self, w: &mut World) {
        self.healed = true;
        if self.reassign_every.is_some() {
            w.set_timer(REASSIGNER, T_REASSIGN, MS);
        }
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.creating.is_some_and(|(c, _)| c == conn)
            || self.producers.iter().any(|p| p.conn == Some(conn))
            || self.reassigning.as_ref().is_some_and(|r| r.2 == conn)
            || self.deleter.owns(conn)
    }

    /// Asks for the next reassignment through a node that is up: before the heal a random
    /// partition to two nodes, to three, or a cancel; after it, each partition back to three
    /// nodes until that is acknowledged and the registration shows it.
    fn reassign(&mut self, w: &mut World) {
        if self.reassigning.is_some() || !self.created {
            return;
        }
        let up: Vec<usize> = (0..self.nodes).filter(|i| w.is_up(*i)).collect();
        let every = self.reassign_every.unwrap_or(300 * MS);
        let partition = if self.healed {
            // A request given up on before the heal (its connection closed) may still be
            // carried out later, forwarded or parked at the controller: look at what the
            // nodes hold, not only at what was acknowledged.
            let moved = |p: i32| {
                let image = (0..self.nodes).find_map(|i| w.node(i).filter(|n| n.is_serving())?.metadata_view());
                let part =
                    image.and_then(|(_, img)| img.topics.get(TOPIC)?.parts.get(usize::try_from(p).ok()?).cloned());
                // (A reassignment still running is waited for: it may be the last one asked.)
                part.is_none_or(|part| part.replicas.len() != REPLICAS && !part.reassigning())
            };
            match (0..self.partitions).find(|p| !self.restored.contains(p) || moved(*p)) {
                Some(p) => p,
                None => return w.set_timer(REASSIGNER, T_REASSIGN, 500 * MS),
            }
        } else {
            w.workload_rng().gen_range(0..self.partitions)
        };
        let rng = w.workload_rng();
        let mut all: Vec<i32> = (1..=self.nodes as i32).collect();
        for i in (1..all.len()).rev() {
            all.swap(i, rng.gen_range(0..=i));
        }
        let target = match (self.healed, rng.gen_range(0..10)) {
            (true, _) | (false, 0..=3) => Some(all[..REPLICAS].to_vec()),
            (false, 4..=8) => Some(all[..REPLICAS - 1].to_vec()),
            (false, _) => None,
        };
        if up.is_empty() {
            w.set_timer(REASSIGNER, T_REASSIGN, every);
            return;
        }
        let node = up[rng.gen_range(0..up.len())];
        let mut rp = kafka_protocol::messages::alter_partition_reassignments_request::ReassignablePartition::default();
        rp.partition_index = partition;
        rp.replicas = target.as_ref().map(|t| t.iter().map(|b| kafka_protocol::messages::BrokerId(*b)).collect());
        let mut rt = kafka_protocol::messages::alter_partition_reassignments_request::ReassignableTopic::default();
        rt.name = TopicName(StrBytes::from_static_str(TOPIC));
        rt.partitions = vec![rp];
        let mut req = AlterPartitionReassignmentsRequest::default();
        req.timeout_ms = 10_000;
        req.topics = vec![rt];
        self.next_cid += 1;
        let conn = w.connect(REASSIGNER, node);
        let key = ApiKey::AlterPartitionReassignments;
        w.send(conn, codec::frame(key, codec::REASSIGN_VERSION, self.next_cid, &req));
        self.reassigning = Some((partition, target, conn, self.next_cid));
    }

    fn on_reassigned(&mut self, w: &mut World, frame: Bytes) {
        let Some((partition, target, conn, cid)) = self.reassigning.take() else { return };
        w.close(conn);
        let key = ApiKey::AlterPartitionReassignments;
        let code = match codec::decode::<AlterPartitionReassignmentsResponse>(key, codec::REASSIGN_VERSION, frame) {
            Ok((got, r)) if got == cid => {
                let p = r.responses.first().and_then(|t| t.partitions.first()).map_or(-1, |p| p.error_code);
                if r.error_code != 0 {
                    r.error_code
                } else {
                    p
                }
            }
            Ok((got, _)) => {
                self.violation(w, format!("AlterPartitionReassignments answered with id {got}, sent {cid}"));
                -1
            }
            Err(e) => {
                self.violation(w, format!("AlterPartitionReassignments answer does not decode: {e}"));
                -1
            }
        };
        *self.reassign_answers.entry(code).or_default() += 1;
        self.reassign_log.push((w.now() / MS, partition, target.clone(), code));
        if self.healed && code == 0 && target.is_some_and(|t| t.len() == REPLICAS) {
            self.restored.insert(partition);
        }
        self.next_reassignment(w);
    }

    fn next_reassignment(&mut self, w: &mut World) {
        match (self.healed, self.reassign_every) {
            (_, None) => {}
            (true, Some(_)) => w.set_timer(REASSIGNER, T_REASSIGN, 50 * MS),
            (false, Some(e)) => {
                let after = w.workload_rng().gen_range(e / 2..e * 3 / 2);
                w.set_timer(REASSIGNER, T_REASSIGN, after);
            }
        }
    }

    fn create(&mut self, w: &mut World) {
        if self.created || self.creating.is_some() {
            return;
        }
        let node = w.workload_rng().gen_range(0..self.nodes);
        if !w.is_up(node) {
            w.set_timer(CREATOR, T_CREATE, 100 * MS);
            return;
        }
        self.next_cid += 1;
        let conn = w.connect(CREATOR, node);
        let frame =
            codec::create_topic_frame(TOPIC, self.partitions, REPLICAS as i16, MIN_INSYNC_REPLICAS, self.next_cid);
        w.send(conn, frame);
        self.creating = Some((conn, self.next_cid));
    }

    fn on_created(&mut self, w: &mut World, conn: ConnId, frame: Bytes) {
        w.close(conn);
        self.creating = None;
        if codec::topic_created(frame) {
            self.created = true;
            for k in 0..self.producers.len() {
                w.set_timer(CREATOR + 1 + k, T_PRODUCE, self.every);
            }
            self.next_reassignment(w);
            self.deleter.start(w);
        } else {
            w.set_timer(CREATOR, T_CREATE, 100 * MS);
        }
    }

    fn send(&mut self, w: &mut World, k: usize) {
        let healed = self.healed;
        let p = &mut self.producers[k];
        if p.in_flight.len() >= p.in_flight_max || (healed && p.acked_after_heal) {
            return;
        }
        if !w.is_up(p.node) {
            p.node = (p.node + 1) % self.nodes;
            w.set_timer(CREATOR + 1 + k, T_PRODUCE, self.every);
            return;
        }
        let conn = match p.conn {
            Some(c) => c,
            None => {
                let c = w.connect(CREATOR + 1 + k, p.node);
                p.conn = Some(c);
                c
            }
        };
        let n = w.workload_rng().gen_range(1..=4);
        let values: Vec<String> = (0..n).map(|i| format!("p{k}-{}", p.next_value + i)).collect();
        p.next_value += n;
        self.next_cid += 1;
        let records = codec::batch_of(&values, 1_700_000_000_000);
        w.send(conn, codec::produce_frame(TOPIC, p.partition, records, PRODUCE_VERSION, self.next_cid));
        for v in &values {
            self.sent.insert(v.clone(), (p.partition, Status::InFlight));
        }
        p.in_flight.insert(self.next_cid, values);
        if p.in_flight.len() < p.in_flight_max {
            w.set_timer(CREATOR + 1 + k, T_PRODUCE, self.every);
        }
    }

    fn settle(&mut self, values: &[String], status: Status) {
        for v in values {
            if let Some(s) = self.sent.get_mut(v) {
                s.1 = status;
            }
        }
    }

    fn on_produced(&mut self, w: &mut World, k: usize, frame: Bytes) {
        let Some(cid) = codec::correlation_id(&frame) else { return };
        let Some(values) = self.producers[k].in_flight.remove(&cid) else {
            self.violation(w, format!("producer {k}: an answer to request {cid}, which is not in flight"));
            return;
        };
        let partition = self.producers[k].partition;
        let resp = codec::decode::<ProduceResponse>(ApiKey::Produce, PRODUCE_VERSION, frame);
        let pr = match &resp {
            Ok((got, r)) if *got == cid => r.responses.first().and_then(|t| t.partition_responses.first()),
            _ => None,
        };
        let Some(pr) = pr else {
            self.violation(w, format!("producer {k}: an undecodable or mismatched produce answer"));
            return;
        };
        let code = pr.error_code;
        // KIP-951: NOT_LEADER_OR_FOLLOWER names the leader, when the node knows another.
        let hint = usize::try_from(pr.current_leader.leader_id.0 - 1).ok().filter(|n| *n < self.nodes);
        *self.answers.entry(code).or_default() += 1;
        match code {
            0 => {
                for (i, v) in values.iter().enumerate() {
                    let offset = pr.base_offset + i as i64;
                    if let Some(other) = self.acked.insert((partition, offset), v.clone()) {
                        self.violation(
                            w,
                            format!("partition {partition} offset {offset} acknowledged for {other:?} and then {v:?}"),
                        );
                    }
                }
                self.settle(&values, Status::Acked);
                self.producers[k].acked_after_heal |= self.healed;
            }
            19 => self.settle(&values, Status::Refused),
            _ => {
                self.settle(&values, Status::Indefinite);
                let p = &mut self.producers[k];
                // Else the leader Metadata last named, unless that is the node that refused.
                let cached = self.cached_leaders.get(&partition).copied().filter(|n| *n != p.node);
                p.node = hint.or(cached).unwrap_or((p.node + 1) % self.nodes);
                if let Some(c) = p.conn.take() {
                    w.close(c);
                }
                // What else was in flight on that connection goes unanswered.
                let rest: Vec<String> = std::mem::take(&mut p.in_flight).into_values().flatten().collect();
                self.settle(&rest, Status::Indefinite);
            }
        }
        w.set_timer(CREATOR + 1 + k, T_PRODUCE, self.every);
    }

    pub fn on_response(&mut self, w: &mut World, conn: ConnId, frame: Bytes) {
        if self.creating.is_some_and(|(c, _)| c == conn) {
            return self.on_created(w, conn, frame);
        }
        if self.reassigning.as_ref().is_some_and(|r| r.2 == conn) {
            return self.on_reassigned(w, frame);
        }
        if self.deleter.owns(conn) {
            if let Some(v) = self.deleter.on_response(w, self.nodes, frame) {
                self.violation(w, v);
            }
            return;
        }
        if let Some(k) = self.producers.iter().position(|p| p.conn == Some(conn)) {
            self.on_produced(w, k, frame);
        }
    }

    pub fn on_closed(&mut self, w: &mut World, conn: ConnId) {
        if self.deleter.owns(conn) {
            return self.deleter.on_closed(self.nodes);
        }
        if self.reassigning.as_ref().is_some_and(|r| r.2 == conn) {
            self.reassigning = None; // taken or not: the next one is computed afresh
            self.next_reassignment(w);
            return;
        }
        if self.creating.is_some_and(|(c, _)| c == conn) {
            self.creating = None;
            w.set_timer(CREATOR, T_CREATE, 100 * MS);
        }
        if let Some(k) = self.producers.iter().position(|p| p.conn == Some(conn)) {
            let p = &mut self.producers[k];
            p.conn = None;
            let cached = self.cached_leaders.get(&p.partition).copied().filter(|n| *n != p.node);
            p.node = cached.unwrap_or((p.node + 1) % self.nodes);
            let values: Vec<String> = std::mem::take(&mut p.in_flight).into_values().flatten().collect();
            self.settle(&values, Status::Indefinite);
            w.set_timer(CREATOR + 1 + k, T_PRODUCE, self.every);
        }
    }

    pub fn on_timer(&mut self, w: &mut World, client: usize, token: u64) {
        match token {
            T_CREATE => self.create(w),
            T_REASSIGN => self.reassign(w),
            T_DELETE => {
                let mut ends: BTreeMap<i32, Offset> = BTreeMap::new();
                for &(p, o) in self.acked.keys() {
                    ends.insert(p, o.max(ends.get(&p).copied().unwrap_or(0)));
                }
                self.deleter.on_timer(w, self.nodes, &ends, self.healed);
            }
            T_PRODUCE if client > CREATOR => self.send(w, client - CREATOR - 1),
            _ => {}
        }
    }

    /// What keeps the replicated topic from having settled after the heal, if anything: every
    /// producer acknowledged since, and every partition has one leader, a full ISR and replicas
    /// at its high watermark.
    pub fn unsettled(&self, w: &World) -> Option<String> {
        if !self.created {
            return Some("the replicated topic is not created".into());
        }
        if !self.producers.iter().all(|p| p.acked_after_heal) {
            return Some("a producer has no acknowledgement since the heal".into());
        }
        if self.reassign_every.is_some() && self.restored.len() < self.partitions as usize {
            return Some(format!(
                "a partition is not moved back to three nodes since the heal (moved back: {:?}; in flight: {:?})",
                self.restored,
                self.reassigning.as_ref().map(|r| (r.0, r.1.clone()))
            ));
        }
        (0..self.partitions).find_map(|p| {
            let views: Vec<_> = (0..self.nodes).filter_map(|i| w.node(i)?.replica_view(TOPIC, p)).collect();
            let hosted: Vec<_> = views.iter().filter(|v| v.hosted).collect();
            let leaders: Vec<_> = hosted.iter().filter(|v| v.leads).collect();
            let settled = views.len() == self.nodes
                && hosted.len() == REPLICAS
                && leaders.len() == 1
                && leaders[0].isr.len() == REPLICAS
                && hosted.iter().all(|v| v.online && v.log_end == leaders[0].high_watermark);
            (!settled).then(|| format!("partition {p}: {views:?}; reassignments {:?}", self.reassign_log))
        })
    }

    /// At the end: the replicas agree, and hold every acknowledged record where it was
    /// acknowledged, no value twice and none that was never sent.
    pub fn final_checks(&mut self, w: &World) {
        if !self.created {
            return;
        }
        for v in self.deleter.final_checks(w, self.nodes) {
            self.violation(w, v);
        }
        for p in 0..self.partitions {
            let leader =
                (0..self.nodes).find(|i| w.node(*i).and_then(|n| n.replica_view(TOPIC, p)).is_some_and(|v| v.leads));
            let Some(leader) = leader else {
                self.violation(w, format!("partition {p} has no leader at the end"));
                continue;
            };
            let hw = w.node(leader).and_then(|n| n.replica_view(TOPIC, p)).map_or(0, |v| v.high_watermark);
            let logs: Vec<Result<Vec<(i64, String)>, String>> =
                (0..self.nodes).map(|i| read_log(w.disk(i), &format!("{TOPIC}-{p}"))).collect();
            let theirs = match &logs[leader] {
                Ok(l) => l.clone(),
                Err(e) => {
                    self.violation(w, format!("partition {p}: the leader's log does not read back: {e}"));
                    continue;
                }
            };
            self.check_consistent(w, p, leader, hw, &logs, &theirs);
            let by_offset: BTreeMap<i64, &String> = theirs.iter().map(|(o, v)| (*o, v)).collect();
            let lost: Vec<(i64, String)> = self
                .acked
                .iter()
                .filter(|((q, o), v)| *q == p && *o >= self.deleter.floor(p) && by_offset.get(o) != Some(v))
                .map(|((_, o), v)| (*o, v.clone()))
                .collect();
            if let Some((o, v)) = lost.first() {
                let msg = format!(
                    "lost-write: partition {p}: {} acknowledged records are not where they were acknowledged (first: {v:?} at offset {o}, now {:?})",
                    lost.len(),
                    by_offset.get(o)
                );
                self.violation(w, msg);
            }
            let mut seen = BTreeMap::new();
            for (o, v) in &theirs {
                if let Some(first) = seen.insert(v.clone(), *o) {
                    self.violation(w, format!("duplicate: partition {p}: {v:?} at offsets {first} and {o}"));
                }
                match self.sent.get(v) {
                    Some((q, s)) if *q == p && *s != Status::Refused => {}
                    Some((_, Status::Refused)) => self.violation(
                        w,
                        format!("phantom: partition {p}: {v:?} at offset {o} was refused with NOT_ENOUGH_REPLICAS"),
                    ),
                    _ => self.violation(w, format!("phantom: partition {p}: {v:?} at offset {o} was never sent there")),
                }
            }
        }
    }
}

impl Replicated {
    /// The records of partition `p` at the end, as its leader holds them (`None` without a
    /// leader or a log that reads back; `final_checks` says so).
    pub fn final_log(&self, w: &World, p: i32) -> Option<Vec<(i64, String)>> {
        let leader =
            (0..self.nodes).find(|i| w.node(*i).and_then(|n| n.replica_view(TOPIC, p)).is_some_and(|v| v.leads))?;
        read_log(w.disk(leader), &format!("{TOPIC}-{p}")).ok()
    }

    /// Below this offset of partition `p` records may be deleted (DeleteRecords was asked).
    pub fn deleted_below(&self, p: i32) -> Offset {
        self.deleter.floor(p)
    }

    /// The offsets acknowledged in partition `p`.
    pub fn acked_in(&self, p: i32) -> impl Iterator<Item = Offset> + '_ {
        self.acked.keys().filter(move |(q, _)| *q == p).map(|(_, o)| *o)
    }

    /// inconsistent-offsets: every node holding a replica of partition `p` has the records
    /// the leader has below the high watermark, at the same offsets.
    fn check_consistent(
        &mut self,
        w: &World,
        p: i32,
        leader: usize,
        hw: Offset,
        logs: &[Result<Vec<(i64, String)>, String>],
        theirs: &[(i64, String)],
    ) {
        // Below what DeleteRecords was asked, replicas may keep more or less (whole segments).
        let floor = self.deleter.floor(p);
        let below =
            |l: &[(i64, String)]| l.iter().filter(|(o, _)| (floor..hw).contains(o)).cloned().collect::<Vec<_>>();
        for (i, log) in logs.iter().enumerate() {
            let hosted = w.node(i).and_then(|n| n.replica_view(TOPIC, p)).is_none_or(|v| v.hosted);
            if !hosted {
                continue; // not a replica now (the convergence check says why)
            }
            match log {
                Ok(l) if below(l) == below(theirs) => {}
                Ok(l) => {
                    let at = below(l).iter().zip(below(theirs)).position(|(a, b)| *a != b);
                    let msg = format!(
                        "inconsistent-offsets: partition {p}: node {} and the leader (node {}) differ below the high watermark {hw} (first at record {at:?}; {} and {} records)",
                        i + 1,
                        leader + 1,
                        below(l).len(),
                        below(theirs).len()
                    );
                    self.violation(w, msg);
                }
                Err(e) => self.violation(w, format!("partition {p}: node {}'s log does not read back: {e}", i + 1)),
            }
        }
    }
}

/// The records of a partition directory's segments, in offset order.
fn read_log(disk: &SimDisk, dir: &str) -> Result<Vec<(i64, String)>, String> {
    let mut out = Vec::new();
    for f in disk.list_files(dir).iter().filter(|f| f.ends_with(".log")) {
        let bytes = disk.read_file(f).unwrap_or_default();
        out.extend(codec::records(bytes)?);
    }
    Ok(out)
}
