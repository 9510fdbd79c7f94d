//! Log compaction, the parts that only look at bytes: which key each record has, the map of
//! every key's latest offset, and a batch rewritten without the records the cleaner drops.
//!
//! A rewritten batch keeps its base offset, its last offset delta, its timestamps, its
//! producer fields and its codec: every record it keeps has the offset and the timestamp it
//! had, and a producer's last batch can stay in the log with no record left (so its sequence
//! survives a restart, as in Kafka). The node drives the disk side (`node/cleaner.rs`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::ops::Range;

use super::batch::{self, read_varlong, BatchError, BatchHeader, HEADER_BYTES};
use super::records::{decompress, DECOMPRESSED_BYTES_MAX};
use crate::types::Offset;

/// Bytes of memory one key of the map is counted for (Kafka's figure for its own map: a
/// 16-byte hash and an 8-byte offset).
pub const BYTES_PER_KEY: u64 = 24;

/// A 128-bit digest of a key: two independent SipHash runs. Two keys that collide would
/// let the older one's records go for the newer one's; at 2^-128 a pair, that is never.
pub fn key_digest(key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0x5a)) << 64) | u128::from(half(0xc3))
}

/// Every key's latest offset in the part of the log being cleaned, bounded in memory.
#[derive(Debug, Default)]
pub struct KeyMap {
    latest: HashMap<u128, Offset>,
    capacity: usize,
}

impl KeyMap {
    pub fn with_memory(bytes: u64) -> KeyMap {
        let capacity = usize::try_from(bytes / BYTES_PER_KEY * 9 / 10).unwrap_or(usize::MAX).max(1);
        KeyMap { latest: HashMap::new(), capacity }
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// No room for another key.
    pub fn is_full(&self) -> bool {
        self.latest.len() >= self.capacity
    }

    pub fn put(&mut self, key: &[u8], offset: Offset) {
        let e = self.latest.entry(key_digest(key)).or_insert(offset);
        *e = (*e).max(offset);
    }

    pub fn latest(&self, key: &[u8]) -> Option<Offset> {
        self.latest.get(&key_digest(key)).copied()
    }
}

/// One record of a decoded batch: ranges into the decompressed records section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub key: Option<Range<usize>>,
    /// The value is null: a tombstone.
    pub tombstone: bool,
    /// The whole record with its length prefix.
    pub span: Range<usize>,
}

/// A batch's records, decompressed.
#[derive(Debug)]
pub struct Decoded {
    pub header: BatchHeader,
    pub body: Vec<u8>,
    pub records: Vec<Record>,
}

impl Decoded {
    pub fn key(&self, r: &Record) -> Option<&[u8]> {
        r.key.clone().map(|k| &self.body[k])
    }
}

/// Decodes a whole batch at the start of `b` (checked, CRC included).
pub fn decode(b: &[u8]) -> Result<Decoded, BatchError> {
    let header = batch::check_batch(b)?;
    let section = &b[HEADER_BYTES..header.size];
    // A batch emptied by an earlier pass has no records section at all, whatever its codec.
    let body = if section.is_empty() {
        Vec::new()
    } else {
        decompress(header.compression(), section, DECOMPRESSED_BYTES_MAX)?
    };
    let bad = || BatchError::Invalid("bad record framing");
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let (len, n) = read_varlong(&body[at..]).ok_or_else(bad)?;
        let len = usize::try_from(len).map_err(|_| bad())?;
        let end = at.checked_add(n + len).filter(|e| *e <= body.len()).ok_or_else(bad)?;
        let mut p = at + n + 1; // the record's attributes
        let field = |p: &mut usize| -> Result<i64, BatchError> {
            let (v, k) = read_varlong(body.get(*p..end).ok_or_else(bad)?).ok_or_else(bad)?;
            *p += k;
            Ok(v)
        };
        field(&mut p)?; // timestamp delta
        let offset_delta = field(&mut p)?;
        let key_len = field(&mut p)?;
        let key = if key_len < 0 {
            None
        } else {
            let k = p..p + usize::try_from(key_len).map_err(|_| bad())?;
            if k.end > end {
                return Err(bad());
            }
            p = k.end;
            Some(k)
        };
        let value_len = field(&mut p)?;
        records.push(Record {
            offset: header.base_offset.saturating_add(offset_delta),
            key,
            tombstone: value_len < 0,
            span: at..end,
        });
        at = end;
    }
    Ok(Decoded { header, body, records })
}

/// What the cleaner does with one batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Filtered {
    /// Every record stays: the batch is copied as it is.
    Keep,
    /// No record stays and nothing needs the batch.
    Drop,
    /// These bytes replace the batch.
    Rewrite(Vec<u8>),
}

/// Keeps the records `keep` says yes to. A batch left without records is dropped, unless
/// `keep_empty` (a producer's last batch), when it stays with none. Control batches stay.
pub fn filter_batch(
    b: &[u8],
    keep_empty: bool,
    mut keep: impl FnMut(&Record, Option<&[u8]>) -> bool,
) -> Result<Filtered, BatchError> {
    let d = decode(b)?;
    if d.header.is_control() {
        return Ok(Filtered::Keep);
    }
    let kept: Vec<&Record> = d.records.iter().filter(|r| keep(r, d.key(r))).collect();
    if kept.len() == d.records.len() {
        return Ok(Filtered::Keep);
    }
    if kept.is_empty() && !keep_empty {
        return Ok(Filtered::Drop);
    }
    let mut body = Vec::with_capacity(kept.iter().map(|r| r.span.len()).sum());
    for r in &kept {
        body.extend_from_slice(&d.body[r.span.clone()]);
    }
    // An emptied batch is a header alone (as Kafka writes one): nothing to decompress.
    let body = if body.is_empty() { body } else { compress(d.header.compression(), &body)? };
    let count = i32::try_from(kept.len()).map_err(|_| BatchError::Invalid("too many records"))?;
    Ok(Filtered::Rewrite(rebuild(&b[..HEADER_BYTES], &body, count)))
}

/// A batch with `header`'s fields, `records` (already compressed as the header's codec says)
/// and `count` records; length and CRC computed again.
fn rebuild(header: &[u8], records: &[u8], count: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + records.len());
    out.extend_from_slice(header);
    out.extend_from_slice(records);
    let length = i32::try_from(out.len() - batch::LOG_OVERHEAD).expect("smaller than the batch it came from");
    out[8..12].copy_from_slice(&length.to_be_bytes());
    out[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

const XERIAL_HEADER: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1];

/// Compresses a records section with a batch codec, as Kafka's clients frame it (snappy in
/// xerial blocks, lz4 as a frame).
pub fn compress(codec: i16, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let failed = |_| BatchError::Invalid("records do not compress");
    match codec {
        0 => Ok(data.to_vec()),
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data).map_err(failed)?;
            gz.finish().map_err(failed)
        }
        2 => {
            let mut out = XERIAL_HEADER.to_vec();
            let mut enc = snap::raw::Encoder::new();
            for block in data.chunks(32 * 1024) {
                let c = enc.compress_vec(block).map_err(|_| BatchError::Invalid("records do not compress"))?;
                out.extend_from_slice(&u32::try_from(c.len()).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(&c);
            }
            Ok(out)
        }
        3 => {
            let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
            lz.write_all(data).map_err(failed)?;
            lz.finish().map_err(|_| BatchError::Invalid("records do not compress"))
        }
        4 => Ok(ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)),
        _ => Err(BatchError::Invalid("unknown compression codec")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::encode_records;

    fn keyed(records: &[(Option<&[u8]>, Option<&[u8]>)], base: i64) -> Vec<u8> {
        let mut b = encode_records(records, 1000);
        b[..8].copy_from_slice(&base.to_be_bytes());
        b
    }

    /// (offset, key, whether it is a tombstone) of each record.
    fn shape(b: &[u8]) -> Vec<(i64, Option<Vec<u8>>, bool)> {
        let d = decode(b).unwrap();
        d.records.iter().map(|r| (r.offset, d.key(r).map(<[u8]>::to_vec), r.tombstone)).collect()
    }

    #[test]
    fn filtering_keeps_offsets_and_drops_or_empties() {
        let b = keyed(&[(Some(b"a"), Some(b"1")), (Some(b"b"), None), (Some(b"a"), Some(b"2"))], 10);
        let d = decode(&b).unwrap();
        assert_eq!(d.records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert!(d.records[1].tombstone && !d.records[0].tombstone);
        assert_eq!(filter_batch(&b, false, |_, _| true).unwrap(), Filtered::Keep);
        assert_eq!(filter_batch(&b, false, |_, _| false).unwrap(), Filtered::Drop);
        let Filtered::Rewrite(empty) = filter_batch(&b, true, |_, _| false).unwrap() else { panic!() };
        let h = batch::check_batch(&empty).unwrap();
        assert_eq!((h.base_offset, h.last_offset(), h.records_count), (10, 12, 0));
        let Filtered::Rewrite(one) = filter_batch(&b, false, |r, _| r.offset == 12).unwrap() else { panic!() };
        let h = batch::check_batch(&one).unwrap();
        assert_eq!((h.base_offset, h.last_offset(), h.records_count), (10, 12, 1));
        assert_eq!(shape(&one), vec![(12, Some(b"a".to_vec()), false)]);
        let kept = batch::uncompressed_records(&one).unwrap();
        assert_eq!(kept, vec![(12, Some(&b"a"[..]), Some(&b"2"[..]))]);
    }

    #[test]
    fn compressed_batches_are_rewritten_in_their_codec() {
        let plain = keyed(&[(Some(b"k1"), Some(b"old")), (Some(b"k2"), Some(b"x")), (Some(b"k1"), Some(b"new"))], 0);
        for codec in 1..=4i16 {
            let body = compress(codec, &plain[HEADER_BYTES..]).unwrap();
            let mut h = plain[..HEADER_BYTES].to_vec();
            h[21..23].copy_from_slice(&codec.to_be_bytes());
            let b = rebuild(&h, &body, 3);
            assert_eq!(decode(&b).unwrap().records.len(), 3, "codec {codec}");
            let mut map = KeyMap::with_memory(1 << 20);
            for r in decode(&b).unwrap().records {
                map.put(&decode(&b).unwrap().body[r.key.clone().unwrap()], r.offset);
            }
            let out = filter_batch(&b, false, |r, k| map.latest(k.unwrap()) == Some(r.offset)).unwrap();
            let Filtered::Rewrite(out) = out else { panic!("codec {codec}: {out:?}") };
            let h = batch::check_batch(&out).unwrap();
            assert_eq!(h.compression(), codec);
            let d = decode(&out).unwrap();
            let got: Vec<_> = d.records.iter().map(|r| (r.offset, d.key(r).unwrap().to_vec())).collect();
            assert_eq!(got, vec![(1, b"k2".to_vec()), (2, b"k1".to_vec())], "codec {codec}");
            let Filtered::Rewrite(empty) = filter_batch(&b, true, |_, _| false).unwrap() else { panic!() };
            assert_eq!(empty.len(), HEADER_BYTES, "codec {codec}: an emptied batch is a header");
            assert!(decode(&empty).unwrap().records.is_empty());
            assert_eq!(filter_batch(&empty, true, |_, _| false).unwrap(), Filtered::Keep);
        }
    }

    #[test]
    fn the_map_keeps_the_latest_offset_and_knows_when_it_is_full() {
        let mut m = KeyMap::with_memory(BYTES_PER_KEY * 3);
        m.put(b"a", 5);
        m.put(b"a", 3);
        assert_eq!(m.latest(b"a"), Some(5));
        assert_eq!(m.latest(b"b"), None);
        assert!(!m.is_full());
        m.put(b"b", 1);
        assert!(m.is_full());
        assert_ne!(key_digest(b"a"), key_digest(b"b"));
    }

    #[test]
    fn bad_bytes_are_errors() {
        let mut b = keyed(&[(Some(b"a"), Some(b"1"))], 0);
        let n = b.len();
        b[n - 1] ^= 0xff;
        assert!(filter_batch(&b, false, |_, _| true).is_err());
        assert!(decode(&[1, 2, 3]).is_err());
    }
}
