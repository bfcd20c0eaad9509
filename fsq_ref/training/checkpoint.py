"""Checkpoints: one file, a JSON header followed by the arrays, written atomically; and run folders that hold one.

Layout: the magic line `fsq-ref checkpoint 1\\n`, one line of JSON (the header: what kind of model, its config, the
training step, the SHA-256 of the payload, anything else the caller records), then the payload, the bytes of
`equinox.tree_serialise_leaves` of a pytree (model, optimiser state, quantizer state). No pickle: loading builds a
pytree of the right structure from the config (a "like" tree) and fills its leaves.

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over the old one, so a
crash or Ctrl-C at any moment leaves either the old or the new checkpoint, never half of one. The checksum catches a
file that was truncated or damaged afterwards.

A run folder (`fsq train ...`'s --workdir) holds its checkpoint as `CHECKPOINT`; the header's "kind" says which
trainer wrote it. `read_run` and `load_run` open a run folder of any kind and refuse one of another kind in one line.
"""

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import equinox as eqx
import jax
import jax.random as jr

from fsq_ref.common.errors import InputError
from fsq_ref.common.files import write_atomic

MAGIC = b"fsq-ref checkpoint 1\n"
CHECKPOINT = "checkpoint.fsq"  # the checkpoint's name in a run folder
# The kinds of run folder, and the command that makes each.
COMMANDS = {"autoencoder": "fsq train autoencoder", "maskgit": "fsq train maskgit",
            "uvim-oracle": "fsq train uvim-oracle", "uvim-lm": "fsq train uvim-lm"}


def save(path: str | os.PathLike, header: dict, tree) -> None:
    """Save `tree` (any pytree of arrays and static leaves) with a JSON-serialisable `header`."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    payload = buffer.getvalue()
    header = {**header, "sha256": hashlib.sha256(payload).hexdigest()}
    write_atomic(path, MAGIC + json.dumps(header).encode() + b"\n" + payload)


def read_header(path: str | os.PathLike) -> dict:
    """The header of the checkpoint at `path`, without loading (or checking) its arrays."""
    return _split(path, check=False)[0]


def load(path: str | os.PathLike, like) -> tuple[dict, object]:
    """Load a checkpoint into the structure of `like`: returns (header, tree)."""
    header, payload = _split(path, check=True)
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as e:  # the arrays do not fit the structure the config describes
        raise InputError(f"checkpoint {path} does not match the model its header describes ({e}); "
                         "it was written by another version of fsq-ref: train again") from None
    # Each array in a buffer of its own: read back, a CPU array may share the memory of the NumPy array it was loaded
    # from, and a training step donates its state; jaxlib 0.4.30 to 0.4.33 then corrupt memory (segfault) when that
    # step's executable comes from the persistent compilation cache (resuming or fine-tuning after an earlier run).
    return header, jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def _split(path, *, check: bool) -> tuple[dict, bytes]:
    """(header, payload) of a checkpoint; without `check`, only the header is read (the payload, b"", stays on disk:
    commands read a run folder's header several times, and a payload may be gigabytes)."""
    try:
        with open(path, "rb") as f:
            magic, line = f.read(len(MAGIC)), f.readline()
            payload = f.read() if check else b""
    except FileNotFoundError:
        raise InputError(f"no checkpoint at {path}: train a model first, or point --workdir at a training "
                         "run") from None
    except OSError as e:
        raise InputError(f"cannot read checkpoint {path} ({e})") from None
    if magic != MAGIC:
        raise InputError(f"{path} is not an fsq-ref checkpoint (wrong first line): point at a checkpoint.fsq file")
    try:
        header = json.loads(line) if line.endswith(b"\n") else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise InputError(f"checkpoint {path} has a damaged header: it is corrupt; train again or restore a copy")
    if check and hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise InputError(f"checkpoint {path} is truncated or corrupt (checksum mismatch): train again or restore a "
                         "copy")
    return header, payload


def read_run(workdir: str | os.PathLike, kind: str | None = None) -> dict:
    """The checkpoint header of the run folder `workdir`, refusing a run of another `kind` (when given)."""
    path = Path(workdir) / CHECKPOINT
    header = read_header(path)
    if kind is not None and header.get("kind") != kind:
        raise InputError(f"{workdir} holds a run of kind '{header.get('kind')}', not '{kind}': point at the folder "
                         f"of `{COMMANDS.get(kind, kind)}`")
    return header


def progress(workdir: str | os.PathLike) -> tuple[int, int] | None:
    """(steps done, steps planned) of the run folder `workdir`; None when it holds no checkpoint yet. A run stopped
    early (Ctrl-C, a killed job, a time limit) has done fewer steps than planned."""
    if not (Path(workdir) / CHECKPOINT).exists():
        return None
    header = read_run(workdir)
    return header["step"], header["total_steps"]


def load_run(workdir: str | os.PathLike, kind: str, init: Callable[[dict, object], object]) -> tuple[dict, object]:
    """(header, state) of the run folder `workdir` of `kind`; `init(header, key)` builds a state of the saved
    structure (it is only traced, with `equinox.filter_eval_shape`: no initialisation is computed)."""
    header = read_run(workdir, kind)
    like = eqx.filter_eval_shape(init, header, jr.key(0))
    return header, load(Path(workdir) / CHECKPOINT, like)[1]
