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
//!
//! For idempotent producers:
//! - exactly once and in order: reading a partition from its start, a consumer finds each
//!   idempotent producer's values for that partition in the order they were made, each once,
//!   none missing before one that is there (no duplicate from a retry, no gap, no reordering);
//! - a producer id is never handed out twice, across restarts.
//!
//! For transactions:
//! - no aborted read: a read_committed consumer never returns a record of a transaction that
//!   aborted (whether the producer aborted it or the coordinator did, on a timeout);
//! - all or nothing: at the end, a read_committed consumer has read every record of every
//!   committed transaction, on every partition it touched;
//! - read_committed stays below the last stable offset of the response it reads;
//! - offsets committed in a transaction are visible (OffsetFetch) only with its commit: never
//!   one of a transaction that aborted.
//!
//! And for the consumer group:
//! - one owner per partition per generation: no two members (static members count as their
//!   instance) are handed the same partition in the same generation;
//! - committed offsets never go back: an OffsetFetch answers at least the highest commit of
//!   that partition acknowledged before the fetch was sent, and only a value some member
//!   committed;
//! - nothing skipped: a member starts a partition at an offset the group has read everything
//!   below (at-least-once across rebalances, crashes and zombies).

use std::collections::{BTreeMap, BTreeSet};

struct Overlap {
    partition: i32,
    members: [String; 2],
    since: u64,
    confirmed: [bool; 2],
}

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
    /// (generation, partition) -> the member it was assigned to.
    owners: BTreeMap<(i32, i32), String>,
    /// Per partition, acknowledged commits in arrival order: (when, highest so far).
    commit_acks: BTreeMap<i32, Vec<(u64, i64)>>,
    commits_sent: BTreeMap<i32, BTreeSet<i64>>,
    /// Per partition, the highest committed offset an OffsetFetch answered.
    commits_fetched: BTreeMap<i32, i64>,
    /// Per partition, the offset below which the group has read everything, and reads above.
    group_read: BTreeMap<i32, (i64, BTreeSet<i64>)>,
    pub assignments: u64,
    pub commits: u64,
    /// KIP-848: who holds each partition (client side).
    holders: BTreeMap<i32, BTreeSet<String>>,
    /// Two members holding one partition at once, since when, and whether each has since been
    /// confirmed by the coordinator (a request sent after the overlap began succeeded). One of
    /// them may be a zombie the coordinator has fenced; both confirmed means two owners.
    overlaps: Vec<Overlap>,
    /// Idempotent producers' values: value -> (producer, partition, its place among that
    /// producer's values for that partition).
    idempotent: BTreeMap<String, (usize, i32, usize)>,
    /// Values made per (producer, partition) by idempotent producers.
    idempotent_made: BTreeMap<(usize, i32), usize>,
    /// Per (consumer, producer, partition): the place of the next value the consumer must read.
    idempotent_next: BTreeMap<(usize, usize, i32), usize>,
    /// Producer ids handed out, and to whom.
    producer_ids: BTreeMap<i64, usize>,
    /// Transactional values: value -> (producer, transaction number).
    txn_of: BTreeMap<String, (usize, u64)>,
    txn_values: BTreeMap<(usize, u64), Vec<String>>,
    /// How each transaction ended, once its producer knows: true if committed.
    txn_outcome: BTreeMap<(usize, u64), bool>,
    /// Per read_committed consumer, the transactional values it read.
    committed_reads: BTreeMap<usize, BTreeSet<String>>,
    pub txns_committed: u64,
    pub txns_aborted: u64,
    /// Highest last stable offset each read_committed consumer has seen per partition.
    lso_max: BTreeMap<(usize, i32), i64>,
    /// The offset each transaction commits -> the transaction.
    txn_offsets: BTreeMap<i64, (usize, u64)>,
    /// Transactions whose committed offset an OffsetFetch has shown.
    txn_offsets_seen: BTreeSet<(usize, u64)>,
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

    /// An idempotent producer made `values` for `partition`, in this order, after its earlier
    /// ones.
    pub fn on_send_idempotent(&mut self, producer: usize, partition: i32, values: &[String]) {
        self.on_send(values);
        let made = self.idempotent_made.entry((producer, partition)).or_insert(0);
        for v in values {
            self.idempotent.insert(v.clone(), (producer, partition, *made));
            *made += 1;
        }
    }

    /// A consumer reading `partition` from its start, offset after offset, read `value`.
    pub fn on_read_in_order(&mut self, at: u64, consumer: usize, partition: i32, offset: i64, value: &str) {
        let Some(&(producer, part, place)) = self.idempotent.get(value) else {
            return;
        };
        if part != partition {
            return self.violation(
                at,
                format!("{value:?} of idempotent producer {producer} was made for partition {part} but read from {partition}"),
            );
        }
        let next = self.idempotent_next.entry((consumer, producer, partition)).or_insert(0);
        let expected = *next;
        *next = (*next).max(place + 1);
        if place < expected {
            self.violation(at, format!("idempotent producer {producer}: {value:?} is in partition {partition} twice (again at offset {offset}): a retry was written again"));
        } else if place > expected {
            self.violation(at, format!("idempotent producer {producer}: partition {partition} has {value:?} (its value #{place} there) at offset {offset}, but not #{expected} before it: a gap or a reordering"));
        }
    }

    /// A transaction (`producer`'s number `no`) will write `values`.
    pub fn on_txn_send(&mut self, producer: usize, no: u64, values: &[String]) {
        self.on_send(values);
        for v in values {
            self.txn_of.insert(v.clone(), (producer, no));
        }
        self.txn_values.insert((producer, no), values.to_vec());
    }

    /// Its producer learnt how a transaction ended.
    pub fn on_txn_outcome(&mut self, at: u64, producer: usize, no: u64, committed: bool) {
        self.txn_outcome.insert((producer, no), committed);
        if committed {
            self.txns_committed += 1;
            return;
        }
        self.txns_aborted += 1;
        if self.txn_offsets_seen.contains(&(producer, no)) {
            self.violation(
                at,
                format!(
                    "OffsetFetch showed the offset committed by transaction {no} of producer {producer}, which aborted"
                ),
            );
        }
        let values = self.txn_values.get(&(producer, no)).cloned().unwrap_or_default();
        let read: Vec<(usize, String)> = self
            .committed_reads
            .iter()
            .flat_map(|(c, seen)| values.iter().filter(|v| seen.contains(*v)).map(move |v| (*c, v.clone())))
            .take(1)
            .collect();
        for (c, v) in read {
            self.violation(
                at,
                format!(
                    "read_committed consumer {c} read {v:?} of transaction {no} of producer {producer}, which aborted"
                ),
            );
        }
    }

    /// The last stable offset a read_committed consumer sees never goes back: what it read
    /// below it was decided.
    pub fn on_last_stable(&mut self, at: u64, consumer: usize, partition: i32, lso: i64) {
        let max = self.lso_max.entry((consumer, partition)).or_insert(lso);
        if lso < *max {
            let was = *max;
            self.violation(at, format!("consumer {consumer} saw the last stable offset of partition {partition} go back from {was} to {lso}"));
        } else {
            *max = lso;
        }
    }

    /// Transaction `no` of `producer` commits `offset` for the offsets group.
    pub fn on_txn_offset(&mut self, offset: i64, producer: usize, no: u64) {
        self.txn_offsets.insert(offset, (producer, no));
    }

    /// An OffsetFetch showed `offset` committed for the offsets group.
    pub fn on_txn_offset_seen(&mut self, at: u64, offset: i64) {
        let Some(&txn) = self.txn_offsets.get(&offset) else { return };
        self.txn_offsets_seen.insert(txn);
        if self.txn_outcome.get(&txn) == Some(&false) {
            self.violation(
                at,
                format!(
                    "OffsetFetch showed offset {offset}, committed by transaction {} of producer {}, which aborted",
                    txn.1, txn.0
                ),
            );
        }
    }

    /// A read_committed consumer read `value`.
    pub fn on_committed_read(&mut self, at: u64, consumer: usize, value: &str) {
        let reads = self.committed_reads.entry(consumer).or_default();
        let Some(&(producer, no)) = self.txn_of.get(value) else { return };
        reads.insert(value.to_string());
        if self.txn_outcome.get(&(producer, no)) == Some(&false) {
            self.violation(at, format!("read_committed consumer {consumer} read {value:?} of transaction {no} of producer {producer}, which aborted"));
        }
    }

    /// All or nothing for the transactions whose producers never learnt how they ended: the
    /// read_committed `consumer` read each of them whole or not at all.
    pub fn check_undecided_whole(&mut self, at: u64, consumer: usize) {
        let seen = self.committed_reads.get(&consumer).cloned().unwrap_or_default();
        let partial: Vec<String> = self
            .txn_values
            .iter()
            .filter(|(t, _)| !self.txn_outcome.contains_key(*t))
            .filter_map(|((producer, no), values)| {
                let read = values.iter().filter(|v| seen.contains(*v)).count();
                (read > 0 && read < values.len()).then(|| {
                    format!("read_committed consumer {consumer} read {read} of the {} records of transaction {no} of producer {producer}, whose end it never learnt", values.len())
                })
            })
            .take(3)
            .collect();
        for m in partial {
            self.violation(at, m);
        }
    }

    /// A read_committed consumer exists (it must end up with every committed transaction).
    pub fn add_committed_reader(&mut self, consumer: usize) {
        self.committed_reads.entry(consumer).or_default();
    }

    /// InitProducerId answered `producer_id` to `producer`.
    pub fn on_producer_id(&mut self, at: u64, producer: usize, producer_id: i64) {
        // A transactional producer keeps its id across InitProducerIds (its epoch moves);
        // no other producer may ever get it.
        if let Some(other) = self.producer_ids.insert(producer_id, producer).filter(|o| *o != producer) {
            self.violation(
                at,
                format!("producer id {producer_id} handed out twice (to producers {other} and {producer})"),
            );
        }
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

    /// A member was handed `parts` for `generation` by SyncGroup.
    pub fn on_assignment(&mut self, at: u64, owner: &str, generation: i32, parts: &[i32]) {
        self.assignments += 1;
        for p in parts {
            match self.owners.get(&(generation, *p)) {
                Some(o) if o != owner => {
                    let o = o.clone();
                    self.violation(
                        at,
                        format!("partition {p} handed to both {o} and {owner} in generation {generation}"),
                    );
                }
                _ => {
                    self.owners.insert((generation, *p), owner.to_string());
                }
            }
        }
    }

    pub fn on_commit_sent(&mut self, offsets: &BTreeMap<i32, i64>) {
        for (p, o) in offsets {
            self.commits_sent.entry(*p).or_default().insert(*o);
        }
    }

    pub fn on_commit_ack(&mut self, at: u64, _member: usize, partition: i32, offset: i64) {
        self.commits += 1;
        let acks = self.commit_acks.entry(partition).or_default();
        let max = acks.last().map_or(offset, |(_, m)| (*m).max(offset));
        acks.push((at, max));
    }

    /// The highest commit of `partition` acknowledged at or before `t`, if any.
    fn committed_by(&self, partition: i32, t: u64) -> Option<i64> {
        let acks = self.commit_acks.get(&partition)?;
        let n = acks.partition_point(|(a, _)| *a <= t);
        n.checked_sub(1).map(|i| acks[i].1)
    }

    /// The highest commit per partition known to be in place: acknowledged, or answered by
    /// an OffsetFetch (a commit whose acknowledgement was lost may still have happened).
    pub fn committed_max(&self) -> BTreeMap<i32, i64> {
        let mut out: BTreeMap<i32, i64> =
            self.commit_acks.iter().filter_map(|(p, a)| a.last().map(|(_, m)| (*p, *m))).collect();
        for (p, o) in &self.commits_fetched {
            let e = out.entry(*p).or_insert(*o);
            *e = (*e).max(*o);
        }
        out
    }

    /// A member sent OffsetFetch at `sent` and was told `committed` for `partition`. Returns
    /// where it starts reading.
    pub fn on_offset_fetch(&mut self, at: u64, member: usize, partition: i32, committed: i64, sent: u64) -> i64 {
        if let Some(floor) = self.committed_by(partition, sent).filter(|f| committed < *f) {
            self.violation(
                at,
                format!("member {member}: committed offset of partition {partition} went back: read {committed}, but {floor} was acknowledged before the fetch"),
            );
        }
        if committed >= 0 && !self.commits_sent.get(&partition).is_some_and(|s| s.contains(&committed)) {
            self.violation(
                at,
                format!("member {member}: committed offset {committed} of partition {partition} was never committed"),
            );
        }
        let e = self.commits_fetched.entry(partition).or_insert(committed);
        *e = (*e).max(committed);
        let start = committed.max(0);
        let read = self.group_read.get(&partition).map_or(0, |r| r.0);
        if start > read {
            self.violation(
                at,
                format!("member {member}: starts partition {partition} at {start}, skipping offsets {read}..{start} the group never read"),
            );
        }
        start
    }

    /// A member of the group read `offset` of `partition`.
    pub fn on_group_consume(&mut self, partition: i32, offset: i64) {
        let (below, above) = self.group_read.entry(partition).or_default();
        if offset == *below {
            *below += 1;
            while above.remove(below) {
                *below += 1;
            }
        } else if offset > *below {
            above.insert(offset);
        }
    }

    /// Where the group has read every partition up to.
    pub fn group_read_to(&self, partition: i32) -> i64 {
        self.group_read.get(&partition).map_or(0, |r| r.0)
    }

    /// KIP-848: a member starts consuming `partition`.
    pub fn on_own(&mut self, at: u64, member: &str, partition: i32) {
        self.assignments += 1;
        let holders = self.holders.entry(partition).or_default();
        for other in holders.iter().filter(|o| *o != member) {
            self.overlaps.push(Overlap {
                partition,
                members: [other.clone(), member.to_string()],
                since: at,
                confirmed: [false, false],
            });
        }
        holders.insert(member.to_string());
    }

    /// KIP-848: a member stopped consuming `partition` (revoked, fenced, crashed or left).
    pub fn on_release(&mut self, member: &str, partition: i32) {
        if let Some(h) = self.holders.get_mut(&partition) {
            h.remove(member);
        }
        self.overlaps.retain(|o| !(o.partition == partition && o.members.iter().any(|m| m == member)));
    }

    /// KIP-848: the coordinator fenced a member (it rejoins with nothing).
    pub fn on_fenced(&mut self, member: &str) {
        for h in self.holders.values_mut() {
            h.remove(member);
        }
        self.overlaps.retain(|o| o.members.iter().all(|m| m != member));
    }

    /// KIP-848: a request sent at `sent` while `member` held `parts` succeeded: the
    /// coordinator still counted it a member at its epoch. If the other side of an overlap was
    /// confirmed too, two members owned a partition at once.
    pub fn on_confirm(&mut self, at: u64, member: &str, parts: &BTreeSet<i32>, sent: u64) {
        let mut found = Vec::new();
        for o in self.overlaps.iter_mut().filter(|o| parts.contains(&o.partition) && o.since <= sent) {
            for i in 0..2 {
                if o.members[i] == member {
                    o.confirmed[i] = true;
                }
            }
            if o.confirmed == [true, true] {
                found.push(format!(
                    "partition {} owned by {} and {} at once: both confirmed by the coordinator after {} ms",
                    o.partition,
                    o.members[0],
                    o.members[1],
                    o.since / 1_000_000
                ));
            }
        }
        for f in found {
            self.violation(at, f);
        }
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
        // All or nothing: every committed transaction was read whole.
        let mut missing = Vec::new();
        for ((producer, no), committed) in &self.txn_outcome {
            if !committed {
                continue;
            }
            for (c, seen) in &self.committed_reads {
                let values = self.txn_values.get(&(*producer, *no)).map(Vec::as_slice).unwrap_or_default();
                let absent = values.iter().filter(|v| !seen.contains(*v)).count();
                if absent > 0 && missing.len() < 3 {
                    missing.push(format!("read_committed consumer {c} read {} of the {} records of committed transaction {no} of producer {producer}", values.len() - absent, values.len()));
                }
            }
        }
        for m in missing {
            self.violation(at, m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transaction checks fire on an aborted read (before or after the outcome is known)
    /// and on a committed transaction read in part; a clean history passes.
    #[test]
    fn transaction_checks_catch_their_bugs() {
        let vals = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let fresh = || {
            let mut c = Checker::default();
            c.add_committed_reader(9);
            c.on_txn_send(1, 1, &vals(&["a", "b"]));
            c.on_txn_send(1, 2, &vals(&["c"]));
            c
        };
        let mut c = fresh();
        c.on_committed_read(0, 9, "a");
        c.on_committed_read(0, 9, "b");
        c.on_txn_outcome(0, 1, 1, true);
        c.on_txn_outcome(0, 1, 2, false);
        c.finish(0);
        assert!(c.violations.is_empty(), "{:?}", c.violations);

        let mut c = fresh();
        c.on_committed_read(0, 9, "c");
        c.on_txn_outcome(0, 1, 2, false);
        assert_eq!(c.violations.len(), 1, "aborted read, outcome learnt after");
        let mut c = fresh();
        c.on_txn_outcome(0, 1, 2, false);
        c.on_committed_read(0, 9, "c");
        assert_eq!(c.violations.len(), 1, "aborted read, outcome known before");
        let mut c = fresh();
        c.on_committed_read(0, 9, "a");
        c.on_txn_outcome(0, 1, 1, true);
        c.finish(0);
        assert_eq!(c.violations.len(), 1, "committed transaction read in part");
        let mut c = fresh();
        c.on_txn_offset(2000, 1, 2);
        c.on_txn_offset_seen(0, 2000);
        c.on_txn_outcome(0, 1, 2, false);
        assert_eq!(c.violations.len(), 1, "an aborted transaction's offset shown");
        let mut c = fresh();
        c.on_txn_offset(1000, 1, 1);
        c.on_txn_outcome(0, 1, 1, true);
        c.on_txn_offset_seen(0, 1000);
        assert!(c.violations.is_empty(), "a committed transaction's offset");
        let mut c = fresh();
        c.on_last_stable(0, 9, 0, 5);
        c.on_last_stable(0, 9, 0, 7);
        c.on_last_stable(0, 9, 0, 6);
        assert_eq!(c.violations.len(), 1, "last stable offset went back");
    }

    /// The idempotence checks fire on a duplicate, a gap, a reordering and a reused id, and
    /// stay quiet on a clean history.
    #[test]
    fn idempotence_checks_catch_their_bugs() {
        let vals = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let fresh = || {
            let mut c = Checker::default();
            c.on_send_idempotent(1, 0, &vals(&["a", "b"]));
            c.on_send_idempotent(1, 0, &vals(&["c"]));
            c.on_send_idempotent(1, 1, &vals(&["x"]));
            c
        };
        let mut c = fresh();
        for (o, v) in ["a", "b", "c"].iter().enumerate() {
            c.on_read_in_order(0, 7, 0, o as i64, v);
        }
        c.on_read_in_order(0, 7, 1, 0, "x");
        c.on_read_in_order(0, 8, 0, 0, "a"); // another consumer reads on its own
        c.on_producer_id(0, 1, 1000);
        c.on_producer_id(0, 2, 1001);
        c.on_producer_id(0, 1, 1000); // the same transactional producer again
        assert!(c.violations.is_empty(), "{:?}", c.violations);

        let mut c = fresh();
        for (o, v) in ["a", "b", "a", "b", "c"].iter().enumerate() {
            c.on_read_in_order(0, 7, 0, o as i64, v);
        }
        assert_eq!(c.violations.len(), 2, "duplicate: {:?}", c.violations);
        let mut c = fresh();
        c.on_read_in_order(0, 7, 0, 0, "a");
        c.on_read_in_order(0, 7, 0, 1, "c");
        assert_eq!(c.violations.len(), 1, "gap");
        let mut c = fresh();
        c.on_read_in_order(0, 7, 0, 0, "b");
        c.on_read_in_order(0, 7, 0, 1, "a");
        assert_eq!(c.violations.len(), 2, "reordering: {:?}", c.violations);
        let mut c = fresh();
        c.on_read_in_order(0, 7, 1, 0, "a");
        assert_eq!(c.violations.len(), 1, "wrong partition");
        let mut c = fresh();
        c.on_producer_id(0, 1, 1000);
        c.on_producer_id(0, 2, 1000);
        assert_eq!(c.violations.len(), 1, "reused producer id");
    }

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

    /// Each group check fires on the history it guards against, and not on a good one.
    #[test]
    fn each_group_check_catches_its_bug() {
        let commit = |c: &mut Checker, p: i32, o: i64| c.on_commit_sent(&[(p, o)].into_iter().collect());

        let mut c = Checker::default();
        c.on_assignment(0, "a", 3, &[0, 1]);
        c.on_assignment(0, "b", 3, &[2]);
        c.on_assignment(0, "b", 4, &[0]);
        assert!(c.violations.is_empty(), "disjoint in a generation; moved in the next");
        c.on_assignment(0, "c", 4, &[2, 0]);
        assert_eq!(c.violations.len(), 1, "two owners in one generation");

        let mut c = Checker::default();
        for o in 0..10 {
            c.on_group_consume(0, o);
        }
        commit(&mut c, 0, 10);
        c.on_commit_ack(100, 0, 0, 10);
        assert_eq!(c.on_offset_fetch(200, 1, 0, 10, 150), 10);
        assert_eq!(c.on_offset_fetch(200, 1, 0, -1, 50), 0, "sent before the ack: may miss it");
        assert!(c.violations.is_empty());
        commit(&mut c, 0, 4);
        c.on_offset_fetch(300, 1, 0, 4, 250);
        assert_eq!(c.violations.len(), 1, "went back");

        let mut c = Checker::default();
        c.on_offset_fetch(0, 1, 0, 7, 0);
        assert!(c.violations.iter().any(|v| v.contains("never committed")), "phantom offset");
        assert!(c.violations.iter().any(|v| v.contains("skipping")), "skips records nobody read");

        let mut c = Checker::default();
        c.on_group_consume(0, 0);
        c.on_group_consume(0, 2);
        assert_eq!(c.group_read_to(0), 1, "a hole stops the frontier");
        c.on_group_consume(0, 1);
        assert_eq!(c.group_read_to(0), 3);

        // KIP-848: a hand-over after release is fine; an overlap is fine while one side is
        // a zombie the coordinator no longer confirms; both confirmed is two owners.
        let parts: BTreeSet<i32> = [0].into_iter().collect();
        let mut c = Checker::default();
        c.on_own(10, "a", 0);
        c.on_release("a", 0);
        c.on_own(20, "b", 0);
        c.on_confirm(30, "b", &parts, 25);
        assert!(c.violations.is_empty());
        c.on_own(40, "c", 0); // b or c is a zombie now
        c.on_confirm(45, "b", &parts, 35);
        c.on_confirm(46, "c", &parts, 38);
        assert!(c.violations.is_empty(), "confirmations sent before the overlap began prove nothing");
        c.on_confirm(50, "b", &parts, 41);
        assert!(c.violations.is_empty(), "one side confirmed: the other may be fenced");
        c.on_confirm(55, "c", &parts, 42);
        assert_eq!(c.violations.len(), 1, "both confirmed: two owners");
        let mut c = Checker::default();
        c.on_own(10, "a", 0);
        c.on_own(20, "b", 0);
        c.on_fenced("a");
        c.on_confirm(30, "a", &parts, 25);
        c.on_confirm(30, "b", &parts, 25);
        assert!(c.violations.is_empty(), "a fenced member's stale view is not an overlap");
    }
}
