"""Clean-ups after runs outlive the run's daemon (execution/cleanup.py): kopf cancels a
daemon a minute after its run ended, and unmarking thousands of pods takes longer."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shakeout.execution import cleanup


async def test_a_clean_up_goes_on_when_its_caller_is_cancelled() -> None:
    release, done = asyncio.Event(), asyncio.Event()

    async def unmark_everything() -> None:
        await release.wait()
        done.set()

    caller = asyncio.create_task(
        cleanup.outliving_the_caller(unmark_everything(), "clean-up", ("team-a", "uid-1"))
    )
    await asyncio.sleep(0)
    caller.cancel()  # kopf cancels the daemon
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert list(cleanup.AFTER_RUNS) == [("team-a", "uid-1")]  # held, not lost to the GC

    release.set()
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0)
    assert done.is_set()
    assert not cleanup.AFTER_RUNS


async def test_a_failed_clean_up_is_logged_and_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    async def refused() -> None:
        raise RuntimeError("403 forbidden")

    with caplog.at_level(logging.WARNING, logger="shakeout.cleanup"):
        with pytest.raises(RuntimeError):
            await cleanup.outliving_the_caller(refused(), "clean-up of run r1", ("team-a", "u"))
        await asyncio.sleep(0)

    assert "clean-up of run r1 failed (the next sweep tries again): 403 forbidden" in caplog.text
    assert not cleanup.AFTER_RUNS
