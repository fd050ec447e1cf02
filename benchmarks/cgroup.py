"""Running a command inside a cgroup v1 memory limit (which counts page cache), and
measuring its peak memory and OOM kills. Falls back to rusage when cgroups are unavailable."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import List, Optional

ROOT = "/sys/fs/cgroup/memory"


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    peak_bytes: int
    peak_source: str  # "cgroup" or "rss"
    oom_killed: bool
    seconds: float
    timed_out: bool = False


def available() -> bool:
    """True when a v1 memory cgroup can be created here. The probe's name is this thread's own:
    with one name per process, runs started at once from several threads (the stages of a
    distributed test) found each other's probe, and those that lost ran without a cgroup,
    measuring the machine's memory instead of their own."""
    probe = os.path.join(ROOT, f"litcore-probe-{os.getpid()}-{threading.get_native_id()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
        return True
    except OSError:
        return False


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def evict(paths: List[str]) -> None:
    """Drops files from the page cache, so a run starts cold."""
    for p in paths:
        for root, _, files in os.walk(p) if os.path.isdir(p) else [(os.path.dirname(p), [], [os.path.basename(p)])]:
            for name in files:
                try:
                    fd = os.open(os.path.join(root, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def run(cmd: List[str], limit_bytes: Optional[int], *, env=None, timeout: float = 1800) -> Outcome:
    """Runs `cmd` in a fresh memory cgroup limited to `limit_bytes` (None: no limit)."""
    use_cgroup = available()
    group = os.path.join(ROOT, f"litcore-bench-{os.getpid()}-{time.monotonic_ns()}") if use_cgroup else None
    if group:
        os.mkdir(group)
        if limit_bytes:
            _write(os.path.join(group, "memory.limit_in_bytes"), str(limit_bytes))
    procs = os.path.join(group, "cgroup.procs") if group else None

    def enter() -> None:  # runs in the child before exec: the whole run is inside the limit
        if procs:
            _write(procs, str(os.getpid()))

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=enter)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, err = proc.communicate()
    seconds = time.perf_counter() - start
    try:
        if group:
            peak = _read_int(os.path.join(group, "memory.max_usage_in_bytes"))
            oom = False
            with open(os.path.join(group, "memory.oom_control")) as f:
                for line in f:
                    if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                        oom = True
            source = "cgroup"
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            oom = proc.returncode == -9
            source = "rss"
    finally:
        if group:
            for _ in range(50):
                try:
                    os.rmdir(group)
                    break
                except OSError:
                    time.sleep(0.1)
    # A kill for the timeout is not an OOM kill (rusage cannot tell them apart otherwise).
    return Outcome(proc.returncode, out, err, peak, source, oom or (proc.returncode == -9 and not timed_out), seconds,
                   timed_out)
