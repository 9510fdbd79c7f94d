//! Snapshots of the metadata image (KRaft's `.checkpoint` files), so that a restart does not
//! apply the whole metadata log again.
//!
//! Once `metadata.log.max.record.bytes.between.snapshots` bytes of records have been applied
//! since the last snapshot (or `metadata.log.max.snapshot.interval.ms` has passed and a record
//! came since), the node writes its image at the offset it has applied to:
//! `.sluice-meta/<end>-<epoch>.checkpoint`, one checksummed frame. It is written under a
//! `.part` name, synced, and renamed into place, each step once the one before has
//! completed; a crash leaves either the old snapshots or the new one, never half of one.
//! Older snapshots are deleted once the new one is in place.
//!
//! At start-up the newest snapshot that reads whole is the image's base, and only the
//! committed records after its end are applied. One that does not read whole (read again
//! first: a bad read is not a bad file) is skipped for the one before it, and with none the
//! whole log is applied, as before snapshots existed: the log itself is still kept whole.

use bytes::Bytes;

use super::{Node, Purpose};
use crate::io::{DirEntry, DiskError, DiskOp, DiskReply};
use crate::metadata::{self, Snapshot};
use crate::quorum::Epoch;
use crate::types::{FileId, Instant, Offset};

/// Reads of a snapshot that does not decode before it is given up for an older one.
const SNAPSHOT_READS_MAX: u32 = 3;

/// A snapshot file's step being waited for.
#[derive(Clone, Copy, Debug)]
pub(super) enum SnapStep {
    Opened,
    Written,
    Synced,
    Renamed,
}

struct Writing {
    id: (Offset, Epoch),
    file: FileId,
    data: Bytes,
    /// Fetched from the leader (this node was behind its log start), not taken here.
    fetched: bool,
}

#[derive(Default)]
pub(super) struct Snapshots {
    /// The newest snapshot in place on disk: (end, epoch).
    pub latest: Option<(Offset, Epoch)>,
    /// Read at start-up: the image's base until start-up applies the log.
    pub loaded: Option<Snapshot>,
    /// The bytes of the snapshot read at start-up, for the quorum to serve.
    pub loaded_bytes: Option<Bytes>,
    /// Older snapshot files, deleted once a newer one is in place.
    older: Vec<(Offset, Epoch)>,
    /// Bytes of records applied since the latest snapshot, and when it was taken (or the
    /// node started).
    bytes_since: u64,
    since: Option<Instant>,
    writing: Option<Writing>,
    /// A fetched snapshot waiting for the write in progress to finish.
    pending_install: Option<((Offset, Epoch), Bytes)>,
    /// Start-up: snapshot files not yet tried, newest first; the one being read, and how many
    /// times it has been.
    candidates: Vec<(Offset, Epoch)>,
    reading: Option<((Offset, Epoch), FileId, u32)>,
}

/// A snapshot file's path.
fn path_of((end, epoch): (Offset, Epoch)) -> String {
    format!("{}/{}", metadata::META_DIR, metadata::snapshot_file_name(end, epoch))
}

impl Node {
    // ---- start-up -----------------------------------------------------------------------

    /// The metadata directory is listed: leftovers of an unfinished snapshot go, and the
    /// newest snapshot is read. Then the metadata files are read as before.
    pub(super) fn snapshots_listed(&mut self, entries: &[DirEntry]) {
        let mut found = Vec::new();
        for e in entries.iter().filter(|e| !e.is_dir) {
            if e.name.ends_with(".checkpoint.part") {
                let path = format!("{}/{}", metadata::META_DIR, e.name);
                self.issue(DiskOp::DeleteFile { path }, Purpose::Ignore);
            } else if let Some(id) = metadata::parse_snapshot_file_name(&e.name) {
                found.push(id);
            } else if let Some(seg) = super::metadata_quorum::SegmentFile::parse(&e.name) {
                self.recovery.segments.push(seg);
            }
        }
        self.recovery.segments.sort_by_key(|s| s.base);
        found.sort_unstable_by(|a, b| b.cmp(a));
        self.snapshots.candidates = found;
        self.next_snapshot_candidate();
    }

    /// Reads the newest snapshot not yet tried, or, with none left, goes on with the
    /// metadata files.
    fn next_snapshot_candidate(&mut self) {
        if self.snapshots.candidates.is_empty() {
            return self.snapshot_read_done();
        }
        let id = self.snapshots.candidates.remove(0);
        let file = self.alloc_file();
        self.snapshots.reading = Some((id, file, 0));
        self.issue(DiskOp::Open { file, path: path_of(id), create: false }, Purpose::SnapshotLoad);
    }

    fn snapshot_read_done(&mut self) {
        if let Some((_, file, _)) = self.snapshots.reading.take() {
            self.issue(DiskOp::Close { file }, Purpose::Ignore);
        }
        self.open_legacy_meta_file();
    }

    /// A step of reading a snapshot at start-up completed.
    pub(super) fn on_snapshot_load(&mut self, result: Result<DiskReply, DiskError>) {
        let Some((id, file, reads)) = self.snapshots.reading else { return };
        match result {
            Ok(DiskReply::Opened { len }) if len <= crate::limits::METADATA_LOG_BYTES_MAX => {
                let len = usize::try_from(len).expect("bounded above");
                self.issue(DiskOp::Read { file, position: 0, len }, Purpose::SnapshotLoad);
            }
            Ok(DiskReply::Data(data)) => match metadata::decode_snapshot(&data) {
                Some(snap) if (snap.end, snap.epoch) == id => {
                    tracing::info!(end = snap.end, epoch = snap.epoch, "metadata snapshot loaded");
                    self.snapshots.latest = Some(id);
                    let rest = std::mem::take(&mut self.snapshots.candidates);
                    self.snapshots.older.extend(rest);
                    self.snapshots.loaded = Some(snap);
                    self.snapshots.loaded_bytes = Some(data);
                    self.snapshot_read_done();
                }
                _ if reads + 1 < SNAPSHOT_READS_MAX => {
                    self.snapshots.reading = Some((id, file, reads + 1));
                    let len = data.len();
                    self.issue(DiskOp::Read { file, position: 0, len }, Purpose::SnapshotLoad);
                }
                _ => {
                    tracing::warn!(path = %path_of(id), "metadata snapshot does not read whole; trying an older one");
                    self.snapshots.older.push(id); // deleted once a newer one is in place
                    self.issue(DiskOp::Close { file }, Purpose::Ignore);
                    self.snapshots.reading = None;
                    self.next_snapshot_candidate();
                }
            },
            other => {
                tracing::warn!(path = %path_of(id), result = ?other.map(|_| ()), "metadata snapshot unreadable; trying an older one");
                self.snapshots.older.push(id);
                self.issue(DiskOp::Close { file }, Purpose::Ignore);
                self.snapshots.reading = None;
                self.next_snapshot_candidate();
            }
        }
    }

    /// Start-up applies the committed log from here, on this image (`None`: from the start).
    pub(super) fn take_loaded_snapshot(&mut self) -> Option<Snapshot> {
        self.snapshots.since = Some(self.now.mono);
        self.snapshots.loaded.take()
    }

    // ---- taking snapshots ---------------------------------------------------------------

    /// Records applied: `bytes` of them. Takes a snapshot when one is due.
    pub(super) fn records_applied(&mut self, bytes: u64) {
        let s = &mut self.snapshots;
        s.bytes_since += bytes;
        let now = self.now.mono;
        let since = *s.since.get_or_insert(now);
        let by_bytes = s.bytes_since >= self.config.metadata_snapshot_bytes;
        let interval = self.config.metadata_snapshot_interval_ms;
        let by_time = interval > 0 && s.bytes_since > 0 && now >= since.plus_millis(interval);
        let applied = self.cluster.applied;
        if s.writing.is_some() || !(by_bytes || by_time) || s.latest.is_some_and(|(end, _)| end >= applied) {
            return;
        }
        let Some(epoch) = self.meta.quorum.as_ref().and_then(|q| q.log().epoch_at(applied - 1)) else { return };
        let end = if crate::mutants::active(crate::mutants::Mutant::SnapshotOffByOne) { applied + 1 } else { applied };
        let data = Bytes::from(metadata::encode_snapshot_of(end, epoch, &self.cluster.image));
        if data.len() as u64 > crate::limits::METADATA_LOG_BYTES_MAX {
            tracing::error!(bytes = data.len(), "metadata snapshot over the size limit; not written");
            return;
        }
        self.snapshots.bytes_since = 0;
        self.snapshots.since = Some(now);
        self.write_snapshot((end, epoch), data, false);
    }

    /// Starts writing a snapshot file: under a `.part` name first.
    fn write_snapshot(&mut self, id: (Offset, Epoch), data: Bytes, fetched: bool) {
        let file = self.alloc_file();
        let path = format!("{}.part", path_of(id));
        self.snapshots.writing = Some(Writing { id, file, data, fetched });
        self.issue(DiskOp::Open { file, path, create: true }, Purpose::Snapshot(SnapStep::Opened));
    }

    /// The quorum fetched its leader's snapshot: it is written here like one of this node's,
    /// after the one being written (if any).
    pub(super) fn install_snapshot(&mut self, id: (Offset, Epoch), data: Bytes) {
        if self.snapshots.writing.is_some() {
            self.snapshots.pending_install = Some((id, data));
        } else {
            self.write_snapshot(id, data, true);
        }
    }

    /// The snapshot write in progress ended: a fetched one waiting is written next.
    fn snapshot_write_ended(&mut self) {
        self.snapshots.writing = None;
        if let Some((id, data)) = self.snapshots.pending_install.take() {
            self.write_snapshot(id, data, true);
        }
    }

    /// A snapshot fetched from the leader is durable here: its image replaces this node's
    /// (or is the base start-up applies the log on), and the quorum's log starts at its end.
    fn snapshot_fetched(&mut self, id: (Offset, Epoch), data: Bytes) {
        let now = self.now.mono;
        let Some(snap) = metadata::decode_snapshot(&data).filter(|s| (s.end, s.epoch) == id) else {
            tracing::error!(
                end = id.0,
                epoch = id.1,
                "a snapshot fetched from the leader does not decode; fetching it again"
            );
            if let Some(q) = self.meta.quorum.as_mut() {
                q.snapshot_install_failed(now);
            }
            return;
        };
        tracing::info!(end = id.0, epoch = id.1, "metadata snapshot fetched from the leader");
        if !self.cluster.started {
            self.snapshots.loaded = Some(snap);
        } else if snap.end > self.cluster.applied {
            self.install_image(snap);
        }
        if let Some(q) = self.meta.quorum.as_mut() {
            q.snapshot_installed(now, id, data);
        }
    }

    /// A step of writing a snapshot completed: the next is issued; a failure abandons it
    /// (the next record applied tries again).
    pub(super) fn on_snapshot_step(&mut self, step: SnapStep, result: Result<DiskReply, DiskError>) {
        let Some(w) = self.snapshots.writing.as_ref() else { return };
        let (id, file, fetched) = (w.id, w.file, w.fetched);
        let part = format!("{}.part", path_of(id));
        if let Err(e) = result {
            tracing::warn!(error = %e, path = %part, "writing a metadata snapshot failed; it is taken again later");
            self.issue(DiskOp::Close { file }, Purpose::Ignore);
            self.issue(DiskOp::DeleteFile { path: part }, Purpose::Ignore);
            if fetched {
                let now = self.now.mono;
                if let Some(q) = self.meta.quorum.as_mut() {
                    q.snapshot_install_failed(now);
                }
            } else {
                self.snapshots.bytes_since = self.config.metadata_snapshot_bytes;
                // due again
            }
            self.snapshot_write_ended();
            return self.drain_quorum();
        }
        match step {
            SnapStep::Opened => {
                let data = vec![w.data.clone()];
                self.issue(DiskOp::Write { file, position: 0, data }, Purpose::Snapshot(SnapStep::Written));
            }
            SnapStep::Written => {
                self.issue(DiskOp::Sync { file }, Purpose::Snapshot(SnapStep::Synced));
            }
            SnapStep::Synced => {
                self.issue(DiskOp::Close { file }, Purpose::Ignore);
                let to = path_of(id);
                self.issue(DiskOp::Rename { from: part, to }, Purpose::Snapshot(SnapStep::Renamed));
            }
            SnapStep::Renamed => {
                let data = w.data.clone();
                tracing::info!(end = id.0, epoch = id.1, "metadata snapshot written");
                let s = &mut self.snapshots;
                s.older.extend(s.latest.replace(id));
                for old in std::mem::take(&mut s.older) {
                    self.issue(DiskOp::DeleteFile { path: path_of(old) }, Purpose::Ignore);
                }
                if fetched {
                    self.snapshot_fetched(id, data);
                } else {
                    self.own_snapshot_durable(id, data);
                }
                self.snapshot_write_ended();
                self.drain_quorum();
            }
        }
    }
}
