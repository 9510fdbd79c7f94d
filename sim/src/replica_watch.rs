//! White-box checks of replicated partitions, after every event of the `cluster` scenario, for
//! every partition a workload writes: the replicated topic's, the transactional producers'
//! topic's, and the coordinators' partitions of `__transaction_state` and `__consumer_offsets`
//! (a coordinator answers a request once its record is below the high watermark: a high
//! watermark past what the replicas hold loses acknowledged coordinator state just as it
//! loses records).
//!
//! - **one leader per epoch**: two nodes never lead a partition in the same leader epoch;
//! - **high watermark durable**: a leader's high watermark is below the durable end of every
//!   member of its ISR, and of at least `min.insync.replicas` replicas (a node that is down
//!   counts with the durable end it last had);
//! - **high watermark kept**: a replica's high watermark never goes back while it lives, nor
//!   past its log end (what was committed there is never cut away).
//!
//! A replica a reassignment removed holds nothing, and counts for nothing in the checks.

use std::collections::BTreeMap;

use sluice_core::node::ReplicaView;
use sluice_core::Offset;
use sluice_runtime_sim::World;

/// A watched partition: topic, partition and its `min.insync.replicas`.
struct Watched {
    topic: String,
    partition: i32,
    min_isr: usize,
}

/// What the checks remember; partitions are named by their index in `watched`.
#[derive(Default)]
pub struct ReplicaWatch {
    nodes: usize,
    watched: Vec<Watched>,
    /// Which node led each (partition, leader epoch).
    leaders: BTreeMap<(usize, i32), usize>,
    /// Per (node, partition): the durable end last seen (kept while the node is down: its
    /// disk keeps what was synced), and the high watermark of this incarnation (forgotten
    /// when the node goes down).
    durable: BTreeMap<(usize, usize), Offset>,
    high_watermarks: BTreeMap<(usize, usize), Offset>,
    /// (node, partition) whose copy a reassignment removed (or replaced), with the latest
    /// leader epoch seen then: a leader of that epoch or older that has not yet applied the
    /// removal still lists it in the ISR (a removal moves the leader epoch).
    fresh_copy: BTreeMap<(usize, usize), i32>,
    /// Per partition, the largest leader epoch any replica has shown.
    latest_epoch: BTreeMap<usize, i32>,
    /// The copy each (node, partition) showed last.
    copies: BTreeMap<(usize, usize), u64>,
}

impl ReplicaWatch {
    pub fn new(nodes: usize) -> ReplicaWatch {
        ReplicaWatch { nodes, ..ReplicaWatch::default() }
    }

    /// Checks `topic`'s `partition` from now on (once).
    pub fn watch(&mut self, topic: &str, partition: i32, min_isr: usize) {
        if !self.watched.iter().any(|w| w.topic == topic && w.partition == partition) {
            self.watched.push(Watched { topic: topic.to_string(), partition, min_isr });
        }
    }

    /// After every event: the violations it shows.
    pub fn observe(&mut self, w: &World) -> Vec<String> {
        let mut found = Vec::new();
        // Each leader's view, checked once every replica's durable end is up to date.
        let mut leading = Vec::new();
        for i in 0..self.nodes {
            let Some(n) = w.node(i).filter(|n| n.is_serving()) else {
                // Down (or recovering, after a restart): a new incarnation comes.
                self.high_watermarks.retain(|(node, _), _| *node != i);
                continue;
            };
            for (k, wp) in self.watched.iter().enumerate() {
                let view = n.replica_view(&wp.topic, wp.partition);
                let moved = view.as_ref().is_some_and(|v| !v.hosted)
                    || view.as_ref().is_some_and(|v| self.copies.insert((i, k), v.copy).is_some_and(|c| c != v.copy));
                if moved {
                    // Moved away (its copy is gone), or away and back within one event (a new,
                    // empty copy). Leaders up to the latest leader epoch seen may still list
                    // it in their ISR, from before; later ones must not, unless it rejoined.
                    self.durable.remove(&(i, k));
                    self.high_watermarks.remove(&(i, k));
                    let latest = self.latest_epoch.get(&k).copied().unwrap_or(0);
                    self.fresh_copy.insert((i, k), latest);
                }
                let Some(v) = view.filter(|v| v.online) else { continue };
                let name = || format!("{}-{}", wp.topic, wp.partition);
                let latest = self.latest_epoch.entry(k).or_default();
                *latest = (*latest).max(v.leader_epoch);
                self.durable.insert((i, k), v.durable_end);
                let was = self.high_watermarks.insert((i, k), v.high_watermark).unwrap_or(0);
                if v.high_watermark < was || v.high_watermark > v.log_end {
                    let (hw, end) = (v.high_watermark, v.log_end);
                    found.push(format!(
                        "node {} partition {}: high watermark {hw} (was {was}), log end {end}",
                        i + 1,
                        name()
                    ));
                }
                if !v.leads {
                    continue;
                }
                let leader_epoch = v.leader_epoch;
                if v.high_watermark > 0 {
                    leading.push((i, k, v));
                }
                match self.leaders.get(&(k, leader_epoch)) {
                    None => {
                        self.leaders.insert((k, leader_epoch), i);
                    }
                    Some(&other) if other != i => {
                        let (a, b, e) = (other + 1, i + 1, leader_epoch);
                        found.push(format!("nodes {a} and {b} both lead partition {} in leader epoch {e}", name()));
                    }
                    Some(_) => {}
                }
            }
        }
        for (i, k, v) in leading {
            self.check_high_watermark_durable(i, k, &v, &mut found);
        }
        found
    }

    /// A leader's high watermark is durable on each member of its ISR and on at least
    /// `min.insync.replicas` replicas.
    fn check_high_watermark_durable(&self, i: usize, k: usize, v: &ReplicaView, found: &mut Vec<String>) {
        let wp = &self.watched[k];
        let durable = |r: usize| self.durable.get(&(r, k)).copied().unwrap_or(0);
        let short: Vec<i32> = v
            .isr
            .iter()
            .copied()
            .filter(|id| {
                usize::try_from(id - 1).is_ok_and(|r| {
                    let stale = self.fresh_copy.get(&(r, k)).is_some_and(|e| v.leader_epoch <= *e);
                    durable(r) < v.high_watermark && !stale
                })
            })
            .collect();
        let holding = (0..self.nodes).filter(|&r| durable(r) >= v.high_watermark).count();
        if !short.is_empty() || holding < wp.min_isr {
            let ends: Vec<Offset> = (0..self.nodes).map(durable).collect();
            found.push(format!(
                "node {} leads partition {}-{} with high watermark {} beyond the durable ends of ISR members {short:?} (ISR {:?}; durable ends by node {ends:?}; {holding} replicas hold it)",
                i + 1,
                wp.topic,
                wp.partition,
                v.high_watermark,
                v.isr
            ));
        }
    }
}
