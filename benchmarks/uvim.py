"""UViM at small scale, laid out as the paper's Table 2: per task, stage I (the oracle) and stage II with an FSQ
guiding code, with UViM's VQ (EMA dictionary with codebook splitting) and with the same VQ without splitting; stage II
trained with `--seeds` seeds on each of `--oracle-seeds` oracles (training seeds on the same scenes; default 2 and
2) and reported as mean +- standard deviation (sample, over all its stage IIs, so that it covers the oracle's
training run as well as stage II's); the codebook usage of the oracle's and of stage II's codes on the test
split; what the oracle's decoder makes of the image alone (every code token dropped, as code dropout drops them: the
part of a score that needs no code); the trivial baseline. `--context-ablation` adds the paper's panoptic ablation:
FSQ and VQ-split oracles that never see the image (`--no-context`), each with its stage II.

Each pipeline runs the CLI: `fsq train uvim-oracle`, then `fsq train uvim-lm --seed S` for each seed (its final
evaluation is the stage-II row) beside `fsq eval` of the oracle (the oracle's and the trivial baseline's rows), each
for a fixed number of steps of batch 32 (equal budgets across bottlenecks); `--jobs` stage IIs and `--oracle-jobs`
oracles run side by side (default 1 and 2). Finished stages in WORKDIR are reused. Prints one Markdown table
per task and writes WORKDIR/results.json. The defaults: the `quick-8x8` oracle (a 64-token code), FSQ [8,5,5,5]
(1000 codes) against VQs of 1024, 600 oracle and 1500 stage-II steps; on the 8192 training scenes a 1000-code FSQ
oracle uses over 95% of its codes, where a 4375-code one did not (docs/uvim.md). Stage II's peak learning rate is
big_vision's 1e-3; 3e-3 gave lower RMSE on depth for every bottleneck, traded PSNR for colour FD on colorization and
raised only FSQ's PQ on panoptic (docs/uvim.md).

    python benchmarks/uvim.py [--quick] [--seeds 2] [--oracle-seeds 2] [--jobs 1] [--oracle-jobs 2]
                              [--context-ablation] [--lm-learning-rate 1e-3] [--tasks depth,colorization,panoptic]
"""

import argparse
import json
import math
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Callable, TypeVar

from stages import fsq_cli, mean_std, seconds, train

from fsq_ref import fsq
from fsq_ref.cli.uvim_commands import UVIM_QUANTIZERS
from fsq_ref.common.errors import InputError
from fsq_ref.evaluation import runs

QUANTIZERS = ("fsq", "vq-split", "vq-nosplit")  # the paper's Table 2 columns; "vq" (gradient-trained) may be added
T = TypeVar("T")
NOT_TASK_METRICS = ("usage", "perplexity", "entropy_bits", "token_accuracy", "heldout_loss",
                    "total_correlation_bits", "independent_usage")


def names(codebook_size: int) -> dict[str, str]:
    """Each bottleneck's row name at a target codebook size (FSQ: the paper's levels for it, e.g. 4096 -> 7,5,5,5,5)."""
    levels = fsq.levels_for(codebook_size)
    return {"fsq": f"FSQ [{','.join(map(str, levels))}] ({math.prod(levels)})",
            "vq-split": f"VQ-split {codebook_size}", "vq-nosplit": f"VQ-no-split {codebook_size}",
            "vq": f"VQ {codebook_size} (codebook loss)"}


class Stages:
    """Runs a table's stages (each one `fsq` child process), `jobs` stage IIs or `oracle_jobs` oracles at a time.
    A stage takes 1/jobs (stage II) or 1/oracle_jobs (an oracle or its evaluation) of the machine and starts when that
    much is free. On a 2-core CPU two oracles side by side finish in little more than the time of one, where two
    64-token stage IIs gain only a few percent (BENCHMARKS.md, UViM), so the defaults, `--jobs 1 --oracle-jobs 2`, keep
    each stage II alone without leaving the oracles' spare core idle. A stage that may share the machine writes its
    child's output to RUN.log beside its folder, and this script says when it starts and ends; one that has it alone
    writes to stderr."""

    def __init__(self, jobs: int, oracle_jobs: int | None = None):
        oracle_jobs = jobs if oracle_jobs is None else oracle_jobs
        self.share = {"stage II": Fraction(1, jobs), "oracle": Fraction(1, oracle_jobs)}
        self.pool = ThreadPoolExecutor(max(jobs, oracle_jobs))
        self.room, self.used = threading.Condition(), Fraction(0)

    def run(self, name: str, run: Path, stage: Callable[[Path | None], T], kind: str) -> T:
        """`stage(log)` once its `kind`'s share of the machine is free; `log` is None (output to stderr) when it has
        the whole machine."""
        share = self.share[kind]
        with self.room:
            self.room.wait_for(lambda: self.used + share <= 1)
            self.used += share
        try:
            if share == 1:
                return stage(None)
            log = run.with_name(run.name + ".log")
            print(f"{time.strftime('%H:%M:%S')} start {name}: output in {log}", file=sys.stderr, flush=True)
            result = stage(log)
            print(f"{time.strftime('%H:%M:%S')} done  {name}", file=sys.stderr, flush=True)
            return result
        finally:
            with self.room:
                self.used -= share
                self.room.notify_all()

    def table(self, pipelines: dict[str, tuple[Path, str, str, bool, int]], args) -> dict[str, dict]:
        """{name: result} for `pipelines` ({name: (folder, task, quantizer, context, oracle seed)}): each an oracle,
        `fsq eval` of it (the oracle's and the trivial baseline's rows), and `args.seeds` stage IIs on it. Every oracle
        is queued before any stage II, so that a stage II waiting for its oracle never holds a place another could
        use. An oracle's `fsq eval` (it repeats the oracle's last evaluation, and stage II does not need it) is queued
        after its first stage II, so that the two run side by side, or, when a stage II has the machine alone, right
        after the oracles, so that it runs beside another oracle."""
        trained = {row: self.pool.submit(self.oracle, *spec, args) for row, spec in pipelines.items()}

        def evaluate(row):
            folder, task, *_ = pipelines[row]
            return self.pool.submit(self.evaluate_oracle, folder / "oracle", task, trained[row])

        evaluated = {row: evaluate(row) for row in pipelines} if self.share["stage II"] == 1 else {}
        stage2 = {row: [] for row in pipelines}
        for seed in range(args.seeds):
            for row, (folder, *_) in pipelines.items():
                stage2[row].append(self.pool.submit(self.stage2, folder / f"lm-seed{seed}", trained[row], args, seed))
                if row not in evaluated:
                    evaluated[row] = evaluate(row)
        try:
            results = {}
            for row, (folder, *_) in pipelines.items():
                runs_ = [f.result() for f in stage2[row]]
                results[row] = {"eval": evaluated[row].result(), "stage II": [r["greedy"] for r in runs_],
                                "seconds": {"oracle": seconds(folder / "oracle"),
                                            "stage II": [r["seconds"] for r in runs_]}}
                if args.temperature:
                    results[row]["stage II sampled"] = [r["sampled"] for r in runs_]
            return results
        except BaseException:
            self.pool.shutdown(cancel_futures=True)  # queued stages do not start; running ones finish and are kept
            raise

    def oracle(self, folder: Path, task: str, quantizer: str, context: bool, seed: int, args) -> None:
        """Train one oracle. Seed 0 is passed only implicitly, so that oracles trained before `--oracle-seeds`
        existed are still reused."""
        oracle = folder / "oracle"
        self.run(f"{folder.name}/oracle", oracle, lambda log: train(
            oracle, "uvim-oracle", "--task", task, "--data", args.data, "--quantizer", quantizer, "--codebook-size",
            args.codebook_size, "--preset", args.oracle_preset, "--steps", args.oracle_steps, "--eval-every",
            args.oracle_steps, "--dropped-tokens", args.dropped_tokens, *([] if context else ["--no-context"]),
            *(["--seed", seed] if seed else []), log=log), "oracle")

    def evaluate_oracle(self, oracle: Path, task: str, trained: Future) -> dict:
        """`fsq eval` of a trained oracle (its row and the trivial baseline's), once it is trained."""
        trained.result()
        if not runs.evaluation_file(oracle).exists():
            self.run(f"{oracle.parent.name}/oracle evaluation", oracle,
                     lambda log: fsq_cli("eval", "--workdir", oracle, "--task", task, log=log), "oracle")
        return json.loads(runs.evaluation_file(oracle).read_text())

    def stage2(self, lm: Path, oracle_trained: Future, args, seed: int) -> dict:
        """Train one stage II once its oracle is trained: {"greedy": its final held-out evaluation, "sampled": `fsq eval
        --temperature` of it (with `args.temperature`), "seconds": of training}."""
        oracle_trained.result()
        sampled = runs.evaluation_file(lm, temperature=args.temperature)

        def stage(log):
            train(lm, "uvim-lm", "--oracle", lm.parent / "oracle", *stage2_options(args), "--seed", seed, log=log)
            # The training's last evaluation is `fsq eval`'s stage-II row (greedy decoding of the whole test split);
            # a run stopped after its last checkpoint but before that evaluation is evaluated here instead.
            last = runs.last_evaluation(lm)
            if last is None or last["step"] < args.lm_steps:
                fsq_cli("eval", "--workdir", lm, log=log)
                last = json.loads(runs.evaluation_file(lm).read_text())["stage II"]
            if args.temperature and not sampled.exists():
                fsq_cli("eval", "--workdir", lm, "--temperature", args.temperature, log=log)
            return {"greedy": {k: v for k, v in last.items() if k not in ("step", "split")}, "seconds": seconds(lm),
                    "sampled": json.loads(sampled.read_text())["stage II"] if args.temperature else None}

        return self.run(f"{lm.parent.name}/{lm.name}", lm, stage, "stage II")


def plan(task: str, quantizers: list[str], name: dict[str, str], workdir: Path, args) -> tuple[dict, dict]:
    """A task's pipelines for `Stages.table` ({name: (folder, task, quantizer, context, oracle seed)}) and the table
    row of each ({pipeline: row}): one per oracle, `args.oracle_seeds` for the bottlenecks in `args.oracle_seeds_for`
    and one for the others, plus the context ablation's with `args.context_ablation` on panoptic."""
    bottlenecks = {name[q]: (f"{task}-{q}", q, True) for q in quantizers}
    if args.context_ablation and task == "panoptic":
        bottlenecks.update({f"{name[q]}, no context": (f"{task}-{q}-no-context", q, False)
                            for q in ("fsq", "vq-split")})
    pipelines, rows = {}, {}
    for row, (folder, q, context) in bottlenecks.items():
        for seed in range(args.oracle_seeds if q in args.oracle_seeds_for else 1):
            # oracle seed 0 keeps the folder it had before the option existed
            pipeline = row + (f", oracle seed {seed}" if seed else "")
            pipelines[pipeline] = (workdir / (folder + (f"-oracle-seed{seed}" if seed else "")), task, q, context, seed)
            rows[pipeline] = row
    return pipelines, rows


def stage2_options(args) -> list:
    """The `fsq train uvim-lm` options every stage II of a table shares. The image encoder's learning-rate multiplier
    and `--mirror` are passed only where they are not the default, so that stages trained before the options existed
    are still reused."""
    options = ["--preset", args.lm_preset, "--steps", args.lm_steps, "--learning-rate", args.lm_learning_rate,
               "--eval-every", args.lm_eval_every]
    if args.lm_encoder_lr_mult != 1:
        options += ["--encoder-lr-mult", args.lm_encoder_lr_mult]
    if args.lm_mirror:
        options.append("--mirror")
    return options


def cell(values) -> str:
    return mean_std(values, ".4g", std_fmt=".2g")


def value(values, fmt: str = ".4g") -> str:
    """One oracle's value as it is; several oracles' (seeds) as mean ± std."""
    return format(values[0], fmt) if len(values) == 1 else mean_std(values, fmt, std_fmt=".2g")


def merge(results: dict[str, dict], rows: dict[str, str]) -> dict[str, dict]:
    """One result per table row from the pipelines' results (`rows`: pipeline name -> row), a row's pipelines being
    its oracle seeds: their evaluations listed, their stage IIs pooled, so that the row's ± covers oracle x stage-II
    seeds."""
    merged = {}
    for pipeline, result in results.items():
        row = merged.setdefault(rows[pipeline],
                                {"eval": [], "stage II": [], "seconds": {"oracle": [], "stage II": []}})
        row["eval"].append(result["eval"])
        row["stage II"] += result["stage II"]
        row["seconds"]["oracle"].append(result["seconds"]["oracle"])
        row["seconds"]["stage II"] += result["seconds"]["stage II"]
        if "stage II sampled" in result:
            row.setdefault("stage II sampled", []).extend(result["stage II sampled"])
    return merged


def table(task: str, results: dict, seeds: int, temperature: float = 0.0) -> str:
    """Markdown: a row per bottleneck (oracle and stage II side by side), one for the trivial baseline, one per
    bottleneck for its oracle's decoder given no code (every token dropped; in the oracle columns), and with
    `temperature` one per bottleneck for its stage IIs sampled at that temperature (the same models). `results` as
    `merge` gives them; with several oracles a row's oracle cells are their mean ± std too."""
    first = next(iter(results.values()))
    oracles = len(first["eval"])
    metrics = [k for k in first["stage II"][0] if k not in NOT_TASK_METRICS]
    head = ("| bottleneck | " + " | ".join(f"oracle {m}" for m in metrics) + " | "
            + " | ".join(f"stage II {m}" for m in metrics)
            + " | oracle usage | stage-II usage | token accuracy | stage-II held-out loss | seconds (oracle + stage II) |")
    over = (f"{seeds} seed{'s' * (seeds > 1)}" if oracles == 1
            else f"{oracles} oracles x {seeds} stage-II seed{'s' * (seeds > 1)}")
    lines = [f"### {task} (stage II: mean ± std over {over})", "", head,
             "|---|" + "---:|" * (2 * len(metrics) + 5)]
    baseline = " | ".join(f"{first['eval'][0]['trivial baseline'][m]:.4g}" for m in metrics)
    lines.append(f"| trivial baseline | {baseline} | {baseline} | - | - | - | - | - |")
    for name, result in results.items():
        evals, stage2 = result["eval"], result["stage II"]
        if len(evals) != oracles:  # `--oracle-seeds-for` left it out
            name += f" ({len(evals)} oracle{'s' * (len(evals) > 1)} x {seeds} stage-II seed{'s' * (seeds > 1)})"
        cells = ([value([e["oracle (stage I)"][m] for e in evals]) for m in metrics]
                 + [cell([r[m] for r in stage2]) for m in metrics]
                 + [value([100 * e["oracle (stage I)"]["usage"] for e in evals], ".1f") + "%",
                    cell([100 * r["usage"] for r in stage2]) + "%",
                    cell([100 * r["token_accuracy"] for r in stage2]) + "%",
                    # runs made before stage II logged its held-out loss have none
                    cell([r["heldout_loss"] for r in stage2]) if all("heldout_loss" in r for r in stage2) else "-",
                    f"{sum(result['seconds']['oracle']):.0f} + {sum(result['seconds']['stage II']):.0f}"])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if all("no code" in e for e in evals):  # evaluations made before `fsq eval` had the row have none
            cells = [value([e["no code"][m] for e in evals]) for m in metrics] + ["-"] * (len(metrics) + 5)
            lines.append(f"| {name}, oracle's decoder without code | " + " | ".join(cells) + " |")
        if "stage II sampled" in result:
            sampled = result["stage II sampled"]
            cells = (["-"] * len(metrics) + [cell([r[m] for r in sampled]) for m in metrics]
                     + ["-", cell([100 * r["usage"] for r in sampled]) + "%",
                        cell([100 * r["token_accuracy"] for r in sampled]) + "%", "-", "-"])
            lines.append(f"| {name}, sampled at temperature {temperature:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/bench-uvim")
    parser.add_argument("--data", default="scenes")
    parser.add_argument("--tasks", default="depth,colorization,panoptic")
    parser.add_argument("--quantizers", default=",".join(QUANTIZERS), help="from: " + ", ".join(UVIM_QUANTIZERS))
    parser.add_argument("--codebook-size", type=int, default=1024,
                        help="VQ's codebook size; FSQ takes the paper's levels for it (1024: 8,5,5,5, 1000 codes; "
                             "the paper's 4096: 7,5,5,5,5, 4375 codes)")
    parser.add_argument("--seeds", type=int, default=2, help="stage-II seeds per oracle")
    parser.add_argument("--oracle-seeds", type=int, default=2,
                        help="oracles (training seeds, same scenes) per bottleneck of --oracle-seeds-for, each with "
                             "--seeds stage IIs; a row's ± then covers oracle x stage-II seeds")
    parser.add_argument("--oracle-seeds-for", default="fsq,vq-split",
                        help="the bottlenecks that get --oracle-seeds oracles (the others one): by default the two the "
                             "paper compares, so that the splitting ablation keeps a table under an hour")
    parser.add_argument("--oracle-steps", type=int, default=600)
    parser.add_argument("--lm-steps", type=int, default=1500)
    parser.add_argument("--lm-learning-rate", type=float, default=1e-3, help="stage II's peak learning rate")
    parser.add_argument("--lm-eval-every", type=int, default=None,
                        help="stage II evaluates the test split every N steps, to show whether its held-out loss is "
                             "still falling (default: once, at the end)")
    parser.add_argument("--lm-encoder-lr-mult", type=float, default=1.0,
                        help="stage II's image-encoder learning rate as a multiple of the peak (`fsq train uvim-lm "
                             "--encoder-lr-mult`)")
    parser.add_argument("--lm-mirror", action="store_true",
                        help="stage II also trains on the mirror images (`fsq train uvim-lm --mirror`)")
    parser.add_argument("--oracle-preset", default="quick-8x8", help="quick-8x8: a 64-token code; quick: 16 tokens")
    parser.add_argument("--lm-preset", default="quick")
    parser.add_argument("--dropped-tokens", choices=("zeros", "flag"), default="zeros",
                        help="how stage I's code dropout shows a dropped token: zeros (UViM's) or zeros and a flag")
    parser.add_argument("--context-ablation", action="store_true",
                        help="panoptic also without image context in stage I, FSQ and VQ-split")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="also evaluate each stage II sampling at this temperature (`fsq eval --temperature`; "
                             "big_vision's colorization notebook samples at 1); 0: greedy decoding only")
    parser.add_argument("--quick", action="store_true", help="one bottleneck (FSQ), one oracle and one stage II")
    parser.add_argument("--jobs", type=int, default=1,
                        help="stage IIs trained side by side (1: one at a time, output inline; on a 2-core CPU two "
                             "gain only a few percent)")
    parser.add_argument("--oracle-jobs", type=int, default=2,
                        help="oracles trained side by side (two finish in little more than the time of one)")
    args = parser.parse_args()
    quantizers = ["fsq"] if args.quick else args.quantizers.split(",")
    args.oracle_seeds_for = args.oracle_seeds_for.split(",")
    if args.quick:
        args.seeds = args.oracle_seeds = 1
    unknown = sorted((set(quantizers) | set(args.oracle_seeds_for)) - set(UVIM_QUANTIZERS))
    if unknown:
        parser.error(f"unknown quantizers {unknown} in --quantizers or --oracle-seeds-for: use some of "
                     f"{', '.join(UVIM_QUANTIZERS)}")
    if args.lm_eval_every is None:
        args.lm_eval_every = args.lm_steps
    if (min(args.seeds, args.oracle_seeds, args.jobs, args.oracle_jobs, args.lm_eval_every) < 1
            or args.temperature < 0 or args.lm_encoder_lr_mult <= 0):
        parser.error("--seeds, --oracle-seeds, --jobs, --oracle-jobs and --lm-eval-every must be >= 1, "
                     "--temperature >= 0, --lm-encoder-lr-mult > 0")
    try:
        name = names(args.codebook_size)
    except InputError as e:  # no recommended FSQ levels for that size; the message lists the sizes that have them
        parser.error(f"--codebook-size: {e}")
    workdir = Path(args.workdir)
    everything, stages = {}, Stages(args.jobs, args.oracle_jobs)
    for task in args.tasks.split(","):
        start = time.monotonic()
        pipelines, rows = plan(task, quantizers, name, workdir, args)
        everything[task] = results = stages.table(pipelines, args)
        minutes = (time.monotonic() - start) / 60  # wall time, evaluations and stages reused from WORKDIR included
        print(table(task, merge(results, rows), args.seeds, args.temperature)
              + f"\n\n{task}: {minutes:.1f} minutes wall time in this call\n", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(everything, indent=2))
    print("command: python benchmarks/uvim.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
