//! Fetch responses, encoded by hand so that record sets stay file ranges: the response is a
//! list of parts, bytes built here interleaved with `Part::File` ranges the runtime sends with
//! `sendfile`. Versions 4 to 12 (12 is the first flexible version).

use bytes::{BufMut, Bytes, BytesMut};

use crate::io::Part;

pub struct PartitionData {
    pub partition_index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// For read_committed: the aborted transactions (producer id, first offset) the records
    /// overlap (`None`, read_uncommitted, is sent as an empty list, as Sluice always has).
    pub aborted: Option<Vec<(i64, i64)>>,
    pub records: Option<Part>,
}

impl PartitionData {
    /// A partition's entry before anything is known of it: no error, no offsets, no records.
    pub fn new(partition_index: i32) -> PartitionData {
        PartitionData {
            partition_index,
            error_code: 0,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            aborted: None,
            records: None,
        }
    }
}

pub struct TopicData {
    pub name: String,
    pub partitions: Vec<PartitionData>,
}

/// Builds the parts of one Fetch response frame, 4-byte size prefix included.
pub fn encode(version: i16, correlation_id: i32, error_code: i16, topics: &[TopicData]) -> Vec<Part> {
    let flexible = version >= 12;
    let mut parts = Vec::new();
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // size, patched below
    buf.put_i32(correlation_id);
    if flexible {
        buf.put_u8(0); // response header tagged fields
    }
    buf.put_i32(0); // throttle_time_ms
    if version >= 7 {
        buf.put_i16(error_code);
        buf.put_i32(0); // session_id: Sluice keeps no fetch sessions; clients send full fetches
    }
    put_len(&mut buf, flexible, topics.len());
    for t in topics {
        put_str(&mut buf, flexible, &t.name);
        put_len(&mut buf, flexible, t.partitions.len());
        for p in &t.partitions {
            buf.put_i32(p.partition_index);
            buf.put_i16(p.error_code);
            buf.put_i64(p.high_watermark);
            buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                buf.put_i64(p.log_start_offset);
            }
            match &p.aborted {
                None => put_len(&mut buf, flexible, 0),
                Some(list) => {
                    put_len(&mut buf, flexible, list.len());
                    for (producer_id, first_offset) in list {
                        buf.put_i64(*producer_id);
                        buf.put_i64(*first_offset);
                        if flexible {
                            buf.put_u8(0); // aborted transaction's tagged fields
                        }
                    }
                }
            }
            if version >= 11 {
                buf.put_i32(-1); // preferred_read_replica
            }
            let len = p.records.as_ref().map_or(0, |r| r.len());
            put_len(&mut buf, flexible, len);
            if let Some(r) = &p.records {
                parts.push(Part::Bytes(buf.split().freeze()));
                parts.push(r.clone());
            }
            if flexible {
                buf.put_u8(0); // partition tagged fields
            }
        }
        if flexible {
            buf.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        buf.put_u8(0); // top-level tagged fields
    }
    parts.push(Part::Bytes(buf.freeze()));
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let size = i32::try_from(total - 4).expect("fetch responses are bounded by FETCH_RESPONSE_BYTES_MAX");
    if let Some(Part::Bytes(first)) = parts.first_mut() {
        let mut b = BytesMut::from(&first[..]);
        b[0..4].copy_from_slice(&size.to_be_bytes());
        *first = b.freeze();
    }
    parts
}

fn put_len(buf: &mut BytesMut, flexible: bool, n: usize) {
    if flexible {
        put_uvarint(buf, n as u64 + 1);
    } else {
        buf.put_i32(i32::try_from(n).expect("bounded"));
    }
}

fn put_str(buf: &mut BytesMut, flexible: bool, s: &str) {
    if flexible {
        put_uvarint(buf, s.len() as u64 + 1);
    } else {
        buf.put_i16(i16::try_from(s.len()).expect("topic names are at most 249 bytes"));
    }
    buf.put_slice(s.as_bytes());
}

fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Flattens parts whose file ranges are given as bytes (for tests and the simulator).
pub fn flatten(parts: &[Part], mut read: impl FnMut(&Part) -> Bytes) -> Bytes {
    let mut out = BytesMut::new();
    for p in parts {
        match p {
            Part::Bytes(b) => out.put_slice(b),
            f => out.put_slice(&read(f)),
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::protocol::Decodable;

    /// The hand-written encoder must agree with the codec crate's decoder at every version.
    #[test]
    fn decodes_with_the_codec_at_every_version() {
        let records = Bytes::from_static(b"0123456789");
        for version in 4..=12i16 {
            let topics = vec![TopicData {
                name: "orders".into(),
                partitions: vec![
                    PartitionData {
                        partition_index: 0,
                        error_code: 0,
                        high_watermark: 42,
                        last_stable_offset: 42,
                        log_start_offset: 3,
                        aborted: Some(vec![(9, 40)]),
                        records: Some(Part::Bytes(records.clone())),
                    },
                    PartitionData {
                        partition_index: 1,
                        error_code: 1,
                        high_watermark: 7,
                        last_stable_offset: 7,
                        log_start_offset: 0,
                        aborted: None,
                        records: None,
                    },
                ],
            }];
            let parts = encode(version, 99, 0, &topics);
            let frame = flatten(&parts, |_| unreachable!());
            let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            assert_eq!(size, frame.len() - 4);
            let mut body = frame.slice(8 + usize::from(version >= 12)..);
            let resp = FetchResponse::decode(&mut body, version).unwrap();
            assert_eq!(body.len(), 0, "v{version}: trailing bytes");
            let p0 = &resp.responses[0].partitions[0];
            assert_eq!(resp.responses[0].topic.0.as_str(), "orders");
            assert_eq!(p0.high_watermark, 42);
            assert_eq!(p0.records.as_ref().unwrap(), &records);
            let aborted = p0.aborted_transactions.as_ref().expect("a list");
            assert_eq!(aborted.iter().map(|a| (a.producer_id.0, a.first_offset)).collect::<Vec<_>>(), vec![(9, 40)]);
            if version >= 5 {
                assert_eq!(p0.log_start_offset, 3);
            }
            assert_eq!(resp.responses[0].partitions[1].error_code, 1);
        }
    }
}
