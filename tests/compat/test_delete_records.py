"""DeleteRecords (kafka-delete-records, AdminClient.delete_records): the partition's log start
moves to the offset asked, whole segments below it go, consumers start there, and it holds
after a restart; an offset past the high watermark is refused. Driven by confluent-kafka and
kafka-python where the installed build has the API (the new venv's), and by the wire protocol
(DeleteRecords v1) everywhere."""
from __future__ import annotations

import os

import pytest
from confluent_kafka import TopicPartition

import wire
from clients import ck_admin, ck_consume, ck_consumer, ck_create_topic, ck_producer, ck_watermarks
from conftest import unique_topic


def delete_records_wire(bootstrap, topic, partition, offset):
    """DeleteRecords v1 of one partition: (low watermark, error code)."""
    body = (wire.array([topic], lambda t: wire.string(t) + wire.array(
        [(partition, offset)], lambda p: wire.i32(p[0]) + wire.i64(p[1]))) + wire.i32(10000))
    with wire.Conn.to(bootstrap) as c:
        r = wire.Reader(c.request(21, 1, body))
    r.i32()  # throttle
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i64(), r.i16()))))
    ((name, ((p, low, err),)),) = topics
    assert (name, p) == (topic, partition)
    return low, err


def delete_records_confluent(bootstrap, topic, partition, offset):
    admin = ck_admin(bootstrap)
    futs = admin.delete_records([TopicPartition(topic, partition, offset)], request_timeout=15)
    try:
        res = list(futs.values())[0].result(timeout=20)
    except Exception as e:  # KafkaException carrying the partition's error
        return -1, e.args[0].code()
    return res.low_watermark, 0


def delete_records_kafka_python(bootstrap, topic, partition, offset):
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError as KPError
    from kafka.structs import TopicPartition as KPTopicPartition
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        res = admin.delete_records({KPTopicPartition(topic, partition): offset}, timeout_ms=15000)
    except KPError as e:
        return -1, e.errno
    finally:
        admin.close()
    return res[KPTopicPartition(topic, partition)]["low_watermark"], 0


def _has(client):
    if client == "confluent":
        from confluent_kafka.admin import AdminClient
        return hasattr(AdminClient, "delete_records")
    if client == "kafka-python":
        from kafka import KafkaAdminClient
        return hasattr(KafkaAdminClient, "delete_records")
    return True


DELETERS = {"wire": delete_records_wire, "confluent": delete_records_confluent,
            "kafka-python": delete_records_kafka_python}


@pytest.mark.parametrize("client", ["wire", "confluent", "kafka-python"])
def test_delete_records_moves_the_log_start(broker, client):
    if not _has(client):
        pytest.skip("%s has no delete_records in this build" % client)
    delete = DELETERS[client]
    topic = unique_topic("delrec")
    ck_create_topic(broker.bootstrap, topic, 1, config={"segment.bytes": "16384"})
    p = ck_producer(broker.bootstrap, **{"linger.ms": 5, "batch.size": 2000})
    for i in range(1000):
        p.produce(topic, value=b"r-%04d-" % i + b"x" * 90, partition=0)
    assert p.flush(30) == 0
    assert ck_watermarks(broker.bootstrap, topic) == (0, 1000)
    segments_before = sorted(f for f in os.listdir(broker.partition_dir(topic, 0)) if f.endswith(".log"))
    assert len(segments_before) > 3, segments_before

    assert delete(broker.bootstrap, topic, 0, 1001)[1] == 1, "past the high watermark: OFFSET_OUT_OF_RANGE"
    assert delete(broker.bootstrap, topic, 0, 600) == (600, 0)
    assert ck_watermarks(broker.bootstrap, topic) == (600, 1000)
    got = ck_consume(broker.bootstrap, topic, {0: 600}, expected_counts={0: 400})
    assert [m.offset() for m in got[0]] == list(range(600, 1000))
    assert got[0][0].value().startswith(b"r-0600-")
    # A consumer starting from the beginning starts at the new log start.
    got = ck_consume(broker.bootstrap, topic, {0: -2}, expected_counts={0: 400})  # OFFSET_BEGINNING
    assert got[0][0].offset() == 600, got[0][0].offset()
    # A smaller offset changes nothing; the segments wholly below 600 are gone.
    assert delete(broker.bootstrap, topic, 0, 100) == (600, 0)
    bases = sorted(int(f[:-4]) for f in os.listdir(broker.partition_dir(topic, 0)) if f.endswith(".log"))
    assert bases[0] <= 600 and (len(bases) == 1 or bases[1] > 600), bases
    assert len(bases) < len(segments_before), (bases, segments_before)

    broker.restart()
    assert ck_watermarks(broker.bootstrap, topic) == (600, 1000), "the log start survives a restart"
    # -1: everything below the high watermark.
    assert delete(broker.bootstrap, topic, 0, -1) == (1000, 0)
    assert ck_watermarks(broker.bootstrap, topic) == (1000, 1000)


def test_delete_records_refusals(broker):
    topic = unique_topic("delrec-bad")
    ck_create_topic(broker.bootstrap, topic, 1)
    assert delete_records_wire(broker.bootstrap, topic, 0, 5)[1] == 1  # empty log: OFFSET_OUT_OF_RANGE
    assert delete_records_wire(broker.bootstrap, topic, 3, 0)[1] == 3  # UNKNOWN_TOPIC_OR_PARTITION
    assert delete_records_wire(broker.bootstrap, unique_topic("none"), 0, 0)[1] == 3
    assert delete_records_wire(broker.bootstrap, topic, 0, -7)[1] == 1
