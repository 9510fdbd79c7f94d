//! The `cluster` scenario's Metadata client: every so often it asks a node that is up for
//! Metadata (every topic), as clients refresh theirs, and checks each answer:
//! - **metadata-epoch-kept**: a broker never answers a partition with a lower leader epoch
//!   than it answered before, restarts included (a client that keeps the highest epoch it has
//!   seen, as KIP-320's do, would be stuck on a leader that is gone; one that does not would
//!   go back to it);
//! - **fenced-broker-hidden**: an answer names no broker, as a broker or as a leader, that was
//!   fenced (or unregistered) in the answering node's image from before the request was sent
//!   until the answer came (the answering node itself aside: it is plainly up).
//!
//! The producers of the replicated workload use what it learns to find a partition's leader
//! after an error that does not name one (`leader_of`), as a client's metadata cache does.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};
use rand::Rng;
use sluice_core::Offset;
use sluice_runtime_sim::{Nanos, World, MS};

use crate::codec;

pub const T_METADATA: u64 = 24;
const CLIENT: usize = 40;
const VERSION: i16 = 12;

pub struct MetadataWatch {
    nodes: usize,
    every: Nanos,
    /// The request in flight: its node, connection, correlation id and when it was sent.
    asking: Option<(usize, sluice_core::ConnId, i32, Nanos)>,
    next_cid: i32,
    /// Per node, topic id and partition: the highest leader epoch it answered.
    epochs: BTreeMap<(usize, [u8; 16], i32), i32>,
    /// Per node: since when each broker has been fenced or unregistered in its image, and the
    /// applied offset that was last looked at.
    fenced_since: Vec<BTreeMap<i32, Nanos>>,
    applied: Vec<Option<Offset>>,
    /// Per topic name and partition: the leader (node index) of the highest epoch seen.
    leaders: BTreeMap<(String, i32), (i32, usize)>,
    pub answers: u64,
    pub violations: Vec<String>,
}

impl MetadataWatch {
    pub fn new(nodes: usize, every: Nanos) -> MetadataWatch {
        MetadataWatch {
            nodes,
            every,
            asking: None,
            next_cid: 0,
            epochs: BTreeMap::new(),
            fenced_since: vec![BTreeMap::new(); nodes],
            applied: vec![None; nodes],
            leaders: BTreeMap::new(),
            answers: 0,
            violations: Vec::new(),
        }
    }

    pub fn start(&mut self, w: &mut World) {
        w.set_timer(CLIENT, T_METADATA, self.every);
    }

    pub fn owns(&self, conn: sluice_core::ConnId) -> bool {
        self.asking.is_some_and(|a| a.1 == conn)
    }

    /// The leader of a partition as the answers with the highest leader epoch named it.
    pub fn leader_of(&self, topic: &str, partition: i32) -> Option<usize> {
        self.leaders.get(&(topic.to_string(), partition)).map(|(_, n)| *n)
    }

    fn violation(&mut self, w: &World, what: String) {
        if self.violations.len() < 10 {
            self.violations.push(format!("t={}ms: {what}", w.now() / MS));
        }
    }

    /// After every event: brokers fenced in each node's image, and since when.
    pub fn observe(&mut self, w: &World) {
        for i in 0..self.nodes {
            let view = w.node(i).and_then(|n| n.metadata_view());
            let applied = view.map(|(a, _)| a);
            if applied == self.applied[i] {
                continue;
            }
            self.applied[i] = applied;
            let Some((_, image)) = view else {
                self.fenced_since[i].clear();
                continue;
            };
            for id in 1..=self.nodes as i32 {
                if image.brokers.get(&id).is_none_or(|b| b.fenced) {
                    self.fenced_since[i].entry(id).or_insert(w.now());
                } else {
                    self.fenced_since[i].remove(&id);
                }
            }
        }
    }

    pub fn on_timer(&mut self, w: &mut World) {
        if self.asking.is_none() {
            let node = w.workload_rng().gen_range(0..self.nodes);
            self.next_cid += 1;
            let conn = w.connect(CLIENT, node);
            let mut req = MetadataRequest::default();
            req.topics = None;
            w.send(conn, codec::frame(ApiKey::Metadata, VERSION, self.next_cid, &req));
            self.asking = Some((node, conn, self.next_cid, w.now()));
        }
        w.set_timer(CLIENT, T_METADATA, self.every);
    }

    pub fn on_closed(&mut self) {
        self.asking = None;
    }

    pub fn on_response(&mut self, w: &mut World, frame: Bytes) {
        let Some((node, conn, cid, sent)) = self.asking.take() else { return };
        w.close(conn);
        let resp = match codec::decode::<MetadataResponse>(ApiKey::Metadata, VERSION, frame) {
            Ok((got, r)) if got == cid => r,
            Ok((got, _)) => return self.violation(w, format!("Metadata answered with id {got}, sent {cid}")),
            Err(e) => return self.violation(w, format!("Metadata answer does not decode: {e}")),
        };
        self.answers += 1;
        let me = node as i32 + 1;
        let fenced_before = |id: i32| self.fenced_since[node].get(&id).copied().filter(|t| *t <= sent);
        let mut found = Vec::new();
        for b in resp.brokers.iter().map(|b| b.node_id.0).filter(|id| *id != me) {
            if let Some(t) = fenced_before(b) {
                found
                    .push(format!("node {me} listed broker {b} in Metadata, fenced in its image since t={}ms", t / MS));
            }
        }
        for t in &resp.topics {
            let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            for p in &t.partitions {
                let leader = p.leader_id.0;
                if let Some(at) = fenced_before(leader).filter(|_| leader != me) {
                    found.push(format!(
                        "node {me} named broker {leader} leader of {name}-{} in Metadata, fenced in its image since t={}ms",
                        p.partition_index,
                        at / MS
                    ));
                }
                let key = (node, *t.topic_id.as_bytes(), p.partition_index);
                let before = self.epochs.insert(key, p.leader_epoch).unwrap_or(-1);
                if p.leader_epoch < before {
                    self.epochs.insert(key, before);
                    found.push(format!(
                        "node {me} answered {name}-{} with leader epoch {}, after {before}",
                        p.partition_index, p.leader_epoch
                    ));
                }
                let known = self.leaders.get(&(name.clone(), p.partition_index)).map_or(-1, |l| l.0);
                if p.error_code == 0 && leader > 0 && p.leader_epoch >= known {
                    let entry = (p.leader_epoch, leader as usize - 1);
                    self.leaders.insert((name.clone(), p.partition_index), entry);
                }
            }
        }
        for f in found {
            self.violation(w, f);
        }
    }
}
