"""The metadata quorum through the Java admin client (KIP-836's describeMetadataQuorum,
which kafka-metadata-quorum.sh uses): a single broker is a quorum of one voter that leads,
and a topic's creation is a record its high watermark then covers. Runs once per suite (new
venv), with the Java client builds that have the call (3.3 and later)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, unique_topic

VERSIONS = os.environ.get("JAVA_CLIENT_VERSIONS", "4.4.0 3.1.2").split()
SOURCE = os.path.join(REPO, "tests", "compat", "java", "QuorumAdmin.java")

pytestmark = pytest.mark.skipif(sys.prefix.endswith("-old"), reason="Java tests run once, in the new venv")


def _has_describe_quorum(version: str) -> bool:
    major, minor = (int(x) for x in version.split(".")[:2])
    return (major, minor) >= (3, 3)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", VERSIONS)
def test_admin_describes_the_metadata_quorum(broker, version):
    if not _has_describe_quorum(version):
        pytest.skip("kafka-clients %s has no describeMetadataQuorum (KIP-836 came in 3.3)" % version)
    lib = os.path.join(REPO, ".java-clients", version, "lib")
    assert os.path.isdir(lib), "kafka-clients %s is not installed: run scripts/install-java-clients.sh" % version
    p = subprocess.run(["java", "-cp", lib + "/*", SOURCE, broker.bootstrap, unique_topic("quorum")],
                       capture_output=True, text=True, timeout=100)
    assert p.returncode == 0, "QuorumAdmin failed:\n%s\n%s" % (p.stdout, p.stderr[-3000:])
    lines = dict(l.split(" ", 1) for l in p.stdout.splitlines() if " " in l)

    def quorum(label):
        f = lines[label].split()
        return {f[i]: int(f[i + 1]) for i in range(0, len(f), 2)}

    before, after = quorum("before"), quorum("after")
    # node.id 1 (the broker's default) leads; it is the only voter; brokers that only
    # observe come with the cluster.
    assert (before["leader"], before["voters"], before["observers"]) == (1, 1, 0), lines
    assert before["epoch"] >= 1, lines
    # The leader's LeaderChange entry at least is committed; the topic's record adds one more.
    assert before["hw"] >= 1, lines
    assert after["hw"] == before["hw"] + 1 and after["epoch"] == before["epoch"], lines
    voter, leo, fetched, caught_up = lines["after-voter"].split()
    assert (voter, int(leo), fetched, caught_up) == ("1", after["hw"], "true", "true"), lines
