//! `sluice perf`: a load generator in the spirit of Kafka's producer-perf-test and
//! consumer-perf-test, on the same codec as the broker, cheap enough that the broker, not the
//! client, is what gets measured. Prints records/s, MB/s and latency percentiles.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What `sluice perf produce` and `sluice perf consume` take.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// The broker to start from (the partitions' leaders are found through it)
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "HOST:PORT")]
    bootstrap: String,
    /// The topic (produce creates it when missing)
    #[arg(long, default_value = "sluice-perf")]
    topic: String,
    /// Records to produce, or to consume at least (consume reads whole fetches)
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Value bytes per record
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Records per batch (one produce request each)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    batch_records: u32,
    /// Partitions of the topic, written round-robin
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Replicas of the topic when it is created
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i16).range(1..))]
    replication_factor: i16,
    /// -1 (all in-sync replicas), 1 (the leader) or 0 (no response)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    acks: i16,
    /// Produce requests in flight at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    in_flight: u32,
    /// Records per second to aim at (default: as fast as possible)
    #[arg(long, value_name = "RECORDS_PER_SEC")]
    rate: Option<f64>,
    /// fetch.max.bytes of each consumer fetch
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    fetch_max_bytes: i32,
    /// Produce as an idempotent producer (InitProducerId, a sequence number per batch)
    #[arg(long)]
    idempotent: bool,
    /// Produce in transactions of this many batches (a transactional producer, one
    /// transaction at a time, committed)
    #[arg(long = "transaction-batches", value_name = "BATCHES", value_parser = clap::value_parser!(u64).range(1..))]
    transactions: Option<u64>,
}

/// `sluice perf`'s two modes.
#[derive(clap::Subcommand, Debug)]
pub enum Mode {
    /// Produce records as fast as the broker takes them (or at --rate); prints records/s,
    /// MB/s and latency percentiles
    Produce(Opts),
    /// Read a topic from its start; prints records/s and MB/s
    Consume(Opts),
}

pub fn main(mode: Mode) -> Result<(), String> {
    // A report piped into `head` ends like any Unix tool's when the pipe closes, rather
    // than in a panic on the failed print (Rust ignores SIGPIPE by default).
    // SAFETY: restoring the default disposition of a signal; no handler runs Rust code.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    match mode {
        Mode::Produce(o) if o.transactions.is_some() => rt.block_on(produce_transactions(o)),
        Mode::Produce(o) => rt.block_on(produce(o)),
        Mode::Consume(o) => rt.block_on(consume(o)),
    }
}

/// An uncompressed v2 batch of `n` records of `size` value bytes each.
fn build_batch(n: usize, size: usize, timestamp: i64) -> Bytes {
    let value: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let values = vec![value; n];
    Bytes::from(sluice_core::log::batch::encode_values(&values, timestamp))
}

/// A run's records cut into requests of `--batch-records` each, the last holding what is left,
/// so a run writes exactly `--records`.
#[derive(Clone, Copy)]
struct Cut {
    per: u64,
    records: u64,
}

impl Cut {
    fn new(o: &Opts) -> Cut {
        Cut { per: u64::from(o.batch_records.max(1)), records: o.records }
    }

    fn requests(self) -> u64 {
        self.records.div_ceil(self.per)
    }

    /// Records in request `i`.
    fn count(self, i: u64) -> u64 {
        self.per.min(self.records.saturating_sub(i * self.per))
    }

    /// Records in the first `n` requests.
    fn done(self, n: u64) -> u64 {
        (n * self.per).min(self.records)
    }

    /// The batch for each request size: the full one, and the last request's when shorter.
    fn batches(self, size: usize, timestamp: i64) -> (Bytes, Bytes) {
        let full = build_batch(self.per as usize, size, timestamp);
        let last = self.requests().checked_sub(1).map_or(self.per, |i| self.count(i));
        let last = if last == self.per { full.clone() } else { build_batch(last as usize, size, timestamp) };
        (full, last)
    }

    fn batch<'a>(self, i: u64, (full, last): &'a (Bytes, Bytes)) -> &'a Bytes {
        if self.count(i) == self.per {
            full
        } else {
            last
        }
    }
}

fn frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Result<Bytes, String> {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("sluice-perf"));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, key.request_header_version(version)).map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin)) -> Result<Bytes, String> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await.map_err(|e| format!("read: {e}"))?;
    let len = usize::try_from(i32::from_be_bytes(len)).map_err(|_| "negative response size")?;
    let mut buf = BytesMut::zeroed(len);
    rd.read_exact(&mut buf).await.map_err(|e| format!("read: {e}"))?;
    Ok(buf.freeze())
}

/// Sends one request and reads its response body (after the response header).
async fn call<T: Encodable, R: Decodable>(s: &mut TcpStream, key: ApiKey, version: i16, body: &T) -> Result<R, String> {
    s.write_all(&frame(key, version, 1, body)?).await.map_err(|e| e.to_string())?;
    let mut resp = read_frame(s).await?;
    resp.advance(4);
    if key.response_header_version(version) >= 1 {
        resp.advance(1);
    }
    R::decode(&mut resp, version).map_err(|e| e.to_string())
}

/// A transactional producer: InitProducerId, then one transaction after another, each
/// AddPartitionsToTxn, `--transaction-batches` produce requests (one batch each, acks=all),
/// EndTxn(commit). Prints transactions/s and records/s, and latency per transaction.
async fn produce_transactions(o: Opts) -> Result<(), String> {
    let per_txn = o.transactions.unwrap_or(1);
    let mut s = TcpStream::connect(&o.bootstrap).await.map_err(|e| format!("{}: {e}", o.bootstrap))?;
    s.set_nodelay(true).ok();
    ensure_topic(&mut s, &o.topic, o.partitions, o.replication_factor).await?;
    let txn_id = TransactionalId(StrBytes::from_string(format!("sluice-perf-{}", std::process::id())));
    let (pid, epoch) = loop {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(txn_id.clone()))
            .with_transaction_timeout_ms(60_000);
        let r: InitProducerIdResponse = call(&mut s, ApiKey::InitProducerId, 4, &req).await?;
        match r.error_code {
            0 => break (r.producer_id, r.producer_epoch),
            14 | 51 => tokio::time::sleep(Duration::from_millis(20)).await,
            e => return Err(format!("InitProducerId failed with error {e}")),
        }
    };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let cut = Cut::new(&o);
    let batches = cut.batches(o.record_size, now_ms);
    let topic = TopicName(StrBytes::from_string(o.topic.clone()));
    let requests = cut.requests();
    let txns = requests.div_ceil(per_txn);
    let mut next_seq = vec![0i32; o.partitions as usize];
    let mut latencies = Latencies::new();
    let mut progress = Progress::new("produce", o.records);
    let mut sent = 0u64;
    let start = Instant::now();
    for t in 0..txns {
        let began = Instant::now();
        let partition = (t % o.partitions as u64) as i32;
        let mut add = AddPartitionsToTxnRequest::default();
        add.v3_and_below_transactional_id = txn_id.clone();
        add.v3_and_below_producer_id = pid;
        add.v3_and_below_producer_epoch = epoch;
        let mut at = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
        at.name = topic.clone();
        at.partitions = vec![partition];
        add.v3_and_below_topics = vec![at];
        let r: AddPartitionsToTxnResponse = call(&mut s, ApiKey::AddPartitionsToTxn, 3, &add).await?;
        if let Some(e) = r
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| &t.results_by_partition)
            .find(|p| p.partition_error_code != 0)
        {
            return Err(format!("AddPartitionsToTxn failed with error {}", e.partition_error_code));
        }
        for _ in 0..per_txn.min(requests - sent) {
            let mut batch = cut.batch(sent, &batches).to_vec();
            batch[21..23].copy_from_slice(&0x10i16.to_be_bytes()); // transactional
            let seq = &mut next_seq[partition as usize];
            sluice_core::log::batch::set_producer(&mut batch, pid.0, epoch, *seq);
            *seq = seq.wrapping_add(cut.count(sent) as i32);
            let mut pd = PartitionProduceData::default();
            pd.index = partition;
            pd.records = Some(Bytes::from(batch));
            let mut td = TopicProduceData::default();
            td.name = topic.clone();
            td.partition_data = vec![pd];
            let mut req = ProduceRequest::default();
            req.transactional_id = Some(txn_id.clone());
            req.acks = -1;
            req.timeout_ms = 30_000;
            req.topic_data = vec![td];
            let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &req).await?;
            if let Some(p) = r.responses.iter().flat_map(|t| &t.partition_responses).find(|p| p.error_code != 0) {
                return Err(format!("transactional produce failed with error {}", p.error_code));
            }
            sent += 1;
        }
        let mut end = EndTxnRequest::default();
        end.transactional_id = txn_id.clone();
        end.producer_id = pid;
        end.producer_epoch = epoch;
        end.committed = true;
        let r: EndTxnResponse = call(&mut s, ApiKey::EndTxn, 3, &end).await?;
        if r.error_code != 0 {
            return Err(format!("EndTxn failed with error {}", r.error_code));
        }
        latencies.record(began.elapsed());
        progress.tick(cut.done(sent));
    }
    let secs = start.elapsed().as_secs_f64();
    let records = cut.done(sent);
    println!(
        "produce: {records} records of {} bytes in {txns} transactions of {} records, {secs:.2} s: {:.0} transactions/s, {:.0} records/s, {:.1} MB/s (values)",
        o.record_size,
        per_txn * u64::from(o.batch_records),
        txns as f64 / secs,
        records as f64 / secs,
        records as f64 * o.record_size as f64 / 1e6 / secs
    );
    println!(
        "transaction latency (ms): p50 {:.2} p99 {:.2} max {:.2}",
        latencies.ms(0.5),
        latencies.ms(0.99),
        latencies.ms(1.0)
    );
    Ok(())
}

/// Asks for a producer id, as an idempotent client does first.
async fn init_producer_id(s: &mut TcpStream) -> Result<i64, String> {
    let req = InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
    let r: InitProducerIdResponse = call(s, ApiKey::InitProducerId, 4, &req).await?;
    if r.error_code != 0 {
        return Err(format!("InitProducerId failed with error {}", r.error_code));
    }
    Ok(r.producer_id.0)
}

async fn ensure_topic(s: &mut TcpStream, topic: &str, partitions: i32, rf: i16) -> Result<(), String> {
    let mut t = CreatableTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.num_partitions = partitions;
    t.replication_factor = rf;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 30_000;
    let resp: CreateTopicsResponse = call(s, ApiKey::CreateTopics, 5, &req).await?;
    match resp.topics.first().map(|t| t.error_code) {
        Some(0) | Some(36) => Ok(()),
        other => Err(format!("creating topic {topic}: error {other:?}")),
    }
}

/// Latencies in an HDR histogram (microseconds, 3 significant digits, up to an hour).
struct Latencies(hdrhistogram::Histogram<u64>);

impl Latencies {
    fn new() -> Latencies {
        Latencies(hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
    }

    fn record(&mut self, d: Duration) {
        self.0.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The latency at quantile `q`, in milliseconds.
    fn ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Prints a line of progress to stderr every few seconds of a long run.
struct Progress {
    what: &'static str,
    total: u64,
    start: Instant,
    last: Instant,
    done_at_last: u64,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(5);

    fn new(what: &'static str, total: u64) -> Progress {
        let now = Instant::now();
        Progress { what, total, start: now, last: now, done_at_last: 0 }
    }

    fn tick(&mut self, done: u64) {
        if self.last.elapsed() < Self::EVERY {
            return;
        }
        let rate = (done - self.done_at_last) as f64 / self.last.elapsed().as_secs_f64();
        eprintln!(
            "{}: {done}/{} records after {:.0} s, {rate:.0} records/s over the last {:.0} s",
            self.what,
            self.total,
            self.start.elapsed().as_secs_f64(),
            self.last.elapsed().as_secs_f64()
        );
        self.last = Instant::now();
        self.done_at_last = done;
    }
}

/// Connects to the broker leading partition 0 of the topic (asking the bootstrap broker's
/// Metadata until every partition has a leader), and returns the partitions it leads: on a
/// cluster, the load goes to one leader, and to the partitions that one leads.
async fn connect_to_leader(o: &Opts) -> Result<(TcpStream, Vec<i32>), String> {
    let mut s = TcpStream::connect(&o.bootstrap).await.map_err(|e| format!("{}: {e}", o.bootstrap))?;
    s.set_nodelay(true).ok();
    // Topics are created by the active controller.
    let r: MetadataResponse = call(&mut s, ApiKey::Metadata, 9, &MetadataRequest::default()).await?;
    let controller = r.brokers.iter().find(|b| b.node_id == r.controller_id).map(|b| format!("{}:{}", b.host, b.port));
    match controller {
        Some(addr) => {
            let mut c = TcpStream::connect(&addr).await.map_err(|e| format!("{addr}: {e}"))?;
            ensure_topic(&mut c, &o.topic, o.partitions, o.replication_factor).await?;
        }
        None => ensure_topic(&mut s, &o.topic, o.partitions, o.replication_factor).await?,
    }
    for _ in 0..100 {
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(TopicName(StrBytes::from_string(o.topic.clone())));
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![t]);
        let r: MetadataResponse = call(&mut s, ApiKey::Metadata, 9, &req).await?;
        let parts = r.topics.first().map(|t| t.partitions.clone()).unwrap_or_default();
        if parts.len() == o.partitions as usize && parts.iter().all(|p| p.leader_id.0 >= 0) {
            let leader = parts.iter().find(|p| p.partition_index == 0).map_or(-1, |p| p.leader_id.0);
            let mine: Vec<i32> = parts.iter().filter(|p| p.leader_id.0 == leader).map(|p| p.partition_index).collect();
            let b = r.brokers.iter().find(|b| b.node_id.0 == leader).ok_or("the leader is not in Metadata")?;
            let addr = format!("{}:{}", b.host, b.port);
            let s = TcpStream::connect(&addr).await.map_err(|e| format!("{addr}: {e}"))?;
            s.set_nodelay(true).ok();
            if mine.len() < o.partitions as usize {
                eprintln!("broker {leader} ({addr}) leads partitions {mine:?}: the load goes to those");
            }
            return Ok((s, mine));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the topic's partitions have no leaders".into())
}

async fn produce(o: Opts) -> Result<(), String> {
    let (mut s, mine) = connect_to_leader(&o).await?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let cut = Cut::new(&o);
    let batches = cut.batches(o.record_size, now_ms);
    let requests = cut.requests();
    // An idempotent producer's batches each carry their own sequence number, so they are
    // stamped (and their CRCs computed) before the clock starts: the client's copies must not
    // be what is measured.
    let stamped = if o.idempotent {
        let producer_id = init_producer_id(&mut s).await?;
        let bytes = requests.saturating_mul(batches.0.len() as u64);
        if bytes > 2 << 30 {
            return Err(format!(
                "--idempotent stamps every batch up front: {bytes} bytes is too many; use fewer records"
            ));
        }
        let mut next_seq = vec![0i32; o.partitions as usize];
        let mut out = Vec::with_capacity(requests as usize);
        for i in 0..requests {
            let p = mine[(i % mine.len() as u64) as usize] as usize;
            let mut b = cut.batch(i, &batches).to_vec();
            sluice_core::log::batch::set_producer(&mut b, producer_id, 0, next_seq[p]);
            next_seq[p] = next_seq[p].wrapping_add(cut.count(i) as i32);
            out.push(Bytes::from(b));
        }
        Some(out)
    } else {
        None
    };
    let (mut rd, mut wr) = s.into_split();
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(i32, Instant)>(o.in_flight as usize);
    // At most `--in-flight` requests unanswered: the writer takes a permit per request, the
    // reader gives one back per response.
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(o.in_flight as usize));
    let acks = o.acks;
    let writer = {
        let topic = o.topic.clone();
        let rate = o.rate;
        let per_req = f64::from(o.batch_records);
        let mine = mine.clone();
        let permits = permits.clone();
        tokio::spawn(async move {
            for i in 0..requests {
                if acks != 0 {
                    permits.acquire().await.map_err(|e| e.to_string())?.forget();
                }
                if let Some(r) = rate {
                    let due = start + Duration::from_secs_f64(i as f64 * per_req / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                let mut pd = PartitionProduceData::default();
                pd.index = mine[(i % mine.len() as u64) as usize];
                pd.records = Some(match &stamped {
                    Some(all) => all[i as usize].clone(),
                    None => cut.batch(i, &batches).clone(),
                });
                let mut td = TopicProduceData::default();
                td.name = TopicName(StrBytes::from_string(topic.clone()));
                td.partition_data = vec![pd];
                let mut req = ProduceRequest::default();
                req.acks = acks;
                req.timeout_ms = 30_000;
                req.topic_data = vec![td];
                let id = i as i32;
                let f = frame(ApiKey::Produce, 9, id, &req)?;
                if acks != 0 && tx.send((id, Instant::now())).await.is_err() {
                    return Err("reader stopped".to_string());
                }
                wr.write_all(&f).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(wr)
        })
    };
    let mut latencies = Latencies::new();
    let mut progress = Progress::new("produce", o.records);
    let mut errors = 0u64;
    if acks != 0 {
        let mut sent: HashMap<i32, Instant> = HashMap::new();
        for answered in 0..requests {
            progress.tick(cut.done(answered));
            let mut resp = read_frame(&mut rd).await?;
            let cid = resp.get_i32();
            resp.advance(1);
            while let Ok((id, t)) = rx.try_recv() {
                sent.insert(id, t);
            }
            if !sent.contains_key(&cid) {
                if let Some((id, t)) = rx.recv().await {
                    sent.insert(id, t);
                }
            }
            let t = sent.remove(&cid).ok_or("response for an unknown request")?;
            latencies.record(t.elapsed());
            permits.add_permits(1);
            let r = ProduceResponse::decode(&mut resp, 9).map_err(|e| e.to_string())?;
            errors +=
                r.responses.iter().flat_map(|t| &t.partition_responses).filter(|p| p.error_code != 0).count() as u64;
        }
    }
    let _wr = writer.await.map_err(|e| e.to_string())??;
    let secs = start.elapsed().as_secs_f64();
    let records = o.records;
    let mb = records as f64 * o.record_size as f64 / 1e6;
    println!(
        "produce: {records} records of {} bytes in {secs:.2} s: {:.0} records/s, {:.1} MB/s (values), acks={} batch={} in-flight={}{} errors={errors}",
        o.record_size,
        records as f64 / secs,
        mb / secs,
        o.acks,
        o.batch_records,
        o.in_flight,
        if o.idempotent { " idempotent" } else { "" }
    );
    if !latencies.is_empty() {
        println!(
            "produce latency per request (ms): p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            latencies.ms(0.5),
            latencies.ms(0.99),
            latencies.ms(0.999),
            latencies.ms(1.0)
        );
    }
    if errors > 0 {
        return Err(format!("{errors} partition errors"));
    }
    Ok(())
}

/// The records in a fetched partition's whole batches, and the offset after the last batch.
fn count_records(mut recs: Bytes, next: &mut i64) -> u64 {
    let mut got = 0;
    while recs.len() >= 61 {
        let base = i64::from_be_bytes(recs[0..8].try_into().expect("8"));
        let len = i32::from_be_bytes(recs[8..12].try_into().expect("4")) as usize + 12;
        if len > recs.len() {
            break;
        }
        let count = i32::from_be_bytes(recs[57..61].try_into().expect("4")) as u64;
        let last_delta = i32::from_be_bytes(recs[23..27].try_into().expect("4")) as i64;
        let attributes = i16::from_be_bytes(recs[21..23].try_into().expect("2"));
        *next = base + last_delta + 1;
        // A control batch (a transaction's marker) holds no records of the topic.
        if attributes & 0x20 == 0 {
            got += count;
        }
        recs.advance(len);
    }
    got
}

async fn consume(o: Opts) -> Result<(), String> {
    let mut s = TcpStream::connect(&o.bootstrap).await.map_err(|e| format!("{}: {e}", o.bootstrap))?;
    s.set_nodelay(true).ok();
    let mut offsets: Vec<i64> = vec![0; o.partitions as usize];
    let start = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut idle = 0;
    let mut progress = Progress::new("consume", o.records);
    while records < o.records {
        progress.tick(records);
        let mut ft = FetchTopic::default();
        ft.topic = TopicName(StrBytes::from_string(o.topic.clone()));
        ft.partitions = (0..o.partitions)
            .map(|p| {
                let mut fp = FetchPartition::default();
                fp.partition = p;
                fp.fetch_offset = offsets[p as usize];
                fp.partition_max_bytes = o.fetch_max_bytes;
                fp
            })
            .collect();
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = 500;
        req.min_bytes = 1;
        req.max_bytes = o.fetch_max_bytes;
        req.session_epoch = -1;
        req.topics = vec![ft];
        let resp: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &req).await?;
        let mut got = 0u64;
        for t in &resp.responses {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(format!("fetch partition {}: error {}", p.partition_index, p.error_code));
                }
                let Some(recs) = p.records.clone() else {
                    continue;
                };
                bytes += recs.len() as u64;
                got += count_records(recs, &mut offsets[p.partition_index as usize]);
            }
        }
        records += got;
        idle = if got == 0 { idle + 1 } else { 0 };
        if idle > 10 {
            return Err(format!("no new records after {records}; is the topic filled?"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "consume: {records} records, {:.1} MB in {secs:.2} s: {:.0} records/s, {:.1} MB/s (batches on the wire)",
        bytes as f64 / 1e6,
        records as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
