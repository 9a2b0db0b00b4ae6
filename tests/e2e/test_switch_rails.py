"""The ChaosSwitch's rails against the users (SEC-01): carol (in no team), alice (a team
member) and a ServiceAccount may flip spec.enabled (Stop All / Continue) and nothing else;
lifting the caps, changing namespaceMode or another rail, labelling the switch, creating or
deleting it, and forging who changed it are all refused, by the API server alone
(deploy/rbac/switch-rails-policy.yaml): each test runs with the operator's webhooks in place
and with its Validating- and MutatingWebhookConfiguration deleted. An admin bound to
shakeout-rails-admin may change the caps. Every change is an Event on the switch and an
entry of status.history (who, when, what); unstamped changes are by "unknown (no webhook)".
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, eventually

SA_NAMESPACE = "shakeout-switch-e2e"
UNKNOWN = "unknown (no webhook)"
ADMIN_REFUSAL = "only cluster admins (the ClusterRole shakeout-rails-admin"
STAMP_REFUSAL = "only the operator's webhook writes them"


@dataclass(frozen=True)
class Who:
    """An identity to act as: a sandbox user, or a ServiceAccount (by its token)."""

    name: str
    user: str | None = None
    token: str | None = None

    def kubectl(
        self, cluster: Cluster, *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        if self.token is None:
            return cluster.kubectl(*args, user=self.user, stdin=stdin, check=False)
        if cluster.sandbox is None:  # an external cluster: impersonate the ServiceAccount
            return cluster.kubectl(*args, f"--as={self.name}", stdin=stdin, check=False)
        # carol's kubeconfig for the server and CA, the ServiceAccount's token instead of hers
        return cluster.kubectl(
            *args, f"--token={self.token}", user="carol", stdin=stdin, check=False
        )

    def create_switch(self, cluster: Cluster) -> subprocess.CompletedProcess[str]:
        """Create the switch with no rails (server-side dry run: admission in full)."""
        body = {
            "apiVersion": "shakeout.dev/v1alpha1",
            "kind": "ChaosSwitch",
            "metadata": {"name": "default"},
            "spec": {"enabled": True},
        }
        return self.kubectl(
            cluster, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(body)
        )

    def patch(self, cluster: Cluster, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.kubectl(
            cluster, "patch", "chaosswitch", "default", "--type=merge", "-p", json.dumps(body)
        )


def _service_account(cluster: Cluster, name: str) -> Who:
    cluster.kubectl("create", "serviceaccount", name, "-n", SA_NAMESPACE, check=False)
    token = cluster.kubectl("create", "token", name, "-n", SA_NAMESPACE, "--duration=1h")
    return Who(f"system:serviceaccount:{SA_NAMESPACE}:{name}", token=token.stdout.strip())


@pytest.fixture(scope="module")
def accounts(crds: Cluster) -> Iterator[dict[str, Who]]:
    """The intruding ServiceAccount, and one bound to shakeout-rails-admin."""
    crds.kubectl("create", "namespace", SA_NAMESPACE, check=False)
    intruder = _service_account(crds, "intruder")
    admin = _service_account(crds, "rails-admin")
    crds.kubectl(
        "create",
        "clusterrolebinding",
        "e2e-rails-admin",
        "--clusterrole=shakeout-rails-admin",
        f"--serviceaccount={SA_NAMESPACE}:rails-admin",
        check=False,
    )
    yield {"intruder": intruder, "rails-admin": admin}
    crds.kubectl("delete", "clusterrolebinding", "e2e-rails-admin", check=False)
    crds.kubectl("delete", "namespace", SA_NAMESPACE, "--wait=false", check=False)


@pytest.fixture(params=["webhooks", "no-webhooks"])
def setup(request: pytest.FixtureRequest, ready: Cluster) -> Iterator[tuple[Cluster, bool]]:
    """The switch enabled with rails set (caps 2 pods / 50 %, OptIn), webhooks or not."""
    rails = {"spec": {"enabled": True, "namespaceMode": "OptIn", "caps": {"maxTargets": 2}}}
    ready.merge_patch("chaosswitch", "default", rails)
    try:
        if request.param == "webhooks":
            yield ready, True
        else:
            with (
                ready.without("validatingwebhookconfiguration"),
                ready.without("mutatingwebhookconfiguration"),
            ):
                yield ready, False
    finally:
        ready.merge_patch(
            "chaosswitch", "default", {"spec": {"namespaceMode": "OptOut", "caps": None}}
        )


def switch(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.get("chaosswitch", "default"))


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode != 0, f"accepted: {result.stdout}"
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def recorded(cluster: Cluster, generation: int, by: str) -> dict[str, Any]:
    """The history entry and the Event of the change that made this generation."""

    def entry() -> dict[str, Any] | None:
        for item in switch(cluster).get("status", {}).get("history", []):
            if item.get("generation") == generation:
                return dict(item)
        return None

    found = eventually(entry, timeout=20, what=f"history entry of generation {generation}")
    assert found["by"] == by, found
    assert found["time"], found

    def event() -> str | None:
        listed = cluster.get(
            "events",
            "-n",
            "default",
            "--field-selector=involvedObject.kind=ChaosSwitch,involvedObject.name=default",
        )
        for item in listed.get("items", []):
            if item.get("message", "").endswith(f"by {by} (generation {generation})"):
                return str(item["message"])
        return None

    found["event"] = eventually(event, timeout=20, what=f"Event of generation {generation}")
    return dict(found)


def identities(accounts: dict[str, Who]) -> list[Who]:
    return [Who("carol", user="carol"), Who("alice", user="alice"), accounts["intruder"]]


def test_nobody_but_admins_changes_the_rails(
    setup: tuple[Cluster, bool], accounts: dict[str, Who]
) -> None:
    cluster, webhooks = setup
    before = switch(cluster)
    for who in identities(accounts):
        attempts: dict[str, tuple[dict[str, Any], str]] = {
            "lift the caps": ({"spec": {"caps": None}}, "spec.caps"),
            "raise the caps": ({"spec": {"caps": {"maxTargets": 1000}}}, "spec.caps"),
            "another rail": ({"spec": {"caps": {"maxTargets": 2, "maxPercent": 100}}}, "caps"),
            "OptIn off": ({"spec": {"namespaceMode": "OptOut"}}, "spec.namespaceMode"),
            "allow NodeCordon": (
                {"spec": {"clusterScopedAttacks": {"namespaces": ["team-a"]}}},
                "spec.clusterScopedAttacks",
            ),
            "allow the control plane": (
                {"spec": {"clusterScopedAttacks": {"controlPlaneNodes": True}}},
                "spec.clusterScopedAttacks",
            ),
            "more nodes": ({"spec": {"caps": {"maxNodes": 100}}}, "spec.caps"),
            "longer runs": ({"spec": {"maxRunSeconds": 259200}}, "spec.maxRunSeconds"),
            "with a flip": (
                {"spec": {"enabled": False, "namespaceMode": "OptOut", "caps": None}},
                "spec.namespaceMode",
            ),
            "label it": ({"metadata": {"labels": {"x": "y"}}}, "metadata.labels"),
            "finalizer": ({"metadata": {"finalizers": ["x.dev/hold"]}}, "metadata.finalizers"),
        }
        for what, (body, field) in attempts.items():
            message = refused(who.patch(cluster, body), ADMIN_REFUSAL, field)
            assert what != "with a flip" or "spec.caps" in message, message
            assert "may flip spec.enabled" in message, (who.name, what, message)
        for forged in (
            {"metadata": {"annotations": {"shakeout.dev/changed-by": "mallory"}}},
            {
                "metadata": {"annotations": {"shakeout.dev/changed-by": "mallory"}},
                "spec": {"enabled": False},
            },
            {"metadata": {"annotations": {"shakeout.dev/changed-generation": "999"}}},
        ):
            refused(who.patch(cluster, forged), STAMP_REFUSAL)
        refused(who.kubectl(cluster, "delete", "chaosswitch", "default", "--dry-run=server"))
        refused(who.create_switch(cluster))
    after = switch(cluster)
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"].get("annotations", {}).get("shakeout.dev/changed-by") == (
        before["metadata"].get("annotations", {}).get("shakeout.dev/changed-by")
    ), webhooks


def test_anyone_flips_enabled_and_it_is_recorded(
    setup: tuple[Cluster, bool], accounts: dict[str, Who]
) -> None:
    cluster, webhooks = setup
    for who in identities(accounts):
        expected = who.name if webhooks else UNKNOWN
        for enabled in (False, True):
            result = who.patch(cluster, {"spec": {"enabled": enabled}})
            assert result.returncode == 0, (who.name, result.stderr)
            now = switch(cluster)
            assert now["spec"]["enabled"] is enabled
            assert now["spec"]["caps"] == {"maxTargets": 2}
            assert now["spec"]["namespaceMode"] == "OptIn"
            entry = recorded(cluster, now["metadata"]["generation"], expected)
            assert (entry["enabled"], entry["enabledChanged"], entry["rails"]) == (
                enabled,
                True,
                [],
            )
            assert ("Stop All" if not enabled else "Continue") in entry["event"]
            last = eventually(
                lambda: switch(cluster)["status"].get("lastChange"), what="lastChange"
            )
            assert last["enabled"] is enabled
    history = switch(cluster)["status"]["history"]
    assert len(history) <= 20


def test_rails_admin_changes_the_caps(
    setup: tuple[Cluster, bool], accounts: dict[str, Who]
) -> None:
    cluster, webhooks = setup
    admin = accounts["rails-admin"]
    result = admin.patch(cluster, {"spec": {"caps": {"maxTargets": 5, "maxPercent": 40}}})
    assert result.returncode == 0, result.stderr
    now = switch(cluster)
    entry = recorded(cluster, now["metadata"]["generation"], admin.name if webhooks else UNKNOWN)
    assert (entry["rails"], entry["enabledChanged"]) == (["caps"], False), entry
    assert entry["spec"]["caps"] == {"maxTargets": 5, "maxPercent": 40}
    assert "rails changed: caps" in entry["event"]
    result = admin.patch(cluster, {"spec": {"namespaceMode": "OptOut", "caps": None}})
    assert result.returncode == 0, result.stderr
    now = switch(cluster)
    entry = recorded(cluster, now["metadata"]["generation"], admin.name if webhooks else UNKNOWN)
    assert entry["rails"] == ["caps", "namespaceMode"], entry
    # Creating and deleting the switch are the admin's too (server-side dry runs).
    deleted = admin.kubectl(cluster, "delete", "chaosswitch", "default", "--dry-run=server")
    assert deleted.returncode == 0, deleted.stderr
    created = admin.create_switch(cluster)
    assert "AlreadyExists" in created.stderr or "already exists" in created.stderr, created
    # For real: a foreground deletion (the garbage collector takes its finalizer away,
    # which the policy lets it do) and a new switch, recorded as the admin's creation.
    deleted = admin.kubectl(
        cluster, "delete", "chaosswitch", "default", "--cascade=foreground", "--timeout=30s"
    )
    assert deleted.returncode == 0, deleted.stderr
    eventually(
        lambda: cluster.kubectl("get", "chaosswitch", "default", check=False).returncode != 0,
        what="the switch gone",
    )
    body = {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ChaosSwitch",
        "metadata": {"name": "default"},
        "spec": {"enabled": True, "caps": {"maxTargets": 3}},
    }
    created = admin.kubectl(cluster, "create", "-f", "-", stdin=json.dumps(body))
    assert created.returncode == 0, created.stderr
    entry = recorded(cluster, 1, admin.name if webhooks else UNKNOWN)
    assert (entry["rails"], entry["enabled"]) == (["caps"], True), entry


def test_the_policy_holds_when_rbac_grants_too_much(
    setup: tuple[Cluster, bool], accounts: dict[str, Who]
) -> None:
    """A ServiceAccount granted create, delete and patch on chaosswitches by a careless
    RBAC rule (not set-rails) is still refused by the policy alone."""
    cluster, _ = setup
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "e2e-too-much"},
            "rules": [
                {
                    "apiGroups": ["shakeout.dev"],
                    "resources": ["chaosswitches"],
                    "verbs": ["get", "create", "update", "patch", "delete"],
                }
            ],
        }
    )
    who = accounts["intruder"]
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        "e2e-too-much",
        "--clusterrole=e2e-too-much",
        f"--serviceaccount={SA_NAMESPACE}:intruder",
        check=False,
    )
    try:
        refused(
            who.kubectl(cluster, "delete", "chaosswitch", "default", "--dry-run=server"),
            ADMIN_REFUSAL,
            "delete the ChaosSwitch",
        )
        refused(who.create_switch(cluster), ADMIN_REFUSAL, "create the ChaosSwitch")
        refused(who.patch(cluster, {"spec": {"caps": None}}), ADMIN_REFUSAL, "spec.caps")
    finally:
        cluster.kubectl("delete", "clusterrolebinding", "e2e-too-much", check=False)
        cluster.kubectl("delete", "clusterrole", "e2e-too-much", check=False)


def test_the_policy_type_checks_clean(crds: Cluster) -> None:
    """The API server type-checks the policy's CEL against the ChaosSwitch schema: no
    warnings (a warning would mean an expression that fails at admission time)."""

    def checked() -> dict[str, Any] | None:
        policy = crds.get("validatingadmissionpolicy", "shakeout-switch-rails")
        status = policy.get("status", {})
        if status.get("observedGeneration") != policy["metadata"]["generation"]:
            return None
        return dict(status)

    status = eventually(checked, what="the policy's type checking")
    assert status.get("typeChecking", {}).get("expressionWarnings", []) == [], status
