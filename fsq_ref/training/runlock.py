"""One training run per work folder, so that two runs never write the same checkpoint and metrics.

`hold(workdir)` creates WORKDIR/.lock, holding the pid and host of this process, for the duration of a `with`
block, and removes it when the block ends, however it ends. Creation is atomic (O_CREAT | O_EXCL): of two runs
started together, one gets the lock and the other is told who holds it. A lock left by a run that died without
cleaning up (kill -9, a crash of the machine) is stale: if its pid is not alive on this host, or the file cannot be
read as a lock, it is replaced. A lock written on another host cannot be checked from here and is left alone.
"""

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from fsq_ref.common.errors import InputError

LOCK = ".lock"


def _holder(path: Path) -> tuple[int, str] | None:
    """(pid, host) written in the lock file, or None if it is not a lock this module wrote."""
    for attempt in range(2):
        if attempt:  # an empty or partial file may be a lock being written right now: look once more
            time.sleep(0.05)
        try:
            holder = json.loads(path.read_text())
            pid, host = holder["pid"], holder["host"]
            if type(pid) is int and pid > 0 and isinstance(host, str):  # os.kill(0 or -1, ...) means a group
                return pid, host
        except (OSError, ValueError, TypeError, KeyError):
            pass
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


@contextlib.contextmanager
def hold(workdir):
    """Hold WORKDIR/.lock for the `with` block; raise `InputError` if a live run holds it (creates WORKDIR)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path, me = workdir / LOCK, json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(me)
    except FileExistsError:
        holder = _holder(path)
        if holder is not None and holder[1] != socket.gethostname():
            raise InputError(f"{workdir} is in use by a run on another host (pid {holder[0]} on {holder[1]}): wait "
                             f"for it to finish, or use another --workdir; if that run is dead, delete "
                             f"{path}") from None
        if holder is not None and _alive(holder[0]):
            raise InputError(f"{workdir} is in use by a run (pid {holder[0]} on {holder[1]}): wait for it to "
                             "finish, or use another --workdir") from None
        # Stale: replace it with a complete file in one step, then check that no other run replaced it too.
        tmp = workdir / f"{LOCK}.{os.getpid()}.tmp"
        tmp.write_text(me)
        os.replace(tmp, path)
        if path.read_text() != me:
            raise InputError(f"{workdir} was just taken by another run: use another --workdir") from None
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if path.read_text() == me:  # never remove a lock that another run has taken over
                path.unlink()
