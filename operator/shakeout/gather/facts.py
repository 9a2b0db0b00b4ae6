"""Everything the run preconditions look at, read at once into one RunFacts.

The same gatherer serves the admission webhook, the pick-up and the last look before the
attacks start; engine/preconditions.py decides on what it returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from shakeout.api.attacks import AttackType
from shakeout.api.experiment import Experiment, ExperimentSpec
from shakeout.api.run import UserInfo
from shakeout.api.switch import CONTROL_PLANE_LABELS
from shakeout.engine.experiments import describe_validation_error
from shakeout.engine.policies import NamespaceFacts, has_node_cordon
from shakeout.engine.preconditions import RunFacts, WorkloadFacts, workload_key
from shakeout.engine.steps import has_own_blast_radius
from shakeout.engine.targets import Selection, select
from shakeout.gather import agents
from shakeout.gather.authz import may_run_in
from shakeout.gather.switch import live_holders, switch_spec
from shakeout.gather.targets import (
    SelectorError,
    attackable_pods,
    preview_needs_detail,
    resolve_attack_targets,
    resolve_targets,
)
from shakeout.kube.client import Obj, Pod, api
from shakeout.kube.errors import KubeError
from shakeout.kube.resources import NODES, SELF_SUBJECT_REVIEWS

log = logging.getLogger("shakeout.identity")

# Who the operator is to the API server, when it cannot be asked (or to override it).
OPERATOR_USERNAME_ENV = "SHAKEOUT_OPERATOR_USERNAME"
# In a cluster: the operator's ServiceAccount (its namespace from POD_NAMESPACE).
SERVICE_ACCOUNT_ENV = "SHAKEOUT_SERVICE_ACCOUNT"
DEFAULT_SERVICE_ACCOUNT = "shakeout-operator"


@dataclass
class Identities:
    """What the operator knows of identities, set when it starts.

    operator: the operator's own user (the creator of its scheduled runs); None when it
    is not known, and then no run is taken for one of the operator's.
    recorded: whether the mutating webhook records who started each run (the operator
    serves its webhooks): a run without a readable record is then refused at pick-up.
    With --no-webhook, RBAC alone decided who could create a run.
    """

    operator: UserInfo | None = None
    recorded: bool = False


IDENTITIES = Identities()


def configured_operator() -> UserInfo | None:
    """The operator's user as configured: SHAKEOUT_OPERATOR_USERNAME, else in a cluster its
    ServiceAccount (POD_NAMESPACE, SHAKEOUT_SERVICE_ACCOUNT or shakeout-operator)."""
    if name := os.environ.get(OPERATOR_USERNAME_ENV):
        return UserInfo(username=name, groups=["system:authenticated"])
    if namespace := os.environ.get("POD_NAMESPACE"):
        account = os.environ.get(SERVICE_ACCOUNT_ENV) or DEFAULT_SERVICE_ACCOUNT
        return UserInfo(
            username=f"system:serviceaccount:{namespace}:{account}",
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
        )
    return None


async def operator_identity() -> UserInfo | None:
    """The operator's own user: as configured, else as the API server sees it (a
    SelfSubjectReview; out of a cluster, the kubeconfig's user); None if neither."""
    if (configured := configured_operator()) is not None:
        return configured
    review = {"apiVersion": SELF_SUBJECT_REVIEWS.api_version, "kind": "SelfSubjectReview"}
    try:
        answer = await api().create(SELF_SUBJECT_REVIEWS, None, review)
        info = (answer.get("status") or {}).get("userInfo") or {}
        if info.get("username"):
            return UserInfo(username=info["username"], groups=list(info.get("groups") or []))
    except (KubeError, ValidationError) as err:
        log.warning(f"who the operator is could not be asked: {err}")
    return None


def is_operator(username: str) -> bool:
    """Whether a request's user is the operator itself."""
    me = IDENTITIES.operator
    return me is not None and bool(username) and username == me.username


async def _member(creator: UserInfo | None, namespace: str) -> bool:
    """Whether the creator may still run experiments here (with no identity recorded, RBAC
    alone authorized the create; when identities are recorded the pick-up refuses a run
    without one, see IDENTITIES)."""
    return creator is None or await may_run_in(creator, namespace)


def recorded_user(annotations: Mapping[str, Any], key: str) -> UserInfo | None:
    """Who started or canceled a run, as the mutating webhook recorded it."""
    value = annotations.get(key)
    if not value:
        return None
    try:
        return UserInfo.model_validate(json.loads(value))
    except (ValueError, ValidationError):
        return None


def parse_experiment(obj: Obj | None) -> tuple[ExperimentSpec | None, int | None, str | None]:
    """(spec, generation, why it is invalid) of an Experiment as read."""
    if obj is None:
        return None, None, None
    try:
        experiment = Experiment.model_validate(obj)
    except ValidationError as err:
        return None, None, describe_validation_error(err)
    return experiment.spec, experiment.metadata.generation, None


def workload_facts(obj: Obj) -> WorkloadFacts:
    """What the preconditions look at of a Deployment or StatefulSet."""
    spec = obj.get("spec") or {}
    replicas = spec.get("replicas")
    policy = spec.get("persistentVolumeClaimRetentionPolicy") or {}
    return WorkloadFacts(
        replicas=1 if replicas is None else int(replicas),  # the API server's default
        # Only the volumes of its claim templates are deleted: without any, nothing is.
        deletes_volumes_when_scaled=obj.get("kind", "StatefulSet") == "StatefulSet"
        and policy.get("whenScaled") == "Delete"
        and bool(spec.get("volumeClaimTemplates")),
    )


async def scaled_workloads(namespace: str, spec: ExperimentSpec) -> dict[str, WorkloadFacts]:
    """The workloads the spec's ScaleWorkload attacks scale, as they are now."""
    refs = {
        workload_key(a.scale_workload.workload.kind, a.scale_workload.workload.name): (
            a.scale_workload.workload
        )
        for a in spec.attacks
        if a.scale_workload is not None
    }
    found = await asyncio.gather(
        *(api().get_workload(ref.kind, namespace, ref.name) for ref in refs.values())
    )
    return {
        key: workload_facts({"kind": ref.kind, **obj})
        for (key, ref), obj in zip(refs.items(), found, strict=True)
        if obj is not None
    }


async def control_plane_nodes() -> frozenset[str]:
    """The names of the control-plane nodes, listed by their labels (never every node)."""
    lists = await asyncio.gather(
        *(api().list_objects(NODES, labels=label) for label in CONTROL_PLANE_LABELS)
    )
    return frozenset(node["metadata"]["name"] for nodes in lists for node in nodes)


async def gather_run_facts(
    namespace: str,
    experiment_name: str,
    run_uid: str,
    *,
    protected_namespaces: frozenset[str],
    creator: UserInfo | None = None,
    snapshot: ExperimentSpec | None = None,
    lock: bool = False,
    every_candidate: bool = False,
) -> tuple[RunFacts, list[Pod], Obj | None, int | None]:
    """The facts of a run now, with the target pods, the switch object as read (for the
    lock's compare-and-swap) and the Experiment's generation.

    snapshot: the run's own copy of the Experiment (before the attacks start); without it
    the Experiment is read. lock: also read which runs hold a turn, and what (admission).
    every_candidate: the preview of an Experiment (engine/preview.py): the pods returned,
    and the nodes in the facts, are every pod the blast radius can take, not one run's
    pick (the selection's counts are a run's).
    """
    reads = await asyncio.gather(
        api().get_switch(),
        api().namespace_labels(namespace),
        _member(creator, namespace),
        api().get_experiment(namespace, experiment_name) if snapshot is None else _none(),
    )
    switch, labels, member, obj = reads
    spec: ExperimentSpec | None = snapshot
    generation: int | None = None
    error: str | None = None
    found = True
    if snapshot is None:
        spec, generation, error = parse_experiment(obj)
        found = obj is not None
    holders = await live_holders(switch, besides=run_uid) if lock else []
    selection: Selection | None = None
    pods: list[Pod] = []
    selector_error = None
    empty: tuple[str, ...] = ()
    # The pods whose nodes need agents, and those whose nodes a NodeCordon takes: every
    # target, unless attacks have their own blast radius (then those attacks' only).
    agent_pods: list[Pod] | None = None
    cordon_pods: list[Pod] | None = None
    if spec is not None:
        try:
            if has_own_blast_radius(spec):
                # Every attack's targets, the caps over their union (engine/steps.py).
                resolved = await resolve_attack_targets(
                    namespace,
                    spec,
                    run_uid,
                    detail=preview_needs_detail(spec) if every_candidate else None,
                )
                selection = resolved.union
                empty = tuple(n for n, (s, _) in resolved.by_attack.items() if not s.targets)
                pods = resolved.candidates if every_candidate else resolved.pods
                if not every_candidate:
                    agent_pods = resolved.pods_of(a.name for a in spec.attacks if a.node_level)
                    cordon_pods = resolved.pods_of(
                        a.name for a in spec.attacks if a.type == AttackType.NODE_CORDON
                    )
            elif every_candidate:
                pods = await attackable_pods(
                    namespace, spec.blast_radius, detail=preview_needs_detail(spec)
                )
                selection = select([p.name for p in pods], spec.blast_radius.limit, run_uid)
            else:
                selection, pods = await resolve_targets(namespace, spec, run_uid)
        except SelectorError as err:
            selector_error = str(err)
    nodes = tuple(sorted({p.node for p in (pods if agent_pods is None else agent_pods) if p.node}))
    cordoned = pods if cordon_pods is None else cordon_pods
    cordons = spec is not None and has_node_cordon(spec)
    workloads, control_plane = await asyncio.gather(
        scaled_workloads(namespace, spec) if spec is not None else _empty(),
        control_plane_nodes() if cordons else _nobody(),
    )
    facts = RunFacts(
        namespace=namespace,
        experiment_name=experiment_name,
        namespace_facts=NamespaceFacts(namespace, labels),
        experiment=spec,
        experiment_found=found,
        experiment_error=error,
        switch=switch_spec(switch),
        now=datetime.now(UTC),
        protected_namespaces=protected_namespaces,
        selection=selection,
        selector_error=selector_error,
        target_nodes=nodes,
        agent_capabilities=agents.capabilities(list(nodes)),
        creator=creator,
        creator_required=IDENTITIES.recorded,
        creator_is_member=member,
        holders=tuple(holders),
        workloads=workloads,
        scheduled_target_nodes=tuple(sorted({n for p in cordoned if (n := p.scheduled_node)})),
        control_plane_nodes=control_plane,
        attacks_without_targets=empty,
    )
    return facts, pods, switch, generation


async def _none() -> None:
    return None


async def _empty() -> dict[str, WorkloadFacts]:
    return {}


async def _nobody() -> frozenset[str]:
    return frozenset()
