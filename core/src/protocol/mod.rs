//! The Kafka wire protocol at the node's edge: request frames in, response frames out, via the
//! `kafka-protocol` crate, plus a hand-written Fetch response encoder whose record sets are
//! file ranges (zero-copy).

pub mod errors;
pub mod fetch_response;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// The APIs Sluice implements and the versions it answers (min, max). Only what works is
/// advertised; anything else is refused.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 5),
    (ApiKey::ListTransactions, 0, 2),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::WriteTxnMarkers, 1, 1),
];

pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k == key).map(|(_, lo, hi)| (*lo, *hi))
}

/// Why a frame could not be turned into a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Too short to hold a request header.
    Short,
    /// An API key Sluice does not know or does not serve.
    UnknownApi(i16),
    /// A known API at a version outside the supported range.
    UnsupportedVersion { api_key: ApiKey, version: i16, correlation_id: i32 },
    /// The header or body did not decode.
    Malformed(String),
}

/// A request's header fields, kept to answer it later.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

/// Splits a frame into its header and the undecoded body.
pub fn parse_header(frame: &Bytes) -> Result<(RequestContext, Bytes), FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::Short);
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| FrameError::UnknownApi(raw_key))?;
    let (lo, hi) = supported_range(api_key).ok_or(FrameError::UnknownApi(raw_key))?;
    if version < lo || version > hi {
        return Err(FrameError::UnsupportedVersion { api_key, version, correlation_id });
    }
    let mut buf = frame.clone();
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut buf, header_version).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let ctx = RequestContext {
        api_key,
        version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|s| s.to_string()),
    };
    Ok((ctx, buf))
}

/// Decodes a request body; the whole body must be consumed.
pub fn decode_body<T: Decodable>(mut body: Bytes, version: i16) -> Result<T, FrameError> {
    let req = T::decode(&mut body, version).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(req)
}

/// Encodes a response frame: size prefix, response header, body. Fails (and the caller closes
/// the connection) only if a response sets a field its version lacks: a bug, never a panic.
pub fn encode_response<T: Encodable>(ctx: &RequestContext, body: &T) -> Result<Bytes, String> {
    let header_version = ctx.api_key.response_header_version(ctx.version);
    let body_len = body.compute_size(ctx.version).map_err(|e| encode_error(ctx, e))?;
    let header_len = if header_version >= 1 { 5 } else { 4 };
    let mut buf = BytesMut::with_capacity(4 + header_len + body_len);
    buf.put_i32(i32::try_from(header_len + body_len).map_err(|_| "response too large".to_string())?);
    buf.put_i32(ctx.correlation_id);
    if header_version >= 1 {
        buf.put_u8(0); // no tagged fields
    }
    body.encode(&mut buf, ctx.version).map_err(|e| encode_error(ctx, e))?;
    Ok(buf.freeze())
}

fn encode_error(ctx: &RequestContext, e: impl std::fmt::Display) -> String {
    format!("{:?} v{}: {e}", ctx.api_key, ctx.version)
}

/// The cluster features this build supports (name, lowest, highest level), all finalized at
/// their highest. `transaction.version` 2 is KIP-890's second part: clients that see it
/// finalized never add partitions themselves and take a new epoch from every EndTxn.
pub const FEATURES: &[(&str, i16, i16)] = &[("transaction.version", 0, 2)];

/// The epoch of the finalized features: they are fixed in this build, so it never changes.
pub const FINALIZED_FEATURES_EPOCH: i64 = 1;

/// The ApiVersions answer at `version`: every supported API with its range and, from v3 (in
/// tagged fields), the supported and finalized features.
pub fn api_versions_answer(version: i16) -> kafka_protocol::messages::ApiVersionsResponse {
    use kafka_protocol::messages::api_versions_response::{FinalizedFeatureKey, SupportedFeatureKey};
    let mut resp = api_versions_response(0);
    if version >= 3 {
        for (name, lo, hi) in FEATURES {
            let name = kafka_protocol::protocol::StrBytes::from_static_str(name);
            resp.supported_features.push(
                SupportedFeatureKey::default().with_name(name.clone()).with_min_version(*lo).with_max_version(*hi),
            );
            resp.finalized_features.push(
                FinalizedFeatureKey::default().with_name(name).with_min_version_level(*hi).with_max_version_level(*hi),
            );
        }
        resp.finalized_features_epoch = FINALIZED_FEATURES_EPOCH;
    }
    resp
}

/// The ApiVersions answer: every supported API with its range.
pub fn api_versions_response(error_code: i16) -> kafka_protocol::messages::ApiVersionsResponse {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    let mut resp = kafka_protocol::messages::ApiVersionsResponse::default();
    resp.error_code = error_code;
    resp.api_keys = SUPPORTED_APIS
        .iter()
        .map(|(k, lo, hi)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *lo;
            v.max_version = *hi;
            v
        })
        .collect();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_is_within_the_codec() {
        for (k, lo, hi) in SUPPORTED_APIS {
            let v = k.valid_versions();
            assert!(v.min <= *lo && *hi <= v.max, "{k:?} {lo}..{hi} outside {v:?}");
        }
    }

    #[test]
    fn short_unknown_and_unsupported_frames() {
        assert_eq!(parse_header(&Bytes::from_static(b"abc")).unwrap_err(), FrameError::Short);
        let unknown = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(parse_header(&unknown), Err(FrameError::UnknownApi(_))));
        let too_new = Bytes::from_static(&[0, 3, 0x00, 99, 0, 0, 0, 7, 0, 0]);
        assert!(matches!(
            parse_header(&too_new),
            Err(FrameError::UnsupportedVersion { version: 99, correlation_id: 7, .. })
        ));
    }
}
