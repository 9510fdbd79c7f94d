//! The cluster metadata: topics, their ids, partition counts and configs. It is kept as a log
//! of records (`.sluice-meta/metadata.log`) that every change is appended to and synced before
//! it is acknowledged; a restart replays it. With one node the log is local; the Raft quorum
//! of a cluster will replicate exactly these records.
//!
//! Record framing: `len u32 | crc32c u32 | postcard(MetaRecord)`, big-endian.

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
}

/// One topic as the metadata log says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicImage {
    pub id: [u8; 16],
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

/// The state the metadata log builds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    pub topics: BTreeMap<String, TopicImage>,
    /// End of the last block of producer ids taken: new ids start here.
    pub producer_ids_end: i64,
}

impl MetadataImage {
    pub fn apply(&mut self, rec: &MetaRecord) {
        match rec {
            MetaRecord::TopicCreated { name, id, partitions, configs } => {
                self.topics.insert(
                    name.clone(),
                    TopicImage { id: *id, partitions: *partitions, configs: configs.iter().cloned().collect() },
                );
            }
            MetaRecord::PartitionsCreated { name, id, total } => {
                if let Some(t) = self.topics.get_mut(name).filter(|t| t.id == *id) {
                    t.partitions = t.partitions.max(*total);
                }
            }
            MetaRecord::TopicDeleted { name, id } => {
                if self.topics.get(name).is_some_and(|t| t.id == *id) {
                    self.topics.remove(name);
                }
            }
            MetaRecord::ProducerIdsBlock { end } => self.producer_ids_end = self.producer_ids_end.max(*end),
        }
    }
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
            img.apply(r);
        }
        assert_eq!(img.topics["a"].partitions, 5);
        assert_eq!(img.producer_ids_end, 2000);
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
