"""The memory cgroup (v1) a process runs in, read from inside it: for the child processes the
cgroup tests start, which import this file by path (`IMPORT` puts this folder on their path)."""
import os
from typing import Dict

IMPORT = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"


def group() -> str:
    """This process's memory cgroup directory."""
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.strip().split(":", 2)
        if "memory" in controllers.split(","):
            return "/sys/fs/cgroup/memory" + path
    raise RuntimeError("no memory cgroup (v1) for this process")


def read(name: str) -> int:
    """The number in one of the cgroup's files (memory.usage_in_bytes, memory.failcnt...)."""
    with open(os.path.join(group(), name)) as f:
        return int(f.read().split()[0])


def stat() -> Dict[str, int]:
    """memory.stat as a dict."""
    with open(os.path.join(group(), "memory.stat")) as f:
        return {k: int(v) for k, v in (line.split() for line in f)}
