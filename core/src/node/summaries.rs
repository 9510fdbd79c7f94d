//! Segment summaries (`log::summary`): each segment's is written once the segment is sealed
//! and synced whole, and, when the node stops (a controlled shutdown), every segment's, the
//! active ones' included, once the logs are synced. The next start then reads summaries
//! instead of logs.

use bytes::Bytes;

use super::{Node, PartState, Purpose, Tp};
use crate::io::{DiskError, DiskOp, DiskReply};
use crate::log::summary;
use crate::types::Offset;

impl Node {
    /// Writes the summaries `tp`'s log has due (with `active`, the active segment's too).
    pub(super) fn write_summaries(&mut self, tp: Tp, active: bool) {
        let Some(p) = self.partition_mut(tp).filter(|p| p.state == PartState::Online) else { return };
        let due = p.log.summaries_due(active);
        let dir = p.log.dir.clone();
        for (base, bytes) in due {
            let file = self.alloc_file();
            let path = format!("{dir}/{}", summary::file_name(base));
            let purpose = |write| Purpose::Summary { tp, base, write };
            // Not synced: a summary a crash tore fails its checksum and the segment is read.
            self.issue(DiskOp::Open { file, path, create: true }, purpose(false));
            self.issue(DiskOp::Truncate { file, len: 0 }, purpose(false));
            self.issue(DiskOp::Write { file, position: 0, data: vec![Bytes::from(bytes)] }, purpose(true));
            self.issue(DiskOp::Close { file }, purpose(false));
        }
    }

    /// A step of a summary's write done: the data write's outcome is the summary's.
    pub(super) fn on_summary_step(&mut self, tp: Tp, base: Offset, write: bool, result: Result<DiskReply, DiskError>) {
        let Some(p) = self.partition_mut(tp) else { return };
        match result {
            Err(e) => {
                tracing::warn!(dir = %p.log.dir, base, error = %e, "could not write a segment's summary; the segment is read whole at the next start");
                p.log.summary_written(base, false);
            }
            Ok(_) if write => p.log.summary_written(base, true),
            Ok(_) => {}
        }
        if self.cluster.closing {
            self.close_logs();
        }
    }

    /// A stopping node whose leadership is handed over serves no more clients and, as each log
    /// is synced, writes the summaries of all its segments.
    pub(super) fn close_logs(&mut self) {
        if !self.cluster.stopping || self.phase != super::Phase::Serving || !self.handed_over() {
            return;
        }
        if !self.cluster.closing {
            // As Kafka stops its socket server: clients go elsewhere or wait for the restart,
            // and the logs stop growing so that their summaries can be written.
            tracing::info!("controlled shutdown: closing client connections and the logs (writing segment summaries)");
            self.cluster.closing = true;
            let conns: Vec<_> = self.conns.keys().copied().filter(|c| !super::forwarding::is_forwarded(*c)).collect();
            for conn in conns {
                self.close(conn, "the broker is stopping");
            }
            // A controller hands the metadata quorum over too, so that the next one is elected
            // at once rather than after a fetch timeout.
            if self.config.is_cluster() {
                if let Some(q) = self.meta.quorum.as_mut() {
                    q.resign(self.now.mono);
                    self.drain_quorum();
                }
            }
        }
        let settled: Vec<Tp> = self.online_tps().into_iter().filter(|tp| self.log_settled(*tp)).collect();
        for tp in settled {
            self.write_summaries(tp, true);
        }
    }

    /// Whether every online log is synced and has its summaries written (or given up on).
    pub(super) fn logs_closed(&self) -> bool {
        self.cluster.closing
            && self
                .online_tps()
                .into_iter()
                .all(|tp| self.log_settled(tp) && self.partition(tp).is_some_and(|p| !p.log.summaries_pending(true)))
    }

    fn log_settled(&self, tp: Tp) -> bool {
        self.partition(tp)
            .is_some_and(|p| p.sync.is_none() && p.log.dirty.is_empty() && p.log.durable_end >= p.log.log_end_offset)
    }

    fn online_tps(&self) -> Vec<Tp> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter().enumerate().map(move |(i, p)| ((t.id, i as i32), p)))
            .filter(|(_, p)| p.state == PartState::Online)
            .map(|(tp, _)| tp)
            .collect()
    }
}
