"""The MaskGIT commands of `fsq`: `train maskgit`, `generate` and `eval-samples`. Thin, like `cli.commands`: options
in, one library call, files and lines of text out."""

import json
from pathlib import Path

import click
import jax.random as jr
import numpy as np

from fsq_ref.cli.options import int_list, run_training, save_npz, with_data_options, with_training_options
from fsq_ref.common import files
from fsq_ref.common.errors import InputError
from fsq_ref.data import tokens
from fsq_ref.data.images import grid, save_png
from fsq_ref.evaluation import features, runs
from fsq_ref.training import checkpoint, maskgit_train, presets, train


@click.command("maskgit")
@click.option("--tokens", "tokens_path", required=True, type=click.Path(dir_okay=False),
              help="training tokens: `fsq encode --split train`")
@click.option("--eval-tokens", default=None, type=click.Path(dir_okay=False),
              help="held-out tokens (`fsq encode --split test`); default: the last 5% of --tokens, not trained on")
@click.option("--preset", type=click.Choice(presets.MASKGIT), default="fashion-mnist", show_default=True,
              help="transformer size")
@with_training_options(batch_size=64, learning_rate=1e-3)
def train_maskgit(tokens_path, eval_tokens, preset, steps, time_limit, batch_size, learning_rate, seed, dtype,
                  eval_every, workdir, resume, init_from, tensorboard):
    """Train a class-conditional MaskGIT transformer on a tokenizer's tokens.

    \b
    Example:
      fsq encode --workdir runs/fsq --split train --out runs/fsq/tokens-train.npz
      fsq encode --workdir runs/fsq --split test --out runs/fsq/tokens-test.npz
      fsq train maskgit --tokens runs/fsq/tokens-train.npz --eval-tokens runs/fsq/tokens-test.npz \\
          --time-limit 300 --workdir runs/maskgit
    """
    task = maskgit_train.make_task(preset, tokens.load(tokens_path),
                                   tokens.load(eval_tokens) if eval_tokens is not None else None,
                                   batch_size=batch_size, seed=seed, dtype=dtype)
    loop = train.LoopConfig(steps=steps, time_limit=time_limit, batch_size=batch_size, seed=seed,
                            learning_rate=learning_rate, weight_decay=maskgit_train.WEIGHT_DECAY,
                            eval_every=eval_every, checkpoint_every=eval_every, dtype=dtype)
    config = task.config
    click.echo(f"MaskGIT ({preset}) on {len(task.tokens)} token grids of {config.grid[0]}x{config.grid[1]} "
               f"({len(task.eval_tokens)} held out), codebook {config.codebook_size}, {config.num_classes} classes")
    run_training(task, workdir, loop, resume, init_from, tensorboard)


@click.command()
@click.option("--workdir", required=True, help="the MaskGIT folder (`fsq train maskgit`)")
@click.option("--autoencoder", required=True, help="the tokenizer folder whose tokens MaskGIT was trained on")
@click.option("--num-per-class", type=int, default=10, show_default=True)
@click.option("--labels", "label_text", default=None, help="classes to generate, e.g. 0,3,7 (default: all)")
@click.option("--unconditional", is_flag=True, help="generate without a class")
@click.option("--steps", type=int, default=12, show_default=True, help="parallel decoding steps")
@click.option("--guidance", type=float, default=1.0, show_default=True,
              help="classifier-free guidance scale a: logits l_c + a (l_c - l_u); 0 turns it off")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="sampling temperature")
@click.option("--choice-temperature", type=float, default=4.5, show_default=True,
              help="Gumbel noise on the confidences, annealed to 0")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the .npz to write")
def generate(workdir, autoencoder, num_per_class, label_text, unconditional, steps, guidance, temperature,
             choice_temperature, seed, batch_size, out):
    """Generate images: MaskGIT samples tokens, the tokenizer decodes them.

    Writes `indices`, `images` (uint8) and `labels` (the class, or -1 when unconditional), and a PNG grid with one row
    per class beside the .npz.

    \b
    Example:
      fsq generate --workdir runs/maskgit --autoencoder runs/fsq --num-per-class 10 --out runs/samples.npz
    """
    if num_per_class < 1 or steps < 1 or temperature <= 0 or batch_size < 1:
        raise InputError("--num-per-class, --steps and --batch-size must be >= 1 and --temperature > 0")
    config = maskgit_train.config_of(checkpoint.read_run(workdir, "maskgit"))
    if unconditional:
        classes = [config.unconditional]
    elif label_text is not None:
        classes = int_list(label_text, "--labels", "0,3,7")
        bad = [c for c in classes if not 0 <= c < config.num_classes]
        if bad:
            raise InputError(f"--labels {bad} outside the model's classes 0..{config.num_classes - 1}")
    else:
        classes = list(range(config.num_classes))
    labels = np.repeat(np.array(classes, np.int32), num_per_class)
    indices, images = maskgit_train.generate_images(
        workdir, autoencoder, labels, jr.key(seed), batch_size=batch_size, steps=steps, guidance=guidance,
        temperature=temperature, choice_temperature=choice_temperature)
    out_labels = np.where(labels == config.unconditional, -1, labels)
    save_npz(out, indices=indices, images=images[..., 0] if images.shape[-1] == 1 else images, labels=out_labels)
    rows = [images[i * num_per_class:i * num_per_class + min(num_per_class, 16)] for i in range(len(classes))]
    png = save_png(Path(out).with_suffix(".png"), grid(rows, scale=2))
    click.echo(f"wrote {out}: {len(images)} images of classes {classes if not unconditional else 'none'} "
               f"(guidance {guidance:g})\npicture: {png}")


@click.command("eval-samples")
@click.option("--samples", required=True, type=click.Path(dir_okay=False), help="an .npz from `fsq generate`")
@with_data_options(default=None, help_default="the data of --autoencoder's training, else fashion-mnist")
@click.option("--autoencoder", default=None,
              help="also score this tokenizer's reconstructions of as many test images: the best these tokens allow")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON file (default: beside --samples)")
def eval_samples(samples, data_spec, data_dir, autoencoder, out):
    """Sample quality: Frechet distance, precision and recall against the test split, and class accuracy.

    Features come from a small classifier trained on the dataset's training split (once; cached under
    $FSQ_CACHE_DIR or ~/.cache/fsq-ref), whose own test accuracy is reported. Label accuracy is that classifier's
    agreement with the classes the samples were conditioned on.

    \b
    Example:
      fsq eval-samples --samples runs/samples.npz --data fashion-mnist --autoencoder runs/fsq
    """
    if autoencoder is not None:
        data_spec, data_dir = runs.data_for(checkpoint.read_run(autoencoder, "autoencoder"), data_spec, data_dir)
    data_spec = data_spec or "fashion-mnist"
    result = features.evaluate_samples(samples, data_spec, data_dir=data_dir, autoencoder=autoencoder,
                                       echo=click.echo)
    click.echo(f"feature classifier: test accuracy {result['classifier_accuracy']:.2%}; reference: "
               f"{result['reference_images']} test images of {data_spec}")
    click.echo("| images | Frechet distance | precision | recall | label accuracy |\n|---|---|---|---|---|")
    for name in ("samples", "reconstructions"):
        if name in result:
            r = result[name]
            accuracy = f"{r['label_accuracy']:.2%}" if "label_accuracy" in r else "-"
            click.echo(f"| {name} ({r['images']}) | {r['frechet_distance']:.3f} | {r['precision']:.3f} | "
                       f"{r['recall']:.3f} | {accuracy} |")
    if "reconstructions" in result:
        ratio = result["samples"]["frechet_distance"] / result["reconstructions"]["frechet_distance"]
        click.echo(f"the samples' Frechet distance is {ratio:.2f}x the reconstructions' (1x: the best these tokens "
                   "allow)")
    out = out or str(Path(samples).with_suffix(".quality.json"))
    files.write_atomic(out, json.dumps(result, indent=2).encode())
    click.echo(f"wrote {out}")
