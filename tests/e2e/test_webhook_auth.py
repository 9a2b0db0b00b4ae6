"""SEC-08: the operator's webhook port answers the API server and no one else.

The sandbox's kube-apiserver presents a client certificate to admission webhooks (its
AdmissionConfiguration, docs/sandbox.md); the e2e operator runs with
`--webhook-client-ca` set to that certificate's CA. An attacker who reaches the port
(any pod, in a cluster) posts a forged AdmissionReview: without a certificate, or with
one of another CA (the sandbox admin's), the TLS handshake fails and the operator does
nothing for it. The API server's own calls still go through.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.parse
import uuid
from typing import Any

import pytest
import yaml

from shakeout.admission.common import user_json
from shakeout.api.labels import STARTED_BY
from shakeout.sandbox.pki import ADMIN, WEBHOOK_CLIENT
from tests.e2e.conftest import REPO, Cluster, Operator, eventually
from tests.e2e.runs import TEAM, create_run, deployment, run_status, scale_experiment, wait_phase

PRECONDITIONS = "run-preconditions"
WEBHOOK_COUNT = f'shakeout_webhook_duration_seconds_count{{webhook="{PRECONDITIONS}"}}'


def webhook_url(cluster: Cluster) -> str:
    """The URL the API server calls for the run preconditions (kopf's managed config)."""
    config = cluster.get("validatingwebhookconfiguration", "shakeout.dev")
    for hook in config["webhooks"]:
        url = str(hook["clientConfig"].get("url", ""))
        if PRECONDITIONS in url:
            return url
    raise AssertionError(f"no {PRECONDITIONS} webhook in {config['webhooks']}")


def forged_review(namespace: str, experiment: str) -> dict[str, Any]:
    """What an attacker posts: a well-formed CREATE of a run, userInfo of their choosing
    (with the matching started-by record, so that the webhook would go on to gather)."""
    user = {"username": "mallory", "groups": ["system:authenticated"]}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "shakeout.dev", "version": "v1alpha1", "kind": "ExperimentRun"},
            "resource": {
                "group": "shakeout.dev",
                "version": "v1alpha1",
                "resource": "experimentruns",
            },
            "requestKind": {
                "group": "shakeout.dev",
                "version": "v1alpha1",
                "kind": "ExperimentRun",
            },
            "namespace": namespace,
            "name": "forged",
            "operation": "CREATE",
            "userInfo": user,
            "object": {
                "apiVersion": "shakeout.dev/v1alpha1",
                "kind": "ExperimentRun",
                "metadata": {
                    "name": "forged",
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "annotations": {STARTED_BY: user_json(user)},
                },
                "spec": {"experimentRef": {"name": experiment}},
            },
            "oldObject": None,
            "dryRun": False,
        },
    }


class RefusedError(Exception):
    """No HTTP answer: the connection failed `where` (handshake, or the first read)."""

    def __init__(self, where: str, error: object) -> None:
        super().__init__(f"{where}: {error!r}")
        self.where = where


def post(
    url: str,
    review: dict[str, Any],
    *,
    cert: tuple[str, str] | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST the review over TLS, as curl would: the server's certificate is not checked
    (an attacker need not trust it); `cert` is the client certificate offered, if any.
    RefusedError when no HTTP response comes back."""
    parsed = urllib.parse.urlsplit(url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if cert is not None:
        ctx.load_cert_chain(*cert)
    body = json.dumps(review).encode()
    request = (
        f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    assert parsed.hostname is not None
    assert parsed.port is not None
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as raw:
        try:
            tls = ctx.wrap_socket(raw)
        except (ssl.SSLError, ConnectionError) as err:
            raise RefusedError("handshake", err) from None
        with tls:
            # TLS 1.3: the client's side of the handshake ends before the server has checked
            # its certificate; the server's refusal (an alert, a close) comes with the read.
            chunks = []
            try:
                tls.sendall(request)
                while chunk := tls.recv(65536):
                    chunks.append(chunk)
            except (ssl.SSLError, ConnectionError) as err:
                raise RefusedError("read", err) from None
    if not chunks:
        raise RefusedError("read", "closed without an HTTP response")
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload) if payload.startswith(b"{") else {}


def count(operator: Operator) -> float:
    return operator.metrics().get(WEBHOOK_COUNT, 0.0)


@pytest.fixture
def target(ready: Cluster) -> str:
    """An Experiment in team-a with pods to list: what the forged review asks about."""
    deployment(ready, "authweb", replicas=2)
    scale_experiment(ready, "authweb", "authweb", to=1, duration=1)
    return "authweb"


def test_a_forged_review_without_the_api_servers_certificate_is_refused_in_the_handshake(
    ready: Cluster, live_operator: Operator, target: str
) -> None:
    box = ready.sandbox
    if box is None:
        pytest.skip("needs the sandbox's PKI (the API server's webhook client certificate)")
    url = webhook_url(ready)
    review = forged_review(TEAM, target)
    before = count(live_operator)
    admin = (str(box.pki.crt(ADMIN.name)), str(box.pki.key(ADMIN.name)))
    tls12 = ssl.TLSVersion.TLSv1_2
    # TLS 1.2 shows the refusal in the handshake itself; TLS 1.3 on the first read.
    attempts: list[tuple[dict[str, Any], set[str]]] = [
        ({}, {"handshake", "read"}),  # no certificate
        ({"max_version": tls12}, {"handshake"}),
        ({"cert": admin}, {"handshake", "read"}),  # one of another CA: the cluster admin's
        ({"cert": admin, "max_version": tls12}, {"handshake"}),
    ]
    for attempt, where in attempts:
        with pytest.raises(RefusedError) as refused:
            post(url, review, **attempt)
        assert refused.value.where in where, (attempt, refused.value)
    # The operator did nothing for them: no review reached its run-preconditions handler.
    assert count(live_operator) == before

    # The same review with the API server's own certificate is answered: the refusals
    # above come from the certificate alone, not from a malformed request.
    apiserver = (str(box.pki.crt(WEBHOOK_CLIENT)), str(box.pki.key(WEBHOOK_CLIENT)))
    status, answer = post(url, review, cert=apiserver)
    assert status == 200
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert "allowed" in answer["response"]
    eventually(lambda: count(live_operator) == before + 1, what="the review counted")


def test_the_api_servers_own_calls_still_admit_and_refuse(
    ready: Cluster, live_operator: Operator, target: str
) -> None:
    # The session's operator requires the API server's client certificate.
    assert live_operator.client_ca()
    before = count(live_operator)
    # Admitted: the validating webhook let it in, the mutating one recorded alice.
    name, _ = create_run(ready, target, user="alice")
    assert count(live_operator) == before + 1
    status = wait_phase(ready, name, {"COMPLETED", "FAILED", "CANCELED"})
    assert status["phase"] == "COMPLETED", status
    assert run_status(ready, name)["startedBy"]["username"] == "alice"
    # RefusedError by the webhook, with its message: a blast radius of no pods.
    scale_experiment(ready, "authnone", "no-such-app", to=1, duration=1)
    _, refused = create_run(ready, "authnone", user="alice", check=False)
    assert refused.returncode != 0
    assert "denied the request" in refused.stderr
    assert "resolves to no pods" in refused.stderr


def test_the_client_auth_overlay_mounts_the_ca_and_passes_a_server_dry_run(
    crds: Cluster,
) -> None:
    overlay = REPO / "deploy" / "overlays" / "webhook-client-auth"
    rendered = list(yaml.safe_load_all(crds.kubectl("kustomize", str(overlay)).stdout))
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--webhook-client-ca=/run/shakeout/webhook-client-ca/ca.crt" in args
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-client-ca")
    assert volume["configMap"]["name"] == "shakeout-webhook-client-ca"
    assert "optional" not in volume["configMap"]  # no CA: the pod does not start
    crds.kubectl("apply", "-f", str(REPO / "deploy" / "base" / "namespace.yaml"))
    out = crds.kubectl("apply", "-k", str(overlay), "--dry-run=server", "-o", "name").stdout
    assert "deployment.apps/shakeout-operator" in out.split()
    assert "networkpolicy.networking.k8s.io/shakeout-operator" in out.split()
