//! One partition replica's log: segments of v2 record batches, stored as received.
//!
//! Core keeps a dense in-memory index of every batch in every segment (offset, byte position,
//! max timestamp), so a fetch or a timestamp lookup never has to read the file: it becomes a
//! file range the runtime sends with `sendfile`. The `.index` and `.timeindex` files are kept
//! in Kafka's format for tools and operators, and are rebuilt from the log on recovery.

pub mod batch;
pub mod cleaner;
pub mod epochs;
pub mod producers;
pub mod records;
pub mod summary;

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::config::TopicSettings;
use crate::io::DiskOp;
use crate::types::{FileId, Offset};
use batch::{BatchError, BatchHeader};

/// One batch in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// base offset minus the segment's base offset
    pub base_delta: u32,
    /// last offset minus the segment's base offset
    pub last_delta: u32,
    pub position: u32,
    pub size: u32,
    pub max_timestamp: i64,
}

#[derive(Debug)]
pub struct Segment {
    pub base_offset: Offset,
    pub log_file: FileId,
    pub index_file: FileId,
    pub time_index_file: FileId,
    /// Bytes appended (synced or not).
    pub size: u64,
    pub entries: Vec<Entry>,
    /// Wall-clock time the segment was created, for `segment.ms`.
    pub created_wall_ms: i64,
    index_bytes: u64,
    time_index_bytes: u64,
    bytes_since_index_entry: u64,
    max_timestamp: i64,
    /// What recovery's scan would find besides `entries`, kept until the segment's summary
    /// is written (then dropped, unless the segment is the active one). None for a segment
    /// whose summary is written, or whose batches were not all seen (a cleaned one).
    pub record: Option<summary::ScanRecord>,
    pub summary: summary::SummaryState,
    /// The CRC of the last batch, for the summary (unknown after a cut, until a batch is
    /// added).
    last_crc: Option<u32>,
}

pub fn segment_file_name(base_offset: Offset, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

impl Segment {
    pub fn new(base_offset: Offset, files: [FileId; 3], created_wall_ms: i64) -> Segment {
        Segment {
            base_offset,
            log_file: files[0],
            index_file: files[1],
            time_index_file: files[2],
            size: 0,
            entries: Vec::new(),
            created_wall_ms,
            index_bytes: 0,
            time_index_bytes: 0,
            bytes_since_index_entry: 0,
            max_timestamp: -1,
            record: Some(summary::ScanRecord::default()),
            summary: summary::SummaryState::Missing,
            last_crc: Some(0),
        }
    }

    /// This segment as recovery found it, for its summary.
    fn summary(&self) -> Option<summary::Summary> {
        Some(summary::Summary {
            base_offset: self.base_offset,
            size: self.size,
            last_crc: self.last_crc?,
            entries: self.entries.clone(),
            record: self.record.clone()?,
        })
    }

    /// Takes what a summary says of this (just opened) segment, as a scan would have found it.
    pub fn restore(&mut self, s: summary::Summary) {
        self.size = s.size;
        self.max_timestamp = s.entries.iter().map(|e| e.max_timestamp).max().unwrap_or(-1);
        self.entries = s.entries;
        self.record = Some(s.record);
        self.last_crc = Some(s.last_crc);
        self.summary = summary::SummaryState::Written(s.size);
    }

    /// One past the last offset in this segment.
    pub fn next_offset(&self) -> Offset {
        self.entries.last().map_or(self.base_offset, |e| self.base_offset + i64::from(e.last_delta) + 1)
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Records a batch at the end of the segment; returns sparse-index writes that are due.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        h: &BatchHeader,
        base_offset: Offset,
        epoch: i32,
        replay: Option<producers::Replay>,
        interval: u32,
        ops: &mut Vec<DiskOp>,
    ) {
        if let Some(r) = self.record.as_mut() {
            r.note(epoch, base_offset, replay);
        }
        self.last_crc = Some(h.crc);
        // A summary written before this batch no longer describes the segment.
        self.summary = match self.summary {
            summary::SummaryState::Failed => summary::SummaryState::Failed,
            _ => summary::SummaryState::Missing,
        };
        let entry = Entry {
            base_delta: u32::try_from(base_offset - self.base_offset).expect("segment rolled before offset overflow"),
            last_delta: u32::try_from(base_offset + i64::from(h.last_offset_delta) - self.base_offset)
                .expect("segment rolled before offset overflow"),
            position: u32::try_from(self.size).expect("segment rolled before position overflow"),
            size: u32::try_from(h.size).expect("batch size bounded by the frame limit"),
            max_timestamp: h.max_timestamp,
        };
        self.entries.push(entry);
        self.size += h.size as u64;
        self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
        self.bytes_since_index_entry += h.size as u64;
        if self.bytes_since_index_entry >= u64::from(interval) {
            self.bytes_since_index_entry = 0;
            let (idx, tidx) = index_entry_bytes(&entry, self.max_timestamp);
            ops.push(DiskOp::Write {
                file: self.index_file,
                position: self.index_bytes,
                data: vec![Bytes::copy_from_slice(&idx)],
            });
            ops.push(DiskOp::Write {
                file: self.time_index_file,
                position: self.time_index_bytes,
                data: vec![Bytes::copy_from_slice(&tidx)],
            });
            self.index_bytes += idx.len() as u64;
            self.time_index_bytes += tidx.len() as u64;
        }
    }

    /// Rewrites both index files from the in-memory entries (after recovery or truncation).
    fn rewrite_indexes(&mut self, interval: u32, ops: &mut Vec<DiskOp>) {
        let mut idx = Vec::new();
        let mut tidx = Vec::new();
        let mut since = 0u64;
        let mut max_ts = -1i64;
        for e in &self.entries {
            since += u64::from(e.size);
            max_ts = max_ts.max(e.max_timestamp);
            if since >= u64::from(interval) {
                since = 0;
                let (a, b) = index_entry_bytes(e, max_ts);
                idx.extend_from_slice(&a);
                tidx.extend_from_slice(&b);
            }
        }
        self.bytes_since_index_entry = since;
        self.index_bytes = idx.len() as u64;
        self.time_index_bytes = tidx.len() as u64;
        for (file, data) in [(self.index_file, idx), (self.time_index_file, tidx)] {
            ops.push(DiskOp::Truncate { file, len: 0 });
            if !data.is_empty() {
                ops.push(DiskOp::Write { file, position: 0, data: vec![Bytes::from(data)] });
            }
        }
    }

    fn loc(&self, e: &Entry) -> BatchLoc {
        BatchLoc {
            file: self.log_file,
            position: u64::from(e.position),
            size: e.size,
            base_offset: self.base_offset + i64::from(e.base_delta),
            last_offset: self.base_offset + i64::from(e.last_delta),
            max_timestamp: e.max_timestamp,
        }
    }

    /// Index of the batch holding `offset`, if the segment has it.
    fn find(&self, offset: Offset) -> Option<usize> {
        let delta = u32::try_from(offset - self.base_offset).ok()?;
        let i = self.entries.partition_point(|e| e.last_delta < delta);
        (i < self.entries.len()).then_some(i)
    }

    /// Drops every batch at or after `offset`; returns the new size in bytes.
    fn truncate_to(&mut self, offset: Offset) -> u64 {
        let delta = u32::try_from((offset - self.base_offset).max(0)).unwrap_or(u32::MAX);
        let keep = self.entries.partition_point(|e| e.base_delta < delta);
        if keep < self.entries.len() {
            self.entries.truncate(keep);
            if let Some(r) = self.record.as_mut() {
                r.truncate(offset);
            }
            self.last_crc = self.entries.is_empty().then_some(0);
        }
        self.size = self.entries.last().map_or(0, |e| u64::from(e.position) + u64::from(e.size));
        self.max_timestamp = self.entries.iter().map(|e| e.max_timestamp).max().unwrap_or(-1);
        self.size
    }
}

/// Kafka's on-disk index entries: `.index` is (relative offset i32, position i32) for the
/// batch's last offset; `.timeindex` is (max timestamp so far i64, relative offset i32).
fn index_entry_bytes(e: &Entry, max_ts: i64) -> ([u8; 8], [u8; 12]) {
    let mut idx = [0u8; 8];
    idx[0..4].copy_from_slice(&e.last_delta.to_be_bytes());
    idx[4..8].copy_from_slice(&e.position.to_be_bytes());
    let mut tidx = [0u8; 12];
    tidx[0..8].copy_from_slice(&max_ts.to_be_bytes());
    tidx[8..12].copy_from_slice(&e.last_delta.to_be_bytes());
    (idx, tidx)
}

/// Where one batch is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLoc {
    pub file: FileId,
    pub position: u64,
    pub size: u32,
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp: i64,
}

/// What a read of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// The offset is below the log start or above the high watermark.
    OutOfRange,
    /// Nothing to return yet (the offset is the high watermark).
    Empty,
    /// Whole batches in one segment file.
    Range { file: FileId, position: u64, len: u32 },
}

/// A partition's log, with its durability state.
#[derive(Debug)]
pub struct PartitionLog {
    pub dir: String,
    pub segments: Vec<Segment>,
    pub log_start_offset: Offset,
    /// Offsets below it are written (or being written): the next append gets it.
    pub log_end_offset: Offset,
    /// Offsets below it are synced to this node's disk.
    pub durable_end: Offset,
    /// Offsets below it are durable on enough replicas to be acknowledged and shown to
    /// consumers. On a partition with one replica it is the durable end.
    pub high_watermark: Offset,
    /// Where each leader epoch's batches start.
    pub epochs: epochs::EpochCache,
    /// Bumped whenever the log is cut back, so a sync issued before the cut cannot advance
    /// the high watermark over offsets that were since rewritten.
    pub generation: u64,
    /// Segment files with completed writes or truncations since their last sync was issued
    /// (the node adds them as those operations complete).
    pub dirty: BTreeSet<FileId>,
    /// Idempotent producers' sequences and last batches, as of the log end offset.
    pub producers: producers::Producers,
    /// The segment whose cleaned copy is being renamed over it: retention and DeleteRecords
    /// leave it alone until the rename is done.
    pub swapping: Option<Offset>,
    /// A sealed segment may be waiting for its sync before its summary is written.
    pub summaries_waiting: bool,
}

/// Hands out file ids; the node owns the counter.
pub trait FileIds {
    fn next_file_id(&mut self) -> FileId;
}

impl PartitionLog {
    /// A log with no segments yet (recovery or creation adds the first).
    pub fn empty(dir: String) -> PartitionLog {
        PartitionLog {
            dir,
            segments: Vec::new(),
            log_start_offset: 0,
            log_end_offset: 0,
            durable_end: 0,
            high_watermark: 0,
            epochs: epochs::EpochCache::default(),
            generation: 0,
            dirty: BTreeSet::new(),
            producers: producers::Producers::default(),
            swapping: None,
            summaries_waiting: false,
        }
    }

    /// Opens (creating) the three files of a new segment starting at `base_offset`.
    pub fn add_segment(&mut self, base_offset: Offset, wall_ms: i64, ids: &mut dyn FileIds, ops: &mut Vec<DiskOp>) {
        let files = [ids.next_file_id(), ids.next_file_id(), ids.next_file_id()];
        for (file, ext) in files.iter().zip(["log", "index", "timeindex"]) {
            ops.push(DiskOp::Open {
                file: *file,
                path: format!("{}/{}", self.dir, segment_file_name(base_offset, ext)),
                create: true,
            });
        }
        self.segments.push(Segment::new(base_offset, files, wall_ms));
        self.summaries_waiting = true;
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("a serving log has at least one segment")
    }

    /// Appends one checked batch as the leader of `leader_epoch`. Assigns its offsets, stamps
    /// the epoch, issues its write (the producer's bytes behind a patched 16-byte prefix,
    /// without copying them), rolls the segment when due. Returns the batch's base offset and
    /// the index in `ops` of the data write.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        batch: &Bytes,
        header: &BatchHeader,
        leader_epoch: i32,
        settings: &TopicSettings,
        wall_ms: i64,
        ids: &mut dyn FileIds,
        ops: &mut Vec<DiskOp>,
    ) -> (Offset, usize) {
        let base = self.log_end_offset;
        self.roll_if_due(base, header, settings, wall_ms, ids, ops);
        let mut h = *header;
        let data = if settings.log_append_time {
            let rewritten = batch::with_log_append_time(batch, wall_ms);
            h.max_timestamp = wall_ms;
            h.crc = batch::parse_header(&rewritten).map_or(h.crc, |r| r.crc);
            let mut all = Vec::with_capacity(rewritten.len());
            all.extend_from_slice(&batch::patched_prefix(&rewritten, base, leader_epoch));
            all.extend_from_slice(&rewritten[16..]);
            vec![Bytes::from(all)]
        } else {
            let prefix = batch::patched_prefix(batch, base, leader_epoch);
            vec![Bytes::copy_from_slice(&prefix), batch.slice(16..header.size)]
        };
        self.epochs.assign(leader_epoch, base);
        let replay = producers::Replay::of(&h, base, batch);
        (base, self.push_write(data, &h, (base, leader_epoch, replay), settings, ops))
    }

    /// Appends a batch a follower fetched from its leader, as it is: its offsets and epoch are
    /// the leader's. The caller has checked it and that it starts at or past the log end
    /// offset (past it where the leader's cleaner removed batches). Returns the index in `ops`
    /// of the data write.
    pub fn append_replicated(
        &mut self,
        batch: Bytes,
        header: &BatchHeader,
        settings: &TopicSettings,
        wall_ms: i64,
        ids: &mut dyn FileIds,
        ops: &mut Vec<DiskOp>,
    ) -> usize {
        let base = header.base_offset;
        debug_assert!(base >= self.log_end_offset);
        self.roll_if_due(base, header, settings, wall_ms, ids, ops);
        self.epochs.assign(header.partition_leader_epoch, base);
        let replay = producers::Replay::of(header, base, &batch);
        self.push_write(vec![batch], header, (base, header.partition_leader_epoch, replay), settings, ops)
    }

    /// Writes a batch at the end of the active segment; `at` is its base offset, leader
    /// epoch and what it means to producer state.
    fn push_write(
        &mut self,
        data: Vec<Bytes>,
        h: &BatchHeader,
        at: (Offset, i32, Option<producers::Replay>),
        settings: &TopicSettings,
        ops: &mut Vec<DiskOp>,
    ) -> usize {
        let (base, epoch, replay) = at;
        let seg = self.segments.last_mut().expect("at least one segment");
        let data_op = ops.len();
        ops.push(DiskOp::Write { file: seg.log_file, position: seg.size, data });
        seg.push(h, base, epoch, replay, settings.index_interval_bytes, ops);
        self.log_end_offset = base + i64::from(h.last_offset_delta) + 1;
        data_op
    }

    fn roll_if_due(
        &mut self,
        base: Offset,
        header: &BatchHeader,
        settings: &TopicSettings,
        wall_ms: i64,
        ids: &mut dyn FileIds,
        ops: &mut Vec<DiskOp>,
    ) {
        let active = self.active();
        let offset_span = base + i64::from(header.last_offset_delta) - active.base_offset;
        let roll = !active.entries.is_empty()
            && (active.size + header.size as u64 > settings.segment_bytes
                || offset_span > i64::from(i32::MAX)
                || (settings.segment_ms > 0 && wall_ms - active.created_wall_ms >= settings.segment_ms));
        if roll {
            self.add_segment(base, wall_ms, ids, ops);
        }
    }

    /// Whole batches from `offset` up to (not past) `upper`, at most `max_bytes` unless the
    /// first batch alone is bigger and `min_one` (Kafka returns at least one batch, KIP-74).
    /// For consumers: batches the cleaner emptied are skipped at the start of a read (a
    /// response holding nothing but empty batches reads to librdkafka as a record too large
    /// for its buffer, which it doubles, and after ten such answers it gives up).
    pub fn read(&self, offset: Offset, upper: Offset, max_bytes: usize, min_one: bool) -> ReadResult {
        if offset < self.log_start_offset {
            return ReadResult::OutOfRange;
        }
        self.read_from(offset, upper, max_bytes, min_one, true)
    }

    /// `read` for a follower: from the start of the batch holding the log start on, since
    /// followers copy whole batches and a log start set by DeleteRecords need not fall on a
    /// batch boundary.
    /// Followers get every batch, empty ones too (a producer's last batch carries its
    /// sequence).
    pub fn read_replica(&self, offset: Offset, upper: Offset, max_bytes: usize, min_one: bool) -> ReadResult {
        if offset < self.log_start_offset && offset < self.batch_aligned_start() {
            return ReadResult::OutOfRange;
        }
        self.read_from(offset, upper, max_bytes, min_one, false)
    }

    /// Where the batch holding the log start begins (the log start itself when it is a
    /// batch's first offset, or past every batch).
    pub fn batch_aligned_start(&self) -> Offset {
        let start = self.log_start_offset;
        let si = self.segments.partition_point(|s| s.base_offset <= start).saturating_sub(1);
        let seg = self.segments.get(si);
        seg.and_then(|s| Some(s.base_offset + i64::from(s.entries[s.find(start)?].base_delta))).unwrap_or(start)
    }

    fn read_from(
        &self,
        offset: Offset,
        upper: Offset,
        max_bytes: usize,
        min_one: bool,
        skip_empty: bool,
    ) -> ReadResult {
        if offset > upper {
            return ReadResult::OutOfRange;
        }
        if offset == upper {
            return ReadResult::Empty;
        }
        let mut si = self.segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1);
        let (seg, first) = loop {
            let Some(seg) = self.segments.get(si) else {
                return ReadResult::Empty;
            };
            let mut first = seg.find(offset.max(seg.base_offset)).unwrap_or(seg.entries.len());
            while skip_empty && seg.entries.get(first).is_some_and(|e| e.size as usize == batch::HEADER_BYTES) {
                if seg.base_offset + i64::from(seg.entries[first].last_delta) >= upper {
                    return ReadResult::Empty;
                }
                first += 1;
            }
            if first < seg.entries.len() {
                break (seg, first);
            }
            // The offset falls in a gap (or a run of emptied batches) at the end of a
            // segment: go on in the next one.
            match self.segments.get(si + 1) {
                Some(next) if next.base_offset < upper => si += 1,
                _ => return ReadResult::Empty,
            }
        };
        let start = u64::from(seg.entries[first].position);
        let mut end = start;
        for e in &seg.entries[first..] {
            if seg.base_offset + i64::from(e.last_delta) >= upper {
                break;
            }
            let e_end = u64::from(e.position) + u64::from(e.size);
            if e_end - start > max_bytes as u64 && !(min_one && end == start) {
                break;
            }
            end = e_end;
        }
        if end == start {
            return ReadResult::Empty;
        }
        ReadResult::Range { file: seg.log_file, position: start, len: u32::try_from(end - start).unwrap_or(u32::MAX) }
    }

    /// The first batch below `upper` whose max timestamp is at or after `ts`: the record
    /// ListOffsets looks for is in it (the caller reads it to find which one).
    pub fn batch_for_timestamp(&self, ts: i64, upper: Offset) -> Option<BatchLoc> {
        for seg in self.segments.iter().filter(|s| s.max_timestamp >= ts) {
            for e in &seg.entries {
                let loc = seg.loc(e);
                if loc.last_offset >= upper {
                    return None;
                }
                if e.max_timestamp >= ts && loc.base_offset >= self.log_start_offset {
                    return Some(loc);
                }
            }
        }
        None
    }

    /// The batch below `upper` holding the largest timestamp (ListOffsets MAX_TIMESTAMP).
    pub fn batch_with_max_timestamp(&self, upper: Offset) -> Option<BatchLoc> {
        let mut best: Option<BatchLoc> = None;
        for seg in &self.segments {
            for e in &seg.entries {
                let loc = seg.loc(e);
                if loc.last_offset >= upper {
                    return best;
                }
                if best.as_ref().is_none_or(|b| e.max_timestamp > b.max_timestamp) {
                    best = Some(loc);
                }
            }
        }
        best
    }

    /// Cuts the log back so that `offset` is the next to be written. Issues the truncation of
    /// the affected segment files and deletes segments wholly past it (never the first).
    pub fn truncate_to(&mut self, offset: Offset, interval: u32, ops: &mut Vec<DiskOp>) {
        if offset >= self.log_end_offset {
            return;
        }
        self.generation += 1;
        while self.segments.len() > 1 && self.segments.last().is_some_and(|s| s.base_offset >= offset) {
            let seg = self.segments.pop().expect("checked");
            self.dirty.remove(&seg.log_file);
            self.delete_segment_files(&seg, ops);
        }
        let seg = self.segments.last_mut().expect("at least one segment");
        let was = seg.size;
        let len = seg.truncate_to(offset);
        if len < was && !matches!(seg.summary, summary::SummaryState::Missing | summary::SummaryState::Failed) {
            // Gone before the cut (operations complete in issue order).
            seg.summary = summary::SummaryState::Missing;
            ops.push(DiskOp::DeleteFile { path: format!("{}/{}", self.dir, summary::file_name(seg.base_offset)) });
        }
        ops.push(DiskOp::Truncate { file: seg.log_file, len });
        seg.rewrite_indexes(interval, ops);
        self.log_end_offset = seg.next_offset().max(seg.base_offset);
        self.durable_end = self.durable_end.min(self.log_end_offset);
        self.high_watermark = self.high_watermark.min(self.log_end_offset);
        self.epochs.truncate_to(self.log_end_offset);
        if !crate::mutants::active(crate::mutants::Mutant::ProducerStateNotCut) {
            self.producers.truncate(self.log_end_offset);
        }
    }

    /// Empties the log and starts it again at `offset`, past everything it held: a follower
    /// whose next offset has fallen below its leader's log start (retention or DeleteRecords
    /// removed what it would fetch) starts where the leader's log does (at the start of the
    /// batch holding it), as Kafka's followers do.
    pub fn restart_at(&mut self, offset: Offset, wall_ms: i64, ids: &mut dyn FileIds, ops: &mut Vec<DiskOp>) {
        debug_assert!(offset > self.log_end_offset);
        self.generation += 1;
        for seg in std::mem::take(&mut self.segments) {
            self.delete_segment_files(&seg, ops);
        }
        self.dirty.clear();
        self.add_segment(offset, wall_ms, ids, ops);
        self.log_start_offset = offset;
        self.log_end_offset = offset;
        self.durable_end = offset;
        self.high_watermark = offset;
        self.epochs = epochs::EpochCache::default();
        self.producers = producers::Producers::default();
    }

    fn delete_segment_files(&self, seg: &Segment, ops: &mut Vec<DiskOp>) {
        // The summary first: one left behind a deleted segment would describe a new one
        // made under its name (it would not match it, but need not be read at all).
        ops.push(DiskOp::DeleteFile { path: format!("{}/{}", self.dir, summary::file_name(seg.base_offset)) });
        for (file, ext) in [(seg.log_file, "log"), (seg.index_file, "index"), (seg.time_index_file, "timeindex")] {
            ops.push(DiskOp::Close { file });
            ops.push(DiskOp::DeleteFile { path: format!("{}/{}", self.dir, segment_file_name(seg.base_offset, ext)) });
        }
    }

    /// The summaries that can be written now, each marked as being written: of every sealed
    /// segment synced whole that has none, and, with `active`, of the active segment too
    /// once the whole log is synced (a node shutting down). Returns (base offset, bytes).
    pub fn summaries_due(&mut self, active: bool) -> Vec<(Offset, Vec<u8>)> {
        let mut out = Vec::new();
        if !self.summaries_waiting && !active {
            return out;
        }
        let unchecked = crate::mutants::active(crate::mutants::Mutant::SummaryUnchecked);
        let n = self.segments.len();
        let mut waiting = false;
        for (i, seg) in self.segments.iter_mut().enumerate() {
            let sealed = i + 1 < n;
            let synced =
                if sealed { seg.next_offset() <= self.durable_end } else { self.durable_end >= self.log_end_offset };
            let wanted = if sealed { synced || unchecked } else { active && synced };
            if seg.summary != summary::SummaryState::Missing || self.swapping == Some(seg.base_offset) {
                continue;
            }
            if !wanted {
                waiting |= sealed && seg.record.is_some();
                continue;
            }
            let Some(s) = seg.summary() else { continue };
            let bytes = summary::encode(&s);
            if bytes.len() > crate::limits::SEGMENT_SUMMARY_BYTES_MAX {
                seg.summary = summary::SummaryState::Failed;
                continue;
            }
            seg.summary = summary::SummaryState::Writing(seg.size);
            out.push((seg.base_offset, bytes));
        }
        self.summaries_waiting = waiting;
        out
    }

    /// Whether a summary is still to be written (or being written) for a segment that can
    /// have one, with `active`, the active segment's included.
    pub fn summaries_pending(&self, active: bool) -> bool {
        let n = self.segments.len();
        self.segments.iter().enumerate().any(|(i, seg)| {
            (i + 1 < n || active)
                && self.swapping != Some(seg.base_offset)
                && match seg.summary {
                    summary::SummaryState::Writing(_) => true,
                    summary::SummaryState::Missing => seg.record.is_some() && seg.last_crc.is_some(),
                    _ => false,
                }
        })
    }

    /// A summary's write ended: the segment's record is kept only while the segment may still
    /// grow (the active one).
    pub fn summary_written(&mut self, base: Offset, ok: bool) {
        let active = self.segments.last().map(|s| s.base_offset);
        let Some(seg) = self.segments.iter_mut().find(|s| s.base_offset == base) else { return };
        let summary::SummaryState::Writing(size) = seg.summary else { return };
        if !ok {
            seg.summary = summary::SummaryState::Failed;
        } else if size == seg.size {
            seg.summary = summary::SummaryState::Written(size);
            if active != Some(base) {
                seg.record = None;
            }
        } else {
            seg.summary = summary::SummaryState::Missing; // it grew meanwhile
        }
    }

    /// Deletes whole segments past retention (time or size), never the active one and never
    /// data above the high watermark. Returns how many segments went.
    pub fn apply_retention(&mut self, settings: &TopicSettings, wall_ms: i64, ops: &mut Vec<DiskOp>) -> usize {
        let mut removed = 0;
        if !settings.delete {
            return 0; // a compacted topic keeps every key's latest record however old
        }
        let mut total: i64 = self.segments.iter().map(|s| s.size as i64).sum();
        while self.segments.len() > 1 {
            let seg = &self.segments[0];
            let next_base = self.segments[1].base_offset;
            let too_old = settings.retention_ms >= 0
                && seg.max_timestamp >= 0
                && wall_ms - seg.max_timestamp > settings.retention_ms;
            let too_big = settings.retention_bytes >= 0 && total - seg.size as i64 >= settings.retention_bytes;
            if !(too_old || too_big) || next_base > self.high_watermark || self.swapping == Some(seg.base_offset) {
                break;
            }
            total -= seg.size as i64;
            let seg = self.segments.remove(0);
            self.delete_segment_files(&seg, ops);
            self.log_start_offset = self.log_start_offset.max(next_base);
            removed += 1;
        }
        if removed > 0 {
            self.producers.forget_aborted_below(self.log_start_offset);
        }
        removed
    }

    /// Moves the log start to `offset` (DeleteRecords; at most the high watermark) and
    /// deletes the whole segments below it, never the active one.
    pub fn advance_log_start(&mut self, offset: Offset, ops: &mut Vec<DiskOp>) {
        debug_assert!(offset <= self.high_watermark);
        self.log_start_offset = self.log_start_offset.max(offset);
        while self.segments.len() > 1
            && self.segments[1].base_offset <= self.log_start_offset
            && self.swapping != Some(self.segments[0].base_offset)
        {
            let seg = self.segments.remove(0);
            self.dirty.remove(&seg.log_file);
            self.delete_segment_files(&seg, ops);
        }
        self.producers.forget_aborted_below(self.log_start_offset);
    }

    /// Puts a segment's cleaned copy in its place (the file was renamed over it): its batches,
    /// size and file. Returns false if the segment is no longer this log's.
    pub fn swap_cleaned(
        &mut self,
        base: Offset,
        old: FileId,
        new: FileId,
        (entries, (record, last_crc)): (Vec<Entry>, (summary::ScanRecord, u32)),
        interval: u32,
        ops: &mut Vec<DiskOp>,
    ) -> bool {
        let Some(seg) = self.segments.iter_mut().find(|s| s.base_offset == base && s.log_file == old) else {
            return false;
        };
        seg.size = entries.last().map_or(0, |e| u64::from(e.position) + u64::from(e.size));
        seg.max_timestamp = entries.iter().map(|e| e.max_timestamp).max().unwrap_or(-1);
        seg.entries = entries;
        seg.log_file = new;
        // Its summary is of the copy now (the cleaner noted what a scan of it would find).
        seg.last_crc = Some(if seg.entries.is_empty() { 0 } else { last_crc });
        seg.record = Some(record);
        seg.summary = summary::SummaryState::Missing;
        self.summaries_waiting = true;
        ops.push(DiskOp::DeleteFile { path: format!("{}/{}", self.dir, summary::file_name(base)) });
        seg.rewrite_indexes(interval, ops);
        ops.push(DiskOp::Close { file: old });
        self.dirty.remove(&old);
        true
    }

    /// True if `file` is one of this log's live segment files.
    pub fn has_log_file(&self, file: FileId) -> bool {
        self.segments.iter().any(|s| s.log_file == file)
    }

    /// The last stable offset: below it every transaction is decided (read_committed reads
    /// up to it); the high watermark, or the first offset of the oldest open transaction.
    pub fn last_stable_offset(&self) -> Offset {
        if crate::mutants::active(crate::mutants::Mutant::StablePastOpenTxn) {
            return self.high_watermark;
        }
        self.producers
            .first_open_offset(self.high_watermark)
            .map_or(self.high_watermark, |o| o.min(self.high_watermark))
    }

    /// Bytes held by the log.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
}

/// Rebuilds one segment's in-memory index from its file, a chunk at a time.
#[derive(Debug)]
pub enum Scan {
    /// Read again from `position`, at least `len` bytes.
    NeedMore { position: u64, len: usize },
    /// The segment is valid up to its current size and the file ends there.
    Clean,
    /// Bytes from `position` on are torn or corrupt and must be cut off.
    Torn { position: u64, reason: BatchError },
    /// The batch at `position` starts past the offset its predecessor ends at: the cleaner
    /// removed batches there, or a read garbled its base offset (which its CRC does not
    /// cover). Accepted once two reads agree (`gap_ok`).
    Gap { position: u64 },
}

impl Segment {
    /// Feeds `data`, read from `position` == `self.size`. `eof` says the read came back
    /// shorter than asked, so nothing follows it.
    /// What each good batch means to producer state, and its leader epoch, go to the
    /// segment's `record`, for the node to replay once the segment is accepted.
    pub fn recover_chunk(
        &mut self,
        data: &[u8],
        eof: bool,
        chunk_bytes: usize,
        interval: u32,
        gap_ok: Option<u64>,
    ) -> Scan {
        let mut at = 0usize;
        loop {
            let rest = &data[at..];
            if rest.is_empty() {
                return if eof { Scan::Clean } else { Scan::NeedMore { position: self.size, len: chunk_bytes } };
            }
            match batch::check_batch(rest) {
                Ok(h) => {
                    let expected = self.next_offset();
                    let span = h.last_offset().saturating_sub(self.base_offset);
                    if h.base_offset < expected
                        || span > i64::from(i32::MAX)
                        || self.size + h.size as u64 > u64::from(u32::MAX)
                    {
                        return Scan::Torn { position: self.size, reason: BatchError::Invalid("offsets out of order") };
                    }
                    if h.base_offset > expected && gap_ok != Some(self.size) {
                        return Scan::Gap { position: self.size };
                    }
                    let mut sink = Vec::new();
                    let replay = producers::Replay::of(&h, h.base_offset, &rest[..h.size]);
                    self.push(&h, h.base_offset, h.partition_leader_epoch, replay, interval, &mut sink);
                    at += h.size;
                }
                Err(BatchError::Truncated) if !eof => {
                    let need = batch::parse_header(rest).map(|h| h.size).unwrap_or(batch::HEADER_BYTES);
                    return Scan::NeedMore { position: self.size, len: need.max(chunk_bytes) };
                }
                Err(reason) => return Scan::Torn { position: self.size, reason },
            }
        }
    }

    /// After recovery: rewrite the index files to match what was found.
    pub fn finish_recovery(&mut self, interval: u32, ops: &mut Vec<DiskOp>) {
        self.rewrite_indexes(interval, ops);
    }
}

#[cfg(test)]
mod tests {
    use super::batch::tests::make_batch;
    use super::*;
    use crate::config::{NodeConfig, TopicSettings};
    use std::collections::BTreeMap;

    struct Ids(u64);
    impl FileIds for Ids {
        fn next_file_id(&mut self) -> FileId {
            self.0 += 1;
            FileId(self.0)
        }
    }

    fn settings(segment_bytes: u64) -> TopicSettings {
        let mut node = NodeConfig::default();
        node.log.segment_bytes = segment_bytes;
        TopicSettings::resolve(&node, &BTreeMap::new()).unwrap()
    }

    fn log_with(batches: &[Vec<u8>], segment_bytes: u64) -> (PartitionLog, Vec<DiskOp>) {
        let mut ids = Ids(0);
        let mut ops = Vec::new();
        let mut log = PartitionLog::empty("t-0".into());
        log.add_segment(0, 0, &mut ids, &mut ops);
        let s = settings(segment_bytes);
        for b in batches {
            let bytes = Bytes::from(b.clone());
            let h = batch::check_batch(&bytes).unwrap();
            let _ = log.append(&bytes, &h, 0, &s, 0, &mut ids, &mut ops);
        }
        (log, ops)
    }

    #[test]
    fn append_assigns_offsets_and_rolls() {
        let b1 = make_batch(&[b"a", b"b", b"c"], 10);
        let b2 = make_batch(&[b"d"], 20);
        let (log, ops) = log_with(&[b1.clone(), b2.clone(), b1.clone()], (b1.len() + b2.len()) as u64);
        assert_eq!(log.log_end_offset, 7);
        assert_eq!(log.segments.len(), 2);
        assert_eq!(log.segments[1].base_offset, 4);
        let writes = ops.iter().filter(|o| matches!(o, DiskOp::Write { .. })).count();
        assert!(writes >= 3);
        // The second segment's file name is its base offset, 20 digits.
        assert!(ops.iter().any(|o| matches!(o, DiskOp::Open { path, .. } if path == "t-0/00000000000000000004.log")));
    }

    #[test]
    fn read_respects_upper_bound_and_max_bytes() {
        let b = make_batch(&[b"aaaa"], 1);
        let (mut log, _) = log_with(&[b.clone(), b.clone(), b.clone()], 1 << 30);
        log.high_watermark = 2;
        let size = b.len() as u32;
        assert_eq!(log.read(0, 2, 1 << 20, true), ReadResult::Range { file: FileId(1), position: 0, len: 2 * size });
        assert_eq!(
            log.read(1, 2, 1 << 20, true),
            ReadResult::Range { file: FileId(1), position: size as u64, len: size }
        );
        assert_eq!(log.read(2, 2, 1 << 20, true), ReadResult::Empty);
        assert_eq!(log.read(3, 2, 1 << 20, true), ReadResult::OutOfRange);
        // max_bytes smaller than one batch: still one batch when min_one, else nothing.
        assert_eq!(log.read(0, 3, 1, true), ReadResult::Range { file: FileId(1), position: 0, len: size });
        assert_eq!(log.read(0, 3, 1, false), ReadResult::Empty);
    }

    #[test]
    fn restart_at_empties_the_log_and_starts_it_past_its_end() {
        let b = make_batch(&[b"x", b"y"], 5);
        let (mut log, _) = log_with(&[b.clone(), b.clone(), b.clone()], b.len() as u64);
        assert_eq!(log.segments.len(), 3);
        let mut ops = Vec::new();
        let generation = log.generation;
        log.restart_at(40, 7, &mut Ids(100), &mut ops);
        assert_eq!((log.log_start_offset, log.log_end_offset, log.durable_end, log.high_watermark), (40, 40, 40, 40));
        assert!(log.generation > generation);
        assert_eq!(log.segments.len(), 1);
        assert_eq!(log.segments[0].base_offset, 40);
        assert_eq!(log.epochs.latest(), None);
        let deleted = ops.iter().filter(|o| matches!(o, DiskOp::DeleteFile { .. })).count();
        assert_eq!(deleted, 12, "three segments' three files and summary each");
        assert!(ops.iter().any(|o| matches!(o, DiskOp::Open { path, .. } if path == "t-0/00000000000000000040.log")));
        assert_eq!(log.read(39, 40, 1 << 20, true), ReadResult::OutOfRange);
        assert_eq!(log.read(40, 40, 1 << 20, true), ReadResult::Empty);
        // The next fetched batch lands at 40.
        let mut c = Bytes::from(b.clone()).to_vec();
        c[..16].copy_from_slice(&batch::patched_prefix(&b, 40, 3));
        let c = Bytes::from(c);
        let h = batch::check_batch(&c).unwrap();
        log.append_replicated(c.clone(), &h, &settings(1 << 30), 8, &mut Ids(200), &mut ops);
        assert_eq!(log.log_end_offset, 42);
        assert_eq!(log.epochs.latest(), Some(3));
    }

    #[test]
    fn a_log_start_inside_a_batch_is_read_from_that_batch_by_followers_only() {
        let b = make_batch(&[b"a", b"b", b"c", b"d"], 5);
        let (mut log, _) = log_with(&[b.clone(), b.clone(), b.clone()], 1 << 30);
        log.high_watermark = 12;
        let size = b.len() as u32;
        let mut ops = Vec::new();
        log.advance_log_start(6, &mut ops);
        assert_eq!((log.log_start_offset, log.batch_aligned_start()), (6, 4));
        assert_eq!(log.read(4, 12, 1 << 20, true), ReadResult::OutOfRange, "a consumer: below the log start");
        let from_4 = ReadResult::Range { file: FileId(1), position: size as u64, len: 2 * size };
        assert_eq!(log.read_replica(4, 12, 1 << 20, true), from_4, "a follower: the whole batch holding 6");
        assert_eq!(log.read_replica(0, 12, 1 << 20, true), ReadResult::OutOfRange);
        assert_eq!(log.read(6, 12, 1 << 20, true), from_4, "a consumer at 6 gets the batch holding it");
        log.advance_log_start(8, &mut ops);
        assert_eq!(log.batch_aligned_start(), 8, "on a batch boundary");
    }

    #[test]
    fn consumers_read_past_emptied_batches_and_followers_get_them() {
        let b = make_batch(&[b"x"], 5);
        let (mut log, _) = log_with(&[b.clone(), b.clone(), b.clone(), b.clone()], 2 * b.len() as u64);
        assert_eq!(log.segments.len(), 2);
        log.high_watermark = 4;
        // The cleaner emptied the first segment's two batches and the second's first one.
        for (si, i) in [(0, 0), (0, 1), (1, 0)] {
            log.segments[si].entries[i].size = batch::HEADER_BYTES as u32;
        }
        log.segments[0].entries[1].position = batch::HEADER_BYTES as u32;
        log.segments[1].entries[1].position = batch::HEADER_BYTES as u32;
        let second = log.segments[1].log_file;
        let last = ReadResult::Range { file: second, position: batch::HEADER_BYTES as u64, len: b.len() as u32 };
        assert_eq!(log.read(0, 4, 1 << 20, true), last, "a consumer skips to the first batch with records");
        assert_eq!(log.read(0, 3, 1 << 20, true), ReadResult::Empty, "nothing but emptied batches below 3");
        let first = log.segments[0].log_file;
        let all_first = ReadResult::Range { file: first, position: 0, len: 2 * batch::HEADER_BYTES as u32 };
        assert_eq!(log.read_replica(0, 4, 1 << 20, true), all_first, "a follower copies emptied batches too");
    }

    /// The bytes each file of `ops` holds once its writes and truncations are done.
    fn files_of(ops: &[DiskOp]) -> BTreeMap<FileId, Vec<u8>> {
        let mut files: BTreeMap<FileId, Vec<u8>> = BTreeMap::new();
        for op in ops {
            match op {
                DiskOp::Write { file, position, data } => {
                    let f = files.entry(*file).or_default();
                    let at = *position as usize;
                    let bytes: Vec<u8> = data.iter().flat_map(|b| b.iter().copied()).collect();
                    f.resize(f.len().max(at + bytes.len()), 0);
                    f[at..at + bytes.len()].copy_from_slice(&bytes);
                }
                DiskOp::Truncate { file, len } => files.entry(*file).or_default().truncate(*len as usize),
                _ => {}
            }
        }
        files
    }

    #[test]
    fn a_summary_holds_what_a_scan_of_its_segment_finds() {
        let mut ids = Ids(0);
        let mut ops: Vec<DiskOp> = Vec::new();
        let mut log = PartitionLog::empty("t-0".into());
        log.add_segment(0, 0, &mut ids, &mut ops);
        let plain = make_batch(&[b"a", b"b"], 10);
        let s = settings(3 * plain.len() as u64);
        let mut seq = 0;
        for i in 0..12 {
            let mut b = match i % 4 {
                0 => plain.clone(),
                3 => batch::control_marker(7, 1, i % 8 == 3, 0, 20),
                _ => make_batch(&[b"p", b"q"], 10 + i),
            };
            if i % 4 == 1 || i % 4 == 2 {
                batch::set_producer(&mut b, 7, 1, seq);
                seq += 2;
            }
            let bytes = Bytes::from(b);
            let h = batch::check_batch(&bytes).unwrap();
            let _ = log.append(&bytes, &h, (i / 5) as i32, &s, 0, &mut ids, &mut ops);
        }
        assert!(log.segments.len() >= 3, "the log rolled");
        log.durable_end = log.log_end_offset;
        let written = log.summaries_due(true);
        assert_eq!(written.len(), log.segments.len(), "every segment's summary, the active one's too");
        let files = files_of(&ops);
        for (seg, (base, bytes)) in log.segments.iter().zip(&written) {
            let summary = summary::decode(bytes).expect("decodes");
            let data = &files[&seg.log_file];
            let mut scanned = Segment::new(*base, [FileId(90), FileId(91), FileId(92)], 0);
            assert!(matches!(scanned.recover_chunk(data, true, 1 << 20, 4096, None), Scan::Clean));
            let at = summary.last_header_at().unwrap() as usize;
            assert!(summary.matches(data.len() as u64, &data[at..]), "it matches its segment");
            let mut restored = Segment::new(*base, [FileId(93), FileId(94), FileId(95)], 0);
            restored.restore(summary);
            assert_eq!(restored.entries, scanned.entries);
            assert_eq!(restored.size, scanned.size);
            assert_eq!(restored.record, scanned.record, "producer fields and epochs as a scan finds them");
            assert_eq!(restored.last_crc, scanned.last_crc);
            assert!(!restored.record.as_ref().unwrap().replay.is_empty() || seg.entries.len() < 2);
        }
        for (base, _) in &written {
            log.summary_written(*base, true);
        }
        assert!(log.segments[..log.segments.len() - 1].iter().all(|s| s.record.is_none()), "sealed: record dropped");
        assert!(log.segments.last().unwrap().record.is_some(), "the active segment keeps its record");
        assert!(!log.summaries_pending(true));
        // A cut into a summarized segment deletes its summary; the record follows the cut.
        let mut ops = Vec::new();
        let seg = log.segments.iter().find(|s| s.entries.len() >= 2).expect("a segment of two batches");
        let (last, cut) = (seg.base_offset, seg.base_offset + i64::from(seg.entries[1].base_delta));
        log.truncate_to(cut, 4096, &mut ops);
        let name = format!("t-0/{}", summary::file_name(last));
        assert!(ops.iter().any(|o| matches!(o, DiskOp::DeleteFile { path } if *path == name)));
        assert_eq!(log.segments.last().unwrap().summary, summary::SummaryState::Missing);
        assert!(log.summaries_due(true).is_empty(), "not while the last batch's CRC is unknown");
    }

    #[test]
    fn summaries_wait_for_the_sync() {
        let b = make_batch(&[b"x"], 5);
        let (mut log, _) = log_with(&[b.clone(), b.clone(), b.clone()], b.len() as u64);
        assert_eq!(log.segments.len(), 3);
        log.durable_end = 1;
        let due: Vec<Offset> = log.summaries_due(false).into_iter().map(|(base, _)| base).collect();
        assert_eq!(due, vec![0], "only the segment synced whole");
        assert!(log.summaries_waiting, "the second waits for its sync");
        log.durable_end = 3;
        let due: Vec<Offset> = log.summaries_due(false).into_iter().map(|(base, _)| base).collect();
        assert_eq!(due, vec![1], "never the active one unless asked");
        assert!(!log.summaries_waiting);
        log.summary_written(0, false);
        assert_eq!(log.segments[0].summary, summary::SummaryState::Failed);
        assert!(log.summaries_pending(false), "segment 1's is being written");
    }

    #[test]
    fn timestamp_lookup() {
        let (log, _) =
            log_with(&[make_batch(&[b"a"], 100), make_batch(&[b"b"], 200), make_batch(&[b"c"], 300)], 1 << 30);
        assert_eq!(log.batch_for_timestamp(150, 3).map(|b| (b.base_offset, b.max_timestamp)), Some((1, 200)));
        assert_eq!(log.batch_for_timestamp(400, 3), None);
        assert_eq!(log.batch_for_timestamp(250, 2), None);
        assert_eq!(log.batch_with_max_timestamp(3).map(|b| b.last_offset), Some(2));
    }

    #[test]
    fn truncate_and_recover() {
        let b = make_batch(&[b"x", b"y"], 5);
        let (mut log, _) = log_with(&[b.clone(), b.clone(), b.clone()], 1 << 30);
        let mut ops = Vec::new();
        log.truncate_to(2, 4096, &mut ops);
        assert_eq!(log.log_end_offset, 2);
        assert!(ops.iter().any(|o| matches!(o, DiskOp::Truncate { len, .. } if *len == b.len() as u64)));

        // Recovery of a file holding two good batches and a torn third one.
        let mut file = Vec::new();
        for i in 0..3i64 {
            let mut c = b.clone();
            c[..16].copy_from_slice(&batch::patched_prefix(&b, i * 2, 0));
            file.extend_from_slice(&c);
        }
        file.truncate(file.len() - 5);
        let mut seg = Segment::new(0, [FileId(1), FileId(2), FileId(3)], 0);
        match seg.recover_chunk(&file, true, 1 << 20, 4096, None) {
            Scan::Torn { position, .. } => assert_eq!(position, 2 * b.len() as u64),
            other => panic!("expected torn tail, got {other:?}"),
        }
        assert_eq!(seg.next_offset(), 4);
        // In small chunks the scan asks for more and reaches the same answer.
        let mut seg = Segment::new(0, [FileId(1), FileId(2), FileId(3)], 0);
        let (mut pos, mut len) = (0usize, 7usize);
        let verdict = loop {
            let end = (pos + len).min(file.len());
            match seg.recover_chunk(&file[pos..end], end == file.len(), 7, 4096, None) {
                Scan::NeedMore { position, len: l } => {
                    pos = position as usize;
                    len = l;
                }
                other => break other,
            }
        };
        assert!(matches!(verdict, Scan::Torn { position, .. } if position == 2 * b.len() as u64));
    }

    #[test]
    fn retention_deletes_old_segments_only_below_high_watermark() {
        let b = make_batch(&[b"x"], 1000);
        let (mut log, _) = log_with(&[b.clone(), b.clone(), b.clone()], b.len() as u64);
        assert_eq!(log.segments.len(), 3);
        let mut s = settings(b.len() as u64);
        s.retention_ms = 10;
        let mut ops = Vec::new();
        log.high_watermark = 1;
        assert_eq!(log.apply_retention(&s, 5000, &mut ops), 1);
        assert_eq!(log.log_start_offset, 1);
        log.high_watermark = 3;
        assert_eq!(log.apply_retention(&s, 5000, &mut ops), 1);
        assert_eq!(log.segments.len(), 1, "the active segment stays");
        assert_eq!(log.read(0, 3, 1 << 20, true), ReadResult::OutOfRange);
    }
}
