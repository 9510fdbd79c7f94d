"""Minimal hand-written Kafka wire protocol helpers for raw-socket tests.

Most helpers use non-flexible request versions (request header v1, response
header v0), which every Kafka broker since 0.11 / up to 4.x accepts:

    ApiVersions v0, Metadata v1, Produce v3, Fetch v4, ListOffsets v1

Also: RecordBatch (magic 2) encoding/decoding with CRC-32C, so tests can build
valid, corrupt and oversized batches, and parse Kafka `.log` segment files.

For the idempotent producer (test_idempotence_wire.py) there are also
InitProducerId v0-v5, Produce v8 and v9, and CreateTopics v2. InitProducerId
v2+ and Produce v9 are flexible versions (request header v2, response header
v1, compact strings and tagged fields). These helpers are at the end of the
module, with their Conn methods just above them.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# ----------------------------------------------------------------- api keys
PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
API_VERSIONS = 18
CREATE_TOPICS = 19

# ----------------------------------------------------------------- errors
NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35
INVALID_REQUEST = 42
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
INVALID_RECORD = 87

# ----------------------------------------------------------------- CRC-32C


def _make_crc32c_table():
    poly = 0x82F63B78
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    t = _CRC32C_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # standard check value

# ----------------------------------------------------------------- primitives


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def string(s):
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def kbytes(b):
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items, enc=lambda x: x):
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(enc(x) for x in items)


def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(n):
    return uvarint((n << 1) ^ (n >> 63))  # zigzag (64-bit)


class Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    def remaining(self):
        return len(self.data) - self.pos

    def _take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("short read: want %d at %d of %d" % (n, self.pos, len(self.data)))
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i8(self):
        return struct.unpack(">b", self._take(1))[0]

    def i16(self):
        return struct.unpack(">h", self._take(2))[0]

    def i32(self):
        return struct.unpack(">i", self._take(4))[0]

    def u32(self):
        return struct.unpack(">I", self._take(4))[0]

    def i64(self):
        return struct.unpack(">q", self._take(8))[0]

    def string(self):
        n = self.i16()
        return None if n < 0 else self._take(n).decode()

    def kbytes(self):
        n = self.i32()
        return None if n < 0 else self._take(n)

    def array(self, fn):
        n = self.i32()
        if n < 0:
            return None
        return [fn(self) for _ in range(n)]

    def uvarint(self):
        shift = 0
        result = 0
        while True:
            b = self._take(1)[0]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def varint(self):
        n = self.uvarint()
        return (n >> 1) ^ -(n & 1)

    def raw(self, n):
        return self._take(n)


# ----------------------------------------------------------------- record batches


@dataclass
class Record:
    value: bytes | None
    key: bytes | None = None
    headers: list = field(default_factory=list)  # [(str, bytes|None)]
    timestamp: int | None = None  # absolute ms; None -> batch base timestamp
    offset: int | None = None  # filled in by the decoder


def encode_record(rec: Record, offset_delta: int, base_ts: int) -> bytes:
    ts = base_ts if rec.timestamp is None else rec.timestamp
    body = bytearray()
    body += i8(0)  # attributes
    body += varint(ts - base_ts)
    body += varint(offset_delta)
    if rec.key is None:
        body += varint(-1)
    else:
        body += varint(len(rec.key)) + rec.key
    if rec.value is None:
        body += varint(-1)
    else:
        body += varint(len(rec.value)) + rec.value
    body += varint(len(rec.headers))
    for hk, hv in rec.headers:
        hkb = hk.encode()
        body += varint(len(hkb)) + hkb
        if hv is None:
            body += varint(-1)
        else:
            body += varint(len(hv)) + hv
    return varint(len(body)) + bytes(body)


def encode_batch(records, base_offset=0, base_timestamp=None, magic=2,
                 corrupt_crc=False, length_delta=0, attributes=0,
                 producer_id=-1, producer_epoch=-1, base_sequence=-1,
                 partition_leader_epoch=-1) -> bytes:
    """Encode a RecordBatch (magic 2, uncompressed).

    corrupt_crc: flip the stored CRC so it no longer matches.
    length_delta: add this to the batchLength field (a lying length).
    """
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    recs = b"".join(encode_record(r, i, base_timestamp) for i, r in enumerate(records))
    max_ts = max([base_timestamp] + [r.timestamp for r in records if r.timestamp is not None])
    after_crc = (
        i16(attributes)
        + i32(len(records) - 1)  # lastOffsetDelta
        + i64(base_timestamp)
        + i64(max_ts)
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(len(records))
        + recs
    )
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    after_len = i32(partition_leader_epoch) + i8(magic) + struct.pack(">I", crc) + after_crc
    return i64(base_offset) + i32(len(after_len) + length_delta) + after_len


@dataclass
class Batch:
    base_offset: int
    batch_length: int
    magic: int
    crc: int
    crc_ok: bool
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    records: list
    size: int  # total bytes on the wire

    @property
    def last_offset(self):
        return self.base_offset + self.last_offset_delta


def decode_batches(data: bytes, strict: bool = False):
    """Decode consecutive RecordBatches. A trailing partial batch (allowed in
    Fetch responses) is ignored unless strict=True, in which case any bytes
    that do not form a complete, CRC-valid batch raise ValueError."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12 + 49:
            if strict:
                raise ValueError("trailing %d bytes at %d do not form a batch" % (len(data) - pos, pos))
            break
        base_offset, batch_length = struct.unpack(">qi", data[pos:pos + 12])
        if batch_length < 49 or pos + 12 + batch_length > len(data):
            if strict:
                raise ValueError("bad/partial batch at byte %d: base_offset=%d length=%d, %d bytes left"
                                 % (pos, base_offset, batch_length, len(data) - pos - 12))
            break
        r = Reader(data[pos + 12:pos + 12 + batch_length])
        _leader_epoch = r.i32()
        magic = r.i8()
        if magic != 2:
            if strict:
                raise ValueError("magic %d at byte %d" % (magic, pos))
            break
        crc = r.u32()
        crc_ok = crc32c(r.data[r.pos:]) == crc
        if strict and not crc_ok:
            raise ValueError("CRC mismatch in batch at byte %d (base_offset %d)" % (pos, base_offset))
        attributes = r.i16()
        last_offset_delta = r.i32()
        base_ts = r.i64()
        max_ts = r.i64()
        r.i64()  # producer id
        r.i16()  # producer epoch
        r.i32()  # base sequence
        count = r.i32()
        records = []
        if attributes & 0x07 == 0:
            for _ in range(count):
                length = r.varint()
                rr = Reader(r.raw(length))
                rr.i8()
                ts_delta = rr.varint()
                off_delta = rr.varint()
                kl = rr.varint()
                key = None if kl < 0 else rr.raw(kl)
                vl = rr.varint()
                value = None if vl < 0 else rr.raw(vl)
                nh = rr.varint()
                headers = []
                for _ in range(nh):
                    hkl = rr.varint()
                    hk = rr.raw(hkl).decode()
                    hvl = rr.varint()
                    hv = None if hvl < 0 else rr.raw(hvl)
                    headers.append((hk, hv))
                records.append(Record(value=value, key=key, headers=headers,
                                      timestamp=base_ts + ts_delta, offset=base_offset + off_delta))
        out.append(Batch(base_offset, batch_length, magic, crc, crc_ok, attributes,
                         last_offset_delta, base_ts, max_ts, records, 12 + batch_length))
        pos += 12 + batch_length
    return out


# ----------------------------------------------------------------- requests


def request_frame(api_key, api_version, correlation_id, body=b"", client_id="sluice-compat"):
    payload = i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id) + body
    return i32(len(payload)) + payload


def api_versions_v0():
    return b""


def metadata_v1(topics=None):
    return array(topics, string)


def metadata_v4(topics=None, allow_auto_topic_creation=True):
    return array(topics, string) + i8(1 if allow_auto_topic_creation else 0)


def parse_metadata_v4(body):
    r = Reader(body)
    r.i32()  # throttle
    brokers = r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))
    cluster_id = r.string()
    controller = r.i32()

    def part(r):
        return dict(error=r.i16(), partition=r.i32(), leader=r.i32(),
                    replicas=r.array(lambda r: r.i32()), isr=r.array(lambda r: r.i32()))

    topics = r.array(lambda r: dict(error=r.i16(), name=r.string(), internal=r.i8(),
                                    partitions=r.array(part)))
    return dict(brokers=brokers, cluster_id=cluster_id, controller=controller, topics=topics)


def produce_v3(topic, partition, records_bytes, acks=-1, timeout_ms=10000):
    return produce_v3_multi([(topic, [(partition, records_bytes)])], acks, timeout_ms)


def produce_v3_multi(topics, acks=-1, timeout_ms=10000):
    """topics: [(topic, [(partition, records_bytes)])]"""
    return (string(None) + i16(acks) + i32(timeout_ms)
            + array(topics, lambda t: string(t[0]) + array(t[1], lambda p: i32(p[0]) + kbytes(p[1]))))


def fetch_v4(topic, partition, offset, max_bytes=1 << 20, max_wait_ms=100, min_bytes=1,
             partition_max_bytes=None):
    pmb = max_bytes if partition_max_bytes is None else partition_max_bytes
    return fetch_v4_multi([(topic, [(partition, offset, pmb)])], max_bytes, max_wait_ms, min_bytes)


def fetch_v4_multi(topics, max_bytes=1 << 20, max_wait_ms=100, min_bytes=1):
    """topics: [(topic, [(partition, offset, partition_max_bytes)])]"""
    return (i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
            + array(topics, lambda t: string(t[0]) + array(t[1], lambda p: i32(p[0]) + i64(p[1]) + i32(p[2]))))


def list_offsets_v1(topic, partition, timestamp):
    return (i32(-1)
            + array([(topic, [(partition, timestamp)])],
                    lambda t: string(t[0]) + array(t[1], lambda p: i32(p[0]) + i64(p[1]))))


# ----------------------------------------------------------------- responses


def parse_api_versions_v0(body):
    r = Reader(body)
    err = r.i16()
    keys = r.array(lambda r: (r.i16(), r.i16(), r.i16()))
    return err, {k: (lo, hi) for k, lo, hi in (keys or [])}


def parse_metadata_v1(body):
    r = Reader(body)
    brokers = r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))
    controller = r.i32()

    def part(r):
        return dict(error=r.i16(), partition=r.i32(), leader=r.i32(),
                    replicas=r.array(lambda r: r.i32()), isr=r.array(lambda r: r.i32()))

    topics = r.array(lambda r: dict(error=r.i16(), name=r.string(), internal=r.i8(),
                                    partitions=r.array(part)))
    return dict(brokers=brokers, controller=controller, topics=topics)


def parse_produce_v3(body):
    r = Reader(body)
    topics = r.array(lambda r: (r.string(), r.array(
        lambda r: dict(partition=r.i32(), error=r.i16(), base_offset=r.i64(), log_append_time=r.i64()))))
    r.i32()  # throttle
    return {(t, p["partition"]): p for t, parts in topics for p in parts}


def parse_fetch_v4(body):
    r = Reader(body)
    r.i32()  # throttle

    def part(r):
        d = dict(partition=r.i32(), error=r.i16(), high_watermark=r.i64(), last_stable_offset=r.i64())
        r.array(lambda r: (r.i64(), r.i64()))
        d["records"] = r.kbytes()
        return d

    topics = r.array(lambda r: (r.string(), r.array(part)))
    return {(t, p["partition"]): p for t, parts in topics for p in parts}


def parse_list_offsets_v1(body):
    r = Reader(body)
    topics = r.array(lambda r: (r.string(), r.array(
        lambda r: dict(partition=r.i32(), error=r.i16(), timestamp=r.i64(), offset=r.i64()))))
    return {(t, p["partition"]): p for t, parts in topics for p in parts}


# ----------------------------------------------------------------- connection


class ConnectionClosed(Exception):
    pass


class Conn:
    """A blocking Kafka connection with a per-operation timeout."""

    def __init__(self, host, port, timeout=10.0, source=None):
        """`source`: the local address to connect from (any 127.x.y.z on loopback)."""
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.settimeout(timeout)
        self.corr = 0

    @classmethod
    def to(cls, bootstrap, timeout=10.0, source=None):
        host, port = bootstrap.rsplit(":", 1)
        return cls(host, int(port), timeout, source)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError as e:
                raise ConnectionClosed("reset by peer") from e
            if not chunk:
                raise ConnectionClosed("EOF after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def recv_response(self):
        """Returns (correlation_id, body) of one response (header v0)."""
        size = struct.unpack(">i", self.recv_exact(4))[0]
        if size < 4 or size > 200 * 1024 * 1024:
            raise ValueError("bad response size %d" % size)
        data = self.recv_exact(size)
        return struct.unpack(">i", data[:4])[0], data[4:]

    def request(self, api_key, api_version, body, expect_response=True):
        self.corr += 1
        corr = self.corr
        self.send_raw(request_frame(api_key, api_version, corr, body))
        if not expect_response:
            return None
        got, resp = self.recv_response()
        if got != corr:
            raise AssertionError("correlation id mismatch: sent %d got %d" % (corr, got))
        return resp

    def wait_closed(self, timeout=5.0):
        """True if the peer closes the connection within `timeout` seconds
        (any bytes it sends first are discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True

    # convenience wrappers
    def api_versions(self):
        return parse_api_versions_v0(self.request(API_VERSIONS, 0, api_versions_v0()))

    def metadata(self, topics=None):
        return parse_metadata_v1(self.request(METADATA, 1, metadata_v1(topics)))

    def produce(self, topic, partition, records_bytes, acks=-1):
        resp = self.request(PRODUCE, 3, produce_v3(topic, partition, records_bytes, acks=acks),
                            expect_response=(acks != 0))
        return None if resp is None else parse_produce_v3(resp)[(topic, partition)]

    def fetch(self, topic, partition, offset, max_bytes=1 << 20, max_wait_ms=100, min_bytes=1,
              partition_max_bytes=None):
        return parse_fetch_v4(self.request(FETCH, 4, fetch_v4(topic, partition, offset, max_bytes, max_wait_ms,
                                                              min_bytes, partition_max_bytes)))[(topic, partition)]

    def list_offsets(self, topic, partition, timestamp):
        return parse_list_offsets_v1(self.request(LIST_OFFSETS, 1, list_offsets_v1(topic, partition, timestamp)))[(topic, partition)]

    def fetch_all(self, topic, partition, start=0, limit_s=10.0):
        """Fetch every record from `start` to the high watermark."""
        out = []
        offset = start
        deadline = time.monotonic() + limit_s
        while True:
            p = self.fetch(topic, partition, offset)
            if p["error"] != 0:
                raise AssertionError("fetch error %d at offset %d" % (p["error"], offset))
            hw = p["high_watermark"]
            for b in decode_batches(p["records"] or b""):
                assert b.crc_ok, "fetched batch with bad CRC at base offset %d" % b.base_offset
                for rec in b.records:
                    if rec.offset >= offset:
                        out.append(rec)
                offset = max(offset, b.last_offset + 1)
            if offset >= hw:
                return out, hw
            if time.monotonic() > deadline:
                raise AssertionError("fetch_all timed out at offset %d hw %d" % (offset, hw))

    # ---- idempotent-producer helpers (encoders/parsers at the end of this module)
    def request_flexible(self, api_key, api_version, body):
        """Send with request header v2; return the body after response header v1."""
        self.corr += 1
        corr = self.corr
        self.send_raw(request_frame_flexible(api_key, api_version, corr, body))
        got, resp = self.recv_response()
        if got != corr:
            raise AssertionError("correlation id mismatch: sent %d got %d" % (corr, got))
        return strip_response_header_v1(resp)

    def init_producer_id(self, version=1, transactional_id=None, transaction_timeout_ms=60000,
                         producer_id=-1, producer_epoch=-1):
        """InitProducerId v0-v5 (v2+ flexible); returns dict(throttle_time_ms, error,
        producer_id, producer_epoch)."""
        body = init_producer_id_request(version, transactional_id, transaction_timeout_ms,
                                        producer_id, producer_epoch)
        if version >= 2:
            resp = self.request_flexible(INIT_PRODUCER_ID, version, body)
        else:
            resp = self.request(INIT_PRODUCER_ID, version, body)
        return parse_init_producer_id(version, resp)

    def add_partitions_to_txn(self, transactional_id, producer_id, producer_epoch, topics):
        """AddPartitionsToTxn v1; topics: {topic: [partition]}. Returns {(topic, partition): error}."""
        body = (string(transactional_id) + i64(producer_id) + i16(producer_epoch)
                + array(sorted(topics.items()), lambda t: string(t[0]) + array(t[1], i32)))
        return _partition_errors(self.request(ADD_PARTITIONS_TO_TXN, 1, body))

    def add_offsets_to_txn(self, transactional_id, producer_id, producer_epoch, group_id):
        """AddOffsetsToTxn v1; returns the error code."""
        body = string(transactional_id) + i64(producer_id) + i16(producer_epoch) + string(group_id)
        r = Reader(self.request(ADD_OFFSETS_TO_TXN, 1, body))
        r.i32()  # throttle_time_ms
        return r.i16()

    def txn_offset_commit(self, transactional_id, group_id, producer_id, producer_epoch, offsets):
        """TxnOffsetCommit v2; offsets: {(topic, partition): offset}. Returns {(topic, partition): error}."""
        by_topic = {}
        for (t, p), o in sorted(offsets.items()):
            by_topic.setdefault(t, []).append((p, o))
        body = (string(transactional_id) + string(group_id) + i64(producer_id) + i16(producer_epoch)
                + array(sorted(by_topic.items()), lambda t: string(t[0]) + array(
                    t[1], lambda po: i32(po[0]) + i64(po[1]) + i32(-1) + string(None))))
        return _partition_errors(self.request(TXN_OFFSET_COMMIT, 2, body))

    def produce_multi(self, topics, version=3, acks=-1, timeout_ms=10000, transactional_id=None):
        """Produce to several partitions in one request; returns {(topic, partition): dict}.
        version 3 (plain), 8 (adds log_start_offset/record_errors/error_message) or 9 (flexible).
        topics: [(topic, [(partition, records_bytes)])] (a partition may be listed twice)."""
        if version == 3:
            assert transactional_id is None
            return parse_produce_v3(self.request(PRODUCE, 3, produce_v3_multi(topics, acks, timeout_ms)))
        if version == 8:
            return parse_produce_v8(self.request(PRODUCE, 8, produce_v8_multi(topics, acks, timeout_ms,
                                                                              transactional_id)))
        if version == 9:
            return parse_produce_v9(self.request_flexible(PRODUCE, 9, produce_v9_multi(topics, acks, timeout_ms,
                                                                                       transactional_id)))
        raise ValueError("produce version %d not implemented here" % version)

    def produce_v(self, topic, partition, records_bytes, version=3, acks=-1, transactional_id=None):
        return self.produce_multi([(topic, [(partition, records_bytes)])], version=version, acks=acks,
                                  transactional_id=transactional_id)[(topic, partition)]

    def create_topic(self, topic, partitions=1, replication_factor=1, timeout_ms=10000):
        """CreateTopics v2; returns (error_code, error_message) for the topic."""
        return parse_create_topics_v2(self.request(CREATE_TOPICS, 2, create_topics_v2(
            [(topic, partitions, replication_factor)], timeout_ms)))[topic]


# ================================================================= idempotent producer
# Added for test_idempotence_wire.py: InitProducerId (v0-v5), flexible
# (KIP-482) request/response headers, Produce v8 (non-flexible, with
# record_errors / error_message) and v9 (flexible), CreateTopics v2, and a
# decoder for the producer fields of fetched batches.  Nothing above changes.

INIT_PRODUCER_ID = 22
ADD_PARTITIONS_TO_TXN = 24
ADD_OFFSETS_TO_TXN = 25
TXN_OFFSET_COMMIT = 28

OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_PRODUCER_ID_MAPPING = 49
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
UNKNOWN_PRODUCER_ID = 59
PRODUCER_FENCED = 90

ERROR_NAMES = {
    -1: "UNKNOWN_SERVER_ERROR", 0: "NONE", 1: "OFFSET_OUT_OF_RANGE", 2: "CORRUPT_MESSAGE",
    3: "UNKNOWN_TOPIC_OR_PARTITION", 4: "INVALID_FETCH_SIZE", 5: "LEADER_NOT_AVAILABLE",
    6: "NOT_LEADER_OR_FOLLOWER", 7: "REQUEST_TIMED_OUT", 10: "MESSAGE_TOO_LARGE",
    14: "COORDINATOR_LOAD_IN_PROGRESS", 15: "COORDINATOR_NOT_AVAILABLE", 16: "NOT_COORDINATOR", 35: "UNSUPPORTED_VERSION",
    36: "TOPIC_ALREADY_EXISTS", 42: "INVALID_REQUEST", 43: "UNSUPPORTED_FOR_MESSAGE_FORMAT",
    45: "OUT_OF_ORDER_SEQUENCE_NUMBER", 46: "DUPLICATE_SEQUENCE_NUMBER",
    47: "INVALID_PRODUCER_EPOCH", 48: "INVALID_TXN_STATE", 49: "INVALID_PRODUCER_ID_MAPPING",
    50: "INVALID_TRANSACTION_TIMEOUT", 51: "CONCURRENT_TRANSACTIONS",
    53: "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", 59: "UNKNOWN_PRODUCER_ID", 87: "INVALID_RECORD",
    90: "PRODUCER_FENCED", 102: "TRANSACTION_ABORTABLE",
}


def error_name(code):
    return "%s(%d)" % (ERROR_NAMES.get(code, "?"), code)


# ----------------------------------------------------------------- flexible (compact) primitives

def tagged_fields_empty():
    return uvarint(0)


def compact_string(s):
    if s is None:
        return uvarint(0)
    b = s.encode() if isinstance(s, str) else s
    return uvarint(len(b) + 1) + b


def compact_bytes(b):
    if b is None:
        return uvarint(0)
    return uvarint(len(b) + 1) + b


def compact_array(items, enc=lambda x: x):
    if items is None:
        return uvarint(0)
    return uvarint(len(items) + 1) + b"".join(enc(x) for x in items)


def read_compact_string(r):
    n = r.uvarint() - 1
    return None if n < 0 else r.raw(n).decode()


def read_compact_bytes(r):
    n = r.uvarint() - 1
    return None if n < 0 else r.raw(n)


def read_compact_array(r, fn):
    n = r.uvarint() - 1
    if n < 0:
        return None
    return [fn(r) for _ in range(n)]


def skip_tagged_fields(r):
    for _ in range(r.uvarint()):
        r.uvarint()  # tag
        r.raw(r.uvarint())


def request_frame_flexible(api_key, api_version, correlation_id, body=b"", client_id="sluice-compat"):
    """Request header v2: header v1 followed by (empty) tagged fields."""
    payload = (i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id)
               + tagged_fields_empty() + body)
    return i32(len(payload)) + payload


def strip_response_header_v1(body):
    """`body` as returned by Conn.request (correlation id already removed):
    drop the response header v1 tagged fields."""
    r = Reader(body)
    skip_tagged_fields(r)
    return body[r.pos:]


# ----------------------------------------------------------------- InitProducerId

def _partition_errors(body):
    """{(topic, partition): error} of a response holding throttle_time_ms, then topics with
    (partition, error) each (AddPartitionsToTxn v1, TxnOffsetCommit v2)."""
    r = Reader(body)
    r.i32()  # throttle_time_ms
    out = {}
    for name, parts in r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16())))):
        for p, err in parts:
            out[(name, p)] = err
    return out


def init_producer_id_request(version, transactional_id=None, transaction_timeout_ms=60000,
                             producer_id=-1, producer_epoch=-1):
    """InitProducerId v0-v5.  v2+ flexible; v3+ carry producer_id/epoch."""
    if version >= 2:
        body = compact_string(transactional_id) + i32(transaction_timeout_ms)
        if version >= 3:
            body += i64(producer_id) + i16(producer_epoch)
        return body + tagged_fields_empty()
    return string(transactional_id) + i32(transaction_timeout_ms)


def parse_init_producer_id(version, body):
    """`body` without the response header (see Conn.init_producer_id)."""
    r = Reader(body)
    d = dict(throttle_time_ms=r.i32(), error=r.i16(), producer_id=r.i64(), producer_epoch=r.i16())
    if version >= 2:
        skip_tagged_fields(r)
    return d


# ----------------------------------------------------------------- Produce v8 / v9

def produce_v8_multi(topics, acks=-1, timeout_ms=10000, transactional_id=None):
    """Produce v8 (non-flexible; response has record_errors/error_message).
    topics: [(topic, [(partition, records_bytes)])]"""
    return (string(transactional_id) + i16(acks) + i32(timeout_ms)
            + array(topics, lambda t: string(t[0]) + array(t[1], lambda p: i32(p[0]) + kbytes(p[1]))))


def produce_v9_multi(topics, acks=-1, timeout_ms=10000, transactional_id=None):
    """Produce v9 (first flexible version). topics: [(topic, [(partition, records_bytes)])]"""
    return (compact_string(transactional_id) + i16(acks) + i32(timeout_ms)
            + compact_array(topics, lambda t: compact_string(t[0]) + compact_array(
                t[1], lambda p: i32(p[0]) + compact_bytes(p[1]) + tagged_fields_empty())
                + tagged_fields_empty())
            + tagged_fields_empty())


def _produce_partition_v8(r, flexible):
    if flexible:
        d = _produce_partition_v8_fields(r)
        skip_tagged_fields(r)
        return d
    d = dict(partition=r.i32(), error=r.i16(), base_offset=r.i64(), log_append_time=r.i64(),
             log_start_offset=r.i64())
    d["record_errors"] = r.array(lambda r: (r.i32(), r.string()))
    d["error_message"] = r.string()
    return d


def parse_produce_v8(body):
    r = Reader(body)
    topics = r.array(lambda r: (r.string(), r.array(lambda r: _produce_partition_v8(r, False))))
    r.i32()  # throttle
    return {(t, p["partition"]): p for t, parts in topics for p in parts}


def parse_produce_v9(body):
    """`body` without the response header v1 tagged fields."""
    r = Reader(body)

    def topic(r):
        name = read_compact_string(r)
        parts = read_compact_array(r, lambda r: _produce_partition_v8(r, True))
        skip_tagged_fields(r)
        return name, parts

    topics = read_compact_array(r, topic)
    r.i32()  # throttle
    skip_tagged_fields(r)
    return {(t, p["partition"]): p for t, parts in topics for p in parts}


def parse_produce_v10(body):
    """Produce v10+ (`body` without the response header's tagged fields): ({(topic, partition):
    partition}, {node id: (host, port, rack)}). A partition's `current_leader` is (leader id,
    leader epoch) from its tagged field 0, or None; the endpoints are the response's tagged
    field 0 (KIP-951)."""
    r = Reader(body)

    def partition(r):
        d = _produce_partition_v8_fields(r)
        d["current_leader"] = None
        for _ in range(r.uvarint()):
            tag, size = r.uvarint(), r.uvarint()
            if tag == 0:
                d["current_leader"] = (r.i32(), r.i32())
                skip_tagged_fields(r)
            else:
                r.raw(size)
        return d

    def topic(r):
        name = read_compact_string(r)
        parts = read_compact_array(r, partition)
        skip_tagged_fields(r)
        return name, parts

    topics = read_compact_array(r, topic)
    r.i32()  # throttle
    endpoints = {}
    for _ in range(r.uvarint()):
        tag, size = r.uvarint(), r.uvarint()
        if tag == 0:
            for node, host, port, rack in read_compact_array(
                    r, lambda r: (r.i32(), read_compact_string(r), r.i32(), read_compact_string(r),
                                  skip_tagged_fields(r))[:4]):
                endpoints[node] = (host, port, rack)
        else:
            r.raw(size)
    return {(t, p["partition"]): p for t, parts in topics for p in parts}, endpoints


def _produce_partition_v8_fields(r):
    """A flexible produce partition response up to (not including) its tagged fields."""
    d = dict(partition=r.i32(), error=r.i16(), base_offset=r.i64(), log_append_time=r.i64(),
             log_start_offset=r.i64())
    d["record_errors"] = read_compact_array(r, lambda r: (r.i32(), read_compact_string(r), skip_tagged_fields(r))[:2])
    d["error_message"] = read_compact_string(r)
    return d


# ----------------------------------------------------------------- CreateTopics v2

def create_topics_v2(topics, timeout_ms=10000, validate_only=False):
    """topics: [(name, num_partitions, replication_factor)]"""
    return (array(topics, lambda t: string(t[0]) + i32(t[1]) + i16(t[2]) + array([]) + array([]))
            + i32(timeout_ms) + i8(1 if validate_only else 0))


def parse_create_topics_v2(body):
    r = Reader(body)
    r.i32()  # throttle
    return {name: (err, msg) for name, err, msg in r.array(lambda r: (r.string(), r.i16(), r.string()))}


# ----------------------------------------------------------------- batch producer fields

@dataclass
class BatchHeader:
    base_offset: int
    last_offset_delta: int
    attributes: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def last_offset(self):
        return self.base_offset + self.last_offset_delta

    @property
    def is_transactional(self):
        return bool(self.attributes & 0x10)

    @property
    def is_control(self):
        return bool(self.attributes & 0x20)


def decode_batch_headers(data: bytes):
    """The header fields (incl. producer id / epoch / base sequence) of each
    complete magic-2 batch in `data`; a trailing partial batch is ignored."""
    out = []
    pos = 0
    while len(data) - pos >= 61:
        base_offset, batch_length = struct.unpack(">qi", data[pos:pos + 12])
        if batch_length < 49 or pos + 12 + batch_length > len(data):
            break
        (_ple, magic, _crc, attributes, lod, _bts, _mts, pid, epoch, seq, count) = struct.unpack(
            ">ibIhiqqqhii", data[pos + 12:pos + 12 + 49])
        if magic != 2:
            break
        out.append(BatchHeader(base_offset, lod, attributes, pid, epoch, seq, count))
        pos += 12 + batch_length
    return out


def idempotent_batch(values, producer_id, producer_epoch, base_sequence, attributes=0, **kw):
    """A batch of records with the given values, stamped with producer fields."""
    return encode_batch([Record(value=v) for v in values], producer_id=producer_id,
                        producer_epoch=producer_epoch, base_sequence=base_sequence,
                        attributes=attributes, **kw)
