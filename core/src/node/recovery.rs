//! Start-up recovery: replay the metadata log, then rebuild every partition's log from its
//! segment files, checking every batch's CRC and cutting off a torn or corrupt tail. Nothing
//! is served until every partition is back; recovered data counts as durable only after a
//! fresh sync, so the high watermark starts at the log start and moves when that completes.

use std::collections::{BTreeMap, VecDeque};

use super::{metadata_quorum, Node, PartState, Partition, Phase, Purpose, Topic, Tp};
use crate::config::TopicSettings;
use crate::io::{DiskError, DiskOp, DiskReply};
use crate::limits;
use crate::log::{summary, PartitionLog, Scan, Segment};
use crate::metadata;
use crate::types::FileId;

/// Reads of a bad spot before it is cut off even if no two reads agree.
const REREADS_MAX: u32 = 5;

/// The files of `.sluice-meta`, read in this order at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MetaFile {
    /// The metadata log of versions before the quorum, read as the base of the image.
    Legacy,
    State,
    /// One of the quorum log's segment files (`Recovery::segments`), oldest first.
    Log(usize),
}

impl MetaFile {
    fn valid_len(self, data: &[u8]) -> usize {
        match self {
            MetaFile::Legacy => metadata::decode_log(data).1,
            MetaFile::State => metadata::decode_frames(data).1,
            MetaFile::Log(_) => metadata_quorum::decode_entries(data).1,
        }
    }
}

#[derive(Debug)]
pub(super) enum Step {
    MetaDir,
    /// The metadata directory listed: its snapshots.
    MetaListed,
    MetaOpened(MetaFile),
    MetaRead(MetaFile),
    RootListed,
    PartDir(Tp),
    PartListed(Tp),
    SegOpened(Tp),
    SegRead {
        tp: Tp,
        position: u64,
        asked: usize,
    },
    /// The base offset of a batch past a gap, read again (`Recovery.held` keeps the chunk).
    GapCheck {
        tp: Tp,
        position: u64,
        base: i64,
    },
    /// The summary of the segment being recovered, opened, read, and its last batch's header
    /// read to check it against the segment.
    SumOpened(Tp),
    SumRead(Tp),
    SumCheck(Tp),
    /// Truncations and syncs of a partition being recovered.
    Misc(Tp),
    /// Rewrites of a recovered segment's .index and .timeindex files. These are derived
    /// (the node indexes from the log itself at every start), so failing to write them, on a
    /// full disk say, must not take the partition offline.
    Index(Tp),
}

/// What recovery found; reported at start-up and used by tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryStats {
    pub topics: usize,
    pub partitions: usize,
    pub segments: usize,
    /// Segments taken from their summaries rather than read (`log::summary`).
    pub summarized: usize,
    pub batches: usize,
    /// Partitions whose last segment had a torn or corrupt tail that was cut off.
    pub torn_tails: usize,
    pub bytes_truncated: u64,
    pub orphan_dirs_removed: usize,
}

#[derive(Default)]
pub(super) struct Recovery {
    /// Partitions still recovering, and the segment base offsets each has left to read.
    todo: BTreeMap<Tp, VecDeque<i64>>,
    current: BTreeMap<Tp, Segment>,
    /// A metadata file read badly: which, a fingerprint of its bad tail and how many reads.
    meta_reread: Option<(MetaFile, u32, u32)>,
    /// Records of a pre-quorum metadata.log, and the quorum state file's (state, length).
    legacy_records: Vec<metadata::MetaRecord>,
    quorum_state: ((crate::quorum::Epoch, Option<crate::quorum::NodeId>), u64),
    /// The quorum log's segment files found, oldest first, with what each holds once read.
    pub segments: Vec<metadata_quorum::SegmentFile>,
    /// Where a bad batch was found, a fingerprint of the bad bytes, and how many reads.
    reread: BTreeMap<Tp, (u64, u32, u32)>,
    /// A gap two reads agree on, by segment base offset and position: the scan accepts it.
    gap_ok: BTreeMap<Tp, (i64, u64)>,
    /// The chunk whose scan stopped at a gap, from where the scan goes on: read position,
    /// bytes asked, bytes.
    held: BTreeMap<Tp, (u64, usize, bytes::Bytes)>,
    /// Length of the segment file being scanned, per partition.
    file_len: BTreeMap<Tp, u64>,
    /// The segments with a summary file, per partition being listed.
    summaries: BTreeMap<Tp, std::collections::BTreeSet<i64>>,
    /// The summary of the segment being recovered, while it is checked, and its file.
    summary: BTreeMap<Tp, (FileId, Option<crate::log::summary::Summary>)>,
    /// The leader epochs of the batches scanned, per partition.
    epochs: BTreeMap<Tp, crate::log::epochs::EpochCache>,
    /// The data directory has been listed (every partition is then in `todo`).
    listed: bool,
    pub stats: RecoveryStats,
}

impl Node {
    pub(super) fn start_recovery(&mut self) {
        self.issue(DiskOp::CreateDir { path: metadata::META_DIR.to_string() }, Purpose::Recovery(Step::MetaDir));
        self.issue(DiskOp::ListDir { path: metadata::META_DIR.to_string() }, Purpose::Recovery(Step::MetaListed));
    }

    /// The newest metadata snapshot is read (or there is none): the metadata files next.
    pub(super) fn open_legacy_meta_file(&mut self) {
        self.open_meta_file(MetaFile::Legacy);
    }

    fn open_meta_file(&mut self, f: MetaFile) {
        let file = self.alloc_file();
        match f {
            MetaFile::Legacy => self.meta.legacy_file = file,
            MetaFile::State => self.meta.state_file = file,
            MetaFile::Log(i) => self.recovery.segments[i].file = file,
        }
        let create = f != MetaFile::Legacy;
        let path = self.meta_path(f);
        self.issue(DiskOp::Open { file, path, create }, Purpose::Recovery(Step::MetaOpened(f)));
    }

    fn meta_path(&self, f: MetaFile) -> String {
        match f {
            MetaFile::Legacy => metadata::META_LOG.to_string(),
            MetaFile::State => metadata_quorum::QUORUM_STATE.to_string(),
            MetaFile::Log(i) => self.recovery.segments[i].path.clone(),
        }
    }

    fn meta_file_id(&self, f: MetaFile) -> FileId {
        match f {
            MetaFile::Legacy => self.meta.legacy_file,
            MetaFile::State => self.meta.state_file,
            MetaFile::Log(i) => self.recovery.segments[i].file,
        }
    }

    /// The valid prefix of a metadata file read short of its length. A bad read is not a
    /// bad file: read it again, and cut only a tail that reads the same bad way twice (or
    /// too often), as for segments; else a flipped bit would drop acknowledged topics.
    /// Returns true when a read was issued again.
    fn meta_reread(&mut self, f: MetaFile, data: &[u8], valid: usize) -> bool {
        let fingerprint = crc32c::crc32c(&data[valid..]);
        let consistent = match self.recovery.meta_reread {
            Some((g, fp, n)) if g == f => fp == fingerprint || n >= REREADS_MAX,
            _ => crate::mutants::active(crate::mutants::Mutant::TruncateOnFirstBadRead),
        };
        if consistent {
            return false;
        }
        tracing::warn!(file = %self.meta_path(f), valid, len = data.len(), "metadata file reads badly; reading it again");
        let n = self.recovery.meta_reread.filter(|r| r.0 == f).map_or(1, |r| r.2 + 1);
        self.recovery.meta_reread = Some((f, fingerprint, n));
        let file = self.meta_file_id(f);
        self.issue(DiskOp::Read { file, position: 0, len: data.len() }, Purpose::Recovery(Step::MetaRead(f)));
        true
    }

    /// One metadata file is read (its valid prefix): go on to the next, and once the quorum's
    /// log is read, rebuild the topics and start the quorum.
    fn meta_file_read(&mut self, f: MetaFile, data: &[u8]) {
        match f {
            MetaFile::Legacy => {
                self.recovery.legacy_records = metadata::decode_log(data).0;
                self.open_meta_file(MetaFile::State);
            }
            MetaFile::State => {
                let (state, valid) = metadata_quorum::decode_state(data);
                self.recovery.quorum_state = (state.unwrap_or((0, None)), valid as u64);
                if self.recovery.segments.is_empty() {
                    self.recovery.segments.push(metadata_quorum::SegmentFile::first());
                }
                self.open_meta_file(MetaFile::Log(0));
            }
            MetaFile::Log(i) => {
                let (entries, valid) = metadata_quorum::decode_entries(data);
                let seg = &mut self.recovery.segments[i];
                (seg.entries, seg.size) = (entries, valid as u64);
                if i + 1 < self.recovery.segments.len() {
                    return self.open_meta_file(MetaFile::Log(i + 1));
                }
                let (state, state_size) = self.recovery.quorum_state;
                let segments = std::mem::take(&mut self.recovery.segments);
                let snapshot = self.snapshots.loaded.as_ref().map(|s| (s.end, s.epoch));
                let persisted = match self.restore_quorum_log(state, state_size, segments, snapshot) {
                    Ok(p) => p,
                    Err(why) => return self.recovery_failed(why),
                };
                // The records apply once the quorum has caught up (a sole voter: once it has
                // elected itself), and only as far as they are committed.
                self.cluster.legacy = std::mem::take(&mut self.recovery.legacy_records);
                self.start_quorum(persisted);
            }
        }
    }

    pub(super) fn alloc_file(&mut self) -> FileId {
        self.next_file += 1;
        FileId(self.next_file)
    }

    pub(super) fn recovery_failed(&mut self, why: String) {
        tracing::error!(%why, "start-up recovery failed; the node will not serve");
        self.phase = Phase::Failed(why);
        let buffered: Vec<_> = self.buffered.drain(..).map(|(c, _)| c).collect();
        for conn in buffered {
            self.close(conn, "node failed at start-up");
        }
    }

    pub(super) fn on_recovery_step(&mut self, step: Step, result: Result<DiskReply, DiskError>) {
        if let Phase::Failed(_) = self.phase {
            return;
        }
        match (step, result) {
            (Step::MetaDir, Ok(_)) => {}
            (Step::MetaListed, Ok(DiskReply::Listing(entries))) => self.snapshots_listed(&entries),
            (Step::MetaOpened(f), Ok(DiskReply::Opened { len })) => {
                if len > limits::METADATA_LOG_BYTES_MAX {
                    return self.recovery_failed(format!("{} is {len} bytes, over the limit", self.meta_path(f)));
                }
                if len == 0 {
                    self.meta_file_read(f, &[]);
                } else {
                    let len = usize::try_from(len).expect("bounded above");
                    let file = self.meta_file_id(f);
                    self.issue(DiskOp::Read { file, position: 0, len }, Purpose::Recovery(Step::MetaRead(f)));
                }
            }
            // Data directories made before the quorum have a metadata.log; newer ones do not.
            (Step::MetaOpened(MetaFile::Legacy), Err(DiskError::NotFound)) => {
                self.meta_file_read(MetaFile::Legacy, &[])
            }
            (Step::MetaRead(f), Ok(DiskReply::Data(data))) => {
                let valid = f.valid_len(&data);
                if valid < data.len() && self.meta_reread(f, &data, valid) {
                    return;
                }
                if valid < data.len() {
                    tracing::warn!(file = %self.meta_path(f), valid, len = data.len(), "torn tail; cutting it off");
                    let file = self.meta_file_id(f);
                    self.issue(DiskOp::Truncate { file, len: valid as u64 }, Purpose::Ignore);
                    self.issue(DiskOp::Sync { file }, Purpose::Ignore);
                }
                self.meta_file_read(f, &data[..valid]);
            }
            (Step::RootListed, Ok(DiskReply::Listing(entries))) => self.root_listed(entries),
            (Step::PartDir(tp), Ok(_)) => self.fresh_partition(tp),
            (Step::PartListed(tp), Ok(DiskReply::Listing(entries))) => {
                self.drop_unfinished_cleanings(tp, &entries);
                let mut bases: Vec<i64> = entries
                    .iter()
                    .filter(|e| !e.is_dir)
                    .filter_map(|e| e.name.strip_suffix(".log"))
                    .filter(|s| s.len() == 20)
                    .filter_map(|s| s.parse::<i64>().ok())
                    .collect();
                bases.sort_unstable();
                let summaries = entries
                    .iter()
                    .filter_map(|e| e.name.strip_suffix(".batches"))
                    .filter_map(|s| s.parse::<i64>().ok())
                    .collect();
                self.recovery.summaries.insert(tp, summaries);
                if bases.is_empty() {
                    self.fresh_partition(tp);
                } else {
                    self.recovery.todo.insert(tp, bases.into());
                    self.next_segment(tp);
                }
            }
            (Step::SegOpened(tp), Ok(DiskReply::Opened { len })) => {
                self.recovery.file_len.insert(tp, len);
                let base = self.recovery.current.get(&tp).map(|s| s.base_offset);
                let summarized = base.is_some_and(|b| self.recovery.summaries.get(&tp).is_some_and(|s| s.contains(&b)));
                if len == 0 {
                    self.segment_done(tp, None);
                } else if summarized {
                    self.open_summary(tp);
                } else {
                    self.read_chunk(tp, 0, limits::RECOVERY_READ_BYTES);
                }
            }
            (Step::SumOpened(tp) | Step::SumRead(tp) | Step::SumCheck(tp), Err(e)) => {
                tracing::debug!(error = %e, "a segment's summary could not be read; scanning the segment");
                self.scan_unsummarized(tp);
            }
            (Step::SumOpened(tp), Ok(DiskReply::Opened { len })) => self.on_summary_opened(tp, len),
            (Step::SumRead(tp), Ok(DiskReply::Data(data))) => self.on_summary_read(tp, &data),
            (Step::SumCheck(tp), Ok(DiskReply::Data(data))) => self.on_summary_check(tp, &data),
            (Step::SegRead { tp, position: read_at, asked }, Ok(DiskReply::Data(data))) => {
                self.on_segment_read(tp, read_at, asked, data)
            }
            (Step::GapCheck { tp, position, base }, Ok(DiskReply::Data(data))) => {
                self.on_gap_check(tp, position, base, &data)
            }
            (Step::Misc(_) | Step::Index(_), Ok(_)) => {}
            (Step::Index(tp), Err(e)) => {
                let dir = self.partition(tp).map(|p| p.log.dir.clone()).unwrap_or_default();
                tracing::warn!(%dir, error = %e, "could not rewrite a segment's index files; they are rebuilt at the next start");
            }
            (step, Ok(reply)) => {
                self.recovery_failed(format!("unexpected disk reply {reply:?} for {step:?}"));
            }
            (
                Step::Misc(tp)
                | Step::PartDir(tp)
                | Step::PartListed(tp)
                | Step::SegOpened(tp)
                | Step::SegRead { tp, .. }
                | Step::GapCheck { tp, .. },
                Err(e),
            ) => {
                self.partition_offline(tp, &e);
            }
            (step, Err(e)) => self.recovery_failed(format!("{step:?}: {e}")),
        }
    }

    /// The committed metadata is applied: rebuild the topics from it, then recover the logs of
    /// the partitions this node holds.
    pub(super) fn meta_replayed(&mut self) {
        let image = self.cluster.image.clone();
        if !crate::mutants::active(crate::mutants::Mutant::DynamicConfigsNotReplayed) {
            // The dynamic broker configs in force before the topics' settings are resolved.
            self.broker_configs_altered(crate::metadata::ALL_BROKERS);
        }
        self.producer_ids.restore(image.producer_ids_end);
        for (name, t) in image.topics {
            let settings = TopicSettings::resolve(&self.config, &t.configs).unwrap_or_else(|e| {
                tracing::warn!(topic = %name, error = ?e, "stored topic config no longer valid; using defaults");
                TopicSettings::resolve(&self.config, &BTreeMap::new()).expect("defaults are valid")
            });
            let partitions = (0..t.partitions)
                .map(|p| {
                    let replicas = t
                        .parts
                        .get(usize::try_from(p).expect("bounded"))
                        .map(|p| p.replicas.clone())
                        .unwrap_or_default();
                    if !self.hosts(&replicas) {
                        return super::cluster::remote_partition(&name, p, replicas);
                    }
                    Partition {
                        replicas,
                        log: PartitionLog::empty(metadata::partition_dir(&name, p)),
                        state: PartState::Recovering,
                        sync: None,
                        recovery_sync_failures: 0,
                        copy: 0,
                        log_start_wanted: if crate::mutants::active(crate::mutants::Mutant::ForgetDeletionsOnRestart) {
                            0
                        } else {
                            t.log_starts.get(&p).copied().unwrap_or(0)
                        },
                        written_end: 0,
                        role: crate::replica::Role::Idle { leader_epoch: 0 },
                    }
                })
                .collect();
            self.names.insert(t.id, name.clone());
            self.topics.insert(name, Topic { id: t.id, configs: t.configs, settings, partitions, creating: None });
        }
        self.recovery.stats.topics = self.topics.len();
        self.issue(DiskOp::ListDir { path: String::new() }, Purpose::Recovery(Step::RootListed));
    }

    fn root_listed(&mut self, entries: Vec<crate::io::DirEntry>) {
        let mut present = std::collections::BTreeSet::new();
        for e in entries.iter().filter(|e| e.is_dir) {
            let known = metadata::parse_partition_dir(&e.name).and_then(|(topic, p)| {
                let t = self.topics.get(topic)?;
                let part = t.partition(p)?;
                Some(((t.id, p), part.state == PartState::Remote))
            });
            match known {
                Some((_, true)) => {
                    // Another broker holds it now; keep the files until an operator looks.
                    tracing::warn!(dir = %e.name, "a partition directory this broker does not hold; left alone");
                }
                Some((tp, false)) => {
                    present.insert(tp);
                }
                None if metadata::parse_partition_dir(&e.name).is_some() => {
                    tracing::warn!(dir = %e.name, "removing a partition directory no topic owns");
                    self.recovery.stats.orphan_dirs_removed += 1;
                    self.issue(DiskOp::RemoveDirAll { path: e.name.clone() }, Purpose::Ignore);
                }
                None => {}
            }
        }
        let all: Vec<Tp> = self
            .topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.state != PartState::Remote)
                    .map(move |(i, _)| (t.id, i as i32))
            })
            .collect();
        self.recovery.stats.partitions = all.len();
        for tp in &all {
            self.recovery.todo.insert(*tp, VecDeque::new());
        }
        self.recovery.listed = true;
        for tp in all {
            let dir = self.partition(tp).expect("just listed").log.dir.clone();
            if present.contains(&tp) {
                self.issue(DiskOp::ListDir { path: dir }, Purpose::Recovery(Step::PartListed(tp)));
            } else {
                self.issue(DiskOp::CreateDir { path: dir }, Purpose::Recovery(Step::PartDir(tp)));
            }
        }
        self.maybe_serving();
    }

    /// A chunk of a segment read during recovery: scan it, then read on, accept the segment,
    /// or cut a torn tail (only once two reads agree on it).
    fn on_segment_read(&mut self, tp: Tp, read_at: u64, asked: usize, data: bytes::Bytes) {
        let interval = self.topic_settings(tp).map_or(4096, |s| s.index_interval_bytes);
        let eof = data.len() < asked;
        let rec = &mut self.recovery;
        let Some(seg) = rec.current.get_mut(&tp) else {
            return;
        };
        let gap_ok = rec.gap_ok.get(&tp).filter(|g| g.0 == seg.base_offset).map(|g| g.1);
        match seg.recover_chunk(&data, eof, limits::RECOVERY_READ_BYTES, interval, gap_ok) {
            Scan::NeedMore { position, len } => self.read_chunk_at(tp, position, len),
            Scan::Clean => self.segment_done(tp, None),
            Scan::Gap { position } => {
                // The base offset is not under the batch's CRC: read it again, and go on only
                // if both reads agree (a gap the cleaner left does; a garbled read does not).
                let at = usize::try_from(position.saturating_sub(read_at)).unwrap_or(0).min(data.len());
                let base = data.get(at..at + 8).map_or(-1, |b| i64::from_be_bytes(b.try_into().expect("8 bytes")));
                let rest = data.slice(at..);
                let asked = asked.saturating_sub(at);
                let file = seg.log_file;
                self.recovery.held.insert(tp, (position, asked, rest));
                self.issue(
                    DiskOp::Read { file, position, len: 8 },
                    Purpose::Recovery(Step::GapCheck { tp, position, base }),
                );
            }
            Scan::Torn { position, reason } => {
                let dir = self.partition(tp).map(|p| p.log.dir.clone()).unwrap_or_default();
                // A read can come back corrupted. Cutting the log on a bad read would
                // throw away acknowledged records, so read that spot again: only bytes
                // that read the same bad way twice are cut off (a torn write does).
                let bad = &data[usize::try_from(position.saturating_sub(read_at)).unwrap_or(0).min(data.len())..];
                let fingerprint = crc32c::crc32c(bad);
                let consistent = match self.recovery.reread.get(&tp) {
                    Some(&(p, f, n)) if p == position => f == fingerprint || n >= REREADS_MAX,
                    _ => crate::mutants::active(crate::mutants::Mutant::TruncateOnFirstBadRead),
                };
                if consistent {
                    tracing::warn!(%dir, position, ?reason, "torn or corrupt segment tail; truncating");
                    self.segment_done(tp, Some(position));
                } else {
                    let attempts = self.recovery.reread.get(&tp).filter(|r| r.0 == position).map_or(1, |r| r.2 + 1);
                    tracing::warn!(%dir, position, ?reason, attempts, "bad batch in a segment; reading it again");
                    self.recovery.reread.insert(tp, (position, fingerprint, attempts));
                    self.read_chunk_at(tp, position, limits::RECOVERY_READ_BYTES);
                }
            }
        }
    }

    /// The base offset past a gap, read again: the scan goes on over it if it agrees, and from
    /// a fresh read of that spot if not.
    fn on_gap_check(&mut self, tp: Tp, position: u64, base: i64, data: &[u8]) {
        let Some((at, asked, rest)) = self.recovery.held.remove(&tp) else { return };
        let Some(seg_base) = self.recovery.current.get(&tp).map(|s| s.base_offset) else { return };
        let again = data.get(..8).map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")));
        if again == Some(base) {
            self.recovery.gap_ok.insert(tp, (seg_base, position));
            self.on_segment_read(tp, at, asked, rest);
        } else {
            tracing::warn!(position, "a batch's base offset read two ways; reading it again");
            self.read_chunk_at(tp, position, limits::RECOVERY_READ_BYTES);
        }
    }

    fn open_summary(&mut self, tp: Tp) {
        let Some(base) = self.recovery.current.get(&tp).map(|s| s.base_offset) else { return };
        let dir = self.partition(tp).map(|p| p.log.dir.clone()).unwrap_or_default();
        let file = self.alloc_file();
        self.recovery.summary.insert(tp, (file, None));
        let path = format!("{dir}/{}", summary::file_name(base));
        self.issue(DiskOp::Open { file, path, create: false }, Purpose::Recovery(Step::SumOpened(tp)));
    }

    fn on_summary_opened(&mut self, tp: Tp, len: u64) {
        let Some(&(file, _)) = self.recovery.summary.get(&tp) else { return };
        match usize::try_from(len) {
            Ok(len) if len > 0 && len <= limits::SEGMENT_SUMMARY_BYTES_MAX => {
                self.issue(DiskOp::Read { file, position: 0, len }, Purpose::Recovery(Step::SumRead(tp)));
            }
            _ => self.scan_unsummarized(tp),
        }
    }

    /// The summary read: check the segment's last batch against it (a mutant takes it as it
    /// is), or scan the segment if it is not this segment's.
    fn on_summary_read(&mut self, tp: Tp, data: &[u8]) {
        let len = self.recovery.file_len.get(&tp).copied().unwrap_or(0);
        let Some(seg) = self.recovery.current.get(&tp) else { return };
        let (base, log_file) = (seg.base_offset, seg.log_file);
        let unchecked = crate::mutants::active(crate::mutants::Mutant::SummaryUnchecked);
        let found = summary::decode(data).filter(|s| s.base_offset == base && (s.size == len || unchecked));
        let at = found.as_ref().and_then(|s| s.last_header_at());
        match (found, at) {
            (Some(s), _) if unchecked => self.summary_taken(tp, s),
            (Some(s), Some(position)) => {
                if let Some(held) = self.recovery.summary.get_mut(&tp) {
                    held.1 = Some(s);
                }
                let len = crate::log::batch::HEADER_BYTES;
                self.issue(DiskOp::Read { file: log_file, position, len }, Purpose::Recovery(Step::SumCheck(tp)));
            }
            _ => self.scan_unsummarized(tp),
        }
    }

    fn on_summary_check(&mut self, tp: Tp, header: &[u8]) {
        let len = self.recovery.file_len.get(&tp).copied().unwrap_or(0);
        let found = self.recovery.summary.get_mut(&tp).and_then(|h| h.1.take());
        match found {
            Some(s) if s.matches(len, header) => self.summary_taken(tp, s),
            _ => self.scan_unsummarized(tp),
        }
    }

    fn summary_taken(&mut self, tp: Tp, s: summary::Summary) {
        if let Some((file, _)) = self.recovery.summary.remove(&tp) {
            self.issue(DiskOp::Close { file }, Purpose::Ignore);
        }
        let Some(seg) = self.recovery.current.get_mut(&tp) else { return };
        seg.restore(s);
        self.recovery.stats.summarized += 1;
        self.segment_done(tp, None);
    }

    /// The segment's summary is missing, unreadable or not this segment's: read the segment.
    fn scan_unsummarized(&mut self, tp: Tp) {
        if let Some((file, _)) = self.recovery.summary.remove(&tp) {
            self.issue(DiskOp::Close { file }, Purpose::Ignore);
        }
        self.read_chunk(tp, 0, limits::RECOVERY_READ_BYTES);
    }

    /// A partition with no segment files: start it empty.
    fn fresh_partition(&mut self, tp: Tp) {
        let mut ops = Vec::new();
        let mut next = self.next_file;
        let wall = self.now.wall_ms;
        let Some(p) = self.partition_mut(tp) else {
            return;
        };
        p.log.add_segment(0, wall, &mut next, &mut ops);
        self.next_file = next;
        self.issue_all(ops, || Purpose::Recovery(Step::Misc(tp)));
        self.partition_recovered(tp);
    }

    fn next_segment(&mut self, tp: Tp) {
        let Some(base) = self.recovery.todo.get_mut(&tp).and_then(|q| q.pop_front()) else {
            self.partition_recovered(tp);
            return;
        };
        let files = [self.alloc_file(), self.alloc_file(), self.alloc_file()];
        let wall = self.now.wall_ms;
        let dir = self.partition(tp).expect("recovering").log.dir.clone();
        let seg = Segment::new(base, files, wall);
        let name = |ext| format!("{dir}/{}", crate::log::segment_file_name(base, ext));
        self.issue(
            DiskOp::Open { file: files[0], path: name("log"), create: false },
            Purpose::Recovery(Step::SegOpened(tp)),
        );
        self.issue(
            DiskOp::Open { file: files[1], path: name("index"), create: true },
            Purpose::Recovery(Step::Misc(tp)),
        );
        self.issue(
            DiskOp::Open { file: files[2], path: name("timeindex"), create: true },
            Purpose::Recovery(Step::Misc(tp)),
        );
        self.recovery.current.insert(tp, seg);
    }

    fn read_chunk(&mut self, tp: Tp, position: u64, len: usize) {
        self.read_chunk_at(tp, position, len);
    }

    fn read_chunk_at(&mut self, tp: Tp, position: u64, len: usize) {
        let Some(seg) = self.recovery.current.get(&tp) else {
            return;
        };
        let file = seg.log_file;
        self.issue(DiskOp::Read { file, position, len }, Purpose::Recovery(Step::SegRead { tp, position, asked: len }));
    }

    /// A segment has been scanned. `torn` is where its valid data ends if a bad tail was
    /// found: the file is cut there and every later segment is deleted.
    fn segment_done(&mut self, tp: Tp, torn: Option<u64>) {
        let interval = self.topic_settings(tp).map_or(4096, |s| s.index_interval_bytes);
        let Some(mut seg) = self.recovery.current.remove(&tp) else {
            return;
        };
        let mut ops = Vec::new();
        // Segments follow each other exactly (the cleaner keeps a segment's last batch, if
        // only as an empty one): a gap means the predecessor lost its unsynced tail in a crash
        // while this one kept writes made after it, which were never acknowledged.
        let contiguous = self
            .partition(tp)
            .and_then(|p| p.log.segments.last())
            .is_none_or(|prev| prev.next_offset() == seg.base_offset);
        if !contiguous {
            tracing::warn!(base = seg.base_offset, "segment does not follow its predecessor; dropping it and the rest");
            let later = self.recovery.todo.get_mut(&tp).map(std::mem::take).unwrap_or_default();
            self.drop_segment_files(tp, &seg, &later);
            return self.partition_recovered(tp);
        }
        if torn.is_some() {
            // The later segments go first, and durably (the runtime runs these operations in
            // order): cut first, a crash before they went would leave a hole in the log that
            // the next recovery could not tell from a cleaned segment's gap.
            let later = self.recovery.todo.get_mut(&tp).map(std::mem::take).unwrap_or_default();
            let dir = self.partition(tp).map(|p| p.log.dir.clone()).unwrap_or_default();
            for base in later {
                for ext in ["batches", "log", "index", "timeindex"] {
                    let path = format!("{dir}/{}", crate::log::segment_file_name(base, ext));
                    self.issue(DiskOp::DeleteFile { path }, Purpose::Ignore);
                }
            }
        }
        if let Some(position) = torn {
            self.recovery.stats.torn_tails += 1;
            self.recovery.stats.bytes_truncated +=
                self.recovery.file_len.get(&tp).copied().unwrap_or(position).saturating_sub(position);
            ops.push(DiskOp::Truncate { file: seg.log_file, len: position });
            ops.push(DiskOp::Sync { file: seg.log_file });
        }
        self.recovery.stats.segments += 1;
        self.recovery.stats.batches += seg.entries.len();
        self.issue_all(std::mem::take(&mut ops), || Purpose::Recovery(Step::Misc(tp)));
        seg.finish_recovery(interval, &mut ops);
        self.issue_all(ops, || Purpose::Recovery(Step::Index(tp)));
        let p = self.partition_mut(tp).expect("recovering");
        if p.log.segments.is_empty() {
            p.log.log_start_offset = seg.base_offset;
        }
        // Idempotent producers' state is rebuilt from the log, in log order, so a retry of a
        // batch written before the restart is still recognised.
        let record = seg.record.as_ref().expect("a recovered segment has its record");
        if !crate::mutants::active(crate::mutants::Mutant::ProducerStateNotRebuilt) {
            for r in &record.replay {
                p.log.producers.replay(r);
            }
        }
        let epochs = self.recovery.epochs.entry(tp).or_default();
        for (epoch, start) in &record.epochs {
            epochs.assign(*epoch, *start);
        }
        let p = self.partition_mut(tp).expect("recovering");
        p.log.segments.push(seg);
        self.next_segment(tp);
    }

    fn drop_segment_files(&mut self, tp: Tp, seg: &Segment, later: &VecDeque<i64>) {
        let dir = self.partition(tp).map(|p| p.log.dir.clone()).unwrap_or_default();
        for file in [seg.log_file, seg.index_file, seg.time_index_file] {
            self.issue(DiskOp::Close { file }, Purpose::Ignore);
        }
        for base in std::iter::once(seg.base_offset).chain(later.iter().copied()) {
            for ext in ["batches", "log", "index", "timeindex"] {
                let path = format!("{dir}/{}", crate::log::segment_file_name(base, ext));
                self.issue(DiskOp::DeleteFile { path }, Purpose::Ignore);
            }
        }
    }

    /// The partition's log is rebuilt. Everything in it must be synced again before it counts
    /// as durable (a process crash leaves unsynced bytes readable in the page cache).
    fn partition_recovered(&mut self, tp: Tp) {
        if self.recovery.todo.remove(&tp).is_none() {
            return;
        }
        let wall = self.now.wall_ms;
        let mut next = self.next_file;
        let mut ops = Vec::new();
        let epochs = self.recovery.epochs.remove(&tp).unwrap_or_default();
        let Some(p) = self.partition_mut(tp) else {
            return;
        };
        if p.log.segments.is_empty() {
            p.log.add_segment(0, wall, &mut next, &mut ops);
        }
        let last = p.log.segments.last().expect("at least one");
        p.log.log_end_offset = last.next_offset().max(last.base_offset);
        p.log.durable_end = p.log.log_start_offset;
        p.log.high_watermark = p.log.log_start_offset;
        p.log.epochs = epochs;
        p.log.epochs.truncate_to(p.log.log_end_offset);
        p.written_end = p.log.log_end_offset;
        p.log.summaries_waiting = true;
        // A segment taken from its summary was synced before the summary was written; the
        // rest must be synced again. A sealed segment's record is not needed once its summary
        // is on disk.
        let n = p.log.segments.len();
        for seg in &mut p.log.segments[..n - 1] {
            if matches!(seg.summary, summary::SummaryState::Written(_)) {
                seg.record = None;
            }
        }
        let unsynced = |s: &&Segment| s.size > 0 && !matches!(s.summary, summary::SummaryState::Written(_));
        p.log.dirty = p.log.segments.iter().filter(unsynced).map(|s| s.log_file).collect();
        if p.log.dirty.is_empty() {
            p.log.durable_end = p.log.log_end_offset;
        }
        p.state = PartState::Online;
        self.next_file = next;
        self.issue_all(ops, || Purpose::Recovery(Step::Misc(tp)));
        self.dirty.insert(tp);
        self.maybe_serving();
    }

    fn partition_offline(&mut self, tp: Tp, e: &DiskError) {
        let Some(p) = self.partition_mut(tp) else {
            return;
        };
        tracing::error!(dir = %p.log.dir, error = %e, "partition cannot be recovered; it stays offline");
        p.state = PartState::Offline;
        self.recovery.current.remove(&tp);
        self.recovery.todo.remove(&tp);
        if let Some((file, _)) = self.recovery.summary.remove(&tp) {
            self.issue(DiskOp::Close { file }, Purpose::Ignore);
        }
        self.maybe_serving();
    }

    pub(super) fn maybe_serving(&mut self) {
        if self.phase != Phase::Recovering || !self.recovery.listed || !self.recovery.todo.is_empty() {
            return;
        }
        if !self.cluster.started {
            return; // the metadata quorum has not caught up (or elected itself) yet
        }
        // Serve only once every recovered log is synced again: a consumer must never see the
        // high watermark of a partition with one replica go back across a restart.
        let unsynced = self
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .any(|p| p.state == PartState::Online && p.log.durable_end < p.log.log_end_offset);
        if unsynced {
            return;
        }
        tracing::info!(stats = ?self.recovery.stats, "recovery finished; serving");
        self.phase = Phase::Serving;
        // The roles, and with them the high watermarks (a partition of one replica's is its
        // durable end at once), before any request is served.
        // Each coordinators' partition led here is read back (on one node: all of them).
        self.refresh_all_roles();
        let buffered: Vec<_> = self.buffered.drain(..).collect();
        for (conn, frame) in buffered {
            self.on_frame(conn, frame);
        }
    }
}
