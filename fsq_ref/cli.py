"""The `fsq` command line: a thin layer that parses options and calls the library.

Every command's work is an importable function (`tokenizer`, `train`, `data`); this module only turns options into
their arguments and their results into files and lines of text. Bad input (an `InputError`) becomes one line on
stderr and exit status 2, never a traceback.
"""

import io
import json
from pathlib import Path

import click
import numpy as np

from fsq_ref import checkpoint, data, fsq, tokenizer, tokens, train
from fsq_ref.errors import InputError
from fsq_ref.images import grid, save_png


class BadInput(click.ClickException):
    exit_code = 2


class FsqGroup(click.Group):
    """Turns library errors into one-line messages for every command below it."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InputError as e:
            raise BadInput(str(e)) from None
        except train.TrainingDiverged as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=FsqGroup)
def main():
    """Finite Scalar Quantization (Mentzer et al., ICLR 2024): train tokenizers, turn images into tokens and back."""


@main.group("train")
def train_group():
    """Train a model."""


def _levels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--levels must be integers separated by commas, such as 8,6,5; got {text!r}") from None


def _save_npz(path: str | Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    checkpoint.write_atomic(path, buffer.getvalue())


data_options = [
    click.option("--data", "data_spec", default="fashion-mnist", show_default=True,
                 help="fashion-mnist, procedural[:N], a .npz file, or a folder of images"),
    click.option("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (else $FSQ_DATA_DIR, "
                 "then /usr/share/datasets/fashion-mnist)"),
]


def with_data_options(fn):
    for option in reversed(data_options):
        fn = option(fn)
    return fn


@train_group.command("autoencoder")
@with_data_options
@click.option("--quantizer", type=click.Choice(tokenizer.QUANTIZER_KINDS), default="fsq", show_default=True,
              help="fsq; vq (codebook + commitment loss); vq-entropy (+ entropy loss); vq-split (EMA + splitting)")
@click.option("--levels", default=None, help="FSQ levels, e.g. 8,6,5 (default: levels_for(--codebook-size), else 8,6,5)")
@click.option("--codebook-size", type=int, default=None, help="VQ codebook size; for FSQ, picks the paper's levels")
@click.option("--vq-dim", type=int, default=16, show_default=True, help="VQ codeword size")
@click.option("--preset", default="fashion-mnist", show_default=True, help="network size: tiny, fashion-mnist, ...")
@click.option("--steps", type=int, default=None, help="training steps (the length of the learning-rate schedule)")
@click.option("--time-limit", type=float, default=None, help="stop after this many seconds of training")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="small batches make more steps per second on a CPU; raise it on an accelerator")
@click.option("--learning-rate", type=float, default=2e-3, show_default=True, help="peak learning rate")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-every", type=int, default=1000, show_default=True)
@click.option("--workdir", required=True, type=click.Path(file_okay=False), help="where checkpoint and logs go")
@click.option("--resume", is_flag=True, help="continue the run in --workdir")
def train_autoencoder(data_spec, data_dir, quantizer, levels, codebook_size, vq_dim, preset, steps, time_limit,
                      batch_size, learning_rate, seed, eval_every, workdir, resume):
    """Train an image tokenizer (autoencoder with an FSQ or VQ bottleneck).

    \b
    Example:
      fsq train autoencoder --data fashion-mnist --levels 8,6,5 --time-limit 100 --workdir runs/fsq
      fsq train autoencoder --quantizer vq --codebook-size 256 --steps 2000 --workdir runs/vq
    """
    levels = _levels(levels)
    if quantizer == "fsq":
        if levels is None:
            levels = fsq.levels_for(codebook_size) if codebook_size else (8, 6, 5)
        elif codebook_size is not None and fsq.codebook_size(levels) != codebook_size:
            raise InputError(f"--levels {list(levels)} give {fsq.codebook_size(levels)} codes, not --codebook-size "
                             f"{codebook_size}: give one of the two")
        q = tokenizer.QuantizerConfig("fsq", levels=levels)
    else:
        if levels is not None:
            raise InputError("--levels is for FSQ; for VQ give --codebook-size")
        q = tokenizer.QuantizerConfig(quantizer, codebook_size=codebook_size or 256, vq_dim=vq_dim)
    ae = tokenizer.preset(preset)
    loop = train.LoopConfig(steps=steps, time_limit=time_limit, batch_size=batch_size, seed=seed,
                            learning_rate=learning_rate, eval_every=eval_every, checkpoint_every=eval_every)
    load = dict(data_dir=data_dir, image_size=ae.image_size, channels=ae.channels, seed=seed)
    task = tokenizer.AutoencoderTask(
        tokenizer.TokenizerConfig(ae, q), data.load(data_spec, "train", **load), data.load(data_spec, "test", **load),
        batch_size=batch_size, seed=seed, weight_decay=loop.weight_decay, data_header={"spec": data_spec},
    )
    click.echo(f"{q.kind} tokenizer, codebook size {q.size}" + (f" (levels {list(q.levels)})" if q.kind == "fsq"
               else "") + f", {ae.token_grid}x{ae.token_grid} tokens, training on {data_spec}")
    _, result = train.run(task, workdir, loop, resume=resume)
    if result is None:  # interrupted by Ctrl-C; the state is saved
        raise SystemExit(130)
    _print_metrics(result)
    click.echo(f"checkpoint: {Path(workdir) / train.CHECKPOINT}")
    click.echo(f"reconstructions: {Path(workdir) / 'reconstructions.png'}")


def _print_metrics(result: dict) -> None:
    click.echo("  ".join(f"{k} {v:.2%}" if k == "usage" else f"{k} {v:.4g}" for k, v in result.items()))


@main.command()
@click.option("--workdir", required=True, help="a folder trained by `fsq train autoencoder`")
@with_data_options
@click.option("--split", default="test", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the .npz file to write")
@click.option("--batch-size", type=int, default=500, show_default=True)
def encode(workdir, data_spec, data_dir, split, out, batch_size):
    """Turn images into token indices.

    Writes `indices` (int32 [N, h, w]), `labels` when the data has them, and the tokenizer's codebook (size, levels
    for FSQ, and the checkpoint's fingerprint, so that decoding with another tokenizer is caught).

    \b
    Example:
      fsq encode --workdir runs/fsq --data fashion-mnist --split train --out runs/fsq/tokens-train.npz
    """
    model, qstate, header = tokenizer.load(workdir)
    ae = tokenizer.TokenizerConfig.from_dict(header["task"]["tokenizer"]).autoencoder
    ds = data.load(data_spec, split, data_dir=data_dir, image_size=ae.image_size, channels=ae.channels)
    chunks, labels = [], []
    for images, batch_labels in data.eval_batches(ds, batch_size):
        chunks.append(np.asarray(tokenizer.encode(model, qstate, images)))
        if batch_labels is not None:
            labels.append(batch_labels)
    q = model.quantizer
    result = tokens.TokenFile(
        np.concatenate(chunks), q.codebook_size, header["sha256"], labels=np.concatenate(labels) if labels else None,
        num_classes=ds.num_classes if labels else None, levels=q.levels if isinstance(q, fsq.FSQ) else None)
    tokens.save(out, result)
    click.echo(f"wrote {out}: indices {list(result.indices.shape)}")


@main.command()
@click.option("--workdir", required=True, help="the tokenizer's folder")
@click.option("--tokens", "tokens_path", required=True, type=click.Path(dir_okay=False),
              help="an .npz from `fsq encode`")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the .npz file of images to write")
@click.option("--batch-size", type=int, default=500, show_default=True)
def decode(workdir, tokens_path, out, batch_size):
    """Turn token indices back into images, with a PNG grid of the first 64 beside the .npz.

    \b
    Example:
      fsq decode --workdir runs/fsq --tokens runs/fsq/tokens-test.npz --out runs/fsq/decoded.npz
    """
    model, qstate, header = tokenizer.load(workdir)
    ae = tokenizer.TokenizerConfig.from_dict(header["task"]["tokenizer"]).autoencoder
    token_file = tokens.load(tokens_path)
    tokens.check_made_by(token_file, header["sha256"], tokens_path, (ae.token_grid,) * 2,
                         model.quantizer.codebook_size)
    indices = token_file.indices
    images = np.concatenate([
        np.asarray(tokenizer.decode(model, qstate, indices[i:i + batch_size]))
        for i in range(0, len(indices), batch_size)
    ])
    _save_npz(out, images=images[..., 0] if images.shape[-1] == 1 else images)
    png = save_png(Path(out).with_suffix(".png"), grid([images[i:i + 8] for i in range(0, min(64, len(images)), 8)],
                                                       scale=3))
    click.echo(f"wrote {out}: images {list(images.shape)}\npicture: {png}")


@main.command("eval")
@click.option("--workdir", required=True, help="the tokenizer's folder")
@with_data_options
@click.option("--split", default="test", show_default=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON file (default WORKDIR/eval-SPLIT.json)")
def eval_command(workdir, data_spec, data_dir, split, out):
    """Reconstruction L1, MSE and PSNR, codebook usage, perplexity and entropy of a tokenizer on a dataset.

    \b
    Example:
      fsq eval --workdir runs/fsq --data fashion-mnist --split test
    """
    model, qstate, header = tokenizer.load(workdir)
    ae = tokenizer.TokenizerConfig.from_dict(header["task"]["tokenizer"]).autoencoder
    ds = data.load(data_spec, split, data_dir=data_dir, image_size=ae.image_size, channels=ae.channels)
    result = tokenizer.evaluate(model, qstate, ds)
    _print_metrics(result)
    out = out or str(Path(workdir) / f"eval-{split}.json")
    checkpoint.write_atomic(out, json.dumps({"data": data_spec, "split": split, "step": header["step"], **result},
                                            indent=2).encode())
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
