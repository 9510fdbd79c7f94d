"""Transactions with the Apache Kafka Java client (kafka-clients 4.4.0 and
3.1.2, installed by scripts/install-java-clients.sh, driven by
java/SluiceJavaClient.java), used as applications use it: the producer has
bootstrap.servers, serializers and transactional.id and nothing else; the
consumers set isolation.level (and, in consume-transform-produce, what that
pattern needs: group.id, no auto commit, auto.offset.reset=earliest).

* a transactional producer commits and aborts transactions over 3 + 2
  partitions of two topics; read_committed / read_uncommitted Java consumers
  (and confluent-kafka readers, and the log segments) see exactly what they
  must, and their positions reach the end past the markers;
* a read_committed Java consumer waits at the last stable offset while a
  transaction (from confluent-kafka) is open, and carries on once it ends;
* consume-transform-produce with sendOffsetsToTransaction(offsets,
  consumer.groupMetadata()), two of the rounds aborted: committed offsets
  move only with commits, the output holds every input once.

Like test_java.py these run once per suite run, in the .venv-compat-new run.
"""

from __future__ import annotations

import sys
import time
import uuid

import pytest

from conftest import unique_topic
from test_java import JavaResult, create_topic, jclient  # noqa: F401  (jclient is a fixture)
from test_transactions import (LogModel, Reader, Sent, TxnProducer, check_all, check_marks, check_reads,
                               ck_marks, group_offsets, plain_produce, run_txn, tid, values)

pytestmark = pytest.mark.skipif(
    sys.prefix.rstrip("/").endswith("-old"),
    reason="Java client tests run once per suite run (in the .venv-compat-new run)")


def java_read(jc, bootstrap, topics, isolation, expected, timeout_s=60, linger_ms=1500):
    """consume-assign: every partition of `topics` from the beginning.
    Returns (result, {(topic, p): [(offset, value bytes)]}, positions)."""
    res = jc.run("consume-assign", bootstrap, ",".join(topics), expected, int(timeout_s * 1000),
                 "--linger-ms", linger_ms, "--deadline-ms", int((timeout_s + 30) * 1000),
                 "--prop", "isolation.level=%s" % isolation, timeout=timeout_s + 60)
    assert res.summary is not None and res.summary.get("client_version") == jc.version, res.describe()
    recs = {}
    for r in res.of("rec"):
        recs.setdefault((r["topic"], r["p"]), []).append((r["o"], r["v"].encode()))
    pos = {(k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])): v for k, v in res.summary.get("positions", {}).items()}
    return res, recs, pos


def check_java_reads(jc, bootstrap, model, topics, where):
    for iso in ("read_committed", "read_uncommitted"):
        committed = iso == "read_committed"
        want_n = sum(len(model.visible(tp, committed)) for tp in model.tps)
        res, recs, pos = java_read(jc, bootstrap, topics, iso, want_n)
        w = "%s [java %s %s consumer]" % (where, jc.version, iso)
        assert res.rc == 0, "%s failed\n%s" % (w, res.describe())
        check_reads(model, {tp: recs.get(tp, []) for tp in model.tps}, iso, w)
        targets = {tp: (model.lso(tp) if committed else model.hw(tp)) for tp in model.tps}
        assert pos == targets, "%s: positions %s, want %s (the end, past the markers)" % (w, pos, targets)


@pytest.mark.timeout(240)
def test_java_transactional_producer_commit_abort(jclient, broker):
    """Six transactions (commit, abort, commit, abort, commit, abort) from a
    transactional producer over 3 + 2 partitions of two topics: every record
    acknowledged; read_committed consumers get exactly the committed ones, in
    order, at their offsets; read_uncommitted everything; markers on disk in
    order."""
    a, b = unique_topic("jtxa"), unique_topic("jtxb")
    create_topic(jclient, broker.bootstrap, a, 3)
    create_topic(jclient, broker.bootstrap, b, 2)
    plan = ["C20", "A10", "C15", "A5", "C10", "A8"]
    the_id = tid("java")
    res = jclient.run("txn-produce", broker.bootstrap, the_id, "%s:3,%s:2" % (a, b), ",".join(plan),
                      "--deadline-ms", 150_000, timeout=200)
    where = "java %s transactional producer" % jclient.version
    assert res.summary is not None and res.summary.get("client_version") == jclient.version, res.describe()
    txns = res.of("txn")
    assert res.rc == 0 and [t["ok"] for t in txns] == [True] * len(plan), "%s\n%s" % (where, res.describe())
    assert not res.of("err"), res.describe()

    tps = [(a, p) for p in range(3)] + [(b, p) for p in range(2)]
    model = LogModel(tps)
    acks = {}
    for x in res.of("ack"):
        s = Sent(x["topic"], x["p"], x["v"].encode(), None)
        s.offset = x["o"]
        acks.setdefault(x["txn"], []).append(s)
    for i, item in enumerate(plan):
        sent = acks.get(i, [])
        assert len(sent) == int(item[1:]) * len(tps), "%s: transaction %d: %d acks, want %d" % (
            where, i, len(sent), int(item[1:]) * len(tps))
        model.add(sent, "J%d" % i)
        model.end("J%d" % i, item[0] == "C")
    check_java_reads(jclient, broker.bootstrap, model, [a, b], where)
    check_all("confluent", broker, model, where)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_java_read_committed_waits_at_last_stable_offset(jclient, outcome, broker, tmp_path):
    """Plain records, a transaction (confluent-kafka) flushed but left open,
    more plain records.  A read_committed Java consumer, running all along,
    gets the first plain records, stops at the last stable offset and stays
    there (3 s); once the transaction commits (aborts) it goes on to
    everything (the later plain records), positions at the end."""
    t = unique_topic("jtxlso")
    create_topic(jclient, broker.bootstrap, t, 2)
    tps = [(t, 0), (t, 1)]
    model = LogModel(tps)
    where = "java %s read_committed at the last stable offset (%s)" % (jclient.version, outcome)
    plain_produce(broker.bootstrap, values("P0", tps, 3), model)
    prod = TxnProducer("confluent", broker.bootstrap, tid("jlso"))
    proc = None
    out_path, err_path = str(tmp_path / "consume.out"), str(tmp_path / "consume.err")

    def partial():
        with open(out_path, encoding="utf-8", errors="replace") as f, \
                open(err_path, encoding="utf-8", errors="replace") as e:
            return JavaResult("consume-assign (background)", proc.poll(), f.read(), e.read())

    try:
        prod.init()
        run_txn(prod, values("T", tps, 4), "open", model, "T")
        plain_produce(broker.bootstrap, values("P1", tps, 3), model)
        check_marks(broker.bootstrap, model, where + ", transaction open")
        want_total = 6 + (12 if outcome == "commit" else 6)
        proc = jclient.popen("consume-assign", broker.bootstrap, t, want_total, 90_000, "--linger-ms", 1500,
                             "--deadline-ms", 120_000, "--prop", "isolation.level=read_committed",
                             stdout_path=out_path, stderr_path=err_path)
        lso = {"%s/%d" % tp: 3 for tp in tps}
        deadline = time.monotonic() + 60
        while True:
            r = partial()
            if len(r.of("rec")) >= 6 and r.of("pos") and r.of("pos")[-1]["positions"] == lso:
                break
            assert proc.poll() is None and time.monotonic() < deadline, \
                "%s: the consumer did not reach the last stable offset %s\n%s" % (where, lso, r.describe())
            time.sleep(0.2)
        time.sleep(3.0)
        r = partial()
        got = [(x["topic"], x["p"], x["o"]) for x in r.of("rec")]
        assert sorted(got) == sorted((tt, p, o) for tt, p in tps for o in range(3)), \
            "%s: with the transaction open the consumer read %s, want offsets 0-2 of each partition only" % (
                where, got)
        assert r.of("pos")[-1]["positions"] == lso, "%s: positions %s moved past the last stable offset %s" % (
            where, r.of("pos")[-1]["positions"], lso)

        if outcome == "commit":
            prod.commit()
        else:
            prod.abort()
        model.end("T", outcome == "commit")
        proc.wait(timeout=100)
    finally:
        prod.close()
        if proc is not None and proc.poll() is None:
            proc.kill()  # by PID
            proc.wait(30)
    r = partial()
    assert r.rc == 0 and r.summary is not None, "%s\n%s" % (where, r.describe())
    recs = {tp: [] for tp in tps}
    for x in r.of("rec"):
        recs[(x["topic"], x["p"])].append((x["o"], x["v"].encode()))
    check_reads(model, recs, "read_committed", where)
    pos = r.summary["positions"]
    assert pos == {"%s/%d" % tp: model.hw(tp) for tp in tps}, "%s: final positions %s, want the high watermarks" % (
        where, pos)
    check_all("confluent", broker, model, where)


@pytest.mark.timeout(240)
def test_java_consume_transform_produce(jclient, broker):
    """60 input records on 2 partitions; the Java consume-transform-produce
    loop (poll, begin, send "out:<value>", sendOffsetsToTransaction(offsets,
    consumer.groupMetadata()), commit -- rounds 2 and 4 aborted and the
    consumer rewound to its committed offsets).  The group's committed offsets
    never change before a transaction ends, stay after an abort, follow each
    commit; the read_committed output holds each input once, in order; a new
    read_committed member of the group finds nothing left."""
    src, dst = unique_topic("jtxin"), unique_topic("jtxout")
    create_topic(jclient, broker.bootstrap, src, 2)
    create_topic(jclient, broker.bootstrap, dst, 2)
    in_tps = [(src, 0), (src, 1)]
    n = 60
    inputs = plain_produce(broker.bootstrap, values("IN", in_tps, n // 2))
    group = "jtxg-" + uuid.uuid4().hex[:8]
    where = "java %s consume-transform-produce" % jclient.version
    res = jclient.run("ctp", broker.bootstrap, src, dst, group, tid("jctp"), n, "--abort-rounds", "2,4",
                      "--max-poll", 10, "--deadline-ms", 150_000, timeout=200)
    assert res.summary is not None and res.summary.get("client_version") == jclient.version, res.describe()
    assert res.rc == 0 and res.summary.get("done") == n, "%s\n%s" % (where, res.describe())

    rounds = res.of("round")
    assert [r["outcome"] for r in rounds[:4]] == ["commit", "abort", "commit", "abort"], rounds
    assert rounds[-1]["outcome"] == "commit"
    committed = {}
    aborted_n = 0
    for r in rounds:
        assert "error" not in r, "%s: round %s failed: %s\n%s" % (where, r["i"], r["error"], res.describe())
        assert r["generation"] >= 1, "%s round %d: consumer.groupMetadata() has generation %s: the member " \
                                     "had not joined the group" % (where, r["i"], r["generation"])
        assert r["before"] == committed, \
            "%s round %d: before the transaction ended the group's committed offsets were %s, want the previous " \
            "%s (sent in the transaction: %s)" % (where, r["i"], r["before"], committed, r["sent_offsets"])
        if r["outcome"] == "abort":
            aborted_n += r["n"]
            assert r["after"] == committed, "%s round %d: after abort the committed offsets are %s, want %s" % (
                where, r["i"], r["after"], committed)
        else:
            committed = dict(committed)
            committed.update(r["sent_offsets"])
            assert r["settled"] == committed, "%s round %d: after commit the committed offsets are %s, want %s" % (
                where, r["i"], r["settled"], committed)
    assert committed == {"0": n // 2, "1": n // 2}, "%s: final committed offsets %s" % (where, committed)
    assert res.summary.get("final_committed") == committed, res.summary
    assert group_offsets(broker.bootstrap, group, in_tps) == {tp: n // 2 for tp in in_tps}

    # The output: at read_committed every input once, transformed, in input order.
    in_by_p = {q: [s.value for s in inputs if s.partition == q] for q in (0, 1)}
    for reader in ("java", "confluent"):
        if reader == "java":
            r, recs, _ = java_read(jclient, broker.bootstrap, [dst], "read_committed", n)
            assert r.rc == 0, "%s output read\n%s" % (where, r.describe())
        else:
            rd = Reader("confluent", broker.bootstrap, [(dst, 0), (dst, 1)], "read_committed")
            try:
                recs = rd.read_to(ck_marks(broker.bootstrap, [(dst, 0), (dst, 1)], "read_committed"),
                                  what=where)
            finally:
                rd.close()
        for q in (0, 1):
            got = [v for _, v in recs.get((dst, q), [])]
            want = [b"out:" + v for v in in_by_p[q]]
            assert got == want, "%s: output partition %d read by %s at read_committed: %d records, want %d; " \
                                "duplicated %s; missing %s" % (where, q, reader, len(got), len(want),
                                                               sorted({v for v in got if got.count(v) > 1})[:5],
                                                               [v for v in want if v not in got][:5])
    r, recs, _ = java_read(jclient, broker.bootstrap, [dst], "read_uncommitted", n + aborted_n)
    total = sum(len(v) for v in recs.values())
    assert r.rc == 0 and total == n + aborted_n, "%s: read_uncommitted output has %d records, want %d " \
                                                 "(inputs + aborted rounds)\n%s" % (where, total, n + aborted_n,
                                                                                   r.describe())

    # A new member resumes at the committed offsets: nothing left.
    again = jclient.run("consume-group", broker.bootstrap, src, group, 0, 30_000, "--linger-ms", 2500,
                        "--deadline-ms", 70_000, "--prop", "isolation.level=read_committed", timeout=90)
    assert again.summary is not None and again.rc == 0, "%s: new member failed\n%s" % (where, again.describe())
    assert not again.of("rec"), "%s: a new member of %s re-read %d records past the committed offsets: %s" % (
        where, group, len(again.of("rec")), again.of("rec")[:3])
    assert again.summary.get("assignment") == [0, 1], again.describe()
