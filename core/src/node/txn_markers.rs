//! Transaction markers across brokers (Kafka's WriteTxnMarkers). A transaction coordinator
//! writes each marker where it leads the partition; for a partition another broker leads it
//! sends that broker a `WriteTxnMarker` over the peer connection. The leader appends the
//! marker as its own coordinator would, and answers once the partition's high watermark
//! covers it (durable on the in-sync replicas), or with the error that stopped it. The
//! coordinator asks again, of whoever leads by then, after an error or when no answer came
//! within `MARKER_RETRY_MS`: a marker written twice is harmless (the second closes nothing).
//!
//! A client may ask for markers too, with Kafka's WriteTxnMarkers request: an admin aborting
//! a hanging transaction (`kafka-transactions abort`, KIP-664). Its markers are written the
//! same way, on the partitions this node leads, and the request is answered once each is
//! durable or refused.
//!
//! A marker landing in a `__consumer_offsets` partition also ends the offsets the
//! transaction committed there (TxnOffsetCommit): visible from then on if it commits,
//! dropped if it aborts, on the group coordinator, which is this partition's leader.

use bytes::Bytes;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use super::groups::{offsets_partition, OFFSETS_TOPIC};
use super::produce::Origin;
use super::transactions::{MarkerAt, MARKER_RETRY_MS};
use super::{Node, Tp};
use crate::log::batch;
use crate::peer::{Body, BrokerMessage};
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, FrameError, RequestContext};
use crate::types::{ConnId, Offset};

pub(super) use crate::peer::TxnMarker as Marker;

/// Who asked for a marker.
#[derive(Clone, Copy)]
pub(super) enum Asker {
    /// Another broker's coordinator (`WriteTxnMarker` `req`).
    Peer { from: i32, req: u64 },
    /// A client's WriteTxnMarkers (`client_markers` `id`): its (marker, topic, partition)
    /// answer slot.
    Client { id: u64, slot: (usize, usize, usize) },
}

/// A client's WriteTxnMarkers request, answered once no marker it asked for is pending.
pub(super) struct ClientMarkers {
    conn: ConnId,
    seq: u64,
    ctx: RequestContext,
    resp: WriteTxnMarkersResponse,
    pending: usize,
}

/// A marker written here for another broker's coordinator (or a client), until it is durable.
pub(super) struct RemoteMarker {
    asker: Asker,
    producer_id: i64,
    commit: bool,
    tp: Tp,
    end: Offset,
    generation: u64,
    leader_epoch: i32,
    /// The offsets partition it was written to, if it was one.
    offsets_partition: Option<i32>,
}

impl Node {
    /// Asks the leader of `topic`-`partition` (another broker) to write the marker of
    /// (producer id, epoch, commit, coordinator epoch) there; the request's id, or `None`
    /// while the partition has no known leader (asked again at the next check).
    pub(super) fn ask_leader_for_marker(&mut self, m: Marker, topic: &str, partition: i32) -> Option<u64> {
        let tp = (self.topics.get(topic)?.id, partition);
        let leader = self.partition_leader(tp).map(|(l, _)| l).filter(|l| *l >= 0 && *l != self.config.node_id.0)?;
        self.next_marker_req += 1;
        let req = self.next_marker_req;
        let topic = topic.to_string();
        let msg = BrokerMessage::WriteTxnMarker { req, marker: m, topic, partition };
        self.send_peer(leader, Body::Broker(msg));
        Some(req)
    }

    /// Another broker's coordinator asks for a marker on a partition this node should lead.
    pub(super) fn on_write_txn_marker(&mut self, from: i32, req: u64, m: Marker, topic: &str, partition: i32) {
        self.write_marker(Asker::Peer { from, req }, m, topic, partition);
    }

    /// A client's WriteTxnMarkers: each marker on each partition it names, answered per
    /// partition once durable (or with the error that stopped it).
    pub(super) fn handle_write_txn_markers(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: WriteTxnMarkersRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = WriteTxnMarkersResponse::default();
        let mut asks = Vec::new();
        for (mi, m) in req.markers.iter().enumerate() {
            let marker = Marker {
                producer_id: m.producer_id.0,
                epoch: m.producer_epoch,
                commit: m.transaction_result,
                coordinator_epoch: m.coordinator_epoch,
                strict: false,
            };
            let mut mr = WritableTxnMarkerResult::default();
            mr.producer_id = m.producer_id;
            for (ti, t) in m.topics.iter().enumerate() {
                let mut tr = WritableTxnMarkerTopicResult::default();
                tr.name = t.name.clone();
                for (pi, p) in t.partition_indexes.iter().enumerate() {
                    tr.partitions.push(WritableTxnMarkerPartitionResult::default().with_partition_index(*p));
                    asks.push((marker, t.name.0.to_string(), *p, (mi, ti, pi)));
                }
                mr.topics.push(tr);
            }
            resp.markers.push(mr);
        }
        self.next_marker_req += 1;
        let id = self.next_marker_req;
        let pending = asks.len();
        self.client_markers.insert(id, ClientMarkers { conn, seq, ctx, resp, pending });
        if pending == 0 {
            self.client_markers_answered(id);
        }
        for (m, topic, partition, slot) in asks {
            self.write_marker(Asker::Client { id, slot }, m, &topic, partition);
        }
        Ok(())
    }

    fn client_markers_answered(&mut self, id: u64) {
        if let Some(c) = self.client_markers.remove(&id) {
            self.respond_bytes(c.conn, c.seq, protocol::encode_response(&c.ctx, &c.resp));
        }
    }

    /// Writes a marker on a partition this node should lead, for whoever asked.
    fn write_marker(&mut self, asker: Asker, m: Marker, topic: &str, partition: i32) {
        let Marker { producer_id, epoch, commit, coordinator_epoch, strict } = m;
        let marker =
            Bytes::from(batch::control_marker(producer_id, epoch, commit, coordinator_epoch, self.now.wall_ms));
        match self.append_as(topic, partition, Some(&marker), Origin::Coordinator { commit, strict }) {
            Ok((tp, _, end, generation, _, _)) => {
                let offsets_partition = (topic == OFFSETS_TOPIC).then_some(partition);
                let leader_epoch = self.partition(tp).map_or(-1, |p| p.role.leader_epoch());
                self.remote_markers.push(RemoteMarker {
                    asker,
                    producer_id,
                    commit,
                    tp,
                    end,
                    generation,
                    leader_epoch,
                    offsets_partition,
                });
                self.hw_moved = true;
            }
            // Nothing to mark: the coordinator counts it as done, as for its own partitions.
            Err(KafkaError::InvalidProducerEpoch) => {
                tracing::warn!(topic, partition, producer_id, "a marker asked for is of an older producer epoch");
                // A client (an admin) is told; a coordinator counts it as done.
                let code =
                    if matches!(asker, Asker::Client { .. }) { KafkaError::InvalidProducerEpoch.code() } else { 0 };
                self.answer_marker(asker, code);
            }
            Err(e @ KafkaError::TransactionCoordinatorFenced) => {
                tracing::warn!(
                    topic,
                    partition,
                    producer_id,
                    coordinator_epoch,
                    "a marker asked for by a replaced coordinator"
                );
                self.answer_marker(asker, e.code());
            }
            // A topic this node does not know (yet: its metadata may be behind the
            // coordinator's, which knew the topic when the transaction took the partition) is
            // not a topic deleted: the coordinator asks again, of the leader it knows then.
            Err(KafkaError::UnknownTopicOrPartition) if matches!(asker, Asker::Peer { .. }) => {
                self.answer_marker(asker, KafkaError::NotLeaderOrFollower.code());
            }
            Err(e) => self.answer_marker(asker, e.code()),
        }
    }

    fn answer_marker(&mut self, asker: Asker, error: i16) {
        match asker {
            Asker::Peer { from, req } => {
                self.send_peer(from, Body::Broker(BrokerMessage::TxnMarkerWritten { req, error }))
            }
            Asker::Client { id, slot: (m, t, p) } => {
                let Some(c) = self.client_markers.get_mut(&id) else { return };
                c.resp.markers[m].topics[t].partitions[p].error_code = error;
                c.pending -= 1;
                if c.pending == 0 {
                    self.client_markers_answered(id);
                }
            }
        }
    }

    /// Answers the markers written for other brokers that became durable (or were cut back).
    pub(super) fn complete_remote_markers(&mut self) {
        if self.remote_markers.is_empty() {
            return;
        }
        for m in std::mem::take(&mut self.remote_markers) {
            let error = match self.partition(m.tp) {
                None => KafkaError::UnknownTopicOrPartition.code(),
                // Led no longer (in that epoch): a follower's high watermark can pass `end`
                // before it cuts away a marker its new leader never had.
                Some(p) if p.log.generation != m.generation || !p.leads_in(m.leader_epoch) => {
                    KafkaError::NotLeaderOrFollower.code()
                }
                Some(p) if p.log.high_watermark >= m.end => 0,
                Some(_) => {
                    self.remote_markers.push(m);
                    continue;
                }
            };
            if error == 0 {
                if let Some(partition) = m.offsets_partition {
                    self.end_txn_offsets(m.producer_id, m.commit, partition);
                }
            }
            self.answer_marker(m.asker, error);
        }
    }

    /// A transaction's marker is durable in offsets partition `partition`: the offsets it
    /// committed to groups there become visible (commit) or are dropped (abort).
    fn end_txn_offsets(&mut self, producer_id: i64, commit: bool, partition: i32) {
        let Some(offs) = self.txn_offsets.get_mut(&producer_id) else { return };
        let (ended, kept): (Vec<_>, Vec<_>) =
            std::mem::take(offs).into_iter().partition(|(g, ..)| offsets_partition(g) == partition);
        *offs = kept;
        if offs.is_empty() {
            self.txn_offsets.remove(&producer_id);
        }
        if commit {
            for (g, t, p, c) in ended {
                self.offsets.entry(g).or_default().insert((t, p), c);
            }
        }
    }

    /// A partition's leader answered a marker this node's coordinator asked for.
    pub(super) fn on_txn_marker_written(&mut self, req: u64, error: i16) {
        let now = self.now.mono;
        for w in &mut self.markers {
            for ((topic, partition), at) in &mut w.waits {
                if !matches!(at, MarkerAt::Remote { req: r, .. } if *r == req) {
                    continue;
                }
                if error == 0 {
                    *at = MarkerAt::Done;
                } else if error == KafkaError::TransactionCoordinatorFenced.code() {
                    // A newer coordinator has written this producer's markers there: this
                    // node is not the transaction's coordinator any more (its completion
                    // cannot be committed either), and will learn so.
                    tracing::warn!(id = %w.id, topic = %topic, partition, "a marker was refused: a newer coordinator took the transaction over");
                    *at = MarkerAt::Done;
                } else {
                    // Asked again shortly, of the leader known then (the metadata may be
                    // catching up with a leadership change).
                    tracing::debug!(id = %w.id, topic = %topic, partition, error, "a marker was refused by the partition's leader; asking again");
                    *at = MarkerAt::Remote { req, retry_at: now.plus_millis(100.min(MARKER_RETRY_MS)) };
                }
            }
        }
        self.hw_moved = true;
    }
}
