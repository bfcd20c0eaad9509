"""Options and helpers shared by the `fsq` commands (`cli.commands`, `cli.folder_commands`, `cli.maskgit_commands`,
`cli.uvim_commands`): option groups, list parsing, atomic .npz output, running a trainer and printing its metrics."""

import io
from pathlib import Path

import click
import numpy as np

from fsq_ref.common import files
from fsq_ref.common.errors import InputError
from fsq_ref.training import checkpoint, precision, train


def choice_list(text: str, option: str, choices) -> tuple[str, ...]:
    """Comma-separated values of an option that takes several of a fixed set of `choices`."""
    chosen = tuple(part.strip() for part in text.split(","))
    unknown = [c for c in chosen if c not in choices]
    if unknown:
        raise InputError(f"unknown {option} {', '.join(unknown)}: choose from {', '.join(choices)}")
    return chosen


def int_list(text: str, option: str, example: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"{option} must be integers separated by commas, such as {example}; got {text!r}") from None


def save_npz(path: str | Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files.write_atomic(path, buffer.getvalue())


def with_options(options):
    """A decorator that applies click options in the order listed."""

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def with_data_options(*, default: str | None, help_default: str | None = None):
    """--data and --data-dir; `default` None means "the data the model was trained on" (`help_default` says so)."""
    shown = f" (default: {help_default})" if help_default else ""
    return with_options([
        click.option("--data", "data_spec", default=default, show_default=default is not None,
                     help="fashion-mnist, procedural[:N], a .npz file, or a folder of images" + shown),
        click.option("--data-dir", default=None,
                     help="folder with the Fashion-MNIST IDX files (else $FSQ_DATA_DIR, then "
                          "/usr/share/datasets/fashion-mnist)"),
    ])


def with_training_options(*, batch_size: int, learning_rate: float, batch_help: str | None = None):
    """The budget, schedule and run-folder options that every `fsq train` command takes."""
    return with_options([
        click.option("--steps", type=int, default=None, help="training steps (the length of the learning-rate "
                     "schedule)"),
        click.option("--time-limit", type=float, default=None, help="stop after this many seconds of training"),
        click.option("--batch-size", type=int, default=batch_size, show_default=True, help=batch_help),
        click.option("--learning-rate", type=float, default=learning_rate, show_default=True,
                     help="peak learning rate"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--dtype", type=click.Choice(precision.DTYPES), default="float32", show_default=True,
                     help="compute dtype of the training step; parameters and optimiser state stay float32"),
        click.option("--eval-every", type=int, default=1000, show_default=True,
                     help="evaluate and checkpoint every N steps; 0: only at the end (a time-limited run then spends "
                          "all of its budget on training)"),
        click.option("--workdir", required=True, type=click.Path(file_okay=False), help="where checkpoint and logs go"),
        click.option("--resume", is_flag=True, help="continue the run in --workdir"),
        click.option("--init-from", default=None, type=click.Path(file_okay=False), metavar="RUN_DIR",
                     help="fine-tune: start from the model (and quantizer state) of this run of the same kind, "
                          "network and codebook, with a fresh optimiser and schedule"),
        click.option("--tensorboard", is_flag=True,
                     help="also log to WORKDIR/tensorboard (needs the tensorboard extra: tensorboardX)"),
    ])


def run_training(task, workdir, loop: train.LoopConfig, resume: bool, init_from: str | None = None,
                 tensorboard: bool = False) -> None:
    """Run a task and report; exit 130 after Ctrl-C (the state is saved)."""
    _, result = train.run(task, workdir, loop, resume=resume, init_from=init_from, tensorboard=tensorboard,
                          echo=click.echo)
    if result is None:
        raise SystemExit(130)
    print_metrics(result)
    click.echo(f"checkpoint: {Path(workdir) / checkpoint.CHECKPOINT}")


def print_metrics(result: dict) -> None:
    click.echo("  ".join(f"{k} {v:.2%}" if k == "usage" else f"{k} {v:.4g}" for k, v in result.items()))
