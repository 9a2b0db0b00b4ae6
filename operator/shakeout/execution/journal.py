"""A run's status as last written, and the one way to write it: the journal that an
operator restarted at any point resumes from. Whenever the attacks' part changes, the
run's rollback record (execution/records.py) is written with it, both before anything is
acted on: the run object is the team's to delete, the record is not."""

from __future__ import annotations

import asyncio

from shakeout.api.experiment import Attack, ExperimentSpec
from shakeout.api.run import ExperimentRunStatus
from shakeout.execution.records import RollbackRecord, touched
from shakeout.kube.client import api
from shakeout.kube.errors import NotFound


class RunGone(Exception):  # noqa: N818  (a state, like kopf's own)
    """The run object is gone: deleted before the operator's finalizer was on it (nothing
    attacked: a run is attacked only after its journal is written), or without it (its
    rollback record then holds what to roll back: RunJournal.recorded)."""


class RunJournal:
    def __init__(
        self, namespace: str, name: str, status: ExperimentRunStatus, record: RollbackRecord
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.status = status
        self.record = record
        # A status that needs no action is kept in memory and written together with the
        # next write; whatever touches the cluster writes first (`write`).
        self.dirty = False
        # The run object vanished: the record is the journal from now on.
        self.detached = False

    @property
    def recorded(self) -> bool:
        """Whether some attack was journaled, so that the record holds it."""
        return touched(self.status)

    def detach(self) -> None:
        """The run object is gone: write the record only, and always."""
        self.detached = True

    @property
    def snapshot(self) -> ExperimentSpec:
        """The Experiment as the run executes it (taken at pick-up)."""
        assert self.status.experiment is not None
        return self.status.experiment

    def attack(self, name: str) -> Attack:
        return next(a for a in self.snapshot.attacks if a.name == name)

    async def write(self, status: ExperimentRunStatus) -> None:
        """Write the record and the run's status (at once: both are in place before the
        caller acts, and the first fault waits for one round trip, not two)."""
        record = self.record.save(status, always=self.detached)
        if self.detached:
            await record
        else:
            patch = api().patch_run_status(self.namespace, self.name, status.to_k8s())
            saved, patched = await asyncio.gather(record, patch, return_exceptions=True)
            if isinstance(saved, BaseException):
                raise saved  # nothing is acted on without its record
            if isinstance(patched, NotFound):
                # The record (if the run needs one) holds it: the object is gone.
                self.status, self.dirty = status, False
                raise RunGone(f"run {self.namespace}/{self.name} is gone") from patched
            if isinstance(patched, BaseException):
                raise patched
        self.status = status
        self.dirty = False

    async def forget(self) -> None:
        """The run ended with nothing left applied: its record goes."""
        if self.recorded or self.record.saved is not None:
            await self.record.delete()

    def defer(self, status: ExperimentRunStatus) -> None:
        """Keep `status` to be written with the next write (nothing is acted on for it)."""
        self.status, self.dirty = status, True

    async def flush(self) -> None:
        if self.dirty:
            await self.write(self.status)
