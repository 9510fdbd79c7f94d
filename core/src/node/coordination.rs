//! Which coordinators run here. A group's coordinator is the broker leading its partition of
//! `__consumer_offsets`, a transactional id's the one leading its partition of
//! `__transaction_state`. When this node comes to lead such a partition it reads the
//! partition back (committed offsets, group records, transaction states) and serves its keys;
//! when it stops leading one it forgets that partition's keys at once, and their requests get
//! NOT_COORDINATOR, so clients find the new coordinator.
//!
//! A partition is read back only once its high watermark covers the log end it had when the
//! leadership came: everything read is then committed, and no reader is ever told state a
//! failover could take back. Until then its keys get COORDINATOR_LOAD_IN_PROGRESS.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::groups::{offsets_partition, Committed, StoredKey, OFFSETS_TOPIC};
use super::transactions::{txn_partition, TxnEntry, TXN_TOPIC};
use super::{Node, Purpose, Tp};
use crate::group::GroupRecord;
use crate::io::DiskOp;
use crate::log::batch;
use crate::types::{FileId, Offset};

/// The coordinators' partitions this node leads, by the leader epoch it leads them in.
#[derive(Default)]
pub(super) struct Coordination {
    /// Read back and served.
    loaded: BTreeMap<Tp, i32>,
    /// Led, waiting for the high watermark to reach the log end they had when leadership
    /// came: (leader epoch, that log end).
    waiting: BTreeMap<Tp, (i32, Offset)>,
    /// Being read back now.
    load: Option<Load>,
    next_load: u64,
    /// Some partition's role (or state) changed: look at every coordinators' partition again.
    /// Otherwise only the waiting ones are looked at, so that the inputs that move a high
    /// watermark (every produce) do not pay for a scan.
    pub(super) rescan: bool,
}

impl Coordination {
    pub(super) fn is_loaded(&self, tp: Tp) -> bool {
        self.loaded.contains_key(&tp)
    }

    /// The partition's segments are being read back: the cleaner leaves them alone.
    pub(super) fn reading(&self, tp: Tp) -> bool {
        self.load.as_ref().is_some_and(|l| l.parts.contains_key(&tp))
    }

    /// Some partition led here is not served yet.
    pub(super) fn loading(&self) -> bool {
        !self.waiting.is_empty() || self.load.is_some()
    }

    fn known(&self, tp: Tp) -> Option<i32> {
        self.loaded
            .get(&tp)
            .or_else(|| self.waiting.get(&tp).map(|(e, _)| e))
            .or_else(|| self.load.as_ref().and_then(|l| l.parts.get(&tp)))
            .copied()
    }
}

/// Partitions being read back: one slot per segment, in log order.
pub(super) struct Load {
    id: u64,
    parts: BTreeMap<Tp, i32>,
    slots: Vec<LoadSlot>,
    missing: usize,
}

struct LoadSlot {
    tp: Tp,
    /// A segment of `__transaction_state` (else of `__consumer_offsets`).
    txn: bool,
    file: FileId,
    len: usize,
    /// Its batches' base offsets as the index has them (the cleaner leaves gaps between
    /// batches, and the base offset is outside the CRC), and its partition's high watermark.
    bases: Vec<Offset>,
    upper: Offset,
    /// Its batches below the high watermark, once read and checked.
    data: Option<Bytes>,
    reads: u32,
}

/// Reads of one segment that fail their CRC check before the load gives up on it. Recovery
/// has checked these bytes already, so a bad read is a transient corruption.
const OFFSETS_READ_ATTEMPTS: u32 = 100;

/// What a load read back, before it is handed to the coordinators.
#[derive(Default)]
struct ReadBack {
    groups: BTreeMap<String, Option<GroupRecord>>,
    consumer_groups: BTreeMap<String, Option<crate::group::consumer::Group>>,
    txns: BTreeMap<String, Option<crate::txn::TxnMeta>>,
    /// Offsets committed in transactions, by producer id, until their marker says.
    pending: BTreeMap<i64, Vec<(String, String, i32, Committed)>>,
}

impl Node {
    /// Brings the coordinators in line with the leadership of their partitions: unloads
    /// what is no longer led here (or is led in a newer epoch), queues what newly is, and
    /// starts reading back what is ready. Runs after every input that moved a role or a
    /// high watermark.
    pub(super) fn reconcile_coordinators(&mut self) {
        if self.phase != super::Phase::Serving {
            return;
        }
        if std::mem::take(&mut self.coordination.rescan) {
            self.rescan_coordinators();
        }
        if self.coordination.load.is_some() || self.coordination.waiting.is_empty() {
            return;
        }
        let at_once = crate::mutants::active(crate::mutants::Mutant::CoordinatorLoadsAtOnce);
        let ready: BTreeMap<Tp, i32> = self
            .coordination
            .waiting
            .iter()
            .filter(|(tp, (_, end))| {
                // A failed write may have cut the log back below that end since (what it cut
                // was never durable here, so never committed while this node was in the ISR).
                self.partition(**tp)
                    .is_some_and(|p| p.log.high_watermark >= (*end).min(p.log.log_end_offset) || at_once)
            })
            .map(|(tp, (e, _))| (*tp, *e))
            .collect();
        if !ready.is_empty() {
            self.coordination.waiting.retain(|tp, _| !ready.contains_key(tp));
            self.load_coordinators(ready);
        }
    }

    /// A partition's role or log changed: if it is a coordinators' partition, every one is
    /// looked at again after this input (the rest never concern the coordinators, and the
    /// full look is not free: it walks every internal partition).
    pub(super) fn coordinators_touched(&mut self, tp: Tp) {
        if self.names.get(&tp.0).is_some_and(|n| n == OFFSETS_TOPIC || n == TXN_TOPIC) {
            self.coordination.rescan = true;
        }
    }

    /// Unloads what is no longer led here (or is led in a newer epoch) and queues what
    /// newly is, with the log end its high watermark must reach.
    fn rescan_coordinators(&mut self) {
        // Led partitions: (leader epoch, log end).
        let mut led: BTreeMap<Tp, (i32, Offset)> = BTreeMap::new();
        for name in [OFFSETS_TOPIC, TXN_TOPIC] {
            let Some(t) = self.topics.get(name) else { continue };
            for (i, p) in t.partitions.iter().enumerate().filter(|(_, p)| p.leads()) {
                let tp = (t.id, i32::try_from(i).unwrap_or(i32::MAX));
                led.insert(tp, (p.role.leader_epoch(), p.log.log_end_offset));
            }
        }
        let c = &self.coordination;
        let known: Vec<(Tp, i32)> = c
            .loaded
            .iter()
            .chain(c.load.iter().flat_map(|l| l.parts.iter()))
            .map(|(tp, e)| (*tp, *e))
            .chain(c.waiting.iter().map(|(tp, (e, _))| (*tp, *e)))
            .collect();
        for (tp, epoch) in known {
            if led.get(&tp).is_none_or(|l| l.0 != epoch) {
                self.unload_coordinator(tp);
            }
        }
        for (tp, (epoch, end)) in led {
            if self.coordination.known(tp).is_none() {
                self.coordination.waiting.insert(tp, (epoch, end));
            }
        }
    }

    /// Forgets a coordinators' partition this node no longer leads: its keys' state, their
    /// waiting answers (refused) and the writes they wait for.
    fn unload_coordinator(&mut self, tp: Tp) {
        let c = &mut self.coordination;
        let was_loaded = c.loaded.remove(&tp).is_some();
        c.waiting.remove(&tp);
        if let Some(l) = c.load.as_mut() {
            l.parts.remove(&tp);
        }
        let Some(name) = self.names.get(&tp.0).cloned() else { return };
        if was_loaded {
            tracing::info!(topic = %name, partition = tp.1, "no longer leading a coordinators' partition; unloading it");
        }
        self.fail_commits_on(tp);
        if name == OFFSETS_TOPIC {
            let mine = |g: &str| offsets_partition(g) == tp.1;
            self.offsets.retain(|g, _| !mine(g));
            self.empty_since.retain(|g, _| !mine(g));
            self.coordinator.unload(mine);
            self.consumer.unload(mine);
            for offs in self.txn_offsets.values_mut() {
                offs.retain(|(g, ..)| !mine(g));
            }
            self.txn_offsets.retain(|_, o| !o.is_empty());
            self.settle_groups();
        } else {
            let mine = |id: &str| txn_partition(id) == tp.1;
            self.txns.retain(|id, _| !mine(id));
            self.drop_markers_of(mine);
        }
    }

    /// Starts reading back the given partitions (with the epochs they are led in).
    fn load_coordinators(&mut self, parts: BTreeMap<Tp, i32>) {
        let c = &mut self.coordination;
        c.next_load += 1;
        let mut load = Load { id: c.next_load, parts, slots: Vec::new(), missing: 0 };
        for tp in load.parts.keys() {
            let (Some(name), Some(p)) = (self.names.get(&tp.0), self.partition(*tp)) else { continue };
            for s in p.log.segments.iter().filter(|s| s.size > 0) {
                load.slots.push(LoadSlot {
                    tp: *tp,
                    txn: name == TXN_TOPIC,
                    file: s.log_file,
                    len: usize::try_from(s.size).unwrap_or(usize::MAX),
                    bases: s.entries.iter().map(|e| s.base_offset + i64::from(e.base_delta)).collect(),
                    upper: p.log.high_watermark,
                    data: None,
                    reads: 0,
                });
            }
        }
        load.missing = load.slots.len();
        let reads: Vec<(usize, FileId, usize)> =
            load.slots.iter().enumerate().map(|(i, s)| (i, s.file, s.len)).collect();
        let id = load.id;
        self.coordination.load = Some(load);
        for (slot, file, len) in reads {
            self.issue(DiskOp::Read { file, position: 0, len }, Purpose::OffsetsLoad { load: id, slot });
        }
        self.finish_offsets_load();
    }

    /// One segment of a coordinators' partition read back. Its batches below the high
    /// watermark must pass their CRC check and follow each other's offsets (the base offset
    /// is outside the CRC); a read that does not is read again.
    pub(super) fn on_offsets_read(&mut self, load: u64, slot: usize, data: Result<Bytes, String>) {
        let Some(l) = self.coordination.load.as_mut().filter(|l| l.id == load) else { return };
        let Some(s) = l.slots.get_mut(slot) else { return };
        s.reads += 1;
        let upper = s.upper;
        let unchecked = crate::mutants::active(crate::mutants::Mutant::OffsetsLoadUnchecked);
        let checked = data.and_then(|d| if unchecked { Ok(d) } else { checked_below(d, &s.bases, upper) });
        match checked {
            Ok(d) => {
                s.data = Some(d);
                l.missing -= 1;
            }
            Err(e) if s.reads < OFFSETS_READ_ATTEMPTS => {
                tracing::warn!(error = %e, attempt = s.reads, "a segment of a coordinators' partition read badly; reading it again");
                let (file, len) = (s.file, s.len);
                self.issue(DiskOp::Read { file, position: 0, len }, Purpose::OffsetsLoad { load, slot });
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "a segment of a coordinators' partition cannot be read; its state is lost");
                s.data = Some(Bytes::new());
                l.missing -= 1;
            }
        }
        self.finish_offsets_load();
    }

    /// Once every segment is in: apply their records in log order, hand the groups' and
    /// transactional ids' last records to the coordinators, and serve the partitions.
    fn finish_offsets_load(&mut self) {
        if self.coordination.load.as_ref().is_none_or(|l| l.missing > 0) {
            return;
        }
        let load = self.coordination.load.take().expect("checked");
        let mut back = ReadBack::default();
        for slot in load.slots.into_iter().filter(|s| load.parts.contains_key(&s.tp)) {
            self.read_back_slot(&slot, &mut back);
        }
        // Offsets of topics deleted while their tombstones were not yet durable.
        let topics = &self.topics;
        for offs in self.offsets.values_mut() {
            offs.retain(|(t, _), _| topics.contains_key(t));
        }
        self.offsets.retain(|_, o| !o.is_empty());
        let n = back.groups.values().filter(|g| g.is_some()).count();
        for (name, rec) in back.groups {
            let Some(rec) = rec else { continue };
            if rec.members.is_empty() {
                self.empty_since.insert(name.clone(), rec.state_since_ms);
            }
            self.coordinator.restore(self.now.mono, &name, rec);
        }
        for (name, g) in back.consumer_groups {
            if let Some(g) = g {
                self.restore_consumer_group(&name, g);
            }
        }
        for (producer_id, offs) in back.pending {
            self.txn_offsets.entry(producer_id).or_default().extend(offs);
        }
        let ids: Vec<String> = back.txns.iter().filter(|(_, m)| m.is_some()).map(|(id, _)| id.clone()).collect();
        for (id, meta) in back.txns {
            if let Some(meta) = meta {
                self.txns.insert(id, TxnEntry { meta: Some(meta), busy: false });
            }
        }
        tracing::info!(
            partitions = load.parts.len(),
            groups = n,
            transactional_ids = ids.len(),
            "coordinators' partitions loaded: committed offsets, groups and transactions"
        );
        self.coordination.loaded.extend(load.parts);
        self.resume_txns(&ids);
        // Partitions that became ready meanwhile are read next.
        self.hw_moved = true;
    }

    /// Applies one segment's records to what the load has read so far.
    fn read_back_slot(&mut self, slot: &LoadSlot, back: &mut ReadBack) {
        let data = slot.data.clone().unwrap_or_default();
        let mut at = 0;
        while at < data.len() {
            let Ok(h) = batch::parse_header(&data[at..]) else { break };
            let whole = &data[at..at + h.size.min(data.len() - at)];
            at += h.size;
            if slot.txn {
                for (_, k, v) in batch::uncompressed_records(whole).unwrap_or_default() {
                    if let Some(id) = k.and_then(super::transactions::txn_id_of_key) {
                        back.txns.insert(id, v.and_then(crate::txn::TxnMeta::decode));
                    }
                }
                continue;
            }
            if h.is_control() {
                let offs = back.pending.remove(&h.producer_id).unwrap_or_default();
                if batch::control_type(whole) == Some(true) {
                    for (g, t, p, c) in offs {
                        self.offsets.entry(g).or_default().insert((t, p), c);
                    }
                }
                continue;
            }
            for (_, k, v) in batch::uncompressed_records(whole).unwrap_or_default() {
                match k.and_then(StoredKey::decode) {
                    Some(StoredKey::Offset(key)) if h.is_transactional() => {
                        if let Some(c) = v.and_then(|v| postcard::from_bytes::<Committed>(v).ok()) {
                            let entry = back.pending.entry(h.producer_id).or_default();
                            entry.push((key.group, key.topic, key.partition, c));
                        }
                    }
                    Some(StoredKey::Offset(key)) => match v.and_then(|v| postcard::from_bytes::<Committed>(v).ok()) {
                        Some(c) => {
                            self.offsets.entry(key.group).or_default().insert((key.topic, key.partition), c);
                        }
                        None => self.drop_offset(&key.group, &key.topic, key.partition),
                    },
                    Some(StoredKey::Group(g)) => {
                        back.groups.insert(g, v.and_then(|v| postcard::from_bytes::<GroupRecord>(v).ok()));
                    }
                    Some(StoredKey::ConsumerGroup(g)) => {
                        back.consumer_groups.insert(g, v.and_then(|v| postcard::from_bytes(v).ok()));
                    }
                    None => {}
                }
            }
        }
    }
}

/// The batches of a segment read from `base` that lie below `upper`, each checked (CRC, and
/// base offsets that follow on); an error when a batch fails.
fn checked_below(d: Bytes, bases: &[Offset], upper: Offset) -> Result<Bytes, String> {
    let mut at = 0;
    for (i, &expected) in bases.iter().enumerate() {
        if at >= d.len() {
            break;
        }
        let h = batch::check_batch(&d[at..]).map_err(|e| format!("{e:?}"))?;
        if h.base_offset != expected {
            return Err(format!("batch {i} at byte {at} says offset {}, expected {expected}", h.base_offset));
        }
        if h.base_offset >= upper {
            break;
        }
        at += h.size;
    }
    Ok(d.slice(..at))
}
