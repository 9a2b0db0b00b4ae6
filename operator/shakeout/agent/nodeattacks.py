"""A NodeAttack as its node's agent reads it: whether it may be applied, the ids of its
faults, and its report's targets once it is rolled back. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shakeout.api.experiment import Attack
from shakeout.api.labels import PROTECTED_LABEL
from shakeout.api.nodeattack import NOT_AFTER_GRACE_SECONDS, PROTECTED_NAMESPACES, TargetState
from shakeout.api.run import AttackState, Phase

Obj = dict[str, Any]


def fault_id(run_uid: str, attack: str, pod_uid: str) -> str:
    """The keeper's id of one attack's fault on one pod of one run."""
    return f"{run_uid}/{attack}/{pod_uid}"


def rolled_back(targets: list[Obj]) -> list[Obj]:
    """A report's targets after the rollback: what was applied (or being) is rolled back."""
    return [
        {"name": t["name"], "state": TargetState.ROLLED_BACK}
        if t.get("state") in (None, TargetState.APPLYING, TargetState.APPLIED)
        else t
        for t in targets
    ]


def refusal(obj: Obj, run: Obj | None, node: str) -> str | None:
    """Why the NodeAttack must not (or no longer) be applied by the agent of `node`, given
    its run as read now (None: gone); None if it may.

    The run's status, written only by the operator, is the authority: the run must be
    the one that created the NodeAttack, ATTACKS_STARTED, with this very attack in its
    copy of the Experiment and Applying or Applied.
    """
    spec = obj.get("spec") or {}
    if spec.get("node") != node:
        return f"meant for node {spec.get('node')}"
    if run is None or run["metadata"].get("uid") != spec.get("runUID"):
        return "its ExperimentRun is gone"
    run_status = run.get("status") or {}
    if run_status.get("phase") != Phase.ATTACKS_STARTED:
        return f"its ExperimentRun is {run_status.get('phase')}, not ATTACKS_STARTED"
    attack = Attack.model_validate(spec.get("attack") or {})
    planned = [
        Attack.model_validate(a) for a in (run_status.get("experiment") or {}).get("attacks") or []
    ]
    if attack not in planned:
        return f"attack {attack.name} is not in the run's copy of the Experiment"
    states = {a.get("name"): a.get("state") for a in run_status.get("attacks") or []}
    if states.get(attack.name) not in (AttackState.APPLYING, AttackState.APPLIED):
        return f"the run has attack {attack.name} in state {states.get(attack.name)}"
    return None


# A NodeAttack without spec.notAfter (an older operator): bounded by its duration from
# when this agent first saw it, plus the operator's apply timeout and the usual grace.
FALLBACK_MARGIN_SECONDS = 30 + NOT_AFTER_GRACE_SECONDS


def not_after(obj: Obj, first_seen: float) -> float:
    """When the agent rolls the NodeAttack back on its own, in seconds since the epoch:
    spec.notAfter, else its durationSeconds after `first_seen` (plus a margin)."""
    spec = obj.get("spec") or {}
    given = spec.get("notAfter")
    if given:
        try:
            when = datetime.fromisoformat(str(given).replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when.timestamp()
        except ValueError:
            pass  # malformed (the CRD's schema says date-time): the fallback bound
    attack = Attack.model_validate(spec.get("attack") or {})
    return first_seen + attack.duration_seconds + FALLBACK_MARGIN_SECONDS


def switch_enabled(switch: Obj | None) -> bool:
    """Whether the ChaosSwitch allows faults: it exists and spec.enabled is true."""
    return switch is not None and (switch.get("spec") or {}).get("enabled") is True


def namespace_refusal(namespace: Obj | None, name: str, own_namespace: str) -> str | None:
    """Why the agent never touches pods of namespace `name` (None: it may), from the
    Namespace object (None: not found). The rule of engine/policies.py, on the agent's side."""
    if name in PROTECTED_NAMESPACES:
        return f"namespace {name} is protected: system namespaces are never targeted"
    if name == own_namespace:
        return f"namespace {name} is protected: it runs the shakeout agent"
    if namespace is None:
        return f"namespace {name} is gone"
    labels = (namespace.get("metadata") or {}).get("labels") or {}
    if labels.get(PROTECTED_LABEL) == "true":
        return f"namespace {name} is protected: it is labelled {PROTECTED_LABEL}=true"
    return None
