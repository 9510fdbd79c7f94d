//! A deterministic event loop for the metadata quorum on its own: N `Quorum` machines over a
//! simulated network and simulated stores, on one simulated timeline.
//!
//! - Network: every message is encoded with postcard and decoded at the other end (the wire
//!   format is exercised); each copy gets its own latency, so messages reorder; a message may
//!   be lost or duplicated; a cut link drops what is sent over it.
//! - Store: a node's quorum-state and log writes reach the durable image only when a sync
//!   issued after them completes. A crash keeps, per file, a random prefix of the unsynced
//!   writes (the last kept append possibly torn to a prefix of its entries) and restarts the
//!   node from the durable image after a downtime. A sync may fail instead of completing:
//!   then a random prefix of the unsynced writes reached the disk and the rest did not (a
//!   later append may land past a hole, which recovery's scan stops at), and the node is told.
//! - Clocks: each node reads its own drifting, offset clock.
//! - Pauses: a paused node receives nothing (messages, timers, sync completions wait) until it
//!   resumes, and then carries on believing what it believed before.

use std::collections::{BTreeSet, VecDeque};

use rand::Rng;
use sluice_core::quorum::{Action, Message, NodeId, NotLeader, Persisted, Quorum, QuorumConfig, Write};
use sluice_core::{Instant, Offset};

use crate::queue::EventQueue;
use crate::rng::Streams;
use crate::trace::Trace;
use crate::world::{Nanos, MS};

/// The environment of one run.
#[derive(Clone, Debug)]
pub struct QuorumEnv {
    pub net_latency: (Nanos, Nanos),
    pub loss: f64,
    pub duplicate: f64,
    pub sync_latency: (Nanos, Nanos),
    /// Chance that a sync fails instead of completing.
    pub sync_fail: f64,
    pub clock_drift_ppm_max: u64,
    /// Timeouts for every node (node id and voters are set per node).
    pub config: QuorumConfig,
}

#[derive(Debug)]
enum Event {
    Deliver { to: usize, from: NodeId, bytes: Vec<u8> },
    Synced { node: usize, inc: u64, id: u64 },
    Timer { node: usize, inc: u64, token: u64 },
    Restart { node: usize },
    Client { token: u64 },
}

/// A node's store: what is durable, and the writes since that a sync has not yet covered.
#[derive(Debug, Default)]
pub struct Store {
    pub durable: Persisted,
    unsynced: Vec<Write>,
    /// Syncs issued: (id, how many of `unsynced` it covers).
    marks: VecDeque<(u64, usize)>,
    /// Writes were lost by a failed sync and the log file has not been cut back below the
    /// hole since: an append past its end stops at the hole (recovery reads up to it).
    holed: bool,
}

impl Store {
    fn apply(&mut self, w: &Write) {
        let p = &mut self.durable;
        match w {
            Write::State { epoch, voted_for } => (p.epoch, p.voted_for) = (*epoch, *voted_for),
            Write::Append { offset, entries } => {
                let at = usize::try_from(*offset).expect("offsets are small here");
                if at > p.entries.len() && self.holed {
                    return;
                }
                assert!(at <= p.entries.len(), "an append past the end of the log file");
                p.entries.truncate(at);
                p.entries.extend(entries.iter().cloned());
            }
            Write::Truncate { end } => {
                let end = usize::try_from(*end).expect("small");
                self.holed &= end > p.entries.len();
                p.entries.truncate(end);
            }
            Write::Sync { .. } => {}
            // The quorum scenario takes no snapshots, so nothing is ever behind a log start.
            Write::InstallSnapshot { .. } => {}
            Write::Reset { start, start_epoch } => {
                (p.start, p.start_epoch) = (*start, *start_epoch);
                p.entries.clear();
            }
        }
    }

    fn issue(&mut self, w: Write) {
        match w {
            Write::Sync { id } => self.marks.push_back((id, self.unsynced.len())),
            w => self.unsynced.push(w),
        }
    }

    /// Sync `id` completed: what was written before it is durable.
    fn complete(&mut self, id: u64) {
        while let Some((m, n)) = self.marks.pop_front() {
            let done: Vec<Write> = self.unsynced.drain(..n).collect();
            for w in &done {
                self.apply(w);
            }
            for mark in &mut self.marks {
                mark.1 -= n;
            }
            if m == id {
                break;
            }
        }
    }

    /// A crash: per file, a random prefix of the unsynced writes survives. Returns how many
    /// writes were lost.
    fn crash(&mut self, rng: &mut impl Rng) -> usize {
        self.marks.clear();
        let lost = self.lose_unsynced(rng);
        // The restarted node reads the file up to any hole and appends from there.
        self.holed = false;
        lost
    }

    /// A failed sync: like a crash, per file a random prefix of the unsynced writes reached
    /// the disk and the rest never will; the node lives on. Returns how many were lost.
    fn fail_sync(&mut self, rng: &mut impl Rng) -> usize {
        self.marks.clear();
        let lost = self.lose_unsynced(rng);
        self.holed |= lost > 0;
        lost
    }

    fn lose_unsynced(&mut self, rng: &mut impl Rng) -> usize {
        let is_state = |w: &Write| matches!(w, Write::State { .. });
        let (state, log): (Vec<Write>, Vec<Write>) = self.unsynced.drain(..).partition(is_state);
        let keep_state = rng.gen_range(0..=state.len());
        let keep_log = rng.gen_range(0..=log.len());
        for w in &state[..keep_state] {
            self.apply(w);
        }
        for (i, w) in log[..keep_log].iter().enumerate() {
            match w {
                Write::Append { offset, entries } if i + 1 == keep_log && rng.gen_bool(0.3) => {
                    let torn = rng.gen_range(0..=entries.len());
                    let w = Write::Append { offset: *offset, entries: entries[..torn].to_vec() };
                    self.apply(&w);
                }
                w => self.apply(w),
            }
        }
        state.len() - keep_state + log.len() - keep_log
    }
}

pub struct QNode {
    pub id: NodeId,
    /// Bumped by every crash: events for an earlier incarnation are dropped.
    pub inc: u64,
    /// `None` while the node is down.
    pub quorum: Option<Quorum>,
    pub store: Store,
    pub paused_until: Option<Nanos>,
    timer: Option<(Nanos, u64)>,
    timer_token: u64,
    clock_offset: Nanos,
    drift_ppm: u64,
}

impl QNode {
    fn local(&self, t: Nanos) -> Instant {
        let drift = u64::try_from(u128::from(t) * u128::from(self.drift_ppm) / 1_000_000).unwrap_or(u64::MAX);
        Instant(self.clock_offset + t + drift)
    }

    /// The simulated time at which this node's clock reads `at` (never early).
    fn sim_time(&self, at: Instant) -> Nanos {
        let local = at.0.saturating_sub(self.clock_offset);
        let t = (u128::from(local) * 1_000_000).div_ceil(1_000_000 + u128::from(self.drift_ppm));
        let mut t = u64::try_from(t).unwrap_or(u64::MAX);
        while self.local(t) < at && t < u64::MAX {
            t += 1;
        }
        t
    }
}

/// What the checkers and workload see of a run.
pub trait QuorumHarness {
    /// A node asked for a storage write (seen before the store takes it).
    fn on_write(&mut self, now: Nanos, node: usize, w: &Write);
    /// A node (re)started from its store's durable image.
    fn on_start(&mut self, now: Nanos, node: usize, persisted: &Persisted);
    /// An event was handled by a node: its role, log or high watermark may have moved.
    fn after_node_event(&mut self, w: &QuorumWorld, node: usize);
    /// A timer the harness set fired.
    fn on_timer(&mut self, w: &mut QuorumWorld, token: u64);
}

#[derive(Clone, Debug, Default)]
pub struct QuorumStats {
    pub events: u64,
    pub messages: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub crashes: u64,
    pub lost_writes: u64,
    pub sync_failures: u64,
    pub pauses: u64,
    pub syncs: u64,
    pub resignations: u64,
}

pub struct QuorumWorld {
    now: Nanos,
    queue: EventQueue<Event>,
    pub nodes: Vec<QNode>,
    /// Directed links that drop what is sent over them.
    pub cut: BTreeSet<(usize, usize)>,
    pub env: QuorumEnv,
    rng: Streams,
    pub trace: Trace,
    pub stats: QuorumStats,
}

impl QuorumWorld {
    pub fn new(seed: u64, n: usize, env: QuorumEnv, h: &mut impl QuorumHarness) -> QuorumWorld {
        let mut rng = Streams::new(seed);
        let nodes = (0..n)
            .map(|i| QNode {
                id: node_id(i),
                inc: 0,
                quorum: None,
                store: Store::default(),
                paused_until: None,
                timer: None,
                timer_token: 0,
                clock_offset: rng.clock.gen_range(0..=1_000) * MS,
                drift_ppm: rng.clock.gen_range(0..=env.clock_drift_ppm_max),
            })
            .collect();
        let mut w = QuorumWorld {
            now: 0,
            queue: EventQueue::default(),
            nodes,
            cut: BTreeSet::new(),
            env,
            rng,
            trace: Trace::new(),
            stats: QuorumStats::default(),
        };
        for i in 0..n {
            w.start(i, h);
        }
        w
    }

    pub fn now(&self) -> Nanos {
        self.now
    }

    pub fn workload_rng(&mut self) -> &mut rand_chacha::ChaCha8Rng {
        &mut self.rng.workload
    }

    pub fn fault_rng(&mut self) -> &mut rand_chacha::ChaCha8Rng {
        &mut self.rng.faults
    }

    pub fn next_event_at(&self) -> Option<Nanos> {
        self.queue.next_at()
    }

    fn schedule(&mut self, at: Nanos, event: Event) {
        self.queue.push(at, event);
    }

    pub fn set_timer(&mut self, token: u64, after: Nanos) {
        self.schedule(self.now + after, Event::Client { token });
    }

    fn config_for(&self, i: usize) -> QuorumConfig {
        let mut c = self.env.config.clone();
        c.node_id = node_id(i);
        c.voters = (0..self.nodes.len()).map(node_id).collect();
        c
    }

    fn start(&mut self, i: usize, h: &mut impl QuorumHarness) {
        let cfg = self.config_for(i);
        let seed = self.rng.node_seed(i, self.nodes[i].inc);
        let persisted = self.nodes[i].store.durable.clone();
        h.on_start(self.now, i, &persisted);
        let local = self.nodes[i].local(self.now);
        self.nodes[i].quorum = Some(Quorum::new(cfg, persisted, seed, local));
        self.drain(i, h);
    }

    /// Crashes node `i` (its unsynced writes partly lost) and restarts it after `downtime`.
    pub fn crash(&mut self, i: usize, downtime: Nanos) {
        let n = &mut self.nodes[i];
        if n.quorum.is_none() {
            return;
        }
        n.quorum = None;
        n.inc += 1;
        n.timer = None;
        n.paused_until = None;
        let lost = n.store.crash(&mut self.rng.disk);
        self.stats.lost_writes += lost as u64;
        if std::env::var_os("SLUICE_SIM_VERBOSE").is_some() {
            eprintln!(
                "{:>12.6} node {i} CRASH ({lost} unsynced writes lost), down {} ms",
                self.now as f64 / 1e9,
                downtime / MS
            );
        }
        self.stats.crashes += 1;
        self.trace.record(self.now, "q-crash", i as u64, 0);
        self.schedule(self.now + downtime, Event::Restart { node: i });
    }

    /// A controlled stop's first step: node `i`, if it leads, resigns (KRaft's
    /// EndQuorumEpoch to the others) and stands no more. The caller crashes it next, as the
    /// process exits; what it sent is on the network.
    pub fn resign(&mut self, i: usize, h: &mut impl QuorumHarness) {
        let local = self.nodes[i].local(self.now);
        let Some(q) = self.nodes[i].quorum.as_mut() else { return };
        if !q.is_leader() {
            return;
        }
        q.resign(local);
        self.stats.resignations += 1;
        self.trace.record(self.now, "q-resign", i as u64, 0);
        if std::env::var_os("SLUICE_SIM_VERBOSE").is_some() {
            eprintln!("{:>12.6} node {i} RESIGNS", self.now as f64 / 1e9);
        }
        self.drain(i, h);
    }

    pub fn pause(&mut self, i: usize, until: Nanos) {
        if self.nodes[i].quorum.is_some() {
            self.nodes[i].paused_until = Some(until);
            if std::env::var_os("SLUICE_SIM_VERBOSE").is_some() {
                eprintln!("{:>12.6} node {i} PAUSED until {:.6}", self.now as f64 / 1e9, until as f64 / 1e9);
            }
            self.stats.pauses += 1;
            self.trace.record(self.now, "q-pause", i as u64, until);
        }
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].quorum.is_some()
    }

    pub fn quorum(&self, i: usize) -> Option<&Quorum> {
        self.nodes[i].quorum.as_ref()
    }

    /// Offers a record to node `i`; only a leader takes it.
    pub fn propose(&mut self, i: usize, record: Vec<u8>, h: &mut impl QuorumHarness) -> Result<Offset, NotLeader> {
        let local = self.nodes[i].local(self.now);
        let paused = self.nodes[i].paused_until.is_some_and(|t| t > self.now);
        let q = self.nodes[i].quorum.as_mut().filter(|_| !paused).ok_or(NotLeader::Leader(None))?;
        let r = q.propose(local, record);
        self.drain(i, h);
        h.after_node_event(self, i);
        r
    }

    /// Executes what node `i` asked for, and re-arms its timer.
    fn drain(&mut self, i: usize, h: &mut impl QuorumHarness) {
        while let Some(a) = self.nodes[i].quorum.as_mut().and_then(Quorum::poll_action) {
            match a {
                Action::Send { to, msg } => self.send(i, to, &msg),
                Action::Write(w) => {
                    h.on_write(self.now, i, &w);
                    if let Write::Sync { id } = w {
                        let (lo, hi) = self.env.sync_latency;
                        let at = self.now + self.rng.disk.gen_range(lo..=hi);
                        self.stats.syncs += 1;
                        self.schedule(at, Event::Synced { node: i, inc: self.nodes[i].inc, id });
                    }
                    self.nodes[i].store.issue(w);
                }
            }
        }
        let Some(at) = self.nodes[i].quorum.as_ref().and_then(Quorum::poll_timeout) else { return };
        let at = self.nodes[i].sim_time(at).max(self.now);
        if self.nodes[i].timer.is_none_or(|(t, _)| t != at) {
            let n = &mut self.nodes[i];
            n.timer_token += 1;
            n.timer = Some((at, n.timer_token));
            let (inc, token) = (n.inc, n.timer_token);
            self.schedule(at, Event::Timer { node: i, inc, token });
        }
    }

    fn send(&mut self, from: usize, to: NodeId, msg: &Message) {
        let Some(to_i) = node_index(to, self.nodes.len()) else { return };
        self.stats.messages += 1;
        if self.cut.contains(&(from, to_i)) || self.rng.network.gen_bool(self.env.loss) {
            self.stats.lost += 1;
            return;
        }
        let bytes = postcard::to_allocvec(msg).expect("quorum messages serialize");
        let copies = if self.rng.network.gen_bool(self.env.duplicate) { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let (lo, hi) = self.env.net_latency;
            let at = self.now + self.rng.network.gen_range(lo..=hi);
            self.schedule(at, Event::Deliver { to: to_i, from: node_id(from), bytes: bytes.clone() });
        }
    }

    /// Handles the next event. Returns false when nothing is left.
    pub fn step(&mut self, h: &mut impl QuorumHarness) -> bool {
        let Some((at, event)) = self.queue.pop() else { return false };
        self.now = self.now.max(at);
        if let Some(node) = event_node(&event) {
            if let Some(until) = self.nodes[node].paused_until {
                if until > self.now {
                    self.schedule(until, event); // frozen: it happens when the node wakes
                    return true;
                }
                self.nodes[node].paused_until = None;
            }
        }
        self.stats.events += 1;
        match event {
            Event::Deliver { to, from, bytes } => self.deliver(to, from, &bytes, h),
            Event::Synced { node, inc, id } if self.nodes[node].inc == inc && self.is_up(node) => {
                let local = self.nodes[node].local(self.now);
                if self.env.sync_fail > 0.0 && self.rng.disk.gen_bool(self.env.sync_fail) {
                    self.trace.record(self.now, "q-sync-failed", node as u64, id);
                    let lost = self.nodes[node].store.fail_sync(&mut self.rng.disk);
                    self.stats.sync_failures += 1;
                    self.stats.lost_writes += lost as u64;
                    if std::env::var_os("SLUICE_SIM_VERBOSE").is_some() {
                        eprintln!(
                            "{:>12.6} node {node} SYNC FAILED ({lost} unsynced writes lost)",
                            self.now as f64 / 1e9
                        );
                    }
                    self.nodes[node].quorum.as_mut().expect("up").handle_storage_failed(local);
                } else {
                    self.trace.record(self.now, "q-synced", node as u64, id);
                    self.nodes[node].store.complete(id);
                    self.nodes[node].quorum.as_mut().expect("up").handle_synced(local, id);
                }
                self.drain(node, h);
                h.after_node_event(self, node);
            }
            Event::Timer { node, inc, token }
                if self.nodes[node].inc == inc && self.nodes[node].timer_token == token =>
            {
                self.nodes[node].timer = None;
                let local = self.nodes[node].local(self.now);
                if let Some(q) = self.nodes[node].quorum.as_mut() {
                    self.trace.record(self.now, "q-timer", node as u64, 0);
                    q.handle_timeout(local);
                    self.drain(node, h);
                    h.after_node_event(self, node);
                }
            }
            Event::Restart { node } => {
                self.trace.record(self.now, "q-restart", node as u64, 0);
                self.start(node, h);
                h.after_node_event(self, node);
            }
            Event::Client { token } => h.on_timer(self, token),
            Event::Synced { .. } | Event::Timer { .. } => {}
        }
        true
    }

    fn deliver(&mut self, to: usize, from: NodeId, bytes: &[u8], h: &mut impl QuorumHarness) {
        let local = self.nodes[to].local(self.now);
        let Some(q) = self.nodes[to].quorum.as_mut() else { return };
        self.trace.record_bytes(self.now, "q-deliver", (to as u64) << 32 | from as u64, bytes);
        match postcard::from_bytes::<Message>(bytes) {
            Ok(msg) => q.handle_message(local, from, msg),
            Err(e) => panic!("a quorum message did not decode: {e}"),
        }
        self.drain(to, h);
        h.after_node_event(self, to);
    }
}

fn event_node(e: &Event) -> Option<usize> {
    match e {
        Event::Deliver { to, .. } => Some(*to),
        Event::Synced { node, .. } | Event::Timer { node, .. } => Some(*node),
        Event::Restart { .. } | Event::Client { .. } => None,
    }
}

/// Node ids are 1-based, as `node.id`s usually are.
pub fn node_id(i: usize) -> NodeId {
    NodeId::try_from(i + 1).expect("few nodes")
}

pub fn node_index(id: NodeId, n: usize) -> Option<usize> {
    usize::try_from(id).ok().and_then(|i| i.checked_sub(1)).filter(|&i| i < n)
}
