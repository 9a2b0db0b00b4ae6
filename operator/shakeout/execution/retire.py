"""Taking a finished run out of the operator's watch."""

from __future__ import annotations

import contextlib

from shakeout.api.labels import FINALIZER, FINISHED_LABEL
from shakeout.kube.client import api
from shakeout.kube.errors import Conflict, NotFound
from shakeout.kube.resources import RUNS

ATTEMPTS = 10


async def retire_run(namespace: str, name: str) -> None:
    """Label the run finished, and take off the finalizer in the same write, as kopf will
    not see the run again (a run deleted later must not wait for an operator that no
    longer watches it). A compare-and-swap on the resourceVersion, so that no one else's
    finalizer is lost."""
    for _ in range(ATTEMPTS):
        run = await api().get_run(namespace, name)
        if run is None:
            return
        meta = run["metadata"]
        finalizers = meta.get("finalizers") or []
        patch = {
            "metadata": {
                "resourceVersion": meta["resourceVersion"],
                "labels": {FINISHED_LABEL: "true"},
                "finalizers": [f for f in finalizers if f != FINALIZER],
            }
        }
        with contextlib.suppress(Conflict):
            try:
                await api().merge_patch(RUNS, namespace, name, patch)
            except NotFound:
                return
            return
