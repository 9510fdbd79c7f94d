//! One partition replica's part in replication (DESIGN.md §7): whether it leads or follows,
//! in which leader epoch, and, on the leader, what each follower has durably and when it was
//! last caught up. From that follow the high watermark and the ISR changes the leader asks
//! the controller for. Pure state and rules: the node routes the messages and disk work.
//!
//! Sluice's promise is that acks=all means durable on `min.insync.replicas` brokers: a
//! follower reports only what it has synced (`durable_end`), and the high watermark is the
//! least of what the in-sync replicas report, never more than the leader's own durable end.

use std::collections::BTreeMap;

use crate::metadata::{PartitionImage, NO_LEADER};
use crate::types::{Instant, Offset};

/// A replica's role, from the partition's registration in the metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not serving yet (the log is being recovered or created), or a replica of a partition
    /// with no leader.
    Idle {
        leader_epoch: i32,
    },
    Leader(Box<Leadership>),
    Follower(Following),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Following {
    pub leader: i32,
    pub leader_epoch: i32,
    /// The leader's high watermark, as its last fetch answer said.
    pub leader_hw: Offset,
    /// A gap the leader's answer showed (this log's end, the batch's base offset and CRC),
    /// taken only once a second read shows the same: a compacted log has gaps, but a base
    /// offset garbled by a bad read on the leader looks like one (the CRC does not cover it).
    pub gap_seen: Option<(Offset, Offset, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub leader_epoch: i32,
    /// The log end offset when this epoch began: a follower joins the ISR only once it has
    /// everything below it (caught up within the current epoch).
    pub epoch_start: Offset,
    /// The ISR and partition epoch as the metadata says.
    pub isr: Vec<i32>,
    pub partition_epoch: i32,
    /// Every other replica's progress.
    pub followers: BTreeMap<i32, Progress>,
    /// The ISR asked of the controller and when; one change at a time.
    pub pending: Option<(Vec<i32>, Instant)>,
    /// Every replica named by a change asked in this partition epoch, the pending one's
    /// included. A change given up on (asked again after a timeout) may still reach the
    /// controller and be committed: until the partition epoch moves, any of them may be in
    /// the ISR.
    pub asked: Vec<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The offset its last fetch asked for: it has everything below (not necessarily synced).
    pub log_end: Offset,
    /// What it says is synced on its disk.
    pub durable_end: Offset,
    /// The last time it had everything the leader had (Kafka's lastCaughtUpTimeMs).
    pub last_caught_up: Option<Instant>,
    /// When its previous fetch was answered and the leader's durable end then.
    pub previous_fetch: Option<(Instant, Offset)>,
    /// Its broker epoch, as its fetches say (checked against the metadata before it may
    /// join the ISR).
    pub broker_epoch: i64,
}

impl Leadership {
    /// Leadership of a partition whose registration names this node, starting at `log_end`.
    /// ISR members count as caught up now (they get a full lag period to show it).
    pub fn new(me: i32, image: &PartitionImage, log_end: Offset, now: Instant) -> Leadership {
        let followers = image
            .replicas
            .iter()
            .filter(|r| **r != me)
            .map(|r| {
                let caught_up = image.isr.contains(r).then_some(now);
                (*r, Progress { last_caught_up: caught_up, ..Progress::default() })
            })
            .collect();
        Leadership {
            leader_epoch: image.leader_epoch,
            epoch_start: log_end,
            isr: image.isr.clone(),
            partition_epoch: image.partition_epoch,
            followers,
            pending: None,
            asked: Vec::new(),
        }
    }

    /// The replicas that count for the high watermark: the ISR, plus any member a change
    /// asked in this partition epoch adds (Kafka's "maximal ISR": stricter, so safe while
    /// the change is decided).
    pub fn maximal_isr(&self) -> Vec<i32> {
        let mut out = self.isr.clone();
        for r in &self.asked {
            if !out.contains(r) {
                out.push(*r);
            }
        }
        out
    }

    /// A change of the ISR to `isr` is asked of the controller now.
    pub fn ask(&mut self, isr: Vec<i32>, now: Instant) {
        for r in &isr {
            if !self.asked.contains(r) {
                self.asked.push(*r);
            }
        }
        self.pending = Some((isr, now));
    }

    /// The registration moved to partition epoch `epoch` with these replicas and ISR: every change asked
    /// before is decided (committed, or refused for good).
    pub fn registered(&mut self, replicas: &[i32], isr: &[i32], epoch: i32) {
        // A replica a reassignment removed is no follower any more (one it added is, from
        // its first fetch).
        self.followers.retain(|r, _| replicas.contains(r));
        self.isr = isr.to_vec();
        self.partition_epoch = epoch;
        self.pending = None;
        self.asked.clear();
    }

    /// The high watermark the replicas' durable ends allow: the least over the maximal ISR
    /// (this node counting with `own_durable`), or `None` while the ISR is smaller than
    /// `min_isr` (capped at the replica count), when no record may be acknowledged.
    pub fn high_watermark(&self, me: i32, own_durable: Offset, min_isr: usize, replicas: usize) -> Option<Offset> {
        let mutant = crate::mutants::active(crate::mutants::Mutant::HwUnderMinIsr);
        if self.isr.len() < min_isr.min(replicas.max(1)) && !mutant {
            return None;
        }
        let mut hw = own_durable;
        for r in self.maximal_isr().iter().filter(|r| **r != me) {
            hw = hw.min(self.followers.get(r).map_or(0, |p| p.durable_end));
        }
        Some(hw)
    }

    /// A fetch from follower `id` asking from `fetch_offset`, having synced below
    /// `durable_end`; `leader_end` is what the leader serves followers (its durable end).
    pub fn on_fetch(
        &mut self,
        id: i32,
        fetch_offset: Offset,
        durable_end: Offset,
        broker_epoch: i64,
        leader_end: Offset,
        now: Instant,
    ) {
        let p = self.followers.entry(id).or_default();
        p.log_end = fetch_offset;
        p.durable_end = durable_end.min(fetch_offset);
        p.broker_epoch = broker_epoch;
        // Caught up: it asks from the leader's end now, or from the end the leader had when
        // it answered this follower's previous fetch (so steady writes do not evict it).
        if fetch_offset >= leader_end {
            p.last_caught_up = Some(now);
        } else if let Some((at, end)) = p.previous_fetch {
            if fetch_offset >= end {
                p.last_caught_up = Some(p.last_caught_up.map_or(at, |t| t.max(at)));
            }
        }
        p.previous_fetch = Some((now, leader_end));
    }

    /// The ISR change to ask the controller for, if any: members not caught up for
    /// `lag_ms` leave (never the leader); a replica that has durably everything below the
    /// high watermark and this epoch's start, and that `eligible` allows (registered,
    /// unfenced, of the broker epoch its fetches carry), joins.
    pub fn isr_change(
        &self,
        me: i32,
        hw: Offset,
        now: Instant,
        lag_ms: u64,
        eligible: impl Fn(i32, i64) -> bool,
    ) -> Option<Vec<i32>> {
        let lagging = |r: &i32| {
            *r != me
                && self.followers.get(r).is_none_or(|p| p.last_caught_up.is_none_or(|t| now.millis_since(t) > lag_ms))
        };
        let mut isr: Vec<i32> = self.isr.iter().copied().filter(|r| !lagging(r)).collect();
        for (id, p) in &self.followers {
            let caught_up = (p.durable_end >= hw && p.durable_end >= self.epoch_start)
                || crate::mutants::active(crate::mutants::Mutant::IsrAdmitsLagging);
            if !isr.contains(id) && caught_up && !lagging(id) && eligible(*id, p.broker_epoch) {
                isr.push(*id);
            }
        }
        (isr != self.isr).then_some(isr)
    }
}

impl Role {
    pub fn leader_epoch(&self) -> i32 {
        match self {
            Role::Idle { leader_epoch } => *leader_epoch,
            Role::Leader(l) => l.leader_epoch,
            Role::Follower(f) => f.leader_epoch,
        }
    }

    /// The leader as this replica knows it.
    pub fn leader(&self, me: i32) -> i32 {
        match self {
            Role::Idle { .. } => NO_LEADER,
            Role::Leader(_) => me,
            Role::Follower(f) => f.leader,
        }
    }

    pub fn leadership(&self) -> Option<&Leadership> {
        match self {
            Role::Leader(l) => Some(l),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::ZERO.plus_millis(ms)
    }

    fn leading(isr: Vec<i32>) -> Leadership {
        let image = PartitionImage {
            replicas: vec![1, 2, 3],
            leader: 1,
            leader_epoch: 4,
            partition_epoch: 7,
            isr,
            adding: vec![],
            removing: vec![],
        };
        Leadership::new(1, &image, 10, at(0))
    }

    #[test]
    fn the_high_watermark_is_the_least_durable_end_of_the_isr() {
        let mut l = leading(vec![1, 2, 3]);
        assert_eq!(l.high_watermark(1, 50, 2, 3), Some(0), "followers not heard from hold it back");
        l.on_fetch(2, 40, 30, 9, 50, at(1));
        l.on_fetch(3, 50, 50, 9, 50, at(1));
        assert_eq!(l.high_watermark(1, 50, 2, 3), Some(30), "what a follower has but not synced does not count");
        assert_eq!(l.high_watermark(1, 20, 2, 3), Some(20), "nor what the leader has not synced");
        l.isr = vec![1, 3];
        assert_eq!(l.high_watermark(1, 50, 2, 3), Some(50), "out of the ISR, out of the count");
        l.isr = vec![1];
        assert_eq!(l.high_watermark(1, 50, 2, 3), None, "an ISR under min.insync.replicas acknowledges nothing");
        assert_eq!(l.high_watermark(1, 50, 1, 3), Some(50));
        l.ask(vec![1, 2], at(2));
        assert_eq!(l.high_watermark(1, 50, 1, 3), Some(30), "a member being added counts at once");
        l.ask(vec![1, 3], at(3));
        assert_eq!(
            l.high_watermark(1, 50, 1, 3),
            Some(30),
            "a change given up on may still be committed: its member counts until the epoch moves"
        );
        l.registered(&[1, 2, 3], &[1, 3], 8);
        assert_eq!(l.high_watermark(1, 50, 1, 3), Some(50), "decided: only the ISR counts");
    }

    #[test]
    fn isr_shrinks_on_lag_and_grows_when_caught_up_in_this_epoch() {
        let mut l = leading(vec![1, 2, 3]);
        let all = |_: i32, _: i64| true;
        assert_eq!(l.isr_change(1, 0, at(100), 1000, all), None);
        // Follower 2 keeps up; follower 3 says nothing.
        l.on_fetch(2, 10, 10, 9, 10, at(900));
        assert_eq!(l.isr_change(1, 10, at(1500), 1000, all), Some(vec![1, 2]));
        // Follower 2 fetches behind a moving end: caught up as of its previous fetch.
        l.on_fetch(2, 10, 10, 9, 20, at(1600));
        l.on_fetch(2, 20, 20, 9, 30, at(2500));
        assert_eq!(l.isr_change(1, 20, at(2600), 1000, all), Some(vec![1, 2]), "only 3 leaves");
        assert_eq!(l.isr_change(1, 20, at(2700), 1000, all), Some(vec![1]), "2 last caught up at 1600");
        l.isr = vec![1, 2];
        l.on_fetch(2, 30, 30, 9, 30, at(3000));
        // Follower 3 comes back but has not reached the epoch start (10): it may not join.
        l.on_fetch(3, 8, 8, 9, 30, at(3100));
        assert_eq!(l.isr_change(1, 5, at(3100), 1000, all), None);
        l.on_fetch(3, 30, 30, 9, 30, at(3200));
        assert_eq!(l.isr_change(1, 30, at(3200), 1000, all), Some(vec![1, 2, 3]));
        assert_eq!(l.isr_change(1, 30, at(3200), 1000, |id, _| id != 3), None, "an ineligible broker stays out");
        // Synced below the high watermark: not yet.
        l.on_fetch(3, 30, 25, 9, 30, at(3300));
        assert_eq!(l.isr_change(1, 30, at(3300), 1000, all), None);
    }
}
