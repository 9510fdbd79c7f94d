//! The `cluster` scenario's transactions: transactional producers (as in the single-node
//! scenario, [`TxnProducer`]) writing to a topic with three replicas and
//! `min.insync.replicas=2`, each request sent to the transaction's coordinator, the offsets
//! group's coordinator or the partition's leader, while nodes crash, stop, stall and are cut
//! off, so coordinators and leaders move in the middle of transactions. Producers also stall
//! past their transaction timeout, so coordinators abort their transactions and fence them.
//! In three of four such seeds every EndTxn also arms a fault: the first node seen asking
//! another broker for a marker is clogged for longer than a broker's session, so another
//! broker takes its transactions over while its own marker requests, retried meanwhile, are
//! held and delivered late (a zombie coordinator's markers).
//!
//! Checked at the end, on each partition's log as its leader holds it, read as a
//! read_committed consumer reads it (a transactional batch is visible if the first marker of
//! its producer after it commits):
//! - **aborted-read**: no record of a transaction that aborted (by its producer, or by the
//!   coordinator's timeout) is visible;
//! - **all-or-nothing**: every record of a committed transaction is visible, on every
//!   partition, and a transaction whose end its producer never learnt is visible whole or
//!   not at all;
//! - **lost-write**: every acknowledged transactional record is at the offset it was
//!   acknowledged at;
//! - **hanging**: no transaction is left open (a batch with no marker after it);
//! - **duplicate** and **phantom**: no value twice, none that was never sent;
//! - **convergence** (liveness): after the heal, each producer ends a transaction it began
//!   after the heal.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_core::ConnId;
use sluice_runtime_sim::{Nanos, SimDisk, World, MS};

use crate::checker::Checker;
use crate::codec;
use crate::txn::TxnProducer;

pub const TOPIC: &str = "txns";
/// Timer tokens: creating the topic, a producer's next step, a stall.
pub const T_TXN_CREATE: u64 = 21;
pub const T_TXN: u64 = 22;
pub const T_TXN_STALL: u64 = 23;
/// The client that creates the topic; producers are the clients after it.
const CREATOR: usize = 12;
/// Values per transaction and partition, at most.
const BATCH_MAX: usize = 4;

pub struct ClusterTxns {
    nodes: usize,
    partitions: i32,
    every: Nanos,
    stall_every: Option<Nanos>,
    /// Whether coordinators are clogged after EndTxn, and whether one is to be now.
    coordinator_clogs: bool,
    clog_armed: bool,
    /// A broker's session timeout.
    session: Nanos,
    rng: ChaCha8Rng,
    producers: Vec<TxnProducer>,
    creating: Option<ConnId>,
    created: bool,
    next_cid: i32,
    checker: Checker,
    healed: bool,
    /// Per producer, the transactions it had begun when the heal came.
    begun_at_heal: Vec<u64>,
    pub violations: Vec<String>,
}

impl ClusterTxns {
    /// Transactional producers in two seeds of three (drawn from `rng`, the workload's own).
    pub fn new(nodes: usize, session: Nanos, rng: &mut ChaCha8Rng) -> ClusterTxns {
        let n = [0usize, 1, 2][rng.gen_range(0..3)];
        let partitions = rng.gen_range(1..=3);
        let producers = (0..n)
            .map(|k| TxnProducer::in_cluster(CREATOR + 1 + k, nodes, TOPIC, rng.gen_range(0..nodes), rng.gen()))
            .collect();
        ClusterTxns {
            nodes,
            partitions,
            every: [5u64, 20][rng.gen_range(0..2)] * MS,
            stall_every: [None, Some(3_000 * MS), Some(6_000 * MS)][rng.gen_range(0..3)],
            coordinator_clogs: rng.gen_bool(0.75),
            clog_armed: false,
            session,
            rng: ChaCha8Rng::seed_from_u64(rng.gen()),
            producers,
            creating: None,
            created: false,
            next_cid: 0,
            checker: Checker::default(),
            healed: false,
            begun_at_heal: Vec::new(),
            violations: Vec::new(),
        }
    }

    pub fn describe(&self) -> String {
        if self.producers.is_empty() {
            return "no transactional producers".into();
        }
        format!(
            "{} transactional producers (transaction versions {:?}) on {TOPIC} ({} partitions x 3 replicas) every {} ms, stalls every {:?} ms, coordinators clogged after EndTxn: {}",
            self.producers.len(),
            self.producers.iter().map(|p| if p.tv2 { 2 } else { 1 }).collect::<Vec<_>>(),
            self.partitions,
            self.every / MS,
            self.stall_every.map(|e| e / MS),
            self.coordinator_clogs
        )
    }

    /// The partitions this workload writes, with their `min.insync.replicas`: its topic's,
    /// and its coordinators' (each transactional id's, and the offsets group's).
    pub fn partitions_written(&self) -> Vec<(&'static str, i32, usize)> {
        use sluice_core::node::{coordinator_partition, OFFSETS_TOPIC, TXN_TOPIC};
        if self.producers.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<_> = (0..self.partitions).map(|p| (TOPIC, p, 2)).collect();
        for p in &self.producers {
            out.push((TXN_TOPIC, coordinator_partition(TXN_TOPIC, p.transactional_id()), 2));
        }
        out.push((OFFSETS_TOPIC, coordinator_partition(OFFSETS_TOPIC, crate::txn::OFFSETS_GROUP), 1));
        out
    }

    /// Transactions committed and aborted.
    pub fn ended(&self) -> (u64, u64) {
        (self.checker.txns_committed, self.checker.txns_aborted)
    }

    pub fn start(&mut self, w: &mut World) {
        if !self.producers.is_empty() {
            w.set_timer(CREATOR, T_TXN_CREATE, 10 * MS);
        }
    }

    pub fn heal(&mut self) {
        self.healed = true;
        self.begun_at_heal = self.producers.iter().map(|p| p.begun()).collect();
        for p in &mut self.producers {
            p.heal();
        }
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.creating == Some(conn) || self.producers.iter().any(|p| p.conn == Some(conn))
    }

    /// What keeps the transactions from having settled after the heal, if anything: each
    /// producer has begun and ended a transaction since, and each partition has a leader.
    pub fn unsettled(&self, w: &World) -> Option<String> {
        if self.producers.is_empty() {
            return None;
        }
        if !self.created {
            return Some(format!("topic {TOPIC} is not created"));
        }
        let leads =
            |p: i32| (0..self.nodes).any(|i| w.node(i).and_then(|n| n.replica_view(TOPIC, p)).is_some_and(|v| v.leads));
        if let Some(p) = (0..self.partitions).find(|p| !leads(*p)) {
            return Some(format!("{TOPIC}-{p} has no leader"));
        }
        let k = (0..self.producers.len()).find(|k| !self.settled(*k))?;
        Some(format!("{} has not ended a transaction begun since the heal", self.producers[k].describe()))
    }

    fn settled(&self, k: usize) -> bool {
        let p = &self.producers[k];
        self.healed && p.begun() > self.begun_at_heal[k] && p.is_idle()
    }

    fn create(&mut self, w: &mut World) {
        let node = self.rng.gen_range(0..self.nodes);
        self.next_cid += 1;
        let conn = w.connect(CREATOR, node);
        w.send(conn, codec::create_topic_frame(TOPIC, self.partitions, 3, 2, self.next_cid));
        self.creating = Some(conn);
    }

    fn on_created(&mut self, w: &mut World, conn: ConnId, frame: Bytes) {
        w.close(conn);
        self.creating = None;
        if !codec::topic_created(frame) {
            w.set_timer(CREATOR, T_TXN_CREATE, 100 * MS);
            return;
        }
        self.created = true;
        for p in &self.producers {
            w.set_timer(p.idx, T_TXN, self.every);
        }
        if let Some(e) = self.stall_every {
            w.set_timer(CREATOR, T_TXN_STALL, e);
        }
    }

    fn pump(&mut self, w: &mut World, k: usize) {
        // New transactions until the heal, then one more each.
        let new_txns = !self.healed || self.producers[k].begun() == self.begun_at_heal[k];
        let mut opened = Vec::new();
        let ends = self.producers[k].end_sends;
        self.producers[k].pump(w, &mut self.checker, self.partitions, BATCH_MAX, new_txns, &mut opened);
        // Now and then, the coordinator of an EndTxn just sent is to stall once its markers
        // are on their way (`observe`).
        if self.producers[k].end_sends > ends && self.coordinator_clogs && !self.healed {
            self.clog_armed = true;
        }
    }

    /// After every event: an armed stall hits the first node found asking other brokers for
    /// markers.
    pub fn observe(&mut self, w: &mut World) {
        if !self.clog_armed || self.healed {
            return;
        }
        if let Some(node) = (0..self.nodes).find(|i| w.node(*i).is_some_and(|n| n.markers_asked() > 0)) {
            self.clog_armed = false;
            // Longer than a broker's session, so that another takes its transactions over.
            let until = w.now() + self.session + self.rng.gen_range(1_000..4_000) * MS;
            w.clog(node, until);
        }
    }

    fn producer_of(&self, client: usize) -> Option<usize> {
        self.producers.iter().position(|p| p.idx == client)
    }

    pub fn on_timer(&mut self, w: &mut World, client: usize, token: u64) {
        match token {
            T_TXN_CREATE => self.create(w),
            T_TXN_STALL if !self.healed => {
                let k = self.rng.gen_range(0..self.producers.len());
                // Past the transaction timeout (1 s) and the coordinator's next check of it
                // (every 200 ms).
                let until = w.now() + self.rng.gen_range(1_100..1_600) * MS;
                self.producers[k].stall(until);
                let e = self.stall_every.expect("stalls planned");
                w.set_timer(CREATOR, T_TXN_STALL, self.rng.gen_range(e / 2..e * 3 / 2));
            }
            T_TXN => {
                if let Some(k) = self.producer_of(client) {
                    self.pump(w, k);
                    w.set_timer(client, T_TXN, self.every);
                }
            }
            _ => {}
        }
    }

    pub fn on_response(&mut self, w: &mut World, conn: ConnId, frame: Bytes) {
        if self.creating == Some(conn) {
            return self.on_created(w, conn, frame);
        }
        if let Some(k) = self.producers.iter().position(|p| p.conn == Some(conn)) {
            self.producers[k].on_response(w, &mut self.checker, frame);
            // A request to send again waits for the next tick (clients back off too).
            if !self.producers[k].retrying {
                self.pump(w, k);
            }
        }
    }

    pub fn on_closed(&mut self, w: &mut World, conn: ConnId) {
        if self.creating == Some(conn) {
            self.creating = None;
            w.set_timer(CREATOR, T_TXN_CREATE, 100 * MS);
        }
        for p in &mut self.producers {
            p.on_closed(conn);
        }
    }

    /// Reads each partition's log from its leader as a read_committed consumer would, and
    /// checks it against what the producers know.
    pub fn final_checks(&mut self, w: &World) {
        if !self.created {
            return;
        }
        let at = w.now();
        let reader = 0;
        self.checker.add_committed_reader(reader);
        for p in 0..self.partitions {
            let leader =
                (0..self.nodes).find(|i| w.node(*i).and_then(|n| n.replica_view(TOPIC, p)).is_some_and(|v| v.leads));
            let Some(leader) = leader else {
                self.checker.on_error(at, format!("{TOPIC}-{p} has no leader at the end"));
                continue;
            };
            match read_committed(w.disk(leader), &format!("{TOPIC}-{p}")) {
                Ok((all, visible, open)) => {
                    let mut first_at = BTreeMap::new();
                    for (offset, value) in &all {
                        // (The log as it stands at the end, all of it settled: no high
                        // watermark to stay below.)
                        self.checker.on_consume(at, reader, p, *offset, value, i64::MAX);
                        if let Some(first) = first_at.insert(value, *offset) {
                            self.checker.on_error(
                                at,
                                format!("duplicate: {TOPIC}-{p} has {value:?} at offsets {first} and {offset}"),
                            );
                        }
                    }
                    for value in &visible {
                        self.checker.on_committed_read(at, reader, value);
                    }
                    if let Some((producer_id, first)) = open.first() {
                        let msg = format!("hanging: {TOPIC}-{p} has {} transactions left open at the end (producer id {producer_id} from offset {first})", open.len());
                        self.checker.on_error(at, msg);
                    }
                }
                Err(e) => self.checker.on_error(at, format!("{TOPIC}-{p}: the leader's log does not read back: {e}")),
            }
        }
        self.checker.finish(at);
        self.checker.check_undecided_whole(at, reader);
        self.violations.extend(self.checker.violations.iter().map(|v| format!("transactions: {v}")));
    }
}

/// What a partition directory's log holds: every record (offset, value), the values a
/// read_committed consumer returns, in order, and the transactions left open (producer id,
/// first offset).
type Committed = (Vec<(i64, String)>, Vec<String>, Vec<(i64, i64)>);

fn read_committed(disk: &SimDisk, dir: &str) -> Result<Committed, String> {
    let (mut all, mut visible) = (Vec::new(), Vec::new());
    // Per producer id: the first offset and values of its open transaction.
    let mut open: BTreeMap<i64, (i64, Vec<String>)> = BTreeMap::new();
    for f in disk.list_files(dir).iter().filter(|f| f.ends_with(".log")) {
        for b in codec::batches(&disk.read_file(f).unwrap_or_default())? {
            let pid = b.header.producer_id;
            if let Some(commit) = b.marker {
                if let Some((_, values)) = open.remove(&pid) {
                    if commit {
                        visible.extend(values);
                    }
                }
                continue;
            }
            all.extend(b.records.iter().cloned());
            let values = b.records.into_iter().map(|(_, v)| v);
            if b.header.is_transactional() {
                open.entry(pid).or_insert((b.header.base_offset, Vec::new())).1.extend(values);
            } else {
                visible.extend(values);
            }
        }
    }
    let open = open.into_iter().map(|(pid, (first, _))| (pid, first)).collect::<BTreeSet<_>>().into_iter().collect();
    Ok((all, visible, open))
}
