"""Partition leader failover on a three-node cluster with Kafka's default session timeout:
a confluent-kafka producer with its defaults (acks=all) writes to partition 0 of a topic of
three replicas every 5 ms; the partition's leader is killed with kill -9; the time from the
kill to the first acknowledgement of a record sent after it is printed, per round, with the
median. Run with a compat venv:

    .venv-compat-new/bin/python scripts/bench-leader-failover.py [rounds] [session_ms]
"""

import os
import statistics
import sys
import time

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "compat")
sys.path.insert(0, HERE)

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import NewTopic  # noqa: E402

from clients import ck_admin  # noqa: E402
from test_cluster import Cluster, wait_until  # noqa: E402


def leader_of(bootstrap, topic):
    md = ck_admin(bootstrap).list_topics(topic, timeout=10)
    p = md.topics[topic].partitions.get(0)
    return p.leader if p is not None and len(p.isrs) == 3 else -1


def round_once(i, session_ms):
    c = Cluster(overrides={"broker.session.timeout.ms": session_ms}).start()
    try:
        topic = "failover-%d" % i

        def create():
            admin = ck_admin(c.bootstrap)
            fs = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)], request_timeout=10)
            try:
                fs[topic].result(timeout=15)
            except Exception as e:  # the controller may not be known yet, or it exists
                if "already exists" not in str(e):
                    return False
            return True

        wait_until("topic", create, timeout=60)
        leader = wait_until("leader", lambda: leader_of(c.bootstrap, topic) > 0 and leader_of(c.bootstrap, topic),
                            timeout=60)
        p = Producer({"bootstrap.servers": c.bootstrap})
        acks = []
        p.produce(topic, b"warm-up", partition=0, on_delivery=lambda e, m: acks.append((time.monotonic(), e)))
        p.flush(30)
        killed = None
        first_after = None
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end and first_after is None:
            if killed is None and time.monotonic() > acks[0][0] + 1:
                c.node(leader).kill9()
                killed = time.monotonic()

            def on_delivery(err, msg, sent=time.monotonic(), killed_at=killed):
                nonlocal first_after
                if err is None and killed_at is not None and first_after is None:
                    first_after = time.monotonic()

            p.produce(topic, b"x", partition=0, on_delivery=on_delivery)
            p.poll(0.005)
        p.flush(30)
        if first_after is None:
            raise RuntimeError("no acknowledgement within 60 s of the kill")
        return first_after - killed
    finally:
        c.close(keep=False)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    session_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 9000
    results = []
    for i in range(rounds):
        r = round_once(i, session_ms)
        results.append(r)
        print("round %d: kill -9 of the leader to the first acknowledged produce: %.2f s" % (i + 1, r), flush=True)
    print("median %.2f s over %d rounds (broker.session.timeout.ms=%d)" % (statistics.median(results), rounds, session_ms))


if __name__ == "__main__":
    main()
