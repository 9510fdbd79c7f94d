//! The leader-epoch cache (KIP-101): for each leader epoch that wrote to the log, the offset
//! its first batch has. Followers use it to find where their log and the leader's part ways,
//! by epoch rather than by a high watermark (which loses acknowledged records).
//!
//! Every batch carries its leader epoch in its header, and start-up recovery reads every
//! batch anyway, so the cache is rebuilt from the log itself; it needs no file of its own.

use crate::types::Offset;

/// Epoch of a batch written before partitions had leaders (a cluster of one).
pub const FIRST_EPOCH: i32 = 0;

/// Answer of [`EpochCache::end_offset_for`] when the cache knows no epoch.
pub const UNDEFINED: (i32, Offset) = (-1, -1);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    /// (epoch, start offset), both strictly increasing.
    entries: Vec<(i32, Offset)>,
}

impl EpochCache {
    /// Notes that `epoch` writes from `start` on. An epoch already known, or older than the
    /// latest, changes nothing (a batch of an old epoch after a newer one is not written).
    pub fn assign(&mut self, epoch: i32, start: Offset) {
        match self.entries.last() {
            Some((e, _)) if *e >= epoch => {}
            Some((_, s)) if *s > start => {
                // The new epoch starts below the latest's start: the log was cut back under
                // it without the cache knowing. Keep the cache a function of the log.
                self.truncate_to(start);
                self.entries.push((epoch, start));
            }
            _ => self.entries.push((epoch, start)),
        }
    }

    /// The log was cut back so that `end` is its next offset: epochs that start at or past
    /// it wrote nothing that is left.
    pub fn truncate_to(&mut self, end: Offset) {
        while self.entries.last().is_some_and(|(_, s)| *s >= end) {
            self.entries.pop();
        }
    }

    /// The latest epoch that wrote to the log.
    pub fn latest(&self) -> Option<i32> {
        self.entries.last().map(|(e, _)| *e)
    }

    /// The offset `epoch`'s first batch has, if it wrote one.
    pub fn start_of(&self, epoch: i32) -> Option<Offset> {
        self.entries.iter().find(|(e, _)| *e == epoch).map(|(_, s)| *s)
    }

    /// The epoch that wrote `offset` (the latest one starting at or below it), if any.
    pub fn epoch_at(&self, offset: Offset) -> Option<i32> {
        let i = self.entries.partition_point(|(_, s)| *s <= offset);
        i.checked_sub(1).map(|i| self.entries[i].0)
    }

    /// Where `epoch` ends in this log (OffsetForLeaderEpoch's answer): the largest epoch at
    /// or below it and the offset just past that epoch's last batch, which is the next
    /// epoch's start, or `log_end` for the latest. An epoch below every known one answers
    /// itself and the first start; an empty cache answers [`UNDEFINED`].
    pub fn end_offset_for(&self, epoch: i32, log_end: Offset) -> (i32, Offset) {
        let Some(first) = self.entries.first() else {
            return UNDEFINED;
        };
        if epoch < first.0 {
            return (epoch, first.1);
        }
        let i = self.entries.partition_point(|(e, _)| *e <= epoch) - 1;
        let end = self.entries.get(i + 1).map_or(log_end, |(_, s)| *s);
        (self.entries[i].0, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_of_an_offset() {
        let mut c = EpochCache::default();
        assert_eq!(c.epoch_at(0), None);
        c.assign(2, 5);
        c.assign(4, 9);
        assert_eq!(
            (c.epoch_at(4), c.epoch_at(5), c.epoch_at(8), c.epoch_at(9), c.epoch_at(100)),
            (None, Some(2), Some(2), Some(4), Some(4))
        );
    }

    #[test]
    fn end_offsets_by_epoch() {
        let mut c = EpochCache::default();
        assert_eq!(c.end_offset_for(3, 0), UNDEFINED);
        c.assign(1, 0);
        c.assign(1, 5); // the same epoch again: nothing new
        c.assign(3, 10);
        c.assign(2, 12); // older than the latest: ignored
        c.assign(6, 20);
        assert_eq!(c.latest(), Some(6));
        assert_eq!(c.end_offset_for(6, 30), (6, 30), "the latest epoch ends at the log end");
        assert_eq!(c.end_offset_for(3, 30), (3, 20));
        assert_eq!(c.end_offset_for(4, 30), (3, 20), "an epoch that never wrote: the one below it");
        assert_eq!(c.end_offset_for(1, 30), (1, 10));
        assert_eq!(c.end_offset_for(0, 30), (0, 0), "below every epoch: its first start");
        assert_eq!(c.end_offset_for(9, 30), (6, 30));
        assert_eq!(c.start_of(3), Some(10));
        assert_eq!(c.start_of(2), None);

        c.truncate_to(20);
        assert_eq!(c.latest(), Some(3), "epoch 6 started at the cut: none of it is left");
        assert_eq!(c.end_offset_for(3, 20), (3, 20));
        c.truncate_to(11);
        assert_eq!(c.latest(), Some(3));
        c.assign(7, 8); // written below epoch 3's start: the cache follows the log
        assert_eq!(c.latest(), Some(7));
        assert_eq!(c.start_of(3), None);
        assert_eq!(c.end_offset_for(1, 9), (1, 8));
    }
}
