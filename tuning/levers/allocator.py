"""glibc's allocator in a process that trains or generates. glibc keeps freed heap pages for reuse
instead of giving them back, so a process's RSS stays at its highest point after a big temporary (a
training step's activations, the evaluation's checks), and it makes a heap per thread. Three levers:
tune_allocator sets two arenas (one for the main thread, one for the math threads) before the model
loads; trim_callback gives the heap's free pages back (malloc_trim) after every training step and every
evaluation; release_freed_memory does the same between the end-of-run checks, so their peaks do not
stack. A low mmap threshold returned more but halved the training speed, so it is not set
(bench/RESULTS.md, Evidence behind the levers, "allocator"; tests/test_memory.py proves freed blocks go
back). Where there is no glibc (musl, macOS, Windows) nothing changes. Switch: `speedups: off`;
`MALLOC_ARENA_MAX` in the environment wins over tune_allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _glibc():
    """The C library if it is glibc (it has mallopt and malloc_trim), else None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc's malloc_trim). False where there is no glibc."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


# glibc's mallopt parameters (malloc.h) and the values a training or generating process runs with:
# one heap for the main thread and one for the math threads, instead of one per thread. Not set: a low
# mmap threshold (128 KiB) cut a quickstart step's RSS growth but halved the training speed (every big
# tensor became a fresh zero-filled mapping: 95 vs 200 tokens/s, side by side, bench/RESULTS.md,
# Evidence behind the levers); the trainer instead gives freed heap pages back after every step (trim_callback).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
ALLOCATOR = {  # parameter: (value, the environment variable that sets it at process start)
    M_ARENA_MAX: (2, "MALLOC_ARENA_MAX"),
}


def tune_allocator() -> bool:
    """Set glibc's allocator for a process that trains or generates (ALLOCATOR), where the
    environment does not already set a parameter. Call it before the model is loaded: blocks
    allocated before keep their old placement. False (nothing changed) where there is no glibc."""
    import os

    libc = _glibc()
    if libc is None:
        return False
    for param, (value, env) in ALLOCATOR.items():
        if env not in os.environ:
            libc.mallopt(param, value)
    return True


def trim_callback():
    """A TrainerCallback that gives the heap's free pages back (release_freed_memory) after every
    step and every evaluation: what a step freed in the middle of the heap stays otherwise counted."""
    from transformers import TrainerCallback

    class ReleaseFreedMemory(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            release_freed_memory()

        def on_evaluate(self, args, state, control, **kwargs):
            release_freed_memory()

    return ReleaseFreedMemory()
