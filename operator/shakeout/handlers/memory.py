"""Give the memory that Python has freed back to the operating system.

CPython returns freed objects to glibc's malloc, which keeps the free pages of its heaps
(one per thread that allocates, and the API client runs in up to 32 threads) for reuse.
After a burst (a thousand Experiments applied at once, a run over thousands of targets)
the operator's resident memory would stay at its high-water mark: 161 MiB where 129 MiB
were in use after 1,000 Experiments were created (bench/footprint.py). malloc_trim(0)
hands the free pages back; it runs in a worker thread, off the event loop. Only glibc
has it: elsewhere (musl, macOS) this does nothing.

And at start, glibc's threshold for serving an allocation from its own mmap is pinned at
128 KiB. By default it rises to the size of every large block freed (up to 32 MiB): after
the first list of a few thousand pods was read and freed, every later response body of
that size lands in the heap, which keeps the pages it had until a trim, and fragments.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import platform
from typing import Any

import kopf

from shakeout.handlers.periodic import every

TRIM_EVERY = 30.0


def _glibc(function: str) -> Any:
    """One of glibc's malloc functions, or None elsewhere (musl, macOS)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    return getattr(ctypes.CDLL(ctypes.util.find_library("c")), function, None)


_TRIM = _glibc("malloc_trim")

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024


def pin_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold (the module docstring says why); False elsewhere."""
    mallopt = _glibc("mallopt")
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


async def release_free_memory() -> None:
    if _TRIM is not None:
        await asyncio.to_thread(_TRIM, 0)


@kopf.on.startup()
async def start_trimming(logger: kopf.Logger, **_: Any) -> None:
    pin_mmap_threshold()
    every(TRIM_EVERY, release_free_memory, logger, "returning free memory")
