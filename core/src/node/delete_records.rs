//! DeleteRecords: a partition's leader checks the offset (at most its high watermark: -1
//! means the high watermark) and asks the controller to record it in the metadata log
//! (`MetaRecord::RecordsDeleted`). Every node applies the record: a replica's log start
//! moves to the offset as soon as its own high watermark has reached it, and whole segments
//! below go. The leader answers once the record is applied here, with the new log start as
//! the low watermark. Kept in the metadata log, the deletion survives restarts and reaches
//! replicas that were down, without a log-start checkpoint file beside the segments.

use bytes::Bytes;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::{Node, PartState, Tp};
use crate::metadata::MetaRecord;
use crate::peer::BrokerMessage;
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, FrameError, RequestContext};
use crate::types::{ConnId, Instant, Offset};

/// A DeleteRecords waiting for its records' commit: where each partition's answer is in
/// `resp`, and the offset it waits for.
pub(super) struct PendingDelete {
    conn: ConnId,
    seq: u64,
    ctx: RequestContext,
    resp: DeleteRecordsResponse,
    waits: Vec<(usize, usize, Tp, Offset)>,
    deadline: Instant,
}

impl Node {
    pub(super) fn handle_delete_records(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: DeleteRecordsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = DeleteRecordsResponse::default();
        let mut waits = Vec::new();
        for (ti, t) in req.topics.iter().enumerate() {
            let mut tr = DeleteRecordsTopicResult::default();
            tr.name = t.name.clone();
            for (pi, p) in t.partitions.iter().enumerate() {
                let mut pr = DeleteRecordsPartitionResult::default();
                pr.partition_index = p.partition_index;
                pr.low_watermark = -1;
                match self.delete_below(t.name.0.as_str(), p.partition_index, p.offset) {
                    Ok(Err(low)) => pr.low_watermark = low,
                    Ok(Ok((tp, offset))) => waits.push((ti, pi, tp, offset)),
                    Err(e) => pr.error_code = e.code(),
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        if waits.is_empty() {
            self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
            return Ok(());
        }
        let timeout = u64::try_from(req.timeout_ms).unwrap_or(0).max(1);
        let deadline = self.now.mono.plus_millis(timeout);
        self.deletes.push(PendingDelete { conn, seq, ctx, resp, waits, deadline });
        self.complete_deletes();
        Ok(())
    }

    /// Checks one partition's deletion: `Ok(Err(low watermark))` when nothing is left to
    /// delete, `Ok(Ok(..))` when the controller has been asked to record it.
    fn delete_below(
        &mut self,
        topic: &str,
        partition: i32,
        offset: Offset,
    ) -> Result<Result<(Tp, Offset), Offset>, KafkaError> {
        let t = self.topics.get(topic).ok_or(KafkaError::UnknownTopicOrPartition)?;
        let tp = (t.id, partition);
        let p = t.partition(partition).ok_or(KafkaError::UnknownTopicOrPartition)?;
        if let Some(e) = p.serve_error() {
            return Err(e);
        }
        let hw = p.log.high_watermark;
        let offset = if offset == -1 { hw } else { offset };
        if !(0..=hw).contains(&offset) {
            return Err(KafkaError::OffsetOutOfRange);
        }
        let recorded = self.recorded_log_start(tp);
        if offset <= p.log.log_start_offset.max(recorded) {
            return Ok(Err(p.log.log_start_offset.max(recorded)));
        }
        let msg = BrokerMessage::DeleteRecords { topic: tp.0, partition, offset };
        self.send_to_controller(msg);
        Ok(Ok((tp, offset)))
    }

    /// The log start the metadata log records for a partition (0: none).
    pub(super) fn recorded_log_start(&self, tp: Tp) -> Offset {
        let Some(name) = self.names.get(&tp.0) else { return 0 };
        self.cluster.image.topics.get(name).and_then(|t| t.log_starts.get(&tp.1).copied()).unwrap_or(0)
    }

    /// On the controller: records a leader's deletion (a later, smaller one changes nothing).
    pub(super) fn on_delete_records(&mut self, topic: [u8; 16], partition: i32, offset: Offset) {
        if !self.controller_epoch_check() || self.cluster.image.partition(&topic, partition).is_none() {
            return;
        }
        if offset <= self.recorded_log_start((topic, partition)) {
            return; // recorded already: the leader sees it applied
        }
        let job = self.new_job(1, super::JobDone::Nothing);
        self.meta_append(&MetaRecord::RecordsDeleted { id: topic, partition, offset }, job);
    }

    /// A committed deletion: this replica's log start follows, and waiting requests answer.
    pub(super) fn records_deleted(&mut self, id: [u8; 16], partition: i32) {
        let tp = (id, partition);
        let start = self.recorded_log_start(tp);
        if let Some(p) = self.partition_mut(tp) {
            p.log_start_wanted = p.log_start_wanted.max(start);
        }
        self.apply_log_start(tp);
        self.complete_deletes();
    }

    /// Moves the partition's log start to the recorded one, as far as its high watermark
    /// allows (a replica never drops records it has not seen committed), deleting the whole
    /// segments below it.
    pub(super) fn apply_log_start(&mut self, tp: Tp) {
        let Some(p) = self.partition_mut(tp).filter(|p| p.state == PartState::Online) else { return };
        let to = p.log_start_wanted.min(p.log.high_watermark);
        if to <= p.log.log_start_offset {
            return;
        }
        let mut ops = Vec::new();
        p.log.advance_log_start(to, &mut ops);
        tracing::info!(dir = %p.log.dir, log_start = to, "records deleted below the new log start");
        let generation = p.log.generation;
        for op in ops {
            self.issue_log_op(tp, generation, op, None);
        }
    }

    /// Answers the DeleteRecords whose deletions are applied here, or whose time is up
    /// (REQUEST_TIMED_OUT: the client asks again).
    pub(super) fn complete_deletes(&mut self) {
        let now = self.now.mono;
        for mut d in std::mem::take(&mut self.deletes) {
            let expired = d.deadline <= now;
            let mut left = Vec::new();
            for w in d.waits.drain(..) {
                let (ti, pi, tp, offset) = w;
                let recorded = self.recorded_log_start(tp);
                let pr = &mut d.resp.topics[ti].partitions[pi];
                if recorded >= offset {
                    pr.low_watermark = recorded;
                } else if expired {
                    pr.error_code = KafkaError::RequestTimedOut.code();
                } else {
                    left.push(w);
                }
            }
            d.waits = left;
            if d.waits.is_empty() {
                self.respond_bytes(d.conn, d.seq, protocol::encode_response(&d.ctx, &d.resp));
            } else {
                self.deletes.push(d);
            }
        }
    }

    pub(super) fn deletes_poll_timeout(&self) -> Option<Instant> {
        self.deletes.iter().map(|d| d.deadline).min()
    }
}
