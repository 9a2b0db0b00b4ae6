"""Everything the run preconditions look at, read at once into one RunFacts.

The same gatherer serves the admission webhook, the pick-up and the last look before the
attacks start; engine/preconditions.py decides on what it returns.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from shakeout.api.experiment import Experiment, ExperimentSpec
from shakeout.api.run import UserInfo
from shakeout.engine.experiments import describe_validation_error
from shakeout.engine.policies import NamespaceFacts
from shakeout.engine.preconditions import RunFacts
from shakeout.engine.targets import Selection
from shakeout.gather import agents
from shakeout.gather.authz import may_run_in
from shakeout.gather.switch import lock_holder, switch_spec
from shakeout.gather.targets import SelectorError, resolve_targets
from shakeout.kube.client import Obj, Pod, api


async def _member(creator: UserInfo | None, namespace: str) -> bool:
    """Whether the creator may still run experiments here (with no identity recorded, RBAC
    alone authorized the create)."""
    return creator is None or await may_run_in(creator, namespace)


def parse_experiment(obj: Obj | None) -> tuple[ExperimentSpec | None, int | None, str | None]:
    """(spec, generation, why it is invalid) of an Experiment as read."""
    if obj is None:
        return None, None, None
    try:
        experiment = Experiment.model_validate(obj)
    except ValidationError as err:
        return None, None, describe_validation_error(err)
    return experiment.spec, experiment.metadata.generation, None


async def gather_run_facts(
    namespace: str,
    experiment_name: str,
    run_uid: str,
    *,
    protected_namespaces: frozenset[str],
    creator: UserInfo | None = None,
    snapshot: ExperimentSpec | None = None,
    lock: bool = False,
) -> tuple[RunFacts, list[Pod], Obj | None, int | None]:
    """The facts of a run now, with the target pods, the switch object as read (for the
    lock's compare-and-swap) and the Experiment's generation.

    snapshot: the run's own copy of the Experiment (before the attacks start); without it
    the Experiment is read. lock: also read who holds the cluster-wide lock (admission).
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
    holder = await lock_holder(switch, besides=run_uid) if lock else None
    selection: Selection | None = None
    pods: list[Pod] = []
    selector_error = None
    if spec is not None:
        try:
            selection, pods = await resolve_targets(namespace, spec, run_uid)
        except SelectorError as err:
            selector_error = str(err)
    nodes = tuple(sorted({p.node for p in pods if p.node}))
    facts = RunFacts(
        namespace=namespace,
        experiment_name=experiment_name,
        namespace_facts=NamespaceFacts(namespace, labels),
        experiment=spec,
        experiment_found=found,
        experiment_error=error,
        switch=switch_spec(switch),
        protected_namespaces=protected_namespaces,
        selection=selection,
        selector_error=selector_error,
        target_nodes=nodes,
        agent_capabilities=agents.capabilities(list(nodes)),
        creator=creator,
        creator_is_member=member,
        lock_holder=holder,
    )
    return facts, pods, switch, generation


async def _none() -> None:
    return None
