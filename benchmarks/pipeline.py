"""The paper's comparison at Fashion-MNIST scale: the whole MaskGIT pipeline on FSQ tokens and on VQ tokens.

For each quantizer, with the same budgets as the main job (`scripts/demo.sh`): a tokenizer trained for
--tokenizer-seconds, both splits encoded, MaskGIT trained for --maskgit-seconds at --maskgit-lr, 100 images per
class generated (12 steps, guidance --guidance) and scored with `fsq eval-samples`. Stages whose outputs exist in
WORKDIR/<name>/ are reused, so a finished main job can stand in for the FSQ row (link runs/demo to WORKDIR/fsq).
Then generation throughput is timed in this process: one compiled call generating a batch of 256 token grids (12
steps), decoding included, median of 5 after a warm-up.

    python benchmarks/pipeline.py [--workdir runs/bench-pipeline]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
from stages import fsq_cli

from fsq_ref import maskgit, tokenizer
from fsq_ref.training import allocator, maskgit_train, tokenizer_train

QUANTIZERS = {
    "fsq": ("FSQ [8,6,5] (240 codes)", ["--quantizer", "fsq", "--levels", "8,6,5"]),
    "vq": ("VQ, 256 codes", ["--quantizer", "vq", "--codebook-size", "256"]),
}


def pipeline(folder: Path, options: list[str], args) -> dict:
    if not (folder / "tokenizer" / "checkpoint.fsq").exists():
        fsq_cli("train", "autoencoder", "--data", "fashion-mnist", *options, "--time-limit", args.tokenizer_seconds,
                "--workdir", folder / "tokenizer")
    for split in ("train", "test"):
        if not (folder / f"tokens-{split}.npz").exists():
            fsq_cli("encode", "--workdir", folder / "tokenizer", "--split", split, "--out", folder / f"tokens-{split}.npz")
    if not (folder / "maskgit" / "checkpoint.fsq").exists():
        fsq_cli("train", "maskgit", "--tokens", folder / "tokens-train.npz", "--eval-tokens",
                folder / "tokens-test.npz", "--time-limit", args.maskgit_seconds, "--learning-rate", args.maskgit_lr,
                "--workdir", folder / "maskgit")
    if not (folder / "samples.quality.json").exists():
        fsq_cli("generate", "--workdir", folder / "maskgit", "--autoencoder", folder / "tokenizer", "--num-per-class",
                100, "--guidance", args.guidance, "--out", folder / "samples.npz")
        fsq_cli("eval-samples", "--samples", folder / "samples.npz", "--autoencoder", folder / "tokenizer")
    records = [json.loads(line) for line in open(folder / "tokenizer" / "metrics.jsonl")]
    maskgit_log = [json.loads(line) for line in open(folder / "maskgit" / "metrics.jsonl")]
    return {"tokenizer": records[-1], "maskgit": maskgit_log[-1],
            "quality": json.loads((folder / "samples.quality.json").read_text())}


def generation_speed(folder: Path, batch: int = 256, repeats: int = 5) -> float:
    """Images per second: MaskGIT sampling (12 steps) plus decoding, one batch, median after a warm-up."""
    model, _ = maskgit_train.load(folder / "maskgit")
    ae, qstate, _ = tokenizer_train.load(folder / "tokenizer")
    labels = np.arange(batch, dtype=np.int32) % model.config.num_classes

    def once(i):
        indices = maskgit.sample(model, labels, jr.key(i), batch_size=batch, steps=12)
        return jax.block_until_ready(tokenizer.decode(ae, qstate, indices))

    once(0)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        once(i + 1)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/bench-pipeline")
    parser.add_argument("--tokenizer-seconds", type=float, default=100)
    parser.add_argument("--maskgit-seconds", type=float, default=600)
    parser.add_argument("--maskgit-lr", type=float, default=2e-3)
    parser.add_argument("--guidance", type=float, default=1.0)
    args = parser.parse_args()
    allocator.keep_freed_memory()  # before JAX starts its CPU backend
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; tokenizer {args.tokenizer_seconds:g} s, "
          f"MaskGIT {args.maskgit_seconds:g} s at learning rate {args.maskgit_lr:g}, guidance {args.guidance:g}, "
          "100 samples per class")
    print()
    print("| tokens | tokenizer PSNR | usage | MaskGIT steps | masked-token acc | sample FD | recon FD | FD ratio | "
          "precision | recall | class accuracy (samples / recon) | images/s (batch 256) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, (name, options) in QUANTIZERS.items():
        folder = Path(args.workdir) / key
        folder.mkdir(parents=True, exist_ok=True)
        r = pipeline(folder, options, args)
        s, rec = r["quality"]["samples"], r["quality"]["reconstructions"]
        speed = generation_speed(folder)
        print(f"| {name} | {r['tokenizer']['psnr']:.2f} dB | {r['tokenizer']['usage']:.1%} | {r['maskgit']['step']} | "
              f"{r['maskgit']['accuracy']:.3f} | {s['frechet_distance']:.1f} | {rec['frechet_distance']:.1f} | "
              f"{s['frechet_distance'] / rec['frechet_distance']:.1f}x | {s['precision']:.3f} | {s['recall']:.3f} | "
              f"{s['label_accuracy']:.1%} / {rec['label_accuracy']:.1%} | {speed:.0f} |", flush=True)


if __name__ == "__main__":
    main()
