"""Persistence across clean restarts (SIGTERM) and segment rolling."""

import os
import time

from confluent_kafka.admin import ConfigResource, NewPartitions, ResourceType

from clients import (
    assert_ck_messages_match, ck_admin, ck_consume, ck_create_topic, ck_produce, ck_producer,
    expected_by_partition, make_items, wait_topic_visible,
)
from conftest import unique_topic
from test_crash import assert_kafka_layout, read_segments_strict


def _stop_cleanly(broker):
    t0 = time.monotonic()
    rc, clean = broker.stop(timeout=10)
    assert clean, "broker did not exit within 10s of SIGTERM"
    assert rc in (0, 143), "broker exit code after SIGTERM: %s (want 0)" % rc
    return time.monotonic() - t0


def test_restart_keeps_topics_data_and_partition_counts(broker):
    admin = ck_admin(broker.bootstrap)
    topics = {unique_topic("rs-a"): 1, unique_topic("rs-b"): 3, unique_topic("rs-c"): 2}
    for t, n in topics.items():
        ck_create_topic(admin, t, n, config={"retention.ms": "86400000"} if n == 3 else None)
    t_a, t_b, t_c = list(topics)
    admin.create_partitions([NewPartitions(t_c, 4)], request_timeout=15)[t_c].result(timeout=15)
    topics[t_c] = 4
    wait_topic_visible(admin, t_c, 4)
    doomed = unique_topic("rs-deleted")
    ck_create_topic(admin, doomed, 2)
    admin.delete_topics([doomed], request_timeout=15)[doomed].result(timeout=15)

    base_ts = int(time.time() * 1000) - 100_000
    written = {}
    for t, n in topics.items():
        items = make_items(500 * n, list(range(n)), prefix=t, base_ts=base_ts)
        reports = ck_produce(ck_producer(broker.bootstrap, **{"compression.type": "lz4" if n == 3 else "none"}),
                             t, items)
        assert all(r.err is None for r in reports)
        written[t] = items

    for cycle in range(2):
        secs = _stop_cleanly(broker)
        assert secs < 10
        broker.start()
        admin = ck_admin(broker.bootstrap)
        md = admin.list_topics(timeout=10)
        assert doomed not in md.topics, "deleted topic %s came back after restart" % doomed
        for t, n in topics.items():
            assert t in md.topics, "topic %s lost after restart (cycle %d)" % (t, cycle)
            assert len(md.topics[t].partitions) == n, (t, len(md.topics[t].partitions), n)
            want = expected_by_partition(written[t])
            got = ck_consume(broker.bootstrap, t, {p: 0 for p in range(n)},
                             expected_counts={p: len(v) for p, v in want.items()})
            for p in range(n):
                assert_ck_messages_match(got[p], want[p])
            assert_kafka_layout(broker.partition_dir(t, 0))
        cfg = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, t_b)],
                                          request_timeout=15).values())[0].result(timeout=15)
        assert cfg["retention.ms"].value == "86400000", "topic config lost after restart: %s" % cfg["retention.ms"]

        # Appends continue at the right offsets after each restart.
        extra = make_items(topics[t_a] * 3, list(range(topics[t_a])), prefix="cycle%d" % cycle, base_ts=base_ts)
        reports = ck_produce(ck_producer(broker.bootstrap), t_a, extra)
        assert [r.offset for r in reports] == list(range(len(written[t_a]), len(written[t_a]) + 3))
        written[t_a] = written[t_a] + extra

    # Deleted topic's directory is gone from disk too (eventually).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [d for d in os.listdir(broker.data_dir) if d.startswith(doomed + "-") and not d.endswith("-delete")]
        if not left:
            break
        time.sleep(0.2)
    assert not left, "deleted topic directories still present: %s" % left


def test_segment_rolling_and_restart(broker_factory):
    broker = broker_factory(**{"log.segment.bytes": 16384})
    t = unique_topic("roll")
    ck_create_topic(broker.bootstrap, t, 1)
    items = make_items(2000, [0], prefix="roll", base_ts=int(time.time() * 1000) - 1000, value_size=100)
    ck_produce(ck_producer(broker.bootstrap, **{"linger.ms": 1, "batch.num.messages": 20}), t, items)

    got = ck_consume(broker.bootstrap, t, {0: 0}, expected_counts={0: len(items)})
    assert_ck_messages_match(got[0], items)
    got = ck_consume(broker.bootstrap, t, {0: 1234}, expected_counts={0: len(items) - 1234})
    assert_ck_messages_match(got[0], items[1234:], start_offset=1234)

    _stop_cleanly(broker)
    pdir = broker.partition_dir(t, 0)
    segs = assert_kafka_layout(pdir)
    assert len(segs) >= 5, "expected several segments with log.segment.bytes=16384, got %d" % len(segs)
    for base, path in segs[:-1]:
        size = os.path.getsize(path)
        assert size <= 16384 + 2048, "%s is %d bytes, over log.segment.bytes" % (path, size)
    recs = read_segments_strict(pdir)  # also checks that each file starts at its base offset
    assert [r.value for r in recs] == [it["value"] for it in items]

    broker.start()
    got = ck_consume(broker.bootstrap, t, {0: segs[2][0]}, expected_counts={0: len(items) - segs[2][0]})
    assert_ck_messages_match(got[0], items[segs[2][0]:], start_offset=segs[2][0])
    reports = ck_produce(ck_producer(broker.bootstrap), t, [{"value": b"tail", "partition": 0}])
    assert reports[0].offset == len(items)


def test_sigterm_is_prompt_and_clean(broker):
    t = unique_topic("term")
    ck_create_topic(broker.bootstrap, t, 1)
    ck_produce(ck_producer(broker.bootstrap), t, make_items(10, [0]))
    secs = _stop_cleanly(broker)
    assert secs < 5, "SIGTERM shutdown took %.1fs" % secs
    broker.start()
    got = ck_consume(broker.bootstrap, t, {0: 0}, expected_counts={0: 10})
    assert len(got[0]) == 10


def test_restart_starts_from_a_metadata_snapshot(broker_factory):
    """With a snapshot due every 128 bytes of metadata records, topic creations, a deletion and
    a config change leave one `.checkpoint` in .sluice-meta (older ones are deleted as newer
    land). After a kill -9 the broker loads it as its image's base and applies only the log
    after it: the topics, the deletion and the config are all as they were, and appends go on
    at the right offsets."""
    broker = broker_factory(**{"metadata.log.max.record.bytes.between.snapshots": "128"})
    admin = ck_admin(broker.bootstrap)
    topics = [unique_topic("snap") for _ in range(10)]
    for t in topics:
        ck_create_topic(admin, t, 2)
    doomed = topics.pop()
    admin.delete_topics([doomed], request_timeout=15)[doomed].result(timeout=15)
    res = ConfigResource(ResourceType.TOPIC, topics[0], set_config={"retention.ms": "7200000"})
    admin.alter_configs([res], request_timeout=15)[res].result(timeout=15)
    reports = ck_produce(ck_producer(broker.bootstrap), topics[1], make_items(5, [0], prefix="before"))
    assert [r.offset for r in reports] == list(range(5))

    meta = os.path.join(broker.data_dir, ".sluice-meta")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        snaps = sorted(f for f in os.listdir(meta) if f.endswith(".checkpoint"))
        if len(snaps) == 1 and int(snaps[0].split("-")[0]) > 10:
            break
        time.sleep(0.1)
    assert len(snaps) == 1 and int(snaps[0].split("-")[0]) > 10, "snapshots in .sluice-meta: %s" % snaps

    broker.restart(clean=False)
    # The listener is up before the metadata is loaded: read the log until it says so.
    deadline = time.monotonic() + 10
    while True:
        with open(broker.stderr_path, "rb") as f:
            log = f.read().decode("utf-8", "replace")
        if "metadata snapshot loaded" in log or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "metadata snapshot loaded" in log, log[-3000:]
    admin = ck_admin(broker.bootstrap)
    md = admin.list_topics(timeout=10)
    for t in topics:
        assert t in md.topics and len(md.topics[t].partitions) == 2, "topic %s after restart: %r" % (
            t, md.topics.get(t))
    assert doomed not in md.topics, "deleted topic %s came back after restart" % doomed
    cfg = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, topics[0])],
                                      request_timeout=15).values())[0].result(timeout=15)
    assert cfg["retention.ms"].value == "7200000", cfg["retention.ms"]
    reports = ck_produce(ck_producer(broker.bootstrap), topics[1], make_items(3, [0], prefix="after"))
    assert [r.offset for r in reports] == [5, 6, 7]


def _recovery_stats(broker, timeout=30):
    """The RecoveryStats of the broker's "ready" line in its current log, as a dict."""
    import re
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(broker.stderr_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        m = re.search(r"ready recovery=RecoveryStats \{([^}]*)\}", text)
        if m:
            return {k.strip(): int(v) for k, v in (kv.split(":") for kv in m.group(1).split(","))}
        time.sleep(0.1)
    raise AssertionError("no ready line with recovery stats:\n" + broker.stderr_tail())


def test_a_clean_restart_reads_segment_summaries_not_logs(broker_factory):
    """Every sealed segment gets a `.batches` summary once synced, and SIGTERM writes the
    active segment's too: the next start takes every segment from its summary (the ready
    line counts them) and reads no log. What the scan would have found is all there: every
    record at its offset, and the idempotent producer's last batches (a retry is answered
    with its original offset, not written again). After more appends and a kill -9, the
    active segment no longer matches its summary and is read whole; nothing is lost."""
    from test_idempotence_wire import OK, ib, log, new_pid, produce, wait_ready
    from wire import Conn

    broker = broker_factory(**{"log.segment.bytes": 16384})
    t = unique_topic("summ")
    ck_create_topic(broker.bootstrap, t, 1)
    items = make_items(600, [0], prefix="plain", value_size=100)
    assert all(r.err is None for r in ck_produce(ck_producer(broker.bootstrap), t, items))
    with Conn.to(broker.bootstrap) as c:
        pid = new_pid(c)
        seq, last = 0, None
        for i in range(40):
            last = ib(10, "idem%d-%s" % (i, "x" * 90), pid, 0, seq)
            assert produce(c, t, last) == (OK, len(items) + seq)
            seq += 10
        before = log(c, t)

    _stop_cleanly(broker)
    pdir = broker.partition_dir(t, 0)
    logs = sorted(f[:-4] for f in os.listdir(pdir) if f.endswith(".log"))
    summaries = sorted(f[:-8] for f in os.listdir(pdir) if f.endswith(".batches"))
    assert len(logs) >= 4, "expected several segments, got %s" % logs
    assert summaries == logs, "a summary for every segment after SIGTERM: %s vs %s" % (summaries, logs)

    broker.start()
    wait_ready(broker.bootstrap, t)
    stats = _recovery_stats(broker)
    assert stats["summarized"] == stats["segments"] >= len(logs), stats
    with Conn.to(broker.bootstrap) as c:
        assert produce(c, t, last) == (OK, len(items) + seq - 10), "the retry of the last batch is a duplicate"
        assert log(c, t) == before
        assert produce(c, t, ib(1, "after", pid, 0, seq)) == (OK, len(items) + seq)
    got = ck_consume(broker.bootstrap, t, {0: 0}, expected_counts={0: len(items) + seq + 1})
    assert_ck_messages_match(got[0][:len(items)], items)
    assert [m.offset() for m in got[0]] == list(range(len(items) + seq + 1))

    broker.kill9()
    broker.start()
    wait_ready(broker.bootstrap, t)
    stats = _recovery_stats(broker)
    # (Other partitions, made since, are empty: an empty segment needs no summary.)
    segments = [f for f in os.listdir(pdir) if f.endswith(".log")]
    assert stats["summarized"] == len(segments) - 1, "the active segment grew past its summary: %s" % stats
    got = ck_consume(broker.bootstrap, t, {0: 0}, expected_counts={0: len(items) + seq + 1})
    assert [m.offset() for m in got[0]] == list(range(len(items) + seq + 1))
    assert got[0][-1].value() == b"after-0"
