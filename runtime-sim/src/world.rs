//! The deterministic event loop: N core nodes, each over a simulated disk and clock, and
//! connections from simulated clients, all on one simulated timeline. Events are kept in a
//! binary heap keyed by (time, sequence number): ties break in scheduling order, so one seed
//! gives one run.
//!
//! The network is TCP-like between clients and nodes: each direction of a connection is
//! FIFO, with a random latency; faults clog a node (messages wait until it heals) or reset
//! connections. Disk operations complete after a latency, in issue order except syncs, which
//! make durable what was written before them. A crash throws away the node's memory and the
//! disk's unsynced writes (or tears them), resets its connections, and restarts the node
//! from its disk after a downtime.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_core::{ConnId, DiskError, DiskOp, DiskReply, Input, Instant, Node, NodeConfig, OpId, Output, Part, Time};

use crate::disk::SimDisk;
use crate::queue::EventQueue;
use crate::rng::Streams;
use crate::trace::Trace;

/// Simulated nanoseconds.
pub type Nanos = u64;
pub const MS: Nanos = 1_000_000;
pub const US: Nanos = 1_000;
/// How long a stopping node may take to hand its leadership over and close its logs before
/// its process exits anyway (the real runtime's `CONTROLLED_SHUTDOWN_MAX`).
pub const STOP_MAX: Nanos = 10_000 * MS;

/// The knobs of one run's environment, drawn per seed by the simulator (swarm testing).
#[derive(Clone, Debug)]
pub struct Env {
    pub net_latency: (Nanos, Nanos),
    pub disk_latency: (Nanos, Nanos),
    pub sync_latency: (Nanos, Nanos),
    /// Probability that a sync fails.
    pub sync_fail: f64,
    /// Probability that a read returns a flipped bit.
    pub read_corrupt: f64,
    /// Largest clock offset between nodes, and drift, in parts per million.
    pub clock_offset_max: Nanos,
    pub clock_drift_ppm_max: u64,
    /// Probability that a message between nodes is lost on its way (the connection it was on
    /// broke and was dialled again), and that one arrives twice.
    pub peer_loss: f64,
    pub peer_duplicate: f64,
}

impl Default for Env {
    fn default() -> Self {
        Env {
            net_latency: (50 * US, 500 * US),
            disk_latency: (5 * US, 50 * US),
            sync_latency: (100 * US, 2 * MS),
            sync_fail: 0.0,
            read_corrupt: 0.0,
            clock_offset_max: 0,
            clock_drift_ppm_max: 0,
            peer_loss: 0.0,
            peer_duplicate: 0.0,
        }
    }
}

#[derive(Debug)]
enum Event {
    NodeInput {
        node: usize,
        inc: u64,
        input: Input,
    },
    SyncDone {
        node: usize,
        inc: u64,
        op: OpId,
        ticket: Option<crate::disk::SyncTicket>,
        ok: bool,
    },
    NodeTimer {
        node: usize,
        inc: u64,
    },
    ClientResponse {
        conn: ConnId,
        frame: Bytes,
    },
    ClientClosed {
        conn: ConnId,
    },
    ClientTimer {
        client: usize,
        token: u64,
    },
    Restart {
        node: usize,
    },
    /// A stopping node that has not stopped by now exits anyway.
    StopDeadline {
        node: usize,
        inc: u64,
    },
    /// A paused node runs again (if it is still the pause that ended then).
    Resume {
        node: usize,
        until: Nanos,
    },
    /// A message between nodes, for the incarnation of `to` it was sent to (a restart breaks
    /// the connection it was on).
    Peer {
        from: usize,
        to: usize,
        inc: u64,
        bytes: Bytes,
    },
}

impl Event {
    /// The node an event is handed to, if it is one (a paused node's wait).
    fn for_node(&self) -> Option<usize> {
        match self {
            Event::NodeInput { node, .. }
            | Event::SyncDone { node, .. }
            | Event::NodeTimer { node, .. }
            | Event::StopDeadline { node, .. } => Some(*node),
            Event::Peer { to, .. } => Some(*to),
            Event::ClientResponse { .. }
            | Event::ClientClosed { .. }
            | Event::ClientTimer { .. }
            | Event::Restart { .. }
            | Event::Resume { .. } => None,
        }
    }
}

/// A node's clock: its monotonic time runs at (1 + drift) of simulated time, from an offset.
#[derive(Clone, Copy, Debug)]
struct Clock {
    offset: Nanos,
    drift_ppm: u64,
    wall_base_ms: i64,
}

impl Clock {
    fn at(&self, t: Nanos) -> Time {
        let drift = u64::try_from(u128::from(t) * u128::from(self.drift_ppm) / 1_000_000).unwrap_or(u64::MAX);
        let mono = self.offset + t + drift;
        Time { mono: Instant(mono), wall_ms: self.wall_base_ms + i64::try_from(mono / MS).unwrap_or(i64::MAX) }
    }
    /// The simulated time at which the node's clock reads `mono` (rounded up).
    fn sim_time_of(&self, mono: Instant) -> Nanos {
        let local = mono.0.saturating_sub(self.offset);
        // local = t * (1 + drift/1e6)  =>  t = local * 1e6 / (1e6 + drift)
        let t = (u128::from(local) * 1_000_000).div_ceil(1_000_000 + u128::from(self.drift_ppm));
        let mut t = u64::try_from(t).unwrap_or(u64::MAX);
        // Integer rounding must never leave the node's clock short of its deadline: a timer
        // that fires early would fire again at the same instant, forever.
        while self.at(t).mono < mono && t < u64::MAX {
            t += 1;
        }
        t
    }
}

struct Slot {
    node: Option<Node>,
    config: NodeConfig,
    disk: SimDisk,
    clock: Clock,
    inc: u64,
    timer_at: Option<Nanos>,
    /// Non-sync disk operations complete in order: none before this time.
    disk_busy_until: Nanos,
    /// Messages to or from the node wait until then (a clogged or partitioned node).
    clogged_until: Nanos,
    crashes: u64,
    /// Asked to stop (controlled shutdown): down this long once it has exited.
    stopping: Option<Nanos>,
    /// Paused (a stopped process, a long GC) until then: what arrives for the node waits in
    /// `held`, in arrival order, and is handed over when it runs again.
    paused_until: Option<Nanos>,
    held: Vec<Event>,
}

struct Conn {
    client: usize,
    node: usize,
    inc: u64,
    open: bool,
    to_node_at: Nanos,
    to_client_at: Nanos,
}

/// What a harness (the workload and its checkers) sees.
pub trait Harness {
    fn on_response(&mut self, w: &mut World, conn: ConnId, frame: Bytes);
    fn on_closed(&mut self, w: &mut World, conn: ConnId);
    fn on_timer(&mut self, w: &mut World, client: usize, token: u64);
}

/// Counters reported at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub crashes: u64,
    /// Controlled stops (SIGTERM) and restarts.
    pub stops: u64,
    pub sync_failures: u64,
    pub read_corruptions: u64,
    pub torn_writes: u64,
    pub lost_writes: u64,
    pub resets: u64,
    pub clogs: u64,
    pub disk_fulls: u64,
    pub pauses: u64,
    /// Messages between nodes lost, and delivered twice.
    pub peer_lost: u64,
    pub peer_duplicated: u64,
}

pub struct World {
    now: Nanos,
    queue: EventQueue<Event>,
    slots: Vec<Slot>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    pub env: Env,
    rng: Streams,
    pub trace: Trace,
    pub stats: Stats,
    same_instant: u64,
    /// Links between nodes cut until a time, one direction each (from, to).
    cut: BTreeMap<(usize, usize), Nanos>,
    /// When the last message on each link arrives: a link delivers in order, as TCP does.
    link_free_at: BTreeMap<(usize, usize), Nanos>,
}

impl World {
    /// `nodes` nodes, each with its own config (node ids differ), booting at time zero.
    pub fn new(seed: u64, configs: Vec<NodeConfig>, env: Env) -> World {
        let mut rng = Streams::new(seed);
        let slots = configs
            .into_iter()
            .map(|config| {
                let clock = Clock {
                    offset: if env.clock_offset_max > 0 { rng.clock.gen_range(0..env.clock_offset_max) } else { 0 },
                    drift_ppm: if env.clock_drift_ppm_max > 0 {
                        rng.clock.gen_range(0..env.clock_drift_ppm_max)
                    } else {
                        0
                    },
                    wall_base_ms: 1_700_000_000_000 + rng.clock.gen_range(0..1000),
                };
                Slot {
                    node: None,
                    config,
                    disk: SimDisk::new(),
                    clock,
                    inc: 0,
                    timer_at: None,
                    disk_busy_until: 0,
                    clogged_until: 0,
                    crashes: 0,
                    stopping: None,
                    paused_until: None,
                    held: Vec::new(),
                }
            })
            .collect();
        let mut w = World {
            now: 0,
            queue: EventQueue::default(),
            slots,
            conns: BTreeMap::new(),
            next_conn: 0,
            env,
            rng,
            trace: Trace::new(),
            stats: Stats::default(),
            same_instant: 0,
            cut: BTreeMap::new(),
            link_free_at: BTreeMap::new(),
        };
        for i in 0..w.slots.len() {
            w.boot(i);
        }
        w
    }

    pub fn now(&self) -> Nanos {
        self.now
    }

    pub fn node(&self, i: usize) -> Option<&Node> {
        self.slots.get(i)?.node.as_ref()
    }

    pub fn disk(&self, i: usize) -> &SimDisk {
        &self.slots[i].disk
    }

    pub fn nodes(&self) -> usize {
        self.slots.len()
    }

    /// The workload's random stream.
    pub fn workload_rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng.workload
    }

    /// The fault schedule's random stream.
    pub fn fault_rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng.faults
    }

    fn schedule(&mut self, at: Nanos, event: Event) {
        self.queue.push(at.max(self.now), event);
    }

    fn boot(&mut self, i: usize) {
        let seed = self.rng.node_seed(i, self.slots[i].inc);
        let slot = &mut self.slots[i];
        slot.inc += 1;
        slot.timer_at = None;
        slot.disk_busy_until = self.now;
        let t = slot.clock.at(self.now);
        let _span = tracing::debug_span!("node", id = i + 1).entered();
        slot.node = Some(Node::new(slot.config.clone(), seed, t));
        self.trace.record(self.now, "boot", i as u64, slot.inc);
        self.drain(i);
    }

    fn latency(&mut self, range: (Nanos, Nanos)) -> Nanos {
        if range.1 <= range.0 {
            return range.0;
        }
        self.rng.network.gen_range(range.0..range.1)
    }

    // ---- the harness's side -------------------------------------------------------------

    /// Opens a connection from `client` to `node`. A node that is down refuses it (the client
    /// sees it closed).
    pub fn connect(&mut self, client: usize, node: usize) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let up = self.slots[node].node.is_some();
        let inc = self.slots[node].inc;
        self.conns.insert(conn, Conn { client, node, inc, open: up, to_node_at: self.now, to_client_at: self.now });
        self.trace.note(self.now, "connect", conn.0, (client as u64) << 32 | node as u64);
        if !up {
            let at = self.now + self.latency(self.env.net_latency);
            self.schedule(at, Event::ClientClosed { conn });
        }
        conn
    }

    /// Sends a request frame (without its size prefix) on a connection.
    pub fn send(&mut self, conn: ConnId, frame: Bytes) {
        let lat = self.latency(self.env.net_latency);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open {
            return;
        }
        let clog = self.slots[c.node].clogged_until;
        let at = (self.now + lat).max(c.to_node_at).max(clog);
        c.to_node_at = at;
        let (node, inc) = (c.node, c.inc);
        let api = frame.get(..2).map_or(u64::MAX, |k| u64::from(u16::from_be_bytes([k[0], k[1]])));
        self.trace.note(self.now, "send", conn.0, api);
        self.schedule(at, Event::NodeInput { node, inc, input: Input::Request { conn, frame } });
    }

    /// The client closes its connection.
    pub fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !std::mem::replace(&mut c.open, false) {
            return;
        }
        let (node, inc, at) = (c.node, c.inc, c.to_node_at);
        self.schedule(at, Event::NodeInput { node, inc, input: Input::ConnClosed { conn } });
    }

    pub fn set_timer(&mut self, client: usize, token: u64, after: Nanos) {
        self.schedule(self.now + after, Event::ClientTimer { client, token });
    }

    // ---- faults ---------------------------------------------------------------------------

    /// Power loss on a node: memory gone, unsynced writes dropped or torn, connections reset.
    /// It restarts from its disk after `downtime`.
    pub fn crash(&mut self, i: usize, downtime: Nanos) {
        if self.slots[i].node.is_none() {
            return;
        }
        let report = self.slots[i].disk.crash(&mut self.rng.disk);
        tracing::info!(
            node = i + 1,
            torn_writes = report.torn_writes,
            lost = report.files_with_lost_writes,
            "simulator: node crashed"
        );
        self.stats.crashes += 1;
        self.stats.torn_writes += report.torn_writes as u64;
        self.stats.lost_writes += report.files_with_lost_writes as u64;
        self.slots[i].node = None;
        self.slots[i].stopping = None;
        self.slots[i].paused_until = None;
        self.slots[i].held.clear();
        self.slots[i].crashes += 1;
        self.trace.record(self.now, "crash", i as u64, report.torn_writes as u64);
        let conns: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.node == i && c.open).map(|(k, _)| *k).collect();
        for conn in conns {
            self.reset(conn);
        }
        self.schedule(self.now + downtime, Event::Restart { node: i });
    }

    /// A controlled stop (SIGTERM): the node hands its leadership over and closes its logs,
    /// then its process exits (after `STOP_MAX` at the latest, as the real runtime's bound).
    /// What it wrote stays in the page cache: nothing is lost, nothing more is synced. It
    /// restarts `downtime` after it exits.
    /// A paused process takes the signal when it runs again: a paused node is not stopped.
    pub fn stop(&mut self, i: usize, downtime: Nanos) {
        if self.slots[i].node.is_none() || self.slots[i].stopping.is_some() || self.is_paused(i) {
            return;
        }
        self.slots[i].stopping = Some(downtime);
        self.stats.stops += 1;
        self.trace.record(self.now, "stop", i as u64, 0);
        let inc = self.slots[i].inc;
        self.schedule(self.now + STOP_MAX, Event::StopDeadline { node: i, inc });
        self.handle(i, Input::ShutdownRequested);
    }

    /// A stopping node's process exits: its connections close, it restarts later.
    fn exit(&mut self, i: usize) {
        let Some(down) = self.slots[i].stopping.take() else { return };
        tracing::info!(node = i + 1, "simulator: node stopped");
        self.slots[i].disk.process_exit();
        self.slots[i].node = None;
        self.trace.record(self.now, "exit", i as u64, 0);
        let conns: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.node == i && c.open).map(|(k, _)| *k).collect();
        for conn in conns {
            self.reset(conn);
        }
        self.schedule(self.now + down, Event::Restart { node: i });
    }

    /// Resets a connection: both ends see it closed.
    pub fn reset(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !std::mem::replace(&mut c.open, false) {
            return;
        }
        self.stats.resets += 1;
        let (node, inc) = (c.node, c.inc);
        let at = self.now + 1;
        self.schedule(at, Event::NodeInput { node, inc, input: Input::ConnClosed { conn } });
        self.schedule(at, Event::ClientClosed { conn });
    }

    /// Holds every message to and from a node until `until` (a partition that heals).
    pub fn clog(&mut self, i: usize, until: Nanos) {
        self.stats.clogs += 1;
        self.slots[i].clogged_until = self.slots[i].clogged_until.max(until);
        self.trace.record(self.now, "clog", i as u64, until);
    }

    /// Fills a node's disk (writes fail with NoSpace) or frees it again.
    pub fn set_disk_full(&mut self, i: usize, full: bool) {
        let used = self.slots[i].disk.bytes_used();
        self.slots[i].disk.capacity_bytes = full.then_some(used);
        if full {
            self.stats.disk_fulls += 1;
        }
        self.trace.record(self.now, "disk-full", i as u64, u64::from(full));
    }

    /// Cuts the links between node `i` and every other node until `until`: messages sent on
    /// them meanwhile are lost (a broken connection).
    pub fn isolate(&mut self, i: usize, until: Nanos) {
        for j in (0..self.slots.len()).filter(|&j| j != i) {
            self.cut_one_way(i, j, until);
            self.cut_one_way(j, i, until);
        }
        self.trace.record(self.now, "isolate", i as u64, until);
    }

    /// Cuts the link from node `from` to node `to` (one direction only) until `until`:
    /// messages sent on it meanwhile are lost.
    pub fn cut_link(&mut self, from: usize, to: usize, until: Nanos) {
        self.cut_one_way(from, to, until);
        self.trace.record(self.now, "cut", (from * 16 + to) as u64, until);
    }

    fn cut_one_way(&mut self, from: usize, to: usize, until: Nanos) {
        let t = self.cut.get(&(from, to)).copied().unwrap_or(0).max(until);
        self.cut.insert((from, to), t);
    }

    /// Pauses a running node until `until` (SIGSTOP, a long GC pause): it handles nothing,
    /// neither messages nor timers nor disk completions, and then everything that came
    /// meanwhile, in order, believing what it believed before. Its clock runs on.
    pub fn pause(&mut self, i: usize, until: Nanos) {
        if self.slots[i].node.is_none() || self.is_paused(i) || until <= self.now {
            return;
        }
        self.slots[i].paused_until = Some(until);
        self.stats.pauses += 1;
        self.trace.record(self.now, "pause", i as u64, until);
        self.schedule(until, Event::Resume { node: i, until });
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.slots[i].paused_until.is_some()
    }

    /// Ends every fault: unclogs nodes, frees disks and stops injecting disk faults.
    pub fn heal(&mut self) {
        self.cut.clear();
        for s in &mut self.slots {
            s.clogged_until = self.now;
            s.disk.capacity_bytes = None;
        }
        for i in 0..self.slots.len() {
            if let Some(until) = self.slots[i].paused_until {
                self.schedule(self.now, Event::Resume { node: i, until });
            }
        }
        self.env.peer_loss = 0.0;
        self.env.peer_duplicate = 0.0;
        self.env.sync_fail = 0.0;
        self.env.read_corrupt = 0.0;
        self.trace.note(self.now, "heal", 0, 0);
    }

    /// The client that opened a connection.
    pub fn conn_client(&self, conn: ConnId) -> Option<usize> {
        self.conns.get(&conn).map(|c| c.client)
    }

    pub fn open_conns(&self) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, c)| c.open).map(|(k, _)| *k).collect()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].node.is_some()
    }

    // ---- the loop ---------------------------------------------------------------------------

    /// The time of the next event, if any.
    pub fn next_event_at(&self) -> Option<Nanos> {
        self.queue.next_at()
    }

    /// Processes one event. Returns false when nothing is left.
    pub fn step(&mut self, h: &mut impl Harness) -> bool {
        let Some((at, event)) = self.queue.pop() else {
            return false;
        };
        debug_assert!(at >= self.now, "time never goes back");
        if at == self.now {
            self.same_instant += 1;
            assert!(
                self.same_instant < 1_000_000,
                "livelock: a million events at t={} ns without time moving",
                self.now
            );
        } else {
            self.same_instant = 0;
        }
        self.now = at;
        self.stats.events += 1;
        if let Some(node) = event.for_node().filter(|&n| self.slots[n].paused_until.is_some()) {
            self.slots[node].held.push(event);
            return true;
        }
        self.dispatch(event, h);
        true
    }

    /// Carries out one event.
    fn dispatch(&mut self, event: Event, h: &mut impl Harness) {
        match event {
            Event::NodeInput { node, inc, input } => {
                if self.slots[node].inc == inc && self.slots[node].node.is_some() {
                    self.trace.record_input(self.now, node, &input);
                    self.handle(node, input);
                }
            }
            Event::SyncDone { node, inc, op, ticket, ok } => {
                if self.slots[node].inc == inc && self.slots[node].node.is_some() {
                    let result = match (ticket, ok) {
                        (Some(t), true) => {
                            self.slots[node].disk.sync_finish(&t);
                            Ok(DiskReply::Done)
                        }
                        (Some(_), false) => {
                            self.stats.sync_failures += 1;
                            Err(DiskError::Io("simulated sync failure".into()))
                        }
                        (None, _) => Err(DiskError::Io("file not open".into())),
                    };
                    self.trace.record(self.now, "sync", node as u64, u64::from(result.is_ok()));
                    self.handle(node, Input::DiskDone { op, result });
                }
            }
            Event::NodeTimer { node, inc } => {
                if self.slots[node].inc == inc && self.slots[node].node.is_some() {
                    self.slots[node].timer_at = None;
                    self.trace.record(self.now, "timer", node as u64, 0);
                    self.handle(node, Input::Timeout);
                }
            }
            Event::ClientResponse { conn, frame } => {
                if self.conns.get(&conn).is_some_and(|c| c.open) {
                    self.trace.record_bytes(self.now, "response", conn.0, &frame);
                    h.on_response(self, conn, frame);
                }
            }
            Event::ClientClosed { conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.open = false;
                }
                self.trace.record(self.now, "closed", conn.0, 0);
                h.on_closed(self, conn);
            }
            Event::ClientTimer { client, token } => {
                self.trace.record(self.now, "client-timer", client as u64, token);
                h.on_timer(self, client, token);
            }
            Event::Restart { node } => {
                if self.slots[node].node.is_none() {
                    self.boot(node);
                }
            }
            Event::StopDeadline { node, inc } => {
                if self.slots[node].inc == inc && self.slots[node].node.is_some() {
                    self.exit(node);
                }
            }
            Event::Peer { from, to, inc, bytes } => self.peer_deliver(from, to, inc, bytes),
            Event::Resume { node, until } => self.resume(node, until, h),
        }
    }

    /// A pause ends (if it is still the one that was to end then): what came for the node
    /// meanwhile is handed over, in order.
    fn resume(&mut self, node: usize, until: Nanos, h: &mut impl Harness) {
        if self.slots[node].paused_until == Some(until) {
            self.slots[node].paused_until = None;
            self.trace.record(self.now, "resume", node as u64, 0);
            for e in std::mem::take(&mut self.slots[node].held) {
                self.dispatch(e, h);
            }
        }
    }

    /// A message between nodes arrives, if the incarnation it was sent to still runs.
    fn peer_deliver(&mut self, from: usize, to: usize, inc: u64, bytes: Bytes) {
        if self.slots[to].inc == inc && self.slots[to].node.is_some() {
            self.trace.record_bytes(self.now, "peer", (from * 16 + to) as u64, &bytes);
            let from_id = self.slots[from].config.node_id;
            self.handle(to, Input::Peer { from: from_id, bytes });
        }
    }

    /// Sends a node's message to another: lost if the link is cut or the peer is down;
    /// otherwise delivered after the network's latency, in order on its link. File ranges
    /// are read as the message is sent (as `sendfile` does), and a read can come back
    /// garbled like any other.
    fn peer_send(&mut self, from: usize, to_id: sluice_core::BrokerId, parts: Vec<Part>) {
        let Some(to) = self.slots.iter().position(|s| s.config.node_id == to_id) else {
            return; // a node this world does not have: nothing listens there
        };
        if to == from || self.slots[to].node.is_none() {
            return;
        }
        if self.cut.get(&(from, to)).is_some_and(|t| *t > self.now) {
            return;
        }
        // Drawn only when the fault is on: a seed's other draws stay as they were.
        if self.env.peer_loss > 0.0 && self.rng.network.gen_bool(self.env.peer_loss.min(1.0)) {
            self.stats.peer_lost += 1;
            return;
        }
        let mut buf = BytesMut::new();
        for p in parts {
            match p {
                Part::Bytes(b) => buf.put_slice(&b),
                Part::File { file, position, len } => {
                    let Some(mut b) = self.slots[from].disk.read_range(file, position, len as usize) else {
                        panic!("node {from} sent a peer a file range beyond its file: a bug in core")
                    };
                    self.maybe_garble_read(&mut b);
                    buf.put_slice(&b);
                }
            }
        }
        let bytes = buf.freeze();
        let lat = self.latency(self.env.net_latency);
        let clog = self.slots[from].clogged_until.max(self.slots[to].clogged_until);
        let at = (self.now + lat).max(clog).max(self.link_free_at.get(&(from, to)).copied().unwrap_or(0));
        self.link_free_at.insert((from, to), at);
        let inc = self.slots[to].inc;
        if self.env.peer_duplicate > 0.0 && self.rng.network.gen_bool(self.env.peer_duplicate.min(1.0)) {
            // The copy comes right after the message, on the same link.
            self.stats.peer_duplicated += 1;
            self.schedule(at, Event::Peer { from, to, inc, bytes: bytes.clone() });
        }
        self.schedule(at, Event::Peer { from, to, inc, bytes });
    }

    fn handle(&mut self, i: usize, input: Input) {
        let t = self.slots[i].clock.at(self.now);
        // Node logs say which node they come from.
        let _span = tracing::debug_span!("node", id = i + 1).entered();
        self.slots[i].node.as_mut().expect("checked by the caller").handle(t, input);
        self.drain(i);
        if self.slots[i].stopping.is_some() && self.slots[i].node.as_ref().is_some_and(Node::ready_to_stop) {
            self.exit(i);
        }
    }

    /// Carries out a node's outputs.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.slots[i].node.as_mut().and_then(Node::poll_output) else {
                break;
            };
            match out {
                Output::Disk { op, action } => self.disk_op(i, op, action),
                Output::Response { conn, parts } => self.respond(i, conn, parts),
                Output::Close { conn } => {
                    if let Some(c) = self.conns.get_mut(&conn).filter(|c| c.open) {
                        c.open = false;
                        let at = c.to_client_at;
                        self.schedule(at, Event::ClientClosed { conn });
                    }
                }
                Output::Peer { to, parts } => self.peer_send(i, to, parts),
                // The simulated clients keep a few requests in flight, never the thousand
                // that would pause a connection; frames are delivered as sent.
                Output::Pause { .. } | Output::Resume { .. } => {}
            }
        }
        let slot = &mut self.slots[i];
        let Some(next) = slot.node.as_ref().and_then(Node::poll_timeout) else {
            return;
        };
        let at = slot.clock.sim_time_of(next).max(self.now);
        if slot.timer_at.is_none_or(|t| at < t) {
            slot.timer_at = Some(at);
            let inc = slot.inc;
            self.schedule(at, Event::NodeTimer { node: i, inc });
        }
    }

    fn respond(&mut self, i: usize, conn: ConnId, parts: Vec<Part>) {
        let mut buf = BytesMut::new();
        for p in parts {
            match p {
                Part::Bytes(b) => buf.put_slice(&b),
                Part::File { file, position, len } => match self.slots[i].disk.read_range(file, position, len as usize)
                {
                    Some(b) => buf.put_slice(&b),
                    None => panic!("node {i} sent a file range beyond its file: a bug in core"),
                },
            }
        }
        let lat = self.latency(self.env.net_latency);
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.open) else {
            return;
        };
        let clog = self.slots[c.node].clogged_until;
        let at = (self.now + lat).max(c.to_client_at).max(clog);
        c.to_client_at = at;
        // The frame without its size prefix, as a client's reader hands it on.
        let frame = buf.freeze().slice(4..);
        self.schedule(at, Event::ClientResponse { conn, frame });
    }

    /// A transient read error, at the disk-fault rate: up to four bytes at a random place
    /// come back garbled by a random non-zero pattern. (Flipping one bit made two bad reads
    /// of one spot agree once in ~800 rereads, enough for a sweep to cut a log on what was
    /// only a bad read: seed 186 did.)
    fn maybe_garble_read(&mut self, d: &mut Bytes) {
        if d.is_empty() || !self.rng.disk.gen_bool(self.env.read_corrupt.clamp(0.0, 1.0)) {
            return;
        }
        let mut v = d.to_vec();
        let at = self.rng.disk.gen_range(0..v.len());
        let mut pattern = self.rng.disk.gen::<u32>().to_be_bytes();
        pattern[0] = pattern[0].max(1); // the first byte always changes
        for (b, p) in v[at..].iter_mut().zip(pattern) {
            *b ^= p;
        }
        *d = Bytes::from(v);
        self.stats.read_corruptions += 1;
    }

    fn disk_op(&mut self, i: usize, op: OpId, action: DiskOp) {
        let inc = self.slots[i].inc;
        if let DiskOp::Sync { file } = action {
            let lat = self.latency(self.env.sync_latency);
            let ticket = self.slots[i].disk.sync_begin(file).ok();
            let ok = !self.rng.disk.gen_bool(self.env.sync_fail.clamp(0.0, 1.0));
            self.schedule(self.now + lat, Event::SyncDone { node: i, inc, op, ticket, ok });
            return;
        }
        let mut result = self.slots[i].disk.execute(action);
        if let Ok(DiskReply::Data(d)) = &mut result {
            self.maybe_garble_read(d);
        }
        let lat = self.latency(self.env.disk_latency);
        let at = (self.now + lat).max(self.slots[i].disk_busy_until);
        self.slots[i].disk_busy_until = at;
        self.schedule(at, Event::NodeInput { node: i, inc, input: Input::DiskDone { op, result } });
    }
}
