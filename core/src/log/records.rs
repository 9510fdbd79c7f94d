//! Reading inside a record batch: decompression (gzip, snappy, lz4, zstd; pure Rust, no OS
//! bindings) and the per-record timestamps ListOffsets needs. Only used off the produce path:
//! batches are stored as sent and never decompressed to be appended or served.

use std::io::Read;

use super::batch::{self, read_varlong, BatchError, HEADER_BYTES};

/// Decompressed bytes of one batch may not exceed this (a decompression bomb is an error).
pub const DECOMPRESSED_BYTES_MAX: usize = 256 * 1024 * 1024;

const XERIAL_MAGIC: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];

fn read_limited(mut r: impl Read, limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    (&mut r)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| BatchError::Invalid("records do not decompress"))?;
    if out.len() > limit {
        return Err(BatchError::Invalid("records decompress past the limit"));
    }
    Ok(out)
}

/// Snappy as Kafka producers write it: xerial block framing (Java clients, librdkafka), or a
/// bare raw block.
fn snappy(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let bad = |_| BatchError::Invalid("bad snappy block");
    let raw = |block: &[u8]| -> Result<Vec<u8>, BatchError> {
        let n = snap::raw::decompress_len(block).map_err(bad)?;
        if n > limit {
            return Err(BatchError::Invalid("records decompress past the limit"));
        }
        snap::raw::Decoder::new().decompress_vec(block).map_err(bad)
    };
    if !data.starts_with(XERIAL_MAGIC) {
        return raw(data);
    }
    let mut at = 16; // magic, version, compatible version
    let mut out = Vec::new();
    while at < data.len() {
        let len = data.get(at..at + 4).ok_or(BatchError::Invalid("bad snappy framing"))?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let block = data.get(at + 4..at + 4 + len).ok_or(BatchError::Invalid("bad snappy framing"))?;
        out.extend_from_slice(&raw(block)?);
        if out.len() > limit {
            return Err(BatchError::Invalid("records decompress past the limit"));
        }
        at += 4 + len;
    }
    Ok(out)
}

/// The records section of a batch, decompressed.
pub fn decompress(codec: i16, data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    match codec {
        0 => Ok(data.to_vec()),
        1 => read_limited(flate2::read::GzDecoder::new(data), limit),
        2 => snappy(data, limit),
        3 => read_limited(lz4_flex::frame::FrameDecoder::new(data), limit),
        4 => {
            let mut src = data;
            let d =
                ruzstd::decoding::StreamingDecoder::new(&mut src).map_err(|_| BatchError::Invalid("bad zstd frame"))?;
            read_limited(d, limit)
        }
        _ => Err(BatchError::Invalid("unknown compression codec")),
    }
}

/// (offset, timestamp) of every record in a whole, checked batch.
pub fn record_timestamps(b: &[u8]) -> Result<Vec<(i64, i64)>, BatchError> {
    let h = batch::check_batch(b)?;
    let body = decompress(h.compression(), &b[HEADER_BYTES..h.size], DECOMPRESSED_BYTES_MAX)?;
    let mut out = Vec::with_capacity(usize::try_from(h.records_count).unwrap_or(0).min(body.len()));
    let mut at = 0;
    let bad = BatchError::Invalid("bad record framing");
    while at < body.len() {
        let (len, n) = read_varlong(&body[at..]).ok_or(bad.clone())?;
        let len = usize::try_from(len).map_err(|_| bad.clone())?;
        let rec = body.get(at + n..at + n + len).ok_or(bad.clone())?;
        let (ts_delta, n1) = rec.get(1..).and_then(read_varlong).ok_or(bad.clone())?;
        let (off_delta, _) = rec.get(1 + n1..).and_then(read_varlong).ok_or(bad.clone())?;
        let ts = if h.is_log_append_time() { h.max_timestamp } else { h.base_timestamp.saturating_add(ts_delta) };
        out.push((h.base_offset.saturating_add(off_delta), ts));
        at += n + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::tests::make_batch;

    #[test]
    fn timestamps_of_an_uncompressed_batch() {
        let b = make_batch(&[b"a", b"b", b"c"], 5000);
        assert_eq!(record_timestamps(&b).unwrap(), vec![(0, 5000), (1, 5000), (2, 5000)]);
    }

    #[test]
    fn every_codec_round_trips() {
        use std::io::Write;
        let plain: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_be_bytes()).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        assert_eq!(decompress(1, &gz.finish().unwrap(), 1 << 20).unwrap(), plain);
        let raw = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        assert_eq!(decompress(2, &raw, 1 << 20).unwrap(), plain);
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        framed.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        framed.extend_from_slice(&raw);
        assert_eq!(decompress(2, &framed, 1 << 20).unwrap(), plain);
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(&plain).unwrap();
        assert_eq!(decompress(3, &lz.finish().unwrap(), 1 << 20).unwrap(), plain);
        assert!(decompress(1, &[1, 2, 3], 1 << 20).is_err());
        assert!(decompress(4, &[1, 2, 3], 1 << 20).is_err());
        // A bomb: more output than allowed is an error, not an allocation.
        assert!(decompress(2, &raw, 100).is_err());
    }
}
