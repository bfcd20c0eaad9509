"""The codebook-size study (paper Section 4, Fig. 3): FSQ keeps using its whole codebook as it grows; VQ does not.

For every quantizer and target codebook size K, a tokenizer is trained with the same budget: the same network preset,
number of steps, batch size, data and seed. FSQ gets the paper's levels for K (`fsq.levels_for`, Table 1; the actual
size prod(levels) is close to K, e.g. 15 for 16), each VQ variant a codebook of exactly K entries. Budgets are counted
in steps, not seconds, so that the results do not depend on how busy the machine was. Each tokenizer is then measured
on the whole test split:

- codebook usage: the fraction of the K codes used at least once (the paper's definition), and the perplexity;
- reconstruction PSNR, and the Frechet distance between the test images and their reconstructions in the feature
  space of the small classifier of `features.py` (the paper reports reconstruction FID, in Inception features);
- compression cost in bits per token: the entropy of the empirical code distribution, the cost of coding each token
  independently with its frequency. The paper's cost comes from a MaskGIT transformer and an entropy coder, which
  also exploit context, so it is lower; both rise with K.

The study lives in one folder: each run in `<quantizer>-<K>/` (a `train.run` folder plus `result.json` once it is
measured), and `results.json`, `results.md` and `codebook-size.png` for all runs so far, rewritten after every run.
Running the study again skips measured runs and resumes runs that were stopped.

Legend: K codebook size, N test images, H W image size, C image channels.
"""

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fsq_ref import checkpoint, data, features, fsq, metrics, plot, presets, progress, tokenizer, train
from fsq_ref.errors import InputError
from fsq_ref.quantizers import QuantizerConfig

QUANTIZERS = ("fsq", "vq", "vq-entropy", "vq-split")  # the study's default: the paper's Fig. 3 set
PAPER_SIZES = (16, 64, 256, 1024, 4096, 16384)  # 2^4 ... 2^14, the sizes of Table 1 that fit a CPU's memory
RESULT = "result.json"  # in a run's folder: written once the run is trained and measured
RESULTS_JSON, RESULTS_MD, FIGURE = "results.json", "results.md", "codebook-size.png"
CHECKPOINT_EVERY = 1000  # steps between checkpoints, so that an interrupted run loses little
EVAL_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Run:
    """One tokenizer of the study: a quantizer at a target codebook size."""

    quantizer: str
    size: int  # the target K; FSQ's actual size is quantizer_config.size
    quantizer_config: QuantizerConfig

    @property
    def name(self) -> str:
        return f"{self.quantizer}-{self.size}"


def plan(sizes: Sequence[int], quantizers: Sequence[str]) -> list[Run]:
    """The runs of a study, smallest codebooks first (so a study stopped early still compares every quantizer).

    Raises InputError for an unknown quantizer or a size without recommended FSQ levels, before anything trains.
    """
    if not sizes or not quantizers:
        raise InputError("give at least one codebook size and one quantizer")
    runs = []
    for size in sorted(set(sizes)):
        for kind in dict.fromkeys(quantizers):
            if kind == "fsq":
                config = QuantizerConfig("fsq", levels=fsq.levels_for(size))
            else:
                if size < 2:
                    raise InputError(f"a VQ codebook needs at least 2 entries; got size {size}")
                config = QuantizerConfig(kind, codebook_size=size)
            runs.append(Run(kind, size, config))
    return runs


class _SharedData:
    """What every run uses, loaded once: both splits, the feature classifier and the test images' features."""

    def __init__(self, data_spec: str, data_dir: str | None, ae, seed: int, echo: Callable[[str], None]):
        load = dict(data_dir=data_dir, image_size=ae.image_size, channels=ae.channels, seed=seed)
        self.train, self.test = data.load(data_spec, "train", **load), data.load(data_spec, "test", **load)
        self.classifier, info = features.load_or_train(data_spec, data_dir=data_dir, echo=echo)
        self.classifier_accuracy = info["accuracy"]
        if self.classifier.image_shape != self.test.image_shape:
            raise InputError(f"the feature classifier of {data_spec} sees images of {self.classifier.image_shape} "
                             f"(the data's own size) but the preset makes {self.test.image_shape}: pick a --preset "
                             "whose image size matches the data")
        self.images = self.test.get(np.arange(len(self.test)))[0]
        self.features = features.extract(self.classifier, self.images)[0]


def _stored_result(run_dir: Path, settings: dict) -> dict | None:
    """The result of a measured run, None if it has none; InputError if it was made with other settings."""
    path = run_dir / RESULT
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:
        return None  # damaged: measure again (the checkpoint, if any, is resumed)
    for name, value in settings.items():
        if result.get(name) != value:
            raise InputError(f"{path} was made with {name} = {result.get(name)!r}, not {value!r}: run the study with "
                             "the same options, or give a new --workdir")
    return result


def _train_and_measure(run: Run, run_dir: Path, shared: _SharedData, loop: train.LoopConfig, ae, settings: dict,
                       echo: Callable[[str], None]) -> dict:
    task = tokenizer.AutoencoderTask(
        tokenizer.TokenizerConfig(ae, run.quantizer_config), shared.train, shared.test, batch_size=loop.batch_size,
        seed=loop.seed, weight_decay=loop.weight_decay, data_header={"spec": settings["data"]})
    resume = (run_dir / checkpoint.CHECKPOINT).exists()
    if resume and (total := checkpoint.read_header(run_dir / checkpoint.CHECKPOINT).get("total_steps")) != loop.steps:
        raise InputError(f"{run_dir} holds a run of {total} steps, not {loop.steps}: run the study with the same "
                         "--steps, or give a new --workdir")
    started = time.perf_counter()
    state, evaluation = train.run(task, run_dir, loop, resume=resume, echo=echo)
    if evaluation is None:  # Ctrl-C: train.run saved the state
        echo("interrupted: run the study again with the same options to continue")
        raise KeyboardInterrupt
    reconstructions = tokenizer.reconstruct_all(state.model, state.qstate, shared.images, EVAL_BATCH)
    fd = metrics.frechet_distance(shared.features, features.extract(shared.classifier, reconstructions)[0])
    q = run.quantizer_config
    result = {
        "run": run.name, "quantizer": run.quantizer, "size": run.size, "codebook_size": q.size,
        "levels": list(q.levels) if q.kind == "fsq" else None, **settings,
        "usage": evaluation["usage"], "codes_used": round(evaluation["usage"] * q.size),
        "perplexity": evaluation["perplexity"], "bits_per_token": evaluation["entropy_bits"],
        "psnr": evaluation["psnr"], "mse": evaluation["mse"], "l1": evaluation["l1"], "frechet_distance": fd,
        "classifier_accuracy": shared.classifier_accuracy, "test_images": len(shared.images),
        "seconds": round(time.perf_counter() - started, 1), "resumed": resume,
    }
    if q.kind == "fsq":
        counter = metrics.CodeCounter(q.size)
        for idx, n in data.pass_indices(len(shared.images), EVAL_BATCH):
            counter.update(tokenizer.encode(state.model, state.qstate, shared.images[idx])[:n])
        result["channels"] = metrics.channel_stats(counter.counts, q.levels)
    checkpoint.write_atomic(run_dir / RESULT, json.dumps(result, indent=2).encode())
    return result


def run_study(workdir: str | Path, *, data_spec: str = "fashion-mnist", sizes: Sequence[int] = PAPER_SIZES,
              quantizers: Sequence[str] = QUANTIZERS, steps: int, batch_size: int = 16,
              preset: str = "fashion-mnist", seed: int = 0, data_dir: str | None = None,
              echo: Callable[[str], None] = progress.say) -> list[dict]:
    """Train and measure one tokenizer per (quantizer, codebook size) with equal budgets; write the study's files.

    Args:
      workdir: the study's folder (created if needed); a folder of an earlier call with the same options continues it.
      data_spec, data_dir: the dataset, as `data.load` takes them; the test split is what every run is measured on.
      sizes: target codebook sizes; with "fsq" among the quantizers, each must be in `fsq.RECOMMENDED_LEVELS`.
      quantizers: any of `quantizers.KINDS` (see `quantizers.QuantizerConfig`); by default the four of Fig. 3.
      steps, batch_size, preset, seed: the budget and network every run shares.
      echo: receives a progress line before each run, and the training loop's messages.

    Returns:
      One dict per run, in the order of `plan` (the contents of results.json).

    Raises:
      InputError for bad options, or when `workdir` holds runs made with other options. KeyboardInterrupt after a
      Ctrl-C, once the interrupted run is saved: calling again continues it.

    References: paper Section 4 and Fig. 3.
    """
    workdir = Path(workdir)
    runs = plan(sizes, quantizers)
    ae = presets.pick(presets.AUTOENCODER, preset)
    loop = train.LoopConfig(steps=steps, batch_size=batch_size, seed=seed, eval_every=steps,
                            checkpoint_every=min(CHECKPOINT_EVERY, steps))
    settings = {"data": data_spec, "preset": preset, "steps": steps, "batch_size": batch_size, "seed": seed}
    results, shared = [], None
    for i, run in enumerate(runs, 1):
        q = run.quantizer_config
        levels = f" (levels {','.join(map(str, q.levels))}: {q.size} codes)" if q.kind == "fsq" else ""
        echo(f"[{i}/{len(runs)}] {run.quantizer}, {run.size} codes{levels}")
        result = _stored_result(workdir / run.name, settings)
        if result is not None:
            echo(f"  measured before: {workdir / run.name / RESULT}")
        else:
            shared = shared or _SharedData(data_spec, data_dir, ae, seed, echo)  # only once something is left to do
            result = _train_and_measure(run, workdir / run.name, shared, loop, ae, settings, echo)
            echo(f"  usage {result['usage']:.1%}  PSNR {result['psnr']:.2f} dB  FD {result['frechet_distance']:.2f}  "
                 f"{result['bits_per_token']:.2f} bits/token  ({result['seconds']:g} s)")
        results.append(result)
        write_outputs(workdir, results)
    return results


def write_outputs(workdir: str | Path, results: list[dict]) -> None:
    """Write results.json, results.md and codebook-size.png for `results` into `workdir`."""
    workdir = Path(workdir)
    checkpoint.write_atomic(workdir / RESULTS_JSON, json.dumps(results, indent=2).encode())
    checkpoint.write_atomic(workdir / RESULTS_MD, markdown(results).encode())
    figure(results, workdir / FIGURE)


# The study's four measurements: (title, key, how a table cell shows a run, scale of the plotted value).
_METRICS = (
    ("Codebook usage (codes used at least once on the test split)", "usage",
     lambda r: f"{r['usage']:.1%} ({r['codes_used']}/{r['codebook_size']})", 100.0),
    ("Reconstruction PSNR (dB, higher is better)", "psnr", lambda r: f"{r['psnr']:.2f}", 1.0),
    ("Reconstruction Frechet distance (classifier features, lower is better)", "frechet_distance",
     lambda r: f"{r['frechet_distance']:.2f}", 1.0),
    ("Compression cost (bits per token: entropy of the codes; log2 of the codebook size in brackets)",
     "bits_per_token", lambda r: f"{r['bits_per_token']:.2f} ({math.log2(r['codebook_size']):.2f})", 1.0),
)


def markdown(results: list[dict]) -> str:
    """The study as Markdown: one table per measurement, a row per codebook size and a column per quantizer."""
    if not results:
        return "# Codebook-size study\n\nNo runs yet.\n"
    first = results[0]
    quantizers = list(dict.fromkeys(r["quantizer"] for r in results))
    by_run = {(r["quantizer"], r["size"]): r for r in results}
    lines = ["# Codebook-size study (paper Fig. 3)", "",
             f"Data {first['data']}, network preset {first['preset']}, {first['steps']} steps of batch "
             f"{first['batch_size']}, seed {first['seed']}; measured on {first['test_images']} test images. Feature "
             f"classifier test accuracy {first['classifier_accuracy']:.1%}. The usage table gives codes used / actual "
             "codebook size in brackets: FSQ's is the product of its levels (levels 5,3 give 15 codes for the "
             "target 16)."]
    for title, _, cell, _ in _METRICS:
        lines += ["", f"## {title}", "", "| codebook size | " + " | ".join(quantizers) + " |",
                  "|---:|" + "---:|" * len(quantizers)]
        for size in sorted({r["size"] for r in results}):
            cells = [cell(by_run[q, size]) if (q, size) in by_run else "-" for q in quantizers]
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    diagnosed = [r for r in results if r.get("channels")]
    if diagnosed:
        lines += ["", "## Where FSQ's unused codes come from", "",
                  "Per FSQ run, from the test split's codes: the share of its values that the least used channel "
                  "uses; the sum of the channels' entropies against the joint entropy (their difference, the total "
                  "correlation, is what the channels share: value combinations that never occur together); and the "
                  "usage expected if the channels were independent with the same marginals.", "",
                  "| codebook size | levels | values used (worst channel) | sum of channel entropies | joint entropy "
                  "| total correlation | usage if independent | usage |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(diagnosed, key=lambda r: r["size"]):
            c = r["channels"]
            lines.append(f"| {r['size']} | {','.join(map(str, r['levels']))} | {c['values_used']:.0%} | "
                         f"{c['marginal_bits']:.2f} bits | {c['joint_bits']:.2f} bits | "
                         f"{c['total_correlation_bits']:.2f} bits | {c['independent_usage']:.1%} | {r['usage']:.1%} |")
    return "\n".join(lines) + "\n"


def figure(results: list[dict], path: str | Path) -> str:
    """Fig. 3 for this study: usage, PSNR, Frechet distance and bits per token against log2 of the codebook size."""
    quantizers = list(dict.fromkeys(r["quantizer"] for r in results))
    titles = ("codebook usage", "reconstruction PSNR", "reconstruction Frechet distance", "compression cost")
    y_labels = ("usage (%)", "PSNR (dB)", "Frechet distance", "bits per token")
    panels = []
    for title, y_label, (_, key, _, scale) in zip(titles, y_labels, _METRICS):
        series = {}
        for q in quantizers:
            runs = sorted((r for r in results if r["quantizer"] == q), key=lambda r: r["codebook_size"])
            series[q] = ([math.log2(r["codebook_size"]) for r in runs], [r[key] * scale for r in runs])
        panels.append(plot.Panel(title, "log2 codebook size", y_label, series,
                                 y_range=(0.0, 100.0) if key == "usage" else None))
    return plot.line_panels(panels, path)
