//! Partition reassignment (KIP-455): AlterPartitionReassignments on the controller records a
//! partition's target replicas; the replicas being added are created where they land and
//! catch up as followers; once every target replica is in sync the controller records the
//! target alone (`PartitionImage::reassignment_done`, from `reconcile_partitions`), moving the
//! leadership off a leaving replica, and the leaving replicas delete their copies.
//! ListPartitionReassignments reports what runs.

use std::collections::BTreeSet;

use bytes::Bytes;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::*;

use super::groups::sb;
use super::{DiskOp, JobDone, JobId, Node, PartState, Purpose, Tp};
use crate::metadata::{self, PartitionImage, Refusal};
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, FrameError, RequestContext};
use crate::types::ConnId;

/// INVALID_REPLICATION_FACTOR, INVALID_REPLICA_ASSIGNMENT, NO_REASSIGNMENT_IN_PROGRESS.
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;

impl Node {
    /// AlterPartitionReassignments (0-1), on the controller. Each partition's target is
    /// checked (known partition, no duplicate, every broker registered; with v1 and
    /// `allow_replication_factor_change` false, as many replicas as now) and recorded; the
    /// answer waits for the records' commit. A cancel (`replicas` null) goes back to the
    /// original replicas. A partition with a change of this controller still uncommitted
    /// waits for it first (the next is computed from the committed registration).
    pub(super) fn handle_alter_partition_reassignments(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: AlterPartitionReassignmentsRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let mut resp = AlterPartitionReassignmentsResponse::default();
        resp.allow_replication_factor_change = req.allow_replication_factor_change;
        if !self.is_controller() {
            resp.error_code = KafkaError::NotController.code();
            self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
            return Ok(());
        }
        let named = req.topics.iter().flat_map(|t| t.partitions.iter().map(|p| (t.name.0.as_str(), p.partition_index)));
        if self.held_for_pending_change(named, conn, seq, &ctx, &body) {
            return Ok(());
        }
        let allow_rf_change = ctx.version < 1 || req.allow_replication_factor_change;
        let mut jobs = Vec::new();
        for t in &req.topics {
            let mut tr = ReassignableTopicResponse::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let target: Option<Vec<i32>> = p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
                let mut pr = ReassignablePartitionResponse::default();
                pr.partition_index = p.partition_index;
                match self.reassign(t.name.0.as_str(), p.partition_index, target.as_deref(), allow_rf_change) {
                    Ok(Some(job)) => jobs.push(((resp.responses.len(), tr.partitions.len()), job)),
                    Ok(None) => {}
                    Err((code, message)) => {
                        pr.error_code = code;
                        pr.error_message = Some(sb(message));
                    }
                }
                tr.partitions.push(pr);
            }
            resp.responses.push(tr);
        }
        // A record lost with this controller's leadership: the client asks the next one.
        self.respond_when_done(conn, seq, &ctx, resp, jobs, |resp, _| {
            resp.error_code = KafkaError::NotController.code();
        });
        Ok(())
    }

    /// Checks one partition's reassignment and proposes it. `Ok(None)`: nothing to change.
    fn reassign(
        &mut self,
        topic: &str,
        partition: i32,
        target: Option<&[i32]>,
        allow_rf_change: bool,
    ) -> Result<Option<JobId>, (i16, String)> {
        let image = &self.cluster.image;
        let found = image.topics.get(topic).and_then(|t| Some((t.id, t.parts.get(usize::try_from(partition).ok()?)?)));
        let Some((id, img)) = found else {
            return Err((KafkaError::UnknownTopicOrPartition.code(), format!("no partition {topic}-{partition}")));
        };
        if img.replicas.is_empty() {
            return Err((INVALID_REPLICA_ASSIGNMENT, "a partition of a single node's own cannot move".into()));
        }
        if let Some(t) = target {
            check_target(t, img, |b| image.brokers.contains_key(&b), allow_rf_change)?;
            if !img.reassigning() && t == img.replicas.as_slice() {
                return Ok(None); // already there
            }
        }
        let fenced = |b: i32| image.brokers.get(&b).is_none_or(|x| x.fenced);
        let min_isr = self.topic_settings((id, partition)).map_or(1, |s| s.min_insync_replicas);
        let next = img.reassign(target, fenced, min_isr).map_err(|Refusal::NoReassignment| {
            (NO_REASSIGNMENT_IN_PROGRESS, format!("no reassignment of {topic}-{partition} runs"))
        })?;
        tracing::info!(topic, partition, from = ?img.replicas, to = ?next.replicas, adding = ?next.adding, removing = ?next.removing, "reassigning partition");
        let rec = next.reassign_record(id, partition);
        match self.propose_partition_change((id, partition), rec) {
            Some(job) => Ok(Some(job)),
            None => Err((KafkaError::NotController.code(), "the metadata log did not take the change".into())),
        }
    }

    /// ListPartitionReassignments: the partitions with a reassignment running, from this
    /// node's committed metadata (every node has it; Kafka asks its controller).
    pub(super) fn handle_list_partition_reassignments(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: ListPartitionReassignmentsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = ListPartitionReassignmentsResponse::default();
        let wanted: Option<Vec<(String, BTreeSet<i32>)>> = req.topics.map(|ts| {
            ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes.into_iter().collect())).collect()
        });
        for (name, t) in &self.cluster.image.topics {
            let only = match &wanted {
                None => None,
                Some(w) => match w.iter().find(|(n, _)| n == name) {
                    Some((_, ps)) => Some(ps),
                    None => continue,
                },
            };
            let mut ot = OngoingTopicReassignment::default();
            ot.name = TopicName(sb(name.clone()));
            for (i, p) in t.parts.iter().enumerate() {
                let i = i32::try_from(i).expect("bounded");
                if !p.reassigning() || only.is_some_and(|ps| !ps.contains(&i)) {
                    continue;
                }
                let mut op = OngoingPartitionReassignment::default();
                op.partition_index = i;
                op.replicas = p.replicas.iter().map(|b| BrokerId(*b)).collect();
                op.adding_replicas = p.adding.iter().map(|b| BrokerId(*b)).collect();
                op.removing_replicas = p.removing.iter().map(|b| BrokerId(*b)).collect();
                ot.partitions.push(op);
            }
            if !ot.partitions.is_empty() {
                resp.topics.push(ot);
            }
        }
        self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
        Ok(())
    }

    /// A committed reassignment record changed a partition's replicas: a replica new here is
    /// created (it then follows its leader from offset 0, or from the leader's log start);
    /// one no longer here is closed and its directory removed.
    pub(super) fn replicas_changed(&mut self, id: [u8; 16], partition: i32) {
        let tp: Tp = (id, partition);
        let me = self.me();
        let Some(name) = self.names.get(&id).cloned() else { return };
        let Some(replicas) = self.cluster.image.partition(&id, partition).map(|(_, p)| p.replicas.clone()) else {
            return;
        };
        let Some(p) = self.partition_mut(tp) else { return };
        p.replicas = replicas.clone();
        let hosted = replicas.contains(&me);
        let state = p.state;
        if hosted && state == PartState::Remote {
            let generation = p.log.generation + 1;
            let copy = p.copy + 1;
            // A copy left from an earlier stay here (moved away while this node was down) goes
            // first: the new replica starts empty. Disk operations complete in issue order.
            let path = metadata::partition_dir(&name, partition);
            self.issue(DiskOp::RemoveDirAll { path }, Purpose::Ignore);
            let job = self.new_job(super::cluster::FILE_OPS_PER_PARTITION, JobDone::ReplicaReady { tp });
            let mut fresh = self.new_partition(&name, partition, replicas, job, PartState::Creating);
            fresh.log.generation = generation;
            fresh.copy = copy;
            fresh.log_start_wanted = self.recorded_log_start(tp);
            tracing::info!(topic = %name, partition, "a replica of the partition moves here");
            *self.partition_mut(tp).expect("checked") = fresh;
        } else if !hosted && !matches!(state, PartState::Remote | PartState::Recovering) {
            let old = std::mem::replace(
                self.partition_mut(tp).expect("checked"),
                super::cluster::remote_partition(&name, partition, replicas),
            );
            let now = self.partition_mut(tp).expect("checked");
            now.log.generation = old.log.generation + 1;
            now.copy = old.copy;
            for s in &old.log.segments {
                for file in [s.log_file, s.index_file, s.time_index_file] {
                    self.issue(DiskOp::Close { file }, Purpose::Ignore);
                }
            }
            self.issue(DiskOp::RemoveDirAll { path: metadata::partition_dir(&name, partition) }, Purpose::Ignore);
            self.dirty.remove(&tp);
            self.hw_moved = true; // produces waiting on it fail
            self.role_changed(tp);
            tracing::info!(topic = %name, partition, "this replica of the partition moved away; its files are removed");
        }
        self.partition_change_applied(id, partition);
    }

    /// A replica moved here has its files: it starts following.
    pub(super) fn replica_ready(&mut self, tp: Tp, ok: bool) {
        let Some(p) = self.partition_mut(tp).filter(|p| p.state == PartState::Creating) else { return };
        p.state = if ok { PartState::Online } else { PartState::Offline };
        if !ok {
            tracing::error!(dir = %p.log.dir, "could not create a replica moved here; it is offline");
        }
        self.refresh_role(tp);
    }
}

/// Checks a reassignment's target replicas against the registration.
fn check_target(
    target: &[i32],
    img: &PartitionImage,
    registered: impl Fn(i32) -> bool,
    allow_rf_change: bool,
) -> Result<(), (i16, String)> {
    if target.is_empty() {
        return Err((INVALID_REPLICA_ASSIGNMENT, "the target replicas are empty".into()));
    }
    let distinct: BTreeSet<i32> = target.iter().copied().collect();
    if distinct.len() != target.len() {
        return Err((INVALID_REPLICA_ASSIGNMENT, format!("the target replicas {target:?} repeat a broker")));
    }
    if let Some(b) = target.iter().find(|b| !registered(**b)) {
        return Err((INVALID_REPLICA_ASSIGNMENT, format!("broker {b} is not registered")));
    }
    if !allow_rf_change && target.len() != img.original_replicas().len() {
        return Err((
            INVALID_REPLICATION_FACTOR,
            format!("{} target replicas for a partition of {}", target.len(), img.original_replicas().len()),
        ));
    }
    Ok(())
}
