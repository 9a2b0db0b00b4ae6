"""A NodeAttack as its node's agent reads it: whether it may be applied, the ids of its
faults, and its report's targets once it is rolled back. Pure: no I/O."""

from __future__ import annotations

from typing import Any

from shakeout.api.experiment import Attack
from shakeout.api.nodeattack import TargetState
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
