//! sluice-sim: seeded runs of the real sluice-core node under faults, with checkers.
//!
//! Contract: a run is a pure function of its seed (and the mutant, if any): the same seed
//! gives the same trace hash on any machine. Each seed draws its own plan (partitions,
//! clients, fault rates: swarm testing) from its own stream, so the workload does not change
//! when a fault knob does.

pub mod checker;
pub mod cluster;
pub mod cluster_txn;
pub mod codec;
pub mod commits;
pub mod compactor;
pub mod deleter;
pub mod group;
pub mod group848;
pub mod metadata_watch;
pub mod quorum;
pub mod quorum_checker;
pub mod readers;
pub mod replica_watch;
pub mod replicated;
pub mod timeline;
pub mod txn;
pub mod workload;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_core::NodeConfig;
use sluice_runtime_sim::{Env, Nanos, Stats, World, MS, US};

use workload::{Plan, Workload};

/// What one run did and found.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub mutant: Option<String>,
    /// `--safety-ms`, when the run was given one (the replay command gives it again).
    pub safety_ms: Option<u64>,
    pub plan: String,
    pub sim_ns: Nanos,
    pub stats: Stats,
    pub acks: u64,
    pub consumed: u64,
    pub group_assignments: u64,
    pub group_commits: u64,
    pub txns_committed: u64,
    pub txns_aborted: u64,
    pub violations: Vec<String>,
    pub trace: u64,
    pub trace_lines: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn replay_command(&self) -> String {
        let m = self.mutant.as_ref().map(|m| format!(" --mutant {m}")).unwrap_or_default()
            + &self.safety_ms.map(|ms| format!(" --safety-ms {ms}")).unwrap_or_default();
        format!("cargo run --release -p sluice-sim -- run --seed {}{m}", self.seed)
    }

    pub fn summary(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        out += &format!(
            "seed {}{}\n",
            self.seed,
            self.mutant.as_ref().map(|m| format!(" (mutant {m})")).unwrap_or_default()
        );
        out += &format!("plan: {}\n", self.plan);
        out += &format!("simulated {:.3} s, {} events\n", self.sim_ns as f64 / 1e9, s.events);
        out += &format!(
            "records acknowledged {}, consumed {}; group assignments {}, commits acknowledged {}; transactions committed {}, aborted {}\n",
            self.acks, self.consumed, self.group_assignments, self.group_commits, self.txns_committed, self.txns_aborted
        );
        out += &format!(
            "faults: {} crashes ({} torn writes, {} files lost writes), {} stops, {} sync failures, {} corrupted reads, {} disk-full spells, {} connection resets, {} clogs\n",
            s.crashes, s.torn_writes, s.lost_writes, s.stops, s.sync_failures, s.read_corruptions, s.disk_fulls, s.resets, s.clogs
        );
        if self.ok() {
            out += "checkers: acknowledged-not-lost ok, one-value-per-offset ok, no-phantom-values ok, producer-order ok, high-watermark-monotonic ok, reads-below-high-watermark ok, contiguous-reads ok, one-owner-per-generation ok, commits-never-go-back ok, nothing-skipped ok, idempotent-exactly-once-in-order ok, producer-ids-unique ok, no-aborted-read ok, transactions-all-or-nothing ok, last-stable-monotonic ok, liveness ok\n";
        } else {
            out += "checkers: FAILED\n";
            for v in &self.violations {
                out += &format!("  {v}\n");
            }
            out += &format!("replay: {}\n", self.replay_command());
        }
        out += &format!("trace={:016x}", self.trace);
        out
    }
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOpts {
    pub mutant: Option<String>,
    pub keep_trace: bool,
    /// Overrides the safety phase's length.
    pub safety_ms: Option<u64>,
    pub scenario: Scenario,
    /// The cluster scenario with disk faults (failed syncs, corrupted reads) on every node.
    /// A flag rather than drawn per seed, so that the seeds swept without it (and their
    /// replay commands) keep their runs.
    pub disk_faults: bool,
}

/// What a run drives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scenario {
    /// The broker node with Kafka clients (`run`).
    #[default]
    Default,
    /// The metadata quorum's voters on their own (`quorum::run`).
    Quorum,
    /// Three full nodes forming a cluster (`cluster::run`).
    Cluster,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "default" => Some(Scenario::Default),
            "quorum" => Some(Scenario::Quorum),
            "cluster" => Some(Scenario::Cluster),
            _ => None,
        }
    }
}

/// Any scenario's run, reduced to what the CLI and the sweep print.
pub struct Outcome {
    pub ok: bool,
    pub summary: String,
    pub first_violation: String,
    pub replay: String,
    pub events: u64,
    pub sim_ns: Nanos,
    pub trace_lines: Vec<String>,
    /// Every violation the checkers found, each starting `t=<ms>ms: `.
    pub violations: Vec<String>,
}

pub fn run_scenario(seed: u64, opts: &RunOpts) -> Outcome {
    match opts.scenario {
        Scenario::Default => {
            let r = run(seed, opts);
            Outcome {
                ok: r.ok(),
                summary: r.summary(),
                first_violation: r.violations.first().cloned().unwrap_or_default(),
                replay: r.replay_command(),
                events: r.stats.events,
                sim_ns: r.sim_ns,
                trace_lines: r.trace_lines,
                violations: r.violations,
            }
        }
        Scenario::Cluster => {
            let r = cluster::run(seed, opts);
            Outcome {
                ok: r.ok(),
                summary: r.summary(),
                first_violation: r.violations.first().cloned().unwrap_or_default(),
                replay: r.replay_command(),
                events: r.events,
                sim_ns: r.sim_ns,
                trace_lines: r.trace_lines,
                violations: r.violations,
            }
        }
        Scenario::Quorum => {
            let r = quorum::run(seed, opts);
            Outcome {
                ok: r.ok(),
                summary: r.summary(),
                first_violation: r.violations.first().cloned().unwrap_or_default(),
                replay: r.replay_command(),
                events: r.stats.events,
                sim_ns: r.sim_ns,
                trace_lines: Vec::new(),
                violations: r.violations,
            }
        }
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.gen_range(0..xs.len())]
}

/// The plan and the environment a seed draws.
pub fn draw(seed: u64, opts: &RunOpts) -> (Plan, Env, NodeConfig) {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0f5c_e7a1_0000);
    let safety = opts.safety_ms.map_or(pick(&mut r, &[2_000u64, 5_000, 10_000]) * MS, |ms| ms * MS);
    let plan = Plan {
        partitions: r.gen_range(1..=3),
        producers: r.gen_range(1..=3),
        consumers: r.gen_range(1..=2),
        values_per_producer: r.gen_range(1_000..5_000),
        batch_max: r.gen_range(1..=8),
        in_flight_max: r.gen_range(1..=5),
        produce_interval: pick(&mut r, &[2u64, 5, 10, 20]) * MS,
        safety,
        liveness: 60_000 * MS,
        crash_every: pick(&mut r, &[None, Some(300 * MS), Some(1_000 * MS), Some(3_000 * MS)]),
        stop_every: None,
        clog_every: pick(&mut r, &[None, Some(500 * MS), Some(2_000 * MS)]),
        reset_every: pick(&mut r, &[None, Some(200 * MS), Some(1_000 * MS)]),
        disk_full_every: pick(&mut r, &[None, None, Some(500 * MS), Some(2_000 * MS)]),
        group_members: 0,
        static_members: false,
        member_crash_every: None,
        member_stall_every: None,
        member_leave_every: None,
        kip848: false,
        idempotent: false,
        txn_producers: 0,
        txn_stall_every: None,
    };
    // The group's shape comes from a stream of its own, so runs without a group draw what
    // they drew before groups existed.
    let mut g = ChaCha8Rng::seed_from_u64(seed ^ 0x6a0f_5e1e_c7ed_0000);
    let mut plan = plan;
    plan.group_members = pick(&mut g, &[0usize, 1, 2, 3, 3]);
    plan.static_members = g.gen_bool(0.3);
    plan.member_crash_every = pick(&mut g, &[None, Some(1_000 * MS), Some(3_000 * MS)]);
    plan.member_stall_every = pick(&mut g, &[None, Some(1_000 * MS), Some(3_000 * MS)]);
    plan.member_leave_every = pick(&mut g, &[None, Some(2_000 * MS)]);
    let initial_delay = pick(&mut g, &[0u64, 100, 1_000]);
    plan.kip848 = g.gen_bool(0.5);
    // Idempotence from a stream of its own too: two seeds in three, as clients default to it.
    let mut i = ChaCha8Rng::seed_from_u64(seed ^ 0x1de8_9073_e0ce_0000);
    plan.idempotent = i.gen_bool(2.0 / 3.0);
    // Transactions from a stream of their own: transactional producers in half the seeds.
    let mut t = ChaCha8Rng::seed_from_u64(seed ^ 0x7a4e_0c0f_fee0_0000);
    plan.txn_producers = pick(&mut t, &[0usize, 0, 1, 2]);
    plan.txn_stall_every = pick(&mut t, &[None, Some(2_000 * MS), Some(5_000 * MS)]);
    // Controlled stops from a stream of their own: in half the seeds.
    let mut s = ChaCha8Rng::seed_from_u64(seed ^ 0x5709_c0de_5a1e_0000);
    plan.stop_every = pick(&mut s, &[None, None, Some(500 * MS), Some(2_000 * MS)]);
    let env = Env {
        net_latency: (pick(&mut r, &[20u64, 100, 500]) * US, pick(&mut r, &[1u64, 3, 10]) * MS),
        disk_latency: (2 * US, pick(&mut r, &[20u64, 200]) * US),
        sync_latency: (50 * US, pick(&mut r, &[500u64, 3_000]) * US),
        sync_fail: pick(&mut r, &[0.0, 0.0, 0.01, 0.05]),
        read_corrupt: pick(&mut r, &[0.0, 0.0, 0.01, 0.05]),
        clock_offset_max: pick(&mut r, &[0u64, 1_000]) * MS,
        clock_drift_ppm_max: pick(&mut r, &[0u64, 200]),
        ..Env::default()
    };
    let mut node = NodeConfig::default();
    node.log.segment_bytes = pick(&mut r, &[2_000u64, 20_000, 1 << 20]);
    node.group.min_session_timeout_ms = 100;
    node.group.initial_rebalance_delay_ms = initial_delay;
    node.group.consumer_session_timeout_ms = crate::group848::SESSION_TIMEOUT_MS;
    node.group.consumer_heartbeat_interval_ms = crate::group848::HEARTBEAT_INTERVAL_MS;
    node.txn_abort_check_interval_ms = 200;
    (plan, env, node)
}

/// Runs one seed to the end. A panic (a broken invariant in core, a livelock) is a finding,
/// reported like any other violation.
pub fn run(seed: u64, opts: &RunOpts) -> Report {
    match std::panic::catch_unwind(|| run_inner(seed, opts)) {
        Ok(r) => r,
        Err(e) => {
            let msg = panic_message(&*e);
            Report {
                seed,
                mutant: opts.mutant.clone(),
                safety_ms: opts.safety_ms,
                plan: String::new(),
                sim_ns: 0,
                stats: Stats::default(),
                acks: 0,
                consumed: 0,
                group_assignments: 0,
                group_commits: 0,
                txns_committed: 0,
                txns_aborted: 0,
                violations: vec![format!("panic: {msg}")],
                trace: 0,
                trace_lines: Vec::new(),
            }
        }
    }
}

/// What a run's panic said (a broken invariant's message), with the run's mutant turned off.
pub(crate) fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    sluice_core::mutants::set(None);
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

fn run_inner(seed: u64, opts: &RunOpts) -> Report {
    let mutant = opts
        .mutant
        .as_deref()
        .map(|m| sluice_core::mutants::by_name(m).unwrap_or_else(|| panic!("unknown mutant {m}")));
    sluice_core::mutants::set(mutant);
    let (plan, env, mut node) = draw(seed, opts);
    let compactor = compactor::Compactor::draw(seed, &mut node);
    let plan_text = format!(
        "{} partitions, {} producers{}{} x up to {} values (batches <= {}, {} in flight), {} consumers, {} group members{}{} (crash every {:?} ms, stall every {:?} ms, leave every {:?} ms, initial delay {} ms), safety {} ms; crash every {:?} ms, stop every {:?} ms, clog every {:?} ms, reset every {:?} ms, disk full every {:?} ms; sync fail {}, read corrupt {}, segment {} B",
        plan.partitions,
        plan.producers,
        if plan.idempotent { " (acks=all idempotent)" } else { "" },
        if plan.txn_producers > 0 {
            format!(" + {} transactional (stall every {:?} ms)", plan.txn_producers, plan.txn_stall_every.map(|n| n / MS))
        } else {
            String::new()
        },
        plan.values_per_producer,
        plan.batch_max,
        plan.in_flight_max,
        plan.consumers,
        plan.group_members,
        if plan.static_members { " (static)" } else { "" },
        if plan.kip848 && plan.group_members > 0 { " (KIP-848)" } else { "" },
        plan.member_crash_every.map(|n| n / MS),
        plan.member_stall_every.map(|n| n / MS),
        plan.member_leave_every.map(|n| n / MS),
        node.group.initial_rebalance_delay_ms,
        plan.safety / MS,
        plan.crash_every.map(|n| n / MS),
        plan.stop_every.map(|n| n / MS),
        plan.clog_every.map(|n| n / MS),
        plan.reset_every.map(|n| n / MS),
        plan.disk_full_every.map(|n| n / MS),
        env.sync_fail,
        env.read_corrupt,
        node.log.segment_bytes,
    );
    let mut w = World::new(seed, vec![node], env);
    if opts.keep_trace {
        w.trace.keep_lines();
    }
    let plan_text = match &compactor {
        Some(c) => format!("{plan_text}; {}", c.describe()),
        None => plan_text,
    };
    let mut wl = Workload::new(plan.clone(), compactor, &mut w);
    let deadline = plan.safety + plan.liveness;
    let mut liveness_failed = false;
    while wl.finished_at.is_none() {
        if w.next_event_at().is_none_or(|t| t > deadline) {
            liveness_failed = true;
            break;
        }
        w.step(&mut wl);
    }
    let end = w.now();
    if !liveness_failed {
        wl.checker.finish(end);
    } else {
        let state = w.node(0).map_or("down".to_string(), |n| n.describe());
        wl.checker.on_error(
            end,
            format!(
                "liveness: the workload did not finish within {} s of healing; node: {state}; {}",
                plan.liveness / 1_000_000_000,
                wl.describe()
            ),
        );
    }
    sluice_core::mutants::set(None);
    Report {
        seed,
        mutant: opts.mutant.clone(),
        safety_ms: opts.safety_ms,
        plan: plan_text,
        sim_ns: end,
        stats: w.stats.clone(),
        acks: wl.checker.acks,
        consumed: wl.checker.consumed,
        group_assignments: wl.checker.assignments,
        group_commits: wl.checker.commits,
        txns_committed: wl.checker.txns_committed,
        txns_aborted: wl.checker.txns_aborted,
        violations: wl.checker.violations.clone(),
        trace: w.trace.hash(),
        trace_lines: w.trace.take_lines(),
    }
}
