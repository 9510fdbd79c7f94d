#!/usr/bin/env python3
"""Start-up time of one broker with a large log, from a cold page cache.

Fills a data directory with `--records` records of 100 bytes (idempotent producer,
`--partitions` partitions) through `sluice perf produce`, then measures the time from
starting `sluice serve` to its "ready" line three ways, evicting the data directory from
the page cache (posix_fadvise DONTNEED) before each start:

  clean   after a SIGTERM: every segment has its summary, none is read;
  crash   after one more record per partition and a kill -9: each active segment no longer
          matches its summary and is read whole (sealed ones still come from summaries);
  scan    with every summary deleted: every segment is read, as before summaries.

Usage: scripts/bench-start.py [--records N] [--partitions P] [--segment-bytes B] [--bin PATH]
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

PORT = 19192


def evict(root):
    for d, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def start(binary, props, log):
    out = open(log, "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen([binary, "serve", props], stdout=out, stderr=subprocess.STDOUT)
    while True:
        with open(log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        m = re.search(r"ready recovery=RecoveryStats \{([^}]*)\}", text)
        if m:
            return proc, time.monotonic() - t0, m.group(1)
        if proc.poll() is not None:
            sys.exit("broker exited: see %s" % log)
        if time.monotonic() - t0 > 600:
            proc.kill()
            sys.exit("broker not ready in 600 s")
        time.sleep(0.005)


def stop(proc, sig):
    proc.send_signal(sig)
    proc.wait(60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=30_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--segment-bytes", type=int, default=1 << 30)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "sluice"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sluice-bench-start-")
    data = os.path.join(work, "data")
    props = os.path.join(work, "server.properties")
    with open(props, "w") as f:
        f.write("log.dirs=%s\nlisteners=PLAINTEXT://127.0.0.1:%d\nlog.segment.bytes=%d\n" % (data, PORT, a.segment_bytes))
    perf = [a.bin, "perf", "produce", "--bootstrap", "127.0.0.1:%d" % PORT, "--partitions", str(a.partitions)]
    proc, _, _ = start(a.bin, props, os.path.join(work, "fill.log"))
    left = a.records
    while left > 0:  # the idempotent perf producer stamps its batches up front: in slices
        n = min(left, 10_000_000)
        subprocess.run(perf + ["--records", str(n), "--idempotent"], check=True, stdout=subprocess.DEVNULL)
        left -= n
    stop(proc, signal.SIGTERM)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs)
    print("data: %d records in %d partitions, %.2f GB, segment.bytes %d" % (a.records, a.partitions, size / 1e9,
                                                                           a.segment_bytes))
    for mode in ("clean", "crash", "scan"):
        if mode == "scan":
            for d, _, fs in os.walk(data):
                for f in fs:
                    if f.endswith(".batches"):
                        os.unlink(os.path.join(d, f))
        evict(data)
        proc, secs, stats = start(a.bin, props, os.path.join(work, "%s.log" % mode))
        print("%-5s start to ready: %7.3f s  (%s)" % (mode, secs, stats))
        if mode == "clean":
            subprocess.run(perf + ["--records", str(a.partitions), "--batch-records", "1"], check=True,
                           stdout=subprocess.DEVNULL)
            stop(proc, signal.SIGKILL)
        else:
            stop(proc, signal.SIGTERM)
    subprocess.run(["rm", "-rf", work], check=True)


if __name__ == "__main__":
    main()
