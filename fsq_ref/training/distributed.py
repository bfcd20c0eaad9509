"""Training past one machine: start-up of a multi-process JAX program, and what the training loop needs from it.

JAX runs one process per host (a GPU node, a TPU VM, or several processes on one machine); each sees its local
devices, and `jax.devices()` lists the devices of all of them. `initialize` joins a process to the others through a
coordinator, either from explicit settings (`fsq --coordinator-address HOST:PORT --num-processes N --process-id I
...`, or the environment variables FSQ_COORDINATOR_ADDRESS, FSQ_NUM_PROCESSES, FSQ_PROCESS_ID) or, with
`--distributed auto`, from the environment a cluster manager provides (SLURM, Open MPI, Cloud TPU: JAX detects it).

In the training loop (`train.run`) every process computes the same global batch indices and loads only its own
rows (`datasets.local_rows`), assembled into one global batch split across the devices (`global_batch`); the state
is replicated (`replicate`). Process 0 alone writes checkpoints, logs and pictures; the
others only train. Decisions that must be unanimous (stop at a time limit or after Ctrl-C, the length of a
schedule sized from a time budget) are process 0's, broadcast to all.
"""

import os

import equinox as eqx
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fsq_ref.common.errors import InputError


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> None:
    """Join this process to a multi-process run; without settings (and not `auto`), do nothing."""
    coordinator_address = coordinator_address or os.environ.get("FSQ_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else _env_int("FSQ_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("FSQ_PROCESS_ID")
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if auto:
        if any(given):
            raise InputError("--distributed auto takes its settings from the cluster: drop --coordinator-address, "
                             "--num-processes and --process-id")
        _use_cpu_collectives()
        jax.distributed.initialize()
    elif any(given):
        if not all(given):
            raise InputError("a multi-process run needs all of --coordinator-address, --num-processes and "
                             "--process-id (or their FSQ_* environment variables)")
        if not 0 <= process_id < num_processes:
            raise InputError(f"--process-id must be in 0..{num_processes - 1}; got {process_id}")
        _use_cpu_collectives()
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise InputError(f"${name} must be a non-negative integer; got {value!r}")
    return int(value)


def _use_cpu_collectives() -> None:
    # CPU devices of different processes talk through Gloo; GPUs and TPUs bring their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def is_main() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def local(tree):
    """A copy of a replicated pytree held by this process alone (host numpy for every array): what checkpoints and
    evaluation read, so that neither needs the other processes."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def agree(value):
    """Process 0's `value` (a number or bool), on every process."""
    if jax.process_count() == 1:
        return value
    return type(value)(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def global_batch(local_batch, mesh: Mesh):
    """The global batch, split along the mesh's "data" axis, from this process's rows of it (`datasets.local_rows`)."""
    sharding = NamedSharding(mesh, P("data"))
    count = jax.process_count()
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * count, *x.shape[1:])),
        local_batch)


def replicate(state, mesh: Mesh):
    """Every array of `state` on every device of the mesh. Only the arrays: Python leaves (a Dropout's rate, say)
    must stay Python values."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        put = lambda x: jax.device_put(x, sharding)
    else:  # every process holds the same full value (same seed, or the same checkpoint)
        put = lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return jax.tree.map(lambda x: put(x) if eqx.is_array(x) else x, state)


def on_host(state):
    """The state as evaluation may read it: as is on one host; with several, this process's own copy."""
    return state if jax.process_count() == 1 else local(state)
