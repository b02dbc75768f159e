"""Giving freed memory back to the system, for processes that run for weeks.

A reconnect storm allocates far more than the connections keep (each handshake's
objects, the batches in flight): once they are freed, glibc's allocator keeps the pages
in its arenas, and the process's resident size stays at the storm's peak. The relay
and the recorder ask it to return them when things are calm.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return trim


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system; False where it cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
