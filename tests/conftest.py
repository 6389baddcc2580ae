"""Shared fixtures: deadlines that scale with how busy the machine is."""

import os
import signal
import time

import pytest

# 200 single-thread 256x256 float32 matrix products: 0.068 s on a quiet 2-core AMD EPYC
# (2026-12-04); a loaded or slower machine takes longer, and deadlines stretch with it.
QUIET_SECONDS = 0.068


def slowdown() -> float:
    """How many times slower than a quiet reference machine this one runs right now
    (at least 1, at most 8): measured, not assumed, so a busy CI box gets longer deadlines."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(256, 256)
        best = min(_timed(lambda: [a @ a for _ in range(200)]) for _ in range(3))
    finally:
        torch.set_num_threads(threads)
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 0
    return min(8.0, max(1.0, best / QUIET_SECONDS, load))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.fixture
def deadline():
    """Fail a test that runs past three minutes (times the machine's measured slowdown)
    instead of letting CI hang; yields the number of seconds allowed."""
    seconds = int(180 * slowdown())

    def stop(signum, frame):
        raise TimeoutError(f"test ran past its {seconds} s deadline")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    yield seconds
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
