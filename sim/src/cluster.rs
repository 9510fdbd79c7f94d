//! The `cluster` scenario: three (or, in a third of the seeds, five) full broker nodes (every
//! one a voter of the metadata quorum
//! and a broker) whose peer messages cross the simulated network, under crashes (one node at
//! a time or all at once, losing unsynced writes), isolations (every link of one node cut),
//! partitions (links cut one way, a bridge node between two sides, a random split, the active
//! controller alone), stalls, pauses (a stopped process that wakes believing what it
//! believed), controlled stops, and peer messages lost or delivered twice, while an
//! admin client creates topics through whichever node it reaches (following NOT_CONTROLLER
//! as Kafka's clients do). Then every fault heals and the cluster must converge.
//!
//! Checked:
//! - **metadata agreement**: two nodes that have applied the metadata log up to the same
//!   offset hold the same image (brokers, topics with their placement, producer id blocks),
//!   checked after every event;
//! - **acknowledged topics survive**: every CreateTopics answered with success is in every
//!   node's image at the end;
//! - **acknowledged config changes survive**: the admin client also sets `retention.ms` of
//!   created topics (IncrementalAlterConfigs, one at a time, each value larger than the last
//!   sent); at the end every node's image holds, for each topic, at least the last value
//!   acknowledged; every third change sets the cluster-wide dynamic `log.retention.ms`
//!   instead, and then every node's image holds at least the last value acknowledged and
//!   every node's configuration in force is that value (a restarted node re-applies it);
//! - **placement**: every replica of every partition is a registered broker;
//! - Metadata as clients see it (`metadata_watch`): leader epochs never go back on a broker,
//!   fenced brokers are not named;
//! - the replicated topic's producers (`replicated`) and readers (`readers`: Jepsen's
//!   nonmonotonic-poll, poll-skip and unseen, and dirty reads);
//! - **convergence** (liveness): after the heal, within a bound, every node serves, has
//!   applied the same offset, and sees every broker registered and unfenced.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_core::metadata::{MetadataImage, ALL_BROKERS};
use sluice_core::node::FORWARD_MAX_AGE_MS;
use sluice_core::{BrokerId, ConnId, NodeConfig, Offset};
use sluice_runtime_sim::{Env, Harness, Nanos, Stats, World, MS, US};

use crate::cluster_txn::{self, ClusterTxns};
use crate::codec;
use crate::commits::{self, Commits};
use crate::metadata_watch::{MetadataWatch, T_METADATA};
use crate::readers::{Readers, T_READ};
use crate::replica_watch::ReplicaWatch;
use crate::replicated::{self, Replicated};
use crate::RunOpts;

const CREATE: u64 = 1;
/// The key of the cluster-wide dynamic `log.retention.ms` among the acknowledged config
/// changes (topics are named `t<n>`).
const ALL_BROKERS_KEY: &str = "*";
const CRASH: u64 = 2;
const ISOLATE: u64 = 3;
const HEAL: u64 = 4;
const CLOG: u64 = 5;
const ALTER: u64 = 6;
const STOP: u64 = 7;
const PARTITION: u64 = 8;
const PAUSE: u64 = 9;
const ADMIN: usize = 0;

#[derive(Clone, Debug)]
pub struct ClusterPlan {
    /// Three nodes, or five (a third of the seeds).
    pub nodes: usize,
    pub safety: Nanos,
    pub liveness: Nanos,
    pub create_every: Nanos,
    pub crash_every: Option<Nanos>,
    pub isolate_every: Option<Nanos>,
    /// Every message to and from one node held for a while (a node that stalls, then wakes
    /// up believing what it believed before).
    pub clog_every: Option<Nanos>,
    /// Controlled stops (SIGTERM: leadership handed over, logs closed) and restarts.
    pub stop_every: Option<Nanos>,
    /// Partitions of the network rather than of a node: links cut one way, two sides only a
    /// bridge node talks to, a random split, or the active controller alone.
    pub partition_every: Option<Nanos>,
    /// A node paused (SIGSTOP, a long GC pause), the active controller half the time.
    pub pause_every: Option<Nanos>,
    /// Of the crashes, the share that take every node at once (a power cut).
    pub crash_all: f64,
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.gen_range(0..xs.len())]
}

pub fn draw(seed: u64, opts: &RunOpts) -> (ClusterPlan, Env, Vec<NodeConfig>) {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0xc105_7e70_0f5c_0000);
    // Drawn apart, so that a seed's other draws are those it had before five-node runs.
    let nodes = pick(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5a0d_e500_0000_0000), &[3usize, 3, 5]);
    let plan = ClusterPlan {
        nodes,
        safety: opts.safety_ms.map_or(pick(&mut r, &[5_000u64, 15_000]) * MS, |ms| ms * MS),
        liveness: 60_000 * MS,
        create_every: pick(&mut r, &[20u64, 100, 300]) * MS,
        crash_every: pick(&mut r, &[None, Some(500 * MS), Some(2_000 * MS)]),
        isolate_every: pick(&mut r, &[None, Some(1_000 * MS), Some(3_000 * MS)]),
        clog_every: None,
        stop_every: None,
        partition_every: None,
        pause_every: None,
        crash_all: 0.0,
    };
    let mut env = Env {
        net_latency: (50 * US, pick(&mut r, &[500u64, 5_000]) * US),
        sync_latency: (100 * US, pick(&mut r, &[2u64, 20]) * MS),
        ..Env::default()
    };
    let scale = pick(&mut r, &[1u64, 3]);
    let mut plan = plan;
    plan.clog_every = pick(&mut r, &[None, Some(1_000 * MS), Some(3_000 * MS)]);
    // Drawn apart, so the seed's other draws stay as they were.
    plan.stop_every =
        pick(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5709_c1a5_7e70_0000), &[None, Some(1_000 * MS), Some(3_000 * MS)]);
    draw_network_faults(seed, &mut plan, &mut env);
    // Disk faults on every node, leaders and followers alike: failed syncs (the log is cut
    // back to what is durable) and corrupted reads (recovery, coordinator loads and
    // replication reads must read again, never cut on one bad read).
    let (sync_fail, read_corrupt) = (pick(&mut r, &[0.0, 0.0, 0.01, 0.05]), pick(&mut r, &[0.0, 0.0, 0.01, 0.05]));
    if opts.disk_faults {
        (env.sync_fail, env.read_corrupt) = (sync_fail, read_corrupt);
    }
    // Metadata snapshots: often (a restart loads one and applies only the log after it), or
    // never within a run. Drawn apart, so the seed's other draws stay as they were.
    let snapshot_bytes =
        pick(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5a95_4a07_0000_0000), &[1024u64, 8192, 20 * 1024 * 1024]);
    let voters: BTreeMap<i32, (String, u16)> = (1..=nodes as i32).map(|id| (id, (format!("node{id}"), 9093))).collect();
    let configs = (1..=nodes as i32)
        .map(|id| NodeConfig {
            node_id: BrokerId(id),
            advertised_host: format!("node{id}"),
            voters: voters.clone(),
            quorum_election_timeout_ms: 1_000 / scale,
            quorum_fetch_timeout_ms: 2_000 / scale,
            broker_heartbeat_interval_ms: 2_000 / scale,
            broker_session_timeout_ms: 9_000 / scale,
            metadata_snapshot_bytes: snapshot_bytes,
            // Transactions left open past their timeout are aborted promptly.
            txn_abort_check_interval_ms: 200,
            replication: sluice_core::config::ReplicationConfig {
                replica_lag_time_max_ms: 3_000 / scale,
                replica_fetch_wait_max_ms: 500 / scale,
                // Preferred leaders taken back often: more leadership changes under faults.
                leader_imbalance_check_interval_ms: 3_000 / scale,
                ..Default::default()
            },
            ..NodeConfig::default()
        })
        .collect();
    (plan, env, configs)
}

/// The network's and processes' other faults, drawn apart so the seed's other draws stay as
/// they were.
fn draw_network_faults(seed: u64, plan: &mut ClusterPlan, env: &mut Env) {
    let mut n = ChaCha8Rng::seed_from_u64(seed ^ 0x9a27_1710_0000_0000);
    plan.partition_every = pick(&mut n, &[None, Some(1_000 * MS), Some(3_000 * MS)]);
    plan.pause_every = pick(&mut n, &[None, Some(1_500 * MS), Some(4_000 * MS)]);
    plan.crash_all = pick(&mut n, &[0.0, 0.0, 0.2]);
    env.peer_loss = pick(&mut n, &[0.0, 0.0, 0.01, 0.05]);
    env.peer_duplicate = pick(&mut n, &[0.0, 0.0, 0.01, 0.05]);
}

/// An image's fingerprint: its encoding as a snapshot (every map in it ordered), hashed
/// (FNV-1a).
/// (Its debug form, hashed before, cost a tenth of a cluster run in formatting.)
fn digest(image: &MetadataImage) -> u64 {
    sluice_core::metadata::encode_snapshot_of(0, 0, image)
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

struct Run {
    plan: ClusterPlan,
    rng: ChaCha8Rng,
    /// For the controlled stops, apart from `rng` so the other faults stay as they were.
    stop_rng: ChaCha8Rng,
    /// For the partitions, pauses and power cuts, apart likewise.
    net_rng: ChaCha8Rng,
    /// The topic being created: its name, partitions, the connection and correlation id.
    pending: Option<(String, i32, ConnId, i32)>,
    next_topic: u64,
    next_cid: i32,
    acked: BTreeMap<String, i32>,
    answers: BTreeMap<i16, u64>,
    /// Image digest by applied offset, and the node that first reported it.
    seen: BTreeMap<Offset, (u64, usize)>,
    last_applied: Vec<Option<Offset>>,
    violations: Vec<String>,
    healed: bool,
    /// A topic was created after the heal: the cluster takes changes again.
    acked_after_heal: bool,
    /// The config change in flight: topic, value, connection, correlation id, when sent.
    altering: Option<(String, i64, ConnId, i32, Nanos)>,
    next_value: i64,
    /// Per topic, the largest `retention.ms` acknowledged, and when its change was sent.
    configs_acked: BTreeMap<String, (i64, Nanos)>,
    /// Per topic, the changes whose outcome is unknown (the connection closed, or the answer
    /// was REQUEST_TIMED_OUT), and when each was sent: one may still be made, but no later
    /// than a forward's greatest age after it was sent.
    configs_unknown: BTreeMap<String, Vec<(i64, Nanos)>>,
    alter_answers: BTreeMap<i16, u64>,
    /// Producers on a replicated topic.
    repl: Replicated,
    /// Offset commits at coordinators that move.
    commits: Commits,
    /// Transactions whose coordinators and partition leaders move.
    txns: ClusterTxns,
    /// The white-box checks of every partition the workloads write.
    watch: ReplicaWatch,
    /// Metadata as clients ask for it, checked.
    meta: MetadataWatch,
    /// Consumers of the replicated topic.
    readers: Readers,
}

impl Run {
    fn violation(&mut self, w: &World, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("t={}ms: {what}", w.now() / MS));
        }
    }

    fn check_agreement(&mut self, w: &World) {
        for i in 0..self.plan.nodes {
            let Some((applied, image)) = w.node(i).and_then(|n| n.metadata_view()) else {
                self.last_applied[i] = None;
                continue;
            };
            if self.last_applied[i] == Some(applied) {
                continue;
            }
            self.last_applied[i] = Some(applied);
            let d = digest(image);
            match self.seen.get(&applied) {
                None => {
                    self.seen.insert(applied, (d, i));
                }
                Some(&(other, by)) if other != d => {
                    let msg = format!(
                        "node {} and node {} applied the metadata log to offset {applied} and hold different images",
                        by + 1,
                        i + 1
                    );
                    self.violation(w, msg);
                }
                Some(_) => {}
            }
        }
    }

    fn create(&mut self, w: &mut World) {
        if self.pending.is_some() {
            return;
        }
        let up: Vec<usize> = (0..self.plan.nodes).filter(|i| w.is_up(*i)).collect();
        if up.is_empty() {
            return;
        }
        let node = up[self.rng.gen_range(0..up.len())];
        let name = format!("t{}", self.next_topic);
        let partitions = self.rng.gen_range(1..=4);
        let mut t = CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(name.clone()));
        t.num_partitions = partitions;
        t.replication_factor = -1;
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 10_000;
        self.next_cid += 1;
        let conn = w.connect(ADMIN, node);
        w.send(conn, codec::frame(ApiKey::CreateTopics, codec::CREATE_TOPICS_VERSION, self.next_cid, &req));
        self.pending = Some((name, partitions, conn, self.next_cid));
    }

    /// Sets `retention.ms` of a created topic to the next value, through a node that is up (or,
    /// every third time, the cluster-wide `log.retention.ms`: the resource [`ALL_BROKERS_KEY`]).
    fn alter(&mut self, w: &mut World) {
        let up: Vec<usize> = (0..self.plan.nodes).filter(|i| w.is_up(*i)).collect();
        if self.altering.is_some() || up.is_empty() || self.acked.is_empty() {
            return;
        }
        let node = up[self.rng.gen_range(0..up.len())];
        let topics: Vec<&String> = self.acked.keys().collect();
        let mut topic = topics[self.rng.gen_range(0..topics.len())].clone();
        self.next_value += 1;
        let mut c = AlterableConfig::default();
        c.name = StrBytes::from_static_str("retention.ms");
        c.config_operation = 0; // SET
        c.value = Some(StrBytes::from_string(self.next_value.to_string()));
        let mut r = AlterConfigsResource::default();
        r.resource_type = 2; // TOPIC
        r.resource_name = StrBytes::from_string(topic.clone());
        if self.next_value % 3 == 0 {
            topic = ALL_BROKERS_KEY.to_string();
            c.name = StrBytes::from_static_str("log.retention.ms");
            r.resource_type = 4; // BROKER
            r.resource_name = StrBytes::from_static_str(""); // cluster-wide
        }
        r.configs = vec![c];
        let mut req = IncrementalAlterConfigsRequest::default();
        req.resources = vec![r];
        self.next_cid += 1;
        let conn = w.connect(ADMIN, node);
        w.send(conn, codec::frame(ApiKey::IncrementalAlterConfigs, codec::ALTER_CONFIGS_VERSION, self.next_cid, &req));
        self.altering = Some((topic, self.next_value, conn, self.next_cid, w.now()));
    }

    fn on_alter_response(&mut self, w: &mut World, frame: Bytes) {
        let Some((topic, value, conn, cid, sent)) = self.altering.take() else { return };
        w.close(conn);
        let version = codec::ALTER_CONFIGS_VERSION;
        match codec::decode::<IncrementalAlterConfigsResponse>(ApiKey::IncrementalAlterConfigs, version, frame) {
            Ok((got, resp)) if got == cid => {
                let code = resp.responses.first().map_or(-1, |r| r.error_code);
                *self.alter_answers.entry(code).or_default() += 1;
                match code {
                    0 => {
                        let v = self.configs_acked.entry(topic).or_default();
                        *v = (*v).max((value, sent));
                    }
                    7 => self.configs_unknown.entry(topic).or_default().push((value, sent)),
                    _ => {}
                }
            }
            Ok((got, _)) => self.violation(w, format!("IncrementalAlterConfigs answered with id {got}, sent {cid}")),
            Err(e) => self.violation(w, format!("IncrementalAlterConfigs answer does not decode: {e}")),
        }
    }

    fn final_checks(&mut self, w: &World) {
        let views: Vec<_> = (0..self.plan.nodes).map(|i| w.node(i).and_then(|n| n.metadata_view())).collect();
        let Some((_, first)) = views[0] else { return };
        for (name, (acked, acked_sent)) in self.configs_acked.clone() {
            // A change of unknown outcome sent less than a forward's greatest age before the
            // last acknowledged one may have been made after it (a little more for clocks
            // that drift apart).
            let late_ns = (FORWARD_MAX_AGE_MS + 10) * MS;
            let unknown = self.configs_unknown.get(&name).cloned().unwrap_or_default();
            let may_be_late = |v: i64| unknown.iter().any(|(uv, at)| *uv == v && at + late_ns > acked_sent);
            for (i, v) in views.iter().enumerate() {
                let have = v
                    .and_then(|(_, img)| match name.as_str() {
                        ALL_BROKERS_KEY => img.broker_configs.get(&ALL_BROKERS)?.get("log.retention.ms"),
                        _ => img.topics.get(&name)?.configs.get("retention.ms"),
                    })
                    .and_then(|v| v.parse::<i64>().ok());
                let in_force = w.node(i).map(|n| n.config().log.retention_ms);
                if name == ALL_BROKERS_KEY && have.is_some() && in_force != have {
                    let msg =
                        format!("node {} has log.retention.ms={have:?} in its image but {in_force:?} in force", i + 1);
                    self.violation(w, msg);
                }
                if have.is_none_or(|h| h < acked && !may_be_late(h)) {
                    let msg =
                        format!("topic {name}'s retention.ms={acked} was acknowledged but node {} has {have:?}", i + 1);
                    self.violation(w, msg);
                }
            }
        }
        for (name, partitions) in self.acked.clone() {
            for (i, v) in views.iter().enumerate() {
                let t = v.and_then(|(_, img)| img.topics.get(&name));
                if t.map(|t| t.partitions) != Some(partitions) {
                    self.violation(
                        w,
                        format!("topic {name} was created ({partitions} partitions) but node {} has {t:?}", i + 1),
                    );
                }
            }
        }
        for (name, t) in &first.topics {
            for r in t.parts.iter().flat_map(|p| &p.replicas) {
                if !first.brokers.contains_key(r) {
                    let msg = format!("topic {name} has a replica on broker {r}, which never registered");
                    self.violations.push(msg);
                }
            }
        }
    }

    /// Converged: every node serves, all applied the same offset, every broker live.
    /// What keeps the cluster from having converged after the heal, if anything.
    fn unsettled(&self, w: &World) -> Option<String> {
        let views: Vec<_> = (0..self.plan.nodes)
            .map(|i| w.node(i).filter(|n| n.is_serving()).and_then(|n| n.metadata_view()))
            .collect();
        let Some(Some((applied, image))) = views.first().copied() else {
            return Some("node 1 is not serving".into());
        };
        if !views.iter().all(|v| v.is_some_and(|(a, _)| a == applied)) {
            return Some("the nodes have not all applied the same metadata".into());
        }
        if image.live_brokers().count() != self.plan.nodes {
            return Some("not every broker is live".into());
        }
        if !self.acked_after_heal {
            return Some("no topic was created since the heal".into());
        }
        self.repl
            .unsettled(w)
            .or_else(|| self.readers.unsettled(w))
            .or_else(|| self.commits.unsettled())
            .or_else(|| self.txns.unsettled(w))
    }
}

impl Harness for Run {
    fn on_response(&mut self, w: &mut World, conn: ConnId, frame: Bytes) {
        if self.meta.owns(conn) {
            self.meta.on_response(w, frame);
            for p in 0..self.repl.partitions {
                if let Some(n) = self.meta.leader_of(replicated::TOPIC, p) {
                    self.repl.cached_leaders.insert(p, n);
                }
            }
            return;
        }
        if self.repl.owns(conn) {
            return self.repl.on_response(w, conn, frame);
        }
        if self.readers.owns(conn) {
            return self.readers.on_response(w, conn, frame, &self.repl);
        }
        if self.commits.owns(conn) {
            return self.commits.on_response(w, conn, frame);
        }
        if self.txns.owns(conn) {
            return self.txns.on_response(w, conn, frame);
        }
        if self.altering.as_ref().is_some_and(|a| a.2 == conn) {
            return self.on_alter_response(w, frame);
        }
        let Some((name, partitions, c, cid)) = self.pending.clone() else { return };
        if c != conn {
            return;
        }
        w.close(conn);
        self.pending = None;
        match codec::decode::<CreateTopicsResponse>(ApiKey::CreateTopics, codec::CREATE_TOPICS_VERSION, frame) {
            Ok((got, resp)) if got == cid => {
                let code = resp.topics.first().map_or(-1, |t| t.error_code);
                *self.answers.entry(code).or_default() += 1;
                match code {
                    0 => {
                        self.acked.insert(name, partitions);
                        self.next_topic += 1;
                        self.acked_after_heal |= self.healed;
                    }
                    // Another name: the first try may have been taken (answers lost), or not.
                    36 => self.next_topic += 1,
                    _ => {} // NOT_CONTROLLER, storage errors, not ready: try again elsewhere
                }
            }
            Ok((got, _)) => self.violation(w, format!("CreateTopics answered with correlation id {got}, sent {cid}")),
            Err(e) => self.violation(w, format!("CreateTopics answer does not decode: {e}")),
        }
        if !self.acked_after_heal {
            w.set_timer(ADMIN, CREATE, self.plan.create_every);
        }
    }

    fn on_closed(&mut self, w: &mut World, conn: ConnId) {
        if self.meta.owns(conn) {
            return self.meta.on_closed();
        }
        if self.repl.owns(conn) {
            return self.repl.on_closed(w, conn);
        }
        if self.readers.owns(conn) {
            return self.readers.on_closed(w, conn, &self.repl);
        }
        if self.commits.owns(conn) {
            return self.commits.on_closed(w, conn);
        }
        if self.txns.owns(conn) {
            return self.txns.on_closed(w, conn);
        }
        if let Some((topic, value, _, _, sent)) = self.altering.take_if(|a| a.2 == conn) {
            self.configs_unknown.entry(topic).or_default().push((value, sent));
            return;
        }
        if self.pending.as_ref().is_some_and(|p| p.2 == conn) {
            self.pending = None;
            // The topic may or may not exist: use another name.
            self.next_topic += 1;
            w.set_timer(ADMIN, CREATE, self.plan.create_every);
        }
    }

    fn on_timer(&mut self, w: &mut World, client: usize, token: u64) {
        match token {
            replicated::T_CREATE | replicated::T_PRODUCE | replicated::T_REASSIGN | crate::deleter::T_DELETE => {
                self.repl.on_timer(w, client, token)
            }
            commits::T_COMMIT => self.commits.on_timer(w, client, self.repl.created),
            T_METADATA => self.meta.on_timer(w),
            T_READ => self.readers.on_timer(w, client, self.repl.created),
            cluster_txn::T_TXN_CREATE | cluster_txn::T_TXN | cluster_txn::T_TXN_STALL => {
                self.txns.on_timer(w, client, token)
            }
            CREATE => {
                if self.pending.is_none() {
                    self.create(w);
                }
                if self.pending.is_none() && !self.acked_after_heal {
                    w.set_timer(ADMIN, CREATE, self.plan.create_every); // no node was up
                }
            }
            ALTER if !self.healed => {
                self.alter(w);
                w.set_timer(ADMIN, ALTER, self.plan.create_every / 2);
            }
            CRASH if !self.healed => self.crash(w),
            ISOLATE if !self.healed => {
                let i = self.rng.gen_range(0..self.plan.nodes);
                let until = w.now() + self.rng.gen_range(100..5_000) * MS;
                w.isolate(i, until);
                if let Some(e) = self.plan.isolate_every {
                    w.set_timer(ADMIN, ISOLATE, self.rng.gen_range(e / 2..e * 3 / 2));
                }
            }
            STOP if !self.healed => {
                let i = self.stop_rng.gen_range(0..self.plan.nodes);
                let down = self.stop_rng.gen_range(10..2_000) * MS;
                w.stop(i, down);
                if let Some(e) = self.plan.stop_every {
                    w.set_timer(ADMIN, STOP, self.stop_rng.gen_range(e / 2..e * 3 / 2));
                }
            }
            CLOG if !self.healed => {
                let i = self.rng.gen_range(0..self.plan.nodes);
                let until = w.now() + self.rng.gen_range(100..5_000) * MS;
                w.clog(i, until);
                if let Some(e) = self.plan.clog_every {
                    w.set_timer(ADMIN, CLOG, self.rng.gen_range(e / 2..e * 3 / 2));
                }
            }
            PARTITION if !self.healed => self.partition(w),
            PAUSE if !self.healed => self.pause(w),
            HEAL => {
                self.healed = true;
                self.repl.heal(w);
                self.commits.heal();
                self.txns.heal();
                w.heal();
                // One more creation after the heal: the cluster must take it.
                w.set_timer(ADMIN, CREATE, MS);
            }
            _ => {}
        }
    }
}

pub struct ClusterReport {
    pub seed: u64,
    pub mutant: Option<String>,
    /// `--safety-ms`, when the run was given one (the replay command gives it again).
    pub safety_ms: Option<u64>,
    pub disk_faults: bool,
    pub plan: String,
    pub sim_ns: Nanos,
    pub events: u64,
    /// The faults the run went through.
    pub stats: Stats,
    pub acked: usize,
    pub answers: BTreeMap<i16, u64>,
    /// Config changes acknowledged, and IncrementalAlterConfigs answers by error code.
    pub configs_acked: usize,
    pub alter_answers: BTreeMap<i16, u64>,
    /// Records acknowledged on the replicated topic, and Produce answers by error code.
    pub records_acked: usize,
    pub produce_answers: BTreeMap<i16, u64>,
    /// AlterPartitionReassignments answers by error code.
    pub reassign_answers: BTreeMap<i16, u64>,
    /// Offset commits acknowledged, and the offsets workload's answers by error code.
    pub commits_acked: u64,
    pub commit_answers: BTreeMap<i16, u64>,
    /// Transactions committed and aborted, as their producers learnt.
    pub txns_ended: (u64, u64),
    /// Records the readers read, their Fetch answers by error code, and Metadata answers.
    pub records_read: usize,
    pub fetch_answers: BTreeMap<i16, u64>,
    pub metadata_answers: u64,
    pub violations: Vec<String>,
    pub trace: u64,
    /// Every event as a JSON line, when asked for (`RunOpts::keep_trace`).
    pub trace_lines: Vec<String>,
}

impl ClusterReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn replay_command(&self) -> String {
        let m = self.mutant.as_ref().map(|m| format!(" --mutant {m}")).unwrap_or_default()
            + &self.safety_ms.map(|ms| format!(" --safety-ms {ms}")).unwrap_or_default();
        let d = if self.disk_faults { " --disk-faults" } else { "" };
        format!("cargo run --release -p sluice-sim -- run --scenario cluster --seed {}{m}{d}", self.seed)
    }

    pub fn summary(&self) -> String {
        let mut out = format!("seed {} (cluster)\nplan: {}\n", self.seed, self.plan);
        out += &format!(
            "simulated {:.3} s, {} events; topics acknowledged {}; CreateTopics answers by error code {:?}; topics with a config change acknowledged {}, IncrementalAlterConfigs answers by error code {:?}; replicated records acknowledged {}, Produce answers by error code {:?}, AlterPartitionReassignments answers by error code {:?}; offset commits acknowledged {}, coordinator answers by error code {:?}; transactions committed {}, aborted {}\n",
            self.sim_ns as f64 / 1e9,
            self.events,
            self.acked,
            self.answers,
            self.configs_acked,
            self.alter_answers,
            self.records_acked,
            self.produce_answers,
            self.reassign_answers,
            self.commits_acked,
            self.commit_answers,
            self.txns_ended.0,
            self.txns_ended.1
        );
        out += &format!(
            "records read {}, Fetch answers by error code {:?}; Metadata answers {}\n",
            self.records_read, self.fetch_answers, self.metadata_answers
        );
        let s = &self.stats;
        out += &format!(
            "faults: {} crashes ({} torn writes, {} files lost writes), {} stops, {} pauses, {} stalls, {} sync failures, {} corrupted reads, {} connection resets; peer messages lost {}, duplicated {}\n",
            s.crashes, s.torn_writes, s.lost_writes, s.stops, s.pauses, s.clogs, s.sync_failures, s.read_corruptions, s.resets, s.peer_lost, s.peer_duplicated
        );
        if self.ok() {
            out += "checkers: metadata-agreement ok, acknowledged-topics-survive ok, acknowledged-configs-survive ok, placement ok, metadata-epoch-kept ok, fenced-broker-hidden ok, one-leader-per-epoch ok, high-watermark-durable ok, high-watermark-kept ok, lost-write ok, inconsistent-offsets ok, duplicate ok, phantom ok, nonmonotonic-poll ok, dirty-read ok, poll-skip ok, unseen ok, lost-commit ok, phantom-commit ok, aborted-read ok, all-or-nothing ok, hanging ok, convergence ok\n";
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

pub fn run(seed: u64, opts: &RunOpts) -> ClusterReport {
    let mutant = opts
        .mutant
        .as_deref()
        .map(|m| sluice_core::mutants::by_name(m).unwrap_or_else(|| panic!("unknown mutant {m}")));
    sluice_core::mutants::set(mutant);
    let report = std::panic::catch_unwind(|| run_inner(seed, opts)).unwrap_or_else(|e| ClusterReport {
        seed,
        mutant: opts.mutant.clone(),
        safety_ms: opts.safety_ms,
        disk_faults: opts.disk_faults,
        plan: String::new(),
        sim_ns: 0,
        events: 0,
        stats: Stats::default(),
        acked: 0,
        answers: BTreeMap::new(),
        configs_acked: 0,
        alter_answers: BTreeMap::new(),
        records_acked: 0,
        produce_answers: BTreeMap::new(),
        reassign_answers: BTreeMap::new(),
        commits_acked: 0,
        commit_answers: BTreeMap::new(),
        txns_ended: (0, 0),
        records_read: 0,
        fetch_answers: BTreeMap::new(),
        metadata_answers: 0,
        violations: vec![format!("panic: {}", crate::panic_message(&*e))],
        trace: 0,
        trace_lines: Vec::new(),
    });
    sluice_core::mutants::set(None);
    report
}

/// The plan and environment in one line, for the report.
fn describe(plan: &ClusterPlan, env: &Env, config: &NodeConfig) -> String {
    format!(
        "{} nodes, safety {} ms; create a topic every {} ms; crash every {:?} ms (all at once {}), isolate every {:?} ms, stall every {:?} ms, stop every {:?} ms, partition every {:?} ms, pause every {:?} ms; peer messages lost {}, duplicated {}; election timeout {} ms, session {} ms, metadata snapshot every {} bytes; latency up to {} us, sync up to {} us; sync failures {}, read corruptions {}",
        plan.nodes,
        plan.safety / MS,
        plan.create_every / MS,
        plan.crash_every.map(|n| n / MS),
        plan.crash_all,
        plan.isolate_every.map(|n| n / MS),
        plan.clog_every.map(|n| n / MS),
        plan.stop_every.map(|n| n / MS),
        plan.partition_every.map(|n| n / MS),
        plan.pause_every.map(|n| n / MS),
        env.peer_loss,
        env.peer_duplicate,
        config.quorum_election_timeout_ms,
        config.broker_session_timeout_ms,
        config.metadata_snapshot_bytes,
        env.net_latency.1 / US,
        env.sync_latency.1 / US,
        env.sync_fail,
        env.read_corrupt,
    )
}

fn run_inner(seed: u64, opts: &RunOpts) -> ClusterReport {
    let (plan, env, configs) = draw(seed, opts);
    let repl = Replicated::new(plan.nodes, &mut ChaCha8Rng::seed_from_u64(seed ^ 0x7e91_1ca7_ed00_0000));
    let commits = Commits::new(plan.nodes, &mut ChaCha8Rng::seed_from_u64(seed ^ 0xc0aa_1175_0000_0000));
    let session = configs[0].broker_session_timeout_ms * MS;
    let txns = ClusterTxns::new(plan.nodes, session, &mut ChaCha8Rng::seed_from_u64(seed ^ 0x7a5c_7a5c_0000_0000));
    let readers =
        Readers::new(plan.nodes, repl.partitions, &mut ChaCha8Rng::seed_from_u64(seed ^ 0x4ead_e450_0000_0000));
    let plan_text = format!(
        "{}; {}; {}; {}; {}",
        describe(&plan, &env, &configs[0]),
        repl.describe(),
        readers.describe(),
        commits.describe(),
        txns.describe()
    );
    let mut run = Run::new(seed, plan.clone(), repl, readers, commits, txns);
    let mut w = World::new(seed, configs, env);
    if opts.keep_trace {
        w.trace.keep_lines();
    }
    run.start(&mut w);
    let deadline = plan.safety + plan.liveness;
    let mut converged = false;
    while w.next_event_at().is_some_and(|t| t <= deadline) {
        w.step(&mut run);
        run.check_agreement(&w);
        for msg in run.watch.observe(&w) {
            run.violation(&w, msg);
        }
        run.txns.observe(&mut w);
        run.meta.observe(&w);
        if run.healed && run.unsettled(&w).is_none() {
            converged = true;
            break;
        }
    }
    if !converged {
        run.not_converged(&w);
    }
    run.end_checks(&w);
    ClusterReport {
        seed,
        mutant: opts.mutant.clone(),
        safety_ms: opts.safety_ms,
        disk_faults: opts.disk_faults,
        plan: plan_text,
        sim_ns: w.now(),
        events: w.stats.events,
        stats: w.stats.clone(),
        acked: run.acked.len(),
        answers: run.answers.clone(),
        configs_acked: run.configs_acked.len(),
        alter_answers: run.alter_answers.clone(),
        records_acked: run.repl.acked(),
        commits_acked: run.commits.commits_acked,
        commit_answers: run.commits.answers.clone(),
        txns_ended: run.txns.ended(),
        records_read: run.readers.records_read(),
        fetch_answers: run.readers.answers.clone(),
        metadata_answers: run.meta.answers,
        produce_answers: run.repl.answers.clone(),
        reassign_answers: run.repl.reassign_answers.clone(),
        violations: run.violations.clone(),
        trace: w.trace.hash(),
        trace_lines: w.trace.take_lines(),
    }
}

impl Run {
    fn new(
        seed: u64,
        plan: ClusterPlan,
        repl: Replicated,
        readers: Readers,
        commits: Commits,
        txns: ClusterTxns,
    ) -> Run {
        let mut watch = ReplicaWatch::new(plan.nodes);
        let replicated = (0..repl.partitions).map(|p| (replicated::TOPIC, p, replicated::MIN_INSYNC_REPLICAS));
        for (topic, p, min_isr) in replicated.chain(commits.partitions_written()).chain(txns.partitions_written()) {
            watch.watch(topic, p, min_isr);
        }
        Run {
            watch,
            meta: MetadataWatch::new(plan.nodes, 250 * MS),
            readers,
            last_applied: vec![None; plan.nodes],
            plan,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xc105_7e70_a11c_0000),
            stop_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5709_5709_0000_0000),
            net_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x9a27_9a27_0000_0000),
            altering: None,
            next_value: 1_000_000,
            configs_acked: BTreeMap::new(),
            configs_unknown: BTreeMap::new(),
            alter_answers: BTreeMap::new(),
            pending: None,
            next_topic: 0,
            next_cid: 0,
            acked: BTreeMap::new(),
            answers: BTreeMap::new(),
            seen: BTreeMap::new(),
            violations: Vec::new(),
            healed: false,
            acked_after_heal: false,
            repl,
            commits,
            txns,
        }
    }

    /// The workloads' first timers, the admin client's and the faults'.
    fn start(&mut self, w: &mut World) {
        self.repl.start(w);
        self.commits.start(w);
        self.txns.start(w);
        self.meta.start(w);
        self.readers.start(w);
        let plan = &self.plan;
        w.set_timer(ADMIN, CREATE, plan.create_every);
        w.set_timer(ADMIN, ALTER, plan.create_every);
        w.set_timer(ADMIN, HEAL, plan.safety);
        let faults = [
            (plan.crash_every, CRASH),
            (plan.isolate_every, ISOLATE),
            (plan.clog_every, CLOG),
            (plan.stop_every, STOP),
            (plan.partition_every, PARTITION),
            (plan.pause_every, PAUSE),
        ];
        for (every, token) in faults {
            if let Some(e) = every {
                w.set_timer(ADMIN, token, e);
            }
        }
    }

    /// A node crashes (or, in a share of the crashes, every node: a power cut).
    fn crash(&mut self, w: &mut World) {
        let i = self.rng.gen_range(0..self.plan.nodes);
        let down = self.rng.gen_range(10..2_000) * MS;
        if self.plan.crash_all > 0.0 && self.net_rng.gen_bool(self.plan.crash_all) {
            (0..self.plan.nodes).for_each(|i| w.crash(i, down));
        } else {
            w.crash(i, down);
        }
        if let Some(e) = self.plan.crash_every {
            w.set_timer(ADMIN, CRASH, self.rng.gen_range(e / 2..e * 3 / 2));
        }
    }

    /// A node (the active controller half the time) is paused for a while.
    fn pause(&mut self, w: &mut World) {
        let i = self.controller_or_any(w);
        let until = w.now() + self.net_rng.gen_range(100..6_000) * MS;
        w.pause(i, until);
        if let Some(e) = self.plan.pause_every {
            w.set_timer(ADMIN, PAUSE, self.net_rng.gen_range(e / 2..e * 3 / 2));
        }
    }

    /// The checks at the end, every workload's, and their violations gathered.
    fn end_checks(&mut self, w: &World) {
        self.final_checks(w);
        self.repl.final_checks(w);
        self.txns.final_checks(w);
        self.readers.final_checks(w, &self.repl);
        self.violations.extend(self.repl.violations.iter().cloned());
        self.violations.extend(self.commits.violations.iter().cloned());
        self.violations.extend(self.txns.violations.iter().cloned());
        self.violations.extend(self.meta.violations.iter().cloned());
        self.violations.extend(self.readers.violations.iter().cloned());
    }

    /// The active controller half the time (when there is one), any node otherwise.
    fn controller_or_any(&mut self, w: &World) -> usize {
        let any = self.net_rng.gen_range(0..self.plan.nodes);
        let active = (0..self.plan.nodes).find(|&i| w.node(i).is_some_and(|n| n.is_active_controller()));
        match active {
            Some(c) if self.net_rng.gen_bool(0.5) => c,
            _ => any,
        }
    }

    /// Cuts links for a while: one-way links at random, two sides that only a bridge node
    /// talks to, a random split, or the active controller alone.
    fn partition(&mut self, w: &mut World) {
        let n = self.plan.nodes;
        let until = w.now() + self.net_rng.gen_range(200..5_000) * MS;
        let links: Vec<(usize, usize)> =
            (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).filter(|(a, b)| a != b).collect();
        match self.net_rng.gen_range(0..4) {
            0 => {
                for (a, b) in links {
                    if self.net_rng.gen_bool(0.3) {
                        w.cut_link(a, b, until);
                    }
                }
            }
            1 => {
                let bridge = self.net_rng.gen_range(0..n);
                for (a, b) in links.into_iter().filter(|&(a, b)| a != bridge && b != bridge && a % 2 != b % 2) {
                    w.cut_link(a, b, until);
                }
            }
            2 => {
                let side: Vec<bool> = (0..n).map(|_| self.net_rng.gen_bool(0.5)).collect();
                for (a, b) in links.into_iter().filter(|&(a, b)| side[a] != side[b]) {
                    w.cut_link(a, b, until);
                }
            }
            _ => {
                let c = self.controller_or_any(w);
                w.isolate(c, until);
            }
        }
        if let Some(e) = self.plan.partition_every {
            w.set_timer(ADMIN, PARTITION, self.net_rng.gen_range(e / 2..e * 3 / 2));
        }
    }

    /// The liveness violation of a run that did not converge: what kept it, and each node's
    /// state.
    fn not_converged(&mut self, w: &World) {
        let unsettled = self.unsettled(w).unwrap_or_default();
        let states: BTreeSet<String> = (0..self.plan.nodes)
            .map(|i| match w.node(i) {
                Some(n) => {
                    format!("node {}: {}", i + 1, n.describe().split("; ").take(2).collect::<Vec<_>>().join("; "))
                }
                None => format!("node {}: down", i + 1),
            })
            .collect();
        let msg = format!(
            "the cluster did not converge within {} s of the heal ({unsettled}): {states:?}",
            self.plan.liveness / 1_000 / MS
        );
        self.violation(w, msg);
    }
}
