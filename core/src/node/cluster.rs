//! The node as a member of a cluster: it applies the committed metadata records in log order
//! (topics appear on every broker, each creating its own replicas' files), runs the broker
//! lifecycle (registration, heartbeats) towards the active controller, and, while it leads the
//! metadata quorum, is that controller: it registers brokers, fences the silent ones,
//! unfences the caught-up ones, and places new partitions on live brokers.
//!
//! The node that proposes a topic creates it (and its own replicas' files) at once, and rolls
//! it back if the proposal is lost; every other node creates it when the record is committed.
//! Applying a record the node already carries out is a no-op (topics are matched by id).

use std::collections::BTreeMap;

use rand::Rng;

use super::{JobDone, JobId, Node, PartState, Partition, Topic};
use crate::config::TopicSettings;
use crate::log::PartitionLog;
use crate::metadata::{self, MetaRecord, MetadataImage};
use crate::peer::{Body, BrokerMessage, ControllerClock};
use crate::quorum::{EntryKind, Epoch};
use crate::types::{Instant, Offset};

/// How often a broker not yet registered and unfenced asks the controller again.
const REGISTRATION_RETRY_MS: u64 = 250;

/// How soon an overdue broker session is checked again.
const FENCE_RECHECK_MS: u64 = 100;

/// A new partition's file operations: its directory and its first segment's three files.
pub(super) const FILE_OPS_PER_PARTITION: usize = 4;

#[derive(Default)]
pub(super) struct ClusterState {
    /// The committed metadata: what every node of the cluster agrees on.
    pub image: MetadataImage,
    /// Quorum entries below this offset are applied to the image and the node.
    pub applied: Offset,
    /// Start-up has applied the committed prefix of the metadata log.
    pub started: bool,
    /// Records of a pre-quorum `metadata.log`: applied first, at start-up.
    pub legacy: Vec<MetaRecord>,
    /// New at every start of the process: a registration with it is this process's.
    pub incarnation: u64,
    pub next_heartbeat: Option<Instant>,
    /// When this broker sent the latest heartbeat the controller answered live and
    /// unfenced: the controller fences no broker sooner than a session after it heard it.
    lease_from: Option<Instant>,
    /// The active controller's clock as its last heartbeat answer read it, with the
    /// controller's id and when the answer arrived here: forwards carry it on (`forwarding`).
    pub controller_clock: Option<(i32, ControllerClock, Instant)>,
    /// The quorum epoch this node last led in: the controller's state below belongs to it.
    led_epoch: Option<Epoch>,
    /// When the controller last heard each broker's heartbeat.
    last_heard: BTreeMap<i32, Instant>,
    /// A change about a broker proposed and not yet committed: not proposed again until then.
    in_flight: BTreeMap<i32, Offset>,
    /// Controller: brokers stopping (controlled shutdown), never unfenced again.
    shutting_down: std::collections::BTreeSet<i32>,
    /// This process was asked to stop.
    pub stopping: bool,
    /// Stopping, its leadership handed over: it takes no more writes and closes its logs
    /// (`summaries::close_logs`).
    pub closing: bool,
}

impl Node {
    /// The committed metadata this node has applied: the quorum offset it has applied up to,
    /// and the image built so far (`None` until start-up has caught up). For the simulator's
    /// checkers and tools.
    pub fn metadata_view(&self) -> Option<(Offset, &MetadataImage)> {
        self.cluster.started.then_some((self.cluster.applied, &self.cluster.image))
    }

    /// Whether this node is the active controller (for the simulator's faults).
    pub fn is_active_controller(&self) -> bool {
        self.is_controller()
    }

    pub(super) fn me(&self) -> i32 {
        self.config.node_id.0
    }

    /// Whether this node holds a replica of a partition with these replicas.
    pub(super) fn hosts(&self, replicas: &[i32]) -> bool {
        replicas.is_empty() || replicas.contains(&self.me())
    }

    /// The quorum leader, which is the active controller.
    pub(super) fn controller(&self) -> Option<i32> {
        self.meta.quorum.as_ref().and_then(|q| q.leader())
    }

    /// This node is the active controller: it leads the metadata quorum and has committed an
    /// entry of its own epoch, so every earlier entry of its log is committed too. Before
    /// that, a previous leader's proposal in its log may or may not be committed, and
    /// nothing can be decided about it (a CreateTopics answered TOPIC_ALREADY_EXISTS for a
    /// name that is only there could name a topic that never comes to be: seed 4737).
    pub(super) fn is_controller(&self) -> bool {
        self.meta.quorum.as_ref().is_some_and(|q| q.is_leader() && q.caught_up())
    }

    /// The partition's leader and leader epoch as the metadata says, if that leader may serve
    /// (this node, or a registered and unfenced broker).
    pub(super) fn partition_leader(&self, tp: super::Tp) -> Option<(i32, i32)> {
        let img = self.registration(tp)?;
        let live = img.leader == self.me()
            || (img.leader != metadata::NO_LEADER
                && self.cluster.image.brokers.get(&img.leader).is_some_and(|b| !b.fenced));
        live.then_some((img.leader, img.leader_epoch))
    }

    /// A broker's client endpoint: this node's from its config, others' from registration.
    pub(super) fn broker_endpoint(&self, id: i32) -> Option<(String, i32, Option<String>)> {
        if id == self.me() {
            return Some((self.config.advertised_host.clone(), self.config.advertised_port, self.config.rack.clone()));
        }
        self.cluster.image.brokers.get(&id).map(|b| (b.host.clone(), b.port, b.rack.clone()))
    }

    /// The brokers clients are told of: this one, and every other registered, unfenced one.
    pub(super) fn live_broker_ids(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.cluster.image.live_brokers().map(|(id, _)| id).collect();
        if !ids.contains(&self.me()) {
            ids.push(self.me());
            ids.sort_unstable();
        }
        ids
    }

    /// Replicas for `count` new partitions (the first numbered `first`), `rf` each, on the
    /// live brokers, round robin from a random start.
    pub(super) fn place_partitions(&mut self, count: usize, first: usize, rf: usize) -> Vec<Vec<i32>> {
        let brokers: Vec<(i32, Option<String>)> =
            self.live_broker_ids().into_iter().map(|id| (id, self.broker_endpoint(id).and_then(|e| e.2))).collect();
        let start = self.rng.gen_range(0..brokers.len().max(1));
        metadata::place(&brokers, count, rf, start, first)
    }

    /// The job that new partitions with these replicas are made under: this node's replicas'
    /// file operations, plus `others` steps (the record's commit, for the node proposing it),
    /// at least one. Returns it and how many replicas are this node's.
    pub(super) fn partitions_job(&mut self, replicas: &[Vec<i32>], others: usize, on_done: JobDone) -> (JobId, usize) {
        let local = replicas.iter().filter(|r| self.hosts(r)).count();
        (self.new_job((others + FILE_OPS_PER_PARTITION * local).max(1), on_done), local)
    }

    /// The partitions of a topic as this node keeps them: its own replicas start being
    /// created (their file operations counted in `job`); the others are `Remote`.
    pub(super) fn partitions_for(
        &mut self,
        topic: &str,
        first: i32,
        replicas: &[Vec<i32>],
        job: JobId,
    ) -> Vec<Partition> {
        let mut out = Vec::with_capacity(replicas.len());
        for (i, r) in replicas.iter().enumerate() {
            let p = first + i32::try_from(i).expect("bounded");
            if self.hosts(r) {
                out.push(self.new_partition(topic, p, r.clone(), job, PartState::Creating));
            } else {
                out.push(remote_partition(topic, p, r.clone()));
            }
        }
        out
    }

    // ---- applying committed records -----------------------------------------------------

    /// Applies what the quorum has committed since the last call. At start-up it waits until
    /// the quorum has caught up, then rebuilds the node from the whole committed prefix.
    pub(super) fn apply_committed(&mut self) {
        let Some(q) = self.meta.quorum.as_ref() else { return };
        let hw = if crate::mutants::active(crate::mutants::Mutant::ApplyUncommitted) {
            q.log().end()
        } else {
            q.high_watermark()
        };
        let gate = !crate::mutants::active(crate::mutants::Mutant::ServeBeforeMetadataCaughtUp);
        if !self.cluster.started && !q.caught_up() && gate {
            return;
        }
        // Start-up: the newest snapshot is the base, and the log applies from its end.
        let base = if self.cluster.started { None } else { self.take_loaded_snapshot() };
        if let Some(s) = &base {
            self.cluster.applied = self.cluster.applied.max(s.end);
        }
        let Some(q) = self.meta.quorum.as_ref() else { return };
        let mut records = Vec::new();
        let mut bytes = 0;
        for offset in self.cluster.applied..hw {
            if let Some(EntryKind::Record(r)) = q.log().entry(offset).map(|e| &e.kind) {
                bytes += r.len() as u64;
                records.push((offset, postcard::from_bytes::<MetaRecord>(r)));
            }
        }
        self.cluster.applied = self.cluster.applied.max(hw);
        if !self.cluster.started {
            self.cluster.started = true;
            let mut image = MetadataImage::default();
            let legacy = std::mem::take(&mut self.cluster.legacy);
            match base {
                Some(s) => image = s.image,
                None => {
                    for r in legacy {
                        image.apply(-1, &r);
                    }
                }
            }
            for (offset, r) in records {
                match r {
                    Ok(r) => image.apply(offset, &r),
                    Err(e) => return self.recovery_failed(format!("a metadata record does not decode: {e}")),
                };
            }
            self.cluster.image = image;
            self.meta_replayed();
            return self.records_applied(bytes);
        }
        for (offset, r) in records {
            match r {
                Ok(r) => {
                    if self.cluster.image.apply(offset, &r) {
                        self.on_meta_record(r);
                    }
                }
                Err(e) => tracing::error!(offset, error = %e, "a committed metadata record does not decode; skipped"),
            }
        }
        if bytes > 0 {
            self.records_applied(bytes);
        }
    }

    /// A snapshot fetched from the leader (this node fell behind the start of its log)
    /// replaces the image: what differs is carried out as the records in between would have
    /// been.
    pub(super) fn install_image(&mut self, snap: metadata::Snapshot) {
        tracing::info!(
            applied = self.cluster.applied,
            end = snap.end,
            "taking a fetched snapshot's image while running"
        );
        let old = std::mem::replace(&mut self.cluster.image, snap.image);
        self.cluster.applied = self.cluster.applied.max(snap.end);
        if crate::mutants::active(crate::mutants::Mutant::SnapshotImageNotCarriedOut) {
            return;
        }
        let new = self.cluster.image.clone();
        for (name, t) in &old.topics {
            if new.topics.get(name).is_none_or(|n| n.id != t.id) {
                self.remove_topic(name, t.id);
            }
        }
        for (name, t) in &new.topics {
            let Some(o) = old.topics.get(name).filter(|o| o.id == t.id) else {
                self.place_committed_topic(name);
                continue;
            };
            self.topic_changes_carried_out(name, t, o);
        }
        self.broker_changes_carried_out(&old, &new);
    }

    /// Creates this node's replicas of the image's topic `name`, as its record does.
    pub(super) fn place_committed_topic(&mut self, name: &str) {
        let Some(t) = self.cluster.image.topics.get(name) else { return };
        let configs = t.configs.clone().into_iter().collect();
        let replicas = t.parts.iter().map(|p| p.replicas.clone()).collect();
        self.on_meta_record(MetaRecord::TopicPlaced { name: name.to_string(), id: t.id, configs, replicas });
    }

    /// What changed of a topic between two images, carried out.
    fn topic_changes_carried_out(&mut self, name: &str, t: &metadata::TopicImage, o: &metadata::TopicImage) {
        if t.partitions > o.partitions {
            let from = usize::try_from(o.partitions).unwrap_or(0);
            let replicas = t.parts.iter().skip(from).map(|p| p.replicas.clone()).collect();
            let rec = MetaRecord::PartitionsPlaced { name: name.to_string(), id: t.id, from: o.partitions, replicas };
            self.on_meta_record(rec);
        }
        if t.configs != o.configs {
            self.topic_configs_altered(t.id);
        }
        for (&p, start) in &t.log_starts {
            if o.log_starts.get(&p) != Some(start) {
                self.records_deleted(t.id, p);
            }
        }
        for (i, (now, before)) in t.parts.iter().zip(&o.parts).enumerate() {
            let p = i32::try_from(i).expect("bounded");
            let moved =
                (&now.replicas, &now.adding, &now.removing) != (&before.replicas, &before.adding, &before.removing);
            if moved {
                self.replicas_changed(t.id, p);
            } else if now != before {
                self.partition_change_applied(t.id, p);
            }
        }
    }

    /// What changed of the brokers and their dynamic configs between two images, carried out.
    fn broker_changes_carried_out(&mut self, old: &MetadataImage, new: &MetadataImage) {
        for (&id, b) in &new.brokers {
            let rec = match old.brokers.get(&id) {
                Some(o) if o == b => continue,
                Some(o) if o.incarnation == b.incarnation && o.epoch == b.epoch => {
                    if b.fenced {
                        MetaRecord::BrokerFenced { id, epoch: b.epoch }
                    } else {
                        MetaRecord::BrokerUnfenced { id, epoch: b.epoch }
                    }
                }
                _ => MetaRecord::BrokerRegistered {
                    id,
                    incarnation: b.incarnation,
                    host: b.host.clone(),
                    port: b.port,
                    rack: b.rack.clone(),
                },
            };
            self.broker_record_applied(id, &rec);
        }
        let brokers: std::collections::BTreeSet<i32> =
            old.broker_configs.keys().chain(new.broker_configs.keys()).copied().collect();
        for b in brokers {
            if old.broker_configs.get(&b) != new.broker_configs.get(&b) {
                self.broker_configs_altered(b);
            }
        }
    }

    /// A committed record changed the image: carry it out here, unless this node has already.
    fn on_meta_record(&mut self, rec: MetaRecord) {
        match rec {
            MetaRecord::TopicPlaced { name, id, configs, replicas } => {
                match self.topics.get(&name) {
                    Some(t) if t.id == id => {
                        // This node proposed it and created it then; now its roles are known.
                        return self.refresh_topic_roles(&name);
                    }
                    Some(t) if t.creating.is_some() => {
                        // This node's own proposal of the name, as a controller that lost its
                        // leadership before the proposal committed: its creation fails, and
                        // its rollback places the committed topic (`topic_ready`).
                        tracing::info!(topic = %name, "the committed topic waits for this node's uncommitted one to roll back");
                        return;
                    }
                    Some(_) => {
                        // A controller checks its whole log for the name before proposing.
                        tracing::error!(topic = %name, "a committed topic's name is taken here by another topic");
                        return;
                    }
                    None => {}
                }
                let configs: BTreeMap<String, String> = configs.into_iter().collect();
                let settings = TopicSettings::resolve(&self.config, &configs).unwrap_or_else(|e| {
                    tracing::warn!(topic = %name, error = ?e, "topic config not valid here; using defaults");
                    TopicSettings::resolve(&self.config, &BTreeMap::new()).expect("defaults are valid")
                });
                let (job, local) = self.partitions_job(&replicas, 0, JobDone::TopicReady { name: name.clone(), id });
                let partitions = self.partitions_for(&name, 0, &replicas, job);
                self.names.insert(id, name.clone());
                let topic = Topic { id, configs, settings, partitions, creating: (local > 0).then_some(job) };
                self.topics.insert(name, topic);
                if local == 0 {
                    self.job_step(job, true);
                }
            }
            MetaRecord::PartitionsPlaced { name, id, from, replicas } => {
                let have = self.topics.get(&name).filter(|t| t.id == id).map(|t| t.partitions.len());
                if have != usize::try_from(from).ok() {
                    // Proposed here (already added: its roles are known now), or gone here.
                    return self.refresh_topic_roles(&name);
                }
                let (job, local) =
                    self.partitions_job(&replicas, 0, JobDone::PartitionsReady { name: name.clone(), id, from });
                let partitions = self.partitions_for(&name, from, &replicas, job);
                self.topics.get_mut(&name).expect("checked").partitions.extend(partitions);
                if local == 0 {
                    self.job_step(job, true);
                }
            }
            MetaRecord::TopicDeleted { name, id } => self.remove_topic(&name, id),
            MetaRecord::BrokerRegistered { id, .. }
            | MetaRecord::BrokerFenced { id, .. }
            | MetaRecord::BrokerUnfenced { id, .. } => self.broker_record_applied(id, &rec),
            MetaRecord::PartitionChanged { id, partition, .. } => self.partition_change_applied(id, partition),
            MetaRecord::PartitionReassigned { id, partition, .. } => self.replicas_changed(id, partition),
            MetaRecord::RecordsDeleted { id, partition, .. } => self.records_deleted(id, partition),
            MetaRecord::TopicConfigsAltered { id, .. } => self.topic_configs_altered(id),
            MetaRecord::BrokerConfigsAltered { broker, .. } => self.broker_configs_altered(broker),
            MetaRecord::TopicCreated { .. }
            | MetaRecord::PartitionsCreated { .. }
            | MetaRecord::ProducerIdsBlock { .. } => {}
        }
    }

    /// A broker registered, was fenced or unfenced: its partitions may need new leaders and
    /// ISRs, and this node's own roles may change.
    fn broker_record_applied(&mut self, id: i32, rec: &MetaRecord) {
        self.cluster.in_flight.remove(&id);
        self.replication.reconcile_due = true;
        if matches!(rec, MetaRecord::BrokerRegistered { .. }) {
            self.cluster.shutting_down.remove(&id); // a new process of that broker
        }
        if !matches!(rec, MetaRecord::BrokerUnfenced { .. }) {
            self.hw_moved = true;
        }
        if id == self.me() || matches!(rec, MetaRecord::BrokerRegistered { .. }) {
            // This node may lead less, or more, now; a restarted broker's partitions have no
            // leader now (`MetadataImage::leaderships_lost`), so their followers stop.
            self.refresh_all_roles();
        }
    }

    /// Whether the metadata log holds, past its high watermark, a topic of this name: a
    /// controller's whole log commits, so the name is taken though not yet applied.
    pub(super) fn topic_name_proposed(&self, name: &str) -> bool {
        let Some(q) = self.meta.quorum.as_ref() else { return false };
        (q.high_watermark()..q.log().end()).any(|offset| match q.log().entry(offset).map(|e| &e.kind) {
            Some(EntryKind::Record(r)) => matches!(
                postcard::from_bytes::<MetaRecord>(r),
                Ok(MetaRecord::TopicPlaced { name: n, .. } | MetaRecord::TopicCreated { name: n, .. }) if n == name
            ),
            _ => false,
        })
    }

    // ---- the broker side ----------------------------------------------------------------

    /// Registers with, or heartbeats to, the active controller when it is time.
    pub(super) fn broker_tick(&mut self) {
        if !self.config.is_cluster() || !self.cluster.started {
            return;
        }
        let now = self.now.mono;
        if self.cluster.next_heartbeat.is_some_and(|t| t > now) {
            return;
        }
        let me = self.me();
        let registered = self
            .cluster
            .image
            .brokers
            .get(&me)
            .filter(|b| {
                b.incarnation == self.cluster.incarnation
                    && b.host == self.config.advertised_host
                    && b.port == self.config.advertised_port
            })
            .map(|b| (b.epoch, b.fenced));
        // Until registered and unfenced, ask again sooner than a heartbeat interval.
        let settled = registered.is_some_and(|(_, fenced)| !fenced) && self.controller().is_some();
        let interval = self.config.broker_heartbeat_interval_ms;
        self.cluster.next_heartbeat =
            Some(now.plus_millis(if settled { interval } else { interval.min(REGISTRATION_RETRY_MS) }));
        let Some(controller) = self.controller() else { return };
        if let (true, Some((broker_epoch, _))) = (self.cluster.stopping, registered) {
            let msg = BrokerMessage::WantShutdown { broker_epoch };
            if controller == me {
                self.on_broker_message(me, msg);
            } else {
                self.send_peer(controller, Body::Broker(msg));
            }
        }
        let msg = match registered {
            Some((broker_epoch, _)) => BrokerMessage::Heartbeat {
                broker_epoch,
                caught_up: self.meta.quorum.as_ref().is_some_and(|q| q.caught_up()),
                sent_at: now.0,
            },
            None => BrokerMessage::Register {
                incarnation: self.cluster.incarnation,
                host: self.config.advertised_host.clone(),
                port: self.config.advertised_port,
                rack: self.config.rack.clone(),
            },
        };
        if controller == me {
            self.on_broker_message(me, msg);
        } else {
            self.send_peer(controller, Body::Broker(msg));
        }
    }

    pub(super) fn cluster_poll_timeout(&self) -> Option<Instant> {
        if !self.config.is_cluster() || !self.cluster.started {
            return None;
        }
        let heartbeat = self.cluster.next_heartbeat.unwrap_or(self.now.mono);
        // An overdue session the last check could not act on (a proposal refused while
        // storage recovers) is looked at again shortly, not at once and forever.
        let fence = self
            .is_controller()
            .then(|| self.next_fence_check())
            .flatten()
            .map(|t| t.max(self.now.mono.plus_millis(FENCE_RECHECK_MS)));
        Some(fence.map_or(heartbeat, |f| f.min(heartbeat)))
    }

    /// SIGTERM: stop taking leadership and ask the controller to move it away at once
    /// (rather than after a session without heartbeats).
    pub(super) fn shutdown_requested(&mut self) {
        if self.cluster.stopping {
            return;
        }
        tracing::info!("controlled shutdown: handing leadership over");
        self.cluster.stopping = true;
        self.cluster.next_heartbeat = None; // tell the controller now
        self.broker_tick();
    }

    /// Whether a stopping node may stop now: its leadership is handed over and its logs are
    /// closed (each synced, with its segments' summaries written), or it is not serving yet.
    pub fn ready_to_stop(&self) -> bool {
        self.handed_over() && (self.phase != super::Phase::Serving || self.logs_closed())
    }

    /// Whether a stopping node's leadership is handed over: it is not a cluster, or it leads
    /// no partition another in-sync replica could take (its leadership has moved, or has
    /// nowhere to go) and it is in no other leader's ISR (so that acks=all does not wait for
    /// it). The controller's fence does both; the node waits for the ISR changes themselves,
    /// which are records of their own after the fence: a node stopping on its fence alone could
    /// take the quorum's last majority with it and leave them uncommitted, its successors
    /// waiting out their shutdown for leadership they already hold. Neither waits for the
    /// fence where there is nothing to hand over, as for the last node of a cluster stopped
    /// one by one, whose quorum is gone and could not fence it anyway.
    pub(super) fn handed_over(&self) -> bool {
        if !self.config.is_cluster() || !self.cluster.started {
            return self.cluster.stopping;
        }
        self.cluster.stopping && self.waited_on().next().is_none()
    }

    /// The partitions a stopping node still waits on: those it leads with another in-sync
    /// replica, and those another leads with it in the ISR.
    fn waited_on(&self) -> impl Iterator<Item = (&String, usize, &metadata::PartitionImage)> {
        let me = self.me();
        self.cluster.image.topics.iter().flat_map(move |(name, t)| {
            t.parts.iter().enumerate().map(move |(i, p)| (name, i, p)).filter(move |(_, _, p)| {
                let leads = p.leader == me && p.replicas.len() > 1 && p.isr.iter().any(|r| *r != me);
                let follows = p.leader >= 0 && p.leader != me && p.isr.contains(&me);
                leads || follows
            })
        })
    }

    /// `waited_on`, written out for the log when a stopping node gives up waiting.
    pub fn handover_pending(&self) -> Vec<String> {
        self.waited_on().map(|(name, i, p)| format!("{name}-{i} (leader {}, isr {:?})", p.leader, p.isr)).collect()
    }

    // ---- the controller side ------------------------------------------------------------

    /// The controller state belongs to one epoch of leadership: a new one starts afresh, and
    /// gives every broker a full session to be heard from.
    pub(super) fn controller_epoch_check(&mut self) -> bool {
        let Some(q) = self.meta.quorum.as_ref().filter(|q| q.is_leader() && q.caught_up()) else {
            return false;
        };
        let epoch = q.epoch();
        if self.cluster.led_epoch != Some(epoch) {
            self.cluster.led_epoch = Some(epoch);
            self.cluster.in_flight.clear();
            self.replication_controller_reset();
            let now = self.now.mono;
            self.cluster.last_heard = self.cluster.image.brokers.keys().map(|id| (*id, now)).collect();
        }
        true
    }

    /// Proposes a change about broker `id`, unless one is still waiting to be committed.
    fn propose_broker_change(&mut self, id: i32, rec: MetaRecord) {
        let hw = self.meta.quorum.as_ref().map_or(0, |q| q.high_watermark());
        if self.cluster.in_flight.get(&id).is_some_and(|at| *at >= hw) {
            return;
        }
        let job = self.new_job(1, JobDone::Nothing);
        if let Some(offset) = self.meta_append(&rec, job) {
            self.cluster.in_flight.insert(id, offset);
        }
    }

    /// A message from a broker (this node's own broker included) to the controller, or the
    /// controller's answer.
    pub(super) fn on_broker_message(&mut self, from: i32, msg: BrokerMessage) {
        match msg {
            BrokerMessage::HeartbeatResponse { broker_epoch, fenced, sent_at, clock } => {
                self.on_controller_clock(from, clock);
                self.on_heartbeat_answer(from, broker_epoch, fenced, sent_at)
            }
            BrokerMessage::Register { incarnation, host, port, rack } => {
                self.on_register(from, incarnation, host, port, rack)
            }
            BrokerMessage::Heartbeat { broker_epoch, caught_up, sent_at } => {
                self.on_heartbeat(from, broker_epoch, caught_up, sent_at)
            }
            BrokerMessage::AllocateProducerIds => {
                if self.controller_epoch_check() && from != self.me() {
                    self.allocate_producer_ids_for(from);
                }
            }
            BrokerMessage::ProducerIdsGranted { end } => self.producer_ids_granted(end),
            BrokerMessage::WantShutdown { broker_epoch } => self.on_want_shutdown(from, broker_epoch),
            BrokerMessage::AlterPartition { topic, partition, leader_epoch, partition_epoch, isr } => {
                if self.controller_epoch_check() {
                    self.on_alter_partition(from, topic, partition, leader_epoch, partition_epoch, isr);
                }
            }
            BrokerMessage::WriteTxnMarker { req, marker, topic, partition } => {
                self.on_write_txn_marker(from, req, marker, &topic, partition);
            }
            BrokerMessage::TxnMarkerWritten { req, error } => self.on_txn_marker_written(req, error),
            BrokerMessage::VerifyTxn { id, transactional_id, partitions, add } => {
                self.on_verify_txn(from, id, &transactional_id, &partitions, add)
            }
            BrokerMessage::TxnVerified { id, codes } => self.on_txn_verified(id, &codes),
            BrokerMessage::ResignLeadership { topic, partition, leader_epoch } => {
                if self.controller_epoch_check() {
                    self.on_resign_leadership(from, topic, partition, leader_epoch);
                }
            }
            BrokerMessage::Forward { id, frame, clock } => self.on_forward(from, id, frame, clock),
            BrokerMessage::DeleteRecords { topic, partition, offset } => {
                self.on_delete_records(topic, partition, offset)
            }
            BrokerMessage::Forwarded { id, frame } => self.on_forwarded(id, frame),
            BrokerMessage::CreateTopic { name } => {
                if !self.controller_epoch_check() || self.topics.contains_key(&name) {
                    return;
                }
                if metadata::valid_topic_name(&name) && !self.topic_name_proposed(&name) {
                    // The coordinators' topics get their own partition counts and configs.
                    let (n, rf, configs) = self.internal_topic_spec(&name).unwrap_or_else(|| {
                        (self.config.num_partitions, self.auto_create_replication_factor(), BTreeMap::new())
                    });
                    match self.create_topic(&name, n, rf, configs) {
                        Ok(_) => tracing::info!(topic = %name, partitions = n, "creating a topic a broker asked for"),
                        Err(e) => {
                            tracing::warn!(topic = %name, error = ?e, "could not create a topic a broker asked for")
                        }
                    }
                }
            }
        }
    }

    /// A broker asks to be registered: proposed unless registered so already.
    fn on_register(&mut self, from: i32, incarnation: u64, host: String, port: i32, rack: Option<String>) {
        if !self.controller_epoch_check() {
            return;
        }
        let same = self
            .cluster
            .image
            .brokers
            .get(&from)
            .is_some_and(|b| b.incarnation == incarnation && b.host == host && b.port == port && b.rack == rack);
        if !same {
            tracing::info!(broker = from, %host, port, "registering broker");
            self.propose_broker_change(from, MetaRecord::BrokerRegistered { id: from, incarnation, host, port, rack });
        }
    }

    /// A broker's heartbeat: it is alive; unfence it once it has caught up (unless it is
    /// stopping), and answer with its epoch and fencing.
    fn on_heartbeat(&mut self, from: i32, broker_epoch: i64, caught_up: bool, sent_at: u64) {
        if !self.controller_epoch_check() {
            return;
        }
        let known = self.cluster.image.brokers.get(&from).filter(|b| b.epoch == broker_epoch).map(|b| b.fenced);
        if let Some(fenced) = known {
            self.cluster.last_heard.insert(from, self.now.mono);
            if fenced && caught_up && !self.cluster.shutting_down.contains(&from) {
                tracing::info!(broker = from, "unfencing broker");
                self.propose_broker_change(from, MetaRecord::BrokerUnfenced { id: from, epoch: broker_epoch });
            }
        }
        let (epoch, fenced) = (known.map(|_| broker_epoch), known.unwrap_or(true));
        if from == self.me() {
            self.on_heartbeat_answer(from, epoch, fenced, sent_at);
        } else {
            let clock =
                ControllerClock { epoch: self.meta.quorum.as_ref().map_or(0, |q| q.epoch()), at: self.now.mono.0 };
            let answer = BrokerMessage::HeartbeatResponse { broker_epoch: epoch, fenced, sent_at, clock };
            self.send_peer(from, Body::Broker(answer));
        }
    }

    /// The controller's clock, from its answer to a heartbeat: kept while it is the
    /// controller this node knows, the reading that puts the controller's clock latest.
    /// Both readings are lower bounds on it (an answer takes time to arrive), so the later
    /// one is the closer.
    fn on_controller_clock(&mut self, from: i32, clock: ControllerClock) {
        if self.controller() != Some(from) {
            return;
        }
        let now = self.now.mono;
        let later = match self.cluster.controller_clock {
            Some((id, c, arrived)) if id == from && c.epoch == clock.epoch => {
                clock.at > c.at.saturating_add(now.0.saturating_sub(arrived.0))
            }
            _ => true,
        };
        if later {
            self.cluster.controller_clock = Some((from, clock, now));
        }
    }

    /// When this broker's controller reads its clock, at least: the reading of its last
    /// heartbeat answer plus the time since it arrived. `None` when no answer came from it.
    pub(super) fn controller_clock_now(&self, controller: i32) -> Option<ControllerClock> {
        let (id, c, arrived) = self.cluster.controller_clock?;
        let since = self.now.mono.0.saturating_sub(arrived.0);
        (id == controller).then_some(ControllerClock { epoch: c.epoch, at: c.at.saturating_add(since) })
    }

    /// The controller answered a heartbeat of this broker: answered live and unfenced under
    /// the broker's current registration, it renews the lease from the heartbeat's sending.
    fn on_heartbeat_answer(&mut self, from: i32, broker_epoch: Option<i64>, fenced: bool, sent_at: u64) {
        tracing::debug!(from, ?broker_epoch, fenced, "heartbeat answered");
        let current = self.cluster.image.brokers.get(&self.me()).map(|b| b.epoch);
        let sent_at = Instant(sent_at);
        // A time from the future is not this process's (a garbled or foreign answer).
        if fenced || broker_epoch.is_none() || broker_epoch != current || sent_at > self.now.mono {
            return;
        }
        if self.cluster.lease_from.is_none_or(|f| f < sent_at) {
            self.cluster.lease_from = Some(sent_at);
        }
    }

    /// Whether this broker may act on its leaderships as a coordinator: a broker of a
    /// cluster whose last heartbeat the controller answered was sent less than its session
    /// ago (less a heartbeat interval, for clocks that run apart) cannot have been fenced and
    /// replaced yet. One that went longer (paused, or cut off from the controller) may be a
    /// zombie whose metadata has not yet told it so: its coordinators answer
    /// COORDINATOR_NOT_AVAILABLE until a heartbeat is answered again. A single node always
    /// holds it.
    pub(super) fn holds_lease(&self) -> bool {
        if !self.config.is_cluster() {
            return true;
        }
        let session = self.config.broker_session_timeout_ms;
        let lease = session.saturating_sub(self.config.broker_heartbeat_interval_ms).max(session / 2);
        self.cluster.lease_from.is_some_and(|f| self.now.mono < f.plus_millis(lease))
    }

    /// A broker stopping (controlled shutdown): fence it, which moves its leadership to
    /// other in-sync replicas, and never unfence it again while it says so.
    fn on_want_shutdown(&mut self, from: i32, broker_epoch: i64) {
        if !self.controller_epoch_check() {
            return;
        }
        let live = self.cluster.image.brokers.get(&from).filter(|b| b.epoch == broker_epoch && !b.fenced);
        if self.cluster.shutting_down.insert(from) || live.is_some() {
            tracing::info!(broker = from, "broker shutting down; fencing it to move its leadership");
        }
        if live.is_some() {
            self.propose_broker_change(from, MetaRecord::BrokerFenced { id: from, epoch: broker_epoch });
        }
    }

    /// When the next live broker's session runs out, among those this controller would fence
    /// then: none before its leadership is set up, none with a change still in flight (a
    /// deadline it would not act on must not wake the node, or it would wake it forever).
    fn next_fence_check(&self) -> Option<Instant> {
        let q = self.meta.quorum.as_ref()?;
        if self.cluster.led_epoch != Some(q.epoch()) {
            return None;
        }
        let session = self.config.broker_session_timeout_ms;
        let hw = q.high_watermark();
        self.cluster
            .image
            .live_brokers()
            .filter(|(id, _)| *id != self.me() && self.cluster.in_flight.get(id).is_none_or(|at| *at < hw))
            .map(|(id, _)| self.cluster.last_heard.get(&id).map_or(self.now.mono, |t| t.plus_millis(session)))
            .min()
    }

    /// Fences every unfenced broker not heard from for a session.
    pub(super) fn fence_silent_brokers(&mut self) {
        if !self.config.is_cluster() || !self.controller_epoch_check() {
            return;
        }
        let now = self.now.mono;
        let session = self.config.broker_session_timeout_ms;
        let hw = self.meta.quorum.as_ref().map_or(0, |q| q.high_watermark());
        let silent: Vec<(i32, i64)> = self
            .cluster
            .image
            .live_brokers()
            .filter(|(id, _)| *id != self.me())
            .filter(|(id, _)| self.cluster.last_heard.get(id).is_none_or(|t| now.millis_since(*t) >= session))
            .filter(|(id, _)| self.cluster.in_flight.get(id).is_none_or(|at| *at < hw))
            .map(|(id, b)| (id, b.epoch))
            .collect();
        for (id, epoch) in silent {
            tracing::warn!(broker = id, "no heartbeat for a session; fencing broker");
            self.propose_broker_change(id, MetaRecord::BrokerFenced { id, epoch });
        }
    }

    /// The replication factor of a topic created because a client named it:
    /// `default.replication.factor`.
    pub(super) fn auto_create_replication_factor(&self) -> i16 {
        self.config.replication.default_replication_factor
    }

    /// Asks the controller to create a topic (automatic creation on a broker that is not it).
    pub(super) fn ask_controller_to_create(&mut self, name: &str) {
        match self.controller() {
            Some(c) if c != self.me() => {
                self.send_peer(c, Body::Broker(BrokerMessage::CreateTopic { name: name.to_string() }))
            }
            _ => {}
        }
    }
}

/// A partition another broker holds: no files here.
pub(super) fn remote_partition(topic: &str, partition: i32, replicas: Vec<i32>) -> Partition {
    Partition {
        replicas,
        log: PartitionLog::empty(metadata::partition_dir(topic, partition)),
        state: PartState::Remote,
        sync: None,
        recovery_sync_failures: 0,
        copy: 0,
        log_start_wanted: 0,
        written_end: 0,
        role: crate::replica::Role::Idle { leader_epoch: 0 },
    }
}
