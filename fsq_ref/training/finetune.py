"""Fine-tuning: a new run that starts from the weights of a trained one (`fsq train ... --init-from RUN_DIR`).

The new run trains on its own data with a fresh optimiser and learning-rate schedule (step 0, warm-up included);
only the model comes from the other run, and with it the quantizer's state: VQ's EMA dictionary and its usage
counts are part of what the model learned (the codes its decoder knows), so they carry over like the weights. FSQ
has no state.

The run it starts from must be of the same kind, with the same architecture and codebook: each task says which part
of its checkpoint header fixes these (`Task.architecture`), and any difference is refused in one line that names it.
The new run records where it started (`init_from` in its checkpoint header; `fsq info` shows it).
"""

import json
from pathlib import Path
from typing import Callable

import equinox as eqx

from fsq_ref.common.errors import InputError
from fsq_ref.training import checkpoint


def _difference(ours, theirs, path: str = "") -> tuple[str, object, object] | None:
    """The first (dotted path, ours, theirs) at which two JSON-like values differ, or None."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            found = _difference(ours.get(key), theirs.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if ours == theirs else (path, ours, theirs)


def _plain(value):
    """Tuples as lists, as a header read back from JSON has them."""
    return json.loads(json.dumps(value))


def start_from(task, workdir: str | Path, init: Callable[[], object]) -> tuple[object, dict]:
    """The task's initial state (`init()`) with the model and quantizer state of the run in `workdir`, and the record
    of where it started: (state, {"workdir", "step", "sha256"}). Refuses a run of another kind, architecture or
    codebook, before anything is initialised."""
    header = checkpoint.read_run(workdir, task.kind)
    found = _difference(_plain(task.architecture(task.header)), _plain(task.architecture(header["task"])))
    if found:
        path, ours, theirs = found
        raise InputError(f"--init-from {workdir} has {path} {theirs}, this run {ours}: fine-tune with the same "
                         "network, codebook and task as the run it starts from")
    fresh = init()
    loaded = checkpoint.load(Path(workdir) / checkpoint.CHECKPOINT, fresh)[1]
    origin = {"workdir": str(Path(workdir).resolve()), "step": header["step"], "sha256": header["sha256"]}
    return eqx.tree_at(lambda state: state.opt_state, loaded, fresh.opt_state), origin


def check_resume(header: dict, init_from: str | Path | None) -> None:
    """A resumed run continues from its own checkpoint: --init-from, if given, must name the run it started from."""
    origin = header.get("init_from")
    if init_from is not None and (origin is None or str(Path(init_from).resolve()) != origin["workdir"]):
        started = f"started from {origin['workdir']}" if origin else "did not start from another run"
        raise InputError(f"the run being resumed {started}, not --init-from {init_from}: resume without --init-from")


def describe(origin: dict) -> str:
    """'DIR (step N, checkpoint 1234abcd5678)' for `fsq info`."""
    return f"{origin['workdir']} (step {origin['step']}, checkpoint {origin['sha256'][:12]})"
