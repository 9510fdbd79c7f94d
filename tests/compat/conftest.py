"""Fixtures for the Sluice client-compatibility suite.

`broker` starts a fresh Sluice broker per test on a free loopback port with a
temporary data directory and yields a `Broker` handle (`.bootstrap` is the
"127.0.0.1:PORT" address).  `broker_factory(**overrides)` starts brokers with
extra `--override key=value` settings.  `Broker.restart()` restarts on the
same port and data dir; `Broker.kill9()` simulates a crash.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

SLUICE_BIN = os.environ.get("SLUICE_BIN") or os.path.join(REPO, "target", "debug", "sluice")
START_TIMEOUT_S = float(os.environ.get("SLUICE_START_TIMEOUT", "20"))
STOP_TIMEOUT_S = 10.0

_ALL_BROKERS: list = []


def _set_pdeathsig():  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test runner
    except Exception:
        pass


def _port_window() -> tuple[int, int]:
    """Ports this test process hands out: below the kernel's ephemeral range, so no client's or
    peer's outgoing connection can take one between its choice and the broker's bind, and a
    slice of their own per suite run (COMPAT_PORT_SLOT of COMPAT_PORT_SLOTS), so suites run
    side by side never choose the same one."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    low = max(low, 12000)
    slot = int(os.environ.get("COMPAT_PORT_SLOT", "0"))
    slots = max(1, int(os.environ.get("COMPAT_PORT_SLOTS", "2")))
    width = (low - 10000) // slots
    return 10000 + slot % slots * width, 10000 + (slot % slots + 1) * width


_PORTS = _port_window()
_next_port = _PORTS[0] + os.getpid() % (_PORTS[1] - _PORTS[0])


def free_port() -> int:
    """A port nobody listens on, never one this process handed out recently: the cursor walks
    the window (wrapping after thousands of ports), skipping any port that cannot be bound now.
    Binding to port 0 instead can return one port twice in a row, and a cluster's six ports then
    collide."""
    global _next_port
    lo, hi = _PORTS
    for _ in range(hi - lo):
        port, _next_port = _next_port, lo + (_next_port + 1 - lo) % (hi - lo)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in %d..%d" % (lo, hi))


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class BrokerStartError(Exception):
    pass


class Broker:
    def __init__(self, data_dir: str, port: int | None = None, overrides: dict | None = None,
                 workdir: str | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.overrides = dict(overrides or {})
        self.workdir = workdir or data_dir + "-run"
        os.makedirs(self.workdir, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.exit_codes: list = []  # (signal sent, returncode) per stop
        _ALL_BROKERS.append(self)

    @property
    def bootstrap(self) -> str:
        return "127.0.0.1:%d" % self.port

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def stderr_path(self):
        return os.path.join(self.workdir, "stderr.%d.log" % self.generation)

    def argv(self):
        args = [SLUICE_BIN, "serve",
                "--override", "listeners=PLAINTEXT://127.0.0.1:%d" % self.port,
                "--override", "log.dirs=%s" % self.data_dir]
        for k, v in self.overrides.items():
            args += ["--override", "%s=%s" % (k, v)]
        return args

    def start(self, timeout: float = START_TIMEOUT_S):
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        if not os.path.exists(SLUICE_BIN):
            pytest.fail("Sluice binary not found at %s (build it, or set SLUICE_BIN)" % SLUICE_BIN,
                        pytrace=False)
        self.generation += 1
        err = open(self.stderr_path, "wb")
        out = open(os.path.join(self.workdir, "stdout.%d.log" % self.generation), "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     cwd=self.workdir, preexec_fn=_set_pdeathsig)
        err.close()
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerStartError("broker exited with %s during startup\n%s"
                                       % (self.proc.returncode, self.stderr_tail()))
            if port_open(self.port):
                return self
            time.sleep(0.05)
        self.kill9()
        raise BrokerStartError("broker did not accept connections on %d within %.0fs\n%s"
                               % (self.port, timeout, self.stderr_tail()))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S):
        """SIGTERM, wait, then SIGKILL. Returns (returncode, clean) where clean
        means it exited by itself within `timeout` after SIGTERM."""
        if self.proc is None:
            return None, True
        if self.proc.poll() is not None:
            return self.proc.returncode, True
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
            self.exit_codes.append(("TERM", rc))
            return rc, True
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
            self.exit_codes.append(("TERM-timeout-KILL", rc))
            return rc, False

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL by PID
            rc = self.proc.wait(10)
            self.exit_codes.append(("KILL", rc))

    def restart(self, clean: bool = True):
        if clean:
            self.stop()
        else:
            self.kill9()
        return self.start()

    def stderr_tail(self, n_lines: int = 60) -> str:
        out = []
        for g in range(max(1, self.generation - 1), self.generation + 1):
            p = os.path.join(self.workdir, "stderr.%d.log" % g)
            try:
                with open(p, "rb") as f:
                    f.seek(0, 2)
                    size = f.tell()
                    f.seek(max(0, size - 16384))
                    lines = f.read().decode("utf-8", "replace").splitlines()[-n_lines:]
            except OSError:
                continue
            out.append("---- broker stderr (start #%d, pid %s) ----" % (g, self.pid))
            out.extend(lines)
        return "\n".join(out)

    def partition_dir(self, topic, partition):
        return os.path.join(self.data_dir, "%s-%d" % (topic, partition))


def unique_topic(prefix="t"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


# --------------------------------------------------------------------- fixtures


@pytest.fixture
def broker_factory(request, tmp_path_factory):
    started = []

    def make(**overrides) -> Broker:
        base = tempfile.mkdtemp(prefix="sluice-compat-")
        b = Broker(os.path.join(base, "data"), overrides=overrides, workdir=os.path.join(base, "run"))
        b._base = base
        started.append(b)
        request.node._sluice_brokers = started
        try:
            b.start()
        except BrokerStartError as e:
            pytest.fail(str(e), pytrace=False)
        return b

    yield make
    for b in started:
        b.stop()
    failed = any(getattr(request.node, "rep_" + w, None) is not None
                 and getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    if not failed:
        for b in started:
            shutil.rmtree(b._base, ignore_errors=True)


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


def pytest_collection_modifyitems(config, items):
    """COMPAT_SHARD=i/n keeps every n-th test from the i-th on (run.sh runs a long venv's suite
    as shards side by side); tests share nothing, so any split is sound."""
    shard = os.environ.get("COMPAT_SHARD")
    if not shard:
        return
    i, n = (int(x) for x in shard.split("/"))
    kept = [t for k, t in enumerate(items) if k % n == i]
    dropped = [t for k, t in enumerate(items) if k % n != i]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed and rep.when in ("setup", "call"):
        for b in getattr(item, "_sluice_brokers", []):
            state = "alive" if b.alive() else "exited rc=%s" % (b.proc.returncode if b.proc else None)
            rep.sections.append(("sluice broker %s [%s] data=%s" % (b.bootstrap, state, b.data_dir),
                                 b.stderr_tail()))


def pytest_sessionfinish(session, exitstatus):
    for b in _ALL_BROKERS:
        try:
            b.kill9()
        except Exception:
            pass


def pytest_report_header(config):
    lines = ["sluice binary: %s (%s)" % (SLUICE_BIN, "present" if os.path.exists(SLUICE_BIN) else "MISSING")]
    try:
        import confluent_kafka
        lines.append("confluent-kafka %s, librdkafka %s" % (confluent_kafka.__version__
                                                            if hasattr(confluent_kafka, "__version__")
                                                            else confluent_kafka.version()[0],
                                                            confluent_kafka.libversion()[0]))
    except Exception as e:  # pragma: no cover
        lines.append("confluent-kafka unavailable: %s" % e)
    try:
        import kafka
        lines.append("kafka-python %s" % kafka.__version__)
    except Exception as e:  # pragma: no cover
        lines.append("kafka-python unavailable: %s" % e)
    try:
        out = subprocess.run(["kcat", "-V"], capture_output=True, text=True, timeout=10).stdout
        lines.append(" ".join(l for l in out.splitlines() if l.startswith("Version")))
    except Exception as e:  # pragma: no cover
        lines.append("kcat unavailable: %s" % e)
    return lines
