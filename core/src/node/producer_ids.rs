//! InitProducerId for idempotent producers: a producer id never handed out before, epoch 0.
//!
//! Ids come from blocks recorded in the metadata log (as Kafka's controller records
//! `ProducerIdsRecord`): a block's record is durable before any id in it is answered, and a
//! restart starts after the last block recorded, so an id is never handed out twice, even if
//! the node crashed right after answering. Requests that arrive while a block is being
//! recorded wait for it.

use bytes::Bytes;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{JobDone, JobId, Node, Then};
use crate::metadata::MetaRecord;
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, FrameError, RequestContext};
use crate::types::ConnId;

/// Ids per block recorded in the metadata log.
pub(super) const BLOCK: i64 = 1000;

/// The producer id allocator.
#[derive(Debug, Default)]
pub(super) struct ProducerIds {
    /// The next id to hand out.
    next: i64,
    /// Ids below this are in durable blocks.
    durable_end: i64,
    /// The block being recorded: its job and its end.
    pending: Option<(JobId, i64)>,
    /// In a cluster, a broker that is not the controller asks it for blocks: when it last did.
    asked: Option<crate::types::Instant>,
}

/// How long a broker waits for the controller to grant a block before it asks again.
const ASK_AGAIN_MS: u64 = 1000;

impl ProducerIds {
    /// After the metadata log is replayed: ids start after the last recorded block.
    pub(super) fn restore(&mut self, end: i64) {
        self.next = end;
        self.durable_end = end;
    }
}

impl Node {
    pub(super) fn handle_init_producer_id(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: InitProducerIdRequest = protocol::decode_body(body.clone(), ctx.version)?;
        // As Kafka: an id without an epoch (or an epoch without an id), or an empty
        // transactional id, is an invalid request.
        let half_named = ctx.version >= 3 && ((req.producer_id.0 == -1) != (req.producer_epoch == -1));
        if half_named || req.transactional_id.as_ref().is_some_and(|t| t.0.is_empty()) {
            return self.answer_init_producer_id(conn, seq, &ctx, Err(KafkaError::InvalidRequest));
        }
        if req.transactional_id.is_some() {
            return self.init_transactional_producer(conn, seq, ctx, body, req);
        }
        // A non-transactional producer always gets a new id at epoch 0, whatever id and epoch
        // it names (v3+), as Kafka does: its epoch bumps are its own (KIP-360).
        let ids = &mut self.producer_ids;
        if ids.next < ids.durable_end {
            let id = ids.next;
            ids.next += 1;
            return self.answer_init_producer_id(conn, seq, &ctx, Ok(id));
        }
        if self.config.is_cluster() && !self.is_controller() {
            // The controller records blocks: ask it, and let the client retry meanwhile.
            self.ask_for_producer_ids();
            return self.answer_init_producer_id(conn, seq, &ctx, Err(KafkaError::CoordinatorLoadInProgress));
        }
        let ids = &mut self.producer_ids;
        let job = match ids.pending {
            Some((job, end)) if ids.next < end => job,
            Some(_) => {
                // More producers than a block holds arrived while it is being recorded.
                return self.answer_init_producer_id(conn, seq, &ctx, Err(KafkaError::CoordinatorLoadInProgress));
            }
            None => self.record_next_block(),
        };
        let id = self.producer_ids.next;
        self.producer_ids.next += 1;
        let build = move |failed: &std::collections::BTreeSet<JobId>| {
            let result =
                if failed.is_empty() { Ok((id, 0)) } else { Err(KafkaError::CoordinatorLoadInProgress.code()) };
            protocol::encode_response(&ctx, &init_producer_id_response(ctx.version, result))
        };
        self.waiters.push(super::Waiter {
            conn,
            seq,
            jobs: [job].into(),
            failed: Default::default(),
            then: Then::Respond(Box::new(build)),
        });
        Ok(())
    }

    fn answer_init_producer_id(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        result: Result<i64, KafkaError>,
    ) -> Result<(), FrameError> {
        let result = result.map(|id| (id, 0)).map_err(KafkaError::code);
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &init_producer_id_response(ctx.version, result)));
        Ok(())
    }

    /// A producer id for the transaction coordinator, if one is in a durable block; if not,
    /// a block is being recorded (the caller answers COORDINATOR_LOAD_IN_PROGRESS and the
    /// client retries).
    pub(super) fn take_producer_id(&mut self) -> Option<i64> {
        let ids = &mut self.producer_ids;
        if ids.next < ids.durable_end {
            ids.next += 1;
            return Some(ids.next - 1);
        }
        if self.config.is_cluster() && !self.is_controller() {
            self.ask_for_producer_ids();
        } else if self.producer_ids.pending.is_none() {
            self.record_next_block();
        }
        None
    }

    /// Asks the controller for a block of producer ids (again, if the last ask went
    /// unanswered for a while: the controller may have changed).
    fn ask_for_producer_ids(&mut self) {
        let now = self.now.mono;
        if self.producer_ids.asked.is_some_and(|t| now.millis_since(t) < ASK_AGAIN_MS) {
            return;
        }
        if let Some(c) = self.controller().filter(|c| *c != self.config.node_id.0) {
            self.producer_ids.asked = Some(now);
            self.send_peer(c, crate::peer::Body::Broker(crate::peer::BrokerMessage::AllocateProducerIds));
        }
    }

    /// The controller granted this broker the block of ids below `end`.
    pub(super) fn producer_ids_granted(&mut self, end: i64) {
        let ids = &mut self.producer_ids;
        ids.asked = None;
        if end > ids.durable_end && ids.pending.is_none() {
            tracing::info!(from = end - BLOCK, to = end, "the controller granted a block of producer ids");
            ids.next = end - BLOCK;
            ids.durable_end = end;
        }
    }

    /// The end of the next block the controller may record: past every block recorded or
    /// proposed (a proposal in the log's uncommitted tail commits with it).
    pub(super) fn next_producer_ids_end(&self) -> i64 {
        let mut end = self.producer_ids.durable_end.max(self.cluster.image.producer_ids_end);
        if let Some(q) = self.meta.quorum.as_ref() {
            for offset in q.high_watermark()..q.log().end() {
                if let Some(crate::quorum::EntryKind::Record(r)) = q.log().entry(offset).map(|e| &e.kind) {
                    if let Ok(MetaRecord::ProducerIdsBlock { end: e }) = postcard::from_bytes::<MetaRecord>(r) {
                        end = end.max(e);
                    }
                }
            }
        }
        end + BLOCK
    }

    /// The controller records a block for another broker; the broker hears of it once it is
    /// committed.
    pub(super) fn allocate_producer_ids_for(&mut self, broker: i32) {
        let end = self.next_producer_ids_end();
        let job = self.new_job(1, JobDone::ProducerIdsFor { broker, end });
        self.meta_append(&MetaRecord::ProducerIdsBlock { end }, job);
    }

    /// Starts recording the block after the last durable one; returns its job.
    fn record_next_block(&mut self) -> JobId {
        // In a cluster another broker's block may be the last one recorded: start after it.
        let end = self.next_producer_ids_end();
        self.producer_ids.next = self.producer_ids.next.max(end - BLOCK);
        let job = self.new_job(1, JobDone::ProducerIds { end });
        self.producer_ids.pending = Some((job, end));
        self.meta_append(&MetaRecord::ProducerIdsBlock { end }, job);
        job
    }

    /// A block's record is durable (or could not be written: its ids were never answered, so
    /// the next attempt records the same block again).
    pub(super) fn producer_ids_recorded(&mut self, end: i64, ok: bool) {
        let ids = &mut self.producer_ids;
        ids.pending = None;
        if ok {
            ids.durable_end = ids.durable_end.max(end);
        } else {
            tracing::error!("could not record a block of producer ids in the metadata log");
            ids.next = ids.durable_end;
        }
    }
}

/// An InitProducerId answer of `version`: the producer id and epoch, or an error code (with
/// -1, -1).
pub(super) fn init_producer_id_response(version: i16, result: Result<(i64, i16), i16>) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    let (id, epoch) = result.unwrap_or_else(|code| {
        resp.error_code = crate::protocol::errors::fenced_for_version(
            kafka_protocol::messages::ApiKey::InitProducerId,
            version,
            code,
        );
        (-1, -1)
    });
    resp.producer_id = ProducerId(id);
    resp.producer_epoch = epoch;
    resp
}
