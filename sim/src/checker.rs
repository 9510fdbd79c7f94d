//! The checkers. Every acknowledgement and every consumed record is checked as it happens, in
//! O(log history); the end of a run checks that every acknowledged record was read back.
//!
//! - no acknowledged write lost: every acknowledged (partition, offset) is read back with its
//!   value, across crashes;
//! - one value per (partition, offset), whoever observes it (acks and consumers);
//! - no value appears that was never produced;
//! - per-producer order: a batch first sent after another was acknowledged lands at a later
//!   offset of the same partition;
//! - the high watermark a client sees never goes back;
//! - a consumer never sees a record at or past the high watermark of the same response (so
//!   never one that may later disappear), and its reads are contiguous.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
pub struct Checker {
    acked: BTreeMap<(i32, i64), String>,
    seen: BTreeMap<(i32, i64), String>,
    produced: BTreeSet<String>,
    /// Highest high watermark each consumer has seen per partition. Per consumer: responses
    /// on different connections may cross in the network, but one consumer's fetches are
    /// causally ordered (it sends the next after reading the last).
    hw_max: BTreeMap<(usize, i32), i64>,
    pub violations: Vec<String>,
    pub acks: u64,
    pub consumed: u64,
}

impl Checker {
    fn violation(&mut self, at_ns: u64, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("t={}ms: {what}", at_ns / 1_000_000));
        }
    }

    pub fn on_send(&mut self, values: &[String]) {
        self.produced.extend(values.iter().cloned());
    }

    /// A produce acknowledged `values` at `base`; `floor` is the highest offset this producer
    /// had seen acknowledged on the partition when the batch was first sent.
    pub fn on_ack(&mut self, at: u64, producer: usize, partition: i32, base: i64, values: &[String], floor: i64) {
        if base <= floor {
            self.violation(at, format!("producer {producer}: batch sent after offset {floor} was acknowledged landed at {base} on partition {partition}"));
        }
        for (i, v) in values.iter().enumerate() {
            let key = (partition, base + i as i64);
            self.acks += 1;
            if let Some(old) = self.acked.get(&key).filter(|old| *old != v).cloned() {
                self.violation(at, format!("offset {key:?} acknowledged twice: {old:?} and {v:?}"));
            }
            if let Some(s) = self.seen.get(&key).filter(|s| *s != v).cloned() {
                self.violation(at, format!("offset {key:?} acknowledged as {v:?} but a consumer read {s:?}"));
            }
            self.acked.insert(key, v.clone());
        }
    }

    pub fn on_high_watermark(&mut self, at: u64, consumer: usize, partition: i32, hw: i64) {
        let max = self.hw_max.entry((consumer, partition)).or_insert(hw);
        if hw < *max {
            let was = *max;
            self.violation(
                at,
                format!(
                    "consumer {consumer} saw the high watermark of partition {partition} go back from {was} to {hw}"
                ),
            );
        } else {
            *max = hw;
        }
    }

    pub fn on_consume(&mut self, at: u64, consumer: usize, partition: i32, offset: i64, value: &str, hw: i64) {
        self.consumed += 1;
        let key = (partition, offset);
        if offset >= hw {
            self.violation(at, format!("consumer {consumer} read offset {offset} of partition {partition} at or past the high watermark {hw}"));
        }
        if !self.produced.contains(value) {
            self.violation(at, format!("consumer {consumer} read {value:?} at {key:?}, a value never produced"));
        }
        if let Some(s) = self.seen.get(&key).filter(|s| s.as_str() != value).cloned() {
            self.violation(at, format!("offset {key:?} read as {s:?} and later as {value:?}"));
        }
        if let Some(a) = self.acked.get(&key).filter(|a| a.as_str() != value).cloned() {
            self.violation(at, format!("offset {key:?} was acknowledged as {a:?} but reads {value:?}"));
        }
        self.seen.entry(key).or_insert_with(|| value.to_string());
    }

    pub fn on_gap(&mut self, at: u64, consumer: usize, partition: i32, expected: i64, got: i64) {
        self.violation(
            at,
            format!("consumer {consumer} expected offset {expected} of partition {partition} next but got {got}"),
        );
    }

    pub fn on_error(&mut self, at: u64, what: String) {
        self.violation(at, what);
    }

    /// The highest acknowledged offset per partition (what consumers must reach).
    pub fn acked_end(&self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for (p, o) in self.acked.keys() {
            let e = out.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
        }
        out
    }

    /// End of run: every acknowledged record was read back.
    pub fn finish(&mut self, at: u64) {
        let lost: Vec<_> = self
            .acked
            .iter()
            .filter(|(k, v)| self.seen.get(k) != Some(v))
            .map(|(k, v)| (*k, v.clone()))
            .take(5)
            .collect();
        let n = self.acked.iter().filter(|(k, v)| self.seen.get(k) != Some(v)).count();
        for (k, v) in lost {
            self.violation(at, format!("acknowledged record {v:?} at {k:?} was never read back ({n} such)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each check fires on the history it guards against.
    #[test]
    fn each_check_catches_its_bug() {
        let v = |s: &str| vec![s.to_string()];
        let mut c = Checker::default();
        c.on_send(&v("a"));
        c.on_ack(0, 0, 0, 0, &v("a"), -1);
        c.finish(0);
        assert_eq!(c.violations.len(), 1, "lost acknowledged record");

        let mut c = Checker::default();
        c.on_send(&v("a"));
        c.on_send(&v("b"));
        c.on_ack(0, 0, 0, 0, &v("a"), -1);
        c.on_consume(0, 0, 0, 0, "b", 5);
        assert!(!c.violations.is_empty(), "acknowledged value replaced");

        let mut c = Checker::default();
        c.on_consume(0, 0, 0, 0, "never", 5);
        assert!(!c.violations.is_empty(), "value never produced");

        let mut c = Checker::default();
        c.on_send(&v("a"));
        c.on_consume(0, 0, 0, 3, "a", 3);
        assert!(!c.violations.is_empty(), "past the high watermark");

        let mut c = Checker::default();
        c.on_high_watermark(0, 1, 0, 5);
        c.on_high_watermark(0, 1, 0, 4);
        assert!(!c.violations.is_empty(), "high watermark back");

        let mut c = Checker::default();
        c.on_send(&v("a"));
        c.on_ack(0, 0, 0, 3, &v("a"), 3);
        assert!(!c.violations.is_empty(), "producer order");

        let mut c = Checker::default();
        c.on_send(&v("a"));
        c.on_send(&v("b"));
        c.on_consume(0, 0, 0, 0, "a", 5);
        c.on_consume(0, 1, 0, 0, "b", 5);
        assert!(!c.violations.is_empty(), "two values at one offset");
    }
}
