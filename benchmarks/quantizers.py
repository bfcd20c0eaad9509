"""Throughput of the quantizers: FSQ quantize + indices against VQ nearest-neighbour lookup.

For each paper codebook size (2^8 ... 2^16) it times, on whatever device JAX sees, one jitted call over N latent
vectors (default one million) with D = len(levels_for(K)) channels for both quantizers, so both see the same
bottleneck. VQ's distances are computed in chunks (an [N, K] matrix would not fit); FSQ needs no table at all.
FSQ's share of the same-bytes floor is against a pass timed beside it that reads the same latents and writes as many
codes and int32 indices with trivial arithmetic (`bench.same_bytes_fn`). Compilation is excluded; the figure is the
median of several repeats (VQ's stop after a minute of timing).

    python benchmarks/quantizers.py [--vectors 1000000] [--repeats 5] [--sizes 256,1024,4096,16384,65536]
"""

import argparse
import platform

import jax
import jax.numpy as jnp
import jax.random as jr

from fsq_ref import fsq
from fsq_ref.experiments.bench import fsq_fn, median_seconds, same_bytes_fn, vq_fn
from fsq_ref.training import allocator

SIZES = (2**8, 2**10, 2**12, 2**14, 2**16)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=4000, help="VQ vectors per distance block (divides --vectors)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="target codebook sizes")
    args = parser.parse_args()
    allocator.keep_freed_memory()  # before JAX starts its CPU backend

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s); jax {jax.__version__}; "
          f"python {platform.python_version()}; {args.vectors:,} vectors, median of {args.repeats}", flush=True)
    print()
    print("| target K | levels | actual K | D | FSQ M vectors/s | FSQ share of the same-bytes floor | "
          "VQ M vectors/s (calls timed) | VQ/FSQ time |")
    print("|---|---|---|---|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        levels = fsq.levels_for(size)
        K, D = fsq.codebook_size(levels), len(levels)
        z = jr.normal(jr.key(0), (args.vectors, D), jnp.float32)
        codebook = jr.normal(jr.key(1), (K, D), jnp.float32)
        t_floor, _ = median_seconds(same_bytes_fn(), z, repeats=args.repeats)
        t_fsq, _ = median_seconds(fsq_fn(levels), z, repeats=args.repeats)
        t_vq, n_vq = median_seconds(vq_fn(args.chunk), z, codebook, repeats=args.repeats)
        print(f"| 2^{size.bit_length() - 1} | {list(levels)} | {K} | {D} | {args.vectors / t_fsq / 1e6:.1f} | "
              f"{t_floor / t_fsq:.0%} | {args.vectors / t_vq / 1e6:.3f} ({n_vq}) | {t_vq / t_fsq:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
