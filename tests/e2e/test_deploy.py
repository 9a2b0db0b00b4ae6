"""deploy/ against the real API server, and the YAML examples of docs/."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.e2e.conftest import REPO, Cluster


def test_crds_apply_on_their_own(crds: Cluster) -> None:
    out = crds.kubectl("apply", "-k", str(REPO / "deploy" / "crds")).stdout
    assert out.count("customresourcedefinition.apiextensions.k8s.io/") == 4


def test_the_install_is_accepted_by_the_api_server(crds: Cluster) -> None:
    """Server-side dry-run: every object passes validation and admission; nothing is
    created (the operator image cannot run on kwok's fake nodes). Only the namespace is
    created for real: a dry-run cannot place objects in a namespace that does not exist."""
    crds.kubectl("apply", "-f", str(REPO / "deploy" / "base" / "namespace.yaml"))
    out = crds.kubectl(
        "apply", "-k", str(REPO / "deploy" / "default"), "--dry-run=server", "-o", "name"
    ).stdout.split()
    for expected in (
        "namespace/shakeout-system",
        "serviceaccount/shakeout-operator",
        "clusterrole.rbac.authorization.k8s.io/shakeout-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/shakeout-operator",
        "deployment.apps/shakeout-operator",
        "service/shakeout-webhook",
        "chaosswitch.shakeout.dev/default",
        "clusterrole.rbac.authorization.k8s.io/shakeout-runner",
        # The operator's own webhook configurations (empty: kopf fills them), the policies
        # that keep the agents and the operator to their own, and the records' Role.
        "validatingwebhookconfiguration.admissionregistration.k8s.io/shakeout.dev",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/shakeout.dev",
        "validatingadmissionpolicy.admissionregistration.k8s.io/shakeout-agent-identity",
        "validatingadmissionpolicy.admissionregistration.k8s.io/shakeout-operator-webhooks",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/shakeout-agent-identity",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/shakeout-operator-webhooks",
        "role.rbac.authorization.k8s.io/shakeout-operator-records",
        "rolebinding.rbac.authorization.k8s.io/shakeout-operator-records",
        "clusterrole.rbac.authorization.k8s.io/shakeout-check-secrets",
    ):
        assert expected in out, out


def test_the_cert_manager_overlay_mounts_the_issued_secret(cluster: Cluster) -> None:
    rendered = list(
        yaml.safe_load_all(
            cluster.kubectl("kustomize", str(REPO / "deploy" / "overlays" / "cert-manager")).stdout
        )
    )
    kinds = {d["kind"] for d in rendered}
    assert {"Certificate", "Issuer", "Deployment"} <= kinds
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": "webhook-certs", "secret": {"secretName": "shakeout-webhook-tls"}}


def doc_examples() -> list[tuple[str, dict[str, object]]]:
    found = []
    for path in sorted((REPO / "docs").glob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S):
            for doc in yaml.safe_load_all(block):
                if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(
                    "shakeout.dev/"
                ):
                    found.append((path.name, doc))
    return found


@pytest.mark.parametrize("example", doc_examples(), ids=lambda e: f"{e[0]}-{e[1]['kind']}")
def test_doc_examples_are_valid_objects(
    crds: Cluster, example: tuple[str, dict[str, object]]
) -> None:
    """Each shakeout object in docs/ passes the API server's schema and CEL rules.

    Runs are validated with `--validate=strict` against the schema only: admission would
    (rightly) refuse them, for their experiments do not exist here.
    """
    _, doc = example
    doc = dict(doc)
    meta = dict(doc.get("metadata") or {})  # type: ignore[arg-type]
    meta.setdefault("namespace", "team-a")
    if doc["kind"] == "ChaosSwitch":
        meta.pop("namespace", None)
    if "generateName" in meta:
        meta["name"] = str(meta.pop("generateName")) + "doc"
    doc["metadata"] = meta
    text = yaml.safe_dump(doc)
    if doc["kind"] == "ExperimentRun":
        result = crds.kubectl(
            "create", "--dry-run=client", "--validate=strict", "-o", "name", "-f", "-", stdin=text
        )
    else:
        result = crds.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", stdin=text)
    assert result.stdout.strip()
