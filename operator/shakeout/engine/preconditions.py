"""The preconditions of a run: one chain of small pure checks, evaluated at three points.

A run may start only when experimenting is enabled (the ChaosSwitch named default exists
with spec.enabled: true) and none of its blackout windows is in force, no other run holds
the cluster-wide lock, its Experiment exists and is valid, it starts inside one of the
Experiment's allowed windows (if it has any), its namespace may be attacked, attacks whose
effect reaches beyond the namespace are allowed for it, it lasts no longer than the
cluster's cap, its blast radius resolves to at least one pod within the cluster-wide caps
(the replicas a scale takes away and the nodes a cordon takes count too), no scale down
deletes volumes unless it says so, the node agents of its targets' nodes can do its
node-level attacks (on at most MAX_AGENT_NODES nodes), and whoever created it may still
create runs in its namespace. A refused run is never attacked.

The facts are gathered once by I/O code elsewhere (`RunFacts`); each check looks at them
and refuses with a reason and a message, or passes. The checks have one order
(`CHECKS`); the chain of each point where the preconditions are evaluated is a
subsequence of it, so a refusal has the same reason and the same message wherever it is
made:

* `ADMISSION`: when a run is created (the Run button). RBAC itself has authorized the
  requesting user.
* `PICKUP`: when the operator picks a run up. The cluster-wide lock is then taken with a
  compare-and-swap, which is race-free, so the lock is not checked here. Scheduled runs
  are not checked at creation: this is their full check.
* `ATTACK_START`: just before the attacks start, after a warm-up that may have lasted
  hours: the switch, the namespace rails, the caps, the agents and the creator must still
  hold. The run executes its own snapshot of the Experiment, so whether the Experiment
  still exists does not matter here; its selector must still be one the API server
  accepts.
* `STEP_START`: before each later attack step (engine/steps.py), as ATTACK_START but for
  the pods: a blast radius an earlier step emptied starts the step on no target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shakeout.api.attacks import AttackType
from shakeout.api.experiment import ExperimentSpec
from shakeout.api.labels import STARTED_BY
from shakeout.api.run import MAX_AGENT_NODES, UserInfo
from shakeout.api.switch import ChaosSwitchSpec
from shakeout.engine.concurrency import Holder, conflict, held_nodes
from shakeout.engine.policies import (
    NamespaceFacts,
    cap_refusal,
    cluster_scope_refusal,
    cordon_nodes,
    has_node_cordon,
    namespace_refusal,
    node_cap_refusal,
    run_length_refusal,
    scale_cap_refusal,
)
from shakeout.engine.runs import Reason
from shakeout.engine.steps import schedule_seconds
from shakeout.engine.targets import Selection
from shakeout.engine.windows import allowed_now, blackout_in_force, describe

SHOWN_PROBLEMS = 3


@dataclass(frozen=True)
class Refusal:
    """Why a run may not start: the reason (Event and condition) and the message for people."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class WorkloadFacts:
    """A workload that a ScaleWorkload attack scales, as read."""

    replicas: int
    # A StatefulSet whose persistentVolumeClaimRetentionPolicy.whenScaled is Delete: a
    # scale down deletes the volumes of the replicas scaled away.
    deletes_volumes_when_scaled: bool = False


def workload_key(kind: str, name: str) -> str:
    """The key of a workload in RunFacts.workloads."""
    return f"{kind}/{name}"


@dataclass(frozen=True)
class RunFacts:
    """Everything a precondition looks at, gathered once (by I/O code elsewhere)."""

    namespace: str
    experiment_name: str
    namespace_facts: NamespaceFacts
    # The Experiment's parsed spec; at the start of the attacks, the run's own snapshot.
    experiment: ExperimentSpec | None = None
    experiment_found: bool = True
    # Why the Experiment is invalid, already described for people.
    experiment_error: str | None = None
    # None: there is no ChaosSwitch named default.
    switch: ChaosSwitchSpec | None = None
    # When the facts were gathered, for the time windows; None: windows are not checked.
    now: datetime | None = None
    # The operator's own namespaces.
    protected_namespaces: frozenset[str] = frozenset()
    # The blast radius resolved to pods and targets; None if it was not resolved.
    selection: Selection | None = None
    # Why the API server refused the blast radius' selector.
    selector_error: str | None = None
    # The nodes of the target pods, sorted and unique.
    target_nodes: tuple[str, ...] = ()
    # Node -> {attack type: None if the node's agent can do it, else why not}; only for
    # nodes whose agent is known.
    agent_capabilities: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    # Who created the run; None when unknown (RBAC alone authorized the create).
    creator: UserInfo | None = None
    # Whether every run's creator is recorded (the operator serves the webhook that records
    # it): an unknown creator then means the record was bypassed, and is refused.
    creator_required: bool = False
    # Whether the creator may still create runs in the namespace.
    creator_is_member: bool = True
    # The other live runs that hold a turn, and what they hold (the switch's status).
    holders: tuple[Holder, ...] = ()
    # The workloads the ScaleWorkload attacks scale, by workload_key; one that does not
    # exist is absent (the attack then fails without touching anything).
    workloads: Mapping[str, WorkloadFacts] = field(default_factory=dict)
    # The nodes of the target pods that the scheduler placed (not a spec.nodeName written
    # by whoever created the pod), sorted and unique: the nodes a NodeCordon may cordon.
    scheduled_target_nodes: tuple[str, ...] = ()
    # The control-plane nodes among them (read only when the spec has a NodeCordon).
    control_plane_nodes: frozenset[str] = frozenset()
    # The attacks whose own blastRadius resolves to no pods (engine/steps.py).
    attacks_without_targets: tuple[str, ...] = ()

    @property
    def experiment_ref(self) -> str:
        return f"{self.namespace}/{self.experiment_name}"


Check = Callable[[RunFacts], Refusal | None]


def switch_exists(facts: RunFacts) -> Refusal | None:
    """Experimenting is disabled unless a ChaosSwitch named default exists (fail safe)."""
    if facts.switch is not None:
        return None
    return Refusal(
        Reason.EXPERIMENTING_DISABLED,
        "experimenting is disabled: there is no ChaosSwitch named default "
        "(create one with spec.enabled: true)",
    )


def switch_enabled(facts: RunFacts) -> Refusal | None:
    """Experimenting is disabled while the switch has spec.enabled: false (Stop All)."""
    if facts.switch is None or facts.switch.enabled:
        return None
    return Refusal(
        Reason.EXPERIMENTING_DISABLED,
        "experimenting is disabled (Stop All): ChaosSwitch default has spec.enabled: false; "
        "continue with kubectl shakeout continue",
    )


def outside_blackout(facts: RunFacts) -> Refusal | None:
    """No run starts inside one of the switch's blackout windows (holidays, freezes)."""
    if facts.switch is None or facts.now is None:
        return None
    blackout = blackout_in_force(facts.switch.blackout_windows, facts.now)
    if blackout is None:
        return None
    return Refusal(
        Reason.OUTSIDE_WINDOW,
        f"the blackout window {describe(blackout)} of ChaosSwitch default is in force: no "
        "run may start until it ends (a cluster admin sets spec.blackoutWindows)",
    )


def inside_allowed_window(facts: RunFacts) -> Refusal | None:
    """A run starts only inside one of its Experiment's allowed windows, when it has any.
    They gate the start only: a run that started inside one runs to its end."""
    if facts.experiment is None or facts.now is None:
        return None
    windows = facts.experiment.allowed_windows
    if allowed_now(windows, facts.now):
        return None
    listed = "; ".join(describe(w) for w in windows)
    return Refusal(
        Reason.OUTSIDE_WINDOW,
        f"now ({facts.now.astimezone(UTC):%Y-%m-%d %H:%M} UTC) is outside every allowed "
        f"window of Experiment {facts.experiment_ref}: {listed}; start the run inside one "
        "(spec.allowedWindows)",
    )


def no_other_run_holds_lock(facts: RunFacts) -> Refusal | None:
    """No other live run holds this run's turn (the cluster's, or in Namespace mode its
    namespace's) or a node its NodeCordon would cordon (engine/concurrency.py)."""
    if not facts.holders or facts.switch is None:
        return None
    nodes = held_nodes(
        facts.experiment,
        facts.scheduled_target_nodes,
        facts.control_plane_nodes,
        facts.switch,
    )
    me = Holder(facts.namespace, "", "", nodes)
    if (found := conflict(facts.switch.concurrency, me, facts.holders)) is None:
        return None
    return Refusal(found.reason, found.message)


def experiment_found(facts: RunFacts) -> Refusal | None:
    """The Experiment the run refers to exists in the run's namespace."""
    if facts.experiment_found:
        return None
    return Refusal(
        Reason.EXPERIMENT_NOT_FOUND,
        f"Experiment {facts.experiment_ref} not found: create it, or name an Experiment of "
        f"namespace {facts.namespace} in spec.experimentRef.name",
    )


def experiment_valid(facts: RunFacts) -> Refusal | None:
    """The Experiment is valid, and the API server accepts its blast radius' selector."""
    error = facts.experiment_error or facts.selector_error
    if error is None:
        return None
    return Refusal(
        Reason.EXPERIMENT_INVALID,
        f"Experiment {facts.experiment_ref} is invalid: {error}; correct its spec",
    )


def namespace_allowed(facts: RunFacts) -> Refusal | None:
    """The namespace may be attacked: not a system, operator or protected namespace, and
    opted in when the switch is in OptIn mode."""
    if facts.switch is None:
        return None
    problem = namespace_refusal(facts.namespace_facts, facts.switch, facts.protected_namespaces)
    return None if problem is None else Refusal(Reason.NAMESPACE_PROTECTED, problem)


def cluster_scope_allowed(facts: RunFacts) -> Refusal | None:
    """Attacks whose effect reaches beyond the namespace (NodeCordon) run only in the
    namespaces a cluster admin named in the switch (none by default)."""
    if facts.switch is None or facts.experiment is None:
        return None
    attacks = [f"{a.name} ({a.type})" for a in facts.experiment.attacks if a.cluster_scoped]
    problem = cluster_scope_refusal(facts.namespace, attacks, facts.switch)
    return None if problem is None else Refusal(Reason.CLUSTER_SCOPE_NOT_ALLOWED, problem)


def run_seconds(spec: ExperimentSpec) -> int:
    """How long a run of the spec lasts at most: its warm-up, its attack steps (the longest
    chain of offsets and durations; with no steps, the longest attack) and its cool-down."""
    return spec.warm_up_seconds + schedule_seconds(spec) + spec.cool_down_seconds


def run_within_length(facts: RunFacts) -> Refusal | None:
    """The run lasts no longer than the switch's spec.maxRunSeconds (it holds the
    cluster-wide lock all that time)."""
    if facts.switch is None or facts.experiment is None:
        return None
    problem = run_length_refusal(run_seconds(facts.experiment), facts.switch)
    return None if problem is None else Refusal(Reason.RUN_TOO_LONG, problem)


def blast_radius_has_targets(facts: RunFacts) -> Refusal | None:
    """The blast radius resolves to at least one pod, and so does each attack's own."""
    if facts.attacks_without_targets:
        return Refusal(
            Reason.NO_TARGETS,
            f"the blast radius of attack(s) {', '.join(facts.attacks_without_targets)} of "
            f"Experiment {facts.experiment_ref} resolves to no pods: check their "
            "blastRadius.selector and limit against the labels of the pods",
        )
    selection = facts.selection
    if selection is None or selection.targets:
        return None
    if selection.matched:
        hint = "spec.blastRadius.limit selects none of them"
    else:
        hint = "check spec.blastRadius.selector against the labels of the pods"
    return Refusal(
        Reason.NO_TARGETS,
        f"the blast radius of Experiment {facts.experiment_ref} resolves to no pods "
        f"({selection.matched} matched the selector): {hint}",
    )


def within_caps(facts: RunFacts) -> Refusal | None:
    """The run targets no more pods than the switch's cluster-wide caps allow."""
    if facts.switch is None or facts.selection is None:
        return None
    problem = cap_refusal(facts.selection.matched, len(facts.selection.targets), facts.switch)
    return None if problem is None else Refusal(Reason.OVER_TARGET_CAP, problem)


def scale_within_caps(facts: RunFacts) -> Refusal | None:
    """The replicas each ScaleWorkload takes away count as pods in the cluster-wide caps."""
    if facts.switch is None or facts.experiment is None:
        return None
    for attack in facts.experiment.attacks:
        scale = attack.scale_workload
        if scale is None:
            continue
        ref = scale.workload
        workload = facts.workloads.get(workload_key(ref.kind, ref.name))
        if workload is None:
            continue
        what = f"{ref.kind} {ref.name}"
        problem = scale_cap_refusal(
            attack.name, what, workload.replicas, scale.replicas, facts.switch
        )
        if problem is not None:
            return Refusal(Reason.OVER_TARGET_CAP, problem)
    return None


def scale_keeps_data(facts: RunFacts) -> Refusal | None:
    """A ScaleWorkload does not scale down a StatefulSet whose scale down deletes the
    volumes (persistentVolumeClaimRetentionPolicy.whenScaled: Delete), unless the attack
    accepts the data loss (and is then irreversible)."""
    if facts.experiment is None:
        return None
    for attack in facts.experiment.attacks:
        scale = attack.scale_workload
        if scale is None or scale.accept_data_loss:
            continue
        ref = scale.workload
        workload = facts.workloads.get(workload_key(ref.kind, ref.name))
        if workload is None or not workload.deletes_volumes_when_scaled:
            continue
        if scale.replicas < workload.replicas:
            return Refusal(
                Reason.DATA_LOSS_NOT_ACCEPTED,
                f"attack {attack.name} would scale {ref.kind} {ref.name} down from "
                f"{workload.replicas} to {scale.replicas} replicas, and its "
                "persistentVolumeClaimRetentionPolicy.whenScaled is Delete: the volumes "
                "of the replicas scaled away would be deleted, which no rollback undoes; "
                "set scaleWorkload.acceptDataLoss: true to run it anyway (the attack is "
                "then irreversible), or retain the volumes (whenScaled: Retain)",
            )
    return None


def nodes_within_cap(facts: RunFacts) -> Refusal | None:
    """A NodeCordon cordons at most the switch's caps.maxNodes nodes (1 when unset),
    counted after the nodes it may not touch are left out."""
    if facts.switch is None or facts.experiment is None:
        return None
    if not has_node_cordon(facts.experiment):
        return None
    nodes = cordon_nodes(facts.scheduled_target_nodes, facts.control_plane_nodes, facts.switch)
    problem = node_cap_refusal(nodes, facts.switch)
    return None if problem is None else Refusal(Reason.OVER_NODE_CAP, problem)


def node_attack_types(spec: ExperimentSpec) -> tuple[AttackType, ...]:
    """The node-level attack types of the spec, each once, in the order of the attacks."""
    return tuple(dict.fromkeys(AttackType(a.type) for a in spec.attacks if a.node_level))


def agent_nodes_within_limit(facts: RunFacts) -> Refusal | None:
    """Node-level attacks involve the node agents of at most MAX_AGENT_NODES nodes (the
    nodes of the targets only count when the spec has node-level attacks)."""
    if facts.experiment is None or not node_attack_types(facts.experiment):
        return None
    nodes = len(facts.target_nodes)
    if nodes <= MAX_AGENT_NODES:
        return None
    return Refusal(
        Reason.ATTACK_UNSUPPORTED,
        f"the node-level attacks of Experiment {facts.experiment_ref} would run on {nodes} "
        f"nodes, over the limit of {MAX_AGENT_NODES} per run: narrow spec.blastRadius",
    )


def agent_problems(facts: RunFacts) -> list[tuple[str, str]]:
    """(node, problem) for each node-level attack type of the spec that the known agent of
    a target's node cannot do, by node."""
    if facts.experiment is None:
        return []
    kinds = node_attack_types(facts.experiment)
    problems = []
    for node in sorted(set(facts.target_nodes)):
        capabilities = facts.agent_capabilities.get(node)
        if capabilities is None:
            continue
        for kind in kinds:
            if kind not in capabilities:
                problems.append((node, f"the agent of node {node} does not know {kind}"))
            elif (why := capabilities[kind]) is not None:
                problems.append((node, f"the agent of node {node} cannot do {kind}: {why}"))
    return problems


def agents_can_attack(facts: RunFacts) -> Refusal | None:
    """The known node agents of the targets' nodes can do every node-level attack type of
    the spec. An agent not known yet is waited for (the run fails later if it never
    connects), not refused."""
    problems = [problem for _node, problem in agent_problems(facts)]
    if not problems:
        return None
    more = len(problems) - SHOWN_PROBLEMS
    listed = "; ".join(problems[:SHOWN_PROBLEMS]) + (f" (and {more} more)" if more > 0 else "")
    return Refusal(
        Reason.ATTACK_UNSUPPORTED,
        f"the run needs attacks its node agents cannot do: {listed}; remove those attacks "
        f"from Experiment {facts.experiment_ref} or narrow its blast radius to nodes whose "
        "agents can do them",
    )


# A run whose creator the mutating webhook should have recorded, and did not (it was down
# or deleted, or the record was written by hand): refused at admission and at pick-up.
CREATOR_NOT_RECORDED = (
    f"who started the run is not recorded: the annotation {STARTED_BY} is missing or "
    "unreadable (was the mutating webhook run-started-by down or deleted?); create the run "
    "again"
)


def creator_still_member(facts: RunFacts) -> Refusal | None:
    """Whoever created the run may still create runs in its namespace; a creator that
    should have been recorded and was not is refused as well."""
    if facts.creator is None and facts.creator_required:
        return Refusal(Reason.UNAUTHORIZED, CREATOR_NOT_RECORDED)
    if facts.creator is None or facts.creator_is_member:
        return None
    return Refusal(
        Reason.UNAUTHORIZED,
        f"{facts.creator.username}, who created the run, may not run experiments in "
        f"namespace {facts.namespace} (RBAC does not let them create ExperimentRuns there); "
        "a member of the team has to start the run",
    )


# Every check, in the one order in which they are evaluated.
CHECKS: tuple[Check, ...] = (
    switch_exists,
    switch_enabled,
    outside_blackout,
    no_other_run_holds_lock,
    experiment_found,
    experiment_valid,
    inside_allowed_window,
    namespace_allowed,
    cluster_scope_allowed,
    run_within_length,
    blast_radius_has_targets,
    within_caps,
    scale_within_caps,
    scale_keeps_data,
    nodes_within_cap,
    agent_nodes_within_limit,
    agents_can_attack,
    creator_still_member,
)


def _all_but(*left_out: Check) -> tuple[Check, ...]:
    """A chain: every check in the one order, but those left out."""
    return tuple(check for check in CHECKS if check not in left_out)


# When a run is created: RBAC has authorized the requesting user itself.
ADMISSION = _all_but(creator_still_member)
# When the operator picks a run up: the lock is then taken with a compare-and-swap (so it
# is not checked here), and a scheduled run, never checked at creation, is checked in full.
PICKUP = _all_but(no_other_run_holds_lock)
# Just before the attacks start: the run executes its own snapshot of the Experiment, and
# its allowed windows gated its start only (a blackout cancels it, see engine/runs.py).
ATTACK_START = _all_but(no_other_run_holds_lock, experiment_found, inside_allowed_window)
# Before a later attack step (engine/steps.py): as before the first, but a blast radius
# that takes no pod any more (an earlier step deleted them) starts that step on no target.
STEP_START = _all_but(
    no_other_run_holds_lock, experiment_found, inside_allowed_window, blast_radius_has_targets
)
# The Experiment's preview (engine/preview.py): what admission would say of a run created
# now, but the lock, which changes with every run (the switch's status.activeRun shows it).
PREVIEW = _all_but(creator_still_member, no_other_run_holds_lock)


def evaluate(chain: Sequence[Check], facts: RunFacts) -> Refusal | None:
    """The first refusal of the chain's checks, in order, or None when the run may start."""
    for check in chain:
        if (refused := check(facts)) is not None:
            return refused
    return None


def irreversible_attacks(spec: ExperimentSpec) -> tuple[str, ...]:
    """The attacks that cannot be rolled back, as "name (Type)": warned about, not refused."""
    return tuple(f"{a.name} ({a.type})" for a in spec.attacks if not a.reversible)
