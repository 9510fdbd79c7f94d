//! Kafka v2 record batches, read in place. A batch is stored exactly as the producer sent it;
//! only `base_offset` and `partition_leader_epoch` are patched, and the CRC does not cover them.
//!
//! Layout (big-endian): base_offset i64 | batch_length i32 | partition_leader_epoch i32 |
//! magic i8 | crc u32 | attributes i16 | last_offset_delta i32 | base_timestamp i64 |
//! max_timestamp i64 | producer_id i64 | producer_epoch i16 | base_sequence i32 |
//! records_count i32 | records...

/// Bytes before `batch_length`'s coverage starts (base_offset + batch_length).
pub const LOG_OVERHEAD: usize = 12;
/// Bytes of a v2 batch header.
pub const HEADER_BYTES: usize = 61;
/// Where the CRC-covered bytes start (the attributes field).
const CRC_START: usize = 21;

/// A batch header, parsed and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Whole batch size in bytes, including the 12-byte log overhead.
    pub size: usize,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    pub fn compression(&self) -> i16 {
        self.attributes & 0x7
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x8 != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
    /// The batch carries a producer id (an idempotent or transactional producer wrote it).
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }
    /// The producer fields of this batch, if it has a producer id.
    pub fn producer(&self) -> Option<super::producers::ProducerBatch> {
        self.has_producer_id().then(|| {
            let mut b = super::producers::ProducerBatch::new(
                self.producer_id,
                self.producer_epoch,
                self.base_sequence,
                self.last_offset_delta,
                self.max_timestamp,
            );
            b.transactional = self.is_transactional();
            b
        })
    }
}

/// Why a batch was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the header or the stated length needs.
    Truncated,
    /// The stated length is impossible (below a header's size).
    BadLength,
    /// Magic byte other than 2: v0/v1 message sets are not accepted.
    UnsupportedMagic(i8),
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
    /// Header fields that contradict each other or the records.
    Invalid(&'static str),
    /// Larger than `max.message.bytes`.
    TooLarge(usize),
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Reads the header at the start of `buf` without checking the CRC. Needs only the header's
/// bytes; `size` tells how many bytes the whole batch takes.
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_BYTES {
        return Err(BatchError::Truncated);
    }
    let length = be_i32(buf, 8);
    let body = usize::try_from(length).map_err(|_| BatchError::BadLength)?;
    if body < HEADER_BYTES - LOG_OVERHEAD {
        return Err(BatchError::BadLength);
    }
    let magic = buf[16] as i8;
    if magic != 2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    Ok(BatchHeader {
        base_offset: be_i64(buf, 0),
        size: body + LOG_OVERHEAD,
        partition_leader_epoch: be_i32(buf, 12),
        magic,
        crc: u32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]),
        attributes: be_i16(buf, 21),
        last_offset_delta: be_i32(buf, 23),
        base_timestamp: be_i64(buf, 27),
        max_timestamp: be_i64(buf, 35),
        producer_id: be_i64(buf, 43),
        producer_epoch: be_i16(buf, 51),
        base_sequence: be_i32(buf, 53),
        records_count: be_i32(buf, 57),
    })
}

/// Parses and fully checks one batch at the start of `buf`: header, length, CRC32C, and for
/// uncompressed batches the record framing and count. Returns the header; the batch occupies
/// `header.size` bytes.
pub fn check_batch(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = parse_header(buf)?;
    if buf.len() < h.size {
        return Err(BatchError::Truncated);
    }
    let computed = crc32c::crc32c(&buf[CRC_START..h.size]);
    if computed != h.crc {
        return Err(BatchError::CrcMismatch { stored: h.crc, computed });
    }
    if h.records_count < 0 || h.last_offset_delta < 0 {
        return Err(BatchError::Invalid("negative record count or offset delta"));
    }
    if h.compression() > 4 {
        return Err(BatchError::Invalid("unknown compression codec"));
    }
    if h.compression() == 0 {
        check_uncompressed_records(&buf[HEADER_BYTES..h.size], h.records_count)?;
    }
    Ok(h)
}

/// Walks the length-prefixed records of an uncompressed batch: each record's varint length
/// must fit, and their number must match the header.
fn check_uncompressed_records(mut body: &[u8], count: i32) -> Result<(), BatchError> {
    let mut seen: i32 = 0;
    while !body.is_empty() {
        let (len, used) = read_varint(body).ok_or(BatchError::Invalid("bad record length"))?;
        let len = usize::try_from(len).map_err(|_| BatchError::Invalid("negative record length"))?;
        let end = used.checked_add(len).ok_or(BatchError::Invalid("record length overflow"))?;
        if end > body.len() {
            return Err(BatchError::Invalid("record longer than its batch"));
        }
        body = &body[end..];
        seen = seen.saturating_add(1);
    }
    if seen != count {
        return Err(BatchError::Invalid("record count does not match the records"));
    }
    Ok(())
}

/// Reads a zigzag varint (at most 5 bytes, i32 range). Returns the value and bytes used.
pub fn read_varint(buf: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, b) in buf.iter().take(5).enumerate() {
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let v = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Some((v, i + 1));
        }
    }
    None
}

/// The 16 bytes that replace a batch's first 16: the assigned base offset, the batch length
/// unchanged, and the leader epoch.
pub fn patched_prefix(original: &[u8], base_offset: i64, leader_epoch: i32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0..8].copy_from_slice(&base_offset.to_be_bytes());
    p[8..12].copy_from_slice(&original[8..12]);
    p[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    p
}

/// Rewrites max_timestamp (and sets the LogAppendTime attribute) for topics that use broker
/// time, recomputing the CRC as Kafka does. Returns the new bytes from `attributes` on.
pub fn with_log_append_time(batch: &[u8], now_ms: i64) -> Vec<u8> {
    let mut b = batch.to_vec();
    let attrs = be_i16(&b, 21) | 0x8;
    b[21..23].copy_from_slice(&attrs.to_be_bytes());
    b[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A transaction marker: a control batch (transactional and control attributes) of one
/// record whose key is (version 0, type: 0 abort, 1 commit) and whose value is (version 0,
/// the coordinator's epoch), as Kafka writes them.
pub fn control_marker(producer_id: i64, epoch: i16, commit: bool, coordinator_epoch: i32, timestamp: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&i16::from(commit).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut b = encode_records(&[(Some(&key), Some(&value))], timestamp);
    b[21..23].copy_from_slice(&0x30i16.to_be_bytes());
    set_producer(&mut b, producer_id, epoch, -1);
    b
}

/// The marker type of a control batch (the whole batch at the start of `buf`): `Some(true)`
/// for a commit, `Some(false)` for an abort, `None` if it is not a readable marker.
pub fn control_type(buf: &[u8]) -> Option<bool> {
    control_marker_of(buf).map(|(commit, _)| commit)
}

/// A marker's type (true: commit) and its coordinator's epoch (-1 when its value does not
/// say), from a control batch at the start of `buf`.
pub fn control_marker_of(buf: &[u8]) -> Option<(bool, i32)> {
    let recs = uncompressed_records(buf).ok()?;
    let (_, key, value) = recs.first()?;
    let key = key.filter(|k| k.len() >= 4)?;
    let commit = match i16::from_be_bytes([key[2], key[3]]) {
        0 => false,
        1 => true,
        _ => return None,
    };
    let coordinator_epoch = value.filter(|v| v.len() >= 6).map_or(-1, |v| i32::from_be_bytes([v[2], v[3], v[4], v[5]]));
    Some((commit, coordinator_epoch))
}

/// Stamps an encoded batch with an idempotent producer's id, epoch and first sequence, and
/// recomputes its CRC.
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Encodes an uncompressed v2 batch of `values` (no keys, no headers, one timestamp), base
/// offset 0. The broker builds batches only for its internal topic; its load generator, its
/// simulator and its tests build theirs through this encoder too.
pub fn encode_values<V: AsRef<[u8]>>(values: &[V], base_timestamp: i64) -> Vec<u8> {
    let records: Vec<(Option<&[u8]>, Option<&[u8]>)> = values.iter().map(|v| (None, Some(v.as_ref()))).collect();
    encode_records(&records, base_timestamp)
}

/// Encodes an uncompressed v2 batch of (key, value) records; a `None` value is a tombstone.
pub fn encode_records(records: &[(Option<&[u8]>, Option<&[u8]>)], base_timestamp: i64) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (k, v)) in records.iter().enumerate() {
        let mut r = Vec::with_capacity(v.map_or(0, <[u8]>::len) + k.map_or(0, <[u8]>::len) + 8);
        r.push(0u8); // attributes
        put_varint(&mut r, 0); // timestamp delta
        put_varint(&mut r, i as i64); // offset delta
        for field in [k, v] {
            match field {
                Some(b) => {
                    put_varint(&mut r, b.len() as i64);
                    r.extend_from_slice(b);
                }
                None => put_varint(&mut r, -1),
            }
        }
        put_varint(&mut r, 0); // headers
        put_varint(&mut body, r.len() as i64);
        body.extend_from_slice(&r);
    }
    let count = i32::try_from(records.len()).expect("a batch holds at most i32::MAX records");
    let mut b = Vec::with_capacity(HEADER_BYTES + body.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    let length = i32::try_from(HEADER_BYTES - LOG_OVERHEAD + body.len()).expect("batch under 2 GiB");
    b.extend_from_slice(&length.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(count - 1).to_be_bytes());
    b.extend_from_slice(&base_timestamp.to_be_bytes());
    b.extend_from_slice(&base_timestamp.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(&body);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// One record of an uncompressed batch: its offset, key and value (`None` when null).
pub type RecordView<'a> = (i64, Option<&'a [u8]>, Option<&'a [u8]>);

/// The records of one checked, uncompressed batch at the start of `buf`.
pub fn uncompressed_records(buf: &[u8]) -> Result<Vec<RecordView<'_>>, BatchError> {
    let h = check_batch(buf)?;
    if h.compression() != 0 {
        return Err(BatchError::Invalid("compressed batch"));
    }
    let bad = BatchError::Invalid("bad record framing");
    let mut body = &buf[HEADER_BYTES..h.size];
    let mut out = Vec::new();
    while !body.is_empty() {
        let (len, n) = read_varlong(body).ok_or(bad.clone())?;
        let rec = body.get(n..n + usize::try_from(len).map_err(|_| bad.clone())?).ok_or(bad.clone())?;
        let mut at = 1; // attributes
        let (_, k) = read_varlong(&rec[at..]).ok_or(bad.clone())?; // timestamp delta
        at += k;
        let (off_delta, k) = read_varlong(&rec[at..]).ok_or(bad.clone())?;
        at += k;
        let mut field = || -> Result<Option<&[u8]>, BatchError> {
            let (len, k) = read_varlong(rec.get(at..).ok_or(bad.clone())?).ok_or(bad.clone())?;
            at += k;
            if len < 0 {
                return Ok(None);
            }
            let v = rec.get(at..at + usize::try_from(len).map_err(|_| bad.clone())?).ok_or(bad.clone())?;
            at += v.len();
            Ok(Some(v))
        };
        let key = field()?;
        let value = field()?;
        out.push((h.base_offset + off_delta, key, value));
        body = &body[n + rec.len()..];
    }
    Ok(out)
}

/// Appends a zigzag varint.
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Reads a zigzag varlong (at most 10 bytes). Returns the value and bytes used.
pub fn read_varlong(buf: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, b) in buf.iter().take(10).enumerate() {
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), i + 1));
        }
    }
    None
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A valid uncompressed batch (helper for other modules' tests).
    pub fn make_batch(values: &[&[u8]], base_timestamp: i64) -> Vec<u8> {
        super::encode_values(values, base_timestamp)
    }

    #[test]
    fn valid_batch_passes() {
        let b = make_batch(&[b"a", b"bc"], 1000);
        let h = check_batch(&b).unwrap();
        assert_eq!(h.records_count, 2);
        assert_eq!(h.last_offset_delta, 1);
        assert_eq!(h.size, b.len());
    }

    #[test]
    fn flipped_bit_fails_crc() {
        let mut b = make_batch(&[b"hello"], 1000);
        let last = b.len() - 2;
        b[last] ^= 1;
        assert!(matches!(check_batch(&b), Err(BatchError::CrcMismatch { .. })));
    }

    #[test]
    fn wrong_magic_and_lying_length_fail() {
        let mut b = make_batch(&[b"x"], 0);
        b[16] = 1;
        assert_eq!(check_batch(&b), Err(BatchError::UnsupportedMagic(1)));
        let mut b = make_batch(&[b"x"], 0);
        b[8..12].copy_from_slice(&1000i32.to_be_bytes());
        assert_eq!(check_batch(&b), Err(BatchError::Truncated));
        b[8..12].copy_from_slice(&3i32.to_be_bytes());
        assert_eq!(check_batch(&b), Err(BatchError::BadLength));
    }

    #[test]
    fn record_count_must_match() {
        let mut b = make_batch(&[b"x", b"y"], 0);
        b[57..61].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(check_batch(&b), Err(BatchError::Invalid(_))));
    }

    #[test]
    fn control_markers_round_trip() {
        for commit in [true, false] {
            let m = control_marker(42, 3, commit, 0, 1000);
            let h = check_batch(&m).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (42, 3, -1));
            assert_eq!(control_type(&m), Some(commit));
        }
        assert_eq!(control_type(&make_batch(&[b"x"], 0)), None);
    }

    #[test]
    fn patch_keeps_crc_valid() {
        let b = make_batch(&[b"x"], 0);
        let p = patched_prefix(&b, 12345, 7);
        let mut c = b.clone();
        c[..16].copy_from_slice(&p);
        let h = check_batch(&c).unwrap();
        assert_eq!(h.base_offset, 12345);
        assert_eq!(h.partition_leader_epoch, 7);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng: u64 = 0x9e3779b97f4a7c15;
        for len in 0..400usize {
            let mut buf = vec![0u8; len];
            for byte in buf.iter_mut() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *byte = rng as u8;
            }
            if len > 17 {
                buf[16] = 2;
            }
            let _ = check_batch(&buf);
        }
    }
}
