"""The seed's conditions for the Run button, as one pure function.

"If you hit the Run button the experiment is immediately started when: experimenting is
enabled, there is no other experiment running, the blast radius resolves to one or more
targets. If one of the conditions is not met, you'll get an error message and the
execution is not recorded."
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunRequest:
    """What admission saw when a run was created."""

    namespace: str
    experiment: str
    switch_exists: bool
    switch_enabled: bool
    # Other runs in a non-terminal phase, cluster-wide, as namespace/name.
    active_runs: tuple[str, ...]
    experiment_found: bool
    experiment_error: str | None
    matched_pods: int
    targets: int
    # From engine.policies: the namespace rails and the cluster-wide caps.
    namespace_refusal: str | None = None
    cap_refusal: str | None = None
    # Node-level attacks that the targets' node agents report they cannot do.
    agent_refusal: str | None = None
    # Attacks that cannot be rolled back, as "name (Type)": warned about, not refused.
    irreversible: tuple[str, ...] = ()


def refusal(req: RunRequest) -> str | None:
    """The message that refuses the run, or None when it may start."""
    if not req.switch_exists:
        return (
            "experimenting is disabled: there is no ChaosSwitch named default "
            "(create one with spec.enabled: true)"
        )
    if not req.switch_enabled:
        return (
            "experimenting is disabled (Stop All): ChaosSwitch default has spec.enabled: false; "
            "continue with kubectl shakeout continue"
        )
    if req.active_runs:
        return (
            "another experiment is running: "
            + ", ".join(req.active_runs[:5])
            + "; only one run executes at a time, cluster-wide"
        )
    if not req.experiment_found:
        return f"Experiment {req.namespace}/{req.experiment} not found"
    if req.experiment_error:
        return f"Experiment {req.namespace}/{req.experiment} is invalid: {req.experiment_error}"
    if req.namespace_refusal:
        return req.namespace_refusal
    if req.targets < 1:
        return (
            f"the blast radius of Experiment {req.namespace}/{req.experiment} resolves to no "
            f"pods ({req.matched_pods} matched the selector)"
        )
    if req.cap_refusal:
        return req.cap_refusal
    if req.agent_refusal:
        return f"the run needs attacks its node agents cannot do: {req.agent_refusal}"
    return None
