"""Dynamic broker configs (AlterConfigs and IncrementalAlterConfigs on the broker resource,
per broker or cluster-wide): they take effect at once on topics without an override of
their own, outrank the static file as in Kafka (per broker > cluster-wide > file > default),
are described with those sources, survive a restart, and a static property or a bad value is
refused with Kafka's errors."""
import time

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import ConfigResource, ResourceType

import wire
from clients import ck_admin, ck_create_topic, ck_produce, ck_producer, ck_watermarks
from conftest import unique_topic

ME = "1"  # the broker fixture's node id


def describe(admin, restype, name):
    res = ConfigResource(restype, name)
    return list(admin.describe_configs([res], request_timeout=15).values())[0].result(timeout=15)


def source(entry):
    return int(getattr(entry.source, "value", entry.source))


class Refused(Exception):
    def __init__(self, code, message):
        super().__init__("error %d: %s" % (code, message))
        self.code, self.message = code, message or ""


def alter(broker, name, configs, validate_only=False):
    """AlterConfigs v0 on the broker resource `name` ("" for the cluster-wide default, which
    confluent-kafka's ConfigResource refuses to name): replaces that resource's whole dynamic
    set. Raises Refused with the answer's error."""
    entries = [wire.string(k) + wire.string(v) for k, v in configs.items()]
    body = wire.array([wire.i8(4) + wire.string(name) + wire.array(entries)]) + wire.i8(int(validate_only))
    with wire.Conn.to(broker.bootstrap, timeout=20) as c:
        r = wire.Reader(c.request(33, 0, body))
    r.i32()  # throttle
    (code, msg, rtype, rname), = r.array(lambda r: (r.i16(), r.string(), r.i8(), r.string()))
    assert (rtype, rname) == (4, name), (rtype, rname)
    if code:
        raise Refused(code, msg)


def cluster_wide(broker):
    """DescribeConfigs v1 of the cluster-wide broker resource: {name: (value, source)}."""
    body = wire.array([wire.i8(4) + wire.string("") + wire.i32(-1)]) + wire.i8(0)
    with wire.Conn.to(broker.bootstrap, timeout=20) as c:
        r = wire.Reader(c.request(32, 1, body))
    r.i32()

    def entry(r):
        name, value, _ro, src, _sens = r.string(), r.string(), r.i8(), r.i8(), r.i8()
        r.array(lambda r: (r.string(), r.string(), r.i8()))
        return name, (value, src)

    (code, _msg, _t, _n, configs), = r.array(lambda r: (r.i16(), r.string(), r.i8(), r.string(), r.array(entry)))
    assert code == 0, code
    return dict(configs)


def produce_one(bootstrap, topic, size):
    p = ck_producer(bootstrap, **{"message.max.bytes": 10_000_000, "message.timeout.ms": 10000})
    (d,) = ck_produce(p, topic, [{"value": b"x" * size}])
    return d.err


def too_large(err):
    return err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE


def test_message_max_bytes_per_broker_and_cluster_wide(broker):
    admin = ck_admin(broker.bootstrap)
    plain, own = unique_topic("dyn"), unique_topic("dyn-own")
    ck_create_topic(admin, plain, 1)
    ck_create_topic(admin, own, 1, config={"max.message.bytes": "2000000"})
    assert produce_one(broker.bootstrap, plain, 20_000) is None

    alter(broker, "", {"message.max.bytes": "10000"})
    assert too_large(produce_one(broker.bootstrap, plain, 20_000)), "the cluster-wide default is in force at once"
    assert produce_one(broker.bootstrap, own, 20_000) is None, "a topic's own override outranks the broker's"
    t = describe(admin, ResourceType.TOPIC, plain)["max.message.bytes"]
    assert (t.value, source(t)) == ("10000", 3), t  # DYNAMIC_DEFAULT_BROKER_CONFIG
    b = describe(admin, ResourceType.BROKER, ME)["message.max.bytes"]
    assert (b.value, source(b), b.is_read_only) == ("10000", 3, False), b
    assert cluster_wide(broker) == {"message.max.bytes": ("10000", 3)}, \
        "the cluster-wide resource lists what is set cluster-wide, alone"

    # Kept in the metadata log.
    broker.restart()
    admin = ck_admin(broker.bootstrap)
    assert too_large(produce_one(broker.bootstrap, plain, 20_000))
    assert describe(admin, ResourceType.BROKER, ME)["message.max.bytes"].value == "10000"

    # This broker's own value outranks the cluster-wide one.
    alter(broker, ME, {"message.max.bytes": "30000"})
    assert produce_one(broker.bootstrap, plain, 20_000) is None
    b = describe(admin, ResourceType.BROKER, ME)["message.max.bytes"]
    assert (b.value, source(b)) == ("30000", 2), b  # DYNAMIC_BROKER_CONFIG (synonyms: test_kafka_tools)

    # AlterConfigs replaces the whole set: empty sets bring back the default.
    alter(broker, ME, {})
    alter(broker, "", {})
    b = describe(admin, ResourceType.BROKER, ME)["message.max.bytes"]
    assert (b.value, source(b)) == ("1048588", 5), b
    assert produce_one(broker.bootstrap, plain, 20_000) is None
    assert cluster_wide(broker) == {}


def test_cluster_wide_retention_deletes_old_segments(broker_factory):
    broker = broker_factory(**{"log.retention.check.interval.ms": "200"})
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("dyn-ret")
    ck_create_topic(admin, t, 1, config={"segment.bytes": "20000"})
    p = ck_producer(broker.bootstrap)
    for _ in range(10):  # about 100 KB in 20 KB segments
        ck_produce(p, t, [{"value": b"v" * 1000} for _ in range(10)])
    time.sleep(1)
    assert ck_watermarks(broker.bootstrap, t, 0)[0] == 0, "nothing is deleted under the default retention"

    alter(broker, "", {"log.retention.bytes": "40000"})
    deadline = time.monotonic() + 20
    while ck_watermarks(broker.bootstrap, t, 0)[0] == 0:
        assert time.monotonic() < deadline, "retention.bytes from the cluster-wide default never applied"
        time.sleep(0.2)
    low, high = ck_watermarks(broker.bootstrap, t, 0)
    assert high == 100 and 0 < low < high, (low, high)


@pytest.mark.parametrize("name,configs,code,says", [
    (ME, {"log.dirs": "/elsewhere"}, KafkaError.INVALID_REQUEST, "log.dirs"),
    ("", {"num.network.threads": "8", "message.max.bytes": "10000"}, KafkaError.INVALID_REQUEST, "num.network.threads"),
    (ME, {"message.max.bytes": "big"}, KafkaError.INVALID_CONFIG, "message.max.bytes"),
    (ME, {"log.segment.bytes": "10"}, KafkaError.INVALID_CONFIG, "log.segment.bytes"),
    ("", {"log.retention.mss": "1000"}, KafkaError.INVALID_CONFIG, "log.retention.mss"),
    ("one", {"message.max.bytes": "10000"}, KafkaError.INVALID_REQUEST, "broker id"),
])
def test_bad_broker_changes_are_refused_and_change_nothing(broker, name, configs, code, says):
    admin = ck_admin(broker.bootstrap)
    with pytest.raises(Refused) as ei:
        alter(broker, name, configs)
    assert ei.value.code == code and says in ei.value.message, ei.value
    b = describe(admin, ResourceType.BROKER, ME)["message.max.bytes"]
    assert (b.value, source(b)) == ("1048588", 5), b


def test_validate_only_changes_nothing(broker):
    admin = ck_admin(broker.bootstrap)
    alter(broker, "", {"message.max.bytes": "10000"}, validate_only=True)
    b = describe(admin, ResourceType.BROKER, ME)["message.max.bytes"]
    assert (b.value, source(b)) == ("1048588", 5), b
