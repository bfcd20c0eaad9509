"""UViM stage II's schedule chosen on held-out data: how few steps reach the converged held-out loss.

Trains one stage II per variant (`name=STEPS,PEAK_LR`) on one oracle's codes of the training scenes minus the last
--held-out of them, which are the validation split (never trained on; the test split is not touched). Every
--eval-every steps it records the validation split's held-out loss (teacher-forced cross-entropy on the oracle's
codes, nats per token) and the task's metric from greedy decoding; at the end it prints, per variant, the curve, the
training seconds (compilation included) and the steps per second.

    python benchmarks/stage2_schedule.py --oracle runs/bench-uvim/depth-fsq/oracle \\
        --variant base=6000,1e-3 --variant fast=2000,3e-3

A variant's folder (under --workdir) is reused once finished.
"""

import argparse
import json
from pathlib import Path

from fsq_ref.data import dense
from fsq_ref.evaluation import runs
from fsq_ref.training import checkpoint, presets, train, uvim_train


def split(ds: dense.DenseData, held_out: int) -> tuple[dense.DenseData, dense.DenseData]:
    """(all but the last `held_out` examples, the last `held_out`)."""
    return ds.map(lambda array: array[:-held_out]), ds.map(lambda array: array[-held_out:])


def curve(folder: Path) -> list[dict]:
    """The run's evaluations, each with the training seconds of the last training record before it."""
    records, seconds = [], 0.0
    with open(folder / "metrics.jsonl") as lines:
        for record in map(json.loads, lines):
            seconds = record.get("seconds", seconds)
            if record["split"] == "eval":
                records.append({**record, "seconds": seconds})
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oracle", required=True, help="a finished `fsq train uvim-oracle` folder")
    parser.add_argument("--variant", action="append", required=True, help="NAME=STEPS,PEAK_LR")
    parser.add_argument("--held-out", type=int, default=512, help="training scenes kept out as the validation split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--mirror", action="store_true",
                        help="also train on the mirror images (`fsq train uvim-lm --mirror`)")
    parser.add_argument("--workdir", default="runs/stage2-schedule")
    args = parser.parse_args()

    header = checkpoint.read_run(args.oracle, "uvim-oracle")
    recorded = runs.recorded_data(header)
    data_spec, data_dir = runs.data_for(header, None, None)
    full = dense.load(data_spec, "train", data_dir=data_dir, size=header["task"]["oracle"]["image_size"],
                      seed=recorded["seed"])
    train_ds, validation = split(full, args.held_out)
    rows = []
    for spec in args.variant:
        name, budget = spec.split("=")
        steps, lr = budget.split(",")
        folder = Path(args.workdir) / name
        loop = train.LoopConfig(steps=int(steps), batch_size=args.batch_size, learning_rate=float(lr),
                                eval_every=args.eval_every, checkpoint_every=0)
        if not (folder / "metrics.jsonl").exists() or curve(folder)[-1]["step"] != loop.steps:
            task = uvim_train.LMTask(presets.pick(presets.LM, args.preset), args.oracle, train_ds, validation,
                                     batch_size=args.batch_size, seed=0, weight_decay=loop.weight_decay,
                                     data_header={"spec": data_spec, "data_dir": data_dir, "seed": recorded["seed"],
                                                  "held_out": args.held_out}, mirror=args.mirror)
            train.run(task, folder, loop)
        records = curve(folder)
        metric = next(k for k in records[-1] if k not in ("step", "split", "seconds", "heldout_loss",
                                                           "token_accuracy", "usage", "perplexity"))
        seconds = records[-1]["seconds"]
        rows.append(f"| {name} | {steps} | {lr} | {seconds:.0f} | {int(steps) / seconds:.2f} | "
                    + ", ".join(f"{r['step']}: {r['heldout_loss']:.3f}" for r in records)
                    + f" | {records[-1][metric]:.4g} ({metric}) |")
    print("| variant | steps | peak lr | seconds | steps/s | validation held-out loss by step | final metric |")
    print("|---|---:|---:|---:|---:|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
