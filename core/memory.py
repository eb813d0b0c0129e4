"""Giving freed heap memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    return getattr(ctypes.CDLL(library), "malloc_trim", None)  # glibc only


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system (glibc's `malloc_trim(0)`, every arena);
    False where there is no such call (another libc), which changes nothing but the RSS.

    Why: prediction loads models and builds features in chunks; their temporaries are
    freed between the arrays it keeps, and glibc keeps those holes mapped. Measured on 300
    loaded models: RSS 0.38 MB a model before, 0.31 after a trim."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
