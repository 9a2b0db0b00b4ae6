"""HttpGet state checks played by an attacker (SEC-03): alice, a member of team-a, points
checks at cloud metadata, at another team's Service, at IP literals and at a redirecting
server. The API server refuses what the spec alone shows; the operator refuses the rest when
the check runs, and the run fails with the reason in lastMessage, nothing fetched.

There are no real containers on the sandbox's kwok nodes, so the "team's own server" is an
HTTP server in this test process on 127.0.0.1: this test's operator (and only it) is started
with `--allow-check-host 127.0.0.1:PORT` for that one port, as a cluster admin would allow a
host. A second server on another port plays "outside": it must never be asked anything.
"""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, Operator, eventually
from tests.e2e.runs import TEAM, create_run, deployment, wait_phase

TOKEN = "Bearer e2e-probe-token"


class Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[tuple[int, str, str]]  # (server port, path, Authorization)
    redirect_to: str = ""

    def do_GET(self) -> None:
        port = int(self.server.server_address[1])  # type: ignore[index]
        self.hits.append((port, self.path, self.headers.get("Authorization", "")))
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
            return
        ok = not self.path.startswith("/auth") or self.headers.get("Authorization") == TOKEN
        body = b"healthy" if ok else b"who are you"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Servers:
    def __init__(self) -> None:
        self.hits: list[tuple[int, str, str]] = []
        handler: type[Recorder] = type("Handler", (Recorder,), {"hits": self.hits})
        self.team = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.outside = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        handler.redirect_to = f"http://127.0.0.1:{self.outside_port}/stolen"
        for server in (self.team, self.outside):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def team_port(self) -> int:
        return int(self.team.server_address[1])

    @property
    def outside_port(self) -> int:
        return int(self.outside.server_address[1])

    def close(self) -> None:
        for server in (self.team, self.outside):
            server.shutdown()
            server.server_close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


@pytest.fixture
def checking_operator(
    ready: Cluster, live_operator: Operator, servers: Servers, tmp_path: Path
) -> Iterator[Cluster]:
    """The session's operator replaced by one that allows the team server's port only."""
    live_operator.stop()
    op = Operator(
        ready,
        tmp_path / "operator.log",
        extra=(f"--allow-check-host=127.0.0.1:{servers.team_port}",),
    )
    op.start()
    try:
        yield ready
    finally:
        op.stop()
        print(op.output()[-3000:])
        live_operator.start()


def experiment(name: str, checks: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {
            "blastRadius": {"selector": {"matchLabels": {"app": name}}},
            "attacks": [{"name": "kill", "type": "PodDelete", "durationSeconds": 1}],
            "stateChecks": [
                {"name": f"c{i}", "type": "HttpGet", "intervalSeconds": 1, "httpGet": check}
                for i, check in enumerate(checks)
            ],
            **spec,
        },
    }


@pytest.mark.parametrize(
    ("http_get", "message"),
    [
        (
            {"url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"},
            "httpGet.url: link-local addresses (cloud metadata) are refused",
        ),
        ({"url": "http://[fe80::a9fe:a9fe]/"}, "httpGet.url: link-local addresses"),
        ({"url": "http://admin:pw@web.team-a.svc/"}, "httpGet.url: credentials in the URL"),
        (
            {"url": "http://web.team-a.svc/", "service": {"name": "web", "port": 80}},
            "httpGet: give exactly one of service or url",
        ),
        (
            {
                "service": {"name": "web", "port": 80},
                "headers": [{"name": "Authorization", "value": "Bearer inline"}],
            },
            'unknown field "spec.stateChecks[0].httpGet.headers[0].value"',
        ),
        (
            {"service": {"name": "web", "port": 80}, "headers": [{"name": "Authorization"}]},
            "spec.stateChecks[0].httpGet.headers[0].valueFrom: Required value",
        ),
    ],
)
def test_the_api_server_refuses_what_the_spec_shows(
    ready: Cluster, http_get: dict[str, Any], message: str
) -> None:
    result = ready.apply(experiment("probe", [http_get]), user="alice", check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr


def test_other_teams_ip_literals_and_redirects_fetch_nothing(
    checking_operator: Cluster, servers: Servers
) -> None:
    cluster = checking_operator
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "billing", "namespace": "team-b"},
            "spec": {"selector": {"app": "billing"}, "ports": [{"port": 8080}]},
        }
    )
    deployment(cluster, "probe", replicas=1)
    outside = f"http://127.0.0.1:{servers.outside_port}"
    checks = [
        {"url": "http://billing.team-b.svc:8080/admin/export", "bodyContains": "iban"},
        {"url": "http://billing.team-b.svc.cluster.local:8080/admin/export"},
        {"url": f"{outside}/direct?token=abc"},
        {"url": "http://10.96.0.1:443/"},
        {"url": f"http://127.0.0.1:{servers.team_port}/redirect"},
    ]
    cluster.apply(experiment("probe", checks, preparationTimeoutSeconds=4), user="alice")
    name, _ = create_run(cluster, "probe", user="alice")
    status = wait_phase(cluster, name, {"COMPLETED", "FAILED", "CANCELED"}, timeout=60)
    assert (status["phase"], status["reason"]) == ("FAILED", "PreparationTimedOut"), status
    last = {c["name"]: c["lastMessage"] for c in status["stateChecks"]}
    assert last["c0"].startswith(
        "refused: httpGet.url: billing.team-b.svc is a Service of namespace team-b"
    )
    assert last["c1"].startswith("refused: httpGet.url: billing.team-b.svc is a Service")
    assert last["c2"].startswith(
        f"refused: httpGet.url: the IP address 127.0.0.1 (port {servers.outside_port}) "
        "is not allowed"
    )
    assert last["c3"].startswith("refused: httpGet.url: the IP address 10.96.0.1")
    assert last["c4"] == (
        f"GET http://127.0.0.1:{servers.team_port}/redirect: status 302 (a redirect, not followed)"
    )
    assert all(c["successes"] == 0 for c in status["stateChecks"])
    # No query string in what the operator writes (status.experiment is the spec's copy).
    assert "token=abc" not in str(status["stateChecks"]) + status.get("message", "")
    # The outside server was never asked: not directly, not through the redirect.
    assert [h for h in servers.hits if h[0] == servers.outside_port] == []
    assert all(h[1] == "/redirect" for h in servers.hits)


def test_a_check_of_the_teams_own_server_works(
    checking_operator: Cluster, servers: Servers
) -> None:
    cluster = checking_operator
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "probe-token", "namespace": TEAM},
            "data": {"authorization": base64.b64encode(TOKEN.encode()).decode()},
        },
        user="alice",
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "own", "namespace": TEAM},
            "spec": {"selector": {"app": "own"}, "ports": [{"port": 80}]},
        }
    )
    deployment(cluster, "own", replicas=1)
    header = {
        "name": "Authorization",
        "valueFrom": {"secretKeyRef": {"name": "probe-token", "key": "authorization"}},
    }
    cluster.apply(
        experiment(
            "own",
            [
                {
                    "url": f"http://127.0.0.1:{servers.team_port}/auth?key=hidden",
                    "headers": [header],
                    "bodyContains": "healthy",
                }
            ],
        ),
        user="alice",
    )
    name, _ = create_run(cluster, "own", user="alice")
    status = wait_phase(cluster, name, {"COMPLETED", "FAILED", "CANCELED"}, timeout=60)
    assert status["phase"] == "COMPLETED", status
    tally = status["stateChecks"][0]
    assert tally["successes"] >= 1
    assert tally["failures"] == 0
    assert tally["lastMessage"] == f"GET http://127.0.0.1:{servers.team_port}/auth: 200"
    assert servers.hits
    assert {h[2] for h in servers.hits} == {TOKEN}  # the header, from the Secret
    assert "e2e-probe-token" not in str(status)
    assert "key=hidden" not in str(status["stateChecks"])
    # The team's own Service by name: resolved through the API and tried (the sandbox does
    # not route ClusterIPs), not refused.
    cluster.apply(
        experiment(
            "own",
            [{"service": {"name": "own", "port": 80, "path": "/h?x=1"}, "timeoutSeconds": 1}],
            preparationTimeoutSeconds=3,
        ),
        user="alice",
    )

    def admitted() -> str | None:
        run, result = create_run(cluster, "own", user="alice", check=False)
        return run if result.returncode == 0 else None

    name = eventually(admitted, what="the second run admitted (the lock released)")
    status = wait_phase(cluster, name, {"COMPLETED", "FAILED", "CANCELED"}, timeout=60)
    message = status["stateChecks"][0]["lastMessage"]
    assert message.startswith("GET service own:80/h"), message
