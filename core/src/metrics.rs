//! What the node counts and times for its metrics endpoint. Sans-IO: plain numbers the node
//! updates as it works (records and bytes per topic, requests and their latency per API,
//! syncs and their latency), and gauges read off the node's state when a snapshot is taken
//! (`Node::metrics`). The runtime serves a snapshot in Prometheus' text format.
//!
//! The names are those the Prometheus JMX exporter's standard Kafka rules give Kafka's MBeans
//! (names lowercased; `...PerSec` meters become `_total` counters; percentiles become a gauge
//! with a `quantile` label and a `_count`), so dashboards and alerts written for Kafka find
//! them: `kafka_server_brokertopicmetrics_messagesin_total{topic}`,
//! `kafka_network_requestmetrics_totaltimems{request,quantile}`,
//! `kafka_server_replicamanager_underreplicatedpartitions`, `kafka_log_log_size{topic,partition}`.
//! Consumer lag uses kafka_exporter's `kafka_consumergroup_lag`, as Burrow-less setups do.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::types::{ConnId, Instant};

/// Whether a family only grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric family of a snapshot: its exposition name (a counter's ends in `_total`), help
/// text, kind, and samples (labels, value).
#[derive(Clone, Debug)]
pub struct Family {
    pub name: String,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    pub fn new(name: &str, help: &'static str, kind: Kind) -> Family {
        Family { name: name.to_string(), help, kind, samples: Vec::new() }
    }

    pub fn one(name: &str, help: &'static str, kind: Kind, value: f64) -> Family {
        let mut f = Family::new(name, help, kind);
        f.samples.push((Vec::new(), value));
        f
    }
}

/// The percentiles Kafka's histograms report, as the JMX exporter labels them.
const QUANTILES: &[(&str, f64)] =
    &[("0.50", 0.50), ("0.75", 0.75), ("0.95", 0.95), ("0.98", 0.98), ("0.99", 0.99), ("0.999", 0.999)];

/// Latencies are kept for the last one to two minutes (two windows of a minute), as Kafka's
/// histograms weigh recent samples: a quantile describes the broker now, not since start.
const WINDOW_NS: u64 = 60_000_000_000;

/// Latencies in microseconds, up to an hour, 2 significant digits.
struct Timing {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    window_start: Instant,
    count: u64,
}

impl Timing {
    fn new(now: Instant) -> Timing {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds");
        Timing { current: h(), previous: h(), window_start: now, count: 0 }
    }

    fn record(&mut self, now: Instant, micros: u64) {
        if now.0.saturating_sub(self.window_start.0) >= WINDOW_NS {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.reset();
            self.window_start = now;
        }
        self.current.saturating_record(micros.max(1));
        self.count += 1;
    }

    /// Each quantile in milliseconds over both windows.
    fn quantiles_ms(&self) -> Vec<(&'static str, f64)> {
        let mut both = self.current.clone();
        let _ = both.add(&self.previous);
        QUANTILES.iter().map(|(label, q)| (*label, both.value_at_quantile(*q) as f64 / 1000.0)).collect()
    }
}

/// One topic's counters (Kafka's BrokerTopicMetrics).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct TopicCounters {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub produce_requests: u64,
    pub failed_produce_requests: u64,
    pub fetch_requests: u64,
    pub failed_fetch_requests: u64,
}

/// The node's counters and timings.
pub struct Metrics {
    topics: BTreeMap<String, TopicCounters>,
    /// Requests by API key and version.
    requests: BTreeMap<(i16, i16), u64>,
    /// Time from a request's arrival to its response being queued, by API key.
    request_time: BTreeMap<i16, Timing>,
    /// Requests being handled: their API key and arrival.
    in_flight: BTreeMap<(ConnId, u64), (i16, Instant)>,
    syncs: Timing,
    syncs_started: BTreeMap<u64, Instant>,
    started: Instant,
}

impl Metrics {
    pub fn new(now: Instant) -> Metrics {
        Metrics {
            topics: BTreeMap::new(),
            requests: BTreeMap::new(),
            request_time: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            syncs: Timing::new(now),
            syncs_started: BTreeMap::new(),
            started: now,
        }
    }

    /// The counters of a topic, created at its first use.
    pub fn topic(&mut self, name: &str) -> &mut TopicCounters {
        if !self.topics.contains_key(name) {
            self.topics.insert(name.to_string(), TopicCounters::default());
        }
        self.topics.get_mut(name).expect("inserted")
    }

    pub fn topic_counters(&self, name: &str) -> Option<TopicCounters> {
        self.topics.get(name).copied()
    }

    /// A deleted topic's counters go with it (Kafka removes its MBeans).
    pub fn forget_topic(&mut self, name: &str) {
        self.topics.remove(name);
    }

    pub fn request_started(&mut self, conn: ConnId, seq: u64, api_key: i16, version: i16, now: Instant) {
        *self.requests.entry((api_key, version)).or_default() += 1;
        self.in_flight.insert((conn, seq), (api_key, now));
    }

    pub fn request_answered(&mut self, conn: ConnId, seq: u64, now: Instant) {
        if let Some((key, at)) = self.in_flight.remove(&(conn, seq)) {
            let started = self.started;
            let t = self.request_time.entry(key).or_insert_with(|| Timing::new(started));
            t.record(now, now.0.saturating_sub(at.0) / 1000);
        }
    }

    pub fn connection_closed(&mut self, conn: ConnId) {
        self.in_flight.retain(|(c, _), _| *c != conn);
    }

    pub fn sync_started(&mut self, op: u64, now: Instant) {
        self.syncs_started.insert(op, now);
    }

    pub fn sync_done(&mut self, op: u64, now: Instant) {
        if let Some(at) = self.syncs_started.remove(&op) {
            self.syncs.record(now, now.0.saturating_sub(at.0) / 1000);
        }
    }

    /// The counted families (the node adds its gauges).
    pub fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        let topic_families: [(&str, &'static str, fn(&TopicCounters) -> u64); 7] = [
            ("messagesin", "Records appended by producers", |c| c.messages_in),
            ("bytesin", "Record batch bytes appended by producers", |c| c.bytes_in),
            ("bytesout", "Record batch bytes sent to consumers", |c| c.bytes_out),
            ("totalproducerequests", "Produce requests, per partition", |c| c.produce_requests),
            ("failedproducerequests", "Produce requests refused, per partition", |c| c.failed_produce_requests),
            ("totalfetchrequests", "Fetch requests, per partition", |c| c.fetch_requests),
            ("failedfetchrequests", "Fetch requests refused, per partition", |c| c.failed_fetch_requests),
        ];
        for (name, help, get) in topic_families {
            let mut f = Family::new(&format!("kafka_server_brokertopicmetrics_{name}_total"), help, Kind::Counter);
            let total: u64 = self.topics.values().map(get).sum();
            f.samples.push((Vec::new(), total as f64));
            for (topic, c) in &self.topics {
                f.samples.push((vec![("topic", topic.clone())], get(c) as f64));
            }
            out.push(f);
        }
        let mut requests =
            Family::new("kafka_network_requestmetrics_requests_total", "Requests received", Kind::Counter);
        for ((key, version), n) in &self.requests {
            requests.samples.push((vec![("request", api_name(*key)), ("version", version.to_string())], *n as f64));
        }
        out.push(requests);
        let mut time = Family::new(
            "kafka_network_requestmetrics_totaltimems",
            "Time from a request's arrival to its response, in ms (last 1-2 minutes)",
            Kind::Gauge,
        );
        // A `_count` beside the quantiles, as the JMX exporter names it (a gauge: the OpenMetrics
        // encoder would name a counter `..._count_total`).
        let mut count = Family::new("kafka_network_requestmetrics_totaltimems_count", "Requests answered", Kind::Gauge);
        for (key, t) in &self.request_time {
            for (q, v) in t.quantiles_ms() {
                time.samples.push((vec![("request", api_name(*key)), ("quantile", q.to_string())], v));
            }
            count.samples.push((vec![("request", api_name(*key))], t.count as f64));
        }
        out.push(time);
        out.push(count);
        let mut flush = Family::new(
            "kafka_log_logflushstats_logflushrateandtimems",
            "Time of a data sync (fdatasync), in ms (last 1-2 minutes)",
            Kind::Gauge,
        );
        if self.syncs.count > 0 {
            for (q, v) in self.syncs.quantiles_ms() {
                flush.samples.push((vec![("quantile", q.to_string())], v));
            }
        }
        out.push(flush);
        out.push(Family::one(
            "kafka_log_logflushstats_logflushrateandtimems_count",
            "Data syncs completed",
            Kind::Gauge,
            self.syncs.count as f64,
        ));
        out
    }
}

/// Kafka's name of a request type (its `request` tag).
fn api_name(key: i16) -> String {
    match kafka_protocol::messages::ApiKey::try_from(key) {
        Ok(k) => format!("{k:?}"),
        Err(_) => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles() {
        let mut m = Metrics::new(Instant(0));
        m.topic("a").messages_in += 3;
        m.topic("b").messages_in += 4;
        for i in 0..100u64 {
            m.request_started(ConnId(1), i, 0, 9, Instant(i * 1_000_000));
            m.request_answered(ConnId(1), i, Instant(i * 1_000_000 + (i + 1) * 1_000_000));
        }
        m.request_started(ConnId(2), 0, 1, 12, Instant(0));
        m.connection_closed(ConnId(2));
        let fams = m.families();
        let get = |name: &str| fams.iter().find(|f| f.name == name).unwrap().clone();
        let msgs = get("kafka_server_brokertopicmetrics_messagesin_total");
        assert_eq!(msgs.samples[0], (vec![], 7.0), "the unlabelled sample is the sum");
        assert_eq!(msgs.samples[2], (vec![("topic", "b".to_string())], 4.0));
        let reqs = get("kafka_network_requestmetrics_requests_total");
        assert_eq!(reqs.samples.len(), 2);
        assert_eq!(reqs.samples[0].0, vec![("request", "Produce".to_string()), ("version", "9".to_string())]);
        let time = get("kafka_network_requestmetrics_totaltimems");
        let p50 = time.samples.iter().find(|(l, _)| l[1].1 == "0.50").unwrap().1;
        let p99 = time.samples.iter().find(|(l, _)| l[1].1 == "0.99").unwrap().1;
        assert!((49.0..=51.5).contains(&p50), "latencies 1..100 ms: p50 {p50}");
        assert!((98.0..=100.5).contains(&p99), "p99 {p99}");
        let count = get("kafka_network_requestmetrics_totaltimems_count");
        assert_eq!(
            count.samples,
            vec![(vec![("request", "Produce".to_string())], 100.0)],
            "the closed one is not timed"
        );
    }

    #[test]
    fn latencies_age_out_after_two_windows() {
        let mut m = Metrics::new(Instant(0));
        m.sync_started(1, Instant(0));
        m.sync_done(1, Instant(500_000_000)); // 500 ms, at t=0.5 s
        for (i, t) in [(2u64, 61u64), (3, 122)] {
            m.sync_started(i, Instant(t * 1_000_000_000));
            m.sync_done(i, Instant(t * 1_000_000_000 + 1_000_000)); // 1 ms
        }
        let fams = m.families();
        let flush = fams.iter().find(|f| f.name == "kafka_log_logflushstats_logflushrateandtimems").unwrap();
        assert!(flush.samples.iter().all(|(_, v)| *v < 2.0), "the 500 ms sync has aged out: {:?}", flush.samples);
        let count = fams.iter().find(|f| f.name == "kafka_log_logflushstats_logflushrateandtimems_count").unwrap();
        assert_eq!(count.samples[0].1, 3.0, "the count is since start");
    }
}
