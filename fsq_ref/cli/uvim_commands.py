"""The UViM commands of `fsq`: `train uvim-oracle`, `train uvim-lm` and `predict` (`fsq eval` of a UViM folder is in
`cli.folder_commands`). Thin, like `cli.commands`: options in, one library call, files and lines of text out."""

import dataclasses
from pathlib import Path

import click

from fsq_ref import dense_tasks, quantizer_config, uvim, vq
from fsq_ref.cli.options import int_list, run_training, save_npz, with_options, with_training_options
from fsq_ref.common.errors import InputError
from fsq_ref.data import dense
from fsq_ref.evaluation import runs, uvim_eval
from fsq_ref.training import checkpoint, presets, train, uvim_train

UVIM_QUANTIZERS = ("fsq", "vq-split", "vq-nosplit", "vq")
# The defaults are the configuration of the results pages (docs/uvim.md): an 8x8 code (`quick-8x8`) of FSQ [8,5,5,5]
# (1000 codes) or a 1024-code VQ. The paper's UViM uses [7,5,5,5,5] (4375 codes) and VQ 4096 on 256-token codes of
# far more images; on the 8192 scenes a 4375-code FSQ used 62% of its codes, a 1000-code one over 95%.
DEFAULT_LEVELS = (8, 5, 5, 5)
DEFAULT_VQ_SIZE = 1024

with_dense_data_options = with_options([
    click.option("--data", "data_spec", default=None,
                 help="scenes[:N[:M]] (procedural, built in; N train, M test examples), "
                      "fashion-mnist-panoptic[:N[:M]], or a folder of pairs (see `fsq_ref/data/dense.py`); default for "
                      "training: scenes; else the data the model was trained on"),
    click.option("--data-dir", default=None,
                 help="folder with the Fashion-MNIST IDX files"),
])


def _loop(steps, time_limit, batch_size, learning_rate, seed, dtype, eval_every) -> train.LoopConfig:
    return train.LoopConfig(steps=steps, time_limit=time_limit, batch_size=batch_size, seed=seed,
                            learning_rate=learning_rate, eval_every=eval_every, checkpoint_every=eval_every,
                            dtype=dtype)


@click.command("uvim-oracle")
@click.option("--task", "task_name", required=True, type=click.Choice(dense_tasks.TASKS))
@with_dense_data_options
@click.option("--quantizer", type=click.Choice(UVIM_QUANTIZERS), default="fsq", show_default=True,
              help="fsq; vq-split (UViM's: EMA dictionary with codebook splitting); vq-nosplit (the same without "
                   "splitting); vq (codebook + commitment loss)")
@click.option("--levels", default=None, help="FSQ levels (default: levels_for(--codebook-size), else 8,5,5,5; the "
              "paper's UViM used 7,5,5,5,5)")
@click.option("--codebook-size", type=int, default=None,
              help=f"VQ codebook size (default {DEFAULT_VQ_SIZE}); for FSQ, picks the paper's levels for that size")
@click.option("--preset", type=click.Choice(presets.ORACLE), default="quick-8x8", show_default=True,
              help="network size and code grid (quick-8x8: 64 tokens; quick: 16)")
@click.option("--context/--no-context", default=True, show_default=True,
              help="--no-context: stage I never sees the input image (the paper's context ablation)")
@click.option("--code-dropout/--no-code-dropout", default=True, show_default=True,
              help="UViM's random code dropout in training, with or without context (as big_vision's configs)")
@click.option("--dropped-tokens", type=click.Choice(uvim.DROPPED_TOKENS), default="zeros", show_default=True,
              help="what the decoder gets for a dropped token: zeros (UViM's), or zeros and a \"kept\" flag channel")
@click.option("--vq-decay", type=float, default=None,
              help="vq-split, vq-nosplit: the EMA dictionary's decay per step; default: UViM's 0.995 scaled to --steps, "
                   "so that splitting starts at 5%% of training as in big_vision (0.9253 for 600 steps); 0.995 when "
                   "only --time-limit is given")
@click.option("--depth-head", type=click.Choice(dense_tasks.DEPTH_HEADS), default="argmax", show_default=True,
              help="depth: the arg-max bin's centre (UViM's) or the expected bin centre")
@click.option("--data-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="seeds generated data (scenes: both splits); --seed seeds the training run alone")
@with_training_options(batch_size=32, learning_rate=2e-3)
def train_oracle(task_name, data_spec, data_dir, quantizer, levels, codebook_size, preset, context, code_dropout,
                 dropped_tokens, vq_decay, depth_head, data_seed, steps, time_limit, batch_size, learning_rate, seed,
                 dtype, eval_every, workdir, resume, init_from, tensorboard):
    """Train UViM's stage I, the restricted oracle: (task output, input) -> guiding code -> output.

    \b
    Example:
      fsq train uvim-oracle --task depth --data scenes --steps 600 --workdir runs/uvim/depth-oracle
    """
    levels = tuple(int_list(levels, "--levels", "8,5,5,5")) if levels is not None else None
    q = quantizer_config.from_options(quantizer, levels=levels, codebook_size=codebook_size,
                                      default_levels=DEFAULT_LEVELS, default_vq_size=DEFAULT_VQ_SIZE)
    if q.kind in ("vq-split", "vq-nosplit"):
        decay = vq_decay or (vq.scaled_decay(steps) if steps else vq.UVIM_DECAY)
        q = dataclasses.replace(q, ema_decay=decay)
    elif vq_decay is not None:
        raise InputError("--vq-decay is for --quantizer vq-split or vq-nosplit (the EMA dictionary)")
    config = dataclasses.replace(presets.pick(presets.ORACLE, preset), quantizer=q, code_dropout=code_dropout,
                                 context=context, dropped_tokens=dropped_tokens)
    loop = _loop(steps, time_limit, batch_size, learning_rate, seed, dtype, eval_every)
    task = uvim_train.make_oracle_task(config, task_name, data_spec or "scenes", data_dir, batch_size=batch_size,
                                       seed=seed, weight_decay=loop.weight_decay, dtype=dtype, depth_head=depth_head,
                                       data_seed=data_seed)
    click.echo(f"UViM stage I for {task_name} on {data_spec or 'scenes'} ({len(task.train_ds)} train and "
               f"{len(task.test_ds)} test examples): {q.describe()}, {config.grid}x{config.grid} code, "
               f"{'with' if context else 'without'} image context, code dropout "
               f"{f'on (dropped tokens: {dropped_tokens})' if code_dropout else 'off'}")
    run_training(task, workdir, loop, resume, init_from, tensorboard)
    click.echo(f"predictions: {Path(workdir) / 'predictions.png'} (inputs, oracle outputs, targets)")


@click.command("uvim-lm")
@click.option("--oracle", "oracle_dir", required=True, type=click.Path(file_okay=False),
              help="the stage-I folder (`fsq train uvim-oracle`)")
@with_dense_data_options
@click.option("--preset", type=click.Choice(presets.LM), default="quick", show_default=True, help="transformer size")
@with_training_options(batch_size=32, learning_rate=1e-3)
@click.option("--encoder-lr-mult", type=float, default=1.0, show_default=True,
              help="the image encoder's learning rate relative to --learning-rate (the code decoder's)")
@click.option("--mirror/--no-mirror", default=False, show_default=True,
              help="also train on each example's left-right mirror image (UViM's random flip), with its own code")
def train_lm(oracle_dir, data_spec, data_dir, preset, steps, time_limit, batch_size, learning_rate, seed, dtype,
             eval_every, workdir, resume, init_from, tensorboard, encoder_lr_mult, mirror):
    """Train UViM's stage II: an encoder-decoder transformer that predicts the oracle's guiding code from the input.

    \b
    Example:
      fsq train uvim-lm --oracle runs/uvim/depth-oracle --time-limit 240 --workdir runs/uvim/depth-lm
    """
    header = checkpoint.read_run(oracle_dir, "uvim-oracle")
    recorded = runs.recorded_data(header)
    size = header["task"]["oracle"]["image_size"]
    data_spec, data_dir = runs.data_for(header, data_spec, data_dir)
    train_ds = dense.load(data_spec, "train", data_dir=data_dir, size=size, seed=recorded["seed"])
    test_ds = dense.load(data_spec, "test", data_dir=data_dir, size=size, seed=recorded["seed"])
    loop = _loop(steps, time_limit, batch_size, learning_rate, seed, dtype, eval_every)
    task = uvim_train.LMTask(presets.pick(presets.LM, preset), oracle_dir, train_ds, test_ds, batch_size=batch_size,
                             seed=seed, weight_decay=loop.weight_decay,
                             data_header={"spec": data_spec, "data_dir": data_dir, "seed": recorded["seed"]},
                             dtype=loop.dtype, encoder_lr_mult=encoder_lr_mult, mirror=mirror)
    click.echo(f"UViM stage II ({preset}) for {task.task.name} on {data_spec} ({len(train_ds)} train"
               f"{' and their mirror images' if mirror else ''} and "
               f"{len(test_ds)} test examples): predicting codes of {task.oracle_config.grid ** 2} tokens from "
               f"{task.codebook_size}, of an oracle {'with' if task.oracle_config.context else 'without'} image "
               "context")
    run_training(task, workdir, loop, resume, init_from, tensorboard)
    click.echo(f"predictions: {Path(workdir) / 'predictions.png'} (inputs, predictions, targets)")


@click.command()
@click.option("--workdir", required=True, help="a stage-II folder (`fsq train uvim-lm`), or a stage-I folder")
@click.option("--oracle", "oracle_dir", default=None,
              help="stage I's folder (default: the one stage II was trained with)")
@with_dense_data_options
@click.option("--split", type=click.Choice(dense.SPLITS), default="test", show_default=True)
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
    if temperature < 0:
        raise InputError(f"--temperature must be >= 0 (0 is greedy); got {temperature}")
    models = runs.uvim_models(workdir, oracle_dir)
    ds = runs.dense_data(models.header, data_spec, data_dir, split, limit)
    predictions, codes = uvim_eval.predict(models.lm, models.oracle, models.qstate, models.task, ds,
                                           temperature=temperature, seed=seed)
    save_npz(out, code=codes, **predictions)
    png = uvim_eval.picture(Path(out).with_suffix(".png"), models.task, ds, predictions)
    click.echo(f"wrote {out}: {models.task.name} predictions for {len(ds)} examples ({split} split of "
               f"{runs.data_for(models.header, data_spec, data_dir)[0]})\npicture: {png} (inputs, predictions, "
               "targets)")
