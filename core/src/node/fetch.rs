//! Fetch (with max.wait.ms long polls and min.bytes) and ListOffsets.

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{
    FetchRequest, ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::{Node, Purpose};
use crate::io::DiskOp;
use crate::io::Part;
use crate::limits;
use crate::log::records;
use crate::log::ReadResult;
use crate::protocol::errors::KafkaError;
use crate::protocol::fetch_response::{self, PartitionData, TopicData};
use crate::protocol::{self, FrameError, RequestContext};
use crate::types::{ConnId, Instant};

/// A fetch parked until enough data is durable or its wait runs out.
pub(super) struct PendingFetch {
    pub conn: ConnId,
    seq: u64,
    ctx: RequestContext,
    req: FetchRequest,
    pub deadline: Instant,
}

/// What ListOffsets looks for inside a batch.
#[derive(Debug, Clone, Copy)]
pub(super) enum TsTarget {
    /// The first record with a timestamp at or after this.
    AtLeast(i64),
    /// The first record with the largest timestamp.
    Max,
}

/// A ListOffsets waiting for batch reads.
pub(super) struct PendingLookup {
    pub conn: ConnId,
    seq: u64,
    ctx: RequestContext,
    resp: ListOffsetsResponse,
    outstanding: usize,
}

/// Error for the whole Fetch: a fetch session id Sluice never handed out.
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

impl Node {
    pub(super) fn handle_fetch(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: FetchRequest = protocol::decode_body(body, ctx.version)?;
        if ctx.version >= 7 && req.session_id != 0 {
            let parts = fetch_response::encode(ctx.version, ctx.correlation_id, FETCH_SESSION_ID_NOT_FOUND, &[]);
            self.respond(conn, seq, Some(parts));
            return Ok(());
        }
        let (parts, bytes, error, stats) = self.build_fetch(&ctx, &req);
        let wait_ms = u64::try_from(req.max_wait_ms).unwrap_or(0).min(limits::FETCH_MAX_WAIT_MS_MAX);
        // A fetch naming no partition (a Java consumer closing its fetch session) has nothing
        // to wait for, and its close would wait on it: answered at once, as Kafka does.
        let empty = req.topics.iter().all(|t| t.partitions.is_empty());
        if error || empty || wait_ms == 0 || bytes >= usize::try_from(req.min_bytes.max(1)).unwrap_or(1) {
            self.count_fetch(&req, &stats);
            self.respond(conn, seq, Some(parts));
        } else {
            let deadline = self.now.mono.plus_millis(wait_ms);
            self.fetches.push(PendingFetch { conn, seq, ctx, req, deadline });
        }
        Ok(())
    }

    /// Counts an answered fetch in its topics' metrics. A topic this node does not have gets
    /// no counters (as in Kafka): any client could otherwise grow the metrics without bound
    /// with made-up names.
    fn count_fetch(&mut self, req: &FetchRequest, stats: &[FetchStats]) {
        for (ft, s) in req.topics.iter().zip(stats) {
            if !self.topics.contains_key(ft.topic.0.as_str()) {
                continue;
            }
            let c = self.metrics.topic(ft.topic.0.as_str());
            c.fetch_requests += s.partitions;
            c.failed_fetch_requests += s.failed;
            c.bytes_out += s.bytes;
        }
    }

    /// Reads every requested partition up to its high watermark. Returns the response parts,
    /// the record bytes found, whether any partition had an error, and each topic's numbers.
    fn build_fetch(&self, ctx: &RequestContext, req: &FetchRequest) -> (Vec<Part>, usize, bool, Vec<FetchStats>) {
        let mut budget = usize::try_from(req.max_bytes).unwrap_or(0).min(limits::FETCH_RESPONSE_BYTES_MAX);
        if ctx.version < 3 || req.max_bytes <= 0 {
            budget = limits::FETCH_RESPONSE_BYTES_MAX;
        }
        let mut total = 0usize;
        let mut error = false;
        let mut topics = Vec::with_capacity(req.topics.len());
        let mut stats = Vec::with_capacity(req.topics.len());
        for ft in &req.topics {
            let mut st = FetchStats { partitions: ft.partitions.len() as u64, ..FetchStats::default() };
            let name = ft.topic.0.as_str();
            let topic = self.topics.get(name);
            let mut td = TopicData { name: name.to_string(), partitions: Vec::with_capacity(ft.partitions.len()) };
            for fp in &ft.partitions {
                let mut pd = PartitionData::new(fp.partition);
                let part = topic.and_then(|t| t.partition(fp.partition));
                match part {
                    None => pd.error_code = KafkaError::UnknownTopicOrPartition.code(),
                    Some(p) if p.serve_error_in(fp.current_leader_epoch).is_some() => {
                        pd.error_code = p.serve_error_in(fp.current_leader_epoch).map_or(0, KafkaError::code)
                    }
                    Some(p) => {
                        let l = &p.log;
                        let stable = l.last_stable_offset();
                        pd.high_watermark = l.high_watermark;
                        pd.last_stable_offset = stable;
                        pd.log_start_offset = l.log_start_offset;
                        let max = usize::try_from(fp.partition_max_bytes).unwrap_or(0).min(budget);
                        let read_committed = req.isolation_level == 1;
                        let upper = if crate::mutants::active(crate::mutants::Mutant::FetchPastHighWatermark) {
                            l.log_end_offset
                        } else if read_committed {
                            // read_committed reads up to the last stable offset, and is told
                            // which transactions in that range were aborted.
                            pd.aborted = Some(l.producers.aborted_between(fp.fetch_offset, stable));
                            stable
                        } else {
                            l.high_watermark
                        };
                        // Past the last stable offset or the high watermark, up to the log end, a
                        // fetch is in range with nothing to return yet (as in Kafka: a new leader's
                        // high watermark catches up with what it has).
                        let waiting = fp.fetch_offset > upper && fp.fetch_offset <= l.log_end_offset;
                        match if waiting { ReadResult::Empty } else { l.read(fp.fetch_offset, upper, max, total == 0) }
                        {
                            ReadResult::OutOfRange => pd.error_code = KafkaError::OffsetOutOfRange.code(),
                            ReadResult::Empty => {}
                            ReadResult::Range { file, position, len } => {
                                total += len as usize;
                                st.bytes += u64::from(len);
                                budget = budget.saturating_sub(len as usize);
                                pd.records = Some(Part::File { file, position, len });
                            }
                        }
                    }
                }
                error |= pd.error_code != 0;
                st.failed += u64::from(pd.error_code != 0);
                td.partitions.push(pd);
            }
            topics.push(td);
            stats.push(st);
        }
        (fetch_response::encode(ctx.version, ctx.correlation_id, 0, &topics), total, error, stats)
    }

    /// Re-reads parked fetches after high watermarks moved; answers those with enough data.
    pub(super) fn wake_fetches(&mut self) {
        self.settle_fetches(false);
    }

    /// Answers parked fetches whose wait has run out.
    pub(super) fn expire_fetches(&mut self) {
        self.settle_fetches(true);
    }

    fn settle_fetches(&mut self, expire: bool) {
        let parked = std::mem::take(&mut self.fetches);
        for f in parked {
            let timed_out = expire && self.now.mono >= f.deadline;
            let (parts, bytes, error, stats) = self.build_fetch(&f.ctx, &f.req);
            let min = usize::try_from(f.req.min_bytes.max(1)).unwrap_or(1);
            if timed_out || error || bytes >= min {
                self.count_fetch(&f.req, &stats);
                self.respond(f.conn, f.seq, Some(parts));
            } else {
                self.fetches.push(f);
            }
        }
    }

    pub(super) fn handle_list_offsets(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: ListOffsetsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = ListOffsetsResponse::default();
        let mut reads = Vec::new();
        for (ti, t) in req.topics.iter().enumerate() {
            let mut tr = ListOffsetsTopicResponse::default();
            tr.name = t.name.clone();
            let topic = self.topics.get(t.name.0.as_str());
            for (pi, p) in t.partitions.iter().enumerate() {
                let mut pr = ListOffsetsPartitionResponse::default();
                pr.partition_index = p.partition_index;
                pr.timestamp = -1;
                pr.offset = -1;
                let part = topic.and_then(|tt| tt.partition(p.partition_index));
                let append_time = topic.is_some_and(|tt| tt.settings.log_append_time);
                let mut epoch = -1;
                let found = match part {
                    None => Err(KafkaError::UnknownTopicOrPartition),
                    Some(pt) if pt.serve_error_in(p.current_leader_epoch).is_some() => {
                        Err(pt.serve_error_in(p.current_leader_epoch).unwrap_or(KafkaError::UnknownServerError))
                    }
                    Some(pt) => {
                        let l = &pt.log;
                        // A new leader's high watermark below the start of its epoch may be
                        // below what the last leader answered: a client's latest offset, or a
                        // timestamp not found below it, is not known yet (KIP-207; clients
                        // retry). Replicas' and v0-v1 requests are answered as they are.
                        let lagging = ctx.version >= 2
                            && pt.role.leadership().is_some_and(|ld| l.high_watermark < ld.epoch_start);
                        // read_committed's latest offset is the last stable offset.
                        let latest = if req.isolation_level == 1 { l.last_stable_offset() } else { l.high_watermark };
                        // The epoch that wrote the offset answered (for LATEST: the latest).
                        epoch = l.epochs.epoch_at(latest.max(1) - 1).unwrap_or(-1);
                        let (target, loc) = match p.timestamp {
                            -1 => (None, Ok(Some((latest, -1)))),
                            -2 | -4 => {
                                epoch = l.epochs.epoch_at(l.log_start_offset).unwrap_or(epoch);
                                (None, Ok(Some((l.log_start_offset, -1))))
                            }
                            -3 => (Some(TsTarget::Max), Err(l.batch_with_max_timestamp(l.high_watermark))),
                            ts if ts >= 0 => {
                                (Some(TsTarget::AtLeast(ts)), Err(l.batch_for_timestamp(ts, l.high_watermark)))
                            }
                            _ => (None, Ok(None)),
                        };
                        match (target, loc) {
                            (None, Ok(Some(_))) if lagging && p.timestamp == -1 => Err(KafkaError::OffsetNotAvailable),
                            (None, Ok(Some(x))) => Ok(Some(x)),
                            (None, _) => Err(KafkaError::InvalidRequest),
                            (Some(_), Err(None)) if lagging => Err(KafkaError::OffsetNotAvailable),
                            (Some(_), Ok(_)) | (Some(_), Err(None)) => Ok(None),
                            // One record, or broker-stamped times: the batch says it all.
                            (Some(_), Err(Some(b))) if b.base_offset == b.last_offset || append_time => {
                                epoch = l.epochs.epoch_at(b.base_offset).unwrap_or(-1);
                                Ok(Some((b.base_offset, b.max_timestamp)))
                            }
                            (Some(target), Err(Some(b))) => {
                                reads.push((ti, pi, target, b));
                                Ok(None)
                            }
                        }
                    }
                };
                match found {
                    Ok(Some((offset, ts))) => {
                        pr.offset = offset;
                        pr.timestamp = ts;
                        if ctx.version >= 4 {
                            pr.leader_epoch = epoch;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => pr.error_code = e.code(),
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        if reads.is_empty() {
            self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
            return Ok(());
        }
        // Which record in a batch: read the batch and look at its records' timestamps.
        self.next_lookup += 1;
        let id = self.next_lookup;
        let outstanding = reads.len();
        for (ti, pi, target, b) in reads {
            let action = DiskOp::Read { file: b.file, position: b.position, len: b.size as usize };
            self.issue(action, Purpose::TimestampRead { id, ti, pi, target });
        }
        self.lookups.insert(id, PendingLookup { conn, seq, ctx: ctx.clone(), resp, outstanding });
        Ok(())
    }

    /// OffsetForLeaderEpoch (KIP-101/320): where an epoch ends in the leader's log, so that a
    /// consumer (after a leader change) can tell whether the log it read was cut back since:
    /// the largest epoch at or below the one asked and the offset just past its last batch
    /// (the next epoch's start, or the log end for the latest).
    pub(super) fn handle_offset_for_leader_epoch(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: OffsetForLeaderEpochRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = OffsetForLeaderEpochResponse::default();
        for t in &req.topics {
            let mut tr = OffsetForLeaderTopicResult::default();
            tr.topic = t.topic.clone();
            let topic = self.topics.get(t.topic.0.as_str());
            for p in &t.partitions {
                let mut e = EpochEndOffset::default();
                e.partition = p.partition;
                (e.leader_epoch, e.end_offset) = (-1, -1);
                match topic.and_then(|tt| tt.partition(p.partition)) {
                    None => e.error_code = KafkaError::UnknownTopicOrPartition.code(),
                    Some(pt) => match pt.serve_error_in(p.current_leader_epoch) {
                        Some(err) => e.error_code = err.code(),
                        None if p.leader_epoch < 0 => {}
                        // No batch left that says its epoch (an empty log, or retention took
                        // them all): the log, as it is, ends in the leader's epoch.
                        None if pt.log.epochs.latest().is_none() => {
                            (e.leader_epoch, e.end_offset) = (pt.role.leader_epoch(), pt.log.log_end_offset)
                        }
                        None => {
                            (e.leader_epoch, e.end_offset) =
                                pt.log.epochs.end_offset_for(p.leader_epoch, pt.log.log_end_offset)
                        }
                    },
                }
                tr.partitions.push(e);
            }
            resp.topics.push(tr);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }

    /// A batch read for ListOffsets came back: find the record, answer when all are in.
    pub(super) fn on_timestamp_read(
        &mut self,
        id: u64,
        ti: usize,
        pi: usize,
        target: TsTarget,
        data: Result<Bytes, String>,
    ) {
        let Some(l) = self.lookups.get_mut(&id) else {
            return;
        };
        let with_epoch = l.ctx.version >= 4;
        let data_epoch = data
            .as_ref()
            .ok()
            .and_then(|d| crate::log::batch::parse_header(d).ok())
            .map_or(-1, |h| h.partition_leader_epoch);
        let pr = &mut l.resp.topics[ti].partitions[pi];
        let found =
            data.and_then(|d| records::record_timestamps(&d).map_err(|e| format!("{e:?}"))).map(|recs| match target {
                TsTarget::AtLeast(ts) => recs.into_iter().find(|(_, t)| *t >= ts),
                TsTarget::Max => recs.into_iter().fold(None, |best: Option<(i64, i64)>, r| match best {
                    Some(b) if b.1 >= r.1 => Some(b),
                    _ => Some(r),
                }),
            });
        match found {
            Ok(Some((offset, ts))) => {
                pr.offset = offset;
                pr.timestamp = ts;
                if with_epoch {
                    // The batch holding the record says which epoch wrote it.
                    pr.leader_epoch = data_epoch;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "batch read for ListOffsets failed");
                pr.error_code = KafkaError::KafkaStorageError.code();
            }
        }
        l.outstanding -= 1;
        if l.outstanding == 0 {
            let l = self.lookups.remove(&id).expect("present");
            self.respond_bytes(l.conn, l.seq, protocol::encode_response(&l.ctx, &l.resp));
        }
    }
}

/// One topic's part of a fetch, for the metrics: partitions asked for, refused, bytes sent.
#[derive(Default)]
struct FetchStats {
    partitions: u64,
    failed: u64,
    bytes: u64,
}
