"""Transactions through the Java admin client (KIP-664): listTransactions,
describeTransactions and describeProducers show an open transaction, its
producer and partitions, then its commit. Runs once per suite (new venv), for
both Java client builds installed by scripts/install-java-clients.sh."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, unique_topic

VERSIONS = os.environ.get("JAVA_CLIENT_VERSIONS", "4.4.0 3.1.2").split()
SOURCE = os.path.join(REPO, "tests", "compat", "java", "TxnAdmin.java")

pytestmark = pytest.mark.skipif(sys.prefix.endswith("-old"), reason="Java tests run once, in the new venv")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", VERSIONS)
def test_admin_lists_and_describes_transactions_and_producers(broker, version):
    lib = os.path.join(REPO, ".java-clients", version, "lib")
    assert os.path.isdir(lib), "kafka-clients %s is not installed: run scripts/install-java-clients.sh" % version
    topic = unique_topic("txadm")
    txn_id = "txadm-" + topic
    p = subprocess.run(["java", "-cp", lib + "/*", SOURCE, broker.bootstrap, topic, txn_id],
                       capture_output=True, text=True, timeout=150)
    lines = dict(l.split(" ", 1) for l in p.stdout.splitlines() if " " in l)
    assert p.returncode == 0, "TxnAdmin failed:\n%s\n%s" % (p.stdout, p.stderr[-3000:])
    assert lines["offset"] == "0"
    state, pid = lines["listed"].split()
    assert state == "Ongoing", lines
    assert lines["open"].startswith("Ongoing %s 0 [%s-1] true" % (pid, topic)), lines
    # The partition knows the producer, its last sequence and its open transaction's start.
    assert lines["producer"] == "%s 0 0 0" % pid, lines
    assert lines["after"] == "CompleteCommit []", lines
