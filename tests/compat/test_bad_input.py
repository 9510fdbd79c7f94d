"""Malformed / hostile input on raw sockets.  After every case the broker
must still be alive and serve normal clients."""

import os
import random
import socket
import struct
import time

import pytest

import wire
from wire import Conn, ConnectionClosed, Record, encode_batch
from clients import ck_consume, ck_create_topic, ck_produce, ck_producer
from conftest import unique_topic

CLOSE_TIMEOUT = 5.0


def assert_healthy(broker, check_client=True):
    assert broker.alive(), "broker process died (rc=%s)" % broker.proc.returncode
    with Conn.to(broker.bootstrap) as c:
        err, keys = c.api_versions()
        assert err == 0 and wire.PRODUCE in keys and wire.FETCH in keys, (err, keys)
    if check_client:
        topic = unique_topic("health")
        reports = ck_produce(ck_producer(broker.bootstrap), topic,
                             [{"value": b"alive-%d" % i, "partition": 0} for i in range(3)])
        assert [(r.err, r.offset) for r in reports] == [(None, 0), (None, 1), (None, 2)], \
            [(r.err, r.offset) for r in reports]
        got = ck_consume(broker.bootstrap, topic, {0: 0}, expected_counts={0: 3}, timeout=20)
        assert [m.value() for m in got[0]] == [b"alive-0", b"alive-1", b"alive-2"]
    assert broker.alive()


def seeded_topic(broker, n=5, partitions=1):
    """A topic with n known records in partition 0 (written by librdkafka)."""
    topic = unique_topic("raw")
    ck_create_topic(broker.bootstrap, topic, partitions)
    items = [{"value": b"good-%d" % i, "key": b"k%d" % i, "partition": 0} for i in range(n)]
    reports = ck_produce(ck_producer(broker.bootstrap), topic, items)
    assert all(r.err is None for r in reports)
    return topic, [it["value"] for it in items]


def assert_partition_intact(broker, topic, want_values):
    with Conn.to(broker.bootstrap) as c:
        recs, hw = c.fetch_all(topic, 0)
    assert hw == len(want_values), "high watermark %d, want %d" % (hw, len(want_values))
    assert [r.value for r in recs] == want_values
    assert [r.offset for r in recs] == list(range(len(want_values)))


def raw_produce(broker, topic, batch_bytes, partition=0, acks=-1):
    with Conn.to(broker.bootstrap) as c:
        return c.produce(topic, partition, batch_bytes, acks=acks)


# ------------------------------------------------------------------ framing


def test_raw_produce_fetch_baseline(broker):
    """Sanity check of the hand-written encoder against the broker and librdkafka."""
    topic, vals = seeded_topic(broker, n=2)  # timestamps ~ now
    ts = int(time.time() * 1000) + 30_000  # slightly in the future, so the time index is unambiguous
    recs = [Record(value=b"raw-a", key=b"ka", headers=[("h1", b"x"), ("h2", None)], timestamp=ts),
            Record(value=None, key=b"kb", timestamp=ts + 7),
            Record(value=b"raw-c", key=None, headers=[("h1", b"")], timestamp=ts + 3)]
    p = raw_produce(broker, topic, encode_batch(recs, base_timestamp=ts))
    assert p["error"] == 0 and p["base_offset"] == 2, p
    assert p["log_append_time"] == -1, p  # CreateTime topic
    with Conn.to(broker.bootstrap) as c:
        got, hw = c.fetch_all(topic, 0)
        assert hw == 5
        assert [r.value for r in got] == vals + [b"raw-a", None, b"raw-c"]
        assert [(r.key, r.timestamp) for r in got[2:]] == [(b"ka", ts), (b"kb", ts + 7), (None, ts + 3)]
        assert got[2].headers == [("h1", b"x"), ("h2", None)]
        assert got[4].headers == [("h1", b"")]
        lo = c.list_offsets(topic, 0, -1)
        assert lo["error"] == 0 and lo["offset"] == 5, lo
        lo = c.list_offsets(topic, 0, -2)
        assert lo["error"] == 0 and lo["offset"] == 0, lo
        lo = c.list_offsets(topic, 0, ts + 5)  # first record with ts >= ts+5 is offset 3 (ts+7)
        assert lo["error"] == 0 and lo["offset"] == 3 and lo["timestamp"] == ts + 7, lo
        lo = c.list_offsets(topic, 0, ts + 8)  # nothing that late
        assert lo["error"] == 0 and lo["offset"] == -1, lo
        md = c.metadata([topic])
        assert md["brokers"][0][:3] == (1, "127.0.0.1", broker.port), md["brokers"]
        assert md["controller"] == 1
        (t,) = md["topics"]
        assert t["error"] == 0 and t["name"] == topic and [p["partition"] for p in t["partitions"]] == [0]
        assert t["partitions"][0]["leader"] == 1 and t["partitions"][0]["replicas"] == [1]
    got = ck_consume(broker.bootstrap, topic, {0: 2}, expected_counts={0: 3})
    m = got[0]
    assert [x.value() for x in m] == [b"raw-a", None, b"raw-c"]
    assert m[0].headers() == [("h1", b"x"), ("h2", None)]
    assert m[1].timestamp()[1] == ts + 7


def test_pipelined_requests_answered_in_order(broker):
    topic, vals = seeded_topic(broker, n=3)
    with Conn.to(broker.bootstrap) as c:
        frames = b""
        kinds = []
        for i in range(30):
            corr = 1000 + i
            if i % 3 == 0:
                frames += wire.request_frame(wire.API_VERSIONS, 0, corr, b"")
            elif i % 3 == 1:
                frames += wire.request_frame(wire.METADATA, 1, corr, wire.metadata_v1([topic]))
            else:
                frames += wire.request_frame(wire.FETCH, 4, corr, wire.fetch_v4(topic, 0, 0))
            kinds.append(i % 3)
        c.send_raw(frames)
        for i, kind in enumerate(kinds):
            corr, body = c.recv_response()
            assert corr == 1000 + i, "response %d has correlation id %d (out of order?)" % (i, corr)
            if kind == 2:
                p = wire.parse_fetch_v4(body)[(topic, 0)]
                assert p["error"] == 0 and p["high_watermark"] == 3
    assert_healthy(broker, check_client=False)


@pytest.mark.parametrize("size", [-1, -2147483648, -100])
def test_negative_frame_length_closes(broker, size):
    with Conn.to(broker.bootstrap) as c:
        c.send_raw(struct.pack(">i", size) + b"\x00" * 16)
        assert c.wait_closed(CLOSE_TIMEOUT), "broker did not close a connection with frame size %d" % size
    assert_healthy(broker)


def test_zero_length_frame_closes(broker):
    with Conn.to(broker.bootstrap) as c:
        c.send_raw(struct.pack(">i", 0))
        assert c.wait_closed(CLOSE_TIMEOUT), "broker did not close a connection with a zero-length frame"
    assert_healthy(broker, check_client=False)


def test_oversized_frame_closes_default_limit(broker):
    with Conn.to(broker.bootstrap) as c:
        c.send_raw(struct.pack(">i", 104857600 + 1) + b"\x00\x12\x00\x00")
        t0 = time.monotonic()
        assert c.wait_closed(CLOSE_TIMEOUT), "frame of 104857601 bytes (> socket.request.max.bytes) not rejected"
        assert time.monotonic() - t0 < CLOSE_TIMEOUT
    with Conn.to(broker.bootstrap) as c:
        c.send_raw(struct.pack(">i", 0x7FFFFFFF))
        assert c.wait_closed(CLOSE_TIMEOUT), "frame of 2^31-1 bytes not rejected"
    assert_healthy(broker)


def test_oversized_frame_closes_configured_limit(broker_factory):
    broker = broker_factory(**{"socket.request.max.bytes": 4096})
    # A frame just under the limit is served ...
    with Conn.to(broker.bootstrap) as c:
        err, _ = c.api_versions()
        assert err == 0
    # ... one over it is rejected without the broker waiting for the body.
    with Conn.to(broker.bootstrap) as c:
        c.send_raw(struct.pack(">i", 5000) + wire.request_frame(wire.API_VERSIONS, 0, 1)[4:])
        assert c.wait_closed(CLOSE_TIMEOUT), "5000-byte frame accepted with socket.request.max.bytes=4096"
    assert_healthy(broker)


def test_truncated_frames(broker):
    topic, vals = seeded_topic(broker, n=4)
    # 1) Truncated frame, then close.
    for cut in (1, 3, 4, 10, 30):
        frame = wire.request_frame(wire.METADATA, 1, 7, wire.metadata_v1([topic]))
        s = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
        s.sendall(frame[:cut])
        s.close()
    # 2) A client that stalls mid-frame must not block others.
    stall = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
    frame = wire.request_frame(wire.PRODUCE, 3, 9,
                               wire.produce_v3(topic, 0, encode_batch([Record(value=b"never")])))
    stall.sendall(frame[:len(frame) // 2])
    try:
        assert_healthy(broker)
        assert_partition_intact(broker, topic, vals)
    finally:
        stall.close()
    time.sleep(0.2)
    assert_partition_intact(broker, topic, vals)  # the half-sent produce must not be applied
    assert_healthy(broker, check_client=False)


def _response_or_close(c, api_key, version, body=b"", corr=4242):
    """Send one request; return ('closed', None) or ('response', body)."""
    c.send_raw(wire.request_frame(api_key, version, corr, body))
    c.sock.settimeout(CLOSE_TIMEOUT)
    try:
        got_corr, resp = c.recv_response()
    except ConnectionClosed:
        return "closed", None
    except socket.timeout:
        raise AssertionError("broker neither answered nor closed for api_key=%d v%d" % (api_key, version))
    assert got_corr == corr, "correlation id %d, want %d" % (got_corr, corr)
    return "response", resp


@pytest.mark.parametrize("api_key", [1000, 32767, -1, 99])
def test_unknown_api_key(broker, api_key):
    with Conn.to(broker.bootstrap) as c:
        kind, _ = _response_or_close(c, api_key, 0, b"\x00\x00\x00\x00")
        if kind == "response":  # connection still usable
            err, keys = c.api_versions()
            assert err == 0
    assert_healthy(broker)


def test_unsupported_api_versions_request_version(broker):
    """KIP-511: an ApiVersions request with a too-new version gets an
    UNSUPPORTED_VERSION (35) response in v0 format that includes the
    supported ApiVersions range, so the client can retry."""
    with Conn.to(broker.bootstrap) as c:
        c.send_raw(wire.request_frame(wire.API_VERSIONS, 127, 55, b""))
        corr, body = c.recv_response()
        assert corr == 55
        err, keys = wire.parse_api_versions_v0(body)
        assert err == wire.UNSUPPORTED_VERSION, "ApiVersions v127 -> error %d, want 35" % err
        assert wire.API_VERSIONS in keys, "UNSUPPORTED_VERSION response lacks the ApiVersions range: %s" % keys
        assert keys[wire.API_VERSIONS][0] == 0
    assert_healthy(broker, check_client=False)


@pytest.mark.parametrize("api_key,version", [(wire.METADATA, 999), (wire.PRODUCE, 99), (wire.FETCH, 300),
                                             (wire.LIST_OFFSETS, 99), (wire.CREATE_TOPICS, 99)])
def test_unsupported_api_version(broker, api_key, version):
    with Conn.to(broker.bootstrap) as c:
        _response_or_close(c, api_key, version, b"\x00" * 8)
    assert_healthy(broker)


def test_advertised_versions_are_sane(broker):
    with Conn.to(broker.bootstrap) as c:
        err, keys = c.api_versions()
    assert err == 0
    required = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 18: "ApiVersions",
                19: "CreateTopics", 20: "DeleteTopics", 32: "DescribeConfigs", 37: "CreatePartitions",
                60: "DescribeCluster"}
    for k, name in required.items():
        assert k in keys, "%s (%d) not advertised: %s" % (name, k, sorted(keys))
        lo, hi = keys[k]
        assert 0 <= lo <= hi, (name, lo, hi)
    # The versions used by this suite's raw requests must be inside the ranges.
    for k, v in [(0, 3), (1, 4), (2, 1), (3, 1), (18, 0)]:
        lo, hi = keys[k]
        assert lo <= v <= hi, "%s v%d outside advertised [%d,%d]" % (required[k], v, lo, hi)


# ------------------------------------------------------------------ bad record batches


def test_bad_crc(broker):
    topic, vals = seeded_topic(broker)
    p = raw_produce(broker, topic, encode_batch([Record(value=b"evil-%d" % i) for i in range(3)], corrupt_crc=True))
    assert p["error"] == wire.CORRUPT_MESSAGE, "bad CRC produce -> error %d, want CORRUPT_MESSAGE(2)" % p["error"]
    assert_partition_intact(broker, topic, vals)
    # A correct batch right after is appended at the next offset.
    p = raw_produce(broker, topic, encode_batch([Record(value=b"fine")]))
    assert p["error"] == 0 and p["base_offset"] == len(vals), p
    assert_partition_intact(broker, topic, vals + [b"fine"])
    assert_healthy(broker)


def test_corrupted_record_byte_detected_by_crc(broker):
    topic, vals = seeded_topic(broker)
    b = bytearray(encode_batch([Record(value=b"payload-payload-payload")]))
    b[-5] ^= 0x55  # flip a byte inside the record value; CRC now mismatches
    p = raw_produce(broker, topic, bytes(b))
    assert p["error"] == wire.CORRUPT_MESSAGE, p
    assert_partition_intact(broker, topic, vals)
    assert_healthy(broker, check_client=False)


@pytest.mark.parametrize("magic", [0, 1, 3, 127, -1])
def test_wrong_magic(broker, magic):
    topic, vals = seeded_topic(broker)
    p = raw_produce(broker, topic, encode_batch([Record(value=b"m")], magic=magic))
    assert p["error"] in (wire.CORRUPT_MESSAGE, wire.UNSUPPORTED_FOR_MESSAGE_FORMAT, wire.INVALID_RECORD), \
        "magic %d -> error %d" % (magic, p["error"])
    assert_partition_intact(broker, topic, vals)
    assert_healthy(broker)


@pytest.mark.parametrize("delta", [50, 1, -1, -20, 10_000_000, -60])
def test_batch_length_lies(broker, delta):
    topic, vals = seeded_topic(broker)
    batch = encode_batch([Record(value=b"liar-%d" % i) for i in range(3)], length_delta=delta)
    p = raw_produce(broker, topic, batch)
    allowed = {wire.CORRUPT_MESSAGE, wire.INVALID_RECORD, wire.INVALID_REQUEST}
    if delta > 1_000_000:  # claims to be bigger than message.max.bytes
        allowed.add(wire.MESSAGE_TOO_LARGE)
    assert p["error"] in allowed, "batchLength off by %d -> error %d" % (delta, p["error"])
    assert_partition_intact(broker, topic, vals)
    assert_healthy(broker)


def test_records_field_garbage(broker):
    topic, vals = seeded_topic(broker)
    for payload in (b"", b"\x00", os.urandom(11), os.urandom(61), os.urandom(500)):
        p = raw_produce(broker, topic, payload)
        assert p["error"] != 0, "garbage records of %d bytes accepted" % len(payload)
    assert_partition_intact(broker, topic, vals)
    assert_healthy(broker)


def test_record_count_lies(broker):
    """CRC is valid, but the record count / record lengths inside are wrong."""
    topic, vals = seeded_topic(broker)
    good = bytearray(encode_batch([Record(value=b"r%d" % i) for i in range(3)]))
    # records count lives at byte 57..61 (after the 61-byte header starts at 0): baseOffset(8) len(4) ple(4)
    # magic(1) crc(4) attr(2) lod(4) bts(8) mts(8) pid(8) pep(2) bseq(4) -> count at 57.
    for count in (5, 0, -1, 1_000_000):
        b = bytearray(good)
        b[57:61] = struct.pack(">i", count)
        crc = wire.crc32c(bytes(b[21:]))
        b[17:21] = struct.pack(">I", crc)
        p = raw_produce(broker, topic, bytes(b))
        assert p["error"] in (wire.CORRUPT_MESSAGE, wire.INVALID_RECORD), "record count %d -> error %d" % (count, p["error"])
    assert_partition_intact(broker, topic, vals)
    assert_healthy(broker)


def test_message_too_large(broker_factory):
    broker = broker_factory(**{"message.max.bytes": 10000})
    topic, vals = seeded_topic(broker)
    p = raw_produce(broker, topic, encode_batch([Record(value=os.urandom(20000))]))
    assert p["error"] == wire.MESSAGE_TOO_LARGE, "20000-byte batch -> error %d, want 10" % p["error"]
    assert_partition_intact(broker, topic, vals)
    p = raw_produce(broker, topic, encode_batch([Record(value=os.urandom(5000))]))
    assert p["error"] == 0 and p["base_offset"] == len(vals), p
    assert_healthy(broker)


def test_unknown_topic_or_partition(broker):
    topic, vals = seeded_topic(broker)
    with Conn.to(broker.bootstrap) as c:
        p = c.produce(topic, 7, encode_batch([Record(value=b"x")]))
        assert p["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, p
        p = c.produce(topic, -1, encode_batch([Record(value=b"x")]))
        assert p["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, p
        missing = unique_topic("missing")
        p = c.produce(missing, 0, encode_batch([Record(value=b"x")]))
        assert p["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, p
        f = c.fetch(topic, 7, 0)
        assert f["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, f
        f = c.fetch(unique_topic("missing"), 0, 0)
        assert f["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, f
        lo = c.list_offsets(topic, 9, -1)
        assert lo["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, lo
        # Fetch beyond the log end -> OFFSET_OUT_OF_RANGE
        f = c.fetch(topic, 0, 1000)
        assert f["error"] == wire.OFFSET_OUT_OF_RANGE, f
        f = c.fetch(topic, 0, -5)
        assert f["error"] == wire.OFFSET_OUT_OF_RANGE, f
        # Fetch exactly at the log end -> empty, no error
        f = c.fetch(topic, 0, len(vals))
        assert f["error"] == 0 and not f["records"] and f["high_watermark"] == len(vals), f
    assert_partition_intact(broker, topic, vals)
    assert_healthy(broker)


def test_invalid_acks(broker):
    topic, vals = seeded_topic(broker)
    with Conn.to(broker.bootstrap) as c:
        p = c.produce(topic, 0, encode_batch([Record(value=b"a")]), acks=5)
        assert p["error"] == 21, "acks=5 -> error %d, want INVALID_REQUIRED_ACKS(21)" % p["error"]
    assert_partition_intact(broker, topic, vals)
    assert_healthy(broker, check_client=False)


def test_acks_zero_sends_no_response(broker):
    topic, vals = seeded_topic(broker)
    with Conn.to(broker.bootstrap) as c:
        c.produce(topic, 0, encode_batch([Record(value=b"fire-and-forget")]), acks=0)
        # The next response on this connection must belong to the next request.
        err, keys = c.api_versions()
        assert err == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with Conn.to(broker.bootstrap) as c:
            if c.list_offsets(topic, 0, -1)["offset"] == len(vals) + 1:
                break
        time.sleep(0.1)
    assert_partition_intact(broker, topic, vals + [b"fire-and-forget"])


# ------------------------------------------------------------------ fuzz


def test_random_garbage(broker):
    rng = random.Random(0x5111CE)
    topic, vals = seeded_topic(broker, n=3)
    valid_produce = wire.request_frame(wire.PRODUCE, 3, 1, wire.produce_v3(
        topic, 0, encode_batch([Record(value=b"fuzz-%d" % i, key=b"k", headers=[("h", b"v")]) for i in range(3)])))
    valid_frames = [
        valid_produce,
        wire.request_frame(wire.METADATA, 1, 2, wire.metadata_v1([topic])),
        wire.request_frame(wire.METADATA, 4, 3, wire.metadata_v4([topic], False)),
        wire.request_frame(wire.FETCH, 4, 4, wire.fetch_v4(topic, 0, 0)),
        wire.request_frame(wire.LIST_OFFSETS, 1, 5, wire.list_offsets_v1(topic, 0, -1)),
        wire.request_frame(wire.API_VERSIONS, 0, 6, b""),
    ]
    t_end = time.monotonic() + 40
    n_cases = 0
    for i in range(2000):
        if time.monotonic() > t_end:
            break
        mode = rng.randrange(7)
        if mode == 0:  # unframed noise
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200)))
        elif mode == 1:  # well-sized frame, random body
            body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
            data = struct.pack(">i", len(body)) + body
        elif mode == 2:  # real api key/version, random body
            key = rng.randrange(0, 75)
            ver = rng.randrange(0, 16)
            body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
            data = wire.request_frame(key, ver, i, body)
        elif mode == 3:  # real api key/version, body of large counts / lengths
            key = rng.choice([0, 1, 2, 3, 18, 19, 20, 32, 37, 60])
            ver = rng.randrange(0, 13)
            body = b"".join(rng.choice([b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x80\x00", b"\xff\xff",
                                        b"\x00\x00", b"\x01", b"\xff" * 5, b"\x80" * 10])
                            for _ in range(rng.randrange(1, 30)))
            data = wire.request_frame(key, ver, i, body)
        elif mode == 4:  # valid produce with a few flipped bytes
            b = bytearray(valid_produce)
            for _ in range(rng.randrange(1, 4)):
                pos = rng.randrange(4, len(b))
                b[pos] ^= 1 << rng.randrange(8)
            data = bytes(b)
        elif mode == 5:  # valid produce, truncated
            data = valid_produce[:rng.randrange(1, len(valid_produce))]
        else:  # other valid requests with mutations: flipped bits, overwritten ints, and a tail
            b = bytearray(rng.choice(valid_frames))
            for _ in range(rng.randrange(1, 4)):
                pos = rng.randrange(8, len(b))
                if rng.random() < 0.5:
                    b[pos] ^= 1 << rng.randrange(8)
                else:
                    b[pos:pos + 4] = rng.choice([b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"])
            body = bytes(b[4:])
            if rng.random() < 0.3:
                body += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 20)))
            data = struct.pack(">i", len(body)) + body
        n_cases += 1
        try:
            s = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
        except OSError as e:
            raise AssertionError("case %d (mode %d): cannot connect: %s; broker alive=%s"
                                 % (i, mode, e, broker.alive()))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(1)
            t_read = time.monotonic()
            while s.recv(65536):
                pass
        except socket.timeout:
            # The broker must close (or answer and close) once the client half-closes.
            raise AssertionError("case %d (mode %d): broker kept the connection open %.1fs after client EOF; "
                                 "data=%r" % (i, mode, time.monotonic() - t_read, data[:64]))
        except OSError:  # reset / not connected / broken pipe: the broker closed first
            pass
        finally:
            s.close()
        if i % 100 == 0:
            assert broker.alive(), "broker died after fuzz case %d (mode %d, %r)" % (i, mode, data[:64])
            assert_healthy(broker, check_client=False)
    assert n_cases >= 300, "only %d fuzz cases ran in the time budget" % n_cases
    assert broker.alive()
    # The target partition only ever contains whole, CRC-valid batches with dense offsets.
    with Conn.to(broker.bootstrap) as c:
        recs, hw = c.fetch_all(topic, 0)
    assert [r.offset for r in recs] == list(range(hw))
    assert [r.value for r in recs[:3]] == vals
    assert_healthy(broker)
