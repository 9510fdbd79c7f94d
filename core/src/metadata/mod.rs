//! The cluster metadata: brokers (their endpoints, epochs, fencing), topics (ids, configs,
//! each partition's replicas) and producer id blocks. Every change is a record in the metadata
//! quorum's log; every node applies the committed records in log order to its
//! [`MetadataImage`], so all nodes share one view.
//!
//! Records are postcard-encoded, so a variant is never changed or removed: a new shape is a
//! new variant at the end (`TopicCreated` became `TopicPlaced` when partitions got replicas).
//! Data directories made before the quorum keep their records in `metadata.log`, framed
//! `len u32 | crc32c u32 | postcard(MetaRecord)`, big-endian.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const META_DIR: &str = ".sluice-meta";
pub const META_LOG: &str = ".sluice-meta/metadata.log";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRecord {
    TopicCreated {
        name: String,
        id: [u8; 16],
        partitions: i32,
        configs: Vec<(String, String)>,
    },
    PartitionsCreated {
        name: String,
        id: [u8; 16],
        total: i32,
    },
    TopicDeleted {
        name: String,
        id: [u8; 16],
    },
    /// Producer ids below `end` may be handed out (a block was taken).
    ProducerIdsBlock {
        end: i64,
    },
    /// A topic and where each partition's replicas are (the first is its preferred leader).
    TopicPlaced {
        name: String,
        id: [u8; 16],
        configs: Vec<(String, String)>,
        replicas: Vec<Vec<i32>>,
    },
    /// Partitions added to a topic that had `from`, with their replicas.
    PartitionsPlaced {
        name: String,
        id: [u8; 16],
        from: i32,
        replicas: Vec<Vec<i32>>,
    },
    /// A broker (re)registered: its epoch is this record's offset. It starts fenced.
    BrokerRegistered {
        id: i32,
        incarnation: u64,
        host: String,
        port: i32,
        rack: Option<String>,
    },
    /// The controller stopped hearing from the broker (or it is shutting down).
    BrokerFenced {
        id: i32,
        epoch: i64,
    },
    /// The broker heartbeats and has caught up the metadata log: it may lead partitions.
    BrokerUnfenced {
        id: i32,
        epoch: i64,
    },
    /// A partition's leader or ISR changed (DESIGN.md §7): its whole new state. Applied only
    /// on top of `partition_epoch - 1`, so a change computed from a stale view is a no-op.
    PartitionChanged {
        id: [u8; 16],
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// A topic's config overrides changed (AlterConfigs, IncrementalAlterConfigs): with
    /// `replace` every override not in `set` goes; else `deleted` go and `set` are set.
    TopicConfigsAltered {
        id: [u8; 16],
        replace: bool,
        set: Vec<(String, String)>,
        deleted: Vec<String>,
    },
    /// A partition's replicas changed (AlterPartitionReassignments, KIP-455): its whole new
    /// registration, the replicas being added and removed while a reassignment runs
    /// included. Applied only on top of `partition_epoch - 1`, like `PartitionChanged`.
    PartitionReassigned {
        id: [u8; 16],
        partition: i32,
        replicas: Vec<i32>,
        adding: Vec<i32>,
        removing: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// DeleteRecords: records of a partition below `offset` are deleted on every replica (its
    /// log start moves there once its high watermark has).
    RecordsDeleted {
        id: [u8; 16],
        partition: i32,
        offset: i64,
    },
    /// A broker's dynamic configs changed (AlterConfigs, IncrementalAlterConfigs on a broker
    /// resource); `broker` [`ALL_BROKERS`] is the cluster-wide default every broker takes
    /// unless its own says otherwise. With `replace` every config not in `set` goes; else
    /// `deleted` go and `set` are set.
    BrokerConfigsAltered {
        broker: i32,
        replace: bool,
        set: Vec<(String, String)>,
        deleted: Vec<String>,
    },
}

/// `MetaRecord::BrokerConfigsAltered`'s broker for the cluster-wide default (Kafka's empty
/// resource name, `kafka-configs --entity-default`).
pub const ALL_BROKERS: i32 = -1;

/// A set of configs after a change: with `replace` every config not in `set` goes; else
/// `deleted` go and `set` are set.
fn alter(configs: &mut BTreeMap<String, String>, replace: bool, set: &[(String, String)], deleted: &[String]) {
    if replace {
        configs.clear();
    }
    for d in deleted {
        configs.remove(d);
    }
    configs.extend(set.iter().cloned());
}

/// The registration a partition record carries: topic id, partition, the registration, and
/// whether it sets the replicas too (`PartitionReassigned`) or keeps them (`PartitionChanged`).
fn registration_in(rec: &MetaRecord) -> Option<([u8; 16], i32, PartitionImage, bool)> {
    match rec {
        MetaRecord::PartitionChanged { id, partition, leader, leader_epoch, partition_epoch, isr } => {
            let next = PartitionImage {
                leader: *leader,
                leader_epoch: *leader_epoch,
                partition_epoch: *partition_epoch,
                isr: isr.clone(),
                ..PartitionImage::new(Vec::new())
            };
            Some((*id, *partition, next, false))
        }
        MetaRecord::PartitionReassigned {
            id,
            partition,
            replicas,
            adding,
            removing,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        } => {
            let next = PartitionImage {
                replicas: replicas.clone(),
                leader: *leader,
                leader_epoch: *leader_epoch,
                partition_epoch: *partition_epoch,
                isr: isr.clone(),
                adding: adding.clone(),
                removing: removing.clone(),
            };
            Some((*id, *partition, next, true))
        }
        _ => None,
    }
}

/// Leader id of a partition that has none (every ISR member fenced).
pub const NO_LEADER: i32 = -1;

/// One partition's registration: where its replicas are, who leads, in which epochs, and
/// which replicas are in sync (KIP-631's PartitionRecord).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    /// The brokers holding its replicas, the preferred leader first. Empty for a partition
    /// created before placement existed (a cluster of one): its replica is that node.
    pub replicas: Vec<i32>,
    /// The leader, or [`NO_LEADER`].
    pub leader: i32,
    /// Bumped at every leader change: batches are stamped with it and replication requests
    /// carry it, so a deposed leader is fenced.
    pub leader_epoch: i32,
    /// Bumped at every change of the registration (leader or ISR).
    pub partition_epoch: i32,
    /// The in-sync replicas: they hold everything below the high watermark.
    pub isr: Vec<i32>,
    /// While a reassignment runs: replicas joining (in `replicas`, not yet in sync)...
    pub adding: Vec<i32>,
    /// ...and replicas leaving once every target replica is in sync. `replicas` is the
    /// target replicas followed by these.
    pub removing: Vec<i32>,
}

/// Why a reassignment cannot be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A cancel, and no reassignment runs (NO_REASSIGNMENT_IN_PROGRESS).
    NoReassignment,
}

/// Why a preferred leader election changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoElection {
    /// The preferred replica leads already.
    NotNeeded,
    /// The preferred replica is fenced or out of the ISR.
    NotAvailable,
}

impl PartitionImage {
    /// The registration with its preferred replica (the first) as leader, in a new leader
    /// epoch, if that replica is unfenced and in sync and does not lead already.
    pub fn prefer(&self, fenced: impl Fn(i32) -> bool) -> Result<PartitionImage, NoElection> {
        let Some(&preferred) = self.replicas.first() else {
            return Err(NoElection::NotNeeded);
        };
        if self.leader == preferred {
            return Err(NoElection::NotNeeded);
        }
        if fenced(preferred) || !self.isr.contains(&preferred) {
            return Err(NoElection::NotAvailable);
        }
        Ok(PartitionImage {
            leader: preferred,
            leader_epoch: self.leader_epoch + 1,
            partition_epoch: self.partition_epoch + 1,
            ..self.clone()
        })
    }

    /// The record that makes this the partition's registration.
    pub fn change_record(&self, id: [u8; 16], partition: i32) -> MetaRecord {
        MetaRecord::PartitionChanged {
            id,
            partition,
            leader: self.leader,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            isr: self.isr.clone(),
        }
    }

    /// A new partition: its first replica leads, every replica is in sync (they are all empty).
    pub fn new(replicas: Vec<i32>) -> PartitionImage {
        let leader = replicas.first().copied().unwrap_or(NO_LEADER);
        PartitionImage {
            isr: replicas.clone(),
            replicas,
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            adding: Vec::new(),
            removing: Vec::new(),
        }
    }

    /// Whether a reassignment is running.
    pub fn reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replicas before the running reassignment (the current ones when none runs).
    pub fn original_replicas(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.adding.contains(r)).collect()
    }

    /// The replicas the running reassignment moves to (the current ones when none runs).
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.removing.contains(r)).collect()
    }

    /// The registration that starts a reassignment to `target` (KIP-455), or, with `None`,
    /// cancels the running one (back to the original replicas). The replicas become the
    /// target followed by the replicas holding data that it leaves out (the original ones,
    /// and added ones already in sync): those are removed only when the reassignment
    /// finishes, with every target replica in sync, so a reassignment never shrinks the ISR
    /// (cancelling one whose added replicas have joined the ISR while the original ones lag
    /// would otherwise leave acknowledged records on fewer than `min.insync.replicas`; the
    /// cluster scenario found it, seed 553). Added replicas not in sync go at once, but only
    /// while the ISR has `min_isr` members (which hold every acknowledged record): one that
    /// helped acknowledge records and has since dropped out of the ISR may be their only copy
    /// but the leader's (seed 712), so with fewer it stays until the reassignment finishes.
    /// A leader no longer a replica gives way to the first in-sync, unfenced one.
    pub fn reassign(
        &self,
        target: Option<&[i32]>,
        fenced: impl Fn(i32) -> bool,
        min_isr: usize,
    ) -> Result<PartitionImage, Refusal> {
        let original = self.original_replicas();
        let target = match target {
            Some(t) => t.to_vec(),
            None if self.reassigning() => original.clone(),
            None => return Err(Refusal::NoReassignment),
        };
        let mut holding = original;
        let keep_all = self.isr.len() < min_isr;
        holding.extend(self.adding.iter().copied().filter(|r| keep_all || self.isr.contains(r)));
        let mut replicas = target.clone();
        replicas.extend(holding.iter().copied().filter(|r| !target.contains(r)));
        let adding: Vec<i32> = target.iter().copied().filter(|r| !holding.contains(r)).collect();
        let removing: Vec<i32> = holding.iter().copied().filter(|r| !target.contains(r)).collect();
        let isr: Vec<i32> = self.isr.iter().copied().filter(|r| replicas.contains(r)).collect();
        let next = PartitionImage { replicas: replicas.clone(), isr, adding, removing, ..self.clone() };
        Ok(next.with_leader_from(self, &replicas, fenced))
    }

    /// The registration that finishes the running reassignment, once every target replica
    /// is in sync and one of them can lead: the target replicas alone, the ISR without the
    /// replicas leaving, the leader moved to the first in-sync unfenced target replica if it
    /// is leaving. `None` while that is not so (or none runs).
    pub fn reassignment_done(&self, fenced: impl Fn(i32) -> bool) -> Option<PartitionImage> {
        if !self.reassigning() {
            return None;
        }
        let target = self.target_replicas();
        let mutant = crate::mutants::active(crate::mutants::Mutant::ReassignBeforeInSync);
        if !target.iter().all(|r| self.isr.contains(r)) && !mutant {
            return None;
        }
        let next = PartitionImage {
            isr: if mutant {
                target.clone()
            } else {
                self.isr.iter().copied().filter(|r| target.contains(r)).collect()
            },
            replicas: target.clone(),
            adding: Vec::new(),
            removing: Vec::new(),
            ..self.clone()
        };
        let next = next.with_leader_from(self, &target, fenced);
        (next.leader != NO_LEADER).then_some(next)
    }

    /// The next registration after `before` (partition epoch + 1). Its leader stays if it is
    /// in `allowed`, in sync and unfenced; otherwise the first of `allowed` that is takes over
    /// in a new leader epoch (or none). When a replica leaves, the leader epoch moves even if
    /// the leader does not: a fetch the removed replica sent in the old epoch must be fenced,
    /// or, reaching the leader after the replica was added back (empty), it would vouch for
    /// records that copy no longer has (the cluster scenario found this: seed 107).
    fn with_leader_from(
        mut self,
        before: &PartitionImage,
        allowed: &[i32],
        fenced: impl Fn(i32) -> bool,
    ) -> PartitionImage {
        self.partition_epoch += 1;
        if before.replicas.iter().any(|r| !self.replicas.contains(r)) {
            self.leader_epoch += 1;
        }
        let fit = |r: i32| allowed.contains(&r) && self.isr.contains(&r) && !fenced(r);
        if self.leader == NO_LEADER || !fit(self.leader) {
            let leader = allowed.iter().copied().find(|r| fit(*r)).unwrap_or(NO_LEADER);
            if leader != self.leader {
                self.leader = leader;
                self.leader_epoch = before.leader_epoch + 1;
            }
        }
        self
    }

    /// The record that makes this the partition's registration, replicas included.
    pub fn reassign_record(&self, id: [u8; 16], partition: i32) -> MetaRecord {
        MetaRecord::PartitionReassigned {
            id,
            partition,
            replicas: self.replicas.clone(),
            adding: self.adding.clone(),
            removing: self.removing.clone(),
            leader: self.leader,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            isr: self.isr.clone(),
        }
    }

    /// The registration a controller wants given which brokers are fenced (clean election,
    /// DESIGN.md §7): fenced members leave the ISR unless it would be empty (the last one
    /// stays, so it is the one elected when it comes back); a leader that is fenced or missing
    /// is replaced by the first replica, in assignment order, that is in the ISR and unfenced,
    /// or by none. `None` when nothing needs to change.
    pub fn wanted(&self, fenced: impl Fn(i32) -> bool) -> Option<PartitionImage> {
        if self.replicas.is_empty() {
            return None; // a cluster of one's partition: led by that node, always
        }
        let mut isr: Vec<i32> = self.isr.iter().copied().filter(|r| !fenced(*r)).collect();
        if isr.is_empty() {
            isr = self.isr.iter().copied().filter(|r| *r == self.leader).collect();
            if isr.is_empty() {
                isr.extend(self.isr.last().copied());
            }
        }
        let leader_ok = self.leader != NO_LEADER && !fenced(self.leader) && isr.contains(&self.leader);
        let unclean = crate::mutants::active(crate::mutants::Mutant::ElectOutsideIsr);
        let leader = if leader_ok {
            self.leader
        } else {
            self.replicas.iter().copied().find(|r| (unclean || isr.contains(r)) && !fenced(*r)).unwrap_or(NO_LEADER)
        };
        if unclean && leader != NO_LEADER && !isr.contains(&leader) {
            isr = vec![leader];
        }
        if leader == self.leader && isr == self.isr {
            return None;
        }
        let leader_epoch = self.leader_epoch + i32::from(leader != self.leader);
        Some(PartitionImage { leader, leader_epoch, partition_epoch: self.partition_epoch + 1, isr, ..self.clone() })
    }
}

/// One topic as the metadata log says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub id: [u8; 16],
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
    /// Each partition's registration.
    pub parts: Vec<PartitionImage>,
    /// Partitions whose records below an offset were deleted (DeleteRecords): that offset.
    pub log_starts: BTreeMap<i32, i64>,
}

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerImage {
    /// The offset of its registration record: heartbeats carry it, so a stale one is known.
    pub epoch: i64,
    pub incarnation: u64,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    pub fenced: bool,
}

/// The state the metadata log builds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub topics: BTreeMap<String, TopicImage>,
    pub brokers: BTreeMap<i32, BrokerImage>,
    /// End of the last block of producer ids taken: new ids start here.
    pub producer_ids_end: i64,
    /// Dynamic broker configs, by broker ([`ALL_BROKERS`]: the cluster-wide default).
    pub broker_configs: BTreeMap<i32, BTreeMap<String, String>>,
}

impl MetadataImage {
    /// Applies the record at `offset` of the metadata log. Returns false when it changes
    /// nothing (a topic that exists already, partitions added to an older count, a broker
    /// epoch that is not current): every node ignores such a record alike.
    pub fn apply(&mut self, offset: i64, rec: &MetaRecord) -> bool {
        match rec {
            MetaRecord::TopicCreated { name, id, partitions, configs } => {
                self.place_topic(name, *id, configs, vec![Vec::new(); usize::try_from(*partitions).unwrap_or(0)])
            }
            MetaRecord::TopicPlaced { name, id, configs, replicas } => {
                self.place_topic(name, *id, configs, replicas.clone())
            }
            MetaRecord::PartitionsCreated { name, id, total } => {
                let Some(t) = self.topics.get_mut(name).filter(|t| t.id == *id && t.partitions < *total) else {
                    return false;
                };
                t.parts.resize(usize::try_from(*total).unwrap_or(0), PartitionImage::new(Vec::new()));
                t.partitions = *total;
                true
            }
            MetaRecord::PartitionsPlaced { name, id, from, replicas } => {
                let Some(t) = self.topics.get_mut(name).filter(|t| t.id == *id && t.partitions == *from) else {
                    return false;
                };
                t.parts.extend(replicas.iter().cloned().map(PartitionImage::new));
                t.partitions += i32::try_from(replicas.len()).unwrap_or(0);
                true
            }
            MetaRecord::TopicDeleted { name, id } => {
                self.topics.get(name).is_some_and(|t| t.id == *id) && self.topics.remove(name).is_some()
            }
            MetaRecord::ProducerIdsBlock { end } => {
                self.producer_ids_end = self.producer_ids_end.max(*end);
                true
            }
            MetaRecord::BrokerRegistered { id, incarnation, host, port, rack } => {
                if self.brokers.get(id).is_some_and(|b| b.incarnation != *incarnation) {
                    self.leaderships_lost(*id);
                }
                let b = BrokerImage {
                    epoch: offset,
                    incarnation: *incarnation,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    fenced: true,
                };
                self.brokers.insert(*id, b);
                true
            }
            MetaRecord::BrokerFenced { id, epoch } | MetaRecord::BrokerUnfenced { id, epoch } => {
                let fence = matches!(rec, MetaRecord::BrokerFenced { .. });
                match self.brokers.get_mut(id).filter(|b| b.epoch == *epoch && b.fenced != fence) {
                    Some(b) => {
                        b.fenced = fence;
                        true
                    }
                    None => false,
                }
            }
            MetaRecord::PartitionChanged { .. } | MetaRecord::PartitionReassigned { .. } => {
                let (id, partition, next, replicas) = registration_in(rec).expect("a partition record");
                self.change_partition(&id, partition, next, replicas)
            }
            MetaRecord::TopicConfigsAltered { id, replace, set, deleted } => {
                let Some(t) = self.topics.values_mut().find(|t| t.id == *id) else { return false };
                alter(&mut t.configs, *replace, set, deleted);
                true
            }
            MetaRecord::BrokerConfigsAltered { broker, replace, set, deleted } => {
                let configs = self.broker_configs.entry(*broker).or_default();
                alter(configs, *replace, set, deleted);
                if configs.is_empty() {
                    self.broker_configs.remove(broker);
                }
                true
            }
            MetaRecord::RecordsDeleted { id, partition, offset } => self.records_deleted(id, *partition, *offset),
        }
    }

    /// A broker restarted (a new process registered): every partition it led loses its leader
    /// in a new leader epoch. The new process may have lost writes the old one served to its
    /// followers in that epoch; leading on in it would write other records at those offsets
    /// in the same epoch, which no follower can tell apart (the cluster scenario found this
    /// with disk faults: a leader whose write failed resigned, crashed before the resignation
    /// was committed, and, unfenced again before the controller moved its partitions, led on).
    /// The controller elects a leader in a newer epoch still, the broker itself included once
    /// unfenced.
    fn leaderships_lost(&mut self, broker: i32) {
        for p in self.topics.values_mut().flat_map(|t| t.parts.iter_mut()).filter(|p| p.leader == broker) {
            p.leader = NO_LEADER;
            p.leader_epoch += 1;
            p.partition_epoch += 1;
        }
    }

    /// Records below `offset` of a partition are deleted (false: no such partition, or an
    /// offset not past the one recorded).
    fn records_deleted(&mut self, id: &[u8; 16], partition: i32, offset: i64) -> bool {
        let Some(t) = self.topics.values_mut().find(|t| t.id == *id && partition < t.partitions) else {
            return false;
        };
        let start = t.log_starts.entry(partition).or_insert(0);
        let moved = offset > *start;
        *start = (*start).max(offset);
        moved
    }

    /// Makes `next` a partition's registration (its replicas too only when `replicas`), if
    /// it builds on the current one: the next partition epoch, a leader epoch not lower.
    fn change_partition(&mut self, id: &[u8; 16], partition: i32, next: PartitionImage, replicas: bool) -> bool {
        let Some(p) = self
            .topics
            .values_mut()
            .find(|t| t.id == *id)
            .and_then(|t| t.parts.get_mut(usize::try_from(partition).ok()?))
            .filter(|p| p.partition_epoch + 1 == next.partition_epoch && next.leader_epoch >= p.leader_epoch)
        else {
            return false;
        };
        *p = if replicas {
            next
        } else {
            PartitionImage {
                replicas: std::mem::take(&mut p.replicas),
                adding: std::mem::take(&mut p.adding),
                removing: std::mem::take(&mut p.removing),
                ..next
            }
        };
        true
    }

    /// A partition's registration, by topic id.
    pub fn partition(&self, id: &[u8; 16], partition: i32) -> Option<(&str, &PartitionImage)> {
        let (name, t) = self.topics.iter().find(|(_, t)| t.id == *id)?;
        Some((name.as_str(), t.parts.get(usize::try_from(partition).ok()?)?))
    }

    fn place_topic(&mut self, name: &str, id: [u8; 16], configs: &[(String, String)], replicas: Vec<Vec<i32>>) -> bool {
        if self.topics.contains_key(name) {
            return false;
        }
        let partitions = i32::try_from(replicas.len()).unwrap_or(0);
        let parts = replicas.into_iter().map(PartitionImage::new).collect();
        let t = TopicImage {
            id,
            partitions,
            configs: configs.iter().cloned().collect(),
            parts,
            log_starts: BTreeMap::new(),
        };
        self.topics.insert(name.to_string(), t);
        true
    }

    /// Brokers that may lead partitions (registered and unfenced), by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = (i32, &BrokerImage)> {
        self.brokers.iter().filter(|(_, b)| !b.fenced).map(|(id, b)| (*id, b))
    }
}

/// Places `count` new partitions of `rf` replicas each on `brokers` (id and rack): round
/// robin from `start`, each partition's replicas on consecutive brokers; when brokers have
/// racks, the list is first interleaved across racks so consecutive brokers are in different
/// racks (as Kafka's rack-aware assignment does). `first` is the first new partition's index.
pub fn place(brokers: &[(i32, Option<String>)], count: usize, rf: usize, start: usize, first: usize) -> Vec<Vec<i32>> {
    let mut order: Vec<(i32, Option<String>)> = brokers.to_vec();
    order.sort();
    if order.iter().any(|(_, r)| r.is_some()) {
        let mut racks: BTreeMap<Option<String>, std::collections::VecDeque<i32>> = BTreeMap::new();
        for (id, rack) in &order {
            racks.entry(rack.clone()).or_default().push_back(*id);
        }
        let mut interleaved = Vec::with_capacity(order.len());
        while interleaved.len() < order.len() {
            for (rack, ids) in racks.iter_mut() {
                if let Some(id) = ids.pop_front() {
                    interleaved.push((id, rack.clone()));
                }
            }
        }
        order = interleaved;
    }
    let n = order.len();
    if n == 0 {
        return vec![Vec::new(); count];
    }
    (0..count).map(|p| (0..rf.min(n)).map(|r| order[(start + first + p + r) % n].0).collect()).collect()
}

/// A snapshot of the metadata log (KRaft's `.checkpoint`): the image after applying every
/// committed entry below `end`, whose last is of quorum epoch `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub end: i64,
    pub epoch: i32,
    pub image: MetadataImage,
}

/// A snapshot's file name in the metadata directory, as Kafka names them.
pub fn snapshot_file_name(end: i64, epoch: i32) -> String {
    format!("{end:020}-{epoch:010}.checkpoint")
}

/// The (end, epoch) a snapshot file name stands for, if it is one.
pub fn parse_snapshot_file_name(name: &str) -> Option<(i64, i32)> {
    let (end, epoch) = name.strip_suffix(".checkpoint")?.split_once('-')?;
    if end.len() != 20 || epoch.len() != 10 {
        return None;
    }
    Some((end.parse().ok()?, epoch.parse().ok()?))
}

/// A snapshot as stored: one checksummed frame.
pub fn encode_snapshot(snap: &Snapshot) -> Vec<u8> {
    encode_frame(&postcard::to_allocvec(snap).expect("images serialize"))
}

/// A snapshot of `image` as stored (the same bytes as [`encode_snapshot`] of the owned form).
pub fn encode_snapshot_of(end: i64, epoch: i32, image: &MetadataImage) -> Vec<u8> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        end: i64,
        epoch: i32,
        image: &'a MetadataImage,
    }
    encode_frame(&postcard::to_allocvec(&Borrowed { end, epoch, image }).expect("images serialize"))
}

/// The snapshot in `buf`, if the whole of it is one valid frame that decodes.
pub fn decode_snapshot(buf: &[u8]) -> Option<Snapshot> {
    let (frames, valid) = decode_frames(buf);
    match frames.as_slice() {
        [one] if valid == buf.len() => postcard::from_bytes(one).ok(),
        _ => None,
    }
}

pub fn encode_record(rec: &MetaRecord) -> Vec<u8> {
    encode_frame(&postcard::to_allocvec(rec).expect("metadata records serialize"))
}

/// Decodes records from the start of the log. Returns them and the length of the valid
/// prefix; anything after it is a torn or corrupt tail to cut off.
pub fn decode_log(buf: &[u8]) -> (Vec<MetaRecord>, usize) {
    let (frames, _) = decode_frames(buf);
    let mut at = 0;
    let mut out = Vec::new();
    for f in frames {
        match postcard::from_bytes::<MetaRecord>(f) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        at += 8 + f.len();
    }
    (out, at)
}

/// One frame of a metadata file: `len u32 | crc32c u32 | body`, big-endian.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The bodies of the whole frames at the start of `buf` whose checksums hold, and the
/// length they cover.
pub fn decode_frames(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut at = 0;
    let mut out = Vec::new();
    while buf.len() - at >= 8 {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let crc = u32::from_be_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        let Some(body) = buf.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        out.push(body);
        at += 8 + len;
    }
    (out, at)
}

/// Kafka's topic name rule: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::limits::TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Splits a partition directory name `<topic>-<n>`.
pub fn parse_partition_dir(name: &str) -> Option<(&str, i32)> {
    let (topic, n) = name.rsplit_once('-')?;
    let n: i32 = n.parse().ok()?;
    (valid_topic_name(topic) && n >= 0 && n.to_string() == name[topic.len() + 1..]).then_some((topic, n))
}

pub fn partition_dir(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_round_trip_and_torn_tail() {
        let recs = vec![
            MetaRecord::TopicCreated {
                name: "a".into(),
                id: [1; 16],
                partitions: 3,
                configs: vec![("retention.ms".into(), "5".into())],
            },
            MetaRecord::PartitionsCreated { name: "a".into(), id: [1; 16], total: 5 },
            MetaRecord::TopicDeleted { name: "a".into(), id: [1; 16] },
        ];
        let recs: Vec<MetaRecord> = std::iter::once(MetaRecord::ProducerIdsBlock { end: 2000 }).chain(recs).collect();
        let mut buf = Vec::new();
        for r in &recs {
            buf.extend_from_slice(&encode_record(r));
        }
        let full = buf.len();
        let (got, valid) = decode_log(&buf);
        assert_eq!(got, recs);
        assert_eq!(valid, full);
        buf.truncate(full - 3);
        let (got, valid) = decode_log(&buf);
        assert_eq!(got.len(), 3);
        assert!(valid < full);
        let mut img = MetadataImage::default();
        for r in &got {
            img.apply(-1, r);
        }
        assert_eq!(img.topics["a"].partitions, 5);
        assert_eq!(img.producer_ids_end, 2000);
    }

    #[test]
    fn topic_configs_altered_in_log_order() {
        let mut img = MetadataImage::default();
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let configs = vec![kv("retention.ms", "1"), kv("segment.ms", "2")];
        img.apply(1, &MetaRecord::TopicPlaced { name: "t".into(), id: [3; 16], configs, replicas: vec![vec![1]] });
        let alter = |replace, set: Vec<(String, String)>, deleted: Vec<&str>| MetaRecord::TopicConfigsAltered {
            id: [3; 16],
            replace,
            set,
            deleted: deleted.into_iter().map(String::from).collect(),
        };
        assert!(img.apply(2, &alter(false, vec![kv("max.message.bytes", "9")], vec!["segment.ms"])));
        let got: Vec<_> = img.topics["t"].configs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("max.message.bytes", "9"), ("retention.ms", "1")]);
        assert!(img.apply(3, &alter(true, vec![kv("segment.bytes", "100")], vec![])));
        let got: Vec<_> = img.topics["t"].configs.keys().map(String::as_str).collect();
        assert_eq!(got, ["segment.bytes"], "replace drops what it does not set");
        let other = MetaRecord::TopicConfigsAltered { id: [4; 16], replace: true, set: vec![], deleted: vec![] };
        assert!(!img.apply(4, &other), "a deleted topic's change changes nothing");
    }

    #[test]
    fn snapshots_round_trip_and_refuse_damage() {
        let mut image = MetadataImage::default();
        let placed = MetaRecord::TopicPlaced {
            name: "t".into(),
            id: [7; 16],
            configs: vec![("retention.ms".into(), "1000".into())],
            replicas: vec![vec![1, 2], vec![2, 3]],
        };
        assert!(image.apply(3, &placed));
        let reg = MetaRecord::BrokerRegistered { id: 2, incarnation: 9, host: "h".into(), port: 9092, rack: None };
        assert!(image.apply(4, &reg));
        let bytes = encode_snapshot_of(5, 2, &image);
        let back = decode_snapshot(&bytes).expect("decodes");
        assert_eq!(back, Snapshot { end: 5, epoch: 2, image: image.clone() });
        assert_eq!(encode_snapshot(&back), bytes, "the borrowed and owned forms encode alike");
        for at in [0, 5, 9, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert_eq!(decode_snapshot(&bad), None, "byte {at} flipped");
        }
        assert_eq!(decode_snapshot(&bytes[..bytes.len() - 1]), None, "a torn snapshot is no snapshot");
        let name = snapshot_file_name(5, 2);
        assert_eq!(name, "00000000000000000005-0000000002.checkpoint");
        assert_eq!(parse_snapshot_file_name(&name), Some((5, 2)));
        assert_eq!(parse_snapshot_file_name("5-2.checkpoint"), None);
        assert_eq!(parse_snapshot_file_name(&format!("{name}.part")), None);
    }

    #[test]
    fn placement_and_brokers() {
        let mut img = MetadataImage::default();
        let reg = |id| MetaRecord::BrokerRegistered { id, incarnation: 9, host: "h".into(), port: 1, rack: None };
        assert!(img.apply(10, &reg(1)));
        assert!(img.apply(11, &reg(2)));
        assert!(img.brokers[&1].fenced, "a broker registers fenced");
        assert!(!img.apply(12, &MetaRecord::BrokerUnfenced { id: 1, epoch: 9 }), "a stale epoch changes nothing");
        assert!(img.apply(12, &MetaRecord::BrokerUnfenced { id: 1, epoch: 10 }));
        assert_eq!(img.live_brokers().map(|(id, _)| id).collect::<Vec<_>>(), vec![1]);
        let placed = MetaRecord::TopicPlaced {
            name: "t".into(),
            id: [2; 16],
            configs: vec![],
            replicas: vec![vec![1], vec![2]],
        };
        assert!(img.apply(13, &placed));
        assert!(!img.apply(14, &placed), "a topic is created once");
        let more = MetaRecord::PartitionsPlaced { name: "t".into(), id: [2; 16], from: 2, replicas: vec![vec![2]] };
        assert!(img.apply(15, &more));
        assert!(!img.apply(16, &more), "partitions added to an older count change nothing");
        let replicas: Vec<Vec<i32>> = img.topics["t"].parts.iter().map(|p| p.replicas.clone()).collect();
        assert_eq!(replicas, vec![vec![1], vec![2], vec![2]]);

        let brokers = [(3, None), (1, None), (2, None)];
        assert_eq!(place(&brokers, 4, 1, 1, 0), vec![vec![2], vec![3], vec![1], vec![2]]);
        assert_eq!(place(&brokers, 2, 3, 0, 0), vec![vec![1, 2, 3], vec![2, 3, 1]]);
        assert_eq!(place(&brokers, 1, 5, 0, 0), vec![vec![1, 2, 3]], "never more replicas than brokers");
        let racked = [(1, Some("a".into())), (2, Some("a".into())), (3, Some("b".into())), (4, Some("b".into()))];
        for replicas in place(&racked, 8, 2, 3, 0) {
            let rack = |id: i32| racked.iter().find(|b| b.0 == id).unwrap().1.clone();
            assert_ne!(rack(replicas[0]), rack(replicas[1]), "two replicas in one rack: {replicas:?}");
        }
        assert_eq!(place(&[], 2, 1, 0, 0), vec![Vec::<i32>::new(), Vec::new()]);
    }

    #[test]
    fn elections_are_clean_and_changes_apply_in_epoch_order() {
        let p = PartitionImage::new(vec![1, 2, 3]);
        assert_eq!((p.leader, p.isr.clone()), (1, vec![1, 2, 3]));
        assert_eq!(p.wanted(|_| false), None, "nothing fenced, nothing to change");
        // The leader is fenced: the next in-sync replica in assignment order leads.
        let q = p.wanted(|b| b == 1).unwrap();
        assert_eq!((q.leader, q.isr.clone(), q.leader_epoch, q.partition_epoch), (2, vec![2, 3], 1, 1));
        // A follower is fenced: it leaves the ISR, the leader (and its epoch) stay.
        let r = q.wanted(|b| b == 3).unwrap();
        assert_eq!((r.leader, r.isr.clone(), r.leader_epoch, r.partition_epoch), (2, vec![2], 1, 2));
        // The last in-sync replica is fenced: no leader, and it stays in the ISR...
        let s = r.wanted(|b| b == 2).unwrap();
        assert_eq!((s.leader, s.isr.clone(), s.leader_epoch), (NO_LEADER, vec![2], 2));
        // ...so that a replica outside the ISR is never elected (no unclean election)...
        assert_eq!(s.wanted(|b| b == 2), None);
        // ...and it leads again when it is back.
        let t = s.wanted(|_| false).unwrap();
        assert_eq!((t.leader, t.isr.clone(), t.leader_epoch), (2, vec![2], 3));
        assert_eq!(PartitionImage::new(Vec::new()).wanted(|_| true), None, "a cluster of one's partition");
        // Preferred leader election: back to the first replica once it is in sync again.
        assert_eq!(p.prefer(|_| false), Err(NoElection::NotNeeded));
        assert_eq!(q.prefer(|_| false), Err(NoElection::NotAvailable), "1 is out of the ISR");
        let back = PartitionImage { isr: vec![2, 3, 1], ..q.clone() };
        assert_eq!(back.prefer(|b| b == 1), Err(NoElection::NotAvailable), "1 is fenced");
        let u = back.prefer(|_| false).unwrap();
        assert_eq!((u.leader, u.leader_epoch, u.partition_epoch, u.isr.clone()), (1, 2, 2, vec![2, 3, 1]));

        let mut img = MetadataImage::default();
        let placed =
            MetaRecord::TopicPlaced { name: "t".into(), id: [2; 16], configs: vec![], replicas: vec![vec![1, 2, 3]] };
        assert!(img.apply(1, &placed));
        let change = |pe, le, leader, isr: Vec<i32>| MetaRecord::PartitionChanged {
            id: [2; 16],
            partition: 0,
            leader,
            leader_epoch: le,
            partition_epoch: pe,
            isr,
        };
        assert!(!img.apply(2, &change(2, 1, 2, vec![2])), "a change must build on the current partition epoch");
        assert!(img.apply(2, &change(1, 1, 2, vec![2, 3])));
        assert!(!img.apply(3, &change(1, 1, 3, vec![3])), "a second change from the same view is a no-op");
        assert!(!img.apply(3, &change(2, 0, 3, vec![3])), "the leader epoch never goes back");
        let (name, p) = img.partition(&[2; 16], 0).unwrap();
        assert_eq!((name, p.leader, p.leader_epoch, p.partition_epoch, p.isr.clone()), ("t", 2, 1, 1, vec![2, 3]));
        assert!(img.partition(&[2; 16], 1).is_none());
    }

    #[test]
    fn reassignment_runs_through_adding_and_removing() {
        let p = PartitionImage::new(vec![1, 2, 3]);
        let none = |_| false;
        assert_eq!(p.reassign(None, none, 1), Err(Refusal::NoReassignment));
        // [1,2,3] -> [4,2,5]: the target first, then the leaving replicas; 1 keeps leading.
        let r = p.reassign(Some(&[4, 2, 5]), none, 1).unwrap();
        assert_eq!(
            (r.replicas.clone(), r.adding.clone(), r.removing.clone()),
            (vec![4, 2, 5, 1, 3], vec![4, 5], vec![1, 3])
        );
        assert_eq!((r.leader, r.leader_epoch, r.partition_epoch, r.isr.clone()), (1, 0, 1, vec![1, 2, 3]));
        assert_eq!(r.original_replicas(), vec![2, 1, 3]);
        assert_eq!(r.target_replicas(), vec![4, 2, 5]);
        assert!(r.reassigning());
        assert_eq!(r.reassignment_done(none), None, "4 and 5 are not in sync yet");
        let caught_up = PartitionImage { isr: vec![1, 2, 3, 4], partition_epoch: 2, ..r.clone() };
        assert_eq!(caught_up.reassignment_done(none), None, "5 is not in sync yet");
        let all = PartitionImage { isr: vec![1, 2, 3, 4, 5], partition_epoch: 3, ..r.clone() };
        let d = all.reassignment_done(none).unwrap();
        // Done: the target alone, the ISR without 1 and 3, the leader moved to 4 in a new epoch.
        assert_eq!(
            (d.replicas.clone(), d.isr.clone(), d.leader, d.leader_epoch, d.partition_epoch),
            (vec![4, 2, 5], vec![2, 4, 5], 4, 1, 4)
        );
        assert!(!d.reassigning());
        // With 4 fenced, 2 leads; with every target replica fenced, it waits.
        assert_eq!(all.reassignment_done(|b| b == 4).map(|d| d.leader), Some(2));
        assert_eq!(all.reassignment_done(|b| [4, 2, 5].contains(&b)), None);
        // 2 keeps leading where it is a target replica, still in a new epoch: 1 and 3 left.
        let led_by_2 = PartitionImage { leader: 2, ..all.clone() };
        assert_eq!(led_by_2.reassignment_done(none).map(|d| (d.leader, d.leader_epoch)), Some((2, 1)));
        // Starting one moves no replica out: the same leader epoch.
        assert_eq!(r.leader_epoch, p.leader_epoch);
        // A cancel goes back to the original replicas. An added replica not in sync leaves at
        // once (and the leader epoch moves: the fetches it sent are fenced)...
        let c = r.reassign(None, none, 1).unwrap();
        assert_eq!(
            (c.replicas.clone(), c.adding.clone(), c.removing.clone(), c.isr.clone()),
            (vec![2, 1, 3], vec![], vec![], vec![1, 2, 3])
        );
        assert_eq!((c.leader, c.leader_epoch), (1, 1));
        // ...one in sync stays until the original replicas are (the ISR never shrinks).
        let c = caught_up.reassign(None, none, 1).unwrap();
        assert_eq!(
            (c.replicas.clone(), c.adding.clone(), c.removing.clone(), c.isr.clone()),
            (vec![2, 1, 3, 4], vec![], vec![4], vec![1, 2, 3, 4])
        );
        assert_eq!((c.leader, c.leader_epoch), (1, 1), "5 left");
        assert_eq!(c.reassignment_done(none).map(|d| (d.replicas, d.isr)), Some((vec![2, 1, 3], vec![1, 2, 3])));
        // A new target while one runs starts from the replicas holding data.
        let n = caught_up.reassign(Some(&[1, 5]), none, 1).unwrap();
        assert_eq!(
            (n.replicas.clone(), n.adding.clone(), n.removing.clone(), n.isr.clone()),
            (vec![1, 5, 2, 3, 4], vec![5], vec![2, 3, 4], vec![1, 2, 3, 4])
        );
        // A leader that leaves the replicas (an added one not in sync, cancelled) gives way.
        let led_by_5 = PartitionImage { leader: 5, leader_epoch: 3, ..r.clone() };
        let c = led_by_5.reassign(None, none, 1).unwrap();
        assert_eq!((c.leader, c.leader_epoch), (2, 4));
        // With the ISR under min.insync.replicas, added replicas out of sync may hold
        // acknowledged records (they helped acknowledge them, then dropped out): a cancel
        // keeps them until the original replicas are in sync.
        let shrunk = PartitionImage { isr: vec![3], leader: 3, ..r.clone() };
        let c = shrunk.reassign(None, none, 2).unwrap();
        assert_eq!(
            (c.replicas.clone(), c.adding.clone(), c.removing.clone(), c.isr.clone()),
            (vec![2, 1, 3, 4, 5], vec![], vec![4, 5], vec![3])
        );
        assert_eq!(c.reassignment_done(none), None, "1 and 2 are not in sync");
        let c = shrunk.reassign(None, none, 1).unwrap();
        assert_eq!((c.replicas, c.removing), (vec![2, 1, 3], vec![]), "with min.insync.replicas=1 they go at once");

        // In the image: an ISR change keeps the reassignment; the record sets it.
        let mut img = MetadataImage::default();
        let placed =
            MetaRecord::TopicPlaced { name: "t".into(), id: [3; 16], configs: vec![], replicas: vec![vec![1, 2, 3]] };
        assert!(img.apply(1, &placed));
        assert!(img.apply(2, &r.reassign_record([3; 16], 0)));
        assert!(!img.apply(3, &r.reassign_record([3; 16], 0)), "the same partition epoch twice");
        assert!(img.apply(3, &caught_up.change_record([3; 16], 0)));
        let (_, now) = img.partition(&[3; 16], 0).unwrap();
        assert_eq!(now, &caught_up);
    }

    #[test]
    fn names() {
        assert!(valid_topic_name("orders.v1_x-y"));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("a/b"));
        assert!(!valid_topic_name(&"x".repeat(250)));
        assert_eq!(parse_partition_dir("my-topic-12"), Some(("my-topic", 12)));
        assert_eq!(parse_partition_dir("t-012"), None);
        assert_eq!(parse_partition_dir(".sluice-meta"), None);
    }
}
