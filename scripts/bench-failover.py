"""Controller failover on a three-node cluster: kill -9 the active controller, then time
(a) until the two survivors name a new controller in Metadata and (b) until a CreateTopics
through them succeeds. Prints one line per round and the median. Run with a compat venv:

    .venv-compat-new/bin/python scripts/bench-failover.py [rounds]
"""

import os
import statistics
import sys
import time

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "compat")
sys.path.insert(0, HERE)

from confluent_kafka.admin import NewTopic  # noqa: E402

from clients import ck_admin  # noqa: E402
from test_cluster import Cluster, all_agree, view, wait_until  # noqa: E402


def round_once(i):
    c = Cluster().start()
    try:
        old = wait_until("elected", lambda: all_agree(c, [1, 2, 3]))[0][1]
        c.node(old).kill9()
        t0 = time.monotonic()
        others = [b for b in c.nodes if b.alive()]
        wait_until("new controller", lambda: len({view(b)[1] for b in others} - {old, -1}) == 1
                   and len({view(b)[1] for b in others}) == 1, timeout=60)
        elected = time.monotonic() - t0
        admin = ck_admin(c.bootstrap)

        def create():
            futs = admin.create_topics([NewTopic("after-%d" % i, num_partitions=3, replication_factor=1)],
                                       request_timeout=10)
            futs["after-%d" % i].result(timeout=15)
            return True

        wait_until("create", create, timeout=60)
        created = time.monotonic() - t0
        return elected, created
    finally:
        c.close(keep=False)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    results = []
    for i in range(rounds):
        elected, created = round_once(i)
        results.append((elected, created))
        print("round %d: new controller named after %.2f s, topic created after %.2f s" % (i + 1, elected, created))
    print("median: new controller %.2f s, first CreateTopics %.2f s"
          % (statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)))


if __name__ == "__main__":
    main()
