//! The simulated Kafka clients and the fault schedule of one run.
//!
//! An admin client creates the topic; producers send batches of unique values (acks=all or 1,
//! several requests in flight, retries after errors, timeouts and disconnects: at-least-once;
//! in some seeds the acks=all producers are idempotent, as clients are by default, and their
//! retries must land exactly once, in order);
//! consumers fetch every partition from offset 0 with long polls; members of a consumer group
//! (`group.rs`) share the partitions, commit and rebalance. The safety phase injects faults
//! (in the node, the network and the group's members); then everything heals and the run
//! must finish (every value produced and acknowledged, every acknowledged record read back,
//! the group settled with its commits at the end) within the liveness bound.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rand::Rng;
use sluice_core::ConnId;
use sluice_runtime_sim::{Harness, Nanos, World, MS};

use crate::checker::Checker;
use crate::codec;
use crate::group::{GroupMember, Member};
use crate::group848::Member848;
use crate::txn::TxnProducer;

pub const TOPIC: &str = "sim";

/// The shape of one run, drawn from the seed.
#[derive(Clone, Debug)]
pub struct Plan {
    pub partitions: i32,
    pub producers: usize,
    pub consumers: usize,
    pub values_per_producer: u64,
    pub batch_max: usize,
    pub in_flight_max: usize,
    pub produce_interval: Nanos,
    pub safety: Nanos,
    pub liveness: Nanos,
    pub crash_every: Option<Nanos>,
    /// Controlled stops (SIGTERM) and restarts.
    pub stop_every: Option<Nanos>,
    pub clog_every: Option<Nanos>,
    pub reset_every: Option<Nanos>,
    pub disk_full_every: Option<Nanos>,
    /// Members of the consumer group (0: no group in this run).
    pub group_members: usize,
    /// Whether members are static (`group.instance.id`).
    pub static_members: bool,
    pub member_crash_every: Option<Nanos>,
    pub member_stall_every: Option<Nanos>,
    pub member_leave_every: Option<Nanos>,
    /// Members speak KIP-848's ConsumerGroupHeartbeat rather than the classic protocol.
    pub kip848: bool,
    /// The acks=all producers are idempotent (InitProducerId, sequence numbers).
    pub idempotent: bool,
    /// Transactional producers (and then one read_committed consumer).
    pub txn_producers: usize,
    /// How often a transactional producer stalls mid-transaction past its timeout.
    pub txn_stall_every: Option<Nanos>,
}

const REQUEST_TIMEOUT: Nanos = 3_000 * MS;
const BACKOFF: Nanos = 20 * MS;

// Timer tokens: client index in the high bits, kind in the low.
const T_TICK: u64 = 0;
const T_RECONNECT: u64 = 1;
const T_FAULT: u64 = 2;
const T_FAULT_LIFT: u64 = 3;

struct Batch {
    partition: i32,
    values: Vec<String>,
    /// Highest offset this producer had acknowledged on the partition when first sent.
    floor: i64,
    /// An idempotent producer's first sequence number for this batch (fixed when it is made:
    /// every retry carries the same one).
    seq: Option<i32>,
}

/// An idempotent producer's id, as InitProducerId answered it.
#[derive(Default)]
struct Idempotence {
    producer_id: Option<(i64, i16)>,
    /// The correlation id of the InitProducerId in flight.
    asking: Option<i32>,
    next_seq: BTreeMap<i32, i32>,
}

struct Producer {
    acks: i16,
    idempotence: Option<Idempotence>,
    conn: Option<ConnId>,
    queue: VecDeque<Batch>,
    in_flight: BTreeMap<i32, (Batch, Nanos)>,
    next_cid: i32,
    made: u64,
    acked_max: BTreeMap<i32, i64>,
}

impl Producer {
    /// Puts a batch back to be sent again. An idempotent producer's batches of one partition
    /// must go out in sequence order, or the broker refuses the later ones as out of order.
    fn requeue(&mut self, b: Batch) {
        let Some(seq) = b.seq else {
            return self.queue.push_front(b);
        };
        let same = |q: &Batch| q.partition == b.partition;
        let at = match self.queue.iter().position(|q| same(q) && q.seq.is_some_and(|s| s > seq)) {
            Some(i) => i,
            None => self.queue.iter().rposition(same).map_or(0, |i| i + 1),
        };
        self.queue.insert(at, b);
    }
}

struct Consumer {
    /// Reads as a read_committed client does.
    read_committed: bool,
    conn: Option<ConnId>,
    next: BTreeMap<i32, i64>,
    in_flight: Option<i32>,
    next_cid: i32,
}

enum Role {
    Admin {
        conn: Option<ConnId>,
        done: bool,
    },
    Producer(Producer),
    Consumer(Consumer),
    Member(Box<dyn GroupMember>),
    TxnProducer(TxnProducer),
    /// Writes keyed records to a compacted topic and reads them back after the heal.
    Compactor(Box<crate::compactor::Compactor>),
    /// Polls OffsetFetch for the group transactional producers commit offsets for.
    OffsetWatcher {
        conn: Option<ConnId>,
        asking: bool,
    },
}

/// What a fetch showed of one partition.
#[derive(Clone, Debug)]
pub enum Seen {
    /// The partition's last stable offset (reported first, with the high watermark).
    Bounds {
        last_stable: i64,
    },
    Record(i64, String),
    /// Offsets `base..next` hold no record for the application: a transaction marker, or a
    /// batch of an aborted transaction (read_committed).
    Skip {
        base: i64,
        next: i64,
    },
}

/// One partition's part of a fetch response: (partition, what was seen, high watermark), or
/// what was wrong with it.
pub type Fetched = Result<(i32, Seen, i64), String>;

/// Reads a fetch response: per partition its bounds, then its records, as a read_uncommitted
/// client sees them (markers skipped).
pub fn fetched(frame: Bytes) -> Result<Vec<Fetched>, String> {
    fetched_as(frame, false)
}

/// Reads a fetch response as a client of this isolation level does: read_committed drops the
/// batches of aborted transactions, using the response's aborted-transactions list and the
/// markers, exactly as Kafka's clients do.
pub fn fetched_as(frame: Bytes, read_committed: bool) -> Result<Vec<Fetched>, String> {
    let (_, resp): (i32, FetchResponse) = codec::decode(ApiKey::Fetch, codec::FETCH_VERSION, frame)
        .map_err(|e| format!("undecodable fetch response: {e}"))?;
    let mut seen = Vec::new();
    for t in &resp.responses {
        for p in &t.partitions {
            match p.error_code {
                0 => {}
                1 => {
                    seen.push(Err(format!(
                        "offset of partition {} out of range (high watermark {})",
                        p.partition_index, p.high_watermark
                    )));
                    continue;
                }
                _ => continue, // not ready, storage error: fetch again
            }
            let (pi, hw) = (p.partition_index, p.high_watermark);
            seen.push(Ok((pi, Seen::Bounds { last_stable: p.last_stable_offset }, hw)));
            let batches = match codec::batches(p.records.as_deref().unwrap_or(&[])) {
                Ok(b) => b,
                Err(e) => {
                    seen.push(Err(e));
                    continue;
                }
            };
            let mut aborted: Vec<(i64, i64)> =
                p.aborted_transactions.iter().flatten().map(|a| (a.first_offset, a.producer_id.0)).collect();
            aborted.sort();
            let mut next_aborted = 0;
            let mut aborting = std::collections::BTreeSet::new();
            for b in batches {
                let h = &b.header;
                let skip = Ok((pi, Seen::Skip { base: h.base_offset, next: h.last_offset() + 1 }, hw));
                if read_committed {
                    while next_aborted < aborted.len() && aborted[next_aborted].0 <= h.base_offset {
                        aborting.insert(aborted[next_aborted].1);
                        next_aborted += 1;
                    }
                }
                if h.is_control() {
                    if b.marker == Some(false) {
                        aborting.remove(&h.producer_id);
                    }
                    seen.push(skip);
                } else if read_committed && h.is_transactional() && aborting.contains(&h.producer_id) {
                    seen.push(skip);
                } else {
                    seen.extend(b.records.into_iter().map(|(o, v)| Ok((pi, Seen::Record(o, v), hw))));
                }
            }
        }
    }
    Ok(seen)
}

pub struct Workload {
    pub plan: Plan,
    clients: Vec<Role>,
    conn_owner: BTreeMap<ConnId, usize>,
    pub checker: Checker,
    healed: bool,
    pub finished_at: Option<Nanos>,
}

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

impl Workload {
    pub fn new(plan: Plan, compactor: Option<crate::compactor::Compactor>, w: &mut World) -> Workload {
        let mut clients = vec![Role::Admin { conn: None, done: false }];
        for i in 0..plan.producers {
            // acks=all, acks=1 and acks=0 (fire and forget: never acknowledged, so never
            // counted as durable, but every value it sends is a value consumers may read).
            let acks = [-1, 1, 0][i % 3];
            clients.push(Role::Producer(Producer {
                acks,
                idempotence: (acks == -1 && plan.idempotent).then(Idempotence::default),
                conn: None,
                queue: VecDeque::new(),
                in_flight: BTreeMap::new(),
                next_cid: 0,
                made: 0,
                acked_max: BTreeMap::new(),
            }));
        }
        for _ in 0..plan.consumers {
            clients.push(Role::Consumer(Consumer {
                read_committed: false,
                conn: None,
                next: BTreeMap::new(),
                in_flight: None,
                next_cid: 0,
            }));
        }
        for i in 0..plan.group_members {
            let instance = plan.static_members.then(|| format!("instance-{i}"));
            let m: Box<dyn GroupMember> = if plan.kip848 {
                Box::new(Member848::new(clients.len(), instance))
            } else {
                Box::new(Member::new(clients.len(), instance))
            };
            clients.push(Role::Member(m));
        }
        let mut checker = Checker::default();
        if plan.txn_producers > 0 {
            checker.add_committed_reader(clients.len());
            clients.push(Role::Consumer(Consumer {
                read_committed: true,
                conn: None,
                next: BTreeMap::new(),
                in_flight: None,
                next_cid: 0,
            }));
            for _ in 0..plan.txn_producers {
                clients.push(Role::TxnProducer(TxnProducer::new(clients.len())));
            }
            clients.push(Role::OffsetWatcher { conn: None, asking: false });
        }
        if let Some(c) = compactor {
            clients.push(Role::Compactor(Box::new(c)));
        }
        let wl = Workload { plan, clients, conn_owner: BTreeMap::new(), checker, healed: false, finished_at: None };
        for c in 0..wl.clients.len() {
            w.set_timer(c, (c as u64) << 8 | T_TICK, MS);
        }
        w.set_timer(usize::MAX, T_FAULT, 10 * MS);
        wl
    }

    fn connect(&mut self, w: &mut World, c: usize) -> ConnId {
        let conn = w.connect(c, 0);
        self.conn_owner.insert(conn, c);
        conn
    }

    fn admin_tick(&mut self, w: &mut World, c: usize) {
        let Role::Admin { conn, done } = &mut self.clients[c] else {
            return;
        };
        if *done || conn.is_some() {
            return;
        }
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = topic_name();
        t.num_partitions = self.plan.partitions;
        t.replication_factor = 1;
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 5000;
        let frame = codec::frame(ApiKey::CreateTopics, codec::CREATE_TOPICS_VERSION, 1, &req);
        let new = self.connect(w, c);
        if let Role::Admin { conn, .. } = &mut self.clients[c] {
            *conn = Some(new);
        }
        w.send(new, frame);
    }

    fn topic_ready(&self) -> bool {
        matches!(self.clients[0], Role::Admin { done: true, .. })
    }

    fn producer_tick(&mut self, w: &mut World, c: usize) {
        if !self.topic_ready() {
            return;
        }
        let plan = self.plan.clone();
        let now = w.now();
        let (partition, n) =
            (w.workload_rng().gen_range(0..plan.partitions), w.workload_rng().gen_range(1..=plan.batch_max));
        let Role::Producer(p) = &mut self.clients[c] else {
            return;
        };
        // New values only during the safety phase; after it, only what is left is delivered.
        if now < plan.safety && p.made < plan.values_per_producer && p.queue.len() < 2 * plan.in_flight_max {
            let take = (n as u64).min(plan.values_per_producer - p.made);
            let values: Vec<String> = (p.made + 1..=p.made + take).map(|k| format!("p{c}-{k}")).collect();
            p.made += take;
            let floor = p.acked_max.get(&partition).copied().unwrap_or(-1);
            let seq = p.idempotence.as_mut().map(|i| {
                let next = i.next_seq.entry(partition).or_insert(0);
                let seq = *next;
                *next += values.len() as i32;
                seq
            });
            if seq.is_some() {
                self.checker.on_send_idempotent(c, partition, &values);
            } else {
                self.checker.on_send(&values);
            }
            let Role::Producer(p) = &mut self.clients[c] else { unreachable!() };
            p.queue.push_back(Batch { partition, values, floor, seq });
        }
        let Role::Producer(p) = &mut self.clients[c] else { unreachable!() };
        // A request that has waited too long: give up on the connection, resend elsewhere.
        if p.in_flight.values().any(|(_, sent)| now - sent > REQUEST_TIMEOUT) {
            if let Some(conn) = p.conn {
                w.close(conn);
                self.producer_disconnected(w, c);
                return;
            }
        }
        self.producer_pump(w, c);
    }

    fn producer_pump(&mut self, w: &mut World, c: usize) {
        let in_flight_max = self.plan.in_flight_max;
        let now = w.now();
        let need_conn = matches!(&self.clients[c], Role::Producer(p) if p.conn.is_none() && !p.queue.is_empty());
        if need_conn {
            let conn = self.connect(w, c);
            if let Role::Producer(p) = &mut self.clients[c] {
                p.conn = Some(conn);
            }
        }
        let Role::Producer(p) = &mut self.clients[c] else {
            return;
        };
        let Some(conn) = p.conn else { return };
        // An idempotent producer asks for its id first, once, and keeps it.
        let mut producer_id = None;
        if let Some(idem) = &mut p.idempotence {
            match idem.producer_id {
                Some(id) => producer_id = Some(id),
                None => {
                    if idem.asking.is_none() {
                        p.next_cid += 1;
                        idem.asking = Some(p.next_cid);
                        let req = InitProducerIdRequest::default()
                            .with_transactional_id(None)
                            .with_transaction_timeout_ms(60_000);
                        w.send(
                            conn,
                            codec::frame(ApiKey::InitProducerId, codec::INIT_PRODUCER_ID_VERSION, p.next_cid, &req),
                        );
                    }
                    return;
                }
            }
        }
        while p.in_flight.len() < in_flight_max {
            let Some(b) = p.queue.pop_front() else { break };
            p.next_cid += 1;
            let mut pd = produce_request::PartitionProduceData::default();
            pd.index = b.partition;
            pd.records = Some(match (producer_id, b.seq) {
                (Some((id, epoch)), Some(seq)) => {
                    codec::idempotent_batch_of(&b.values, 1_700_000_000_000, id, epoch, seq)
                }
                _ => codec::batch_of(&b.values, 1_700_000_000_000),
            });
            let mut td = produce_request::TopicProduceData::default();
            td.name = topic_name();
            td.partition_data = vec![pd];
            let mut req = ProduceRequest::default();
            req.acks = p.acks;
            req.timeout_ms = 30_000;
            req.topic_data = vec![td];
            w.send(conn, codec::frame(ApiKey::Produce, codec::PRODUCE_VERSION, p.next_cid, &req));
            if p.acks != 0 {
                p.in_flight.insert(p.next_cid, (b, now));
            }
        }
    }

    fn producer_disconnected(&mut self, w: &mut World, c: usize) {
        let Role::Producer(p) = &mut self.clients[c] else {
            return;
        };
        p.conn = None;
        if let Some(idem) = &mut p.idempotence {
            idem.asking = None;
        }
        // Unanswered requests may or may not have been written: send them again
        // (at-least-once), oldest first.
        let lost: Vec<Batch> = std::mem::take(&mut p.in_flight).into_values().map(|(b, _)| b).collect();
        for b in lost.into_iter().rev() {
            p.requeue(b);
        }
        w.set_timer(c, (c as u64) << 8 | T_RECONNECT, BACKOFF);
    }

    fn producer_response(&mut self, w: &mut World, c: usize, frame: Bytes) {
        let at = w.now();
        let asking = match &self.clients[c] {
            Role::Producer(p) => p.idempotence.as_ref().and_then(|i| i.asking),
            _ => None,
        };
        if asking.is_some() && asking == codec::correlation_id(&frame) {
            return self.producer_id_response(w, c, frame);
        }
        let resp: Result<(i32, ProduceResponse), String> =
            codec::decode(ApiKey::Produce, codec::PRODUCE_VERSION, frame);
        let (cid, resp) = match resp {
            Ok(r) => r,
            Err(e) => return self.checker.on_error(at, format!("producer {c}: undecodable produce response: {e}")),
        };
        let Role::Producer(p) = &mut self.clients[c] else {
            return;
        };
        let Some((b, _)) = p.in_flight.remove(&cid) else {
            return self.checker.on_error(at, format!("producer {c}: response to unknown request {cid}"));
        };
        let pr = resp.responses.first().and_then(|t| t.partition_responses.first());
        match pr {
            Some(pr) if pr.error_code == 0 => {
                let last = pr.base_offset + b.values.len() as i64 - 1;
                let e = p.acked_max.entry(b.partition).or_insert(-1);
                *e = (*e).max(last);
                self.checker.on_ack(at, c, b.partition, pr.base_offset, &b.values, b.floor);
            }
            // An idempotent producer keeps its id and sequences for its whole life, so the
            // broker has no reason to fence it or forget it.
            Some(pr) if b.seq.is_some() && matches!(pr.error_code, 47 | 59 | 90) => {
                let code = pr.error_code;
                p.requeue(b);
                self.checker.on_error(at, format!("idempotent producer {c}: produce refused with error {code}"));
            }
            // Retriable (for an idempotent producer, OUT_OF_ORDER_SEQUENCE_NUMBER too: an
            // earlier batch of the partition failed, and this one follows it again).
            _ => p.requeue(b),
        }
        self.producer_pump(w, c);
    }

    fn producer_id_response(&mut self, w: &mut World, c: usize, frame: Bytes) {
        let at = w.now();
        let resp =
            codec::decode::<InitProducerIdResponse>(ApiKey::InitProducerId, codec::INIT_PRODUCER_ID_VERSION, frame);
        let Role::Producer(p) = &mut self.clients[c] else { return };
        let Some(idem) = &mut p.idempotence else { return };
        idem.asking = None;
        match resp {
            Ok((_, r)) if r.error_code == 0 => {
                idem.producer_id = Some((r.producer_id.0, r.producer_epoch));
                self.checker.on_producer_id(at, c, r.producer_id.0);
                self.producer_pump(w, c);
            }
            // Not ready (the block of ids could not be recorded): ask again a little later.
            Ok(_) => w.set_timer(c, (c as u64) << 8 | T_RECONNECT, BACKOFF),
            Err(e) => self.checker.on_error(at, format!("producer {c}: undecodable InitProducerId response: {e}")),
        }
    }

    fn consumer_pump(&mut self, w: &mut World, c: usize) {
        if !self.topic_ready() {
            return;
        }
        let partitions = self.plan.partitions;
        let need_conn = matches!(&self.clients[c], Role::Consumer(k) if k.conn.is_none());
        if need_conn {
            let conn = self.connect(w, c);
            if let Role::Consumer(k) = &mut self.clients[c] {
                k.conn = Some(conn);
            }
        }
        let Role::Consumer(k) = &mut self.clients[c] else {
            return;
        };
        let Some(conn) = k.conn else { return };
        if k.in_flight.is_some() {
            return;
        }
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = topic_name();
        for p in 0..partitions {
            let mut fp = fetch_request::FetchPartition::default();
            fp.partition = p;
            fp.fetch_offset = *k.next.entry(p).or_insert(0);
            fp.partition_max_bytes = 64 * 1024;
            ft.partitions.push(fp);
        }
        let mut req = FetchRequest::default();
        req.replica_id = kafka_protocol::messages::BrokerId(-1);
        req.max_wait_ms = 50;
        req.min_bytes = 1;
        req.max_bytes = 1 << 20;
        req.session_epoch = -1;
        req.isolation_level = i8::from(k.read_committed);
        req.topics = vec![ft];
        k.next_cid += 1;
        k.in_flight = Some(k.next_cid);
        w.send(conn, codec::frame(ApiKey::Fetch, codec::FETCH_VERSION, k.next_cid, &req));
    }

    fn consumer_response(&mut self, w: &mut World, c: usize, frame: Bytes) {
        let at = w.now();
        let read_committed = matches!(&self.clients[c], Role::Consumer(k) if k.read_committed);
        let seen = match fetched_as(frame, read_committed) {
            Ok(s) => s,
            Err(e) => return self.checker.on_error(at, format!("consumer {c}: {e}")),
        };
        let Role::Consumer(k) = &mut self.clients[c] else {
            return;
        };
        k.in_flight = None;
        let mut stable: BTreeMap<i32, i64> = BTreeMap::new();
        for s in seen {
            match s {
                Err(e) => self.checker.on_error(at, format!("consumer {c}: {e}")),
                Ok((p, Seen::Bounds { last_stable }, hw)) => {
                    stable.insert(p, last_stable);
                    self.checker.on_high_watermark(at, c, p, hw);
                    if k.read_committed {
                        self.checker.on_last_stable(at, c, p, last_stable);
                    }
                }
                Ok((p, Seen::Skip { base, next: n }, _)) => {
                    let next = k.next.entry(p).or_insert(0);
                    if n <= *next {
                        continue;
                    }
                    if base > *next {
                        self.checker.on_gap(at, c, p, *next, base);
                    }
                    *next = n;
                }
                Ok((p, Seen::Record(o, v), hw)) => {
                    let next = k.next.entry(p).or_insert(0);
                    if o < *next {
                        continue; // a batch starting before the fetch offset
                    }
                    if o != *next {
                        self.checker.on_gap(at, c, p, *next, o);
                    }
                    *next = o + 1;
                    // read_committed must stay below the last stable offset: what is past it
                    // may belong to a transaction that aborts.
                    let bound = if k.read_committed { stable.get(&p).copied().unwrap_or(hw).min(hw) } else { hw };
                    self.checker.on_consume(at, c, p, o, &v, bound);
                    self.checker.on_read_in_order(at, c, p, o, &v);
                    if k.read_committed {
                        self.checker.on_committed_read(at, c, &v);
                    }
                }
            }
        }
        self.consumer_pump(w, c);
    }

    fn txn_pump(&mut self, w: &mut World, c: usize) {
        if !self.topic_ready() {
            return;
        }
        let (partitions, batch_max) = (self.plan.partitions, self.plan.batch_max);
        let now = w.now();
        let Role::TxnProducer(t) = &mut self.clients[c] else { return };
        // New transactions during the safety phase, up to as many values as a producer makes.
        let new_txns = now < self.plan.safety && t.made() < self.plan.values_per_producer;
        let mut opened = Vec::new();
        t.pump(w, &mut self.checker, partitions, batch_max, new_txns, &mut opened);
        for conn in opened {
            self.conn_owner.insert(conn, c);
        }
    }

    /// Asks for the transactional offsets group's committed offsets (one request at a time).
    fn watch_offsets(&mut self, w: &mut World, c: usize) {
        if !self.topic_ready() {
            return;
        }
        let Role::OffsetWatcher { conn, asking } = &mut self.clients[c] else { return };
        if *asking {
            return;
        }
        let conn = match *conn {
            Some(x) => x,
            None => {
                let x = w.connect(c, 0);
                *conn = Some(x);
                self.conn_owner.insert(x, c);
                x
            }
        };
        let Role::OffsetWatcher { asking, .. } = &mut self.clients[c] else { return };
        *asking = true;
        let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
        t.name = topic_name();
        t.partition_indexes = vec![0];
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(StrBytes::from_static_str(crate::txn::OFFSETS_GROUP));
        req.topics = Some(vec![t]);
        w.send(conn, codec::frame(ApiKey::OffsetFetch, 7, 1, &req));
    }

    fn member_pump(&mut self, w: &mut World, c: usize) {
        if !self.topic_ready() {
            return;
        }
        let Role::Member(m) = &mut self.clients[c] else { return };
        let mut opened = Vec::new();
        m.pump(w, &mut self.checker, &mut opened);
        for conn in opened {
            self.conn_owner.insert(conn, c);
        }
    }

    /// Member faults: a crash, a stall past the session timeout (or not quite), a clean leave.
    fn inject_member_faults(&mut self, w: &mut World) {
        let plan = self.plan.clone();
        if plan.group_members == 0 {
            return;
        }
        let first = self.clients.len() - plan.group_members;
        let roll =
            |w: &mut World, every: Option<Nanos>| every.is_some_and(|e| w.fault_rng().gen_range(0..e.max(1)) < 10 * MS);
        let pick = |w: &mut World| first + w.fault_rng().gen_range(0..plan.group_members);
        if roll(w, plan.member_crash_every) {
            let (c, down) = (pick(w), w.fault_rng().gen_range(MS..2_000 * MS));
            if let Role::Member(m) = &mut self.clients[c] {
                m.crash(w, &mut self.checker, down);
            }
        }
        if roll(w, plan.member_stall_every) {
            let (c, len) = (pick(w), w.fault_rng().gen_range(100 * MS..3_000 * MS));
            let until = w.now() + len;
            if let Role::Member(m) = &mut self.clients[c] {
                m.stall(until);
            }
        }
        if roll(w, plan.member_leave_every) {
            let (c, down) = (pick(w), w.fault_rng().gen_range(MS..1_000 * MS));
            if let Role::Member(m) = &mut self.clients[c] {
                m.leave(w, &mut self.checker, down);
            }
        }
    }

    fn inject_fault(&mut self, w: &mut World) {
        if w.now() >= self.plan.safety {
            if !self.healed {
                self.healed = true;
                w.heal();
                let now = w.now();
                for r in &mut self.clients {
                    match r {
                        Role::Member(m) => m.heal(now),
                        Role::TxnProducer(t) => t.heal(),
                        _ => {}
                    }
                }
            }
            return;
        }
        self.inject_member_faults(w);
        let plan = self.plan.clone();
        let roll =
            |w: &mut World, every: Option<Nanos>| every.is_some_and(|e| w.fault_rng().gen_range(0..e.max(1)) < 10 * MS);
        if plan.txn_producers > 0 && roll(w, plan.txn_stall_every) {
            let first = self.clients.len() - plan.txn_producers;
            let c = first + w.fault_rng().gen_range(0..plan.txn_producers);
            let until = w.now() + w.fault_rng().gen_range(1_500 * MS..3_000 * MS);
            if let Role::TxnProducer(t) = &mut self.clients[c] {
                t.stall(until);
            }
        }
        if roll(w, plan.crash_every) {
            let down = w.fault_rng().gen_range(MS..500 * MS);
            w.crash(0, down);
        }
        if roll(w, plan.stop_every) {
            let down = w.fault_rng().gen_range(MS..500 * MS);
            w.stop(0, down);
        }
        if roll(w, plan.clog_every) {
            let until = w.now() + w.fault_rng().gen_range(MS..1500 * MS);
            w.clog(0, until);
        }
        if roll(w, plan.disk_full_every) && w.is_up(0) {
            w.set_disk_full(0, true);
            let lift = w.fault_rng().gen_range(MS..300 * MS);
            w.set_timer(usize::MAX, T_FAULT_LIFT, lift);
        }
        if roll(w, plan.reset_every) {
            let conns = w.open_conns();
            if !conns.is_empty() {
                let i = w.fault_rng().gen_range(0..conns.len());
                w.reset(conns[i]);
            }
        }
        w.set_timer(usize::MAX, T_FAULT, 10 * MS);
    }

    /// Where the clients are, for liveness reports.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for (i, r) in self.clients.iter().enumerate() {
            out.push(match r {
                Role::Admin { done, .. } => format!("admin done={done}"),
                Role::Producer(p) => format!(
                    "producer {i}: {} queued, {} in flight, conn {:?}",
                    p.queue.len(),
                    p.in_flight.len(),
                    p.conn
                ),
                Role::Consumer(k) => format!("consumer {i}: next {:?}, conn {:?}", k.next, k.conn),
                Role::Member(m) => m.describe(),
                Role::TxnProducer(t) => t.describe(),
                Role::OffsetWatcher { conn, .. } => format!("offset watcher {i}: conn {conn:?}"),
                Role::Compactor(k) => k.describe(),
            });
        }
        let read: BTreeMap<i32, i64> = (0..self.plan.partitions).map(|p| (p, self.checker.group_read_to(p))).collect();
        format!(
            "{}; acked ends {:?}; group read to {read:?}, committed {:?}",
            out.join("; "),
            self.checker.acked_end(),
            self.checker.committed_max()
        )
    }

    /// True once everything was produced, acknowledged and read back.
    fn done(&self, now: Nanos) -> bool {
        if !self.topic_ready() || now < self.plan.safety {
            return false;
        }
        let produced = self.clients.iter().all(|r| match r {
            Role::Producer(p) => p.queue.is_empty() && p.in_flight.is_empty(),
            Role::TxnProducer(t) => t.is_idle(),
            Role::Compactor(k) => k.is_done(),
            _ => true,
        });
        let ends = self.checker.acked_end();
        let read = self.clients.iter().all(|r| match r {
            Role::Consumer(k) => ends.iter().all(|(p, e)| k.next.get(p).copied().unwrap_or(0) >= *e),
            _ => true,
        });
        produced && read && self.group_done(&ends)
    }

    /// The group has settled (every member consuming in one generation, every partition
    /// owned), read every acknowledged record and committed past it.
    fn group_done(&self, ends: &BTreeMap<i32, i64>) -> bool {
        let members: Vec<&dyn GroupMember> =
            self.clients.iter().filter_map(|r| if let Role::Member(m) = r { Some(m.as_ref()) } else { None }).collect();
        if members.is_empty() {
            return true;
        }
        let generation = members[0].generation();
        let mut owned: Vec<i32> = members.iter().flat_map(|m| m.assignment()).collect();
        owned.sort();
        let committed = self.checker.committed_max();
        members.iter().all(|m| m.is_settled() && m.generation() == generation)
            && owned == (0..self.plan.partitions).collect::<Vec<_>>()
            && ends
                .iter()
                .all(|(p, e)| self.checker.group_read_to(*p) >= *e && committed.get(p).is_some_and(|c| *c >= *e))
    }
}

impl Harness for Workload {
    fn on_response(&mut self, w: &mut World, conn: ConnId, frame: Bytes) {
        let Some(&c) = self.conn_owner.get(&conn) else {
            return;
        };
        match &mut self.clients[c] {
            Role::Admin { conn: ac, done } => {
                let at = w.now();
                match codec::decode::<CreateTopicsResponse>(ApiKey::CreateTopics, codec::CREATE_TOPICS_VERSION, frame) {
                    Ok((_, r)) if r.topics.first().is_some_and(|t| t.error_code == 0 || t.error_code == 36) => {
                        *done = true
                    }
                    Ok(_) => {}
                    Err(e) => self.checker.on_error(at, format!("admin: undecodable response: {e}")),
                }
                if let Some(old) = ac.take() {
                    w.close(old);
                }
            }
            Role::Producer(_) => self.producer_response(w, c, frame),
            Role::Consumer(_) => self.consumer_response(w, c, frame),
            Role::Member(m) => {
                m.on_response(w, &mut self.checker, self.plan.partitions, conn, frame);
                self.member_pump(w, c);
            }
            Role::TxnProducer(t) => {
                t.on_response(w, &mut self.checker, frame);
                self.txn_pump(w, c);
            }
            Role::Compactor(k) => {
                let at = w.now();
                for v in k.on_response(frame, at) {
                    self.checker.on_error(at, v);
                }
                // The final read goes on at once: a read slower than delete.retention.ms may
                // miss tombstones (Kafka's caveat), which the checker then has to allow.
                if k.reading() {
                    k.tick(w, true);
                }
            }
            Role::OffsetWatcher { asking, .. } => {
                *asking = false;
                let at = w.now();
                match codec::decode::<OffsetFetchResponse>(ApiKey::OffsetFetch, 7, frame) {
                    Ok((_, r)) => {
                        for p in r.topics.iter().flat_map(|t| &t.partitions).filter(|p| p.error_code == 0) {
                            self.checker.on_txn_offset_seen(at, p.committed_offset);
                        }
                    }
                    Err(e) => {
                        self.checker.on_error(at, format!("offset watcher: undecodable OffsetFetch response: {e}"))
                    }
                }
            }
        }
        if self.finished_at.is_none() && self.done(w.now()) {
            self.finished_at = Some(w.now());
        }
    }

    fn on_closed(&mut self, w: &mut World, conn: ConnId) {
        let Some(c) = self.conn_owner.remove(&conn) else {
            return;
        };
        match &mut self.clients[c] {
            Role::Admin { conn: ac, .. } => {
                if *ac == Some(conn) {
                    *ac = None;
                }
            }
            Role::Producer(p) => {
                if p.conn == Some(conn) {
                    self.producer_disconnected(w, c);
                }
            }
            Role::Consumer(k) => {
                if k.conn == Some(conn) {
                    k.conn = None;
                    k.in_flight = None;
                    w.set_timer(c, (c as u64) << 8 | T_RECONNECT, BACKOFF);
                }
            }
            Role::Member(m) => m.on_closed(w, &mut self.checker, conn),
            Role::TxnProducer(t) => t.on_closed(conn),
            Role::Compactor(k) => {
                if k.owns(conn) {
                    k.on_closed();
                }
            }
            Role::OffsetWatcher { conn: wc, asking } => {
                if *wc == Some(conn) {
                    *wc = None;
                    *asking = false;
                }
            }
        }
    }

    fn on_timer(&mut self, w: &mut World, client: usize, token: u64) {
        if client == usize::MAX {
            if token == T_FAULT_LIFT {
                return w.set_disk_full(0, false);
            }
            return self.inject_fault(w);
        }
        let kind = token & 0xff;
        match &self.clients[client] {
            Role::Admin { done, .. } => {
                if !*done {
                    self.admin_tick(w, client);
                    w.set_timer(client, token, 200 * MS);
                }
            }
            Role::Producer(_) => {
                if kind == T_TICK {
                    self.producer_tick(w, client);
                    w.set_timer(client, token, self.plan.produce_interval);
                } else {
                    self.producer_pump(w, client);
                }
            }
            Role::Consumer(_) => {
                self.consumer_pump(w, client);
                if kind == T_TICK {
                    w.set_timer(client, token, 20 * MS);
                }
            }
            Role::Member(_) => {
                self.member_pump(w, client);
                w.set_timer(client, token, 10 * MS);
            }
            Role::TxnProducer(_) => {
                self.txn_pump(w, client);
                w.set_timer(client, token, self.plan.produce_interval);
            }
            Role::OffsetWatcher { .. } => {
                self.watch_offsets(w, client);
                w.set_timer(client, token, 20 * MS);
            }
            Role::Compactor(_) => {
                let settled = w.now() >= self.plan.safety + 2_000 * MS;
                if matches!(&self.clients[client], Role::Compactor(k) if k.needs_conn()) {
                    let conn = self.connect(w, client);
                    if let Role::Compactor(k) = &mut self.clients[client] {
                        k.set_conn(conn);
                    }
                }
                if let Role::Compactor(k) = &mut self.clients[client] {
                    k.tick(w, settled);
                }
                w.set_timer(client, token, self.plan.produce_interval.max(5 * MS));
            }
        }
    }
}
