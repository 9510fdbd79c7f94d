//! The node's side of the metadata quorum: it keeps the quorum's two files and routes their
//! disk completions back to it, and it turns metadata changes into proposals whose jobs
//! finish when the quorum commits them.
//!
//! Files (in `.sluice-meta/`):
//! - `quorum-state`: the epoch and vote, appended as `len | crc32c | postcard((epoch, vote))`
//!   records; the last valid one counts. Elections are rare, so it stays small.
//! - the quorum's log, in segment files of entries, `len | crc32c | postcard(Entry)` each (a
//!   metadata record is the postcard encoding of a `MetaRecord` inside an
//!   `EntryKind::Record`): `quorum.log` from offset 0, then `quorum-<base>-<epoch>.log` from
//!   offset `base`, the entry before which was of `epoch`. Entries are appended to the last.
//!   Once a snapshot is durable past the last segment's base, a new segment is started at the
//!   log end as soon as everything in the log is committed and synced (so no truncation ever
//!   reaches below it), and every segment whose successor starts at or below the snapshot's
//!   end is deleted, the log in memory forgetting those entries too.
//! - `metadata.log`: the records of Sluice versions before the quorum, read at start-up as
//!   the base the quorum's records apply on; never written again.
//!
//! A node today is a quorum of one voter (itself): it elects itself at start-up (two syncs:
//! the vote, then its LeaderChange entry) and serves only once that is committed.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node as QuorumNode, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{BrokerId, DescribeQuorumRequest, DescribeQuorumResponse};

use super::groups::sb;
use super::{JobId, Node, Phase, Purpose};
use crate::io::{DiskError, DiskOp};
use crate::metadata::{self, MetaRecord};
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, FrameError, RequestContext};
use crate::quorum::{Action, Entry, EntryKind, Epoch, NodeId, Persisted, Quorum, QuorumConfig, Write};
use crate::types::ConnId;
use crate::types::{FileId, Offset};

pub const QUORUM_STATE: &str = ".sluice-meta/quorum-state";
/// KRaft's name for the metadata log's topic, which DescribeQuorum asks about.
pub const CLUSTER_METADATA_TOPIC: &str = "__cluster_metadata";
pub const QUORUM_LOG: &str = ".sluice-meta/quorum.log";

/// One segment file of the quorum's log.
#[derive(Clone, Debug, Default)]
pub struct SegmentFile {
    /// The offset of its first entry, and the epoch of the entry before.
    pub base: Offset,
    pub epoch: Epoch,
    pub path: String,
    pub file: FileId,
    /// Read at start-up: its entries with their byte positions, and its valid length.
    pub entries: Vec<(Entry, u64)>,
    pub size: u64,
}

impl SegmentFile {
    /// The segment a log starts with: `quorum.log`, from offset 0.
    pub fn first() -> SegmentFile {
        SegmentFile { path: QUORUM_LOG.to_string(), ..SegmentFile::default() }
    }

    pub fn at(base: Offset, epoch: Epoch) -> SegmentFile {
        let path = format!("{}/quorum-{base:020}-{epoch:010}.log", metadata::META_DIR);
        SegmentFile { base, epoch, path, ..SegmentFile::default() }
    }

    /// The segment a file name in the metadata directory stands for, if it is one.
    pub fn parse(name: &str) -> Option<SegmentFile> {
        if name == "quorum.log" {
            return Some(SegmentFile::first());
        }
        let (base, epoch) = name.strip_prefix("quorum-")?.strip_suffix(".log")?.split_once('-')?;
        if base.len() != 20 || epoch.len() != 10 {
            return None;
        }
        Some(SegmentFile::at(base.parse().ok()?, epoch.parse().ok()?))
    }

    fn end(&self) -> Offset {
        self.base + Offset::try_from(self.entries.len()).expect("bounded")
    }
}

/// A segment no longer appended to: kept until a snapshot covers what follows it.
#[derive(Clone, Debug)]
struct OldSegment {
    base: Offset,
    path: String,
}

/// A proposed entry: its offset, epoch, and a checksum of its record. While the log holds
/// that entry it may yet commit; once it does not (cut back after a failed write), the change
/// failed. (The same offset and epoch can come back with another record after a cut.)
#[derive(Clone, Copy, Debug)]
struct Proposed {
    offset: Offset,
    epoch: Epoch,
    crc: u32,
}

fn entry_crc(e: &Entry) -> Option<u32> {
    match &e.kind {
        EntryKind::Record(r) => Some(crc32c::crc32c(r)),
        EntryKind::LeaderChange { .. } => None,
    }
}

#[derive(Default)]
pub(super) struct MetaQuorum {
    /// `None` until start-up has read the files.
    pub quorum: Option<Quorum>,
    pub legacy_file: FileId,
    pub state_file: FileId,
    state_size: u64,
    pub log_file: FileId,
    /// The segment appended to: its path and the offset of its first entry.
    log_path: String,
    log_base: Offset,
    /// Byte position of each entry of the segment appended to, and its end.
    positions: Vec<u64>,
    log_size: u64,
    /// The segments before it, oldest first.
    old_segments: Vec<OldSegment>,
    /// A snapshot is durable past the segment appended to: a new one starts when the log is
    /// quiet (everything committed and synced, no write in flight).
    roll_wanted: bool,
    /// The new segment being created: its handle, base and path.
    rolling: Option<(FileId, Offset, String)>,
    /// Quorum syncs in flight: how many files each still waits for.
    syncs: BTreeMap<u64, u8>,
    /// Files written since their last sync was issued: only those are synced.
    state_dirty: bool,
    log_dirty: bool,
    /// Writes issued (numbered from 1) and those not yet completed. A sync is issued only
    /// once every write before it has completed: a sync that finished before an earlier write
    /// failed would vouch for bytes that never reached the file.
    write_seq: u64,
    writes_in_flight: std::collections::BTreeSet<u64>,
    /// Syncs the quorum asked for, waiting for the writes before them: (last write, sync id).
    deferred_syncs: Vec<(u64, u64)>,
    /// Changes waiting to be committed: where their entry went, and the job.
    waiting: Vec<(Proposed, JobId)>,
    /// Changes the quorum would not take (not leading, storage failing): their jobs fail at
    /// the end of the input, never inside the call that asked (its caller has yet to wait).
    rejected: Vec<JobId>,
}

impl Node {
    /// The quorum's files as read at start-up: its state, and its log segments, oldest first,
    /// with the newest snapshot loaded (if any). The log is the run of segments at the end
    /// that follow each other without a gap (an older one left before it, by a crash during
    /// a reset, is deleted). A log that does not hold the snapshot's last entry (as that
    /// snapshot says it) is emptied to start at the snapshot's end; one that starts past
    /// the snapshot's end (or past 0, with none) cannot be rebuilt: start-up fails.
    pub(super) fn restore_quorum_log(
        &mut self,
        state: (Epoch, Option<NodeId>),
        state_size: u64,
        mut segments: Vec<SegmentFile>,
        snapshot: Option<(Offset, Epoch)>,
    ) -> Result<Persisted, String> {
        self.meta.state_size = state_size;
        let mut first = segments.len() - 1;
        while first > 0 && segments[first - 1].end() == segments[first].base {
            first -= 1;
        }
        let mut chain = segments.split_off(first);
        for gone in segments {
            tracing::warn!(path = %gone.path, "a quorum log segment before a gap; deleting it");
            self.drop_segment_file(gone.file, gone.path);
        }
        let (start, start_epoch) = (chain[0].base, chain[0].epoch);
        let end = chain.last().map_or(0, SegmentFile::end);
        let epoch_at = |o: Offset| {
            if o == start - 1 {
                return Some(start_epoch);
            }
            chain.iter().find(|s| s.base <= o && o < s.end()).map(|s| s.entries[(o - s.base) as usize].0.epoch)
        };
        let covered = snapshot.map_or(0, |(e, _)| e);
        if start > covered {
            return Err(format!(
                "the metadata log starts at offset {start}, but no readable snapshot covers what is before it (newest ends at {covered})"
            ));
        }
        if let Some((s_end, s_epoch)) = snapshot.filter(|&(e, ep)| e > 0 && (end < e || epoch_at(e - 1) != Some(ep))) {
            tracing::warn!(
                log_end = end,
                snapshot_end = s_end,
                "the metadata log does not hold the snapshot's last entry; emptying it to start there"
            );
            for seg in chain {
                self.drop_segment_file(seg.file, seg.path);
            }
            let seg = SegmentFile::at(s_end, s_epoch);
            self.start_segment(&seg.path, s_end);
            return Ok(Persisted {
                epoch: state.0,
                voted_for: state.1,
                start: s_end,
                start_epoch: s_epoch,
                entries: Vec::new(),
            });
        }
        let active = chain.pop().expect("one segment at least");
        for seg in &chain {
            self.issue(DiskOp::Close { file: seg.file }, Purpose::Ignore);
        }
        let m = &mut self.meta;
        m.old_segments = chain.iter().map(|s| OldSegment { base: s.base, path: s.path.clone() }).collect();
        (m.log_file, m.log_path, m.log_base, m.log_size) = (active.file, active.path.clone(), active.base, active.size);
        m.positions = active.entries.iter().map(|(_, at)| *at).collect();
        let entries = chain.into_iter().chain([active]).flat_map(|s| s.entries).map(|(e, _)| e).collect();
        Ok(Persisted { epoch: state.0, voted_for: state.1, start, start_epoch, entries })
    }

    fn drop_segment_file(&mut self, file: FileId, path: String) {
        self.issue(DiskOp::Close { file }, Purpose::Ignore);
        self.issue(DiskOp::DeleteFile { path }, Purpose::Ignore);
    }

    /// Entries are appended to a new, empty segment file from here on, its first at `base`.
    fn start_segment(&mut self, path: &str, base: Offset) {
        let file = self.alloc_file();
        let m = &mut self.meta;
        (m.log_file, m.log_path, m.log_base, m.log_size) = (file, path.to_string(), base, 0);
        m.positions.clear();
        m.log_dirty = true;
        // Created (durable when done), and emptied should a file of that name be left over;
        // both are quorum writes, so no sync is issued before they are done.
        self.issue_quorum_write(DiskOp::Open { file, path: path.to_string(), create: true });
        self.issue_quorum_write(DiskOp::Truncate { file, len: 0 });
    }
}

/// The quorum state as stored.
pub fn encode_state(epoch: Epoch, voted_for: Option<NodeId>) -> Vec<u8> {
    metadata::encode_frame(&postcard::to_allocvec(&(epoch, voted_for)).expect("serializes"))
}

/// The last valid quorum state record in `buf`, and the valid length.
pub fn decode_state(buf: &[u8]) -> (Option<(Epoch, Option<NodeId>)>, usize) {
    let (frames, valid) = metadata::decode_frames(buf);
    let last = frames.iter().rev().find_map(|f| postcard::from_bytes(f).ok());
    (last, valid)
}

/// The entries in `buf` with their byte positions, and the valid length. An entry that does
/// not decode ends the valid prefix.
pub fn decode_entries(buf: &[u8]) -> (Vec<(Entry, u64)>, usize) {
    let (frames, _) = metadata::decode_frames(buf);
    let mut at = 0usize;
    let mut out = Vec::new();
    for f in frames {
        let Ok(e) = postcard::from_bytes::<Entry>(f) else { break };
        out.push((e, at as u64));
        at += 8 + f.len();
    }
    (out, at)
}

impl Node {
    /// Start-up read the quorum's files: start the quorum (a sole voter elects itself).
    pub(super) fn start_quorum(&mut self, persisted: Persisted) {
        let mut cfg = QuorumConfig::new(self.config.node_id.0, self.config.voter_ids());
        cfg.election_timeout_ms = self.config.quorum_election_timeout_ms;
        cfg.fetch_timeout_ms = self.config.quorum_fetch_timeout_ms;
        let seed = rand::Rng::gen(&mut self.rng);
        let mut q = Quorum::new(cfg, persisted, seed, self.now.mono);
        if let (Some(id), Some(data)) = (self.snapshots.latest, self.snapshots.loaded_bytes.take()) {
            q.snapshot_durable(id, data); // served to members behind the log's start
        }
        self.meta.quorum = Some(q);
        self.drain_quorum();
    }

    /// Proposes a metadata change; `job` steps when it is committed (or fails). Returns the
    /// offset the change will have if it commits.
    pub(super) fn meta_append(&mut self, rec: &MetaRecord, job: JobId) -> Option<Offset> {
        let now = self.now.mono;
        let data = postcard::to_allocvec(rec).expect("metadata records serialize");
        let Some(q) = self.meta.quorum.as_mut().filter(|q| q.is_leader()) else {
            self.meta.rejected.push(job);
            return None;
        };
        let crc = crc32c::crc32c(&data);
        let offset = match q.propose(now, data) {
            Ok(offset) => {
                let epoch = q.epoch();
                self.meta.waiting.push((Proposed { offset, epoch, crc }, job));
                Some(offset)
            }
            Err(_) => {
                self.meta.rejected.push(job);
                None
            }
        };
        self.drain_quorum();
        offset
    }

    pub(super) fn quorum_timeout(&mut self) {
        let now = self.now.mono;
        if let Some(q) = self.meta.quorum.as_mut() {
            if q.poll_timeout().is_some_and(|t| t <= now) {
                q.handle_timeout(now);
                self.drain_quorum();
            }
        }
    }

    pub(super) fn on_quorum_write(&mut self, seq: u64, result: Result<(), DiskError>) {
        self.meta.writes_in_flight.remove(&seq);
        if let Err(e) = result {
            return self.quorum_storage_failed(&e);
        }
        let done_below = self.meta.writes_in_flight.first().copied().unwrap_or(u64::MAX);
        let (ready, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.meta.deferred_syncs).into_iter().partition(|(after, _)| *after < done_below);
        self.meta.deferred_syncs = wait;
        for (_, id) in ready {
            self.issue_quorum_sync(id);
        }
    }

    /// A write of the quorum's files, numbered so a sync can wait for it.
    fn issue_quorum_write(&mut self, action: DiskOp) {
        self.meta.write_seq += 1;
        let seq = self.meta.write_seq;
        self.meta.writes_in_flight.insert(seq);
        self.issue(action, Purpose::QuorumWrite { seq });
    }

    fn issue_quorum_sync(&mut self, id: u64) {
        let m = &mut self.meta;
        // The quorum asks for a sync only after writing something.
        let mut files: Vec<FileId> = Vec::with_capacity(2);
        if std::mem::take(&mut m.state_dirty) {
            files.push(m.state_file);
        }
        if std::mem::take(&mut m.log_dirty) || files.is_empty() {
            files.push(m.log_file);
        }
        m.syncs.insert(id, u8::try_from(files.len()).expect("two files"));
        for file in files {
            self.issue(DiskOp::Sync { file }, Purpose::QuorumSync { id });
        }
    }

    pub(super) fn on_quorum_sync(&mut self, id: u64, result: Result<(), DiskError>) {
        if let Err(e) = result {
            return self.quorum_storage_failed(&e);
        }
        let Some(left) = self.meta.syncs.get_mut(&id) else { return };
        *left -= 1;
        if *left == 0 {
            self.meta.syncs.remove(&id);
            let now = self.now.mono;
            if let Some(q) = self.meta.quorum.as_mut() {
                q.handle_synced(now, id);
            }
            self.drain_quorum();
        }
    }

    fn quorum_storage_failed(&mut self, e: &DiskError) {
        tracing::error!(error = %e, "metadata quorum write or sync failed; cutting its log back to what is durable");
        self.meta.syncs.clear(); // completions of syncs issued before prove nothing now
        self.meta.deferred_syncs.clear();
        // Whatever failed to sync must be synced again, whichever file it was.
        (self.meta.state_dirty, self.meta.log_dirty) = (true, true);
        let now = self.now.mono;
        if let Some(q) = self.meta.quorum.as_mut() {
            q.handle_storage_failed(now);
        }
        self.drain_quorum();
    }

    /// Carries out what the quorum asked for, then finishes the changes it committed or lost.
    pub(super) fn drain_quorum(&mut self) {
        while let Some(a) = self.meta.quorum.as_mut().and_then(Quorum::poll_action) {
            match a {
                Action::Write(w) => self.quorum_write(w),
                Action::Send { to, msg } => self.send_peer(to, crate::peer::Body::Quorum(msg)),
            }
        }
        // Changes this node proposed finish (or roll back) first; then the committed records
        // apply, and find the ones this node carried out already.
        self.settle_meta_waiting();
        self.apply_committed();
        if self.meta.roll_wanted {
            self.maybe_roll_quorum_log();
        }
        if self.phase == Phase::Recovering {
            self.maybe_serving();
        }
    }

    fn quorum_write(&mut self, w: Write) {
        let m = &mut self.meta;
        match w {
            Write::State { epoch, voted_for } => {
                let bytes = encode_state(epoch, voted_for);
                let position = m.state_size;
                m.state_size += bytes.len() as u64;
                let file = m.state_file;
                m.state_dirty = true;
                self.issue_quorum_write(DiskOp::Write { file, position, data: vec![Bytes::from(bytes)] });
            }
            Write::Append { offset, entries } => {
                debug_assert_eq!(
                    usize::try_from(offset - m.log_base).ok(),
                    Some(m.positions.len()),
                    "appends land at the log end"
                );
                let position = m.log_size;
                let mut data = Vec::with_capacity(entries.len());
                for e in &entries {
                    let frame = metadata::encode_frame(&postcard::to_allocvec(e).expect("entries serialize"));
                    m.positions.push(m.log_size);
                    m.log_size += frame.len() as u64;
                    data.push(Bytes::from(frame));
                }
                let file = m.log_file;
                m.log_dirty = true;
                self.issue_quorum_write(DiskOp::Write { file, position, data });
            }
            Write::Truncate { end } => {
                // Never below the segment appended to: it started when all before was committed.
                let keep = usize::try_from(end - m.log_base).unwrap_or(0).min(m.positions.len());
                m.log_size = m.positions.get(keep).copied().unwrap_or(m.log_size);
                m.positions.truncate(keep);
                let (file, len) = (m.log_file, m.log_size);
                m.log_dirty = true;
                self.issue_quorum_write(DiskOp::Truncate { file, len });
            }
            Write::Sync { id } => {
                if m.writes_in_flight.is_empty() {
                    self.issue_quorum_sync(id);
                } else {
                    m.deferred_syncs.push((m.write_seq, id));
                }
            }
            Write::InstallSnapshot { id, data } => self.install_snapshot(id, Bytes::from(data)),
            Write::Reset { start, start_epoch } => {
                let seg = SegmentFile::at(start, start_epoch);
                let old = std::mem::take(&mut self.meta.old_segments);
                let active = std::mem::replace(&mut self.meta.log_path, seg.path.clone());
                for path in old.into_iter().map(|s| s.path).chain([active]).filter(|p| *p != seg.path) {
                    self.issue(DiskOp::DeleteFile { path }, Purpose::Ignore);
                }
                let file = self.meta.log_file;
                self.issue(DiskOp::Close { file }, Purpose::Ignore);
                self.start_segment(&seg.path, start);
            }
        }
    }

    /// A snapshot of this node's is durable: the quorum serves it, and the log may start a
    /// new segment and drop those the snapshot covers.
    pub(super) fn own_snapshot_durable(&mut self, id: (Offset, Epoch), data: Bytes) {
        if let Some(q) = self.meta.quorum.as_mut() {
            q.snapshot_durable(id, data);
        }
        self.meta.roll_wanted |= id.0 > self.meta.log_base;
        self.maybe_roll_quorum_log();
    }

    /// The new segment file is created: it is appended to from now on if the log still ends
    /// at its base with nothing in flight (else it is dropped, and made again when the log
    /// is quiet; after a failure, at the next snapshot).
    pub(super) fn on_quorum_roll(&mut self, result: Result<(), DiskError>) {
        let Some((file, base, path)) = self.meta.rolling.take() else { return };
        let m = &self.meta;
        let still = self.meta.quorum.as_ref().is_some_and(|q| q.log().end() == base && q.durable_end() == base)
            && m.writes_in_flight.is_empty()
            && m.syncs.is_empty()
            && m.deferred_syncs.is_empty();
        match result {
            Ok(()) if still => {
                self.meta.roll_wanted = false;
                let old = OldSegment { base: self.meta.log_base, path: self.meta.log_path.clone() };
                self.meta.old_segments.push(old);
                let old_file = self.meta.log_file;
                self.issue(DiskOp::Close { file: old_file }, Purpose::Ignore);
                let m = &mut self.meta;
                (m.log_file, m.log_path, m.log_base, m.log_size) = (file, path, base, 0);
                m.positions.clear();
                // Emptied, should a file of that name be left over from an earlier run.
                self.issue_quorum_write(DiskOp::Truncate { file, len: 0 });
                self.meta.log_dirty = true;
            }
            result => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, %path, "could not start a new metadata log segment; trying at the next snapshot");
                    self.meta.roll_wanted = false;
                }
                self.drop_segment_file(file, path);
            }
        }
        self.maybe_roll_quorum_log();
    }

    /// Starts a new segment at the log end if one is wanted and the log is quiet, then
    /// deletes the segments the newest snapshot covers.
    fn maybe_roll_quorum_log(&mut self) {
        let Some(q) = self.meta.quorum.as_ref() else { return };
        let m = &self.meta;
        let quiet = q.durable_end() == q.log().end()
            && q.high_watermark() >= q.log().end()
            && m.writes_in_flight.is_empty()
            && m.syncs.is_empty()
            && m.deferred_syncs.is_empty();
        let (end, epoch, covered) = (q.log().end(), q.log().last_epoch(), q.snapshot_id().map_or(0, |(e, _)| e));
        if m.roll_wanted && quiet && end > m.log_base && m.rolling.is_none() {
            // The new segment is created first, and taken only once it is: a segment that
            // cannot be made (a full disk) leaves the log appending to the one it has.
            let seg = SegmentFile::at(end, epoch);
            let file = self.alloc_file();
            self.meta.rolling = Some((file, end, seg.path.clone()));
            self.issue(DiskOp::Open { file, path: seg.path, create: true }, Purpose::QuorumRoll);
        }
        // A segment goes once the one after it starts at or below the snapshot's end.
        let m = &mut self.meta;
        if m.old_segments.is_empty() {
            return;
        }
        let mut next_bases: Vec<Offset> = m.old_segments.iter().skip(1).map(|s| s.base).collect();
        next_bases.push(m.log_base);
        let gone = next_bases.iter().take_while(|&&b| b <= covered).count();
        if gone == 0 {
            return;
        }
        let new_start = next_bases[gone - 1];
        let paths: Vec<String> = m.old_segments.drain(..gone).map(|s| s.path).collect();
        if let Some(q) = self.meta.quorum.as_mut() {
            q.discard_prefix(new_start);
        }
        for path in paths {
            self.issue(DiskOp::DeleteFile { path }, Purpose::Ignore);
        }
    }

    /// Fails the changes the quorum would not take (called at the end of every input).
    pub(super) fn settle_meta_rejected(&mut self) {
        for job in std::mem::take(&mut self.meta.rejected) {
            self.job_step(job, false);
        }
    }

    /// Jobs whose change is committed step on; those whose entry was cut away fail. An entry
    /// gone below the log's start went into a snapshot fetched from the leader: this node's,
    /// or another leader's at that offset. A topic (or partitions) this node created is then
    /// kept if the snapshot's image has it (topic ids are random, so it is this one); any
    /// other change is failed (its client retries).
    fn settle_meta_waiting(&mut self) {
        let Some(q) = self.meta.quorum.as_ref() else { return };
        let mut done = Vec::new();
        let start = q.log().start();
        self.meta.waiting.retain(|&(p, job)| {
            let held = q.log().entry(p.offset).is_some_and(|e| e.epoch == p.epoch && entry_crc(e) == Some(p.crc));
            if !held || p.offset < q.high_watermark() {
                done.push((job, held, p.offset < start));
            }
            held && p.offset >= q.high_watermark()
        });
        for (job, held, in_snapshot) in done {
            let ok = held || (in_snapshot && self.job_in_image(job));
            self.job_step(job, ok);
        }
    }

    pub(super) fn quorum_poll_timeout(&self) -> Option<crate::types::Instant> {
        self.meta.quorum.as_ref().and_then(Quorum::poll_timeout)
    }
}

impl Node {
    /// DescribeQuorum (KIP-595, KIP-836, KIP-853), for `kafka-metadata-quorum.sh` and the
    /// admin client's `describeMetadataQuorum`: the metadata log's leader, epoch and high
    /// watermark and each voter's progress, as its leader sees it.
    pub(super) fn handle_describe_quorum(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: DescribeQuorumRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = DescribeQuorumResponse::default();
        for t in &req.topics {
            let mut td = TopicData::default();
            td.topic_name = t.topic_name.clone();
            for p in &t.partitions {
                let known = t.topic_name.as_str() == CLUSTER_METADATA_TOPIC && p.partition_index == 0;
                let mut pd = if known { self.quorum_partition_data() } else { PartitionData::default() };
                pd.partition_index = p.partition_index;
                if !known {
                    pd.error_code = KafkaError::UnknownTopicOrPartition.code();
                }
                td.partitions.push(pd);
            }
            resp.topics.push(td);
        }
        if ctx.version >= 2 {
            resp.nodes = self.quorum_nodes();
        }
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }

    /// The voters' endpoints: their controller listeners in a cluster; a sole voter's client
    /// listener (it has no other).
    fn quorum_nodes(&self) -> Vec<QuorumNode> {
        let endpoint = |name: &str, host: String, port: i32| {
            let mut l = Listener::default();
            l.name = sb(name);
            l.host = sb(host);
            l.port = u16::try_from(port).unwrap_or(0);
            l
        };
        let mut nodes = Vec::new();
        for id in self.config.voter_ids() {
            let mut node = QuorumNode::default();
            node.node_id = BrokerId(id);
            node.listeners = match self.config.voters.get(&id) {
                Some((host, port)) => vec![endpoint("CONTROLLER", host.clone(), i32::from(*port))],
                None => vec![endpoint("PLAINTEXT", self.config.advertised_host.clone(), self.config.advertised_port)],
            };
            nodes.push(node);
        }
        nodes
    }

    fn quorum_partition_data(&self) -> PartitionData {
        let mut pd = PartitionData::default();
        let Some(q) = self.meta.quorum.as_ref() else {
            pd.error_code = KafkaError::NotLeaderOrFollower.code();
            return pd;
        };
        let Some(voters) = q.describe(self.now.mono) else {
            pd.error_code = KafkaError::NotLeaderOrFollower.code();
            return pd;
        };
        pd.leader_id = BrokerId(q.leader().unwrap_or(-1));
        pd.leader_epoch = q.epoch();
        pd.high_watermark = q.high_watermark();
        // Instants are monotonic; timestamps are wall-clock milliseconds.
        let wall = |at: Option<crate::types::Instant>| {
            at.map_or(-1, |t| self.now.wall_ms - i64::try_from(self.now.mono.millis_since(t)).unwrap_or(i64::MAX))
        };
        pd.current_voters = voters
            .iter()
            .map(|v| {
                let mut r = ReplicaState::default();
                r.replica_id = BrokerId(v.id);
                r.log_end_offset = v.log_end;
                r.last_fetch_timestamp = wall(v.last_fetch);
                r.last_caught_up_timestamp = wall(v.last_caught_up);
                r
            })
            .collect();
        pd
    }
}

impl Node {
    /// A message from another broker: checked, then handed to the machine it is for.
    pub(super) fn on_peer(&mut self, from: i32, bytes: Bytes) {
        let (env, len) = match crate::peer::decode_with_tail(&bytes, from, &self.config.cluster_id) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(from, error = %e, "peer message refused");
                return;
            }
        };
        match env.body {
            crate::peer::Body::Quorum(msg) => {
                let now = self.now.mono;
                if let Some(q) = self.meta.quorum.as_mut() {
                    q.handle_message(now, from, msg);
                    self.drain_quorum();
                }
            }
            crate::peer::Body::Broker(msg) => {
                if self.config.is_cluster() && self.config.voter_ids().contains(&from) {
                    self.on_broker_message(from, msg);
                }
            }
            crate::peer::Body::Replica(msg) => {
                if self.config.is_cluster() && self.config.voter_ids().contains(&from) {
                    self.on_replica_message(from, msg, bytes.slice(len..));
                }
            }
        }
    }

    pub(super) fn send_peer(&mut self, to: i32, body: crate::peer::Body) {
        self.send_peer_with_tail(to, body, Vec::new());
    }

    /// Sends a peer message followed by `tail` (a fetch answer's record batches, as ranges of
    /// their segment files).
    pub(super) fn send_peer_with_tail(&mut self, to: i32, body: crate::peer::Body, tail: Vec<crate::io::Part>) {
        let env = crate::peer::Envelope {
            version: crate::peer::PROTOCOL_VERSION,
            cluster_id: self.config.cluster_id.clone(),
            from: self.config.node_id.0,
            body,
        };
        let mut parts = Vec::with_capacity(1 + tail.len());
        parts.push(crate::io::Part::Bytes(Bytes::from(crate::peer::encode(&env))));
        parts.extend(tail);
        self.outputs.push_back(crate::io::Output::Peer { to: crate::types::BrokerId(to), parts });
    }
}
