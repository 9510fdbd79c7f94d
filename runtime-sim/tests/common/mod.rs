//! Request framing and response decoding shared by the tests that drive a node directly.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// A request frame (without its size prefix), as a client library would send it.
pub fn frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Bytes {
    let mut h = RequestHeader::default();
    h.request_api_key = key as i16;
    h.request_api_version = version;
    h.correlation_id = correlation_id;
    h.client_id = Some(StrBytes::from_static_str("sim-test"));
    let mut buf = BytesMut::new();
    h.encode(&mut buf, key.request_header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// Decodes a whole response frame (size prefix included).
pub fn decode<R: Decodable>(key: ApiKey, version: i16, mut resp: Bytes) -> R {
    let size = resp.get_i32() as usize;
    assert_eq!(size, resp.len(), "frame size prefix");
    resp.advance(4);
    if key.response_header_version(version) >= 1 {
        resp.advance(1);
    }
    R::decode(&mut resp, version).unwrap()
}
