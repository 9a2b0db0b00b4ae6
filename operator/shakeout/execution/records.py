"""Writing a run's rollback record (gather/records.py says why it exists and reads it).

The record is written together with the run's own status at every journal write that
changes the attacks (both before anything is applied or rolled back), and deleted once the run has
ended with nothing left applied. A run without an attack journaled yet has none.
"""

from __future__ import annotations

import json

from shakeout.api.labels import ROLLBACK_RECORD_LABEL
from shakeout.api.run import ExperimentRunStatus
from shakeout.engine.attacks import acted
from shakeout.gather.records import record_name
from shakeout.kube.client import api
from shakeout.kube.errors import Conflict
from shakeout.kube.resources import CONFIG_MAPS
from shakeout.options import OPTIONS


def touched(status: ExperimentRunStatus) -> bool:
    """Whether the journal says that some attack was (or is being) applied: a run whose
    attacks never started, or a dry run, needs no record (engine.attacks.acted)."""
    return bool(acted(status))


class RollbackRecord:
    """One run's record: a ConfigMap named after its UID in the operator's namespace."""

    def __init__(self, namespace: str, name: str, uid: str, experiment: str) -> None:
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.experiment = experiment
        # The attacks' journal as last saved (JSON), None while no record was written.
        self.saved: str | None = None

    def data(self, status: ExperimentRunStatus) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "experiment": self.experiment,
            "status": json.dumps(status.to_k8s(), separators=(",", ":")),
        }

    async def save(self, status: ExperimentRunStatus, always: bool = False) -> None:
        """Write the record if the attacks' journal changed since the last save (or
        `always`); nothing while no attack was touched and no record exists."""
        if self.saved is None and not touched(status):
            return  # most writes of a run before its attacks: nothing to serialize
        attacks = json.dumps([a.model_dump(mode="json") for a in status.attacks])
        if attacks == self.saved and not always:
            return
        body: dict[str, object] = {"data": self.data(status)}
        if self.saved is None:
            body["metadata"] = {
                "name": record_name(self.uid),
                "labels": {ROLLBACK_RECORD_LABEL: "true"},
            }
            try:
                await api().create(CONFIG_MAPS, OPTIONS.namespace, body)
            except Conflict:  # written before a restart: this one is newer
                await api().merge_patch(CONFIG_MAPS, OPTIONS.namespace, record_name(self.uid), body)
        else:
            await api().merge_patch(CONFIG_MAPS, OPTIONS.namespace, record_name(self.uid), body)
        self.saved = attacks

    async def delete(self) -> None:
        """The run ended with nothing left applied: the record goes (idempotent)."""
        await api().delete(CONFIG_MAPS, OPTIONS.namespace, record_name(self.uid))
        self.saved = None
