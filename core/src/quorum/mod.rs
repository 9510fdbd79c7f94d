//! The metadata quorum: Raft with KRaft's semantics (KIP-595, KIP-996), sans-IO.
//!
//! - Replication is pulled: followers send `Fetch` with their log end and the epoch of their
//!   last entry; the leader answers with entries, or with the point where the two logs diverge,
//!   which the follower truncates to before fetching again.
//! - A voter reports an offset (by fetching from it) only once it is durable on its disk, and
//!   the leader counts its own log only as far as it is durable: an entry is committed (below
//!   the high watermark) when it is durable on a majority of voters, and only once an entry of
//!   the leader's own epoch is (the `LeaderChange` entry a new leader appends; Raft §5.4.2).
//! - The epoch and vote are written and synced before a vote is granted or asked for.
//! - Elections start with a pre-vote that changes nothing on disk, granted only by voters that
//!   have lost their leader too, so a node cut off alone cannot depose a healthy leader.
//! - A leader that has not been fetched from by a majority within 1.5 fetch timeouts resigns
//!   (check-quorum).
//! - A leader that is stopping resigns out loud (`EndQuorumEpoch`, as KRaft's graceful
//!   shutdown does): its followers stand for election at once rather than after a fetch
//!   timeout without it, and it stands no more itself.
//!
//! The machine owns no files. It asks for storage work with [`Action::Write`] (in order: the
//! owner applies them in the order given) and learns that it is durable through
//! [`Quorum::handle_synced`]. Messages to peers are [`Action::Send`]; what comes from peers is
//! [`Quorum::handle_message`]. Its only clock is the `now` passed in; its only randomness is a
//! generator seeded by the owner.

mod log;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use self::log::RaftLog;
use crate::mutants::{self, Mutant};
use crate::types::{Instant, Offset};

/// How long after a failed write or sync the quorum tries its storage again.
const STORAGE_RETRY_MS: u64 = 100;

/// KRaft's name for a Raft term.
pub type Epoch = i32;
/// A voter's (or observer's) `node.id`.
pub type NodeId = i32;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub epoch: Epoch,
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// Appended by a new leader at the start of its epoch, so that it can commit at once.
    LeaderChange { leader: NodeId },
    /// An opaque record of the state machine above.
    Record(Vec<u8>),
}

/// What quorum members say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Asks for a vote in `epoch`. A pre-vote asks "would you", and changes nothing.
    Vote {
        epoch: Epoch,
        last_epoch: Epoch,
        log_end: Offset,
        pre_vote: bool,
    },
    /// The voter's epoch and the leader it knows in it, if any.
    VoteResponse {
        epoch: Epoch,
        leader: Option<NodeId>,
        granted: bool,
        pre_vote: bool,
    },
    /// A new leader announces itself.
    BeginQuorumEpoch {
        epoch: Epoch,
    },
    /// `fetch_offset` is the fetcher's log end, durable; `last_epoch` the epoch of the entry
    /// before it. `request` is echoed in the answer, so a late or duplicated answer is known.
    Fetch {
        epoch: Epoch,
        fetch_offset: Offset,
        last_epoch: Epoch,
        request: u64,
    },
    FetchResponse(FetchResponse),
    /// A member behind its leader's log start asks for a chunk of the leader's snapshot.
    FetchSnapshot {
        epoch: Epoch,
        id: SnapshotId,
        position: u64,
        request: u64,
    },
    FetchSnapshotResponse(SnapshotChunk),
    /// The leader of `epoch` resigns (it is stopping): elect another now.
    EndQuorumEpoch {
        epoch: Epoch,
    },
}

/// A snapshot's identity: the offset it ends at (exclusive) and the epoch of its last entry.
pub type SnapshotId = (Offset, Epoch);

/// How many bytes of a snapshot one answer carries at most.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub request: u64,
    pub epoch: Epoch,
    pub leader: Option<NodeId>,
    /// Set when the fetch was refused (stale epoch, or not the leader).
    pub refused: bool,
    /// The snapshot the leader has: when it is not the one asked for, fetching starts over.
    pub id: Option<SnapshotId>,
    pub size: u64,
    pub position: u64,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    pub request: u64,
    pub epoch: Epoch,
    pub leader: Option<NodeId>,
    /// Set when the fetch was refused (stale epoch, or not the leader): nothing else applies.
    pub refused: bool,
    pub high_watermark: Offset,
    /// The logs part before the fetch offset: truncate to (at most) this offset of this epoch.
    pub diverging: Option<(Epoch, Offset)>,
    /// The fetch offset asked for: entries start here.
    pub start: Offset,
    pub entries: Vec<Entry>,
    /// The fetcher is behind the leader's log start: it is to fetch this snapshot first.
    pub snapshot: Option<SnapshotId>,
}

/// Storage work, to be applied in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// The quorum state: the current epoch and the vote cast in it.
    State { epoch: Epoch, voted_for: Option<NodeId> },
    /// Entries to append at `offset` (the log end when written).
    Append { offset: Offset, entries: Vec<Entry> },
    /// Cut the log to `end` entries.
    Truncate { end: Offset },
    /// Make every write before this one durable; report with `handle_synced(id)`.
    Sync { id: u64 },
    /// A snapshot fetched from the leader, whole: make it durable, then report with
    /// `snapshot_installed`.
    InstallSnapshot { id: SnapshotId, data: Vec<u8> },
    /// The log is emptied: it starts at `start` now (a snapshot holds what came before).
    Reset { start: Offset, start_epoch: Epoch },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send { to: NodeId, msg: Message },
    Write(Write),
}

#[derive(Clone, Debug)]
pub struct QuorumConfig {
    pub node_id: NodeId,
    pub voters: BTreeSet<NodeId>,
    /// `controller.quorum.election.timeout.ms`: a candidate's wait, randomised up to twice.
    pub election_timeout_ms: u64,
    /// `controller.quorum.fetch.timeout.ms`: a follower that hears nothing from its leader
    /// for this long starts an election.
    pub fetch_timeout_ms: u64,
    /// How long a leader holds a fetch that has nothing new to return.
    pub fetch_max_wait_ms: u64,
    /// How many entries one fetch response carries at most.
    pub fetch_max_entries: usize,
}

impl QuorumConfig {
    pub fn new(node_id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> QuorumConfig {
        QuorumConfig {
            node_id,
            voters: voters.into_iter().collect(),
            election_timeout_ms: 1000,
            fetch_timeout_ms: 2000,
            fetch_max_wait_ms: 500,
            fetch_max_entries: 1000,
        }
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// What survived on disk: the last quorum state written and synced, and the log.
#[derive(Clone, Debug, Default)]
pub struct Persisted {
    pub epoch: Epoch,
    pub voted_for: Option<NodeId>,
    /// The offset of the first entry, and the epoch of the one before it (in a snapshot).
    pub start: Offset,
    pub start_epoch: Epoch,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// No leader known in this epoch: an election starts at `election_at`.
    Unattached {
        election_at: Instant,
    },
    /// Canvassing with pre-votes; `votes` includes itself.
    Prospective {
        votes: BTreeSet<NodeId>,
        deadline: Instant,
    },
    /// Asking for votes in its own epoch; `votes` counts its own once it is durable.
    Candidate {
        votes: BTreeSet<NodeId>,
        deadline: Instant,
    },
    Leader(LeaderState),
    /// Fetching from `leader` (the field of the quorum).
    Follower {
        last_heard: Instant,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderState {
    /// Offset of this epoch's LeaderChange entry: nothing commits until it does.
    pub epoch_start: Offset,
    /// Every other member that fetched: its durable log end and when it last fetched.
    pub progress: BTreeMap<NodeId, Progress>,
    /// Fetches with nothing to return yet: answered when the log or high watermark moves, or
    /// at their deadline.
    parked: BTreeMap<NodeId, Parked>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub end: Offset,
    pub last_fetch: Instant,
    /// When it last fetched from the leader's log end (it had everything), if ever.
    pub last_caught_up: Option<Instant>,
    /// The high watermark this member was last sent.
    hw_sent: Offset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parked {
    request: u64,
    fetch_offset: Offset,
    deadline: Instant,
}

/// A write of the state or the log, waiting for a sync.
#[derive(Clone, Copy, Debug)]
struct InFlightSync {
    id: u64,
    log_end: Offset,
    generation: u64,
    state_version: u64,
}

/// One voter as its leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoterState {
    pub id: NodeId,
    pub log_end: Offset,
    pub last_fetch: Option<Instant>,
    pub last_caught_up: Option<Instant>,
}

/// Why a proposal was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotLeader {
    /// Another member leads (or may): ask it.
    Leader(Option<NodeId>),
}

pub struct Quorum {
    cfg: QuorumConfig,
    rng: ChaCha8Rng,
    epoch: Epoch,
    voted_for: Option<NodeId>,
    leader: Option<NodeId>,
    role: Role,
    log: RaftLog,
    /// The prefix of the log known synced here.
    durable_end: Offset,
    /// Entries below are committed. Never goes back while the process lives.
    high_watermark: Offset,
    /// Bumped by every truncation: a sync issued before one covers nothing after it.
    generation: u64,
    state_version: u64,
    state_durable: u64,
    sync: Option<InFlightSync>,
    next_sync_id: u64,
    /// Messages that may leave only once the state version they carry is durable.
    deferred: Vec<(u64, NodeId, Message)>,
    /// The high watermark the leader of this epoch last reported to this follower.
    leader_hw: Option<Offset>,
    /// A follower's outstanding fetch: when it was sent, and its request id.
    fetch_sent: Option<(Instant, u64)>,
    next_request: u64,
    /// The leader appended during this input: parked fetches have something new.
    appended: bool,
    /// A write or sync failed: storage is retried from what is durable at this instant.
    storage_retry_at: Option<Instant>,
    /// The newest snapshot durable here, served to members behind the log start.
    snapshot: Option<(SnapshotId, bytes::Bytes)>,
    /// A snapshot being fetched from the leader: its id and what has come of it.
    fetching: Option<(SnapshotId, Vec<u8>)>,
    /// A fetched snapshot being made durable: nothing is fetched meanwhile.
    installing: Option<SnapshotId>,
    actions: VecDeque<Action>,
    /// It resigned its leadership to stop: it votes, but stands no more.
    resigned: bool,
}

/// The most a follower told of its leader's resignation waits before it stands: a random
/// part of this, so that the followers rarely stand at once and split the vote.
const RESIGNATION_STAND_MAX_MS: u64 = 50;

impl Quorum {
    pub fn new(cfg: QuorumConfig, persisted: Persisted, seed: u64, now: Instant) -> Quorum {
        let log = RaftLog::from_parts(persisted.start, persisted.start_epoch, persisted.entries);
        // A lost state write can leave the log ahead of the epoch on disk.
        let epoch = persisted.epoch.max(log.last_epoch());
        let voted_for = persisted.voted_for.filter(|_| epoch == persisted.epoch);
        let mut q = Quorum {
            rng: ChaCha8Rng::seed_from_u64(seed),
            epoch,
            voted_for,
            leader: None,
            role: Role::Unattached { election_at: now },
            durable_end: log.end(),
            // What is below the start is in a snapshot, and was committed.
            high_watermark: log.start(),
            log,
            generation: 0,
            state_version: 0,
            state_durable: 0,
            sync: None,
            next_sync_id: 1,
            deferred: Vec::new(),
            leader_hw: None,
            fetch_sent: None,
            next_request: 1,
            appended: false,
            storage_retry_at: None,
            snapshot: None,
            fetching: None,
            installing: None,
            actions: VecDeque::new(),
            resigned: false,
            cfg,
        };
        // A sole voter need not wait for anyone; others give a running leader a chance first.
        if q.cfg.voters.len() > 1 {
            let at = q.election_deadline(now);
            q.role = Role::Unattached { election_at: at };
        } else {
            q.become_prospective(now);
        }
        q.after(now);
        q
    }

    // ---------------------------------------------------------------- reading

    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }
    pub fn role(&self) -> &Role {
        &self.role
    }
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }
    /// This member knows every entry that was committed before it started: it leads and its
    /// LeaderChange entry is committed, or it follows, its high watermark has reached the one
    /// its leader last reported, and that covers an entry of the leader's epoch (a new
    /// leader's high watermark lags what was committed until its own first entry is: until
    /// then, following it proves nothing). Only then is its committed prefix a complete view.
    pub fn caught_up(&self) -> bool {
        match &self.role {
            Role::Leader(l) => self.high_watermark > l.epoch_start,
            Role::Follower { .. } => {
                self.leader_hw.is_some_and(|hw| self.high_watermark >= hw)
                    && self.log.epoch_at(self.high_watermark - 1) == Some(self.epoch)
            }
            _ => false,
        }
    }

    pub fn durable_end(&self) -> Offset {
        self.durable_end
    }
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }

    /// What DescribeQuorum reports: the leader's view of every voter (its own log end
    /// included), or `None` when this member does not lead. Observers are not tracked yet.
    pub fn describe(&self, now: Instant) -> Option<Vec<VoterState>> {
        let Role::Leader(l) = &self.role else { return None };
        let me = VoterState {
            id: self.cfg.node_id,
            log_end: self.log.end(),
            last_fetch: Some(now),
            last_caught_up: Some(now),
        };
        let others = self.cfg.voters.iter().filter(|&&v| v != self.cfg.node_id).map(|&v| match l.progress.get(&v) {
            Some(p) => {
                VoterState { id: v, log_end: p.end, last_fetch: Some(p.last_fetch), last_caught_up: p.last_caught_up }
            }
            None => VoterState { id: v, log_end: -1, last_fetch: None, last_caught_up: None },
        });
        Some(std::iter::once(me).chain(others).collect())
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest instant at which `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let role_at = match &self.role {
            Role::Unattached { election_at } => Some(*election_at),
            Role::Prospective { deadline, .. } | Role::Candidate { deadline, .. } => Some(*deadline),
            Role::Follower { last_heard } => Some(last_heard.plus_millis(self.cfg.fetch_timeout_ms)),
            Role::Leader(l) => {
                let parked = l.parked.values().map(|p| p.deadline).min();
                Some(parked.map_or(self.check_quorum_at(l), |p| p.min(self.check_quorum_at(l))))
            }
        };
        let refetch = self.fetch_sent.map(|(at, _)| at.plus_millis(self.refetch_ms()));
        [role_at, refetch, self.storage_retry_at].into_iter().flatten().min()
    }

    // ---------------------------------------------------------------- inputs

    /// Appends a record if this member leads; returns its offset. It is committed once the
    /// high watermark passes it *and* the entry there is still this one (a leader that loses
    /// its epoch may see its uncommitted entries replaced).
    pub fn propose(&mut self, now: Instant, record: Vec<u8>) -> Result<Offset, NotLeader> {
        if !self.is_leader() || self.storage_retry_at.is_some() {
            return Err(NotLeader::Leader(self.leader));
        }
        let offset = self.append_local(EntryKind::Record(record));
        self.after(now);
        Ok(offset)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.storage_retry_at.is_some_and(|at| now >= at) {
            self.storage_retry_at = None;
            self.recover_storage();
        }
        if self.fetch_sent.is_some_and(|(at, _)| now >= at.plus_millis(self.refetch_ms())) {
            self.fetch_sent = None; // lost, or its answer was: ask again
        }
        match &self.role {
            Role::Unattached { election_at } if now >= *election_at => self.become_prospective(now),
            Role::Prospective { deadline, .. } | Role::Candidate { deadline, .. } if now >= *deadline => {
                self.become_prospective(now)
            }
            Role::Follower { last_heard } if now >= last_heard.plus_millis(self.cfg.fetch_timeout_ms) => {
                self.become_prospective(now)
            }
            Role::Leader(l) if now >= self.check_quorum_at(l) => {
                tracing::info!(
                    epoch = self.epoch,
                    "quorum leader resigns: no majority fetched within the check-quorum time"
                );
                self.become_unattached(now, self.epoch);
            }
            _ => {}
        }
        self.after(now);
    }

    /// A sync asked for with `Write::Sync { id }` completed: what was written before it is
    /// durable.
    pub fn handle_synced(&mut self, now: Instant, id: u64) {
        let Some(s) = self.sync.filter(|s| s.id == id) else {
            return;
        };
        self.sync = None;
        self.state_durable = self.state_durable.max(s.state_version);
        if s.generation == self.generation {
            self.durable_end = self.durable_end.max(s.log_end.min(self.log.end()));
        }
        let durable = self.state_durable;
        let (ready, waiting): (Vec<_>, Vec<_>) = self.deferred.drain(..).partition(|(v, _, _)| *v <= durable);
        self.deferred = waiting;
        for (_, to, msg) in ready {
            self.send(to, msg);
        }
        if let Role::Candidate { votes, .. } = &mut self.role {
            if self.state_durable >= self.state_version {
                votes.insert(self.cfg.node_id);
            }
        }
        self.after(now);
    }

    /// A write or sync failed (a full disk, an I/O error): what the disk holds past the durable
    /// end is unknown. Memory is not: every entry in the log here was taken as it should be.
    /// After a short wait the file is cut back to the durable end and the rest is written again
    /// from memory, the quorum state is written again if it was not durable, and a fresh sync
    /// follows. Meanwhile nothing is synced or proposed; messages waiting for durability wait on.
    ///
    /// Cutting the log itself back would be wrong: a follower learns the high watermark from
    /// its leader, so entries past its own durable end may be committed, and applied here.
    pub fn handle_storage_failed(&mut self, now: Instant) {
        self.sync = None;
        // Retrying at once would spin on a full disk: wait a little first.
        self.storage_retry_at = Some(now.plus_millis(STORAGE_RETRY_MS));
    }

    fn recover_storage(&mut self) {
        if mutants::active(Mutant::CutToDurableEnd) {
            self.truncate(self.durable_end);
        }
        if self.durable_end < self.log.end() {
            let from = self.durable_end;
            let entries = self.log.slice(from, usize::MAX);
            // A sync issued before this covers nothing of what is written again.
            self.generation += 1;
            self.write(Write::Truncate { end: from });
            self.write(Write::Append { offset: from, entries });
        }
        if self.state_version > self.state_durable {
            self.set_state(self.epoch, self.voted_for, self.leader);
        }
    }

    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        match msg {
            Message::Vote { epoch, last_epoch, log_end, pre_vote } => {
                self.on_vote(now, from, epoch, (last_epoch, log_end), pre_vote)
            }
            Message::VoteResponse { epoch, leader, granted, pre_vote } => {
                self.on_vote_response(now, from, epoch, leader, granted, pre_vote)
            }
            Message::BeginQuorumEpoch { epoch } => {
                if epoch >= self.epoch && self.cfg.voters.contains(&from) && !self.leads_epoch(epoch) {
                    self.become_follower(now, epoch, from);
                }
            }
            Message::Fetch { epoch, fetch_offset, last_epoch, request } => {
                self.on_fetch(now, from, epoch, (fetch_offset, last_epoch), request)
            }
            Message::FetchResponse(r) => self.on_fetch_response(now, from, r),
            Message::FetchSnapshot { epoch, id, position, request } => {
                self.on_fetch_snapshot(now, from, epoch, id, position, request)
            }
            Message::FetchSnapshotResponse(c) => self.on_snapshot_chunk(now, from, c),
            Message::EndQuorumEpoch { epoch } => self.on_end_quorum_epoch(now, from, epoch),
        }
        self.after(now);
    }

    /// A stopping leader hands its leadership back: the others are told to elect another at
    /// once, and this member stands no more (it still votes, and answers fetches no more).
    /// Nothing it has not committed is lost to that: the new leader's log is at least as
    /// complete as a majority's.
    pub fn resign(&mut self, now: Instant) {
        self.resigned = true;
        if !self.is_leader() {
            return;
        }
        tracing::info!(epoch = self.epoch, "quorum leader resigns: it is stopping");
        for v in self.others() {
            self.send(v, Message::EndQuorumEpoch { epoch: self.epoch });
        }
        self.become_unattached(now, self.epoch);
        self.after(now);
    }

    /// The leader followed resigned: stand for election shortly (pre-votes are granted by
    /// the others it told, which have no leader now either).
    fn on_end_quorum_epoch(&mut self, now: Instant, from: NodeId, epoch: Epoch) {
        if epoch != self.epoch || self.leader != Some(from) || self.is_leader() {
            return; // an older epoch's, or about a leader this member no longer follows
        }
        self.become_unattached(now, epoch);
        let wait = self.rng.gen_range(0..=RESIGNATION_STAND_MAX_MS);
        self.role = Role::Unattached { election_at: now.plus_millis(wait) };
    }

    // ---------------------------------------------------------------- elections

    fn election_deadline(&mut self, now: Instant) -> Instant {
        let t = self.cfg.election_timeout_ms;
        now.plus_millis(t + self.rng.gen_range(0..t.max(1)))
    }

    fn become_prospective(&mut self, now: Instant) {
        if !self.cfg.voters.contains(&self.cfg.node_id) || self.resigned {
            self.role = Role::Unattached { election_at: Instant(u64::MAX) };
            return; // observers never stand, nor a member stopping
        }
        let deadline = self.election_deadline(now);
        self.role = Role::Prospective { votes: BTreeSet::from([self.cfg.node_id]), deadline };
        let ask = self.vote_request(self.epoch + 1, true);
        for v in self.others() {
            self.send(v, ask.clone());
        }
        self.maybe_won(now);
    }

    fn become_candidate(&mut self, now: Instant) {
        let deadline = self.election_deadline(now);
        self.set_state(self.epoch + 1, Some(self.cfg.node_id), None);
        self.role = Role::Candidate { votes: BTreeSet::new(), deadline };
        let ask = self.vote_request(self.epoch, false);
        let version = self.state_version;
        for v in self.others() {
            self.deferred.push((version, v, ask.clone()));
        }
    }

    fn become_leader(&mut self, now: Instant) {
        tracing::info!(epoch = self.epoch, node = self.cfg.node_id, "quorum leader elected");
        self.leader = Some(self.cfg.node_id);
        let epoch_start = self.log.end();
        let fresh = Progress { end: 0, last_fetch: now, last_caught_up: None, hw_sent: -1 };
        let progress = self.others().into_iter().map(|v| (v, fresh)).collect();
        self.role = Role::Leader(LeaderState { epoch_start, progress, parked: BTreeMap::new() });
        self.append_local(EntryKind::LeaderChange { leader: self.cfg.node_id });
        for v in self.others() {
            self.send(v, Message::BeginQuorumEpoch { epoch: self.epoch });
        }
    }

    fn become_follower(&mut self, now: Instant, epoch: Epoch, leader: NodeId) {
        if epoch != self.epoch || self.leader != Some(leader) {
            let voted = if epoch == self.epoch { self.voted_for } else { None };
            self.set_state(epoch, voted, Some(leader));
            self.fetch_sent = None;
            self.leader_hw = None;
        }
        self.role = Role::Follower { last_heard: now };
    }

    fn become_unattached(&mut self, now: Instant, epoch: Epoch) {
        if epoch != self.epoch {
            self.set_state(epoch, None, None);
        }
        self.leader = None;
        self.fetch_sent = None;
        self.leader_hw = None;
        // A sole voter has nobody to wait for.
        let election_at = if self.cfg.voters.len() == 1 { now } else { self.election_deadline(now) };
        self.role = Role::Unattached { election_at };
    }

    /// A message from a higher epoch moves this member there first.
    fn observe_epoch(&mut self, now: Instant, epoch: Epoch, leader: Option<NodeId>) {
        if epoch > self.epoch {
            match leader {
                Some(l) if l != self.cfg.node_id => self.become_follower(now, epoch, l),
                _ => self.become_unattached(now, epoch),
            }
        }
    }

    fn vote_request(&self, epoch: Epoch, pre_vote: bool) -> Message {
        Message::Vote { epoch, last_epoch: self.log.last_epoch(), log_end: self.log.end(), pre_vote }
    }

    fn log_up_to_date(&self, candidate: (Epoch, Offset)) -> bool {
        mutants::active(Mutant::VoteWithoutLogCheck) || candidate >= (self.log.last_epoch(), self.log.end())
    }

    fn on_vote(&mut self, now: Instant, from: NodeId, epoch: Epoch, last: (Epoch, Offset), pre_vote: bool) {
        if !self.cfg.voters.contains(&from) {
            // Only voters stand: a vote request from anyone else moves nothing, whatever
            // epoch it names (else any node could depose the leader).
            let resp = Message::VoteResponse { epoch: self.epoch, leader: self.leader, granted: false, pre_vote };
            self.send(from, resp);
            return;
        }
        if !pre_vote {
            self.observe_epoch(now, epoch, None);
        }
        let granted =
            if pre_vote { self.grant_pre_vote(now, epoch, last) } else { self.grant_vote(now, from, epoch, last) };
        let resp = Message::VoteResponse { epoch: self.epoch, leader: self.leader, granted, pre_vote };
        if granted && !pre_vote && !mutants::active(Mutant::VoteNotSynced) {
            self.deferred.push((self.state_version, from, resp));
        } else {
            self.send(from, resp);
        }
    }

    /// Would this member vote for `epoch`? Only if it would move there, the candidate's log is
    /// as complete as its own, and it has no leader it heard from recently.
    fn grant_pre_vote(&self, now: Instant, epoch: Epoch, last: (Epoch, Offset)) -> bool {
        let has_leader = match &self.role {
            Role::Leader(_) => true,
            Role::Follower { last_heard } => now < last_heard.plus_millis(self.cfg.fetch_timeout_ms),
            _ => false,
        };
        epoch > self.epoch && !has_leader && self.log_up_to_date(last)
    }

    fn grant_vote(&mut self, now: Instant, from: NodeId, epoch: Epoch, last: (Epoch, Offset)) -> bool {
        let free = self.voted_for.is_none_or(|v| v == from) && self.leader.is_none();
        if epoch != self.epoch || !free || !self.log_up_to_date(last) {
            return false;
        }
        if self.voted_for != Some(from) {
            self.set_state(self.epoch, Some(from), None);
        }
        let election_at = self.election_deadline(now);
        self.role = Role::Unattached { election_at };
        true
    }

    fn on_vote_response(
        &mut self,
        now: Instant,
        from: NodeId,
        epoch: Epoch,
        leader: Option<NodeId>,
        granted: bool,
        pre_vote: bool,
    ) {
        self.observe_epoch(now, epoch, leader);
        if let Some(l) = leader.filter(|&l| epoch < self.epoch && l != self.cfg.node_id) {
            // A leader of an older epoch that this member, stranded at a newer one (it stood
            // for election where nobody heard it), can neither follow nor unseat with
            // pre-votes its followers refuse. Showing the leader the newer epoch makes it
            // step down, and the election that follows takes everyone past it (etcd answers
            // a stale leader the same way).
            self.send(l, self.fetch_request(0));
        }
        // A voter names a leader this member did not know of: follow it. (One it knew and
        // lost touch with is no news: the election goes on.)
        let news = leader.filter(|&l| epoch == self.epoch && self.leader != Some(l) && l != self.cfg.node_id);
        if let Some(l) = news.filter(|_| !self.is_leader()) {
            self.become_follower(now, epoch, l);
            return;
        }
        let wanted = if pre_vote { self.epoch + 1 } else { self.epoch };
        match &mut self.role {
            Role::Prospective { votes, .. } if pre_vote && granted && epoch < wanted => {
                votes.insert(from);
            }
            Role::Candidate { votes, .. } if !pre_vote && granted && epoch == wanted => {
                votes.insert(from);
            }
            _ => return,
        }
        self.maybe_won(now);
    }

    fn maybe_won(&mut self, now: Instant) {
        let majority = self.cfg.majority();
        match &self.role {
            Role::Prospective { votes, .. } if votes.len() >= majority => self.become_candidate(now),
            Role::Candidate { votes, .. } if votes.len() >= majority => self.become_leader(now),
            _ => {}
        }
    }

    fn leads_epoch(&self, epoch: Epoch) -> bool {
        self.is_leader() && self.epoch == epoch
    }

    // ---------------------------------------------------------------- leading

    fn append_local(&mut self, kind: EntryKind) -> Offset {
        self.appended = true;
        let offset = self.log.end();
        let entry = Entry { epoch: self.epoch, kind };
        self.log.append(entry.clone());
        self.write(Write::Append { offset, entries: vec![entry] });
        offset
    }

    /// When this leader must resign unless more voters fetch: the moment the majority's
    /// last fetch (counting itself) grows older than 1.5 fetch timeouts.
    fn check_quorum_at(&self, l: &LeaderState) -> Instant {
        let need = self.cfg.majority() - 1;
        let mut fetched: Vec<Instant> =
            l.progress.iter().filter(|(id, _)| self.cfg.voters.contains(id)).map(|(_, p)| p.last_fetch).collect();
        fetched.sort_unstable_by(|a, b| b.cmp(a));
        match need.checked_sub(1) {
            None => Instant(u64::MAX), // a sole voter is its own majority
            Some(i) => fetched.get(i).map_or(Instant::ZERO, |t| t.plus_millis(self.cfg.fetch_timeout_ms * 3 / 2)),
        }
    }

    fn on_fetch(
        &mut self,
        now: Instant,
        from: NodeId,
        epoch: Epoch,
        (fetch_offset, last_epoch): (Offset, Epoch),
        request: u64,
    ) {
        self.observe_epoch(now, epoch, None);
        if epoch < self.epoch || !self.is_leader() || fetch_offset < 0 {
            self.send(from, Message::FetchResponse(self.refusal(request)));
            return;
        }
        let start = self.log.start();
        let behind = fetch_offset < start || (fetch_offset == start && last_epoch != self.log.start_epoch());
        if start > 0 && behind {
            if let Role::Leader(l) = &mut self.role {
                if let Some(p) = l.progress.get_mut(&from) {
                    p.last_fetch = now; // it is in touch, for check-quorum
                }
            }
            let mut resp = self.fetch_response(request, None, fetch_offset, Vec::new());
            resp.snapshot = self.snapshot.as_ref().map(|(id, _)| *id);
            self.send(from, Message::FetchResponse(resp));
            return;
        }
        let (end_epoch, end) = self.log.end_offset_for(last_epoch);
        if fetch_offset > 0 && (end_epoch < last_epoch || end < fetch_offset) {
            let resp = self.fetch_response(request, Some((end_epoch, end)), fetch_offset, Vec::new());
            self.send(from, Message::FetchResponse(resp));
            return;
        }
        let Role::Leader(l) = &mut self.role else { unreachable!("checked") };
        let fresh = Progress { end: 0, last_fetch: now, last_caught_up: None, hw_sent: -1 };
        let p = l.progress.entry(from).or_insert(fresh);
        p.end = fetch_offset;
        p.last_fetch = now;
        if fetch_offset >= self.log.end() {
            p.last_caught_up = Some(now);
        }
        let hw_sent = p.hw_sent;
        let deadline = now.plus_millis(self.cfg.fetch_max_wait_ms);
        l.parked.insert(from, Parked { request, fetch_offset, deadline });
        // The high watermark this report moves goes out in this very answer: answered with the
        // one before, the follower would learn of the commit only at its next fetch, which
        // never comes if this leader stops in between (its own shutdown's last records).
        let before = self.high_watermark;
        self.advance_high_watermark();
        if self.high_watermark != before {
            self.answer_parked(now, true);
        } else if fetch_offset < self.log.end() || hw_sent != self.high_watermark {
            self.answer(from);
        }
    }

    fn refusal(&self, request: u64) -> FetchResponse {
        FetchResponse {
            request,
            epoch: self.epoch,
            leader: self.leader,
            refused: true,
            high_watermark: -1,
            diverging: None,
            start: 0,
            entries: Vec::new(),
            snapshot: None,
        }
    }

    fn fetch_response(
        &self,
        request: u64,
        diverging: Option<(Epoch, Offset)>,
        start: Offset,
        entries: Vec<Entry>,
    ) -> FetchResponse {
        FetchResponse {
            request,
            epoch: self.epoch,
            leader: self.leader,
            refused: false,
            high_watermark: self.high_watermark,
            diverging,
            start,
            entries,
            snapshot: None,
        }
    }

    /// Answers `to`'s parked fetch with what it lacks.
    fn answer(&mut self, to: NodeId) {
        let hw = self.high_watermark;
        let Role::Leader(l) = &mut self.role else { return };
        let Some(p) = l.parked.remove(&to) else { return };
        if let Some(prog) = l.progress.get_mut(&to) {
            prog.hw_sent = hw;
        }
        let entries = self.log.slice(p.fetch_offset, self.cfg.fetch_max_entries);
        let resp = self.fetch_response(p.request, None, p.fetch_offset, entries);
        self.send(to, Message::FetchResponse(resp));
    }

    /// Answers parked fetches: all of them when `moved` (the log or high watermark moved),
    /// else those whose wait is over.
    fn answer_parked(&mut self, now: Instant, moved: bool) {
        let Role::Leader(l) = &self.role else { return };
        let due: Vec<NodeId> = l.parked.iter().filter(|(_, p)| moved || now >= p.deadline).map(|(&id, _)| id).collect();
        for id in due {
            self.answer(id);
        }
    }

    /// The high watermark: the largest offset durable on a majority of voters, once that
    /// covers this epoch's first entry.
    fn advance_high_watermark(&mut self) {
        let Role::Leader(l) = &self.role else { return };
        let mut ends: Vec<Offset> = self
            .cfg
            .voters
            .iter()
            .map(|v| if *v == self.cfg.node_id { self.durable_end } else { l.progress.get(v).map_or(0, |p| p.end) })
            .collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&candidate) = ends.get(self.cfg.majority() - 1) else { return };
        let own_epoch_committed = candidate > l.epoch_start || mutants::active(Mutant::CommitByCount);
        if own_epoch_committed && candidate > self.high_watermark {
            self.high_watermark = candidate;
        }
    }

    // ---------------------------------------------------------------- following

    fn on_fetch_response(&mut self, now: Instant, from: NodeId, r: FetchResponse) {
        self.observe_epoch(now, r.epoch, r.leader);
        let current = self.fetch_sent.is_some_and(|(_, id)| id == r.request) && self.leader == Some(from);
        if r.epoch < self.epoch || self.is_leader() || !current {
            return; // late, duplicated, or from an older epoch
        }
        if r.refused {
            // The node followed does not lead this epoch (it resigned): follow the leader it
            // names, or stand for election in time.
            match r.leader {
                Some(l) if l != from && l != self.cfg.node_id => self.become_follower(now, r.epoch, l),
                _ => self.become_unattached(now, self.epoch),
            }
            return;
        }
        if r.leader != Some(from) {
            return;
        }
        if self.leader != Some(from) || !matches!(self.role, Role::Follower { .. }) {
            self.become_follower(now, r.epoch, from);
        }
        self.role = Role::Follower { last_heard: now };
        self.fetch_sent = None;
        if let Some((epoch, end)) = r.diverging {
            self.truncate_diverged(epoch, end);
            return;
        }
        if let Some(id) = r.snapshot {
            // Behind the leader's log start: its snapshot first.
            self.fetching = Some((id, Vec::new()));
            return;
        }
        if r.start != self.log.end() {
            return; // an answer to an older fetch: the log has moved since
        }
        self.append_fetched(r.entries);
        self.high_watermark = self.high_watermark.max(r.high_watermark.min(self.log.end()));
        self.leader_hw = Some(r.high_watermark);
    }

    /// A leader answers a chunk of its snapshot.
    fn on_fetch_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        epoch: Epoch,
        id: SnapshotId,
        position: u64,
        request: u64,
    ) {
        self.observe_epoch(now, epoch, None);
        let mut c = SnapshotChunk {
            request,
            epoch: self.epoch,
            leader: self.leader,
            refused: epoch < self.epoch || !self.is_leader(),
            id: self.snapshot.as_ref().map(|(id, _)| *id),
            size: 0,
            position,
            data: Vec::new(),
        };
        if let (false, Some((have, data))) = (c.refused, &self.snapshot) {
            c.size = data.len() as u64;
            if *have == id {
                let from_at = usize::try_from(position).unwrap_or(usize::MAX).min(data.len());
                let to = from_at.saturating_add(SNAPSHOT_CHUNK_BYTES).min(data.len());
                c.data = data[from_at..to].to_vec();
            }
            if let Role::Leader(l) = &mut self.role {
                if let Some(p) = l.progress.get_mut(&from) {
                    p.last_fetch = now;
                }
            }
        }
        self.send(from, Message::FetchSnapshotResponse(c));
    }

    /// A chunk of the leader's snapshot: appended; once it is whole, it is handed over to be
    /// made durable.
    fn on_snapshot_chunk(&mut self, now: Instant, from: NodeId, c: SnapshotChunk) {
        self.observe_epoch(now, c.epoch, c.leader);
        let current = self.fetch_sent.is_some_and(|(_, id)| id == c.request) && self.leader == Some(from);
        if c.epoch < self.epoch || self.is_leader() || !current {
            return;
        }
        self.fetch_sent = None;
        if c.refused {
            self.fetching = None;
            return;
        }
        self.role = Role::Follower { last_heard: now };
        let Some((id, buf)) = self.fetching.as_mut() else { return };
        if c.id != Some(*id) || c.size > crate::limits::METADATA_LOG_BYTES_MAX {
            // The leader has taken a newer snapshot: a fetch from the log tells which. (One
            // over the size a metadata file may have is refused, as at start-up.)
            self.fetching = None;
            return;
        }
        if c.position == buf.len() as u64 && buf.len() as u64 + c.data.len() as u64 <= c.size {
            buf.extend_from_slice(&c.data);
        }
        if buf.len() as u64 == c.size && c.size > 0 {
            let (id, data) = self.fetching.take().expect("checked");
            self.installing = Some(id);
            self.write(Write::InstallSnapshot { id, data });
        }
    }

    /// Making a fetched snapshot durable failed: it is fetched again.
    pub fn snapshot_install_failed(&mut self, now: Instant) {
        self.installing = None;
        self.after(now);
    }

    /// The node's own snapshot `id` is durable: members behind the log start are served it.
    pub fn snapshot_durable(&mut self, id: SnapshotId, data: bytes::Bytes) {
        if self.snapshot.as_ref().is_none_or(|(have, _)| id.0 > have.0) {
            self.snapshot = Some((id, data));
        }
    }

    /// The newest snapshot durable here, if any.
    pub fn snapshot_id(&self) -> Option<SnapshotId> {
        self.snapshot.as_ref().map(|(id, _)| *id)
    }

    /// The node no longer keeps the entries below `start` (its snapshot holds them): nor
    /// does the log in memory. Only committed entries covered by a durable snapshot go.
    pub fn discard_prefix(&mut self, start: Offset) {
        let covered = self.snapshot.as_ref().is_some_and(|((end, _), _)| start <= *end);
        if covered && start <= self.high_watermark && self.log.drop_prefix(start) {
            self.durable_end = self.durable_end.max(start);
        }
    }

    /// A snapshot fetched from the leader is durable. Unless this log already holds its last
    /// entry, the log is emptied to start at its end (the entries it had there and after
    /// may differ from the leader's; the snapshot holds what was committed).
    pub fn snapshot_installed(&mut self, now: Instant, id: SnapshotId, data: bytes::Bytes) {
        if self.installing == Some(id) {
            self.installing = None;
        }
        let (end, epoch) = id;
        if self.log.epoch_at(end - 1) != Some(epoch) || self.log.end() < end {
            self.log.reset(end, epoch);
            self.durable_end = end;
            self.generation += 1;
            self.write(Write::Reset { start: end, start_epoch: epoch });
        }
        self.high_watermark = self.high_watermark.max(end);
        self.snapshot_durable(id, data);
        self.after(now);
    }

    fn truncate_diverged(&mut self, epoch: Epoch, leader_end: Offset) {
        let (_, own_end) = self.log.end_offset_for(epoch);
        let to = leader_end.min(own_end);
        if to < self.high_watermark {
            tracing::error!(to, hw = self.high_watermark, "quorum: refusing to truncate committed entries");
            return;
        }
        self.truncate(to);
    }

    fn truncate(&mut self, to: Offset) {
        if to >= self.log.end() {
            return;
        }
        self.log.truncate(to);
        self.durable_end = self.durable_end.min(to);
        self.generation += 1;
        self.write(Write::Truncate { end: to });
    }

    fn append_fetched(&mut self, entries: Vec<Entry>) {
        let offset = self.log.end();
        let mut taken = Vec::with_capacity(entries.len());
        for e in entries {
            if e.epoch < self.log.last_epoch() || e.epoch > self.epoch {
                tracing::error!(epoch = e.epoch, "quorum: a fetched entry's epoch is out of order; rest dropped");
                break;
            }
            self.log.append(e.clone());
            taken.push(e);
        }
        if !taken.is_empty() {
            self.write(Write::Append { offset, entries: taken });
        }
    }

    fn maybe_fetch(&mut self, now: Instant) {
        let Some(leader) = self.leader.filter(|&l| l != self.cfg.node_id) else { return };
        let reports_durable = self.durable_end == self.log.end() || mutants::active(Mutant::ReportBeforeSync);
        if self.fetch_sent.is_some() || !reports_durable || matches!(self.role, Role::Candidate { .. }) {
            return;
        }
        if self.installing.is_some() {
            return;
        }
        let request = self.next_request;
        self.next_request += 1;
        self.fetch_sent = Some((now, request));
        let msg = match &self.fetching {
            Some((id, buf)) => {
                Message::FetchSnapshot { epoch: self.epoch, id: *id, position: buf.len() as u64, request }
            }
            None => self.fetch_request(request),
        };
        self.send(leader, msg);
    }

    fn fetch_request(&self, request: u64) -> Message {
        Message::Fetch { epoch: self.epoch, fetch_offset: self.log.end(), last_epoch: self.log.last_epoch(), request }
    }

    fn refetch_ms(&self) -> u64 {
        self.cfg.fetch_max_wait_ms * 2
    }

    // ---------------------------------------------------------------- storage and output

    fn set_state(&mut self, epoch: Epoch, voted_for: Option<NodeId>, leader: Option<NodeId>) {
        self.epoch = epoch;
        self.voted_for = voted_for;
        self.leader = leader;
        self.state_version += 1;
        self.write(Write::State { epoch, voted_for });
    }

    fn write(&mut self, w: Write) {
        self.actions.push_back(Action::Write(w));
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        self.actions.push_back(Action::Send { to, msg });
    }

    fn others(&self) -> Vec<NodeId> {
        self.cfg.voters.iter().copied().filter(|&v| v != self.cfg.node_id).collect()
    }

    /// After every input: finish an election, fetch, sync what needs it, move the high
    /// watermark and wake the fetches that can now be answered.
    fn after(&mut self, now: Instant) {
        self.maybe_won(now);
        self.maybe_fetch(now);
        let dirty = self.log.end() > self.durable_end || self.state_version > self.state_durable;
        if self.sync.is_none() && dirty && self.storage_retry_at.is_none() {
            let id = self.next_sync_id;
            self.next_sync_id += 1;
            self.sync = Some(InFlightSync {
                id,
                log_end: self.log.end(),
                generation: self.generation,
                state_version: self.state_version,
            });
            self.write(Write::Sync { id });
        }
        let before = self.high_watermark;
        self.advance_high_watermark();
        let moved = std::mem::take(&mut self.appended) || self.high_watermark != before;
        self.answer_parked(now, moved);
        self.invariants();
    }

    pub fn invariants(&self) {
        self.log.invariants();
        assert!(self.durable_end <= self.log.end(), "durable end within the log");
        assert!(self.high_watermark <= self.log.end(), "high watermark within the log");
        assert!(self.log.last_epoch() <= self.epoch, "no entry from a future epoch");
        if let Role::Leader(l) = &self.role {
            assert_eq!(self.leader, Some(self.cfg.node_id));
            assert_eq!(self.voted_for, Some(self.cfg.node_id), "a leader voted for itself");
            if l.epoch_start >= self.log.start() {
                assert_eq!(
                    self.log.epoch_at(l.epoch_start),
                    Some(self.epoch),
                    "the epoch starts with its LeaderChange"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
