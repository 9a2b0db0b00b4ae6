"""Rendering an Experiment's preview for people (pure text): `kubectl shakeout preview`."""

from __future__ import annotations

from typing import Any

from shakeout.api.experiment import BlastRadius
from shakeout.cli.report import clean, table
from shakeout.engine.targets import ATTACKABLE_FIELDS, selector_to_string

Obj = dict[str, Any]


def _list_command(experiment: Obj) -> str:
    """The kubectl command that lists every pod the preview's list was cut from."""
    namespace = experiment["metadata"]["namespace"]
    try:
        radius = BlastRadius.model_validate(experiment["spec"]["blastRadius"])
    except (KeyError, ValueError):
        return ""
    selector = selector_to_string(radius.selector)
    return (
        f"kubectl get pods -n {namespace} -l '{selector}' --field-selector {ATTACKABLE_FIELDS} "
        "-o wide"
    )


def _lock(active: Obj | None) -> str:
    if not active:
        return "free"
    return (
        f"held by {active.get('namespace')}/{active.get('name')}: a run created now is "
        "refused (AnotherRunActive) until that run ends"
    )


def render(experiment: Obj, active_run: Obj | None, note: str | None = None) -> str:
    """The preview in status.preview of the Experiment as read, and the lock's holder."""
    meta = experiment["metadata"]
    preview = clean_obj((experiment.get("status") or {}).get("preview") or {})
    where = f"{meta['namespace']}/{meta['name']}"
    if not preview:
        return f"Experiment {where} has no preview yet (is the operator running?)"
    verdict = "ALLOWED" if preview.get("allowed") else f"REFUSED ({preview.get('reason')})"
    lines = [
        f"Preview of {where} at {preview.get('time')} "
        f"(generation {preview.get('observedGeneration')})",
    ]
    if note:
        lines.append(f"Note:          {note}")
    lines += [
        f"Verdict:       {verdict}: {preview.get('message', '')}",
        f"Lock:          {_lock(clean_obj(active_run) if active_run else None)}",
        f"Targets:       {preview.get('selected', 0)} of {preview.get('matched', 0)} pods that "
        "match and can be attacked",
    ]
    pods = preview.get("pods") or []
    if pods:
        lines += ["", "Pods a run would take its targets from:"]
        rows = [["NAME", "NODE"]] + [[p["name"], p.get("node") or "-"] for p in pods]
        lines += ["  " + line for line in table(rows).splitlines()]
        more = int(preview.get("matched", 0)) - len(pods)
        if more > 0:
            lines.append(f"  and {more} more: {_list_command(experiment)}")
    nodes = preview.get("nodes") or []
    more_nodes = int(preview.get("nodeCount", len(nodes))) - len(nodes)
    lines += [
        "",
        "Nodes:         "
        + (", ".join(nodes) or "none")
        + (f" and {more_nodes} more" if more_nodes > 0 else ""),
    ]
    if agents := preview.get("agents"):
        lines += ["", "Node agents the node-level attacks would involve:"]
        rows = [["NODE", "CONNECTED", "PROBLEM"]] + [
            [a["node"], "yes" if a.get("connected") else "NO", a.get("problem") or ""]
            for a in agents
        ]
        lines += ["  " + line for line in table(rows).splitlines()]
    if cordon := preview.get("cordonNodes"):
        lines.append("Cordoned:      " + ", ".join(cordon))
    irreversible = preview.get("irreversibleAttacks") or []
    lines += [
        "Irreversible:  "
        + (", ".join(irreversible) + " (cannot be rolled back)" if irreversible else "none"),
        "",
        "Nothing was created: a preview runs nothing.",
    ]
    return "\n".join(lines)


def clean_obj(value: Any) -> Any:
    """Every string of a user-influenced object made safe to print (see report.clean)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k): clean_obj(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_obj(v) for v in value]
    return value
