"""The NodeAttack kind: one node-level attack of a run, handed to the node agent of one node.

The operator creates it (owned by the ExperimentRun, so deleting the run deletes it) after
journaling the attack in the run's status; the node agent of `spec.node` applies it to the
listed target pods and reports per target in status; `spec.rollback: true` asks the agent
to roll it back. Users only read it: `kubectl get nodeattacks` shows which faults are live
on which node.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import ConfigDict, Field

from shakeout.api.common import DNS_SUBDOMAIN, Model, Resource, cel
from shakeout.api.experiment import Attack

# Targets per NodeAttack: a node with more target pods gets several objects, so that none
# grows past a few tens of KiB (per-target status included).
MAX_NODE_TARGETS = 200

# The agent's own deadline for a NodeAttack (spec.notAfter): the operator sets it to the
# creation time + durationSeconds + the apply's timeout (the attack's clock starts once
# every agent reported, at most that much later) + this grace.
NOT_AFTER_GRACE_SECONDS = 10

# Namespaces whose pods the agent never touches, whatever a NodeAttack says (the same
# rule as the operator's blast radius: engine/policies.py; the agent's own namespace and
# those labelled shakeout.dev/protected=true are protected too).
PROTECTED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})

NODE_LABEL = "shakeout.dev/node"
RUN_UID_LABEL = "shakeout.dev/run-uid"


class TargetPod(Model):
    """A target pod on the node."""

    name: str = Field(description="Pod name.", max_length=253, pattern=DNS_SUBDOMAIN)
    uid: str = Field(description="Pod UID: a pod re-created under the same name is not a target.")


class NodeAttackSpec(Model):
    """What the node agent is to do: one attack on some target pods of its node."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(oldSelf.rollback) || !oldSelf.rollback || self.rollback",
                    "a rollback request cannot be withdrawn",
                ),
                cel(
                    "self.node == oldSelf.node && self.runUID == oldSelf.runUID",
                    "node and runUID are immutable",
                ),
            ]
        }
    )

    run_name: str = Field(description="The ExperimentRun this attack belongs to.")
    run_uid: str = Field(alias="runUID", description="UID of that ExperimentRun.")
    node: str = Field(description="The node whose agent executes the attack.", max_length=253)
    attack: Attack = Field(description="The attack, as in the run's copy of the Experiment.")
    targets: list[TargetPod] = Field(
        min_length=1,
        max_length=MAX_NODE_TARGETS,
        description="The target pods on this node.",
    )
    rollback: bool = Field(
        default=False, description="true: roll the attack back (set by the operator)."
    )
    not_after: datetime | None = Field(
        default=None,
        description=(
            "The agent rolls the attack back at this time on its own, whatever the operator "
            "does (its duration after it was applied, plus a grace)."
        ),
    )


class NodeAttackPhase(StrEnum):
    APPLYING = "Applying"
    APPLIED = "Applied"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class TargetState(StrEnum):
    APPLYING = "Applying"
    APPLIED = "Applied"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"
    GONE = "Gone"


class TargetResult(Model):
    """What the agent did to one target pod."""

    name: str = Field(description="Pod name.")
    state: TargetState = Field(description="Applying, Applied, RolledBack, Failed or Gone.")
    message: str | None = Field(default=None, max_length=512, description="Details.")


class NodeAttackStatus(Model):
    """The node agent's report."""

    phase: NodeAttackPhase | None = Field(
        default=None, description="Applying, Applied, RolledBack or Failed."
    )
    agent: str | None = Field(
        default=None, description="The agent instance (its Lease holder identity) that acted."
    )
    message: str | None = Field(default=None, max_length=1024, description="Details of phase.")
    targets: list[TargetResult] = Field(
        default_factory=list, max_length=MAX_NODE_TARGETS, description="Per-target results."
    )
    updated_at: datetime | None = Field(default=None, description="When the agent last wrote.")


class NodeAttack(Resource):
    """One node-level attack of a run on one node, executed by that node's agent."""

    KIND: ClassVar[str] = "NodeAttack"
    PLURAL: ClassVar[str] = "nodeattacks"

    spec: NodeAttackSpec = Field(description="What the node agent is to do.")
    status: NodeAttackStatus | None = Field(default=None, description="The agent's report.")
