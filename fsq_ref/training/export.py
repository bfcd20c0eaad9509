"""Exporting a trained model's weights for use without fsq-ref: `fsq export RUN_DIR --format safetensors|npz`.

The file holds every array of the model under a flat name, its path in the model: attribute names and list
positions joined by dots, as PyTorch names parameters. A tokenizer has `autoencoder.encoder.stem.weight`,
`autoencoder.encoder.levels.0.0.conv1.weight` (resolution level 0, residual block 0), ...,
`autoencoder.decoder.head.bias`, and for VQ `quantizer.codebook`; a quantizer with state (VQ-split's EMA dictionary)
adds `quantizer_state.sums` and `quantizer_state.counts` (codeword k = sums[k] / counts[k]). `names` lists them.

Layouts are Equinox's, all float32: Linear weight [out, in], bias [out]; Conv2d weight [out, in, kh, kw] (PyTorch's
layout), bias [out, 1, 1]; GroupNorm and LayerNorm weight and bias [channels]; Embedding weight [count, dim]. The
networks compute channels last at their boundaries and channel-first inside (`nets`).

The run's config travels with the weights as JSON, under the metadata key "fsq_ref" of a safetensors file, or as the
0-d string array "__metadata__" of an .npz (readable with `allow_pickle=False`): {"format", "kind", "made_by",
"step", "checkpoint_sha256", "config" (the checkpoint header's "task": network, quantizer, data), "init_from" when
fine-tuned}. The file is written atomically (a temporary file renamed over the target).
"""

import io
import json
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from fsq_ref.common import files
from fsq_ref.common.errors import InputError
from fsq_ref.training import checkpoint, maskgit_train, tokenizer_train, uvim_train

FORMATS = ("safetensors", "npz")
FORMAT = "fsq-ref export 1"
METADATA_KEY = "fsq_ref"  # safetensors metadata
NPZ_METADATA = "__metadata__"  # .npz entry


def _part(entry) -> str:
    """One step of a pytree path: an attribute name, a dict key or a list position."""
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    raise TypeError(f"unexpected pytree path entry {entry!r}")


def flat_arrays(tree) -> dict[str, np.ndarray]:
    """Every array of `tree` (a model, or a dict of model and quantizer state) by its dotted path."""
    leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(tree, eqx.is_array))[0]
    return {".".join(_part(e) for e in path): np.ascontiguousarray(np.asarray(leaf)) for path, leaf in leaves}


def trained_arrays(workdir: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(flat arrays, checkpoint header) of the model in the run folder `workdir`, of any kind."""
    kind = checkpoint.read_run(workdir).get("kind")
    if kind == "autoencoder":
        model, qstate, header = tokenizer_train.load(workdir)
    elif kind == "maskgit":
        (model, header), qstate = maskgit_train.load(workdir), None
    elif kind == "uvim-oracle":
        model, qstate, _, header = uvim_train.load_oracle(workdir)
    elif kind == "uvim-lm":  # stage II alone; its oracle is a run folder of its own, exported by itself
        model, _, _, _, header = uvim_train.load_lm(workdir)
        qstate = None
    else:
        raise InputError(f"{workdir} holds a run of unknown kind {kind!r}: point at a folder of `fsq train ...`")
    tree = {"model": model, "quantizer_state": qstate}
    arrays = {name.removeprefix("model."): value for name, value in flat_arrays(tree).items()}
    return arrays, header


def metadata(header: dict) -> dict:
    """What the export records beside the weights (the module docstring lists the fields)."""
    return {"format": FORMAT, "kind": header["kind"], "made_by": checkpoint.COMMANDS[header["kind"]],
            "step": header["step"], "checkpoint_sha256": header["sha256"], "config": header["task"],
            **({"init_from": header["init_from"]} if "init_from" in header else {})}


def export(workdir: str | Path, out: str | Path, fmt: str) -> dict[str, np.ndarray]:
    """Write the model of `workdir` to `out` in `fmt` ("safetensors" or "npz"); returns the arrays written."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    arrays, header = trained_arrays(workdir)
    meta = json.dumps(metadata(header))
    if fmt == "safetensors":
        from safetensors.numpy import save

        data = save(arrays, metadata={METADATA_KEY: meta})
    else:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{NPZ_METADATA: np.array(meta)})
        data = buffer.getvalue()
    files.write_atomic(out, data)
    return arrays
