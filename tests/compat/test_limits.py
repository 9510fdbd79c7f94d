"""Limits an operator sets and relies on: max.connections, max.connections.per.ip, and a
bounded backlog of responses per connection (a client that sends without reading stops
being read; nothing it asked for is lost)."""
import socket
import threading
import time
import urllib.request

import wire
from clients import ck_create_topic
from conftest import free_port


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


def test_max_connections_waits_for_a_place(broker_factory):
    broker = broker_factory(**{"max.connections": 2})
    a, b = wire.Conn.to(broker.bootstrap), wire.Conn.to(broker.bootstrap)
    try:
        assert answers(a) and answers(b)
        # The kernel completes the handshake, but the broker does not take the connection up.
        c = wire.Conn.to(broker.bootstrap, timeout=1)
        c.send_raw(wire.request_frame(18, 0, 7, b""))
        try:
            c.recv_response()
            raise AssertionError("a third connection was served past max.connections=2")
        except socket.timeout:
            pass
        a.close()
        c.sock.settimeout(10)
        corr, _ = c.recv_response()
        assert corr == 7, "once a place is free the waiting connection is served"
        c.close()
    finally:
        a.close()
        b.close()


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
