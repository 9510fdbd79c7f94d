//! The `cluster` scenario's readers: a consumer of each partition of the replicated topic,
//! fetching from the partition's leader as clients do (found again after an error from the
//! leader Metadata last named, or else the next node), from its position, while the leaders
//! move. Checked in Jepsen's words:
//! - **nonmonotonic-poll**: the records an answer hands a reader come in increasing offsets,
//!   and are not all below its position (Kafka hands whole batches; clients drop what is
//!   below their position);
//! - **dirty-read** (inconsistent offsets, as a reader saw them): every record a reader read
//!   is in the partition at the end, at the offset it was read at: no reader saw what the
//!   partition later lost;
//! - **poll-skip**: between two records a reader read one after the other (and from where it
//!   started to its first), the partition at the end holds none it passed over;
//! - **unseen**: after the heal every reader reads up to its partition's high watermark, and
//!   every record acknowledged at or after where it started was read.
//!
//! A reader out of range below the log start (DeleteRecords moved it) starts again from the
//! log start: what lies between is neither skipped nor unseen. Below what DeleteRecords was
//! asked, the partition at the end may hold less than was read.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, FetchResponse};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_core::{ConnId, Offset};
use sluice_runtime_sim::{Nanos, World, MS};

use crate::codec;
use crate::replicated::{Replicated, TOPIC};

pub const T_READ: u64 = 25;
const FIRST_CLIENT: usize = 30;

struct Reader {
    partition: i32,
    node: usize,
    conn: Option<ConnId>,
    /// The fetch in flight: its correlation id and the position it asked from.
    asking: Option<(i32, i64)>,
    position: i64,
    /// Stretches read without a break: where each started, and the records read in it.
    runs: Vec<(i64, Vec<(i64, String)>)>,
}

pub struct Readers {
    nodes: usize,
    every: Nanos,
    readers: Vec<Reader>,
    next_cid: i32,
    /// Fetch answers by partition error code.
    pub answers: BTreeMap<i16, u64>,
    pub violations: Vec<String>,
}

impl Readers {
    pub fn new(nodes: usize, partitions: i32, rng: &mut ChaCha8Rng) -> Readers {
        let readers = (0..partitions)
            .map(|p| Reader {
                partition: p,
                node: rng.gen_range(0..nodes),
                conn: None,
                asking: None,
                position: 0,
                runs: vec![(0, Vec::new())],
            })
            .collect();
        Readers {
            nodes,
            every: [5u64, 20, 50][rng.gen_range(0..3)] * MS,
            readers,
            next_cid: 0,
            answers: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    pub fn describe(&self) -> String {
        format!("{} readers, a fetch every {} ms", self.readers.len(), self.every / MS)
    }

    /// Reading starts once the topic exists.
    pub fn start(&mut self, w: &mut World) {
        for k in 0..self.readers.len() {
            w.set_timer(FIRST_CLIENT + k, T_READ, self.every);
        }
    }

    pub fn records_read(&self) -> usize {
        self.readers.iter().flat_map(|r| &r.runs).map(|run| run.1.len()).sum()
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.readers.iter().any(|r| r.conn == Some(conn))
    }

    fn violation(&mut self, w: &World, what: String) {
        if self.violations.len() < 10 {
            self.violations.push(format!("t={}ms: {what}", w.now() / MS));
        }
    }

    pub fn on_timer(&mut self, w: &mut World, client: usize, created: bool) {
        let k = client - FIRST_CLIENT;
        if created && self.readers[k].asking.is_none() {
            self.fetch(w, k);
        }
        w.set_timer(client, T_READ, self.every);
    }

    fn fetch(&mut self, w: &mut World, k: usize) {
        self.next_cid += 1;
        let cid = self.next_cid;
        let r = &mut self.readers[k];
        let conn = *r.conn.get_or_insert_with(|| w.connect(FIRST_CLIENT + k, r.node));
        w.send(conn, codec::fetch_frame(cid, TOPIC, std::iter::once((r.partition, r.position)), 16 * 1024));
        r.asking = Some((cid, r.position));
    }

    /// The reader moves on to another node: the leader Metadata last named, unless that is
    /// the one it is leaving, or else the next.
    fn move_on(&mut self, w: &mut World, k: usize, cached: Option<usize>) {
        let r = &mut self.readers[k];
        if let Some(c) = r.conn.take() {
            w.close(c);
        }
        r.asking = None;
        r.node = cached.filter(|n| *n != r.node).unwrap_or((r.node + 1) % self.nodes);
    }

    pub fn on_closed(&mut self, w: &mut World, conn: ConnId, repl: &Replicated) {
        if let Some(k) = self.readers.iter().position(|r| r.conn == Some(conn)) {
            self.readers[k].conn = None;
            let cached = repl.cached_leaders.get(&self.readers[k].partition).copied();
            self.move_on(w, k, cached);
        }
    }

    pub fn on_response(&mut self, w: &mut World, conn: ConnId, frame: Bytes, repl: &Replicated) {
        let Some(k) = self.readers.iter().position(|r| r.conn == Some(conn)) else { return };
        let Some((cid, from)) = self.readers[k].asking.take() else { return };
        let p = match codec::decode::<FetchResponse>(ApiKey::Fetch, codec::FETCH_VERSION, frame) {
            Ok((got, r)) if got == cid => r.responses.into_iter().flat_map(|t| t.partitions).next(),
            Ok((got, _)) => return self.violation(w, format!("reader {k}: Fetch answered with id {got}, sent {cid}")),
            Err(e) => return self.violation(w, format!("reader {k}: Fetch answer does not decode: {e}")),
        };
        let Some(p) = p else { return self.violation(w, format!("reader {k}: a Fetch answer without its partition")) };
        *self.answers.entry(p.error_code).or_default() += 1;
        match p.error_code {
            0 => self.take_records(w, k, from, p.records.as_deref().unwrap_or(&[])),
            1 if from < p.log_start_offset => {
                let r = &mut self.readers[k];
                r.position = p.log_start_offset;
                r.runs.push((p.log_start_offset, Vec::new()));
            }
            1 => {
                let msg = format!(
                    "reader {k}: partition {} offset {from} out of range, above the log start {} (high watermark {})",
                    self.readers[k].partition, p.log_start_offset, p.high_watermark
                );
                self.violation(w, msg);
            }
            _ => {
                let cached = repl.cached_leaders.get(&self.readers[k].partition).copied();
                self.move_on(w, k, cached);
            }
        }
    }

    fn take_records(&mut self, w: &mut World, k: usize, from: i64, set: &[u8]) {
        let batches = match codec::batches(set) {
            Ok(b) => b,
            Err(e) => return self.violation(w, format!("reader {k}: {e}")),
        };
        let mut last = None;
        let mut took = Vec::new();
        for b in &batches {
            for (o, v) in &b.records {
                if last.is_some_and(|l| *o <= l) {
                    let msg = format!("nonmonotonic-poll: reader {k} was handed offset {o} after {last:?}");
                    return self.violation(w, msg);
                }
                last = Some(*o);
                if *o >= from {
                    took.push((*o, v.clone()));
                }
            }
        }
        let end = batches.last().map(|b| b.header.last_offset() + 1);
        if end.is_some_and(|e| e <= from) {
            let msg = format!("nonmonotonic-poll: reader {k} asked from {from} and was handed only records below it");
            return self.violation(w, msg);
        }
        let r = &mut self.readers[k];
        if let Some(e) = end {
            r.position = r.position.max(e);
        }
        r.runs.last_mut().expect("a reader has a run").1.extend(took);
    }

    /// What keeps the readers from having read everything, if anything: each must have read
    /// up to its partition leader's high watermark.
    pub fn unsettled(&self, w: &World) -> Option<String> {
        self.readers.iter().find_map(|r| {
            let hw = (0..self.nodes)
                .filter_map(|i| w.node(i)?.replica_view(TOPIC, r.partition))
                .find(|v| v.leads)
                .map(|v| v.high_watermark);
            (hw.is_none_or(|hw| r.position < hw))
                .then(|| format!("reader of partition {} at {}, high watermark {hw:?}", r.partition, r.position))
        })
    }

    /// At the end: what each reader read against the partition as it is.
    pub fn final_checks(&mut self, w: &World, repl: &Replicated) {
        let mut found = Vec::new();
        for (k, r) in self.readers.iter().enumerate() {
            let p = r.partition;
            let Some(log) = repl.final_log(w, p) else { continue };
            let floor = repl.deleted_below(p);
            let at: BTreeMap<i64, &String> = log.iter().map(|(o, v)| (*o, v)).collect();
            let mut read = std::collections::BTreeSet::new();
            for (start, records) in &r.runs {
                let mut prev = *start - 1;
                for (o, v) in records {
                    read.insert(*o);
                    if *o >= floor && at.get(o) != Some(&v) {
                        found.push(format!(
                            "dirty-read: reader {k} read {v:?} at {p}/{o}, which holds {:?} at the end",
                            at.get(o)
                        ));
                    }
                    let passed = at.range(prev + 1..*o).next().filter(|(q, _)| **q >= floor);
                    if let Some((q, pv)) = passed {
                        found.push(format!(
                            "poll-skip: reader {k} read {p}/{o} after {prev}, passing over {pv:?} at {q}"
                        ));
                    }
                    prev = *o;
                }
            }
            let start = r.runs.first().map_or(0, |s| s.0).max(floor);
            let unseen: Vec<Offset> = repl.acked_in(p).filter(|o| *o >= start && !read.contains(o)).collect();
            if let Some(o) = unseen.first() {
                found.push(format!(
                    "unseen: reader {k} never read {} records acknowledged in partition {p} (first at {o}; it read to {})",
                    unseen.len(),
                    r.position
                ));
            }
        }
        for f in found {
            self.violation(w, f);
        }
    }
}
