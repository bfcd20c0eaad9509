"""Where a figure was measured: the machine and the code's commit, for the reports that record them."""

import os
import platform
import subprocess
from pathlib import Path


def machine() -> str:
    """The host in a few words: CPU model, cores and memory (from /proc on Linux; the platform elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
        return f"{cpu}, {os.cpu_count()} cores, {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def commit() -> str:
    """The checkout's commit (with '+changes' when the tree differs from it), or 'not a git checkout'."""
    root = Path(__file__).resolve().parents[2]  # the checkout holding fsq_ref/
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return head + ("+changes" if dirty else "")
