"""Topic configs changed at runtime (AlterConfigs, IncrementalAlterConfigs) take effect, are
kept across a restart, and bad changes are refused with Kafka's errors."""
import os
import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from clients import ck_admin, ck_create_topic, ck_produce, ck_producer
from conftest import unique_topic

HAS_INCREMENTAL = hasattr(AdminClient, "incremental_alter_configs")
needs_incremental = pytest.mark.skipif(not HAS_INCREMENTAL,
                                       reason="incremental_alter_configs came in confluent-kafka 2.2")


def describe(admin, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return list(admin.describe_configs([res], request_timeout=15).values())[0].result(timeout=15)


def source(entry):
    return int(getattr(entry.source, "value", entry.source))


def incremental(admin, topic, *ops):
    """ops: (name, value, op) with op one of SET, DELETE, APPEND, SUBTRACT."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry
    entries = [ConfigEntry(n, v, incremental_operation=getattr(AlterConfigOpType, op)) for n, v, op in ops]
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    return list(admin.incremental_alter_configs([res], request_timeout=15).values())[0].result(timeout=15)


def legacy(admin, restype, name, configs):
    res = ConfigResource(restype, name, set_config=configs)
    return list(admin.alter_configs([res], request_timeout=15).values())[0].result(timeout=15)


def produce_one(bootstrap, topic, size):
    p = ck_producer(bootstrap, **{"message.max.bytes": 10_000_000, "message.timeout.ms": 10000})
    (d,) = ck_produce(p, topic, [{"value": b"x" * size}])
    return d.err


def error_code(exc_info):
    return exc_info.value.args[0].code()


@needs_incremental
def test_incremental_changes_take_effect_and_survive_a_restart(broker):
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("iac")
    ck_create_topic(admin, t, 1, config={"retention.ms": "3600000"})
    assert produce_one(broker.bootstrap, t, 20_000) is None

    incremental(admin, t, ("max.message.bytes", "10000", "SET"), ("cleanup.policy", "compact", "APPEND"))
    cfg = describe(admin, t)
    assert cfg["max.message.bytes"].value == "10000" and source(cfg["max.message.bytes"]) == 1
    assert cfg["cleanup.policy"].value == "delete,compact", cfg["cleanup.policy"]
    assert cfg["retention.ms"].value == "3600000", "an incremental change keeps the other overrides"
    err = produce_one(broker.bootstrap, t, 20_000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err

    # Kept in the metadata log: a restarted broker has it.
    broker.restart()
    admin = ck_admin(broker.bootstrap)
    cfg = describe(admin, t)
    assert cfg["max.message.bytes"].value == "10000", cfg["max.message.bytes"]
    err = produce_one(broker.bootstrap, t, 20_000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err

    incremental(admin, t, ("max.message.bytes", None, "DELETE"), ("cleanup.policy", "delete", "SUBTRACT"))
    cfg = describe(admin, t)
    assert cfg["max.message.bytes"].value == "1048588" and source(cfg["max.message.bytes"]) in (4, 5)
    assert cfg["cleanup.policy"].value == "compact", cfg["cleanup.policy"]
    assert produce_one(broker.bootstrap, t, 20_000) is None


@needs_incremental
def test_segment_bytes_changed_rolls_smaller_segments(broker):
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("iac-seg")
    ck_create_topic(admin, t, 1)
    incremental(admin, t, ("segment.bytes", "20000", "SET"))
    p = ck_producer(broker.bootstrap)
    for _ in range(10):  # ten batches of ~10 KB: a segment rolls before a batch that would overflow it
        ck_produce(p, t, [{"value": b"v" * 1000} for _ in range(10)])
    logs = [f for f in os.listdir(broker.partition_dir(t, 0)) if f.endswith(".log")]
    assert len(logs) >= 3, "100 KB in 20 KB segments, yet only %s" % logs


def test_alter_configs_replaces_the_whole_set(broker):
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("ac")
    ck_create_topic(admin, t, 1, config={"retention.ms": "3600000", "max.message.bytes": "50000"})
    legacy(admin, ResourceType.TOPIC, t, {"segment.ms": "600000"})
    cfg = describe(admin, t)
    assert cfg["segment.ms"].value == "600000" and source(cfg["segment.ms"]) == 1
    assert cfg["retention.ms"].value == "604800000", "what AlterConfigs does not name goes back to default"
    assert cfg["max.message.bytes"].value == "1048588"


def test_validate_only_changes_nothing(broker):
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("ac-val")
    ck_create_topic(admin, t, 1)
    res = ConfigResource(ResourceType.TOPIC, t, set_config={"retention.ms": "1000"})
    list(admin.alter_configs([res], request_timeout=15, validate_only=True).values())[0].result(timeout=15)
    assert describe(admin, t)["retention.ms"].value == "604800000"


@pytest.mark.parametrize("configs,code", [
    ({"retention.mss": "1000"}, KafkaError.INVALID_CONFIG),
    ({"retention.ms": "soon"}, KafkaError.INVALID_CONFIG),
    ({"cleanup.policy": "shred"}, KafkaError.INVALID_CONFIG),
])
def test_bad_topic_changes_are_refused(broker, configs, code):
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("ac-bad")
    ck_create_topic(admin, t, 1, config={"retention.ms": "3600000"})
    with pytest.raises(KafkaException) as ei:
        legacy(admin, ResourceType.TOPIC, t, configs)
    assert error_code(ei) == code, ei.value
    assert describe(admin, t)["retention.ms"].value == "3600000", "a refused change changes nothing"


def test_unknown_topic_and_static_broker_configs_are_refused(broker):
    admin = ck_admin(broker.bootstrap)
    with pytest.raises(KafkaException) as ei:
        legacy(admin, ResourceType.TOPIC, unique_topic("missing"), {"retention.ms": "1000"})
    assert error_code(ei) == KafkaError.UNKNOWN_TOPIC_OR_PART, ei.value
    with pytest.raises(KafkaException) as ei:
        legacy(admin, ResourceType.BROKER, "1", {"log.dirs": "/elsewhere"})
    assert error_code(ei) == KafkaError.INVALID_REQUEST, ei.value
    assert "log.dirs" in str(ei.value), ei.value


def test_kafka_python_alter_configs(broker):
    from kafka.admin import ConfigResource as KpResource, ConfigResourceType, KafkaAdminClient
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("kp-ac")
    ck_create_topic(admin, t, 1)
    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        kp.alter_configs([KpResource(ConfigResourceType.TOPIC, t, configs={"retention.ms": "7200000"})])
    finally:
        kp.close()
    deadline = time.monotonic() + 10
    while describe(admin, t)["retention.ms"].value != "7200000":
        assert time.monotonic() < deadline, describe(admin, t)["retention.ms"]
        time.sleep(0.1)
