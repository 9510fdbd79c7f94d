//! The `quorum` scenario: three or five metadata-quorum voters under crashes (one node, or
//! all at once, losing unsynced writes), pauses past their timeouts, partitions (symmetric,
//! one-way, an isolated leader, a bridge), controlled stops (in two seeds of three, half or
//! nine in ten of the single-node crashes of a leader come after it resigns: KRaft's
//! EndQuorumEpoch) and a lossy, duplicating, reordering network,
//! while a client proposes records to whoever it believes leads (at most 50 unanswered).
//! Then every fault heals and the quorum must elect a leader, commit a new record, and have
//! every node know all that is committed, within a bound.
//! `quorum_checker` says what is checked.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_core::quorum::{EntryKind, NotLeader, Persisted, QuorumConfig, Write};
use sluice_core::Offset;
use sluice_runtime_sim::quorum_world::{node_index, QuorumEnv, QuorumHarness, QuorumStats, QuorumWorld};
use sluice_runtime_sim::{Nanos, MS, US};

use crate::quorum_checker::QuorumChecker;
use crate::RunOpts;

#[derive(Clone, Debug)]
pub struct QuorumPlan {
    pub voters: usize,
    pub safety: Nanos,
    pub liveness: Nanos,
    pub propose_every: Nanos,
    pub crash_every: Option<Nanos>,
    /// Chance that a crash takes every node down at once.
    pub crash_all: f64,
    pub partition_every: Option<Nanos>,
    pub pause_every: Option<Nanos>,
    /// Chance that a voter crashes within the sync latency after granting a vote (and a
    /// candidate after voting for itself): the window in which a vote is not yet durable.
    pub crash_after_vote: f64,
    /// Chance that a new leader crashes within 50 ms of taking office: while entries of
    /// earlier epochs it holds may be on a majority but its own first entry is not yet.
    pub crash_after_election: f64,
    /// Chance that a crash of one node is a controlled stop: a leader resigns first.
    pub resign_before_crash: f64,
}

const PROPOSE: u64 = 1;
const CRASH: u64 = 2;
const PARTITION: u64 = 3;
const PAUSE: u64 = 4;
const HEAL: u64 = 5;
/// Records a client keeps offered and unanswered at most.
const PENDING_MAX: usize = 50;
/// Crashes node `token >> 8`.
const CRASH_NODE: u64 = 7;
/// Heals the partition of generation `token >> 8`.
const HEAL_LINKS: u64 = 6;

/// The seed's stream for controlled stops, apart from the rest.
const STOP_STREAM: u64 = 0x5709_7e51_6e00_0000;

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.gen_range(0..xs.len())]
}

pub fn draw(seed: u64, opts: &RunOpts) -> (QuorumPlan, QuorumEnv) {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x9a0e_0f5c_e7a1_0000);
    let plan = QuorumPlan {
        voters: pick(&mut r, &[3, 3, 5]),
        safety: opts.safety_ms.map_or(pick(&mut r, &[5_000u64, 15_000, 30_000]) * MS, |ms| ms * MS),
        liveness: 60_000 * MS,
        propose_every: pick(&mut r, &[2u64, 10, 50]) * MS,
        crash_every: pick(&mut r, &[None, Some(200 * MS), Some(1_000 * MS), Some(3_000 * MS)]),
        crash_all: pick(&mut r, &[0.0, 0.1, 0.3]),
        partition_every: pick(&mut r, &[None, Some(500 * MS), Some(2_000 * MS)]),
        pause_every: pick(&mut r, &[None, Some(1_000 * MS), Some(4_000 * MS)]),
        crash_after_vote: pick(&mut r, &[0.0, 0.2]),
        crash_after_election: pick(&mut r, &[0.0, 0.3]),
        // From a stream of its own: the other draws stay as they were before stops existed.
        resign_before_crash: pick(&mut ChaCha8Rng::seed_from_u64(seed ^ STOP_STREAM), &[0.0, 0.5, 0.9]),
    };
    // Kafka's timeouts, or a third of them (more elections per simulated second).
    let scale = pick(&mut r, &[1u64, 3]);
    let mut config = QuorumConfig::new(0, []);
    config.election_timeout_ms = 1_000 / scale;
    config.fetch_timeout_ms = 2_000 / scale;
    config.fetch_max_wait_ms = 500 / scale;
    config.fetch_max_entries = pick(&mut r, &[2usize, 20, 1_000]);
    let env = QuorumEnv {
        net_latency: (pick(&mut r, &[50u64, 300]) * US, pick(&mut r, &[1u64, 5, 30]) * MS),
        loss: pick(&mut r, &[0.0, 0.01, 0.05, 0.2]),
        duplicate: pick(&mut r, &[0.0, 0.01, 0.1]),
        sync_latency: (100 * US, pick(&mut r, &[1u64, 5, 30]) * MS),
        clock_drift_ppm_max: pick(&mut r, &[0u64, 500]),
        // Drawn last: the plans of seeds drawn before sync failures existed stay as they were.
        sync_fail: 0.0,
        config,
    };
    let env = QuorumEnv { sync_fail: pick(&mut r, &[0.0, 0.0, 0.01, 0.05]), ..env };
    (plan, env)
}

/// A record offered to a leader, not yet known committed or lost.
struct Pending {
    /// Offered after healing: its acknowledgement is the liveness goal.
    after_heal: bool,
    node: usize,
    inc: u64,
    offset: Offset,
    value: Vec<u8>,
}

struct Run {
    plan: QuorumPlan,
    checker: QuorumChecker,
    /// The node the client believes leads.
    hint: Option<usize>,
    next_value: u64,
    pending: Vec<Pending>,
    partition_gen: u64,
    healed_at: Option<Nanos>,
    /// The first record acknowledged after healing.
    after_heal: Option<Offset>,
    finished_at: Option<Nanos>,
    /// Nodes to crash shortly (see `crash_after_vote`), and the stream that decides it.
    crash_soon: Vec<(usize, Nanos)>,
    /// The last epoch each node was seen leading.
    led: Vec<i32>,
    rng: ChaCha8Rng,
    /// Decides which crashes are controlled stops.
    stop_rng: ChaCha8Rng,
    /// `SLUICE_SIM_VERBOSE=1`: every write and state change on stderr.
    verbose: bool,
    last_state: Vec<String>,
}

impl QuorumHarness for Run {
    fn on_write(&mut self, now: Nanos, node: usize, w: &Write) {
        if self.verbose {
            let what = match w {
                Write::Append { offset, entries } => {
                    format!("append at {offset}: {:?}", entries.iter().map(|e| e.epoch).collect::<Vec<_>>())
                }
                w => format!("{w:?}"),
            };
            eprintln!("{:>12.6} node {node} {what}", now as f64 / 1e9);
        }
        let vote = matches!(w, Write::State { voted_for: Some(_), .. });
        if vote && now < self.plan.safety && self.rng.gen_bool(self.plan.crash_after_vote) {
            self.crash_soon.push((node, 0));
        }
        self.checker.on_write(now, node, w);
    }

    fn on_start(&mut self, _now: Nanos, node: usize, persisted: &Persisted) {
        self.checker.on_start(node, persisted);
        self.pending.retain(|p| p.node != node);
    }

    fn after_node_event(&mut self, w: &QuorumWorld, node: usize) {
        let Some(q) = w.quorum(node) else { return };
        if q.is_leader() && self.led[node] != q.epoch() {
            self.led[node] = q.epoch();
            if w.now() < self.plan.safety && self.rng.gen_bool(self.plan.crash_after_election) {
                self.crash_soon.push((node, 50 * MS));
            }
        }
        if self.verbose {
            let line = format!(
                "epoch {} {} leader {:?} voted {:?} hw {} end {} durable {}",
                q.epoch(),
                role_name(q.role()),
                q.leader(),
                q.voted_for(),
                q.high_watermark(),
                q.log().end(),
                q.durable_end()
            );
            if self.last_state.get(node) != Some(&line) {
                eprintln!("{:>12.6} node {node} {line}", w.now() as f64 / 1e9);
                self.last_state[node] = line;
            }
        }
        self.checker.after_event(w.now(), node, q);
        let inc = w.nodes[node].inc;
        let hw = q.high_watermark();
        let mut acked = Vec::new();
        // A record is acknowledged once the high watermark of the node that took it passes
        // it; it is indefinite (never acknowledged) once that node's log no longer holds it.
        self.pending.retain(|p| {
            if p.node != node {
                return true;
            }
            let held = matches!(q.log().entry(p.offset).map(|e| &e.kind), Some(EntryKind::Record(r)) if *r == p.value);
            if held && p.offset < hw && p.inc == inc {
                acked.push((p.offset, p.value.clone(), p.after_heal));
            }
            held && p.offset >= hw && p.inc == inc
        });
        for (o, v, after_heal) in acked {
            if after_heal && self.after_heal.is_none() {
                self.after_heal = Some(o);
            }
            self.checker.acked.push((o, v));
        }
        self.check_finished(w);
    }

    fn on_timer(&mut self, w: &mut QuorumWorld, token: u64) {
        let safety = w.now() < self.plan.safety;
        match token & 0xff {
            PROPOSE => self.propose(w),
            CRASH if safety => self.crash(w),
            CRASH_NODE => {
                let downtime = w.fault_rng().gen_range(10..1_500) * MS;
                w.crash(usize::try_from(token >> 8).expect("small"), downtime);
            }
            PARTITION if safety => self.partition(w),
            HEAL_LINKS if token >> 8 == self.partition_gen => w.cut.clear(),
            PAUSE if safety => self.pause(w),
            HEAL => {
                // Healing ends partitions and message loss (what TCP would retransmit);
                // crashes and pauses stop being scheduled and end by themselves.
                w.cut.clear();
                w.env.loss = 0.0;
                self.healed_at = Some(w.now());
            }
            _ => {}
        }
    }
}

impl Run {
    fn propose(&mut self, w: &mut QuorumWorld) {
        w.set_timer(PROPOSE, self.plan.propose_every);
        if self.healed_at.is_some() && (!self.pending.is_empty() || self.after_heal.is_some()) {
            return; // after healing, one record at a time until one is acknowledged
        }
        if self.pending.len() >= PENDING_MAX {
            return; // a client waits for answers before it sends more
        }
        let n = w.nodes.len();
        let node = match self.hint {
            Some(i) => i,
            None => w.workload_rng().gen_range(0..n),
        };
        self.next_value += 1;
        let value = format!("v{}", self.next_value).into_bytes();
        match w.propose(node, value.clone(), self) {
            Ok(offset) => {
                let after_heal = self.healed_at.is_some();
                self.pending.push(Pending { after_heal, node, inc: w.nodes[node].inc, offset, value })
            }
            Err(NotLeader::Leader(l)) => self.hint = l.and_then(|l| node_index(l, n)),
        }
    }

    /// A node that leads (or any) is more interesting to hit.
    fn victim(w: &mut QuorumWorld) -> usize {
        let leader = (0..w.nodes.len()).find(|&i| w.quorum(i).is_some_and(|q| q.is_leader()));
        let n = w.nodes.len();
        let any = w.fault_rng().gen_range(0..n);
        match leader {
            Some(l) if w.fault_rng().gen_bool(0.5) => l,
            _ => any,
        }
    }

    fn crash(&mut self, w: &mut QuorumWorld) {
        let downtime = w.fault_rng().gen_range(10..1_500) * MS;
        if w.fault_rng().gen_bool(self.plan.crash_all) {
            for i in 0..w.nodes.len() {
                w.crash(i, downtime);
            }
        } else {
            let v = Self::victim(w);
            if self.stop_rng.gen_bool(self.plan.resign_before_crash) {
                w.resign(v, self);
            }
            w.crash(v, downtime);
        }
        let every = self.plan.crash_every.expect("scheduled");
        let next = w.fault_rng().gen_range(every / 2..every * 3 / 2);
        w.set_timer(CRASH, next);
    }

    fn partition(&mut self, w: &mut QuorumWorld) {
        let n = w.nodes.len();
        w.cut.clear();
        match w.fault_rng().gen_range(0..4) {
            0 => {
                // Symmetric: a random side against the rest.
                let side: Vec<bool> = (0..n).map(|_| w.fault_rng().gen_bool(0.5)).collect();
                for a in 0..n {
                    for b in (0..n).filter(|&b| side[a] != side[b]) {
                        w.cut.insert((a, b));
                    }
                }
            }
            1 => {
                // The leader (or someone) alone.
                let v = Self::victim(w);
                for o in (0..n).filter(|&o| o != v) {
                    w.cut.insert((v, o));
                    w.cut.insert((o, v));
                }
            }
            2 => {
                // One-way links.
                for a in 0..n {
                    for b in (0..n).filter(|&b| b != a) {
                        if w.fault_rng().gen_bool(0.3) {
                            w.cut.insert((a, b));
                        }
                    }
                }
            }
            _ => {
                // A bridge: two sides that only one node talks to.
                let bridge = w.fault_rng().gen_range(0..n);
                for a in (0..n).filter(|&a| a != bridge) {
                    for b in (0..n).filter(|&b| b != bridge && (a % 2) != (b % 2)) {
                        w.cut.insert((a, b));
                    }
                }
            }
        }
        self.partition_gen += 1;
        let hold = w.fault_rng().gen_range(200..3_000) * MS;
        w.set_timer(HEAL_LINKS | self.partition_gen << 8, hold);
        let every = self.plan.partition_every.expect("scheduled");
        let next = w.fault_rng().gen_range(every / 2..every * 3 / 2);
        w.set_timer(PARTITION, next);
    }

    fn pause(&mut self, w: &mut QuorumWorld) {
        let v = Self::victim(w);
        let until = w.now() + w.fault_rng().gen_range(300..4_000) * MS;
        w.pause(v, until);
        let every = self.plan.pause_every.expect("scheduled");
        let next = w.fault_rng().gen_range(every / 2..every * 3 / 2);
        w.set_timer(PAUSE, next);
    }

    /// Done once a record offered after healing is acknowledged and every node knows
    /// everything committed as committed.
    fn check_finished(&mut self, w: &QuorumWorld) {
        if self.after_heal.is_none() {
            return;
        }
        let c = self.checker.committed_len();
        let all = (0..w.nodes.len()).all(|i| w.quorum(i).is_some_and(|q| q.high_watermark() >= c));
        if all && self.finished_at.is_none() {
            self.finished_at = Some(w.now());
        }
    }
}

/// What one quorum run did and found.
#[derive(Debug, Clone)]
pub struct QuorumReport {
    pub seed: u64,
    pub mutant: Option<String>,
    /// `--safety-ms`, when the run was given one (the replay command gives it again).
    pub safety_ms: Option<u64>,
    pub plan: String,
    pub sim_ns: Nanos,
    pub stats: QuorumStats,
    pub leaders: usize,
    pub committed: Offset,
    pub acked: usize,
    pub violations: Vec<String>,
    pub trace: u64,
}

impl QuorumReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn replay_command(&self) -> String {
        let m = self.mutant.as_ref().map(|m| format!(" --mutant {m}")).unwrap_or_default()
            + &self.safety_ms.map(|ms| format!(" --safety-ms {ms}")).unwrap_or_default();
        format!("cargo run --release -p sluice-sim -- run --scenario quorum --seed {}{m}", self.seed)
    }

    pub fn summary(&self) -> String {
        let s = &self.stats;
        let mut out = format!(
            "seed {} scenario quorum{}\nplan: {}\nsimulated {:.3} s, {} events\n",
            self.seed,
            self.mutant.as_ref().map(|m| format!(" (mutant {m})")).unwrap_or_default(),
            self.plan,
            self.sim_ns as f64 / 1e9,
            s.events
        );
        out += &format!(
            "leaders elected {}, entries committed {}, records acknowledged {}\n",
            self.leaders, self.committed, self.acked
        );
        out += &format!(
            "faults: {} crashes ({} after a resignation), {} failed syncs ({} unsynced writes lost), {} pauses, {} of {} messages lost, {} duplicated; {} syncs\n",
            s.crashes, s.resignations, s.sync_failures, s.lost_writes, s.pauses, s.lost, s.messages, s.duplicated, s.syncs
        );
        if self.ok() {
            out += "checkers: one-leader-per-epoch ok, log-matching ok, committed-prefix-stable ok, leader-completeness ok, high-watermark-monotonic ok, acknowledged-not-lost ok, liveness ok\n";
        } else {
            out += "checkers: FAILED\n";
            for v in &self.violations {
                out += &format!("  {v}\n");
            }
            out += &format!("replay: {}\n", self.replay_command());
        }
        out + &format!("trace={:016x}", self.trace)
    }
}

/// Runs one seed of the quorum scenario. A panic is a finding like any other.
pub fn run(seed: u64, opts: &RunOpts) -> QuorumReport {
    match std::panic::catch_unwind(|| run_inner(seed, opts)) {
        Ok(r) => r,
        Err(e) => {
            let msg = crate::panic_message(&*e);
            QuorumReport {
                seed,
                mutant: opts.mutant.clone(),
                safety_ms: opts.safety_ms,
                plan: String::new(),
                sim_ns: 0,
                stats: QuorumStats::default(),
                leaders: 0,
                committed: 0,
                acked: 0,
                violations: vec![format!("panic: {msg}")],
                trace: 0,
            }
        }
    }
}

/// The plan and environment in one line, for the report.
fn describe(plan: &QuorumPlan, env: &QuorumEnv) -> String {
    format!(
        "{} voters, safety {} ms; propose every {} ms; crash every {:?} ms (all at once {}, after a vote {}, after an election {}, a leader's a controlled stop {}), partition every {:?} ms, pause every {:?} ms; election timeout {} ms, fetch timeout {} ms, {} entries per fetch; latency {}-{} us, loss {}, duplicate {}, sync up to {} us, sync failures {}, drift up to {} ppm",
        plan.voters,
        plan.safety / MS,
        plan.propose_every / MS,
        plan.crash_every.map(|n| n / MS),
        plan.crash_all,
        plan.crash_after_vote,
        plan.crash_after_election,
        plan.resign_before_crash,
        plan.partition_every.map(|n| n / MS),
        plan.pause_every.map(|n| n / MS),
        env.config.election_timeout_ms,
        env.config.fetch_timeout_ms,
        env.config.fetch_max_entries,
        env.net_latency.0 / US,
        env.net_latency.1 / US,
        env.loss,
        env.duplicate,
        env.sync_latency.1 / US,
        env.sync_fail,
        env.clock_drift_ppm_max,
    )
}

fn run_inner(seed: u64, opts: &RunOpts) -> QuorumReport {
    let mutant = opts
        .mutant
        .as_deref()
        .map(|m| sluice_core::mutants::by_name(m).unwrap_or_else(|| panic!("unknown mutant {m}")));
    sluice_core::mutants::set(mutant);
    let (plan, env) = draw(seed, opts);
    let plan_text = describe(&plan, &env);
    let mut run = Run {
        checker: QuorumChecker::new(plan.voters),
        hint: None,
        next_value: 0,
        pending: Vec::new(),
        partition_gen: 0,
        healed_at: None,
        after_heal: None,
        finished_at: None,
        crash_soon: Vec::new(),
        led: vec![0; plan.voters],
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0xc4a5_0a4e_7e00_0000),
        stop_rng: ChaCha8Rng::seed_from_u64(seed ^ STOP_STREAM ^ 1),
        verbose: std::env::var_os("SLUICE_SIM_VERBOSE").is_some(),
        last_state: vec![String::new(); plan.voters],
        plan: plan.clone(),
    };
    let mut w = QuorumWorld::new(seed, plan.voters, env, &mut run);
    w.set_timer(PROPOSE, plan.propose_every);
    w.set_timer(HEAL, plan.safety);
    for (every, token) in [(plan.crash_every, CRASH), (plan.partition_every, PARTITION), (plan.pause_every, PAUSE)] {
        if let Some(e) = every {
            w.set_timer(token, e);
        }
    }
    let deadline = plan.safety + plan.liveness;
    let sync_max = w.env.sync_latency.1;
    while run.finished_at.is_none() && w.next_event_at().is_some_and(|t| t <= deadline) {
        w.step(&mut run);
        for (node, within) in std::mem::take(&mut run.crash_soon) {
            let after = run.rng.gen_range(0..=within.max(sync_max));
            w.set_timer(CRASH_NODE | (node as u64) << 8, after);
        }
    }
    let end = w.now();
    finish(&mut run, &w, end);
    sluice_core::mutants::set(None);
    QuorumReport {
        seed,
        mutant: opts.mutant.clone(),
        safety_ms: opts.safety_ms,
        plan: plan_text,
        sim_ns: end,
        stats: w.stats.clone(),
        leaders: run.checker.leaders_elected(),
        committed: run.checker.committed_len(),
        acked: run.checker.acked.len(),
        violations: run.checker.violations.clone(),
        trace: w.trace.hash(),
    }
}

fn finish(run: &mut Run, w: &QuorumWorld, end: Nanos) {
    if run.finished_at.is_none() {
        let state: Vec<String> = (0..w.nodes.len())
            .map(|i| match w.quorum(i) {
                Some(q) => format!(
                    "node {i}: epoch {} {:?} leader {:?} hw {} end {} durable {} role {:?}",
                    q.epoch(),
                    role_name(q.role()),
                    q.leader(),
                    q.high_watermark(),
                    q.log().end(),
                    q.durable_end(),
                    q.role()
                ),
                None => format!("node {i}: down"),
            })
            .collect();
        run.checker.violations.push(format!(
            "liveness: no new record committed and known committed on every node within {} s of healing; {}",
            run.plan.liveness / 1_000_000_000,
            state.join("; ")
        ));
        return;
    }
    let best =
        (0..w.nodes.len()).filter_map(|i| w.quorum(i)).max_by_key(|q| q.high_watermark()).expect("all up at the end");
    run.checker.finish(end, best);
}

fn role_name(r: &sluice_core::quorum::Role) -> &'static str {
    use sluice_core::quorum::Role;
    match r {
        Role::Unattached { .. } => "unattached",
        Role::Prospective { .. } => "prospective",
        Role::Candidate { .. } => "candidate",
        Role::Leader(_) => "leader",
        Role::Follower { .. } => "follower",
    }
}
