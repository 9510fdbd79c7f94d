"""kafkajs (Node.js) against Sluice: the idempotent and the plain producer, a
group consumer, the admin client, the idempotent producer across a broker
kill -9, and transactions (a transactional producer committing and aborting
over two topics, read by read_committed / read_uncommitted consumers;
sendOffsets; fencing by a second producer with the same transactionalId).
Parametrized over kafkajs 2.2.4 (current) and 1.16.0 (old).

The clients live in <repo>/.js-clients (scripts/install-js-clients.sh) and
are driven through tests/compat/js/sluice_kafkajs.js (and, for the
transactional producers, js/sluice_kafkajs_txn.js), which print one JSON
object per line.  These tests do not depend on the Python client libraries,
so tests/compat/run.sh runs them only once: they are skipped in the old
client venv (.venv-compat-old).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from conftest import HERE, REPO, _set_pdeathsig, unique_topic

JS_CLIENTS = os.environ.get("SLUICE_JS_CLIENTS") or os.path.join(REPO, ".js-clients")
CLI = os.path.join(HERE, "js", "sluice_kafkajs.js")
TXN_CLI = os.path.join(HERE, "js", "sluice_kafkajs_txn.js")
NODE = os.environ.get("NODE") or "node"
INSTALL_HINT = "run scripts/install-js-clients.sh"

# (npm alias installed by scripts/install-js-clients.sh, kafkajs version)
CLIENTS = [("kafkajs2", "2.2.4"), ("kafkajs1", "1.16.0")]

N_RECORDS = 5000
PARTITIONS = 3
N_KEYS = 97

pytestmark = pytest.mark.skipif(
    os.path.basename(sys.prefix).endswith("-old"),
    reason="kafkajs tests run once per suite run, in the new-client venv")


# ------------------------------------------------------------------ plumbing


class JsClient:
    def __init__(self, module, version):
        self.module = module
        self.version = version

    def __repr__(self):
        return "kafkajs %s (%s)" % (self.version, self.module)

    def argv(self, mode, bootstrap, *args, timeout_s, cli=CLI):
        # The node program's own deadline fires before the subprocess timeout,
        # so a hang still ends with a JSON error line and kafkajs' stderr.
        return [NODE, cli, self.module, mode, bootstrap, *[str(a) for a in args],
                "--timeout-ms", str(int(max(5.0, timeout_s - 5) * 1000))]


@pytest.fixture(params=CLIENTS, ids=["kafkajs-%s" % v for _, v in CLIENTS])
def kjs(request):
    module, version = request.param
    if shutil.which(NODE) is None:
        pytest.fail("node (%s) not found on PATH; install Node.js, then %s" % (NODE, INSTALL_HINT),
                    pytrace=False)
    pkg = os.path.join(JS_CLIENTS, "node_modules", module, "package.json")
    got = None
    if os.path.exists(pkg):
        with open(pkg) as f:
            got = json.load(f).get("version")
    if got is None:
        pytest.fail("%s is not installed (%s missing); %s" % (module, pkg, INSTALL_HINT), pytrace=False)
    if got != version:
        pytest.fail("%s is kafkajs %s, want %s; %s" % (module, got, version, INSTALL_HINT), pytrace=False)
    return JsClient(module, version)


def _parse(stdout):
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"event": "unparsed", "line": line})
    return events


def _tail(text, n=40):
    lines = (text or "").splitlines()
    return "\n".join(lines[-n:]) if lines else "(empty)"


def _failure(what, argv, rc, events, stdout, stderr):
    err = next((e for e in reversed(events) if e.get("event") == "error"), None)
    return ("%s failed (exit %s)\n  cmd: %s\n  error: %s\n---- node stdout (tail) ----\n%s\n"
            "---- node stderr (tail) ----\n%s"
            % (what, rc, " ".join(argv), json.dumps(err) if err else "(no error line)",
               _tail(stdout, 15), _tail(stderr)))


def run_js(client, what, mode, bootstrap, *args, timeout_s=60.0, cli=CLI):
    """Runs the CLI (`cli`: sluice_kafkajs.js or sluice_kafkajs_txn.js) to
    completion; returns its events.  Fails the test with the node program's
    error line and stderr tail unless it ended with a "done" event and exit
    status 0."""
    argv = client.argv(mode, bootstrap, *args, timeout_s=timeout_s, cli=cli)
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout_s, preexec_fn=_set_pdeathsig)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(_failure("%s (%r, killed after %.0fs)" % (what, client, timeout_s),
                                      argv, "timeout", _parse(out), out, err))
    events = _parse(p.stdout)
    if p.returncode != 0 or not events or events[-1].get("event") != "done":
        raise AssertionError(_failure("%s (%r)" % (what, client), argv, p.returncode, events,
                                      p.stdout, p.stderr))
    return events


def admin(client, bootstrap, *ops, timeout_s=45.0):
    return run_js(client, "kafkajs admin %s" % " ".join(ops), "admin", bootstrap, *ops,
                  timeout_s=timeout_s)


def create_topic(client, bootstrap, topic, partitions):
    ev = admin(client, bootstrap, "create:%s:%d" % (topic, partitions))
    assert ev[0]["event"] == "create" and ev[0]["created"] is True, ev


def log_end_offsets(client, bootstrap, topic):
    ev = admin(client, bootstrap, "offsets:" + topic)
    return {p["partition"]: int(p["high"]) for p in ev[0]["partitions"]}


def produce_argv(n, idempotent, prefix, batch):
    return ["--count", n, "--batch", batch, "--idempotent", "true" if idempotent else "false",
            "--prefix", prefix, "--keys", N_KEYS]


def consume_all(client, bootstrap, topic, timeout_s=75.0):
    """Group-consumes the whole log (as many records as the high watermarks
    say, so duplicates cannot hide the tail) plus a short drain for extras."""
    ends = log_end_offsets(client, bootstrap, topic)
    total = sum(ends.values())
    ev = run_js(client, "kafkajs group consumer", "consume-group", bootstrap, topic,
                "--count", total, "--group", unique_topic("kjs-g"), "--drain-ms", 1500,
                timeout_s=timeout_s)
    msgs = [e for e in ev if e["event"] == "msg"]
    return ends, msgs, ev[-1]


def record_index(value, prefix):
    if value is None or not value.startswith(prefix + "-"):
        return None
    tail = value[len(prefix) + 1:]
    return int(tail) if tail.isdigit() else None


def check_log(msgs, ends, n, prefix, sends, acked, partitions=PARTITIONS):
    """Problems (strings) found in what the group consumer read.

    msgs: consumed "msg" events; ends: {partition: high watermark};
    sends: the producer's "sent" events; acked: set of acknowledged record
    indexes (each must be in the log exactly once); other indexes < n may be
    present at most once.  Checks per-partition offsets 0..hw-1 without gaps
    or repeats, per-partition order of production, keys/headers, one
    partition per key, and each send's reported base offsets."""
    problems = []
    seen = {}      # (partition, offset) -> msg
    redelivered = []
    for m in msgs:
        po = (m["partition"], int(m["offset"]))
        if po in seen:
            redelivered.append(po)
        else:
            seen[po] = m
    if redelivered:
        problems.append("consumer delivered %d (partition, offset) pairs more than once, e.g. %s"
                        % (len(redelivered), redelivered[:5]))

    by_part = {}
    for (p, o), m in sorted(seen.items()):
        by_part.setdefault(p, []).append((o, m))
    if sorted(ends) != list(range(partitions)):
        problems.append("log end offsets for partitions %s, want 0..%d" % (sorted(ends), partitions - 1))
    for p in range(partitions):
        offs = [o for o, _ in by_part.get(p, [])]
        want = list(range(ends.get(p, 0)))
        if offs != want:
            missing = sorted(set(want) - set(offs))
            extra = sorted(set(offs) - set(want))
            problems.append("partition %d: consumed offsets are not 0..%d (hw): %d missing %s, %d beyond hw %s"
                            % (p, ends.get(p, 0) - 1, len(missing), missing[:10], len(extra), extra[:10]))

    where = {}     # record index -> [(partition, offset)]
    key_parts = {}
    bad = []
    for p, lst in by_part.items():
        prev = None
        for o, m in lst:
            idx = record_index(m["value"], prefix)
            if idx is None or idx >= n:
                bad.append("p%d@%d: unexpected value %r" % (p, o, m["value"]))
                continue
            where.setdefault(idx, []).append((p, o))
            if m["key"] != "k%d" % (idx % N_KEYS):
                bad.append("p%d@%d: record %d has key %r" % (p, o, idx, m["key"]))
            if (m.get("headers") or {}).get("idx") != str(idx):
                bad.append("p%d@%d: record %d has headers %r" % (p, o, idx, m.get("headers")))
            key_parts.setdefault(m["key"], set()).add(p)
            if prev is not None and idx <= prev[1]:
                bad.append("p%d: out of order: record %d at offset %d after record %d at offset %d"
                           % (p, idx, o, prev[1], prev[0]))
            prev = (o, idx)
    if bad:
        problems.append("%d bad records, first: %s" % (len(bad), "; ".join(bad[:8])))

    dups = {i: w for i, w in where.items() if len(w) > 1}
    if dups:
        sample = sorted(dups.items())[:8]
        problems.append("%d records are in the log more than once (duplicates), e.g. %s"
                        % (len(dups), ", ".join("#%d at %s" % (i, w) for i, w in sample)))
    missing = sorted(i for i in acked if i not in where)
    if missing:
        problems.append("%d acknowledged records are missing from the log, e.g. %s" % (len(missing), missing[:20]))
    split = {k: sorted(v) for k, v in key_parts.items() if len(v) > 1}
    if split:
        problems.append("keys written to more than one partition: %s" % dict(list(split.items())[:5]))
    used = {p for p in by_part}
    if acked and len(acked) >= 1000 and used != set(range(partitions)):
        problems.append("%d keyed records used only partitions %s of %d" % (len(acked), sorted(used), partitions))

    # Each acknowledged send: its records that went to partition p must sit
    # at the base offset the broker returned for p, consecutively, in order.
    base_bad = []
    for s in sends:
        first, count = s["first"], s["count"]
        for r in s["results"]:
            if r.get("errorCode"):
                base_bad.append("send %d partition %s: errorCode %s" % (s["send"], r["partition"], r["errorCode"]))
                continue
            if r.get("baseOffset") is None:
                continue
            p, base = r["partition"], int(r["baseOffset"])
            locs = sorted(o for i in range(first, first + count)
                          for (pp, o) in where.get(i, [])[:1] if pp == p)
            if not locs or locs != list(range(base, base + len(locs))):
                base_bad.append("send %d partition %d: acked baseOffset %d but its records are at %s"
                                % (s["send"], p, base, locs[:3] + (["..."] if len(locs) > 3 else [])))
    if base_bad:
        problems.append("%d send results disagree with the log: %s" % (len(base_bad), "; ".join(base_bad[:5])))
    return problems


def _summary(events):
    sends = [e for e in events if e["event"] == "sent"]
    acked = set()
    for s in sends:
        acked.update(range(s["first"], s["first"] + s["count"]))
    return sends, acked


def _round_trip(broker, kjs, idempotent):
    tag = "idem" if idempotent else "plain"
    topic = unique_topic("kjs-%s" % tag)
    prefix = "%s-%s" % (tag, kjs.version)
    create_topic(kjs, broker.bootstrap, topic, PARTITIONS)

    ev = run_js(kjs, "kafkajs %s producer" % ("idempotent" if idempotent else "plain"), "produce",
                broker.bootstrap, topic, *produce_argv(N_RECORDS, idempotent, prefix, batch=500),
                timeout_s=90)
    sends, acked = _summary(ev)
    assert ev[-1]["sent"] == N_RECORDS and acked == set(range(N_RECORDS)), ev[-1]
    assert len(sends) == 10, "expected 10 sends of 500, got %d" % len(sends)

    ends, msgs, done = consume_all(kjs, broker.bootstrap, topic)
    problems = check_log(msgs, ends, N_RECORDS, prefix, sends, acked)
    if sum(ends.values()) != N_RECORDS:
        problems.insert(0, "log holds %d records (high watermarks %s), %d were sent"
                        % (sum(ends.values()), ends, N_RECORDS))
    if problems:
        raise AssertionError("%r, %s producer, topic %s, log %s:\n  - %s"
                             % (kjs, tag, topic, ends, "\n  - ".join(problems)))


# --------------------------------------------------------------------- tests


@pytest.mark.timeout(240)
def test_idempotent_producer_round_trip(kjs, broker):
    """(a) {idempotent: true}: 5,000 keyed records in 10 sends to 3 partitions;
    a group consumer reads each exactly once, in order per partition."""
    _round_trip(broker, kjs, idempotent=True)


@pytest.mark.timeout(240)
def test_plain_producer_round_trip(kjs, broker):
    """(b) the producer with kafkajs' defaults, same checks as (a)."""
    _round_trip(broker, kjs, idempotent=False)


class _Reader(threading.Thread):
    """Collects a child's stdout JSON lines."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc = proc
        self.lines = []
        self.events = []

    def run(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            self.events.extend(_parse(line))

    def n_sent(self):
        return sum(1 for e in list(self.events) if e.get("event") == "sent")


@pytest.mark.timeout(300)
def test_idempotent_producer_across_kill9(kjs, broker):
    """(c) The idempotent producer sends back to back (so a request is nearly
    always in flight) while the broker is killed with SIGKILL and restarted on
    the same port and data dir, three times.  Every acknowledged record must
    be in the log exactly once, in production order per partition, at the
    offsets the broker acknowledged: a retried batch that the killed broker
    had already written must be recognised, not appended again.  (The plain
    producer duplicates such batches; that is why idempotence exists.)"""
    topic = unique_topic("kjs-crash")
    prefix = "crash-%s" % kjs.version
    create_topic(kjs, broker.bootstrap, topic, PARTITIONS)

    batch = 50
    n_sends = N_RECORDS // batch
    kill_at = (25, 50, 75)  # acknowledged sends before each kill -9
    timeout_s = 150.0
    argv = kjs.argv("produce", broker.bootstrap, topic,
                    *produce_argv(N_RECORDS, True, prefix, batch=batch), "--pause-ms", 0,
                    timeout_s=timeout_s)
    errf = open(os.path.join(broker.workdir, "kafkajs-producer.stderr"), "w+")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
                            text=True, preexec_fn=_set_pdeathsig)
    reader = _Reader(proc)
    reader.start()
    kills = []  # sends acknowledged when each kill -9 was sent
    try:
        deadline = time.monotonic() + 90
        for threshold in kill_at:
            while proc.poll() is None and reader.n_sent() < threshold and time.monotonic() < deadline:
                time.sleep(0.002)
            if proc.poll() is not None or reader.n_sent() < threshold:
                break
            kills.append(reader.n_sent())
            broker.restart(clean=False)  # SIGKILL, then start on the same port and dir
        try:
            proc.wait(max(1.0, deadline + 60 - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        errf.seek(0)
        stderr = errf.read()
        errf.close()

    events = list(reader.events)
    sends, acked = _summary(events)
    producer_ok = proc.returncode == 0 and events and events[-1].get("event") == "done"
    fail_text = _failure("kafkajs idempotent producer (%r)" % kjs, argv, proc.returncode, events,
                         "".join(reader.lines), stderr)
    if not kills:
        if producer_ok:
            pytest.fail("the producer finished all %d sends before the broker could be killed; "
                        "the test needs a slower producer" % n_sends, pytrace=False)
        raise AssertionError("before the broker was killed (%d of %d sends acknowledged): %s"
                             % (len(sends), n_sends, fail_text))

    ends, msgs, done = consume_all(kjs, broker.bootstrap, topic)
    problems = check_log(msgs, ends, N_RECORDS, prefix, sends, acked)
    if not producer_ok:
        problems.append("the producer did not finish after the restarts: %d of %d records acknowledged\n%s"
                        % (len(acked), N_RECORDS, fail_text))
    slow = ["send %d: %d ms" % (e["send"], e["ms"]) for e in sends if e["send"] in kills or e["ms"] > 200]
    if problems:
        raise AssertionError(
            "%r, kill -9 after %s acknowledged sends (sends spanning a restart: %s), topic %s, log %s:\n  - %s"
            % (kjs, kills, ", ".join(slow) or "none", topic, ends, "\n  - ".join(problems)))
    assert acked == set(range(N_RECORDS))
    assert len(kills) == len(kill_at), "only %d of %d kills happened before the producer finished (%s)" % (
        len(kills), len(kill_at), kills)


@pytest.mark.timeout(120)
def test_admin(kjs, broker):
    """(d) createTopics (new and existing), listTopics, fetchTopicMetadata,
    fetchTopicOffsets and describeCluster."""
    t3 = unique_topic("kjs-adm3")
    t1 = unique_topic("kjs-adm1")
    ev = admin(kjs, broker.bootstrap, "create:%s:3" % t3, "create:%s:3" % t3, "create:%s:1" % t1,
               "list", "metadata:%s,%s" % (t3, t1), "offsets:" + t3, "describe-cluster")
    by = {}
    for e in ev:
        by.setdefault(e["event"], []).append(e)

    creates = by["create"]
    assert [c["created"] for c in creates] == [True, False, True], (
        "createTopics should return true, false (TOPIC_ALREADY_EXISTS), true: %s" % creates)

    topics = by["list"][0]["topics"]
    assert t3 in topics and t1 in topics, "listTopics %s lacks %s / %s" % (topics, t3, t1)

    dc = by["describe-cluster"][0]
    host, port = broker.bootstrap.split(":")
    assert len(dc["brokers"]) == 1, dc
    b = dc["brokers"][0]
    assert (b["host"], b["port"]) == (host, int(port)), "describeCluster broker %s, want %s" % (b, broker.bootstrap)
    assert dc["controller"] == b["nodeId"], dc
    assert isinstance(dc["clusterId"], str) and dc["clusterId"], dc
    node = b["nodeId"]

    md = {t["name"]: t for t in by["metadata"][0]["topics"]}
    assert set(md) == {t3, t1}, md
    for name, n in ((t3, 3), (t1, 1)):
        parts = md[name]["partitions"]
        assert [p["partition"] for p in parts] == list(range(n)), (name, parts)
        for p in parts:
            assert p["errorCode"] == 0 and p["leader"] == node and p["replicas"] == [node] \
                and p["isr"] == [node], (name, p)

    offs = by["offsets"][0]["partitions"]
    assert [(o["partition"], o["low"], o["high"]) for o in offs] == [(0, "0", "0"), (1, "0", "0"), (2, "0", "0")], offs

    # The new topic is usable by the same client: a quick plain round trip.
    ev = run_js(kjs, "kafkajs producer", "produce", broker.bootstrap, t1,
                *produce_argv(20, False, "adm", batch=20), timeout_s=45)
    assert ev[-1]["sent"] == 20
    assert log_end_offsets(kjs, broker.bootstrap, t1) == {0: 20}


# -------------------------------------------------------------- transactions
#
# The transactional producer is kafkajs' documented one -- producer({
# transactionalId, idempotent: true, maxInFlightRequests: 1 }), nothing else
# set -- driven by js/sluice_kafkajs_txn.js.  What must be in the log is kept
# in test_transactions' LogModel (every acknowledged record at its offset, each
# transaction's outcome); the kafkajs consumers (readUncommitted false / true)
# and confluent-kafka's (isolation.level read_committed / read_uncommitted,
# test_transactions.check_all, which also checks ListOffsets' last stable
# offset and the control markers in the .log segments) must see exactly that.
# The brokers run with group.initial.rebalance.delay.ms=0 so that kafkajs'
# group consumers start reading at once (the tests stay short).

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from test_transactions import LogModel, Sent, check_all, check_reads, group_offsets, plain_produce, tid, values  # noqa: E402,E501


def txn_broker(broker_factory):
    return broker_factory(**{"group.initial.rebalance.delay.ms": "0"})


def run_txn_js(client, what, mode, bootstrap, *args, timeout_s=60.0):
    return run_js(client, what, mode, bootstrap, *args, timeout_s=timeout_s, cli=TXN_CLI)


def acks_by_step(events):
    """{step: [Sent]} from the driver's ack events."""
    out = {}
    for e in events:
        if e["event"] == "ack":
            s = Sent(e["topic"], e["p"], e["v"].encode(), None)
            s.offset = int(e["o"])
            out.setdefault(e["step"], []).append(s)
    return out


def kjs_read(client, bootstrap, topics, read_uncommitted, count, drain_ms=1000, group=None, timeout_s=45.0):
    """A kafkajs group consumer (readUncommitted as given) subscribed to
    `topics` from the beginning, until `count` records plus a drain; returns
    {(topic, partition): [(offset, value bytes)]} in delivery order."""
    ev = run_js(client, "kafkajs consumer (readUncommitted: %s)" % str(read_uncommitted).lower(),
                "consume-group", bootstrap, ",".join(topics), "--count", count,
                "--read-uncommitted", "true" if read_uncommitted else "false",
                "--group", group or unique_topic("kjs-txg"), "--drain-ms", drain_ms, timeout_s=timeout_s)
    recs = {}
    for m in ev:
        if m["event"] == "msg":
            v = m["value"].encode() if m["value"] is not None else None
            recs.setdefault((m["topic"], m["partition"]), []).append((int(m["offset"]), v))
    return recs


@pytest.mark.timeout(150)
def test_txn_commit_abort_read_committed(kjs, broker_factory):
    """Transactions over 3 + 2 partitions of two topics -- commit, abort,
    plain records, commit, abort -- each record acknowledged; kafkajs'
    read_committed consumer (readUncommitted: false) gets exactly the
    committed and plain records, in offset order, none of the aborted;
    its read_uncommitted consumer gets every record; confluent-kafka
    readers at both isolation levels agree, the last stable offsets and the
    markers on disk match the outcomes."""
    broker = txn_broker(broker_factory)
    a, b = unique_topic("kjs-txa"), unique_topic("kjs-txb")
    create_topic(kjs, broker.bootstrap, a, 3)
    create_topic(kjs, broker.bootstrap, b, 2)
    tps = [(a, p) for p in range(3)] + [(b, p) for p in range(2)]
    plan = ["C4", "A3", "P1", "C3", "A2"]
    where = "%r transactional producer, plan %s" % (kjs, ",".join(plan))
    ev = run_txn_js(kjs, "kafkajs transactional producer", "txn-produce", broker.bootstrap,
                    "--txn-id", tid("kjs"), "--topics", "%s:3,%s:2" % (a, b), "--plan", ",".join(plan))
    steps = [e for e in ev if e["event"] == "step"]
    assert [(e["step"], e["outcome"]) for e in steps] == [
        (0, "commit"), (1, "abort"), (2, "plain"), (3, "commit"), (4, "abort")], steps
    acks = acks_by_step(ev)
    model = LogModel(tps)
    for i, item in enumerate(plan):
        sent = acks.get(i, [])
        assert len(sent) == int(item[1:]) * len(tps), "%s: step %d acknowledged %d records, want %d" % (
            where, i, len(sent), int(item[1:]) * len(tps))
        if item[0] == "P":
            model.add(sent, txn=None)
        else:
            model.add(sent, txn="S%d" % i)
            model.end("S%d" % i, item[0] == "C")

    want = {iso: sum(len(model.visible(tp, iso == "read_committed")) for tp in tps)
            for iso in ("read_committed", "read_uncommitted")}
    assert want["read_committed"] < want["read_uncommitted"]  # aborted records are in the log
    with ThreadPoolExecutor(2) as pool:
        futs = {iso: pool.submit(kjs_read, kjs, broker.bootstrap, [a, b], iso == "read_uncommitted", want[iso])
                for iso in want}
        got = {iso: f.result() for iso, f in futs.items()}
    for iso in ("read_committed", "read_uncommitted"):
        recs = {tp: got[iso].get(tp, []) for tp in tps}
        check_reads(model, recs, iso, "%s [kafkajs %s %s consumer]" % (where, kjs.version, iso))
    # The read_committed check tells them apart: what read_uncommitted saw fails it.
    with pytest.raises(AssertionError, match="aborted records"):
        check_reads(model, {tp: got["read_uncommitted"].get(tp, []) for tp in tps}, "read_committed", "self-check")
    check_all("confluent", broker, model, where)


@pytest.mark.timeout(150)
def test_txn_send_offsets(kjs, broker_factory):
    """Consume-transform-produce's commit step: four transactions, each
    sending a record to both partitions of an output topic and, with
    txn.sendOffsets({consumerGroupId, topics}), offsets of the input topic's
    two partitions -- committed (3/5), aborted (7/9), committed (6/8),
    aborted (10/10).  admin.fetchOffsets shows the previous offsets while a
    transaction is open, the new ones once it commits, never an aborted
    transaction's; confluent's list_consumer_group_offsets agrees at the end;
    a kafkajs member of the group starts at 6/8; the output holds exactly
    the committed transactions' records at read_committed."""
    broker = txn_broker(broker_factory)
    src, dst = unique_topic("kjs-txin"), unique_topic("kjs-txout")
    create_topic(kjs, broker.bootstrap, src, 2)
    create_topic(kjs, broker.bootstrap, dst, 2)
    in_tps = [(src, 0), (src, 1)]
    inputs = plain_produce(broker.bootstrap, values("IN", in_tps, 10))
    group = unique_topic("kjs-txgroup")
    plan = [("C", (3, 5)), ("A", (7, 9)), ("C", (6, 8)), ("A", (10, 10))]
    where = "%r sendOffsets, group %s" % (kjs, group)
    ev = run_txn_js(kjs, "kafkajs transactional sendOffsets", "txn-offsets", broker.bootstrap,
                    "--txn-id", tid("kjs-off"), "--group", group, "--in", src, "--out", dst,
                    "--plan", ",".join("%s:%d/%d" % (k, o[0], o[1]) for k, o in plan))

    offs = {(e["step"], e["when"]): e for e in ev if e["event"] == "offsets"}
    as_map = lambda d: {int(p): o for p, o in d.items()}  # noqa: E731
    committed = {0: None, 1: None}
    for i, (kind, o) in enumerate(plan):
        new = {0: o[0], 1: o[1]}
        opened = as_map(offs[(i, "open")]["offsets"])
        assert opened == committed, "%s: step %d (%s %s) open: fetchOffsets %s, want the committed %s" % (
            where, i, kind, o, opened, committed)
        seen = [as_map(x["offsets"]) for x in offs[(i, "end")]["seen"]]
        if kind == "C":
            assert seen[-1] == new and all(x in (committed, new) for x in seen), \
                "%s: step %d commit of %s: fetchOffsets after the commit saw %s, want %s" % (
                    where, i, o, offs[(i, "end")]["seen"], new)
            committed = new
        else:
            assert seen == [committed], "%s: step %d abort of %s: fetchOffsets after the abort saw %s, want " \
                "only %s" % (where, i, o, offs[(i, "end")]["seen"], committed)
    assert group_offsets(broker.bootstrap, group, in_tps) == {(src, 0): 6, (src, 1): 8}, where

    # A member of the group starts at the committed offsets: exactly 4 + 2 records.
    got = kjs_read(kjs, broker.bootstrap, [src], False, 6, group=group)
    want = {tp: [(s.offset, s.value) for s in inputs if s.tp == tp and s.offset >= start]
            for tp, start in (((src, 0), 6), ((src, 1), 8))}
    assert got == want, "%s: a new member of the group read %s, want %s" % (where, got, want)

    model = LogModel([(dst, 0), (dst, 1)])
    for i, sent in sorted(acks_by_step(ev).items()):
        model.add(sent, txn="S%d" % i)
        model.end("S%d" % i, plan[i][0] == "C")
    assert sum(len(v) for v in model.entries.values()) == 2 * len(plan), model.entries
    check_all("confluent", broker, model, where + ", output topic")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("next_op", ["commit", "send", "send-new"])
def test_txn_fencing(kjs, next_op, broker_factory):
    """Producer 1 begins a transaction and sends two records to partition 0;
    producer 2 (another client, same transactionalId) begins its own, which
    fences producer 1 and aborts its transaction.  Producer 1's next call --
    commit(), a send to partition 0 (already in its transaction: a Produce
    with the old epoch) or to partition 1 (not yet in it: AddPartitionsToTxn
    first) -- fails with kafkajs' fencing error: KafkaJSProtocolError
    INVALID_PRODUCER_EPOCH (47), not retriable.  Producer 2 sends to both
    partitions and commits: read_committed readers get only its records,
    read_uncommitted producer 1's aborted ones too, nothing of producer 1's
    last call is in the log."""
    broker = txn_broker(broker_factory)
    t = unique_topic("kjs-txfence")
    create_topic(kjs, broker.bootstrap, t, 2)
    where = "%r fencing, producer 1 then %s" % (kjs, next_op)
    ev = run_txn_js(kjs, "kafkajs fencing", "txn-fence", broker.bootstrap,
                    "--txn-id", tid("kjs-fence"), "--topic", t, "--next", next_op)
    res = next(e for e in ev if e["event"] == "p1-result")
    assert not res["ok"], "%s: the fenced producer's %s succeeded" % (where, next_op)

    acks = acks_by_step(ev)
    model = LogModel([(t, 0), (t, 1)])
    assert [s.value for s in acks[0]] == [b"F0|p0|000", b"F0|p0|001"], acks[0]
    model.add(acks[0], txn="P1")
    model.end("P1", False)  # aborted by the coordinator when producer 2 began
    assert [s.value for s in acks[1]] == [b"F1|p0|000", b"F1|p1|000"], acks[1]
    model.add(acks[1], txn="P2")
    model.end("P2", True)
    check_all("confluent", broker, model, where)

    err = res["error"]
    got = (err.get("name"), err.get("type"), err.get("code"), err.get("retriable"))
    msg = "%s: producer 1's %s failed with %s, want KafkaJSProtocolError INVALID_PRODUCER_EPOCH (47)" % (
        where, next_op, json.dumps(err))
    assert got == ("KafkaJSProtocolError", "INVALID_PRODUCER_EPOCH", 47, False), msg
