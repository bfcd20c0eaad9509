"""What the benchmark scripts share: running the `fsq` command, training a stage so that a stopped run resumes and a
finished one is reused, the seconds a run trained, a mean +- std cell, and the sample quality of a MaskGIT.

The scripts import it as `stages` (Python puts the running script's folder on the path)."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import jax.random as jr
import numpy as np

from fsq_ref.common import files
from fsq_ref.evaluation import features
from fsq_ref.training import checkpoint, maskgit_train

STAGE_RECORD = "stage.json"  # the `fsq train` arguments a finished run was made with


def fsq_cli(*args, log: Path | None = None) -> None:
    """`fsq ARGS` in a child process (its own JAX); raises if it fails. Its output, progress included, goes to this
    script's stderr, so that stdout holds only the script's tables; or, given `log`, is appended to that file (for
    children that run side by side)."""
    command = [sys.executable, "-m", "fsq_ref.cli", *map(str, args)]
    if log is None:
        subprocess.run(command, check=True, stdout=sys.stderr)
        return
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)


def train(run: Path, *args, log: Path | None = None) -> None:
    """`fsq train ARGS` into `run`: from scratch, continued where a stopped run left off, or not at all if finished.

    A finished run remembers its arguments (`STAGE_RECORD`); asking the same folder for other arguments (another
    codebook size, preset or budget) exits with an error instead of reusing a run that answers another question.
    `log`: as `fsq_cli`'s."""
    run, wanted = Path(run), [str(a) for a in args]
    record = run / STAGE_RECORD
    if record.exists() and _spelled_alike(made := json.loads(record.read_text())) != _spelled_alike(wanted):
        sys.exit(f"error: {run} holds `fsq train {' '.join(made)}`, not `fsq train {' '.join(wanted)}`: "
                 "give the script another --workdir, or remove that folder to train it again")
    done = checkpoint.progress(run)
    if done is None or done[0] < done[1]:
        fsq_cli("train", *args, "--workdir", run, *(["--resume"] if done else []), log=log)
    if not record.exists():
        files.write_atomic(record, json.dumps(wanted).encode())


def _spelled_alike(args: list[str]) -> list[str]:
    """`args` with each existing path made absolute, so that a folder named relative to one directory and absolute
    (or from another directory) counts as the same argument."""
    return [str(Path(a).resolve()) if Path(a).exists() else a for a in args]


def seconds(run: Path) -> float:
    """Seconds of training that `run`'s log records (compilation included)."""
    return max(json.loads(line).get("seconds", 0.0) for line in open(Path(run) / "metrics.jsonl"))


def mean_std(values: list[float], fmt: str, std_fmt: str | None = None) -> str:
    """One value as it is; several as "mean ± sample std" (the std formatted with `std_fmt`, default `fmt`)."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), std_fmt or fmt)}"


def sample_quality(classifier, real: np.ndarray, maskgit_dir: Path, tokenizer_dir: Path, per_class: int, *,
                   seed: int = 0, **options) -> dict:
    """`features.sample_quality` of `per_class` samples per class of the MaskGIT in `maskgit_dir` against `real`;
    `options` are `maskgit.generate`'s (guidance, temperature, choice_temperature, steps)."""
    labels = np.repeat(np.arange(10, dtype=np.int32), per_class)
    _, fake = maskgit_train.generate_images(maskgit_dir, tokenizer_dir, labels, jr.key(seed), **options)
    return features.sample_quality(classifier, real, fake, labels)
