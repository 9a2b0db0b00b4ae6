"""The operator's rollback records as read back: one ConfigMap per run whose attacks were
journaled, in the operator's own namespace (execution/records.py writes them).

A run's status is its journal, but the run object is the team's: deleted without the
operator's finalizer (by an admin, a namespace force-deleted, a policy absent), it takes
the journal with it. The record keeps what was applied where no team can reach it, so the
operator still rolls it back, at once or after a restart.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from pydantic import ValidationError

from shakeout.api.labels import ROLLBACK_RECORD_LABEL, ROLLBACK_RECORD_PREFIX
from shakeout.api.run import ExperimentRunStatus
from shakeout.kube.client import Obj, api
from shakeout.kube.resources import CONFIG_MAPS, NAMESPACES
from shakeout.options import OPTIONS

log = logging.getLogger("shakeout.records")


@dataclass(frozen=True)
class RunRecord:
    """A run as its rollback record keeps it."""

    namespace: str
    name: str
    uid: str
    experiment: str
    status: ExperimentRunStatus


def record_name(uid: str) -> str:
    return f"{ROLLBACK_RECORD_PREFIX}{uid}"


def parse_record(obj: Obj) -> RunRecord | None:
    """The record, or None for a ConfigMap that is not a readable one (logged)."""
    data = obj.get("data") or {}
    try:
        return RunRecord(
            namespace=str(data["namespace"]),
            name=str(data["name"]),
            uid=str(data["uid"]),
            experiment=str(data["experiment"]),
            status=ExperimentRunStatus.model_validate(json.loads(data["status"])),
        )
    except (KeyError, ValueError, ValidationError) as err:
        log.warning(f"unreadable rollback record {obj['metadata'].get('name')}: {err}")
        return None


async def read_records() -> list[RunRecord]:
    objs = await api().list_objects(CONFIG_MAPS, OPTIONS.namespace, labels=ROLLBACK_RECORD_LABEL)
    return [r for r in map(parse_record, objs) if r is not None]


async def record_exists(uid: str) -> bool:
    """Whether the run with this UID still has attacks to roll back (its record)."""
    return await api().get(CONFIG_MAPS, OPTIONS.namespace, record_name(uid)) is not None


async def records_home_exists() -> bool:
    """Whether the operator's namespace, where the records are kept, exists."""
    return await api().get(NAMESPACES, None, OPTIONS.namespace) is not None
