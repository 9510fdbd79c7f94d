"""Transactions on a three-node Sluice cluster, with confluent-kafka's transactional producer
(its defaults, `transactional.id` set) and read_committed consumers.

A topic's partitions are led by different brokers, and the transaction's coordinator (the
leader of its `__transaction_state` partition) and the group's coordinator (the leader of its
`__consumer_offsets` partition) are wherever their partitions landed: the coordinator writes
each commit or abort marker where it leads the partition and asks the partition's leader
for the others, and EndTxn is answered once every marker is durable. Checked: a committed
transaction's records are all read by a read_committed consumer, an aborted one's none, and
offsets sent to a committed transaction are the group's committed offsets afterwards (those
of an aborted one never are).
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import unique_topic
from test_java import jclient  # noqa: F401  (a fixture)
from test_replication import (ALL, cluster, cluster_factory, controller_of, create_topic,  # noqa: F401
                              java_partition, topic_state, wait_fully_replicated, wait_until)


def read_committed(bootstrap, topic, partitions, want, timeout=60):
    """Every record a read_committed consumer returns from the start of each partition,
    until `want` records have come and the last stable offsets are reached."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-" + topic, "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got, eof = [], set()
        deadline = time.monotonic() + timeout
        while len(got) < want or len(eof) < partitions:
            assert time.monotonic() < deadline, "read %d of %d committed records in %d s" % (len(got), want, timeout)
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    eof.add(m.partition())
                continue
            eof.discard(m.partition())
            got.append((m.partition(), m.value()))
        return got
    finally:
        c.close()


@pytest.mark.timeout(150)
def test_transactions_span_the_brokers(cluster):
    controller_of(cluster)
    topic = unique_topic("ctxn")
    create_topic(cluster.bootstrap, topic, 3, config={"min.insync.replicas": "2"})
    state = wait_fully_replicated(cluster.nodes, topic, 3)
    assert sorted(v.leader for v in state.values()) == ALL, "the partitions' leaders are spread: %s" % state

    group = "ctxn-group-" + topic
    p = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": "ctxn-" + topic})
    meta_consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group})
    try:
        p.init_transactions(60)
        meta = meta_consumer.consumer_group_metadata()
        # Committed: ten records on every partition, and offsets for the group.
        p.begin_transaction()
        for q in range(3):
            for i in range(10):
                p.produce(topic, value=b"c-%d-%d" % (q, i), partition=q)
        p.send_offsets_to_transaction([TopicPartition(topic, q, 10 + q) for q in range(3)], meta, 30)
        p.commit_transaction(60)
        # Aborted: five more records on every partition, and other offsets.
        p.begin_transaction()
        for q in range(3):
            for i in range(5):
                p.produce(topic, value=b"a-%d-%d" % (q, i), partition=q)
        p.send_offsets_to_transaction([TopicPartition(topic, q, 99) for q in range(3)], meta, 30)
        p.flush(30)
        p.abort_transaction(60)
        # Committed again, after the abort.
        p.begin_transaction()
        for q in range(3):
            p.produce(topic, value=b"d-%d" % q, partition=q)
        p.commit_transaction(60)
    finally:
        meta_consumer.close()

    got = read_committed(cluster.bootstrap, topic, 3, 33)
    want = sorted([(q, b"c-%d-%d" % (q, i)) for q in range(3) for i in range(10)] + [(q, b"d-%d" % q) for q in range(3)])
    assert sorted(got) == want, "read_committed returned %d records, aborted ones: %r" % (
        len(got), [g for g in got if g[1].startswith(b"a-")][:5])

    probe = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group})
    try:
        committed = wait_until("the group's offsets from the committed transaction are visible", lambda: (
            lambda c: c if c == {q: 10 + q for q in range(3)} else None)(
                {tp.partition: tp.offset for tp in probe.committed([TopicPartition(topic, q) for q in range(3)],
                                                                   timeout=10)}), timeout=30)
        print("\ncommitted offsets of %s: %s" % (group, committed))
    finally:
        probe.close()


@pytest.mark.timeout(180)
def test_transaction_survives_its_coordinators_death(cluster):
    """A transaction is open on three partitions (led by the three brokers) when the broker
    coordinating it (leading its `__transaction_state` partition, three replicas) is killed
    with SIGKILL. Another replica takes the partition over and reads the transaction back;
    the producer's commit_transaction finds it and the transaction commits: a read_committed
    consumer reads all of it. The producer then runs another transaction."""
    controller_of(cluster)
    topic = unique_topic("ctxnfail")
    create_topic(cluster.bootstrap, topic, 3, config={"min.insync.replicas": "2"})
    wait_fully_replicated(cluster.nodes, topic, 3)
    tid = "ctxnfail-" + topic
    p = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": tid})
    p.init_transactions(60)
    p.begin_transaction()
    for q in range(3):
        for i in range(10):
            p.produce(topic, value=b"x-%d-%d" % (q, i), partition=q)
    assert p.flush(30) == 0

    txn_part = java_partition(tid)
    state = wait_until("__transaction_state-%d has 3 replicas in sync" % txn_part,
                       lambda: (lambda s: s if s and s[txn_part].isr == ALL else None)(
                           topic_state(cluster.node(1), "__transaction_state")))
    victim = state[txn_part].leader
    cluster.node(victim).kill9()
    t_kill = time.monotonic()
    p.commit_transaction(90)
    print("\ncoordinator node %d killed; commit_transaction returned %.2f s later" % (victim, time.monotonic() - t_kill))

    p.begin_transaction()
    for q in range(3):
        p.produce(topic, value=b"y-%d" % q, partition=q)
    p.commit_transaction(60)
    live = ",".join(b.bootstrap for b in cluster.nodes if b.alive())
    got = read_committed(live, topic, 3, 33)
    want = sorted([(q, b"x-%d-%d" % (q, i)) for q in range(3) for i in range(10)] + [(q, b"y-%d" % q) for q in range(3)])
    assert sorted(got) == want, (len(got), got[:5])


@pytest.mark.timeout(150)
def test_partition_leaders_verify_transactions_with_their_coordinator(cluster):
    """KIP-890's defense where the transaction's coordinator is another broker (raw Produce
    v8, AddPartitionsToTxn v1 and InitProducerId v1). A transactional batch for a partition
    its transaction does not hold is refused with INVALID_TXN_STATE, and one from a producer
    epoch fenced since with INVALID_PRODUCER_EPOCH: nothing is written, and no transaction is
    left open that no coordinator would end (the last stable offset stays at the high
    watermark). Once the partition is added, the batch is taken. Before this check the
    partition took such batches unchecked: the last stable offset stayed behind them for
    good."""
    import wire
    from wire import Conn, idempotent_batch

    controller_of(cluster)
    topic = unique_topic("verify")
    create_topic(cluster.bootstrap, topic, 3, config={"min.insync.replicas": "2"})
    state = wait_fully_replicated(cluster.nodes, topic, 3)
    assert sorted(v.leader for v in state.values()) == ALL, "the partitions' leaders are spread: %s" % state
    warm = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": "warm-" + topic})
    warm.init_transactions(60)  # makes __transaction_state
    by_id = {int(n.overrides["node.id"]): n for n in cluster.nodes}

    tid = "verify-" + topic

    def init(timeout=60):
        """InitProducerId at the transaction's coordinator: (its node id, producer id, epoch)."""
        deadline = time.monotonic() + timeout
        while True:
            for nid, n in sorted(by_id.items()):
                with Conn.to(n.bootstrap) as c:
                    d = c.init_producer_id(1, transactional_id=tid)
                if d["error"] == 0:
                    return nid, d["producer_id"], d["producer_epoch"]
            assert time.monotonic() < deadline, "no coordinator took InitProducerId: last %s" % d
            time.sleep(0.2)

    coordinator, pid, epoch = init()
    remote = sorted(p for p, v in state.items() if v.leader != coordinator)
    assert len(remote) == 2, state
    r1, r2 = remote

    def produce(partition, producer_epoch, seq, tag):
        b = idempotent_batch([b"%s-%d" % (tag.encode(), i) for i in range(3)], pid, producer_epoch, seq,
                             attributes=0x10)
        with Conn.to(by_id[state[partition].leader].bootstrap) as c:
            code = c.produce_v(topic, partition, b, version=8, transactional_id=tid)["error"]
        return wire.ERROR_NAMES.get(code, code)

    def offsets(partition):
        with Conn.to(by_id[state[partition].leader].bootstrap) as c:
            f = c.fetch(topic, partition, 0)
        return f["high_watermark"], f["last_stable_offset"]

    assert produce(r1, epoch, 0, "outside") == "INVALID_TXN_STATE", "a partition the transaction does not hold"
    assert offsets(r1) == (0, 0), "nothing written, no transaction left open"

    with Conn.to(by_id[coordinator].bootstrap) as c:
        assert c.add_partitions_to_txn(tid, pid, epoch, {topic: [r1]}) == {(topic, r1): 0}
    assert produce(r1, epoch, 0, "inside") == "NONE", "verified with the coordinator"
    assert produce(r1, epoch, 3, "inside-more") == "NONE", "the transaction is open on the partition now"
    assert offsets(r1) == (6, 0), "the open transaction holds the last stable offset at its first batch"

    # A second InitProducerId fences the first producer (its open transaction is aborted).
    deadline = time.monotonic() + 60
    while True:
        node, pid2, epoch2 = init()
        if (pid2, epoch2) != (pid, epoch):
            break
        assert time.monotonic() < deadline
    assert (node, pid2) == (coordinator, pid) and epoch2 > epoch, (node, pid2, epoch2)
    wait_until("the aborted transaction's marker ends it on partition %d" % r1,
               lambda: (lambda hw, lso: hw == lso == 7)(*offsets(r1)), timeout=30)

    assert produce(r2, epoch, 0, "zombie") == "INVALID_PRODUCER_EPOCH", "a fenced producer's first batch"
    assert offsets(r2) == (0, 0), "nothing written, no transaction left open"

    # Offsets sent to a transaction, where the group's coordinator is another broker than the
    # transaction's: verified the same way.
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "make-offsets-" + topic})
    try:
        c.committed([TopicPartition(topic, 0)], timeout=30)  # makes __consumer_offsets
    finally:
        c.close()
    offsets_leaders = wait_until("every __consumer_offsets partition has a leader", lambda: (
        lambda s: s if s and len(s) == 50 and all(v.leader >= 0 for v in s.values()) else None)(
        topic_state(cluster.nodes[0], "__consumer_offsets")), timeout=60)
    group = next(g for g in ("verify-group-%d-%s" % (i, topic) for i in range(1000))
                 if offsets_leaders[java_partition(g)].leader != coordinator)
    group_node = by_id[offsets_leaders[java_partition(group)].leader]
    commit = {(topic, r1): 5}

    def txn_commit(producer_epoch):
        # The group's node may not have loaded its offsets partition yet (node 1's metadata is
        # what was waited on): a client retries the coordinator's retriable errors, so do we.
        deadline = time.monotonic() + 15
        while True:
            with Conn.to(group_node.bootstrap) as c:
                code = c.txn_offset_commit(tid, group, pid, producer_epoch, commit)[(topic, r1)]
            if code not in (14, 15, 16) or time.monotonic() > deadline:  # load, not available, not coordinator
                return wire.ERROR_NAMES.get(code, code)
            time.sleep(0.1)

    assert txn_commit(epoch) == "INVALID_PRODUCER_EPOCH", "a fenced producer's offsets"
    assert txn_commit(epoch2) == "INVALID_TXN_STATE", "offsets for a group the transaction does not hold"
    with Conn.to(by_id[coordinator].bootstrap) as c:
        assert c.add_offsets_to_txn(tid, pid, epoch2, group) == 0
    assert txn_commit(epoch2) == "NONE", "verified with the transaction's coordinator"


@pytest.mark.timeout(240)
def test_java_transactions_span_the_brokers(cluster, jclient):
    """The Java client with its defaults: 4.x runs transaction version 2 (the brokers finalize
    it), so its partitions and group offsets join each transaction with the first write there,
    added by the coordinator on the leader's behalf, often another broker; 3.x runs version 1.
    Transactions commit and abort over partitions led by all three brokers; a
    read_committed consumer gets exactly the committed records. Then a consume-transform-
    produce loop (sendOffsetsToTransaction with the consumer's group metadata, rounds 2 and 4
    aborted): the group's committed offsets follow each commit and never an abort."""
    controller_of(cluster)
    topic, src, dst = unique_topic("jctxn"), unique_topic("jcin"), unique_topic("jcout")
    for t in (topic, src, dst):
        create_topic(cluster.bootstrap, t, 3, config={"min.insync.replicas": "2"})
    state = wait_fully_replicated(cluster.nodes, topic, 3)
    assert sorted(v.leader for v in state.values()) == ALL, "the partitions' leaders are spread: %s" % state
    for t in (src, dst):
        wait_fully_replicated(cluster.nodes, t, 3)
    where = "java %s on three brokers" % jclient.version

    plan = ["C20", "A10", "C15", "A5", "C10"]
    res = jclient.run("txn-produce", cluster.bootstrap, "jctxn-" + topic, "%s:3" % topic, ",".join(plan),
                      "--deadline-ms", 150_000, timeout=200)
    assert res.summary is not None and res.summary.get("client_version") == jclient.version, res.describe()
    assert res.rc == 0 and [t["ok"] for t in res.of("txn")] == [True] * len(plan), "%s\n%s" % (
        where, res.describe())
    want = sorted((p, ("x%d|%s|%d|%d" % (i, topic, p, j)).encode())
                  for i, step in enumerate(plan) if step[0] == "C" for p in range(3) for j in range(int(step[1:])))
    got = read_committed(cluster.bootstrap, topic, 3, len(want))
    assert sorted(got) == want, "%s: read_committed returned %d records, want %d; not committed: %r" % (
        where, len(got), len(want), sorted(set(got) - set(want))[:5])

    n = 60
    p = Producer({"bootstrap.servers": cluster.bootstrap})
    for i in range(n):
        p.produce(src, value=b"in-%03d" % i, partition=i % 3)
    assert p.flush(30) == 0
    group = "jcg-" + topic
    res = jclient.run("ctp", cluster.bootstrap, src, dst, group, "jctp-" + topic, n, "--abort-rounds", "2,4",
                      "--max-poll", 10, "--deadline-ms", 150_000, timeout=200)
    assert res.rc == 0 and res.summary.get("done") == n, "%s consume-transform-produce\n%s" % (where, res.describe())
    committed = {}
    rounds = res.of("round")
    assert [r["outcome"] for r in rounds[:4]] == ["commit", "abort", "commit", "abort"], rounds
    for r in rounds:
        assert "error" not in r, "%s: round %s failed: %s" % (where, r["i"], r["error"])
        if r["outcome"] == "abort":
            assert r["after"] == committed, "%s round %d: after abort the committed offsets are %s, want %s" % (
                where, r["i"], r["after"], committed)
        else:
            committed = dict(committed)
            committed.update(r["sent_offsets"])
            assert r["settled"] == committed, "%s round %d: after commit the committed offsets are %s, want %s" % (
                where, r["i"], r["settled"], committed)
    out = read_committed(cluster.bootstrap, dst, 3, n)
    assert sorted(v for _, v in out) == sorted(b"out:in-%03d" % i for i in range(n)), \
        "%s: the read_committed output holds %d records, want each input once" % (where, len(out))
