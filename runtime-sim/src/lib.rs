//! sluice-runtime-sim: drives sluice-core nodes deterministically, with a simulated disk and
//! clock. Today it drives one node, step by step, with syncs completed only when the caller
//! says so; the seeded multi-node event loop with a simulated network (issue 3) grows here.
//!
//! Contract: no wall clock, no OS randomness, no threads; the same calls give the same run.

pub mod disk;
pub mod queue;
pub mod quorum_world;
pub mod rng;
pub mod trace;
pub mod world;

use std::collections::{BTreeMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_core::{ConnId, DiskError, DiskOp, Input, Instant, Node, NodeConfig, OpId, Output, Part, Time};

pub use disk::{CrashReport, SimDisk};
pub use world::{Env, Harness, Nanos, Stats, World, MS, US};

/// One node over a simulated disk.
pub struct SimNode {
    pub node: Node,
    pub disk: SimDisk,
    pub now: Time,
    config: NodeConfig,
    seed: u64,
    /// Syncs issued and not yet completed (completed by `complete_syncs`).
    pending_syncs: VecDeque<(OpId, DiskOp)>,
    /// Whole response frames per connection, in the order sent, file ranges resolved.
    responses: BTreeMap<ConnId, VecDeque<Bytes>>,
    /// Connections the node closed.
    pub closed: Vec<ConnId>,
    /// Connections the node asked not to be read (`Output::Pause`), until `Resume`.
    pub paused: std::collections::BTreeSet<ConnId>,
    /// When set, syncs complete as soon as they are issued.
    pub auto_sync: bool,
    /// When set, the next sync fails with this error.
    pub fail_next_sync: Option<DiskError>,
}

impl SimNode {
    pub fn new(config: NodeConfig, seed: u64) -> SimNode {
        let now = Time { mono: Instant::from_millis(1), wall_ms: 1_700_000_000_000 };
        let node = Node::new(config.clone(), seed, now);
        let mut s = SimNode {
            node,
            disk: SimDisk::new(),
            now,
            config,
            seed,
            pending_syncs: VecDeque::new(),
            responses: BTreeMap::new(),
            closed: Vec::new(),
            paused: std::collections::BTreeSet::new(),
            auto_sync: false,
            fail_next_sync: None,
        };
        s.boot();
        s
    }

    /// Runs start-up recovery to completion (syncs included).
    fn boot(&mut self) {
        let auto = self.auto_sync;
        self.auto_sync = true;
        self.pump();
        self.complete_syncs();
        self.auto_sync = auto;
        assert!(self.node.is_serving(), "node did not finish recovery");
    }

    fn handle(&mut self, input: Input) {
        self.node.handle(self.now, input);
        self.pump();
    }

    /// Executes everything the node asked for, except syncs, which wait.
    fn pump(&mut self) {
        loop {
            let mut done = Vec::new();
            while let Some(out) = self.node.poll_output() {
                match out {
                    Output::Disk { op, action: action @ DiskOp::Sync { .. } } if !self.auto_sync => {
                        self.pending_syncs.push_back((op, action));
                    }
                    Output::Disk { op, action } => done.push(Input::DiskDone { op, result: self.disk.execute(action) }),
                    Output::Response { conn, parts } => {
                        let mut buf = BytesMut::new();
                        for p in parts {
                            match p {
                                Part::Bytes(b) => buf.put_slice(&b),
                                Part::File { file, position, len } => {
                                    let b = self
                                        .disk
                                        .read_range(file, position, len as usize)
                                        .expect("file range within the file");
                                    buf.put_slice(&b);
                                }
                            }
                        }
                        self.responses.entry(conn).or_default().push_back(buf.freeze());
                    }
                    Output::Close { conn } => self.closed.push(conn),
                    Output::Peer { .. } => {}
                    Output::Pause { conn } => {
                        self.paused.insert(conn);
                    }
                    Output::Resume { conn } => {
                        self.paused.remove(&conn);
                    }
                }
            }
            if done.is_empty() {
                return;
            }
            for i in done {
                self.node.handle(self.now, i);
            }
        }
    }

    /// Sends one request frame (without its length prefix).
    pub fn request(&mut self, conn: ConnId, frame: Bytes) {
        self.handle(Input::Request { conn, frame });
    }

    /// Delivers bytes from another broker.
    pub fn peer(&mut self, from: i32, bytes: Bytes) {
        self.handle(Input::Peer { from: sluice_core::BrokerId(from), bytes });
    }

    pub fn close_conn(&mut self, conn: ConnId) {
        self.handle(Input::ConnClosed { conn });
    }

    /// Completes every sync issued so far (and any they lead to), in order.
    pub fn complete_syncs(&mut self) -> usize {
        let mut n = 0;
        while let Some((op, action)) = self.pending_syncs.pop_front() {
            let result = match self.fail_next_sync.take() {
                Some(e) => Err(e),
                None => self.disk.execute(action),
            };
            self.handle(Input::DiskDone { op, result });
            n += 1;
        }
        n
    }

    pub fn pending_syncs(&self) -> usize {
        self.pending_syncs.len()
    }

    /// Moves time forward and fires the node's timer if it is due.
    pub fn advance_ms(&mut self, ms: u64) {
        self.now.mono = self.now.mono.plus_millis(ms);
        self.now.wall_ms += i64::try_from(ms).expect("small");
        if self.node.poll_timeout().is_some_and(|t| t <= self.now.mono) {
            self.handle(Input::Timeout);
        }
    }

    /// The next response frame sent on `conn`, if any.
    pub fn take_response(&mut self, conn: ConnId) -> Option<Bytes> {
        self.responses.get_mut(&conn)?.pop_front()
    }

    /// Power loss and restart: pending syncs never happen, the disk keeps what it keeps, a
    /// fresh node recovers from it.
    pub fn crash_and_restart(&mut self, rng: &mut impl rand::Rng) -> CrashReport {
        self.pending_syncs.clear();
        self.responses.clear();
        let report = self.disk.crash(rng);
        self.seed += 1;
        self.now.mono = self.now.mono.plus_millis(1);
        self.node = Node::new(self.config.clone(), self.seed, self.now);
        self.boot();
        report
    }
}

/// Disk errors a test can inject.
pub fn no_space() -> DiskError {
    DiskError::NoSpace
}
