//! KIP-890's server-side defense across brokers. A partition leader takes a producer's first
//! transactional batch of a transaction only once the transaction's coordinator confirms
//! that the transaction holds the partition at that producer id and epoch: Kafka's
//! AddPartitionsToTxn v4 with `verifyOnly`, here `VerifyTxn` over the peer connection. A
//! zombie (a producer fenced since, or one writing outside its transaction) would otherwise
//! open a transaction on the partition that no coordinator will ever end: its last stable
//! offset would stay there, and read_committed consumers with it, for good.
//!
//! The produce request waits (whole, so that nothing of it is written before the answer)
//! and is handled again with the coordinator's verdicts, each used once. Later batches of the
//! transaction need no check: the partition's producer state has the transaction open. A
//! coordinator that cannot answer (moved, loading, silent for `VERIFY_TIMEOUT_MS`) leaves
//! the partition NOT_ENOUGH_REPLICAS, which clients retry, as Kafka answers.
//!
//! A transaction-version-2 producer (Produce v12+, TxnOffsetCommit v5+) never adds partitions
//! itself: the same request asks the coordinator to add those its transaction does not hold
//! yet (Kafka's AddPartitionsToTxn v5 from the broker, without verifyOnly), and is answered
//! once the addition is durable. This also runs when this node is the coordinator itself.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::transactions::{txn_partition, TXN_TOPIC};
use super::{Node, Tp};
use crate::log::batch;
use crate::peer::{Body, BrokerMessage};
use crate::protocol::errors::KafkaError;
use crate::protocol::RequestContext;
use crate::types::{ConnId, Instant};

/// How long a produce waits for the coordinator's verdict.
const VERIFY_TIMEOUT_MS: u64 = 5_000;

/// What a verification is about: the partition, the producer id and its epoch.
type Key = (Tp, i64, i16);

/// A produce request waiting for the coordinator's verdicts.
struct Waiting {
    id: u64,
    conn: ConnId,
    seq: u64,
    ctx: RequestContext,
    body: Bytes,
    keys: Vec<Key>,
    deadline: Instant,
}

/// Where a coordinator's verdicts go: another broker's partition, or one of this node's.
#[derive(Clone, Copy, Debug)]
pub(super) enum VerifyReply {
    Peer { to: i32, id: u64 },
    Local { id: u64 },
}

/// The error a partition's write gets for a coordinator's verdict `code` (not 0).
pub(super) fn verdict_error(code: i16) -> KafkaError {
    if code == KafkaError::TransactionAbortable.code() {
        KafkaError::TransactionAbortable
    } else if code == KafkaError::InvalidTxnState.code() {
        KafkaError::InvalidTxnState
    } else if code == KafkaError::InvalidProducerEpoch.code() {
        KafkaError::InvalidProducerEpoch
    } else {
        KafkaError::NotEnoughReplicas
    }
}

#[derive(Default)]
pub(super) struct TxnVerify {
    next_id: u64,
    waiting: Vec<Waiting>,
    /// Verdicts for the requests handled again: 0 when the transaction holds the partition,
    /// else the error the partition gets. Each is used once.
    verdicts: BTreeMap<Key, i16>,
    /// Produce requests that came on a connection behind one that waits: handled, in order,
    /// after it (a producer's batches must land in the order it sent them).
    blocked: Vec<(ConnId, u64, RequestContext, Bytes)>,
}

impl Node {
    /// A produce request that must wait behind an earlier one of its connection (waiting for
    /// a coordinator, kept behind one that does, or about to be handled again) is kept until
    /// no earlier one is left; true when it is kept.
    pub(super) fn produce_blocked(&mut self, conn: ConnId, seq: u64, ctx: &RequestContext, body: &Bytes) -> bool {
        if !self.conn_has_earlier(conn) {
            return false;
        }
        self.txn_verify.blocked.push((conn, seq, ctx.clone(), body.clone()));
        true
    }

    /// Whether a request of `conn` waits for a coordinator, is kept behind one, or is about
    /// to be handled again.
    fn conn_has_earlier(&self, conn: ConnId) -> bool {
        self.txn_verify.waiting.iter().any(|w| w.conn == conn)
            || self.txn_verify.blocked.iter().any(|b| b.0 == conn)
            || self.deferred.iter().any(|d| d.0 == conn)
    }

    /// After a pass of the node: requests kept behind others of their connection go to be
    /// handled again, in order, once none of those is left (one handled again may have
    /// waited again, or been answered).
    pub(super) fn release_blocked(&mut self) {
        if self.txn_verify.blocked.is_empty() {
            return;
        }
        let free = |n: &Node, conn: ConnId| {
            !n.txn_verify.waiting.iter().any(|w| w.conn == conn) && !n.deferred.iter().any(|d| d.0 == conn)
        };
        let (go, stay): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.txn_verify.blocked).into_iter().partition(|b| free(self, b.0));
        self.txn_verify.blocked = stay;
        self.deferred.extend(go);
    }

    /// A waiting request goes back to be handled, and the requests kept behind it after it
    /// (should it wait again, they are kept again).
    fn handle_again(&mut self, w: Waiting) {
        let conn = w.conn;
        self.deferred.push((w.conn, w.seq, w.ctx, w.body));
        let (mine, others): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.txn_verify.blocked).into_iter().partition(|b| b.0 == conn);
        self.txn_verify.blocked = others;
        self.deferred.extend(mine);
    }

    /// Before a transactional produce is handled: the partitions whose transaction another
    /// broker coordinates and that no verdict or open transaction covers are sent to that
    /// coordinator for checking (with `add`, a version-2 producer's, also those coordinated
    /// here that the transaction does not hold yet, to be added), and the request waits. True
    /// when it waits.
    pub(super) fn verify_txn_first(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: &Bytes,
        txn_id: &str,
        batches: &[(&str, i32, Option<&Bytes>)],
        add: bool,
    ) -> bool {
        let local = match self.coordinates(TXN_TOPIC, txn_id) {
            Ok(()) if add => true,
            Err(super::groups::NOT_COORDINATOR) => false,
            _ => return false, // checked here, or answered retriable by `check_txn_produce`
        };
        let keys: Vec<(Key, String)> = batches
            .iter()
            .filter_map(|(topic, partition, records)| {
                let h = records.and_then(|r| batch::parse_header(r).ok()).filter(|h| h.is_transactional())?;
                let tp = (self.topics.get(*topic)?.id, *partition);
                let key = (tp, h.producer_id, h.producer_epoch);
                let held = local && self.txn_holds(txn_id, h.producer_id, h.producer_epoch, topic, *partition).is_ok();
                (!held && self.needs_verifying(key)).then(|| (key, topic.to_string()))
            })
            .collect();
        self.verify_txn(conn, seq, ctx, body, txn_id, keys, add)
    }

    /// Whether a transactional write to `tp` by (producer id, epoch) must be verified: the
    /// partition is served here, has no transaction of that producer and epoch open, and no
    /// verdict waits for it.
    pub(super) fn needs_verifying(&self, key: Key) -> bool {
        let served = self.partition(key.0).is_some_and(|p| p.serve_error().is_none());
        served && !self.txn_open_here(key) && !self.txn_verify.verdicts.contains_key(&key)
    }

    /// Whether the partition has a transaction of this producer and epoch open (a batch of
    /// it was taken, verified then).
    pub(super) fn txn_open_here(&self, (tp, producer_id, epoch): Key) -> bool {
        self.partition(tp).is_some_and(|p| {
            p.log.producers.in_txn(producer_id) && p.log.producers.get(producer_id).is_some_and(|e| e.epoch == epoch)
        })
    }

    /// Sends `keys` (with their topics' names) to `txn_id`'s coordinator for checking (and,
    /// with `add`, adding) and parks the request; true when it waits. With no coordinator
    /// known, each gets NOT_ENOUGH_REPLICAS at once and the request goes on.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn verify_txn(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: &Bytes,
        txn_id: &str,
        keys: Vec<(Key, String)>,
        add: bool,
    ) -> bool {
        if keys.is_empty() {
            return false;
        }
        let local = self.coordinates(TXN_TOPIC, txn_id).is_ok();
        let coordinator = self.topics.get(TXN_TOPIC).and_then(|t| self.partition_leader((t.id, txn_partition(txn_id))));
        let remote = coordinator.map(|(c, _)| c).filter(|c| *c >= 0 && *c != self.me());
        if !local && remote.is_none() {
            for (key, _) in keys {
                self.txn_verify.verdicts.insert(key, KafkaError::NotEnoughReplicas.code());
            }
            return false;
        }
        self.txn_verify.next_id += 1;
        let id = self.txn_verify.next_id;
        let partitions: Vec<_> =
            keys.iter().map(|((tp, pid, epoch), topic)| (topic.clone(), tp.1, *pid, *epoch)).collect();
        let deadline = self.now.mono.plus_millis(VERIFY_TIMEOUT_MS);
        let waiting_keys = keys.into_iter().map(|(k, _)| k).collect();
        let (ctx, body) = (ctx.clone(), body.clone());
        self.txn_verify.waiting.push(Waiting { id, conn, seq, ctx, body, keys: waiting_keys, deadline });
        match remote {
            Some(coordinator) if !local => {
                let msg = BrokerMessage::VerifyTxn { id, transactional_id: txn_id.to_string(), partitions, add };
                self.send_peer(coordinator, Body::Broker(msg));
            }
            _ => self.coordinate_verify(VerifyReply::Local { id }, txn_id, &partitions, add),
        }
        true
    }

    /// The verdict a request handled again uses for a partition whose transaction another
    /// broker coordinates: the partition has the transaction open already, or the
    /// coordinator said so; else the coordinator's error (NOT_ENOUGH_REPLICAS when there
    /// was none: it could not be asked).
    pub(super) fn remote_txn_verdict(&mut self, tp: Tp, producer_id: i64, epoch: i16) -> Result<(), KafkaError> {
        let verdict = self.txn_verify.verdicts.remove(&(tp, producer_id, epoch));
        if self.txn_open_here((tp, producer_id, epoch)) {
            return Ok(());
        }
        match verdict {
            Some(0) => Ok(()),
            Some(code) => Err(verdict_error(code)),
            None => Err(KafkaError::NotEnoughReplicas),
        }
    }

    /// The verdict left for `key`, taken.
    pub(super) fn take_txn_verdict(&mut self, key: Key) -> Option<i16> {
        self.txn_verify.verdicts.remove(&key)
    }

    /// A verdict this node's coordinator gave one of its own partitions' requests (a
    /// version-2 producer's partition it could not add), taken once.
    pub(super) fn local_txn_verdict(&mut self, key: Key) -> Result<(), KafkaError> {
        match self.take_txn_verdict(key) {
            Some(code) if code != 0 => Err(verdict_error(code)),
            _ => Ok(()),
        }
    }

    /// After a transactional produce is handled: verdicts it did not use (a partition
    /// refused before its check) are dropped, so none outlives the request it was for.
    pub(super) fn drop_txn_verdicts(&mut self, batches: &[(&str, i32, Option<&Bytes>)]) {
        if self.txn_verify.verdicts.is_empty() {
            return;
        }
        for (topic, partition, records) in batches {
            let h = records.and_then(|r| batch::parse_header(r).ok());
            if let (Some(h), Some(t)) = (h, self.topics.get(*topic)) {
                self.txn_verify.verdicts.remove(&((t.id, *partition), h.producer_id, h.producer_epoch));
            }
        }
    }

    /// Another broker asks this node's coordinator.
    pub(super) fn on_verify_txn(
        &mut self,
        from: i32,
        id: u64,
        txn_id: &str,
        partitions: &[(String, i32, i64, i16)],
        add: bool,
    ) {
        self.coordinate_verify(VerifyReply::Peer { to: from, id }, txn_id, partitions, add);
    }

    /// The coordinator's side: whether the transaction holds each partition at the producer
    /// id and epoch given. With `add`, partitions it does not hold are added (one stored
    /// change for all of them, the verdicts given once it is durable) when the producer owns
    /// the transaction at that epoch.
    pub(super) fn coordinate_verify(
        &mut self,
        reply: VerifyReply,
        txn_id: &str,
        partitions: &[(String, i32, i64, i16)],
        add: bool,
    ) {
        let here = self.coordinates(TXN_TOPIC, txn_id).is_ok();
        let mut codes: Vec<i16> = partitions
            .iter()
            .map(|(topic, partition, pid, epoch)| match here {
                true => self.txn_holds(txn_id, *pid, *epoch, topic, *partition).err().map_or(0, |e| e.code()),
                false => KafkaError::NotEnoughReplicas.code(),
            })
            .collect();
        let missing = codes.contains(&KafkaError::TransactionAbortable.code());
        if let (true, true, Some((_, _, pid, epoch))) = (add, missing && here, partitions.first()) {
            let parts: Vec<(String, i32)> = partitions.iter().map(|(t, p, ..)| (t.clone(), *p)).collect();
            let (pid, epoch) = (*pid, *epoch);
            let code = match self.txn_change(txn_id, |m, now| m.add_partitions(pid, epoch, &parts, now, true)) {
                Ok(None) => 0,
                Ok(Some(next)) => {
                    let next_step = super::transactions::TxnNext::Verified { reply, n: partitions.len() };
                    if self.store_txn(txn_id, next, next_step).is_ok() {
                        return; // answered once durable
                    }
                    KafkaError::NotEnoughReplicas.code()
                }
                Err(Some(90)) => KafkaError::InvalidProducerEpoch.code(), // fenced
                Err(Some(49 | 48)) => KafkaError::InvalidTxnState.code(),
                Err(_) => KafkaError::NotEnoughReplicas.code(),
            };
            codes = vec![code; partitions.len()];
        }
        self.send_verdicts(reply, codes);
    }

    /// Gives a coordinator's verdicts to the request that asked.
    pub(super) fn send_verdicts(&mut self, reply: VerifyReply, codes: Vec<i16>) {
        match reply {
            VerifyReply::Peer { to, id } => self.send_peer(to, Body::Broker(BrokerMessage::TxnVerified { id, codes })),
            VerifyReply::Local { id } => self.on_txn_verified(id, &codes),
        }
    }

    /// The coordinator's verdicts: the request waiting on them is handled again.
    pub(super) fn on_txn_verified(&mut self, id: u64, codes: &[i16]) {
        let Some(i) = self.txn_verify.waiting.iter().position(|w| w.id == id) else { return };
        let w = self.txn_verify.waiting.remove(i);
        for (key, code) in w.keys.iter().zip(codes.iter().copied().chain(std::iter::repeat(-1))) {
            let code = if code < 0 { KafkaError::NotEnoughReplicas.code() } else { code };
            self.txn_verify.verdicts.insert(*key, code);
        }
        self.handle_again(w);
    }

    /// Requests whose coordinator did not answer in time are handled again without its
    /// verdicts (NOT_ENOUGH_REPLICAS); those of closed connections are dropped.
    pub(super) fn expire_txn_verifications(&mut self) {
        let now = self.now.mono;
        let (late, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.txn_verify.waiting).into_iter().partition(|w| w.deadline <= now);
        self.txn_verify.waiting = waiting;
        for w in late {
            tracing::debug!(id = w.id, "a transaction coordinator did not answer a verification in time");
            for key in &w.keys {
                self.txn_verify.verdicts.insert(*key, KafkaError::NotEnoughReplicas.code());
            }
            self.handle_again(w);
        }
    }

    pub(super) fn txn_verify_poll_timeout(&self) -> Option<Instant> {
        self.txn_verify.waiting.iter().map(|w| w.deadline).min()
    }

    /// A closed connection's waiting requests are dropped.
    pub(super) fn txn_verify_conn_closed(&mut self, conn: ConnId) {
        self.txn_verify.waiting.retain(|w| w.conn != conn);
        self.txn_verify.blocked.retain(|b| b.0 != conn);
    }
}
