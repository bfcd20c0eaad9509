"""Tokenizer training under a fixed time budget: FSQ against VQ, same network, same data, same seconds.

Runs `fsq train autoencoder --time-limit T` once per quantizer, each in its own process (so peak memory is that
run's alone), one after the other, and prints a Markdown table: test PSNR and codebook usage from the final
evaluation on the whole test split, steps done, training throughput (images/s over the whole run, compilation
included, and in steady state between the first and last log lines) and peak resident memory.

    python benchmarks/tokenizer.py [--time-limit 100] [--data fashion-mnist] [--workdir runs/bench-tokenizer]
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import jax

RUNS = {
    "FSQ [8,6,5] (240 codes)": ["--quantizer", "fsq", "--levels", "8,6,5"],
    "VQ, 256 codes": ["--quantizer", "vq", "--codebook-size", "256"],
}


def run(name: str, options: list[str], args) -> dict:
    workdir = Path(args.workdir) / name.split(" ")[0].lower()
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "fsq_ref.cli", "train", "autoencoder", "--data", args.data, *options,
           "--time-limit", str(args.time_limit), "--batch-size", str(args.batch_size), "--workdir", str(workdir)]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage (ru_maxrss in KiB on Linux)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed")
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = [r for r in records if r["split"] == "train"]
    final = records[-1]
    first, last = train[0], train[-1]
    steady = (last["step"] - first["step"]) * args.batch_size / (last["seconds"] - first["seconds"])
    return {
        "psnr": final["psnr"], "usage": final["usage"], "steps": final["step"],
        "images_per_s": final["step"] * args.batch_size / last["seconds"], "steady_images_per_s": steady,
        "peak_mib": usage.ru_maxrss / 1024,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-limit", type=float, default=100)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", default="runs/bench-tokenizer")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; python {platform.python_version()}; "
          f"data {args.data}; --time-limit {args.time_limit:g} --batch-size {args.batch_size}; default preset")
    print()
    print("| quantizer | test PSNR (dB) | codebook usage | steps | images/s (all) | images/s (steady) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, options in RUNS.items():
        r = run(name, options, args)
        print(f"| {name} | {r['psnr']:.2f} | {r['usage']:.1%} | {r['steps']} | {r['images_per_s']:.0f} | "
              f"{r['steady_images_per_s']:.0f} | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
