"""Prometheus and Alert state checks: which server they may ask, and how an answer is judged.

The server is a local aiohttp app on 127.0.0.1 that answers as Prometheus' HTTP API does
(the shapes of /api/v1/query and /api/v1/alerts); the ChaosSwitch in the fake API names it
as the cluster's Prometheus, as an admin would. The e2e test (tests/e2e/test_prometheus_checks.py)
runs the same checks against a real Prometheus.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from shakeout.api.checks import AlertCheck, PrometheusCheck, PrometheusService, StateCheck
from shakeout.api.run import CheckOutcome
from shakeout.api.switch import ChaosSwitchSpec, MetricChecks
from shakeout.gather import http_check
from shakeout.gather.checks import run_check
from shakeout.gather.http_check import TargetRefusedError
from shakeout.gather.prometheus import NOT_CONFIGURED, server_target
from shakeout.kube import client as kube_client
from shakeout.kube.resources import NODES, SERVICES
from tests.unit.fake_kube import FakeApi

QUERY = 'sum(rate(http_requests_total{code=~"5.."}[30s]))'


class FakePrometheus:
    def __init__(self) -> None:
        self.port = 0
        self.query_answer: tuple[int, dict[str, Any]] = (200, vector(0.0))
        self.alerts: list[dict[str, Any]] = []
        self.asked: list[dict[str, str]] = []
        self.paths: list[str] = []


def vector(*values: float | str, labels: list[dict[str, str]] | None = None) -> dict[str, Any]:
    result = [
        {"metric": (labels or [{}] * len(values))[i], "value": [1700000000.0, str(v)]}
        for i, v in enumerate(values)
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
async def prometheus() -> AsyncIterator[FakePrometheus]:
    state = FakePrometheus()

    async def handle(request: web.Request) -> web.StreamResponse:
        state.paths.append(request.path)
        if request.path.endswith("/api/v1/query"):
            state.asked.append(dict(request.query))
            status, body = state.query_answer
            return web.json_response(body, status=status)
        if request.path.endswith("/api/v1/alerts"):
            return web.json_response({"status": "success", "data": {"alerts": state.alerts}})
        return web.Response(status=404, text="404 page not found")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = int(runner.addresses[0][1])
    yield state
    await runner.cleanup()


def switch_with(api: FakeApi, metric_checks: dict[str, Any] | None) -> None:
    api.add_switch(True)
    obj = api.switch()
    assert obj is not None
    if metric_checks is not None:
        obj["spec"]["metricChecks"] = metric_checks


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr(kube_client, "_api", api)
    monkeypatch.setattr(http_check, "_cluster_cache", None)
    api.put(
        SERVICES,
        "default",
        {
            "metadata": {"name": "kubernetes"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 443}]},
        },
    )
    api.put(NODES, None, {"metadata": {"name": "n"}, "status": {"addresses": []}})
    api.put(
        SERVICES,
        "monitoring",
        {
            "metadata": {"name": "prometheus"},
            "spec": {
                "clusterIP": "10.96.5.5",
                "clusterIPs": ["10.96.5.5"],
                "ports": [{"port": 9090}],
            },
        },
    )
    return api


@pytest.fixture
def allowed(fake: FakeApi, prometheus: FakePrometheus) -> FakePrometheus:
    """The fake server as the cluster's Prometheus, as an admin sets it in the switch."""
    switch_with(fake, {"prometheusUrl": f"http://127.0.0.1:{prometheus.port}"})
    return prometheus


def promql(comparison: str = "LessOrEqual", threshold: float = 0.05, **extra: Any) -> StateCheck:
    return StateCheck.model_validate(
        {
            "name": "errors",
            "type": "Prometheus",
            "prometheus": {
                "query": QUERY,
                "comparison": comparison,
                "threshold": threshold,
                **extra,
            },
        }
    )


def alert(**labels: str) -> StateCheck:
    return StateCheck.model_validate(
        {"name": "alerts", "type": "Alert", "alert": {"matchLabels": labels}}
    )


# -- the models -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check",
    [
        {"name": "c", "type": "Prometheus"},
        {"name": "c", "type": "Alert"},
        {"name": "c", "type": "Prometheus", "alert": {"matchLabels": {"a": "b"}}},
        {"name": "c", "type": "Alert", "alert": {"matchLabels": {}}},
        {"name": "c", "type": "Alert", "alert": {"matchLabels": {"bad-label": "x"}}},
        {
            "name": "c",
            "type": "Prometheus",
            "prometheus": {"query": "", "comparison": "Equal", "threshold": 1},
        },
        {
            "name": "c",
            "type": "Prometheus",
            "prometheus": {"query": "up", "comparison": "Is", "threshold": 1},
        },
        {
            "name": "c",
            "type": "Prometheus",
            "prometheus": {"query": "up", "comparison": "Equal", "threshold": "inf"},
        },
        {
            "name": "c",
            "type": "Prometheus",
            "prometheus": {"query": "up", "comparison": "Equal", "threshold": 1e300},
        },
    ],
)
def test_the_model_refuses(check: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        StateCheck.model_validate(check)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@prom:9090",
        "http://169.254.169.254/latest",
        "http://prom:9090/?query=x",
        "ftp://prom",
        "http://prom:9090#x",
    ],
)
def test_the_switch_refuses_prometheus_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        MetricChecks.model_validate({"prometheusUrl": url})


def test_the_switch_takes_a_url_with_a_prefix_and_namespaces() -> None:
    spec = ChaosSwitchSpec.model_validate(
        {
            "enabled": True,
            "metricChecks": {
                "prometheusUrl": "http://prometheus.monitoring.svc:9090/prom",
                "serviceNamespaces": ["monitoring"],
            },
        }
    )
    assert spec.metric_checks is not None
    assert spec.metric_checks.service_namespaces == ["monitoring"]


# -- which server ---------------------------------------------------------------------------


async def test_without_an_admin_setting_the_check_cannot_be_evaluated(fake: FakeApi) -> None:
    switch_with(fake, None)
    probe = await run_check(promql(), "team-a", "app=web")
    assert probe.outcome == CheckOutcome.ERROR
    assert NOT_CONFIGURED in probe.message
    assert QUERY in probe.message


async def test_a_service_outside_the_allowed_namespaces_is_refused(fake: FakeApi) -> None:
    switch_with(fake, {"serviceNamespaces": ["other"]})
    service = PrometheusService(namespace="monitoring", name="prometheus")
    with pytest.raises(TargetRefusedError, match="not one whose Services"):
        await server_target(service, MetricChecks(service_namespaces=["other"]), "/api/v1/alerts")
    probe = await run_check(
        promql(service={"namespace": "monitoring", "name": "prometheus"}), "team-a", ""
    )
    assert probe.outcome == CheckOutcome.ERROR
    assert "refused" in probe.message


async def test_an_allowed_service_resolves_to_its_cluster_ip(fake: FakeApi) -> None:
    service = PrometheusService(namespace="monitoring", name="prometheus", path_prefix="/prom")
    target, label = await server_target(
        service, MetricChecks(service_namespaces=["monitoring"]), "/api/v1/alerts"
    )
    assert target.addresses == ("10.96.5.5",)
    assert target.url == "http://prometheus.monitoring.svc:9090/prom/api/v1/alerts"
    assert label == "service monitoring/prometheus:9090/prom"


async def test_a_service_on_an_undeclared_port_is_refused(fake: FakeApi) -> None:
    service = PrometheusService(namespace="monitoring", name="prometheus", port=80)
    with pytest.raises(TargetRefusedError, match="no port 80"):
        await server_target(service, MetricChecks(service_namespaces=["monitoring"]), "/")


# -- judging an answer ----------------------------------------------------------------------


async def test_a_value_that_holds_passes_and_names_query_value_and_time(
    allowed: FakePrometheus,
) -> None:
    allowed.query_answer = (200, vector(0.01))
    probe = await run_check(promql(), "team-a", "")
    assert probe.outcome == CheckOutcome.PASS, probe.message
    assert probe.value == pytest.approx(0.01)
    assert QUERY in probe.message
    assert re.search(r"at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", probe.message)
    assert allowed.asked[-1]["query"] == QUERY
    assert float(allowed.asked[-1]["time"]) > 1.7e9


async def test_a_value_that_breaks_the_comparison_fails_with_it(allowed: FakePrometheus) -> None:
    allowed.query_answer = (200, vector(0.31))
    probe = await run_check(promql(), "team-a", "")
    assert probe.outcome == CheckOutcome.FAIL
    assert probe.value == pytest.approx(0.31)
    assert "value 0.31, must be <= 0.05" in probe.message
    assert QUERY in probe.message


async def test_every_series_must_hold(allowed: FakePrometheus) -> None:
    labels = [{"pod": "a"}, {"pod": "b"}, {"pod": "c"}]
    allowed.query_answer = (200, vector(3, 1, 2, labels=labels))
    probe = await run_check(promql("GreaterOrEqual", 2), "team-a", "")
    assert probe.outcome == CheckOutcome.FAIL
    assert probe.value == 1
    assert 'pod="b"' in probe.message
    assert "1 of 3 series" in probe.message
    allowed.query_answer = (200, vector(3, 4, 2, labels=labels))
    probe = await run_check(promql("GreaterOrEqual", 2), "team-a", "")
    assert probe.outcome == CheckOutcome.PASS
    assert probe.value == 2  # the value closest to breaking it


async def test_a_scalar_result_is_judged(allowed: FakePrometheus) -> None:
    allowed.query_answer = (
        200,
        {"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "7"]}},
    )
    probe = await run_check(promql("Equal", 7), "team-a", "")
    assert probe.outcome == CheckOutcome.PASS


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ((200, vector()), "no series"),
        ((200, vector("NaN")), "is NaN"),
        (
            (400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}),
            "bad_data: parse error at char 5",
        ),
        (
            (200, {"status": "success", "data": {"resultType": "matrix", "result": []}}),
            "the result is a matrix",
        ),
        (
            (200, {"status": "success", "data": {"resultType": "vector", "result": [{}]}}),
            "well-formed",
        ),
        ((502, ["not", "prometheus"]), "not a Prometheus API answer"),
    ],
)
async def test_answers_that_cannot_be_judged_are_errors(
    allowed: FakePrometheus, answer: tuple[int, Any], reason: str
) -> None:
    allowed.query_answer = answer
    probe = await run_check(promql(), "team-a", "")
    assert probe.outcome == CheckOutcome.ERROR
    assert reason in probe.message
    assert QUERY in probe.message


async def test_an_unreachable_server_is_an_error(fake: FakeApi) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    switch_with(fake, {"prometheusUrl": f"http://127.0.0.1:{port}"})
    probe = await run_check(promql(), "team-a", "")
    assert probe.outcome == CheckOutcome.ERROR
    assert "unreachable" in probe.message


async def test_the_url_prefix_is_kept(fake: FakeApi, prometheus: FakePrometheus) -> None:
    switch_with(fake, {"prometheusUrl": f"http://127.0.0.1:{prometheus.port}/prom/"})
    await run_check(promql(), "team-a", "")
    assert prometheus.paths == ["/prom/api/v1/query"]


# -- alerts ---------------------------------------------------------------------------------


def an_alert(state: str, **labels: str) -> dict[str, Any]:
    return {"labels": labels, "state": state, "activeAt": "2026-11-30T11:00:00Z", "value": "1"}


async def test_a_firing_matching_alert_fails_the_check(allowed: FakePrometheus) -> None:
    allowed.alerts = [
        an_alert("firing", alertname="Watchdog"),
        an_alert("pending", alertname="HighErrorRate", service="shop"),
        an_alert("firing", alertname="HighErrorRate", service="billing"),
    ]
    assert (await run_check(alert(alertname="HighErrorRate", service="shop"), "t", "")).ok
    allowed.alerts.append(an_alert("firing", alertname="HighErrorRate", service="shop"))
    probe = await run_check(alert(alertname="HighErrorRate", service="shop"), "t", "")
    assert probe.outcome == CheckOutcome.FAIL
    assert probe.value == 1
    assert probe.unit == "firing alerts"
    assert "since 2026-11-30T11:00:00Z" in probe.message


def test_an_alert_check_needs_a_label() -> None:
    with pytest.raises(ValidationError):
        AlertCheck.model_validate({"matchLabels": {}})
    assert (
        PrometheusCheck.model_validate(
            {"query": "up", "comparison": "Equal", "threshold": 1}
        ).timeout_seconds
        == 5
    )


async def test_a_port_out_of_range_is_refused_not_crashed(fake: FakeApi) -> None:
    switch_with(fake, {"prometheusUrl": "http://127.0.0.1:99999"})
    probe = await run_check(promql(), "team-a", "")
    assert probe.outcome == CheckOutcome.ERROR
    assert "prometheusUrl: bad port" in probe.message
