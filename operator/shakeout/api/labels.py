"""Every label, annotation and finalizer key the project writes or reads, and every condition
type: the wire vocabulary in one place (docs/api.md lists them for users).

Keys the operator writes on objects a user can also write (runs, pods, nodes) are never
trusted on their own: each comment says who writes the key and what reads it.
"""

from __future__ import annotations

import hashlib
from typing import Final

PREFIX: Final = "shakeout.dev"

# -- finalizers ---------------------------------------------------------------------------

# kopf's finalizer on a live run, renamed so that users see who holds the object; taken off
# when the run ends (execution/retire.py).
FINALIZER: Final = f"{PREFIX}/finalizer"

# -- ExperimentRun ------------------------------------------------------------------------

# A finished run carries this label and leaves the operator's watch of runs: kopf keeps the
# last body of every object it watches for a daemon (about 20 KiB a run) until the object
# is deleted, and finished runs pile up (1,200 an hour at 20 runs a minute).
FINISHED_LABEL: Final = f"{PREFIX}/finished"
# Set by the mutating webhook from the admission request's user info (JSON UserInfo).
STARTED_BY: Final = f"{PREFIX}/started-by"
CANCELED_BY: Final = f"{PREFIX}/canceled-by"
# Runs created by the scheduler: the Experiment (experiment_label_value), the trigger and
# the due time.
EXPERIMENT_LABEL: Final = f"{PREFIX}/experiment"
TRIGGER_LABEL: Final = f"{PREFIX}/trigger"
SCHEDULED_TRIGGER: Final = "schedule"
SCHEDULED_FOR: Final = f"{PREFIX}/scheduled-for"

# The operator's copy of a live run's attack journal, outside the run object (a ConfigMap
# in the operator's namespace, which no team may write): labelled so, named after the
# run's UID (execution/records.py).
ROLLBACK_RECORD_LABEL: Final = f"{PREFIX}/rollback-record"
ROLLBACK_RECORD_PREFIX: Final = "shakeout-run-"

# -- Experiment -------------------------------------------------------------------------

# Set by kubectl shakeout preview (any value up to 64 characters of [A-Za-z0-9._:-]): the
# operator computes the Experiment's status.preview at once and echoes the value in
# status.preview.request. A request only; nothing else is read from it.
PREVIEW_REQUESTED: Final = f"{PREFIX}/preview-requested"

# -- ChaosSwitch --------------------------------------------------------------------------

# Stamped by the mutating webhook on every change of the spec: who, when, and the
# generation the change makes. The ValidatingAdmissionPolicy shakeout-switch-rails lets
# them change only together with the spec, naming the requester and that generation; the
# operator trusts a stamp only when it names the switch's current generation
# (status.history, status.lastChange).
CHANGED_BY: Final = f"{PREFIX}/changed-by"
CHANGED_AT: Final = f"{PREFIX}/changed-at"
CHANGED_GENERATION: Final = f"{PREFIX}/changed-generation"

# -- Namespaces (the blast-radius rails) -----------------------------------------------------

# `true`: never attacked, whatever a selector says.
PROTECTED_LABEL: Final = f"{PREFIX}/protected"
# `enabled`: the namespace opted in (the switch's OptIn mode requires it).
OPT_IN_LABEL: Final = f"{PREFIX}/chaos"

# -- Attack records on the attacked objects ------------------------------------------------

# NetworkIsolation marks its targets with this label, valued with the run's UID; the
# policy selects the mark. At most one NetworkIsolation per Experiment (CEL).
ISOLATED: Final = f"{PREFIX}/isolated"
# EndpointRemoval: the labels removed from a pod, written in the same request (JSON).
REMOVED_LABELS: Final = f"{PREFIX}/removed-labels"
# NodeCordon: the run and attack that cordoned a node (JSON); never set on a node that
# someone else cordoned.
CORDONED_BY: Final = f"{PREFIX}/cordoned-by"

# -- NodeAttacks and the objects an attack creates -------------------------------------------

NODE_LABEL: Final = f"{PREFIX}/node"
RUN_UID_LABEL: Final = f"{PREFIX}/run-uid"
ATTACK_LABEL: Final = f"{PREFIX}/attack"

# -- Node agents ------------------------------------------------------------------------

# The agents' Leases: labelled, with the node and the probed capabilities (JSON) annotated.
AGENT_LABEL: Final = f"{PREFIX}/agent"
AGENT_LABEL_VALUE: Final = "node"
NODE_ANNOTATION: Final = f"{PREFIX}/node"
CAPABILITIES_ANNOTATION: Final = f"{PREFIX}/capabilities"
AGENT_LEASE_PREFIX: Final = "shakeout-agent-"
# The operator replicas' leader-election Lease.
OPERATOR_LEASE: Final = "shakeout-operator"
# Test nodes only (kwok, the node tier): the pod's network namespace by name.
NETNS_ANNOTATION: Final = f"{PREFIX}/netns"


def experiment_label_value(name: str) -> str:
    """An Experiment's name as a label value: itself when it fits a label value (63
    characters), else its head and a digest of the whole, so that two long names never
    share a value."""
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:52].rstrip('.-')}-{digest}"


def agent_lease_name(node: str) -> str:
    """The Lease a node's agent holds."""
    return f"{AGENT_LEASE_PREFIX}{node}"[:253]


# -- kopf's own bookkeeping, under our prefix ------------------------------------------------

KOPF_ANNOTATION_PREFIX: Final = PREFIX
KOPF_DIFFBASE_KEY: Final = "last-handled-configuration"

# -- Condition types ----------------------------------------------------------------------


class ConditionType:
    """Condition types of the project's kinds (status.conditions[].type)."""

    # ExperimentRun: one per phase reached, and the summary.
    PREPARED: Final = "Prepared"
    ATTACKS_STARTED: Final = "AttacksStarted"
    ATTACKS_STOPPED: Final = "AttacksStopped"
    SUCCEEDED: Final = "Succeeded"
    # A rollback that failed is being retried: the run keeps its lock until it succeeds.
    ROLLBACK_PENDING: Final = "RollbackPending"
    # A dry run (spec.dryRun): set True when it is picked up, it says nothing is applied.
    DRY_RUN: Final = "DryRun"
    # kstatus (Flux, kpt, cli-utils) reads these two on every kind.
    RECONCILING: Final = "Reconciling"
    STALLED: Final = "Stalled"
    # Experiment.
    VALID: Final = "Valid"
