"""Who may do what (team members run their team's experiments and read their runs; any
authenticated user may cancel any run by name and flip the ChaosSwitch; only the holders of
shakeout-rails-admin change its rails, create or delete it; nobody but the operator writes
its keys on runs; each node agent writes only its own node's Lease and reports; the
operator reads a team's Secrets only once the team grants it), as a matrix of identities
and actions, run three times:
with the operator's webhooks in place, with its ValidatingWebhookConfiguration deleted, and
with its Mutating- and ValidatingWebhookConfiguration both deleted.
Zero unauthorized actions and zero false refusals, every time."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.identities import (
    NAMESPACE,
    TokenUser,
    apply_shipped_rbac,
    kubeconfig,
    pod_on,
    token,
)
from tests.e2e.runs import create_run, deployment, patch_run_as, scale_experiment, wait_phase

# (user, action, namespace, allowed)
MATRIX = [
    ("alice", "run", "team-a", True),
    ("bob", "run", "team-a", False),
    ("carol", "run", "team-a", False),
    ("bob", "run", "team-b", True),
    ("alice", "run", "team-b", False),
    ("alice", "findings", "team-a", True),
    ("bob", "findings", "team-a", False),
    ("carol", "findings", "team-a", False),
    ("bob", "cancel", "team-a", True),
    ("carol", "cancel", "team-a", True),
    ("carol", "switch", "", True),
    ("bob", "delete", "team-a", False),
    # The switch's rails (tests/e2e/test_switch_rails.py plays the attacks in full).
    ("carol", "caps", "", False),
    ("alice", "caps", "", False),
    ("bob", "mode", "", False),
    ("carol", "switch-create", "", False),
    ("alice", "switch-delete", "", False),
    ("rails-admin", "caps", "", True),
    ("rails-admin", "mode", "", True),
    ("rails-admin", "switch-create", "", True),
    ("rails-admin", "switch-delete", "", True),
    # A run's metadata and report (tests/e2e/test_run_metadata.py plays the attacks in full).
    ("carol", "hide", "team-a", False),
    ("alice", "hide", "team-a", False),
    ("alice", "own-finalizer", "team-a", False),
    ("carol", "read", "team-a", False),
    ("bob", "read", "team-a", False),
    ("alice", "read", "team-a", True),
    ("alice", "operate", "team-a", False),
    # The node agent of kwok-node-0, with its pod-bound token (test_agent_identity.py).
    ("agent-node0", "own-lease", "", True),
    ("agent-node0", "other-lease", "", False),
    ("agent-node0", "leader-lease", "", False),
    # The operator's own ServiceAccount (test_operator_privileges.py).
    ("operator", "operate", "team-a", True),
    ("operator", "other-webhook", "", False),
    ("operator", "team-secret", "team-a", False),
    ("operator", "granted-secret", "team-b", True),
]
# The team that grants the operator its Secrets (for HttpGet check headers).
GRANTING_TEAM = "team-b"
RAILS_ADMIN_NS = "shakeout-matrix"


@pytest.fixture(scope="module")
def rails_admin(crds: Cluster) -> Iterator[str]:
    """A ServiceAccount bound to shakeout-rails-admin; its token."""
    crds.kubectl("create", "namespace", RAILS_ADMIN_NS, check=False)
    crds.kubectl("create", "serviceaccount", "rails-admin", "-n", RAILS_ADMIN_NS, check=False)
    crds.kubectl(
        "create",
        "clusterrolebinding",
        "matrix-rails-admin",
        "--clusterrole=shakeout-rails-admin",
        f"--serviceaccount={RAILS_ADMIN_NS}:rails-admin",
        check=False,
    )
    token = crds.kubectl("create", "token", "rails-admin", "-n", RAILS_ADMIN_NS).stdout.strip()
    yield token
    crds.kubectl("delete", "clusterrolebinding", "matrix-rails-admin", check=False)
    crds.kubectl("delete", "namespace", RAILS_ADMIN_NS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def identities(
    crds: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TokenUser]]:
    """The shipped agent and operator identities (their RBAC from deploy/base), with the
    Leases the agent's rows try (created expired when absent), and team-b's grant of its
    Secrets to the operator."""
    apply_shipped_rbac(crds)
    workdir = tmp_path_factory.mktemp("matrix-identities")
    agent = token(crds, "shakeout-agent", pod_on(crds, "kwok-node-0"))
    users = {
        "agent-node0": TokenUser(crds, kubeconfig(crds, agent, workdir / "agent")),
        "operator": TokenUser(
            crds, kubeconfig(crds, token(crds, "shakeout-operator"), workdir / "operator")
        ),
    }
    for lease in LEASES.values():
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": lease, "namespace": NAMESPACE},
            "spec": {"leaseDurationSeconds": 1, "renewTime": "2020-01-01T00:00:00.000000Z"},
        }
        crds.create(body, check=False)  # AlreadyExists: a test's real one, left alone
    grant = ("rolebinding", "matrix-check-secrets", "-n", GRANTING_TEAM)
    crds.kubectl(
        "create",
        *grant,
        "--clusterrole=shakeout-check-secrets",
        f"--serviceaccount={NAMESPACE}:shakeout-operator",
        check=False,
    )
    yield users
    crds.kubectl("delete", *grant, check=False)


LEASES = {
    "own-lease": "shakeout-agent-kwok-node-0",
    "other-lease": "shakeout-agent-kwok-node-1",
    "leader-lease": "shakeout-operator",
}


def attempt_identity(users: dict[str, TokenUser], user: str, action: str, namespace: str) -> bool:
    """An agent's or the operator's action: Lease writes as server-side dry runs (RBAC and
    the policies run in full, nothing is stored), the rest as the API server answers
    `kubectl auth can-i` for that identity."""
    who = users[user]
    if action in LEASES:
        # An update, as the agent renews (its Role grants get, create, update).
        got = who.kubectl("get", "lease", LEASES[action], "-n", NAMESPACE, "-o", "json")
        if got.returncode != 0:
            return False
        lease = json.loads(got.stdout)
        lease["spec"]["holderIdentity"] = "matrix"
        replace = ("replace", "--dry-run=server", "-f", "-")
        return who.kubectl(*replace, stdin=json.dumps(lease)).returncode == 0
    question = {
        "operate": ("operate", "experimentruns.shakeout.dev", "-n", namespace),
        "other-webhook": ("patch", "validatingwebhookconfigurations/someone-elses"),
        "team-secret": ("get", "secrets", "-n", namespace),
        "granted-secret": ("get", "secrets", "-n", namespace),
    }[action]
    return who.kubectl("auth", "can-i", *question).returncode == 0


def as_user(
    cluster: Cluster, user: str, token: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl as a sandbox user, or as the rails admin (its token, or impersonated)."""
    if user != "rails-admin":
        return cluster.kubectl(*args, user=user, stdin=stdin, check=False)
    if cluster.sandbox is None:
        sa = f"system:serviceaccount:{RAILS_ADMIN_NS}:rails-admin"
        return cluster.kubectl(*args, f"--as={sa}", stdin=stdin, check=False)
    return cluster.kubectl(*args, f"--token={token}", user="carol", stdin=stdin, check=False)


def attempt_switch(cluster: Cluster, user: str, action: str, token: str) -> bool:
    """A change of the switch's rails, or its create or delete (server-side dry runs);
    a change let through is undone at once, so that the runs of the matrix are unaffected."""
    if action == "switch-delete":
        deleted = ("delete", "chaosswitch", "default", "--dry-run=server")
        return as_user(cluster, user, token, *deleted).returncode == 0
    if action == "switch-create":
        body = {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ChaosSwitch",
            "metadata": {"name": "default"},
            "spec": {"enabled": True},
        }
        created = ("create", "--dry-run=server", "-f", "-")
        result = as_user(cluster, user, token, *created, stdin=json.dumps(body))
        # AlreadyExists comes after authorization and admission let it through
        return result.returncode == 0 or "AlreadyExists" in result.stderr
    change: dict[str, object]
    undo: dict[str, object]
    if action == "caps":
        change, undo = {"caps": {"maxTargets": 100000}}, {"caps": None}
    else:
        change, undo = {"namespaceMode": "OptIn"}, {"namespaceMode": "OptOut"}
    args = ("patch", "chaosswitch", "default", "--type=merge", "-p")
    result = as_user(cluster, user, token, *args, json.dumps({"spec": change}))
    cluster.merge_patch("chaosswitch", "default", {"spec": undo})
    return result.returncode == 0


@pytest.fixture(params=["webhooks", "no-validating-webhook", "no-webhooks"])
def setup(request: pytest.FixtureRequest, ready: Cluster) -> Iterator[Cluster]:
    for team in ("team-a", "team-b"):
        deployment(ready, "matrix", replicas=1, namespace=team)
        scale_experiment(ready, "matrix", "matrix", to=1, duration=600, namespace=team)
    if request.param == "webhooks":
        yield ready
        return
    if request.param == "no-validating-webhook":
        with ready.without("validatingwebhookconfiguration"):
            yield ready
        return
    with (
        ready.without("validatingwebhookconfiguration"),
        ready.without("mutatingwebhookconfiguration"),
    ):
        yield ready


def attempt(
    cluster: Cluster, user: str, action: str, namespace: str, target: str, *, token: str = ""
) -> bool:
    """Try the action for real as the user; True if the API server accepted it."""
    if action in {"caps", "mode", "switch-create", "switch-delete"}:
        return attempt_switch(cluster, user, action, token)
    if action == "read":
        return (
            cluster.kubectl(
                "get", "experimentrun", target, "-n", namespace, user=user, check=False
            ).returncode
            == 0
        )
    if action == "operate":
        can_i = ("auth", "can-i", "operate", "experimentruns.shakeout.dev", "-n", namespace)
        return cluster.kubectl(*can_i, user=user, check=False).returncode == 0
    # Changes whatever the run's state (a run that ended is already labelled finished and
    # has no finalizer left): a value of the label of its own, a finalizer of its own.
    if action == "hide":
        patch = {"metadata": {"labels": {"shakeout.dev/finished": f"by-{user}"}}}
        return patch_run_as(cluster, user, target, patch, namespace=namespace) is None
    if action == "own-finalizer":
        patch = {"metadata": {"finalizers": [f"shakeout.dev/{user}"]}}
        return patch_run_as(cluster, user, target, patch, namespace=namespace) is None
    if action == "run":
        # Server-side dry-run: authorization and admission run in full, nothing is stored.
        body = {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ExperimentRun",
            "metadata": {"generateName": "matrix-", "namespace": namespace},
            "spec": {"experimentRef": {"name": "matrix"}},
        }
        result = cluster.create(body, user=user, check=False, extra=["--dry-run=server"])
        return result.returncode == 0
    if action == "findings":
        patch = {"spec": {"findings": f"by {user}"}}
    elif action == "cancel":
        patch = {"spec": {"cancel": True}}
    elif action == "switch":
        result = cluster.merge_patch(
            "chaosswitch", "default", {"spec": {"enabled": True}}, user=user, check=False
        )
        return result.returncode == 0
    else:
        result = cluster.kubectl(
            "delete",
            "experimentrun",
            target,
            "-n",
            namespace,
            "--dry-run=server",
            user=user,
            check=False,
        )
        return result.returncode == 0
    # Straight to the API server, as `kubectl shakeout stop` does (kubectl patch would read
    # the run first, which only the team may).
    return patch_run_as(cluster, user, target, patch, namespace=namespace) is None


def test_access_matrix(
    setup: Cluster,
    rails_admin: str,
    identities: dict[str, TokenUser],
    request: pytest.FixtureRequest,
) -> None:
    recorded = request.node.callspec.params["setup"] != "no-webhooks"
    target, _ = create_run(setup, "matrix", user="alice")
    if recorded:
        wait_phase(setup, target, {"ATTACKS_STARTED"}, timeout=30)
    else:
        # Without the mutating webhook nobody records who created the run, and the
        # operator executes no run whose creator it does not know.
        status = wait_phase(setup, target, {"FAILED"}, timeout=30)
        assert status["reason"] == "Unauthorized", status
        assert "who started the run is not recorded" in status["message"]
    # A run in progress would (rightly) refuse more runs: cancel it first, then try runs.
    outcomes = {}
    for user, action, namespace, allowed in MATRIX:
        if user in identities:
            done = attempt_identity(identities, user, action, namespace)
            outcomes[(user, action, namespace)] = (done, allowed)
        elif action != "run":
            outcomes[(user, action, namespace)] = (
                attempt(setup, user, action, namespace, target, token=rails_admin),
                allowed,
            )
    if recorded:
        wait_phase(setup, target, {"CANCELED"}, timeout=15)
    for user, action, namespace, allowed in MATRIX:
        if action == "run":
            outcomes[(user, action, namespace)] = (
                attempt(setup, user, action, namespace, target),
                allowed,
            )
    wrong = {k: v for k, v in outcomes.items() if v[0] != v[1]}
    assert wrong == {}, "(done, expected) per (user, action, namespace)"
