"""Sluice's own tools as a user runs them: `sluice perf produce|consume` against a running broker
(the records, rates and latency percentiles it reports, the records really in the topic
afterwards, its progress lines on a long run), and `sluice-sim run --timeline FILE.html` (the
run drawn as a picture: its nodes, clients, requests and faults, and a failing run's violation
marked where it happened, with the command that replays it). Neither depends on the Python
client libraries, so they run once per suite run (in the new venv)."""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from clients import ck_consume, ck_create_topic, ck_watermarks
from conftest import REPO, SLUICE_BIN, _set_pdeathsig, unique_topic

pytestmark = pytest.mark.skipif(sys.prefix.rstrip("/").endswith("-old"),
                                reason="Sluice's own tools are tested once per suite run (in the .venv-compat-new run)")


def sim_bin():
    """The simulator's binary: the one built beside the broker under test (test.sh builds both
    in its "ci" profile), else a release or debug build."""
    candidates = [os.path.join(os.path.dirname(SLUICE_BIN), "sluice-sim")]
    candidates += [os.path.join(REPO, "target", build, "sluice-sim") for build in ("release", "debug")]
    for p in candidates:
        if os.path.isfile(p):
            return p
    pytest.fail("sluice-sim not found beside %s nor in target/release or target/debug "
                "(cargo build -p sluice-sim)" % SLUICE_BIN, pytrace=False)


def run(argv, timeout=60):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=_set_pdeathsig)


# ------------------------------------------------------------------ sluice perf

NUM = r"(\d+(?:\.\d+)?)"
PRODUCE = re.compile(r"^produce: (\d+) records of (\d+) bytes in %s s: (\d+) records/s, %s MB/s \(values\), "
                     r"acks=(-?\d+) batch=(\d+) in-flight=(\d+)( idempotent)? errors=(\d+)$" % (NUM, NUM), re.M)
PRODUCE_TXN = re.compile(r"^produce: (\d+) records of (\d+) bytes in (\d+) transactions of (\d+) records, %s s: "
                         r"(\d+) transactions/s, (\d+) records/s, %s MB/s \(values\)$" % (NUM, NUM), re.M)
LATENCY = re.compile(r"^produce latency per request \(ms\): p50 %s p99 %s p99\.9 %s max %s$" % (NUM, NUM, NUM, NUM),
                     re.M)
TXN_LATENCY = re.compile(r"^transaction latency \(ms\): p50 %s p99 %s max %s$" % (NUM, NUM, NUM), re.M)
CONSUME = re.compile(r"^consume: (\d+) records, %s MB in %s s: (\d+) records/s, %s MB/s \(batches on the wire\)$"
                     % (NUM, NUM, NUM), re.M)
PROGRESS = re.compile(r"^(produce|consume): (\d+)/(\d+) records after (\d+) s, (\d+) records/s over the last (\d+) s$",
                      re.M)


def one(pattern, text, what):
    found = pattern.findall(text)
    assert len(found) == 1, "want one %s line, found %d in:\n%s" % (what, len(found), text)
    return found[0]


def check_rates(records, secs, per_s, mb_per_s, bytes_per_record, out):
    """The rates a report prints agree with its own counts: records/s times the run's seconds
    (printed to 1/100 s) is the records, and MB/s is records/s times the bytes per record."""
    assert secs >= 0 and per_s > 0 and mb_per_s > 0, out
    assert abs(per_s * secs - records) <= per_s * 0.0051 + records * 0.01 + 1, out
    assert abs(mb_per_s - per_s * bytes_per_record / 1e6) <= 0.051 + mb_per_s * 0.01, out


def check_percentiles(ps, secs, out):
    """Latency percentiles, lowest quantile first: positive, in order, and none longer than the run."""
    assert ps[0] > 0, "a zero latency percentile:\n" + out
    assert ps == sorted(ps), "percentiles out of order:\n" + out
    assert ps[-1] <= secs * 1000 + 6, "a request took longer than the whole run:\n" + out


def produce_report(out, records, record_size, acks=-1, batch=None, in_flight=16):
    """Checks `sluice perf produce`'s report (stdout); returns its numbers."""
    (n, size, secs, per_s, mb_s, r_acks, r_batch, r_in_flight, _idem, errors) = one(PRODUCE, out, "produce report")
    n, secs, per_s, mb_s = int(n), float(secs), int(per_s), float(mb_s)
    assert n == records, "asked for %d records, reported %d:\n%s" % (records, n, out)
    assert int(size) == record_size and int(r_acks) == acks and int(r_in_flight) == in_flight, out
    assert batch is None or int(r_batch) == batch, out
    assert int(errors) == 0, out
    check_rates(n, secs, per_s, mb_s, record_size, out)
    if acks != 0:
        p50, p99, p999, pmax = (float(x) for x in one(LATENCY, out, "latency"))
        check_percentiles([p50, p99, p999, pmax], secs, out)
    else:
        assert not LATENCY.search(out), "acks=0 has no responses to time:\n" + out
    return {"records": n, "secs": secs, "per_s": per_s, "mb_s": mb_s}


def consume_report(out, records, record_size):
    """Checks `sluice perf consume`'s report; returns its numbers."""
    n, mb, secs, per_s, mb_s = one(CONSUME, out, "consume report")
    n, mb, secs, per_s, mb_s = int(n), float(mb), float(secs), int(per_s), float(mb_s)
    assert n == records, "the topic holds %d records, consume reported %d:\n%s" % (records, n, out)
    # Bytes of batches on the wire: every value, plus the batches' and records' headers.
    assert records * record_size / 1e6 - 0.05 <= mb <= records * (record_size + 80) / 1e6 + 0.05, out
    # Bytes per record on the wire: each value plus its share of the batch and record headers,
    # and of any transaction markers. MB and MB/s are printed to 0.1 MB: each is checked as the
    # range it rounds from.
    assert per_s > 0 and mb_s >= 0, out
    assert abs(per_s * secs - n) <= per_s * 0.0051 + n * 0.01 + 1, out
    lo, hi = (mb - 0.05) * 1e6 / n, (mb + 0.05) * 1e6 / n
    assert lo <= record_size + 80 and hi >= record_size, out
    lo, hi = (mb_s - 0.05) * 1e6 / per_s, (mb_s + 0.05) * 1e6 / per_s
    assert lo <= (record_size + 80) * 1.01 and hi >= record_size * 0.99, out
    return {"records": n, "secs": secs, "per_s": per_s, "mb": mb}


def progress_lines(err, what, total):
    """A long run's progress lines (stderr): part of the records done, after at least 5 s."""
    lines = [p for p in PROGRESS.findall(err) if p[0] == what]
    assert lines, "no %s progress line on stderr:\n%s" % (what, err)
    for _, done, of, after, per_s, _last in lines:
        assert int(of) == total, err
        assert 0 < int(done) < total, "progress is reported while the run is under way:\n" + err
        assert int(after) >= 5 and int(per_s) > 0, err
    return [(int(l[1]), int(l[3]), int(l[4])) for l in lines]


def perf(mode, broker, topic, *args, timeout=60):
    r = run([SLUICE_BIN, "perf", mode, "--bootstrap", broker.bootstrap, "--topic", topic, *args], timeout=timeout)
    assert r.returncode == 0, "sluice perf %s exited %d\n%s\n%s" % (mode, r.returncode, r.stdout, r.stderr)
    return r


def check_values(msgs, n, record_size):
    assert len(msgs) == n, (len(msgs), n)
    value = bytes(ord("a") + i % 26 for i in range(record_size))  # what perf writes: abc...zab...
    assert all(m.value() == value for m in msgs), msgs[0].value()


def test_perf_produce_and_consume(broker):
    """Produce to three partitions; the report's count, rates and percentiles; the records in the
    topic (end offsets, and read back by a client); `perf consume` reading them all."""
    t = unique_topic("perf")
    out = perf("produce", broker, t, "--records", "30000", "--record-size", "200", "--batch-records", "1000",
               "--partitions", "3").stdout
    produce_report(out, 30000, 200, batch=1000)
    # Round-robin over the partitions, a batch each: 10 batches of 1000 on each.
    for p in range(3):
        assert ck_watermarks(broker.bootstrap, t, p) == (0, 10000), p
    got = ck_consume(broker.bootstrap, t, {1: 0}, {1: 10000})
    check_values(got[1], 10000, 200)
    consume_report(perf("consume", broker, t, "--records", "30000", "--partitions", "3").stdout, 30000, 200)


def test_perf_shows_progress_on_a_long_run(broker):
    """Progress lines come every 5 s (to stderr; there is no option for the interval): a producer
    held to --rate 1000 for 5.5 s, read by `perf consume` as it goes, prints one of each.
    The producer's last request is not sent before 5.4 s, so a line is due whatever the load."""
    t = unique_topic("perfprog")
    ck_create_topic(broker.bootstrap, t)  # before the consumer starts: it does not create it
    consumer = subprocess.Popen([SLUICE_BIN, "perf", "consume", "--bootstrap", broker.bootstrap, "--topic", t,
                                 "--records", "5500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_set_pdeathsig)
    try:
        p = perf("produce", broker, t, "--records", "5500", "--batch-records", "100", "--rate", "1000")
        c_out, c_err = consumer.communicate(timeout=30)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(10)
    rep = produce_report(p.stdout, 5500, 100, batch=100)
    assert 5.3 <= rep["secs"] and rep["per_s"] <= 1050, "--rate 1000 not kept:\n" + p.stdout
    for done, after, per_s in progress_lines(p.stderr, "produce", 5500):
        assert 300 <= per_s <= 1100, "the rate over the last seconds is --rate's:\n" + p.stderr
        assert done >= 300 * after, p.stderr
    assert consumer.returncode == 0, (c_out, c_err)
    consume_report(c_out, 5500, 100)
    progress_lines(c_err, "consume", 5500)
    assert ck_watermarks(broker.bootstrap, t) == (0, 5500)


def test_perf_produce_transactions(broker):
    """--transaction-batches: transactions of N batches, committed; a read_committed client
    reads every record."""
    t = unique_topic("perftxn")
    out = perf("produce", broker, t, "--records", "2000", "--batch-records", "100", "--transaction-batches", "2").stdout
    n, size, txns, per_txn, secs, txn_s, per_s, mb_s = one(PRODUCE_TXN, out, "transactional produce report")
    assert (int(n), int(size), int(txns), int(per_txn)) == (2000, 100, 10, 200), out
    check_rates(2000, float(secs), int(per_s), float(mb_s), 100, out)
    assert abs(int(txn_s) * float(secs) - 10) <= int(txn_s) * 0.0051 + 1, out
    check_percentiles([float(x) for x in one(TXN_LATENCY, out, "transaction latency")], float(secs), out)
    got = ck_consume(broker.bootstrap, t, {0: 0}, {0: 2000}, **{"isolation.level": "read_committed"})
    check_values(got[0], 2000, 100)


def test_perf_produce_makes_exactly_the_records_asked_for(broker):
    t = unique_topic("perfodd")
    out = perf("produce", broker, t, "--records", "1050", "--batch-records", "100").stdout
    assert ck_watermarks(broker.bootstrap, t) == (0, 1050), out
    produce_report(out, 1050, 100, batch=100)


def test_perf_consume_counts_records_not_transaction_markers(broker):
    t = unique_topic("perftxnc")
    perf("produce", broker, t, "--records", "2000", "--batch-records", "100", "--transaction-batches", "2")
    consume_report(perf("consume", broker, t, "--records", "2000").stdout, 2000, 100)


# ------------------------------------------------------------------ sluice-sim --timeline

API_NAMES = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit", 9: "OffsetFetch",
             10: "FindCoordinator"}
TIP = re.compile(r"^(\w+) \(API (\d+)\) from client (\d+) to node (\d+) sent at ([\d.]+) ms"
                 r"(?:, never arrived|, arrived at ([\d.]+) ms)(?:, never answered|, answered at ([\d.]+) ms)$")


def ms(ns):
    return "%.3f" % (ns / 1e6)


def sim_run(tmp_path, *args, expect_rc=0):
    """Runs one seed with --timeline (and --trace, what the picture is checked against)."""
    page, trace = tmp_path / "run.html", tmp_path / "run.jsonl"
    r = run([sim_bin(), "run", *args, "--timeline", str(page), "--trace", str(trace)], timeout=120)
    assert r.returncode == expect_rc, "sluice-sim run %s exited %d, want %d\n%s\n%s" % (
        " ".join(args), r.returncode, expect_rc, r.stdout[-3000:], r.stderr[-3000:])
    assert "timeline written to %s" % page in r.stderr, r.stderr
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    return r, page.read_text(), events


class Axis:
    """The picture's time axis, from its labelled ticks: which x a moment is drawn at."""

    def __init__(self, page):
        ticks = [(float(x) - 2, float(v) * (1000 if unit == "s" else 1))
                 for x, v, unit in re.findall(r'<text x="([\d.]+)" y="12" fill="#888">([\d.]+) (ms|s)</text>', page)]
        assert len(ticks) >= 2, "no time axis"
        (x0, t0), (x1, t1) = ticks[0], ticks[-1]  # the farthest apart: x is printed to 0.1 px
        self.px_per_ms = (x1 - x0) / (t1 - t0)
        self.x0 = x0 - t0 * self.px_per_ms

    def ms_at(self, x):
        return (float(x) - self.x0) / self.px_per_ms

    def check(self, x, at_ms, what):
        assert abs(self.ms_at(x) - at_ms) * self.px_per_ms <= 1.0, "%s drawn at %.3f ms, not at %.3f ms" % (
            what, self.ms_at(x), at_ms)


def check_timeline(page, events, stdout, nodes, title):
    """The picture against the run's trace: a lane per node and per client, every request drawn
    from its client to its node with its API, every fault where and when it happened, the heal,
    and the run's summary."""
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>"), page[:200]
    assert "<title>%s</title>" % title in page and "<h2>%s</h2>" % title in page, title
    pre = re.search(r"<pre>(.*)</pre>", page, re.S)
    assert pre, "the run's summary is not on the page"
    summary = html.unescape(pre.group(1))
    assert summary.strip().splitlines() == [l for l in stdout.strip().splitlines() if not l.startswith("wall ")], \
        summary
    end_ns = max(e["t_ns"] for e in events)
    axis = Axis(page)

    # A lane per node, "node 1" on.
    lanes = [int(n) for n in re.findall(r'<text x="4" y="[\d.]+" font-weight="bold">node (\d+)</text>', page)]
    assert lanes == list(range(1, nodes + 1)), "node lanes %s for a run of %d nodes" % (lanes, nodes)

    # A lane per client that connected.
    conns, clients = {}, set()
    for e in events:
        if e["event"] == "connect":
            conns[e["a"]] = (e["b"] >> 32, e["b"] & 0xFFFFFFFF)
            clients.add(e["b"] >> 32)
    drawn_clients = [int(c) for c in re.findall(r'<text x="4" y="[\d.]+">client (\d+)</text>', page)]
    assert len(clients) >= 2 and drawn_clients == sorted(clients), (drawn_clients, sorted(clients))

    # Every request sent: from its client to its node, its API, when sent; an arrival line or a
    # ×, and a tick when answered (each with the request's tooltip).
    sent = Counter()
    for e in events:
        if e["event"] == "send" and e["a"] in conns:
            client, node = conns[e["a"]]
            sent[(client, node + 1, e["b"], ms(e["t_ns"]))] += 1
    assert 100 <= sum(sent.values()) <= 30000, "a run with %d requests" % sum(sent.values())
    arrived = re.findall(r'<line [^>]*stroke-opacity="0\.35"><title>([^<]*)</title></line>', page)
    lost = re.findall(r'>×<title>([^<]*)</title></text>', page)
    answered = re.findall(r'<rect [^>]*width="2" height="8"[^>]*><title>([^<]*)</title></rect>', page)
    drawn = Counter()
    for tip in arrived + lost:
        m = TIP.match(tip)
        assert m, tip
        name, api, client, node, at, arrived_at, answered_at = m.groups()
        assert API_NAMES.get(int(api), name) == name, tip
        assert float(arrived_at or at) >= float(at) and float(answered_at or at) >= float(at), tip
        drawn[(int(client), int(node), int(api), at)] += 1
    assert drawn == sent, "requests drawn but not sent: %s; sent but not drawn: %s" % (
        list((drawn - sent).items())[:5], list((sent - drawn).items())[:5])
    assert len(arrived) > len(lost) and len(answered) > 0, (len(arrived), len(lost), len(answered))
    assert len(answered) == sum(", answered at " in t for t in arrived + lost), len(answered)
    names = {TIP.match(t).group(1) for t in arrived + lost}
    assert {API_NAMES[k] for (_, _, k, _) in sent if k in API_NAMES} <= names, names

    # Faults. A crash: a mark where it happened, and the node down until it booted again.
    spans = [(int(n), what, float(a), float(b)) for n, what, a, b in re.findall(
        r'<title>node (\d+) (down|isolated|stalled|disk full) from ([\d.]+) ms to ([\d.]+) ms</title>', page)]
    crashes = [e for e in events if e["event"] == "crash"]
    marks = re.findall(r'<text x="([\d.]+)" y="[\d.]+" fill="#000" font-weight="bold">✕'
                       r'<title>node (\d+) crashed at ([\d.]+) ms</title>', page)
    assert [(int(n), at) for _, n, at in marks] == [(e["a"] + 1, ms(e["t_ns"])) for e in crashes], marks
    for x, n, at in marks:
        axis.check(float(x) + 4, float(at), "node %s's crash" % n)
    for c in crashes:
        boot = next((e["t_ns"] for e in events if e["event"] == "boot" and e["a"] == c["a"]
                     and e["t_ns"] >= c["t_ns"]), end_ns)
        assert (c["a"] + 1, "down", float(ms(c["t_ns"])), float(ms(boot))) in spans, (c, spans)
    # Isolated and stalled: from the fault to its end (or the run's).
    for e in events:
        if e["event"] in ("isolate", "clog"):
            want = (e["a"] + 1, "isolated" if e["event"] == "isolate" else "stalled", float(ms(e["t_ns"])),
                    float(ms(min(e["b"], end_ns))))
            assert want in spans, (e, spans)
    # A full disk: every spell within a span drawn for its node, every span from a spell's start.
    full = [e for e in events if e["event"] == "disk-full" and e["b"] == 1]
    full_spans = [s for s in spans if s[1] == "disk full"]
    for e in full:
        assert any(s[0] == e["a"] + 1 and s[2] <= float(ms(e["t_ns"])) <= s[3] for s in full_spans), (e, full_spans)
    assert {(s[0], s[2]) for s in full_spans} <= {(e["a"] + 1, float(ms(e["t_ns"]))) for e in full}, full_spans
    n_faults = len(crashes) + len(full) + sum(e["event"] in ("isolate", "clog") for e in events)
    assert len(spans) >= len(crashes) + len(full_spans) and n_faults > 0, "a run without faults"
    # The heal, a line across the picture.
    heals = [e["t_ns"] for e in events if e["event"] == "heal"]
    drawn_heals = re.findall(r'<line x1="([\d.]+)"[^>]*stroke="#2a2"[^>]*><title>every fault healed at ([\d.]+) ms',
                             page)
    assert [at for _, at in drawn_heals] == [ms(h) for h in heals] and len(heals) == 1, drawn_heals
    axis.check(drawn_heals[0][0], heals[0] / 1e6, "the heal")

    # Peer traffic (a cluster's): per node, the messages it received.
    peer = Counter(e["a"] % 16 + 1 for e in events if e["event"] == "peer")
    strip = Counter()
    for n, count in re.findall(r'<title>node (\d+): (\d+) peer messages received in', page):
        strip[int(n)] += int(count)
    assert strip == peer, (strip, peer)
    return axis


def test_sim_timeline_draws_the_run(tmp_path):
    """A single-node run with crashes and full disks (seed 1 of the default scenario)."""
    r, page, events = sim_run(tmp_path, "--seed", "1")
    assert any(e["event"] == "crash" for e in events) and any(e["event"] == "disk-full" for e in events), \
        "seed 1 no longer crashes or fills the disk: pick a seed that does"
    check_timeline(page, events, r.stdout, 1, "sluice-sim seed 1 (passed)")
    assert "Produce (API 0) from client" in page and "Fetch (API 1) from client" in page
    m = re.search(r"^faults: (\d+) crashes", r.stdout, re.M)
    assert m and len(re.findall("crashed at", page)) == int(m.group(1)), r.stdout
    assert "<p>The checkers found nothing.</p>" in page and 'stroke="#d00"' not in page


def test_sim_timeline_draws_a_cluster_run(tmp_path):
    """Five nodes (seed 4 of the cluster scenario): crashes, isolations, stalls, peer traffic."""
    r, page, events = sim_run(tmp_path, "--scenario", "cluster", "--seed", "4")
    nodes = int(re.search(r"^plan: (\d+) nodes", r.stdout, re.M).group(1))
    kinds = {e["event"] for e in events}
    assert nodes == 5 and {"crash", "isolate", "clog", "peer"} <= kinds, "pick a seed with every fault: %s" % kinds
    check_timeline(page, events, r.stdout, nodes, "sluice-sim seed 4 (passed)")
    assert "<p>The checkers found nothing.</p>" in page and 'stroke="#d00"' not in page


def check_violations(page, events, stdout, nodes, title):
    """A failing run's picture: the run as check_timeline checks it, and each violation the
    run printed (stdout) a red line at its moment, with its text, and listed above the picture."""
    violations = re.findall(r"^  (t=(\d+)ms: .*)$", stdout, re.M)
    assert violations, stdout
    axis = check_timeline(page, events, stdout, nodes, title)
    marked = re.findall(r'<line x1="([\d.]+)" y1="[\d.]+" x2="\1" y2="[\d.]+" stroke="#d00" stroke-width="3">'
                        r'<title>([^<]*)</title></line><text [^>]*fill="#d00" font-weight="bold">violation</text>',
                        page)
    assert [html.unescape(v) for _, v in marked] == [v for v, _ in violations], marked[:3]
    for (x, _), (v, at) in zip(marked, violations):
        axis.check(x, int(at), v)
    listed = re.search(r"<p><b>Violations</b> \(red lines\):</p><ul>(.*?)</ul>", page)
    assert listed, "the violations are not listed"
    assert [html.unescape(v) for v in re.findall(r"<li>(.*?)</li>", listed.group(1))] == [v for v, _ in violations]
    assert "The checkers found nothing" not in page


MUTANT = "fetch-past-high-watermark"  # lets a consumer read past the high watermark


def test_sim_timeline_marks_the_violation(tmp_path):
    """A planted bug caught: the run exits 1 and prints the violations and the command that
    replays it; the picture marks each violation where it happened and lists them."""
    r, page, events = sim_run(tmp_path, "--seed", "2", "--mutant", MUTANT, expect_rc=1)
    assert "checkers: FAILED" in r.stdout, r.stdout
    violations = re.findall(r"^  (t=(\d+)ms: .*)$", r.stdout, re.M)
    assert violations and all("past the high watermark" in v for v, _ in violations), r.stdout
    check_violations(page, events, r.stdout, 1, "sluice-sim seed 2 (FAILED)")

    # The replay command printed runs the same seed with the same bug to the same failure.
    replay = re.findall(r"^replay: cargo run --release -p sluice-sim -- (run .*)$", r.stdout, re.M)
    assert len(replay) == 1, r.stdout
    argv = replay[0].split()
    assert argv[argv.index("--seed") + 1] == "2" and argv[argv.index("--mutant") + 1] == MUTANT, replay
    again = run([sim_bin(), *argv], timeout=120)
    assert again.returncode == 1, again.stdout
    trace = re.compile(r"^trace=\w+$", re.M)
    assert trace.findall(again.stdout) == trace.findall(r.stdout) and len(trace.findall(r.stdout)) == 1
    assert re.findall(r"^  (t=.*)$", again.stdout, re.M) == [v for v, _ in violations], again.stdout


def test_sim_timeline_draws_a_node_that_never_restarts(tmp_path):
    r, page, events = sim_run(tmp_path, "--seed", "9")
    assert not any(e["event"] == "boot" for e in events), "seed 9 restarts its node: pick one that does not"
    assert re.findall(r'font-weight="bold">node (\d+)</text>', page) == ["1"], "no lane for the run's node"
