//! The cluster metadata: brokers (their endpoints, epochs, fencing), topics (ids, configs,
//! each partition's replicas) and producer id blocks. Every change is a record in the metadata
//! quorum's log; every node applies the committed records in log order to its
//! [`MetadataImage`], so all nodes share one view.
//!
//! Records are postcard-encoded, so a variant is never changed or removed: a new shape is a
//! new variant at the end (`TopicCreated` became `TopicPlaced` when partitions got replicas).
//! Data directories made before the quorum keep their records in `metadata.log`, framed
//! `len u32 | crc32c u32 | postcard(MetaRecord)`, big-endian.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const META_DIR: &str = ".sluice-meta";
pub const META_LOG: &str = ".sluice-meta/metadata.log";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRecord {
    TopicCreated {
        name: String,
        id: [u8; 16],
        partitions: i32,
        configs: Vec<(String, String)>,
    },
    PartitionsCreated {
        name: String,
        id: [u8; 16],
        total: i32,
    },
    TopicDeleted {
        name: String,
        id: [u8; 16],
    },
    /// Producer ids below `end` may be handed out (a block was taken).
    ProducerIdsBlock {
        end: i64,
    },
    /// A topic and where each partition's replicas are (the first is its preferred leader).
    TopicPlaced {
        name: String,
        id: [u8; 16],
        configs: Vec<(String, String)>,
        replicas: Vec<Vec<i32>>,
    },
    /// Partitions added to a topic that had `from`, with their replicas.
    PartitionsPlaced {
        name: String,
        id: [u8; 16],
        from: i32,
        replicas: Vec<Vec<i32>>,
    },
    /// A broker (re)registered: its epoch is this record's offset. It starts fenced.
    BrokerRegistered {
        id: i32,
        incarnation: u64,
        host: String,
        port: i32,
        rack: Option<String>,
    },
    /// The controller stopped hearing from the broker (or it is shutting down).
    BrokerFenced {
        id: i32,
        epoch: i64,
    },
    /// The broker heartbeats and has caught up the metadata log: it may lead partitions.
    BrokerUnfenced {
        id: i32,
        epoch: i64,
    },
}

/// One topic as the metadata log says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicImage {
    pub id: [u8; 16],
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
    /// Each partition's replicas. Empty for a partition created before placement existed
    /// (a cluster of one): its replica is that node.
    pub replicas: Vec<Vec<i32>>,
}

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerImage {
    /// The offset of its registration record: heartbeats carry it, so a stale one is known.
    pub epoch: i64,
    pub incarnation: u64,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    pub fenced: bool,
}

/// The state the metadata log builds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    pub topics: BTreeMap<String, TopicImage>,
    pub brokers: BTreeMap<i32, BrokerImage>,
    /// End of the last block of producer ids taken: new ids start here.
    pub producer_ids_end: i64,
}

impl MetadataImage {
    /// Applies the record at `offset` of the metadata log. Returns false when it changes
    /// nothing (a topic that exists already, partitions added to an older count, a broker
    /// epoch that is not current): every node ignores such a record alike.
    pub fn apply(&mut self, offset: i64, rec: &MetaRecord) -> bool {
        match rec {
            MetaRecord::TopicCreated { name, id, partitions, configs } => {
                self.place_topic(name, *id, configs, vec![Vec::new(); usize::try_from(*partitions).unwrap_or(0)])
            }
            MetaRecord::TopicPlaced { name, id, configs, replicas } => {
                self.place_topic(name, *id, configs, replicas.clone())
            }
            MetaRecord::PartitionsCreated { name, id, total } => {
                let Some(t) = self.topics.get_mut(name).filter(|t| t.id == *id && t.partitions < *total) else {
                    return false;
                };
                t.replicas.resize(usize::try_from(*total).unwrap_or(0), Vec::new());
                t.partitions = *total;
                true
            }
            MetaRecord::PartitionsPlaced { name, id, from, replicas } => {
                let Some(t) = self.topics.get_mut(name).filter(|t| t.id == *id && t.partitions == *from) else {
                    return false;
                };
                t.replicas.extend(replicas.iter().cloned());
                t.partitions += i32::try_from(replicas.len()).unwrap_or(0);
                true
            }
            MetaRecord::TopicDeleted { name, id } => {
                self.topics.get(name).is_some_and(|t| t.id == *id) && self.topics.remove(name).is_some()
            }
            MetaRecord::ProducerIdsBlock { end } => {
                self.producer_ids_end = self.producer_ids_end.max(*end);
                true
            }
            MetaRecord::BrokerRegistered { id, incarnation, host, port, rack } => {
                let b = BrokerImage {
                    epoch: offset,
                    incarnation: *incarnation,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    fenced: true,
                };
                self.brokers.insert(*id, b);
                true
            }
            MetaRecord::BrokerFenced { id, epoch } | MetaRecord::BrokerUnfenced { id, epoch } => {
                let fence = matches!(rec, MetaRecord::BrokerFenced { .. });
                match self.brokers.get_mut(id).filter(|b| b.epoch == *epoch && b.fenced != fence) {
                    Some(b) => {
                        b.fenced = fence;
                        true
                    }
                    None => false,
                }
            }
        }
    }

    fn place_topic(&mut self, name: &str, id: [u8; 16], configs: &[(String, String)], replicas: Vec<Vec<i32>>) -> bool {
        if self.topics.contains_key(name) {
            return false;
        }
        let partitions = i32::try_from(replicas.len()).unwrap_or(0);
        let t = TopicImage { id, partitions, configs: configs.iter().cloned().collect(), replicas };
        self.topics.insert(name.to_string(), t);
        true
    }

    /// Brokers that may lead partitions (registered and unfenced), by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = (i32, &BrokerImage)> {
        self.brokers.iter().filter(|(_, b)| !b.fenced).map(|(id, b)| (*id, b))
    }
}

/// Places `count` new partitions of `rf` replicas each on `brokers` (id and rack): round
/// robin from `start`, each partition's replicas on consecutive brokers; when brokers have
/// racks, the list is first interleaved across racks so consecutive brokers are in different
/// racks (as Kafka's rack-aware assignment does). `first` is the first new partition's index.
pub fn place(brokers: &[(i32, Option<String>)], count: usize, rf: usize, start: usize, first: usize) -> Vec<Vec<i32>> {
    let mut order: Vec<(i32, Option<String>)> = brokers.to_vec();
    order.sort();
    if order.iter().any(|(_, r)| r.is_some()) {
        let mut racks: BTreeMap<Option<String>, std::collections::VecDeque<i32>> = BTreeMap::new();
        for (id, rack) in &order {
            racks.entry(rack.clone()).or_default().push_back(*id);
        }
        let mut interleaved = Vec::with_capacity(order.len());
        while interleaved.len() < order.len() {
            for (rack, ids) in racks.iter_mut() {
                if let Some(id) = ids.pop_front() {
                    interleaved.push((id, rack.clone()));
                }
            }
        }
        order = interleaved;
    }
    let n = order.len();
    if n == 0 {
        return vec![Vec::new(); count];
    }
    (0..count).map(|p| (0..rf.min(n)).map(|r| order[(start + first + p + r) % n].0).collect()).collect()
}

pub fn encode_record(rec: &MetaRecord) -> Vec<u8> {
    encode_frame(&postcard::to_allocvec(rec).expect("metadata records serialize"))
}

/// Decodes records from the start of the log. Returns them and the length of the valid
/// prefix; anything after it is a torn or corrupt tail to cut off.
pub fn decode_log(buf: &[u8]) -> (Vec<MetaRecord>, usize) {
    let (frames, _) = decode_frames(buf);
    let mut at = 0;
    let mut out = Vec::new();
    for f in frames {
        match postcard::from_bytes::<MetaRecord>(f) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        at += 8 + f.len();
    }
    (out, at)
}

/// One frame of a metadata file: `len u32 | crc32c u32 | body`, big-endian.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The bodies of the whole frames at the start of `buf` whose checksums hold, and the
/// length they cover.
pub fn decode_frames(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut at = 0;
    let mut out = Vec::new();
    while buf.len() - at >= 8 {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let crc = u32::from_be_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        let Some(body) = buf.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        out.push(body);
        at += 8 + len;
    }
    (out, at)
}

/// Kafka's topic name rule: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::limits::TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Splits a partition directory name `<topic>-<n>`.
pub fn parse_partition_dir(name: &str) -> Option<(&str, i32)> {
    let (topic, n) = name.rsplit_once('-')?;
    let n: i32 = n.parse().ok()?;
    (valid_topic_name(topic) && n >= 0 && n.to_string() == name[topic.len() + 1..]).then_some((topic, n))
}

pub fn partition_dir(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_round_trip_and_torn_tail() {
        let recs = vec![
            MetaRecord::TopicCreated {
                name: "a".into(),
                id: [1; 16],
                partitions: 3,
                configs: vec![("retention.ms".into(), "5".into())],
            },
            MetaRecord::PartitionsCreated { name: "a".into(), id: [1; 16], total: 5 },
            MetaRecord::TopicDeleted { name: "a".into(), id: [1; 16] },
        ];
        let recs: Vec<MetaRecord> = std::iter::once(MetaRecord::ProducerIdsBlock { end: 2000 }).chain(recs).collect();
        let mut buf = Vec::new();
        for r in &recs {
            buf.extend_from_slice(&encode_record(r));
        }
        let full = buf.len();
        let (got, valid) = decode_log(&buf);
        assert_eq!(got, recs);
        assert_eq!(valid, full);
        buf.truncate(full - 3);
        let (got, valid) = decode_log(&buf);
        assert_eq!(got.len(), 3);
        assert!(valid < full);
        let mut img = MetadataImage::default();
        for r in &got {
            img.apply(-1, r);
        }
        assert_eq!(img.topics["a"].partitions, 5);
        assert_eq!(img.producer_ids_end, 2000);
    }

    #[test]
    fn placement_and_brokers() {
        let mut img = MetadataImage::default();
        let reg = |id| MetaRecord::BrokerRegistered { id, incarnation: 9, host: "h".into(), port: 1, rack: None };
        assert!(img.apply(10, &reg(1)));
        assert!(img.apply(11, &reg(2)));
        assert!(img.brokers[&1].fenced, "a broker registers fenced");
        assert!(!img.apply(12, &MetaRecord::BrokerUnfenced { id: 1, epoch: 9 }), "a stale epoch changes nothing");
        assert!(img.apply(12, &MetaRecord::BrokerUnfenced { id: 1, epoch: 10 }));
        assert_eq!(img.live_brokers().map(|(id, _)| id).collect::<Vec<_>>(), vec![1]);
        let placed = MetaRecord::TopicPlaced {
            name: "t".into(),
            id: [2; 16],
            configs: vec![],
            replicas: vec![vec![1], vec![2]],
        };
        assert!(img.apply(13, &placed));
        assert!(!img.apply(14, &placed), "a topic is created once");
        let more = MetaRecord::PartitionsPlaced { name: "t".into(), id: [2; 16], from: 2, replicas: vec![vec![2]] };
        assert!(img.apply(15, &more));
        assert!(!img.apply(16, &more), "partitions added to an older count change nothing");
        assert_eq!(img.topics["t"].replicas, vec![vec![1], vec![2], vec![2]]);

        let brokers = [(3, None), (1, None), (2, None)];
        assert_eq!(place(&brokers, 4, 1, 1, 0), vec![vec![2], vec![3], vec![1], vec![2]]);
        assert_eq!(place(&brokers, 2, 3, 0, 0), vec![vec![1, 2, 3], vec![2, 3, 1]]);
        assert_eq!(place(&brokers, 1, 5, 0, 0), vec![vec![1, 2, 3]], "never more replicas than brokers");
        let racked = [(1, Some("a".into())), (2, Some("a".into())), (3, Some("b".into())), (4, Some("b".into()))];
        for replicas in place(&racked, 8, 2, 3, 0) {
            let rack = |id: i32| racked.iter().find(|b| b.0 == id).unwrap().1.clone();
            assert_ne!(rack(replicas[0]), rack(replicas[1]), "two replicas in one rack: {replicas:?}");
        }
        assert_eq!(place(&[], 2, 1, 0, 0), vec![Vec::<i32>::new(), Vec::new()]);
    }

    #[test]
    fn names() {
        assert!(valid_topic_name("orders.v1_x-y"));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("a/b"));
        assert!(!valid_topic_name(&"x".repeat(250)));
        assert_eq!(parse_partition_dir("my-topic-12"), Some(("my-topic", 12)));
        assert_eq!(parse_partition_dir("t-012"), None);
        assert_eq!(parse_partition_dir(".sluice-meta"), None);
    }
}
