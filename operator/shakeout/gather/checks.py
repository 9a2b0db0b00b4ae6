"""State checks, executed by the operator: workload readiness, pod readiness, HTTP GET
(what an HTTP GET may reach, and how it is bounded: gather/http_check.py), PromQL and
firing alerts (which Prometheus they may ask: gather/prometheus.py)."""

from __future__ import annotations

import math

from shakeout.api.checks import StateCheck, StateCheckType
from shakeout.engine.checks import Probe
from shakeout.gather.http_check import http_get
from shakeout.gather.prometheus import firing_alerts, prometheus_query
from shakeout.kube.client import api


async def run_check(check: StateCheck, namespace: str, selector: str) -> Probe:
    """One probe. It never raises: an error is a probe that could not be evaluated."""
    try:
        if check.type == StateCheckType.WORKLOAD_READY:
            return await _workload_ready(check, namespace)
        if check.type == StateCheckType.PODS_READY:
            return await _pods_ready(check, namespace, selector)
        if check.type == StateCheckType.PROMETHEUS:
            assert check.prometheus is not None
            return await prometheus_query(check.prometheus)
        if check.type == StateCheckType.ALERT:
            assert check.alert is not None
            return await firing_alerts(check.alert)
        return await _http_get(check, namespace)
    except Exception as err:  # noqa: BLE001  (a probe that errs could not evaluate, with the reason)
        return Probe.error(f"{type(err).__name__}: {err}"[:1024])


async def _workload_ready(check: StateCheck, namespace: str) -> Probe:
    params = check.workload_ready
    assert params is not None
    ref = params.workload
    obj = await api().get_workload(ref.kind, namespace, ref.name)
    if obj is None:
        return Probe.judged(False, f"{ref.kind} {ref.name} not found", 0, "ready replicas")
    desired = int(obj.get("spec", {}).get("replicas") or 0)
    ready = int(obj.get("status", {}).get("readyReplicas") or 0)
    if params.min_ready is not None:
        need = params.min_ready
    else:
        assert params.min_ready_percent is not None
        need = math.ceil(desired * params.min_ready_percent / 100)
    message = f"{ref.kind} {ref.name}: {ready}/{desired} ready (need {need})"
    return Probe.judged(ready >= need, message, ready, "ready replicas")


async def _pods_ready(check: StateCheck, namespace: str, selector: str) -> Probe:
    percent = check.pods_ready.min_ready_percent if check.pods_ready else 100
    pods = await api().list_pods(namespace, selector)
    live = [p for p in pods if not p.deleting]
    ready = sum(p.ready for p in live)
    need = math.ceil(len(live) * percent / 100)
    ok = bool(live) and ready >= need
    message = f"{ready}/{len(live)} blast-radius pods ready (need {need})"
    return Probe.judged(ok, message, ready, "ready pods")


async def _http_get(check: StateCheck, namespace: str) -> Probe:
    params = check.http_get
    assert params is not None
    return await http_get(params, namespace)
