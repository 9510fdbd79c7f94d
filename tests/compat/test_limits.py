"""Limits an operator sets and relies on: max.connections, max.connections.per.ip, a
bounded backlog of responses per connection (a client that sends without reading stops
being read; nothing it asked for is lost), and queued.max.requests (requests read but not yet
taken up by the broker's state machine: past it, no connection is read)."""
import ctypes
import os
import socket
import threading
import time
import urllib.request

import pytest

import wire
from clients import ck_create_topic
from conftest import free_port, unique_topic


def answers(conn):
    """True when an ApiVersions v0 on this connection is answered."""
    try:
        conn.request(18, 0, b"")
        return True
    except (wire.ConnectionClosed, OSError):
        return False


def test_max_connections_per_ip(broker_factory):
    broker = broker_factory(**{"max.connections.per.ip": 3})
    time.sleep(0.5)  # the start-up probe's connection has closed
    conns = [wire.Conn.to(broker.bootstrap) for _ in range(3)]
    try:
        assert all(answers(c) for c in conns)
        extra = wire.Conn.to(broker.bootstrap, timeout=5)
        assert extra.wait_closed(5), "a fourth connection from one address is closed at once"
        extra.close()
        conns.pop().close()
        time.sleep(0.2)  # the broker sees the close
        again = wire.Conn.to(broker.bootstrap)
        conns.append(again)
        assert answers(again), "a closed connection frees its place"
    finally:
        for c in conns:
            c.close()


def next_connection_waits_for(bootstrap, open_one, limit):
    """With `limit` connections open, the next is not served until `open_one` closes: the
    kernel completes its handshake, but the broker does not take the connection up."""
    c = wire.Conn.to(bootstrap, timeout=1)
    c.send_raw(wire.request_frame(18, 0, 7, b""))
    try:
        c.recv_response()
        raise AssertionError("a connection was served past max.connections=%d" % limit)
    except socket.timeout:
        pass
    open_one.close()
    c.sock.settimeout(10)
    corr, _ = c.recv_response()
    assert corr == 7, "once a place is free the waiting connection is served"
    c.close()


def test_max_connections_waits_for_a_place(broker_factory):
    broker = broker_factory(**{"max.connections": 2})
    a, b = wire.Conn.to(broker.bootstrap), wire.Conn.to(broker.bootstrap)
    try:
        assert answers(a) and answers(b)
        next_connection_waits_for(broker.bootstrap, a, 2)
    finally:
        a.close()
        b.close()


def _set_broker_configs(bootstrap, **configs):
    """Sets this broker's dynamic configs (AlterConfigs on broker 1: what is not named is
    reset), as kafka-configs --entity-type brokers --entity-name 1 --alter does."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ResourceType.BROKER, "1", set_config={k.replace("_", "."): str(v)
                                                                for k, v in configs.items()})
    for f in admin.alter_configs([res], request_timeout=15).values():
        f.result(timeout=20)


def test_connection_limits_change_at_runtime(broker):
    """max.connections.per.ip, its overrides and max.connections are dynamic broker configs, as
    in Kafka: a change applies to the next connection; open ones stay open. The connections
    under test come from 127.0.0.2, the admin client's from 127.0.0.1."""
    other = "127.0.0.2"
    conns = [wire.Conn.to(broker.bootstrap, source=other) for _ in range(3)]
    try:
        assert all(answers(c) for c in conns), "no limit yet"
        _set_broker_configs(broker.bootstrap, max_connections_per_ip=2)
        time.sleep(0.2)
        assert all(answers(c) for c in conns), "the connections open stay open"
        extra = wire.Conn.to(broker.bootstrap, timeout=5, source=other)
        assert extra.wait_closed(5), "past the new per-address limit a new connection is closed"
        extra.close()
        # An override for this address lets it have more.
        _set_broker_configs(broker.bootstrap, max_connections_per_ip=2,
                            max_connections_per_ip_overrides="%s:4" % other)
        time.sleep(0.2)
        conns.append(wire.Conn.to(broker.bootstrap, source=other))
        assert answers(conns[-1]), "the override's fourth connection is served"
        extra = wire.Conn.to(broker.bootstrap, timeout=5, source=other)
        assert extra.wait_closed(5), "and a fifth is closed"
        extra.close()
    finally:
        for c in conns:
            c.close()
    time.sleep(0.3)  # the broker sees the closes
    # The total: with max.connections=1, one connection is served and the next waits.
    _set_broker_configs(broker.bootstrap, max_connections=1)
    time.sleep(0.3)  # the admin client's connections close
    a = wire.Conn.to(broker.bootstrap)
    try:
        assert answers(a)
        next_connection_waits_for(broker.bootstrap, a, 1)
    finally:
        a.close()
    time.sleep(0.3)
    _set_broker_configs(broker.bootstrap)  # all reset
    time.sleep(0.2)
    more = [wire.Conn.to(broker.bootstrap) for _ in range(4)]
    try:
        assert all(answers(c) for c in more), "back to no limit"
    finally:
        for c in more:
            c.close()


def test_a_client_pipelining_past_the_in_flight_limit_is_slowed_not_cut_off(broker):
    """3,000 long-poll fetches sent back to back on one connection, far more than the 1,024 a
    connection may have unanswered (plus what the broker has read ahead): the broker stops
    reading the connection at the limit and reads on as the first ones are answered (their
    max.wait.ms runs out). Every one is answered, in order, on the same connection (it was
    closed at the limit before)."""
    t = unique_topic("pipelined")
    ck_create_topic(broker.bootstrap, t, partitions=1)
    n, wait_ms = 3000, 1500
    conn = wire.Conn.to(broker.bootstrap, timeout=30)
    try:
        frames = b"".join(wire.request_frame(wire.FETCH, 4, corr, wire.fetch_v4(t, 0, 0, max_wait_ms=wait_ms))
                          for corr in range(1, n + 1))
        started = time.monotonic()
        sender = threading.Thread(target=conn.send_raw, args=(frames,))
        sender.start()
        got = []
        for _ in range(n):
            corr, body = conn.recv_response()
            got.append((corr, wire.parse_fetch_v4(body)[(t, 0)]["error"]))
        sender.join(10)
        took = time.monotonic() - started
    finally:
        conn.close()
    assert got == [(c, 0) for c in range(1, n + 1)], got[:5]
    # Those past the limit were read only once the first had waited out max.wait.ms.
    assert took >= 2 * wait_ms / 1000 * 0.9, took


def _metadata_requests(port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith('kafka_network_requestmetrics_requests_total{request="Metadata"'):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_client_that_does_not_read_is_not_read(broker_factory):
    metrics = free_port()
    broker = broker_factory(**{"metrics.listener": "127.0.0.1:%d" % metrics})
    names = ["backlog-%02d-%s" % (i, "x" * 100) for i in range(40)]
    for name in names:
        ck_create_topic(broker.bootstrap, name, 1)
    # Metadata v1 naming the 40 topics (4.5 KB asked, 6 KB answered), 20,000 of them (90 MB,
    # more than any socket buffers hold), sent for 5 s without reading.
    frame = wire.request_frame(3, 1, 1, wire.metadata_v1(names))
    want = 20_000
    data = memoryview(frame * want)
    s = socket.create_connection(("127.0.0.1", broker.port))
    s.setblocking(False)
    off = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and off < len(data):
        try:
            off += s.send(data[off:off + (1 << 20)])
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(1)
    served = _metadata_requests(metrics)
    # The broker stopped reading once 16 MiB of answers were waiting (plus what the socket
    # buffers and the requests in flight hold): far fewer than were sent.
    assert off < len(data), "every request went out: the broker kept reading a client that reads nothing"
    assert served < want * 0.6, "the broker read %d requests from a client that reads nothing" % served
    # Another client is served meanwhile.
    with wire.Conn.to(broker.bootstrap) as other:
        assert answers(other)
    # Now the client reads: every request it sent is answered.
    total = -(-off // len(frame))  # the last one, if cut, is completed below
    got = [0]

    def read_all():
        buf = b""
        while got[0] < total:
            chunk = s.recv(1 << 20)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 8:
                size = int.from_bytes(buf[:4], "big")
                if len(buf) < 4 + size:
                    break
                assert int.from_bytes(buf[4:8], "big") == 1
                buf = buf[4 + size:]
                got[0] += 1

    s.setblocking(True)
    s.settimeout(30)
    reader = threading.Thread(target=read_all)
    reader.start()
    s.sendall(data[off:total * len(frame)])
    reader.join(60)
    s.close()
    assert got[0] == total, "%d of %d requests answered" % (got[0], total)


# ------------------------------------------------------------------ queued.max.requests

_PTRACE_SEIZE, _PTRACE_INTERRUPT, _PTRACE_DETACH = 0x4206, 0x4207, 17
_WALL = 0x40000000


class StoppedThread:
    """One thread of another process stopped with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT: the
    other threads run on), until resume(). The tracer is the calling thread; the kernel lets the
    thread go if this process dies first."""

    def __init__(self, pid, name):
        tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)
                if open("/proc/%d/task/%s/comm" % (pid, t)).read().strip() == name]
        assert len(tids) == 1, "threads named %r in process %d: %s" % (name, pid, tids)
        self.tid = tids[0]
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self.libc.ptrace.restype = ctypes.c_long
        self._call(_PTRACE_SEIZE, "PTRACE_SEIZE")
        self.stopped = True
        try:
            self._call(_PTRACE_INTERRUPT, "PTRACE_INTERRUPT")
            os.waitpid(self.tid, _WALL)
        except BaseException:
            self.resume()
            raise

    def _call(self, request, what):
        if self.libc.ptrace(request, self.tid, None, None) != 0:
            e = ctypes.get_errno()
            pytest.fail("%s of thread %d: %s (this test needs to ptrace the broker it started)"
                        % (what, self.tid, os.strerror(e)), pytrace=False)

    def resume(self):
        if self.stopped:
            self.stopped = False
            self._call(_PTRACE_DETACH, "PTRACE_DETACH")


def unread_bytes(pid, local_port, remote_port):
    """(send queue, receive queue) in bytes of process `pid`'s TCP socket 127.0.0.1:local_port
    <-> :remote_port, from /proc/<pid>/net/tcp: what the kernel holds that the peer has not
    acknowledged / that the process has not read."""
    with open("/proc/%d/net/tcp" % pid) as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)) == (local_port, remote_port):
                tx, rx = (int(x, 16) for x in fields[4].split(":"))
                return tx, rx
    raise AssertionError("no socket %d <-> %d in /proc/%d/net/tcp" % (local_port, remote_port, pid))


def read_responses(sock, n, timeout=30):
    """The correlation ids of the next n responses on a blocking socket."""
    sock.settimeout(timeout)
    buf, ids = b"", []
    while len(ids) < n:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError("connection closed after %d of %d responses" % (len(ids), n))
        buf += chunk
        while len(buf) >= 8 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            size = int.from_bytes(buf[:4], "big")
            ids.append(int.from_bytes(buf[4:8], "big"))
            buf = buf[4 + size:]
    return ids


@pytest.mark.timeout(60)
def test_queued_max_requests_bounds_what_the_broker_reads_ahead(broker_factory):
    """queued.max.requests=16. The broker's state machine thread ("sluice-core") is held still
    with ptrace, standing in for a core busy with something long (it takes every request from
    one bounded queue). A client then pipelines 2,000 ApiVersions requests (54 kB, all in the
    broker's socket buffer): the broker reads 16 of them into the queue and one more that waits
    for a place, and nothing more; the rest stays in the kernel's receive queue of the broker's
    socket, seen in /proc/<pid>/net/tcp, also a second later. A new connection's request is not
    read either (the queue is every connection's). Once the core runs again every request of
    both is answered, in order."""
    queued = 16
    broker = broker_factory(**{"queued.max.requests": queued})
    frames = [wire.request_frame(18, 0, corr, b"") for corr in range(1, 2001)]
    size = len(frames[0])
    assert all(len(f) == size for f in frames)
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    other = None
    try:
        s.sendall(wire.request_frame(18, 0, 0, b""))
        assert read_responses(s, 1) == [0], "served before the core is stopped"
        port = s.getsockname()[1]
        core = StoppedThread(broker.pid, "sluice-core")
        try:
            s.sendall(b"".join(frames))
            other = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
            other.sendall(wire.request_frame(18, 0, 7, b""))
            deadline = time.monotonic() + 5
            while unread_bytes(broker.pid, port, broker.port)[0] or \
                    unread_bytes(broker.pid, other.getsockname()[1], broker.port)[0]:
                assert time.monotonic() < deadline, "the requests did not all reach the broker's socket"
                time.sleep(0.05)
            time.sleep(0.5)  # the broker's readers do what they can
            unread = unread_bytes(broker.pid, broker.port, port)[1]
            assert unread % size == 0, (unread, size)
            read = len(frames) - unread // size
            # queued.max.requests in the queue, and one read that waits for a place in it.
            assert queued - 2 <= read <= queued + 1, (
                "with its core stopped and queued.max.requests=%d the broker read %d of %d pipelined requests"
                % (queued, read, len(frames)))
            time.sleep(1)
            assert unread_bytes(broker.pid, broker.port, port)[1] == unread, "the broker read on"
            assert unread_bytes(broker.pid, broker.port, other.getsockname()[1])[1] == size, (
                "a new connection's request was read with the queue full")
        finally:
            core.resume()
        assert read_responses(s, len(frames)) == list(range(1, len(frames) + 1))
        assert read_responses(other, 1) == [7]
    finally:
        s.close()
        if other is not None:
            other.close()

