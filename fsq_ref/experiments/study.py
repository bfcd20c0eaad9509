"""The codebook-size study (paper Section 4, Fig. 3): FSQ keeps using its whole codebook as it grows; VQ does not.

For every quantizer and target codebook size K, a tokenizer is trained with the same budget: the same network preset,
number of steps, batch size, data and seed. FSQ gets the paper's levels for K (`fsq.levels_for`, Table 1; the actual
size prod(levels) is close to K, e.g. 15 for 16), each VQ variant a codebook of exactly K entries. Budgets are counted
in steps, not seconds, so that the results do not depend on how busy the machine was. Each tokenizer is then measured
on the whole test split:

- codebook usage: the fraction of the K codes used at least once (the paper's definition), and the perplexity;
- reconstruction PSNR, and the Frechet distance between the test images and their reconstructions in the feature
  space of the small classifier of `features.py` (the paper reports reconstruction FID, in Inception features);
- code entropy in bits per token: the entropy of the empirical code distribution, the cost of coding each token
  alone with its frequency.

Fig. 3's two other panels need a generative model of the tokens. For the quantizers in MASKGIT_KINDS (FSQ and
`vq-entropy`, the VQ that MaskGIT itself trains), a MaskGIT of preset MASKGIT_PRESET is trained on the run's train
tokens for `maskgit_steps` steps of batch MASKGIT_BATCH (the same budget for every run), or, with `until_flat`, for
as many rounds of `maskgit_steps` as it needs (below), then measured:

- compression cost as the paper measures it: the bits per token that coding the test tokens with the masked
  transformer costs (`maskgit_train.bits_per_token`; it exploits context, so it is below the code entropy);
- sampling Frechet distance: SAMPLES_PER_CLASS samples per class (guidance GUIDANCE, MaskGIT's 12 decoding steps),
  decoded by the run's tokenizer, against the test images in the classifier's features; with the classifier's
  accuracy on the samples' classes.

A fixed MaskGIT budget undertrains the larger vocabularies: its output layer has K classes to learn from the same
number of tokens. With `until_flat` the budget grows with K by a rule instead: the MaskGIT trains in rounds of
`maskgit_steps` steps, each a warm restart (a fresh warm-up and cosine schedule, as `fsq train --init-from` starts
one) from the previous round's model on a new order of the training tokens, until a round lowers the held-out NLL by
less than `until_flat` nats per masked token, or MAX_ROUNDS rounds are done. The last round's model is measured.

The study lives in one folder: each run in `<quantizer>-<K>/` (a `train.run` folder, the MaskGIT's in its `maskgit/`,
its further rounds in `maskgit-round2/`..., plus `result.json` once it is measured), and the report (`study_report`:
results.json, results.md and codebook-size.png) for all runs so far, rewritten after every run. Running the study
again skips measured runs and resumes runs that were stopped.

Legend: K codebook size, N test images, H W image size, C image channels.
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import jax.random as jr
import numpy as np

from fsq_ref import fsq, maskgit, tokenizer
from fsq_ref.common import files, progress
from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets, tokens
from fsq_ref.evaluation import features, metrics
from fsq_ref.experiments.study_report import write_outputs
from fsq_ref.quantizer_config import QuantizerConfig
from fsq_ref.training import checkpoint, maskgit_train, presets, tokenizer_train, train

QUANTIZERS = ("fsq", "vq", "vq-entropy", "vq-split")  # the study's default: the paper's Fig. 3 set
PAPER_SIZES = (16, 64, 256, 1024, 4096, 16384)  # 2^4 ... 2^14, the sizes of Table 1 that fit a CPU's memory
RESULT = "result.json"  # in a run's folder: written once the run is trained and measured
CHECKPOINT_EVERY = 1000  # steps between checkpoints, so that an interrupted run loses little
EVAL_BATCH = 500
MASKGIT_KINDS = ("fsq", "vq-entropy")  # the runs that get a MaskGIT: FSQ, and the VQ that MaskGIT's tokenizer uses
MASKGIT_PRESET, MASKGIT_BATCH, MASKGIT_LR = "fashion-mnist", 64, 1e-3  # `fsq train maskgit`'s defaults
MAX_ROUNDS = 12  # a growing MaskGIT budget's cap (`until_flat`): 7200 steps at the default 600-step round
SAMPLES_PER_CLASS = 200
GUIDANCE = 1.0  # `fsq generate`'s default


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
        self.train, self.test = datasets.load(data_spec, "train", **load), datasets.load(data_spec, "test", **load)
        self.classifier, info = features.load_or_train(data_spec, data_dir=data_dir, echo=echo)
        self.classifier_accuracy = info["accuracy"]
        if self.classifier.image_shape != self.test.image_shape:
            raise InputError(f"the feature classifier of {data_spec} sees images of {self.classifier.image_shape} "
                             f"(the data's own size) but the preset makes {self.test.image_shape}: pick a --preset "
                             "whose image size matches the data")
        self.images = self.test.get(np.arange(len(self.test)))[0]
        self.features = features.extract(self.classifier, self.images)[0]


_ADDED_LATER = {"maskgit_until_flat": 0.0}  # settings that older results lack, with the value they were made with


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
        if result.get(name, _ADDED_LATER.get(name)) != value:
            raise InputError(f"{path} was made with {name} = {result.get(name)!r}, not {value!r}: run the study with "
                             "the same options, or give a new --workdir")
    return result


def _train_and_measure(run: Run, run_dir: Path, shared: _SharedData, loop: train.LoopConfig, ae, settings: dict,
                       echo: Callable[[str], None]) -> dict:
    task = tokenizer_train.AutoencoderTask(
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
    reconstructions = tokenizer_train.reconstruct_all(state.model, state.qstate, shared.images, EVAL_BATCH)
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
    wants_maskgit = run.quantizer in MASKGIT_KINDS and settings["maskgit_steps"]
    if q.kind == "fsq" or wants_maskgit:  # the test tokens, encoded once for both uses
        fingerprint = checkpoint.read_header(run_dir / checkpoint.CHECKPOINT)["sha256"]
        test_tokens = tokenizer_train.encode_dataset(state.model, state.qstate, fingerprint, shared.test, EVAL_BATCH)
    if q.kind == "fsq":
        counter = metrics.CodeCounter(q.size)
        counter.update(test_tokens.indices)
        result["channels"] = metrics.channel_stats(counter.counts, q.levels)
    if wants_maskgit:
        budget = f"{'rounds of ' * bool(settings['maskgit_until_flat'])}{settings['maskgit_steps']} steps"
        echo(f"  MaskGIT ({MASKGIT_PRESET}) on its tokens: {budget} of batch {MASKGIT_BATCH}")
        result.update(_maskgit_panels(state, run_dir, shared, test_tokens, settings["maskgit_steps"], loop.seed,
                                      settings["maskgit_until_flat"], echo))
        result["seconds"] = round(time.perf_counter() - started, 1)
    files.write_atomic(run_dir / RESULT, json.dumps(result, indent=2).encode())
    return result


def _maskgit_panels(state, run_dir: Path, shared: _SharedData, test_tokens: tokens.TokenFile, steps: int, seed: int,
                    until_flat: float, echo: Callable[[str], None]) -> dict:
    """Train a MaskGIT on the tokenizer's train tokens (resuming one that was stopped): `steps` steps, or with
    `until_flat` rounds of them until its held-out NLL is flat; then measure Fig. 3's other two panels with it: bits
    per token on the test tokens and the sampling Frechet distance."""
    train_tokens = tokenizer_train.encode_dataset(state.model, state.qstate, test_tokens.tokenizer, shared.train,
                                                  EVAL_BATCH)
    started, previous, nll = time.perf_counter(), None, []
    for round_ in range(MAX_ROUNDS if until_flat else 1):
        # Each round sees the training tokens in a new order (seed + round); the first keeps the fixed budget's folder.
        task = maskgit_train.make_task(MASKGIT_PRESET, train_tokens, test_tokens, batch_size=MASKGIT_BATCH,
                                       seed=seed + round_)
        loop = train.LoopConfig(steps=steps, batch_size=MASKGIT_BATCH, seed=seed + round_, learning_rate=MASKGIT_LR,
                                weight_decay=maskgit_train.WEIGHT_DECAY, eval_every=steps,
                                checkpoint_every=min(CHECKPOINT_EVERY, steps))
        folder = run_dir / ("maskgit" if round_ == 0 else f"maskgit-round{round_ + 1}")
        resume = (folder / checkpoint.CHECKPOINT).exists()
        if until_flat:
            echo(f"  MaskGIT round {round_ + 1} (at most {MAX_ROUNDS})")
        mg_state, evaluation = train.run(task, folder, loop, resume=resume, init_from=None if resume else previous,
                                         echo=echo)
        if evaluation is None:
            echo("interrupted: run the study again with the same options to continue")
            raise KeyboardInterrupt
        nll.append(evaluation["nll"])
        previous, flat = folder, len(nll) > 1 and nll[-2] - nll[-1] < until_flat
        if flat:
            break
    rounds = ({"maskgit_steps_trained": steps * len(nll), "maskgit_nll_by_round": nll, "maskgit_flat": flat}
              if until_flat else {})
    sample_labels = np.repeat(np.arange(task.config.num_classes, dtype=np.int32), SAMPLES_PER_CLASS)
    indices = maskgit.sample(mg_state.model, sample_labels, jr.key(seed), guidance=GUIDANCE)
    images = tokenizer_train.decode_all(state.model, state.qstate, indices)
    fake, predicted = features.extract(shared.classifier, images)
    return {**rounds, "maskgit_nll": evaluation["nll"],
            "maskgit_bits_per_token": maskgit_train.bits_per_token(mg_state.model, test_tokens.indices),
            "sampling_frechet_distance": metrics.frechet_distance(shared.features, fake),
            "sample_class_accuracy": float(np.mean(predicted == sample_labels)), "samples": len(sample_labels),
            "maskgit_seconds": round(time.perf_counter() - started, 1)}


def run_study(workdir: str | Path, *, data_spec: str = "fashion-mnist", sizes: Sequence[int] = PAPER_SIZES,
              quantizers: Sequence[str] = QUANTIZERS, steps: int, batch_size: int = 16,
              preset: str = "fashion-mnist", seed: int = 0, data_dir: str | None = None, maskgit_steps: int = 0,
              maskgit_until_flat: float = 0.0, echo: Callable[[str], None] = progress.say) -> list[dict]:
    """Train and measure one tokenizer per (quantizer, codebook size) with equal budgets; write the study's files.

    Args:
      workdir: the study's folder (created if needed); a folder of an earlier call with the same options continues it.
      data_spec, data_dir: the dataset, as `datasets.load` takes them; the test split is what every run is measured on.
      sizes: target codebook sizes; with "fsq" among the quantizers, each must be in `fsq.RECOMMENDED_LEVELS`.
      quantizers: any of `quantizer_config.KINDS` (see `QuantizerConfig`); by default the four of Fig. 3.
      steps, batch_size, preset, seed: the budget and network every run shares.
      maskgit_steps: the MaskGIT budget of the runs in MASKGIT_KINDS (0: no MaskGIT panels); with
        `maskgit_until_flat`, the length of a round.
      maskgit_until_flat: > 0: train each MaskGIT in rounds until one lowers its held-out NLL by less than this many
        nats per masked token (see above); 0: a fixed budget.
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
    if maskgit_steps < 0:
        raise InputError(f"--maskgit-steps must be >= 0 (0: no MaskGIT panels); got {maskgit_steps}")
    if maskgit_until_flat < 0:
        raise InputError(f"--maskgit-until-flat must be >= 0 (0: a fixed budget); got {maskgit_until_flat}")
    settings = {"data": data_spec, "preset": preset, "steps": steps, "batch_size": batch_size, "seed": seed,
                "maskgit_steps": maskgit_steps, "maskgit_until_flat": maskgit_until_flat}
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
            maskgit_line = (f"  MaskGIT {result['maskgit_bits_per_token']:.2f} bits/token  sampling FD "
                            f"{result['sampling_frechet_distance']:.2f}" if "maskgit_bits_per_token" in result else "")
            echo(f"  usage {result['usage']:.1%}  PSNR {result['psnr']:.2f} dB  FD {result['frechet_distance']:.2f}  "
                 f"entropy {result['bits_per_token']:.2f} bits/token{maskgit_line}  ({result['seconds']:g} s)")
        results.append(result)
        write_outputs(workdir, results)
    return results
