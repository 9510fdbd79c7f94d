//! The log cleaner: compaction of the topics whose `cleanup.policy` holds `compact`, on every
//! replica (each cleans its own copy; offsets never change, so replicas stay comparable).
//!
//! One log at a time, as a chain of disk operations, one in flight:
//! 1. Pick the log with the largest share of bytes not yet cleaned (`min.cleanable.dirty.ratio`,
//!    or any log holding records older than `max.compaction.lag.ms`). Only whole segments
//!    below the active one, the high watermark, the last stable offset and
//!    `min.compaction.lag.ms` are cleanable.
//! 2. Map: read the segments not yet cleaned and note every key's latest offset (bounded by
//!    `log.cleaner.dedupe.buffer.size`; a map that fills up ends the pass at a segment
//!    boundary).
//! 3. Copy, segment by segment from the log start: keep the records that are their key's
//!    latest, tombstones until `delete.retention.ms` after their segment was sealed, control
//!    batches, and each producer's last batch (emptied if need be, so its sequence survives a
//!    restart). Records of aborted transactions and records without a key go. The copy is
//!    written to `<base>.log.cleaned`, synced, then renamed over `<base>.log` (atomic; the
//!    rename is durable when done), and only then does the in-memory index switch to it.
//!    Segments are swapped in offset order, each rename durable before the next segment's, so
//!    a crash never keeps a key's older record while losing a newer one (a tombstone and the
//!    value it deleted). A crash before a rename leaves the old segment and a `.cleaned` file
//!    that recovery deletes.
//!
//! Where a pass ended is kept in memory only: after a restart each compacted log is cleaned
//! once from its start again.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{Node, PartState, Purpose, Tp};
use crate::io::{DiskError, DiskOp, DiskReply};
use crate::log::batch;
use crate::log::cleaner::{filter_batch, Filtered, KeyMap};
use crate::log::producers::Replay;
use crate::log::summary::ScanRecord;
use crate::log::{segment_file_name, Entry, PartitionLog};
use crate::types::{FileId, Instant, Offset};

/// Bytes of whole batches one read of the cleaner asks for (at least one batch).
const READ_BYTES: u64 = 1 << 20;

pub(super) struct Cleaner {
    next_check: Instant,
    job: Option<CleanJob>,
    /// The batches of the copy being written.
    entries: Vec<Entry>,
    /// What its summary needs of them (`log::summary`), and its last batch's CRC.
    record: ScanRecord,
    last_crc: u32,
    next_id: u64,
    /// Where each log's last finished pass ended.
    cleaned_to: BTreeMap<Tp, Offset>,
    pub passes: u64,
    pub bytes_removed: u64,
}

impl Cleaner {
    pub(super) fn new(first_check: Instant) -> Cleaner {
        Cleaner {
            next_check: first_check,
            job: None,
            entries: Vec::new(),
            record: ScanRecord::default(),
            last_crc: 0,
            next_id: 0,
            cleaned_to: BTreeMap::new(),
            passes: 0,
            bytes_removed: 0,
        }
    }
}

struct CleanJob {
    id: u64,
    tp: Tp,
    generation: u64,
    /// The segments of the pass, in order: base offset, log file, whether tombstones go.
    segments: Vec<(Offset, FileId, bool)>,
    /// The first segment not yet cleaned before this pass (index into `segments`).
    dirty: usize,
    map: KeyMap,
    step: Step,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Reading segment `seg` from batch `entry` on into the map.
    Map {
        seg: usize,
        entry: usize,
    },
    /// The copy of segment `seg` being opened, then read from `entry` and written at `at`.
    Open {
        seg: usize,
        out: FileId,
    },
    Copy {
        seg: usize,
        entry: usize,
        out: FileId,
        at: u64,
    },
    Write {
        seg: usize,
        entry: usize,
        out: FileId,
        at: u64,
    },
    Sync {
        seg: usize,
        out: FileId,
    },
    Rename {
        seg: usize,
        out: FileId,
    },
}

/// What one cleanable log looks like now.
struct Candidate {
    tp: Tp,
    ratio: f64,
    overdue: bool,
    segments: Vec<(Offset, FileId, bool)>,
    dirty: usize,
}

impl Node {
    pub(super) fn cleaner_poll_timeout(&self) -> Option<Instant> {
        (self.cleaner.job.is_none() && self.config.log.cleaner_enable).then_some(self.cleaner.next_check)
    }

    /// From the timer: start a pass on the dirtiest log, if one is due.
    pub(super) fn cleaner_tick(&mut self) {
        if !self.config.log.cleaner_enable || self.cleaner.job.is_some() {
            return;
        }
        let now = self.now.mono;
        if self.cleaner.next_check > now {
            return;
        }
        self.cleaner.next_check = now.plus_millis(self.config.log.cleaner_backoff_ms);
        let best = self
            .cleanable_logs()
            .into_iter()
            .filter(|c| c.overdue || c.ratio >= self.topic_settings(c.tp).map_or(1.0, |s| s.min_cleanable_ratio))
            .max_by(|a, b| a.ratio.total_cmp(&b.ratio));
        let Some(c) = best else { return };
        self.cleaner.next_id += 1;
        let job = CleanJob {
            id: self.cleaner.next_id,
            tp: c.tp,
            generation: self.partition(c.tp).map_or(0, |p| p.log.generation),
            segments: c.segments,
            dirty: c.dirty,
            map: KeyMap::with_memory(self.config.log.cleaner_dedupe_buffer_bytes),
            step: Step::Map { seg: c.dirty, entry: 0 },
        };
        tracing::debug!(tp = ?c.tp, ratio = c.ratio, segments = job.segments.len(), "cleaning a log");
        self.cleaner.job = Some(job);
        self.clean_next();
    }

    fn cleanable_logs(&self) -> Vec<Candidate> {
        let wall = self.now.wall_ms;
        let mut out = Vec::new();
        for t in self.topics.values().filter(|t| t.settings.compact) {
            for (i, p) in t.partitions.iter().enumerate() {
                if p.state != PartState::Online || p.log.segments.len() < 2 {
                    continue;
                }
                let tp = (t.id, i32::try_from(i).unwrap_or(i32::MAX));
                if self.coordination.reading(tp) {
                    continue;
                }
                let from = self.cleaner.cleaned_to.get(&tp).copied().unwrap_or(0);
                if let Some(c) = candidate(tp, &p.log, &t.settings, from, wall) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// Issues the job's next disk operation for its current step.
    fn clean_next(&mut self) {
        let Some(job) = &self.cleaner.job else { return };
        let (id, tp, step) = (job.id, job.tp, job.step);
        let Some(p) = self.partition(tp).filter(|p| p.log.generation == job.generation) else {
            return self.clean_abort("the log changed");
        };
        let purpose = Purpose::Clean { id };
        match step {
            Step::Map { seg, entry } | Step::Copy { seg, entry, .. } => {
                let (base, file, _) = job.segments[seg];
                let Some(s) = p.log.segments.iter().find(|s| s.base_offset == base && s.log_file == file) else {
                    return self.clean_abort("a segment went");
                };
                let Some(first) = s.entries.get(entry) else {
                    return self.clean_segment_read(Bytes::new());
                };
                let mut end = u64::from(first.position) + u64::from(first.size);
                for e in &s.entries[entry + 1..] {
                    let e_end = u64::from(e.position) + u64::from(e.size);
                    if e_end - u64::from(first.position) > READ_BYTES {
                        break;
                    }
                    end = e_end;
                }
                let position = u64::from(first.position);
                let len = usize::try_from(end - position).unwrap_or(usize::MAX);
                self.issue(DiskOp::Read { file, position, len }, purpose);
            }
            Step::Open { seg, out } => {
                let path = cleaned_path(&p.log, job.segments[seg].0);
                self.issue(DiskOp::Open { file: out, path, create: true }, purpose);
            }
            Step::Write { .. } => {}
            Step::Sync { out, .. } => {
                self.issue(DiskOp::Sync { file: out }, purpose);
            }
            Step::Rename { seg, .. } => {
                if self.coordination.reading(tp) {
                    return self.clean_abort("a coordinators' load reads the log");
                }
                let base = job.segments[seg].0;
                let (from, to) =
                    (cleaned_path(&p.log, base), format!("{}/{}", p.log.dir, segment_file_name(base, "log")));
                if let Some(p) = self.partition_mut(tp) {
                    p.log.swapping = Some(base);
                }
                self.issue(DiskOp::Rename { from, to }, purpose);
            }
        }
    }

    /// A disk operation of the cleaner finished.
    pub(super) fn on_clean_done(&mut self, id: u64, result: Result<DiskReply, DiskError>) {
        let Some(job) = self.cleaner.job.as_mut().filter(|j| j.id == id) else {
            return;
        };
        let step = job.step;
        if let Step::Rename { .. } = step {
            let tp = job.tp;
            if let Some(p) = self.partition_mut(tp) {
                p.log.swapping = None;
            }
        }
        let reply = match result {
            Ok(r) => r,
            Err(e) => return self.clean_abort(&format!("disk: {e}")),
        };
        match (step, reply) {
            (Step::Map { .. } | Step::Copy { .. }, DiskReply::Data(d)) => self.clean_segment_read(d),
            (Step::Open { seg, out }, _) => {
                if let Some(j) = self.cleaner.job.as_mut() {
                    j.step = Step::Copy { seg, entry: 0, out, at: 0 };
                }
                self.cleaner.entries.clear();
                self.cleaner.record = ScanRecord::default();
                self.cleaner.last_crc = 0;
                // A copy left by a crash was deleted at recovery; one left by an abandoned pass
                // is cut here.
                self.issue(DiskOp::Truncate { file: out, len: 0 }, Purpose::Ignore);
                self.clean_next();
            }
            (Step::Write { seg, entry, out, at }, _) => {
                if let Some(j) = self.cleaner.job.as_mut() {
                    j.step = Step::Copy { seg, entry, out, at };
                }
                self.clean_next();
            }
            (Step::Sync { seg, out }, _) => {
                if let Some(j) = self.cleaner.job.as_mut() {
                    j.step = Step::Rename { seg, out };
                }
                self.clean_next();
            }
            (Step::Rename { seg, out }, _) => self.clean_swapped(seg, out),
            (s, r) => self.clean_abort(&format!("unexpected reply {r:?} in {s:?}")),
        }
    }

    /// Whole batches of the current segment, read for the map or for the copy (empty: the
    /// segment is done).
    fn clean_segment_read(&mut self, data: Bytes) {
        let Some(step) = self.cleaner.job.as_ref().map(|j| j.step) else { return };
        let batches = match self.batches_read(&data) {
            Ok(b) => b,
            Err(why) => return self.clean_abort(why),
        };
        match step {
            Step::Map { seg, entry } => self.clean_map_chunk(seg, entry, &batches),
            Step::Copy { seg, entry, out, at } => self.clean_copy_chunk(seg, entry, out, at, &batches),
            _ => {}
        }
    }

    /// The batches a read of the current segment covers, checked against the index (empty:
    /// the segment is done).
    fn batches_read(&self, data: &Bytes) -> Result<Vec<(Entry, Bytes, batch::BatchHeader)>, &'static str> {
        let (_, job, s) = self.clean_segment().ok_or("a segment went, or the log changed")?;
        let (Step::Map { entry, .. } | Step::Copy { entry, .. }) = job.step else { return Ok(Vec::new()) };
        let mut batches = Vec::new();
        let start = s.entries.get(entry).map_or(0, |e| e.position);
        for e in s.entries.iter().skip(entry) {
            let from = (e.position - start) as usize;
            let Some(b) = data.get(from..from + e.size as usize) else { break };
            match batch::check_batch(b) {
                Ok(h) if h.base_offset == s.base_offset + i64::from(e.base_delta) && h.size == e.size as usize => {
                    batches.push((*e, data.slice(from..from + e.size as usize), h));
                }
                _ => return Err("a batch reads back wrong"),
            }
        }
        if batches.is_empty() && !data.is_empty() {
            return Err("a read came back short");
        }
        Ok(batches)
    }

    /// The job's partition (unchanged since the pass began) and current segment.
    fn clean_segment(&self) -> Option<(&super::Partition, &CleanJob, &crate::log::Segment)> {
        let job = self.cleaner.job.as_ref()?;
        let p = self.partition(job.tp).filter(|p| p.log.generation == job.generation)?;
        let (Step::Map { seg, .. } | Step::Copy { seg, .. }) = job.step else { return None };
        let (base, file, _) = job.segments[seg];
        let s = p.log.segments.iter().find(|s| s.base_offset == base && s.log_file == file)?;
        Some((p, job, s))
    }

    /// Map: every key of these batches (not of control batches or aborted transactions).
    fn clean_map_chunk(&mut self, seg: usize, entry: usize, batches: &[(Entry, Bytes, batch::BatchHeader)]) {
        if batches.is_empty() {
            return self.clean_map_next(seg + 1);
        }
        let Some((p, ..)) = self.clean_segment() else { return self.clean_abort("the log changed") };
        let mut keys = Vec::new();
        for (_, b, h) in batches {
            if h.is_control() || (h.is_transactional() && p.log.producers.is_aborted(h.producer_id, h.base_offset)) {
                continue;
            }
            let Ok(d) = crate::log::cleaner::decode(b) else {
                return self.clean_abort("a batch does not decode");
            };
            keys.extend(d.records.iter().filter_map(|r| Some((d.key(r)?.to_vec(), r.offset))));
        }
        let job = self.cleaner.job.as_mut().expect("checked");
        for (k, o) in keys {
            job.map.put(&k, o);
        }
        if job.map.is_full() {
            // The map holds this segment's keys only in part: the pass ends before it.
            if seg == job.dirty {
                return self.clean_abort("log.cleaner.dedupe.buffer.size holds less than one segment's keys");
            }
            job.segments.truncate(seg);
            return self.clean_map_next(seg);
        }
        job.step = Step::Map { seg, entry: entry + batches.len() };
        self.clean_next();
    }

    /// Copy: these batches as the cleaner keeps them, written at `at` of the copy `out`.
    fn clean_copy_chunk(
        &mut self,
        seg: usize,
        entry: usize,
        out: FileId,
        at: u64,
        batches: &[(Entry, Bytes, batch::BatchHeader)],
    ) {
        if batches.is_empty() {
            let swap_first = crate::mutants::active(crate::mutants::Mutant::SwapBeforeSync);
            if let Some(j) = self.cleaner.job.as_mut() {
                j.step = if swap_first { Step::Rename { seg, out } } else { Step::Sync { seg, out } };
            }
            return self.clean_next();
        }
        let Some((p, job, s)) = self.clean_segment() else { return self.clean_abort("the log changed") };
        let drop_tombstones = job.segments[seg].2;
        let mut written = Vec::new();
        let mut new_entries = Vec::new();
        let mut noted = Vec::new();
        let mut pos = at;
        let last_delta = s.entries.last().map(|e| e.base_delta);
        for (e, b, h) in batches {
            // A segment's last batch stays, if only emptied: segments must follow each other
            // for recovery to tell a crash's lost tail from what the cleaner did.
            let last = Some(e.base_delta) == last_delta;
            let bytes = match self.clean_batch(p, job, b, h, drop_tombstones, last) {
                Ok(Filtered::Keep) => b.clone(),
                Ok(Filtered::Drop) => continue,
                Ok(Filtered::Rewrite(v)) => Bytes::from(v),
                Err(_) => return self.clean_abort("a batch does not decode"),
            };
            let size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            let position = u32::try_from(pos).unwrap_or(u32::MAX);
            new_entries.push(Entry { position, size, ..*e });
            // As recovery's scan of the copy would note the batch (its header as written).
            if let Ok(w) = batch::parse_header(&bytes) {
                noted.push((w.partition_leader_epoch, w.base_offset, Replay::of(&w, w.base_offset, &bytes), w.crc));
            }
            pos += u64::from(size);
            written.push(bytes);
        }
        self.cleaner.bytes_removed += batches.iter().map(|(e, ..)| u64::from(e.size)).sum::<u64>() - (pos - at);
        let job = self.cleaner.job.as_mut().expect("checked");
        job.step = Step::Write { seg, entry: entry + batches.len(), out, at: pos };
        let id = job.id;
        self.cleaner.entries.extend(new_entries);
        for (epoch, base, replay, crc) in noted {
            self.cleaner.record.note(epoch, base, replay);
            self.cleaner.last_crc = crc;
        }
        if written.is_empty() {
            return self.on_clean_done(id, Ok(DiskReply::Done));
        }
        self.issue(DiskOp::Write { file: out, position: at, data: written }, Purpose::Clean { id });
    }

    /// The batch's fate in the copy.
    fn clean_batch(
        &self,
        p: &super::Partition,
        job: &CleanJob,
        b: &[u8],
        h: &batch::BatchHeader,
        drop_tombstones: bool,
        keep_empty: bool,
    ) -> Result<Filtered, batch::BatchError> {
        let aborted = h.is_transactional() && p.log.producers.is_aborted(h.producer_id, h.base_offset);
        let last_of_producer = h.has_producer_id()
            && p.log
                .producers
                .get(h.producer_id)
                .and_then(|e| e.batches.back())
                .is_some_and(|m| m.last_offset == h.last_offset());
        let drops_latest = crate::mutants::active(crate::mutants::Mutant::CleanerDropsLatest);
        filter_batch(b, keep_empty || last_of_producer, |r, key| {
            let Some(key) = key else { return false };
            if aborted {
                return false;
            }
            match job.map.latest(key) {
                Some(latest) if r.offset < latest => false,
                Some(latest) if drops_latest && r.offset == latest && !r.tombstone => false,
                _ => !(r.tombstone && drop_tombstones),
            }
        })
    }

    /// The map is built up to segment `seg` (or is done): go on mapping, or start copying.
    fn clean_map_next(&mut self, seg: usize) {
        let Some(job) = self.cleaner.job.as_mut() else { return };
        if seg < job.segments.len() {
            job.step = Step::Map { seg, entry: 0 };
        } else {
            let out = self.cleaner_file_id();
            let job = self.cleaner.job.as_mut().expect("present");
            job.step = Step::Open { seg: 0, out };
        }
        self.clean_next();
    }

    /// The cleaned copy of the current segment is in place on disk: switch the index to it.
    fn clean_swapped(&mut self, seg: usize, out: FileId) {
        let Some(job) = self.cleaner.job.take() else { return };
        let (base, old, _) = job.segments[seg];
        let entries = std::mem::take(&mut self.cleaner.entries);
        let record = (std::mem::take(&mut self.cleaner.record), self.cleaner.last_crc);
        let interval = self.topic_settings(job.tp).map_or(4096, |s| s.index_interval_bytes);
        let mut ops = Vec::new();
        let swapped = self
            .partition_mut(job.tp)
            .filter(|p| p.log.generation == job.generation)
            .is_some_and(|p| p.log.swap_cleaned(base, old, out, (entries, record), interval, &mut ops));
        let tp = job.tp;
        self.issue_all(ops, || Purpose::Ignore);
        if swapped {
            self.write_summaries(tp, false);
        }
        if !swapped {
            // The segment went while its copy was renamed over it: the copy must go too, unless
            // a segment of the log now has that name.
            let dir = self.partition(tp).map(|p| p.log.dir.clone());
            let taken = self.partition(tp).is_some_and(|p| p.log.segments.iter().any(|s| s.base_offset == base));
            self.issue(DiskOp::Close { file: out }, Purpose::Ignore);
            if let (Some(dir), false) = (dir, taken) {
                self.issue(
                    DiskOp::DeleteFile { path: format!("{dir}/{}", segment_file_name(base, "log")) },
                    Purpose::Ignore,
                );
            }
            tracing::debug!(tp = ?tp, "cleaning abandoned: the segment went");
            return;
        }
        if seg + 1 < job.segments.len() {
            let out = self.cleaner_file_id();
            self.cleaner.job = Some(CleanJob { step: Step::Open { seg: seg + 1, out }, ..job });
            return self.clean_next();
        }
        let end = job.segments.last().map(|s| s.0).unwrap_or(0);
        let end = self
            .partition(tp)
            .and_then(|p| p.log.segments.iter().find(|s| s.base_offset > end))
            .map_or(end, |s| s.base_offset);
        self.cleaner.cleaned_to.insert(tp, end);
        self.cleaner.passes += 1;
        tracing::debug!(tp = ?tp, cleaned_to = end, "log cleaned");
    }

    /// At recovery: a `.cleaned` copy is a pass a crash cut short; the segment it was for is
    /// still whole (the copy replaces it only by a rename), so the copy goes.
    pub(super) fn drop_unfinished_cleanings(&mut self, tp: Tp, entries: &[crate::io::DirEntry]) {
        let Some(dir) = self.partition(tp).map(|p| p.log.dir.clone()) else { return };
        for e in entries.iter().filter(|e| !e.is_dir && e.name.ends_with(".cleaned")) {
            self.issue(DiskOp::DeleteFile { path: format!("{dir}/{}", e.name) }, Purpose::Ignore);
        }
    }

    fn cleaner_file_id(&mut self) -> FileId {
        crate::log::FileIds::next_file_id(&mut self.next_file)
    }

    fn clean_abort(&mut self, why: &str) {
        let Some(job) = self.cleaner.job.take() else { return };
        self.cleaner.entries.clear();
        self.cleaner.record = ScanRecord::default();
        tracing::warn!(tp = ?job.tp, reason = why, "log cleaning abandoned; the log is as it was");
        if let Some(p) = self.partition_mut(job.tp) {
            p.log.swapping = None;
        }
        let out = match job.step {
            Step::Open { seg, out }
            | Step::Copy { seg, out, .. }
            | Step::Write { seg, out, .. }
            | Step::Sync { seg, out }
            | Step::Rename { seg, out } => Some((seg, out)),
            Step::Map { .. } => None,
        };
        if let Some((seg, out)) = out {
            self.issue(DiskOp::Close { file: out }, Purpose::Ignore);
            if let Some(p) = self.partition(job.tp) {
                let path = cleaned_path(&p.log, job.segments[seg].0);
                self.issue(DiskOp::DeleteFile { path }, Purpose::Ignore);
            }
        }
    }
}

fn cleaned_path(log: &PartitionLog, base: Offset) -> String {
    format!("{}/{}", log.dir, segment_file_name(base, "log.cleaned"))
}

/// The cleanable part of one log, and how dirty it is.
fn candidate(
    tp: Tp,
    log: &PartitionLog,
    s: &crate::config::TopicSettings,
    cleaned_to: Offset,
    wall: i64,
) -> Option<Candidate> {
    let bound = log.high_watermark.min(log.last_stable_offset());
    let mut segments = Vec::new();
    let (mut clean_bytes, mut dirty_bytes, mut dirty) = (0u64, 0u64, None);
    let mut overdue = false;
    for (i, seg) in log.segments.iter().enumerate() {
        let Some(next) = log.segments.get(i + 1) else { break };
        // Whole segments below the active one, the bound and the compaction lag.
        if next.base_offset > bound
            || (seg.max_timestamp() >= 0 && wall - seg.max_timestamp() < s.min_compaction_lag_ms)
        {
            break;
        }
        // Tombstones go once their segment has been sealed (the next one created) for
        // delete.retention.ms.
        let tombstones_go = wall.saturating_sub(next.created_wall_ms) >= s.delete_retention_ms;
        segments.push((seg.base_offset, seg.log_file, tombstones_go));
        if seg.base_offset >= cleaned_to {
            dirty.get_or_insert(i);
            dirty_bytes += seg.size;
            overdue |= seg.max_timestamp() >= 0 && wall.saturating_sub(seg.max_timestamp()) >= s.max_compaction_lag_ms;
        } else {
            clean_bytes += seg.size;
        }
    }
    let dirty = dirty?;
    let total = clean_bytes + dirty_bytes;
    let ratio = if total == 0 { 0.0 } else { dirty_bytes as f64 / total as f64 };
    Some(Candidate { tp, ratio, overdue, segments, dirty })
}
