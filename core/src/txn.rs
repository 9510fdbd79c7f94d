//! The transaction coordinator's state for one `transactional.id`, and the rules by which it
//! moves, as Kafka's TransactionMetadata does, in both transaction versions:
//! - version 1: the client adds partitions with AddPartitionsToTxn; the coordinator bumps the
//!   epoch only at InitProducerId and to fence a producer whose transaction it aborts;
//! - version 2 (KIP-890 part 2, EndTxn v5): partitions join the transaction when the
//!   producer first writes to them (the partition's leader adds them), and every end of a
//!   transaction bumps the producer's epoch. Its markers carry the new epoch, so a partition
//!   can tell a late marker of the last transaction (an epoch not above the producer's)
//!   from the end of the one open now.
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
    /// The open or ending transaction is of transaction version 2: its markers carry an
    /// epoch above the one its records were written with.
    pub tv2: bool,
    /// The producer id before a version-2 end ran out of epochs and moved the producer to a
    /// new id (-1: none): a retried EndTxn from it is recognised. Set when that end is
    /// prepared (never by a coordinator's fence, whose producer must not get the new id).
    pub previous_producer_id: i64,
    /// While such an end is preparing: the id the producer takes when it completes (-1: none).
    pub next_producer_id: i64,
    /// The epoch before the producer's own latest bump by InitProducerId (KIP-360: it names
    /// its id and epoch), -1 when any other change of epoch came since: a retry of that
    /// InitProducerId, whose answer was lost, gets the current epoch rather than
    /// PRODUCER_FENCED (Kafka's `lastProducerEpoch`).
    pub last_epoch: i16,
}

/// The stored layout before `last_epoch` (records written by older builds): the layout
/// before it, then the fields transaction version 2 added (postcard writes a nested struct's
/// fields in line).
#[derive(Deserialize)]
struct TxnMetaV2 {
    v1: TxnMetaV1,
    tv2: bool,
    previous_producer_id: i64,
    next_producer_id: i64,
}

/// The stored layout before transaction version 2 (records written by older builds).
#[derive(Deserialize)]
struct TxnMetaV1 {
    producer_id: i64,
    epoch: i16,
    timeout_ms: i32,
    state: TxnState,
    partitions: BTreeSet<(String, i32)>,
    started_ms: i64,
    updated_ms: i64,
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
            tv2: false,
            previous_producer_id: -1,
            next_producer_id: -1,
            last_epoch: -1,
        }
    }

    /// The record value stored in `__transaction_state`.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("transaction state serializes")
    }

    /// A stored record value, of this layout or an older one.
    pub fn decode(bytes: &[u8]) -> Option<TxnMeta> {
        // Newest first: an older layout is a prefix of a newer one, and postcard leaves the
        // bytes past what it decodes unread.
        if let Ok(m) = postcard::from_bytes::<TxnMeta>(bytes) {
            return Some(m);
        }
        if let Ok(m) = postcard::from_bytes::<TxnMetaV2>(bytes) {
            let mut meta = TxnMeta::from_v1(m.v1);
            (meta.tv2, meta.previous_producer_id, meta.next_producer_id) =
                (m.tv2, m.previous_producer_id, m.next_producer_id);
            return Some(meta);
        }
        postcard::from_bytes::<TxnMetaV1>(bytes).ok().map(TxnMeta::from_v1)
    }

    fn from_v1(old: TxnMetaV1) -> TxnMeta {
        TxnMeta {
            producer_id: old.producer_id,
            epoch: old.epoch,
            timeout_ms: old.timeout_ms,
            state: old.state,
            partitions: old.partitions,
            started_ms: old.started_ms,
            updated_ms: old.updated_ms,
            tv2: false,
            previous_producer_id: -1,
            next_producer_id: -1,
            last_epoch: -1,
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

    /// AddPartitionsToTxn / AddOffsetsToTxn, or a version-2 producer's first write to a
    /// partition (`tv2`): the state with `parts` added, or `None` if they are all in already
    /// (nothing to store).
    pub fn add_partitions(
        &self,
        producer_id: i64,
        epoch: i16,
        parts: &[(String, i32)],
        now_ms: i64,
        tv2: bool,
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
            next.tv2 = tv2;
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
                next.tv2 = false;
                next.updated_ms = now_ms;
                Ok(Some(next))
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(None),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => Err(TxnError::ConcurrentTransactions),
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// EndTxn v5+ (transaction version 2), as Kafka's coordinator answers it: the preparing
    /// state to store, whose epoch is one above the producer's (and, once the epochs run out,
    /// with the id it moves to, from `fresh_id`), or `None` when the request repeats an end
    /// that completed (answered with success and the producer's new id and epoch). A version-2
    /// producer may abort with no transaction open (its end still bumps the epoch).
    pub fn end_v2(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
        fresh_id: impl FnOnce() -> Option<i64>,
    ) -> Result<Option<TxnMeta>, TxnError> {
        use TxnState::*;
        // The request repeats an end whose bump it never heard of.
        let retry_on_bump = producer_id == self.producer_id && i32::from(epoch) + 1 == i32::from(self.epoch);
        let retry_on_new_id = producer_id != self.producer_id
            && producer_id == self.previous_producer_id
            && epoch >= EPOCH_MAX
            && self.epoch == 0;
        if producer_id != self.producer_id && !retry_on_new_id {
            return Err(TxnError::InvalidProducerIdMapping);
        }
        let retry = retry_on_bump || retry_on_new_id;
        let valid = match self.state {
            Ongoing | Empty => epoch == self.epoch,
            PrepareCommit | PrepareAbort => retry_on_bump,
            CompleteCommit | CompleteAbort => retry || epoch == self.epoch,
        };
        if !valid {
            return Err(TxnError::ProducerFenced);
        }
        match (self.state, commit) {
            (Ongoing, _) => self.prepare_v2(commit, now_ms, fresh_id).map(Some),
            (CompleteCommit, true) | (CompleteAbort, false) if retry => Ok(None),
            (CompleteCommit | CompleteAbort | Empty, false) if !retry => {
                self.prepare_v2(false, now_ms, fresh_id).map(Some)
            }
            (PrepareCommit | PrepareAbort, _) => Err(TxnError::ConcurrentTransactions),
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// A version-2 end: PrepareCommit or PrepareAbort at the next epoch.
    fn prepare_v2(
        &self,
        commit: bool,
        now_ms: i64,
        fresh_id: impl FnOnce() -> Option<i64>,
    ) -> Result<TxnMeta, TxnError> {
        let mut next = self.clone();
        next.state = if commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
        next.tv2 = true;
        next.bump_epoch(fresh_id)?;
        if next.state == TxnState::PrepareAbort && self.state != TxnState::Ongoing {
            // An abort with nothing open: no partitions, no markers.
            next.partitions.clear();
        }
        next.updated_ms = now_ms;
        Ok(next)
    }

    /// The epoch goes up by one; from `EPOCH_MAX` on, the producer also moves to a new id
    /// (from `fresh_id`; none to be had now is retriable) once the end completes.
    fn bump_epoch(&mut self, fresh_id: impl FnOnce() -> Option<i64>) -> Result<(), TxnError> {
        if self.epoch >= EPOCH_MAX {
            self.next_producer_id = fresh_id().ok_or(TxnError::ConcurrentTransactions)?;
            self.previous_producer_id = self.producer_id;
        }
        self.epoch = self.epoch.saturating_add(1);
        self.last_epoch = -1;
        Ok(())
    }

    /// The coordinator aborts the open transaction itself (a timeout, or a new producer
    /// with this transactional id): the epoch is bumped so that the producer that opened it
    /// is fenced, and abort markers carry the new epoch. A version-2 transaction's epoch goes
    /// up by two, as Kafka's does (the fence, then the end's own bump), so that the fenced
    /// producer's EndTxn is not taken for a retry of this end (one below the epoch). One that
    /// runs out of epochs moves the transactional id to a new producer id (`fresh_id`) when it
    /// completes, one the fenced producer's retries do not reach (they are refused as of
    /// another producer id); with no id to be had now, `None`: the fence waits.
    pub fn abort_and_fence(&self, now_ms: i64, fresh_id: impl FnOnce() -> Option<i64>) -> Option<TxnMeta> {
        let mut next = self.clone();
        next.state = TxnState::PrepareAbort;
        next.last_epoch = -1;
        if self.tv2 {
            let bumped = i32::from(self.epoch) + 2;
            if bumped >= i32::from(EPOCH_MAX) {
                next.next_producer_id = fresh_id()?;
                next.previous_producer_id = -1;
            }
            next.epoch = i16::try_from(bumped).unwrap_or(i16::MAX);
        } else if next.epoch < EPOCH_MAX {
            next.epoch += 1;
        }
        next.updated_ms = now_ms;
        Some(next)
    }

    /// Markers are durable everywhere: the transaction is complete (and a producer that ran
    /// out of epochs takes its new id).
    pub fn complete(&self, now_ms: i64) -> TxnMeta {
        let mut next = self.clone();
        next.state =
            if self.state == TxnState::PrepareCommit { TxnState::CompleteCommit } else { TxnState::CompleteAbort };
        next.partitions.clear();
        next.started_ms = -1;
        next.updated_ms = now_ms;
        if self.next_producer_id >= 0 {
            next.producer_id = self.next_producer_id;
            next.next_producer_id = -1;
            next.epoch = 0;
            next.last_epoch = -1;
        }
        next
    }

    /// InitProducerId for an existing id with no transaction open: the next epoch (a new
    /// producer id once the epochs run out, from `fresh_id`). `expected` is the (id, epoch)
    /// a v3+ client says it had (KIP-360): the current one (bumped, and remembered as
    /// `last_epoch`), or the one before its own last bump (a retry whose answer was lost:
    /// the current epoch again, unchanged); any other is fenced.
    pub fn reinit(
        &self,
        expected: Option<(i64, i16)>,
        timeout_ms: i32,
        now_ms: i64,
        fresh_id: impl FnOnce() -> Option<i64>,
    ) -> Result<Option<TxnMeta>, TxnError> {
        let mut next = self.clone();
        next.last_epoch = -1;
        if let Some((id, epoch)) = expected {
            if id != self.producer_id {
                return Err(TxnError::ProducerFenced);
            }
            if epoch != self.epoch {
                if self.last_epoch < 0 || epoch != self.last_epoch {
                    return Err(TxnError::ProducerFenced);
                }
                next.timeout_ms = timeout_ms;
                next.updated_ms = now_ms;
                return Ok(Some(next.with_last_epoch(self.last_epoch)));
            }
            next.last_epoch = self.epoch;
        }
        if self.epoch >= EPOCH_MAX {
            let Some(id) = fresh_id() else { return Ok(None) };
            next.producer_id = id;
            next.epoch = 0;
            next.last_epoch = -1;
        } else {
            next.epoch += 1;
        }
        next.state = TxnState::Empty;
        next.partitions.clear();
        next.started_ms = -1;
        next.tv2 = false;
        next.next_producer_id = -1;
        next.timeout_ms = timeout_ms;
        next.updated_ms = now_ms;
        Ok(Some(next))
    }

    fn with_last_epoch(mut self, last_epoch: i16) -> TxnMeta {
        self.last_epoch = last_epoch;
        self
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
        assert_eq!(m.add_partitions(8, 0, &parts(&[0]), 1, false), Err(TxnError::InvalidProducerIdMapping));
        assert_eq!(m.add_partitions(7, 1, &parts(&[0]), 1, false), Err(TxnError::ProducerFenced));
        let m = m.add_partitions(7, 0, &parts(&[0]), 1, false).unwrap().unwrap();
        assert_eq!((m.state, m.started_ms), (TxnState::Ongoing, 1));
        assert_eq!(m.add_partitions(7, 0, &parts(&[0]), 2, false), Ok(None), "already in");
        let m = m.add_partitions(7, 0, &parts(&[1]), 2, false).unwrap().unwrap();
        assert_eq!(m.partitions.len(), 2);
        assert_eq!(m.started_ms, 1, "the transaction started with its first partition");
        let p = m.end(7, 0, true, 3).unwrap().unwrap();
        assert_eq!(p.state, TxnState::PrepareCommit);
        assert_eq!(p.add_partitions(7, 0, &parts(&[2]), 4, false), Err(TxnError::ConcurrentTransactions));
        assert_eq!(p.end(7, 0, true, 4), Err(TxnError::ConcurrentTransactions));
        let c = p.complete(5);
        assert_eq!((c.state, c.partitions.len()), (TxnState::CompleteCommit, 0));
        assert_eq!(c.end(7, 0, true, 6), Ok(None), "a retried commit");
        assert_eq!(c.end(7, 0, false, 6), Err(TxnError::InvalidTxnState));
        // The next transaction starts afresh.
        let n = c.add_partitions(7, 0, &parts(&[3]), 7, false).unwrap().unwrap();
        assert_eq!((n.partitions.len(), n.started_ms), (1, 7));
    }

    #[test]
    fn fencing_and_reinit() {
        let m = TxnMeta::new(7, 100, 0).add_partitions(7, 0, &parts(&[0]), 0, false).unwrap().unwrap();
        assert!(!m.expired(100) && m.expired(101));
        let a = m.abort_and_fence(200, || None).unwrap();
        assert_eq!((a.state, a.epoch), (TxnState::PrepareAbort, 1));
        // The old producer is fenced from now on.
        assert_eq!(a.end(7, 0, true, 201), Err(TxnError::ProducerFenced));
        let done = a.complete(202);
        let r = done.reinit(None, 500, 203, || None).unwrap().unwrap();
        assert_eq!((r.producer_id, r.epoch, r.state, r.timeout_ms), (7, 2, TxnState::Empty, 500));
        assert_eq!(done.reinit(Some((7, 0)), 500, 203, || None), Err(TxnError::ProducerFenced));
        // The producer's own bump (KIP-360) is remembered: its retry gets the same epoch.
        let own = r.reinit(Some((7, 2)), 500, 204, || None).unwrap().unwrap();
        assert_eq!((own.epoch, own.last_epoch), (3, 2));
        let again = own.reinit(Some((7, 2)), 500, 205, || None).unwrap().unwrap();
        assert_eq!((again.producer_id, again.epoch, again.last_epoch), (7, 3, 2), "a retry, not fenced");
        assert_eq!(own.reinit(Some((7, 1)), 500, 205, || None), Err(TxnError::ProducerFenced));
        // A new producer (no id named) or a fence forgets it.
        let fresh = own.reinit(None, 500, 206, || None).unwrap().unwrap();
        assert_eq!((fresh.epoch, fresh.last_epoch), (4, -1));
        assert_eq!(fresh.reinit(Some((7, 3)), 500, 207, || None), Err(TxnError::ProducerFenced));
        let fenced = own.add_partitions(7, 3, &parts(&[0]), 206, false).unwrap().unwrap().abort_and_fence(207, || None);
        let fenced = fenced.unwrap().complete(208);
        assert_eq!(fenced.reinit(Some((7, 2)), 500, 209, || None), Err(TxnError::ProducerFenced));
        // Stored and read back, with the layout before it read as none.
        assert_eq!(TxnMeta::decode(&own.encode()), Some(own.clone()));
        let old = postcard::to_allocvec(&(
            7i64,
            3i16,
            500i32,
            TxnState::Empty,
            BTreeSet::<(String, i32)>::new(),
            -1i64,
            204i64,
            false,
            -1i64,
            -1i64,
        ))
        .unwrap();
        assert_eq!(TxnMeta::decode(&old).map(|m| (m.epoch, m.last_epoch)), Some((3, -1)));
        // Out of epochs: a new producer id.
        let mut worn = done.clone();
        worn.epoch = EPOCH_MAX;
        let r = worn.reinit(None, 500, 204, || Some(99)).unwrap().unwrap();
        assert_eq!((r.producer_id, r.epoch), (99, 0));
    }

    #[test]
    fn version_two_bumps_the_epoch_at_every_end() {
        let m = TxnMeta::new(7, 60_000, 0).add_partitions(7, 0, &parts(&[0]), 1, true).unwrap().unwrap();
        assert!(m.tv2);
        let p = m.end_v2(7, 0, true, 2, || None).unwrap().unwrap();
        assert_eq!((p.state, p.epoch, p.tv2), (TxnState::PrepareCommit, 1, true));
        // While its markers are written, a retry waits; the old epoch is not fenced yet.
        assert_eq!(p.end_v2(7, 0, true, 3, || None), Err(TxnError::ConcurrentTransactions));
        assert_eq!(p.end_v2(7, 1, true, 3, || None), Err(TxnError::ProducerFenced));
        let c = p.complete(4);
        assert_eq!((c.state, c.epoch, c.partitions.len()), (TxnState::CompleteCommit, 1, 0));
        assert_eq!(c.end_v2(7, 0, true, 5, || None), Ok(None), "a retried commit");
        assert_eq!(c.end_v2(7, 0, false, 5, || None), Err(TxnError::InvalidTxnState));
        assert_eq!(c.end_v2(7, 1, true, 5, || None), Err(TxnError::InvalidTxnState), "nothing open to commit");
        // An abort with nothing open still bumps the epoch, and writes no marker.
        let a = c.end_v2(7, 1, false, 6, || None).unwrap().unwrap();
        assert_eq!((a.state, a.epoch, a.partitions.len()), (TxnState::PrepareAbort, 2, 0));
        // The next transaction runs at the epoch the end gave.
        let c = a.complete(7);
        assert_eq!(c.add_partitions(7, 1, &parts(&[0]), 8, true), Err(TxnError::ProducerFenced));
        let n = c.add_partitions(7, 2, &parts(&[0]), 8, true).unwrap().unwrap();
        assert_eq!((n.state, n.epoch), (TxnState::Ongoing, 2));
        assert_eq!(n.end_v2(7, 1, true, 9, || None), Err(TxnError::ProducerFenced), "an old epoch's end");
        // Out of epochs: the end moves the producer to a new id, and its retry is recognised.
        let mut worn = n.clone();
        worn.epoch = EPOCH_MAX;
        assert_eq!(worn.end_v2(7, EPOCH_MAX, true, 10, || None), Err(TxnError::ConcurrentTransactions));
        let p = worn.end_v2(7, EPOCH_MAX, true, 10, || Some(99)).unwrap().unwrap();
        assert_eq!((p.producer_id, p.epoch, p.next_producer_id), (7, i16::MAX, 99));
        let c = p.complete(11);
        assert_eq!((c.producer_id, c.epoch, c.previous_producer_id), (99, 0, 7));
        assert_eq!(c.end_v2(7, EPOCH_MAX, true, 12, || None), Ok(None), "the retry of the end that moved it");
        assert_eq!(c.end_v2(8, EPOCH_MAX, true, 12, || None), Err(TxnError::InvalidProducerIdMapping));
    }

    #[test]
    fn a_fenced_version_two_transaction_marks_above_its_records() {
        let mut m = TxnMeta::new(7, 100, 0).add_partitions(7, 0, &parts(&[0]), 0, true).unwrap().unwrap();
        let a = m.abort_and_fence(200, || None).unwrap();
        assert_eq!((a.state, a.epoch), (TxnState::PrepareAbort, 2));
        let c = a.complete(201);
        // The fenced producer's end is not a retry of the coordinator's.
        assert_eq!(c.end_v2(7, 0, false, 202, || None), Err(TxnError::ProducerFenced));
        assert_eq!(c.end_v2(7, 0, true, 202, || None), Err(TxnError::ProducerFenced));
        m.epoch = EPOCH_MAX - 2;
        assert_eq!(m.abort_and_fence(200, || None), None, "the fence waits for a new producer id");
        let a = m.abort_and_fence(200, || Some(42)).unwrap();
        assert_eq!((a.epoch, a.next_producer_id), (EPOCH_MAX, 42));
        let c = a.complete(201);
        assert_eq!((c.producer_id, c.epoch, c.previous_producer_id), (42, 0, -1));
        // The fenced producer's retry (of an end or of the abort) does not reach the new id.
        for commit in [true, false] {
            assert_eq!(c.end_v2(7, EPOCH_MAX - 2, commit, 202, || None), Err(TxnError::InvalidProducerIdMapping));
        }
    }

    #[test]
    fn records_of_the_layout_before_version_two_are_read() {
        #[derive(Serialize)]
        struct Old {
            producer_id: i64,
            epoch: i16,
            timeout_ms: i32,
            state: TxnState,
            partitions: BTreeSet<(String, i32)>,
            started_ms: i64,
            updated_ms: i64,
        }
        let old = Old {
            producer_id: 5,
            epoch: 3,
            timeout_ms: 900,
            state: TxnState::Ongoing,
            partitions: parts(&[1, 2]).into_iter().collect(),
            started_ms: 10,
            updated_ms: 11,
        };
        let m = TxnMeta::decode(&postcard::to_allocvec(&old).unwrap()).unwrap();
        assert_eq!((m.producer_id, m.epoch, m.timeout_ms, m.state), (5, 3, 900, TxnState::Ongoing));
        assert_eq!((m.partitions.len(), m.started_ms, m.updated_ms), (2, 10, 11));
        assert_eq!((m.tv2, m.previous_producer_id, m.next_producer_id), (false, -1, -1));
        let mut now = m.clone();
        now.tv2 = true;
        assert_eq!(TxnMeta::decode(&now.encode()), Some(now));
    }
}
