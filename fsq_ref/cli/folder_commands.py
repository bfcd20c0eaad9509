"""The commands of `fsq` that read a trained run folder: `encode`, `decode`, `eval`, `info` and `export`. Thin, like
`cli.commands`: options in, one library call, files and lines of text out."""

from pathlib import Path

import click

from fsq_ref import dense_tasks, tokenizer
from fsq_ref.cli.options import print_metrics, save_npz, with_data_options
from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets, tokens
from fsq_ref.data.images import grid, save_png
from fsq_ref.evaluation import runs
from fsq_ref.training import export, tokenizer_train

SPLIT_HELP = ("train, test, or all (both). A folder with train/ and test/ subfolders is split by them; any other "
              "folder or .npz holds out a seeded 10% as test")


@click.command()
@click.option("--workdir", required=True, help="a folder trained by `fsq train autoencoder`")
@with_data_options(default=None, help_default="the data the tokenizer was trained on")
@click.option("--split", type=click.Choice(datasets.SPLITS), default="all", show_default=True, help=SPLIT_HELP)
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
    model, qstate, header = tokenizer_train.load(workdir)
    ds = runs.image_data(header, data_spec, data_dir, split)
    click.echo(f"encoding {len(ds)} images ({split} split of {runs.data_for(header, data_spec, data_dir)[0]})")
    result = tokenizer_train.encode_dataset(model, qstate, header["sha256"], ds, batch_size)
    tokens.save(out, result)
    click.echo(f"wrote {out}: indices {list(result.indices.shape)}")


@click.command()
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
    model, qstate, header = tokenizer_train.load(workdir)
    ae = tokenizer.TokenizerConfig.from_dict(header["task"]["tokenizer"]).autoencoder
    token_file = tokens.load(tokens_path)
    tokens.check_made_by(token_file, header["sha256"], (ae.token_grid,) * 2, model.quantizer.codebook_size)
    images = tokenizer_train.decode_all(model, qstate, token_file.indices, batch_size)
    save_npz(out, images=images[..., 0] if images.shape[-1] == 1 else images)
    png = save_png(Path(out).with_suffix(".png"), grid([images[i:i + 8] for i in range(0, min(64, len(images)), 8)],
                                                       scale=3))
    click.echo(f"wrote {out}: images {list(images.shape)}\npicture: {png}")


@click.command("eval")
@click.option("--workdir", required=True, help="a tokenizer folder, or a UViM stage-I or stage-II folder")
@click.option("--task", "task_name", default=None, type=click.Choice(dense_tasks.TASKS),
              help="UViM: the task the folder was trained for (checked)")
@with_data_options(default=None, help_default="the data the model was trained on")
@click.option("--split", type=click.Choice(datasets.SPLITS), default="test", show_default=True, help=SPLIT_HELP)
@click.option("--limit", type=int, default=None, help="UViM: only the first N examples")
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="UViM stage II: sample its code at this temperature (0: greedy decoding)")
@click.option("--seed", type=int, default=None,
              help="UViM stage II: the sampling seed, with --temperature  [default: 0]")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="JSON file (default WORKDIR/eval-SPLIT.json; sampled: eval-SPLIT-temperatureT-seedS.json)")
def eval_command(workdir, task_name, data_spec, data_dir, split, limit, temperature, seed, out):
    """Measure a trained model on a dataset.

    A tokenizer: reconstruction L1, MSE and PSNR, codebook usage, perplexity and entropy. A UViM folder: the task's
    metric (depth RMSE, colorization PSNR and colour Frechet distance, panoptic quality) of stage II, of its oracle,
    of the oracle's decoder given no code (every token dropped: what the image alone gives) and of the trivial
    baseline, with the codebook usage of each model's codes.

    \b
    Example:
      fsq eval --workdir runs/fsq --split test
      fsq eval --workdir runs/uvim/depth-lm --task depth
      fsq eval --workdir runs/uvim/colorization-lm --temperature 1
    """
    if temperature < 0:
        raise InputError(f"--temperature must be >= 0 (0 is greedy); got {temperature}")
    if seed is not None and not temperature:
        raise InputError("--seed picks the draws of a sampled evaluation: give --temperature too (greedy draws "
                         "nothing)")
    evaluation, path = runs.evaluate_to_file(workdir, out, data_spec=data_spec, data_dir=data_dir, split=split,
                                             task_name=task_name, limit=limit, temperature=temperature,
                                             seed=seed or 0)
    click.echo(f"{evaluation.examples} examples ({split} split of {evaluation.data})")
    if all(isinstance(v, dict) for v in evaluation.results.values()):  # UViM: one row per model
        for name, row in evaluation.results.items():
            click.echo(f"{name:>18}: ", nl=False)
            print_metrics(row)
    else:
        print_metrics(evaluation.results)
    click.echo(f"wrote {path}")


@click.command()
@click.argument("workdir", type=click.Path(file_okay=False))
def info(workdir):
    """What a run folder holds: kind, the command that made it, step, data, model and quantizer, last evaluation.

    \b
    Example:
      fsq info runs/fsq
    """
    for name, value in runs.describe(workdir).items():
        click.echo(f"{name:>18}: {value}")


@click.command("export")
@click.argument("workdir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(export.FORMATS), default="safetensors", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the file to write")
def export_command(workdir, fmt, out):
    """Write a trained model's weights under flat names (e.g. autoencoder.encoder.stem.weight), with its config as
    JSON metadata, for use without fsq-ref (names and layouts: README, "Exporting weights").

    \b
    Example:
      fsq export runs/fsq --format safetensors --out runs/fsq.safetensors
    """
    arrays = export.export(workdir, out, fmt)
    count = sum(a.size for a in arrays.values())
    click.echo(f"wrote {out}: {len(arrays)} arrays, {count} numbers ({fmt})")
