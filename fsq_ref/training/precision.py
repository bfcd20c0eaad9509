"""Mixed precision: float32 parameters and optimiser state, bfloat16 arithmetic in the training step.

Every trainer takes `--dtype` (`LoopConfig.dtype`), the compute dtype of its training step:

- The parameters and Adam's moments stay float32. An update lr * m / sqrt(v) is often smaller than bf16's resolution
  (8 bits of mantissa) relative to the weight it changes, and would round away.
- Inside the loss function the step casts the float32 parameters and the float inputs to the compute dtype (`cast`).
  The cast is part of the differentiated function, so the gradients come back to the parameters in float32.
- What needs float32's resolution computes in it whatever it is given: the quantizers (bf16 cannot place 1000
  codes apart, docs/choices.md; `fsq.FSQ` and `vq.VQ` upcast), the normalisation statistics (equinox's LayerNorm
  and GroupNorm upcast), and the losses: the step casts outputs and logits to float32 before MSE, softmax or
  cross-entropy.

bf16 has float32's exponent range, so unlike float16 it needs no loss scaling. Evaluation and inference run in
float32.

References: Micikevicius et al., "Mixed Precision Training", ICLR 2018; Kalamkar et al., "A Study of BFLOAT16 for
Deep Learning Training", 2019.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from fsq_ref.common.errors import InputError

DTYPES = ("float32", "bfloat16")


def compute_dtype(name: str) -> jnp.dtype:
    """The dtype named `name`, one of `DTYPES`."""
    if name not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return jnp.dtype(name)


def cast(tree, dtype):
    """`tree` with every floating array leaf in `dtype`; integer, boolean and key arrays and non-arrays unchanged.

    A no-op for leaves already in `dtype`: the float32 step computes exactly what it did without this call.
    """
    return jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


def cast_network(model, dtype):
    """`cast` for a model with a `quantizer` field: everything but the quantizer, whose codebook (VQ) stays float32
    so that nearest-neighbour distances are taken to the exact codewords."""
    return eqx.tree_at(lambda m: m.quantizer, cast(model, dtype), model.quantizer)
