"""An idle agent gives the heap its work freed back to the system (`actors/free_heap.py`)."""

from __future__ import annotations

import platform

import psutil
import pytest

from actors.free_heap import release_free_heap


def _uss_mib() -> float:
    return float(psutil.Process().memory_full_info().uss) / 2**20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_between_live_blocks_goes_back_to_the_system() -> None:
    # Blocks small enough for the heap (not mmap), most freed but one in fifty kept: the free space lies
    # between live blocks, where glibc keeps it for reuse instead of shrinking the heap by itself.
    blocks = [bytearray(4096) for _ in range(25_000)]
    kept = blocks[::50]
    del blocks
    before = _uss_mib()
    assert release_free_heap() is True
    after = _uss_mib()
    assert before - after >= 20, f"USS {before:.1f} -> {after:.1f} MiB"
    assert len(kept) == 500  # still alive: only free memory was given back
