//! Unit tests with a tiny driver: messages are delivered in send order unless a link is cut,
//! storage completes every sync at once, and time moves only when a test says so. The
//! simulator (sluice-sim's quorum scenario) covers faults, crashes and timing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;

struct Net {
    nodes: BTreeMap<NodeId, Quorum>,
    disks: BTreeMap<NodeId, Persisted>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    cut: BTreeSet<(NodeId, NodeId)>,
    now: Instant,
    /// Snapshots fetched and installed: (by whom, which).
    installed: Vec<(NodeId, SnapshotId)>,
}

impl Net {
    fn new(ids: &[NodeId]) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            now: Instant::from_millis(1),
            installed: Vec::new(),
        };
        for &id in ids {
            net.start(id, Persisted::default());
        }
        net
    }

    fn start(&mut self, id: NodeId, persisted: Persisted) {
        let voters: Vec<NodeId> = (1..=self.size()).collect();
        let q = Quorum::new(QuorumConfig::new(id, voters), persisted.clone(), id as u64, self.now);
        self.disks.insert(id, persisted);
        self.nodes.insert(id, q);
        self.drain(id);
    }

    fn size(&self) -> i32 {
        3.max(self.nodes.len() as i32)
    }

    /// Applies a node's writes to its disk (all durable at once) and queues its messages.
    fn drain(&mut self, id: NodeId) {
        while let Some(a) = self.nodes.get_mut(&id).unwrap().poll_action() {
            match a {
                Action::Send { to, msg } => self.queue.push_back((id, to, msg)),
                Action::Write(w) => {
                    let d = self.disks.get_mut(&id).unwrap();
                    match w {
                        Write::State { epoch, voted_for } => (d.epoch, d.voted_for) = (epoch, voted_for),
                        Write::Append { offset, entries } => {
                            assert_eq!((offset - d.start) as usize, d.entries.len(), "appends land at the log end");
                            d.entries.extend(entries);
                        }
                        Write::Truncate { end } => d.entries.truncate((end - d.start) as usize),
                        Write::Reset { start, start_epoch } => {
                            (d.start, d.start_epoch) = (start, start_epoch);
                            d.entries.clear();
                        }
                        Write::InstallSnapshot { id: snap, data } => {
                            self.installed.push((id, snap));
                            let now = self.now;
                            self.nodes.get_mut(&id).unwrap().snapshot_installed(now, snap, data.into());
                        }
                        Write::Sync { id: s } => {
                            let now = self.now;
                            self.nodes.get_mut(&id).unwrap().handle_synced(now, s);
                        }
                    }
                }
            }
        }
    }

    fn deliver_all(&mut self) {
        let mut n = 0;
        while let Some((from, to, msg)) = self.queue.pop_front() {
            n += 1;
            assert!(n < 100_000, "messages never stop");
            if self.cut.contains(&(from, to)) || !self.nodes.contains_key(&to) {
                continue;
            }
            let bytes = postcard::to_allocvec(&msg).unwrap();
            let msg: Message = postcard::from_bytes(&bytes).unwrap();
            let now = self.now;
            self.nodes.get_mut(&to).unwrap().handle_message(now, from, msg);
            self.drain(to);
        }
    }

    /// Moves time forward in steps, firing timers and delivering everything.
    fn run_ms(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.now = self.now.plus_millis(10);
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let now = self.now;
                let q = self.nodes.get_mut(&id).unwrap();
                if q.poll_timeout().is_some_and(|t| t <= now) {
                    q.handle_timeout(now);
                }
                self.drain(id);
            }
            self.deliver_all();
        }
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|q| q.is_leader()).map(|q| q.node_id()).collect()
    }

    fn isolate(&mut self, id: NodeId) {
        for &o in self.nodes.keys() {
            self.cut.insert((id, o));
            self.cut.insert((o, id));
        }
    }

    fn propose(&mut self, leader: NodeId, data: &[u8]) -> Offset {
        let now = self.now;
        let o = self.nodes.get_mut(&leader).unwrap().propose(now, data.to_vec()).unwrap();
        self.drain(leader);
        o
    }
}

fn record(q: &Quorum, o: Offset) -> Option<Vec<u8>> {
    match &q.log().entry(o)?.kind {
        EntryKind::Record(r) => Some(r.clone()),
        EntryKind::LeaderChange { .. } => None,
    }
}

#[test]
fn a_sole_voter_leads_at_once_and_commits_on_its_own_sync() {
    let mut q = Quorum::new(QuorumConfig::new(1, [1]), Persisted::default(), 7, Instant::ZERO);
    let mut writes = Vec::new();
    // Leadership needs the vote on disk first.
    while let Some(a) = q.poll_action() {
        writes.push(a);
    }
    assert!(!q.is_leader(), "not before its vote is durable");
    assert!(matches!(
        writes[..],
        [Action::Write(Write::State { epoch: 1, voted_for: Some(1) }), Action::Write(Write::Sync { id: 1 })]
    ));
    q.handle_synced(Instant::ZERO, 1);
    assert!(q.is_leader());
    let o = q.propose(Instant::ZERO, b"x".to_vec()).unwrap();
    assert_eq!(o, 1, "offset 0 is the LeaderChange entry");
    assert_eq!(q.high_watermark(), 0, "nothing committed before a sync");
    // One sync in flight at a time: the first covers the LeaderChange entry, the next the rest.
    let mut syncs = 0;
    while let Some(id) = std::iter::from_fn(|| q.poll_action()).find_map(|a| {
        if let Action::Write(Write::Sync { id }) = a {
            Some(id)
        } else {
            None
        }
    }) {
        q.handle_synced(Instant::ZERO, id);
        syncs += 1;
    }
    assert_eq!(syncs, 2);
    assert_eq!(q.high_watermark(), 2);
}

#[test]
fn three_voters_elect_one_leader_and_replicate() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_ms(3_000);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    let l = leaders[0];
    let offs: Vec<Offset> = (0..5u8).map(|i| net.propose(l, &[i])).collect();
    net.run_ms(100);
    for q in net.nodes.values() {
        assert_eq!(q.high_watermark(), offs[4] + 1, "node {} learned the commit", q.node_id());
        for (i, &o) in offs.iter().enumerate() {
            assert_eq!(record(q, o), Some(vec![i as u8]));
        }
        assert_eq!(q.leader(), Some(l));
    }
}

#[test]
fn an_isolated_leader_resigns_and_the_rest_elect_another() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_ms(3_000);
    let old = net.leaders()[0];
    let old_epoch = net.nodes[&old].epoch();
    net.isolate(old);
    // Uncommittable: the old leader cannot reach anyone.
    let lost = net.propose(old, b"lost");
    net.run_ms(6_000);
    assert!(!net.nodes[&old].is_leader(), "check-quorum: the cut-off leader resigned");
    let new: Vec<NodeId> = net.leaders();
    assert_eq!(new.len(), 1);
    assert_ne!(new[0], old);
    assert!(net.nodes[&new[0]].epoch() > old_epoch);
    let o = net.propose(new[0], b"kept");
    net.cut.clear();
    net.run_ms(3_000);
    for q in net.nodes.values() {
        assert_eq!(record(q, o), Some(b"kept".to_vec()), "node {}", q.node_id());
        assert!(q.high_watermark() > o);
        if lost != o {
            assert_ne!(record(q, lost), Some(b"lost".to_vec()), "the uncommitted entry was replaced");
        }
    }
    assert_eq!(
        net.nodes[&old].log().entry(lost).map(|e| e.epoch),
        net.nodes[&new[0]].log().entry(lost).map(|e| e.epoch)
    );
}

#[test]
fn a_partitioned_voter_cannot_depose_a_healthy_leader() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_ms(3_000);
    let l = net.leaders()[0];
    let epoch = net.nodes[&l].epoch();
    let lone = (1..=3).find(|&i| i != l).unwrap();
    net.isolate(lone);
    net.run_ms(10_000);
    assert_eq!(net.nodes[&lone].epoch(), epoch, "pre-votes change no epoch");
    net.cut.clear();
    net.run_ms(3_000);
    assert_eq!(net.leaders(), vec![l], "the healthy leader kept its place");
    assert_eq!(net.nodes[&l].epoch(), epoch);
    assert_eq!(net.nodes[&lone].leader(), Some(l));
}

#[test]
fn a_follower_truncates_what_diverged_and_takes_the_leaders_entries() {
    let e = |epoch, b: u8| Entry { epoch, kind: EntryKind::Record(vec![b]) };
    let mut net = Net::new(&[]);
    // Node 3 holds an entry of epoch 2 that nobody else has; 1 and 2 moved on to epoch 3.
    let common = vec![e(1, 0), e(1, 1)];
    let ahead = Persisted {
        epoch: 3,
        voted_for: None,
        start: 0,
        start_epoch: 0,
        entries: [common.clone(), vec![e(3, 2)]].concat(),
    };
    net.start(1, ahead.clone());
    net.start(2, ahead);
    net.start(
        3,
        Persisted {
            epoch: 2,
            voted_for: None,
            start: 0,
            start_epoch: 0,
            entries: [common, vec![e(2, 9), e(2, 9)]].concat(),
        },
    );
    net.run_ms(5_000);
    let l = net.leaders()[0];
    assert_ne!(l, 3, "node 3's log is behind by epoch: it cannot win");
    let o = net.propose(l, b"z");
    net.run_ms(200);
    let lead = net.nodes[&l].log().slice(0, 100);
    assert_eq!(net.nodes[&3].log().slice(0, 100), lead, "node 3's log now matches the leader's");
    assert!(net.disks[&3].entries == lead, "and so does its disk");
    assert!(net.nodes[&3].high_watermark() > o);
}

#[test]
fn votes_need_an_up_to_date_log_and_are_durable_before_they_are_sent() {
    let e = |epoch| Entry { epoch, kind: EntryKind::Record(vec![]) };
    let p = Persisted { epoch: 2, voted_for: None, start: 0, start_epoch: 0, entries: vec![e(1), e(2)] };
    let mut q = Quorum::new(QuorumConfig::new(1, [1, 2, 3]), p, 1, Instant::ZERO);
    while q.poll_action().is_some() {}
    let now = Instant::from_millis(5_000); // long past any leader
    q.handle_message(now, 2, Message::Vote { epoch: 3, last_epoch: 1, log_end: 9, pre_vote: false });
    let acts: Vec<Action> = std::iter::from_fn(|| q.poll_action()).collect();
    assert!(acts.contains(&Action::Send {
        to: 2,
        msg: Message::VoteResponse { epoch: 3, leader: None, granted: false, pre_vote: false }
    }));
    // The move to epoch 3 is being synced (sync 1); the vote is written after it.
    q.handle_message(now, 3, Message::Vote { epoch: 3, last_epoch: 2, log_end: 2, pre_vote: false });
    let acts: Vec<Action> = std::iter::from_fn(|| q.poll_action()).collect();
    assert_eq!(
        acts,
        vec![Action::Write(Write::State { epoch: 3, voted_for: Some(3) })],
        "no grant before the vote is durable"
    );
    q.handle_synced(now, 1);
    let acts: Vec<Action> = std::iter::from_fn(|| q.poll_action()).collect();
    assert_eq!(acts, vec![Action::Write(Write::Sync { id: 2 })], "sync 1 did not cover the vote");
    q.handle_synced(now, 2);
    let acts: Vec<Action> = std::iter::from_fn(|| q.poll_action()).collect();
    assert!(acts.contains(&Action::Send {
        to: 3,
        msg: Message::VoteResponse { epoch: 3, leader: None, granted: true, pre_vote: false }
    }));
    // One vote per epoch.
    q.handle_message(now, 2, Message::Vote { epoch: 3, last_epoch: 5, log_end: 9, pre_vote: false });
    let acts: Vec<Action> = std::iter::from_fn(|| q.poll_action()).collect();
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Send { to: 2, msg: Message::VoteResponse { granted: false, .. } })));
}

#[test]
fn restart_keeps_the_epoch_and_vote_and_the_log_wins_over_a_lost_state_write() {
    let e = |epoch| Entry { epoch, kind: EntryKind::Record(vec![]) };
    let q = Quorum::new(
        QuorumConfig::new(1, [1, 2, 3]),
        Persisted { epoch: 4, voted_for: Some(2), start: 0, start_epoch: 0, entries: vec![e(3)] },
        1,
        Instant::ZERO,
    );
    assert_eq!((q.epoch(), q.voted_for()), (4, Some(2)));
    let q = Quorum::new(
        QuorumConfig::new(1, [1, 2, 3]),
        Persisted { epoch: 2, voted_for: Some(2), start: 0, start_epoch: 0, entries: vec![e(5)] },
        1,
        Instant::ZERO,
    );
    assert_eq!((q.epoch(), q.voted_for()), (5, None), "the state on disk was older than the log");
}

#[test]
fn a_voter_stranded_at_a_newer_epoch_brings_the_quorum_past_it() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_ms(3_000);
    let l = net.leaders()[0];
    let stranded = (1..=3).find(|&i| i != l).unwrap();
    // As if it had stood for election at epoch 9 where nobody heard it: its pre-votes are
    // refused by voters that follow the leader, and it cannot follow an older epoch.
    let mut disk = net.disks[&stranded].clone();
    (disk.epoch, disk.voted_for) = (9, Some(stranded));
    net.start(stranded, disk);
    net.run_ms(10_000);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1);
    let epoch = net.nodes[&leaders[0]].epoch();
    assert!(epoch > 9, "the quorum moved past the stranded epoch: {epoch}");
    let o = net.propose(leaders[0], b"after");
    net.run_ms(1_000);
    for q in net.nodes.values() {
        assert_eq!((q.epoch(), q.leader()), (epoch, Some(leaders[0])), "node {}", q.node_id());
        assert_eq!(record(q, o), Some(b"after".to_vec()));
    }
}

#[test]
fn a_member_behind_the_log_start_fetches_the_snapshot_and_goes_on_from_its_end() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_ms(3_000);
    let l = net.leaders()[0];
    let lone = (1..=3).find(|&i| i != l).unwrap();
    net.isolate(lone);
    let mut last = 0;
    for i in 0..40u8 {
        last = net.propose(l, &[i]);
    }
    net.run_ms(1_000);
    // The two that have everything take a snapshot at the leader's high watermark and forget
    // the log before it; a snapshot two chunks long.
    let hw = net.nodes[&l].high_watermark();
    assert!(hw > last, "committed by the majority");
    let data = bytes::Bytes::from(vec![7u8; SNAPSHOT_CHUNK_BYTES + 10]);
    let id = (hw, net.nodes[&l].epoch());
    for q in net.nodes.values_mut().filter(|q| q.node_id() != lone) {
        q.snapshot_durable(id, data.clone());
        q.discard_prefix(hw);
        assert_eq!(q.log().start(), hw);
        q.invariants();
    }
    assert_eq!(net.nodes[&lone].log().end(), 1, "the lone member has only the first leader's entry");
    net.cut.clear();
    net.run_ms(3_000);
    assert_eq!(net.installed, vec![(lone, id)], "it fetched the snapshot, once");
    let after = net.propose(l, b"after");
    net.run_ms(1_000);
    let q = &net.nodes[&lone];
    q.invariants();
    assert_eq!((q.log().start(), q.log().start_epoch()), id, "its log starts at the snapshot's end");
    assert_eq!(record(q, after), Some(b"after".to_vec()));
    assert!(q.high_watermark() > after);
    assert_eq!(net.disks[&lone].start, hw, "and so does the log on its disk");
    assert_eq!(net.nodes[&lone].snapshot_id(), Some(id), "it can serve the snapshot in turn");
}

#[test]
fn the_fetch_that_commits_is_answered_with_the_commit() {
    // A follower that learned a commit only at its next fetch never learns it if the leader
    // stops first: a stopping controller's last records (its own fence and ISR changes) would
    // be committed everywhere yet applied by no one else, and its successor would wait out its
    // own shutdown for them.
    let mut net = Net::new(&[1, 2, 3]);
    net.run_ms(3_000);
    let l = net.leaders()[0];
    let f = (1..=3).find(|&i| i != l).unwrap();
    let away = (1..=3).find(|&i| i != l && i != f).unwrap();
    net.isolate(away); // the leader's majority is itself and f
    net.run_ms(100);
    let deliver_one = |net: &mut Net| {
        let (from, to, msg) = net.queue.pop_front().expect("a message in flight");
        if !net.cut.contains(&(from, to)) {
            let now = net.now;
            net.nodes.get_mut(&to).unwrap().handle_message(now, from, msg);
            net.drain(to);
        }
    };
    // f is sent a record, and acknowledges it while the leader's log has grown past it: the
    // answer to that acknowledgement carries the next record.
    net.propose(l, b"a");
    while net.queue.front().is_some_and(|(from, to, _)| !(*from == f && *to == l)) {
        deliver_one(&mut net);
    }
    let last = net.propose(l, b"b");
    // Every message until the leader has committed everything.
    while net.nodes[&l].high_watermark() <= last {
        deliver_one(&mut net);
    }
    // Then the leader stops listening: only what it has sent already reaches f.
    net.isolate(l);
    net.cut.remove(&(l, f));
    net.queue.retain(|(from, _, _)| *from == l);
    net.deliver_all();
    assert_eq!(
        net.nodes[&f].high_watermark(),
        last + 1,
        "f learned the last commit from the answer to its own acknowledgement"
    );
}

#[test]
fn a_resigning_leader_is_replaced_at_once_and_stands_no_more() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_ms(3_000);
    let old = net.leaders()[0];
    let old_epoch = net.nodes[&old].epoch();
    let committed = net.propose(old, b"before");
    net.run_ms(100);
    let now = net.now;
    net.nodes.get_mut(&old).unwrap().resign(now);
    net.drain(old);
    net.deliver_all();
    // Well within one fetch timeout (without a resignation the followers wait that long).
    let fetch_timeout = net.nodes[&old].cfg.fetch_timeout_ms;
    net.run_ms(fetch_timeout / 2);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "one new leader: {leaders:?}");
    assert_ne!(leaders[0], old, "the resigned leader does not stand again");
    let new = leaders[0];
    assert!(net.nodes[&new].epoch() > old_epoch);
    assert_eq!(record(&net.nodes[&new], committed), Some(b"before".to_vec()), "the commit survives");
    // It follows the new leader, and votes, but never stands, even when cut off from it.
    assert_eq!(net.nodes[&old].leader(), Some(new));
    net.isolate(new);
    net.run_ms(10 * fetch_timeout);
    let leaders: Vec<_> = net.leaders().into_iter().filter(|l| *l != new).collect();
    assert_eq!(leaders.len(), 1, "the third voter is elected with the resigned one's vote: {leaders:?}");
    assert_ne!(leaders[0], old);
}
