"""The runs this operator is executing now, and how to stop each at once.

A run's stop signal has two parts: `halt`, which an attack being applied checks before it
starts another target (API-level and node-level alike), and `wakeup`, which cuts the
run's wait short so that it looks again now. A cancel or deletion of one run, a Stop All
for every run, and a lease event for the runs waiting for their agents set them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shakeout import metrics


@dataclass
class StopSignal:
    """How the outside reaches one live run."""

    halt: asyncio.Event = field(default_factory=asyncio.Event)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)


class LiveRuns:
    """Run UID -> its stop signal, for the runs executing in this process."""

    def __init__(self) -> None:
        self._runs: dict[str, StopSignal] = {}

    def add(self, uid: str) -> StopSignal:
        return self._runs.setdefault(uid, StopSignal())

    def remove(self, uid: str) -> None:
        self._runs.pop(uid, None)

    def __contains__(self, uid: object) -> bool:
        return uid in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def request_stop(self, uid: str) -> None:
        """A cancel, Stop All or deletion of this run: halt what it is applying and wake
        it to roll back."""
        if (signal := self._runs.get(uid)) is None:
            return
        metrics.stop_requested(uid)
        signal.halt.set()
        signal.wakeup.set()

    def stop_all(self) -> None:
        for uid in list(self._runs):
            self.request_stop(uid)

    def wake_all(self) -> None:
        """Every run looks again now (the switch or an agent changed)."""
        for signal in list(self._runs.values()):
            signal.wakeup.set()


LIVE_RUNS = LiveRuns()
