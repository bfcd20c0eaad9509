"""UViM at small scale, the paper's Table 2 layout: per task, stage I (oracle) and stage II with an FSQ guiding code,
stage II with UViM's VQ (codebook splitting) and with VQ without splitting (the paper shows it for depth); the
trivial baseline; the codebook usage of every model's codes on the test split.

Each pipeline is the quick configuration of the CLI: `fsq train uvim-oracle` then `fsq train uvim-lm`, each for a
fixed number of steps of batch 32 (equal budgets across quantizers), then `fsq eval`. Finished stages in WORKDIR are
reused. Prints one Markdown table per task and the seconds each stage took; writes WORKDIR/results.json.

    python benchmarks/uvim.py [--workdir runs/bench-uvim] [--oracle-steps 1000] [--lm-steps 1200]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

QUANTIZERS = ("fsq", "vq-split", "vq")  # the paper's FSQ and UViM's VQ, with and without splitting
QUANTIZER_NAMES = {"fsq": "FSQ [7,5,5,5,5] (4375)", "vq-split": "VQ 4096, splitting", "vq": "VQ 4096, no splitting"}


def fsq_cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "fsq_ref.cli", *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def steps_and_seconds(folder: Path) -> tuple[int, float]:
    records = [json.loads(line) for line in open(folder / "metrics.jsonl")]
    return max(r["step"] for r in records), max(r.get("seconds", 0.0) for r in records)


def pipeline(folder: Path, task: str, quantizer: str, args) -> dict:
    oracle, lm = folder / "oracle", folder / "lm"
    if not (oracle / "checkpoint.fsq").exists():
        fsq_cli("train", "uvim-oracle", "--task", task, "--data", args.data, "--quantizer", quantizer, "--steps",
                args.oracle_steps, "--eval-every", args.oracle_steps, "--workdir", oracle)
    if not (lm / "checkpoint.fsq").exists():
        fsq_cli("train", "uvim-lm", "--oracle", oracle, "--steps", args.lm_steps, "--eval-every", args.lm_steps,
                "--workdir", lm)
    if not (lm / "eval-test.json").exists():
        fsq_cli("eval", "--workdir", lm, "--task", task)
    rows = json.loads((lm / "eval-test.json").read_text())
    return {"rows": rows, "oracle": steps_and_seconds(oracle), "lm": steps_and_seconds(lm)}


def table(task: str, results: dict) -> str:
    first = next(iter(results.values()))["rows"]
    metrics = [k for k in first["stage II"] if k not in ("usage", "perplexity", "entropy_bits", "token_accuracy")]
    head = "| model | " + " | ".join(metrics) + " | codebook usage | stage-II token accuracy | steps (seconds) |"
    lines = [f"### {task}", "", head, "|---|" + "---:|" * (len(metrics) + 3)]
    cells = lambda r: " | ".join(f"{r[m]:.4g}" for m in metrics)
    lines.append(f"| trivial baseline | {cells(first['trivial baseline'])} | - | - | - |")
    for quantizer, result in results.items():
        name, rows = QUANTIZER_NAMES[quantizer], result["rows"]
        lines.append(f"| oracle (stage I), {name} | {cells(rows['oracle (stage I)'])} | "
                     f"{rows['oracle (stage I)']['usage']:.1%} | - | {result['oracle'][0]} ({result['oracle'][1]:.0f}) |")
        lines.append(f"| stage II, {name} | {cells(rows['stage II'])} | {rows['stage II']['usage']:.1%} | "
                     f"{rows['stage II']['token_accuracy']:.1%} | {result['lm'][0]} ({result['lm'][1]:.0f}) |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/bench-uvim")
    parser.add_argument("--data", default="scenes")
    parser.add_argument("--oracle-steps", type=int, default=1000)
    parser.add_argument("--lm-steps", type=int, default=1200)
    parser.add_argument("--tasks", default="depth,colorization,panoptic")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    everything = {}
    for task in args.tasks.split(","):
        everything[task] = {q: pipeline(workdir / f"{task}-{q}", task, q, args) for q in QUANTIZERS}
        print(table(task, everything[task]) + "\n", flush=True)
    (workdir / "results.json").write_text(json.dumps(everything, indent=2))
    print(f"command: python benchmarks/uvim.py --data {args.data} --oracle-steps {args.oracle_steps} "
          f"--lm-steps {args.lm_steps}")


if __name__ == "__main__":
    main()
