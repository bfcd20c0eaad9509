"""UViM at inference: stage I's and stage II's predictions over a dataset, their scores, codebook usage and pictures.

Every pass runs over the whole dataset in padded batches of one size (`datasets.pass_indices`: one compilation). The
prediction functions are those of the paper's two-stage model: the oracle (stage I) reads the target and gives the
best that any stage II could reach with its decoder; the full model reads only the input (image -> stage II's code
-> stage I's decoder, with the image).

Legend: B batch, S code length, K codebook size.
"""

import itertools
from typing import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from fsq_ref import dense_tasks, fsq
from fsq_ref.data import datasets, dense
from fsq_ref.data.images import grid, save_png
from fsq_ref.evaluation import dense_metrics, metrics
from fsq_ref.uvim import (
    GuidingCodeLM,
    Oracle,
    code_nll,
    decode_code,
    encode_target,
    generate_code,
    teacher_forced_logits,
)

EVAL_BATCH = 256
PICTURE_COUNT = 12


@eqx.filter_jit
def oracle_codes(oracle: Oracle, qstate, task, batch: dict):
    return encode_target(oracle, qstate, task.target(batch), task.context(batch))


@eqx.filter_jit
def oracle_predict(oracle: Oracle, qstate, task, batch: dict):
    """Stage I's reconstruction of the targets: (prediction dict, code [B, S])."""
    context = task.context(batch)
    code = encode_target(oracle, qstate, task.target(batch), context)
    return task.predict(decode_code(oracle, qstate, code, context)), code


def stage2_predict(lm: GuidingCodeLM, oracle: Oracle, qstate, task, batch: dict, key, temperature: float = 0.0):
    """The full model: image -> stage II code -> stage I decoder with the image -> (prediction dict, code [B, S])."""
    context = task.context(batch)
    code = generate_code(lm, context, key, temperature=temperature)
    return decode_and_predict(oracle, qstate, task, code, context), code


@eqx.filter_jit
def codeless_predict(oracle: Oracle, qstate, task, batch: dict, length: int):
    """Stage I's decoder with every one of the `length` code tokens dropped, reading the input alone: (prediction
    dict, the code it was given [B, S], all dropped)."""
    context = task.context(batch)
    code = jnp.zeros((context.shape[0], length), jnp.int32)
    return task.predict(decode_code(oracle, qstate, code, context, kept=jnp.zeros(code.shape, bool))), code


@eqx.filter_jit
def decode_and_predict(oracle: Oracle, qstate, task, code, context) -> dict:
    """Stage I's decoder on a given code [B, S] with the input: the task's prediction dict."""
    return task.predict(decode_code(oracle, qstate, code, context))


class CodedData:
    """A dataset whose batches also carry each example's guiding code (`batch(idx)["code"]`, int32 [B, S]): stage II's
    training and held-out batches, or given codes to decode. Has what `run_over` and the training loop read."""

    def __init__(self, ds: dense.DenseData, codes: np.ndarray):
        self.ds, self.codes = ds, np.asarray(codes, np.int32)

    def __len__(self) -> int:
        return len(self.ds)

    def batch(self, idx) -> dict:
        return {**self.ds.batch(idx), "code": self.codes[idx]}


@eqx.filter_jit
def _token_nll(lm: GuidingCodeLM, task, batch: dict):
    return code_nll(teacher_forced_logits(lm, task.context(batch), batch["code"]), batch["code"])


def codes_of(oracle: Oracle, qstate, task, ds: dense.DenseData) -> np.ndarray:
    """The oracle's code of every example of `ds` (int32 [N, S]), without decoding it."""
    return run_over(ds, lambda b: ({}, oracle_codes(oracle, qstate, task, b)))[1]


def heldout_loss(lm: GuidingCodeLM, task, ds: CodedData) -> float:
    """Stage II's training loss on `ds`'s codes (teacher-forced mean cross-entropy, nats per token; no dropout)."""
    nll, _ = run_over(ds, lambda b: ({"nll": _token_nll(lm, task, b)}, b["code"]))
    return float(np.mean(nll["nll"]))


def run_over(ds: dense.DenseData, predict: Callable[[dict], tuple[dict, object]], batch_size: int = EVAL_BATCH):
    """Apply `predict` (batch -> (prediction dict, code [B, S])) to all of `ds`: (predictions, codes), numpy."""
    predictions, codes = [], []
    for idx, n in datasets.pass_indices(len(ds), batch_size):
        prediction, code = predict(ds.batch(idx))
        predictions.append({k: np.asarray(v)[:n] for k, v in prediction.items()})
        codes.append(np.asarray(code)[:n])
    return {k: np.concatenate([p[k] for p in predictions]) for k in predictions[0]}, np.concatenate(codes)


def score(task: dense_tasks.DenseTask, ds: dense.DenseData, predictions: dict) -> dict[str, float]:
    metric = dense_metrics.for_task(task)
    for start in range(0, len(ds), EVAL_BATCH):
        idx = np.arange(start, min(start + EVAL_BATCH, len(ds)))
        metric.update({k: v[idx] for k, v in predictions.items()}, ds.batch(idx))
    return metric.result()


def code_usage(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    counter = metrics.CodeCounter(codebook_size)
    counter.update(jnp.asarray(codes))
    return counter.stats()


def picture(path, task: dense_tasks.DenseTask, ds: dense.DenseData, predictions: dict) -> str:
    """Inputs, predictions and targets of the first examples, one row each."""
    idx = np.arange(min(PICTURE_COUNT, len(ds)))
    batch = ds.batch(idx)
    targets = {k: batch[k] for k in ("depth", "image", "semantic", "instance") if k in batch}
    rows = [task.show_input(batch), task.show({k: v[idx] for k, v in predictions.items()}), task.show(targets)]
    return save_png(path, grid(rows, scale=3))


def predict(lm: GuidingCodeLM | None, oracle: Oracle, qstate, task: dense_tasks.DenseTask, ds: dense.DenseData, *,
            temperature: float = 0.0, seed: int = 0) -> tuple[dict, np.ndarray]:
    """(predictions, codes [N, S]) over all of `ds`: of the full model, or of the oracle alone when `lm` is None."""
    if lm is None:  # the oracle reads the targets: its outputs are the best a stage II could reach
        return run_over(ds, lambda b: oracle_predict(oracle, qstate, task, b))
    key, batches = jr.key(seed), itertools.count()  # each batch its own key, so no two batches share their draws
    return run_over(ds, lambda b: stage2_predict(lm, oracle, qstate, task, b, jr.fold_in(key, next(batches)),
                                                 temperature=temperature))


def evaluate(lm: GuidingCodeLM | None, oracle: Oracle, qstate, task: dense_tasks.DenseTask, ds: dense.DenseData, *,
             temperature: float = 0.0, seed: int = 0) -> dict[str, dict[str, float]]:
    """{row: metrics}: the task metric and codebook usage of stage II (with its token accuracy against the oracle's
    codes and its held-out loss on them; when `lm` is given), of the oracle (with where FSQ's unused codes come from,
    `metrics.channel_stats`), the task metric of the oracle's decoder given no code ("no code": every token dropped,
    as code dropout drops them, so that it reads the input alone; how much of a score needs no code at all), and
    that of the trivial baseline. Stage II decodes greedily, or samples at `temperature` > 0 (`predict`)."""
    size = oracle.quantizer.codebook_size
    rows = {}
    oracle_preds, oracle_codes_ = predict(None, oracle, qstate, task, ds)
    if lm is not None:
        preds, codes = predict(lm, oracle, qstate, task, ds, temperature=temperature, seed=seed)
        rows["stage II"] = {**score(task, ds, preds), **code_usage(codes, size),
                            "token_accuracy": float(np.mean(codes == oracle_codes_)),
                            "heldout_loss": heldout_loss(lm, task, CodedData(ds, oracle_codes_))}
    rows["oracle (stage I)"] = {**score(task, ds, oracle_preds), **code_usage(oracle_codes_, size)}
    if isinstance(oracle.quantizer, fsq.FSQ):
        channels = metrics.channel_stats(np.bincount(oracle_codes_.ravel(), minlength=size), oracle.quantizer.levels)
        rows["oracle (stage I)"].update({k: channels[k] for k in ("total_correlation_bits", "independent_usage")})
    length = oracle_codes_.shape[1]
    rows["no code"] = score(task, ds, run_over(ds, lambda b: codeless_predict(oracle, qstate, task, b, length))[0])
    # A baseline is a constant or the input itself: cheap enough for the whole split at once.
    rows["trivial baseline"] = score(task, ds, task.baseline(ds.batch(np.arange(len(ds)))))
    return rows
