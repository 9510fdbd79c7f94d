//! The default scenario's compacted topic, in two seeds of three: one client creates a topic
//! with `cleanup.policy=compact` and small segments, writes keyed records (a few keys, each
//! overwritten many times, some tombstones) with acks=all while the node crashes and its disk
//! fails, and after the heal reads the partition from its start.
//!
//! In two seeds of three the internal topics (`__consumer_offsets`, `__transaction_state`)
//! get small segments too, so the group's and the transactions' checkers see a coordinator
//! read back a compacted log after a crash.
//!
//! Checked on that read (**compaction-kept**):
//! - offsets strictly increase;
//! - a record at an acknowledged offset is the record acknowledged there; any other record
//!   is one that was sent (a request without an answer may have been written);
//! - for every key, the last record read is at or past its latest acknowledged record: the
//!   cleaner may drop a key's older records and, after `delete.retention.ms`, its tombstone,
//!   never its latest record, and never an older value without the newer one;
//! - a key may be missing only if a tombstone of it was acknowledged last or may have been
//!   written after that;
//! - Kafka's caveat: a tombstone is kept `delete.retention.ms` (from its segment's sealing);
//!   a reader that gets to it later may find it gone while it read the older value it deleted
//!   before the cleaner got there. A key whose latest record is a tombstone acknowledged more
//!   than `delete.retention.ms` before the read ended is not held to the rule above.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_core::log::batch;
use sluice_core::{ConnId, Offset};
use sluice_runtime_sim::{Nanos, World, MS};

use crate::codec;

pub const TOPIC: &str = "compacted";

/// One keyed record: key, value (None: a tombstone).
type Rec = (String, Option<String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Create,
    Produce,
    Verify,
    Done,
}

pub struct Compactor {
    keys: u32,
    batches: u32,
    per_batch: usize,
    tombstone_pct: u32,
    configs: Vec<(&'static str, String)>,
    phase: Phase,
    conn: Option<ConnId>,
    next_cid: i32,
    /// The request in flight: correlation id and, for a produce, its records.
    in_flight: Option<(i32, Vec<Rec>)>,
    sent_batches: u32,
    next_value: u64,
    acked: BTreeMap<Offset, Rec>,
    /// Every value sent, with its key.
    sent: BTreeMap<String, String>,
    /// Keys with a tombstone sent whose fate is unknown (no answer, or an error).
    maybe_tombstoned: BTreeSet<String>,
    read_next: Offset,
    read: Vec<(Offset, Rec)>,
    delete_retention: Nanos,
    /// When the final read started.
    read_from: Option<Nanos>,
    /// When each acknowledged tombstone was acknowledged.
    tombstone_acked_at: BTreeMap<Offset, Nanos>,
}

impl Compactor {
    /// The client's shape, from a stream of its own (None in a third of the seeds); the
    /// cleaner's pace goes into the node's config.
    pub fn draw(seed: u64, node: &mut sluice_core::NodeConfig) -> Option<Compactor> {
        let mut r = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed ^ 0xc0a1_e5ce_0000_0000);
        node.log.cleaner_backoff_ms = [100u64, 300, 1_000][r.gen_range(0..3)];
        // Small segments of the internal topics in some seeds, so that the offsets and the
        // transactions a restart reads back have been compacted.
        node.log.offsets_segment_bytes = [100 << 20, 3_000, 20_000][r.gen_range(0..3)];
        node.log.txn_state_segment_bytes = [100 << 20, 3_000, 20_000][r.gen_range(0..3)];
        if r.gen_range(0..3) == 0 {
            return None;
        }
        let segment = [400u64, 1_500, 6_000][r.gen_range(0..3)];
        let retention = [0u64, 300, 86_400_000][r.gen_range(0..3)];
        let ratio = ["0.01", "0.3", "0.5"][r.gen_range(0..3)];
        Some(Compactor {
            keys: r.gen_range(3..=40),
            batches: r.gen_range(100..=400),
            per_batch: r.gen_range(1..=6),
            tombstone_pct: [0u32, 5, 20][r.gen_range(0..3)],
            configs: vec![
                ("cleanup.policy", "compact".into()),
                ("segment.bytes", segment.to_string()),
                ("delete.retention.ms", retention.to_string()),
                ("min.cleanable.dirty.ratio", ratio.into()),
            ],
            phase: Phase::Create,
            conn: None,
            next_cid: 0,
            in_flight: None,
            sent_batches: 0,
            next_value: 0,
            acked: BTreeMap::new(),
            sent: BTreeMap::new(),
            maybe_tombstoned: BTreeSet::new(),
            read_next: 0,
            read: Vec::new(),
            delete_retention: retention * MS,
            read_from: None,
            tombstone_acked_at: BTreeMap::new(),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "compacted topic {:?}: {} keys, {} batches of <= {} ({}% tombstones), phase {:?}, {} acked, read to {} ({} records)",
            self.configs.iter().skip(1).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            self.keys,
            self.batches,
            self.per_batch,
            self.tombstone_pct,
            self.phase,
            self.acked.len(),
            self.read_next,
            self.read.len()
        )
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.conn == Some(conn)
    }

    /// Every tick: send the next request if none is in flight. `healed`: the faults are over
    /// (and have been for a while), so the final read may start.
    pub fn reading(&self) -> bool {
        self.phase == Phase::Verify
    }

    pub fn needs_conn(&self) -> bool {
        self.conn.is_none() && self.phase != Phase::Done
    }

    pub fn set_conn(&mut self, conn: ConnId) {
        self.conn = Some(conn);
    }

    pub fn tick(&mut self, w: &mut World, healed: bool) {
        if self.in_flight.is_some() || self.phase == Phase::Done {
            return;
        }
        if self.phase == Phase::Produce && self.sent_batches >= self.batches && healed {
            self.phase = Phase::Verify;
            self.read_from = Some(w.now());
        }
        let Some(conn) = self.conn else { return };
        self.next_cid += 1;
        let cid = self.next_cid;
        let frame = match self.phase {
            Phase::Create => self.create_request(cid),
            Phase::Produce if self.sent_batches < self.batches => {
                let (frame, recs) = self.produce_request(w, cid);
                self.in_flight = Some((cid, recs));
                w.send(conn, frame);
                return;
            }
            Phase::Verify => self.fetch_request(cid),
            _ => return,
        };
        self.in_flight = Some((cid, Vec::new()));
        w.send(conn, frame);
    }

    fn create_request(&self, cid: i32) -> Bytes {
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = TopicName(StrBytes::from_static_str(TOPIC));
        t.num_partitions = 1;
        t.replication_factor = 1;
        for (k, v) in &self.configs {
            let mut c = create_topics_request::CreatableTopicConfig::default();
            c.name = StrBytes::from_static_str(k);
            c.value = Some(StrBytes::from_string(v.clone()));
            t.configs.push(c);
        }
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 5_000;
        codec::frame(ApiKey::CreateTopics, codec::CREATE_TOPICS_VERSION, cid, &req)
    }

    fn produce_request(&mut self, w: &mut World, cid: i32) -> (Bytes, Vec<Rec>) {
        let n = w.workload_rng().gen_range(1..=self.per_batch);
        let mut recs = Vec::with_capacity(n);
        for _ in 0..n {
            let key = format!("k{}", w.workload_rng().gen_range(0..self.keys));
            let value = if w.workload_rng().gen_range(0..100) < self.tombstone_pct {
                None
            } else {
                self.next_value += 1;
                let v = format!("v{}", self.next_value);
                self.sent.insert(v.clone(), key.clone());
                Some(v)
            };
            recs.push((key, value));
        }
        self.sent_batches += 1;
        let fields: Vec<(Option<&[u8]>, Option<&[u8]>)> =
            recs.iter().map(|(k, v)| (Some(k.as_bytes()), v.as_deref().map(str::as_bytes))).collect();
        let records = Bytes::from(batch::encode_records(&fields, 1_700_000_000_000));
        (codec::produce_frame(TOPIC, 0, records, codec::PRODUCE_VERSION, cid), recs)
    }

    fn fetch_request(&self, cid: i32) -> Bytes {
        let mut fp = fetch_request::FetchPartition::default();
        fp.partition = 0;
        fp.fetch_offset = self.read_next;
        fp.partition_max_bytes = 64 * 1024;
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = TopicName(StrBytes::from_static_str(TOPIC));
        ft.partitions = vec![fp];
        let mut req = FetchRequest::default();
        req.replica_id = kafka_protocol::messages::BrokerId(-1);
        req.max_wait_ms = 10;
        req.max_bytes = 1 << 20;
        req.session_epoch = -1;
        req.topics = vec![ft];
        codec::frame(ApiKey::Fetch, codec::FETCH_VERSION, cid, &req)
    }

    /// The connection went: an unanswered produce may or may not have been written.
    pub fn on_closed(&mut self) {
        self.conn = None;
        if let Some((_, recs)) = self.in_flight.take() {
            self.unknown_fate(&recs);
        }
    }

    /// Records of a produce without a successful answer: written or not.
    fn unknown_fate(&mut self, recs: &[Rec]) {
        for (k, v) in recs {
            if v.is_none() {
                self.maybe_tombstoned.insert(k.clone());
            }
        }
    }

    /// An answer; returns violations.
    pub fn on_response(&mut self, frame: Bytes, now: Nanos) -> Vec<String> {
        let Some((cid, recs)) = self.in_flight.take() else { return Vec::new() };
        if codec::correlation_id(&frame) != Some(cid) {
            return vec![format!("compaction: answer to an unknown request (sent {cid})")];
        }
        match self.phase {
            Phase::Create => {
                match codec::decode::<CreateTopicsResponse>(ApiKey::CreateTopics, codec::CREATE_TOPICS_VERSION, frame) {
                    Ok((_, r)) if r.topics.first().is_some_and(|t| t.error_code == 0 || t.error_code == 36) => {
                        self.phase = Phase::Produce;
                    }
                    Ok((_, r)) if r.topics.first().is_some_and(|t| t.error_code == 40) => {
                        return vec![format!(
                            "compaction: the topic's configs were refused: {:?}",
                            r.topics[0].error_message
                        )];
                    }
                    Ok(_) => {}
                    Err(e) => return vec![format!("compaction: CreateTopics answer does not decode: {e}")],
                }
                Vec::new()
            }
            Phase::Produce => {
                let r = match codec::decode::<ProduceResponse>(ApiKey::Produce, codec::PRODUCE_VERSION, frame) {
                    Ok((_, r)) => r,
                    Err(e) => return vec![format!("compaction: produce answer does not decode: {e}")],
                };
                match r.responses.first().and_then(|t| t.partition_responses.first()) {
                    Some(p) if p.error_code == 0 => {
                        for (i, rec) in recs.into_iter().enumerate() {
                            let o = p.base_offset + i as i64;
                            if rec.1.is_none() {
                                self.tombstone_acked_at.insert(o, now);
                            }
                            self.acked.insert(o, rec);
                        }
                    }
                    _ => self.unknown_fate(&recs),
                }
                Vec::new()
            }
            Phase::Verify => self.on_fetched(frame, now),
            Phase::Done => Vec::new(),
        }
    }

    fn on_fetched(&mut self, frame: Bytes, now: Nanos) -> Vec<String> {
        let r = match codec::decode::<FetchResponse>(ApiKey::Fetch, codec::FETCH_VERSION, frame) {
            Ok((_, r)) => r,
            Err(e) => return vec![format!("compaction: fetch answer does not decode: {e}")],
        };
        let Some(p) = r.responses.first().and_then(|t| t.partitions.first()) else {
            return vec!["compaction: a fetch answer without the partition".into()];
        };
        if p.error_code != 0 {
            return Vec::new(); // after a restart: not serving yet, or the like; asked again
        }
        let mut set: &[u8] = p.records.as_deref().unwrap_or_default();
        while !set.is_empty() {
            let h = match batch::check_batch(set) {
                Ok(h) => h,
                Err(batch::BatchError::Truncated) => break,
                Err(e) => return vec![format!("compaction: fetched a bad batch at {}: {e:?}", self.read_next)],
            };
            if !h.is_control() {
                let recs = match batch::uncompressed_records(&set[..h.size]) {
                    Ok(r) => r,
                    Err(e) => return vec![format!("compaction: fetched a bad batch: {e:?}")],
                };
                for (o, k, v) in recs.into_iter().filter(|(o, ..)| *o >= self.read_next) {
                    let key = String::from_utf8_lossy(k.unwrap_or_default()).into_owned();
                    let value = v.map(|v| String::from_utf8_lossy(v).into_owned());
                    if self.read.last().is_some_and(|(last, _)| *last >= o) {
                        return vec![format!("compaction-kept: offset {o} read after {}", self.read.last().unwrap().0)];
                    }
                    self.read.push((o, (key, value)));
                }
            }
            self.read_next = self.read_next.max(h.last_offset() + 1);
            set = &set[h.size..];
        }
        let acked_end = self.acked.keys().next_back().map_or(0, |o| o + 1);
        if self.read_next >= p.high_watermark && self.read_next >= acked_end {
            self.phase = Phase::Done;
            let from = self.read_from.unwrap_or(now);
            let mut v = self.check(now);
            for m in &mut v {
                m.push_str(&format!(" (the read took {} ms from {} ms)", (now - from) / MS, from / MS));
            }
            return v;
        }
        Vec::new()
    }

    /// compaction-kept, on the whole read.
    fn check(&self, now: Nanos) -> Vec<String> {
        let mut out = Vec::new();
        let mut last_read: BTreeMap<&str, Offset> = BTreeMap::new();
        for (o, (k, v)) in &self.read {
            match (self.acked.get(o), v) {
                (Some(a), _) if (&a.0, &a.1) != (k, v) => {
                    out.push(format!("compaction-kept: offset {o} holds {k}={v:?}, acknowledged as {}={:?}", a.0, a.1))
                }
                (None, Some(v)) if self.sent.get(v) != Some(k) => {
                    out.push(format!("compaction-kept: offset {o} holds {k}={v}, which was never sent"))
                }
                (None, None) if !self.maybe_tombstoned.contains(k) => {
                    out.push(format!("compaction-kept: offset {o} holds a tombstone of {k}, which was never sent"))
                }
                _ => {}
            }
            last_read.insert(k, *o);
        }
        let mut latest: BTreeMap<&str, (Offset, bool)> = BTreeMap::new();
        for (o, (k, v)) in &self.acked {
            latest.insert(k, (*o, v.is_none()));
        }
        for (k, (o, tombstone)) in latest {
            match last_read.get(k) {
                Some(_) if tombstone && self.tombstone_may_be_gone(o, now) => {}
                Some(r) if *r < o => out.push(format!(
                    "compaction-kept: key {k}: its latest acknowledged record is at {o}, but the last one read is at {r} (acknowledged: {:?}; read: {:?})",
                    self.history(k, self.acked.iter().map(|(o, r)| (*o, r))),
                    self.history(k, self.read.iter().map(|(o, r)| (*o, r)))
                )),
                None if !tombstone && !self.maybe_tombstoned.contains(k) => out.push(format!(
                    "compaction-kept: key {k}: its latest acknowledged record (at {o}) is gone, and no tombstone of it was sent"
                )),
                _ => {}
            }
        }
        out
    }

    /// The tombstone at `o` may have been removed before the read got to it.
    fn tombstone_may_be_gone(&self, o: Offset, now: Nanos) -> bool {
        self.tombstone_acked_at.get(&o).is_some_and(|t| now.saturating_sub(*t) >= self.delete_retention)
    }

    /// A key's last few records of a history: offset and value (None: tombstone).
    fn history<'a>(&self, key: &str, h: impl Iterator<Item = (Offset, &'a Rec)>) -> Vec<(Offset, Option<String>)> {
        let all: Vec<_> = h.filter(|(_, r)| r.0 == key).map(|(o, r)| (o, r.1.clone())).collect();
        all[all.len().saturating_sub(4)..].to_vec()
    }

    /// Records acknowledged, and read at the end (fewer once the cleaner has run).
    pub fn counts(&self) -> (usize, usize) {
        (self.acked.len(), self.read.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: Option<&str>) -> Rec {
        (k.to_string(), v.map(str::to_string))
    }

    /// A client that had these records acknowledged (at their offsets, at time 0) and read
    /// these back, with a tombstone retention of 1 s.
    fn after(acked: &[(Offset, Rec)], read: &[(Offset, Rec)]) -> Compactor {
        let mut c = Compactor {
            keys: 0,
            batches: 0,
            per_batch: 0,
            tombstone_pct: 0,
            configs: Vec::new(),
            phase: Phase::Done,
            conn: None,
            next_cid: 0,
            in_flight: None,
            sent_batches: 0,
            next_value: 0,
            acked: acked.iter().cloned().collect(),
            sent: BTreeMap::new(),
            maybe_tombstoned: BTreeSet::new(),
            read_next: 0,
            read: read.to_vec(),
            delete_retention: 1_000 * MS,
            read_from: None,
            tombstone_acked_at: BTreeMap::new(),
        };
        for (o, (k, v)) in acked {
            match v {
                Some(v) => {
                    c.sent.insert(v.clone(), k.clone());
                }
                None => {
                    c.tombstone_acked_at.insert(*o, 0);
                }
            }
        }
        c
    }

    fn history() -> Vec<(Offset, Rec)> {
        vec![
            (0, rec("a", Some("a1"))),
            (1, rec("b", Some("b1"))),
            (2, rec("a", Some("a2"))),
            (3, rec("c", Some("c1"))),
            (4, rec("c", None)),
            (5, rec("b", Some("b2"))),
        ]
    }

    #[test]
    fn a_log_compacted_as_kafka_does_passes() {
        let h = history();
        // The whole log, and the log cleaned: each key's latest record, the tombstone kept.
        assert_eq!(after(&h, &h).check(0), Vec::<String>::new());
        let cleaned = vec![h[2].clone(), h[4].clone(), h[5].clone()];
        assert_eq!(after(&h, &cleaned).check(0), Vec::<String>::new());
        // Past delete.retention.ms the tombstone may be gone, with the value it deleted.
        let gone = vec![h[2].clone(), h[5].clone()];
        assert_eq!(after(&h, &gone).check(2_000 * MS), Vec::<String>::new());
        let stale_read = vec![h[2].clone(), h[3].clone(), h[5].clone()];
        assert_eq!(after(&h, &stale_read).check(2_000 * MS), Vec::<String>::new());
    }

    #[test]
    fn a_cleaner_that_drops_or_changes_what_it_must_keep_is_caught() {
        let h = history();
        let caught = |read: Vec<(Offset, Rec)>, now: Nanos, what: &str| {
            let v = after(&h, &read).check(now);
            assert!(v.iter().any(|m| m.contains(what)), "{what}: got {v:?} for {read:?}");
        };
        // The latest value of a key dropped, an older one kept.
        caught(vec![h[0].clone(), h[4].clone(), h[5].clone()], 0, "key a: its latest acknowledged record is at 2");
        // A key gone altogether, with no tombstone sent.
        caught(vec![h[2].clone(), h[4].clone()], 0, "key b: its latest acknowledged record (at 5) is gone");
        // The tombstone dropped within delete.retention.ms while the value it deleted stays.
        caught(vec![h[2].clone(), h[3].clone(), h[5].clone()], 0, "key c: its latest acknowledged record is at 4");
        // A record kept at its offset with another value, or a value never sent.
        caught(vec![(2, rec("a", Some("a1"))), h[4].clone(), h[5].clone()], 0, "offset 2 holds a=Some(\"a1\")");
        caught(vec![h[2].clone(), h[4].clone(), h[5].clone(), (6, rec("a", Some("zz")))], 0, "never sent");
    }
}
