//! The quorum's log in memory: entries with their epochs, and the epoch boundaries that
//! divergence detection asks about. The metadata log is small (a snapshot will bound it), so
//! every entry stays in memory and the storage below only ever appends or cuts the tail.

use super::{Entry, Epoch};
use crate::types::Offset;

#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    entries: Vec<Entry>,
    /// (epoch, offset of its first entry), ascending in both: one item per epoch present.
    epoch_starts: Vec<(Epoch, Offset)>,
}

fn offset_of(i: usize) -> Offset {
    Offset::try_from(i).expect("log length fits an offset")
}

impl RaftLog {
    pub fn from_entries(entries: Vec<Entry>) -> RaftLog {
        let mut log = RaftLog::default();
        for e in entries {
            log.append(e);
        }
        log
    }

    /// The log end offset: the offset the next entry gets.
    pub fn end(&self) -> Offset {
        offset_of(self.entries.len())
    }

    /// The epoch of the last entry, 0 for an empty log.
    pub fn last_epoch(&self) -> Epoch {
        self.epoch_starts.last().map_or(0, |&(e, _)| e)
    }

    pub fn entry(&self, offset: Offset) -> Option<&Entry> {
        usize::try_from(offset).ok().and_then(|i| self.entries.get(i))
    }

    pub fn epoch_at(&self, offset: Offset) -> Option<Epoch> {
        self.entry(offset).map(|e| e.epoch)
    }

    /// Entries from `from`, at most `max` of them.
    pub fn slice(&self, from: Offset, max: usize) -> Vec<Entry> {
        let Ok(start) = usize::try_from(from) else { return Vec::new() };
        let end = self.entries.len().min(start.saturating_add(max));
        self.entries.get(start..end).map(<[Entry]>::to_vec).unwrap_or_default()
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

    /// Cuts the log to `end` entries.
    pub fn truncate(&mut self, end: Offset) {
        let Ok(keep) = usize::try_from(end.max(0)) else { return };
        if keep >= self.entries.len() {
            return;
        }
        self.entries.truncate(keep);
        while self.epoch_starts.last().is_some_and(|&(_, start)| start >= end) {
            self.epoch_starts.pop();
        }
    }

    /// Where `epoch` ends in this log: the largest epoch present that is at most `epoch`, and
    /// the offset at which the next higher epoch starts (the log end if none does). `(0, 0)`
    /// when the log holds nothing of `epoch` or before it. This is the question a follower's
    /// (last fetched epoch, fetch offset) asks of its leader (KIP-101/279/595).
    pub fn end_offset_for(&self, epoch: Epoch) -> (Epoch, Offset) {
        let i = self.epoch_starts.partition_point(|&(e, _)| e <= epoch);
        if i == 0 {
            return (0, 0);
        }
        let end = self.epoch_starts.get(i).map_or(self.end(), |&(_, start)| start);
        (self.epoch_starts[i - 1].0, end)
    }

    pub fn invariants(&self) {
        let mut prev: Option<(Epoch, Offset)> = None;
        for &(e, s) in &self.epoch_starts {
            assert_eq!(self.epoch_at(s), Some(e), "epoch start points at its epoch");
            if let Some((pe, ps)) = prev {
                assert!(e > pe && s > ps, "epoch starts ascend");
                assert_eq!(self.epoch_at(s - 1), Some(pe), "an epoch ends where the next begins");
            }
            prev = Some((e, s));
        }
        assert_eq!(self.epoch_starts.first().map(|&(_, s)| s), (!self.entries.is_empty()).then_some(0));
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
