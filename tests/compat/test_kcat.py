"""kcat (Debian's, librdkafka 2.0.2) against Sluice."""

import json
import re
import shutil
import subprocess
import time

import pytest

from clients import ck_create_topic
from conftest import unique_topic

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def kcat(broker, *args, stdin=None, timeout=30, check=True):
    argv = ["kcat", "-b", broker.bootstrap, "-m", "10"] + list(args)
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("kcat %s failed rc=%d\nstdout: %s\nstderr: %s" % (
            " ".join(args), p.returncode, p.stdout[-2000:], p.stderr[-2000:]))
    return p


def test_metadata_list(broker):
    topics = {unique_topic("kcat-md-a"): 1, unique_topic("kcat-md-b"): 4}
    for t, n in topics.items():
        ck_create_topic(broker.bootstrap, t, n)

    out = kcat(broker, "-L").stdout.decode()
    assert re.search(r"broker 1 at 127\.0\.0\.1:%d" % broker.port, out), out
    assert re.search(r"\b1 brokers:", out), out
    for t, n in topics.items():
        assert ('topic "%s" with %d partitions:' % (t, n)) in out, out
        for p in range(n):
            assert re.search(r"partition %d, leader 1, replicas: 1, isrs: 1" % p, out), out

    md = json.loads(kcat(broker, "-L", "-J").stdout)
    assert md["controllerid"] == 1, md
    assert [b["id"] for b in md["brokers"]] == [1], md
    assert md["brokers"][0]["name"] == broker.bootstrap, md
    by_name = {t["topic"]: t for t in md["topics"]}
    for t, n in topics.items():
        assert t in by_name, (t, md)
        parts = sorted(by_name[t]["partitions"], key=lambda p: p["partition"])
        assert [p["partition"] for p in parts] == list(range(n))
        for p in parts:
            assert p["leader"] == 1
            assert [r["id"] for r in p["replicas"]] == [1]
            assert [r["id"] for r in p["isrs"]] == [1]
        assert "error" not in by_name[t], by_name[t]

    # single-topic metadata query
    md1 = json.loads(kcat(broker, "-L", "-J", "-t", list(topics)[1]).stdout)
    assert [t["topic"] for t in md1["topics"]] == [list(topics)[1]]
    assert len(md1["topics"][0]["partitions"]) == 4


@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_codec(broker, codec):
    topic = unique_topic("kcat-" + codec)
    ck_create_topic(broker.bootstrap, topic, 2)
    n = 300
    # Compressible values so the codec actually does something.
    lines = ["key%03d:value-%s-%05d-%s" % (i, codec, i, "abc" * (i % 50)) for i in range(n)]
    t0 = int(time.time() * 1000)
    kcat(broker, "-P", "-t", topic, "-p", "1", "-K:", "-H", "hk1=hv1", "-H", "hk2=hv2",
         "-X", "compression.codec=%s" % codec, "-X", "linger.ms=50",
         stdin=("\n".join(lines) + "\n").encode())
    t1 = int(time.time() * 1000)

    out = kcat(broker, "-C", "-t", topic, "-p", "1", "-e", "-o", "beginning",
               "-f", "%k|%s|%o|%T|%h|%p\\n").stdout.decode()
    rows = out.splitlines()
    assert len(rows) == n, "got %d rows, want %d:\n%s" % (len(rows), n, out[:2000])
    for i, row in enumerate(rows):
        k, v, off, ts, hdrs, part = row.split("|")
        want_k, want_v = lines[i].split(":", 1)
        assert (k, v) == (want_k, want_v), (i, row)
        assert int(off) == i, (i, row)
        assert int(part) == 1
        assert t0 - 1000 <= int(ts) <= t1 + 1000, "timestamp %s not in [%d,%d]" % (ts, t0, t1)
        assert hdrs == "hk1=hv1,hk2=hv2", (i, row)

    # Partition 0 got nothing.
    out0 = kcat(broker, "-C", "-t", topic, "-p", "0", "-e", "-o", "beginning", "-f", "%o\\n").stdout
    assert out0.strip() == b""

    # JSON envelope, starting from a middle offset.
    out = kcat(broker, "-C", "-t", topic, "-p", "1", "-e", "-o", "250", "-J").stdout.decode()
    msgs = [json.loads(l) for l in out.splitlines()]
    assert [m["offset"] for m in msgs] == list(range(250, n))
    for m in msgs:
        i = m["offset"]
        want_k, want_v = lines[i].split(":", 1)
        assert m["key"] == want_k and m["payload"] == want_v, m
        assert m["partition"] == 1 and m["topic"] == topic
        assert m["tstype"] == "create", m
        assert t0 - 1000 <= m["ts"] <= t1 + 1000, m
        assert m["headers"] == ["hk1", "hv1", "hk2", "hv2"] or m["headers"] == {"hk1": "hv1", "hk2": "hv2"}, m
        assert m["broker"] == 1, m

    # Relative offset from end.
    out = kcat(broker, "-C", "-t", topic, "-p", "1", "-e", "-o", "-5", "-f", "%o\\n").stdout.decode()
    assert [int(x) for x in out.split()] == list(range(n - 5, n))


def test_auto_create_on_produce(broker_factory):
    broker = broker_factory(**{"num.partitions": 3})
    topic = unique_topic("kcat-auto")
    kcat(broker, "-P", "-t", topic, "-p", "2", stdin=b"hello\nworld\n")
    md = json.loads(kcat(broker, "-L", "-J", "-t", topic).stdout)
    assert len(md["topics"]) == 1 and md["topics"][0]["topic"] == topic
    assert len(md["topics"][0]["partitions"]) == 3, md
    out = kcat(broker, "-C", "-t", topic, "-p", "2", "-e", "-o", "beginning", "-f", "%o:%s\\n").stdout
    assert out.decode().splitlines() == ["0:hello", "1:world"]


def test_query_offsets_for_times(broker):
    topic = unique_topic("kcat-q")
    ck_create_topic(broker.bootstrap, topic, 1)
    kcat(broker, "-P", "-t", topic, "-p", "0", stdin=b"a\nb\nc\n")
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-e", "-o", "beginning", "-f", "%o %T\\n").stdout.decode()
    ts = [int(l.split()[1]) for l in out.splitlines()]
    assert len(ts) == 3
    # The first offset whose timestamp >= ts[0] is 0; a future timestamp gives the end (-1 => logEndOffset).
    q = kcat(broker, "-Q", "-t", "%s:0:%d" % (topic, ts[0])).stdout.decode()
    assert re.search(r"\[0\]\s+offset\s+0\b", q), q
    q = kcat(broker, "-Q", "-t", "%s:0:%d" % (topic, ts[-1] + 60_000)).stdout.decode()
    assert re.search(r"\[0\]\s+offset\s+-1\b", q), q
