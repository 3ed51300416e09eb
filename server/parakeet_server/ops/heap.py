"""The C heap under a process (glibc): what it holds, and giving its free pages back.

MLX's CPU backend allocates arrays with malloc. After `mx.clear_cache()` the buffers are free,
but glibc keeps them in its heaps (its mmap threshold rises with the large buffers it sees), so
RSS climbed 26-50 MB in steps over 400 mixed-length requests. `malloc_trim(0)` after each
request returns them: RSS then stayed within 4 MB, for 5-8 ms per request. Pinning the mmap
threshold instead kept RSS flat too, but made the encoder ~25% slower (page faults on every
fresh buffer). Elsewhere (macOS, musl) both functions do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    if sys.platform != "linux":
        return None
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).mallinfo2 if name else None
    except (OSError, AttributeError):  # glibc < 2.33 or not glibc
        return None
    if function is not None:
        function.restype = _MallInfo2
    return function


def heap_figures() -> tuple[int, int]:
    """(bytes allocated, bytes free but kept) in this process's C heap, every arena and
    mmapped chunk counted; (0, 0) where glibc's mallinfo2 is missing. Microseconds."""
    info = _mallinfo2()
    if info is None:
        return 0, 0
    figures = info()
    return int(figures.uordblks + figures.hblkhd), int(figures.fordblks)


def release_free_heap() -> bool:
    """Returns free heap pages to the OS; False where that is not possible."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def pin_mmap_threshold(size: int) -> bool:
    """Makes glibc serve every allocation of `size` bytes or more with its own mmap, returned to
    the OS when freed, instead of raising that threshold after each large free (its default);
    False where that is not possible. For a process whose large buffers (audio, messages) come
    and go: the dynamic threshold lets them land in the heaps, where free memory is kept."""
    if sys.platform != "linux":
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, size))
