"""The Apache Kafka Java client (org.apache.kafka:kafka-clients) against Sluice,
used the way applications use it: the producer is configured with nothing but
bootstrap.servers and serializers, so it runs with the client's defaults
(since 3.0: enable.idempotence=true, acks=all, retries=MAX,
delivery.timeout.ms=120000, max.in.flight=5).

The client is driven by tests/compat/java/SluiceJavaClient.java (JSON lines on
stdout), run once per kafka-clients version installed by
scripts/install-java-clients.sh into <repo>/.java-clients/<version>/.
These tests do not depend on the Python client libraries, so they run once per
suite run: in the .venv-compat-new run, skipped in the -old one.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from conftest import HERE, REPO, _set_pdeathsig, unique_topic

# Keep the default in sync with VERSIONS in scripts/install-java-clients.sh.
JAVA_CLIENT_VERSIONS = tuple(os.environ.get("JAVA_CLIENT_VERSIONS", "4.4.0 3.1.2").split())
JAVA_CLIENTS_DIR = os.path.join(REPO, ".java-clients")
JAVA_SRC = os.path.join(HERE, "java", "SluiceJavaClient.java")
JVM_FLAGS = [
    "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xmx512m",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
]

pytestmark = pytest.mark.skipif(
    sys.prefix.rstrip("/").endswith("-old"),
    reason="Java client tests run once per suite run (in the .venv-compat-new run)")


# --------------------------------------------------------------------- harness


class JavaResult:
    def __init__(self, what, rc, stdout, stderr, timed_out=False):
        self.what = what
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        self.lines = []
        for line in stdout.splitlines():
            if line.startswith("{"):
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass  # a line cut by a kill; the summary check reports it

    def of(self, kind):
        return [l for l in self.lines if l.get("t") == kind]

    @property
    def summary(self):
        s = self.of("summary")
        return s[-1] if s else None

    def describe(self, n_err=8, n_stderr=40):
        """Everything a failure message needs: command, exit, summary, first
        per-record errors and the stderr tail."""
        parts = ["java %s: exit %s%s" % (self.what, self.rc, " (killed: subprocess timeout)" if self.timed_out else "")]
        parts.append("summary: %s" % (json.dumps(self.summary) if self.summary else "NONE (stdout tail: %r)"
                                      % self.stdout[-500:]))
        for kind in ("fatal", "timeout", "commit-error"):
            for l in self.of(kind)[:3]:
                parts.append("%s: %s" % (kind, json.dumps(l)))
        errs = self.of("err")
        if errs:
            parts.append("%d per-record errors, first: %s" % (len(errs), "; ".join(
                "#%s %s" % (e.get("i"), e.get("error")) for e in errs[:n_err])))
        tail = self.stderr.splitlines()[-n_stderr:]
        parts.append("---- java stderr tail (%d lines) ----" % len(tail))
        parts.extend(tail)
        return "\n".join(parts)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


_RECOMPILED = {}


class JavaClient:
    """One installed kafka-clients version."""

    def __init__(self, version):
        self.version = version
        self.dir = os.path.join(JAVA_CLIENTS_DIR, version)
        self.lib = os.path.join(self.dir, "lib")
        self.classes = os.path.join(self.dir, "classes")

    def check_installed(self):
        for tool in ("java", "javac"):
            if shutil.which(tool) is None:
                pytest.fail("%s not on PATH: the Java client tests need a JDK (>= 11); "
                            "run scripts/install-java-clients.sh after installing one" % tool, pytrace=False)
        jar = os.path.join(self.lib, "kafka-clients-%s.jar" % self.version)
        if not os.path.isfile(jar) or not os.path.isfile(os.path.join(self.lib, ".stamp")):
            pytest.fail("kafka-clients %s is not installed (%s missing): run scripts/install-java-clients.sh"
                        % (self.version, jar), pytrace=False)
        src_sha = _sha256(JAVA_SRC)
        try:
            with open(os.path.join(self.classes, ".source-sha256")) as f:
                built = f.read().strip()
        except OSError:
            built = None
        if built != src_sha:
            # The source changed since the install (or it never compiled):
            # compile a private copy for this session instead of running a
            # stale program.
            key = (self.version, src_sha)
            if key not in _RECOMPILED:
                out = tempfile.mkdtemp(prefix="sluice-java-%s-" % self.version)
                atexit.register(shutil.rmtree, out, True)
                p = subprocess.run(["javac", "-nowarn", "-XDsuppressNotes", "-encoding", "UTF-8", "-d", out,
                                    "-cp", os.path.join(self.lib, "*"), JAVA_SRC],
                                   capture_output=True, text=True, timeout=180)
                if p.returncode != 0:
                    pytest.fail("javac %s against kafka-clients %s failed:\n%s"
                                % (JAVA_SRC, self.version, p.stderr[-4000:]), pytrace=False)
                _RECOMPILED[key] = out
            self.classes = _RECOMPILED[key]

    def argv(self, *args):
        cp = "%s:%s" % (self.classes, os.path.join(self.lib, "*"))
        return ["java"] + JVM_FLAGS + ["-cp", cp, "SluiceJavaClient"] + [str(a) for a in args]

    def run(self, *args, timeout):
        what = " ".join(str(a) for a in args[:3])
        proc = subprocess.Popen(self.argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=_set_pdeathsig)
        try:
            out, err = proc.communicate(timeout=timeout)
            return JavaResult(what, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            proc.kill()  # by PID
            out, err = proc.communicate(timeout=30)
            return JavaResult(what, proc.returncode, out, err, timed_out=True)
        except BaseException:  # e.g. pytest-timeout firing: don't leave the JVM behind
            proc.kill()
            proc.wait(30)
            raise

    def popen(self, *args, stdout_path, stderr_path):
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            return subprocess.Popen(self.argv(*args), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    preexec_fn=_set_pdeathsig)

    def admin(self, bootstrap, *ops, timeout=90):
        """ops: lists of words, one per admin op.  Returns (result, [op dicts])."""
        args = ["admin", bootstrap]
        for i, op in enumerate(ops):
            if i:
                args.append("+")
            args.extend(op)
        args += ["--deadline-ms", str(int((timeout - 10) * 1000))]
        res = self.run(*args, timeout=timeout)
        got = res.of("op")
        if res.summary is None or len(got) != len(ops):
            pytest.fail("admin ran %d of %d ops\n%s" % (len(got), len(ops), res.describe()), pytrace=False)
        assert res.summary.get("client_version") == self.version, res.describe()
        return res, got


@pytest.fixture(params=JAVA_CLIENT_VERSIONS, ids=lambda v: "java-" + v)
def jclient(request):
    c = JavaClient(request.param)
    c.check_installed()
    return c


def create_topic(jc, bootstrap, topic, partitions):
    res, (op,) = jc.admin(bootstrap, ["create-topic", topic, str(partitions)])
    assert op["ok"], "create-topic %s failed: %s\n%s" % (topic, op.get("error"), res.describe())


def produced_acks(res, n):
    """{index: (partition, offset)} from a produce run; asserts nothing is
    acknowledged twice or for an index that was never sent."""
    acks = {}
    for a in res.of("ack"):
        i = a["i"]
        assert 0 <= i < n, "ack for unknown index %s" % i
        assert i not in acks, "record #%d acknowledged twice: %s and %s" % (i, acks[i], (a["p"], a["o"]))
        acks[i] = (a["p"], a["o"])
    return acks


def check_ack_offsets(acks):
    """Per partition, acknowledged offsets are distinct and ordered like the
    sends (record index order)."""
    by_part = {}
    for i in sorted(acks):
        p, o = acks[i]
        by_part.setdefault(p, []).append((i, o))
    for p, seq in by_part.items():
        offs = [o for _, o in seq]
        assert len(set(offs)) == len(offs), "partition %d: two acks share an offset" % p
        bad = [(seq[k], seq[k + 1]) for k in range(len(seq) - 1) if seq[k + 1][1] <= seq[k][1]]
        assert not bad, "partition %d: acknowledged offsets not in send order, e.g. (index, offset) %s" % (p, bad[:5])
    return by_part


def check_consumed(res, acks, n, what):
    """The group consumer's records against the acknowledged ones: every
    acknowledged record exactly once, at its acknowledged offset, with the
    right key/value/header; no duplicate of any record; per partition the
    records are in send order and the offsets have no holes.  Returns
    {partition: [index...]}."""
    recs = res.of("rec")
    seen = {}
    dups = []
    bad_content = []
    by_part = {}
    for r in recs:
        k = r.get("k") or ""
        try:
            i = int(k[1:])
        except ValueError:
            bad_content.append(r)
            continue
        if not k.startswith("k") or r.get("v") != "v%d|" % i or r.get("h") != str(i):
            bad_content.append(r)
        if i in seen:
            dups.append((i, seen[i], (r["p"], r["o"])))
        else:
            seen[i] = (r["p"], r["o"])
        by_part.setdefault(r["p"], []).append((r["o"], i))
    assert not bad_content, "%s: %d records with unexpected key/value/header, e.g. %s" % (
        what, len(bad_content), bad_content[:3])
    assert not dups, "%s: %d duplicated records (index, first (p, o), again (p, o)), e.g. %s" % (
        what, len(dups), dups[:10])
    missing = sorted(set(acks) - set(seen))
    assert not missing, "%s: %d acknowledged records never consumed, e.g. %s" % (
        what, len(missing), [(i, acks[i]) for i in missing[:10]])
    moved = [(i, acks[i], seen[i]) for i in acks if seen[i] != acks[i]]
    assert not moved, "%s: %d records consumed at another (partition, offset) than acknowledged " \
                      "(index, acked, consumed), e.g. %s" % (what, len(moved), moved[:10])
    unknown = sorted(i for i in seen if not 0 <= i < n)
    assert not unknown, "%s: records never sent: %s" % (what, unknown[:10])
    order = {}
    for p, seq in by_part.items():
        offs = [o for o, _ in seq]
        assert offs == sorted(offs), "partition %d: offsets delivered out of order" % p
        assert offs == list(range(offs[0], offs[0] + len(offs))) and offs[0] == 0, \
            "partition %d: consumed offsets are not 0..%d without holes (first %s, last %s, count %d)" % (
                p, len(offs) - 1, offs[0], offs[-1], len(offs))
        idx = [i for _, i in seq]
        back = [(idx[k], idx[k + 1]) for k in range(len(idx) - 1) if idx[k + 1] < idx[k]]
        assert not back, "partition %d: records out of send order, e.g. index pairs %s" % (p, back[:5])
        order[p] = idx
    return order


def log_batches(pdir):
    """[(base_offset, record_count, producer_id, producer_epoch, base_sequence)]
    of the RecordBatches in a partition directory's .log segments, read from
    the v2 batch headers."""
    out = []
    names = sorted(n for n in os.listdir(pdir) if n.endswith(".log"))
    assert names, "no .log segments in %s: %s" % (pdir, sorted(os.listdir(pdir)))
    for name in names:
        with open(os.path.join(pdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 61 <= len(data):
            base_offset, length = struct.unpack_from(">qi", data, pos)
            if length < 49 or pos + 12 + length > len(data):
                break
            magic = data[pos + 16]
            assert magic == 2, "%s: batch at byte %d has magic %d" % (name, pos, magic)
            pid, epoch, seq, count = struct.unpack_from(">qhii", data, pos + 43)
            out.append((base_offset, count, pid, epoch, seq))
            pos += 12 + length
    return out


def check_group_summary(res, order, partitions, what):
    s = res.summary
    assert s is not None, res.describe()
    assert s.get("assignment") == list(range(partitions)), "%s: assignment %s" % (what, s.get("assignment"))
    want = {str(p): len(order.get(p, [])) for p in range(partitions)}
    assert s.get("end_offsets") == want, "%s: end offsets %s, want %s" % (what, s.get("end_offsets"), want)
    assert s.get("committed") == want, "%s: committed offsets %s, want %s (commit errors: %s)" % (
        what, s.get("committed"), want, s.get("commit_errors") or s.get("committed_error"))


def consume_group(jc, bootstrap, topic, group, expected, timeout_s, linger_ms=1500):
    return jc.run("consume-group", bootstrap, topic, group, expected, int(timeout_s * 1000),
                  "--linger-ms", linger_ms, "--deadline-ms", int((timeout_s + 40) * 1000),
                  timeout=timeout_s + 60)


# --------------------------------------------------------------------- tests


@pytest.mark.timeout(300)
def test_default_producer_group_consumer_exactly_once(jclient, broker):
    """20,000 keyed records from the default (idempotent, acks=all) producer
    to 3 partitions; the group consumer reads each exactly once, in order per
    partition, commits, and a later member of the group finds nothing left."""
    topic = unique_topic("java-eo")
    n, parts = 20000, 3
    create_topic(jclient, broker.bootstrap, topic, parts)

    prod = jclient.run("produce", broker.bootstrap, topic, n, "--deadline-ms", 150_000, timeout=200)
    assert prod.summary is not None and prod.summary.get("client_version") == jclient.version, prod.describe()
    acks = produced_acks(prod, n)
    assert prod.rc == 0 and len(acks) == n and not prod.of("err"), \
        "default producer: %d of %d records acknowledged\n%s" % (len(acks), n, prod.describe())
    ack_parts = check_ack_offsets(acks)
    assert sorted(ack_parts) == list(range(parts)), "keys hashed to partitions %s only" % sorted(ack_parts)
    for p, seq in ack_parts.items():
        assert [o for _, o in seq] == list(range(len(seq))), "partition %d: acked offsets not 0..%d" % (p, len(seq) - 1)
    # The client's defaults really made it idempotent: every batch on disk
    # carries its producer id, and per partition the sequence numbers run on
    # from 0 without gaps or overlaps.
    pids = set()
    for p in range(parts):
        batches = log_batches(broker.partition_dir(topic, p))
        pids.update((pid, epoch) for _, _, pid, epoch, _ in batches)
        assert all(pid >= 0 and epoch >= 0 for _, _, pid, epoch, _ in batches), \
            "partition %d: batches written without a producer id/epoch (is the producer idempotent?): %s" % (
                p, [b for b in batches if b[2] < 0 or b[3] < 0][:5])
        want_seq = 0
        for base, count, pid, epoch, seq in batches:
            assert seq == want_seq, "partition %d: batch at offset %d has base sequence %d, want %d" % (
                p, base, seq, want_seq)
            want_seq += count
    assert len(pids) == 1, "one producer wrote with several (producer id, epoch) pairs: %s" % sorted(pids)

    group = "java-g-" + uuid.uuid4().hex[:8]
    cons = consume_group(jclient, broker.bootstrap, topic, group, n, timeout_s=90)
    assert cons.summary is not None and cons.rc == 0, "group consumer failed\n%s" % cons.describe()
    order = check_consumed(cons, acks, n, "group consumer")
    check_group_summary(cons, order, parts, "group consumer")
    assert sum(len(v) for v in order.values()) == n

    # A new member of the same group resumes at the committed offsets: nothing left.
    again = consume_group(jclient, broker.bootstrap, topic, group, 0, timeout_s=45, linger_ms=2000)
    assert again.summary is not None and again.rc == 0, "second group consumer failed\n%s" % again.describe()
    assert not again.of("rec"), "a new member of group %s re-read %d records past the committed offsets, " \
                                "first: %s" % (group, len(again.of("rec")), again.of("rec")[:3])
    assert again.summary.get("assignment") == list(range(parts)), again.describe()


@pytest.mark.timeout(450)
def test_kill9_while_default_producer_sends(jclient, broker, tmp_path):
    """kill -9 the broker twice while the default producer (idempotent,
    acks=all, delivery.timeout.ms=120 s) streams keyed records, restarting it
    on the same port and data dir each time.  The producer retries across the
    outages; afterwards every acknowledged record is present exactly once,
    at its acknowledged offset, in send order per partition."""
    topic = unique_topic("java-kill")
    n, parts, rate = 24000, 3, 2000  # ~12 s of sending
    create_topic(jclient, broker.bootstrap, topic, parts)

    out_path, err_path = str(tmp_path / "produce.out"), str(tmp_path / "produce.err")
    proc = jclient.popen("produce", broker.bootstrap, topic, n, "--rate", rate, "--deadline-ms", 240_000,
                         stdout_path=out_path, stderr_path=err_path)

    def acked_so_far():
        with open(out_path, "rb") as f:
            return f.read().count(b'"t":"ack"')

    def partial():
        with open(out_path, encoding="utf-8", errors="replace") as f, \
                open(err_path, encoding="utf-8", errors="replace") as e:
            return JavaResult("produce (background)", proc.poll(), f.read(), e.read())

    kills = []
    try:
        for frac in (0.25, 0.6):
            deadline = time.monotonic() + 60
            while acked_so_far() < n * frac:
                if proc.poll() is not None:
                    pytest.fail("producer exited before the kill at %d%% of acks\n%s"
                                % (frac * 100, partial().describe()), pytrace=False)
                if time.monotonic() > deadline:
                    pytest.fail("producer acknowledged only %d records in 60 s (waiting for %d)\n%s"
                                % (acked_so_far(), n * frac, partial().describe()), pytrace=False)
                time.sleep(0.05)
            assert proc.poll() is None, "producer finished before the broker could be killed"
            at = acked_so_far()
            broker.kill9()
            time.sleep(1.0)  # the producer sees the outage: refused connections, retries
            broker.start()
            kills.append(at)
        try:
            proc.wait(timeout=240)  # default delivery.timeout.ms is 120 s
        except subprocess.TimeoutExpired:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()  # by PID
            proc.wait(30)
    prod = partial()
    where = "kill -9 after %s acks" % " and ".join(map(str, kills))
    assert prod.summary is not None and prod.summary.get("client_version") == jclient.version, \
        "producer (%s) gave no summary\n%s" % (where, prod.describe())
    acks = produced_acks(prod, n)
    check_ack_offsets(acks)

    group = "java-kill-" + uuid.uuid4().hex[:8]
    cons = consume_group(jclient, broker.bootstrap, topic, group, len(acks), timeout_s=60, linger_ms=3000)
    assert cons.summary is not None, "group consumer failed (%s)\n%s" % (where, cons.describe())
    assert cons.rc in (0, 4), "group consumer failed (%s)\n%s" % (where, cons.describe())
    order = check_consumed(cons, acks, n, "after %s" % where)
    check_group_summary(cons, order, parts, "after %s" % where)
    for p in range(parts):
        anon = [b for b in log_batches(broker.partition_dir(topic, p)) if b[2] < 0]
        assert not anon, "partition %d: batches without a producer id (base offset, count, pid, epoch, seq): %s" % (
            p, anon[:5])

    # Nothing lost or duplicated; now the producer must also have delivered
    # everything: the outages were far shorter than delivery.timeout.ms.
    failed = sorted({e["i"] for e in prod.of("err")})
    assert prod.rc == 0 and len(acks) == n and not failed, \
        "default producer across %s: %d of %d acknowledged, %d failed\n%s" % (
            where, len(acks), n, len(failed), prod.describe())
    assert sum(len(v) for v in order.values()) == n


@pytest.mark.timeout(180)
def test_admin_topics_and_cluster(jclient, broker):
    """Admin client: create (with a topic config), list, describe topics and
    configs, describe cluster, the errors for an existing / unknown topic,
    delete."""
    topic, other = unique_topic("java-adm"), unique_topic("java-adm1")
    missing = unique_topic("java-none")
    res, ops = jclient.admin(
        broker.bootstrap,
        ["create-topic", topic, "3", "retention.ms=3600000"],
        ["create-topic", other, "1"],
        ["list-topics"],
        ["describe-topic", topic, other],
        ["describe-cluster"],
        ["describe-configs", topic],
        ["create-topic", topic, "3"],
        ["describe-topic", missing],
        ["delete-topic", other],
        ["alter-config", topic, "retention.ms=", "segment.ms=600000"],
        ["describe-configs", topic],
        ["alter-config", topic, "retention.mss=1"],
    )
    create, create1, listed, desc, cluster, configs, again, unknown, delete, alter, altered, bad = ops

    def ok(op):
        assert op["ok"], "%s %s failed: %s\n%s" % (op["op"], op["args"], op.get("error"), res.describe())

    for op in (create, create1, listed, desc, cluster, configs, delete, alter, altered):
        ok(op)
    # incrementalAlterConfigs: the override deleted goes back to the default, the new one is set.
    cfg = altered["configs"][topic]
    assert cfg["retention.ms"]["value"] == "604800000", cfg["retention.ms"]
    assert cfg["retention.ms"]["source"] == "DEFAULT_CONFIG", cfg["retention.ms"]
    assert cfg["segment.ms"] == {"value": "600000", "source": "DYNAMIC_TOPIC_CONFIG", "read_only": False}, cfg
    assert not bad["ok"] and bad["error_class"].endswith(".InvalidConfigurationException"), bad
    if "num_partitions" in create:
        assert create["num_partitions"] == 3 and create["replication_factor"] == 1, create

    assert {topic, other} <= set(listed["topics"]), "list-topics: %s" % listed["topics"]

    d = desc["topics"]
    assert set(d) == {topic, other}, d
    for name, count in ((topic, 3), (other, 1)):
        td = d[name]
        assert td["internal"] is False, td
        assert [p["partition"] for p in td["partitions"]] == list(range(count)), td
        for p in td["partitions"]:
            assert p["leader"] == {"id": 1, "host": "127.0.0.1", "port": broker.port, "rack": None}, p
            assert p["replicas"] == [1] and p["isr"] == [1], p
    assert d[topic]["topic_id"] and d[topic]["topic_id"] != d[other]["topic_id"], d

    assert cluster["cluster_id"], cluster
    assert cluster["nodes"] == [{"id": 1, "host": "127.0.0.1", "port": broker.port, "rack": None}], cluster
    assert cluster["controller"] is not None and cluster["controller"]["id"] == 1, cluster

    cfg = configs["configs"][topic]
    assert cfg["retention.ms"]["value"] == "3600000", cfg["retention.ms"]
    assert cfg["retention.ms"]["source"] == "DYNAMIC_TOPIC_CONFIG", cfg["retention.ms"]
    assert cfg["cleanup.policy"]["value"] == "delete", cfg.get("cleanup.policy")

    assert not again["ok"] and again["error_class"].endswith(".TopicExistsException"), again
    assert not unknown["ok"] and unknown["error_class"].endswith(".UnknownTopicOrPartitionException"), unknown

    # The deleted topic disappears from the listing (deletion may be asynchronous).
    deadline = time.monotonic() + 20
    while True:
        res2, (listed2,) = jclient.admin(broker.bootstrap, ["list-topics"])
        ok(listed2)
        if other not in listed2["topics"]:
            break
        assert time.monotonic() < deadline, "deleted topic %s still listed: %s" % (other, listed2["topics"])
        time.sleep(0.5)
    assert topic in listed2["topics"], listed2
