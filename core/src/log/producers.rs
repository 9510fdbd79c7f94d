//! Idempotent producers, one partition's view: for each producer id, its epoch and the last
//! five batches it wrote (their sequence ranges and offsets), as Kafka keeps them.
//!
//! A batch from a known producer is checked before it is appended:
//! - an epoch below the producer's is refused (`InvalidEpoch`);
//! - a batch whose epoch and sequence range match one of the last five is a retry of a batch
//!   already written: it is answered with that batch's offsets and not written again;
//! - with the same epoch, the first sequence must follow the last one written (wrapping at
//!   `i32::MAX`), or the batch is `OutOfOrder` (a gap, or an old batch out of the window);
//! - a newer epoch must start at sequence 0 (the client bumped its epoch and reset).
//!
//! A producer the partition does not know (new, or expired) may start at any sequence, as in
//! Kafka since KIP-360. The state changes when a batch is appended (not when it is durable);
//! when the log is cut back, what was cut is forgotten again (`truncate`). One batch older
//! than the window is kept per producer as its floor: a cut that removes all five can fall
//! back to it, so the producer keeps its place in the sequence instead of being forgotten.
//! A client keeps at most five requests in flight, so the batch before the last five it
//! appended is durable and never cut. A producer whose every batch here was cut is not
//! forgotten either: it must start again at the first sequence that was cut, so a batch it
//! had in flight behind the cut ones cannot land first and leave a gap.

use std::collections::{BTreeMap, VecDeque};

use crate::types::Offset;

/// Batches remembered per producer for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` bound for idempotence).
pub const WINDOW: usize = 5;

/// The epoch of a batch that has none (`RecordBatch.NO_PRODUCER_EPOCH`).
pub const NO_EPOCH: i16 = -1;

/// One batch a producer wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp: i64,
}

/// A producer's state on one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// The last batches, oldest first, at most `WINDOW`.
    pub batches: VecDeque<BatchMeta>,
    /// The batch before the window, if any.
    pub floor: Option<BatchMeta>,
    /// Largest batch timestamp seen (for `producer.id.expiration.ms`).
    pub last_timestamp: i64,
    /// With no batch left after a cut: the sequence the producer must start again at.
    pub expect: Option<i32>,
    /// The first offset of the producer's open transaction on this partition.
    pub txn_first: Option<Offset>,
    /// Its last finished transaction: (first offset, marker offset, the producer's epoch
    /// before the marker), so that a cut that removes the marker opens it again, at the
    /// epoch its records were written with (a version-2 marker's is one above).
    pub last_txn: Option<(Offset, Offset, i16)>,
    /// The highest coordinator epoch of its markers here (-1: none yet). A cut that removes
    /// a marker leaves it: the coordinator that wrote it had replaced the older ones.
    pub coordinator_epoch: i32,
}

/// A transaction that was aborted on this partition: its records from `first_offset` up to
/// its marker at `last_offset` must not be shown to read_committed consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: Offset,
    pub last_offset: Offset,
}

/// What a batch read back at start-up contributes to producer state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Replay {
    /// Data from a producer (transactional or not), at these offsets.
    Data(ProducerBatch, Offset, Offset),
    /// A transaction marker at this offset (commit or abort), written by a coordinator in
    /// `coordinator_epoch`.
    Marker { producer_id: i64, epoch: i16, commit: bool, offset: Offset, coordinator_epoch: i32 },
}

impl Replay {
    /// What the batch `bytes` (header `h`), written at `base`, contributes: a producer's
    /// data, a transaction marker, or nothing (no producer id, or a control batch that is
    /// not a marker).
    pub fn of(h: &super::batch::BatchHeader, base: Offset, bytes: &[u8]) -> Option<Replay> {
        let pb = h.producer()?;
        if !h.is_control() {
            return Some(Replay::Data(pb, base, base + i64::from(h.last_offset_delta)));
        }
        let (commit, coordinator_epoch) = super::batch::control_marker_of(bytes)?;
        Some(Replay::Marker {
            producer_id: h.producer_id,
            epoch: h.producer_epoch,
            commit,
            offset: base,
            coordinator_epoch,
        })
    }

    /// The batch's first offset.
    pub fn offset(&self) -> Offset {
        match self {
            Replay::Data(_, first, _) => *first,
            Replay::Marker { offset, .. } => *offset,
        }
    }
}

/// The producer fields of a batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
    pub max_timestamp: i64,
    /// Part of a transaction.
    pub transactional: bool,
}

impl ProducerBatch {
    /// The producer fields of a batch with `records` offsets (last offset delta + 1).
    pub fn new(producer_id: i64, epoch: i16, first_seq: i32, last_offset_delta: i32, max_timestamp: i64) -> Self {
        ProducerBatch {
            producer_id,
            epoch,
            first_seq,
            last_seq: last_seq(first_seq, last_offset_delta),
            max_timestamp,
            transactional: false,
        }
    }
}

/// What to do with a batch that passed the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// A retry of a batch already in the log: answer with its offsets, write nothing.
    Duplicate(BatchMeta),
}

/// What to do with a transaction marker that passed the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerCheck {
    Write,
    /// The marker is in the log already (a coordinator asking again): write nothing.
    Written,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqError {
    /// The first sequence does not follow the last one written.
    OutOfOrder,
    /// The epoch is older than the producer's.
    InvalidEpoch,
    /// A marker's coordinator epoch is older than the last marker's for that producer.
    CoordinatorFenced,
}

/// The last sequence of a batch, wrapping as Kafka's does.
pub fn last_seq(first_seq: i32, last_offset_delta: i32) -> i32 {
    if first_seq > i32::MAX - last_offset_delta {
        last_offset_delta - (i32::MAX - first_seq) - 1
    } else {
        first_seq + last_offset_delta
    }
}

fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// Every producer's state on one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Producers {
    map: BTreeMap<i64, ProducerEntry>,
    /// Undecided transactions by first offset, with the offset of their marker once it is
    /// appended: a transaction is decided only when its marker is durable (below the high
    /// watermark), so the last stable offset cannot pass the first of these.
    ongoing: BTreeMap<Offset, (i64, Option<Offset>)>,
    /// Aborted transactions in marker order.
    aborted: Vec<AbortedTxn>,
}

impl Producers {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.map.get(&producer_id)
    }

    /// Checks a batch against what the producer has written.
    pub fn check(&self, b: &ProducerBatch) -> Result<Verdict, SeqError> {
        let Some(e) = self.map.get(&b.producer_id) else {
            return Ok(Verdict::Append);
        };
        if b.epoch < e.epoch {
            return Err(SeqError::InvalidEpoch);
        }
        if b.epoch > e.epoch {
            return if b.first_seq == 0 { Ok(Verdict::Append) } else { Err(SeqError::OutOfOrder) };
        }
        if let Some(d) = e.batches.iter().find(|m| m.first_seq == b.first_seq && m.last_seq == b.last_seq) {
            if !crate::mutants::active(crate::mutants::Mutant::DedupWindowDropped) {
                return Ok(Verdict::Duplicate(*d));
            }
            return Ok(Verdict::Append);
        }
        if e.epoch == NO_EPOCH {
            // A producer id with no epoch: Kafka checks no sequence for it.
            return Ok(Verdict::Append);
        }
        let in_order = match e.batches.back().or(e.floor.as_ref()) {
            Some(last) => in_sequence(last.last_seq, b.first_seq),
            None => e.expect.is_none_or(|s| s == b.first_seq),
        };
        if in_order {
            Ok(Verdict::Append)
        } else {
            Err(SeqError::OutOfOrder)
        }
    }

    /// Records a batch appended at `first_offset..=last_offset` (after `check`, or when the log
    /// is read back at start-up, where the log's order is the truth and nothing is refused).
    pub fn record(&mut self, b: &ProducerBatch, first_offset: Offset, last_offset: Offset) {
        let e = self.map.entry(b.producer_id).or_insert_with(|| ProducerEntry {
            epoch: b.epoch,
            batches: VecDeque::new(),
            floor: None,
            last_timestamp: b.max_timestamp,
            expect: None,
            txn_first: None,
            last_txn: None,
            coordinator_epoch: -1,
        });
        e.expect = None;
        if b.transactional && e.txn_first.is_none() {
            e.txn_first = Some(first_offset);
            self.ongoing.insert(first_offset, (b.producer_id, None));
        }
        if b.epoch != e.epoch {
            // A new epoch starts its sequences afresh: nothing of the old one can match.
            e.epoch = b.epoch;
            e.batches.clear();
            e.floor = None;
        }
        e.batches.push_back(BatchMeta {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            first_offset,
            last_offset,
            max_timestamp: b.max_timestamp,
        });
        if e.batches.len() > WINDOW {
            e.floor = e.batches.pop_front();
        }
        e.last_timestamp = e.last_timestamp.max(b.max_timestamp);
    }

    /// Checks a transaction marker a coordinator (in `coordinator_epoch`) is about to write:
    /// a marker of a producer epoch older than the producer's, or from a coordinator older
    /// than the last one that wrote a marker for it here, must not end its transaction (a
    /// zombie coordinator's late marker would end the producer's next one, at the same
    /// producer epoch when the last transaction committed).
    ///
    /// A `strict` marker (transaction version 2) carries an epoch above the one its
    /// transaction's records were written with, so one at the producer's epoch here is late:
    /// it ended the producer's last transaction already (`Written`) when no transaction is
    /// open, or belongs to an earlier end than the open one's (refused).
    pub fn check_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
        strict: bool,
    ) -> Result<MarkerCheck, SeqError> {
        if crate::mutants::active(crate::mutants::Mutant::MarkerOldEpochAccepted) {
            return Ok(MarkerCheck::Write);
        }
        match self.map.get(&producer_id) {
            Some(e) if epoch < e.epoch => Err(SeqError::InvalidEpoch),
            Some(e) if coordinator_epoch < e.coordinator_epoch => Err(SeqError::CoordinatorFenced),
            Some(e) if strict && epoch == e.epoch && e.txn_first.is_some() => Err(SeqError::InvalidEpoch),
            Some(e) if strict && epoch == e.epoch => Ok(MarkerCheck::Written),
            _ => Ok(MarkerCheck::Write),
        }
    }

    /// A transaction marker was appended at `offset`: the producer's open transaction here
    /// ends (and is remembered if aborted). The marker's epoch becomes the producer's: a
    /// coordinator that bumped the epoch to abort fences the old one's retries.
    pub fn end_txn(&mut self, producer_id: i64, epoch: i16, commit: bool, offset: Offset, coordinator_epoch: i32) {
        let e = self.map.entry(producer_id).or_insert_with(|| ProducerEntry {
            epoch,
            batches: VecDeque::new(),
            floor: None,
            last_timestamp: i64::MIN,
            expect: None,
            txn_first: None,
            last_txn: None,
            coordinator_epoch,
        });
        e.coordinator_epoch = e.coordinator_epoch.max(coordinator_epoch);
        let epoch_before = e.epoch;
        if epoch != e.epoch {
            // The new epoch's first batch must start at sequence 0, as Kafka's: a later
            // batch of it landing first (the first one refused, retriable, behind the
            // coordinator) would leave the first one out of order for good.
            e.epoch = epoch;
            e.batches.clear();
            e.floor = None;
            e.expect = Some(0);
        }
        if let Some(first) = e.txn_first.take() {
            // Undecided until the marker is durable: `decided_below` lets it go.
            self.ongoing.insert(first, (producer_id, Some(offset)));
            e.last_txn = Some((first, offset, epoch_before));
            if !commit {
                self.aborted.push(AbortedTxn { producer_id, first_offset: first, last_offset: offset });
            }
        }
    }

    /// The first offset of the oldest transaction not yet decided below `high_watermark`
    /// (open, or its marker not yet durable): read_committed stops there.
    pub fn first_open_offset(&self, high_watermark: Offset) -> Option<Offset> {
        self.ongoing.iter().find(|(_, (_, marker))| marker.is_none_or(|m| m >= high_watermark)).map(|(o, _)| *o)
    }

    /// The high watermark moved: transactions whose markers are now durable are decided.
    pub fn decided_below(&mut self, high_watermark: Offset) {
        self.ongoing.retain(|_, (_, marker)| marker.is_none_or(|m| m >= high_watermark));
    }

    /// Whether the producer has a transaction open on this partition.
    pub fn in_txn(&self, producer_id: i64) -> bool {
        self.map.get(&producer_id).is_some_and(|e| e.txn_first.is_some())
    }

    /// Aborted transactions a read of `from..upper` overlaps: (producer id, first offset).
    pub fn aborted_between(&self, from: Offset, upper: Offset) -> Vec<(i64, Offset)> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < upper)
            .map(|a| (a.producer_id, a.first_offset))
            .collect()
    }

    /// True if the batch of `producer_id` at `offset` belongs to an aborted transaction.
    pub fn is_aborted(&self, producer_id: i64, offset: Offset) -> bool {
        let start = self.aborted.partition_point(|a| a.last_offset < offset);
        self.aborted[start..].iter().any(|a| a.producer_id == producer_id && a.first_offset <= offset)
    }

    /// Aborted transactions wholly below the log start are of no more use.
    pub fn forget_aborted_below(&mut self, log_start: Offset) {
        self.aborted.retain(|a| a.last_offset >= log_start);
    }

    /// Every open transaction: (producer id, first offset).
    pub fn open_txns(&self) -> impl Iterator<Item = (i64, Offset)> + '_ {
        self.ongoing.iter().filter(|(_, (_, m))| m.is_none()).map(|(o, (p, _))| (*p, *o))
    }

    /// Replays what start-up read back from the log.
    pub fn replay(&mut self, r: &Replay) {
        match *r {
            Replay::Data(b, first, last) => self.record(&b, first, last),
            Replay::Marker { producer_id, epoch, commit, offset, coordinator_epoch } => {
                self.end_txn(producer_id, epoch, commit, offset, coordinator_epoch)
            }
        }
    }

    /// The log was cut back so that `offset` is the next to be written: forget every batch
    /// at or past it. A producer left with nothing must start again where the cut began.
    pub fn truncate(&mut self, offset: Offset) {
        self.aborted.retain(|a| a.last_offset < offset);
        self.ongoing.retain(|first, _| *first < offset);
        for (_, marker) in self.ongoing.values_mut() {
            if marker.is_some_and(|m| m >= offset) {
                *marker = None; // its marker was cut: open again
            }
        }
        for (pid, e) in self.map.iter_mut() {
            if e.txn_first.is_some_and(|f| f >= offset) {
                e.txn_first = None;
            }
            // A marker that was cut leaves its transaction open again.
            if let Some((first, marker, epoch_before)) = e.last_txn {
                if marker >= offset {
                    e.last_txn = None;
                    if first < offset && e.txn_first.is_none() {
                        e.txn_first = Some(first);
                        e.epoch = epoch_before;
                        // The old epoch's batches went with the marker: its next sequence
                        // is not known here any more.
                        e.expect = None;
                        self.ongoing.insert(first, (*pid, None));
                    }
                }
            }
            let first_cut =
                e.floor.iter().chain(e.batches.iter()).find(|m| m.last_offset >= offset).map(|m| m.first_seq);
            e.batches.retain(|m| m.last_offset < offset);
            if e.floor.is_some_and(|f| f.last_offset >= offset) {
                e.floor = None;
            }
            if e.batches.is_empty() {
                if let Some(f) = e.floor.take() {
                    e.batches.push_back(f);
                } else if first_cut.is_some() {
                    e.expect = first_cut;
                }
            }
        }
    }

    /// Forgets producers whose last batch is `expiration_ms` or more older than `now_ms`,
    /// unless a transaction of theirs is open here (as Kafka: its marker must find it, or
    /// the last stable offset would stay behind the open transaction for good). Returns how
    /// many went.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| e.txn_first.is_some() || now_ms.saturating_sub(e.last_timestamp) < expiration_ms);
        before - self.map.len()
    }

    /// Every producer, by id (for invariants and tools).
    pub fn iter(&self) -> impl Iterator<Item = (&i64, &ProducerEntry)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(pid: i64, epoch: i16, first: i32, n: i32) -> ProducerBatch {
        ProducerBatch::new(pid, epoch, first, n - 1, 1000)
    }

    /// Checks and records like the node does; returns the verdict.
    fn send(p: &mut Producers, batch: ProducerBatch, next_offset: &mut i64) -> Result<Verdict, SeqError> {
        let v = p.check(&batch)?;
        if v == Verdict::Append {
            let n = i64::from(batch.last_seq.wrapping_sub(batch.first_seq)) + 1;
            p.record(&batch, *next_offset, *next_offset + n - 1);
            *next_offset += n;
        }
        Ok(v)
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut p = Producers::default();
        let mut at = 0;
        assert_eq!(send(&mut p, b(7, 0, 0, 3), &mut at), Ok(Verdict::Append));
        assert_eq!(send(&mut p, b(7, 0, 3, 2), &mut at), Ok(Verdict::Append));
        // The retry of either batch is answered with its original offsets.
        assert_eq!(
            send(&mut p, b(7, 0, 0, 3), &mut at),
            Ok(Verdict::Duplicate(BatchMeta {
                first_seq: 0,
                last_seq: 2,
                first_offset: 0,
                last_offset: 2,
                max_timestamp: 1000
            }))
        );
        assert!(matches!(send(&mut p, b(7, 0, 3, 2), &mut at), Ok(Verdict::Duplicate(m)) if m.first_offset == 3));
        assert_eq!(at, 5, "duplicates wrote nothing");
        // A gap, and an overlap that is not a batch written, are out of order.
        assert_eq!(send(&mut p, b(7, 0, 6, 1), &mut at), Err(SeqError::OutOfOrder));
        assert_eq!(send(&mut p, b(7, 0, 4, 1), &mut at), Err(SeqError::OutOfOrder));
        assert_eq!(send(&mut p, b(7, 0, 5, 1), &mut at), Ok(Verdict::Append));
    }

    #[test]
    fn window_is_five_batches() {
        let mut p = Producers::default();
        let mut at = 0;
        for i in 0..7 {
            assert_eq!(send(&mut p, b(1, 0, i, 1), &mut at), Ok(Verdict::Append));
        }
        assert!(matches!(send(&mut p, b(1, 0, 2, 1), &mut at), Ok(Verdict::Duplicate(_))));
        // Six batches back is out of the window: not a duplicate, and out of order.
        assert_eq!(send(&mut p, b(1, 0, 1, 1), &mut at), Err(SeqError::OutOfOrder));
    }

    /// A marker from a coordinator older than the last one to write a marker for the
    /// producer here is refused (a zombie coordinator's late marker would end the producer's
    /// next transaction at the same producer epoch); a newer one's, or a newer producer
    /// epoch's, is taken; the coordinator epoch comes back from the log's markers.
    #[test]
    fn markers_of_replaced_coordinators_are_refused() {
        let mut p = Producers::default();
        let mut at = 0;
        let mut txn = b(9, 0, 0, 2);
        txn.transactional = true;
        send(&mut p, txn, &mut at).unwrap();
        assert_eq!(p.check_marker(9, 0, 4, false), Ok(MarkerCheck::Write));
        p.end_txn(9, 0, true, 2, 4);
        // The producer's next transaction, at the same epoch (version 1 commits keep it).
        let mut next = b(9, 0, 2, 1);
        next.transactional = true;
        at = 3;
        send(&mut p, next, &mut at).unwrap();
        assert!(p.in_txn(9));
        assert_eq!(p.check_marker(9, 0, 3, false), Err(SeqError::CoordinatorFenced), "an older coordinator's marker");
        assert_eq!(p.check_marker(9, 0, 4, false), Ok(MarkerCheck::Write));
        assert_eq!(p.check_marker(9, 0, 5, false), Ok(MarkerCheck::Write));
        assert_eq!(p.check_marker(8, 0, 0, false), Ok(MarkerCheck::Write), "another producer has its own");
        // Rebuilt from the log's markers at start-up.
        let mut r = Producers::default();
        r.replay(&Replay::Data(txn, 0, 1));
        r.replay(&Replay::Marker { producer_id: 9, epoch: 0, commit: true, offset: 2, coordinator_epoch: 4 });
        assert_eq!(r.check_marker(9, 0, 3, false), Err(SeqError::CoordinatorFenced));
        let bytes = crate::log::batch::control_marker(9, 0, true, 4, 10);
        let h = crate::log::batch::check_batch(&bytes).unwrap();
        assert!(matches!(Replay::of(&h, 2, &bytes), Some(Replay::Marker { coordinator_epoch: 4, commit: true, .. })));
    }

    /// Transaction version 2: a marker's epoch is above its records'. One at the producer's
    /// epoch here is late: already written when nothing is open (asked again), refused when
    /// the producer's next transaction is open (an earlier end's); the next transaction
    /// starts its sequences afresh at the marker's epoch.
    #[test]
    fn strict_markers_of_version_two() {
        let mut p = Producers::default();
        let mut at = 0;
        let mut txn = b(9, 0, 0, 2);
        txn.transactional = true;
        send(&mut p, txn, &mut at).unwrap();
        assert_eq!(p.check_marker(9, 0, 1, true), Err(SeqError::InvalidEpoch), "not above the records'");
        assert_eq!(p.check_marker(9, 1, 1, true), Ok(MarkerCheck::Write));
        p.end_txn(9, 1, true, 3, 1);
        assert_eq!(p.check_marker(9, 1, 1, true), Ok(MarkerCheck::Written), "asked again");
        // The marker cut away (a failed write): the transaction is open again at the epoch of
        // its records, and the marker is written again.
        let mut cut = p.clone();
        cut.truncate(3);
        assert!(cut.in_txn(9));
        assert_eq!(cut.get(9).map(|e| e.epoch), Some(0));
        assert_eq!(cut.check_marker(9, 1, 1, true), Ok(MarkerCheck::Write));
        assert_eq!(p.check_marker(9, 1, 1, false), Ok(MarkerCheck::Write), "version 1 writes it again");
        let mut next = b(9, 1, 0, 1);
        next.transactional = true;
        at = 4;
        let mut ahead = b(9, 1, 5, 1);
        ahead.transactional = true;
        assert_eq!(send(&mut p, ahead, &mut at), Err(SeqError::OutOfOrder), "the marker's epoch starts at 0");
        send(&mut p, next, &mut at).unwrap();
        assert!(p.in_txn(9));
        assert_eq!(p.check_marker(9, 1, 1, true), Err(SeqError::InvalidEpoch), "the last end's marker, late");
        assert_eq!(p.check_marker(9, 2, 1, true), Ok(MarkerCheck::Write));
    }

    #[test]
    fn epochs() {
        let mut p = Producers::default();
        let mut at = 0;
        send(&mut p, b(1, 3, 0, 2), &mut at).unwrap();
        assert_eq!(send(&mut p, b(1, 2, 2, 1), &mut at), Err(SeqError::InvalidEpoch));
        assert_eq!(send(&mut p, b(1, 4, 5, 1), &mut at), Err(SeqError::OutOfOrder), "a new epoch starts at 0");
        assert_eq!(send(&mut p, b(1, 4, 0, 1), &mut at), Ok(Verdict::Append));
        // The old epoch's batches are gone: its retry is now a stale epoch.
        assert_eq!(send(&mut p, b(1, 3, 0, 2), &mut at), Err(SeqError::InvalidEpoch));
        // A producer never seen may start anywhere (KIP-360).
        assert_eq!(send(&mut p, b(2, 0, 42, 1), &mut at), Ok(Verdict::Append));
        // Epochs compare as signed: -2 is older than anything.
        assert_eq!(send(&mut p, b(1, -2, 1, 1), &mut at), Err(SeqError::InvalidEpoch));
        // A producer id with no epoch is deduplicated but not sequence-checked.
        assert_eq!(send(&mut p, b(3, NO_EPOCH, 0, 1), &mut at), Ok(Verdict::Append));
        assert!(matches!(send(&mut p, b(3, NO_EPOCH, 0, 1), &mut at), Ok(Verdict::Duplicate(_))));
        assert_eq!(send(&mut p, b(3, NO_EPOCH, 9, 1), &mut at), Ok(Verdict::Append));
    }

    #[test]
    fn sequences_wrap() {
        assert_eq!(last_seq(i32::MAX - 1, 3), 1);
        assert_eq!(last_seq(5, 0), 5);
        let mut p = Producers::default();
        let mut at = 0;
        send(&mut p, b(1, 0, i32::MAX - 2, 3), &mut at).unwrap();
        assert_eq!(send(&mut p, b(1, 0, 0, 1), &mut at), Ok(Verdict::Append));
    }

    #[test]
    fn truncation_forgets_what_was_cut_and_falls_back_to_the_floor() {
        let mut p = Producers::default();
        let mut at = 0;
        for i in 0..6 {
            send(&mut p, b(1, 0, i, 1), &mut at).unwrap(); // offsets 0..=5
        }
        send(&mut p, b(2, 0, 0, 1), &mut at).unwrap(); // offset 6
        p.truncate(3);
        let e = p.get(1).unwrap();
        assert_eq!(e.batches.iter().map(|m| m.first_seq).collect::<Vec<_>>(), vec![1, 2]);
        // Producer 2 had only what was cut: it must start again at that batch's sequence,
        // not at whatever it had in flight behind it.
        assert_eq!(p.check(&b(2, 0, 1, 1)), Err(SeqError::OutOfOrder));
        assert_eq!(p.check(&b(2, 0, 0, 1)), Ok(Verdict::Append));
        // The cut batches may be sent again, in order.
        assert_eq!(p.check(&b(1, 0, 3, 1)), Ok(Verdict::Append));
        assert_eq!(p.check(&b(1, 0, 4, 1)), Err(SeqError::OutOfOrder));

        // All five in the window cut: the floor keeps the producer's place.
        let mut p = Producers::default();
        let mut at = 0;
        for i in 0..6 {
            send(&mut p, b(1, 0, i, 1), &mut at).unwrap();
        }
        p.truncate(1);
        assert_eq!(p.check(&b(1, 0, 1, 1)), Ok(Verdict::Append));
        assert_eq!(p.check(&b(1, 0, 3, 1)), Err(SeqError::OutOfOrder));
    }

    #[test]
    fn expiry() {
        let mut p = Producers::default();
        let mut at = 0;
        send(&mut p, ProducerBatch::new(1, 0, 0, 0, 100), &mut at).unwrap();
        send(&mut p, ProducerBatch::new(2, 0, 0, 0, 500), &mut at).unwrap();
        assert_eq!(p.expire(600, 200), 1);
        assert!(p.get(1).is_none() && p.get(2).is_some());
        // A producer with a transaction open here stays however idle it is, until its marker.
        let mut txn = ProducerBatch::new(3, 0, 0, 0, 500);
        txn.transactional = true;
        send(&mut p, txn, &mut at).unwrap();
        assert_eq!(p.expire(10_000, 200), 1, "only the plain producer goes");
        assert!(p.get(2).is_none() && p.in_txn(3));
        p.end_txn(3, 0, false, at, 0);
        assert_eq!(p.expire(10_000, 200), 1, "ended, it goes like any other");
    }
}
