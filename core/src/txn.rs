//! The transaction coordinator's state for one `transactional.id`, and the rules by which it
//! moves, as Kafka's TransactionMetadata does (transaction version 1: the client adds
//! partitions with AddPartitionsToTxn; the coordinator bumps the epoch only at
//! InitProducerId and to fence a producer whose transaction it aborts).
//!
//! Every change is a record in `__transaction_state` (key: the transactional id; value: this
//! struct) that is durable before anyone is told of it. The node does the writing; this
//! module says what the next state is, or which error the request gets.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Where a transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    /// No transaction open (after InitProducerId).
    Empty,
    /// Partitions have been added: a transaction is open.
    Ongoing,
    /// EndTxn(commit) was accepted: markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a new InitProducerId: abort markers are being written.
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    pub const ALL: [TxnState; 6] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ];

    /// Kafka's names, for DescribeTransactions and ListTransactions.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    /// Markers are being written: the transaction is ending.
    pub fn preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// One transactional id's state, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions in the open (or ending) transaction.
    pub partitions: BTreeSet<(String, i32)>,
    /// Wall-clock ms the open transaction started (-1 if none).
    pub started_ms: i64,
    pub updated_ms: i64,
}

/// Why a request on a transaction is refused (Kafka's error codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnError {
    /// 49: the producer id is not this transactional id's.
    InvalidProducerIdMapping,
    /// 90: an older epoch: another producer with this transactional id took over.
    ProducerFenced,
    /// 51: the transaction is ending (markers being written) or a change is being stored.
    ConcurrentTransactions,
    /// 48: the request does not fit the transaction's state.
    InvalidTxnState,
}

impl TxnError {
    pub fn code(self) -> i16 {
        match self {
            TxnError::InvalidProducerIdMapping => 49,
            TxnError::ProducerFenced => 90,
            TxnError::ConcurrentTransactions => 51,
            TxnError::InvalidTxnState => 48,
        }
    }
}

/// The largest epoch before a producer needs a new id (Kafka keeps one epoch in reserve).
pub const EPOCH_MAX: i16 = i16::MAX - 1;

impl TxnMeta {
    /// PrepareCommit or PrepareAbort: its markers are being written.
    pub fn is_ending(&self) -> bool {
        matches!(self.state, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }

    pub fn new(producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMeta {
        TxnMeta {
            producer_id,
            epoch: 0,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            started_ms: -1,
            updated_ms: now_ms,
        }
    }

    /// The producer (id, epoch) a request names must be this one's.
    pub fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
        if producer_id != self.producer_id {
            return Err(TxnError::InvalidProducerIdMapping);
        }
        if epoch != self.epoch {
            return Err(TxnError::ProducerFenced);
        }
        Ok(())
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: the state with `parts` added, or `None` if they
    /// are all in already (nothing to store).
    pub fn add_partitions(
        &self,
        producer_id: i64,
        epoch: i16,
        parts: &[(String, i32)],
        now_ms: i64,
    ) -> Result<Option<TxnMeta>, TxnError> {
        self.check_producer(producer_id, epoch)?;
        if self.state.preparing() {
            return Err(TxnError::ConcurrentTransactions);
        }
        if self.state == TxnState::Ongoing && parts.iter().all(|p| self.partitions.contains(p)) {
            return Ok(None);
        }
        let mut next = self.clone();
        if next.state != TxnState::Ongoing {
            next.partitions.clear();
            next.started_ms = now_ms;
        }
        next.state = TxnState::Ongoing;
        next.partitions.extend(parts.iter().cloned());
        next.updated_ms = now_ms;
        Ok(Some(next))
    }

    /// EndTxn: the preparing state to store, or `None` when the request repeats one that
    /// already completed (answered with success, nothing to do).
    pub fn end(&self, producer_id: i64, epoch: i16, commit: bool, now_ms: i64) -> Result<Option<TxnMeta>, TxnError> {
        self.check_producer(producer_id, epoch)?;
        match (self.state, commit) {
            (TxnState::Ongoing, _) => {
                let mut next = self.clone();
                next.state = if commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
                next.updated_ms = now_ms;
                Ok(Some(next))
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(None),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => Err(TxnError::ConcurrentTransactions),
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// The coordinator aborts the open transaction itself (a timeout, or a new producer
    /// with this transactional id): the epoch is bumped so that the producer that opened it
    /// is fenced, and abort markers carry the new epoch.
    pub fn abort_and_fence(&self, now_ms: i64) -> TxnMeta {
        let mut next = self.clone();
        next.state = TxnState::PrepareAbort;
        if next.epoch < EPOCH_MAX {
            next.epoch += 1;
        }
        next.updated_ms = now_ms;
        next
    }

    /// Markers are durable everywhere: the transaction is complete.
    pub fn complete(&self, now_ms: i64) -> TxnMeta {
        let mut next = self.clone();
        next.state =
            if self.state == TxnState::PrepareCommit { TxnState::CompleteCommit } else { TxnState::CompleteAbort };
        next.partitions.clear();
        next.started_ms = -1;
        next.updated_ms = now_ms;
        next
    }

    /// InitProducerId for an existing id with no transaction open: the next epoch (a new
    /// producer id once the epochs run out, from `fresh_id`). `expected` is the (id, epoch)
    /// a v3+ client says it had (KIP-360): it must be the current one.
    pub fn reinit(
        &self,
        expected: Option<(i64, i16)>,
        timeout_ms: i32,
        now_ms: i64,
        fresh_id: impl FnOnce() -> Option<i64>,
    ) -> Result<Option<TxnMeta>, TxnError> {
        if let Some((id, epoch)) = expected {
            if id != self.producer_id || epoch != self.epoch {
                return Err(TxnError::ProducerFenced);
            }
        }
        let mut next = self.clone();
        if self.epoch >= EPOCH_MAX {
            let Some(id) = fresh_id() else { return Ok(None) };
            next.producer_id = id;
            next.epoch = 0;
        } else {
            next.epoch += 1;
        }
        next.state = TxnState::Empty;
        next.partitions.clear();
        next.started_ms = -1;
        next.timeout_ms = timeout_ms;
        next.updated_ms = now_ms;
        Ok(Some(next))
    }

    /// An open transaction past its timeout.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing && now_ms.saturating_sub(self.started_ms) > i64::from(self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(ps: &[i32]) -> Vec<(String, i32)> {
        ps.iter().map(|p| ("t".to_string(), *p)).collect()
    }

    #[test]
    fn a_transaction_goes_round() {
        let m = TxnMeta::new(7, 60_000, 0);
        assert_eq!(m.add_partitions(8, 0, &parts(&[0]), 1), Err(TxnError::InvalidProducerIdMapping));
        assert_eq!(m.add_partitions(7, 1, &parts(&[0]), 1), Err(TxnError::ProducerFenced));
        let m = m.add_partitions(7, 0, &parts(&[0]), 1).unwrap().unwrap();
        assert_eq!((m.state, m.started_ms), (TxnState::Ongoing, 1));
        assert_eq!(m.add_partitions(7, 0, &parts(&[0]), 2), Ok(None), "already in");
        let m = m.add_partitions(7, 0, &parts(&[1]), 2).unwrap().unwrap();
        assert_eq!(m.partitions.len(), 2);
        assert_eq!(m.started_ms, 1, "the transaction started with its first partition");
        let p = m.end(7, 0, true, 3).unwrap().unwrap();
        assert_eq!(p.state, TxnState::PrepareCommit);
        assert_eq!(p.add_partitions(7, 0, &parts(&[2]), 4), Err(TxnError::ConcurrentTransactions));
        assert_eq!(p.end(7, 0, true, 4), Err(TxnError::ConcurrentTransactions));
        let c = p.complete(5);
        assert_eq!((c.state, c.partitions.len()), (TxnState::CompleteCommit, 0));
        assert_eq!(c.end(7, 0, true, 6), Ok(None), "a retried commit");
        assert_eq!(c.end(7, 0, false, 6), Err(TxnError::InvalidTxnState));
        // The next transaction starts afresh.
        let n = c.add_partitions(7, 0, &parts(&[3]), 7).unwrap().unwrap();
        assert_eq!((n.partitions.len(), n.started_ms), (1, 7));
    }

    #[test]
    fn fencing_and_reinit() {
        let m = TxnMeta::new(7, 100, 0).add_partitions(7, 0, &parts(&[0]), 0).unwrap().unwrap();
        assert!(!m.expired(100) && m.expired(101));
        let a = m.abort_and_fence(200);
        assert_eq!((a.state, a.epoch), (TxnState::PrepareAbort, 1));
        // The old producer is fenced from now on.
        assert_eq!(a.end(7, 0, true, 201), Err(TxnError::ProducerFenced));
        let done = a.complete(202);
        let r = done.reinit(None, 500, 203, || None).unwrap().unwrap();
        assert_eq!((r.producer_id, r.epoch, r.state, r.timeout_ms), (7, 2, TxnState::Empty, 500));
        assert_eq!(done.reinit(Some((7, 0)), 500, 203, || None), Err(TxnError::ProducerFenced));
        // Out of epochs: a new producer id.
        let mut worn = done.clone();
        worn.epoch = EPOCH_MAX;
        let r = worn.reinit(None, 500, 204, || Some(99)).unwrap().unwrap();
        assert_eq!((r.producer_id, r.epoch), (99, 0));
    }
}
