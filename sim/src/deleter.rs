//! The replicated workload's DeleteRecords client: in half the seeds, every 0.5-1.5 s until
//! the heal, it deletes the records of a random partition below an offset it has seen
//! acknowledged (so at most the high watermark), through a node it moves on from after an
//! error (only the leader deletes). What it asked bounds what the other checkers may expect
//! to find: a request given up on may still be carried out.
//!
//! Checked at the end (**deletion-kept**): every replica's log start is at or past the
//! largest low watermark acknowledged for its partition (a deletion is not undone by a crash,
//! a restart, a new leader or a replica moved).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
use kafka_protocol::messages::{ApiKey, DeleteRecordsRequest, DeleteRecordsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_core::{ConnId, Offset};
use sluice_runtime_sim::{Nanos, World, MS};

use crate::codec;

pub const T_DELETE: u64 = 20;
/// The deleting client (producers are 2..=4, the reassigner 6, the commits workload's 8 on).
const DELETER: usize = 7;
const VERSION: i16 = 1;

pub struct Deleter {
    every: Option<Nanos>,
    node: usize,
    /// The request in flight: partition, offset, connection, correlation id.
    in_flight: Option<(i32, Offset, ConnId, i32)>,
    next_cid: i32,
    /// Per partition, the largest offset ever sent (records below may be gone).
    sent: BTreeMap<i32, Offset>,
    /// Per partition, the largest low watermark acknowledged.
    acked: BTreeMap<i32, Offset>,
    pub answers: BTreeMap<i16, u64>,
}

impl Deleter {
    pub fn new(rng: &mut ChaCha8Rng) -> Deleter {
        Deleter {
            every: [None, Some(1_000 * MS)][rng.gen_range(0..2)],
            node: 0,
            in_flight: None,
            next_cid: 1 << 20,
            sent: BTreeMap::new(),
            acked: BTreeMap::new(),
            answers: BTreeMap::new(),
        }
    }

    pub fn describe(&self) -> String {
        format!("DeleteRecords every {:?} ms", self.every.map(|e| e / MS))
    }

    pub fn start(&self, w: &mut World) {
        if let Some(e) = self.every {
            w.set_timer(DELETER, T_DELETE, e);
        }
    }

    /// Records below this offset of `partition` may have been deleted.
    pub fn floor(&self, partition: i32) -> Offset {
        self.sent.get(&partition).copied().unwrap_or(0)
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.in_flight.is_some_and(|f| f.2 == conn)
    }

    /// Deletes below a random offset of those acknowledged on a random partition (`acked`:
    /// the largest acknowledged offset per partition).
    pub fn on_timer(&mut self, w: &mut World, nodes: usize, acked: &BTreeMap<i32, Offset>, healed: bool) {
        let Some(every) = self.every.filter(|_| !healed) else { return };
        let after = w.workload_rng().gen_range(every / 2..every * 3 / 2);
        w.set_timer(DELETER, T_DELETE, after);
        if self.in_flight.is_some() || acked.is_empty() || !w.is_up(self.node % nodes) {
            self.node = (self.node + 1) % nodes;
            return;
        }
        let parts: Vec<(&i32, &Offset)> = acked.iter().collect();
        let (&partition, &max) = parts[w.workload_rng().gen_range(0..parts.len())];
        let offset = w.workload_rng().gen_range(0..=max + 1);
        let mut p = DeleteRecordsPartition::default();
        p.partition_index = partition;
        p.offset = offset;
        let mut t = DeleteRecordsTopic::default();
        t.name = TopicName(StrBytes::from_static_str(crate::replicated::TOPIC));
        t.partitions = vec![p];
        let mut req = DeleteRecordsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 2_000;
        self.next_cid += 1;
        let conn = w.connect(DELETER, self.node % nodes);
        w.send(conn, codec::frame(ApiKey::DeleteRecords, VERSION, self.next_cid, &req));
        let sent = self.sent.entry(partition).or_default();
        *sent = (*sent).max(offset);
        self.in_flight = Some((partition, offset, conn, self.next_cid));
    }

    /// An answer: a success raises the partition's acknowledged low watermark; an error
    /// moves on to the next node. Returns a violation, if the answer is one.
    pub fn on_response(&mut self, w: &mut World, nodes: usize, frame: Bytes) -> Option<String> {
        let (partition, offset, conn, cid) = self.in_flight.take()?;
        w.close(conn);
        let resp = codec::decode::<DeleteRecordsResponse>(ApiKey::DeleteRecords, VERSION, frame);
        let (code, low) = match resp {
            Ok((got, r)) if got == cid => match r.topics.first().and_then(|t| t.partitions.first()) {
                Some(p) => (p.error_code, p.low_watermark),
                None => return Some("a DeleteRecords answer without its partition".into()),
            },
            Ok((got, _)) => return Some(format!("DeleteRecords answered with id {got}, sent {cid}")),
            Err(e) => return Some(format!("DeleteRecords answer does not decode: {e}")),
        };
        *self.answers.entry(code).or_default() += 1;
        if code != 0 {
            self.node = (self.node + 1) % nodes;
            return None;
        }
        if low < offset {
            return Some(format!("DeleteRecords below {offset} of partition {partition} answered low watermark {low}"));
        }
        let acked = self.acked.entry(partition).or_default();
        *acked = (*acked).max(low);
        None
    }

    pub fn on_closed(&mut self, nodes: usize) {
        self.in_flight = None;
        self.node = (self.node + 1) % nodes;
    }

    /// deletion-kept: every online replica's log start is at or past what was acknowledged.
    pub fn final_checks(&self, w: &World, nodes: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (&p, &low) in &self.acked {
            for i in 0..nodes {
                let Some(v) = w.node(i).and_then(|n| n.replica_view(crate::replicated::TOPIC, p)) else { continue };
                if v.online && v.log_start < low {
                    out.push(format!(
                        "deletion-kept: partition {p}: records below {low} were deleted (acknowledged) but node {} starts its log at {}",
                        i + 1,
                        v.log_start
                    ));
                }
            }
        }
        out
    }
}
