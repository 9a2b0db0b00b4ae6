"""The operator's malloc settings (handlers/memory.py): glibc's mmap threshold pinned."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, ctypes.util
from shakeout.handlers.memory import pin_mmap_threshold
print(pin_mmap_threshold())
# A block just over the threshold, freed, then a larger one: with the threshold pinned
# the larger one is still served by mmap, not by the heap (mallinfo2's hblks counts them).
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.parametrize("pinned", [True, False])
def test_a_large_block_stays_out_of_the_heap_once_pinned(pinned: bool) -> None:
    probe = PROBE if pinned else PROBE.replace("print(pin_mmap_threshold())", "print(False)")
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    # Unpinned, glibc raised its threshold to 4 MiB when the first block was freed, and
    # served the 1 MiB block from the heap: the test tells the two apart.
    assert out == (["True", "1"] if pinned else ["False", "0"])
