"""How many cores other processes leave free, measured over an interval from ``/proc/stat``: CPU
inference sizes its thread pool by it on shared machines. No torch import, so a stage can take its
first sample before the seconds of importing torch and loading a model that it then measures over."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuSample:
    """The machine's busy CPU time and this process's CPU time at one moment (seconds)."""

    wall: float
    machine_busy: float
    own: float
    cores: int


def cpu_sample() -> CpuSample | None:
    """Busy time of all cores (``/proc/stat``) and this process's CPU time now; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    hertz = os.sysconf("SC_CLK_TCK")
    return CpuSample(time.monotonic(), (sum(ticks[:8]) - idle) / hertz, time.process_time(), os.cpu_count() or 1)


def threads_for_free_cores(since: CpuSample | None) -> int | None:
    """Intra-op threads for CPU inference: the cores other processes left free since ``since`` (at
    least 1), or None (keep torch's default, one per core) without a sample, with an explicit
    ``OMP_NUM_THREADS``, or when the interval is too short to tell. torch's OpenMP threads wait for each
    other at every operator: on cores other processes also use, one descheduled thread stalls the rest.
    Measured on this project's 2-core machine at load ~7 (EfficientNet-Lite0, batch 32): 1 thread
    29 ms/image in bf16 and 49 in fp32, 2 threads 66-89 and 79-91 ms (and twice the CPU time)."""
    now = cpu_sample()
    if since is None or now is None or "OMP_NUM_THREADS" in os.environ:
        return None
    elapsed = now.wall - since.wall
    if elapsed < 0.5:
        return None
    others = (now.machine_busy - since.machine_busy) - (now.own - since.own)
    return max(1, min(now.cores, round(now.cores - others / elapsed)))
