//! The client side of the Kafka protocol, as the simulated clients speak it: the same codec
//! crate real clients' bytes go through in core, with uncompressed record batches.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_core::log::batch;

pub const PRODUCE_VERSION: i16 = 9;
pub const FETCH_VERSION: i16 = 11;
pub const CREATE_TOPICS_VERSION: i16 = 5;
pub const ALTER_CONFIGS_VERSION: i16 = 1;
pub const INIT_PRODUCER_ID_VERSION: i16 = 4;
pub const ADD_PARTITIONS_TO_TXN_VERSION: i16 = 3;
pub const END_TXN_VERSION: i16 = 3;
pub const REASSIGN_VERSION: i16 = 0;

pub fn frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Bytes {
    let mut h = RequestHeader::default();
    h.request_api_key = key as i16;
    h.request_api_version = version;
    h.correlation_id = correlation_id;
    h.client_id = Some(StrBytes::from_static_str("sluice-sim"));
    let mut buf = BytesMut::new();
    h.encode(&mut buf, key.request_header_version(version)).expect("client requests encode");
    body.encode(&mut buf, version).expect("client requests encode");
    buf.freeze()
}

/// An acks=all Produce of one batch to one partition, with a 2-second timeout.
pub fn produce_frame(topic: &'static str, partition: i32, records: Bytes, version: i16, correlation_id: i32) -> Bytes {
    let mut pd = produce_request::PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(records);
    let mut td = produce_request::TopicProduceData::default();
    td.name = TopicName(StrBytes::from_static_str(topic));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 2_000;
    req.topic_data = vec![td];
    frame(ApiKey::Produce, version, correlation_id, &req)
}

/// A consumer's Fetch (read_uncommitted, a 50 ms long poll, 1 MiB in all) of `topic`'s
/// partitions from their offsets, `partition_max_bytes` each.
pub fn fetch_frame(
    correlation_id: i32,
    topic: &'static str,
    partitions: impl Iterator<Item = (i32, i64)>,
    partition_max_bytes: i32,
) -> Bytes {
    let mut ft = fetch_request::FetchTopic::default();
    ft.topic = TopicName(StrBytes::from_static_str(topic));
    for (p, offset) in partitions {
        let mut fp = fetch_request::FetchPartition::default();
        fp.partition = p;
        fp.fetch_offset = offset;
        fp.partition_max_bytes = partition_max_bytes;
        ft.partitions.push(fp);
    }
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = 50;
    req.min_bytes = 1;
    req.max_bytes = 1 << 20;
    req.session_epoch = -1;
    req.topics = vec![ft];
    frame(ApiKey::Fetch, FETCH_VERSION, correlation_id, &req)
}

/// Splits a response frame (no size prefix) into its correlation id and decoded body.
pub fn decode<R: Decodable>(key: ApiKey, version: i16, mut frame: Bytes) -> Result<(i32, R), String> {
    if frame.len() < 4 {
        return Err("response shorter than its header".into());
    }
    let cid = frame.get_i32();
    if key.response_header_version(version) >= 1 {
        let tags = frame.get_u8();
        if tags != 0 {
            return Err("unexpected tagged fields in a response header".into());
        }
    }
    let r = R::decode(&mut frame, version).map_err(|e| e.to_string())?;
    if !frame.is_empty() {
        return Err(format!("{} bytes left after the response", frame.len()));
    }
    Ok((cid, r))
}

/// The correlation id of a response frame.
pub fn correlation_id(frame: &Bytes) -> Option<i32> {
    frame.get(0..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// An uncompressed v2 batch holding `values` (no keys, no headers).
pub fn batch_of(values: &[String], timestamp: i64) -> Bytes {
    Bytes::from(batch::encode_values(values, timestamp))
}

/// The same batch from a transactional producer.
pub fn transactional_batch_of(values: &[String], timestamp: i64, producer_id: i64, epoch: i16, seq: i32) -> Bytes {
    let mut b = batch::encode_values(values, timestamp);
    b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
    batch::set_producer(&mut b, producer_id, epoch, seq);
    Bytes::from(b)
}

/// The same batch from an idempotent producer: its id, epoch and first sequence number.
pub fn idempotent_batch_of(values: &[String], timestamp: i64, producer_id: i64, epoch: i16, seq: i32) -> Bytes {
    let mut b = batch::encode_values(values, timestamp);
    batch::set_producer(&mut b, producer_id, epoch, seq);
    Bytes::from(b)
}

/// One fetched batch: its header, its records (offset, value), and for a transaction marker
/// whether it commits.
pub struct FetchedBatch {
    pub header: batch::BatchHeader,
    pub records: Vec<(i64, String)>,
    pub marker: Option<bool>,
}

/// Every batch of a fetched record set of uncompressed batches.
pub fn batches(mut set: &[u8]) -> Result<Vec<FetchedBatch>, String> {
    let mut out = Vec::new();
    while !set.is_empty() {
        let header = batch::check_batch(set).map_err(|e| format!("fetched a bad batch: {e:?}"))?;
        let this = &set[..header.size];
        let marker = if header.is_control() { batch::control_type(this) } else { None };
        let records = if header.is_control() {
            Vec::new()
        } else {
            batch::uncompressed_records(this)
                .map_err(|e| format!("fetched a bad batch: {e:?}"))?
                .into_iter()
                .map(|(o, _, v)| (o, String::from_utf8_lossy(v.unwrap_or_default()).into_owned()))
                .collect()
        };
        out.push(FetchedBatch { header, records, marker });
        set = &set[header.size..];
    }
    Ok(out)
}

/// A CreateTopics frame for one topic of `partitions` partitions, `replicas` replicas each,
/// with `min.insync.replicas` set.
pub fn create_topic_frame(topic: &'static str, partitions: i32, replicas: i16, min_isr: usize, cid: i32) -> Bytes {
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(StrBytes::from_static_str(topic));
    t.num_partitions = partitions;
    t.replication_factor = replicas;
    let mut c = create_topics_request::CreatableTopicConfig::default();
    c.name = StrBytes::from_static_str("min.insync.replicas");
    c.value = Some(StrBytes::from(min_isr.to_string()));
    t.configs = vec![c];
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 10_000;
    frame(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, cid, &req)
}

/// Whether a CreateTopics answer (for one topic) says the topic exists: created, or there
/// already (an earlier try, whose answer was lost, made it).
pub fn topic_created(frame: Bytes) -> bool {
    let code = decode::<CreateTopicsResponse>(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, frame)
        .map(|(_, r)| r.topics.first().map_or(-1, |t| t.error_code))
        .unwrap_or(-1);
    matches!(code, 0 | 36)
}

/// (offset, value) of every record in a fetched record set of uncompressed batches.
pub fn records(mut set: &[u8]) -> Result<Vec<(i64, String)>, String> {
    let mut out = Vec::new();
    while !set.is_empty() {
        let h = batch::check_batch(set).map_err(|e| format!("fetched a bad batch: {e:?}"))?;
        for (o, _, v) in batch::uncompressed_records(set).map_err(|e| format!("fetched a bad batch: {e:?}"))? {
            out.push((o, String::from_utf8_lossy(v.unwrap_or_default()).into_owned()));
        }
        set = &set[h.size..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_round_trip() {
        let values = vec!["a".to_string(), "bcd".to_string()];
        let b = super::batch_of(&values, 5);
        assert_eq!(super::records(&b).unwrap(), vec![(0, "a".to_string()), (1, "bcd".to_string())]);
    }
}
