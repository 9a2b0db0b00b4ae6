"""Prometheus and Alert state checks: one bounded query to a Prometheus the admin allows.

Which server: a check names a Service (`service`) only in a namespace the cluster admin
lists in the ChaosSwitch (spec.metricChecks.serviceNamespaces), resolved to its ClusterIP
through the API with the same refusals as an HttpGet check's Service (gather/http_check.py:
no loopback, no API server or node address); a check that names none asks the cluster's
Prometheus, spec.metricChecks.prometheusUrl, which only an admin can set (the switch's rails
need `set-rails`). A team can therefore never point the operator at a host of its choice.
The request is http_check.fetch: pinned addresses, timeouts, no redirects, no proxy from the
environment, at most 64 KiB read.

Outcomes: a result that breaks the comparison is a Fail whose value is the first value that
broke it; an unreachable or refused server, an answer that is not Prometheus', a query the
server rejects, a result with no series or a NaN could not be evaluated (Error). No series
is an Error, not a Pass or a Fail, because an absent series says nothing about the system:
a typo in a label, a target not scraped yet or a metric renamed would otherwise pass a check
for ever (or blame the system for the check's mistake); `... or vector(0)` says in PromQL
that absence means zero. Every message names the query, the value seen and the time of the
evaluation, so that a report can show them as they were.
"""

from __future__ import annotations

import json
import math
import operator
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

from shakeout.api.checks import AlertCheck, Comparison, PrometheusCheck, PrometheusService
from shakeout.api.switch import MetricChecks
from shakeout.engine.checks import Probe
from shakeout.gather.http_check import (
    Target,
    TargetRefusedError,
    always_refused,
    fetch,
    resolve_host,
    service_target,
)
from shakeout.gather.switch import switch_spec
from shakeout.kube.client import api

COMPARE: dict[Comparison, tuple[str, Callable[[float, float], bool]]] = {
    Comparison.LESS_THAN: ("<", operator.lt),
    Comparison.LESS_OR_EQUAL: ("<=", operator.le),
    Comparison.GREATER_THAN: (">", operator.gt),
    Comparison.GREATER_OR_EQUAL: (">=", operator.ge),
    Comparison.EQUAL: ("==", operator.eq),
    Comparison.NOT_EQUAL: ("!=", operator.ne),
}
# How much of a query a message quotes (a message holds at most 1024 characters).
QUERY_IN_MESSAGE = 400
NOT_CONFIGURED = (
    "no Prometheus is allowed: a cluster admin sets ChaosSwitch spec.metricChecks "
    "(prometheusUrl, or serviceNamespaces for checks that name a Service)"
)


class NotEvaluatedError(Exception):
    """The server's answer cannot be judged (a rejected query, no series, not Prometheus)."""


# -- which server ---------------------------------------------------------------------------


async def allowed_servers() -> MetricChecks | None:
    """What the admin allows, read from the ChaosSwitch at each probe (a change applies to
    the next probe)."""
    spec = switch_spec(await api().get_switch())
    return spec.metric_checks if spec is not None else None


async def server_target(
    service: PrometheusService | None, allowed: MetricChecks | None, api_path: str
) -> tuple[Target, str]:
    """The checked target of `api_path` (path and query) on the check's server, and the
    server as messages name it; raises TargetRefusedError."""
    if service is not None:
        if allowed is None or service.namespace not in allowed.service_namespaces:
            raise TargetRefusedError(
                f"service: namespace {service.namespace} is not one whose Services metric "
                "checks may query (ChaosSwitch spec.metricChecks.serviceNamespaces, set by a "
                "cluster admin)"
            )
        target = await service_target(
            service.name,
            service.port,
            service.path_prefix + api_path,
            scheme=str(service.scheme),
            namespace=service.namespace,
            field="service",
        )
        label = f"service {service.namespace}/{service.name}:{service.port}{service.path_prefix}"
        return target, label
    if allowed is None or allowed.prometheus_url is None:
        raise TargetRefusedError(NOT_CONFIGURED)
    parts = urlsplit(allowed.prometheus_url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:  # the schema's pattern allows five digits: 99999
        raise TargetRefusedError(f"prometheusUrl: bad port ({err})") from None
    try:
        addresses = await resolve_host(host, port)
    except OSError as err:
        raise TargetRefusedError(f"prometheusUrl: {host} does not resolve ({err})") from None
    for addr in addresses:
        if (why := always_refused(addr)) is not None:
            raise TargetRefusedError(f"prometheusUrl: {host} resolves to {addr}, {why}: refused")
    prefix = parts.path.rstrip("/")
    label = f"{parts.scheme}://{host}:{port}{prefix}"
    target = Target(
        parts.scheme, host, port, prefix + api_path, tuple(sorted(map(str, addresses))), label
    )
    return target, label


async def ask(target: Target, timeout_seconds: int) -> dict[str, Any]:
    """One GET of the Prometheus HTTP API: its `data`. Raises NotEvaluatedError, TimeoutError
    or aiohttp.ClientError."""
    status, body, cut = await fetch(target, {"Accept": "application/json"}, timeout_seconds)
    if cut:
        raise NotEvaluatedError(
            "the answer is larger than 64 KiB: aggregate the query (sum, max, topk)"
        )
    try:
        answer = json.loads(body)
    except ValueError:
        raise NotEvaluatedError(f"HTTP {status}, not a Prometheus API answer") from None
    if not isinstance(answer, dict):
        raise NotEvaluatedError(f"HTTP {status}, not a Prometheus API answer")
    if answer.get("status") != "success":
        kind = str(answer.get("errorType") or f"HTTP {status}")
        raise NotEvaluatedError(f"{kind}: {str(answer.get('error') or '')[:300]}")
    data = answer.get("data")
    if not isinstance(data, dict):
        raise NotEvaluatedError("the answer has no data")
    return data


def _quoted(query: str) -> str:
    text = " ".join(query.split())
    return text if len(text) <= QUERY_IN_MESSAGE else text[: QUERY_IN_MESSAGE - 3] + "..."


def _at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _series_name(metric: Any) -> str:
    if not isinstance(metric, dict) or not metric:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()))
    return "{" + inner[:200] + "}"


def samples(data: dict[str, Any]) -> list[tuple[str, float]]:
    """(series, value) of an instant query's result; raises NotEvaluatedError."""
    kind = data.get("resultType")
    result = data.get("result")
    try:
        if kind == "scalar" and isinstance(result, list):
            return [("", float(result[1]))]
        if kind == "vector" and isinstance(result, list):
            return [(_series_name(s.get("metric")), float(s["value"][1])) for s in result]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise NotEvaluatedError("the result is not a well-formed instant vector") from None
    raise NotEvaluatedError(
        f"the result is a {kind}: give an expression whose result is an instant vector or a "
        "scalar (no range selector at the top)"
    )


def judge(params: PrometheusCheck, found: list[tuple[str, float]], where: str) -> Probe:
    """Pass when every value satisfies the comparison; else Fail with the first that does
    not. `where` names the query, the server and the time."""
    symbol, holds = COMPARE[params.comparison]
    threshold = params.threshold
    if not found:
        return Probe.error(
            f"{where}: no series (a label that matches nothing, a target not scraped?); "
            "write `or vector(0)` if absence means zero"
        )
    if any(math.isnan(value) for _, value in found):
        series = next(s for s, v in found if math.isnan(v))
        return Probe.error(f"{where}: the value{' of ' + series if series else ''} is NaN")
    broken = [(series, value) for series, value in found if not holds(value, threshold)]
    many = f" ({len(broken)} of {len(found)} series)" if len(found) > 1 else ""
    if broken:
        series, value = broken[0]
        return Probe.judged(
            False,
            f"{where}: value {value:g}{' of ' + series if series else ''}, must be "
            f"{symbol} {threshold:g}{many}",
            value,
        )
    series, value = found[0]
    if len(found) > 1:  # the value closest to breaking the comparison
        pick = max if params.comparison in (Comparison.LESS_THAN, Comparison.LESS_OR_EQUAL) else min
        series, value = pick(found, key=lambda sv: sv[1])
    return Probe.judged(
        True,
        f"{where}: value {value:g}{' of ' + series if series else ''} {symbol} {threshold:g}"
        + (f" ({len(found)} series)" if len(found) > 1 else ""),
        value,
    )


# -- the checks -----------------------------------------------------------------------------


async def prometheus_query(params: PrometheusCheck) -> Probe:
    """One instant query, evaluated at the time of the probe, judged against the comparison."""
    evaluated_at = round(time.time(), 3)
    query = urlencode(
        {
            "query": params.query,
            "time": f"{evaluated_at:.3f}",
            "timeout": f"{params.timeout_seconds}s",
        }
    )
    try:
        target, server = await server_target(
            params.service, await allowed_servers(), f"/api/v1/query?{query}"
        )
    except TargetRefusedError as err:
        return Probe.error(f"query {_quoted(params.query)!r}: refused: {err}")
    where = f"query {_quoted(params.query)!r} at {_at(evaluated_at)} on {server}"
    try:
        data = await ask(target, params.timeout_seconds)
        return judge(params, samples(data), where)
    except NotEvaluatedError as err:
        return Probe.error(f"{where}: {err}")
    except TimeoutError:
        return Probe.error(f"{where}: no answer within {params.timeout_seconds}s")
    except aiohttp.ClientError as err:
        return Probe.error(f"{where}: unreachable ({type(err).__name__})")


def _matches(alert: Any, wanted: dict[str, str]) -> bool:
    labels = alert.get("labels") if isinstance(alert, dict) else None
    return isinstance(labels, dict) and all(labels.get(k) == v for k, v in wanted.items())


async def firing_alerts(params: AlertCheck) -> Probe:
    """Pass when no firing alert carries all of matchLabels; else Fail, the value the number
    of such alerts."""
    asked_at = time.time()
    wanted = _series_name(params.match_labels)
    try:
        target, server = await server_target(
            params.service, await allowed_servers(), "/api/v1/alerts"
        )
    except TargetRefusedError as err:
        return Probe.error(f"alerts {wanted}: refused: {err}")
    where = f"alerts {wanted} at {_at(asked_at)} on {server}"
    try:
        data = await ask(target, params.timeout_seconds)
    except NotEvaluatedError as err:
        return Probe.error(f"{where}: {err}")
    except TimeoutError:
        return Probe.error(f"{where}: no answer within {params.timeout_seconds}s")
    except aiohttp.ClientError as err:
        return Probe.error(f"{where}: unreachable ({type(err).__name__})")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        return Probe.error(f"{where}: the answer lists no alerts")
    firing = [
        a for a in alerts if _matches(a, dict(params.match_labels)) and a.get("state") == "firing"
    ]
    if not firing:
        return Probe.judged(True, f"{where}: none firing", 0, "firing alerts")
    first = firing[0]
    since = str(first.get("activeAt") or "?")[:40]
    return Probe.judged(
        False,
        f"{where}: {len(firing)} firing, e.g. {_series_name(first.get('labels'))} since {since}",
        len(firing),
        "firing alerts",
    )
