"""A run's status as last written, and the one way to write it: the journal that an
operator restarted at any point resumes from."""

from __future__ import annotations

from shakeout.api.experiment import Attack, ExperimentSpec
from shakeout.api.run import ExperimentRunStatus
from shakeout.kube.client import api
from shakeout.kube.errors import NotFound


class RunGone(Exception):  # noqa: N818  (a state, like kopf's own)
    """The run object is gone (deleted before the operator's finalizer was on it): there
    is nothing left to drive, and nothing was attacked (a run is attacked only after its
    journal is written on it)."""


class RunJournal:
    def __init__(self, namespace: str, name: str, status: ExperimentRunStatus) -> None:
        self.namespace = namespace
        self.name = name
        self.status = status
        # A status that needs no action is kept in memory and written together with the
        # next write; whatever touches the cluster writes first (`write`).
        self.dirty = False

    @property
    def snapshot(self) -> ExperimentSpec:
        """The Experiment as the run executes it (taken at pick-up)."""
        assert self.status.experiment is not None
        return self.status.experiment

    def attack(self, name: str) -> Attack:
        return next(a for a in self.snapshot.attacks if a.name == name)

    async def write(self, status: ExperimentRunStatus) -> None:
        try:
            await api().patch_run_status(self.namespace, self.name, status.to_k8s())
        except NotFound as err:
            raise RunGone(f"run {self.namespace}/{self.name} is gone") from err
        self.status = status
        self.dirty = False

    def defer(self, status: ExperimentRunStatus) -> None:
        """Keep `status` to be written with the next write (nothing is acted on for it)."""
        self.status, self.dirty = status, True

    async def flush(self) -> None:
        if self.dirty:
            await self.write(self.status)
