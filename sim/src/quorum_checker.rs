//! Checkers of the metadata quorum, fed with every storage write a node asks for and its
//! state after every event it handles:
//!
//! - **one leader per epoch**;
//! - **log matching**: two logs that hold an entry of the same epoch at the same offset hold
//!   the same prefix up to it (each log is folded into a chain of hashes, entry by entry);
//! - **committed prefix stable**: whatever a node's high watermark has covered is never
//!   changed on any node, nor truncated away by one that holds it (a node may cut its log
//!   file back and write the same entries again within one event, as after a failed sync);
//! - **leader completeness**: a new leader of epoch E holds every entry committed in an
//!   epoch before E (one committed later, in a higher epoch, it may lack: a leader paused
//!   through its election can take office after a higher epoch committed more);
//! - **high watermark monotonic** on a node while it lives;
//! - **acknowledged records survive** to the end of the run (checked by `finish`).

use std::collections::BTreeMap;

use sluice_core::quorum::{Entry, EntryKind, Epoch, Persisted, Quorum, Write};
use sluice_core::Offset;
use sluice_runtime_sim::Nanos;

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fold(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The hash of a log up to and including `e`, given the hash up to the entry before.
fn chain(prev: u64, e: &Entry) -> u64 {
    let h = fold(prev, &e.epoch.to_le_bytes());
    match &e.kind {
        EntryKind::LeaderChange { leader } => fold(fold(h, b"L"), &leader.to_le_bytes()),
        EntryKind::Record(r) => fold(fold(h, b"R"), r),
    }
}

fn at(v: &[u64], o: Offset) -> Option<u64> {
    usize::try_from(o).ok().and_then(|i| v.get(i)).copied()
}

fn len<T>(v: &[T]) -> Offset {
    Offset::try_from(v.len()).expect("small")
}

/// How many offsets at the end of the committed prefix were committed in `epoch` or later.
fn len_epochs(committed_in: &[Epoch], epoch: Epoch) -> Offset {
    len(&committed_in[committed_in.iter().rposition(|&e| e < epoch).map_or(0, |i| i + 1)..])
}

#[derive(Default)]
pub struct QuorumChecker {
    /// Per node: the chain of the log it has written (what its memory holds).
    shadows: Vec<Vec<u64>>,
    /// Per node: the last epoch it wrote in its quorum state, this incarnation.
    epochs: Vec<Epoch>,
    /// Per node: its high watermark, this incarnation.
    high_watermarks: Vec<Offset>,
    /// Per node: it truncated committed entries during this event; by its end it must hold
    /// them again, up to this length (what it held of the committed prefix before).
    restore: Vec<Option<Offset>>,
    /// (offset, epoch) → chain, over every log.
    seen: BTreeMap<(Offset, Epoch), u64>,
    /// The chain of the committed prefix, and the epoch each offset was committed in (that of
    /// the node whose high watermark first covered it).
    committed: Vec<u64>,
    committed_in: Vec<Epoch>,
    leaders: BTreeMap<Epoch, usize>,
    /// Records acknowledged to a client: (offset, value).
    pub acked: Vec<(Offset, Vec<u8>)>,
    pub violations: Vec<String>,
}

impl QuorumChecker {
    pub fn new(nodes: usize) -> QuorumChecker {
        QuorumChecker {
            shadows: vec![Vec::new(); nodes],
            epochs: vec![0; nodes],
            high_watermarks: vec![0; nodes],
            restore: vec![None; nodes],
            ..QuorumChecker::default()
        }
    }

    fn fail(&mut self, now: Nanos, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("t={:.3}s {what}", now as f64 / 1e9));
        }
    }

    pub fn committed_len(&self) -> Offset {
        len(&self.committed)
    }

    pub fn leaders_elected(&self) -> usize {
        self.leaders.len()
    }

    pub fn on_start(&mut self, node: usize, p: &Persisted) {
        let mut h = 0;
        self.shadows[node] = p
            .entries
            .iter()
            .map(|e| {
                h = chain(h, e);
                h
            })
            .collect();
        self.epochs[node] = p.epoch;
        self.high_watermarks[node] = 0;
        self.restore[node] = None;
    }

    pub fn on_write(&mut self, now: Nanos, node: usize, w: &Write) {
        match w {
            Write::State { epoch, .. } => {
                if *epoch < self.epochs[node] {
                    self.fail(now, format!("node {node} wrote epoch {epoch} after epoch {}", self.epochs[node]));
                }
                self.epochs[node] = *epoch;
            }
            Write::Append { offset, entries } => self.on_append(now, node, *offset, entries),
            Write::Truncate { end } => self.on_truncate(now, node, *end),
            Write::Sync { .. } => {}
            Write::InstallSnapshot { .. } | Write::Reset { .. } => {
                self.fail(now, format!("node {node} installed a snapshot, which the quorum scenario never takes"));
            }
        }
    }

    fn on_append(&mut self, now: Nanos, node: usize, offset: Offset, entries: &[Entry]) {
        if offset != len(&self.shadows[node]) {
            self.fail(now, format!("node {node} appended at {offset} to a log ending at {}", self.shadows[node].len()));
            return;
        }
        for (i, e) in entries.iter().enumerate() {
            let o = offset + Offset::try_from(i).expect("small");
            let h = chain(self.shadows[node].last().copied().unwrap_or(0), e);
            self.shadows[node].push(h);
            if *self.seen.entry((o, e.epoch)).or_insert(h) != h {
                self.fail(
                    now,
                    format!(
                        "log matching: node {node} holds a different log up to offset {o} (epoch {}) than another node",
                        e.epoch
                    ),
                );
            }
        }
    }

    fn on_truncate(&mut self, _now: Nanos, node: usize, end: Offset) {
        let shadow = &self.shadows[node];
        let held = len(shadow).min(len(&self.committed));
        if end < held && at(shadow, held - 1) == at(&self.committed, held - 1) {
            // Checked at the end of the event: it may be writing them again.
            let r = &mut self.restore[node];
            *r = Some(r.map_or(held, |h| h.max(held)));
        }
        self.shadows[node].truncate(usize::try_from(end).unwrap_or(0));
    }

    /// The end of an event on `node`: committed entries it truncated are back.
    fn settle(&mut self, now: Nanos, node: usize) {
        let Some(held) = self.restore[node].take() else { return };
        let shadow = &self.shadows[node];
        if len(shadow) < held || at(shadow, held - 1) != at(&self.committed, held - 1) {
            let end = (0..held).find(|&o| at(shadow, o) != at(&self.committed, o)).unwrap_or(held);
            self.fail(now, format!("node {node} truncated committed offset {end} (committed up to {held})"));
        }
    }

    /// After `node` handled an event.
    pub fn after_event(&mut self, now: Nanos, node: usize, q: &Quorum) {
        self.settle(now, node);
        if len(&self.shadows[node]) != q.log().end() {
            self.fail(
                now,
                format!(
                    "node {node}'s log ends at {} but it wrote {} entries",
                    q.log().end(),
                    self.shadows[node].len()
                ),
            );
            return;
        }
        if q.is_leader() {
            self.on_leader(now, node, q.epoch());
        }
        self.on_high_watermark(now, node, q.high_watermark(), q.epoch());
    }

    fn on_leader(&mut self, now: Nanos, node: usize, epoch: Epoch) {
        match self.leaders.get(&epoch) {
            Some(&other) if other != node => {
                self.fail(now, format!("two leaders in epoch {epoch}: nodes {other} and {node}"))
            }
            Some(_) => {}
            None => {
                self.leaders.insert(epoch, node);
                let before = len(&self.committed) - len_epochs(&self.committed_in, epoch);
                if before > 0 && at(&self.shadows[node], before - 1) != at(&self.committed, before - 1) {
                    self.fail(now, format!("leader completeness: node {node}, leader of epoch {epoch}, lacks entries committed below {before} in earlier epochs"));
                }
            }
        }
    }

    fn on_high_watermark(&mut self, now: Nanos, node: usize, hw: Offset, epoch: Epoch) {
        if hw < self.high_watermarks[node] {
            self.fail(
                now,
                format!("node {node}'s high watermark went back from {} to {hw}", self.high_watermarks[node]),
            );
        }
        self.high_watermarks[node] = hw;
        if hw == 0 {
            return;
        }
        let shadow = &self.shadows[node];
        let c = len(&self.committed);
        let agree = at(shadow, hw.min(c) - 1) == at(&self.committed, hw.min(c) - 1) || c == 0;
        if !agree {
            self.fail(now, format!("committed prefix changed: node {node}'s high watermark {hw} covers a log that differs from what was committed below {c}"));
            return;
        }
        if hw > c {
            let extend: Vec<u64> =
                self.shadows[node][self.committed.len()..usize::try_from(hw).expect("small")].to_vec();
            self.committed_in.extend(extend.iter().map(|_| epoch));
            self.committed.extend(extend);
        }
    }

    /// The end of the run: every acknowledged record is in the committed log of `q` (the
    /// node with the highest high watermark after healing).
    pub fn finish(&mut self, now: Nanos, q: &Quorum) {
        let lost: Vec<(Offset, Vec<u8>)> = self
            .acked
            .iter()
            .filter(|(o, v)| {
                !(*o < q.high_watermark()
                    && matches!(&q.log().entry(*o).map(|e| &e.kind), Some(EntryKind::Record(r)) if r == v))
            })
            .cloned()
            .collect();
        for (o, v) in lost.into_iter().take(5) {
            self.fail(now, format!("lost-write: record {v:?} acknowledged at offset {o} is not there at the end"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: Epoch, b: u8) -> Entry {
        Entry { epoch, kind: EntryKind::Record(vec![b]) }
    }

    #[test]
    fn different_logs_at_one_offset_and_epoch_break_log_matching() {
        let mut c = QuorumChecker::new(2);
        c.on_write(0, 0, &Write::Append { offset: 0, entries: vec![rec(1, 1), rec(1, 2)] });
        c.on_write(0, 1, &Write::Append { offset: 0, entries: vec![rec(1, 1)] });
        assert!(c.violations.is_empty());
        c.on_write(0, 1, &Write::Append { offset: 1, entries: vec![rec(1, 9)] });
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    }

    #[test]
    fn truncating_committed_entries_and_changing_them_are_caught() {
        let mut c = QuorumChecker::new(2);
        c.on_write(0, 0, &Write::Append { offset: 0, entries: vec![rec(1, 1), rec(1, 2)] });
        c.on_high_watermark(0, 0, 2, 1);
        c.on_write(0, 1, &Write::Append { offset: 0, entries: vec![rec(1, 1), rec(1, 2), rec(1, 3)] });
        c.on_write(0, 1, &Write::Truncate { end: 2 });
        c.settle(0, 1);
        assert!(c.violations.is_empty(), "an uncommitted tail may go");
        c.on_write(0, 1, &Write::Truncate { end: 0 });
        c.on_write(0, 1, &Write::Append { offset: 0, entries: vec![rec(1, 1), rec(1, 2)] });
        c.settle(0, 1);
        assert!(c.violations.is_empty(), "committed entries cut and written again: {:?}", c.violations);
        c.on_write(0, 1, &Write::Truncate { end: 1 });
        c.settle(0, 1);
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
        // Node 1 now holds another entry at offset 1 and claims it committed.
        c.on_write(0, 1, &Write::Append { offset: 1, entries: vec![rec(2, 7)] });
        c.on_high_watermark(0, 1, 2, 2);
        assert_eq!(c.violations.len(), 2, "{:?}", c.violations);
    }

    #[test]
    fn a_leader_of_a_lower_epoch_may_lack_what_a_higher_epoch_committed() {
        let mut c = QuorumChecker::new(2);
        c.on_write(0, 0, &Write::Append { offset: 0, entries: vec![rec(1, 1), rec(3, 2)] });
        c.on_high_watermark(0, 0, 1, 1);
        c.on_high_watermark(0, 0, 2, 3);
        c.on_write(0, 1, &Write::Append { offset: 0, entries: vec![rec(1, 1)] });
        c.on_leader(0, 1, 2);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        c.on_leader(0, 1, 4);
        assert_eq!(c.violations.len(), 1, "but a leader of epoch 4 must hold it");
    }

    #[test]
    fn a_leader_without_the_committed_prefix_and_a_second_leader_are_caught() {
        let mut c = QuorumChecker::new(3);
        c.on_write(0, 0, &Write::Append { offset: 0, entries: vec![rec(1, 1)] });
        c.on_leader(0, 0, 1);
        c.on_high_watermark(0, 0, 1, 1);
        c.on_leader(0, 1, 1);
        assert_eq!(c.violations.len(), 1, "two leaders in epoch 1");
        c.on_leader(0, 2, 1);
        assert_eq!(c.violations.len(), 2, "a second leader of epoch 1 again");
        c.on_leader(0, 2, 2);
        assert_eq!(c.violations.len(), 3, "node 2 lacks what epoch 1 committed: {:?}", c.violations);
        c.on_high_watermark(0, 0, 0, 1);
        assert_eq!(c.violations.len(), 4, "a high watermark that goes back");
    }
}
