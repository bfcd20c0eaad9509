"""MaskGIT's training step taken apart: the forward pass (masked-token loss), forward + backward (its value and
gradient) and the whole step (with the optimiser update), each jitted and timed alone, median of 15 calls after a
warm-up. The backward pass's cost is (forward + backward - forward), reported as a multiple of the forward (about 2
when the backward runs as fast as the forward's matrix products allow).

    python benchmarks/backward.py [--batch-size 64]
"""

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from fsq_ref.evaluation import flops
from fsq_ref.training import allocator, maskgit_train, presets


def median_ms(fn, *args, repeats: int = 15) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    batch = parser.parse_args().batch_size
    allocator.keep_freed_memory()  # as `fsq` does, before JAX starts its CPU backend
    config = presets.maskgit("fashion-mnist", codebook_size=1000, num_classes=10, grid=(7, 7))
    state = maskgit_train.init_train_state(config, maskgit_train.WEIGHT_DECAY, key=jr.key(0))
    tokens = jr.randint(jr.key(1), (batch, 7, 7), 0, config.codebook_size)
    labels = jr.randint(jr.key(2), (batch,), 0, config.num_classes)

    def loss(model):
        return maskgit_train._masked_prediction(model, tokens.reshape(batch, -1), labels, jr.split(jr.key(3), batch))[0]

    forward = median_ms(eqx.filter_jit(loss), state.model)
    both = median_ms(eqx.filter_jit(eqx.filter_value_and_grad(loss)), state.model)
    step_fn = maskgit_train.make_step(maskgit_train.WEIGHT_DECAY)
    holder = [state]

    def step():  # the step donates its state: feed each call the state the previous one returned
        holder[0] = step_fn(holder[0], (tokens, labels), jr.key(4), jnp.float32(1e-3))[0]
        return holder[0]

    whole = median_ms(step)
    gflop = flops.count(loss, state.model) / 1e9
    print(f"MaskGIT fashion-mnist preset, batch {batch}: forward {forward:.1f} ms ({gflop:.2f} GFLOP), "
          f"forward + backward {both:.1f} ms, backward {(both - forward) / forward:.2f}x the forward, "
          f"whole step {whole:.1f} ms")


if __name__ == "__main__":
    main()
