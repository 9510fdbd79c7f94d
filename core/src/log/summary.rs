//! A segment's summary (`<base offset>.batches`): what start-up recovery's scan of the
//! segment would find (each batch's place, offsets and timestamp; the producers' fields of
//! its batches; where leader epochs start in it), written once the segment is synced whole.
//! A restart reads the summary instead of every batch of the segment, so start-up costs what
//! the summaries weigh (a few bytes a batch), not what the log does (Kafka's recovery point
//! and clean-shutdown marker serve the same end).
//!
//! A summary is trusted only while it matches its segment: the segment file is as long as
//! the summary says, and its last batch's header (base offset, length, CRC) reads as the
//! summary recorded. A segment cut back, cleaned or grown since fails that and is scanned.
//! Summaries are not synced: one a crash tore fails its checksum, and the segment is
//! scanned as before.

use serde::{Deserialize, Serialize};

use super::producers::Replay;
use super::Entry;
use crate::types::Offset;

pub const EXT: &str = "batches";

/// Format version, first in the body: a summary of another version is ignored (scanned).
/// 2: markers carry their coordinator epoch.
const VERSION: u8 = 2;

/// What a scan of a segment finds besides its batches' places: the producer fields recovery
/// replays, and the batches whose leader epoch differs from the batch before them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRecord {
    pub replay: Vec<Replay>,
    pub epochs: Vec<(i32, Offset)>,
}

impl ScanRecord {
    pub fn note(&mut self, epoch: i32, base: Offset, replay: Option<Replay>) {
        if self.epochs.last().is_none_or(|(e, _)| *e != epoch) {
            self.epochs.push((epoch, base));
        }
        self.replay.extend(replay);
    }

    /// Forgets the batches at or past `offset` (the segment was cut there).
    pub fn truncate(&mut self, offset: Offset) {
        self.replay.retain(|r| r.offset() < offset);
        self.epochs.retain(|(_, s)| *s < offset);
    }
}

/// Where a segment's summary stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryState {
    /// None on disk that matches the segment.
    Missing,
    /// Being written, describing the segment at this size.
    Writing(u64),
    /// On disk, describing the segment at this size.
    Written(u64),
    /// Its write failed: not tried again until the next start.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub base_offset: Offset,
    /// The segment file's length it describes.
    pub size: u64,
    /// The CRC of the segment's last batch (0 for an empty segment).
    pub last_crc: u32,
    pub entries: Vec<Entry>,
    pub record: ScanRecord,
}

pub fn file_name(base_offset: Offset) -> String {
    super::segment_file_name(base_offset, EXT)
}

pub fn encode(s: &Summary) -> Vec<u8> {
    let mut body = vec![VERSION];
    body.extend(postcard::to_allocvec(s).expect("summaries serialize"));
    crate::metadata::encode_frame(&body)
}

/// The summary in `buf`, if all of it is one valid frame of this version.
pub fn decode(buf: &[u8]) -> Option<Summary> {
    let (frames, valid) = crate::metadata::decode_frames(buf);
    match frames.as_slice() {
        [one] if valid == buf.len() && one.first() == Some(&VERSION) => postcard::from_bytes(&one[1..]).ok(),
        _ => None,
    }
}

impl Summary {
    /// Whether the segment file, `len` bytes long with `last_header` read at its last
    /// batch's position, is the one this summary describes.
    pub fn matches(&self, len: u64, last_header: &[u8]) -> bool {
        if len != self.size {
            return false;
        }
        let Some(e) = self.entries.last() else {
            return len == 0;
        };
        super::batch::parse_header(last_header).is_ok_and(|h| {
            h.base_offset == self.base_offset + i64::from(e.base_delta)
                && h.size == e.size as usize
                && h.crc == self.last_crc
        })
    }

    /// Where the last batch's header is, to check with `matches`.
    pub fn last_header_at(&self) -> Option<u64> {
        self.entries.last().map(|e| u64::from(e.position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::producers::ProducerBatch;

    fn sample() -> Summary {
        let mut record = ScanRecord::default();
        record.note(3, 10, Some(Replay::Data(ProducerBatch::new(7, 0, 0, 4, 99), 10, 14)));
        record.note(3, 15, None);
        record.note(
            4,
            16,
            Some(Replay::Marker { producer_id: 7, epoch: 0, commit: true, offset: 16, coordinator_epoch: 3 }),
        );
        Summary {
            base_offset: 10,
            size: 300,
            last_crc: 0xdead_beef,
            entries: vec![
                Entry { base_delta: 0, last_delta: 4, position: 0, size: 150, max_timestamp: 99 },
                Entry { base_delta: 5, last_delta: 5, position: 150, size: 80, max_timestamp: 100 },
                Entry { base_delta: 6, last_delta: 6, position: 230, size: 70, max_timestamp: 101 },
            ],
            record,
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let s = sample();
        assert_eq!(s.record.epochs, vec![(3, 10), (4, 16)]);
        let bytes = encode(&s);
        assert_eq!(decode(&bytes), Some(s.clone()));
        for cut in [0, 1, 8, bytes.len() - 1] {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode(&flipped), None);
        let mut longer = bytes;
        longer.push(0);
        assert_eq!(decode(&longer), None);
    }

    #[test]
    fn truncating_the_record_forgets_what_was_cut() {
        let mut s = sample();
        s.record.truncate(16);
        assert_eq!(s.record.epochs, vec![(3, 10)]);
        assert_eq!(s.record.replay.len(), 1);
        s.record.truncate(10);
        assert_eq!(s.record, ScanRecord::default());
    }

    #[test]
    fn matches_only_the_file_it_describes() {
        use crate::log::batch::tests::make_batch;
        let mut batch = make_batch(&[b"x"], 5);
        batch[..8].copy_from_slice(&16i64.to_be_bytes());
        let h = crate::log::batch::check_batch(&batch).unwrap();
        let mut s = sample();
        s.last_crc = h.crc;
        s.entries[2].size = h.size as u32;
        s.size = 230 + h.size as u64;
        assert!(s.matches(s.size, &batch[..crate::log::batch::HEADER_BYTES]));
        assert!(!s.matches(s.size + 1, &batch), "a longer file");
        assert!(!s.matches(s.size - 1, &batch), "a shorter file");
        let mut other = batch.clone();
        other[..8].copy_from_slice(&17i64.to_be_bytes());
        assert!(!s.matches(s.size, &other), "another base offset");
        s.last_crc ^= 1;
        assert!(!s.matches(s.size, &batch), "another CRC");
        let empty = Summary { entries: vec![], size: 0, ..sample() };
        assert!(empty.matches(0, &[]));
        assert!(!empty.matches(61, &[]));
    }
}
