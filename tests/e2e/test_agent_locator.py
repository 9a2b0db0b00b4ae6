"""SEC-25: the netns-annotation locator (a pod's network namespace named by an annotation
its team writes) runs on kwok's test nodes only; on any other node the agent refuses to
start, so that no team can name a network namespace of a real host."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.agents import AGENT_NAMESPACE
from tests.e2e.conftest import Cluster

REAL_LOOKING = "not-a-test-node"


def start_agent(cluster: Cluster, node: str, journal: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "shakeout"),
            "agent",
            f"--node={node}",
            f"--namespace={AGENT_NAMESPACE}",
            "--locator=netns-annotation",
            f"--journal={journal}",
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_netns_annotation_locator_refuses_a_node_that_is_not_a_test_node(
    crds: Cluster, tmp_path: Path
) -> None:
    # A Node object as a real kubelet registers it: no kwok annotation.
    crds.kubectl("delete", "node", REAL_LOOKING, "--ignore-not-found")
    crds.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": REAL_LOOKING}})
    try:
        refused = start_agent(crds, REAL_LOOKING, tmp_path / "journal.json")
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert f"node {REAL_LOOKING} is not one" in refused.stderr
        assert "use --locator=runtime" in refused.stderr
        # It refused before anything else: no keeper journal, no Lease.
        assert not (tmp_path / "journal.json").exists()
        lease = crds.kubectl(
            "get", "lease", f"shakeout-agent-{REAL_LOOKING}", "-n", AGENT_NAMESPACE, check=False
        )
        assert lease.returncode != 0
        # A node that does not exist is not known to be a test node either.
        assert start_agent(crds, "no-such-node", tmp_path / "other.json").returncode == 2
    finally:
        crds.kubectl("delete", "node", REAL_LOOKING, "--ignore-not-found")
