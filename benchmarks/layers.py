"""The FSQ layers against hand-written Equinox models that do the same work inline: forward + backward time.

`FSQBottleneck((8, 5, 5, 5), 512)` against a model with the same two projections and the paper's quantizer written
out (`round_ste(bound(z)) / half_width`, indices by mixed radix); `ResidualFSQ((8, 5, 5, 5), 4, 512)` against the
same projections around a plain loop of four rounding stages. Each pair is timed side by side in one process
(jitted `value_and_grad` of a mean squared output, over the parameters and the input; median of repeats after a
compiling call), and the table gives the layer's time over the hand-written one's.

    python benchmarks/layers.py [--tokens 16384] [--repeats 20]
"""

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from fsq_ref import FSQBottleneck, ResidualFSQ, fsq
from fsq_ref.layers import residual_ratios

LEVELS = (8, 5, 5, 5)
DIM = 512


class HandBottleneck(eqx.Module):
    down: eqx.nn.Linear
    up: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jr.split(key)
        self.down, self.up = eqx.nn.Linear(DIM, len(LEVELS), key=k1), eqx.nn.Linear(len(LEVELS), DIM, key=k2)

    def __call__(self, x):
        z = x @ self.down.weight.T + self.down.bias
        codes = fsq.quantize_reference(z, LEVELS)
        indices = fsq.codes_to_indices(jax.lax.stop_gradient(codes), LEVELS)
        return codes @ self.up.weight.T + self.up.bias, indices


class HandResidual(HandBottleneck):
    def __call__(self, x):
        z = x @ self.down.weight.T + self.down.bias
        half = fsq.half_widths(LEVELS)
        target = fsq.bound(z, LEVELS) / half
        total, residual, digits = 0.0, target, []
        for scale in residual_ratios(LEVELS) ** np.arange(4, dtype=np.float32)[:, None]:
            digit = jnp.clip(jnp.round(residual / scale * half) + half, 0, np.asarray(LEVELS, np.float32) - 1)
            stage = (digit - half) / half * scale
            total, residual = total + stage, residual - stage
            digits.append(digit.astype(jnp.int32))
        indices = jnp.sum(jnp.stack(digits, -2) * fsq.mixed_radix(LEVELS), -1)
        codes = target + jax.lax.stop_gradient(total - target)
        return codes @ self.up.weight.T + self.up.bias, indices


def step_time(call, model, x, repeats):
    def loss(model, x):
        out, _ = call(model, x)
        return jnp.mean(out.astype(jnp.float32) ** 2)

    fn = eqx.filter_jit(eqx.filter_value_and_grad(lambda m, x: loss(m, x)))
    jax.block_until_ready(fn(model, x))  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(model, x))
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    x = jr.normal(jr.key(0), (args.tokens, DIM))
    key = jr.key(1)
    pairs = {
        "FSQBottleneck": (FSQBottleneck(LEVELS, DIM, key=key), lambda m, x: (m(x)[0].codes, None),
                          HandBottleneck(key), lambda m, x: m(x)),
        "ResidualFSQ, 4 stages": (ResidualFSQ(LEVELS, 4, DIM, key=key), lambda m, x: (m(x)[0].codes, None),
                                  HandResidual(key), lambda m, x: m(x)),
    }
    print(f"| layer ({args.tokens} x {DIM}, [8,5,5,5]) | layer, ms | hand-written, ms | ratio |")
    print("|---|---:|---:|---:|")
    for name, (layer, call, hand, hand_call) in pairs.items():
        # Interleaved, so that a busy moment of the machine lands on both.
        ours, theirs = [], []
        for _ in range(3):
            ours += step_time(call, layer, x, args.repeats)
            theirs += step_time(hand_call, hand, x, args.repeats)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"| {name} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
