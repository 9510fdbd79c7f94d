//! The quorum's log in memory: entries with their epochs, and the epoch boundaries that
//! divergence detection asks about. Entries below `start` are gone from it: a snapshot holds
//! what they built (they were all committed), and `start_epoch` is the epoch of the last of
//! them, so that a fetch from `start` can still be checked against it.

use super::{Entry, Epoch};
use crate::types::Offset;

#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    /// The offset of `entries[0]`.
    start: Offset,
    /// The epoch of the entry before `start` (0 when `start` is 0).
    start_epoch: Epoch,
    entries: Vec<Entry>,
    /// (epoch, offset of its first entry here), ascending in both: one item per epoch present
    /// above `start_epoch` (entries of `start_epoch` itself continue the epoch from before).
    epoch_starts: Vec<(Epoch, Offset)>,
}

fn len_of(i: usize) -> Offset {
    Offset::try_from(i).expect("log length fits an offset")
}

impl RaftLog {
    pub fn from_entries(entries: Vec<Entry>) -> RaftLog {
        RaftLog::from_parts(0, 0, entries)
    }

    /// A log whose entries start at `start`, the entry before which was of `start_epoch`.
    pub fn from_parts(start: Offset, start_epoch: Epoch, entries: Vec<Entry>) -> RaftLog {
        let mut log = RaftLog { start, start_epoch, ..RaftLog::default() };
        for e in entries {
            log.append(e);
        }
        log
    }

    pub fn start(&self) -> Offset {
        self.start
    }

    pub fn start_epoch(&self) -> Epoch {
        self.start_epoch
    }

    /// The log end offset: the offset the next entry gets.
    pub fn end(&self) -> Offset {
        self.start + len_of(self.entries.len())
    }

    /// The epoch of the last entry (the start epoch for a log with no entries).
    pub fn last_epoch(&self) -> Epoch {
        self.epoch_starts.last().map_or(self.start_epoch, |&(e, _)| e)
    }

    pub fn entry(&self, offset: Offset) -> Option<&Entry> {
        let i = offset.checked_sub(self.start)?;
        usize::try_from(i).ok().and_then(|i| self.entries.get(i))
    }

    /// The epoch of the entry at `offset`, also for the one just before the start.
    pub fn epoch_at(&self, offset: Offset) -> Option<Epoch> {
        if self.start > 0 && offset == self.start - 1 {
            return Some(self.start_epoch);
        }
        self.entry(offset).map(|e| e.epoch)
    }

    /// Entries from `from`, at most `max` of them (none from below the start).
    pub fn slice(&self, from: Offset, max: usize) -> Vec<Entry> {
        let Some(i) = from.checked_sub(self.start).and_then(|i| usize::try_from(i).ok()) else {
            return Vec::new();
        };
        let end = self.entries.len().min(i.saturating_add(max));
        self.entries.get(i..end).map(<[Entry]>::to_vec).unwrap_or_default()
    }

    /// Appends one entry; its epoch must not be below the last one's (callers check entries
    /// from peers before they get here).
    pub fn append(&mut self, entry: Entry) {
        assert!(entry.epoch >= self.last_epoch(), "epochs in a log never go back");
        if entry.epoch > self.last_epoch() {
            self.epoch_starts.push((entry.epoch, self.end()));
        }
        self.entries.push(entry);
    }

    /// Cuts the log to end at `end` (never below its start).
    pub fn truncate(&mut self, end: Offset) {
        let end = end.max(self.start);
        let Ok(keep) = usize::try_from(end - self.start) else { return };
        if keep >= self.entries.len() {
            return;
        }
        self.entries.truncate(keep);
        while self.epoch_starts.last().is_some_and(|&(_, start)| start >= end) {
            self.epoch_starts.pop();
        }
    }

    /// Forgets the entries below `start` (a snapshot holds them). Returns false, changing
    /// nothing, unless `start` is within the log.
    pub fn drop_prefix(&mut self, start: Offset) -> bool {
        if start <= self.start || start > self.end() {
            return false;
        }
        let epoch = self.epoch_at(start - 1).expect("within the log");
        let n = usize::try_from(start - self.start).expect("within the log");
        self.entries.drain(..n);
        self.epoch_starts.retain(|&(e, s)| s >= start && e > epoch);
        (self.start, self.start_epoch) = (start, epoch);
        true
    }

    /// Empties the log: it starts (and ends) at `start`, after an entry of `start_epoch`.
    pub fn reset(&mut self, start: Offset, start_epoch: Epoch) {
        *self = RaftLog { start, start_epoch, ..RaftLog::default() };
    }

    /// Where `epoch` ends in this log: the largest epoch present that is at most `epoch`, and
    /// the offset at which the next higher epoch starts (the log end if none does). `(0, 0)`
    /// when the log holds nothing of `epoch` or before it. This is the question a follower's
    /// (last fetched epoch, fetch offset) asks of its leader (KIP-101/279/595).
    ///
    /// For an epoch below the start epoch the answer is `(epoch, start)`: what this log held
    /// of it is gone, and the asker, cut back to the start, is told to fetch the snapshot.
    pub fn end_offset_for(&self, epoch: Epoch) -> (Epoch, Offset) {
        let i = self.epoch_starts.partition_point(|&(e, _)| e <= epoch);
        if i == 0 {
            if self.start == 0 {
                return (0, 0);
            }
            if epoch < self.start_epoch {
                return (epoch, self.start);
            }
            return (self.start_epoch, self.epoch_starts.first().map_or(self.end(), |&(_, s)| s));
        }
        let end = self.epoch_starts.get(i).map_or(self.end(), |&(_, start)| start);
        (self.epoch_starts[i - 1].0, end)
    }

    pub fn invariants(&self) {
        let mut prev: Option<(Epoch, Offset)> = None;
        for &(e, s) in &self.epoch_starts {
            assert_eq!(self.epoch_at(s), Some(e), "epoch start points at its epoch");
            assert!(e > self.start_epoch && s >= self.start, "epoch starts are above the start");
            if let Some((pe, ps)) = prev {
                assert!(e > pe && s > ps, "epoch starts ascend");
                assert_eq!(self.epoch_at(s - 1), Some(pe), "an epoch ends where the next begins");
            }
            prev = Some((e, s));
        }
        let first_new = self.entries.first().is_some_and(|e| e.epoch > self.start_epoch);
        assert_eq!(self.epoch_starts.first().map(|&(_, s)| s).filter(|_| first_new), first_new.then_some(self.start));
        assert!(self.entries.first().is_none_or(|e| e.epoch >= self.start_epoch), "no entry below the start epoch");
    }
}

#[cfg(test)]
mod tests {
    use super::super::EntryKind;
    use super::*;

    fn log(epochs: &[Epoch]) -> RaftLog {
        RaftLog::from_entries(epochs.iter().map(|&e| Entry { epoch: e, kind: EntryKind::Record(vec![]) }).collect())
    }

    #[test]
    fn end_offsets_by_epoch() {
        let l = log(&[1, 1, 3, 3, 3, 4]);
        l.invariants();
        assert_eq!(l.end_offset_for(0), (0, 0));
        assert_eq!(l.end_offset_for(1), (1, 2));
        assert_eq!(l.end_offset_for(2), (1, 2), "an epoch the log lacks ends where the next present one starts");
        assert_eq!(l.end_offset_for(3), (3, 5));
        assert_eq!(l.end_offset_for(4), (4, 6));
        assert_eq!(l.end_offset_for(9), (4, 6));
        assert_eq!(l.last_epoch(), 4);
    }

    #[test]
    fn a_log_after_a_snapshot() {
        let mut l = log(&[1, 1, 3, 3, 3, 4, 4]);
        assert!(l.drop_prefix(3));
        l.invariants();
        assert_eq!((l.start(), l.start_epoch(), l.end(), l.last_epoch()), (3, 3, 7, 4));
        assert_eq!((l.epoch_at(2), l.epoch_at(3), l.epoch_at(1)), (Some(3), Some(3), None));
        assert_eq!(l.end_offset_for(3), (3, 5), "the start epoch continues past the start");
        assert_eq!(l.end_offset_for(4), (4, 7));
        assert_eq!(l.end_offset_for(1), (1, 3), "an epoch before the start ends there");
        assert_eq!(l.slice(2, 10), vec![], "nothing from below the start");
        assert_eq!(l.slice(5, 10).len(), 2);
        assert!(!l.drop_prefix(3) && !l.drop_prefix(8), "only a start within the log");
        assert!(l.drop_prefix(6));
        l.invariants();
        assert_eq!((l.start(), l.start_epoch(), l.end_offset_for(4)), (6, 4, (4, 7)));
        l.truncate(2);
        l.invariants();
        assert_eq!((l.end(), l.last_epoch()), (6, 4), "never cut below the start");
        l.reset(20, 5);
        l.append(Entry { epoch: 6, kind: EntryKind::Record(vec![]) });
        l.invariants();
        assert_eq!((l.start(), l.end(), l.end_offset_for(5), l.end_offset_for(6)), (20, 21, (5, 20), (6, 21)));
    }

    #[test]
    fn truncation_drops_epochs() {
        let mut l = log(&[1, 1, 3, 3, 3, 4]);
        l.truncate(3);
        l.invariants();
        assert_eq!((l.end(), l.last_epoch()), (3, 3));
        l.truncate(2);
        l.invariants();
        assert_eq!((l.end(), l.last_epoch()), (2, 1));
        l.truncate(0);
        l.invariants();
        assert_eq!((l.end(), l.last_epoch(), l.end_offset_for(5)), (0, 0, (0, 0)));
        assert_eq!(l.slice(0, 10), vec![]);
    }
}
