"""The UViM commands of `fsq`: `train uvim-oracle`, `train uvim-lm`, `predict`, and `eval` of a UViM folder.

Thin, like `cli`: options in, calls into `uvim_train` / `dense` / `dense_tasks`, files and lines of text out.
"""

import dataclasses
from pathlib import Path

import click
import jax.random as jr
import numpy as np

from fsq_ref import checkpoint, dense, dense_tasks, fsq, metrics, train, uvim, uvim_train
from fsq_ref.cli_options import (int_list, print_metrics, run_training, save_npz, with_options,
                                 with_training_options)
from fsq_ref.errors import InputError
from fsq_ref.tokenizer import QuantizerConfig

UVIM_QUANTIZERS = ("fsq", "vq", "vq-split")
DEFAULT_VQ_SIZE = 4096  # UViM's dictionary

dense_data_options = [
    click.option("--data", "data_spec", default=None,
                 help="scenes[:N[:M]] (procedural, built in; N train, M test examples), "
                      "fashion-mnist-panoptic[:N[:M]], or a folder of pairs (see `fsq_ref/dense.py`); default for "
                      "training: scenes; else the data the model was trained on"),
    click.option("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files"),
]
with_dense_data_options = with_options(dense_data_options)


def _load_data(data_spec, split, data_dir, size, seed=0) -> dense.DenseData:
    return dense.load(data_spec, split, data_dir=data_dir, size=size, seed=seed)


def _loop(steps, time_limit, batch_size, learning_rate, seed, dtype, eval_every) -> train.LoopConfig:
    return train.LoopConfig(steps=steps, time_limit=time_limit, batch_size=batch_size, seed=seed,
                            learning_rate=learning_rate, eval_every=eval_every, checkpoint_every=eval_every,
                            dtype=dtype)


@click.command("uvim-oracle")
@click.option("--task", "task_name", required=True, type=click.Choice(dense_tasks.TASKS))
@with_dense_data_options
@click.option("--quantizer", type=click.Choice(UVIM_QUANTIZERS), default="fsq", show_default=True,
              help="fsq; vq (codebook + commitment loss); vq-split (UViM's: EMA dictionary with codebook splitting)")
@click.option("--levels", default="7,5,5,5,5", show_default=True, help="FSQ levels (the paper's UViM levels)")
@click.option("--codebook-size", type=int, default=DEFAULT_VQ_SIZE, show_default=True, help="VQ codebook size")
@click.option("--preset", default="quick", show_default=True, help="network size: tiny, quick")
@click.option("--code-dropout/--no-code-dropout", default=True, show_default=True)
@with_training_options(batch_size=32, learning_rate=2e-3)
def train_oracle(task_name, data_spec, data_dir, quantizer, levels, codebook_size, preset, code_dropout, steps,
                 time_limit, batch_size, learning_rate, seed, dtype, eval_every, workdir, resume):
    """Train UViM's stage I, the restricted oracle: (task output, input) -> guiding code -> output.

    \b
    Example:
      fsq train uvim-oracle --task depth --data scenes --time-limit 240 --workdir runs/uvim/depth-oracle
    """
    config = uvim.oracle_preset(preset)
    q = (QuantizerConfig("fsq", levels=fsq.check_levels(int_list(levels, "--levels", "7,5,5,5,5")))
         if quantizer == "fsq" else QuantizerConfig(quantizer, codebook_size=codebook_size))
    config = dataclasses.replace(config, quantizer=q, code_dropout=code_dropout)
    data_spec = data_spec or "scenes"
    train_ds = _load_data(data_spec, "train", data_dir, config.image_size, seed)
    test_ds = _load_data(data_spec, "test", data_dir, config.image_size, seed)
    task = dense_tasks.make(task_name, train_ds)
    loop = _loop(steps, time_limit, batch_size, learning_rate, seed, dtype, eval_every)
    oracle_task = uvim_train.OracleTask(config, task, train_ds, test_ds, batch_size=batch_size, seed=seed,
                                        weight_decay=loop.weight_decay,
                                        data_header={"spec": data_spec, "seed": seed}, dtype=loop.dtype)
    click.echo(f"UViM stage I for {task_name} on {data_spec} ({len(train_ds)} training examples): {q.kind} "
               f"bottleneck, {q.size} codes, {config.grid}x{config.grid} code")
    run_training(oracle_task, workdir, loop, resume)
    click.echo(f"predictions: {Path(workdir) / 'predictions.png'} (inputs, oracle outputs, targets)")


@click.command("uvim-lm")
@click.option("--oracle", "oracle_dir", required=True, type=click.Path(file_okay=False),
              help="the stage-I folder (`fsq train uvim-oracle`)")
@with_dense_data_options
@click.option("--preset", default="quick", show_default=True, help="transformer size: tiny, quick, paper")
@with_training_options(batch_size=32, learning_rate=1e-3)
def train_lm(oracle_dir, data_spec, data_dir, preset, steps, time_limit, batch_size, learning_rate, seed, dtype,
             eval_every, workdir, resume):
    """Train UViM's stage II: an encoder-decoder transformer that predicts the oracle's guiding code from the input.

    \b
    Example:
      fsq train uvim-lm --oracle runs/uvim/depth-oracle --time-limit 240 --workdir runs/uvim/depth-lm
    """
    header = checkpoint.read_header(Path(oracle_dir) / train.CHECKPOINT)
    if header.get("kind") != "uvim-oracle":
        raise InputError(f"{oracle_dir} holds a {header.get('kind')} model, not a UViM oracle: give the folder of "
                         "`fsq train uvim-oracle`")
    recorded = header["task"]["data"]
    data_spec = data_spec or recorded["spec"]
    size = header["task"]["oracle"]["image_size"]
    train_ds = _load_data(data_spec, "train", data_dir, size, recorded["seed"])
    test_ds = _load_data(data_spec, "test", data_dir, size, recorded["seed"])
    loop = _loop(steps, time_limit, batch_size, learning_rate, seed, dtype, eval_every)
    task = uvim_train.LMTask(uvim.lm_preset(preset), oracle_dir, train_ds, test_ds, batch_size=batch_size, seed=seed,
                             weight_decay=loop.weight_decay, data_header={"spec": data_spec, "seed": recorded["seed"]},
                             dtype=loop.dtype)
    click.echo(f"UViM stage II ({preset}) for {task.task.name} on {data_spec}: predicting codes of "
               f"{task.oracle_config.grid ** 2} tokens from {task.codebook_size}")
    run_training(task, workdir, loop, resume)
    click.echo(f"predictions: {Path(workdir) / 'predictions.png'} (inputs, predictions, targets)")


def _models(workdir, oracle_dir):
    """(lm or None, oracle, qstate, task, header of the folder) for a stage-I or stage-II folder."""
    kind = checkpoint.read_header(Path(workdir) / train.CHECKPOINT).get("kind")
    if kind == "uvim-lm":
        return uvim_train.load_lm(workdir, oracle_dir)
    oracle, qstate, task, header = uvim_train.load_oracle(workdir)
    return None, oracle, qstate, task, header


def _data_for(header, data_spec, data_dir, split, limit) -> dense.DenseData:
    recorded = header["task"]["data"]
    size = header["task"]["oracle"]["image_size"] if "oracle" in header["task"] else None
    if size is None:  # a stage-II folder: the size is its oracle's
        size = checkpoint.read_header(Path(header["task"]["oracle_dir"]) / train.CHECKPOINT)["task"]["oracle"][
            "image_size"]
    ds = _load_data(data_spec or recorded["spec"], split, data_dir, size, recorded["seed"])
    if not limit:
        return ds
    return dataclasses.replace(ds, **{k: None if getattr(ds, k) is None else getattr(ds, k)[:limit]
                                      for k in ("images", "depth", "semantic", "instance")})


def _predict(lm, oracle, qstate, task, ds, temperature, seed):
    if lm is None:  # the oracle reads the targets: its outputs are the best a stage II could reach
        return uvim_train.run_over(ds, lambda b: uvim_train.oracle_predict(oracle, qstate, task, b))
    key = jr.key(seed)
    return uvim_train.run_over(
        ds, lambda b: uvim_train.stage2_predict(lm, oracle, qstate, task, b, key, temperature=temperature))


@click.command()
@click.option("--workdir", required=True, help="a stage-II folder (`fsq train uvim-lm`), or a stage-I folder")
@click.option("--oracle", "oracle_dir", default=None,
              help="stage I's folder (default: the one stage II was trained with)")
@with_dense_data_options
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=int, default=None, help="only the first N examples")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="stage II sampling; 0 is greedy")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the .npz to write")
def predict(workdir, oracle_dir, data_spec, data_dir, split, limit, temperature, seed, out):
    """Dense predictions of a UViM model: image -> code -> output, with a PNG of inputs, predictions and targets.

    Writes the predictions (`depth`, `image`, or `semantic` + `instance`) and the guiding `code` of every example.

    \b
    Example:
      fsq predict --workdir runs/uvim/depth-lm --split test --out runs/uvim/depth-preds.npz
    """
    lm, oracle, qstate, task, header = _models(workdir, oracle_dir)
    ds = _data_for(header, data_spec, data_dir, split, limit)
    predictions, codes = _predict(lm, oracle, qstate, task, ds, temperature, seed)
    save_npz(out, code=codes, **predictions)
    png = uvim_train.picture(Path(out).with_suffix(".png"), task, ds, predictions)
    click.echo(f"wrote {out}: {task.name} predictions for {len(ds)} examples\npicture: {png} (inputs, predictions, "
               "targets)")


def evaluate(workdir, task_name, data_spec, data_dir, split, limit) -> dict:
    """`fsq eval` of a UViM folder: the task metric of the model, its oracle (for stage II) and the trivial baseline,
    with codebook usage; returns {row name: metrics}."""
    lm, oracle, qstate, task, header = _models(workdir, None)
    if task_name is not None and task_name != task.name:
        raise InputError(f"{workdir} was trained for {task.name}, not {task_name}: drop --task or fix it")
    ds = _data_for(header, data_spec, data_dir, split, limit)
    size = oracle.quantizer.codebook_size
    rows = {}
    oracle_preds, oracle_codes = _predict(None, oracle, qstate, task, ds, 0.0, 0)
    if lm is not None:
        preds, codes = _predict(lm, oracle, qstate, task, ds, 0.0, 0)
        rows["stage II"] = {**uvim_train.score(task, ds, preds), **uvim_train.code_usage(codes, size),
                            "token_accuracy": float(np.mean(codes == oracle_codes))}
    rows["oracle (stage I)"] = {**uvim_train.score(task, ds, oracle_preds),
                                **uvim_train.code_usage(oracle_codes, size)}
    if isinstance(oracle.quantizer, fsq.FSQ):  # where unused codes come from (see `metrics.channel_stats`)
        channels = metrics.channel_stats(np.bincount(oracle_codes.ravel(), minlength=size), oracle.quantizer.levels)
        rows["oracle (stage I)"].update({k: channels[k] for k in ("total_correlation_bits", "independent_usage")})
    # A baseline is a constant or the input itself: cheap enough for the whole split at once.
    rows["trivial baseline"] = uvim_train.score(task, ds, task.baseline(ds.batch(np.arange(len(ds)))))
    click.echo(f"{task.name} on {len(ds)} {split} examples; the paper's metric is {task.primary} "
               f"({'higher' if task.higher_is_better else 'lower'} is better)")
    for name, result in rows.items():
        click.echo(f"{name:>18}: ", nl=False)
        print_metrics(result)
    return rows
