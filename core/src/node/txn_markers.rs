//! Transaction markers across brokers (Kafka's WriteTxnMarkers). A transaction coordinator
//! writes each marker where it leads the partition; for a partition another broker leads it
//! sends that broker a `WriteTxnMarker` over the peer connection. The leader appends the
//! marker as its own coordinator would, and answers once the partition's high watermark
//! covers it (durable on the in-sync replicas), or with the error that stopped it. The
//! coordinator asks again, of whoever leads by then, after an error or when no answer came
//! within `MARKER_RETRY_MS`: a marker written twice is harmless (the second closes nothing).
//!
//! A marker landing in a `__consumer_offsets` partition also ends the offsets the
//! transaction committed there (TxnOffsetCommit): visible from then on if it commits,
//! dropped if it aborts, on the group coordinator, which is this partition's leader.

use bytes::Bytes;

use super::groups::{offsets_partition, OFFSETS_TOPIC};
use super::produce::Origin;
use super::transactions::{MarkerAt, MARKER_RETRY_MS};
use super::{Node, Tp};
use crate::log::batch;
use crate::peer::{Body, BrokerMessage};
use crate::protocol::errors::KafkaError;
use crate::types::Offset;

pub(super) use crate::peer::TxnMarker as Marker;

/// A marker written here for another broker's coordinator, until it is durable.
pub(super) struct RemoteMarker {
    from: i32,
    req: u64,
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
        let Marker { producer_id, epoch, commit, coordinator_epoch, strict } = m;
        let marker =
            Bytes::from(batch::control_marker(producer_id, epoch, commit, coordinator_epoch, self.now.wall_ms));
        match self.append_as(topic, partition, Some(&marker), Origin::Coordinator { commit, strict }) {
            Ok((tp, _, end, generation, _, _)) => {
                let offsets_partition = (topic == OFFSETS_TOPIC).then_some(partition);
                let leader_epoch = self.partition(tp).map_or(-1, |p| p.role.leader_epoch());
                self.remote_markers.push(RemoteMarker {
                    from,
                    req,
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
                self.answer_marker(from, req, 0);
            }
            Err(e @ KafkaError::TransactionCoordinatorFenced) => {
                tracing::warn!(
                    topic,
                    partition,
                    producer_id,
                    coordinator_epoch,
                    "a marker asked for by a replaced coordinator"
                );
                self.answer_marker(from, req, e.code());
            }
            // A topic this node does not know (yet: its metadata may be behind the
            // coordinator's, which knew the topic when the transaction took the partition) is
            // not a topic deleted: the coordinator asks again, of the leader it knows then.
            Err(KafkaError::UnknownTopicOrPartition) => {
                self.answer_marker(from, req, KafkaError::NotLeaderOrFollower.code());
            }
            Err(e) => self.answer_marker(from, req, e.code()),
        }
    }

    fn answer_marker(&mut self, to: i32, req: u64, error: i16) {
        self.send_peer(to, Body::Broker(BrokerMessage::TxnMarkerWritten { req, error }));
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
            self.answer_marker(m.from, m.req, error);
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
