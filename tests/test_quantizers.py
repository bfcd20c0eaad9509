"""One contract for both quantizers: whatever a model calls, FSQ and VQ answer in the same shape."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from fsq_ref import fsq, vq
from fsq_ref.layers import FSQBottleneck, ResidualFSQ


def make(kind, key):
    if kind == "fsq":
        return fsq.FSQ((8, 5, 5, 5))
    if kind == "vq":
        return vq.VQ(1000, 4, entropy_weight=0.1, key=key)
    if kind == "vq-ema-split":
        return vq.VQ(1000, 4, ema_decay=0.995, split_threshold=0.1, l2_normalize=True, key=key)
    if kind == "fsq-bottleneck":
        return FSQBottleneck((8, 5, 5, 5), 32, key=key)
    if kind == "residual-fsq":
        return ResidualFSQ((8, 5, 5, 5), 3, key=key)
    raise AssertionError(kind)


# Where a quantizer gives several indices per position (codebooks, residual stages), they are a last axis.
EXTRA_AXES = {"fsq-bottleneck": (1,), "residual-fsq": (3,)}


@pytest.mark.parametrize("kind", ["fsq", "vq", "vq-ema-split", "fsq-bottleneck", "residual-fsq"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_contract(kind, dtype, key):
    q = make(kind, key)
    state = q.init_state(key=key) if isinstance(q, vq.VQ) else q.init_state()
    z = jr.normal(jr.key(1), (2, 7, 7, q.dim)).astype(dtype)

    def loss(z, state):
        out, state = q(z, state, key=jr.key(2), train=True)
        return jnp.mean(out.codes.astype(jnp.float32) ** 2) + out.loss, (out, state)

    (value, (out, new_state)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(z, state)
    assert q.codebook_size == 1000
    assert out.codes.shape == z.shape and out.codes.dtype == dtype
    assert out.indices.shape == (2, 7, 7) + EXTRA_AXES.get(kind, ()) and out.indices.dtype == jnp.int32
    assert jnp.all((out.indices >= 0) & (out.indices < q.codebook_size))
    assert out.loss.shape == () and jnp.isfinite(value)
    assert all(v.shape == () for v in out.metrics.values()) and {"usage", "perplexity"} <= set(out.metrics)
    assert 0 < float(out.metrics["usage"]) <= 1 and 1 <= float(out.metrics["perplexity"]) <= q.codebook_size
    assert grad.shape == z.shape and jnp.all(jnp.isfinite(grad.astype(jnp.float32)))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # Looking indices up gives back the forward codes (up to the dtype of the codes).
    lookup = q.indices_to_codes(out.indices, state)
    np.testing.assert_allclose(lookup.astype(dtype).astype(jnp.float32), out.codes.astype(jnp.float32), atol=1e-2)
